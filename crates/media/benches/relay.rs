//! Relay benchmark: N calls at 50 packets/s each way, SRTP on the far side and plain RTP on the sink
//! side, through watrunk's media path, next to a bare UDP relay (same socket layout and task
//! structure, no SRTP, no re-stamping) measured in the same run. The load generator is this binary
//! again in a child process, so its CPU is not the relay's; the report is the relay's CPU time per
//! relayed packet over a measurement window, the loss each way, and the ratio to the bare relay.
//!
//! `cargo bench -p watrunk-media --bench relay -- [--sessions 100,500,1000] [--seconds 10]`
//!
//! Calls use SDES without ICE, so no set-up traffic is in the window: after set-up the packets of
//! an ICE call take exactly this path (the shared socket's route by remote address).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use watrunk_media::srtp::{SrtpContext, SrtpProfile};
use watrunk_media::{IceRole, Identity, MediaConfig, MediaEvent, MediaSocket, Prepared};
#[path = "../tests/common/mod.rs"]
mod common;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const PAYLOAD: usize = 80;
const PT: u8 = 111;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--generator") {
        let n: usize = value("--sessions").unwrap().parse().unwrap();
        let relay: SocketAddr = value("--relay").unwrap().parse().unwrap();
        let seconds: f64 = value("--seconds").unwrap().parse().unwrap();
        generator_main(n, relay, seconds, args.iter().any(|a| a == "--plain"));
        return;
    }
    let sessions: Vec<usize> = value("--sessions")
        .unwrap_or_else(|| "100,250,500,750,1000".into())
        .split(',')
        .map(|s| s.parse().expect("--sessions N[,N...]"))
        .collect();
    let seconds: f64 = value("--seconds")
        .map(|s| s.parse().unwrap())
        .unwrap_or(10.0);
    srtp_cost();
    println!(
        "{:>6} {:>8} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9} {:>12}",
        "calls",
        "relay",
        "pkts/s",
        "µs/pkt",
        "loss in",
        "loss out",
        "ratio",
        "gen µs/pkt",
        "heap KB/call"
    );
    if let Some(only) = value("--only") {
        // For profiling one relay alone.
        let mode = if only == "bare" {
            Mode::Bare
        } else {
            Mode::Watrunk
        };
        for &n in &sessions {
            run(mode, n, seconds).print(n, &only, None);
        }
        return;
    }
    for &n in &sessions {
        let bare = run(Mode::Bare, n, seconds);
        let ours = run(Mode::Watrunk, n, seconds);
        bare.print(n, "bare", None);
        ours.print(
            n,
            "watrunk",
            Some(ours.us_per_packet() / bare.us_per_packet()),
        );
    }
}

