//! Digest authentication against every published vector in tests/data/digest and against the
//! challenge and credential shapes in Meta's SIP samples (tests/data/whatsapp).

mod common;

use serde_json::Value;
use sha2::{Digest, Sha512};
use watrunk_sip::digest::{
    answer, choose_challenge, digest_uri_matches, ha1, ha2, request_digest, Algorithm,
    Authorization, Challenge, Credentials, Qop, QopInput,
};
use watrunk_sip::{Message, Request, Response};

const FIPS_SHA512_256_ID: &str = "rfc7616-3.9.2-fips-sha512-256";
/// H("Jäsøn Doe:api@example.org") with FIPS SHA-512/256, from the vector file's notes.
const FIPS_USERHASH: &str = "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b";

fn vectors() -> Vec<Value> {
    let raw = common::read("digest/digest-vectors.json");
    let doc: Value = serde_json::from_slice(&raw).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A header line from the vector file, with or without its `Name:` prefix.
fn header_value(line: &str) -> &str {
    let line = line.trim();
    if line.to_ascii_lowercase().starts_with("digest") {
        line
    } else {
        line.split_once(':').unwrap().1.trim()
    }
}

/// The first 256 bits of plain SHA-512, hex: what RFC 7616 §3.9.2 printed as "SHA-512-256".
fn truncated_sha512(parts: &[&str]) -> String {
    let digest = Sha512::digest(parts.join(":").as_bytes());
    digest[..32].iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default, Debug)]
struct Tally {
    positive: usize,
    known_bad: usize,
    truncated_sha512: usize,
    sha256: usize,
    fips_sha512_256: usize,
    auth_int: usize,
    no_qop: usize,
    wrong_credentials_header: usize,
}

