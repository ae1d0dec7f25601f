//! The write side: our offers and answers as sdp-types sessions, written strictly (one audio stream,
//! CRLF, no attribute we cannot honour). Both profiles describe their stream as a `Stream` and this
//! file turns it into lines.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use base64::Engine;
use sdp_types::{Attribute, Connection, Media, Origin, Session};

use crate::local::{Codec, LocalMedia};
use crate::plan::{Direction, SdesSuite};

/// Our audio stream's shape, apart from the per-call values in `LocalMedia`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stream {
    pub proto: &'static str,
    /// Payload types in m-line order.
    pub formats: Vec<(u8, Codec)>,
    pub mid: Option<String>,
    pub bundle: bool,
    /// ICE credentials and candidates are written.
    pub ice: bool,
    /// `a=setup:` value; with it our fingerprint is written.
    pub setup: Option<&'static str>,
    pub crypto: Vec<(u32, SdesSuite)>,
    pub rtcp_mux: bool,
    /// WhatsApp: `a=ptime:20` and `a=maxptime:20`; PBX: `a=ptime:20`.
    pub maxptime: bool,
    pub direction: Direction,
    /// The clock our telephone-event's rtpmap names (8000, or 48000 for a PBX's Opus-clock events).
    pub dtmf_clock: u32,
}

/// An answer: our stream in place of the offer's m-line `audio_index`, every other m-line rejected.
pub(crate) fn answer_session(
    stream: &Stream,
    local: &LocalMedia,
    offer: &Session,
    audio_index: usize,
) -> Session {
    let others = offer
        .medias
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != audio_index)
        .map(|(_, m)| rejected(m))
        .collect();
    session(stream, local, audio_index, others)
}

/// A rejected m-line of an answer (RFC 3264 §6: port 0, same media and transport).
fn rejected(offered: &Media) -> Media {
    Media {
        media: offered.media.trim().to_string(),
        port: 0,
        num_ports: None,
        proto: offered.proto.trim().to_string(),
        fmt: offered.fmt.trim().to_string(),
        media_title: None,
        connections: Vec::new(),
        bandwidths: Vec::new(),
        key: None,
        attributes: Vec::new(),
    }
}

/// Session-level lines around our stream. `others` are the answer's rejected m-lines in order; our
/// audio m-line goes at `audio_index` among them (offers pass none and 0).
pub(crate) fn session(
    stream: &Stream,
    local: &LocalMedia,
    audio_index: usize,
    others: Vec<Media>,
) -> Session {
    let default = local
        .default_address()
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9));
    let origin_ip = if default.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        default.ip()
    };
    let mut session = Session::new(
        Origin::with_ip_addr(local.session_id, local.session_version, origin_ip),
        "-",
    );
    if local.ice_lite && stream.ice {
        session.attributes.push(Attribute {
            attribute: "ice-lite".into(),
            value: None,
        });
    }
    if stream.bundle {
        if let Some(mid) = &stream.mid {
            session.add_attribute_with_value("group", format!("BUNDLE {mid}"));
        }
    }
    let mut medias = others;
    medias.insert(audio_index.min(medias.len()), media(stream, local, default));
    session.add_medias(medias);
    session
}

fn media(stream: &Stream, local: &LocalMedia, default: SocketAddr) -> Media {
    let fmt: Vec<String> = stream
        .formats
        .iter()
        .map(|(pt, _)| pt.to_string())
        .collect();
    let mut m = Media {
        media: "audio".into(),
        port: default.port(),
        num_ports: None,
        proto: stream.proto.into(),
        fmt: fmt.join(" "),
        media_title: None,
        connections: vec![Connection::from_ip_addr(default.ip())],
        bandwidths: Vec::new(),
        key: None,
        attributes: Vec::new(),
    };
    let mut attr = |name: &str, value: Option<String>| {
        m.attributes.push(Attribute {
            attribute: name.into(),
            value,
        })
    };
    if let Some(mid) = &stream.mid {
        attr("mid", Some(mid.clone()));
    }
    if stream.ice {
        attr("ice-ufrag", Some(local.ice_ufrag.clone()));
        attr("ice-pwd", Some(local.ice_pwd.clone()));
        for (i, addr) in local.candidates.iter().enumerate() {
            attr("candidate", Some(host_candidate(i, *addr)));
        }
        if !local.candidates.is_empty() {
            attr("end-of-candidates", None);
        }
    }
    if let (Some(setup), Some(fp)) = (stream.setup, &local.fingerprint) {
        attr(
            "fingerprint",
            Some(format!("{} {}", fp.algorithm, fp.hex())),
        );
        attr("setup", Some(setup.into()));
    }
    for (tag, suite) in &stream.crypto {
        let key = base64::engine::general_purpose::STANDARD.encode(local.sdes_key);
        attr(
            "crypto",
            Some(format!("{tag} {} inline:{key}", suite.name())),
        );
    }
    attr(stream.direction.attribute(), None);
    if stream.rtcp_mux {
        attr("rtcp-mux", None);
    }
    for (pt, codec) in &stream.formats {
        attr(
            "rtpmap",
            Some(match codec {
                Codec::TelephoneEvent if stream.dtmf_clock != 8000 => {
                    format!("{pt} telephone-event/{}", stream.dtmf_clock)
                }
                _ => codec.rtpmap(*pt),
            }),
        );
        match codec {
            Codec::Opus => attr("fmtp", Some(format!("{pt} minptime=20;useinbandfec=1"))),
            Codec::TelephoneEvent => attr("fmtp", Some(format!("{pt} 0-15"))),
            _ => {}
        }
    }
    attr("ptime", Some("20".into()));
    if stream.maxptime {
        attr("maxptime", Some("20".into()));
    }
    attr(
        "ssrc",
        Some(format!("{} cname:{}", local.ssrc, local.cname)),
    );
    m
}

/// `a=candidate` for host candidate `index` (RFC 8445 §5.1.2.1 priority, type preference 126).
fn host_candidate(index: usize, addr: SocketAddr) -> String {
    let local_pref = 65535u32.saturating_sub(index as u32);
    let priority = (126u32 << 24) | (local_pref << 8) | (256 - 1);
    format!(
        "{} 1 udp {priority} {} {} typ host",
        index + 1,
        addr.ip(),
        addr.port()
    )
}
