//! A WhatsApp call bridged to a PBX (a B2BUA call): the WhatsApp leg and the PBX leg, and the
//! rules between them, without I/O. The owner feeds each leg's SIP and media facts through
//! [`Bridge::leg_mut`] as for a single leg and carries out [`Bridge::poll_output`], whose SIP
//! outputs name their leg.
//!
//! Only the WhatsApp leg has a media session of its own; the PBX leg's media is that session's
//! plain side. So the PBX leg's media intents stop here: its `Prepare` goes out (the owner answers
//! it with the local description of that plain side), its negotiated plan becomes
//! [`BridgeOutput::Connect`] (where and in which codec the plain side talks to the PBX), and its
//! `Stop` is the WhatsApp leg's to give.
//!
//! Inbound (a WhatsApp user calls): the WhatsApp leg has sent 180; the PBX leg is called at once;
//! when the PBX answers, the WhatsApp leg answers. Outbound (the PBX calls a WhatsApp user): the
//! PBX's offer is connected at once, the WhatsApp leg calls Meta, the PBX hears 180 when Meta
//! rings and 200 when Meta answers. Either leg's end ends the other: before the answer the called
//! leg's failure becomes the calling leg's final response (mapped, with a Q.850 `Reason`), after
//! it a BYE. Nothing the PBX does in the dialog (re-INVITE, UPDATE, hold) reaches Meta.

use std::collections::VecDeque;
use std::time::Instant;

use rand::RngCore;
use watrunk_sdp::{LocalMedia, MediaPlan};
use watrunk_sip::{Response, Uri};

use watrunk_sip::message::reason_phrase;

use crate::ending::{Ending, Side};
use crate::leg::{
    CallDirection, CallError, CallEvent, CallOutput, Leg, LegSetup, MediaIntent, OutboundCall,
};

/// Which leg of a bridged call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LegId {
    WhatsApp,
    Pbx,
    /// The PBX leg a REFER asked for (a blind transfer), or the PBX's INVITE with Replaces (an
    /// attended one): once it answers, it is the PBX side.
    Transfer,
}

/// What the owner carries out for a bridged call.
#[derive(Debug)]
pub enum BridgeOutput {
    /// One leg's output, carried out as for a single leg (SIP to that leg's transport; the media
    /// intents are the WhatsApp leg's, and the PBX leg's `Prepare`).
    Leg(LegId, CallOutput),
    /// The WhatsApp leg's media is to talk to the PBX as `plan` says (address, codec, payload
    /// types): first when the PBX answers, again when a re-offer of the PBX moves or changes it.
    Connect(Box<MediaPlan>),
    /// The PBX transfers the call (its REFER): the owner makes the new PBX leg toward this target
    /// and gives it with [`Bridge::start_transfer`].
    Transfer(Box<Uri>),
    /// Outbound, when Meta rings and local ringback is on: the PBX got 183 with our answer, and
    /// the owner plays a ring tone toward it as this plan says until the WhatsApp leg's media
    /// starts.
    Ringback(Box<MediaPlan>),
    /// A transfer is over (the replaced leg has ended): the leg with this Call-ID, until now
    /// [`LegId::Transfer`], is [`LegId::Pbx`] from now on, and another transfer may follow.
    Promoted(String),
}

/// A WhatsApp call and its PBX leg.
pub struct Bridge {
    /// Inbound: the WhatsApp user called; outbound: the PBX did.
    direction: CallDirection,
    whatsapp: Leg,
    pbx: Leg,
    /// The new PBX leg of a transfer; `transferred` once it answered and replaced `pbx`.
    transfer: Option<Leg>,
    transferred: bool,
    /// The transfer is the PBX's REFER, which hears how it went in NOTIFYs.
    referred: bool,
    /// Outbound: the PBX leg's 180, kept until Meta rings.
    ringing: Option<CallOutput>,
    /// Outbound: Meta has rung.
    rang: bool,
    /// Outbound: the PBX hears a ring tone of ours while Meta rings (183 with early media) instead
    /// of a bare 180.
    local_ringback: bool,
    /// The PBX's media as last agreed.
    pbx_plan: Option<MediaPlan>,
    /// When an unanswered PBX leg is given up (CANCEL, 480 to Meta).
    ring_deadline: Option<Instant>,
    out: VecDeque<BridgeOutput>,
}

