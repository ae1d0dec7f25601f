//! RFC 4733 telephone-event packets for one digit: a payload every 20 ms with the duration so far,
//! the first with the marker bit, and the end packet three times. All share the event's start
//! timestamp and the audio stream's SSRC and sequence. Durations are in 8 kHz units (WhatsApp's
//! rule, WHATSAPP-SIP §7.6); the timestamp stays on the audio stream's base.

use crate::MediaError;

/// 20 ms in telephone-event/8000 units.
const STEP: u16 = 160;
const VOLUME: u8 = 10;
const END_REPEATS: u8 = 3;

/// The RFC 4733 event code of a DTMF key.
pub fn event_code(key: char) -> Result<u8, MediaError> {
    match key {
        '0'..='9' => Ok(key as u8 - b'0'),
        '*' => Ok(10),
        '#' => Ok(11),
        'A'..='D' => Ok(12 + (key as u8 - b'A')),
        'a'..='d' => Ok(12 + (key as u8 - b'a')),
        other => Err(MediaError::Local(format!(
            "{other:?} is not a DTMF key (0-9, *, #, A-D)"
        ))),
    }
}

/// The DTMF key of an RFC 4733 event code (`None` for the other events: tones, flash ...).
pub fn key_of(code: u8) -> Option<char> {
    match code {
        0..=9 => Some(char::from(b'0' + code)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + code - 12)),
        _ => None,
    }
}

/// The far side's keys: each event once, at its first end packet (RFC 4733 §2.5.1.4 sends the end
/// three times, all with the event's timestamp).
#[derive(Debug, Default)]
pub(crate) struct DtmfReceiver {
    /// The timestamp of the last event reported.
    reported: Option<u32>,
}

impl DtmfReceiver {
    /// A telephone-event RTP packet (header included, on the far side's clock): the key and its
    /// duration in clock units, when this packet ends an event not yet reported.
    pub(crate) fn end_of(&mut self, rtp: &[u8]) -> Option<(char, u16)> {
        let header = rtp_header_len(rtp)?;
        let payload = rtp.get(header..header + 4)?;
        if payload[1] & 0x80 == 0 {
            return None;
        }
        let timestamp = u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]]);
        if self.reported == Some(timestamp) {
            return None;
        }
        self.reported = Some(timestamp);
        let key = key_of(payload[0])?;
        Some((key, u16::from_be_bytes([payload[2], payload[3]])))
    }
}

/// The length of an RTP header with its CSRCs and extension, if the packet holds it.
fn rtp_header_len(rtp: &[u8]) -> Option<usize> {
    let first = *rtp.first()?;
    let mut len = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let ext = rtp.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    (rtp.len() >= len).then_some(len)
}

#[derive(Debug, Clone)]
pub struct DtmfSender {
    event: u8,
    total: u16,
    elapsed: u16,
    ends_sent: u8,
    start_ts: Option<u32>,
}

/// One packet to send: payload, marker bit, and the event's timestamp (fixed by the first call).
pub struct DtmfPacket {
    pub payload: [u8; 4],
    pub marker: bool,
    pub timestamp: u32,
}

impl DtmfSender {
    pub fn new(key: char, duration_ms: u32) -> Result<DtmfSender, MediaError> {
        let total = (duration_ms.clamp(40, 8000) * 8) as u16;
        Ok(DtmfSender {
            event: event_code(key)?,
            total,
            elapsed: 0,
            ends_sent: 0,
            start_ts: None,
        })
    }

    /// The next packet, every 20 ms; `now_ts` is the audio timestamp now (taken once, at the start).
    pub fn next(&mut self, now_ts: u32) -> Option<DtmfPacket> {
        if self.ends_sent >= END_REPEATS {
            return None;
        }
        let timestamp = *self.start_ts.get_or_insert(now_ts);
        let marker = self.elapsed == 0;
        self.elapsed = self.elapsed.saturating_add(STEP).min(self.total);
        let end = self.elapsed >= self.total;
        if end {
            self.ends_sent += 1;
        }
        let d = self.elapsed.to_be_bytes();
        Some(DtmfPacket {
            payload: [self.event, (u8::from(end) << 7) | VOLUME, d[0], d[1]],
            marker,
            timestamp,
        })
    }

    pub fn done(&self) -> bool {
        self.ends_sent >= END_REPEATS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_100_ms_digit() {
        let mut d = DtmfSender::new('5', 100).unwrap();
        let mut packets = Vec::new();
        while let Some(p) = d.next(48_000 + 960 * packets.len() as u32) {
            packets.push(p);
        }
        // 20, 40, 60, 80 ms, then 100 ms (end) three times.
        assert_eq!(packets.len(), 7);
        assert!(packets[0].marker && !packets[1].marker);
        assert!(packets
            .iter()
            .all(|p| p.timestamp == 48_000 && p.payload[0] == 5));
        let durations: Vec<u16> = packets
            .iter()
            .map(|p| u16::from_be_bytes([p.payload[2], p.payload[3]]))
            .collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<bool> = packets.iter().map(|p| p.payload[1] & 0x80 != 0).collect();
        assert_eq!(ends, [false, false, false, false, true, true, true]);
        assert!(d.done());
    }

    #[test]
    fn each_received_event_is_reported_once_at_its_end() {
        let packet = |ts: u32, code: u8, end: bool, duration: u16| {
            let mut p = vec![0x80, 101, 0, 1];
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 7]);
            p.extend_from_slice(&[code, if end { 0x80 | 10 } else { 10 }]);
            p.extend_from_slice(&duration.to_be_bytes());
            p
        };
        let mut rx = DtmfReceiver::default();
        assert_eq!(rx.end_of(&packet(1000, 5, false, 160)), None);
        assert_eq!(rx.end_of(&packet(1000, 5, true, 800)), Some(('5', 800)));
        assert_eq!(
            rx.end_of(&packet(1000, 5, true, 800)),
            None,
            "the end's repeats"
        );
        assert_eq!(rx.end_of(&packet(2000, 11, true, 640)), Some(('#', 640)));
        assert_eq!(
            rx.end_of(&packet(3000, 16, true, 640)),
            None,
            "flash is no key"
        );
        assert_eq!(
            rx.end_of(&packet(4000, 10, true, 640)[..14]),
            None,
            "too short"
        );
        let mut with_csrc = packet(5000, 15, true, 320);
        with_csrc[0] = 0x81;
        with_csrc.splice(12..12, [0, 0, 0, 9]);
        assert_eq!(rx.end_of(&with_csrc), Some(('D', 320)));
    }

    #[test]
    fn keys() {
        assert_eq!(event_code('*').unwrap(), 10);
        assert_eq!(event_code('#').unwrap(), 11);
        assert_eq!(event_code('D').unwrap(), 15);
        assert!(event_code('x').is_err());
    }
}
