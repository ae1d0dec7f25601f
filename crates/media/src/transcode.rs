//! Audio between the WhatsApp leg's Opus (20 ms frames, 48 kHz RTP clock) and a PBX leg's G.711
//! (PCMU or PCMA, 8 kHz) or G.722 (16 kHz). libopus decodes and encodes at 8 or 16 kHz directly,
//! so no resampler sits in the path; G.711 is per-sample companding, G.722 sub-band ADPCM (the
//! `audio-codec` crate). Both put one byte on the wire per 1/8000 s and use an 8000 Hz RTP clock
//! (RFC 3551 §4.5.2 keeps G.722's at 8000), so their packets are alike. A lost Opus packet is recovered from the next one's
//! in-band FEC when it carries it, else concealed by libopus (PLC). The PBX may packetise at any
//! ptime: its audio is gathered into the 20 ms frames the WhatsApp leg sends.
//!
//! Sans-IO and allocation-free per packet: every buffer is fixed when a direction is made.
//! `ToSink` and `FromSink` put the two directions into RTP for a call whose sink speaks G.711.

use audio_codec::g722::{G722Decoder, G722Encoder};
use audio_codec::{Decoder as _, Encoder as _};
use audio_codec_algorithms::{decode_alaw, decode_ulaw, encode_alaw, encode_ulaw};

use std::time::Instant;

use crate::jitter::{JitterBuffer, JitterStats};

/// G.711's sample rate, and the RTP clock of G.711 and G.722.
pub const NARROWBAND_HZ: u32 = 8_000;
/// Wire bytes (and RTP clock ticks) in the 20 ms frames the WhatsApp leg carries.
pub const FRAME_SAMPLES: usize = 160;
/// The longest Opus packet (120 ms) at 16 kHz.
const MAX_PACKET_SAMPLES: usize = 1920;
/// The longest Opus packet (120 ms) on the wire toward the sink.
const MAX_PACKET_BYTES: usize = 960;
/// PBX audio waiting to be encoded: beyond 120 ms the oldest is dropped.
const PENDING_SAMPLES: usize = 1920;

/// What a transcoded sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PbxCodec {
    G711(Law),
    /// G.722 at 64 kbit/s (static payload type 9).
    G722,
}

impl PbxCodec {
    /// The audio's sample rate (not its RTP clock, 8000 Hz for both).
    pub fn sample_rate(self) -> u32 {
        match self {
            PbxCodec::G711(_) => NARROWBAND_HZ,
            PbxCodec::G722 => 16_000,
        }
    }

    /// Samples per wire byte.
    fn samples_per_byte(self) -> usize {
        match self {
            PbxCodec::G711(_) => 1,
            PbxCodec::G722 => 2,
        }
    }

    pub fn payload_type(self) -> u8 {
        match self {
            PbxCodec::G711(Law::Mu) => 0,
            PbxCodec::G711(Law::A) => 8,
            PbxCodec::G722 => 9,
        }
    }
}

/// The G.711 companding law of a PBX leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// PCMU (static payload type 0).
    Mu,
    /// PCMA (static payload type 8).
    A,
}

impl Law {
    pub(crate) fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Mu => encode_ulaw(sample),
            Law::A => encode_alaw(sample),
        }
    }

    fn decode(self, byte: u8) -> i16 {
        match self {
            Law::Mu => decode_ulaw(byte),
            Law::A => decode_alaw(byte),
        }
    }
}

/// Why a packet could not be transcoded, and whose fault that is.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The far side sent an Opus payload libopus cannot decode: the packet is dropped.
    #[error("the far side's Opus packet does not decode: {0}")]
    PeerPacket(opus::Error),
    /// libopus refused to start or to encode: our fault.
    #[error("libopus: {0}")]
    Local(opus::Error),
    /// The caller's output buffer is too small: our fault.
    #[error("the output buffer holds {have} bytes, {need} are needed")]
    ShortBuffer { need: usize, have: usize },
    /// The G.722 coder refused a frame: our fault (every frame is sized for it).
    #[error("G.722: {0}")]
    G722(String),
}

