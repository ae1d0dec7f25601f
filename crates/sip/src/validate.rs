//! What a UAS core checks before acting on a well-formed request (RFC 3261 §8.2.1-§8.2.3), in the RFC's
//! order: method (405/501), Request-URI scheme (416), Require (420), Content-Type (415), Accept (406).
//! Each rejection carries the status, a reason phrase a human can act on, and the headers the RFC asks
//! for (Allow, Unsupported, Accept).

use crate::message::{reason_phrase, Request, Response};
use crate::method::Method;
use crate::uri::Uri;

/// What this endpoint supports. The binary fills it from its configuration.
#[derive(Clone, Debug)]
pub struct UasPolicy {
    pub allowed: Vec<Method>,
    /// Option tags we support (for Require).
    pub supported: Vec<String>,
    /// Body types we understand, lower case (`application/sdp`).
    pub content_types: Vec<String>,
}

impl Default for UasPolicy {
    fn default() -> Self {
        UasPolicy {
            allowed: vec![
                Method::INVITE,
                Method::ACK,
                Method::BYE,
                Method::CANCEL,
                Method::OPTIONS,
            ],
            supported: Vec::new(),
            content_types: vec!["application/sdp".into(), "multipart/mixed".into()],
        }
    }
}

impl UasPolicy {
    pub fn allow_header(&self) -> String {
        self.allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(&'static str, String)>,
}

impl Rejection {
    fn new(status: u16, detail: &str) -> Self {
        let reason = format!("{} ({detail})", reason_phrase(status));
        Rejection {
            status,
            reason,
            headers: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn response(&self, req: &Request, to_tag: Option<&str>) -> Response {
        let mut r = Response::to_request(req, self.status, self.reason.clone(), to_tag);
        for (n, v) in &self.headers {
            r.headers.push(n, v.clone());
        }
        r
    }
}

/// Checks `req` against `policy`. ACK is never rejected (it gets no response).
pub fn check_request(req: &Request, policy: &UasPolicy) -> Result<(), Rejection> {
    if req.method == Method::ACK {
        return Ok(());
    }
    if !req.method.is_known() {
        return Err(
            Rejection::new(501, &format!("method {} is not implemented", req.method))
                .with("Allow", policy.allow_header()),
        );
    }
    if !policy.allowed.contains(&req.method) {
        return Err(
            Rejection::new(405, &format!("{} is not accepted here", req.method))
                .with("Allow", policy.allow_header()),
        );
    }
    if let Uri::Other { scheme, .. } = &req.uri {
        return Err(Rejection::new(
            416,
            &format!("Request-URI scheme {scheme}: is not supported"),
        ));
    }
    if req.method != Method::CANCEL {
        let unsupported: Vec<&str> = req
            .headers
            .values("Require")
            .filter(|tag| {
                !tag.is_empty() && !policy.supported.iter().any(|s| s.eq_ignore_ascii_case(tag))
            })
            .collect();
        if !unsupported.is_empty() {
            return Err(Rejection::new(420, "required extension not supported")
                .with("Unsupported", unsupported.join(", ")));
        }
    }
    if !req.body.is_empty() {
        let ctype = req.headers.get("Content-Type").unwrap_or("");
        let base = media_type(ctype);
        if !policy.content_types.contains(&base) {
            let shown = if base.is_empty() {
                "none"
            } else {
                base.as_str()
            };
            return Err(
                Rejection::new(415, &format!("body type {shown} is not understood"))
                    .with("Accept", policy.content_types.join(", ")),
            );
        }
    }
    if req.method == Method::INVITE && req.headers.contains("Accept") {
        let accepts_sdp = req.headers.values("Accept").any(|a| {
            let t = media_type(a);
            t == "application/sdp" || t == "application/*" || t == "*/*"
        });
        if !accepts_sdp {
            return Err(
                Rejection::new(406, "Accept does not allow application/sdp").with(
                    "Warning",
                    "399 watrunk \"answers carry application/sdp\"".into(),
                ),
            );
        }
    }
    Ok(())
}

/// `Application/SDP ; charset=x` gives `application/sdp`.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn req(extra: &str, method: &str, uri: &str, body: &str) -> Request {
        let raw = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:u@e>\r\nFrom: <sip:c@e>;tag=1\r\nCall-ID: x\r\nCSeq: 1 {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match Message::parse_datagram(raw.as_bytes()).unwrap() {
            Message::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn status(r: &Request) -> Option<u16> {
        check_request(r, &UasPolicy::default())
            .err()
            .map(|e| e.status)
    }

    #[test]
    fn rfc_order_of_checks() {
        assert_eq!(status(&req("", "OPTIONS", "sip:u@e", "")), None);
        assert_eq!(status(&req("", "FOO", "sip:u@e", "")), Some(501));
        assert_eq!(status(&req("", "REGISTER", "sip:e", "")), Some(405));
        assert_eq!(status(&req("", "OPTIONS", "tel:+1555", "")), Some(416));
        assert_eq!(
            status(&req("Require: foo, bar\r\n", "OPTIONS", "sip:u@e", "")),
            Some(420)
        );
        assert_eq!(
            status(&req(
                "Content-Type: text/plain\r\n",
                "INVITE",
                "sip:u@e",
                "hi"
            )),
            Some(415)
        );
        assert_eq!(
            status(&req(
                "Content-Type: application/SDP\r\n",
                "INVITE",
                "sip:u@e",
                "v=0"
            )),
            None
        );
        assert_eq!(
            status(&req("Accept: text/x\r\n", "INVITE", "sip:u@e", "")),
            Some(406)
        );
    }

    #[test]
    fn rejection_carries_required_headers() {
        let r = req("Require: foo\r\n", "OPTIONS", "sip:u@e", "");
        let rej = check_request(&r, &UasPolicy::default()).unwrap_err();
        let resp = rej.response(&r, Some("tt"));
        assert_eq!(resp.headers.get("Unsupported"), Some("foo"));
        assert!(resp.headers.get("To").unwrap().ends_with(";tag=tt"));
        assert!(resp.reason.starts_with("Bad Extension"));
    }
}
