//! The negative table: Meta's sample offer with one rule broken at a time. Each case must fail with
//! its own rule (and only that one in `check`), a 488 and a Warning naming it.

mod common;

use common::*;
use watrunk_sdp::{self as sdp, Profile, SdpError, Security, Side};

fn meta() -> String {
    text("whatsapp/meta-offer-user-initiated-01.sdp").replace('\n', "\r\n")
}

fn meta_sdes() -> String {
    sip_body("whatsapp/meta-invite-user-initiated-sdes-01.sip")
}

type Mutation = fn() -> String;

const FP_LINE: &str = "a=fingerprint:sha-256 1B:B6:6B:40:A5:0B:8C:75:0D:8C:CB:90:2F:99:74:1E:26:45:AE:AF:45:C1:51:60:8F:73:C9:2D:10:6D:8A:88";

fn cases() -> Vec<(&'static str, Mutation, &'static str)> {
    vec![
        ("garbage", || "this is not SDP".into(), "syntax"),
        (
            "no audio",
            || meta().replace("m=audio", "m=video"),
            "no-audio",
        ),
        (
            "two audio m-lines",
            || {
                let m = meta();
                let at = m.find("m=audio").unwrap();
                format!("{m}{}", &m[at..])
            },
            "several-audio",
        ),
        (
            "rejected",
            || meta().replace("m=audio 40012", "m=audio 0"),
            "rejected",
        ),
        (
            "plain RTP",
            || meta().replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"),
            "transport",
        ),
        (
            "no opus",
            || meta().replace("opus/48000/2", "opus/48000/1"),
            "no-opus",
        ),
        (
            "opus at 16 kHz",
            || meta().replace("opus/48000/2", "OPUS/16000/2"),
            "no-opus",
        ),
        (
            "ptime 40",
            || insert_after(&meta(), "a=rtpmap:126", "a=ptime:40"),
            "ptime",
        ),
        (
            "maxptime 10",
            || insert_after(&meta(), "a=rtpmap:126", "a=maxptime:10"),
            "maxptime",
        ),
        (
            "two SSRCs",
            || insert_after(&meta(), "a=ssrc:4208138518 label", "a=ssrc:1 cname:other"),
            "several-ssrcs",
        ),
        (
            "no rtcp-mux",
            || remove_lines(&meta(), "a=rtcp-mux"),
            "no-rtcp-mux",
        ),
        (
            "no ICE in DTLS mode",
            || remove_lines(&remove_lines(&meta(), "a=ice-ufrag"), "a=ice-pwd"),
            "no-ice-credentials",
        ),
        (
            "ice-pwd with a colon",
            || replace_line(&meta(), "a=ice-pwd", "a=ice-pwd:abc:def"),
            "bad-ice-credential",
        ),
        (
            "ice-lite without candidates",
            || {
                remove_lines(&meta(), "a=candidate")
                    .replace("c=IN IP4 31.13.65.60", "c=IN IP4 0.0.0.0")
            },
            "no-candidates",
        ),
        (
            "no fingerprint",
            || remove_lines(&meta(), "a=fingerprint"),
            "no-fingerprint",
        ),
        (
            "sha-1 fingerprint only",
            || {
                replace_line(
                    &meta(),
                    "a=fingerprint",
                    "a=fingerprint:sha-1 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB",
                )
            },
            "fingerprint-algorithm",
        ),
        (
            "truncated fingerprint",
            || replace_line(&meta(), "a=fingerprint", "a=fingerprint:sha-256 1B:B6:6B"),
            "bad-fingerprint",
        ),
        (
            "setup holdconn",
            || replace_line(&meta(), "a=setup", "a=setup:holdconn"),
            "setup",
        ),
    ]
}

fn sdes_cases() -> Vec<(&'static str, Mutation, &'static str)> {
    vec![
        (
            "no crypto",
            || remove_lines(&meta_sdes(), "a=crypto"),
            "no-crypto",
        ),
        (
            "AEAD only",
            || {
                replace_line(
                    &meta_sdes(),
                    "a=crypto",
                    "a=crypto:1 AEAD_AES_256_GCM inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVzWVNfX19zZW1jdGw=",
                )
            },
            "crypto-suite",
        ),
        (
            "short key",
            || {
                replace_line(
                    &meta_sdes(),
                    "a=crypto",
                    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA",
                )
            },
            "bad-crypto",
        ),
        (
            "no address",
            || meta_sdes().replace("c=IN IP4 157.240.19.130", "c=IN IP4 0.0.0.0"),
            "no-connection",
        ),
    ]
}

