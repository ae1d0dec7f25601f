//! Transaction keys: how a message finds its transaction (RFC 3261 §17.1.3, §17.2.3, §9.2), and how
//! an ACK for a 2xx finds the INVITE it acknowledges.

use crate::message::{Request, Response};
use crate::method::Method;

/// Server side (RFC 3261 §17.2.3). ACK is keyed as INVITE so it finds the INVITE transaction;
/// CANCEL is keyed as CANCEL (its own transaction) and finds the INVITE it cancels through
/// `with_method`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum ServerKey {
    /// The branch carries the magic cookie: branch, sent-by and method identify the transaction.
    Branch {
        branch: String,
        host: String,
        port: Option<u16>,
        method: Method,
    },
    /// RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq number, top Via and method. The To tag
    /// is not compared: we are one UAS, so the only To tag an ACK can carry is the one we sent.
    Legacy {
        request_uri: String,
        from_tag: Option<String>,
        call_id: String,
        seq: u32,
        top_via: String,
        method: Method,
    },
}

impl ServerKey {
    pub fn of(req: &Request) -> Option<ServerKey> {
        let via = req.top_via()?;
        let cseq = req.cseq()?;
        let method = if req.method == Method::ACK {
            Method::INVITE
        } else {
            req.method.clone()
        };
        Some(match via.rfc3261_branch() {
            Some(branch) => ServerKey::Branch {
                branch: branch.to_string(),
                host: via.host.to_string().to_ascii_lowercase(),
                port: via.port,
                method,
            },
            None => ServerKey::Legacy {
                request_uri: req.uri.to_string(),
                from_tag: req.from().and_then(|f| f.tag().map(str::to_string)),
                call_id: req.call_id()?.to_string(),
                seq: cseq.seq,
                top_via: via.to_string(),
                method,
            },
        })
    }

    pub fn with_method(&self, m: Method) -> ServerKey {
        let mut k = self.clone();
        match &mut k {
            ServerKey::Branch { method, .. } | ServerKey::Legacy { method, .. } => *method = m,
        }
        k
    }
}

/// Client side (RFC 3261 §17.1.3): the top Via branch and the CSeq method.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ClientKey {
    pub branch: String,
    pub method: Method,
}

impl ClientKey {
    pub fn of_request(req: &Request) -> Option<ClientKey> {
        Some(ClientKey {
            branch: req.top_via()?.branch()?.to_string(),
            method: req.method.clone(),
        })
    }

    pub fn of_response(resp: &Response) -> Option<ClientKey> {
        Some(ClientKey {
            branch: resp.top_via()?.branch()?.to_string(),
            method: resp.cseq()?.method,
        })
    }
}

/// An ACK for a 2xx has a branch of its own (RFC 3261 §8.1.1.7), so it is matched to the INVITE by
/// Call-ID, CSeq number and the To tag of our 2xx.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct AckKey {
    pub call_id: String,
    pub seq: u32,
    pub to_tag: String,
}

impl AckKey {
    pub fn of_request(req: &Request) -> Option<AckKey> {
        Some(AckKey {
            call_id: req.call_id()?.to_string(),
            seq: req.cseq()?.seq,
            to_tag: req.to()?.tag()?.to_string(),
        })
    }

    pub fn of_response(resp: &Response) -> Option<AckKey> {
        Some(AckKey {
            call_id: resp.call_id()?.to_string(),
            seq: resp.cseq()?.seq,
            to_tag: resp.to()?.tag()?.to_string(),
        })
    }
}