/// The WhatsApp leg's Opus toward the PBX's G.711 or G.722.
pub struct OpusToPbx {
    decoder: opus::Decoder,
    codec: PbxCodec,
    g722: Option<Box<G722Encoder>>,
    pcm: Box<[i16; MAX_PACKET_SAMPLES]>,
    /// The duration of the last packet decoded, which a lost one is assumed to have.
    last_samples: usize,
    /// Packets concealed by PLC, and recovered from the next packet's FEC.
    pub concealed: u64,
    pub recovered: u64,
}

impl OpusToPbx {
    pub fn new(codec: PbxCodec) -> Result<Self, TranscodeError> {
        let decoder = opus::Decoder::new(codec.sample_rate(), opus::Channels::Mono)
            .map_err(TranscodeError::Local)?;
        Ok(OpusToPbx {
            decoder,
            codec,
            g722: (codec == PbxCodec::G722).then(|| Box::new(G722Encoder::new())),
            pcm: Box::new([0; MAX_PACKET_SAMPLES]),
            last_samples: FRAME_SAMPLES * codec.samples_per_byte(),
            concealed: 0,
            recovered: 0,
        })
    }

    /// One received Opus payload for the PBX in `out`; the bytes written (one per 1/8000 s).
    pub fn packet(&mut self, opus: &[u8], out: &mut [u8]) -> Result<usize, TranscodeError> {
        if opus.is_empty() {
            // An empty payload would be read as a loss by libopus; it is simply nothing.
            return Ok(0);
        }
        let samples = self
            .decoder
            .decode(opus, &mut self.pcm[..], false)
            .map_err(TranscodeError::PeerPacket)?;
        self.last_samples = samples;
        self.companded(samples, out)
    }

    /// The packet before `next` never came: its audio recovered from `next`'s in-band FEC when
    /// `next` is at hand and carries it, else concealed.
    pub fn lost(&mut self, next: Option<&[u8]>, out: &mut [u8]) -> Result<usize, TranscodeError> {
        let samples = self.last_samples;
        let fec = next.filter(|p| !p.is_empty() && has_fec(p));
        let decoded = match fec {
            Some(next) => {
                let n = self
                    .decoder
                    .decode(next, &mut self.pcm[..samples], true)
                    .map_err(TranscodeError::PeerPacket)?;
                self.recovered += 1;
                n
            }
            None => {
                let n = self
                    .decoder
                    .decode(&[], &mut self.pcm[..samples], false)
                    .map_err(TranscodeError::Local)?;
                self.concealed += 1;
                n
            }
        };
        self.companded(decoded, out)
    }

    /// The duration of the last packet, in 48 kHz ticks (a lost one is assumed as long).
    pub fn last_ticks_48k(&self) -> u32 {
        (self.last_samples as u32) * (48_000 / self.codec.sample_rate())
    }

    fn companded(&mut self, samples: usize, out: &mut [u8]) -> Result<usize, TranscodeError> {
        let need = samples / self.codec.samples_per_byte();
        let have = out.len();
        let out = out
            .get_mut(..need)
            .ok_or(TranscodeError::ShortBuffer { need, have })?;
        match (self.codec, &mut self.g722) {
            (PbxCodec::G711(law), _) => {
                for (byte, &sample) in out.iter_mut().zip(self.pcm.iter()) {
                    *byte = law.encode(sample);
                }
                Ok(need)
            }
            (PbxCodec::G722, Some(encoder)) => encoder
                .encode_into(&self.pcm[..samples], out)
                .map_err(|e| TranscodeError::G722(e.to_string())),
            (PbxCodec::G722, None) => Ok(0),
        }
    }
}

