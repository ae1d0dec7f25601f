//! The WhatsApp profile (WHATSAPP-SIP §6): our answer to Meta's offer (§6.6) and our offer for
//! business-initiated calls (§6.7), each with DTLS-SRTP or SDES keying.
//!
//! The answer follows the offer's key exchange (UDP/TLS/RTP/SAVPF → DTLS, RTP/SAVP → SDES): Meta
//! picks it from the number's settings, and refusing a call because our copy of that setting differs
//! would help nobody. Our own offers use `LocalMedia::security`.

use sdp_types::Session;

use crate::error::SdpError;
use crate::inspect::{self, AudioFacts};
use crate::local::{Codec, LocalMedia, Profile, Security};
use crate::plan::{Keying, MediaPlan, SdesSuite, Transcoding};
use crate::rules::{self, Mode};
use crate::write::Stream;
use crate::{AgreedOffer, OfferState};

/// The payload type we offer telephone-event/8000 on (Meta's own number, WHATSAPP-SIP §7.6).
pub const DEFAULT_DTMF_PT: u8 = 126;
const OPUS_PT: u8 = 111;
const MID: &str = "audio";

/// Meta's offer checked and negotiated (§6.6); our per-call values come in at answer time.
pub(crate) fn agree(offer: Session) -> Result<AgreedOffer, SdpError> {
    let facts = inspect::audio(&offer)?;
    if let Some(first) = rules::whatsapp_stream(&facts).into_iter().next() {
        return Err(first);
    }
    let mode = rules::whatsapp_mode(&facts)?;
    let opus_pt = facts.opus().map(|f| f.pt).ok_or(SdpError::NoOpus)?;
    let dtmf_pt = facts.dtmf().map(|f| f.pt);

    let (keying, setup, crypto, remote_ice) = match mode {
        Mode::Dtls => {
            let remote_ice = rules::remote_ice(&facts, true)?;
            let fingerprint = rules::remote_fingerprint(&facts)?;
            let (role, setup) = rules::answer_setup(&facts)?;
            (
                Keying::Dtls { fingerprint, role },
                Some(setup),
                Vec::new(),
                remote_ice,
            )
        }
        Mode::Sdes => {
            let (tag, suite, remote_key) = rules::choose_crypto(&facts)?;
            let remote_ice = rules::remote_ice(&facts, false)?;
            if remote_ice.is_none() && facts.default_destination().is_none() {
                return Err(SdpError::NoConnection);
            }
            (
                Keying::Sdes {
                    suite,
                    local_key: Vec::new(),
                    remote_key,
                    tag,
                },
                None,
                vec![(tag, suite)],
                remote_ice,
            )
        }
    };
    let mut formats = vec![(opus_pt, Codec::Opus)];
    if let Some(pt) = dtmf_pt {
        formats.push((pt, Codec::TelephoneEvent));
    }
    // RFC 3264 §6: the answer keeps the offer's profile, feedback (…F) or not.
    let feedback = facts.proto_text.trim().to_ascii_uppercase().ends_with('F');
    let stream = Stream {
        proto: match (mode, feedback) {
            (Mode::Dtls, true) => "UDP/TLS/RTP/SAVPF",
            (Mode::Dtls, false) => "UDP/TLS/RTP/SAVP",
            (Mode::Sdes, true) => "RTP/SAVPF",
            (Mode::Sdes, false) => "RTP/SAVP",
        },
        formats,
        mid: facts.mid.clone(),
        bundle: facts.bundle && facts.mid.is_some(),
        ice: remote_ice.is_some(),
        setup,
        crypto,
        rtcp_mux: true,
        maxptime: true,
        direction: facts.direction.answer(),
        dtmf_clock: 8000,
    };
    let security = match mode {
        Mode::Dtls => Security::Dtls,
        Mode::Sdes => Security::Sdes,
    };
    let plan = plan(
        &facts,
        remote_ice,
        keying,
        opus_pt,
        dtmf_pt,
        stream.direction,
    );
    Ok(AgreedOffer::new(offer, &facts, stream, plan, security))
}

