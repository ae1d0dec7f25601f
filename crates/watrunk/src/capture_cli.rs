//! `watrunk capture decrypt --keys KEYLOG IN.pcap OUT.pcap`: a capture of calls made readable. The
//! UDP flows a key log names (keylog.rs) are demultiplexed per RFC 7983; their SRTP and SRTCP are
//! unprotected with the media crate's own SRTP and written back as plain RTP and RTCP, the IP and
//! UDP lengths and checksums fixed. STUN is kept as it was, and so is every packet of a flow the
//! key log does not name. DTLS is dropped: Wireshark takes a flow with a DTLS-SRTP handshake for
//! SRTP and would not show its RTP as plain (the input keeps the handshake). Packets that fail
//! authentication are dropped and counted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use etherparse::{Ipv4Slice, Ipv6Slice, UdpHeader, UdpSlice};
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use pcap_file::DataLink;
use watrunk_media::srtp::{SrtpContext, SrtpError};
use watrunk_media::{classify, is_rtcp, PacketKind};

use crate::keylog::{self, SrtpLine};

#[derive(Subcommand)]
pub enum CaptureCommand {
    /// Decrypt the SRTP/SRTCP of the calls a key log (`serve --key-log`) names in a pcap
    /// (tcpdump: Ethernet, Linux cooked SLL/SLL2 or raw IP) and write it with plain RTP/RTCP.
    Decrypt {
        /// The key log `watrunk serve --key-log` wrote.
        #[arg(long)]
        keys: PathBuf,
        /// The capture to read (pcap, not pcapng).
        input: PathBuf,
        /// Where the decrypted capture goes.
        output: PathBuf,
    },
}

