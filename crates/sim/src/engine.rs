//! `sim load`'s packet engine: Meta's side of every call's media on one thread, and the agent's
//! side on another. Each call has its own UDP socket toward the relay (the relay tells calls apart
//! by their remote address); after set-up one thread reads them all (epoll), answers the relay's
//! ICE checks (ICE-lite, consent included), hands DTLS records to the call's handshake while it
//! runs, and sends each call a stamped packet every 20 ms from one 1 ms sweep, SRTP-protected in
//! place: no task per call, no plain hop, no allocation on the packet path. The agent's side reads
//! and echoes in batches (recvmmsg / sendmmsg).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use watrunk_media::srtp::SrtpContext;

use super::load::{histogram, read_stamp, write_packet, Clock, Counters, Flow, Stamp, SLOTS};

/// How a call's packets are protected.
pub(crate) enum Keys {
    /// SRTP: ours protect what we send, theirs check what comes.
    Srtp {
        outbound: Box<SrtpContext>,
        inbound: Box<SrtpContext>,
    },
    /// Plain RTP (the bare relay, or a session of ours that does the SRTP).
    Plain,
}

/// The relay's ICE checks to answer for a call (we are ICE-lite).
pub(crate) struct Ice {
    /// `ours:theirs`, as the checks carry it.
    pub(crate) username: String,
    pub(crate) pwd: String,
    /// Told the address the relay nominated, once.
    pub(crate) nominated: Option<oneshot::Sender<SocketAddr>>,
}

pub(crate) enum Command {
    /// The engine reads the call's socket from now on (nothing is answered yet).
    Open {
        call: u32,
        socket: Arc<UdpSocket>,
    },
    /// What set-up needs: checks to answer, and where the relay's DTLS records go.
    Connect {
        call: u32,
        ice: Option<Ice>,
        dtls: Option<mpsc::Sender<Vec<u8>>>,
    },
    /// The call's media: stamped packets to `remote` (at once, or after the relay's first packet
    /// unless `speak_first`); `first_rtp` is told when the relay's first RTP packet came.
    Start {
        call: u32,
        remote: SocketAddr,
        keys: Keys,
        speak_first: bool,
        first_rtp: Option<oneshot::Sender<()>>,
    },
    Close(u32),
}

/// What Meta's side knew at the end.
pub(crate) struct MetaSide {
    pub(crate) flows: Vec<Flow>,
    pub(crate) latency: Histogram<u64>,
    pub(crate) round_trip: Histogram<u64>,
}

struct Media {
    keys: Keys,
    seq: u32,
    speaking: bool,
    first_rtp: Option<oneshot::Sender<()>>,
    /// Its echo came back at least once (it counts in `flowing`).
    heard: bool,
}

struct Call {
    socket: Arc<UdpSocket>,
    ice: Option<Ice>,
    dtls: Option<mpsc::Sender<Vec<u8>>>,
    media: Option<Media>,
}

pub(crate) struct Engine {
    thread: std::thread::JoinHandle<MetaSide>,
}

impl Engine {
    pub(crate) fn start(
        total: usize,
        payload: usize,
        clock: Arc<Clock>,
        counters: Arc<Counters>,
    ) -> Result<(Engine, std_mpsc::Sender<Command>)> {
        // SAFETY: epoll_create1 takes no pointers.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_create1");
        }
        let (tx, rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sim-load-meta".into())
            .spawn(move || {
                let side = meta_side(epoll, rx, total, payload, &clock, &counters);
                // SAFETY: the descriptor is ours and used no more.
                unsafe { libc::close(epoll) };
                side
            })?;
        Ok((Engine { thread }, tx))
    }

    /// Waits for Meta's side to finish: it does once every command sender is gone.
    pub(crate) fn finish(self) -> MetaSide {
        self.thread.join().expect("the meta side does not panic")
    }
}

/// A call's own socket toward the relay, non-blocking (the engine reads it).
pub(crate) fn call_socket(ip: std::net::IpAddr) -> Result<Arc<UdpSocket>> {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("cannot bind a media socket on {ip}"))?;
    socket.set_nonblocking(true)?;
    Ok(Arc::new(socket))
}

fn epoll_ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, call: u32) {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: u64::from(call),
    };
    // SAFETY: `event` lives across the call; the kernel copies it.
    unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) };
}

