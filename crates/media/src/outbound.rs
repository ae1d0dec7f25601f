//! The call's outbound side after set-up: read the sink, restamp onto our one SSRC, fill gaps
//! with silence, send DTMF, protect in place and send on the shared socket, with an RTCP sender
//! report every 5 s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::demux::is_rtcp;
use crate::dtmf::DtmfSender;
use crate::keys::SinkKeys;
use crate::mux::{MediaSocket, SinkTarget};
use crate::quiet::SinkClock;
use crate::relay::{sender_report, InboundCounters, SenderInfo};
use crate::restamp::{PayloadMap, Restamper, SinkPayloads, FRAME};
use crate::srtp::SrtpContext;
use crate::transcode::{payload_range, FromSink};
use crate::MediaError;

use crate::session::{
    set_routed, sink_srtp, transcoders, Command, Leftovers, MediaEvent, Sink, Stats, FIRST_RTCP,
    MTU, RTCP_INTERVAL, SINK_SILENCE, TAG_ROOM,
};

/// The call's outbound side: the sink's packets it reads, where and how they go.
pub(crate) struct Outbound {
    pub(crate) app: Arc<UdpSocket>,
    pub(crate) clock: Arc<SinkClock>,
    pub(crate) sink: SocketAddr,
    pub(crate) socket: Arc<MediaSocket>,
    pub(crate) remote: SocketAddr,
    pub(crate) srtp: SrtpContext,
    pub(crate) ssrc: u32,
    pub(crate) audio_pt: u8,
    pub(crate) payloads: PayloadMap,
    pub(crate) speak_first: bool,
    /// For a G.711 sink: its audio encoded to Opus on the way.
    pub(crate) from_sink: Option<Box<FromSink>>,
    /// Where our sequence numbers and timestamps start (drawn from the call's seed).
    pub(crate) first_seq: u16,
    pub(crate) first_ts: u32,
    /// Report a sink quiet for this long (`MediaConfig::sink_timeout`).
    pub(crate) sink_timeout: Option<Duration>,
    /// End the media when the far side has sent no RTP for this long (`MediaConfig::rtp_timeout`).
    pub(crate) rtp_timeout: Option<Duration>,
    /// For a sink that speaks SRTP: what checks its packets.
    pub(crate) sink_check: Option<SinkCheck>,
    /// Symmetric RTP (`MediaConfig::sink_latch`).
    pub(crate) sink_latch: bool,
}

/// What checks the packets of a sink that speaks SRTP, and the keys it was made from.
pub(crate) struct SinkCheck {
    pub(crate) keys: SinkKeys,
    pub(crate) srtp: Box<SrtpContext>,
}

/// An RTP packet of version 2 in one of the sink's payload types: what symmetric RTP latches on.
fn sink_rtp(packet: &[u8], payloads: SinkPayloads) -> bool {
    packet.len() >= 12
        && packet[0] >> 6 == 2
        && (packet[1] & 0x7f == payloads.audio || packet[1] & 0x7f == payloads.dtmf)
}

