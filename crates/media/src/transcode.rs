//! Audio between the WhatsApp leg's Opus (20 ms frames, 48 kHz RTP clock) and a PBX leg's G.711
//! (PCMU or PCMA, 8 kHz). libopus decodes and encodes at 8 kHz directly, so no resampler sits in
//! the path; G.711 is per-sample companding. A lost Opus packet is recovered from the next one's
//! in-band FEC when it carries it, else concealed by libopus (PLC). The PBX may packetise at any
//! ptime: its audio is gathered into the 20 ms frames the WhatsApp leg sends.
//!
//! Sans-IO and allocation-free per packet: every buffer is fixed when a direction is made.

use audio_codec_algorithms::{decode_alaw, decode_ulaw, encode_alaw, encode_ulaw};

/// G.711's sample rate and RTP clock.
pub const NARROWBAND_HZ: u32 = 8_000;
/// Samples in the 20 ms frames the WhatsApp leg carries, at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// The longest Opus packet (120 ms) at 8 kHz.
const MAX_PACKET_SAMPLES: usize = 960;
/// PBX audio waiting to be encoded: beyond this (120 ms) the oldest is dropped.
const PENDING_SAMPLES: usize = 960;

/// The G.711 companding law of a PBX leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// PCMU (static payload type 0).
    Mu,
    /// PCMA (static payload type 8).
    A,
}

impl Law {
    fn encode(self, sample: i16) -> u8 {
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
}

/// The WhatsApp leg's Opus toward the PBX's G.711.
pub struct OpusToG711 {
    decoder: opus::Decoder,
    law: Law,
    pcm: Box<[i16; MAX_PACKET_SAMPLES]>,
    /// The duration of the last packet decoded, which a lost one is assumed to have.
    last_samples: usize,
    /// Packets concealed by PLC, and recovered from the next packet's FEC.
    pub concealed: u64,
    pub recovered: u64,
}

impl OpusToG711 {
    pub fn new(law: Law) -> Result<Self, TranscodeError> {
        let decoder = opus::Decoder::new(NARROWBAND_HZ, opus::Channels::Mono)
            .map_err(TranscodeError::Local)?;
        Ok(OpusToG711 {
            decoder,
            law,
            pcm: Box::new([0; MAX_PACKET_SAMPLES]),
            last_samples: FRAME_SAMPLES,
            concealed: 0,
            recovered: 0,
        })
    }

    /// One received Opus payload as G.711 in `out`; the bytes written (one per 8 kHz sample).
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

    fn companded(&self, samples: usize, out: &mut [u8]) -> Result<usize, TranscodeError> {
        let have = out.len();
        let out = out.get_mut(..samples).ok_or(TranscodeError::ShortBuffer {
            need: samples,
            have,
        })?;
        for (byte, &sample) in out.iter_mut().zip(self.pcm.iter()) {
            *byte = self.law.encode(sample);
        }
        Ok(samples)
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

/// The PBX's G.711 toward the WhatsApp leg's Opus, in 20 ms frames whatever the PBX's ptime.
pub struct G711ToOpus {
    encoder: opus::Encoder,
    law: Law,
    pending: Box<[i16; PENDING_SAMPLES]>,
    filled: usize,
    /// 8 kHz samples dropped because the PBX sent faster than frames were taken.
    pub overflowed: u64,
}

impl G711ToOpus {
    /// An encoder for voice with in-band FEC on, expecting `loss_percent` loss toward Meta.
    pub fn new(law: Law, loss_percent: u8) -> Result<Self, TranscodeError> {
        let mut encoder =
            opus::Encoder::new(NARROWBAND_HZ, opus::Channels::Mono, opus::Application::Voip)
                .map_err(TranscodeError::Local)?;
        encoder
            .set_inband_fec(true)
            .and_then(|()| encoder.set_packet_loss_perc(i32::from(loss_percent.min(100))))
            .map_err(TranscodeError::Local)?;
        Ok(G711ToOpus {
            encoder,
            law,
            pending: Box::new([0; PENDING_SAMPLES]),
            filled: 0,
            overflowed: 0,
        })
    }

    /// Takes one G.711 payload from the PBX. What does not fit the pending audio pushes out the
    /// oldest (the PBX is ahead of the 20 ms clock).
    pub fn push(&mut self, g711: &[u8]) {
        let g711 = if g711.len() > PENDING_SAMPLES {
            self.overflowed += (g711.len() - PENDING_SAMPLES) as u64;
            &g711[g711.len() - PENDING_SAMPLES..]
        } else {
            g711
        };
        let room = PENDING_SAMPLES - self.filled;
        if g711.len() > room {
            let drop = g711.len() - room;
            self.pending.copy_within(drop..self.filled, 0);
            self.filled -= drop;
            self.overflowed += drop as u64;
        }
        for (slot, &byte) in self.pending[self.filled..].iter_mut().zip(g711) {
            *slot = self.law.decode(byte);
        }
        self.filled += g711.len();
    }

    /// 8 kHz samples waiting for a frame.
    pub fn pending(&self) -> usize {
        self.filled
    }

    /// The next 20 ms as an Opus payload in `out`, when 20 ms of PBX audio are in.
    pub fn frame(&mut self, out: &mut [u8]) -> Result<Option<usize>, TranscodeError> {
        if self.filled < FRAME_SAMPLES {
            return Ok(None);
        }
        let written = self
            .encoder
            .encode(&self.pending[..FRAME_SAMPLES], out)
            .map_err(TranscodeError::Local)?;
        self.pending.copy_within(FRAME_SAMPLES..self.filled, 0);
        self.filled -= FRAME_SAMPLES;
        Ok(Some(written))
    }
}