fn meta_side(
    epoll: RawFd,
    commands: std_mpsc::Receiver<Command>,
    total: usize,
    payload: usize,
    clock: &Clock,
    counters: &Counters,
) -> MetaSide {
    let mut flows = vec![Flow::default(); total];
    let mut calls: Vec<Option<Call>> = (0..total).map(|_| None).collect();
    let mut slots: Vec<Vec<u32>> = vec![Vec::new(); SLOTS as usize];
    let mut latency = histogram();
    let mut round_trip = histogram();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let mut next_slot: u64 = 0;
    'run: loop {
        loop {
            match commands.try_recv() {
                Ok(c) => command(c, epoll, &mut calls, &mut slots, counters),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => break 'run,
            }
        }
        let due = start.elapsed().as_millis() as u64;
        while next_slot <= due {
            for &call in &slots[(next_slot % SLOTS) as usize] {
                let Some(Some(c)) = calls.get_mut(call as usize) else {
                    continue;
                };
                let Some(m) = c.media.as_mut().filter(|m| m.speaking) else {
                    continue;
                };
                let stamp = Stamp {
                    call,
                    seq: m.seq,
                    sent_ns: clock.now_ns(),
                    echoed_ns: 0,
                };
                m.seq += 1;
                let mut n = write_packet(&mut buf, payload, stamp);
                if let Keys::Srtp { outbound, .. } = &mut m.keys {
                    match outbound.protect_rtp(&mut buf, n) {
                        Ok(len) => n = len,
                        Err(_) => {
                            counters.send_failed.fetch_add(1, Relaxed);
                            continue;
                        }
                    }
                }
                match c.socket.send(&buf[..n]) {
                    Ok(_) => counters.meta_sent.fetch_add(1, Relaxed),
                    Err(_) => counters.send_failed.fetch_add(1, Relaxed),
                };
            }
            next_slot += 1;
        }
        // Until the next slot at most (epoll's timeout is in whole milliseconds).
        // SAFETY: `events` has room for the number of events asked for.
        let ready =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as libc::c_int, 1) };
        for event in events.iter().take(ready.max(0) as usize) {
            let call = event.u64 as u32;
            let Some(Some(c)) = calls.get_mut(call as usize) else {
                continue;
            };
            // One packet per readiness: epoll reports the socket again while more wait.
            let Ok((n, from)) = c.socket.recv_from(&mut buf) else {
                continue;
            };
            let now = clock.now_ns();
            match buf[0] {
                0..=3 => {
                    let Some(ice) = c.ice.as_mut() else { continue };
                    let Some((answer, nominates)) =
                        watrunk_media::answer_check(&buf[..n], from, &ice.username, &ice.pwd)
                    else {
                        continue;
                    };
                    let _ = c.socket.send_to(&answer, from);
                    if nominates {
                        if let Some(tell) = ice.nominated.take() {
                            let _ = tell.send(from);
                        }
                    }
                }
                20..=63 => {
                    if let Some(dtls) = &c.dtls {
                        let _ = dtls.try_send(buf[..n].to_vec());
                    }
                }
                128..=191 => {
                    let Some(m) = c.media.as_mut() else { continue };
                    // RTCP (PT 200-204 with the marker bit) is not ours to read.
                    if (200..=204).contains(&buf[1]) {
                        continue;
                    }
                    let n = match &mut m.keys {
                        Keys::Srtp { inbound, .. } => match inbound.unprotect_rtp(&mut buf[..n]) {
                            Ok(n) => n,
                            Err(_) => continue,
                        },
                        Keys::Plain => n,
                    };
                    m.speaking = true;
                    if let Some(tell) = m.first_rtp.take() {
                        let _ = tell.send(());
                    }
                    let Some((_, s)) = read_stamp(&buf[..n]) else {
                        if counters.unstamped.load(Relaxed) {
                            counters.meta_received.fetch_add(1, Relaxed);
                        }
                        continue;
                    };
                    let Some(flow) = flows.get_mut(s.call as usize) else {
                        continue;
                    };
                    let lost = flow.record(s.seq, s.echoed_ns, now);
                    counters.lost_to_meta.fetch_add(lost, Relaxed);
                    counters.meta_received.fetch_add(1, Relaxed);
                    if !m.heard {
                        m.heard = true;
                        counters.flowing.fetch_add(1, Relaxed);
                    }
                    if clock.measuring.load(Relaxed) {
                        let _ = latency.record(now.saturating_sub(s.echoed_ns) / 1000);
                        let _ = round_trip.record(now.saturating_sub(s.sent_ns) / 1000);
                    }
                }
                _ => {}
            }
        }
    }
    MetaSide {
        flows,
        latency,
        round_trip,
    }
}

