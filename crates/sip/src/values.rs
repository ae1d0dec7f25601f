//! Typed views of the header values the SIP core relies on: Via, name-addr (From/To/Contact/Route),
//! CSeq and generic `;param` lists. Parsing is lenient about whitespace (RFC 4475 §3.1.1.1) and strict
//! about structure.

use std::fmt;

use crate::method::{is_token_char, Method};
use crate::uri::{split_hostport, Host, Uri};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{header}: {problem}")]
pub struct HeaderError {
    pub header: &'static str,
    pub problem: &'static str,
}

fn err(header: &'static str, problem: &'static str) -> HeaderError {
    HeaderError { header, problem }
}

pub type Params = Vec<(String, Option<String>)>;

pub fn param<'a>(params: &'a Params, name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

/// Parses `;a=b;c;d="quoted"` (the text after the main value). Whitespace around `;` and `=` is allowed.
fn parse_params(s: &str, header: &'static str) -> Result<Params, HeaderError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let s = s
        .strip_prefix(';')
        .ok_or(err(header, "junk before parameters"))?;
    let mut out = Vec::new();
    for p in split_outside_quotes(s, b';') {
        let p = p.trim();
        if p.is_empty() {
            return Err(err(header, "empty parameter"));
        }
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (p, None),
        };
        if k.is_empty() || !k.bytes().all(is_token_char) {
            return Err(err(header, "invalid parameter name"));
        }
        if let Some(v) = v {
            let ok = if v.starts_with('"') {
                v.len() >= 2 && v.ends_with('"')
            } else {
                !v.is_empty() && v.bytes().all(|b| is_token_char(b) || b":[]".contains(&b))
            };
            if !ok {
                return Err(err(header, "invalid parameter value"));
            }
        }
        out.push((k.to_string(), v.map(str::to_string)));
    }
    Ok(out)
}

fn split_outside_quotes(s: &str, sep: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut in_quote, mut escaped) = (0, false, false);
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if escaped {
            escaped = false;
        } else if b == b'\\' && in_quote {
            escaped = true;
        } else if b == b'"' {
            in_quote = !in_quote;
        } else if b == sep && !in_quote {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

fn write_params(f: &mut fmt::Formatter<'_>, params: &Params) -> fmt::Result {
    for (k, v) in params {
        match v {
            Some(v) => write!(f, ";{k}={v}")?,
            None => write!(f, ";{k}")?,
        }
    }
    Ok(())
}

/// One Via value: `SIP/2.0/TLS host:port;branch=...;received=...;rport`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// Upper-cased transport token (UDP, TCP, TLS, SCTP, WS or an unknown token).
    pub transport: String,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
}

/// RFC 3261 §8.1.1.7: branches starting with this cookie are unique per transaction.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

impl Via {
    pub fn parse(s: &str) -> Result<Via, HeaderError> {
        const H: &str = "Via";
        let (proto, rest) = match s.find(';') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        let mut parts = proto.splitn(3, '/');
        let name = parts.next().unwrap_or("").trim();
        let version = parts
            .next()
            .ok_or(err(H, "missing protocol version"))?
            .trim();
        let tail = parts.next().ok_or(err(H, "missing transport"))?.trim();
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return Err(err(H, "protocol is not SIP/2.0"));
        }
        let mut words = tail.split_ascii_whitespace();
        let transport = words.next().ok_or(err(H, "missing transport"))?;
        if !transport.bytes().all(is_token_char) {
            return Err(err(H, "invalid transport"));
        }
        let sent_by: String = words.collect();
        if sent_by.is_empty() {
            return Err(err(H, "missing sent-by"));
        }
        let (host, port) = split_hostport(&sent_by).map_err(|_| err(H, "invalid sent-by"))?;
        let params = parse_params(rest, H)?;
        if let Some(Some(r)) = param(&params, "received") {
            let r = r.trim_matches('"');
            Host::parse(r, true).ok_or(err(H, "invalid received address"))?;
        }
        match param(&params, "rport") {
            Some(Some(p)) if p.parse::<u16>().is_err() => return Err(err(H, "invalid rport")),
            _ => {}
        }
        if let Some(None) = param(&params, "branch") {
            return Err(err(H, "branch without a value"));
        }
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    pub fn new(transport: &str, host: Host, port: Option<u16>, branch: &str) -> Via {
        Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params: vec![("branch".into(), Some(branch.into()))],
        }
    }

    pub fn branch(&self) -> Option<&str> {
        param(&self.params, "branch").flatten()
    }

    /// The branch when it carries the RFC 3261 magic cookie and something after it.
    pub fn rfc3261_branch(&self) -> Option<&str> {
        self.branch()
            .filter(|b| b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE))
    }

    pub fn received(&self) -> Option<Host> {
        param(&self.params, "received")
            .flatten()
            .and_then(|r| Host::parse(r.trim_matches('"'), true))
    }

    /// `None`: no rport; `Some(None)`: rport requested; `Some(Some(p))`: filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        param(&self.params, "rport").map(|v| v.and_then(|p| p.parse().ok()))
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write_params(f, &self.params)
    }
}

/// `[display-name] <uri>;params` or `uri;params` (From, To, Contact, Route, Record-Route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: Uri,
    pub params: Params,
}

impl NameAddr {
    pub fn new(uri: Uri) -> Self {
        NameAddr {
            display: None,
            uri,
            params: Vec::new(),
        }
    }