pub fn run(command: CaptureCommand) -> std::process::ExitCode {
    let CaptureCommand::Decrypt {
        keys,
        input,
        output,
    } = command;
    match decrypt(&keys, &input, &output) {
        Ok(report) => {
            print!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("watrunk capture decrypt: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// One direction of a call: its key log line, its SRTP state and what became of its packets.
struct Flow {
    line: SrtpLine,
    srtp: SrtpContext,
    rtp: u64,
    rtcp: u64,
    auth_failures: u64,
    replayed: u64,
}

#[derive(Default)]
struct Totals {
    packets: u64,
    stun: u64,
    dtls: u64,
    /// UDP packets of flows the key log does not name, non-UDP and non-IP packets: copied as read.
    untouched: u64,
    dropped: u64,
}

/// Decrypts `input` into `output`; returns the report printed for the user.
pub fn decrypt(keys: &Path, input: &Path, output: &Path) -> Result<String> {
    let text = std::fs::read_to_string(keys)
        .with_context(|| format!("cannot read the key log {}", keys.display()))?;
    let lines = keylog::parse(&text).with_context(|| format!("{}", keys.display()))?;
    if lines.is_empty() {
        bail!(
            "the key log {} has no SRTP lines: was `watrunk serve --key-log` on during the calls?",
            keys.display()
        );
    }
    // Several calls may have used one 5-tuple (one media port for all calls): each packet is tried
    // against the flows of its 5-tuple, the last logged first.
    let mut flows: Vec<Flow> = Vec::new();
    for line in lines {
        let srtp = SrtpContext::new(line.profile, &line.key, &line.salt)
            .map_err(|e| anyhow::anyhow!("key log: call {}: {e}", line.call_id))?;
        flows.push(Flow {
            line,
            srtp,
            rtp: 0,
            rtcp: 0,
            auth_failures: 0,
            replayed: 0,
        });
    }
    let mut by_tuple: BTreeMap<(SocketAddr, SocketAddr), Vec<usize>> = BTreeMap::new();
    for (i, f) in flows.iter().enumerate().rev() {
        by_tuple
            .entry((f.line.src, f.line.dst))
            .or_default()
            .push(i);
    }

    let file = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let mut reader = PcapReader::new(BufReader::new(file)).with_context(|| {
        format!(
            "{} is not a pcap file (a pcapng one can be converted: editcap -F pcap IN OUT)",
            input.display()
        )
    })?;
    let header = reader.header();
    let link = header.datalink;
    if link_header(link, &[]).is_none() && !matches!(link, DataLink::ETHERNET) {
        bail!(
            "{}: link type {link:?} is not one this reads (Ethernet, Linux cooked SLL/SLL2, raw IP)",
            input.display()
        );
    }
    let out =
        File::create(output).with_context(|| format!("cannot create {}", output.display()))?;
    let mut writer = PcapWriter::with_header(BufWriter::new(out), header)
        .with_context(|| format!("cannot write {}", output.display()))?;
    let mut totals = Totals::default();
    let mut number = 0u64;
    while let Some(packet) = reader.next_packet() {
        number += 1;
        let packet =
            packet.with_context(|| format!("{}: packet {number} is cut short", input.display()))?;
        totals.packets += 1;
        let data = packet.data.as_ref();
        let rewritten = match udp_of(link, data) {
            Some(udp) => handle(&udp, data, &mut flows, &by_tuple, &mut totals),
            None => {
                totals.untouched += 1;
                Verdict::Keep
            }
        };
        let written = match rewritten {
            Verdict::Keep => writer.write_packet(&packet),
            Verdict::Drop => continue,
            Verdict::Replace(bytes) => writer.write_packet(&PcapPacket::new(
                packet.timestamp,
                bytes.len() as u32,
                &bytes,
            )),
        };
        written.with_context(|| format!("cannot write {}", output.display()))?;
    }
    drop(writer);
    Ok(report(&flows, &totals))
}

fn report(flows: &[Flow], t: &Totals) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} packets read: {} STUN kept as it was, {} DTLS left out, {} not of a logged flow copied, {} SRTP/SRTCP dropped",
        t.packets, t.stun, t.dtls, t.untouched, t.dropped
    );
    let mut failures = 0;
    for f in flows {
        let l = &f.line;
        failures += f.auth_failures;
        let _ = writeln!(
            out,
            "flow {} -> {} (call {} {}, {}): {} RTP and {} RTCP decrypted, {} auth failures, {} replayed",
            l.src,
            l.dst,
            l.call_id,
            l.direction,
            l.profile.name(),
            f.rtp,
            f.rtcp,
            f.auth_failures,
            f.replayed
        );
    }
    let _ = writeln!(out, "auth failures: {failures}");
    out
}

enum Verdict {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

/// A UDP datagram inside a captured frame, and where its parts are.
struct Udp {
    src: SocketAddr,
    dst: SocketAddr,
    /// Bytes before the IP header (the link layer's), kept as they were.
    link_len: usize,
    ip: Ip,
    payload_start: usize,
    payload_end: usize,
}

enum Ip {
    V4(etherparse::Ipv4Header),
    V6(etherparse::Ipv6Header),
}

/// The length of the link layer's header and the EtherType it names, or None for a link type this
/// does not read (raw IP: 0 and the version's EtherType).
fn link_header(link: DataLink, data: &[u8]) -> Option<(usize, u16)> {
    let be16 = |at: usize| {
        data.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let by_version = |at: usize| match data.get(at).map(|b| b >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    };
    match link {
        DataLink::ETHERNET => {
            let mut at = 12;
            let mut kind = be16(at)?;
            while kind == 0x8100 || kind == 0x88a8 {
                at += 4;
                kind = be16(at)?;
            }
            Some((at + 2, kind))
        }
        DataLink::LINUX_SLL => Some((16, be16(14).unwrap_or(0))),
        DataLink::LINUX_SLL2 => Some((20, be16(0).unwrap_or(0))),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Some((0, by_version(0))),
        // BSD loopback: a 4-byte address family in the capturing host's order.
        DataLink::NULL | DataLink::LOOP => Some((4, by_version(4))),
        _ => None,
    }
}

fn udp_of(link: DataLink, data: &[u8]) -> Option<Udp> {
    let (link_len, ethertype) = link_header(link, data)?;
    let ip_bytes = data.get(link_len..)?;
    let (ip, src_ip, dst_ip, ip_payload, header_len): (Ip, _, _, &[u8], usize) = match ethertype {
        0x0800 => {
            let v4 = Ipv4Slice::from_slice(ip_bytes).ok()?;
            let payload = v4.payload();
            if payload.fragmented || payload.ip_number != etherparse::IpNumber::UDP {
                return None;
            }
            // Extension headers (IPsec) would be lost in the rewrite: such packets stay as they are.
            if !v4.extensions().is_empty() {
                return None;
            }
            let h = v4.header();
            (
                Ip::V4(h.to_header()),
                std::net::IpAddr::V4(h.source_addr()),
                std::net::IpAddr::V4(h.destination_addr()),
                payload.payload,
                h.slice().len(),
            )
        }
        0x86dd => {
            let v6 = Ipv6Slice::from_slice(ip_bytes).ok()?;
            let payload = v6.payload();
            if payload.fragmented
                || payload.ip_number != etherparse::IpNumber::UDP
                || !v6.extensions().is_empty()
            {
                return None;
            }
            let h = v6.header();
            (
                Ip::V6(h.to_header()),
                std::net::IpAddr::V6(h.source_addr()),
                std::net::IpAddr::V6(h.destination_addr()),
                payload.payload,
                h.slice().len(),
            )
        }
        _ => return None,
    };
    let udp = UdpSlice::from_slice(ip_payload).ok()?;
    let payload_start = link_len + header_len + 8;
    Some(Udp {
        src: SocketAddr::new(src_ip, udp.source_port()),
        dst: SocketAddr::new(dst_ip, udp.destination_port()),
        link_len,
        ip,
        payload_start,
        payload_end: payload_start + udp.payload().len(),
    })
}

fn handle(
    udp: &Udp,
    frame: &[u8],
    flows: &mut [Flow],
    by_tuple: &BTreeMap<(SocketAddr, SocketAddr), Vec<usize>>,
    totals: &mut Totals,
) -> Verdict {
    let Some(candidates) = by_tuple.get(&(canonical(udp.src), canonical(udp.dst))) else {
        totals.untouched += 1;
        return Verdict::Keep;
    };
    let payload = &frame[udp.payload_start..udp.payload_end];
    match classify(payload) {
        PacketKind::Stun => {
            totals.stun += 1;
            return Verdict::Keep;
        }
        PacketKind::Dtls => {
            totals.dtls += 1;
            return Verdict::Drop;
        }
        PacketKind::Other => {
            totals.untouched += 1;
            return Verdict::Keep;
        }
        PacketKind::Rtp => {}
    }
    let rtcp = is_rtcp(payload);
    let mut replayed = None;
    for &i in candidates {
        let mut buf = payload.to_vec();
        let f = &mut flows[i];
        let result = if rtcp {
            f.srtp.unprotect_rtcp(&mut buf)
        } else {
            f.srtp.unprotect_rtp(&mut buf)
        };
        match result {
            Ok(len) => {
                if rtcp {
                    f.rtcp += 1;
                } else {
                    f.rtp += 1;
                }
                buf.truncate(len);
                return Verdict::Replace(rebuild(udp, frame, &buf));
            }
            Err(SrtpError::Replay) => replayed = Some(i),
            Err(_) => {}
        }
    }
    // A duplicate (the same packet captured twice) is dropped like the receiver drops it.
    match replayed {
        Some(i) => flows[i].replayed += 1,
        None => flows[candidates[0]].auth_failures += 1,
    }
    totals.dropped += 1;
    Verdict::Drop
}

/// An IPv4-mapped IPv6 address as the IPv4 one (a dual-stack socket's view).
fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => a,
        },
        _ => a,
    }
}