/// Whether an Opus packet carries in-band FEC (LBRR) data for the packet before it.
fn has_fec(packet: &[u8]) -> bool {
    let Ok(len) = i32::try_from(packet.len()) else {
        return false;
    };
    // SAFETY: libopus reads `len` bytes from `packet`, which the slice holds, and keeps nothing.
    unsafe { opusic_sys::opus_packet_has_lbrr(packet.as_ptr(), len) == 1 }
}

/// The PBX's G.711 or G.722 toward the WhatsApp leg's Opus, in 20 ms frames whatever the PBX's
/// ptime.
pub struct PbxToOpus {
    encoder: opus::Encoder,
    codec: PbxCodec,
    g722: Option<Box<G722Decoder>>,
    pending: Box<[i16; PENDING_SAMPLES]>,
    filled: usize,
    /// Samples in 20 ms, and in the 120 ms kept at most, at the codec's rate.
    frame: usize,
    limit: usize,
    /// Samples dropped because the PBX sent faster than frames were taken.
    pub overflowed: u64,
}

impl PbxToOpus {
    /// An encoder for voice with in-band FEC on, expecting `loss_percent` loss toward Meta.
    pub fn new(codec: PbxCodec, loss_percent: u8) -> Result<Self, TranscodeError> {
        let mut encoder = opus::Encoder::new(
            codec.sample_rate(),
            opus::Channels::Mono,
            opus::Application::Voip,
        )
        .map_err(TranscodeError::Local)?;
        encoder
            .set_inband_fec(true)
            .and_then(|()| encoder.set_packet_loss_perc(i32::from(loss_percent.min(100))))
            .map_err(TranscodeError::Local)?;
        let frame = FRAME_SAMPLES * codec.samples_per_byte();
        Ok(PbxToOpus {
            encoder,
            codec,
            g722: (codec == PbxCodec::G722).then(|| Box::new(G722Decoder::new())),
            pending: Box::new([0; PENDING_SAMPLES]),
            filled: 0,
            frame,
            limit: frame * 6,
            overflowed: 0,
        })
    }

    /// Takes one payload from the PBX. What does not fit the pending audio pushes out the oldest
    /// (the PBX is ahead of the 20 ms clock).
    pub fn push(&mut self, payload: &[u8]) {
        let per_byte = self.codec.samples_per_byte();
        let max_bytes = self.limit / per_byte;
        let payload = if payload.len() > max_bytes {
            self.overflowed += ((payload.len() - max_bytes) * per_byte) as u64;
            &payload[payload.len() - max_bytes..]
        } else {
            payload
        };
        let samples = payload.len() * per_byte;
        let room = self.limit - self.filled;
        if samples > room {
            let drop = samples - room;
            self.pending.copy_within(drop..self.filled, 0);
            self.filled -= drop;
            self.overflowed += drop as u64;
        }
        let tail = &mut self.pending[self.filled..self.filled + samples];
        match (self.codec, &mut self.g722) {
            (PbxCodec::G711(law), _) => {
                for (slot, &byte) in tail.iter_mut().zip(payload) {
                    *slot = law.decode(byte);
                }
            }
            (PbxCodec::G722, Some(decoder)) => {
                if decoder.decode_into(payload, tail).is_err() {
                    tail.fill(0);
                }
            }
            (PbxCodec::G722, None) => tail.fill(0),
        }
        self.filled += samples;
    }

    /// Samples waiting for a frame, at the codec's rate.
    pub fn pending(&self) -> usize {
        self.filled
    }

    /// Whether 20 ms are waiting.
    pub fn ready(&self) -> bool {
        self.filled >= self.frame
    }

    /// The next 20 ms as an Opus payload in `out`, when 20 ms of PBX audio are in.
    pub fn frame(&mut self, out: &mut [u8]) -> Result<Option<usize>, TranscodeError> {
        let frame = self.frame;
        if self.filled < frame {
            return Ok(None);
        }
        let encoded = self.encoder.encode(&self.pending[..frame], out);
        // The frame is used up either way: a frame the encoder refused is not tried again.
        self.pending.copy_within(frame..self.filled, 0);
        self.filled -= frame;
        encoded.map(Some).map_err(TranscodeError::Local)
    }
}