fn command(
    c: Command,
    epoll: RawFd,
    calls: &mut [Option<Call>],
    slots: &mut [Vec<u32>],
    counters: &Counters,
) {
    match c {
        Command::Open { call, socket } => {
            let Some(slot) = calls.get_mut(call as usize) else {
                return;
            };
            epoll_ctl(epoll, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), call);
            *slot = Some(Call {
                socket,
                ice: None,
                dtls: None,
                media: None,
            });
        }
        Command::Connect { call, ice, dtls } => {
            if let Some(Some(c)) = calls.get_mut(call as usize) {
                c.ice = ice;
                c.dtls = dtls;
            }
        }
        Command::Start {
            call,
            remote,
            keys,
            speak_first,
            first_rtp,
        } => {
            if let Some(Some(c)) = calls.get_mut(call as usize) {
                // The handshake is over: later DTLS records are dropped. Connected, the socket
                // sends without a route lookup per packet, and hears only the relay.
                c.dtls = None;
                if c.socket.connect(remote).is_err() {
                    counters.send_failed.fetch_add(1, Relaxed);
                }
                c.media = Some(Media {
                    keys,
                    seq: 0,
                    speaking: speak_first,
                    first_rtp,
                    heard: false,
                });
                slots[call as usize % SLOTS as usize].push(call);
            }
        }
        Command::Close(call) => {
            let Some(slot) = calls.get_mut(call as usize) else {
                return;
            };
            if let Some(c) = slot.take() {
                epoll_ctl(epoll, libc::EPOLL_CTL_DEL, c.socket.as_raw_fd(), call);
                if let Some(m) = c.media {
                    slots[call as usize % SLOTS as usize].retain(|&x| x != call);
                    if m.heard {
                        counters.flowing.fetch_sub(1, Relaxed);
                    }
                }
            }
        }
    }
}

/// What the agent's side knew at the end.
pub(crate) struct AgentSide {
    pub(crate) flows: Vec<Flow>,
    pub(crate) latency: Histogram<u64>,
}

const BATCH: usize = 64;

/// The agent behind the relay, on its own thread: every stamped packet is recorded and sent
/// straight back with the echo time written in, in batches (recvmmsg, sendmmsg). Ends when `stop`
/// is set (the socket's receive timeout bounds the wait).
pub(crate) fn agent_side(
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
    total: usize,
    clock: Arc<Clock>,
    counters: Arc<Counters>,
    echo_unstamped: bool,
) -> AgentSide {
    let mut flows = vec![Flow::default(); total];
    let mut latency = histogram();
    let _ = socket.set_nonblocking(false);
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; 1500]; BATCH];
    // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr (null pointers, lengths 0).
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut in_iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut out_iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut in_msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut out_msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    while !stop.load(Relaxed) {
        for i in 0..BATCH {
            in_iov[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: bufs[i].len(),
            };
            let h = &mut in_msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut in_iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            in_msgs[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers that outlive the call.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                in_msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got <= 0 {
            continue;
        }
        let now = clock.now_ns();
        let mut out = 0;
        for i in 0..got as usize {
            let n = in_msgs[i].msg_len as usize;
            let packet = &mut bufs[i][..n];
            match read_stamp(packet) {
                Some((at, s)) => {
                    let Some(flow) = flows.get_mut(s.call as usize) else {
                        continue;
                    };
                    let lost = flow.record(s.seq, s.sent_ns, now);
                    counters.lost_to_agent.fetch_add(lost, Relaxed);
                    counters.agent_received.fetch_add(1, Relaxed);
                    if clock.measuring.load(Relaxed) {
                        let _ = latency.record(now.saturating_sub(s.sent_ns) / 1000);
                    }
                    packet[at + 20..at + 28].copy_from_slice(&clock.now_ns().to_be_bytes());
                }
                None if echo_unstamped => {
                    counters.agent_received.fetch_add(1, Relaxed);
                }
                None => continue,
            }
            out_iov[out] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: n,
            };
            let h = &mut out_msgs[out].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = in_msgs[i].msg_hdr.msg_namelen;
            h.msg_iov = &mut out_iov[out];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            out += 1;
        }
        let mut sent = 0;
        while sent < out {
            // Never blocking: on loopback a packet stays charged to our send buffer until the
            // relay reads it, and a relay that falls behind must not stall the echoes of others.
            // SAFETY: the headers point into buffers that outlive the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    out_msgs[sent..].as_mut_ptr(),
                    (out - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                sent += r as usize;
            } else if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                // The send buffer is full: the rest of the batch is dropped, and counted.
                counters.send_failed.fetch_add((out - sent) as u64, Relaxed);
                break;
            } else {
                // The first one failed: count it and go on with the rest.
                counters.send_failed.fetch_add(1, Relaxed);
                sent += 1;
            }
        }
    }
    AgentSide { flows, latency }
}
