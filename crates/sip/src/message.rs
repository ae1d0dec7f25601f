//! SIP requests and responses: parsing one framed message (RFC 3261 §7, lenient as RFC 4475 asks),
//! syntactic validation of the headers every transaction relies on, and strict printing.

use std::fmt::Write as _;

use crate::header::{Headers, SINGLE_VALUED};
use crate::method::Method;
use crate::uri::Uri;
use crate::values::{CSeq, HeaderError, NameAddr, Via};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// What went wrong with a received message, and what (if anything) to answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub detail: String,
    /// For a request whose start line was readable: its headers, to build the error response from.
    pub request_headers: Option<Box<Headers>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The peer sent a request we can parse far enough to answer 400.
    BadRequest,
    /// SIP version other than 2.0: 505.
    VersionNotSupported,
    /// A response that must be silently discarded (RFC 4475 §3.1.2.5, §3.1.2.19).
    BadResponse,
    /// Not recognisably SIP: discard (datagram) or close (stream).
    NotSip,
}

impl ParseError {
    fn new(kind: ParseErrorKind, detail: impl Into<String>) -> Self {
        ParseError {
            kind,
            detail: detail.into(),
            request_headers: None,
        }
    }

    /// A 400 for a request whose headers are known (e.g. its framing failed after the head parsed).
    pub fn bad_request(detail: impl Into<String>, headers: &Headers) -> Self {
        ParseError {
            kind: ParseErrorKind::BadRequest,
            detail: detail.into(),
            request_headers: Some(Box::new(headers.clone())),
        }
    }

    /// The status to answer with, when the message was a request.
    pub fn status(&self) -> Option<u16> {
        match (self.kind, &self.request_headers) {
            (ParseErrorKind::BadRequest, Some(_)) => Some(400),
            (ParseErrorKind::VersionNotSupported, Some(_)) => Some(505),
            _ => None,
        }
    }

    /// The error response for an unparseable request: status, a reason phrase that says what was wrong,
    /// and whatever of Via/From/To/Call-ID/CSeq the request carried.
    pub fn response(&self) -> Option<Response> {
        let status = self.status()?;
        let headers = self.request_headers.as_deref()?;
        let reason = match status {
            505 => "Version Not Supported".to_string(),
            _ => format!("Bad Request ({})", sanitize_reason(&self.detail)),
        };
        let mut r = Response::new(status, reason);
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            // A value holding a bare CR or LF is not echoed: in our response it would start a header.
            for h in headers.get_all(name).filter(|v| !v.contains(['\r', '\n'])) {
                r.headers.push(name, h);
            }
        }
        Some(r)
    }
}

/// Reason phrases are UTF-8 text on one line; keep ours short and printable.
pub fn sanitize_reason(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(120).collect()
}

impl From<HeaderError> for String {
    fn from(e: HeaderError) -> String {
        e.to_string()
    }
}

/// Finds the end of the header section: the index just past CRLFCRLF.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

impl Message {
    /// Parses one UDP datagram (RFC 3261 §18.3): octets after Content-Length are ignored; a
    /// Content-Length larger than what arrived is an error; without Content-Length the body is the rest.
    pub fn parse_datagram(buf: &[u8]) -> Result<Message, ParseError> {
        let head_end = match find_head_end(buf) {
            Some(e) => e,
            None => {
                // Still try to read the start line and headers, to answer 400 instead of staying silent.
                let err = match Self::parse_head(buf) {
                    Ok(_) => "header section not terminated by an empty line",
                    Err(e) => return Err(e),
                };
                return Err(Self::head_error(buf, err));
            }
        };
        let (mut msg, content_length) = Self::parse_head(&buf[..head_end])?;
        let available = buf.len() - head_end;
        let len = match content_length {
            Some(n) if n > available => {
                return Err(Self::head_error(
                    &buf[..head_end],
                    "Content-Length is larger than the datagram",
                ));
            }
            Some(n) => n,
            None => available,
        };
        msg.set_body(buf[head_end..head_end + len].to_vec());
        Ok(msg)
    }

