//! The sim's audio: a tone encoded as Opus RTP (20 ms frames, 48 kHz mono, one SSRC), a recorder
//! that decodes what arrives, and the tone's frequency read back from a recording (Goertzel scan,
//! then a finer one around the peak).

use std::f64::consts::PI;

use anyhow::{anyhow, Result};

pub const RATE: u32 = 48_000;
pub const FRAME_SAMPLES: usize = 960;
/// The most a recorder keeps (seconds): a long call keeps its first minute.
const MAX_RECORDED_SECS: usize = 60;
/// Packets held to be decoded in sequence order, as a receiver's jitter buffer does (8: 160 ms).
const REORDER_WINDOW: usize = 8;
/// The longest hole concealed (Opus PLC) frame by frame; a longer jump is a new start.
const MAX_CONCEALED: u64 = 5;
/// A packet this far behind the next one to decode starts the stream again (a new source).
const RESTART: u64 = 64;

/// A sine tone as a stream of Opus RTP packets.
pub struct Tone {
    encoder: opus::Encoder,
    hz: f64,
    phase: f64,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    payload_type: u8,
}

impl Tone {
    /// A tone with a random SSRC, first sequence number and timestamp.
    pub fn new(hz: f64, payload_type: u8, rng: &mut impl rand::Rng) -> Result<Tone> {
        let encoder = opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Voip)
            .map_err(|e| anyhow!("Opus encoder: {e}"))?;
        Ok(Tone {
            encoder,
            hz,
            phase: 0.0,
            seq: rng.gen(),
            timestamp: rng.gen(),
            ssrc: rng.gen(),
            payload_type,
        })
    }

    /// The next 20 ms as an RTP packet in `out`; its length.
    pub fn next_packet(&mut self, out: &mut [u8]) -> Result<usize> {
        let mut pcm = [0i16; FRAME_SAMPLES];
        let step = 2.0 * PI * self.hz / f64::from(RATE);
        for sample in pcm.iter_mut() {
            *sample = (self.phase.sin() * 0.3 * f64::from(i16::MAX)) as i16;
            self.phase = (self.phase + step) % (2.0 * PI);
        }
        out[0] = 0x80;
        out[1] = self.payload_type & 0x7f;
        out[2..4].copy_from_slice(&self.seq.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        let n = self
            .encoder
            .encode(&pcm, &mut out[12..])
            .map_err(|e| anyhow!("Opus encode: {e}"))?;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
        Ok(12 + n)
    }
}

/// The payload of an RTP packet (after CSRCs, header extension and before padding).
pub fn rtp_payload(packet: &[u8]) -> Option<(u8, &[u8])> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let csrcs = usize::from(packet[0] & 0x0f);
    let mut start = 12 + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        let words = u16::from_be_bytes([*packet.get(start + 2)?, *packet.get(start + 3)?]);
        start += 4 + 4 * usize::from(words);
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*packet.last()?))?;
    }
    (start <= end).then(|| (packet[1] & 0x7f, &packet[start..end]))
}

/// Decodes one payload type's packets and keeps the audio.
pub struct Recorder {
    decoder: opus::Decoder,
    payload_type: u8,
    pub samples: Vec<i16>,
    pub packets: u64,
    /// Packets of another payload type (telephone-event) or that did not decode.
    pub other: u64,
    /// The SSRCs the stream arrived with, in order of appearance (at most 8 kept).
    pub ssrcs: Vec<u32>,
    /// Packets whose sequence number arrived before (among the last 1,024).
    pub repeated_seqs: u64,
    /// Packets whose sequence number was not the one after the previous packet's (a hole or a
    /// jump; repeats not counted).
    pub seq_jumps: u64,
    /// Packets that arrived after one with a higher sequence number (reordered on the way; repeats
    /// not counted).
    pub reordered: u64,
    /// The longest time between two packets of the stream, once it started.
    pub max_gap: std::time::Duration,
    last: Option<(u16, std::time::Instant)>,
    sequence: SeenSequence,
    /// Audio packets not decoded yet, by extended sequence number, and the next one to decode.
    pending: std::collections::BTreeMap<u64, Vec<u8>>,
    next_decode: Option<u64>,
    /// The telephone-events among the packets.
    pub dtmf: Events,
}

/// RFC 4733 telephone-events as they arrive: a key per event (a new timestamp), and its longest
/// duration seen, in milliseconds of the 8000 Hz clock.
#[derive(Debug, Default)]
pub struct Events {
    pub keys: String,
    pub durations_ms: Vec<u32>,
    current: Option<u32>,
}

/// The payload type of telephone-event/8000 on the sim's plain side (WhatsApp's own number).
pub const DTMF_PT: u8 = 126;

