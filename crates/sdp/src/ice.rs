//! Which ICE role a leg takes, decided from SDP alone (RFC 8445 §6.1.1) before any check is sent,
//! so that a conforming peer never sees a role conflict.

use sdp_types::Session;

use crate::inspect;

/// Our ICE role: controlling toward an ICE-lite peer (Meta) and when we offer; controlled when we
/// answer a full agent's offer (a browser calling in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceRole {
    Controlling,
    Controlled,
    /// ICE-lite as Meta's relay: answers the peer's checks, never sends one (`watrunk sim`).
    Lite,
    /// No ICE: SDES or plain RTP toward an offer with a plain address.
    None,
}

impl IceRole {
    pub fn name(self) -> &'static str {
        match self {
            IceRole::Controlling => "controlling",
            IceRole::Controlled => "controlled",
            IceRole::Lite => "lite",
            IceRole::None => "none",
        }
    }

    /// The role of the answerer toward an offer: `offer_has_ice`, and whether the offerer is lite.
    pub fn for_answer(offer_has_ice: bool, offerer_lite: bool) -> IceRole {
        match (offer_has_ice, offerer_lite) {
            (false, _) => IceRole::None,
            (true, true) => IceRole::Controlling,
            (true, false) => IceRole::Controlled,
        }
    }

    /// Our role as the answerer of `offer`: no ICE credentials in its audio stream means no ICE.
    pub fn answering(offer: &Session) -> IceRole {
        match inspect::audio(offer) {
            Ok(f) if f.ice_ufrag.is_some() && f.ice_pwd.is_some() => {
                IceRole::for_answer(true, f.ice_lite)
            }
            _ => IceRole::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answerer_controls_toward_ice_lite_and_is_controlled_by_a_full_agent() {
        assert_eq!(IceRole::for_answer(true, true), IceRole::Controlling);
        assert_eq!(IceRole::for_answer(true, false), IceRole::Controlled);
        assert_eq!(IceRole::for_answer(false, true), IceRole::None);
        assert_eq!(IceRole::for_answer(false, false), IceRole::None);
    }

    fn offer(extra_session: &str, ice: bool) -> Session {
        let ice_lines = if ice {
            "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
        } else {
            ""
        };
        let text = format!(
            "v=0\r\no=- 1 1 IN IP4 198.18.0.2\r\ns=-\r\nt=0 0\r\n{extra_session}\
             m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 198.18.0.2\r\n{ice_lines}\
             a=rtpmap:111 opus/48000/2\r\n"
        );
        crate::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn the_role_is_read_from_the_offer() {
        assert_eq!(
            IceRole::answering(&offer("a=ice-lite\r\n", true)),
            IceRole::Controlling,
            "Meta's relay is ICE-lite: we control"
        );
        assert_eq!(
            IceRole::answering(&offer("", true)),
            IceRole::Controlled,
            "a browser is a full agent and controls as the offerer"
        );
        assert_eq!(IceRole::answering(&offer("", false)), IceRole::None);
    }
}
