//! Local ringback toward a PBX that calls a WhatsApp user (`ringback` of a `[[pbx]]` trunk): while
//! the user's phone rings, a ring tone in the PBX leg's codec goes from the call's local RTP port
//! to the PBX's, as the early media of our 183 (Meta sends none). One cadence cycle is encoded
//! when it starts; the task then only stamps headers and sends, every 20 ms, until it is dropped
//! (the call is answered or ends).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use audio_codec::g722::G722Encoder;
use audio_codec::Encoder as _;
use rand::{Rng, SeedableRng};

use crate::transcode::SinkAudio;
use crate::MediaError;

/// The ring tone's cadence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingTone {
    /// 425 Hz, 1 s on, 4 s off (ITU-T E.180 Supplement 2, most of Europe).
    Europe,
    /// 440 + 480 Hz, 2 s on, 4 s off (the North American ringback, ANSI T1.401).
    NorthAmerica,
}

impl RingTone {
    fn cadence(self) -> (&'static [f64], u32, u32) {
        match self {
            RingTone::Europe => (&[425.0], 1000, 4000),
            RingTone::NorthAmerica => (&[440.0, 480.0], 2000, 4000),
        }
    }

    /// One cadence cycle of 20 ms frames at `rate` Hz, at -16 dBFS.
    fn frames(self, rate: u32) -> Vec<Vec<i16>> {
        let (freqs, on_ms, off_ms) = self.cadence();
        let per_frame = (rate / 50) as usize;
        let on_frames = on_ms / 20;
        let amplitude = 0.16 * 32767.0 / freqs.len() as f64;
        (0..(on_ms + off_ms) / 20)
            .map(|frame| {
                (0..per_frame)
                    .map(|i| {
                        if frame >= on_frames {
                            return 0;
                        }
                        let t = (frame as usize * per_frame + i) as f64 / f64::from(rate);
                        let sum: f64 = freqs
                            .iter()
                            .map(|f| (2.0 * std::f64::consts::PI * f * t).sin())
                            .sum();
                        (amplitude * sum) as i16
                    })
                    .collect()
            })
            .collect()
    }
}

/// A ringback being played; dropping it stops it.
pub struct Ringback {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ringback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One cadence cycle of `tone` as the payloads of 20 ms packets in `audio`, and the RTP clock
/// ticks of one packet.
fn payloads(tone: RingTone, audio: SinkAudio) -> Result<(Vec<Vec<u8>>, u32), MediaError> {
    let local = |e: String| MediaError::Local(format!("ringback: {e}"));
    match audio {
        SinkAudio::G711(law) => {
            let frames = tone.frames(8000);
            Ok((
                frames
                    .iter()
                    .map(|f| f.iter().map(|&s| law.encode(s)).collect())
                    .collect(),
                160,
            ))
        }
        SinkAudio::G722 => {
            let mut encoder = G722Encoder::new();
            let mut out = Vec::new();
            for frame in tone.frames(16_000) {
                let mut payload = vec![0u8; 160];
                encoder
                    .encode_into(&frame, &mut payload)
                    .map_err(|e| local(e.to_string()))?;
                out.push(payload);
            }
            Ok((out, 160))
        }
        SinkAudio::Opus => {
            let mut encoder =
                opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
                    .map_err(|e| local(e.to_string()))?;
            let mut out = Vec::new();
            for frame in tone.frames(48_000) {
                let mut payload = vec![0u8; 400];
                let n = encoder
                    .encode(&frame, &mut payload)
                    .map_err(|e| local(e.to_string()))?;
                payload.truncate(n);
                out.push(payload);
            }
            Ok((out, 960))
        }
    }
}

/// Plays `tone` in `audio` (payload type `pt`) from `socket` to `to` until the returned handle is
/// dropped; `seed` draws its SSRC, first sequence number and timestamp.
pub fn ringback(
    socket: &Arc<std::net::UdpSocket>,
    to: SocketAddr,
    audio: SinkAudio,
    pt: u8,
    tone: RingTone,
    seed: u64,
) -> Result<Ringback, MediaError> {
    let (cycle, ticks) = payloads(tone, audio)?;
    let socket = socket
        .try_clone()
        .and_then(|s| {
            s.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(s)
        })
        .map_err(|e| MediaError::Local(format!("ringback: the local RTP port: {e}")))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ssrc: u32 = rng.gen();
    let mut seq: u16 = rng.gen();
    let mut ts: u32 = rng.gen();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut packet = [0u8; 12 + 400];
        for (i, payload) in cycle.iter().enumerate().cycle() {
            tick.tick().await;
            packet[0] = 0x80;
            // The marker on the first packet of each ring.
            packet[1] = pt | if i == 0 { 0x80 } else { 0 };
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            packet[4..8].copy_from_slice(&ts.to_be_bytes());
            packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
            let n = 12 + payload.len().min(400);
            packet[12..n].copy_from_slice(&payload[..n - 12]);
            // A full socket drops a frame of ringback: nothing to recover.
            let _ = socket.try_send_to(&packet[..n], to);
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(ticks);
        }
    });
    Ok(Ringback { task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcode::Law;

    #[test]
    fn a_cycle_is_on_then_silent_at_the_tones_frequency() {
        let frames = RingTone::Europe.frames(8000);
        assert_eq!(frames.len(), 250, "5 s of 20 ms frames");
        assert!(frames[..50].iter().all(|f| f.iter().any(|&s| s != 0)));
        assert!(frames[50..].iter().all(|f| f.iter().all(|&s| s == 0)));
        // 425 Hz: 425 rising zero crossings in the first second.
        let on: Vec<i16> = frames[..50].concat();
        let rising = on.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        assert!((424..=426).contains(&rising), "{rising}");
        let (g711, ticks) = payloads(RingTone::NorthAmerica, SinkAudio::G711(Law::A)).unwrap();
        assert_eq!((g711.len(), g711[0].len(), ticks), (300, 160, 160));
        let (opus, ticks) = payloads(RingTone::Europe, SinkAudio::Opus).unwrap();
        assert_eq!((opus.len(), ticks), (250, 960));
        let (g722, _) = payloads(RingTone::Europe, SinkAudio::G722).unwrap();
        assert!(g722.iter().all(|p| p.len() == 160));
    }
}