    pub fn parse(s: &str, header: &'static str) -> Result<NameAddr, HeaderError> {
        let s = s.trim();
        let (display, uri, after) = if let Some(rest) = s.strip_prefix('"') {
            let end = closing_quote(rest).ok_or(err(header, "unterminated quoted display name"))?;
            let display = unquote(&rest[..end]);
            let rest = rest[end + 1..].trim_start();
            let rest = rest
                .strip_prefix('<')
                .ok_or(err(header, "quoted display name not followed by <uri>"))?;
            let close = rest.find('>').ok_or(err(header, "missing '>'"))?;
            (Some(display), &rest[..close], &rest[close + 1..])
        } else if let Some(open) = s.find('<') {
            let display = s[..open].trim();
            let display_ok = display
                .bytes()
                .all(|b| is_token_char(b) || b == b' ' || b == b'\t');
            if !display_ok {
                return Err(err(header, "display name has characters that need quoting"));
            }
            let rest = &s[open + 1..];
            let close = rest.find('>').ok_or(err(header, "missing '>'"))?;
            let display = (!display.is_empty()).then(|| display.to_string());
            (display, &rest[..close], &rest[close + 1..])
        } else {
            // addr-spec form: parameters after the URI belong to the header, not the URI.
            match s.find(';') {
                Some(i) => (None, s[..i].trim_end(), &s[i..]),
                None => (None, s, ""),
            }
        };
        let uri = Uri::parse(uri.trim()).map_err(|_| err(header, "invalid URI"))?;
        let params = parse_params(after, header)?;
        Ok(NameAddr {
            display,
            uri,
            params,
        })
    }

    pub fn tag(&self) -> Option<&str> {
        param(&self.params, "tag").flatten()
    }

    pub fn set_tag(&mut self, tag: &str) {
        self.params.retain(|(k, _)| !k.eq_ignore_ascii_case("tag"));
        self.params.push(("tag".into(), Some(tag.into())));
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "\"{}\" ", d.replace('\\', "\\\\").replace('"', "\\\""))?;
        }
        write!(f, "<{}>", self.uri)?;
        write_params(f, &self.params)
    }
}

fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return Some(i);
        }
    }
    None
}

fn unquote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Adds `;tag=` to a From/To header value without re-printing the rest of it.
pub fn with_tag(value: &str, tag: &str) -> String {
    format!("{value};tag={tag}")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(s: &str) -> Result<CSeq, HeaderError> {
        const H: &str = "CSeq";
        let mut words = s.split_ascii_whitespace();
        let num = words.next().ok_or(err(H, "empty"))?;
        let method = words.next().ok_or(err(H, "missing method"))?;
        if words.next().is_some() {
            return Err(err(H, "extra text after the method"));
        }
        if num.len() > 10 || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(H, "sequence number is not a 32-bit number"));
        }
        let seq = num
            .parse::<u32>()
            .map_err(|_| err(H, "sequence number is larger than 2^32-1"))?;
        let method = Method::parse(method).ok_or(err(H, "invalid method"))?;
        Ok(CSeq { seq, method })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_wild_whitespace() {
        let v = Via::parse("SIP  /   2.0 /UDP     192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert_eq!(v.rfc3261_branch(), None);
        let v =
            Via::parse("SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8")
                .unwrap();
        assert_eq!(v.rfc3261_branch(), Some("z9hG4bK9ikj8"));
    }

    #[test]
    fn via_ipv6_received_and_bracketed_sent_by() {
        let v = Via::parse("SIP/2.0/TLS [2a03:2880:f000::1]:5061;received=2a03:2880:f000::1;branch=z9hG4bKabc;rport=4444;alias")
            .unwrap();
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.branch(), Some("z9hG4bKabc"));
        assert_eq!(
            v.received(),
            Some(Host::V6("2a03:2880:f000::1".parse().unwrap()))
        );
        assert_eq!(v.rport(), Some(Some(4444)));
        let v =
            Via::parse("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3")
                .unwrap();
        assert!(v.received().is_some());
    }

    #[test]
    fn via_rejects_empty_params() {
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert!(Via::parse("SIP/7.0/UDP 192.0.2.15").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com> ;  tag = 98asjd8"#,
            "From",
        )
        .unwrap();
        assert_eq!(n.display.as_deref(), Some("J Rosenberg \\\""));
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = NameAddr::parse("sip:caller@example.net;tag=134161461246", "From").unwrap();
        assert_eq!(n.tag(), Some("134161461246"));
        assert!(NameAddr::parse("caller<sip:caller@example.com>;tag=323", "From").is_ok());
        assert!(
            NameAddr::parse("Bell, Alexander <sip:a.g.bell@example.com>;tag=43", "From").is_err()
        );
        assert!(NameAddr::parse(r#""Mr. J. User <sip:j.user@example.com>"#, "From").is_err());
    }

    #[test]
    fn cseq_limits() {
        assert_eq!(CSeq::parse("0009 INVITE").unwrap().seq, 9);
        assert!(CSeq::parse("36893488147419103232 INVITE").is_err());
        assert!(CSeq::parse("4294967296 INVITE").is_err());
        assert_eq!(CSeq::parse("4294967295 INVITE").unwrap().seq, u32::MAX);
    }
}
