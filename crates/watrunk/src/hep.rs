//! HEPv3 export (`watrunk serve --hep HOST:PORT`): a copy of every SIP message sent and received,
//! after TLS, to a Homer-compatible collector over UDP. This module owns the encoder and the
//! sender; the server's SIP trace hook (`trace_in`/`trace_out`) calls it. Sending never blocks the
//! SIP path: the socket is non-blocking, and a datagram that cannot go now is dropped and counted.
//!
//! No maintained Rust crate encodes HEP, so the encoder is written here, after the HEPv3 spec
//! (sipcapture's "HEP3 Network Protocol Specification", summed up in docs/debugging-media.md).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Chunk types of the generic vendor (0x0000) this encoder writes.
const IP_FAMILY: u16 = 0x0001;
const IP_PROTOCOL: u16 = 0x0002;
const IPV4_SRC: u16 = 0x0003;
const IPV4_DST: u16 = 0x0004;
const IPV6_SRC: u16 = 0x0005;
const IPV6_DST: u16 = 0x0006;
const SRC_PORT: u16 = 0x0007;
const DST_PORT: u16 = 0x0008;
const TIME_SEC: u16 = 0x0009;
const TIME_USEC: u16 = 0x000a;
const PROTOCOL_TYPE: u16 = 0x000b;
const CAPTURE_ID: u16 = 0x000c;
const PAYLOAD: u16 = 0x000f;
const CORRELATION_ID: u16 = 0x0011;
/// Protocol type 1: SIP.
const SIP: u8 = 1;

/// One captured SIP message as HEP describes it.
pub struct Captured<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// UDP (true) or a stream (TCP, TLS).
    pub udp: bool,
    pub time: SystemTime,
    pub agent_id: u32,
    pub call_id: Option<&'a str>,
    pub payload: &'a [u8],
}

