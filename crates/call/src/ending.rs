//! How a leg ended, who ended it and why, in words a user can act on; and media failures as the
//! media stack reports them, kept typed up to the `call.ended` event.

use std::fmt;

use watrunk_sip::Response;

/// Who ended the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Local,
    Remote,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Remote => "remote",
        }
    }
}

/// Whose fault a media failure is (the media stack's `MediaError`, across the boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The far side broke the protocol or failed a check (fingerprint, keys, ICE).
    Peer,
    /// Nothing answered in time (ICE, DTLS, consent).
    Timeout,
    /// Our configuration or environment (address not on an interface, port in use).
    Local,
}

/// A media failure the binary hands to the leg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaFailure {
    pub fault: Fault,
    pub detail: String,
}

impl fmt::Display for MediaFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.fault {
            Fault::Peer => "peer",
            Fault::Timeout => "timeout",
            Fault::Local => "local",
        };
        write!(f, "{who}: {}", self.detail)
    }
}

/// Why and how a call ended, for the `call.ended` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub by: Side,
    /// The final SIP status of the INVITE when the call never came up (487, 403, 486 ...).
    pub status: Option<u16>,
    /// A sentence a user can act on ("declined by the user", "no ACK after 32 s" ...).
    pub reason: String,
    /// The Reason header of a BYE or CANCEL, as received.
    pub sip_reason: Option<String>,
    /// Meta's `x-wa-meta-call-duration` on its BYE, seconds.
    pub meta_duration_secs: Option<u64>,
    /// The media failure that ended the call, if one did.
    pub media_failure: Option<MediaFailure>,
    /// The Q.850 cause of the BYE we ended the call with (65 for a refused answer, 41 for failed
    /// media, 16 for a normal hang-up).
    pub q850_cause: Option<u16>,
}

impl Ending {
    pub(crate) fn new(by: Side, status: Option<u16>, reason: impl Into<String>) -> Ending {
        Ending {
            by,
            status,
            reason: reason.into(),
            sip_reason: None,
            meta_duration_secs: None,
            media_failure: None,
            q850_cause: None,
        }
    }
}

/// What a failed outgoing INVITE means for the user (WHATSAPP-SIP §8).
pub(crate) fn outbound_failure(
    status: u16,
    response: &Response,
    authenticated: bool,
    has_password: bool,
) -> String {
    let warning = response
        .headers
        .get("Warning")
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    let what = match status {
        401 | 407 if !has_password => "the far side asks for digest credentials: configure the number's SIP password",
        401 | 407 | 403 if authenticated => "our credentials were rejected: check the number's SIP password",
        403 => "forbidden: no call permission from this user, or the From host does not match the number's SIP hostname",
        404 => "not found: the number or user is not reachable on WhatsApp (or the Request-URI is not at wa.meta.vc)",
        480 => "the user is unavailable",
        486 | 600 => "the user is busy",
        487 => "cancelled before answer",
        603 => "declined by the user",
        408 | 504 => "no answer (timeout)",
        488 | 606 => "our SDP offer was not accepted",
        300..=399 => "redirected, which Meta does not do: not followed",
        500..=599 => "the far side failed",
        _ => "the call failed",
    };
    format!("{status} {}: {what}{warning}", response.reason)
}