#[test]
fn each_rule_broken_alone_gives_its_own_error() {
    let mut seen = std::collections::BTreeSet::new();
    for (name, mutate, rule) in cases() {
        let text = mutate();
        let err = match sdp::parse(text.as_bytes()) {
            Err(e) => e,
            Ok(offer) => sdp::answer(&offer, &whatsapp())
                .map(|_| ())
                .expect_err(name),
        };
        assert_eq!(err.rule(), rule, "{name}: {err}");
        assert_eq!(err.status(), 488, "{name}");
        let warning = err.warning("sip.example.com");
        assert!(
            warning.starts_with("399 sip.example.com \"") && warning.ends_with('"'),
            "{warning}"
        );
        assert_eq!(warning.matches('"').count(), 2, "{warning}");
        seen.insert(rule);

        // check names the same rule and nothing else (judged as Meta's offer).
        if let Ok(s) = sdp::parse(text.as_bytes()) {
            let rules: Vec<&str> = sdp::check(&s, Side::Meta, None)
                .iter()
                .map(SdpError::rule)
                .collect();
            assert_eq!(rules, [rule], "{name}");
        }
    }
    for (name, mutate, rule) in sdes_cases() {
        let offer = sdp::parse(mutate().as_bytes()).unwrap();
        let err = sdp::answer(&offer, &local(Profile::WhatsApp, Security::Sdes)).unwrap_err();
        assert_eq!(err.rule(), rule, "{name}: {err}");
        seen.insert(rule);
    }
    assert!(seen.len() >= 20, "distinct rules exercised: {seen:?}");
}

#[test]
fn the_unmodified_bases_are_accepted() {
    let offer = sdp::parse(meta().as_bytes()).unwrap();
    assert!(sdp::answer(&offer, &whatsapp()).is_ok());
    assert_eq!(sdp::check(&offer, Side::Meta, None), vec![]);
    let offer = sdp::parse(meta_sdes().as_bytes()).unwrap();
    assert!(sdp::answer(&offer, &local(Profile::WhatsApp, Security::Sdes)).is_ok());
}

#[test]
fn business_side_rules_of_check() {
    let ours = || {
        let offer = sdp::parse(meta().as_bytes()).unwrap();
        sdp::print(&sdp::answer(&offer, &whatsapp()).unwrap().0)
    };
    let table: Vec<(&str, String, SdpError)> = vec![
        (
            "ice-lite",
            insert_after(&ours(), "t=0 0", "a=ice-lite"),
            SdpError::IceLite,
        ),
        (
            "trickle",
            insert_after(&ours(), "a=ice-pwd", "a=ice-options:trickle"),
            SdpError::Trickle,
        ),
        (
            "two fingerprints (sha-256 and sha-384)",
            insert_after(
                &ours(),
                "a=fingerprint",
                "a=fingerprint:sha-384 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
            ),
            SdpError::SeveralFingerprints(2),
        ),
        (
            "lower-case hex",
            replace_line(&ours(), "a=fingerprint", &FP_LINE.to_ascii_lowercase()),
            SdpError::FingerprintCase,
        ),
        (
            "answer with setup:passive",
            replace_line(&ours(), "a=setup", "a=setup:passive"),
            SdpError::Setup(
                "passive".into(),
                "the business answers active: it is the DTLS client",
            ),
        ),
        (
            "telephone-event at 48 kHz only",
            ours().replace("telephone-event/8000", "telephone-event/48000"),
            SdpError::DtmfClock(48000),
        ),
    ];
    for (name, text, want) in table {
        let s = sdp::parse(text.as_bytes()).unwrap();
        assert_eq!(
            sdp::check(&s, Side::Business, Some(sdp::Kind::Answer)),
            vec![want],
            "{name}"
        );
    }
}

#[test]
fn answers_to_our_offer_that_break_rules() {
    let state = sdp::offer(&whatsapp()).unwrap();
    let meta_answer = text("whatsapp/meta-answer-business-initiated-01.sdp");
    let table = [
        (
            "actpass in an answer",
            replace_line(&meta_answer, "a=setup", "a=setup:actpass"),
            "setup",
        ),
        (
            "no fingerprint",
            remove_lines(&meta_answer, "a=fingerprint"),
            "no-fingerprint",
        ),
        (
            "SDES answer to a DTLS offer",
            meta_answer.replace("UDP/TLS/RTP/SAVPF", "RTP/SAVP"),
            "transport",
        ),
        (
            "no opus",
            meta_answer.replace("opus/48000/2", "opus/8000/1"),
            "no-opus",
        ),
    ];
    for (name, text, rule) in table {
        let s = sdp::parse(text.as_bytes()).unwrap();
        assert_eq!(
            sdp::accept_answer(&state, &s).unwrap_err().rule(),
            rule,
            "{name}"
        );
    }

    let sdes = sdp::offer(&local(Profile::WhatsApp, Security::Sdes)).unwrap();
    let answer = sip_body("whatsapp/meta-200ok-business-initiated-sdes-01.sip");
    let wrong_tag = replace_line(
        &answer,
        "a=crypto",
        &SAMPLE_CRYPTO.replace("crypto:1", "crypto:9"),
    );
    let s = sdp::parse(wrong_tag.as_bytes()).unwrap();
    assert_eq!(
        sdp::accept_answer(&sdes, &s).unwrap_err(),
        SdpError::CryptoNotOffered(9)
    );
    let two = insert_after(
        &answer,
        "a=crypto",
        &SAMPLE_CRYPTO.replace("crypto:1", "crypto:2"),
    );
    let s = sdp::parse(two.as_bytes()).unwrap();
    assert_eq!(
        sdp::accept_answer(&sdes, &s).unwrap_err(),
        SdpError::SeveralCryptoInAnswer(2)
    );
}