pub(crate) async fn write_loop(
    mut out: Box<Outbound>,
    mut commands: mpsc::Receiver<Command>,
    inbound: &InboundCounters,
    started: Instant,
    events: mpsc::Sender<MediaEvent>,
    leftovers: &std::sync::Mutex<Leftovers>,
) -> Result<(), MediaError> {
    let mut target = out.socket.target(out.remote);
    let mut restamper = Restamper::new(out.ssrc, out.first_seq, out.first_ts);
    let mut stats = Stats::default();
    let mut buf = [0u8; MTU + TAG_ROOM];
    let mut silence = [0u8; 15];
    // Our own frames (silence, DTMF) every 20 ms on our own timer; while the sink speaks, the task
    // sleeps on the sink socket alone and the socket's sweep wakes it when the sink goes quiet, a
    // report is due or a command came (quiet.rs): a relayed packet wakes it for its packet only.
    let tick = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(tick);
    let mut own_timer = true;
    let clock = out.clock.clone();
    // The first report soon (RFC 3550 §6.2 halves the first interval; we start at 1 s), so that
    // even a short call learns its round-trip time.
    let mut next_report = Instant::now() + FIRST_RTCP;
    let mut last_from_sink: Option<Instant> = None;
    // A G.711 sink's telephone-event being relayed: its timestamp, and ours for it.
    let mut sink_event: Option<(u32, u32)> = None;
    // Since when the sink has been quiet, as far as its timeout is concerned.
    let mut quiet_since = Instant::now();
    // The far side's RTP count when last looked at, and since when it has not moved.
    let mut far = (u64::MAX, Instant::now());
    let mut first = true;
    let mut dtmf: Option<DtmfSender> = None;
    let mut dtmf_queue: std::collections::VecDeque<DtmfSender> =
        std::collections::VecDeque::with_capacity(16);
    let mut payloads = out.payloads;
    let (app, mut sink) = (out.app.clone(), out.sink);
    let speak_first = out.speak_first;
    let may_speak = |inbound: &InboundCounters| {
        speak_first || inbound.packets.load(std::sync::atomic::Ordering::Relaxed) > 0
    };
    let mut from_sink = out.from_sink.take();
    let mut sink_check = out.sink_check.take();
    // Symmetric RTP: still waiting for the sink's first valid packet to say where it is.
    let mut learning = out.sink_latch;
    // The sink a re-target moved away from: a phone that goes on sending after its leg ended must
    // not be latched on in place of the new one.
    let mut retired: Option<SocketAddr> = None;
    loop {
        let frame_ready = dtmf.is_none() && from_sink.as_ref().is_some_and(|f| f.ready());
        let packet_len = tokio::select! {
            biased;
            // 20 ms of a G.711 sink's audio, encoded: one frame a turn until none is left.
            () = std::future::ready(()), if frame_ready => {
                let Some(payload) = from_sink.as_mut().and_then(|f| f.next_frame()) else {
                    continue;
                };
                restamper.frame(out.audio_pt, payload, &mut buf[..MTU], Instant::now())
            }
            r = app.recv_from(&mut buf[..MTU]) => {
                let (mut n, from) = match r {
                    Ok(x) => x,
                    // An ICMP port-unreachable from a sink that is restarting: not the call's end.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(MediaError::Local(format!("sink socket: {e}"))),
                };
                if from != sink && !learning {
                    stats.strangers += 1;
                    continue;
                }
                if let Some(check) = sink_check.as_mut() {
                    // The sink's SRTCP is not relayed (our reports toward the far side are ours).
                    if is_rtcp(&buf[..n]) {
                        continue;
                    }
                    match check.srtp.unprotect_rtp(&mut buf[..n]) {
                        Ok(m) => n = m,
                        Err(_) => {
                            stats.sink_rejected += 1;
                            continue;
                        }
                    }
                }
                if learning {
                    if Some(from) == retired || !sink_rtp(&buf[..n], payloads.sink) {
                        if from != sink {
                            stats.strangers += 1;
                        }
                        continue;
                    }
                    learning = false;
                    if from != sink {
                        // Once per (re-)offer: waited for, so that a full queue does not lose it.
                        let _ = events.send(MediaEvent::SinkLatched { announced: sink, source: from }).await;
                        sink = from;
                        out.socket.latch_route(out.remote, from).await;
                    }
                }
                let now = Instant::now();
                if let Some(f) = from_sink.as_mut().filter(|_| dtmf.is_none()) {
                    if f.take(now, &buf[..n], payloads.sink.dtmf) {
                        // Encoded by the branch above, 20 ms at a time (a key being sent
                        // replaces it, as below).
                        last_from_sink = Some(now);
                        clock.heard(now);
                        continue;
                    }
                }
                let len = if from_sink.is_some() && dtmf.is_none() && buf[1] & 0x7f == payloads.sink.dtmf {
                    let Some(pt) = payloads.remote_dtmf else { continue };
                    let Some(len) = relay_sink_event(&mut buf, n, pt, &mut sink_event, &mut restamper, now) else {
                        continue;
                    };
                    stats.dtmf_out += 1;
                    len
                } else {
                    // While a key is being sent, its events replace the sink's audio.
                    if dtmf.is_some() || !payloads.to_remote(&mut buf[..n]) || !restamper.restamp(&mut buf[..n], now) {
                        continue;
                    }
                    n
                };
                last_from_sink = Some(now);
                clock.heard(now);
                len
            }
            () = clock.woken(), if !own_timer => {
                own_timer = true;
                tick.as_mut().reset(tokio::time::Instant::now());
                continue;
            }
            () = &mut tick, if own_timer => {
                if clock.is_stopping() {
                    stats.take_inbound(inbound);
                    let _ = events.try_send(MediaEvent::Stats(Box::new(stats.clone())));
                    return Ok(());
                }
                let now = Instant::now();
                let on_time = tick.deadline() + FRAME;
                tick.as_mut().reset(on_time.max(tokio::time::Instant::now()));
                while let Ok(command) = commands.try_recv() {
                    match command {
                        Command::Dtmf(d) if dtmf_queue.len() < 16 => dtmf_queue.push_back(d),
                        Command::Dtmf(_) => {}
                        Command::Moved(moved) if moved != out.remote => {
                            out.socket.move_route(out.remote, moved).await;
                            out.remote = moved;
                            set_routed(leftovers, moved);
                            target = out.socket.target(moved);
                        }
                        Command::Moved(_) => {}
                        Command::Retarget(to) => {
                            let Sink { addr: moved_to, audio, payloads: sink_payloads, keys } = *to;
                            let (to_sink, new_from_sink) = transcoders(audio)?;
                            // New keys make new contexts; the same keys keep theirs, with their
                            // rollover counters and replay windows.
                            let protect = if keys != sink_check.as_ref().map(|c| c.keys) {
                                let (protect, check) = sink_srtp(keys)?;
                                sink_check = check;
                                Some(protect)
                            } else {
                                None
                            };
                            out.socket
                                .retarget_route(
                                    out.remote,
                                    Box::new(SinkTarget { sink: moved_to, payloads: sink_payloads, to_sink, protect }),
                                )
                                .await;
                            retired = (sink != moved_to).then_some(sink);
                            sink = moved_to;
                            learning = out.sink_latch;
                            quiet_since = Instant::now();
                            payloads.sink = sink_payloads;
                            from_sink = new_from_sink;
                        }
                    }
                }
                if let Some(limit) = out.sink_timeout {
                    let heard = last_from_sink.map_or(quiet_since, |t| t.max(quiet_since));
                    if now.duration_since(heard) >= limit {
                        let _ = events.try_send(MediaEvent::SinkQuiet(now.duration_since(heard)));
                        quiet_since = now;
                    }
                }
                if let Some(limit) = out.rtp_timeout {
                    far = far_side_heard(inbound, far, now);
                    if now.duration_since(far.1) >= limit {
                        stats.take_inbound(inbound);
                        let _ = events.try_send(MediaEvent::Stats(Box::new(stats.clone())));
                        return Err(MediaError::Timeout(format!(
                            "no RTP from the far side for {} s (RTP timeout)",
                            now.duration_since(far.1).as_secs()
                        )));
                    }
                }
                if now >= next_report && may_speak(inbound) {
                    next_report = now + RTCP_INTERVAL;
                    let me = SenderInfo {
                        ssrc: out.ssrc,
                        rtp_timestamp: restamper.now_ts(now),
                        packets: stats.packets_out as u32,
                        octets: stats.bytes_out as u32,
                    };
                    let mut report = [0u8; 64 + TAG_ROOM];
                    let n = sender_report(&me, inbound, started, now, &mut report);
                    if let Ok(n) = out.srtp.protect_rtcp(&mut report, n) {
                        let _ = out.socket.socket().send_to(&report[..n], target).await;
                    }
                    stats.take_inbound(inbound);
                    let _ = events.try_send(MediaEvent::Stats(Box::new(stats.clone())));
                }
                if dtmf.is_none() {
                    dtmf = dtmf_queue.pop_front();
                }
                if let (Some(d), Some(pt)) = (dtmf.as_mut(), payloads.remote_dtmf) {
                    let next = d.next(restamper.now_ts(now));
                    if d.done() {
                        dtmf = None;
                    }
                    if let Some(p) = next {
                        let n = restamper.own_packet(pt, p.marker, p.timestamp, &p.payload, &mut buf[..MTU], now);
                        stats.dtmf_out += 1;
                        n
                    } else {
                        continue;
                    }
                } else if last_from_sink.is_some_and(|t| now.duration_since(t) < SINK_SILENCE) {
                    own_timer = false;
                    clock.watch(next_report);
                    continue;
                } else {
                    let n = restamper.silence(out.audio_pt, &mut silence, now);
                    buf[..n].copy_from_slice(&silence[..n]);
                    stats.silence_out += 1;
                    n
                }
            }
        };
        // With speak_first off, nothing goes out before the far side's first packet.
        if first && !may_speak(inbound) {
            continue;
        }
        let protected = out
            .srtp
            .protect_rtp(&mut buf, packet_len)
            .map_err(|e| MediaError::Local(format!("SRTP protect: {e}")))?;
        if out
            .socket
            .socket()
            .send_to(&buf[..protected], target)
            .await
            .is_ok()
        {
            stats.packets_out += 1;
            stats.bytes_out += packet_len as u64;
            if first {
                first = false;
                let _ = events
                    .send(MediaEvent::FirstRtpOut {
                        elapsed: started.elapsed(),
                    })
                    .await;
            }
        }
    }
}

