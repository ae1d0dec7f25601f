//! Our in-place SRTP against libsrtp's full-packet vectors (RFC 3711 keys, AEAD_AES_128_GCM) and,
//! byte for byte, against webrtc-srtp on generated packet sequences (wrap-around, CSRCs, extensions).

use proptest::prelude::*;
use watrunk_media::srtp::{SrtpContext, SrtpError, SrtpProfile};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/srtp/srtp-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn libsrtp_vector(id: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let v = vectors();
    let v = v["libsrtp_full_packet"]["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("vector {id}"))
        .clone();
    let field = |k: &str| hex(v[k].as_str().unwrap());
    (
        field("master_key"),
        field("master_salt"),
        field("plaintext_packet"),
        field("expected_protected_packet"),
    )
}

fn check_rtp_vector(id: &str, profile: SrtpProfile) {
    let (key, salt, plain, expected) = libsrtp_vector(id);
    let mut out = SrtpContext::new(profile, &key, &salt).unwrap();
    let mut buf = [0u8; 256];
    buf[..plain.len()].copy_from_slice(&plain);
    let n = out.protect_rtp(&mut buf, plain.len()).unwrap();
    assert_eq!(hex_of(&buf[..n]), hex_of(&expected), "{id}: protect");

    let mut inb = SrtpContext::new(profile, &key, &salt).unwrap();
    let mut packet = expected.clone();
    let n = inb.unprotect_rtp(&mut packet).unwrap();
    assert_eq!(&packet[..n], &plain[..], "{id}: unprotect");
    let mut again = expected.clone();
    assert_eq!(
        inb.unprotect_rtp(&mut again),
        Err(SrtpError::Replay),
        "{id}: replay"
    );
    let mut tampered = expected.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let mut fresh = SrtpContext::new(profile, &key, &salt).unwrap();
    assert_eq!(
        fresh.unprotect_rtp(&mut tampered),
        Err(SrtpError::Auth),
        "{id}: bad tag"
    );
    // The forged packet left no state behind: the genuine one still passes.
    let mut genuine = expected.clone();
    assert!(fresh.unprotect_rtp(&mut genuine).is_ok());
}

fn check_rtcp_vector(id: &str, profile: SrtpProfile) {
    let (key, salt, plain, expected) = libsrtp_vector(id);
    // libsrtp's vectors use SRTCP index 1, the first index a sender uses.
    let mut out = SrtpContext::new(profile, &key, &salt).unwrap();
    let mut buf = [0u8; 256];
    buf[..plain.len()].copy_from_slice(&plain);
    let n = out.protect_rtcp(&mut buf, plain.len()).unwrap();
    assert_eq!(hex_of(&buf[..n]), hex_of(&expected), "{id}: protect");

    let mut inb = SrtpContext::new(profile, &key, &salt).unwrap();
    let mut packet = expected.clone();
    let n = inb.unprotect_rtcp(&mut packet).unwrap();
    assert_eq!(&packet[..n], &plain[..], "{id}: unprotect");
    let mut again = expected.clone();
    assert_eq!(inb.unprotect_rtcp(&mut again), Err(SrtpError::Replay));
    let mut tampered = expected.clone();
    tampered[9] ^= 0x40;
    let mut fresh = SrtpContext::new(profile, &key, &salt).unwrap();
    assert_eq!(fresh.unprotect_rtcp(&mut tampered), Err(SrtpError::Auth));
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn libsrtp_aes_cm_128_hmac_sha1_80() {
    check_rtp_vector(
        "libsrtp-aes_cm_128_hmac_sha1_80-rtp",
        SrtpProfile::AesCm128HmacSha1_80,
    );
    check_rtcp_vector(
        "libsrtp-aes_cm_128_hmac_sha1_80-rtcp",
        SrtpProfile::AesCm128HmacSha1_80,
    );
}

#[test]
fn libsrtp_aead_aes_128_gcm() {
    check_rtp_vector("libsrtp-aead_aes_128_gcm-rtp", SrtpProfile::AeadAes128Gcm);
    check_rtcp_vector("libsrtp-aead_aes_128_gcm-rtcp", SrtpProfile::AeadAes128Gcm);
}

#[test]
fn truncated_and_garbage_packets_are_refused() {
    let mut ctx = SrtpContext::new(SrtpProfile::AesCm128HmacSha1_80, &[7; 16], &[9; 14]).unwrap();
    for len in 0..40 {
        let mut junk = vec![0x80u8; len];
        assert!(ctx.unprotect_rtp(&mut junk).is_err(), "{len} bytes of junk");
        let mut junk = vec![0x81u8; len];
        assert!(
            ctx.unprotect_rtcp(&mut junk).is_err(),
            "{len} bytes of junk"
        );
    }
    // An extension header claiming more words than the packet holds.
    let mut p = hex("900f1234decafbadcafebabebede00ff00000000000000000000000000");
    assert_eq!(ctx.unprotect_rtp(&mut p), Err(SrtpError::Malformed));
    assert_eq!(
        SrtpContext::new(SrtpProfile::AeadAes128Gcm, &[0; 16], &[0; 14]).err(),
        Some(SrtpError::KeyLength)
    );
}

fn theirs(profile: SrtpProfile) -> ProtectionProfile {
    match profile {
        SrtpProfile::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
    }
}

fn rtp_packet(seq: u16, ts: u32, ssrc: u32, csrcs: u8, ext_words: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80 | csrcs | if ext_words > 0 { 0x10 } else { 0 }, 111];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for i in 0..csrcs {
        p.extend_from_slice(&u32::from(i).to_be_bytes());
    }
    if ext_words > 0 {
        p.extend_from_slice(&[0xbe, 0xde, 0, ext_words]);
        // One one-byte element (id 1, one byte), then padding.
        p.extend_from_slice(&[0x10, 0xaa, 0, 0]);
        p.resize(p.len() + 4 * usize::from(ext_words - 1), 0);
    }
    p.extend_from_slice(payload);
    p
}

fn profiles() -> impl Strategy<Value = SrtpProfile> {
    prop_oneof![
        Just(SrtpProfile::AesCm128HmacSha1_80),
        Just(SrtpProfile::AesCm128HmacSha1_32),
        Just(SrtpProfile::AeadAes128Gcm),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A stream crossing the 16-bit sequence wrap, protected by us and by webrtc-srtp, is the same
    /// bytes on the wire, and each side unprotects the other's packets.
    #[test]
    fn same_bytes_as_webrtc_srtp(
        profile in profiles(),
        key in prop::array::uniform16(any::<u8>()),
        salt in prop::collection::vec(any::<u8>(), 14),
        start in 65_500u16..=65_535,
        ssrc in any::<u32>(),
        csrcs in 0u8..3,
        ext_words in 0u8..3,
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 1..60),
    ) {
        let salt = &salt[..profile.salt_len()];
        let mut ours = SrtpContext::new(profile, &key, salt).unwrap();
        let mut ours_in = SrtpContext::new(profile, &key, salt).unwrap();
        let mut reference = Context::new(&key, salt, theirs(profile), None, None).unwrap();
        let mut reference_in = Context::new(&key, salt, theirs(profile), None, None).unwrap();
        let mut buf = [0u8; 512];
        for (i, payload) in payloads.iter().enumerate() {
            let seq = start.wrapping_add(i as u16);
            let plain = rtp_packet(seq, 960 * i as u32, ssrc, csrcs, ext_words, payload);
            buf[..plain.len()].copy_from_slice(&plain);
            let n = ours.protect_rtp(&mut buf, plain.len()).unwrap();
            let expected = reference.encrypt_rtp(&plain).unwrap();
            prop_assert_eq!(&buf[..n], &expected[..], "RTP packet {}", i);
            let back = reference_in.decrypt_rtp(&buf[..n]).unwrap();
            prop_assert_eq!(&back[..], &plain[..]);
            let mut theirs_packet = expected.to_vec();
            let m = ours_in.unprotect_rtp(&mut theirs_packet).unwrap();
            prop_assert_eq!(&theirs_packet[..m], &plain[..]);

            let mut rtcp = vec![0x80, 200, 0, 6];
            rtcp.extend_from_slice(&ssrc.to_be_bytes());
            rtcp.extend_from_slice(&payload[..payload.len().min(20)]);
            rtcp.resize(28, 0);
            buf[..rtcp.len()].copy_from_slice(&rtcp);
            let n = ours.protect_rtcp(&mut buf, rtcp.len()).unwrap();
            let expected = reference.encrypt_rtcp(&rtcp).unwrap();
            prop_assert_eq!(&buf[..n], &expected[..], "RTCP packet {}", i);
            let mut theirs_packet = expected.to_vec();
            let m = ours_in.unprotect_rtcp(&mut theirs_packet).unwrap();
            prop_assert_eq!(&theirs_packet[..m], &rtcp[..]);
        }
    }

    /// Any flipped bit in a protected packet is refused, never forwarded.
    #[test]
    fn any_flipped_bit_is_refused(
        profile in profiles(),
        payload in prop::collection::vec(any::<u8>(), 1..100),
        bit in any::<prop::sample::Index>(),
    ) {
        let salt = vec![3u8; profile.salt_len()];
        let mut out = SrtpContext::new(profile, &[5; 16], &salt).unwrap();
        let plain = rtp_packet(1, 2, 3, 0, 0, &payload);
        let mut buf = [0u8; 256];
        buf[..plain.len()].copy_from_slice(&plain);
        let n = out.protect_rtp(&mut buf, plain.len()).unwrap();
        let bit = bit.index(n * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        let mut inb = SrtpContext::new(profile, &[5; 16], &salt).unwrap();
        prop_assert!(inb.unprotect_rtp(&mut buf[..n]).is_err());
    }
}