#[test]
fn our_configuration_errors_are_ours() {
    let mut local = whatsapp();
    local.fingerprint = None;
    let offer = sdp::parse(meta().as_bytes()).unwrap();
    let err = sdp::answer(&offer, &local).unwrap_err();
    assert!(err.is_local());
    assert_eq!(err.status(), 500);
    assert!(sdp::offer(&local).unwrap_err().is_local());
    let mut pbx = common::local(Profile::Pbx, Security::Dtls);
    pbx.fingerprint = None;
    assert!(sdp::offer(&pbx).unwrap_err().is_local());
}

#[test]
fn oversized_sdp_is_refused_before_parsing() {
    let huge = format!("v=0\r\n{}", "a=x\r\n".repeat(20_000));
    assert_eq!(
        sdp::parse(huge.as_bytes()).unwrap_err(),
        SdpError::TooLarge {
            limit: sdp::MAX_SDP_SIZE
        }
    );
}

/// RFC 3264 §6: the answer keeps the offer's profile. An offer of UDP/TLS/RTP/SAVP (no feedback)
/// was answered UDP/TLS/RTP/SAVPF; an SDES offer of RTP/SAVPF was answered RTP/SAVP.
#[test]
fn the_answer_keeps_the_offers_profile() {
    for (offer, profile, security, want) in [
        (
            meta(),
            "UDP/TLS/RTP/SAVPF",
            Security::Dtls,
            "UDP/TLS/RTP/SAVPF",
        ),
        (
            meta().replace("UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP"),
            "UDP/TLS/RTP/SAVP",
            Security::Dtls,
            "UDP/TLS/RTP/SAVP",
        ),
        (meta_sdes(), "RTP/SAVP", Security::Sdes, "RTP/SAVP"),
        (
            meta_sdes().replace("RTP/SAVP ", "RTP/SAVPF "),
            "RTP/SAVPF",
            Security::Sdes,
            "RTP/SAVPF",
        ),
    ] {
        assert!(offer.contains(&format!(" {profile} ")), "{offer}");
        let offer = sdp::parse(offer.as_bytes()).unwrap();
        let (answer, _) = sdp::answer(&offer, &local(Profile::WhatsApp, security)).unwrap();
        let text = sdp::print(&answer);
        let m = text.lines().find(|l| l.starts_with("m=audio")).unwrap();
        assert_eq!(m.split_whitespace().nth(2), Some(want), "{profile}: {m}");
    }
}

/// What Meta's own SDPs carry and a business answer may leave out is advice: our answer needs
/// none; each line taken out of it is named (and fails `sdp check --strict`).
#[test]
fn advice_names_each_line_meta_has_and_an_answer_lacks() {
    let offer = sdp::parse(meta().as_bytes()).unwrap();
    let ours = sdp::print(&sdp::answer(&offer, &whatsapp()).unwrap().0);
    let advice = |text: &str| -> Vec<&'static str> {
        sdp::advise(&sdp::parse(text.as_bytes()).unwrap(), Side::Business)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    };
    assert_eq!(advice(&ours), Vec::<&str>::new(), "{ours}");
    let without = |prefix: &str| {
        ours.lines()
            .filter(|l| !l.starts_with(prefix))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>()
    };
    for (prefix, name) in [
        ("a=ptime", "ptime"),
        ("a=maxptime", "maxptime"),
        ("a=ssrc", "ssrc"),
        ("a=candidate", "candidates"),
    ] {
        assert_eq!(advice(&without(prefix)), [name], "without {prefix}");
    }
    let no_dtmf = without("a=rtpmap:126").replace(" 111 126", " 111");
    assert_eq!(advice(&no_dtmf), ["telephone-event"], "{no_dtmf}");
    // Meta's own SDPs are not advised on.
    assert_eq!(sdp::advise(&offer, Side::Meta), Vec::<(&str, &str)>::new());
}
