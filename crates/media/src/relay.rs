//! A call's inbound fast path (SRTP from the far side → RTP to the sink, run by the media socket's
//! reader) and the RTCP both directions need: receiver statistics (RFC 3550 A.3 loss, A.8 jitter),
//! round-trip time from the far side's reports, and our sender report with one report block.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::demux::is_rtcp;
use crate::dtmf::DtmfReceiver;
use crate::restamp::{PayloadMap, SinkPayloads};
use crate::session::{MediaEvent, MTU, TAG_ROOM};
use crate::srtp::SrtpContext;
use crate::transcode::ToSink;

/// Opus's RTP clock; jitter is kept in its units.
const AUDIO_CLOCK: u64 = 48_000;

/// What the inbound path reports to the rest of the call (one writer; relaxed atomics).
#[derive(Default)]
pub(crate) struct InboundCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub rejected: AtomicU64,
    /// Decrypted packets the sink's socket could not take at once (dropped, not queued).
    pub sink_busy: AtomicU64,
    /// Extended highest sequence number received, and the first one (RFC 3550 A.3).
    pub highest_seq: AtomicU64,
    pub base_seq: AtomicU64,
    /// Interarrival jitter in RTP timestamp units (RFC 3550 A.8).
    pub jitter: AtomicU64,
    /// The middle 32 bits of the far side's last SR NTP time, and when it came (µs since `epoch`).
    pub last_sr: AtomicU64,
    pub last_sr_at_us: AtomicU64,
    /// Round-trip time from the far side's report on our stream, in µs (0: none yet).
    pub rtt_us: AtomicU64,
    /// The far side's SSRC with bit 32 set, once a packet came (0: none yet).
    pub remote_ssrc: AtomicU64,
    /// For a transcoded sink, the reorder buffer's count: packets held behind a hole, the longest
    /// hold (µs), and packets that came after their place had gone.
    pub reordered: AtomicU64,
    pub reorder_max_us: AtomicU64,
    pub reorder_late: AtomicU64,
}

impl InboundCounters {
    /// Packets the far side sent that never arrived (may be negative with duplicates).
    pub fn lost(&self) -> i64 {
        let received = self.packets.load(Relaxed);
        if received == 0 {
            return 0;
        }
        let expected = self.highest_seq.load(Relaxed) - self.base_seq.load(Relaxed) + 1;
        expected as i64 - received as i64
    }
}

/// Sequence and arrival state for the receiver statistics.
#[derive(Default)]
pub(crate) struct Reception {
    highest: Option<u64>,
    transit: Option<i64>,
    jitter_x16: u64,
}

/// What protects the packets toward a sink that speaks SRTP, with room to do it without touching
/// the packet they came from.
pub(crate) struct SinkProtect {
    pub srtp: SrtpContext,
    pub scratch: [u8; MTU + TAG_ROOM],
}

impl SinkProtect {
    pub fn new(srtp: SrtpContext) -> Box<SinkProtect> {
        Box::new(SinkProtect {
            srtp,
            scratch: [0; MTU + TAG_ROOM],
        })
    }
}

/// Sends `rtp` to the sink, protected first when it speaks SRTP; a packet the socket cannot take
/// at once is dropped and counted.
fn send_to_sink(
    app: &UdpSocket,
    sink: SocketAddr,
    protect: &mut Option<Box<SinkProtect>>,
    counters: &InboundCounters,
    rtp: &[u8],
) {
    let packet = match protect {
        None => rtp,
        Some(p) => {
            let n = rtp.len().min(MTU);
            p.scratch[..n].copy_from_slice(&rtp[..n]);
            match p.srtp.protect_rtp(&mut p.scratch, n) {
                Ok(len) => &p.scratch[..len],
                Err(_) => return,
            }
        }
    };
    if app.try_send_to(packet, sink).is_err() {
        counters.sink_busy.fetch_add(1, Relaxed);
    }
}

