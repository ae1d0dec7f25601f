//! The read side: what one SDP says about its audio stream, gathered leniently from session and media
//! level (trailing spaces trimmed, names in any case, unknown attributes ignored). Nothing here
//! decides whether the SDP is acceptable; the profiles do that from these facts.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use base64::Engine;
use sdp_types::{Candidate, CandidateAddress, Crypto, Media, RtpMap, Session};

use crate::error::SdpError;
use crate::local::Codec;
use crate::plan::{Direction, Fingerprint, RemoteCandidate, SdesSuite};

/// The transport of an m-line, as far as the profiles care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    /// UDP/TLS/RTP/SAVP(F): DTLS-SRTP.
    Dtls,
    /// RTP/SAVP(F): SDES or another key exchange.
    Savp,
    /// RTP/AVP(F): plain RTP.
    Avp,
    Other,
}

impl Proto {
    pub(crate) fn of(proto: &str) -> Proto {
        match proto.trim().to_ascii_uppercase().as_str() {
            "UDP/TLS/RTP/SAVPF" | "UDP/TLS/RTP/SAVP" => Proto::Dtls,
            "RTP/SAVP" | "RTP/SAVPF" => Proto::Savp,
            "RTP/AVP" | "RTP/AVPF" => Proto::Avp,
            _ => Proto::Other,
        }
    }
}

/// One payload type of the audio m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Format {
    pub pt: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u32>,
}

impl Format {
    pub(crate) fn codec(&self) -> Option<Codec> {
        let name = self.encoding.as_str();
        let channels = self.channels.unwrap_or(1);
        if name.eq_ignore_ascii_case("opus") && self.clock_rate == 48000 && channels == 2 {
            Some(Codec::Opus)
        } else if name.eq_ignore_ascii_case("PCMU") && self.clock_rate == 8000 && channels == 1 {
            Some(Codec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") && self.clock_rate == 8000 && channels == 1 {
            Some(Codec::Pcma)
        } else if name.eq_ignore_ascii_case("G722") && self.clock_rate == 8000 && channels == 1 {
            Some(Codec::G722)
        } else if name.eq_ignore_ascii_case("telephone-event") && self.clock_rate == 8000 {
            Some(Codec::TelephoneEvent)
        } else {
            None
        }
    }

    fn describe(&self) -> String {
        match self.channels {
            Some(c) => format!("{}/{}/{c}", self.encoding, self.clock_rate),
            None => format!("{}/{}", self.encoding, self.clock_rate),
        }
    }
}

/// A parsed a=fingerprint with the text it came from (the case of the hex matters to Meta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FingerprintLine {
    pub algorithm: String,
    pub hex: String,
    pub parsed: Result<Fingerprint, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CryptoLine {
    pub tag: u32,
    pub suite: String,
    /// The decoded inline key when the line is usable by us (known suite, one inline key, no MKI,
    /// no session parameters).
    pub usable: Result<(SdesSuite, Vec<u8>), String>,
}

/// Everything the profiles look at, about the one audio stream and its session.
#[derive(Debug, Clone)]
pub(crate) struct AudioFacts {
    pub index: usize,
    pub port: u16,
    pub proto_text: String,
    pub proto: Proto,
    pub active_audio: usize,
    /// m-lines other than the chosen audio one that are not rejected (port 0).
    pub extra_media: Vec<String>,
    pub formats: Vec<Format>,
    pub ptime: Option<u32>,
    pub maxptime: Option<u32>,
    pub ssrcs: BTreeSet<u32>,
    pub rtcp_mux: bool,
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    pub ice_lite: bool,
    pub trickle: bool,
    pub candidates: Vec<RemoteCandidate>,
    pub fingerprints: Vec<FingerprintLine>,
    pub setup: Option<String>,
    pub crypto: Vec<CryptoLine>,
    pub mid: Option<String>,
    pub bundle: bool,
    pub direction: Direction,
    pub connection: Option<IpAddr>,
}

impl AudioFacts {
    pub(crate) fn opus(&self) -> Option<&Format> {
        self.formats.iter().find(|f| f.codec() == Some(Codec::Opus))
    }