/// What the SRTP operation alone costs per relayed packet (one protect or unprotect each).
fn srtp_cost() {
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let mut out = SrtpContext::new(profile, &[1; 16], &[2; 14]).unwrap();
    let mut inb = SrtpContext::new(profile, &[1; 16], &[2; 14]).unwrap();
    let mut packet = [0u8; 12 + PAYLOAD + 16];
    let rounds = 200_000u32;
    let start = Instant::now();
    for i in 0..rounds {
        packet[0] = 0x80;
        packet[1] = PT;
        packet[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        packet[8..12].copy_from_slice(&7u32.to_be_bytes());
        let n = out.protect_rtp(&mut packet, 12 + PAYLOAD).unwrap();
        inb.unprotect_rtp(&mut packet[..n]).unwrap();
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(2 * rounds);
    println!(
        "SRTP AES_CM_128_HMAC_SHA1_80, {PAYLOAD}-byte payload: {us:.2} µs per protect or unprotect"
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Bare,
    Watrunk,
}

struct Outcome {
    relay_cpu: Duration,
    generator_cpu: Duration,
    window: Duration,
    /// Far side → sink: sent by the generator, received at its sink.
    sent_in: u64,
    received_in: u64,
    /// Sink → far side.
    sent_out: u64,
    received_out: u64,
    /// Heap the calls hold, from before they were made to the window's start.
    heap_per_call_kb: f64,
}

impl Outcome {
    fn relayed(&self) -> u64 {
        self.received_in + self.received_out
    }

    fn us_per_packet(&self) -> f64 {
        self.relay_cpu.as_secs_f64() * 1e6 / self.relayed().max(1) as f64
    }

    fn loss(sent: u64, received: u64) -> f64 {
        100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64
    }

    fn print(&self, n: usize, name: &str, ratio: Option<f64>) {
        println!(
            "{:>6} {:>8} {:>10.0} {:>10.2} {:>9.3}% {:>9.3}% {:>7} {:>9.2} {:>12.1}",
            n,
            name,
            self.relayed() as f64 / self.window.as_secs_f64(),
            self.us_per_packet(),
            Self::loss(self.sent_in, self.received_in),
            Self::loss(self.sent_out, self.received_out),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            self.generator_cpu.as_secs_f64() * 1e6
                / (self.sent_in + self.sent_out + self.relayed()).max(1) as f64,
            self.heap_per_call_kb,
        );
    }
}

/// Counts the bytes allocated and not yet freed, for the heap each call holds.
struct LiveBytes;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call goes to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

fn live_kb() -> f64 {
    LIVE.load(Relaxed) as f64 / 1024.0
}

fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The relay side: one process-wide runtime with one worker, the generator on the other core.
fn run(mode: Mode, n: usize, seconds: f64) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(relay(mode, n, seconds))
}

struct Far {
    far: SocketAddr,
    /// Generator → relay key and relay → generator key (SDES master key || salt).
    key_in: Vec<u8>,
    key_out: Vec<u8>,
}

async fn relay(mode: Mode, n: usize, seconds: f64) -> Outcome {
    let socket = MediaSocket::bind(SocketAddr::new(LOOPBACK, 0))
        .await
        .unwrap();
    let bare_socket = match mode {
        Mode::Bare => Some(Arc::new(
            UdpSocket::bind(SocketAddr::new(LOOPBACK, 0)).await.unwrap(),
        )),
        Mode::Watrunk => None,
    };
    let relay_addr = bare_socket
        .as_ref()
        .map_or(socket.local_addr(), |s| s.local_addr().unwrap());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--generator", "--sessions", &n.to_string()])
        .args((mode == Mode::Bare).then_some("--plain"))
        .args([
            "--relay",
            &relay_addr.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("generator");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = move || lines.next().unwrap().unwrap();
    let sink: SocketAddr = next().strip_prefix("sink ").unwrap().parse().unwrap();
    let fars: Vec<Far> = (0..n)
        .map(|_| {
            let line = next();
            let mut parts = line.split(' ').skip(1);
            Far {
                far: parts.next().unwrap().parse().unwrap(),
                key_in: hex(parts.next().unwrap()),
                key_out: hex(parts.next().unwrap()),
            }
        })
        .collect();

    let heap_before = live_kb();
    let mut calls = Vec::new();
    let mut locals = Vec::new();
    match mode {
        Mode::Watrunk => {
            let identity = Identity::generate().unwrap();
            for far in &fars {
                let cfg =
                    MediaConfig::new(LOOPBACK, SocketAddr::new(LOOPBACK, 0), sink, rand::random());
                let prepared = Prepared::new(cfg, identity.clone(), IceRole::None, &socket)
                    .await
                    .unwrap();
                locals.push(prepared.app_addr());
                let mut call = prepared.start(
                    common::sdes_plan(far.far, &far.key_out, &far.key_in, None),
                    rand::random(),
                );
                let mut events =
                    std::mem::replace(&mut call.events, tokio::sync::mpsc::channel(1).1);
                tokio::spawn(async move {
                    while let Some(e) = events.recv().await {
                        if let MediaEvent::Failed(reason) = e {
                            eprintln!("call failed: {reason}");
                        }
                    }
                });
                calls.push(call);
            }
        }
        Mode::Bare => {
            let shared = bare_socket.clone().unwrap();
            let mut routes = HashMap::new();
            for far in &fars {
                let l = Arc::new(UdpSocket::bind(SocketAddr::new(LOOPBACK, 0)).await.unwrap());
                locals.push(l.local_addr().unwrap());
                routes.insert(far.far, l.clone());
                let (shared, to) = (shared.clone(), far.far);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1500];
                    while let Ok((n, _)) = l.recv_from(&mut buf).await {
                        let _ = shared.send_to(&buf[..n], to).await;
                    }
                });
            }
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                loop {
                    if shared.readable().await.is_err() {
                        return;
                    }
                    while let Ok((n, from)) = shared.try_recv_from(&mut buf) {
                        if let Some(l) = routes.get(&from) {
                            let _ = l.try_send_to(&buf[..n], sink);
                        }
                    }
                }
            });
        }
    }
    for l in &locals {
        writeln!(stdin, "local {l}").unwrap();
    }
    stdin.flush().unwrap();

    // The generator says when its window opens and closes; its result follows.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Duration)>(4);
    std::thread::spawn(move || loop {
        let line = next();
        let done = line.starts_with("result");
        let _ = tx.blocking_send((line, cpu_time()));
        if done {
            return;
        }
    });
    let (start_line, cpu_start) = rx.recv().await.unwrap();
    let heap_per_call_kb = (live_kb() - heap_before) / n as f64;
    assert_eq!(start_line, "window start");
    let (end_line, cpu_end) = rx.recv().await.unwrap();
    assert_eq!(end_line, "window end");
    let (result, _) = rx.recv().await.unwrap();
    let relay_cpu = cpu_end.saturating_sub(cpu_start);
    drop(stdin);
    let _ = child.wait();
    for call in calls {
        call.stop().await;
    }
    let v: Vec<f64> = result
        .split(' ')
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    Outcome {
        relay_cpu,
        generator_cpu: Duration::from_secs_f64(v[0]),
        window: Duration::from_secs_f64(v[1]),
        sent_in: v[2] as u64,
        received_in: v[3] as u64,
        sent_out: v[4] as u64,
        received_out: v[5] as u64,
        heap_per_call_kb,
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The far sides and the sink of every call, in one single-threaded process.
/// `plain`: the far side speaks RTP too (toward the bare relay).
fn generator_main(n: usize, relay: SocketAddr, seconds: f64, plain: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(generator(n, relay, seconds, plain));
}

#[derive(Default)]
struct Counts {
    sent_in: AtomicU64,
    received_in: AtomicU64,
    sent_out: AtomicU64,
    received_out: AtomicU64,
}

async fn generator(n: usize, relay: SocketAddr, seconds: f64, plain: bool) {
    let sink = Arc::new(big_socket().await);
    println!("sink {}", sink.local_addr().unwrap());
    let mut fars = Vec::new();
    for _ in 0..n {
        let far = Arc::new(big_socket().await);
        let key_in: [u8; 30] = rand::random();
        let key_out: [u8; 30] = rand::random();
        println!(
            "far {} {} {}",
            far.local_addr().unwrap(),
            to_hex(&key_in),
            to_hex(&key_out)
        );
        fars.push((far, key_in, key_out));
    }
    let mut locals = Vec::new();
    let stdin = std::io::stdin();
    for _ in 0..n {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).unwrap();
        let l: SocketAddr = line.trim().strip_prefix("local ").unwrap().parse().unwrap();
        locals.push(l);
    }
    let counts = Arc::new(Counts::default());
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let mut senders = Vec::new();
    for (far, key_in, key_out) in &fars {
        let (far, counts, measuring) = (far.clone(), counts.clone(), measuring.clone());
        let mut inbound = SrtpContext::new(profile, &key_out[..16], &key_out[16..]).unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok(n) = far.recv(&mut buf).await {
                if buf[1] & 0x7f == PT
                    && (plain || inbound.unprotect_rtp(&mut buf[..n]).is_ok())
                    && measuring.load(Relaxed)
                {
                    counts.received_out.fetch_add(1, Relaxed);
                }
            }
        });
        senders.push(SrtpContext::new(profile, &key_in[..16], &key_in[16..]).unwrap());
    }
    for (far, _, _) in &fars {
        far.connect(relay).await.unwrap();
    }
    {
        let (sink, counts, measuring) = (sink.clone(), counts.clone(), measuring.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, _)) = sink.recv_from(&mut buf).await {
                if n > 12 && measuring.load(Relaxed) {
                    counts.received_in.fetch_add(1, Relaxed);
                }
            }
        });
    }

    // Each call sends every 20 ms, the calls spread over the 20 ms in 1 ms slots.
    let ssrcs: Vec<u32> = (0..n).map(|_| rand::random()).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let warmup = Duration::from_secs(2);
    let window = Duration::from_secs_f64(seconds);
    let begin = Instant::now();
    let mut slot = 0u64;
    let mut packet = [0u8; 12 + PAYLOAD + 16];
    let mut window_start = None;
    let mut cpu_start = Duration::ZERO;
    loop {
        tick.tick().await;
        let elapsed = begin.elapsed();
        if window_start.is_none() && elapsed >= warmup {
            // Counted from here: packets sent now and everything that arrives from now.
            measuring.store(true, Relaxed);
            window_start = Some(Instant::now());
            cpu_start = cpu_time();
            println!("window start");
        }
        if let Some(start) = window_start {
            if start.elapsed() >= window {
                break;
            }
        }
        let frame = slot / 20;
        for i in ((slot % 20) as usize..n).step_by(20) {
            let seq = frame as u16;
            packet[0] = 0x80;
            packet[1] = PT;
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            packet[4..8].copy_from_slice(&((frame as u32) * 960).to_be_bytes());
            packet[8..12].copy_from_slice(&ssrcs[i].to_be_bytes());
            packet[12..12 + PAYLOAD].fill(0x55);
            let len = 12 + PAYLOAD;
            if sink.try_send_to(&packet[..len], locals[i]).is_ok() && window_start.is_some() {
                counts.sent_out.fetch_add(1, Relaxed);
            }
            let protected = if plain {
                len
            } else {
                senders[i].protect_rtp(&mut packet, len).unwrap()
            };
            if fars[i].0.try_send(&packet[..protected]).is_ok() && window_start.is_some() {
                counts.sent_in.fetch_add(1, Relaxed);
            }
        }
        slot += 1;
    }
    let cpu = cpu_time().saturating_sub(cpu_start);
    let window = window_start.unwrap().elapsed();
    println!("window end");
    // What is still in flight arrives; shorter than the relay's 60 ms before it fills in silence.
    tokio::time::sleep(Duration::from_millis(40)).await;
    measuring.store(false, Relaxed);
    println!(
        "result {} {} {} {} {} {}",
        cpu.as_secs_f64(),
        window.as_secs_f64(),
        counts.sent_in.load(Relaxed),
        counts.received_in.load(Relaxed),
        counts.sent_out.load(Relaxed),
        counts.received_out.load(Relaxed)
    );
    std::io::stdout().flush().unwrap();
}

async fn big_socket() -> UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket.set_nonblocking(true).unwrap();
    socket.bind(&SocketAddr::new(LOOPBACK, 0).into()).unwrap();
    UdpSocket::from_std(socket.into()).unwrap()
}