#[test]
fn digest_every_vector() {
    let all = vectors();
    let fips_response = all
        .iter()
        .find(|v| text(v, "id") == Some(FIPS_SHA512_256_ID))
        .and_then(|v| text(&v["expected"], "response"))
        .unwrap()
        .to_string();
    let mut tally = Tally::default();

    for v in &all {
        let id = text(v, "id").unwrap();
        let input = &v["inputs"];
        let get = |k: &str| text(input, k);
        let hash_name = text(v, "algorithm_hash").unwrap();
        let truncated = hash_name.contains("truncated");
        let algorithm = if truncated {
            Algorithm::Sha512_256
        } else {
            hash_name
                .parse::<Algorithm>()
                .unwrap_or_else(|e| panic!("{id}: {e}"))
        };
        let known_bad = v["independently_recomputed"]["matches_expected"] == Value::Bool(false);
        let expected = text(&v["expected"], "response").unwrap();

        let (username, realm, password) = (
            get("username").unwrap(),
            get("realm").unwrap(),
            get("password").unwrap(),
        );
        let (method, uri, nonce) = (
            get("method").unwrap(),
            get("uri").unwrap(),
            get("nonce").unwrap(),
        );
        let body = get("entity_body").unwrap_or("").as_bytes();
        let qop: Option<Qop> = get("qop").map(|q| q.parse().unwrap());
        let cnonce = get("cnonce");
        let qop_input = qop.map(|qop| QopInput {
            qop,
            nc: get("nc").unwrap(),
            cnonce: cnonce.unwrap(),
        });

        let our_ha1 = ha1(
            algorithm,
            username,
            realm,
            password,
            nonce,
            cnonce.unwrap_or(""),
        );
        let our_ha2 = ha2(algorithm, qop, method, uri, body);
        let ours = request_digest(algorithm, &our_ha1, nonce, qop_input, &our_ha2);

        if truncated {
            assert_ne!(
                ours, expected,
                "{id}: FIPS SHA-512/256 must differ from the RFC's printed value"
            );
            assert_eq!(ours, fips_response, "{id}");
            let t_ha1 = truncated_sha512(&[username, realm, password]);
            let t_ha2 = truncated_sha512(&[method, uri]);
            let q = qop_input.unwrap();
            let t_resp = truncated_sha512(&[&t_ha1, nonce, q.nc, q.cnonce, q.qop.as_str(), &t_ha2]);
            assert_eq!(
                t_resp, expected,
                "{id}: the printed value is truncated SHA-512"
            );
            assert_eq!(
                t_ha1,
                text(&v["independently_recomputed"], "ha1").unwrap(),
                "{id}"
            );
            let printed_userhash = text(&v["userhash"], "printed").unwrap();
            let userhash_input = format!("{username}:{realm}");
            assert_eq!(
                truncated_sha512(&[&userhash_input]),
                printed_userhash,
                "{id}"
            );
            assert_eq!(
                algorithm.hash_hex(userhash_input.as_bytes()),
                FIPS_USERHASH,
                "{id}"
            );
            tally.truncated_sha512 += 1;
        } else if known_bad {
            assert_ne!(ours, expected, "{id}: known-bad vector must not match");
            assert_eq!(
                ours,
                text(&v["independently_recomputed"], "response").unwrap(),
                "{id}"
            );
            tally.known_bad += 1;
        } else {
            assert_eq!(ours, expected, "{id}: response");
            if let Some(h) = text(&v["expected"], "ha1") {
                assert_eq!(our_ha1, h, "{id}: expected HA1");
            }
            let recomputed = &v["independently_recomputed"];
            assert_eq!(Some(our_ha1.as_str()), text(recomputed, "ha1"), "{id}: HA1");
            assert_eq!(Some(our_ha2.as_str()), text(recomputed, "ha2"), "{id}: HA2");
            tally.positive += 1;
            match algorithm {
                Algorithm::Sha256 => tally.sha256 += 1,
                Algorithm::Sha512_256 => tally.fips_sha512_256 += 1,
                _ => {}
            }
            match qop {
                Some(Qop::AuthInt) => tally.auth_int += 1,
                None => tally.no_qop += 1,
                Some(Qop::Auth) => {}
            }
        }

        // The client path gives the same answer whenever the nc is a well-formed 8 hex digits.
        let nc_text = get("nc").unwrap_or("00000001");
        if nc_text.len() == 8 {
            let challenge = Challenge {
                realm: realm.to_string(),
                nonce: nonce.to_string(),
                opaque: get("opaque").map(str::to_string),
                algorithm,
                qop: qop.into_iter().collect(),
                stale: false,
                domain: None,
                userhash: false,
            };
            let nc = u32::from_str_radix(nc_text, 16).unwrap();
            let creds = Credentials::new(username, password);
            let a = answer(
                &challenge,
                &creds,
                method,
                uri,
                body,
                nc,
                cnonce.unwrap_or("unused"),
            );
            assert_eq!(a.response, ours, "{id}: answer()");
            assert_eq!(a.qop, qop, "{id}");
            assert_eq!(a.opaque.as_deref(), get("opaque"), "{id}");
            let printed = a.to_string();
            if qop.is_some() {
                assert!(
                    printed.contains(&format!("nc={nc_text}")),
                    "{id}: {printed}"
                );
            } else {
                assert!(
                    !printed.contains("nc=") && !printed.contains("cnonce="),
                    "{id}: {printed}"
                );
            }
            assert_eq!(
                Authorization::parse(&printed).as_ref(),
                Ok(&a),
                "{id}: round trip"
            );
        }

        if let Some(line) = text(v, "challenge_header") {
            let c = Challenge::parse(header_value(line)).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!((c.realm.as_str(), c.nonce.as_str()), (realm, nonce), "{id}");
            assert_eq!(c.algorithm, algorithm, "{id}");
            if let Some(q) = qop {
                assert!(c.qop.contains(&q), "{id}: {:?}", c.qop);
            }
            assert_eq!(
                Challenge::parse(&c.to_string()).as_ref(),
                Ok(&c),
                "{id}: round trip"
            );
        }

        if let Some(line) = text(v, "authorization_header") {
            let a =
                Authorization::parse(header_value(line)).unwrap_or_else(|e| panic!("{id}: {e}"));
            if a.userhash {
                assert_eq!(a.username, text(&v["userhash"], "printed").unwrap(), "{id}");
            } else {
                assert_eq!(a.username, username, "{id}");
            }
            assert_eq!(
                (a.realm.as_str(), a.nonce.as_str(), a.uri.as_str()),
                (realm, nonce, uri),
                "{id}"
            );
            assert_eq!(a.algorithm, algorithm, "{id}");
            assert_eq!(a.qop, qop, "{id}");
            assert_eq!(
                a.nc,
                get("nc").map(|n| u32::from_str_radix(n, 16).unwrap()),
                "{id}"
            );
            assert_eq!(a.cnonce.as_deref(), cnonce, "{id}");
            if let Some(opaque) = get("opaque") {
                assert_eq!(a.opaque.as_deref(), Some(opaque), "{id}");
            }
            let wrong_credentials = id.contains("WRONG-RESPONSE");
            assert_eq!(
                a.response == ours,
                !wrong_credentials && !truncated,
                "{id}: header response"
            );
            if wrong_credentials {
                tally.wrong_credentials_header += 1;
            }
            assert_eq!(
                Authorization::parse(&a.to_string()).as_ref(),
                Ok(&a),
                "{id}: round trip"
            );
        }
    }

    assert_eq!(
        tally.positive + tally.known_bad + tally.truncated_sha512,
        all.len(),
        "{tally:?}"
    );
    assert_eq!(
        (tally.known_bad, tally.truncated_sha512),
        (1, 1),
        "{tally:?}"
    );
    assert_eq!((tally.sha256, tally.fips_sha512_256), (1, 1), "{tally:?}");
    assert_eq!(
        (tally.auth_int, tally.wrong_credentials_header),
        (1, 1),
        "{tally:?}"
    );
    assert!(tally.no_qop >= 5, "{tally:?}");
}