    pub(crate) fn dtmf(&self) -> Option<&Format> {
        self.formats
            .iter()
            .find(|f| f.codec() == Some(Codec::TelephoneEvent))
    }

    /// telephone-event for a stream of `codec`: at 8000, or (Opus only, a PBX's WebRTC-style
    /// habit) at the Opus clock, 48000. The payload type and the clock.
    pub(crate) fn dtmf_for(&self, codec: Codec) -> Option<(u8, u32)> {
        if let Some(f) = self.dtmf() {
            return Some((f.pt, 8000));
        }
        (codec == Codec::Opus)
            .then(|| {
                self.formats.iter().find(|f| {
                    f.encoding.eq_ignore_ascii_case("telephone-event") && f.clock_rate == 48000
                })
            })
            .flatten()
            .map(|f| (f.pt, 48000))
    }

    /// telephone-event offered only at clock rates other than 8000.
    pub(crate) fn dtmf_wrong_clock(&self) -> Option<u32> {
        if self.dtmf().is_some() {
            return None;
        }
        self.formats
            .iter()
            .find(|f| f.encoding.eq_ignore_ascii_case("telephone-event"))
            .map(|f| f.clock_rate)
    }

    pub(crate) fn describe_formats(&self) -> String {
        let list: Vec<String> = self.formats.iter().map(Format::describe).collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    }

    /// The c= address and m= port, unless the address is unspecified (0.0.0.0 / ::).
    pub(crate) fn default_destination(&self) -> Option<SocketAddr> {
        let ip = self.connection?;
        if ip.is_unspecified() || self.port == 0 {
            return None;
        }
        Some(SocketAddr::new(ip, self.port))
    }

    pub(crate) fn sha256_fingerprint(&self) -> Option<&Fingerprint> {
        self.fingerprints
            .iter()
            .filter_map(|f| f.parsed.as_ref().ok())
            .find(|f| f.algorithm == "sha-256")
    }
}

fn trimmed(v: Option<&str>) -> Option<String> {
    v.map(|s| s.trim().to_string())
}

fn media_values<'a>(media: &'a Media, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    media
        .attributes
        .iter()
        .filter(move |a| a.attribute.trim().eq_ignore_ascii_case(name))
        .map(|a| a.value.as_deref().unwrap_or("").trim())
}

fn session_values<'a>(session: &'a Session, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    session
        .attributes
        .iter()
        .filter(move |a| a.attribute.trim().eq_ignore_ascii_case(name))
        .map(|a| a.value.as_deref().unwrap_or("").trim())
}

/// Media-level values of an attribute, or the session-level ones when the media has none.
fn values<'a>(session: &'a Session, media: &'a Media, name: &'a str) -> Vec<&'a str> {
    let at_media: Vec<&str> = media_values(media, name).collect();
    if !at_media.is_empty() {
        return at_media;
    }
    session_values(session, name).collect()
}

fn first<'a>(session: &'a Session, media: &'a Media, name: &'a str) -> Option<&'a str> {
    values(session, media, name).into_iter().next()
}