impl Events {
    fn push(&mut self, timestamp: u32, payload: &[u8]) {
        let [code, _, d0, d1] = match payload.get(..4) {
            Some(&[a, b, c, d]) => [a, b, c, d],
            _ => return,
        };
        let key = match code {
            0..=9 => char::from(b'0' + code),
            10 => '*',
            11 => '#',
            12..=15 => char::from(b'A' + code - 12),
            _ => return,
        };
        let ms = u32::from(u16::from_be_bytes([d0, d1])) / 8;
        if self.current != Some(timestamp) {
            self.current = Some(timestamp);
            self.keys.push(key);
            self.durations_ms.push(ms);
        } else if let Some(last) = self.durations_ms.last_mut() {
            *last = (*last).max(ms);
        }
    }
}

/// The last 1,024 extended sequence numbers of a stream, to find repeats.
#[derive(Default)]
struct SeenSequence {
    last: Option<u16>,
    cycles: u64,
    order: std::collections::VecDeque<u64>,
    seen: std::collections::HashSet<u64>,
}

impl SeenSequence {
    const WINDOW: usize = 1024;

    /// Records `seq`: whether it was seen already, or comes after a higher one; and its extended
    /// sequence number.
    fn arrive(&mut self, seq: u16) -> (Arrival, u64) {
        // Newest: up to half the sequence space ahead of the highest so far.
        let newest = self
            .last
            .is_none_or(|l| (1..0x8000).contains(&seq.wrapping_sub(l)));
        let cycles = match self.last {
            Some(l) if newest && seq < l => {
                self.cycles += 1;
                self.cycles
            }
            // A late packet from before the highest one's wrap.
            Some(l) if !newest && seq > l => self.cycles.saturating_sub(1),
            _ => self.cycles,
        };
        let extended = (cycles << 16) | u64::from(seq);
        if newest {
            self.last = Some(seq);
        }
        if !self.seen.insert(extended) {
            return (Arrival::Repeated, extended);
        }
        self.order.push_back(extended);
        if self.order.len() > Self::WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if newest {
            (Arrival::Newest, extended)
        } else {
            (Arrival::Late, extended)
        }
    }
}

#[derive(PartialEq)]
enum Arrival {
    Newest,
    /// After a packet with a higher sequence number.
    Late,
    Repeated,
}

impl Recorder {
    pub fn new(payload_type: u8) -> Result<Recorder> {
        Ok(Recorder {
            decoder: opus::Decoder::new(RATE, opus::Channels::Mono)
                .map_err(|e| anyhow!("Opus decoder: {e}"))?,
            payload_type,
            samples: Vec::new(),
            packets: 0,
            other: 0,
            ssrcs: Vec::new(),
            repeated_seqs: 0,
            seq_jumps: 0,
            reordered: 0,
            max_gap: std::time::Duration::ZERO,
            last: None,
            sequence: SeenSequence::default(),
            pending: std::collections::BTreeMap::new(),
            next_decode: None,
            dtmf: Events::default(),
        })
    }

    pub fn push(&mut self, packet: &[u8]) {
        let Some((pt, payload)) = rtp_payload(packet) else {
            self.other += 1;
            return;
        };
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        if !self.ssrcs.contains(&ssrc) && self.ssrcs.len() < 8 {
            self.ssrcs.push(ssrc);
        }
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let (arrival, extended) = self.sequence.arrive(seq);
        if arrival == Arrival::Repeated {
            self.repeated_seqs += 1;
        } else {
            if arrival == Arrival::Late {
                self.reordered += 1;
            }
            let now = std::time::Instant::now();
            if let Some((last_seq, last_at)) = self.last {
                if seq != last_seq.wrapping_add(1) {
                    self.seq_jumps += 1;
                }
                self.max_gap = self.max_gap.max(now.duration_since(last_at));
            }
            self.last = Some((seq, now));
        }
        if pt == DTMF_PT {
            let ts = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
            self.dtmf.push(ts, payload);
        }
        if pt != self.payload_type {
            self.other += 1;
            return;
        }
        self.packets += 1;
        if arrival == Arrival::Repeated || self.samples.len() >= MAX_RECORDED_SECS * RATE as usize {
            return;
        }
        self.pending.insert(extended, payload.to_vec());
        while self.pending.len() > REORDER_WINDOW {
            self.decode_next();
        }
    }

    /// Decodes the lowest pending packet, after concealing a short hole before it; a packet whose
    /// place was played already is dropped, as a jitter buffer drops it.
    fn decode_next(&mut self) {
        let Some((seq, payload)) = self.pending.pop_first() else {
            return;
        };
        let mut pcm = [0i16; 5760];
        match self.next_decode {
            // Late by a little: its place was played. Far behind: the stream started again.
            Some(next) if seq < next && next - seq <= RESTART => return,
            Some(next) if seq - next <= MAX_CONCEALED => {
                for _ in next..seq {
                    if let Ok(n) = self.decoder.decode(&[], &mut pcm[..FRAME_SAMPLES], false) {
                        self.samples.extend_from_slice(&pcm[..n]);
                    }
                }
            }
            _ => {}
        }
        self.next_decode = Some(seq + 1);
        match self.decoder.decode(&payload, &mut pcm, false) {
            Ok(n) => self.samples.extend_from_slice(&pcm[..n]),
            Err(_) => self.other += 1,
        }
    }

