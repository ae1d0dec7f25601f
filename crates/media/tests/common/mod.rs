//! What the media tests and the relay benchmark share: a plan for a call with SDES keys agreed out of
//! band, as the SDP negotiator would produce it for Meta's SDES offer.

use std::net::SocketAddr;

use watrunk_sdp::{
    Codec, Direction, Keying, MediaPlan, Profile, RemoteIce, SdesSuite, Transcoding,
};

/// Opus on 111, AES_CM_128_HMAC_SHA1_80 with these master keys (key || salt), toward `remote`
/// (without ICE unless `remote_ice`).
pub fn sdes_plan(
    remote: SocketAddr,
    local_key: &[u8],
    remote_key: &[u8],
    remote_ice: Option<RemoteIce>,
) -> MediaPlan {
    MediaPlan {
        profile: Profile::WhatsApp,
        remote_ice,
        remote_rtp: Some(remote),
        keying: Keying::Sdes {
            suite: SdesSuite::AesCm128HmacSha1_80,
            local_key: local_key.to_vec(),
            remote_key: remote_key.to_vec(),
            tag: 1,
        },
        codec: Codec::Opus,
        audio_pt: 111,
        dtmf_pt: None,
        dtmf_clock: 8000,
        remote_ssrc: None,
        ptime: 20,
        rtcp_mux: true,
        mid: None,
        direction: Direction::SendRecv,
        transcoding: Transcoding::None,
    }
}