/// Reads the audio stream of `session`: the first audio m-line with a non-zero port, else the first
/// audio m-line.
pub(crate) fn audio(session: &Session) -> Result<AudioFacts, SdpError> {
    let is_audio = |m: &Media| m.media.trim().eq_ignore_ascii_case("audio");
    let active_audio = session
        .medias
        .iter()
        .filter(|m| is_audio(m) && m.port != 0)
        .count();
    let index = session
        .medias
        .iter()
        .position(|m| is_audio(m) && m.port != 0)
        .or_else(|| session.medias.iter().position(is_audio))
        .ok_or(SdpError::NoAudio)?;
    let media = &session.medias[index];
    let extra_media = session
        .medias
        .iter()
        .enumerate()
        .filter(|(i, m)| *i != index && m.port != 0 && !is_audio(m))
        .map(|(_, m)| m.media.trim().to_string())
        .collect();

    Ok(AudioFacts {
        index,
        port: media.port,
        proto_text: media.proto.trim().to_string(),
        proto: Proto::of(&media.proto),
        active_audio,
        extra_media,
        formats: formats(media)?,
        ptime: first(session, media, "ptime").and_then(parse_ms),
        maxptime: first(session, media, "maxptime").and_then(parse_ms),
        ssrcs: media_values(media, "ssrc")
            .filter_map(|v| v.split_whitespace().next()?.parse::<u32>().ok())
            .collect(),
        rtcp_mux: media_values(media, "rtcp-mux").next().is_some(),
        ice_ufrag: trimmed(first(session, media, "ice-ufrag")),
        ice_pwd: trimmed(first(session, media, "ice-pwd")),
        ice_lite: session_values(session, "ice-lite").next().is_some()
            || media_values(media, "ice-lite").next().is_some(),
        trickle: values(session, media, "ice-options").iter().any(|v| {
            v.split_whitespace()
                .any(|o| o.eq_ignore_ascii_case("trickle"))
        }),
        candidates: media_values(media, "candidate")
            .filter_map(candidate)
            .collect(),
        fingerprints: values(session, media, "fingerprint")
            .into_iter()
            .map(fingerprint)
            .collect(),
        setup: first(session, media, "setup").map(|s| s.to_ascii_lowercase()),
        crypto: media_values(media, "crypto").map(crypto).collect(),
        mid: trimmed(media_values(media, "mid").next()),
        bundle: session_values(session, "group")
            .any(|g| g.split_whitespace().next() == Some("BUNDLE")),
        direction: direction(session, media),
        connection: media
            .connections
            .first()
            .or(session.connection.as_ref())
            .and_then(|c| {
                let addr = c.connection_address.trim();
                IpAddr::from_str(addr.split('/').next().unwrap_or(addr)).ok()
            }),
    })
}

fn parse_ms(v: &str) -> Option<u32> {
    let v = v.trim();
    v.parse::<u32>()
        .ok()
        .or_else(|| v.parse::<f32>().ok().map(|f| f.round() as u32))
}

fn formats(media: &Media) -> Result<Vec<Format>, SdpError> {
    let rtpmaps: Vec<RtpMap> = media_values(media, "rtpmap")
        .filter_map(|v| RtpMap::from_str(v).ok())
        .collect();
    let mut out = Vec::new();
    for token in media.fmt.split_whitespace() {
        let pt: u8 = match token.parse() {
            Ok(pt) if pt <= 127 => pt,
            _ => {
                return Err(SdpError::Syntax(format!(
                    "m=audio format {token:?} is not a payload type"
                )))
            }
        };
        if let Some(map) = rtpmaps.iter().find(|m| m.payload_type == pt) {
            out.push(Format {
                pt,
                encoding: map.encoding_name.trim().to_string(),
                clock_rate: map.clock_rate,
                channels: map
                    .encoding_params
                    .as_deref()
                    .and_then(|p| p.trim().parse().ok()),
            });
        } else if let Some((name, rate)) = static_payload(pt) {
            out.push(Format {
                pt,
                encoding: name.into(),
                clock_rate: rate,
                channels: None,
            });
        }
    }
    Ok(out)
}

/// RFC 3551 static audio payload types we can name without an rtpmap.
fn static_payload(pt: u8) -> Option<(&'static str, u32)> {
    match pt {
        0 => Some(("PCMU", 8000)),
        8 => Some(("PCMA", 8000)),
        9 => Some(("G722", 8000)),
        18 => Some(("G729", 8000)),
        _ => None,
    }
}

