//! The per-packet path allocates nothing: a call relays packets both ways (SRTP from the far side to
//! the sink, RTP from the sink to the far side) while a counting allocator watches the whole process.
//! After a warm-up, 400 more packets each way must cost zero heap allocations, with an Opus sink
//! (relayed) and with a G.711 sink (transcoded both ways).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::UdpSocket;
use watrunk_media::srtp::{SrtpContext, SrtpProfile};
use watrunk_media::{IceRole, Identity, Law, MediaConfig, MediaSocket, Prepared, SinkAudio};

mod common;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEY_IN: [u8; 30] = [3; 30];
const KEY_OUT: [u8; 30] = [4; 30];

/// What one call's packets look like: the far side's Opus payload, and the sink's packets (PT,
/// payload) with the length each has on arriving at the sink.
struct Traffic {
    sink_audio: SinkAudio,
    far_payload: Vec<u8>,
    sink_pt: u8,
    sink_payload: Vec<u8>,
    /// The length of the far side's packet as the sink gets it (relayed, or transcoded to 20 ms
    /// of G.711).
    at_sink: usize,
}

/// One round: a packet each way, both received. Uses fixed buffers only.
async fn round(
    seq: u16,
    traffic: &Traffic,
    far: &UdpSocket,
    sink: &UdpSocket,
    local: SocketAddr,
    to_us: &mut SrtpContext,
    from_us: &mut SrtpContext,
) {
    let mut packet = [0u8; 1500];
    let header = |packet: &mut [u8], pt: u8| {
        packet[0] = 0x80;
        packet[1] = pt;
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        packet[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    };
    header(&mut packet, traffic.sink_pt);
    let sink_len = 12 + traffic.sink_payload.len();
    packet[12..sink_len].copy_from_slice(&traffic.sink_payload);
    sink.send_to(&packet[..sink_len], local).await.unwrap();
    header(&mut packet, 111);
    let far_len = 12 + traffic.far_payload.len();
    packet[12..far_len].copy_from_slice(&traffic.far_payload);
    let n = to_us.protect_rtp(&mut packet, far_len).unwrap();
    far.send(&packet[..n]).await.unwrap();

    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(2), sink.recv(&mut buf))
        .await
        .expect("the far side's packet reached the sink")
        .unwrap();
    assert_eq!(
        u16::from_be_bytes([buf[2], buf[3]]),
        seq,
        "in order, its sequence number kept"
    );
    assert_eq!(n, traffic.at_sink);
    // Our own silence frames (3 octets of payload) may come first, before the sink's audio takes
    // over.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(2), far.recv(&mut buf))
            .await
            .expect("the sink's packet reached the far side")
            .unwrap();
        if watrunk_media::is_rtcp(&buf[..n]) {
            continue;
        }
        let n = from_us.unprotect_rtp(&mut buf[..n]).unwrap();
        if n > 15 {
            break;
        }
    }
}

/// A call relaying 400 packets each way after a warm-up: the heap allocations it made.
async fn allocations_of_a_call(traffic: &Traffic) -> u64 {
    let loopback = "127.0.0.1".parse().unwrap();
    let socket = MediaSocket::bind(SocketAddr::new(loopback, 0))
        .await
        .unwrap();
    let far = UdpSocket::bind(SocketAddr::new(loopback, 0)).await.unwrap();
    far.connect(socket.local_addr()).await.unwrap();
    let sink = UdpSocket::bind(SocketAddr::new(loopback, 0)).await.unwrap();
    let mut cfg = MediaConfig::new(
        loopback,
        SocketAddr::new(loopback, 0),
        sink.local_addr().unwrap(),
        1,
    );
    cfg.sink_audio = traffic.sink_audio;
    let prepared = Prepared::new(cfg, Identity::generate().unwrap(), IceRole::None, &socket)
        .await
        .unwrap();
    let local = prepared.app_addr();
    let plan = common::sdes_plan(far.local_addr().unwrap(), &KEY_OUT, &KEY_IN, None);
    let mut call = prepared.start(plan, 42);
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let mut to_us = SrtpContext::new(profile, &KEY_IN[..16], &KEY_IN[16..]).unwrap();
    let mut from_us = SrtpContext::new(profile, &KEY_OUT[..16], &KEY_OUT[16..]).unwrap();
    // Warm-up: set-up, first-packet events, channel blocks, timer slots.
    for seq in 0..100u16 {
        round(seq, traffic, &far, &sink, local, &mut to_us, &mut from_us).await;
    }
    while call.events.try_recv().is_ok() {}
    let before = ALLOCATIONS.load(Relaxed);
    assert!(
        before > 100,
        "the counter sees set-up's allocations ({before})"
    );
    for seq in 100..500u16 {
        round(seq, traffic, &far, &sink, local, &mut to_us, &mut from_us).await;
    }
    let allocations = ALLOCATIONS.load(Relaxed) - before;
    call.stop().await;
    allocations
}

/// One test, so that the calls are measured one after the other (the counter is the process's).
#[tokio::test(flavor = "current_thread")]
async fn relaying_packets_allocates_nothing_with_an_opus_or_a_g711_sink() {
    let opus = Traffic {
        sink_audio: SinkAudio::Opus,
        far_payload: vec![0x5a; 80],
        sink_pt: 111,
        sink_payload: vec![0x5a; 80],
        at_sink: 92,
    };
    assert_eq!(
        allocations_of_a_call(&opus).await,
        0,
        "heap allocations while relaying 400 packets each way"
    );
    // Real audio both ways: a 20 ms Opus frame from the far side, 20 ms of a PCMU tone from the
    // sink, made before anything is counted.
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    let tone: Vec<i16> = (0..960)
        .map(|i| {
            ((f64::from(i) * 2.0 * std::f64::consts::PI * 440.0 / 48_000.0).sin() * 9000.0) as i16
        })
        .collect();
    let far_payload = encoder.encode_vec(&tone, 1500).unwrap();
    let sink_payload = (0..160)
        .map(|i| {
            let x = (f64::from(i) * 2.0 * std::f64::consts::PI * 1000.0 / 8000.0).sin() * 9000.0;
            audio_codec_algorithms::encode_ulaw(x as i16)
        })
        .collect();
    let g711 = Traffic {
        sink_audio: SinkAudio::G711(Law::Mu),
        far_payload,
        sink_pt: 0,
        sink_payload,
        at_sink: 12 + 160,
    };
    assert_eq!(
        allocations_of_a_call(&g711).await,
        0,
        "heap allocations while transcoding 400 packets each way"
    );
}
