//! `check`: every WhatsApp-profile rule an SDP breaks, for users debugging their stacks (`watrunk sdp
//! check`) and for our own answers in tests. By default the SDP is judged as one a business sends to
//! Meta (§6.5-§6.7: exactly one uppercase sha-256 fingerprint, no ice-lite, no trickle, setup:active
//! in an answer); `Side::Meta` judges it as Meta's own (ICE-lite with candidates).

use sdp_types::Session;

use crate::error::SdpError;
use crate::inspect;
use crate::rules::{self, Mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// An SDP the business side sends to Meta.
    Business,
    /// An SDP Meta sends (its relay is ICE-lite).
    Meta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Offer,
    Answer,
}

/// Every rule `sdp` breaks; empty when it meets the profile. `kind: None` infers offer or answer
/// from `a=setup` (actpass: offer) and the number of a=crypto lines (several: offer).
pub fn check(sdp: &Session, side: Side, kind: Option<Kind>) -> Vec<SdpError> {
    let facts = match inspect::audio(sdp) {
        Ok(f) => f,
        Err(e) => return vec![e],
    };
    let mut out = rules::whatsapp_stream(&facts);
    out.extend(facts.extra_media.iter().cloned().map(SdpError::ExtraMedia));
    if let Some(rate) = facts.dtmf_wrong_clock() {
        out.push(SdpError::DtmfClock(rate));
    }
    let kind = kind.unwrap_or(match facts.setup.as_deref() {
        Some("actpass") => Kind::Offer,
        _ if facts.crypto.len() > 1 => Kind::Offer,
        _ => Kind::Answer,
    });
    if side == Side::Business {
        if facts.ice_lite {
            out.push(SdpError::IceLite);
        }
        if facts.trickle {
            out.push(SdpError::Trickle);
        }
    }
    match rules::whatsapp_mode(&facts) {
        Ok(Mode::Dtls) => {
            if let Err(e) = rules::remote_ice(&facts, true) {
                out.push(e);
            }
            out.extend(fingerprint_rules(&facts));
            out.extend(setup_rule(facts.setup.as_deref(), side, kind));
        }
        Ok(Mode::Sdes) => {
            if let Err(e) = rules::choose_crypto(&facts) {
                out.push(e);
            }
            if kind == Kind::Answer && facts.crypto.len() > 1 {
                out.push(SdpError::SeveralCryptoInAnswer(facts.crypto.len()));
            }
            if facts.ice_ufrag.is_none() && facts.default_destination().is_none() {
                out.push(SdpError::NoConnection);
            }
        }
        Err(_) => {} // already reported by whatsapp_stream
    }
    out
}

/// What a business SDP leaves out that Meta's own SDPs carry (WHATSAPP-SIP §6.1-§6.3, §6.6):
/// not rules Meta is known to enforce (Chrome's answers, which lack some, are taken: host
/// candidates in an answer are optional, §6.6), but what to add to be safe. Each is
/// `(name, advice)`; empty for Meta's side and for an SDP that cannot be read.
pub fn advise(sdp: &Session, side: Side) -> Vec<(&'static str, &'static str)> {
    let Ok(facts) = inspect::audio(sdp) else {
        return Vec::new();
    };
    if side == Side::Meta {
        return Vec::new();
    }
    let mut out = Vec::new();
    if facts.ptime != Some(20) {
        out.push((
            "ptime",
            "no a=ptime:20: WhatsApp audio is 20 ms Opus frames (§6.1)",
        ));
    }
    if facts.maxptime.is_none() {
        out.push((
            "maxptime",
            "no a=maxptime: Meta's SDPs say a=maxptime:20 (§6.2)",
        ));
    }
    if facts.ssrcs.is_empty() {
        out.push((
            "ssrc",
            "no a=ssrc: the one stream's SSRC is not announced (§6.1, §6.2)",
        ));
    }
    if facts.dtmf().is_none() {
        out.push((
            "telephone-event",
            "no telephone-event/8000: no DTMF either way on this call (§6.1)",
        ));
    }
    if facts.ice_ufrag.is_some() && facts.candidates.is_empty() {
        out.push((
            "candidates",
            "ICE without a candidate: Meta learns our address from our checks alone (peer-reflexive, §6.6)",
        ));
    }
    out
}

fn fingerprint_rules(facts: &inspect::AudioFacts) -> Vec<SdpError> {
    let lines = &facts.fingerprints;
    match lines.len() {
        0 => return vec![SdpError::NoFingerprint],
        1 => {}
        n => return vec![SdpError::SeveralFingerprints(n)],
    }
    let line = &lines[0];
    if line.algorithm != "sha-256" {
        return vec![SdpError::FingerprintAlgorithm(line.algorithm.clone())];
    }
    if let Err(e) = &line.parsed {
        return vec![SdpError::BadFingerprint(e.clone())];
    }
    if line.hex.bytes().any(|b| b.is_ascii_lowercase()) {
        return vec![SdpError::FingerprintCase];
    }
    Vec::new()
}

fn setup_rule(setup: Option<&str>, side: Side, kind: Kind) -> Option<SdpError> {
    let got = || setup.unwrap_or("(none)").to_string();
    match (kind, side, setup) {
        (Kind::Offer, _, Some("actpass" | "active" | "passive")) => None,
        (Kind::Offer, _, _) => Some(SdpError::Setup(
            got(),
            "an offer says actpass (or active/passive)",
        )),
        (Kind::Answer, Side::Business, Some("active")) => None,
        (Kind::Answer, Side::Business, _) => Some(SdpError::Setup(
            got(),
            "the business answers active: it is the DTLS client",
        )),
        (Kind::Answer, Side::Meta, Some("active" | "passive")) => None,
        (Kind::Answer, Side::Meta, _) => Some(SdpError::Setup(
            got(),
            "an answer must choose active or passive",
        )),
    }
}
