#!/usr/bin/env bash
# Captures SDP offers produced live by real third-party stacks, for the watrunk-sdp acceptance tests:
#
#   unshare -n -- bash capture-offers.sh OUTDIR        (root; inside a private network namespace)
#
# Writes to OUTDIR (CRLF line ends):
#   aiortc-offer.sdp            aiortc RTCPeerConnection, one audio track, complete (non-trickle) offer, iceServers=[]
#   chromium-offer.sdp          headless Chromium createOffer (audio track) after ICE gathering completed
#   baresip-offer.sdp           baresip dialing with medianat=ice;mediaenc=dtls_srtp;audio_codecs=opus/48000/1
#   baresip-sdes-offer.sdp      baresip dialing with mediaenc=srtp-mand (no ICE): RTP/SAVP + a=crypto
#   rtpengine-dtls-offer.sdp    rtpengine turning a plain RTP/AVP Opus offer into an ICE-lite UDP/TLS/RTP/SAVPF offer
#   rtpengine-sdes-offer.sdp    the same into RTP/SAVP with one AES_CM_128_HMAC_SHA1_80 a=crypto line
#   versions.txt, logs/        peer versions; each peer's log
# Network: lo up + 198.18.0.1/32 on lo (baresip, aiortc, rtpengine: ICE peers never use 127.0.0.1). Chromium skips
# the loopback interface, so it runs in a nested namespace with a veth pair v0/v1 (198.18.0.1/24, 198.18.0.2/24) and
# a default route via 198.18.0.2 (Chromium 156.0.8078.114 gathers no candidate at all without one). SIP and ng stay on
# 127.0.0.1. Nothing can leave the namespace. Every peer is started by PID and stopped by PID (EXIT trap).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: unshare -n -- bash $0 OUTDIR" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
PY=/usr/bin/python3
IP=198.18.0.1
NG_PORT=2223
SINK_PORT=5090
logs=$out/logs
mkdir -p "$logs"
rm -f "$out"/*-offer.sdp "$out"/*.tmp

# refuse to run outside a private namespace: the peers would gather the machine's real addresses
if ip -o link show | grep -qvE ': lo[:@]'; then
  echo "capture-offers.sh: run me inside a fresh network namespace: unshare -n -- bash $0 OUTDIR" >&2; exit 2
fi
ip link set lo up
ip addr add "$IP/32" dev lo 2>/dev/null || true

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 143' INT TERM   # (exit runs the EXIT trap: a timeout still stops the peers)
crlf() { sed -e 's/\r$//' -e 's/$/\r/' "$1" > "$2.tmp" && mv "$2.tmp" "$2"; }
t0=$EPOCHREALTIME
mark() { awk -v a="$t0" -v b="$EPOCHREALTIME" -v m="$1" 'BEGIN{printf "%6.2f %s\n", b - a, m}' >> "$logs/timing.txt"; }
: > "$logs/timing.txt"

{
  echo "aiortc $($PY -c 'import aiortc; print(aiortc.__version__)') (aioice $($PY -c 'import aioice; print(aioice.__version__)'))"
  echo "chromium $(dpkg-query -W -f '${Version}' chromium 2>/dev/null)"
  echo "baresip $(dpkg-query -W -f '${Version}' baresip-core 2>/dev/null) (libre $(dpkg-query -W -f '${Version}' libre0 2>/dev/null))"
  echo "rtpengine $(dpkg-query -W -f '${Version}' rtpengine-daemon 2>/dev/null)"
} > "$out/versions.txt"

# --- rtpengine: started first, it needs a moment --------------------------------------------------------------
/usr/bin/rtpengine --foreground --log-stderr --table=-1 --interface="$IP" --listen-ng=127.0.0.1:$NG_PORT \
  --port-min=30000 --port-max=30099 --log-level=6 > "$logs/rtpengine.log" 2>&1 &
pids+=($!)

# --- aiortc ------------------------------------------------------------------------------------------------------
$PY "$here/aiortc_peer.py" --offer-out "$out/aiortc-offer.sdp.raw" > "$logs/aiortc.log" 2>&1 &
apid=$!; pids+=($apid)

# --- Chromium, in a nested namespace with a veth pair (it ignores lo) ----------------------------------------------
unshare -n -- bash -c '
  set -e
  ip link set lo up
  ip link add v0 type veth peer name v1
  ip addr add 198.18.0.1/24 dev v0; ip addr add 198.18.0.2/24 dev v1
  ip link set v0 up; ip link set v1 up
  ip route add default via 198.18.0.2 dev v0
  exec /usr/bin/python3 "$1" --offer-out "$2"' chromium "$here/chromium_peer.py" "$out/chromium-offer.sdp.raw" \
  > "$logs/chromium.log" 2>&1 &
cpid=$!; pids+=($cpid)

# --- baresip: two UAs (DTLS+ICE, SDES) dial a SIP sink that records the INVITE bodies and answers 486 ----------------
$PY "$here/sip_sink.py" --bind 127.0.0.1:$SINK_PORT --out-dir "$logs" --expect bs-dtls,bs-sdes --timeout 40 \
  > "$logs/sip_sink.log" 2>&1 &
spid=$!; pids+=($spid)
bs() { # name sip_port account-params
  local d=$out/baresip-$1
  mkdir -p "$d"
  cat > "$d/config" <<CFG
poll_method		epoll
sip_listen		127.0.0.1:$2
call_local_timeout	10
audio_player		alsa,null
audio_source		ausine,440
audio_alert		alsa,null
ausrc_srate		48000
auplay_srate		48000
ausrc_channels		2
auplay_channels		2
rtp_ports		$3
rtcp_mux		yes
net_interface		127.0.0.1
dns_server		127.0.0.1:53
module_path		/usr/lib/baresip/modules
module			g711.so
module			opus.so
module			alsa.so
module			ausine.so
module			ice.so
module			srtp.so
module			dtls_srtp.so
module_tmp		uuid.so
module_tmp		account.so
module_app		menu.so
opus_bitrate		32000
opus_stereo		no
opus_sprop_stereo	no
CFG
  echo "<sip:$1@127.0.0.1>;regint=0;$4;audio_codecs=opus/48000/1;answermode=manual" > "$d/accounts"
  /usr/bin/baresip -f "$d" -e "/dial sip:sink@127.0.0.1:$SINK_PORT" -t 45 < /dev/null > "$logs/baresip-$1.log" 2>&1 &
  pids+=($!)
}
bs bs-dtls 5160 20000-20049 "medianat=ice;mediaenc=dtls_srtp"
bs bs-sdes 5170 20050-20099 "mediaenc=srtp-mand"

# --- rtpengine offers: a plain RTP/AVP Opus offer (shaped like Meta's), turned into the WebRTC/SDES offers ------------
NG="$PY $here/../rtpengine/ng.py --ng 127.0.0.1:$NG_PORT"
# (ng over UDP: a ping sent before rtpengine listens is lost and waits out ng.py's 5 s timeout, so wait for the log)
for ((i = 0; i < 200; i++)); do grep -q 'Startup complete' "$logs/rtpengine.log" 2>/dev/null && break; sleep 0.025; done
$NG ping > /dev/null || { echo "rtpengine does not answer ng ping:"; cat "$logs/rtpengine.log"; exit 1; }
SSRC=4208138518
printf '%s\r\n' v=0 "o=- 7602563789789945080 2 IN IP4 127.0.0.1" s=- 't=0 0' 'a=group:BUNDLE audio' \
  'a=msid-semantic: WMS 6932bc1c-db1a-4abe-b437-0c4168be8a13' "m=audio 40000 RTP/AVP 111 126" "c=IN IP4 $IP" \
  'a=mid:audio' 'a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level' \
  'a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time' \
  'a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01' 'a=sendrecv' \
  'a=rtpmap:111 opus/48000/2' 'a=rtcp-fb:111 transport-cc' 'a=fmtp:111 minptime=10;useinbandfec=1' \
  'a=rtpmap:126 telephone-event/8000' "a=ssrc:$SSRC cname:gAXq2V9TKltrnapv" \
  "a=ssrc:$SSRC msid:6932bc1c-db1a-4abe-b437-0c4168be8a13 audio#R5wfXFcdmT6" \
  "a=ssrc:$SSRC mslabel:6932bc1c-db1a-4abe-b437-0c4168be8a13" "a=ssrc:$SSRC label:audio#R5wfXFcdmT6" \
  > "$logs/plain-dtls-offer.sdp"
printf '%s\r\n' v=0 "o=- 1746659966980 2 IN IP4 127.0.0.1" s=- 't=0 0' 'a=group:BUNDLE audio' \
  'a=msid-semantic: WMS 07092115-d151-427e-8722-26c70936b104' "m=audio 40002 RTP/AVP 111 126" "c=IN IP4 $IP" \
  'a=mid:audio' 'a=sendrecv' 'a=msid:07092115-d151-427e-8722-26c70936b104 WhatsAppTrack1' 'a=rtpmap:111 opus/48000/2' \
  'a=fmtp:111 maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1' \
  'a=rtpmap:126 telephone-event/8000' 'a=maxptime:20' 'a=ptime:20' "a=ssrc:$SSRC cname:WhatsAppAudioStream1" \
  > "$logs/plain-sdes-offer.sdp"
# ng flags from peers/rtpengine/META-STANDIN.md
common='"replace":["session-connection"],"rtcp-mux":["require"],"flags":["no-rtcp-attribute"]'
dtls_flags='{"transport-protocol":"UDP/TLS/RTP/SAVPF","ICE":"force","ICE-lite":"forward","DTLS":"passive","SDES":["off"],'"$common"'}'
no=""
for s in AEAD_AES_256_GCM AEAD_AES_128_GCM AES_256_CM_HMAC_SHA1_80 AES_256_CM_HMAC_SHA1_32 AES_192_CM_HMAC_SHA1_80 \
  AES_192_CM_HMAC_SHA1_32 AES_CM_128_HMAC_SHA1_32 F8_128_HMAC_SHA1_80 F8_128_HMAC_SHA1_32 NULL_HMAC_SHA1_80 \
  NULL_HMAC_SHA1_32; do no="$no\"no-$s\","; done
sdes_flags='{"transport-protocol":"RTP/SAVP","ICE":"remove","DTLS":"off","SDES":['"${no%,}"'],'"$common"'}'
$NG offer capture-dtls meta "$logs/plain-dtls-offer.sdp" "$dtls_flags" > "$out/rtpengine-dtls-offer.sdp.raw" \
  || { echo "rtpengine dtls offer failed:"; cat "$out/rtpengine-dtls-offer.sdp.raw"; exit 1; }
$NG offer capture-sdes meta "$logs/plain-sdes-offer.sdp" "$sdes_flags" > "$out/rtpengine-sdes-offer.sdp.raw" \
  || { echo "rtpengine sdes offer failed:"; cat "$out/rtpengine-sdes-offer.sdp.raw"; exit 1; }
$NG delete capture-dtls meta > /dev/null || true
$NG delete capture-sdes meta > /dev/null || true

# --- collect ---------------------------------------------------------------------------------------------------------
mark "rtpengine offers done"
rc=0
wait "$apid" || { echo "aiortc failed:"; cat "$logs/aiortc.log"; rc=1; }
mark "aiortc done"
wait "$cpid" || { echo "chromium failed:"; cat "$logs/chromium.log"; rc=1; }
mark "chromium done"
wait "$spid" || { echo "baresip: no INVITE (sip_sink.log, baresip-*.log):"; cat "$logs/sip_sink.log"; \
  tail -n 20 "$logs"/baresip-*.log; rc=1; }
mark "baresip INVITEs captured"
[ -s "$logs/bs-dtls.sdp" ] && crlf "$logs/bs-dtls.sdp" "$out/baresip-offer.sdp"
[ -s "$logs/bs-sdes.sdp" ] && crlf "$logs/bs-sdes.sdp" "$out/baresip-sdes-offer.sdp"
for f in aiortc chromium rtpengine-dtls rtpengine-sdes; do
  [ -s "$out/$f-offer.sdp.raw" ] && crlf "$out/$f-offer.sdp.raw" "$out/$f-offer.sdp"
  rm -f "$out/$f-offer.sdp.raw"
done
for f in aiortc chromium baresip baresip-sdes rtpengine-dtls rtpengine-sdes; do
  [ -s "$out/$f-offer.sdp" ] || { echo "missing $f-offer.sdp"; rc=1; }
done
rm -rf "$out"/baresip-bs-*
echo "capture took $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}') s"
exit $rc
