//! watrunk-sdp: SDP offer/answer for the WhatsApp media profile and for PBX legs, as pure functions
//! over sdp-types. `answer` turns a remote offer into our answer and a `MediaPlan`; `offer` and
//! `accept_answer` do the same when we call out; `check` lists every WhatsApp-profile rule an SDP
//! breaks. Errors name the rule and map to `488` + `Warning: 399` (see `SdpError`).
//!
//! Parsing is lenient (any case, trailing spaces, LF or CRLF, unknown attributes, Opus fmtp in any
//! order); what we write is strict and CRLF.

mod check;
mod error;
mod ice;
mod inspect;
mod local;
mod pbx;
mod plan;
mod rules;
mod whatsapp;
mod write;

use base64::Engine;
pub use sdp_types::Session;

pub use check::{advise, check, Kind, Side};
pub use error::SdpError;
pub use ice::IceRole;
pub use local::{Capabilities, Codec, LocalMedia, Profile, Security};
pub use plan::{
    Direction, DtlsRole, Fingerprint, Keying, MediaPlan, RemoteCandidate, RemoteIce, SdesSuite,
    Transcoding,
};
pub use whatsapp::DEFAULT_DTMF_PT;

/// The largest SDP we parse. Real offers are 1-3 KiB; a SIP message is bounded at 64 KiB anyway.
pub const MAX_SDP_SIZE: usize = 32 * 1024;

/// Parses an SDP body leniently: LF or CRLF, trailing whitespace on lines, blank lines.
pub fn parse(bytes: &[u8]) -> Result<Session, SdpError> {
    if bytes.len() > MAX_SDP_SIZE {
        return Err(SdpError::TooLarge {
            limit: MAX_SDP_SIZE,
        });
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| SdpError::Syntax(format!("not UTF-8 at octet {}", e.valid_up_to())))?;
    let mut normalised = String::with_capacity(text.len() + 64);
    for line in text.split('\n') {
        let line = line.trim_end_matches(['\r', ' ', '\t']);
        if !line.is_empty() {
            normalised.push_str(line);
            normalised.push_str("\r\n");
        }
    }
    if !normalised.starts_with("v=") {
        return Err(SdpError::Syntax("the first line is not v=0".into()));
    }
    Session::parse(normalised.as_bytes()).map_err(|e| SdpError::Syntax(e.to_string()))
}

/// The SDP as sent on the wire (CRLF line ends).
pub fn print(session: &Session) -> String {
    session.to_string()
}

/// Checks a remote offer against what we can do and negotiates it, before any per-call value
/// exists: the refusal (488 with its rule) comes before a port or a task is taken. The answer is
/// written later, once, from the result ([`AgreedOffer::answer`]).
pub fn agree(offer: Session, caps: &Capabilities) -> Result<AgreedOffer, SdpError> {
    match caps.profile {
        Profile::WhatsApp => whatsapp::agree(offer),
        Profile::Pbx => pbx::agree(offer, caps),
    }
}

/// Our answer to `offer` and the plan for the media stack (`agree` and `AgreedOffer::answer`).
pub fn answer(offer: &Session, local: &LocalMedia) -> Result<(Session, MediaPlan), SdpError> {
    agree(offer.clone(), &local.capabilities())?.answer(local)
}

/// A remote offer that our profile accepts: the answer's shape and the media plan, waiting for
/// our per-call values (candidates, ICE credentials, fingerprint, SDES key).
#[derive(Debug, Clone)]
pub struct AgreedOffer {
    offer: Session,
    audio_index: usize,
    stream: write::Stream,
    plan: MediaPlan,
    /// The offer's own direction, before ours is applied.
    offered_direction: Direction,
    security: Security,
    ice_role: IceRole,
}

impl AgreedOffer {
    pub(crate) fn new(
        offer: Session,
        facts: &inspect::AudioFacts,
        stream: write::Stream,
        plan: MediaPlan,
        security: Security,
    ) -> AgreedOffer {
        let ice_role = if stream.ice {
            IceRole::for_answer(true, facts.ice_lite)
        } else {
            IceRole::None
        };
        AgreedOffer {
            offer,
            audio_index: facts.index,
            offered_direction: stream.direction.answer(),
            stream,
            plan,
            security,
            ice_role,
        }
    }

    /// The plan as negotiated, before our per-call values (an SDES plan has no local key yet).
    pub fn plan(&self) -> &MediaPlan {
        &self.plan
    }

    /// The key exchange of the answer (a WhatsApp answer follows the offer's).
    pub fn security(&self) -> Security {
        self.security
    }