/// The fast path of one call, owned by the media socket's reader.
pub(crate) struct InboundRoute {
    pub srtp: SrtpContext,
    /// For a G.711 sink: the far side's Opus decoded on the way.
    pub to_sink: Option<Box<ToSink>>,
    /// The call's local port L, and the sink S it sends to.
    pub app: Arc<UdpSocket>,
    pub sink: SocketAddr,
    /// For a sink that speaks SRTP: what protects the packets toward it.
    pub sink_protect: Option<Box<SinkProtect>>,
    pub payloads: PayloadMap,
    pub counters: Arc<InboundCounters>,
    /// Our SSRC, to find the far side's report on our stream.
    pub local_ssrc: u32,
    pub epoch: Instant,
    /// Told once, at the first packet.
    pub first_rtp: Option<mpsc::Sender<MediaEvent>>,
    /// Told of each key the far side sends (when it may send telephone-events).
    pub dtmf: Option<(mpsc::Sender<MediaEvent>, DtmfReceiver)>,
    pub reception: Reception,
}

impl InboundRoute {
    /// A route to an Opus sink at `sink` with WhatsApp's payload types and nothing else set up
    /// (the fuzz targets' and unit tests' route).
    pub(crate) fn bare(
        srtp: SrtpContext,
        app: Arc<UdpSocket>,
        sink: SocketAddr,
        local_ssrc: u32,
    ) -> InboundRoute {
        InboundRoute {
            srtp,
            to_sink: None,
            app,
            sink,
            sink_protect: None,
            payloads: PayloadMap {
                remote_audio: 111,
                remote_dtmf: Some(126),
                sink: SinkPayloads::default(),
            },
            counters: Arc::new(InboundCounters::default()),
            local_ssrc,
            epoch: Instant::now(),
            first_rtp: None,
            dtmf: None,
            reception: Reception::default(),
        }
    }