/// What the sink (a voice agent, or a PBX leg's far end) speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkAudio {
    /// Opus on payload type 111, relayed as it is.
    #[default]
    Opus,
    /// G.711 on its static payload type (PCMU 0, PCMA 8), transcoded both ways.
    G711(Law),
    /// G.722 on its static payload type 9, transcoded both ways.
    G722,
}

impl SinkAudio {
    /// The payload type the sink's audio uses.
    pub fn payload_type(self) -> u8 {
        match self {
            SinkAudio::Opus => crate::restamp::LOCAL_OPUS_PT,
            SinkAudio::G711(Law::Mu) => 0,
            SinkAudio::G711(Law::A) => 8,
            SinkAudio::G722 => 9,
        }
    }

    /// The codec a transcoded sink speaks (None: Opus, relayed as it is).
    pub fn transcoded(self) -> Option<PbxCodec> {
        match self {
            SinkAudio::Opus => None,
            SinkAudio::G711(law) => Some(PbxCodec::G711(law)),
            SinkAudio::G722 => Some(PbxCodec::G722),
        }
    }
}

/// Where an RTP packet's payload lies (after CSRCs and a header extension, before padding).
pub fn payload_range(rtp: &[u8]) -> Option<std::ops::Range<usize>> {
    if rtp.len() < 12 || rtp[0] >> 6 != 2 {
        return None;
    }
    let mut start = 12 + 4 * usize::from(rtp[0] & 0x0f);
    if rtp[0] & 0x10 != 0 {
        let words = rtp.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let mut end = rtp.len();
    if rtp[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*rtp.last()?))?;
    }
    (start <= end).then_some(start..end)
}

/// Opus's 48 kHz RTP clock over G.711's 8 kHz.
const CLOCK_RATIO: u32 = 6;
/// Lost packets filled in before a packet that arrives after a gap (60 ms); a longer gap is left
/// as it is.
const MAX_FILLED: u16 = 3;

/// The far side's Opus RTP toward a G.711 sink: the same SSRC, sequence numbers and marker, the
/// 8 kHz clock, packets put back in order by a small reorder buffer (jitter.rs), and a lost packet
/// filled from the next one's FEC or concealed. Its telephone-events take the same way, so that
/// they keep their place among the audio.
pub struct ToSink {
    jitter: JitterBuffer,
    decode: Decode,
}

/// What decodes the packets the reorder buffer lets out.
struct Decode {
    decoder: OpusToPbx,
    payload_type: u8,
    /// The next sequence number due, once a packet came.
    expected: Option<u16>,
    /// The first packet's 48 kHz timestamp: the 8 kHz clock counts from it (no jump when the
    /// 48 kHz clock wraps).
    clock_base: Option<u32>,
    out: Box<[u8; 12 + MAX_PACKET_BYTES]>,
    /// Packets that did not decode (the far side's fault; dropped).
    undecodable: u64,
}

impl ToSink {
    pub fn new(codec: PbxCodec) -> Result<Self, TranscodeError> {
        Ok(ToSink {
            jitter: JitterBuffer::new(),
            decode: Decode {
                decoder: OpusToPbx::new(codec)?,
                payload_type: codec.payload_type(),
                expected: None,
                clock_base: None,
                out: Box::new([0; 12 + MAX_PACKET_BYTES]),
                undecodable: 0,
            },
        })
    }

    /// Packets recovered from FEC, and concealed.
    pub fn filled(&self) -> (u64, u64) {
        (self.decode.decoder.recovered, self.decode.decoder.concealed)
    }

    /// Packets that did not decode.
    pub fn undecodable(&self) -> u64 {
        self.decode.undecodable
    }

    /// What the reorder buffer has seen.
    pub fn jitter(&self) -> JitterStats {
        self.jitter.stats
    }

