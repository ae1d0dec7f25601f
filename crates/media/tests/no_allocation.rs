//! The per-packet path allocates nothing: a call relays packets both ways (SRTP from the far side to
//! the sink, RTP from the sink to the far side) while a counting allocator watches the whole process.
//! After a warm-up, 400 more packets each way must cost zero heap allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::UdpSocket;
use watrunk_media::srtp::{SrtpContext, SrtpProfile};
use watrunk_media::{IceRole, Identity, MediaConfig, MediaSocket, Prepared};

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

/// One round: a packet each way, both received. Uses fixed buffers only.
async fn round(
    seq: u16,
    far: &UdpSocket,
    sink: &UdpSocket,
    local: SocketAddr,
    to_us: &mut SrtpContext,
    from_us: &mut SrtpContext,
) {
    let mut packet = [0u8; 12 + 80 + 16];
    packet[0] = 0x80;
    packet[1] = 111;
    packet[2..4].copy_from_slice(&seq.to_be_bytes());
    packet[4..8].copy_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    packet[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    sink.send_to(&packet[..92], local).await.unwrap();
    let n = to_us.protect_rtp(&mut packet, 92).unwrap();
    far.send(&packet[..n]).await.unwrap();

    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(2), sink.recv(&mut buf))
        .await
        .expect("the far side's packet reached the sink")
        .unwrap();
    assert_eq!(
        u16::from_be_bytes([buf[2], buf[3]]),
        seq,
        "in order, untouched"
    );
    assert_eq!(n, 92);
    // Our own silence frames may come first, before the sink's audio takes over.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(2), far.recv(&mut buf))
            .await
            .expect("the sink's packet reached the far side")
            .unwrap();
        let n = from_us.unprotect_rtp(&mut buf[..n]).unwrap();
        if n == 92 {
            break;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn relaying_packets_allocates_nothing() {
    let loopback = "127.0.0.1".parse().unwrap();
    let socket = MediaSocket::bind(SocketAddr::new(loopback, 0))
        .await
        .unwrap();
    let far = UdpSocket::bind(SocketAddr::new(loopback, 0)).await.unwrap();
    far.connect(socket.local_addr()).await.unwrap();
    let sink = UdpSocket::bind(SocketAddr::new(loopback, 0)).await.unwrap();
    let cfg = MediaConfig::new(
        loopback,
        SocketAddr::new(loopback, 0),
        sink.local_addr().unwrap(),
        1,
    );
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
        round(seq, &far, &sink, local, &mut to_us, &mut from_us).await;
    }
    while call.events.try_recv().is_ok() {}
    let before = ALLOCATIONS.load(Relaxed);
    assert!(
        before > 100,
        "the counter sees set-up's allocations ({before})"
    );
    for seq in 100..500u16 {
        round(seq, &far, &sink, local, &mut to_us, &mut from_us).await;
    }
    let allocations = ALLOCATIONS.load(Relaxed) - before;
    call.stop().await;
    assert_eq!(
        allocations, 0,
        "heap allocations while relaying 400 packets each way"
    );
}
