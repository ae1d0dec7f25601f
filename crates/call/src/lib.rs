//! watrunk-call: invite sessions (pjsip's term): one call leg's SIP dialog, its SDP offer/answer and
//! what its media should do, without I/O. A [`Leg`] parses the remote offer once and negotiates it
//! once through `watrunk_sdp`, tells the binary what media should do ([`MediaIntent`]: prepare,
//! start, update, send DTMF, stop) and takes media facts back as input (`media_ready` with our
//! local description, `media_failed`). It never opens a socket, reads a clock or touches the media
//! stack: time comes in as `now`, randomness from a generator the caller seeds.
//!
//! A leg has a [`LegPolicy`]: the WhatsApp leg never sends re-INVITE, UPDATE or session timers
//! and refuses the far side's (WHATSAPP-SIP §5); a generic leg (a PBX) answers and sends in-dialog
//! offers: re-INVITE with and without SDP, UPDATE, hold (RFC 3264 §6.1 directions) and glare
//! (491, retried after RFC 3261 §14.1's random delay).
//!
//! A [`Bridge`] joins a WhatsApp leg and a PBX leg into one B2BUA call, sans-IO too: the PBX
//! answers, then WhatsApp does; either leg's end ends the other, with the failure mapped.
//!
//! A [`Registration`] is watrunk's REGISTER at a PBX as a trunk (never toward Meta).
//!
//! The state table is at the top of `leg.rs`.

mod bridge;
mod ending;
mod leg;
mod meta;
mod policy;
mod register;

pub use bridge::{whatsapp_status_for, Bridge, BridgeOutput, LegId};
pub use ending::{Ending, Fault, MediaFailure, Side};
pub use leg::{
    CallDirection, CallError, CallEvent, CallOutput, Direction, Leg, LegSetup, Local, MediaIntent,
    OutboundCall, Reoffer,
};
pub use meta::MetaHeaders;
pub use policy::{LegPolicy, ALLOW_WHATSAPP};
pub use register::{Registration, RegistrationEvent, RegistrationSetup};

#[cfg(test)]
mod bridge_tests;
#[cfg(test)]
mod tests;
