//! What a negotiation decided, for the media stack: where the remote is (ICE or a plain address), how
//! keys are agreed (DTLS role and remote fingerprint, or SDES keys), payload types, SSRC, ptime and
//! whether the PBX leg needs transcoding. Serialisable so `watrunk sdp` can print it.

use std::net::SocketAddr;

use serde::Serialize;

use crate::local::{Codec, Profile};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MediaPlan {
    pub profile: Profile,
    /// Remote ICE agent, when the stream uses ICE.
    pub remote_ice: Option<RemoteIce>,
    /// The remote's default address (c= and m= port): the media destination when there is no ICE.
    pub remote_rtp: Option<SocketAddr>,
    pub keying: Keying,
    pub codec: Codec,
    pub audio_pt: u8,
    /// telephone-event/8000 payload type, when both sides agreed on one (never assumed: a peer that
    /// did not offer it would not expect it).
    pub dtmf_pt: Option<u8>,
    /// The telephone-event clock: 8000, or 48000 for a PBX that speaks Opus and offered its
    /// events at the Opus clock (their durations are counted in it).
    pub dtmf_clock: u32,
    pub remote_ssrc: Option<u32>,
    pub ptime: u32,
    pub rtcp_mux: bool,
    pub mid: Option<String>,
    pub direction: Direction,
    pub transcoding: Transcoding,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteIce {
    pub ufrag: String,
    pub pwd: String,
    pub candidates: Vec<RemoteCandidate>,
    pub lite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteCandidate {
    pub foundation: String,
    pub component: u32,
    pub priority: u64,
    pub address: SocketAddr,
    pub typ: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Keying {
    Dtls {
        /// sha-256 of the remote certificate, to be checked after the handshake.
        fingerprint: Fingerprint,
        role: DtlsRole,
    },
    Sdes {
        suite: SdesSuite,
        /// Our master key and salt (we protect with it).
        #[serde(with = "b64")]
        local_key: Vec<u8>,
        /// The remote's master key and salt (we unprotect with it).
        #[serde(with = "b64")]
        remote_key: Vec<u8>,
        /// The a=crypto tag both sides agreed on.
        tag: u32,
    },
    /// Plain RTP (PBX leg only).
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DtlsRole {
    /// We send the ClientHello (`a=setup:active` on our side).
    Client,
    /// We wait for the ClientHello (`a=setup:passive` on our side).
    Server,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    pub algorithm: String,
    #[serde(serialize_with = "serialize_fingerprint")]
    pub bytes: Vec<u8>,
}

impl Fingerprint {
    pub fn sha256(bytes: impl Into<Vec<u8>>) -> Fingerprint {
        Fingerprint {
            algorithm: "sha-256".into(),
            bytes: bytes.into(),
        }
    }

    /// `AB:CD:...`, uppercase, as Meta and Chrome write it.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(self.bytes.len() * 3);
        for (i, b) in self.bytes.iter().enumerate() {
            if i > 0 {
                s.push(':');
            }
            s.push_str(&format!("{b:02X}"));
        }
        s
    }
}

fn serialize_fingerprint<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(
        &Fingerprint {
            algorithm: String::new(),
            bytes: bytes.to_vec(),
        }
        .hex(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SdesSuite {
    #[serde(rename = "AES_CM_128_HMAC_SHA1_80")]
    AesCm128HmacSha1_80,
    #[serde(rename = "AES_CM_128_HMAC_SHA1_32")]
    AesCm128HmacSha1_32,
}

impl SdesSuite {
    /// Our preference order: the 80-bit tag first (Meta's partners list it first).
    pub const PREFERENCE: [SdesSuite; 2] = [
        SdesSuite::AesCm128HmacSha1_80,
        SdesSuite::AesCm128HmacSha1_32,
    ];

    /// The a=crypto lines of our offers: every suite, tags 1.. in preference order.
    pub fn offered() -> Vec<(u32, SdesSuite)> {
        SdesSuite::PREFERENCE
            .iter()
            .enumerate()
            .map(|(i, s)| (i as u32 + 1, *s))
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            SdesSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SdesSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    pub fn from_name(name: &str) -> Option<SdesSuite> {
        SdesSuite::PREFERENCE
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// Master key (16) + master salt (14) octets.
    pub const KEY_LEN: usize = 30;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answerer takes toward an offer with this one (RFC 3264 §6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn of(sends: bool, receives: bool) -> Direction {
        match (sends, receives) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    /// Our answer's direction toward an offer with `self`, when we want `ours` (RFC 3264 §6.1: a
    /// held side answers `sendonly` even to `sendrecv`; `inactive` stays `inactive`).
    pub fn answer_with(self, ours: Direction) -> Direction {
        let mirrored = self.answer();
        Direction::of(
            mirrored.sends() && ours.sends(),
            mirrored.receives() && ours.receives(),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transcoding {
    /// The stream is Opus/48000/2 like the WhatsApp leg: payloads pass through.
    None,
    /// The PBX leg negotiated another codec: audio must be transcoded to and from Opus.
    Needed { to: Codec },
}

mod b64 {
    use base64::Engine;
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}