    /// Takes one plain RTP packet of the far side's that arrived at `now`: Opus audio (payload
    /// type `audio_pt`) or telephone-events (`dtmf_pt`); anything else only holds its place. `send`
    /// gets each packet for the sink as it may go: G.711 or G.722 audio (more than one packet
    /// when packets before it were lost and are filled in), and the events on the sink's clock.
    /// A packet that comes after its place has gone is dropped.
    pub fn forward(
        &mut self,
        now: Instant,
        rtp: &[u8],
        audio_pt: u8,
        dtmf_pt: u8,
        mut send: impl FnMut(&[u8]),
    ) {
        let ToSink { jitter, decode } = self;
        jitter.push(now, rtp, |packet, fresh| {
            if fresh {
                decode.expected = None;
            }
            match packet[1] & 0x7f {
                pt if pt == audio_pt => decode.audio(packet, &mut send),
                pt if pt == dtmf_pt => decode.event(packet, &mut send),
                _ => decode.hold_place(packet),
            }
        });
    }
}

impl Decode {
    fn audio(&mut self, rtp: &[u8], send: &mut impl FnMut(&[u8])) {
        let Some(range) = payload_range(rtp) else {
            return;
        };
        let seq = u16::from_be_bytes([rtp[2], rtp[3]]);
        let ts = u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]]);
        let ssrc = [rtp[8], rtp[9], rtp[10], rtp[11]];
        let marker = rtp[1] & 0x80 != 0;
        let base = *self.clock_base.get_or_insert(ts);
        let missing = match self.expected {
            None => 0,
            Some(expected) => {
                let ahead = seq.wrapping_sub(expected);
                if ahead >= 0x8000 {
                    return;
                }
                ahead
            }
        };
        let payload = &rtp[range];
        for back in (1..=missing.min(MAX_FILLED)).rev() {
            let next = (back == 1).then_some(payload);
            let lost_ts = ts.wrapping_sub(u32::from(back) * self.decoder.last_ticks_48k());
            if let Ok(n) = self.decoder.lost(next, &mut self.out[12..]) {
                self.header(seq.wrapping_sub(back), lost_ts, base, ssrc, false);
                send(&self.out[..12 + n]);
            }
        }
        self.expected = Some(seq.wrapping_add(1));
        match self.decoder.packet(payload, &mut self.out[12..]) {
            Ok(0) => {}
            Ok(n) => {
                self.header(seq, ts, base, ssrc, marker);
                send(&self.out[..12 + n]);
            }
            Err(_) => self.undecodable += 1,
        }
    }

    /// A telephone-event packet of the far side's toward the sink: its timestamp put on the sink's
    /// 8 kHz clock as the audio's is (its payload's durations are 8 kHz units already).
    fn event(&mut self, rtp: &[u8], send: &mut impl FnMut(&[u8])) {
        let n = rtp.len().min(self.out.len());
        self.out[..n].copy_from_slice(&rtp[..n]);
        let ts = u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]]);
        let base = *self.clock_base.get_or_insert(ts);
        let narrow_ts = base / CLOCK_RATIO + ts.wrapping_sub(base) / CLOCK_RATIO;
        self.out[4..8].copy_from_slice(&narrow_ts.to_be_bytes());
        self.hold_place(rtp);
        send(&self.out[..n]);
    }

    /// A packet that is not audio holds its sequence number: the audio after it is not a loss to
    /// fill in.
    fn hold_place(&mut self, rtp: &[u8]) {
        let seq = u16::from_be_bytes([rtp[2], rtp[3]]);
        if self
            .expected
            .is_none_or(|expected| seq.wrapping_sub(expected) < 0x8000)
        {
            self.expected = Some(seq.wrapping_add(1));
        }
    }

    fn header(&mut self, seq: u16, ts: u32, base: u32, ssrc: [u8; 4], marker: bool) {
        let narrow_ts = base / CLOCK_RATIO + ts.wrapping_sub(base) / CLOCK_RATIO;
        self.out[0] = 0x80;
        self.out[1] = (u8::from(marker) << 7) | self.payload_type;
        self.out[2..4].copy_from_slice(&seq.to_be_bytes());
        self.out[4..8].copy_from_slice(&narrow_ts.to_be_bytes());
        self.out[8..12].copy_from_slice(&ssrc);
    }
}