fn chunk(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((6 + value.len()) as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// The HEPv3 packet of `c`, or None if it would not fit a 16-bit length.
pub fn encode(c: &Captured<'_>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(c.payload.len() + 160);
    out.extend_from_slice(b"HEP3\0\0");
    // Both addresses in one family: an IPv4 peer of a socket on [::] is the IPv4-mapped one.
    let (family, src, dst) = match (c.src.ip(), c.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (2u8, s.octets().to_vec(), d.octets().to_vec()),
        (s, d) => (10u8, v6(s).to_vec(), v6(d).to_vec()),
    };
    chunk(&mut out, IP_FAMILY, &[family]);
    chunk(&mut out, IP_PROTOCOL, &[if c.udp { 17 } else { 6 }]);
    let (src_kind, dst_kind) = if family == 2 {
        (IPV4_SRC, IPV4_DST)
    } else {
        (IPV6_SRC, IPV6_DST)
    };
    chunk(&mut out, src_kind, &src);
    chunk(&mut out, dst_kind, &dst);
    chunk(&mut out, SRC_PORT, &c.src.port().to_be_bytes());
    chunk(&mut out, DST_PORT, &c.dst.port().to_be_bytes());
    let since = c.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    chunk(&mut out, TIME_SEC, &(since.as_secs() as u32).to_be_bytes());
    chunk(&mut out, TIME_USEC, &since.subsec_micros().to_be_bytes());
    chunk(&mut out, PROTOCOL_TYPE, &[SIP]);
    chunk(&mut out, CAPTURE_ID, &c.agent_id.to_be_bytes());
    if let Some(id) = c.call_id {
        chunk(&mut out, CORRELATION_ID, id.as_bytes());
    }
    chunk(&mut out, PAYLOAD, c.payload);
    let len = u16::try_from(out.len()).ok()?;
    out[4..6].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The Call-ID of a SIP message (full or compact header name), for the correlation chunk.
pub fn call_id_of(message: &[u8]) -> Option<&str> {
    let head_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    let head = std::str::from_utf8(&message[..head_end]).ok()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i"))
            .then(|| value.trim())
    })
}

/// The collector and its socket. Sends from the SIP core's task, never waiting.
pub struct Hep {
    socket: UdpSocket,
    agent_id: u32,
    collector: SocketAddr,
    dropped: AtomicU64,
    /// The TLS listener's address as bound (the configured one may have port 0).
    tls: Option<SocketAddr>,
}

impl Hep {
    pub fn new(collector: SocketAddr, agent_id: u32, tls: Option<SocketAddr>) -> Result<Hep> {
        let bind: SocketAddr = if collector.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let socket = UdpSocket::bind(bind).context("--hep: cannot bind a UDP socket")?;
        socket
            .connect(collector)
            .with_context(|| format!("--hep: cannot reach {collector}"))?;
        socket.set_nonblocking(true)?;
        Ok(Hep {
            socket,
            agent_id,
            collector,
            dropped: AtomicU64::new(0),
            tls,
        })
    }

    /// Our end of a message's hop: the listener of its transport (an unspecified address or
    /// another family than the peer's: the unspecified address of the peer's family).
    pub fn local_end(
        &self,
        cfg: &crate::config::ServeConfig,
        transport: watrunk_sip::transaction::Transport,
        peer: SocketAddr,
    ) -> SocketAddr {
        use watrunk_sip::transaction::Transport;
        let listener = match transport {
            Transport::Udp => cfg.udp,
            Transport::Tcp => cfg.tcp,
            Transport::Tls => self.tls.or(cfg.tls),
        };
        let port = listener.map_or(0, |l| l.port());
        let ip = match listener.map(|l| l.ip()) {
            Some(ip) if !ip.is_unspecified() && ip.is_ipv4() == peer.is_ipv4() => ip,
            _ if peer.is_ipv4() => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            _ => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        SocketAddr::new(ip, port)
    }

    /// Sends one message's copy now or drops it (counted, the first drop and every 1000th logged).
    pub fn send(&self, src: SocketAddr, dst: SocketAddr, udp: bool, payload: &[u8]) {
        let packet = encode(&Captured {
            src,
            dst,
            udp,
            time: SystemTime::now(),
            agent_id: self.agent_id,
            call_id: call_id_of(payload),
            payload,
        });
        let sent = match &packet {
            Some(p) => self.socket.send(p).map_err(|e| e.to_string()),
            None => Err("message too large for HEP".into()),
        };
        if let Err(e) = sent {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.checked_rem(1000) == Some(0) {
                tracing::warn!(
                    "--hep {}: {n} SIP message copies dropped so far (last: {e})",
                    self.collector
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_byte_layout_is_hepv3s() {
        let packet = encode(&Captured {
            src: "10.0.0.1:5061".parse().unwrap(),
            dst: "192.168.1.2:40000".parse().unwrap(),
            udp: false,
            time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            agent_id: 2001,
            call_id: Some("c1"),
            payload: b"BYE",
        })
        .unwrap();
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &b"HEP3"[..], &[0, 110],
            &[0, 0, 0, 1, 0, 7, 2],                 // IP family: IPv4
            &[0, 0, 0, 2, 0, 7, 6],                 // IP protocol: TCP
            &[0, 0, 0, 3, 0, 10, 10, 0, 0, 1],      // IPv4 source
            &[0, 0, 0, 4, 0, 10, 192, 168, 1, 2],   // IPv4 destination
            &[0, 0, 0, 7, 0, 8, 0x13, 0xc5],        // source port 5061
            &[0, 0, 0, 8, 0, 8, 0x9c, 0x40],        // destination port 40000
            &[0, 0, 0, 9, 0, 10, 0x65, 0x53, 0xf1, 0x00], // 1700000000 s
            &[0, 0, 0, 10, 0, 10, 0, 1, 0xe2, 0x40],      // 123456 µs
            &[0, 0, 0, 11, 0, 7, 1],                // protocol type: SIP
            &[0, 0, 0, 12, 0, 10, 0, 0, 0x07, 0xd1],// capture agent 2001
            &[0, 0, 0, 0x11, 0, 8, b'c', b'1'],     // correlation id
            &[0, 0, 0, 0x0f, 0, 9, b'B', b'Y', b'E'],// payload
        ]
        .concat();
        assert_eq!(packet, expected);
        assert_eq!(packet.len(), 110);
    }

    #[test]
    fn ipv6_and_mixed_families() {
        let packet = encode(&Captured {
            src: "[2001:db8::1]:5060".parse().unwrap(),
            dst: "127.0.0.1:5060".parse().unwrap(),
            udp: true,
            time: UNIX_EPOCH,
            agent_id: 1,
            call_id: None,
            payload: b"x",
        })
        .unwrap();
        assert_eq!(&packet[6..13], &[0, 0, 0, 1, 0, 7, 10]);
        assert_eq!(&packet[13..20], &[0, 0, 0, 2, 0, 7, 17]);
        assert_eq!(&packet[20..26], &[0, 0, 0, 5, 0, 22]);
        // The IPv4 destination as an IPv4-mapped IPv6 address.
        assert_eq!(&packet[48..64], &v6("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_call_id_is_found_by_either_name() {
        let m = b"INVITE sip:a SIP/2.0\r\nVia: x\r\nCall-ID:  abc@h \r\n\r\nCall-ID: body";
        assert_eq!(call_id_of(m), Some("abc@h"));
        assert_eq!(call_id_of(b"SIP/2.0 200 OK\r\ni: z9\r\n\r\n"), Some("z9"));
        assert_eq!(call_id_of(b"SIP/2.0 200 OK\r\n\r\n"), None);
    }
}