    /// The dominant frequency and RMS level (0..1) of the recording after `skip_secs`, over at most
    /// one second; `None` for less than 0.2 s of audio. Decodes what is still pending first.
    pub fn analyse(&mut self, skip_secs: f64) -> Option<(f64, f64)> {
        while !self.pending.is_empty() {
            self.decode_next();
        }
        let skip = ((skip_secs * f64::from(RATE)) as usize).min(self.samples.len() / 2);
        let window = &self.samples[skip..];
        let window = &window[..window.len().min(RATE as usize)];
        dominant(window)
    }
}

/// The frequency with the most energy between 50 Hz and 4 kHz, and the RMS level.
pub fn dominant(samples: &[i16]) -> Option<(f64, f64)> {
    if samples.len() < RATE as usize / 5 {
        return None;
    }
    let x: Vec<f64> = samples
        .iter()
        .map(|&s| f64::from(s) / f64::from(i16::MAX))
        .collect();
    let rms = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
    let scan = |from: f64, to: f64, step: f64| {
        let mut best = (from, 0.0);
        let mut f = from;
        while f <= to {
            let p = goertzel(&x, f);
            if p > best.1 {
                best = (f, p);
            }
            f += step;
        }
        best.0
    };
    let coarse = scan(50.0, 4000.0, 10.0);
    Some((scan(coarse - 10.0, coarse + 10.0, 0.5), rms))
}

fn goertzel(x: &[f64], hz: f64) -> f64 {
    let coefficient = 2.0 * (2.0 * PI * hz / f64::from(RATE)).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = v + coefficient * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coefficient * s1 * s2
}

/// Within 3 % of `expected`.
pub fn near(hz: f64, expected: f64) -> bool {
    (hz - expected).abs() <= expected * 0.03
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_encoded_and_decoded_is_heard_at_its_frequency() {
        let mut tone = Tone::new(440.0, 111, &mut rand::rngs::mock::StepRng::new(7, 1)).unwrap();
        let mut recorder = Recorder::new(111).unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..75 {
            let n = tone.next_packet(&mut buf).unwrap();
            recorder.push(&buf[..n]);
        }
        assert_eq!(recorder.packets, 75);
        let (hz, rms) = recorder.analyse(0.2).unwrap();
        assert!(near(hz, 440.0), "{hz}");
        assert!(rms > 0.1, "{rms}");
    }

    #[test]
    fn late_packets_are_counted_as_reordered_across_the_sequence_wrap() {
        let mut recorder = Recorder::new(111).unwrap();
        let packet = |seq: u16| {
            let mut p = [0x80, 111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xf8];
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p
        };
        for seq in [65_534, 0, 65_535, 1, 3, 2, 2, 4] {
            recorder.push(&packet(seq));
        }
        assert_eq!(recorder.reordered, 2);
        assert_eq!(recorder.repeated_seqs, 1);
    }

    #[test]
    fn a_tone_arriving_out_of_order_with_holes_is_decoded_in_order() {
        let mut tone = Tone::new(440.0, 111, &mut rand::rngs::mock::StepRng::new(7, 1)).unwrap();
        let mut buf = [0u8; 1500];
        let mut packets: Vec<Vec<u8>> = (0..100)
            .map(|_| {
                let n = tone.next_packet(&mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect();
        // Every fifth lost, each pair of the rest swapped.
        packets = packets
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 5 != 4)
            .map(|(_, p)| p)
            .collect();
        for pair in packets.chunks_mut(2) {
            pair.reverse();
        }
        let mut recorder = Recorder::new(111).unwrap();
        for p in &packets {
            recorder.push(p);
        }
        assert!(recorder.reordered >= 35, "{}", recorder.reordered);
        let (hz, _) = recorder.analyse(0.2).unwrap();
        assert!((hz - 440.0).abs() <= 440.0 * 0.01, "{hz}");
    }

    #[test]
    fn other_payload_types_and_garbage_are_counted_not_decoded() {
        let mut recorder = Recorder::new(111).unwrap();
        recorder.push(&[0x80, 126, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 5, 0, 0, 160]);
        recorder.push(&[1, 2, 3]);
        assert_eq!((recorder.packets, recorder.other), (0, 2));
        assert!(recorder.analyse(0.0).is_none());
    }
}