    /// One packet (first byte 128-191) from the call's remote address.
    pub fn handle(&mut self, packet: &mut [u8], now: Instant) {
        if is_rtcp(packet) {
            match self.srtp.unprotect_rtcp(packet) {
                Ok(n) => self.read_rtcp(&packet[..n], now),
                Err(_) => {
                    self.counters.rejected.fetch_add(1, Relaxed);
                }
            }
            return;
        }
        let n = match self.srtp.unprotect_rtp(packet) {
            Ok(n) => n,
            // Failed authentication or a replay: dropped and counted, never forwarded.
            Err(_) => {
                self.counters.rejected.fetch_add(1, Relaxed);
                return;
            }
        };
        let rtp = &mut packet[..n];
        self.counters.packets.fetch_add(1, Relaxed);
        self.counters.bytes.fetch_add(n as u64, Relaxed);
        let ssrc = u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]);
        self.counters
            .remote_ssrc
            .store(u64::from(ssrc) | 1 << 32, Relaxed);
        self.receive_stats(rtp, now);
        if let Some((events, receiver)) = &mut self.dtmf {
            if Some(rtp[1] & 0x7f) == self.payloads.remote_dtmf {
                if let Some((key, units)) = receiver.end_of(rtp) {
                    // Telephone-event durations are in 8 kHz units on WhatsApp's leg.
                    let duration = Duration::from_micros(u64::from(units) * 125);
                    let _ = events.try_send(MediaEvent::DtmfReceived { key, duration });
                }
            }
        }
        self.payloads.to_local(rtp);
        let sink_pts = self.payloads.sink;
        let InboundRoute {
            to_sink,
            app,
            sink,
            sink_protect,
            counters,
            ..
        } = self;
        match to_sink {
            // The far side's audio and telephone-events, in order, on the G.711 sink's clock;
            // nothing else of its reaches a G.711 sink.
            Some(to_sink) => {
                to_sink.forward(now, rtp, sink_pts.audio, sink_pts.dtmf, |packet| {
                    send_to_sink(app, *sink, sink_protect, counters, packet);
                });
                let jitter = to_sink.jitter();
                counters.reordered.store(jitter.held, Relaxed);
                counters.reorder_max_us.store(jitter.held_max_us, Relaxed);
                counters.reorder_late.store(jitter.late, Relaxed);
            }
            None => send_to_sink(app, *sink, sink_protect, counters, rtp),
        }
        if let Some(events) = self.first_rtp.take() {
            let _ = events.try_send(MediaEvent::FirstRtpIn {
                elapsed: now.saturating_duration_since(self.epoch),
            });
        }
    }

    fn receive_stats(&mut self, rtp: &[u8], now: Instant) {
        let seq = u64::from(u16::from_be_bytes([rtp[2], rtp[3]]));
        let extended = match self.reception.highest {
            None => {
                self.counters.base_seq.store(seq, Relaxed);
                seq
            }
            Some(highest) => {
                // The candidate nearest to the highest seen, in this cycle or a neighbour.
                let cycle = highest & !0xffff;
                [cycle.wrapping_sub(0x1_0000), cycle, cycle + 0x1_0000]
                    .into_iter()
                    .map(|c| c.wrapping_add(seq))
                    .min_by_key(|&c| c.abs_diff(highest))
                    .unwrap_or(seq)
            }
        };
        if self.reception.highest.is_none_or(|h| extended > h) {
            self.reception.highest = Some(extended);
            self.counters.highest_seq.store(extended, Relaxed);
        }
        // Jitter on the audio stream only: telephone-events run on their own clock.
        if rtp[1] & 0x7f != self.payloads.remote_audio {
            return;
        }
        let ts = i64::from(u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]]));
        let arrival = (now.saturating_duration_since(self.epoch).as_micros() as u64 * AUDIO_CLOCK
            / 1_000_000) as i64;
        let transit = arrival - ts;
        if let Some(last) = self.reception.transit {
            let d = (transit - last).unsigned_abs();
            // J += (|D| - J) / 16, kept times 16 (RFC 3550 A.8).
            self.reception.jitter_x16 =
                self.reception.jitter_x16 + d - (self.reception.jitter_x16 >> 4);
            self.counters
                .jitter
                .store(self.reception.jitter_x16 >> 4, Relaxed);
        }
        self.reception.transit = Some(transit);
    }

    /// Takes the far side's SR time (for our report's LSR) and its report on our stream (RTT).
    fn read_rtcp(&mut self, mut compound: &[u8], now: Instant) {
        while compound.len() >= 8 {
            let len = 4 * (usize::from(u16::from_be_bytes([compound[2], compound[3]])) + 1);
            if len > compound.len() {
                return;
            }
            let (packet, rest) = compound.split_at(len);
            let count = usize::from(packet[0] & 0x1f);
            let blocks_at = match packet[1] {
                200 if packet.len() >= 28 => {
                    let mid = u32::from_be_bytes([packet[10], packet[11], packet[12], packet[13]]);
                    self.counters.last_sr.store(u64::from(mid), Relaxed);
                    self.counters
                        .last_sr_at_us
                        .store(micros(self.epoch, now), Relaxed);
                    Some(28)
                }
                201 => Some(8),
                _ => None,
            };
            // A report shorter than its fixed part has no blocks (its length word may say 4 octets).
            if let Some(blocks) = blocks_at.and_then(|at| packet.get(at..)) {
                for block in blocks.chunks_exact(24).take(count) {
                    let ssrc = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
                    let lsr = u32::from_be_bytes([block[16], block[17], block[18], block[19]]);
                    let dlsr = u32::from_be_bytes([block[20], block[21], block[22], block[23]]);
                    if ssrc == self.local_ssrc && lsr != 0 {
                        let rtt = ntp_mid32(SystemTime::now())
                            .wrapping_sub(lsr)
                            .wrapping_sub(dlsr);
                        // Units of 1/65536 s; ignore what clock skew makes absurd.
                        if rtt < 10 << 16 {
                            self.counters
                                .rtt_us
                                .store((u64::from(rtt) * 1_000_000) >> 16, Relaxed);
                        }
                    }
                }
            }
            compound = rest;
        }
    }
}

fn micros(epoch: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(epoch).as_micros() as u64
}

/// NTP time as seconds since 1900 and a 32-bit fraction.
fn ntp(at: SystemTime) -> (u32, u32) {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs() + 2_208_988_800;
    let frac = (u64::from(since_epoch.subsec_nanos()) << 32) / 1_000_000_000;
    (secs as u32, frac as u32)
}

fn ntp_mid32(at: SystemTime) -> u32 {
    let (secs, frac) = ntp(at);
    (secs << 16) | (frac >> 16)
}

/// What our sender report says about our own stream.
pub(crate) struct SenderInfo {
    pub ssrc: u32,
    pub rtp_timestamp: u32,
    pub packets: u32,
    pub octets: u32,
}