    /// Our ICE role toward the offerer (RFC 8445 §6.1.1).
    pub fn ice_role(&self) -> IceRole {
        self.ice_role
    }

    pub fn offer(&self) -> &Session {
        &self.offer
    }

    /// Our answer with this leg's values, and the plan for the media stack. Only our own
    /// configuration can fail here (`SdpError::Local`, a 500): the offer was checked by `agree`.
    pub fn answer(&self, local: &LocalMedia) -> Result<(Session, MediaPlan), SdpError> {
        if self.stream.setup.is_some() && local.fingerprint.is_none() {
            return Err(SdpError::Local(
                "DTLS answer without a certificate fingerprint".into(),
            ));
        }
        let mut stream = self.stream.clone();
        stream.direction = self.offered_direction.answer_with(local.direction);
        let mut plan = self.plan.clone();
        plan.direction = stream.direction;
        if let Keying::Sdes { local_key, .. } = &mut plan.keying {
            *local_key = local.sdes_key.to_vec();
        }
        let sdp = write::answer_session(&stream, local, &self.offer, self.audio_index);
        Ok((sdp, plan))
    }
}

/// Our offer, kept with what `accept_answer` needs to check the answer against it.
#[derive(Debug, Clone)]
pub struct OfferState {
    local: LocalMedia,
    sdp: Session,
    /// Payload types we offered, in m-line order.
    formats: Vec<(u8, Codec)>,
    /// a=crypto tags and suites we offered (SDES).
    crypto: Vec<(u32, SdesSuite)>,
}

impl OfferState {
    /// The state of the offer `stream` describes, with what `accept_answer` checks the answer against.
    pub(crate) fn new(local: &LocalMedia, stream: &write::Stream) -> OfferState {
        OfferState {
            local: local.clone(),
            sdp: write::session(stream, local, 0, Vec::new()),
            formats: stream.formats.clone(),
            crypto: stream.crypto.clone(),
        }
    }

    pub fn sdp(&self) -> &Session {
        &self.sdp
    }

    pub fn local(&self) -> &LocalMedia {
        &self.local
    }

    /// Rebuilds the state from an offer we printed earlier (for `watrunk sdp accept`, where the offer
    /// is a file). Fails when the SDP is not one of our offers' shape.
    pub fn from_sdp(profile: Profile, offer: &Session) -> Result<OfferState, SdpError> {
        let facts = inspect::audio(offer)?;
        let security = match facts.proto {
            inspect::Proto::Dtls => Security::Dtls,
            inspect::Proto::Savp => Security::Sdes,
            _ => Security::Plain,
        };
        let mut local = LocalMedia::for_capabilities(
            &Capabilities {
                profile,
                security,
                codecs: Vec::new(),
            },
            &mut rand::rngs::mock::StepRng::new(1, 1),
        );
        local.ice_ufrag = facts.ice_ufrag.clone().unwrap_or_default();
        local.ice_pwd = facts.ice_pwd.clone().unwrap_or_default();
        local.fingerprint = facts.sha256_fingerprint().cloned();
        if let Some(ssrc) = facts.ssrcs.iter().next() {
            local.ssrc = *ssrc;
        }
        let mut crypto = Vec::new();
        for line in &facts.crypto {
            let (suite, key) = line.usable.clone().map_err(SdpError::BadCrypto)?;
            local.sdes_key.copy_from_slice(&key);
            crypto.push((line.tag, suite));
        }
        let formats: Vec<(u8, Codec)> = facts
            .formats
            .iter()
            .filter_map(|f| Some((f.pt, f.codec()?)))
            .collect();
        local.codecs = formats.iter().map(|(_, c)| *c).collect();
        Ok(OfferState {
            local,
            sdp: offer.clone(),
            formats,
            crypto,
        })
    }
}

/// Our offer for an outbound call (WhatsApp: §6.7, `a=setup:actpass`; or SDES with our a=crypto).
pub fn offer(local: &LocalMedia) -> Result<OfferState, SdpError> {
    match local.profile {
        Profile::WhatsApp => whatsapp::offer(local),
        Profile::Pbx => pbx::offer(local),
    }
}

/// The plan from the remote's answer to our offer.
pub fn accept_answer(state: &OfferState, answer: &Session) -> Result<MediaPlan, SdpError> {
    match state.local.profile {
        Profile::WhatsApp => whatsapp::accept_answer(state, answer),
        Profile::Pbx => pbx::accept_answer(state, answer),
    }
}

/// `inline:` key material as written in a=crypto (base64 of key and salt).
pub fn sdes_inline(key: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}