impl Bridge {
    /// A WhatsApp user's call (`whatsapp`, ringing) to be bridged to the PBX as `call`: the PBX
    /// leg starts at once (it asks for its local description first).
    pub fn inbound(
        whatsapp: Leg,
        call: OutboundCall,
        pbx_setup: LegSetup,
        rng: &mut impl RngCore,
    ) -> Result<Bridge, CallError> {
        let pbx = Leg::outgoing(call, pbx_setup, rng)?;
        Ok(Bridge::of(
            CallDirection::Inbound,
            whatsapp,
            pbx,
            None,
            VecDeque::new(),
        ))
    }

    fn of(
        direction: CallDirection,
        whatsapp: Leg,
        pbx: Leg,
        pbx_plan: Option<MediaPlan>,
        out: VecDeque<BridgeOutput>,
    ) -> Bridge {
        Bridge {
            direction,
            whatsapp,
            pbx,
            transfer: None,
            transferred: false,
            referred: false,
            ringing: None,
            rang: false,
            local_ringback: false,
            pbx_plan,
            ring_deadline: None,
            out,
        }
    }

    /// The PBX's call (`pbx`, ringing) to a WhatsApp user as `call` (a business-initiated call):
    /// the PBX's offered media is connected first, so the WhatsApp leg's media is made for it (an
    /// INVITE without an offer gets ours in the 200, and its media is connected when the ACK
    /// brings the answer); the WhatsApp leg asks for that media next. `pbx_local`: the PBX leg's
    /// local description (the plain side of that media), which its 200 will carry.
    pub fn outbound(
        mut pbx: Leg,
        pbx_local: LocalMedia,
        call: OutboundCall,
        whatsapp_setup: LegSetup,
        rng: &mut impl RngCore,
    ) -> Result<Bridge, CallError> {
        let plan = pbx.offered_plan().cloned();
        pbx.media_ready(pbx_local);
        let whatsapp = Leg::outgoing(call, whatsapp_setup, rng)?;
        let mut out = VecDeque::new();
        if let Some(plan) = &plan {
            out.push_back(BridgeOutput::Connect(Box::new(plan.clone())));
        }
        Ok(Bridge::of(
            CallDirection::Outbound,
            whatsapp,
            pbx,
            plan,
            out,
        ))
    }

    /// Who called: inbound, the WhatsApp user; outbound, the PBX.
    pub fn direction(&self) -> CallDirection {
        self.direction
    }

    /// Gives the PBX until `deadline` to answer: then its INVITE is cancelled and Meta gets 480
    /// (Q.850 cause 19, no answer).
    pub fn ring_until(&mut self, deadline: Instant) {
        self.ring_deadline = Some(deadline);
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ringing = self.whatsapp.is_ringing() && !self.pbx.is_answered();
        self.ring_deadline
            .filter(|_| ringing)
            .into_iter()
            .chain(self.whatsapp.poll_timeout())
            .chain(self.pbx.poll_timeout())
            .chain(self.transfer.as_ref().and_then(Leg::poll_timeout))
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ring_deadline.is_some_and(|d| now >= d)
            && self.whatsapp.is_ringing()
            && !self.pbx.is_answered()
        {
            self.ring_deadline = None;
            let (status, phrase, cause) = whatsapp_status_for(Some(480));
            let mut response = Response::new(status, phrase);
            response.headers.push(
                "Reason",
                format!("Q.850;cause={cause};text=\"the PBX did not answer in time\""),
            );
            // The WhatsApp leg's end cancels the PBX leg (`take_whatsapp_output`).
            let _ = self
                .whatsapp
                .reject(response, "the PBX did not answer in time".into());
        }
        self.whatsapp.handle_timeout(now);
        self.pbx.handle_timeout(now);
        if let Some(transfer) = &mut self.transfer {
            transfer.handle_timeout(now);
        }
    }

    /// A leg, to feed it what arrived for it (its requests, responses, timeouts, media facts).
    pub fn leg_mut(&mut self, id: LegId) -> &mut Leg {
        match id {
            LegId::WhatsApp => &mut self.whatsapp,
            LegId::Pbx => &mut self.pbx,
            LegId::Transfer => self.transfer.as_mut().unwrap_or(&mut self.pbx),
        }
    }

    pub fn leg(&self, id: LegId) -> &Leg {
        match id {
            LegId::WhatsApp => &self.whatsapp,
            LegId::Pbx => &self.pbx,
            LegId::Transfer => self.transfer.as_ref().unwrap_or(&self.pbx),
        }
    }

    /// The PBX side of the call: the PBX leg, or after a transfer the leg it asked for.
    fn pbx_side(&mut self) -> &mut Leg {
        match &mut self.transfer {
            Some(transfer) if self.transferred => transfer,
            _ => &mut self.pbx,
        }
    }