    /// Parses a message whose extent is already known (a stream frame): `head` ends with CRLFCRLF.
    pub fn parse_framed(head: &[u8], body: &[u8]) -> Result<Message, ParseError> {
        let (mut msg, content_length) = Self::parse_head(head)?;
        if content_length.unwrap_or(0) != body.len() {
            return Err(Self::head_error(
                head,
                "Content-Length does not match the body",
            ));
        }
        msg.set_body(body.to_vec());
        Ok(msg)
    }

    fn head_error(head: &[u8], detail: &str) -> ParseError {
        match Self::parse_head(head) {
            Ok((Message::Request(r), _)) => ParseError::bad_request(detail, &r.headers),
            Ok((Message::Response(_), _)) => ParseError::new(ParseErrorKind::BadResponse, detail),
            Err(e) => e,
        }
    }

    fn set_body(&mut self, body: Vec<u8>) {
        match self {
            Message::Request(r) => r.body = body,
            Message::Response(r) => r.body = body,
        }
    }

    /// Parses the start line and headers (up to and including the empty line, or to the end of `head`),
    /// and validates them. Returns the message with an empty body and the declared Content-Length.
    pub fn parse_head(head: &[u8]) -> Result<(Message, Option<usize>), ParseError> {
        let text = std::str::from_utf8(head)
            .map_err(|_| ParseError::new(ParseErrorKind::NotSip, "header section is not UTF-8"))?;
        let text = text.trim_start_matches("\r\n");
        let (start, rest) = match text.find("\r\n") {
            Some(i) => (&text[..i], &text[i + 2..]),
            None => (text, ""),
        };
        let start_line = StartLine::parse(start)?;
        let headers = parse_header_lines(rest);
        let is_request = matches!(start_line, StartLine::Request { .. });
        let headers = match headers {
            Ok(h) => h,
            Err(detail) if is_request => {
                let partial = parse_header_lines_salvage(rest);
                return Err(ParseError::bad_request(detail, &partial));
            }
            Err(detail) => return Err(ParseError::new(ParseErrorKind::BadResponse, detail)),
        };
        match start_line {
            StartLine::Request {
                method,
                uri,
                version_ok,
            } => {
                if !version_ok {
                    return Err(ParseError {
                        kind: ParseErrorKind::VersionNotSupported,
                        detail: "only SIP/2.0 is supported".into(),
                        request_headers: Some(Box::new(headers)),
                    });
                }
                let uri = match uri {
                    Ok(u) => u,
                    Err(detail) => return Err(ParseError::bad_request(detail, &headers)),
                };
                let content_length = validate_common(&headers, Some(&method))
                    .map_err(|d| ParseError::bad_request(d, &headers))?;
                Ok((
                    Message::Request(Request {
                        method,
                        uri,
                        headers,
                        body: Vec::new(),
                    }),
                    content_length,
                ))
            }
            StartLine::Response { status, reason } => {
                let content_length = validate_common(&headers, None)
                    .map_err(|d| ParseError::new(ParseErrorKind::BadResponse, d))?;
                Ok((
                    Message::Response(Response {
                        status,
                        reason,
                        headers,
                        body: Vec::new(),
                    }),
                    content_length,
                ))
            }
        }
    }

    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    pub fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => &mut r.headers,
            Message::Response(r) => &mut r.headers,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }
}

enum StartLine {
    Request {
        method: Method,
        uri: Result<Uri, String>,
        version_ok: bool,
    },
    Response {
        status: u16,
        reason: String,
    },
}

