//! Header names (compact forms, case-insensitive matching) and the ordered header list of a message.

use std::fmt;

/// Compact forms of RFC 3261 §7.3.3 and later RFCs, mapped to the canonical spelling.
const COMPACT: &[(u8, &str)] = &[
    (b'a', "Accept-Contact"),
    (b'b', "Referred-By"),
    (b'c', "Content-Type"),
    (b'd', "Request-Disposition"),
    (b'e', "Content-Encoding"),
    (b'f', "From"),
    (b'i', "Call-ID"),
    (b'j', "Reject-Contact"),
    (b'k', "Supported"),
    (b'l', "Content-Length"),
    (b'm', "Contact"),
    (b'n', "Identity-Info"),
    (b'o', "Event"),
    (b'r', "Refer-To"),
    (b's', "Subject"),
    (b't', "To"),
    (b'u', "Allow-Events"),
    (b'v', "Via"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
];

/// Canonical spellings we print for well-known headers, whatever the peer wrote.
const CANONICAL: &[&str] = &[
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Expires",
    "From",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "MIME-Version",
    "Organization",
    "Priority",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "Reason",
    "Record-Route",
    "Reply-To",
    "Require",
    "Retry-After",
    "Route",
    "Server",
    "Subject",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
];

/// Headers whose values are comma-separated lists (RFC 3261 §7.3.1) and may be split or joined freely.
/// Authentication headers are not: their parameters are separated by commas.
const LIST_HEADERS: &[&str] = &[
    "Via",
    "Route",
    "Record-Route",
    "Contact",
    "Allow",
    "Supported",
    "Require",
    "Proxy-Require",
    "Unsupported",
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Content-Encoding",
    "Allow-Events",
];

/// Headers that may appear at most once in a request (RFC 3261 §7.3.1, §20).
pub const SINGLE_VALUED: &[&str] = &[
    "Call-ID",
    "CSeq",
    "From",
    "To",
    "Max-Forwards",
    "Content-Length",
    "Content-Type",
];

/// A header name as printed: compact forms expanded, well-known names in canonical case,
/// extension names exactly as received.
#[derive(Clone, Debug, Eq)]
pub struct HeaderName(Box<str>);

impl HeaderName {
    pub fn new(raw: &str) -> Self {
        if raw.len() == 1 {
            let c = raw.as_bytes()[0].to_ascii_lowercase();
            if let Some((_, full)) = COMPACT.iter().find(|(k, _)| *k == c) {
                return HeaderName((*full).into());
            }
        }
        if let Some(canon) = CANONICAL.iter().find(|c| c.eq_ignore_ascii_case(raw)) {
            return HeaderName((*canon).into());
        }
        HeaderName(raw.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is(&self, name: &str) -> bool {
        self.0.eq_ignore_ascii_case(name)
    }

    pub fn is_list(&self) -> bool {
        LIST_HEADERS.iter().any(|h| self.is(h))
    }
}

impl PartialEq for HeaderName {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    /// The value with line folding replaced by single spaces and surrounding whitespace trimmed.
    pub value: String,
}

/// The header list of a message, in wire order. Lookups are case-insensitive and see compact forms
/// under their full names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<Header>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push(Header {
            name: HeaderName::new(name),
            value: value.into(),
        });
    }

    /// Inserts before every existing header (used for Via and Route, which are read top-down).
    pub fn push_front(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(
            0,
            Header {
                name: HeaderName::new(name),
                value: value.into(),
            },
        );
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first header line with this name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.name.is(name))
            .map(|h| h.value.as_str())
    }

    /// Every header line with this name, in order (not split at commas).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| h.name.is(name))
            .map(|h| h.value.as_str())
    }

    /// Every value of a list header, comma-joined lines split, in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name).flat_map(split_list)
    }

    pub fn count(&self, name: &str) -> usize {
        self.0.iter().filter(|h| h.name.is(name)).count()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|h| h.name.is(name))
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|h| !h.name.is(name));
    }

    /// Replaces every line of `name` with one line holding `value`, at the position of the first.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        match self.0.iter().position(|h| h.name.is(name)) {
            Some(pos) => {
                self.0[pos].value = value.into();
                let mut i = 0;
                self.0.retain(|h| {
                    i += 1;
                    i - 1 == pos || !h.name.is(name)
                });
            }
            None => self.push(name, value),
        }
    }

    /// Mutable access to the first line of a header (e.g. to add `received` to the top Via).
    pub fn first_mut(&mut self, name: &str) -> Option<&mut String> {
        self.0
            .iter_mut()
            .find(|h| h.name.is(name))
            .map(|h| &mut h.value)
    }

    /// Copies every line of `name` from `other`, preserving order and exact values.
    pub fn copy_from(&mut self, other: &Headers, name: &str) {
        for h in other.0.iter().filter(|h| h.name.is(name)) {
            self.0.push(h.clone());
        }
    }
}

/// Splits a list header value at commas that are outside quotes and angle brackets.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let bytes = value.as_bytes();
    let (mut start, mut in_quote, mut in_angle, mut escaped) = (0, false, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quote => escaped = true,
            b'"' => in_quote = !in_quote,
            b'<' if !in_quote => in_angle = true,
            b'>' if !in_quote => in_angle = false,
            b',' if !in_quote && !in_angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case_insensitive_names() {
        assert_eq!(HeaderName::new("v").as_str(), "Via");
        assert_eq!(HeaderName::new("I").as_str(), "Call-ID");
        assert_eq!(HeaderName::new("MaX-fOrWaRdS").as_str(), "Max-Forwards");
        assert_eq!(
            HeaderName::new("x-wa_meta-parent-user-id").as_str(),
            "x-wa_meta-parent-user-id"
        );
        assert_eq!(HeaderName::new("cseq"), HeaderName::new("CSeq"));
    }

    #[test]
    fn split_respects_quotes_and_brackets() {
        let v: Vec<_> = split_list(r#""a, \"b" <sip:x@y;p=1,2>;q=1 , <sip:z>"#).collect();
        assert_eq!(v, vec![r#""a, \"b" <sip:x@y;p=1,2>;q=1"#, "<sip:z>"]);
    }

    #[test]
    fn set_replaces_all_lines() {
        let mut h = Headers::new();
        h.push("Content-Length", "1");
        h.push("To", "x");
        h.push("l", "2");
        h.set("content-length", "7");
        assert_eq!(h.count("Content-Length"), 1);
        assert_eq!(h.get("Content-Length"), Some("7"));
    }
}
