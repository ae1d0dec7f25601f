//! The PBX profile: RTP/AVP, or RTP/SAVP with SDES, no ICE, and a configurable codec list chosen per
//! RFC 3264 in our order of preference. Any codec other than Opus means the bridge must transcode to
//! the WhatsApp leg's Opus.

use sdp_types::Session;

use crate::error::SdpError;
use crate::inspect::{self, AudioFacts, Proto};
use crate::local::{Capabilities, Codec, LocalMedia, Profile, Security};
use crate::plan::{Direction, Keying, MediaPlan, SdesSuite, Transcoding};
use crate::rules;
use crate::whatsapp::single_ssrc;
use crate::write::Stream;
use crate::{AgreedOffer, OfferState};

fn required_proto(security: Security) -> Result<(Proto, &'static str), SdpError> {
    match security {
        Security::Plain => Ok((Proto::Avp, "RTP/AVP")),
        Security::Sdes => Ok((Proto::Savp, "RTP/SAVP")),
        Security::Dtls => Err(SdpError::Local(
            "the PBX profile uses RTP/AVP or RTP/SAVP (SDES), not DTLS".into(),
        )),
    }
}

fn describe(codecs: &[Codec]) -> String {
    codecs
        .iter()
        .map(|c| {
            c.rtpmap(c.default_pt())
                .split_once(' ')
                .unwrap()
                .1
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A PBX's offer checked against our codecs and key exchange, chosen per RFC 3264.
pub(crate) fn agree(offer: Session, caps: &Capabilities) -> Result<AgreedOffer, SdpError> {
    let facts = inspect::audio(&offer)?;
    let (proto, want) = required_proto(caps.security)?;
    if facts.port == 0 {
        return Err(SdpError::Rejected);
    }
    if facts.active_audio > 1 {
        return Err(SdpError::SeveralAudio(facts.active_audio));
    }
    if facts.proto != proto {
        return Err(SdpError::Transport {
            got: facts.proto_text.clone(),
            want,
        });
    }
    // Every codec we accept that the offer has, in our order of preference, with the offer's PTs.
    let mut formats: Vec<(u8, Codec)> = caps
        .codecs
        .iter()
        .filter(|c| **c != Codec::TelephoneEvent)
        .filter_map(|c| {
            facts
                .formats
                .iter()
                .find(|f| f.codec() == Some(*c))
                .map(|f| (f.pt, *c))
        })
        .collect();
    let Some(&(audio_pt, codec)) = formats.first() else {
        return Err(SdpError::NoCommonCodec {
            offered: facts.describe_formats(),
            accepted: describe(&caps.codecs),
        });
    };
    let dtmf = caps
        .codecs
        .contains(&Codec::TelephoneEvent)
        .then(|| facts.dtmf_for(codec))
        .flatten();
    if let Some((pt, _)) = dtmf {
        formats.push((pt, Codec::TelephoneEvent));
    }
    let (keying, crypto) = match caps.security {
        Security::Sdes => {
            let (tag, suite, remote_key) = rules::choose_crypto(&facts)?;
            (
                Keying::Sdes {
                    suite,
                    local_key: Vec::new(),
                    remote_key,
                    tag,
                },
                vec![(tag, suite)],
            )
        }
        _ => (Keying::Plain, Vec::new()),
    };
    // c=0.0.0.0 is RFC 2543's hold: the offerer receives nothing (RFC 3264 §8.4).
    let remote_rtp = facts.default_destination();
    let offered = match (remote_rtp, facts.direction) {
        (Some(_), d) => d,
        (None, _) if facts.connection.is_some_and(|ip| ip.is_unspecified()) => {
            match facts.direction {
                Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
                _ => Direction::Inactive,
            }
        }
        (None, _) => return Err(SdpError::NoConnection),
    };
    let direction = offered.answer();
    let stream = Stream {
        proto: if facts.proto_text.eq_ignore_ascii_case("RTP/AVPF")
            || facts.proto_text.eq_ignore_ascii_case("RTP/SAVPF")
        {
            if proto == Proto::Avp {
                "RTP/AVPF"
            } else {
                "RTP/SAVPF"
            }
        } else {
            want
        },
        formats,
        mid: facts.mid.clone(),
        bundle: false,
        ice: false,
        setup: None,
        crypto,
        rtcp_mux: facts.rtcp_mux,
        maxptime: false,
        direction,
        dtmf_clock: dtmf.map_or(8000, |(_, clock)| clock),
    };
    let plan = plan(&facts, remote_rtp, keying, codec, audio_pt, dtmf, direction);
    Ok(AgreedOffer::new(offer, &facts, stream, plan, caps.security))
}

fn plan(
    facts: &AudioFacts,
    remote_rtp: Option<std::net::SocketAddr>,
    keying: Keying,
    codec: Codec,
    audio_pt: u8,
    dtmf: Option<(u8, u32)>,
    direction: Direction,
) -> MediaPlan {
    MediaPlan {
        profile: Profile::Pbx,
        remote_ice: None,
        remote_rtp,
        keying,
        codec,
        audio_pt,
        dtmf_pt: dtmf.map(|(pt, _)| pt),
        dtmf_clock: dtmf.map_or(8000, |(_, clock)| clock),
        remote_ssrc: single_ssrc(facts),
        ptime: facts.ptime.unwrap_or(20),
        rtcp_mux: facts.rtcp_mux,
        mid: facts.mid.clone(),
        direction,
        transcoding: if codec == Codec::Opus {
            Transcoding::None
        } else {
            Transcoding::Needed { to: codec }
        },
    }
}

pub(crate) fn offer(local: &LocalMedia) -> Result<OfferState, SdpError> {
    let (_, proto) = required_proto(local.security)?;
    if local.default_address().is_none() {
        return Err(SdpError::Local("a PBX offer needs a media address".into()));
    }
    let formats: Vec<(u8, Codec)> = local.codecs.iter().map(|c| (c.default_pt(), *c)).collect();
    if !formats.iter().any(|(_, c)| *c != Codec::TelephoneEvent) {
        return Err(SdpError::Local(
            "the PBX codec list has no audio codec".into(),
        ));
    }
    let crypto = if local.security == Security::Sdes {
        SdesSuite::offered()
    } else {
        Vec::new()
    };
    let stream = Stream {
        proto,
        formats,
        mid: None,
        bundle: false,
        ice: false,
        setup: None,
        crypto,
        rtcp_mux: false,
        maxptime: false,
        direction: local.direction,
        dtmf_clock: 8000,
    };
    Ok(OfferState::new(local, &stream))
}

pub(crate) fn accept_answer(state: &OfferState, answer: &Session) -> Result<MediaPlan, SdpError> {
    let facts = inspect::audio(answer)?;
    let (proto, want) = required_proto(state.local.security)?;
    if facts.port == 0 {
        return Err(SdpError::Rejected);
    }
    if facts.proto != proto {
        return Err(SdpError::Transport {
            got: facts.proto_text.clone(),
            want,
        });
    }
    // The answerer's first format that we offered is the one it will send.
    let (audio_pt, codec) = facts
        .formats
        .iter()
        .filter_map(|f| Some((f.pt, f.codec()?)))
        .find(|(_, c)| *c != Codec::TelephoneEvent && state.formats.iter().any(|(_, o)| o == c))
        .ok_or_else(|| SdpError::NoCommonCodec {
            offered: describe(&state.formats.iter().map(|(_, c)| *c).collect::<Vec<_>>()),
            accepted: facts.describe_formats(),
        })?;
    // We offered telephone-event/8000 only.
    let dtmf = facts.dtmf().map(|f| (f.pt, 8000));
    let keying = match state.local.security {
        Security::Sdes => rules::accepted_crypto(&facts, &state.crypto, &state.local.sdes_key)?,
        _ => Keying::Plain,
    };
    let direction = facts.direction.answer();
    let remote_rtp = facts.default_destination();
    if remote_rtp.is_none() && direction.sends() {
        return Err(SdpError::NoConnection);
    }
    Ok(plan(
        &facts, remote_rtp, keying, codec, audio_pt, dtmf, direction,
    ))
}