fn sample_text(name: &str) -> String {
    String::from_utf8(common::read(&format!("whatsapp/{name}"))).unwrap()
}

fn sample(name: &str) -> Message {
    let wire = common::normalize_meta_sample(&sample_text(name));
    Message::parse_datagram(&wire).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn sample_request(name: &str) -> (Request, String) {
    let raw = sample_text(name);
    let request_uri = raw
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    match sample(name) {
        Message::Request(r) => (r, request_uri),
        Message::Response(_) => panic!("{name} is a response"),
    }
}

fn sample_response(name: &str) -> Response {
    match sample(name) {
        Message::Response(r) => r,
        Message::Request(_) => panic!("{name} is a request"),
    }
}

#[test]
fn digest_meta_dual_challenge_prefers_sha256() {
    let raw = sample_text("meta-407-dual-challenge-headers-fragment-01.sip");
    let challenges: Vec<Challenge> = raw
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap();
            assert!(name.eq_ignore_ascii_case("Proxy-Authenticate"));
            Challenge::parse(value).unwrap()
        })
        .collect();
    assert_eq!(challenges.len(), 2);
    assert_eq!(challenges[0].algorithm, Algorithm::Sha256);
    assert_eq!(challenges[1].algorithm, Algorithm::Md5);
    for c in &challenges {
        assert_eq!(c.realm, "wa.meta.vc");
        assert_eq!(c.qop, vec![Qop::Auth]);
        assert_eq!(Challenge::parse(&c.to_string()).as_ref(), Ok(c));
    }
    let chosen = choose_challenge(&challenges).unwrap();
    assert_eq!(chosen.nonce, "47cdac2830f7539b");
    assert_eq!(chosen.opaque.as_deref(), Some("7a2b178b2328d18b"));

    let reversed: Vec<Challenge> = challenges.iter().rev().cloned().collect();
    assert_eq!(
        choose_challenge(&reversed).unwrap().algorithm,
        Algorithm::Sha256
    );

    let r_uri = "sip:+12195550714@wa.meta.vc;transport=tls";
    let creds = Credentials::new("17125550259", "password-from-settings");
    let auth = answer(chosen, &creds, "INVITE", r_uri, b"", 1, "0123456789abcdef");
    let printed = auth.to_string();
    for part in [
        "username=\"17125550259\"",
        "realm=\"wa.meta.vc\"",
        "nonce=\"47cdac2830f7539b\"",
        "uri=\"sip:+12195550714@wa.meta.vc;transport=tls\"",
        "algorithm=SHA-256",
        "cnonce=\"0123456789abcdef\"",
        "opaque=\"7a2b178b2328d18b\"",
        "qop=auth",
        "nc=00000001",
    ] {
        assert!(printed.contains(part), "{part} missing from {printed}");
    }
    assert_eq!(auth.response.len(), 64);
}

