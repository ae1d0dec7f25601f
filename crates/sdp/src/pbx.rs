//! The PBX profile: RTP/AVP, or RTP/SAVP with SDES, no ICE, and a configurable codec list chosen per
//! RFC 3264 in our order of preference. Any codec other than Opus means the bridge must transcode to
//! the WhatsApp leg's Opus.

use sdp_types::Session;

use crate::error::SdpError;
use crate::inspect::{self, AudioFacts, Proto};
use crate::local::{Codec, LocalMedia, Profile, Security};
use crate::plan::{Direction, Keying, MediaPlan, SdesSuite, Transcoding};
use crate::rules;
use crate::whatsapp::single_ssrc;
use crate::write::{self, Stream};
use crate::OfferState;

fn required_proto(local: &LocalMedia) -> Result<(Proto, &'static str), SdpError> {
    match local.security {
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

pub(crate) fn answer(
    offer: &Session,
    local: &LocalMedia,
) -> Result<(Session, MediaPlan), SdpError> {
    let facts = inspect::audio(offer)?;
    let (proto, want) = required_proto(local)?;
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
    let mut formats: Vec<(u8, Codec)> = local
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
            accepted: describe(&local.codecs),
        });
    };
    let dtmf_pt = local
        .codecs
        .contains(&Codec::TelephoneEvent)
        .then(|| facts.dtmf().map(|f| f.pt))
        .flatten();
    if let Some(pt) = dtmf_pt {
        formats.push((pt, Codec::TelephoneEvent));
    }
    let (keying, crypto) = match local.security {
        Security::Sdes => {
            let (tag, suite, remote_key) = rules::choose_crypto(&facts)?;
            (
                Keying::Sdes {
                    suite,
                    local_key: local.sdes_key.to_vec(),
                    remote_key,
                    tag,
                },
                vec![(tag, suite)],
            )
        }
        _ => (Keying::Plain, Vec::new()),
    };
    let remote_rtp = facts.default_destination().ok_or(SdpError::NoConnection)?;
    let direction = facts.direction.answer();
    let stream = Stream {
        local,
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
    };
    let sdp = write::answer_session(&stream, offer, facts.index);
    let plan = plan(
        &facts, remote_rtp, keying, codec, audio_pt, dtmf_pt, direction,
    );
    Ok((sdp, plan))
}

fn plan(
    facts: &AudioFacts,
    remote_rtp: std::net::SocketAddr,
    keying: Keying,
    codec: Codec,
    audio_pt: u8,
    dtmf_pt: Option<u8>,
    direction: Direction,
) -> MediaPlan {
    MediaPlan {
        profile: Profile::Pbx,
        remote_ice: None,
        remote_rtp: Some(remote_rtp),
        keying,
        codec,
        audio_pt,
        dtmf_pt,
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
    let (_, proto) = required_proto(local)?;
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
        local,
        proto,
        formats,
        mid: None,
        bundle: false,
        ice: false,
        setup: None,
        crypto,
        rtcp_mux: false,
        maxptime: false,
        direction: Direction::SendRecv,
    };
    Ok(OfferState::new(local, &stream))
}

pub(crate) fn accept_answer(state: &OfferState, answer: &Session) -> Result<MediaPlan, SdpError> {
    let facts = inspect::audio(answer)?;
    let (proto, want) = required_proto(&state.local)?;
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
    let dtmf_pt = facts.dtmf().map(|f| f.pt);
    let keying = match state.local.security {
        Security::Sdes => rules::accepted_crypto(&facts, &state.crypto, &state.local.sdes_key)?,
        _ => Keying::Plain,
    };
    let remote_rtp = facts.default_destination().ok_or(SdpError::NoConnection)?;
    Ok(plan(
        &facts,
        remote_rtp,
        keying,
        codec,
        audio_pt,
        dtmf_pt,
        facts.direction.answer(),
    ))
}
