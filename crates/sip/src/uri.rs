//! SIP and SIPS URIs (RFC 3261 §19.1, IPv6 references per RFC 5118) and opaque URIs of other schemes.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Domain(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host {
    /// Parses a host as it appears in a URI or a Via sent-by: `[v6]`, IPv4 or a domain name.
    /// Bare (unbracketed) IPv6 is accepted only where `allow_bare_v6` (Via `received`).
    pub fn parse(s: &str, allow_bare_v6: bool) -> Option<Host> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']')?;
            return parse_v6_lenient(inner).map(Host::V6);
        }
        if let Ok(v4) = s.parse::<Ipv4Addr>() {
            return Some(Host::V4(v4));
        }
        if allow_bare_v6 && s.contains(':') {
            return parse_v6_lenient(s).map(Host::V6);
        }
        let valid = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !s.starts_with('.')
            && !s.starts_with('-');
        valid.then(|| Host::Domain(s.to_string()))
    }
}

/// RFC 5118 §4.10: `2001:db8:::192.0.2.1` is valid by RFC 3261's ABNF but not RFC 4291; accept it by
/// dropping the extra colon.
fn parse_v6_lenient(s: &str) -> Option<Ipv6Addr> {
    s.parse().ok().or_else(|| {
        s.contains(":::")
            .then(|| s.replacen(":::", "::", 1).parse().ok())
            .flatten()
    })
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
}

/// A `sip:` or `sips:` URI. The user part is kept as received (escapes and user-part parameters
/// such as Meta's `;tgrp=...` included) so printing reproduces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
    pub headers: Option<String>,
}

impl SipUri {
    pub fn new(user: Option<&str>, host: Host, port: Option<u16>) -> Self {
        SipUri {
            scheme: Scheme::Sip,
            user: user.map(str::to_string),
            password: None,
            host,
            port,
            params: Vec::new(),
            headers: None,
        }
    }

