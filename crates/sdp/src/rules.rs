//! The profile rules over `AudioFacts`, shared by `answer`, `accept_answer` and `check`: each function
//! returns every rule the SDP breaks, most fundamental first, so negotiation can stop at the first and
//! `check` can list them all.

use crate::error::SdpError;
use crate::inspect::{AudioFacts, Proto};
use crate::plan::{DtlsRole, Fingerprint, Keying, RemoteIce, SdesSuite};

/// Which key exchange an SDP's audio stream uses on the WhatsApp leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Dtls,
    Sdes,
}

pub(crate) const WHATSAPP_TRANSPORTS: &str = "UDP/TLS/RTP/SAVPF (DTLS) or RTP/SAVP (SDES)";

pub(crate) fn whatsapp_mode(facts: &AudioFacts) -> Result<Mode, SdpError> {
    match facts.proto {
        Proto::Dtls => Ok(Mode::Dtls),
        Proto::Savp => Ok(Mode::Sdes),
        _ => Err(SdpError::Transport {
            got: facts.proto_text.clone(),
            want: WHATSAPP_TRANSPORTS,
        }),
    }
}

/// The stream-shape rules of the WhatsApp profile (WHATSAPP-SIP §6.1): one active audio stream,
/// Opus 48000/2, ptime 20, one SSRC, rtcp-mux, telephone-event at 8000 Hz.
pub(crate) fn whatsapp_stream(facts: &AudioFacts) -> Vec<SdpError> {
    let mut out = Vec::new();
    if facts.port == 0 {
        out.push(SdpError::Rejected);
    }
    if facts.active_audio > 1 {
        out.push(SdpError::SeveralAudio(facts.active_audio));
    }
    if let Err(e) = whatsapp_mode(facts) {
        out.push(e);
    }
    if facts.opus().is_none() {
        out.push(SdpError::NoOpus);
    }
    out.extend(ptime(facts));
    if facts.ssrcs.len() > 1 {
        out.push(SdpError::SeveralSsrcs(facts.ssrcs.len()));
    }
    if !facts.rtcp_mux {
        out.push(SdpError::NoRtcpMux);
    }
    out
}

pub(crate) fn ptime(facts: &AudioFacts) -> Vec<SdpError> {
    let mut out = Vec::new();
    if let Some(p) = facts.ptime.filter(|p| *p != 20) {
        out.push(SdpError::Ptime(p));
    }
    if let Some(p) = facts.maxptime.filter(|p| *p < 20) {
        out.push(SdpError::Maxptime(p));
    }
    out
}

fn ice_credential(value: &str, name: &'static str) -> Result<(), SdpError> {
    // Lenient charset (Meta uses '/' and '+', some stacks base64 '='), strict shape.
    let ok = !value.is_empty()
        && value.len() <= 256
        && value.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if ok {
        Ok(())
    } else {
        Err(SdpError::BadIceCredential(name))
    }
}

/// The remote ICE agent, or the rule that stops us from using it. `required`: DTLS mode, where an
/// offer without ICE gets 488 (WHATSAPP-SIP §3.7).
pub(crate) fn remote_ice(
    facts: &AudioFacts,
    required: bool,
) -> Result<Option<RemoteIce>, SdpError> {
    let (ufrag, pwd) = match (&facts.ice_ufrag, &facts.ice_pwd) {
        (Some(u), Some(p)) => (u, p),
        _ if required => return Err(SdpError::NoIceCredentials),
        _ => return Ok(None),
    };
    ice_credential(ufrag, "ice-ufrag")?;
    ice_credential(pwd, "ice-pwd")?;
    let candidates: Vec<_> = facts
        .candidates
        .iter()
        .filter(|c| c.component == 1)
        .cloned()
        .collect();
    // A lite agent never sends checks, so without an address we could never reach it.
    if facts.ice_lite && candidates.is_empty() && facts.default_destination().is_none() {
        return Err(SdpError::NoCandidates);
    }
    Ok(Some(RemoteIce {
        ufrag: ufrag.clone(),
        pwd: pwd.clone(),
        candidates,
        lite: facts.ice_lite,
    }))
}

