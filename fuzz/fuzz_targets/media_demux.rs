//! One UDP datagram on the shared media socket: demultiplexed (RFC 7983), then what each kind meets on
//! the per-packet path. STUN: the USERNAME routing and the ICE-lite check answer. RTP/RTCP: SRTP and
//! SRTCP unprotect with a fixed test key (all three profiles), the payload-type map, the restamper
//! and the jitter buffer; and the datagram taken as plain RTP/RTCP, protected with the same key and
//! handed to a call's inbound path (so its RTP statistics and RTCP reader see fuzzed content).
//! Checks: protect then unprotect gives back the packet, exactly once (the replay is refused).
#![no_main]

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use watrunk_media::fuzzing::{answer_check, stun_username_ufrag, Inbound};
use watrunk_media::jitter::JitterBuffer;
use watrunk_media::restamp::{PayloadMap, Restamper};
use watrunk_media::srtp::{SrtpContext, SrtpError, SrtpProfile};
use watrunk_media::{classify, is_rtcp, PacketKind, SinkPayloads};

/// RFC 3711 B.2's key and salt (tests/data/srtp).
const KEY: [u8; 16] = [
    0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c,
];
const SALT: [u8; 14] = [
    0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd,
];
const PROFILES: [SrtpProfile; 3] = [
    SrtpProfile::AesCm128HmacSha1_80,
    SrtpProfile::AesCm128HmacSha1_32,
    SrtpProfile::AeadAes128Gcm,
];

fn context(profile: SrtpProfile) -> SrtpContext {
    SrtpContext::new(profile, &KEY, &SALT[..profile.salt_len()]).expect("test key")
}

struct Sockets {
    runtime: tokio::runtime::Runtime,
    app: Arc<tokio::net::UdpSocket>,
    /// Never read: once its buffer is full the inbound path counts its packets as dropped.
    sink: StdUdpSocket,
}

fn sockets() -> &'static Sockets {
    static SOCKETS: OnceLock<Sockets> = OnceLock::new();
    SOCKETS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let std_app = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
        std_app.set_nonblocking(true).expect("nonblocking");
        let app = {
            let _guard = runtime.enter();
            Arc::new(tokio::net::UdpSocket::from_std(std_app).expect("tokio socket"))
        };
        let sink = StdUdpSocket::bind("127.0.0.1:0").expect("bind sink");
        Sockets { runtime, app, sink }
    })
}

fn stun(packet: &[u8]) {
    let from: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let ufrag = stun_username_ufrag(packet);
    if let Some(ufrag) = &ufrag {
        assert!(!ufrag.contains(':'));
    }
    if let Some((answer, _)) = answer_check(packet, from, "ours:theirs", "0123456789abcdefghijkl") {
        assert_eq!(classify(&answer), PacketKind::Stun);
    }
}

fn rtp_path(packet: &[u8]) {
    let now = Instant::now();
    // Arbitrary octets as SRTP/SRTCP from the far side: only the authentic get through.
    for profile in PROFILES {
        let mut ctx = context(profile);
        let mut buf = packet.to_vec();
        let result = if is_rtcp(packet) {
            ctx.unprotect_rtcp(&mut buf)
        } else {
            ctx.unprotect_rtp(&mut buf)
        };
        if let Ok(n) = result {
            assert!(n <= packet.len());
        }
    }
    let map = PayloadMap {
        remote_audio: 96,
        remote_dtmf: Some(101),
        sink: SinkPayloads::default(),
    };
    let mut buf = packet.to_vec();
    map.to_local(&mut buf);
    let mut buf = packet.to_vec();
    if map.to_remote(&mut buf) {
        assert_eq!(buf.len(), packet.len());
    }
    let mut restamper = Restamper::new(0x1234_5678, 1, 160);
    let mut buf = packet.to_vec();
    if restamper.restamp(&mut buf, now) {
        assert_eq!(&buf[8..12], &0x1234_5678u32.to_be_bytes());
    }
    let mut jitter = JitterBuffer::new();
    jitter.push(now, packet, |out, _| assert!(out.len() >= 12));
}

/// The datagram as plain RTP or RTCP: protected, then unprotected (once), then through a call's
/// inbound path.
fn round_trip(plain: &[u8], profile: SrtpProfile) {
    let rtcp = is_rtcp(plain);
    let mut out = context(profile);
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + 32, 0);
    let protected = if rtcp {
        out.protect_rtcp(&mut buf, plain.len())
    } else {
        out.protect_rtp(&mut buf, plain.len())
    };
    let Ok(len) = protected else {
        return;
    };
    buf.truncate(len);
    let wire = buf.clone();

    let mut inbound = context(profile);
    let n = if rtcp {
        inbound.unprotect_rtcp(&mut buf)
    } else {
        inbound.unprotect_rtp(&mut buf)
    }
    .unwrap_or_else(|e| panic!("our own {profile:?} packet was refused: {e}"));
    assert_eq!(&buf[..n], plain, "unprotect did not give back the packet");
    let mut replay = wire.clone();
    let again = if rtcp {
        inbound.unprotect_rtcp(&mut replay)
    } else {
        inbound.unprotect_rtp(&mut replay)
    };
    assert_eq!(again, Err(SrtpError::Replay), "a replay was accepted");

    if classify(&wire) == PacketKind::Rtp {
        let s = sockets();
        let _guard = s.runtime.enter();
        let sink = s.sink.local_addr().expect("sink address");
        let mut route = Inbound::new(context(profile), s.app.clone(), sink, 0x0102_0304);
        let mut packet = wire.clone();
        route.handle(&mut packet);
        let mut packet = wire;
        route.handle(&mut packet);
        let (accepted, rejected) = route.counts();
        if !rtcp {
            assert_eq!(
                (accepted, rejected),
                (1, 1),
                "inbound path: one packet, one replay"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match classify(data) {
        PacketKind::Stun => stun(data),
        PacketKind::Rtp => rtp_path(data),
        PacketKind::Dtls | PacketKind::Other => {}
    }
    // Whatever the first octet, STUN parsing must hold (the slow path tries it on what it routes).
    let _ = stun_username_ufrag(data);
    if data.len() >= 2 {
        let profile = PROFILES[usize::from(data[data.len() - 1]) % PROFILES.len()];
        round_trip(data, profile);
    }
});
