//! One outbound RTP stream toward Meta whatever the sink does: packets from the sink and our own
//! silence frames are written onto one SSRC with continuous sequence numbers and timestamps. A sink
//! that restarts, changes SSRC or falls silent never shows the far side a second stream (WhatsApp
//! keeps one SSRC per call). Allocation-free: it rewrites the header in place.

use std::time::{Duration, Instant};

/// 20 ms at Opus's 48 kHz RTP clock.
pub const FRAME_TICKS: u32 = 960;
pub const FRAME: Duration = Duration::from_millis(20);

/// An Opus frame of silence (RFC 6716 TOC: config 31, CELT FB 20 ms, mono, one frame; payload that
/// decodes to silence), what browsers send for DTX.
pub const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

#[derive(Debug, Clone, Copy)]
struct Anchor {
    source_ssrc: u32,
    seq_offset: u16,
    ts_offset: u32,
}

#[derive(Debug)]
pub struct Restamper {
    ssrc: u32,
    next_seq: u16,
    last_ts: u32,
    last_sent: Option<Instant>,
    anchor: Option<Anchor>,
}

impl Restamper {
    pub fn new(ssrc: u32, first_seq: u16, first_ts: u32) -> Restamper {
        Restamper {
            ssrc,
            next_seq: first_seq,
            last_ts: first_ts.wrapping_sub(FRAME_TICKS),
            last_sent: None,
            anchor: None,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Timestamp for a new anchor: one frame after the last one sent, or as many frames as the wall
    /// clock says have passed.
    fn resume_ts(&self, now: Instant) -> u32 {
        let frames = match self.last_sent {
            Some(t) => (now.saturating_duration_since(t).as_millis() / 20).max(1) as u32,
            None => 1,
        };
        self.last_ts.wrapping_add(FRAME_TICKS.wrapping_mul(frames))
    }

    /// Rewrites an RTP packet from the sink in place. Returns false (packet to drop) when it is not
    /// an RTP packet of version 2 with a full header.
    pub fn restamp(&mut self, packet: &mut [u8], now: Instant) -> bool {
        if packet.len() < 12 || packet[0] >> 6 != 2 {
            return false;
        }
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ts = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let anchor = match self.anchor {
            Some(a) if a.source_ssrc == ssrc => a,
            _ => {
                let a = Anchor {
                    source_ssrc: ssrc,
                    seq_offset: self.next_seq.wrapping_sub(seq),
                    ts_offset: self.resume_ts(now).wrapping_sub(ts),
                };
                self.anchor = Some(a);
                a
            }
        };
        let out_seq = seq.wrapping_add(anchor.seq_offset);
        let out_ts = ts.wrapping_add(anchor.ts_offset);
        packet[2..4].copy_from_slice(&out_seq.to_be_bytes());
        packet[4..8].copy_from_slice(&out_ts.to_be_bytes());
        packet[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        // A reordered or duplicated sink packet must not move the stream backwards.
        if out_seq.wrapping_sub(self.next_seq) < 0x8000 {
            self.next_seq = out_seq.wrapping_add(1);
            self.last_ts = out_ts;
        }
        self.last_sent = Some(now);
        true
    }

    /// The audio timestamp of a packet sent now (for a DTMF event's start).
    pub fn now_ts(&self, now: Instant) -> u32 {
        self.resume_ts(now)
    }

    /// Writes a packet of our own (a telephone-event) into `out`: next sequence number, `timestamp`
    /// in the header, while the stream's clock advances as for a frame of audio. Returns its length.
    pub fn own_packet(
        &mut self,
        payload_type: u8,
        marker: bool,
        timestamp: u32,
        payload: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> usize {
        let clock = self.resume_ts(now);
        let header = OwnHeader {
            payload_type,
            marker,
            timestamp,
        };
        self.write_own(header, clock, payload, out, now)
    }

    /// Writes a packet of ours with the next sequence number; the stream's clock is `clock` after
    /// it, and the next sink packet is re-anchored.
    fn write_own(
        &mut self,
        header: OwnHeader,
        clock: u32,
        payload: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> usize {
        let seq = self.next_seq;
        out[0] = 0x80;
        out[1] = (u8::from(header.marker) << 7) | (header.payload_type & 0x7f);
        out[2..4].copy_from_slice(&seq.to_be_bytes());
        out[4..8].copy_from_slice(&header.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out[12..12 + payload.len()].copy_from_slice(payload);
        self.next_seq = seq.wrapping_add(1);
        self.last_ts = clock;
        self.last_sent = Some(now);
        self.anchor = None;
        12 + payload.len()
    }

    /// Writes one 20 ms audio frame of our own making (transcoded from the sink) into `out`: the
    /// next sequence number, one frame after the last packet while the stream flows, or as many
    /// frames as the wall clock says after a pause. Returns its length.
    pub fn frame(
        &mut self,
        payload_type: u8,
        payload: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> usize {
        let flowing = self
            .last_sent
            .is_some_and(|t| now.saturating_duration_since(t) < FRAME * 3);
        let ts = if flowing {
            self.last_ts.wrapping_add(FRAME_TICKS)
        } else {
            self.resume_ts(now)
        };
        self.write_own(OwnHeader::audio(payload_type, ts), ts, payload, out, now)
    }

    /// Writes one silence frame (12-octet header + `OPUS_SILENCE`) into `out`; returns its length.
    /// The next sink packet is re-anchored after it.
    pub fn silence(&mut self, payload_type: u8, out: &mut [u8; 15], now: Instant) -> usize {
        let ts = self.resume_ts(now);
        self.write_own(
            OwnHeader::audio(payload_type, ts),
            ts,
            &OPUS_SILENCE,
            out,
            now,
        )
    }
}

/// The header fields of a packet of ours.
#[derive(Clone, Copy)]
struct OwnHeader {
    payload_type: u8,
    marker: bool,
    timestamp: u32,
}

impl OwnHeader {
    fn audio(payload_type: u8, timestamp: u32) -> OwnHeader {
        OwnHeader {
            payload_type,
            marker: false,
            timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ts: u32, ssrc: u32) -> [u8; 14] {
        let mut p = [0u8; 14];
        p[0] = 0x80;
        p[1] = 111;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p
    }

    fn fields(p: &[u8]) -> (u16, u32, u32) {
        (
            u16::from_be_bytes([p[2], p[3]]),
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        )
    }

    #[test]
    fn silence_then_sink_then_restarted_sink_is_one_continuous_stream() {
        let t0 = Instant::now();
        let mut r = Restamper::new(0xabcdef01, 1000, 50_000);
        let mut buf = [0u8; 15];
        let mut seen = Vec::new();
        for i in 0..3 {
            r.silence(111, &mut buf, t0 + FRAME * i);
            seen.push(fields(&buf));
        }
        for i in 0..3u16 {
            let mut p = rtp(7000 + i, 123_456 + u32::from(i) * 960, 42);
            assert!(r.restamp(&mut p, t0 + FRAME * (3 + u32::from(i))));
            seen.push(fields(&p));
        }
        // The sink restarts with another SSRC and a random sequence.
        for i in 0..3u16 {
            let mut p = rtp(10 + i, 9 + u32::from(i) * 960, 77);
            assert!(r.restamp(&mut p, t0 + FRAME * (6 + u32::from(i))));
            seen.push(fields(&p));
        }
        for (i, (seq, ts, ssrc)) in seen.iter().enumerate() {
            assert_eq!(*ssrc, 0xabcdef01);
            assert_eq!(*seq, 1000 + i as u16, "{seen:?}");
            assert_eq!(*ts, 50_000 + 960 * i as u32, "{seen:?}");
        }
    }

    #[test]
    fn wrapping_and_reordering() {
        let t0 = Instant::now();
        let mut r = Restamper::new(1, 65534, u32::MAX - 960);
        let mut a = rtp(5, 0, 9);
        let mut b = rtp(6, 960, 9);
        let mut late = rtp(4, 0u32.wrapping_sub(960), 9);
        assert!(r.restamp(&mut a, t0));
        assert!(r.restamp(&mut b, t0 + FRAME));
        assert!(r.restamp(&mut late, t0 + FRAME * 2));
        assert_eq!(fields(&a).0, 65534);
        assert_eq!(fields(&b).0, 65535);
        assert_eq!(fields(&late).0, 65533);
        let mut buf = [0u8; 15];
        r.silence(111, &mut buf, t0 + FRAME * 3);
        assert_eq!(
            fields(&buf).0,
            0,
            "the late packet did not move the stream back"
        );
    }

    #[test]
    fn rejects_what_is_not_rtp() {
        let mut r = Restamper::new(1, 1, 1);
        assert!(!r.restamp(&mut [0x80, 111, 0, 1], Instant::now()));
        let mut v1 = rtp(1, 1, 1);
        v1[0] = 0x40;
        assert!(!r.restamp(&mut v1, Instant::now()));
    }
}

/// The far side's payload types and the sink's: the relay rewrites the PT byte both ways;
/// payloads are untouched.
#[derive(Debug, Clone, Copy)]
pub struct PayloadMap {
    pub remote_audio: u8,
    pub remote_dtmf: Option<u8>,
    pub sink: SinkPayloads,
}

/// The payload types the sink uses for Opus and telephone-event. A sink without SDP (a voice
/// agent) uses WhatsApp's own numbers whatever the far side negotiated, 111 and 126; a PBX uses
/// what its SDP agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkPayloads {
    pub audio: u8,
    pub dtmf: u8,
    /// The sink's telephone-event clock: 8000 (WhatsApp's), or 48000 for a PBX that counts its
    /// events' durations at the Opus clock: they are scaled on the way, both ways.
    pub dtmf_clock: u32,
}

impl Default for SinkPayloads {
    fn default() -> Self {
        SinkPayloads {
            audio: LOCAL_OPUS_PT,
            dtmf: LOCAL_DTMF_PT,
            dtmf_clock: 8000,
        }
    }
}

pub const LOCAL_OPUS_PT: u8 = 111;
pub const LOCAL_DTMF_PT: u8 = 126;

impl PayloadMap {
    fn rewrite(packet: &mut [u8], from: u8, to: u8) -> bool {
        let pt = packet[1] & 0x7f;
        if pt == from {
            packet[1] = (packet[1] & 0x80) | to;
            true
        } else {
            false
        }
    }

    /// A packet from the sink, toward the far side: false when its PT is neither Opus nor DTMF.
    pub fn to_remote(&self, packet: &mut [u8]) -> bool {
        if packet.len() < 12 {
            return false;
        }
        if Self::rewrite(packet, self.sink.audio, self.remote_audio) {
            return true;
        }
        let event = self
            .remote_dtmf
            .is_some_and(|d| Self::rewrite(packet, self.sink.dtmf, d));
        if event && self.sink.dtmf_clock != 8000 {
            scale_event_duration(packet, 8000, self.sink.dtmf_clock);
        }
        event
    }

    /// A packet from the far side, toward the sink: other PTs pass as they are.
    pub fn to_local(&self, packet: &mut [u8]) {
        if packet.len() < 12 {
            return;
        }
        if !Self::rewrite(packet, self.remote_audio, self.sink.audio) {
            if let Some(d) = self.remote_dtmf {
                if Self::rewrite(packet, d, self.sink.dtmf) && self.sink.dtmf_clock != 8000 {
                    scale_event_duration(packet, self.sink.dtmf_clock, 8000);
                }
            }
        }
    }
}

/// An RFC 4733 event's duration (payload bytes 2-3) from one clock to another, in place.
fn scale_event_duration(packet: &mut [u8], to_clock: u32, from_clock: u32) {
    let Some(range) = crate::transcode::payload_range(packet) else {
        return;
    };
    let Some(duration) = packet.get_mut(range.start + 2..range.start + 4) else {
        return;
    };
    let d = u64::from(u16::from_be_bytes([duration[0], duration[1]]));
    let scaled = (d * u64::from(to_clock) / u64::from(from_clock.max(1))).min(0xffff) as u16;
    duration.copy_from_slice(&scaled.to_be_bytes());
}

#[cfg(test)]
mod payload_map_tests {
    use super::*;

    #[test]
    fn rewrites_both_ways_and_keeps_the_marker() {
        let map = PayloadMap {
            remote_audio: 96,
            remote_dtmf: Some(101),
            sink: SinkPayloads::default(),
        };
        let mut p = [0x80, 0x80 | 111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        assert!(map.to_remote(&mut p));
        assert_eq!(p[1], 0x80 | 96);
        map.to_local(&mut p);
        assert_eq!(p[1], 0x80 | 111);
        let mut dtmf = [0x80, 126, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(map.to_remote(&mut dtmf));
        assert_eq!(dtmf[1], 101);
        let mut other = [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(
            !map.to_remote(&mut other),
            "PCMU from the sink is not sent to a WhatsApp leg"
        );
    }

    /// A PBX whose telephone-event runs at the Opus clock: Meta's durations (8 kHz units) are six
    /// times longer toward it, and its own six times shorter toward Meta.
    #[test]
    fn event_durations_follow_a_pbx_at_the_opus_clock() {
        let map = PayloadMap {
            remote_audio: 111,
            remote_dtmf: Some(126),
            sink: SinkPayloads {
                audio: 111,
                dtmf: 101,
                dtmf_clock: 48000,
            },
        };
        // Key 5, end bit clear, volume 10, duration 800 (100 ms at 8 kHz).
        let mut from_meta = [0x80, 126, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 5, 10, 0x03, 0x20];
        map.to_local(&mut from_meta);
        assert_eq!(from_meta[1], 101);
        assert_eq!(u16::from_be_bytes([from_meta[14], from_meta[15]]), 4800);
        let mut from_pbx = [0x80, 101, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 5, 10, 0x12, 0xc0];
        assert!(map.to_remote(&mut from_pbx));
        assert_eq!(from_pbx[1], 126);
        assert_eq!(u16::from_be_bytes([from_pbx[14], from_pbx[15]]), 800);
        // Audio is left alone.
        let mut opus = [0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x12, 0xc0];
        map.to_local(&mut opus);
        assert_eq!(&opus[12..], &[0x12, 0xc0]);
    }

    #[test]
    fn a_pbx_sink_keeps_its_own_payload_types() {
        let map = PayloadMap {
            remote_audio: 111,
            remote_dtmf: Some(126),
            sink: SinkPayloads {
                audio: 107,
                dtmf: 101,
                dtmf_clock: 8000,
            },
        };
        let mut opus = [0x80, 107, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        assert!(map.to_remote(&mut opus));
        assert_eq!(opus[1], 111);
        map.to_local(&mut opus);
        assert_eq!(opus[1], 107);
        let mut dtmf = [0x80, 0x80 | 126, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        map.to_local(&mut dtmf);
        assert_eq!(dtmf[1], 0x80 | 101);
        assert!(map.to_remote(&mut dtmf));
        assert_eq!(dtmf[1], 0x80 | 126);
    }
}