    /// The user part without user-part parameters (`+1555;tgrp=x` gives `+1555`).
    pub fn user_base(&self) -> Option<&str> {
        self.user
            .as_deref()
            .map(|u| u.split(';').next().unwrap_or(u))
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn has_param(&self, name: &str) -> bool {
        self.param(name).is_some()
    }

    pub fn with_param(mut self, name: &str, value: Option<&str>) -> Self {
        self.params
            .push((name.to_string(), value.map(str::to_string)));
        self
    }

    pub fn without_param(&self, name: &str) -> Self {
        let mut u = self.clone();
        u.params.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        u
    }

    fn parse(scheme: Scheme, rest: &str) -> Result<Self, UriError> {
        // '?' may appear in the user part (user-unreserved), and '@' never appears unescaped after the
        // host, so the last '@' separates userinfo from hostport and a '?' after it starts the headers.
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let (hostpart, headers) = match hostpart.split_once('?') {
            Some((m, h)) => (m, Some(h.to_string())),
            None => (hostpart, None),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                // A password would follow the first ':' of the user part, before any user parameter.
                let base_end = ui.find(';').unwrap_or(ui.len());
                match ui[..base_end].find(':') {
                    Some(c) => (
                        Some(format!("{}{}", &ui[..c], &ui[base_end..])),
                        Some(ui[c + 1..base_end].to_string()),
                    ),
                    None => (Some(ui.to_string()), None),
                }
            }
        };
        if let Some(u) = &user {
            if u.is_empty() || !u.bytes().all(is_uri_char) {
                return Err(UriError("invalid character in the user part"));
            }
        }
        let mut pieces = hostpart.split(';');
        let hostport = pieces.next().unwrap_or("");
        let (host, port) = split_hostport(hostport)?;
        let mut params = Vec::new();
        for p in pieces {
            if p.is_empty() {
                return Err(UriError("empty URI parameter"));
            }
            if !p.bytes().all(is_uri_char) {
                return Err(UriError("invalid character in a URI parameter"));
            }
            match p.split_once('=') {
                Some((k, v)) => params.push((k.to_string(), Some(v.to_string()))),
                None => params.push((p.to_string(), None)),
            }
        }
        Ok(SipUri {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 reference.
pub fn split_hostport(s: &str) -> Result<(Host, Option<u16>), UriError> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']').ok_or(UriError("unterminated IPv6 reference"))?;
        let after = &s[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UriError("junk after IPv6 reference")),
        };
        (&s[..=end], port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host = Host::parse(host, false).ok_or(UriError("invalid host"))?;
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(
            p.parse::<u16>()
                .map_err(|_| UriError("port out of range"))?,
        ),
        Some(_) => return Err(UriError("invalid port")),
    };
    Ok((host, port))
}

/// unreserved / escaped / user-unreserved / param-unreserved characters of RFC 3261 §25.1, plus ';' '='
/// inside user parts. Whitespace, quotes and brackets are never allowed.
fn is_uri_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()%&=+$,;?/:[]".contains(&b)
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.scheme {
            Scheme::Sip => "sip:",
            Scheme::Sips => "sips:",
        })?;
        if let Some(user) = &self.user {
            match (&self.password, user.split_once(';')) {
                (Some(pw), Some((base, params))) => write!(f, "{base}:{pw};{params}@")?,
                (Some(pw), None) => write!(f, "{user}:{pw}@")?,
                (None, _) => write!(f, "{user}@")?,
            }
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for (k, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{k}={v}")?,
                None => write!(f, ";{k}")?,
            }
        }
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// Any absolute URI: SIP/SIPS parsed, other schemes (tel:, isbn:, soap.beep: ...) kept opaque.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uri {
    Sip(SipUri),
    Other { scheme: String, rest: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UriError(pub &'static str);

impl Uri {
    pub fn parse(s: &str) -> Result<Uri, UriError> {
        let (scheme, rest) = s.split_once(':').ok_or(UriError("URI has no scheme"))?;
        let scheme_ok = scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !scheme_ok {
            return Err(UriError("invalid URI scheme"));
        }
        if s.bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'<' || b == b'>' || b == b'"')
        {
            return Err(UriError("whitespace, quote or angle bracket inside a URI"));
        }
        if scheme.eq_ignore_ascii_case("sip") {
            SipUri::parse(Scheme::Sip, rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse(Scheme::Sips, rest).map(Uri::Sip)
        } else if rest.is_empty() {
            Err(UriError("empty URI"))
        } else {
            Ok(Uri::Other {
                scheme: scheme.to_string(),
                rest: rest.to_string(),
            })
        }
    }

    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            Uri::Other { .. } => None,
        }
    }

    /// The user part of a sip/sips URI without user-part parameters (`+1555` of `+1555;tgrp=x`).
    pub fn user_base(&self) -> Option<&str> {
        self.as_sip().and_then(SipUri::user_base)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => u.fmt(f),
            Uri::Other { scheme, rest } => write!(f, "{scheme}:{rest}"),
        }
    }
}

/// Decodes %HH escapes once (RFC 3261 §19.1.4: `value%41` is `valueA`, `%2541` is `%41`).
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(s: &str) -> SipUri {
        Uri::parse(s).unwrap().as_sip().unwrap().clone()
    }

    #[test]
    fn user_part_parameters_are_kept() {
        let u = sip("sip:+1234567890;tgrp=wacall;trunk-context=byoc.example.com@sip.example.com;transport=tls");
        assert_eq!(u.user_base(), Some("+1234567890"));
        assert_eq!(u.host, Host::Domain("sip.example.com".into()));
        assert_eq!(u.param("TRANSPORT"), Some(Some("tls")));
        assert_eq!(u.to_string(), "sip:+1234567890;tgrp=wacall;trunk-context=byoc.example.com@sip.example.com;transport=tls");
    }

    #[test]
    fn ipv6_references() {
        assert_eq!(sip("sip:[2001:db8::10]:5070").port, Some(5070));
        assert_eq!(sip("sip:[2001:db8::10:5070]").port, None);
        assert_eq!(
            sip("sip:user@[2001:db8:::192.0.2.1]").host,
            Host::V6("2001:db8::c000:201".parse().unwrap())
        );
        assert!(Uri::parse("sip:2001:db8::10").is_err());
    }

    #[test]
    fn escapes_decode_once() {
        assert_eq!(unescape("value%41"), b"valueA");
        assert_eq!(unescape("%2541"), b"%41");
        assert_eq!(unescape("a%00b"), b"a\0b");
    }

    #[test]
    fn other_schemes_are_opaque() {
        assert!(matches!(
            Uri::parse("soap.beep://192.0.2.103:3002"),
            Ok(Uri::Other { .. })
        ));
        assert!(Uri::parse("<sip:user@example.com>").is_err());
    }
}
