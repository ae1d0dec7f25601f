//! What a leg may do toward its peer. The WhatsApp leg never renegotiates (WHATSAPP-SIP §5.2: Meta
//! answers re-INVITE with 500, has no UPDATE, and session-timer refreshes would be re-INVITEs, §5.3);
//! a generic SIP peer (a PBX) gets RFC 3261/3264/3311 in-dialog offer/answer both ways.

/// The per-leg switches of an invite session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegPolicy {
    /// We may send re-INVITE (hold, resume) on this leg.
    pub may_reinvite: bool,
    /// We may send UPDATE on this leg.
    pub may_update: bool,
    /// The far side's re-INVITE and UPDATE are negotiated (`true`) or refused with 488 (`false`).
    pub answers_reoffers: bool,
    /// An INVITE without an offer is answered with ours (RFC 3261 §13.2.1), instead of refused.
    pub accepts_offerless_invite: bool,
    /// Our INVITEs say `Supported: 100rel`, and reliable provisionals get their PRACK (RFC 3262).
    pub reliable_provisionals: bool,
}

impl LegPolicy {
    /// Toward Meta: no re-INVITE, no UPDATE, no session timers, every INVITE carries an offer.
    pub const fn whatsapp() -> LegPolicy {
        LegPolicy {
            may_reinvite: false,
            may_update: false,
            answers_reoffers: false,
            accepts_offerless_invite: false,
            reliable_provisionals: false,
        }
    }

    /// Toward a generic SIP peer such as a PBX.
    pub const fn generic() -> LegPolicy {
        LegPolicy {
            may_reinvite: true,
            may_update: true,
            answers_reoffers: true,
            accepts_offerless_invite: true,
            reliable_provisionals: true,
        }
    }

    /// The Allow header of this leg's INVITEs and responses.
    pub fn allow(&self) -> &'static str {
        if self.answers_reoffers {
            "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, REFER, PRACK"
        } else {
            ALLOW_WHATSAPP
        }
    }
}

/// What our INVITEs and responses advertise toward Meta (WHATSAPP-SIP §3.4: no UPDATE, no timer).
pub const ALLOW_WHATSAPP: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS";