impl StartLine {
    fn parse(line: &str) -> Result<StartLine, ParseError> {
        if let Some(rest) = strip_prefix_ci(line, "SIP/") {
            // Status-Line: SIP-Version SP Status-Code SP Reason-Phrase (the phrase may be empty).
            let (version, rest) = rest.split_once(' ').ok_or_else(|| {
                ParseError::new(ParseErrorKind::BadResponse, "status line without a code")
            })?;
            if version != "2.0" {
                return Err(ParseError::new(
                    ParseErrorKind::BadResponse,
                    "response version is not SIP/2.0",
                ));
            }
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            let status = (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
                .then(|| code.parse::<u16>().ok())
                .flatten()
                .filter(|c| (100..=699).contains(c))
                .ok_or_else(|| {
                    ParseError::new(ParseErrorKind::BadResponse, "status code outside 100-699")
                })?;
            return Ok(StartLine::Response {
                status,
                reason: reason.to_string(),
            });
        }
        // Request-Line: Method SP Request-URI SP SIP-Version. Extra spaces between and after the elements
        // are tolerated (RFC 4475 §3.1.2.9/§3.1.2.10 allow this liberal reading); whitespace inside the
        // Request-URI is not (§3.1.2.8).
        let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
        if words.len() < 3 {
            return Err(ParseError::new(
                ParseErrorKind::NotSip,
                "not a SIP request or status line",
            ));
        }
        let method = Method::parse(words[0])
            .ok_or_else(|| ParseError::new(ParseErrorKind::NotSip, "invalid method token"))?;
        let version_ok = match strip_prefix_ci(words[words.len() - 1], "SIP/") {
            Some("2.0") => true,
            Some(v) if is_version_number(v) => false,
            _ => {
                return Err(ParseError::new(
                    ParseErrorKind::NotSip,
                    "request line without a SIP version",
                ))
            }
        };
        let uri = match &words[1..words.len() - 1] {
            [uri] => Uri::parse(uri).map_err(|e| format!("invalid Request-URI: {e}")),
            _ => Err("Request-URI contains whitespace".to_string()),
        };
        Ok(StartLine::Request {
            method,
            uri,
            version_ok,
        })
    }
}

fn is_version_number(v: &str) -> bool {
    v.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then(|| &s[prefix.len()..])
}

/// Splits the header block into unfolded `name: value` lines (RFC 3261 §7.3.1: a line starting with
/// whitespace continues the previous one).
fn parse_header_lines(block: &str) -> Result<Headers, String> {
    let mut headers = Headers::new();
    let mut current: Option<(String, String)> = None;
    for line in block.split("\r\n") {
        if line.is_empty() {
            break;
        }
        // Lines end in CRLF (RFC 3261 §7.3.1): a bare CR or LF would end this header when we print it.
        if line.contains(['\r', '\n']) {
            return Err(format!(
                "bare CR or LF in a header line: {}",
                truncate(line)
            ));
        }
        if line.starts_with([' ', '\t']) {
            match current.as_mut() {
                Some((_, v)) => {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                None => return Err("continuation line before the first header".into()),
            }
            continue;
        }
        if let Some((n, v)) = current.take() {
            headers.push(&n, v.trim().to_string());
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without a colon: {}", truncate(line)))?;
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(crate::method::is_token_char) {
            return Err(format!("invalid header name: {}", truncate(name)));
        }
        current = Some((name.to_string(), value.trim().to_string()));
    }
    if let Some((n, v)) = current {
        headers.push(&n, v);
    }
    Ok(headers)
}

/// Best effort for error responses: every line that looks like `name: value`.
fn parse_header_lines_salvage(block: &str) -> Headers {
    let mut headers = Headers::new();
    for line in block.split("\r\n") {
        if let Some((n, v)) = line.split_once(':') {
            let n = n.trim();
            if !n.is_empty() && n.bytes().all(crate::method::is_token_char) {
                headers.push(n, v.trim().to_string());
            }
        }
    }
    headers
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Checks the headers every request and response must carry well-formed (RFC 3261 §8.1.1) and returns
/// the Content-Length. `method` is the request's method, or None for a response.
fn validate_common(h: &Headers, method: Option<&Method>) -> Result<Option<usize>, String> {
    for name in SINGLE_VALUED {
        let mut values = h.get_all(name);
        if let Some(first) = values.next() {
            // Identical repeats are tolerated (Meta's doc samples carry them); different values are not.
            if values.any(|v| v != first) {
                return Err(format!("several different {name} values"));
            }
        }
    }
    for name in ["To", "From", "Call-ID", "CSeq"] {
        if !h.contains(name) {
            return Err(format!("missing {name}"));
        }
    }
    if !h.contains("Via") {
        return Err("missing Via".into());
    }
    for v in h.values("Via") {
        Via::parse(v)?;
    }
    NameAddr::parse(h.get("From").unwrap_or_default(), "From")?;
    NameAddr::parse(h.get("To").unwrap_or_default(), "To")?;
    let call_id = h.get("Call-ID").unwrap_or_default();
    if call_id.is_empty() || call_id.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err("invalid Call-ID".into());
    }
    let cseq = CSeq::parse(h.get("CSeq").unwrap_or_default())?;
    if let Some(m) = method {
        if &cseq.method != m && *m != Method::ACK && *m != Method::CANCEL {
            return Err("CSeq method does not match the request method".into());
        }
        if (*m == Method::ACK || *m == Method::CANCEL) && &cseq.method != m {
            return Err("CSeq method does not match the request method".into());
        }
    }
    if let Some(mf) = h.get("Max-Forwards") {
        if mf.is_empty() || mf.len() > 10 || !mf.bytes().all(|b| b.is_ascii_digit()) {
            return Err("invalid Max-Forwards".into());
        }
    }
    match h.get("Content-Length") {
        None => Ok(None),
        Some(cl) if !cl.is_empty() && cl.len() <= 10 && cl.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(cl.parse().map_err(|_| "invalid Content-Length")?))
        }
        Some(_) => Err("invalid Content-Length".into()),
    }
}

fn write_headers(out: &mut String, headers: &Headers, body_len: usize) {
    for h in headers.iter().filter(|h| !h.name.is("Content-Length")) {
        let _ = write!(out, "{}: {}\r\n", h.name, h.value);
    }
    let _ = write!(out, "Content-Length: {body_len}\r\n\r\n");
}

/// Typed views of the headers every request and response carries (both types share them).
macro_rules! core_header_accessors {
    () => {
        pub fn top_via(&self) -> Option<Via> {
            self.headers
                .values("Via")
                .next()
                .and_then(|v| Via::parse(v).ok())
        }

        pub fn cseq(&self) -> Option<CSeq> {
            self.headers.get("CSeq").and_then(|v| CSeq::parse(v).ok())
        }

        pub fn call_id(&self) -> Option<&str> {
            self.headers.get("Call-ID")
        }

        pub fn from(&self) -> Option<NameAddr> {
            self.headers
                .get("From")
                .and_then(|v| NameAddr::parse(v, "From").ok())
        }

        pub fn to(&self) -> Option<NameAddr> {
            self.headers
                .get("To")
                .and_then(|v| NameAddr::parse(v, "To").ok())
        }
    };
}

impl Request {
    pub fn new(method: Method, uri: Uri) -> Self {
        Request {
            method,
            uri,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("{} {} SIP/2.0\r\n", self.method, self.uri);
        write_headers(&mut s, &self.headers, self.body.len());
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    core_header_accessors!();

    pub fn max_forwards(&self) -> Option<u32> {
        self.headers
            .get("Max-Forwards")
            .map(|v| v.parse().unwrap_or(u32::MAX))
    }
}

impl Response {
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Response {
            status,
            reason: reason.into(),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// A response to `req` per RFC 3261 §8.2.6.2: Via (all, in order), From, Call-ID and CSeq copied
    /// exactly; To copied with `to_tag` added when the request had none.
    pub fn to_request(
        req: &Request,
        status: u16,
        reason: impl Into<String>,
        to_tag: Option<&str>,
    ) -> Self {
        let mut r = Response::new(status, reason);
        r.headers.copy_from(&req.headers, "Via");
        r.headers.copy_from(&req.headers, "From");
        let to = req.headers.get("To").unwrap_or_default();
        match (to_tag, req.to().and_then(|t| t.tag().map(str::to_string))) {
            (Some(tag), None) if status > 100 => {
                r.headers.push("To", crate::values::with_tag(to, tag))
            }
            _ => r.headers.push("To", to.to_string()),
        }
        r.headers.copy_from(&req.headers, "Call-ID");
        r.headers.copy_from(&req.headers, "CSeq");
        r
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("SIP/2.0 {} {}\r\n", self.status, self.reason);
        write_headers(&mut s, &self.headers, self.body.len());
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    core_header_accessors!();
}

/// Default reason phrases (RFC 3261 §21 and extensions).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        603 => "Decline",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:user@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:user@example.com>\r\nFrom: <sip:c@example.com>;tag=1\r\nCall-ID: a@b\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn print_then_parse_is_stable() {
        let m = Message::parse_datagram(OPTIONS).unwrap();
        let again = Message::parse_datagram(&m.to_bytes()).unwrap();
        assert_eq!(m, again);
        assert_eq!(m.to_bytes(), OPTIONS);
    }

    /// Found by the sip_datagram fuzz target: a bare LF inside a header line of a request we
    /// refuse was echoed into our 400, so the line after it (here a second Content-Length) became a
    /// header of our response and a stream peer lost the framing.
    #[test]
    fn a_bare_lf_in_a_refused_request_is_not_echoed_into_the_400() {
        let request = b"INVITE sip:user@example.com SIP/2.0\r\nTo: sip:j_user@example.com\r\nFrom: sip:caller@example.net;tag=234\r\nMax-Forwards: 5\r\nCall-ID: sdp01\r\nCSeq: 8 INVITE\nContent-Length: 150\r\n\r\n";
        let e = Message::parse_datagram(request).unwrap_err();
        let wire = e.response().expect("a 400").to_bytes();
        let text = String::from_utf8(wire).unwrap();
        assert!(text.starts_with("SIP/2.0 400 "));
        assert_eq!(text.matches("\r\nContent-Length:").count(), 1, "{text:?}");
        assert!(!text.replace("\r\n", "").contains('\n'), "{text:?}");
    }

    /// Found by the sip_datagram fuzz target: a bare LF inside a Contact value was accepted, and the
    /// request printed again carried `L:0` as a header of its own next to its Content-Length.
    #[test]
    fn a_bare_lf_inside_a_header_line_is_refused() {
        let request = b"REGISTER sip:example.com SIP/2.0\r\nTo: sip:user@example.com\r\nFrom: sip:user@example.com;tag=8\r\nMax-Forwards: 70\r\nCall-ID: r@192.0.2.1\r\nCSeq: 1 REGISTER\r\nVia: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\r\nM: <sip:user@example.com> :h\nL:0\r\nContent-Length: 4\r\n\r\nbody";
        let e = Message::parse_datagram(request).unwrap_err();
        assert_eq!(e.status(), Some(400));
        let wire = e.response().expect("a 400").to_bytes();
        assert!(Message::parse_datagram(&wire).is_ok());
    }

    #[test]
    fn datagram_body_rules() {
        let mut short = OPTIONS.to_vec();
        let pos = short
            .windows(17)
            .position(|w| w == b"Content-Length: 0")
            .unwrap();
        short[pos + 16] = b'9';
        let e = Message::parse_datagram(&short).unwrap_err();
        assert_eq!(e.status(), Some(400));
        let mut trailing = OPTIONS.to_vec();
        trailing.extend_from_slice(b"INVITE sip:junk SIP/2.0\r\n");
        let Message::Request(r) = Message::parse_datagram(&trailing).unwrap() else {
            panic!()
        };
        assert!(r.body.is_empty());
    }

    #[test]
    fn error_response_echoes_headers_and_says_why() {
        let bad = b"OPTIONS sip:user@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:user@example.com>\r\nFrom: <sip:c@example.com>;tag=1\r\nCall-ID: a@b\r\nCSeq: 1 INVITE\r\n\r\n";
        let e = Message::parse_datagram(bad).unwrap_err();
        let r = e.response().unwrap();
        assert_eq!(r.status, 400);
        assert!(r.reason.contains("CSeq method"), "{}", r.reason);
        assert_eq!(r.headers.get("Call-ID"), Some("a@b"));
    }

    #[test]
    fn response_start_lines() {
        let ok = b"SIP/2.0 100 \r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:u@e>\r\nFrom: <sip:c@e>;tag=1\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\n\r\n";
        let Message::Response(r) = Message::parse_datagram(ok).unwrap() else {
            panic!()
        };
        assert_eq!((r.status, r.reason.as_str()), (100, ""));
        let big = String::from_utf8_lossy(ok).replace("100 ", "4294967301 Big");
        assert_eq!(
            Message::parse_datagram(big.as_bytes()).unwrap_err().kind,
            ParseErrorKind::BadResponse
        );
    }
}
