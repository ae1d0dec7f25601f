// Injected into about:blank by chromium_peer.py (Runtime.evaluate). SDP-only: no media is checked.
// Audio comes from a WebAudio oscillator (no getUserMedia). Exposes window.sdpPeer.*
window.sdpPeer = {
  track() {
    if (!this.ac) {
      this.ac = new AudioContext({sampleRate: 48000});
      const osc = this.ac.createOscillator(); osc.frequency.value = 440;
      this.dst = this.ac.createMediaStreamDestination();
      osc.connect(this.dst); osc.start();
    }
    return [this.dst.stream.getAudioTracks()[0], this.dst.stream];
  },
  newPc() {
    // Chrome's defaults (bundlePolicy balanced, rtcpMuxPolicy require) apart from no STUN/TURN servers
    const pc = new RTCPeerConnection({iceServers: []});
    const [t, s] = this.track();
    pc.addTrack(t, s);
    return pc;
  },
  gathered(pc, ms) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve(true);
    return new Promise(r => {
      const to = setTimeout(() => r(false), ms);
      pc.addEventListener('icegatheringstatechange',
        () => { if (pc.iceGatheringState === 'complete') { clearTimeout(to); r(true); } });
    });
  },
  negotiated(pc) {
    const t = pc.getTransceivers()[0];
    const p = t.sender.getParameters();
    return {signalingState: pc.signalingState, currentDirection: t.currentDirection,
            codecs: (p.codecs || []).map(c => ({payloadType: c.payloadType, mimeType: c.mimeType,
                                                  clockRate: c.clockRate, channels: c.channels}))};
  },
  async offer() {                 // non-trickle: returns the offer once gathering is complete
    this.pc1 = this.newPc();
    await this.pc1.setLocalDescription(await this.pc1.createOffer());
    const complete = await this.gathered(this.pc1, 5000);
    return {sdp: this.pc1.localDescription.sdp, complete};
  },
  async accept(answerSdp) {
    await this.pc1.setRemoteDescription({type: 'answer', sdp: answerSdp});
    return this.negotiated(this.pc1);
  },
  // The control answer goes to a separate pc with an offer of the same shape (mid 0, audio): a failed
  // setRemoteDescription can leave Chrome's transport half-configured, so pc1 must not see it.
  async controlOffer() {
    this.pcC = this.newPc();
    await this.pcC.setLocalDescription(await this.pcC.createOffer());
    return true;
  },
  async acceptControl(answerSdp) {
    await this.pcC.setRemoteDescription({type: 'answer', sdp: answerSdp});
    return this.negotiated(this.pcC);
  },
  async answer(offerSdp) {
    this.pc2 = this.newPc();
    await this.pc2.setRemoteDescription({type: 'offer', sdp: offerSdp});
    await this.pc2.setLocalDescription(await this.pc2.createAnswer());
    const complete = await this.gathered(this.pc2, 5000);
    return {sdp: this.pc2.localDescription.sdp, complete, negotiated: this.negotiated(this.pc2)};
  },
  close() { for (const pc of [this.pc1, this.pc2, this.pcC]) if (pc) pc.close(); return true; },
};