#[test]
fn digest_meta_407_and_authenticated_retry_business_initiated() {
    let resp = sample_response("meta-407-business-initiated-01.sip");
    assert_eq!(resp.status, 407);
    let challenges = Challenge::parse_supported(resp.headers.get_all("Proxy-Authenticate"));
    assert_eq!(challenges.len(), 1);
    let chosen = choose_challenge(&challenges).unwrap();
    assert_eq!(chosen.algorithm, Algorithm::Md5);
    assert_eq!(chosen.nonce, "419ac2415577f8e1");

    let (retry, r_uri) = sample_request("meta-doc-invite-business-initiated-auth-01.sip");
    let doc = Authorization::parse(retry.headers.get("Proxy-Authorization").unwrap()).unwrap();
    assert_eq!(doc.uri, r_uri);

    let creds = Credentials::new("17125550259", "unknown");
    let ours = answer(
        chosen,
        &creds,
        "INVITE",
        &r_uri,
        b"",
        1,
        doc.cnonce.as_deref().unwrap(),
    );
    let strip = |a: &Authorization| Authorization {
        response: String::new(),
        ..a.clone()
    };
    assert_eq!(
        strip(&ours),
        strip(&doc),
        "same parameters as Meta's documented retry"
    );
}

#[test]
fn digest_meta_retry_user_initiated() {
    let resp = sample_response("partner-407-user-initiated-01.sip");
    let challenge = Challenge::parse(resp.headers.get("Proxy-Authenticate").unwrap()).unwrap();
    assert_eq!(challenge.realm, "sip.twilio.com");
    assert_eq!(
        challenge.algorithm,
        Algorithm::Md5,
        "no algorithm parameter means MD5"
    );
    assert_eq!(challenge.qop, vec![Qop::Auth]);

    let (invite, r_uri) = sample_request("meta-invite-user-initiated-digest-02.sip");
    assert_eq!(
        r_uri,
        "sip:+12145551869@meta-voip.example.com;transport=tls"
    );
    let auth = Authorization::parse(invite.headers.get("Proxy-Authorization").unwrap()).unwrap();
    assert_eq!(auth.username, "12145551869");
    assert_eq!(auth.realm, challenge.realm);
    assert_eq!(auth.nonce, challenge.nonce);
    assert_eq!(auth.opaque, challenge.opaque);
    assert_eq!((auth.qop, auth.nc), (Some(Qop::Auth), Some(1)));
    assert_eq!(auth.algorithm, Algorithm::Md5);
    assert_eq!(
        auth.cnonce.as_deref(),
        Some("TY2SszvYCKitUCBlVLpGiPKMQfmBbj")
    );
    assert_eq!(auth.response, "b28ed6b8bf1418e3c6eca05ef8c7a0b1");
    assert_eq!(
        auth.uri, "sip:+12145551869@meta-voip.example.com",
        "R-URI without ;transport=tls"
    );
    assert!(digest_uri_matches(&r_uri, &auth.uri));
    assert!(!digest_uri_matches(
        "sip:+12145551870@meta-voip.example.com;transport=tls",
        &auth.uri
    ));
    let printed = auth.to_string();
    assert!(
        printed.contains("nc=00000001") && printed.contains("qop=auth,"),
        "{printed}"
    );
    assert_eq!(Authorization::parse(&printed), Ok(auth));
}