    /// The new PBX leg toward the target of the PBX's REFER (`BridgeOutput::Transfer`): it asks for
    /// its local description next (the call's plain side, as it is).
    pub fn start_transfer(&mut self, leg: Leg) {
        self.transfer = Some(leg);
    }

    /// The PBX side's dialog, if an INVITE with Replaces (RFC 3891) naming `dialog` may take its
    /// place: the call is up on both legs and no transfer ran before.
    pub fn replaceable(&self, dialog: &watrunk_sip::dialog::DialogId) -> bool {
        self.transfer.is_none()
            && self.whatsapp.is_answered()
            && self.pbx.dialog_id() == Some(dialog)
    }

    /// The PBX's INVITE with Replaces naming the PBX leg's dialog (see [`Bridge::replaceable`]):
    /// `leg`, made from that INVITE, is answered at once (it asks for its local description, the
    /// call's plain side as it is) and becomes the PBX side; the replaced leg gets a BYE. The
    /// WhatsApp leg hears nothing of it.
    pub fn replace_pbx_side(&mut self, mut leg: Leg) {
        let _ = leg.answer();
        self.transfer = Some(leg);
    }

    /// The transfer the PBX asked for cannot be made (a target we refuse, a leg we cannot build):
    /// the PBX hears it in a final NOTIFY.
    pub fn refuse_transfer(&mut self, status: u16, phrase: &str) {
        self.pbx.notify_refer(status, phrase, true);
    }

    /// Outbound: when Meta rings, the PBX gets 183 with our answer and `BridgeOutput::Ringback`
    /// (early media) instead of 180; an INVITE without an offer, or requiring 100rel, still gets
    /// 180.
    pub fn with_local_ringback(mut self) -> Bridge {
        self.local_ringback = true;
        self
    }

    /// Both legs have ended.
    pub fn is_ended(&self) -> bool {
        self.whatsapp.is_ended()
            && self.pbx.is_ended()
            && self.transfer.as_ref().is_none_or(Leg::is_ended)
    }

    /// The PBX's media as last agreed.
    pub fn pbx_plan(&self) -> Option<&MediaPlan> {
        self.pbx_plan.as_ref()
    }

    /// The PBX's RTP has stopped for `quiet` while its leg is up and not on hold (it should be
    /// sending): the PBX is taken as gone, and both legs end (Q.850 cause 41, temporary failure).
    /// False, and nothing done, while the PBX leg is on hold or not up.
    pub fn pbx_media_timeout(&mut self, quiet: std::time::Duration) -> bool {
        let sending = self
            .pbx_plan
            .as_ref()
            .is_some_and(|p| p.direction.receives());
        if !self.pbx_side().is_answered() || !sending {
            return false;
        }
        let reason = format!("the PBX sent no RTP for {} s", quiet.as_secs());
        self.pbx_side().hang_up(&reason, 41);
        self.whatsapp.hang_up(&reason, 41);
        true
    }

    /// The application ends the call: both legs.
    pub fn hang_up(&mut self, reason: &str, q850_cause: u16) {
        self.whatsapp.hang_up(reason, q850_cause);
        self.pbx.hang_up(reason, q850_cause);
        if let Some(transfer) = &mut self.transfer {
            transfer.hang_up(reason, q850_cause);
        }
    }

    /// The next thing to carry out. The PBX leg's outputs are looked at first: its answer is what
    /// lets the WhatsApp leg answer.
    pub fn poll_output(&mut self) -> Option<BridgeOutput> {
        loop {
            if let Some(out) = self.out.pop_front() {
                return Some(out);
            }
            if let Some(out) = self.pbx.poll_output() {
                self.take_pbx_output(out);
                continue;
            }
            if let Some(out) = self.transfer.as_mut().and_then(Leg::poll_output) {
                self.take_transfer_output(out);
                continue;
            }
            if let Some(out) = self.whatsapp.poll_output() {
                self.take_whatsapp_output(out);
                continue;
            }
            return None;
        }
    }