/// The remote's sha-256 certificate fingerprint (other hashes beside it are tolerated in a remote SDP).
pub(crate) fn remote_fingerprint(facts: &AudioFacts) -> Result<Fingerprint, SdpError> {
    if facts.fingerprints.is_empty() {
        return Err(SdpError::NoFingerprint);
    }
    if let Some(fp) = facts.sha256_fingerprint() {
        return Ok(fp.clone());
    }
    if let Some(Err(e)) = facts
        .fingerprints
        .iter()
        .map(|f| &f.parsed)
        .find(|p| p.is_err())
    {
        return Err(SdpError::BadFingerprint(e.clone()));
    }
    Err(SdpError::FingerprintAlgorithm(
        facts
            .fingerprints
            .iter()
            .map(|f| f.algorithm.clone())
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

/// Our DTLS role and `a=setup` toward an offer's setup (RFC 5763 §5): we take the client role
/// whenever the offer lets us, as WhatsApp asks.
pub(crate) fn answer_setup(facts: &AudioFacts) -> Result<(DtlsRole, &'static str), SdpError> {
    match facts.setup.as_deref() {
        None | Some("actpass") | Some("passive") => Ok((DtlsRole::Client, "active")),
        Some("active") => Ok((DtlsRole::Server, "passive")),
        Some(other) => Err(SdpError::Setup(
            other.into(),
            "an offer must say actpass, active or passive",
        )),
    }
}

/// Our DTLS role from the setup of an answer to our `actpass` offer.
pub(crate) fn accepted_setup(facts: &AudioFacts) -> Result<DtlsRole, SdpError> {
    match facts.setup.as_deref() {
        // RFC 4145 §4: an absent setup means active.
        None | Some("active") => Ok(DtlsRole::Server),
        Some("passive") => Ok(DtlsRole::Client),
        Some(other) => Err(SdpError::Setup(
            other.into(),
            "an answer must choose active or passive",
        )),
    }
}

/// The a=crypto line we answer: the first offered line of our most preferred suite.
pub(crate) fn choose_crypto(facts: &AudioFacts) -> Result<(u32, SdesSuite, Vec<u8>), SdpError> {
    if facts.crypto.is_empty() {
        return Err(SdpError::NoCrypto);
    }
    for suite in SdesSuite::PREFERENCE {
        for line in &facts.crypto {
            if let Ok((s, key)) = &line.usable {
                if *s == suite {
                    return Ok((line.tag, suite, key.clone()));
                }
            }
        }
    }
    let named: Vec<&str> = facts
        .crypto
        .iter()
        .map(|c| c.suite.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    if named.iter().any(|s| SdesSuite::from_name(s).is_none()) {
        return Err(SdpError::UnsupportedCryptoSuite(named.join(", ")));
    }
    let first = facts
        .crypto
        .iter()
        .find_map(|c| c.usable.as_ref().err().cloned());
    Err(SdpError::BadCrypto(first.unwrap_or_default()))
}

/// SDES keying from the answer to our offer: one a=crypto whose tag and suite we offered.
pub(crate) fn accepted_crypto(
    facts: &AudioFacts,
    offered: &[(u32, SdesSuite)],
    local_key: &[u8],
) -> Result<Keying, SdpError> {
    match facts.crypto.len() {
        0 => return Err(SdpError::NoCrypto),
        1 => {}
        n => return Err(SdpError::SeveralCryptoInAnswer(n)),
    }
    let line = &facts.crypto[0];
    let (suite, remote_key) = line.usable.clone().map_err(SdpError::BadCrypto)?;
    if !offered.contains(&(line.tag, suite)) {
        return Err(SdpError::CryptoNotOffered(line.tag));
    }
    Ok(Keying::Sdes {
        suite,
        local_key: local_key.to_vec(),
        remote_key,
        tag: line.tag,
    })
}
