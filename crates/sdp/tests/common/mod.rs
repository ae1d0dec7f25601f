//! Shared helpers for the SDP tests: test data, a pinned local side, and line-level queries on SDP
//! text so assertions read what goes on the wire, not our own model of it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use watrunk_sdp::{Fingerprint, LocalMedia, Profile, Security};

pub fn data(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn text(rel: &str) -> String {
    String::from_utf8(data(rel)).unwrap()
}

pub const LOCAL_FP: [u8; 32] = [
    0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4, 0xb5, 0xc6, 0xd7, 0xe8, 0xf9,
    0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4, 0xb5, 0xc6, 0xd7, 0xe8, 0xf9,
];

pub fn local(profile: Profile, security: Security) -> LocalMedia {
    let addrs: Vec<SocketAddr> = vec![
        "198.18.0.1:40000".parse().unwrap(),
        "[2001:db8::1]:40000".parse().unwrap(),
    ];
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    let mut l = LocalMedia::generate(profile, security, &mut rng)
        .with_candidates(addrs)
        .with_fingerprint(Fingerprint::sha256(LOCAL_FP.to_vec()));
    l.ice_ufrag = "wAtR".into();
    l.ice_pwd = "k9/+eWq3mZ1xT0pLr8sVn2bY".into();
    l.ssrc = 0x1234_5678;
    l.cname = "watrunkcname".into();
    l.sdes_key = [7u8; 30];
    l
}

pub fn whatsapp() -> LocalMedia {
    local(Profile::WhatsApp, Security::Dtls)
}

/// The lines of an SDP (CRLF or LF).
pub fn lines(sdp: &str) -> Vec<&str> {
    sdp.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Every line starting with `prefix`.
pub fn with<'a>(sdp: &'a str, prefix: &str) -> Vec<&'a str> {
    lines(sdp)
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// The payload type an SDP maps to `encoding` (e.g. "opus/48000/2") in its first audio m-line.
pub fn pt_of(sdp: &str, encoding: &str) -> Option<u8> {
    with(sdp, "a=rtpmap:").iter().find_map(|l| {
        let rest = l.strip_prefix("a=rtpmap:")?;
        let (pt, enc) = rest.split_once(' ')?;
        enc.trim()
            .eq_ignore_ascii_case(encoding)
            .then(|| pt.parse().ok())?
    })
}

/// The distinct SSRC ids in a=ssrc lines.
pub fn ssrc_ids(sdp: &str) -> std::collections::BTreeSet<u32> {
    with(sdp, "a=ssrc:")
        .iter()
        .filter_map(|l| l["a=ssrc:".len()..].split(' ').next()?.parse().ok())
        .collect()
}

/// Replaces the first line starting with `prefix` (whole line) by `by` (nothing when empty).
pub fn replace_line(sdp: &str, prefix: &str, by: &str) -> String {
    let mut done = false;
    let mut out = String::new();
    for l in lines(sdp) {
        if !done && l.starts_with(prefix) {
            done = true;
            if !by.is_empty() {
                out.push_str(by);
                out.push_str("\r\n");
            }
        } else {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    assert!(done, "no line starts with {prefix:?}");
    out
}

/// Removes every line starting with `prefix`.
pub fn remove_lines(sdp: &str, prefix: &str) -> String {
    let mut out = String::new();
    for l in lines(sdp).into_iter().filter(|l| !l.starts_with(prefix)) {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out
}

/// Inserts `line` after the first line starting with `after`.
pub fn insert_after(sdp: &str, after: &str, line: &str) -> String {
    let mut done = false;
    let mut out = String::new();
    for l in lines(sdp) {
        out.push_str(l);
        out.push_str("\r\n");
        if !done && l.starts_with(after) {
            done = true;
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    assert!(done, "no line starts with {after:?}");
    out
}

/// A real a=crypto line (AES_CM_128_HMAC_SHA1_80) to stand in for the masked ones in Meta's samples:
/// the key is the example of RFC 4568 §4 (30 octets).
pub const SAMPLE_CRYPTO: &str =
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

/// The SDP body of a SIP sample: from the `v=0` line on, documentation indentation removed, masked
/// crypto replaced by a real line.
pub fn sip_body(rel: &str) -> String {
    let t = text(rel);
    let start = t.find("v=0").expect("the sample has an SDP body");
    let indent = t[..start].rsplit('\n').next().unwrap_or("").len();
    let mut out = String::new();
    for l in t[start - indent..].lines() {
        let l = if l.len() >= indent {
            &l[indent..]
        } else {
            l.trim_start()
        };
        let l = if l.starts_with("a=crypto:*") {
            SAMPLE_CRYPTO
        } else {
            l
        };
        if !l.trim().is_empty() {
            out.push_str(l.trim_end());
            out.push_str("\r\n");
        }
    }
    out
}