    fn take_pbx_output(&mut self, out: CallOutput) {
        // Outbound: the PBX hears ringing when Meta rings.
        if let CallOutput::Respond { response, .. } = &out {
            if response.status == 180 && self.direction == CallDirection::Outbound && !self.rang {
                self.ringing = Some(out);
                return;
            }
        }
        match out {
            CallOutput::Media(MediaIntent::Start { plan, .. })
            | CallOutput::Media(MediaIntent::Update { plan }) => {
                self.pbx_plan = Some((*plan).clone());
                self.out.push_back(BridgeOutput::Connect(plan));
                if self.whatsapp.is_ringing() {
                    // Only a ringing leg can answer; one that ended meanwhile stays ended.
                    let _ = self.whatsapp.answer();
                }
            }
            // The WhatsApp leg's media session is the one; it stops with the WhatsApp leg.
            CallOutput::Media(MediaIntent::Stop)
            | CallOutput::Media(MediaIntent::SendDtmf { .. }) => {}
            // A key pressed at the PBX by SIP INFO: RFC 4733 toward Meta (not before the answer,
            // nor without a negotiated telephone-event; the owner hears of it either way).
            CallOutput::Event(CallEvent::Dtmf(key)) => {
                let _ = self.whatsapp.send_dtmf(&key.to_string());
                self.out.push_back(BridgeOutput::Leg(
                    LegId::Pbx,
                    CallOutput::Event(CallEvent::Dtmf(key)),
                ));
            }
            CallOutput::Event(CallEvent::Refer(target)) => self.referred(target),
            CallOutput::Event(CallEvent::Ended(ending)) => {
                // After a transfer the old PBX leg's end is only its own.
                if !self.transferred {
                    self.pbx_ended(&ending);
                }
                self.out.push_back(BridgeOutput::Leg(
                    LegId::Pbx,
                    CallOutput::Event(CallEvent::Ended(ending)),
                ));
                self.promote();
            }
            other => self.out.push_back(BridgeOutput::Leg(LegId::Pbx, other)),
        }
    }

    /// The PBX's REFER (already answered 202): a blind transfer of the WhatsApp user to `target`,
    /// once the call is up on both legs and no transfer ran before.
    fn referred(&mut self, target: Uri) {
        if self.transfer.is_some() {
            self.pbx
                .notify_refer(501, "Not Implemented (one transfer per call)", true);
        } else if !self.whatsapp.is_answered() || !self.pbx.is_answered() {
            self.pbx
                .notify_refer(603, "Decline (the call is not up yet)", true);
        } else {
            self.pbx.notify_refer(100, "Trying", false);
            self.referred = true;
            self.out.push_back(BridgeOutput::Transfer(Box::new(target)));
        }
    }

    /// Once a transfer's leg is the PBX side and the leg it replaced has ended, it takes that leg's
    /// place, so that a later transfer (a REFER of its own, an INVITE with Replaces naming it) is
    /// one like the first.
    fn promote(&mut self) {
        if !self.transferred || !self.pbx.is_ended() {
            return;
        }
        let Some(transfer) = self.transfer.take() else {
            return;
        };
        if transfer.is_ended() {
            self.transfer = Some(transfer);
            return;
        }
        let call_id = transfer.call_id().to_string();
        self.pbx = transfer;
        self.transferred = false;
        self.referred = false;
        self.out.push_back(BridgeOutput::Promoted(call_id));
    }

    /// The transfer's leg: its answer makes it the PBX side (the media moves to it, the old PBX
    /// leg hears 200 in a NOTIFY and a BYE); its failure is told to the old leg, which stays.
    fn take_transfer_output(&mut self, out: CallOutput) {
        match out {
            CallOutput::Media(MediaIntent::Start { plan, .. })
            | CallOutput::Media(MediaIntent::Update { plan }) => {
                self.pbx_plan = Some((*plan).clone());
                self.out.push_back(BridgeOutput::Connect(plan));
                if !self.transferred {
                    self.transferred = true;
                    if self.referred {
                        self.pbx.notify_refer(200, "OK", true);
                        self.pbx.hang_up("transferred", 16);
                    } else {
                        self.pbx.hang_up("replaced", 16);
                    }
                }
            }
            CallOutput::Media(MediaIntent::Stop)
            | CallOutput::Media(MediaIntent::SendDtmf { .. }) => {}
            CallOutput::Event(CallEvent::Refer(_)) => {
                if let Some(transfer) = &mut self.transfer {
                    transfer.notify_refer(501, "Not Implemented (one transfer per call)", true);
                }
            }
            CallOutput::Event(CallEvent::Dtmf(key)) => {
                let _ = self.whatsapp.send_dtmf(&key.to_string());
                self.out.push_back(BridgeOutput::Leg(
                    LegId::Transfer,
                    CallOutput::Event(CallEvent::Dtmf(key)),
                ));
            }
            CallOutput::Event(CallEvent::Ended(ending)) => {
                if self.transferred {
                    self.pbx_ended(&ending);
                } else if self.referred {
                    let (status, phrase) = match ending.status {
                        Some(s) if s >= 300 => (s, reason_phrase(s)),
                        _ => (503, "Service Unavailable"),
                    };
                    self.pbx.notify_refer(status, phrase, true);
                }
                self.out.push_back(BridgeOutput::Leg(
                    LegId::Transfer,
                    CallOutput::Event(CallEvent::Ended(ending)),
                ));
            }
            other => self
                .out
                .push_back(BridgeOutput::Leg(LegId::Transfer, other)),
        }
    }

