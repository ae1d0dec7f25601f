//! Dialogs (RFC 3261 §12): identity, route set, remote target and CSeq spaces, in-dialog requests
//! (BYE, the ACK for a 2xx), and the UA-core helpers around dialog creation: the UAS's
//! dialog-creating response, which copies Record-Route exactly (WHATSAPP-SIP §4.3), and the UAC's
//! retry after 401/407.

use rand::distributions::Alphanumeric;
use rand::Rng;

use crate::message::{Request, Response};
use crate::method::Method;
use crate::transaction::{new_branch, set_top_via};
use crate::uri::{Scheme, Uri};
use crate::values::NameAddr;

/// A fresh From/To tag: 16 random alphanumerics from `rng` (RFC 3261 §19.3 asks for at least 32
/// random bits).
pub fn new_tag(rng: &mut impl Rng) -> String {
    rng.sample_iter(Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

/// RFC 3261 §12: Call-ID, local tag, remote tag. A remote tag of RFC 2543 peers may be empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

impl DialogId {
    /// For a request we received: (Call-ID, To tag, From tag). `None` without a To tag (no dialog).
    pub fn of_incoming_request(req: &Request) -> Option<DialogId> {
        Some(DialogId {
            call_id: req.call_id()?.to_string(),
            local_tag: req.to()?.tag()?.to_string(),
            remote_tag: req.from()?.tag().unwrap_or_default().to_string(),
        })
    }

    /// For a response to a request we sent: (Call-ID, From tag, To tag). `None` without a To tag.
    pub fn of_response(resp: &Response) -> Option<DialogId> {
        Some(DialogId {
            call_id: resp.call_id()?.to_string(),
            local_tag: resp.from()?.tag()?.to_string(),
            remote_tag: resp.to()?.tag()?.to_string(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Uac,
    Uas,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogState {
    Early,
    Confirmed,
    Terminated,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("{0} missing or malformed")]
    BadHeader(&'static str),
    #[error("the dialog-creating response has no To tag")]
    NoToTag,
    #[error("local misuse: status {0} does not create a dialog")]
    NotDialogCreating(u16),
    #[error("peer error: the request does not belong to a live dialog")]
    NotThisDialog,
    #[error("peer error: CSeq {received} is lower than the last one, {last} (out of order)")]
    OutOfOrder { received: u32, last: u32 },
    #[error("local misuse: the dialog is terminated")]
    Terminated,
    #[error("local misuse: an ACK answers a 2xx to an INVITE we sent, and we sent none")]
    AckFromUas,
}

impl DialogError {
    /// The status to answer an incoming request with when this error rejects it.
    pub fn status(&self) -> u16 {
        match self {
            DialogError::BadHeader(_) | DialogError::NoToTag => 400,
            DialogError::NotThisDialog | DialogError::Terminated => 481,
            _ => 500,
        }
    }
}

/// One dialog, UAC or UAS side.
///
/// | state | input                                                 | next       |
/// |-------|-------------------------------------------------------|------------|
/// | (new) | 101-199 with a To tag (received as UAC / sent as UAS) | Early      |
/// | (new) | 2xx                                                   | Confirmed  |
/// | Early | 1xx                                                   | Early      |
/// | Early | 2xx to the INVITE (UAC: route set, target from it)    | Confirmed  |
/// | Early | 300-699 to the INVITE                                 | Terminated |
/// | any   | 408 or 481 to an in-dialog request (§12.2.1.2)        | Terminated |
/// | any   | BYE received, or [`Dialog::terminate`]                | Terminated |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    id: DialogId,
    role: Role,
    state: DialogState,
    local_seq: Option<u32>,
    remote_seq: Option<u32>,
    /// From of the requests we send, as a header value with our tag.
    local: String,
    /// To of the requests we send, as a header value with the peer's tag.
    remote: String,
    remote_target: Uri,
    /// Route values exactly as they appeared in Record-Route, in the order we send them.
    route_set: Vec<String>,
    /// The first route when it lacks `lr` (a strict router, RFC 3261 §12.2.1.1).
    strict_first: Option<Uri>,
    secure: bool,
    /// CSeq of the last INVITE we sent in this dialog (the initial one as UAC, or a re-INVITE):
    /// the ACK for its 2xx repeats it.
    invite_seq: Option<u32>,
    /// Authorization / Proxy-Authorization of the INVITE: the ACK for the 2xx repeats them
    /// (§13.2.2.4).
    credentials: Vec<(String, String)>,
}

impl Dialog {
    /// The UAS side, from the INVITE received and the 101-299 response we send (with our To tag).
    pub fn from_uas(invite: &Request, response: &Response) -> Result<Dialog, DialogError> {
        let state = initial_state(response.status)?;
        let to = response.to().ok_or(DialogError::BadHeader("To"))?;
        let from = invite.from().ok_or(DialogError::BadHeader("From"))?;
        let cseq = invite.cseq().ok_or(DialogError::BadHeader("CSeq"))?;
        let remote_target =
            contact_uri(&invite.headers)?.ok_or(DialogError::BadHeader("Contact"))?;
        let route_set: Vec<String> = invite
            .headers
            .values("Record-Route")
            .map(str::to_string)
            .collect();
        Ok(Dialog {
            id: DialogId {
                call_id: invite
                    .call_id()
                    .ok_or(DialogError::BadHeader("Call-ID"))?
                    .to_string(),
                local_tag: to.tag().ok_or(DialogError::NoToTag)?.to_string(),
                remote_tag: from.tag().unwrap_or_default().to_string(),
            },
            role: Role::Uas,
            state,
            local_seq: None,
            remote_seq: Some(cseq.seq),
            local: header(&response.headers, "To")?,
            remote: header(&invite.headers, "From")?,
            remote_target,
            strict_first: strict_first(&route_set)?,
            route_set,
            secure: is_secure(invite),
            invite_seq: None,
            credentials: Vec::new(),
        })
    }

    /// The UAC side, from the INVITE we sent and a 101-299 response with a To tag. A provisional
    /// response without Contact leaves the Request-URI as remote target until one arrives.
    pub fn from_uac(invite: &Request, response: &Response) -> Result<Dialog, DialogError> {
        let state = initial_state(response.status)?;
        let to = response.to().ok_or(DialogError::BadHeader("To"))?;
        let from = invite.from().ok_or(DialogError::BadHeader("From"))?;
        let cseq = invite.cseq().ok_or(DialogError::BadHeader("CSeq"))?;
        let remote_target = match contact_uri(&response.headers)? {
            Some(uri) => uri,
            None if state == DialogState::Early => invite.uri.clone(),
            None => return Err(DialogError::BadHeader("Contact")),
        };
        let route_set = uac_route_set(response);
        let credentials = invite
            .headers
            .iter()
            .filter(|h| h.name.is("Authorization") || h.name.is("Proxy-Authorization"))
            .map(|h| (h.name.to_string(), h.value.clone()))
            .collect();
        Ok(Dialog {
            id: DialogId {
                call_id: invite
                    .call_id()
                    .ok_or(DialogError::BadHeader("Call-ID"))?
                    .to_string(),
                local_tag: from
                    .tag()
                    .ok_or(DialogError::BadHeader("From"))?
                    .to_string(),
                remote_tag: to.tag().ok_or(DialogError::NoToTag)?.to_string(),
            },
            role: Role::Uac,
            state,
            local_seq: Some(cseq.seq),
            remote_seq: None,
            local: header(&invite.headers, "From")?,
            remote: header(&response.headers, "To")?,
            remote_target,
            strict_first: strict_first(&route_set)?,
            route_set,
            secure: is_secure(invite),
            invite_seq: Some(cseq.seq),
            credentials,
        })
    }

    pub fn id(&self) -> &DialogId {
        &self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> DialogState {
        self.state
    }

    pub fn route_set(&self) -> &[String] {
        &self.route_set
    }

    pub fn remote_target(&self) -> &Uri {
        &self.remote_target
    }

    pub fn local_seq(&self) -> Option<u32> {
        self.local_seq
    }

    pub fn remote_seq(&self) -> Option<u32> {
        self.remote_seq
    }

    /// The INVITE went over TLS to a SIPS Request-URI (RFC 3261 §12.1.1, §12.1.2).
    pub fn secure(&self) -> bool {
        self.secure
    }

    pub fn terminate(&mut self) {
        self.state = DialogState::Terminated;
    }

    /// A response in this dialog: received (UAC) or sent by us (UAS). Only the UAC takes the route
    /// set and remote target from it.
    pub fn handle_response(&mut self, resp: &Response) {
        use DialogState::*;
        let to_invite = resp.cseq().is_some_and(|c| c.method == Method::INVITE);
        let uac = self.role == Role::Uac;
        self.state = match (self.state, resp.status) {
            (Terminated, _) => Terminated,
            (_, 408 | 481) => Terminated,
            (Early, 101..=199) => {
                if uac {
                    self.refresh_target(resp);
                }
                Early
            }
            (Early, 200..=299) if to_invite => {
                if uac {
                    self.refresh_target(resp);
                    self.route_set = uac_route_set(resp);
                    self.strict_first = strict_first(&self.route_set).unwrap_or(None);
                }
                Confirmed
            }
            (Early, 300..) if to_invite => Terminated,
            (Confirmed, 200..=299) if to_invite && uac => {
                self.refresh_target(resp);
                Confirmed
            }
            (state, _) => state,
        };
    }

    fn refresh_target(&mut self, resp: &Response) {
        if let Ok(Some(uri)) = contact_uri(&resp.headers) {
            self.remote_target = uri;
        }
    }

    /// Checks an incoming in-dialog request (RFC 3261 §12.2.2) and records its CSeq. On error,
    /// answer with [`DialogError::status`]: 481 for a foreign or ended dialog, 500 for a CSeq out
    /// of order.
    pub fn handle_request(&mut self, req: &Request) -> Result<(), DialogError> {
        if self.state == DialogState::Terminated
            || DialogId::of_incoming_request(req).as_ref() != Some(&self.id)
        {
            return Err(DialogError::NotThisDialog);
        }
        if req.method == Method::ACK || req.method == Method::CANCEL {
            return Ok(());
        }
        let seq = req.cseq().ok_or(DialogError::BadHeader("CSeq"))?.seq;
        if let Some(last) = self.remote_seq {
            if seq < last {
                return Err(DialogError::OutOfOrder {
                    received: seq,
                    last,
                });
            }
        }
        self.remote_seq = Some(seq);
        if req.method == Method::BYE {
            self.state = DialogState::Terminated;
        }
        Ok(())
    }

    /// Our requests in the early dialog (PRACK) used CSeq numbers up to `seq`: the next one goes
    /// above them.
    pub fn advance_local_seq(&mut self, seq: u32) {
        if self.local_seq.is_none_or(|s| s < seq) {
            self.local_seq = Some(seq);
        }
    }

    /// An in-dialog request (RFC 3261 §12.2.1.1) without Via (the transaction layer adds it). ACK
    /// gets the INVITE's CSeq number and credentials; any other method the next local CSeq. For
    /// CANCEL use [`crate::transaction::build_cancel`].
    pub fn create_request(&mut self, method: Method) -> Result<Request, DialogError> {
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        let seq = if method == Method::ACK {
            self.invite_seq.ok_or(DialogError::AckFromUas)?
        } else {
            // RFC 3261 §8.1.1.5 only asks for less than 2^31; a UAS starts its own space at 1.
            let next = self.local_seq.map_or(1, |s| s.wrapping_add(1));
            self.local_seq = Some(next);
            if method == Method::INVITE {
                self.invite_seq = Some(next);
            }
            next
        };
        let (uri, routes) = match &self.strict_first {
            None => (self.remote_target.clone(), self.route_set.clone()),
            Some(first) => {
                let mut routes = self.route_set[1..].to_vec();
                routes.push(format!("<{}>", self.remote_target));
                (first.clone(), routes)
            }
        };
        let mut r = Request::new(method.clone(), uri);
        r.headers.push("Max-Forwards", "70");
        r.headers.push("From", self.local.clone());
        r.headers.push("To", self.remote.clone());
        r.headers.push("Call-ID", self.id.call_id.clone());
        r.headers.push("CSeq", format!("{seq} {method}"));
        for route in routes {
            r.headers.push("Route", route);
        }
        if method == Method::ACK {
            for (name, value) in &self.credentials {
                r.headers.push(name, value.clone());
            }
        }
        Ok(r)
    }
}

fn initial_state(status: u16) -> Result<DialogState, DialogError> {
    match status {
        101..=199 => Ok(DialogState::Early),
        200..=299 => Ok(DialogState::Confirmed),
        s => Err(DialogError::NotDialogCreating(s)),
    }
}

fn header(h: &crate::header::Headers, name: &'static str) -> Result<String, DialogError> {
    h.get(name)
        .map(str::to_string)
        .ok_or(DialogError::BadHeader(name))
}

fn contact_uri(h: &crate::header::Headers) -> Result<Option<Uri>, DialogError> {
    match h.values("Contact").next() {
        None => Ok(None),
        Some(v) => NameAddr::parse(v, "Contact")
            .map(|n| Some(n.uri))
            .map_err(|_| DialogError::BadHeader("Contact")),
    }
}

fn uac_route_set(resp: &Response) -> Vec<String> {
    let mut routes: Vec<String> = resp
        .headers
        .values("Record-Route")
        .map(str::to_string)
        .collect();
    routes.reverse();
    routes
}

/// The Request-URI for a strict first route: its URI without the parameters and headers a
/// Request-URI may not carry (RFC 3261 §19.1.1: `method`, headers).
fn strict_first(route_set: &[String]) -> Result<Option<Uri>, DialogError> {
    let Some(first) = route_set.first() else {
        return Ok(None);
    };
    let addr = NameAddr::parse(first, "Record-Route")
        .map_err(|_| DialogError::BadHeader("Record-Route"))?;
    Ok(match addr.uri {
        Uri::Sip(u) if u.has_param("lr") => None,
        Uri::Sip(u) => {
            let mut u = u.without_param("method");
            u.headers = None;
            Some(Uri::Sip(u))
        }
        other => Some(other),
    })
}

fn is_secure(invite: &Request) -> bool {
    matches!(&invite.uri, Uri::Sip(u) if u.scheme == Scheme::Sips)
        && invite.top_via().is_some_and(|v| v.transport == "TLS")
}

impl Response {
    /// A dialog-creating response (101-299) to `request` (RFC 3261 §12.1.1): the copies of
    /// §8.2.6.2, our To tag, every Record-Route line copied exactly and in order (WHATSAPP-SIP
    /// §4.3: Meta's ACK is lost otherwise), and `contact` as the Contact value (e.g.
    /// `<sip:+1555@host;transport=tls>`).
    pub fn dialog_response(
        request: &Request,
        status: u16,
        reason: impl Into<String>,
        to_tag: &str,
        contact: &str,
    ) -> Response {
        let mut r = Response::to_request(request, status, reason, Some(to_tag));
        r.headers.copy_from(&request.headers, "Record-Route");
        r.headers.push("Contact", contact.to_string());
        r
    }
}

/// The request to send after a 401/407 (RFC 3261 §22.2): same Call-ID, From (tag), To and body, the
/// credentials header (`Authorization` or `Proxy-Authorization`) replacing any earlier one, CSeq +
/// 1 and a new branch in the top Via (a request without Via gets its Via from the transaction
/// layer).
pub fn retry_with_auth(
    original: &Request,
    header_name: &str,
    header_value: &str,
    rng: &mut impl Rng,
) -> Request {
    let mut r = original.clone();
    r.headers.remove(header_name);
    r.headers.push(header_name, header_value.to_string());
    if let Some(mut cseq) = r.cseq() {
        cseq.seq = cseq.seq.wrapping_add(1);
        r.headers.set("CSeq", cseq.to_string());
    }
    if let Some(mut via) = r.top_via() {
        let branch = new_branch(rng);
        match via
            .params
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case("branch"))
        {
            Some((_, v)) => *v = Some(branch),
            None => via.params.push(("branch".into(), Some(branch))),
        }
        set_top_via(&mut r.headers, &via);
    }
    r
}
