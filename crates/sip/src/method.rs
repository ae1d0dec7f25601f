//! Request methods: the RFC methods (rsip's enum) and extension methods, matched case-sensitively.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Known(KnownMethod),
    /// Any other token, e.g. RFC 4475's `!interesting-Method0123456789_*+`.%indeed'~`.
    Extension(Box<str>),
}

/// rsip's method enum, wrapped so the type can be hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownMethod(pub rsip::Method);

impl std::hash::Hash for KnownMethod {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.0 as u8).hash(state)
    }
}

impl Method {
    pub const INVITE: Method = Method::Known(KnownMethod(rsip::Method::Invite));
    pub const ACK: Method = Method::Known(KnownMethod(rsip::Method::Ack));
    pub const BYE: Method = Method::Known(KnownMethod(rsip::Method::Bye));
    pub const CANCEL: Method = Method::Known(KnownMethod(rsip::Method::Cancel));
    pub const OPTIONS: Method = Method::Known(KnownMethod(rsip::Method::Options));
    pub const REGISTER: Method = Method::Known(KnownMethod(rsip::Method::Register));
    pub const NOTIFY: Method = Method::Known(KnownMethod(rsip::Method::Notify));
    pub const UPDATE: Method = Method::Known(KnownMethod(rsip::Method::Update));
    pub const REFER: Method = Method::Known(KnownMethod(rsip::Method::Refer));
    pub const INFO: Method = Method::Known(KnownMethod(rsip::Method::Info));
    pub const PRACK: Method = Method::Known(KnownMethod(rsip::Method::PRack));

    /// Parses a method token. Methods are case-sensitive (RFC 3261 §7.1): `invite` is an extension.
    pub fn parse(s: &str) -> Option<Method> {
        if s.is_empty() || !s.bytes().all(is_token_char) {
            return None;
        }
        let known = rsip::Method::all().into_iter().find(|m| m.to_string() == s);
        Some(match known {
            Some(m) => Method::Known(KnownMethod(m)),
            None => Method::Extension(s.into()),
        })
    }

    pub fn is_known(&self) -> bool {
        matches!(self, Method::Known(_))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Known(m) => write!(f, "{}", m.0),
            Method::Extension(s) => f.write_str(s),
        }
    }
}

/// `token` of RFC 3261 §25.1.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_case_sensitive() {
        assert_eq!(Method::parse("INVITE"), Some(Method::INVITE));
        assert_eq!(Method::parse("PRACK").unwrap().to_string(), "PRACK");
        assert!(matches!(
            Method::parse("invite"),
            Some(Method::Extension(_))
        ));
        assert!(matches!(
            Method::parse("RE%47IST%45R"),
            Some(Method::Extension(_))
        ));
        assert!(Method::parse("!interesting-Method0123456789_*+`.%indeed'~").is_some());
        assert_eq!(Method::parse("IN VITE"), None);
    }
}