    fn take_whatsapp_output(&mut self, out: CallOutput) {
        match &out {
            CallOutput::Event(CallEvent::Ringing) => {
                self.rang = true;
                if let Some(ringing) = self.ringing.take() {
                    match self.local_ringback.then(|| self.pbx.early_answer()) {
                        Some(Ok(plan)) => {
                            self.out.push_back(BridgeOutput::Ringback(Box::new(plan)));
                        }
                        _ => self.out.push_back(BridgeOutput::Leg(LegId::Pbx, ringing)),
                    }
                }
            }
            // Outbound: Meta answered, so the PBX's call is (its 200 carries the local
            // description it was given).
            CallOutput::Event(CallEvent::Answered) if self.pbx.is_ringing() => {
                let _ = self.pbx.answer();
            }
            CallOutput::Event(CallEvent::Ended(ending))
                if !self.pbx.is_ended()
                    || self.transfer.as_ref().is_some_and(|t| !t.is_ended()) =>
            {
                if self.pbx.is_ringing() {
                    // Outbound, unanswered: Meta's refusal is the PBX's final response.
                    let response = refusal(ending, "WhatsApp");
                    let reason = format!("the WhatsApp leg failed: {}", ending.reason);
                    let _ = self.pbx.reject(response, reason);
                } else {
                    let (reason, cause) = match ending.by {
                        Side::Remote => ("the WhatsApp user hung up", 16),
                        Side::Local => ("the WhatsApp leg ended", 16),
                    };
                    let reason = format!("{reason}: {}", ending.reason);
                    self.pbx.hang_up(&reason, cause);
                    if let Some(transfer) = &mut self.transfer {
                        transfer.hang_up(&reason, cause);
                    }
                }
            }
            _ => {}
        }
        self.out.push_back(BridgeOutput::Leg(LegId::WhatsApp, out));
    }

    /// The PBX leg ended: before the answer its failure is the WhatsApp leg's final response,
    /// after it the WhatsApp leg hangs up.
    fn pbx_ended(&mut self, ending: &Ending) {
        if self.whatsapp.is_ended() {
            return;
        }
        if self.whatsapp.is_ringing() {
            let response = refusal(ending, "PBX");
            let reason = format!("the PBX leg failed: {}", ending.reason);
            let _ = self.whatsapp.reject(response, reason);
        } else {
            let cause = if ending.by == Side::Remote { 16 } else { 41 };
            self.whatsapp
                .hang_up(&format!("the PBX leg ended: {}", ending.reason), cause);
        }
    }
}

/// The calling leg's final response for the called leg's failure (`ending`), with its Q.850 cause
/// in `Reason`; `called` names the called side in the text.
fn refusal(ending: &Ending, called: &str) -> Response {
    let (status, phrase, cause) = match (ending.status, ending.q850_cause) {
        // We refused the called side's answer (no common codec): the call cannot carry audio.
        (None, Some(65)) => (488, "Not Acceptable Here", 65),
        (status, _) => whatsapp_status_for(status),
    };
    let mut response = Response::new(status, phrase);
    response.headers.push(
        "Reason",
        format!(
            "Q.850;cause={cause};text=\"{}\"",
            format!("{called}: {}", ending.reason).replace(['"', '\\'], "'")
        ),
    );
    response
}

/// The final response to Meta for a PBX leg that failed with `status` (none: no final response
/// came), and its Q.850 cause (ITU-T Q.850; RFC 3398 maps SIP statuses the same way).
pub fn whatsapp_status_for(status: Option<u16>) -> (u16, &'static str, u16) {
    match status {
        Some(486) | Some(600) => (486, "Busy Here", 17),
        Some(404) | Some(410) | Some(484) | Some(604) => (404, "Not Found", 1),
        Some(603) => (603, "Decline", 21),
        Some(480) | Some(408) | Some(487) => (480, "Temporarily Unavailable", 19),
        Some(415) | Some(488) | Some(606) => (488, "Not Acceptable Here", 88),
        // The far side refused our credentials: the trunk's own failure.
        Some(401) | Some(403) | Some(407) => (503, "Service Unavailable", 41),
        Some(s) if s >= 500 => (503, "Service Unavailable", 41),
        Some(_) => (480, "Temporarily Unavailable", 21),
        None => (503, "Service Unavailable", 38),
    }
}