/// The far side's RTP count now, and since when it has stood still (`last`: the count and time
/// seen before). Looked at on the call's own wake-ups, never per packet.
fn far_side_heard(inbound: &InboundCounters, last: (u64, Instant), now: Instant) -> (u64, Instant) {
    let count = inbound.packets.load(std::sync::atomic::Ordering::Relaxed);
    if count == last.0 {
        last
    } else {
        (count, now)
    }
}

/// A G.711 sink's telephone-event packet (`buf[..n]`), written in place onto our stream as payload
/// type `pt`: each event at our stream's time where it starts (`event`: the sink's timestamp of the
/// event being relayed, and ours), its payload as it is (its durations are 8 kHz units, as the far
/// side's telephone-event/8000 wants). None: not a telephone-event payload.
fn relay_sink_event(
    buf: &mut [u8],
    n: usize,
    pt: u8,
    event: &mut Option<(u32, u32)>,
    restamper: &mut Restamper,
    now: Instant,
) -> Option<usize> {
    let range = payload_range(&buf[..n])?;
    let payload = <[u8; 4]>::try_from(&buf[range]).ok()?;
    let sink_ts = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let (our_ts, starts) = match *event {
        Some((ts, ours)) if ts == sink_ts => (ours, false),
        _ => (restamper.now_ts(now), true),
    };
    *event = Some((sink_ts, our_ts));
    Some(restamper.own_packet(pt, starts, our_ts, &payload, &mut buf[..MTU], now))
}