/// A G.711 sink's RTP toward the far side's Opus: its audio, whatever its ptime, comes out as
/// 20 ms Opus payloads for the restamper to put on the call's one stream.
pub struct FromSink {
    /// The sink's packets back in order (its telephone-events hold their places in it).
    jitter: JitterBuffer,
    encoder: PbxToOpus,
    payload_type: u8,
    frame: Box<[u8; 1275]>,
    /// Frames the encoder refused (our fault; the frame is skipped).
    pub failed: u64,
}

impl FromSink {
    /// `loss_percent`: the loss toward the far side the encoder's FEC is sized for.
    pub fn new(codec: PbxCodec, loss_percent: u8) -> Result<Self, TranscodeError> {
        Ok(FromSink {
            jitter: JitterBuffer::new(),
            encoder: PbxToOpus::new(codec, loss_percent)?,
            payload_type: codec.payload_type(),
            frame: Box::new([0; 1275]),
            failed: 0,
        })
    }

    /// Takes a packet from the sink that arrived at `now`: its audio goes to the encoder in
    /// sequence order (through the reorder buffer). False when it is not the sink's audio: a
    /// telephone-event (payload type `dtmf_pt`) only holds its place in the order and goes its own
    /// way, as does anything else.
    pub fn take(&mut self, now: Instant, rtp: &[u8], dtmf_pt: u8) -> bool {
        if rtp.len() < 12 {
            return false;
        }
        let pt = rtp[1] & 0x7f;
        if pt != self.payload_type && pt != dtmf_pt {
            return false;
        }
        let FromSink {
            jitter,
            encoder,
            payload_type,
            ..
        } = self;
        jitter.push(now, rtp, |packet, _| {
            if packet[1] & 0x7f == *payload_type {
                if let Some(range) = payload_range(packet) {
                    encoder.push(&packet[range]);
                }
            }
        });
        pt == self.payload_type
    }

    /// What the reorder buffer has seen.
    pub fn jitter(&self) -> JitterStats {
        self.jitter.stats
    }

    /// Whether 20 ms of the sink's audio wait to be sent.
    pub fn ready(&self) -> bool {
        self.encoder.ready()
    }

