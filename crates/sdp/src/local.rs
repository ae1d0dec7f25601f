//! What we bring to a negotiation: the profile, our ICE credentials, host candidates, certificate
//! fingerprint, SSRC and SDES key. Random values are drawn by `LocalMedia::generate` from the
//! generator the caller passes (the binary seeds one from the OS), so the negotiation functions stay
//! pure and tests can pin every value.

use std::net::SocketAddr;

use rand::{Rng, RngCore};
use serde::Serialize;

use crate::plan::{Direction, Fingerprint};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    #[serde(rename = "whatsapp")]
    /// Meta's WhatsApp relay: Opus only, ICE + DTLS-SRTP or SDES, one SSRC, rtcp-mux.
    WhatsApp,
    /// A PBX over plain SIP: RTP/AVP or RTP/SAVP (SDES) with a configurable codec list.
    Pbx,
}

/// How media keys are agreed on the leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// ICE + DTLS-SRTP (UDP/TLS/RTP/SAVPF). WhatsApp only.
    Dtls,
    /// RTP/SAVP with a=crypto (RFC 4568).
    Sdes,
    /// RTP/AVP. PBX only.
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// opus/48000/2
    Opus,
    /// PCMU/8000 (static PT 0)
    Pcmu,
    /// PCMA/8000 (static PT 8)
    Pcma,
    /// G722/8000 (static PT 9: 16 kHz audio on an 8000 Hz RTP clock, RFC 3551 §4.5.2)
    G722,
    /// telephone-event/8000 (RFC 4733)
    TelephoneEvent,
}

impl Codec {
    pub fn encoding(self) -> &'static str {
        match self {
            Codec::Opus => "opus",
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::TelephoneEvent => "telephone-event",
        }
    }

    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48000,
            _ => 8000,
        }
    }

    /// The rtpmap channel parameter, where one is written.
    pub fn channels(self) -> Option<u32> {
        match self {
            Codec::Opus => Some(2),
            _ => None,
        }
    }

    /// The payload type we use when we offer the codec.
    pub fn default_pt(self) -> u8 {
        match self {
            Codec::Opus => 111,
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
            Codec::TelephoneEvent => 126,
        }
    }

    pub fn rtpmap(self, pt: u8) -> String {
        match self.channels() {
            Some(ch) => format!("{pt} {}/{}/{ch}", self.encoding(), self.clock_rate()),
            None => format!("{pt} {}/{}", self.encoding(), self.clock_rate()),
        }
    }

    /// Parses a codec name as used in configuration: `opus`, `pcmu`, `pcma`, `g722`,
    /// `telephone-event`.
    pub fn from_name(name: &str) -> Option<Codec> {
        match name.to_ascii_lowercase().as_str() {
            "opus" | "opus/48000/2" => Some(Codec::Opus),
            "pcmu" | "pcmu/8000" | "g711u" => Some(Codec::Pcmu),
            "pcma" | "pcma/8000" | "g711a" => Some(Codec::Pcma),
            "g722" | "g722/8000" => Some(Codec::G722),
            "telephone-event" | "telephone-event/8000" | "dtmf" => Some(Codec::TelephoneEvent),
            _ => None,
        }
    }
}

/// What a leg can do, from configuration: checked against an offer before any per-call value
/// (port, credentials, key) exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub profile: Profile,
    /// Our offers' key exchange (a WhatsApp answer follows the offer's instead).
    pub security: Security,
    /// PBX profile: the codecs we accept, in our order of preference.
    pub codecs: Vec<Codec>,
}

impl Capabilities {
    pub fn whatsapp(security: Security) -> Capabilities {
        Capabilities {
            profile: Profile::WhatsApp,
            security,
            codecs: DEFAULT_CODECS.to_vec(),
        }
    }

    pub fn pbx(security: Security, codecs: Vec<Codec>) -> Capabilities {
        Capabilities {
            profile: Profile::Pbx,
            security,
            codecs,
        }
    }
}

const DEFAULT_CODECS: [Codec; 4] = [Codec::Opus, Codec::Pcmu, Codec::Pcma, Codec::TelephoneEvent];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    pub profile: Profile,
    pub security: Security,
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// Host candidates (and the c=/m= default address: the first IPv4 one, else the first).
    pub candidates: Vec<SocketAddr>,
    /// sha-256 of our DTLS certificate. Required for `Security::Dtls`.
    pub fingerprint: Option<Fingerprint>,
    pub ssrc: u32,
    pub cname: String,
    /// SDES master key + salt (30 octets), used for every suite we offer or answer.
    pub sdes_key: [u8; 30],
    /// PBX profile: the codecs we accept, in our order of preference.
    pub codecs: Vec<Codec>,
    /// o= session id.
    pub session_id: u64,
    /// o= session version: raised each time a re-negotiation changes our SDP (RFC 3264 §8).
    pub session_version: u64,
    /// What we want of the stream: `SendOnly` or `Inactive` while we hold the far side.
    pub direction: Direction,
    /// Write `a=ice-lite` (Meta's relay, as `watrunk sim` plays it). Never on the business side.
    pub ice_lite: bool,
}

impl LocalMedia {
    /// Fresh credentials, SSRC, CNAME and SDES key drawn from `rng` (the caller's CSPRNG).
    pub fn generate(profile: Profile, security: Security, rng: &mut impl RngCore) -> LocalMedia {
        let caps = Capabilities {
            profile,
            security,
            codecs: DEFAULT_CODECS.to_vec(),
        };
        LocalMedia::for_capabilities(&caps, rng)
    }

    /// Per-call values for a leg with these capabilities.
    pub fn for_capabilities(caps: &Capabilities, rng: &mut impl RngCore) -> LocalMedia {
        let mut sdes_key = [0u8; 30];
        rng.fill_bytes(&mut sdes_key);
        LocalMedia {
            profile: caps.profile,
            security: caps.security,
            ice_ufrag: random_ice_chars(rng, 8),
            ice_pwd: random_ice_chars(rng, 24),
            candidates: Vec::new(),
            fingerprint: None,
            ssrc: rng.gen(),
            cname: random_ice_chars(rng, 16).replace(['+', '/'], "x"),
            sdes_key,
            codecs: caps.codecs.clone(),
            session_id: rng.gen_range(1..=i64::MAX as u64),
            session_version: 2,
            direction: Direction::SendRecv,
            ice_lite: false,
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            profile: self.profile,
            security: self.security,
            codecs: self.codecs.clone(),
        }
    }

    pub fn with_candidates(mut self, candidates: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.candidates = candidates.into_iter().collect();
        self
    }

    pub fn with_fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    /// The address written in c= and m=: the first IPv4 candidate, else the first one.
    pub fn default_address(&self) -> Option<SocketAddr> {
        self.candidates
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| self.candidates.first())
            .copied()
    }
}

/// ice-char = ALPHA / DIGIT / "+" / "/" (RFC 8839 §5.4).
fn random_ice_chars(rng: &mut impl RngCore, len: usize) -> String {
    const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| ICE_CHARS[rng.gen_range(0..ICE_CHARS.len())] as char)
        .collect()
}