fn plan(
    facts: &AudioFacts,
    remote_ice: Option<crate::plan::RemoteIce>,
    keying: Keying,
    audio_pt: u8,
    dtmf_pt: Option<u8>,
    direction: crate::plan::Direction,
) -> MediaPlan {
    MediaPlan {
        profile: Profile::WhatsApp,
        remote_ice,
        remote_rtp: facts.default_destination(),
        keying,
        codec: Codec::Opus,
        audio_pt,
        dtmf_pt,
        dtmf_clock: 8000,
        remote_ssrc: single_ssrc(facts),
        ptime: 20,
        rtcp_mux: true,
        mid: facts.mid.clone(),
        direction,
        transcoding: Transcoding::None,
    }
}

pub(crate) fn single_ssrc(facts: &AudioFacts) -> Option<u32> {
    (facts.ssrcs.len() == 1)
        .then(|| facts.ssrcs.iter().next().copied())
        .flatten()
}

pub(crate) fn offer(local: &LocalMedia) -> Result<OfferState, SdpError> {
    let (proto, ice, setup, crypto) = match local.security {
        Security::Dtls => {
            if local.fingerprint.is_none() {
                return Err(SdpError::Local(
                    "DTLS offer without a certificate fingerprint".into(),
                ));
            }
            ("UDP/TLS/RTP/SAVPF", true, Some("actpass"), Vec::new())
        }
        Security::Sdes => {
            if local.default_address().is_none() {
                return Err(SdpError::Local(
                    "an SDES offer needs a media address (there is no ICE to find one)".into(),
                ));
            }
            let crypto = SdesSuite::offered();
            ("RTP/SAVP", false, None, crypto)
        }
        Security::Plain => {
            return Err(SdpError::Local(
                "the WhatsApp profile needs DTLS or SDES, not plain RTP".into(),
            ))
        }
    };
    let formats = vec![
        (OPUS_PT, Codec::Opus),
        (DEFAULT_DTMF_PT, Codec::TelephoneEvent),
    ];
    let stream = Stream {
        proto,
        formats,
        mid: Some(MID.into()),
        bundle: true,
        ice,
        setup,
        crypto,
        rtcp_mux: true,
        maxptime: true,
        direction: local.direction,
        dtmf_clock: 8000,
    };
    Ok(OfferState::new(local, &stream))
}

pub(crate) fn accept_answer(state: &OfferState, answer: &Session) -> Result<MediaPlan, SdpError> {
    let facts = inspect::audio(answer)?;
    if let Some(first) = rules::whatsapp_stream(&facts).into_iter().next() {
        return Err(first);
    }
    let mode = rules::whatsapp_mode(&facts)?;
    let offered_mode = match state.local.security {
        Security::Sdes => Mode::Sdes,
        _ => Mode::Dtls,
    };
    if mode != offered_mode {
        return Err(SdpError::Transport {
            got: facts.proto_text.clone(),
            want: match offered_mode {
                Mode::Dtls => "UDP/TLS/RTP/SAVPF, as offered",
                Mode::Sdes => "RTP/SAVP, as offered",
            },
        });
    }
    let opus_pt = facts.opus().map(|f| f.pt).ok_or(SdpError::NoOpus)?;
    let dtmf_pt = facts.dtmf().map(|f| f.pt);
    let (keying, remote_ice) = match mode {
        Mode::Dtls => {
            let remote_ice = rules::remote_ice(&facts, true)?;
            let fingerprint = rules::remote_fingerprint(&facts)?;
            let role = rules::accepted_setup(&facts)?;
            (Keying::Dtls { fingerprint, role }, remote_ice)
        }
        Mode::Sdes => {
            let keying = rules::accepted_crypto(&facts, &state.crypto, &state.local.sdes_key)?;
            let remote_ice = rules::remote_ice(&facts, false)?;
            if remote_ice.is_none() && facts.default_destination().is_none() {
                return Err(SdpError::NoConnection);
            }
            (keying, remote_ice)
        }
    };
    // Our direction is the mirror of the answerer's.
    let direction = facts.direction.answer();
    Ok(plan(
        &facts, remote_ice, keying, opus_pt, dtmf_pt, direction,
    ))
}