    /// The next 20 ms as an Opus payload, when `ready`.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        match self.encoder.frame(&mut self.frame[..]) {
            Ok(Some(n)) => Some(&self.frame[..n]),
            Ok(None) => None,
            Err(_) => {
                self.failed += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 20 ms Opus RTP packets of a 440 Hz tone, sequence numbers from 1.
    fn opus_stream(count: usize) -> Vec<Vec<u8>> {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        (0..count)
            .map(|i| {
                let pcm: Vec<i16> = (0..960)
                    .map(|n| {
                        let t = (i * 960 + n) as f64 / 48_000.0;
                        (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                    })
                    .collect();
                let mut rtp = vec![0x80, 111];
                rtp.extend_from_slice(&(i as u16 + 1).to_be_bytes());
                rtp.extend_from_slice(&(i as u32 * 960).to_be_bytes());
                rtp.extend_from_slice(&0x1234u32.to_be_bytes());
                let mut payload = [0u8; 400];
                let n = encoder.encode(&pcm, &mut payload).unwrap();
                rtp.extend_from_slice(&payload[..n]);
                rtp
            })
            .collect()
    }

    fn seq(p: &[u8]) -> u16 {
        u16::from_be_bytes([p[2], p[3]])
    }

    #[test]
    fn swapped_packets_are_decoded_in_order_and_nothing_is_concealed() {
        let stream = opus_stream(6);
        let mut to_sink = ToSink::new(PbxCodec::G711(Law::Mu)).unwrap();
        let start = Instant::now();
        let mut out = Vec::new();
        for (ms, i) in [(0, 0), (20, 1), (40, 3), (45, 2), (80, 4), (100, 5)] {
            let now = start + Duration::from_millis(ms);
            to_sink.forward(now, &stream[i], 111, 101, |p| {
                assert_eq!(p[1] & 0x7f, 0, "PCMU");
                assert_eq!(p.len(), 12 + 160);
                out.push(seq(p));
            });
        }
        assert_eq!(out, [1, 2, 3, 4, 5, 6]);
        assert_eq!(to_sink.filled(), (0, 0), "nothing concealed");
        assert_eq!(to_sink.jitter().held, 1);
    }

    #[test]
    fn a_lost_packet_is_filled_at_its_place_and_an_event_keeps_its_own() {
        let stream = opus_stream(6);
        let mut to_sink = ToSink::new(PbxCodec::G711(Law::Mu)).unwrap();
        let start = Instant::now();
        let mut event = stream[4][..12].to_vec();
        event[1] = 101;
        event.extend_from_slice(&[5, 0x0a, 0x00, 0xa0]);
        let mut out = Vec::new();
        // 3 (index 2) never comes; index 4's place is taken by a telephone-event.
        for (ms, packet) in [
            (0, &stream[0]),
            (20, &stream[1]),
            (60, &stream[3]),
            (80, &event),
            (100, &stream[5]),
        ] {
            to_sink.forward(start + Duration::from_millis(ms), packet, 111, 101, |p| {
                out.push((
                    seq(p),
                    p[1] & 0x7f,
                    u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                ));
            });
        }
        let seqs: Vec<u16> = out.iter().map(|o| o.0).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "3 filled in before 4");
        assert_eq!(out[4].1, 101, "the event in its place");
        assert_eq!(out[4].2, 4 * 160, "on the 8 kHz clock");
        let (recovered, concealed) = to_sink.filled();
        assert_eq!(
            recovered + concealed,
            1,
            "only 3 filled; 6 follows the event as no loss"
        );
    }

    /// A PCMU packet of the sink's: `seq`, 20 ms of `value`.
    fn pcmu(seq: u16, value: u8) -> Vec<u8> {
        let mut rtp = vec![0x80, 0];
        rtp.extend_from_slice(&seq.to_be_bytes());
        rtp.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        rtp.extend_from_slice(&0x7777u32.to_be_bytes());
        rtp.extend(std::iter::repeat_n(value, 160));
        rtp
    }

    #[test]
    fn the_sinks_swapped_packets_reach_the_encoder_in_order_and_its_events_hold_their_place() {
        let mut from_sink = FromSink::new(PbxCodec::G711(Law::Mu), 10).unwrap();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert!(from_sink.take(at(0), &pcmu(1, 0xff), 101));
        assert!(from_sink.ready());
        assert!(from_sink.next_frame().is_some());
        // 3 before 2: held until 2 comes, then both are encoded, in order.
        assert!(from_sink.take(at(40), &pcmu(3, 0xff), 101));
        assert!(!from_sink.ready(), "3 waits for 2");
        assert!(from_sink.take(at(45), &pcmu(2, 0xff), 101));
        assert_eq!(from_sink.jitter().held, 1);
        let frames = std::iter::from_fn(|| from_sink.next_frame().map(|_| ())).count();
        assert_eq!(frames, 2);
        // A telephone-event takes sequence number 4: not audio, but 5 after it waits for nothing.
        let mut event = pcmu(4, 0);
        event[1] = 101;
        event.truncate(16);
        assert!(
            !from_sink.take(at(60), &event, 101),
            "the event goes its own way"
        );
        assert!(from_sink.take(at(80), &pcmu(5, 0xff), 101));
        assert!(from_sink.ready(), "5 goes straight through");
        assert_eq!(from_sink.jitter().skipped, 0);
    }
}