/// A candidate we could send checks to: UDP with an IP address. mDNS names, TCP and unparseable lines
/// are left out.
fn candidate(value: &str) -> Option<RemoteCandidate> {
    let normalised = value.split_whitespace().collect::<Vec<_>>().join(" ");
    let c = Candidate::from_str(&normalised).ok()?;
    if !c.transport.eq_ignore_ascii_case("udp") {
        return None;
    }
    let ip = match c.address {
        CandidateAddress::IpAddr(ip) => ip,
        CandidateAddress::FQDN(name) => IpAddr::from_str(&name).ok()?,
    };
    Some(RemoteCandidate {
        foundation: c.foundation,
        component: c.component_id,
        priority: c.priority,
        address: SocketAddr::new(ip, c.port),
        typ: format!("{:?}", c.typ).to_ascii_lowercase(),
    })
}

fn fingerprint(value: &str) -> FingerprintLine {
    let mut parts = value.split_whitespace();
    let algorithm = parts.next().unwrap_or("").to_ascii_lowercase();
    let hex = parts.next().unwrap_or("").to_string();
    let parsed = parse_fingerprint_hex(&algorithm, &hex, parts.next());
    FingerprintLine {
        algorithm,
        hex,
        parsed,
    }
}

fn parse_fingerprint_hex(
    algorithm: &str,
    hex: &str,
    trailing: Option<&str>,
) -> Result<Fingerprint, String> {
    if trailing.is_some() {
        return Err("trailing text after the hash".into());
    }
    let expected = match algorithm {
        "sha-1" => 20,
        "sha-224" => 28,
        "sha-256" => 32,
        "sha-384" => 48,
        "sha-512" => 64,
        "" => return Err("no hash function".into()),
        other => return Err(format!("unknown hash function {other}")),
    };
    let mut bytes = Vec::with_capacity(expected);
    for pair in hex.split(':') {
        if pair.len() != 2 {
            return Err(format!("{pair:?} is not a hex pair"));
        }
        bytes.push(u8::from_str_radix(pair, 16).map_err(|_| format!("{pair:?} is not hex"))?);
    }
    if bytes.len() != expected {
        return Err(format!(
            "{algorithm} needs {expected} octets, this has {}",
            bytes.len()
        ));
    }
    Ok(Fingerprint {
        algorithm: algorithm.to_string(),
        bytes,
    })
}

fn crypto(value: &str) -> CryptoLine {
    let normalised = value.split_whitespace().collect::<Vec<_>>().join(" ");
    match Crypto::from_str(&normalised) {
        Ok(line) => CryptoLine {
            tag: line.tag,
            suite: line.crypto_suite.as_str().to_string(),
            usable: usable_key(&line),
        },
        Err(e) => CryptoLine {
            tag: 0,
            suite: String::new(),
            usable: Err(format!("{normalised:?} does not parse: {e}")),
        },
    }
}

fn usable_key(line: &Crypto) -> Result<(SdesSuite, Vec<u8>), String> {
    let suite = SdesSuite::from_name(line.crypto_suite.as_str())
        .ok_or_else(|| format!("suite {} is not supported", line.crypto_suite.as_str()))?;
    if !line.session_params.is_empty() {
        return Err("session parameters are not supported".into());
    }
    let [key] = line.key_params.as_slice() else {
        return Err("exactly one inline key is supported".into());
    };
    if key.mki_and_length.is_some() {
        return Err("MKI is not supported".into());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.key_and_salt.trim())
        .map_err(|e| format!("inline key is not base64: {e}"))?;
    if bytes.len() != SdesSuite::KEY_LEN {
        return Err(format!(
            "inline key has {} octets, {} are needed",
            bytes.len(),
            SdesSuite::KEY_LEN
        ));
    }
    Ok((suite, bytes))
}

fn direction(session: &Session, media: &Media) -> Direction {
    let find = |attrs: &[sdp_types::Attribute]| {
        attrs
            .iter()
            .rev()
            .find_map(|a| match a.attribute.trim().to_ascii_lowercase().as_str() {
                "sendrecv" => Some(Direction::SendRecv),
                "sendonly" => Some(Direction::SendOnly),
                "recvonly" => Some(Direction::RecvOnly),
                "inactive" => Some(Direction::Inactive),
                _ => None,
            })
    };
    find(&media.attributes)
        .or_else(|| find(&session.attributes))
        .unwrap_or(Direction::SendRecv)
}