/// The frame with `payload` in place of the UDP payload: link header as it was, IP and UDP
/// lengths and checksums computed anew.
fn rebuild(udp: &Udp, frame: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len());
    out.extend_from_slice(&frame[..udp.link_len]);
    let (sp, dp) = (udp.src.port(), udp.dst.port());
    match &udp.ip {
        Ip::V4(h) => {
            let mut h = h.clone();
            // Both fit: the payload only got shorter.
            let _ = h.set_payload_len(8 + payload.len());
            h.header_checksum = h.calc_header_checksum();
            let u = UdpHeader::with_ipv4_checksum(sp, dp, &h, payload).unwrap_or_else(|_| {
                UdpHeader::without_ipv4_checksum(sp, dp, payload.len()).unwrap_or_default()
            });
            let _ = h.write(&mut out);
            out.extend_from_slice(&u.to_bytes());
        }
        Ip::V6(h) => {
            let mut h = h.clone();
            let _ = h.set_payload_length(8 + payload.len());
            let u = UdpHeader::with_ipv6_checksum(sp, dp, &h, payload).unwrap_or_default();
            let _ = h.write(&mut out);
            out.extend_from_slice(&u.to_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use pcap_file::pcap::PcapHeader;
    use watrunk_media::srtp::SrtpProfile;

    const KEY: [u8; 30] = [7; 30];

    /// An SRTP packet of `seq` with payload `[seq as u8; 20]`.
    fn srtp(ctx: &mut SrtpContext, seq: u16) -> Vec<u8> {
        let mut buf = vec![0x80, 111];
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&[0, 0, 3, 0xc0, 0xde, 0xad, 0xbe, 0xef]);
        buf.extend_from_slice(&[seq as u8; 20]);
        buf.resize(buf.len() + 32, 0);
        let len = ctx.protect_rtp(&mut buf, 32).unwrap();
        buf.truncate(len);
        buf
    }

    /// A capture of `link` with: 3 SRTP packets of the logged flow (the second tampered), a STUN
    /// and a DTLS packet on it, and one packet of another flow; decrypted, then read back.
    fn round_trip(link: DataLink, v6: bool) -> (String, Vec<Vec<u8>>) {
        let dir =
            std::env::temp_dir().join(format!("watrunk-capture-{}-{:?}", std::process::id(), link));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = if v6 {
            ("[2001:db8::1]:4000", "[2001:db8::2]:5000")
        } else {
            ("10.0.0.1:4000", "10.0.0.2:5000")
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;
        std::fs::write(
            dir.join("keys"),
            format!(
                "CLIENT_RANDOM 00 00\nSRTP c1 out {src} {dst} AES_CM_128_HMAC_SHA1_80 {}\n",
                b64.encode(KEY)
            ),
        )
        .unwrap();
        let frame = |payload: &[u8], sport: u16| {
            let builder = if v6 {
                PacketBuilder::ipv6(
                    [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                    64,
                )
            } else {
                PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            };
            let mut out = match link {
                DataLink::LINUX_SLL2 => {
                    let mut h = vec![0u8; 20];
                    h[..2].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
                    h
                }
                DataLink::ETHERNET => {
                    let mut h = vec![0u8; 12];
                    h.extend_from_slice(&[0x81, 0x00, 0, 5]); // one VLAN tag
                    h.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
                    h
                }
                _ => Vec::new(),
            };
            builder.udp(sport, 5000).write(&mut out, payload).unwrap();
            out
        };
        let mut ctx =
            SrtpContext::new(SrtpProfile::AesCm128HmacSha1_80, &KEY[..16], &KEY[16..]).unwrap();
        let mut tampered = srtp(&mut ctx, 2);
        tampered[14] ^= 1;
        let frames = [
            frame(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42], 4000), // STUN: kept
            frame(&[22, 0xfe, 0xfd, 0, 0], 4000),               // DTLS: left out
            frame(&srtp(&mut ctx, 1), 4000),
            frame(&tampered, 4000), // auth failure: dropped
            frame(&srtp(&mut ctx, 3), 4000),
            frame(&srtp(&mut ctx, 4), 4001), // another flow: copied
        ];
        let header = PcapHeader {
            datalink: link,
            ..PcapHeader::default()
        };
        let mut w =
            PcapWriter::with_header(File::create(dir.join("in.pcap")).unwrap(), header).unwrap();
        for (i, f) in frames.iter().enumerate() {
            w.write_packet(&PcapPacket::new(
                std::time::Duration::from_millis(i as u64),
                f.len() as u32,
                f,
            ))
            .unwrap();
        }
        drop(w);
        let report = decrypt(
            &dir.join("keys"),
            &dir.join("in.pcap"),
            &dir.join("out.pcap"),
        )
        .unwrap();
        let mut r = PcapReader::new(File::open(dir.join("out.pcap")).unwrap()).unwrap();
        assert_eq!(r.header().datalink, link);
        let mut out = Vec::new();
        while let Some(p) = r.next_packet() {
            out.push(p.unwrap().data.into_owned());
        }
        let _ = std::fs::remove_dir_all(&dir);
        (report, out)
    }

    fn check(link: DataLink, v6: bool) {
        let (report, packets) = round_trip(link, v6);
        assert!(
            report.contains(": 2 RTP and 0 RTCP decrypted, 1 auth failures, 0 replayed"),
            "{report}"
        );
        assert!(report.contains("6 packets read: 1 STUN kept as it was, 1 DTLS left out, 1 not of a logged flow copied, 1 SRTP/SRTCP dropped"), "{report}");
        assert_eq!(packets.len(), 4, "STUN, RTP 1, RTP 3, the other flow's");
        for (packet, seq) in packets[1..3].iter().zip([1u8, 3]) {
            let udp = udp_of(link, packet).expect("still IP and UDP");
            let payload = &packet[udp.payload_start..udp.payload_end];
            assert_eq!(payload.len(), 32, "the RTP without its tag");
            assert_eq!(&payload[12..], &[seq; 20]);
            assert_eq!(udp.payload_end, packet.len(), "IP length fixed");
            // The UDP checksum (and IPv4's header checksum) verify.
            let ip = &packet[udp.link_len..];
            let udp_bytes = &packet[udp.payload_start - 8..];
            let header = UdpSlice::from_slice(udp_bytes).unwrap().to_header();
            let expected = match &udp.ip {
                Ip::V4(h) => {
                    assert_eq!(h.header_checksum, h.calc_header_checksum());
                    assert_eq!(usize::from(h.total_len), ip.len());
                    header.calc_checksum_ipv4(h, payload).unwrap()
                }
                Ip::V6(h) => {
                    assert_eq!(usize::from(h.payload_length), ip.len() - 40);
                    header.calc_checksum_ipv6(h, payload).unwrap()
                }
            };
            assert_eq!(header.checksum, expected);
            assert_eq!(usize::from(header.length), 8 + 32);
        }
    }

    #[test]
    fn linux_cooked_v2_ipv4() {
        check(DataLink::LINUX_SLL2, false);
    }

    #[test]
    fn raw_ipv6() {
        check(DataLink::RAW, true);
    }

    #[test]
    fn ethernet_with_a_vlan_tag() {
        check(DataLink::ETHERNET, false);
    }

    #[test]
    fn a_key_log_without_srtp_lines_says_so() {
        let dir =
            std::env::temp_dir().join(format!("watrunk-capture-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keys"), "CLIENT_RANDOM 00 00\n").unwrap();
        let e = decrypt(
            &dir.join("keys"),
            &dir.join("in.pcap"),
            &dir.join("out.pcap"),
        )
        .unwrap_err()
        .to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.contains("has no SRTP lines"), "{e}");
    }
}
