//! RFC 7983 demultiplexing of one UDP 5-tuple by the first octet: STUN, DTLS, RTP/RTCP, or other.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Stun,
    Dtls,
    /// RTP or RTCP; `is_rtcp` tells them apart.
    Rtp,
    Other,
}

pub fn classify(packet: &[u8]) -> PacketKind {
    match packet.first() {
        Some(0..=3) => PacketKind::Stun,
        Some(20..=63) => PacketKind::Dtls,
        Some(128..=191) => PacketKind::Rtp,
        _ => PacketKind::Other,
    }
}

/// RTCP packet types 192-223 (RFC 5761 §4) sit where RTP has the marker bit and payload type.
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && (192..=223).contains(&packet[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_octet_ranges() {
        assert_eq!(classify(&[0x00, 0x01]), PacketKind::Stun);
        assert_eq!(classify(&[22, 0xfe, 0xfd]), PacketKind::Dtls);
        assert_eq!(classify(&[0x80, 111]), PacketKind::Rtp);
        assert_eq!(classify(&[0xbf]), PacketKind::Rtp);
        assert_eq!(classify(&[64]), PacketKind::Other);
        assert_eq!(classify(&[]), PacketKind::Other);
        assert!(is_rtcp(&[0x80, 200]));
        assert!(!is_rtcp(&[0x80, 111]));
        assert!(
            !is_rtcp(&[0x80, 0x80 | 111]),
            "marker bit set on PT 111 is RTP"
        );
    }
}