/// An RTCP SR (RFC 3550 §6.4.1) with a report block on the far side's stream once it has sent.
/// Returns the length written into `out` (at least 52 bytes).
pub(crate) fn sender_report(
    me: &SenderInfo,
    inbound: &InboundCounters,
    epoch: Instant,
    now: Instant,
    out: &mut [u8],
) -> usize {
    let remote = inbound.remote_ssrc.load(Relaxed);
    let remote_ssrc = (remote != 0).then_some(remote as u32);
    let with_block = remote_ssrc.is_some();
    let len = if with_block { 52 } else { 28 };
    let p = &mut out[..len];
    p.fill(0);
    p[0] = 0x80 | u8::from(with_block);
    p[1] = 200;
    p[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
    p[4..8].copy_from_slice(&me.ssrc.to_be_bytes());
    let (secs, frac) = ntp(SystemTime::now());
    p[8..12].copy_from_slice(&secs.to_be_bytes());
    p[12..16].copy_from_slice(&frac.to_be_bytes());
    p[16..20].copy_from_slice(&me.rtp_timestamp.to_be_bytes());
    p[20..24].copy_from_slice(&me.packets.to_be_bytes());
    p[24..28].copy_from_slice(&me.octets.to_be_bytes());
    if let (true, Some(remote)) = (with_block, remote_ssrc) {
        let b = &mut p[28..52];
        b[0..4].copy_from_slice(&remote.to_be_bytes());
        let lost = inbound.lost().clamp(-0x80_0000, 0x7f_ffff) as i32;
        b[5..8].copy_from_slice(&lost.to_be_bytes()[1..]);
        b[8..12].copy_from_slice(&(inbound.highest_seq.load(Relaxed) as u32).to_be_bytes());
        b[12..16].copy_from_slice(&(inbound.jitter.load(Relaxed) as u32).to_be_bytes());
        let last_sr = inbound.last_sr.load(Relaxed) as u32;
        if last_sr != 0 {
            b[16..20].copy_from_slice(&last_sr.to_be_bytes());
            let since_us = micros(epoch, now).saturating_sub(inbound.last_sr_at_us.load(Relaxed));
            let dlsr = (since_us << 16) / 1_000_000;
            b[20..24].copy_from_slice(&(dlsr as u32).to_be_bytes());
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the media_demux fuzz target: a receiver report whose length word is 0 (4 octets,
    /// shorter than its fixed 8) inside a compound packet made the reader slice past its end.
    #[tokio::test]
    async fn a_report_shorter_than_its_header_is_skipped() {
        let app = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let sink = app.local_addr().unwrap();
        let srtp = SrtpContext::new(
            crate::srtp::SrtpProfile::AesCm128HmacSha1_80,
            &[1; 16],
            &[2; 14],
        )
        .unwrap();
        let mut route = InboundRoute::bare(srtp, app, sink, 0x0102_0304);
        let compound: [u8; 36] = [
            0x81, 0xc9, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0xca, 0xfe, 0xba, 0xbe, 0x01, 0x02,
            0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x12, 0x34, 0x00, 0x00, 0x00, 0x10,
        ];
        route.read_rtcp(&compound, Instant::now());
        route.read_rtcp(&[0x80, 0xc8, 0x00, 0x00, 0, 0, 0, 0], Instant::now());
        assert_eq!(route.counters.rtt_us.load(Relaxed), 0);
    }

    #[test]
    fn report_block_says_what_arrived() {
        let counters = InboundCounters::default();
        counters.packets.store(95, Relaxed);
        counters.base_seq.store(65_500, Relaxed);
        counters.highest_seq.store(65_500 + 99, Relaxed);
        counters.jitter.store(42, Relaxed);
        assert_eq!(counters.lost(), 5);
        let me = SenderInfo {
            ssrc: 7,
            rtp_timestamp: 960,
            packets: 10,
            octets: 1000,
        };
        let epoch = Instant::now();
        let mut out = [0u8; 64];
        let n = sender_report(&me, &InboundCounters::default(), epoch, epoch, &mut out);
        assert_eq!((n, out[0]), (28, 0x80), "nothing received: no report block");
        counters.remote_ssrc.store(9 | 1 << 32, Relaxed);
        let n = sender_report(&me, &counters, epoch, epoch, &mut out);
        assert_eq!(n, 52);
        assert_eq!(out[0], 0x81);
        assert_eq!(&out[28..32], &9u32.to_be_bytes());
        assert_eq!(&out[33..36], &[0, 0, 5]);
        assert_eq!(&out[36..40], &(65_599u32).to_be_bytes());
        assert_eq!(&out[40..44], &42u32.to_be_bytes());
    }
}
