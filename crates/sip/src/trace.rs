//! What `--sip-trace` may show of a message: everything but its secrets. A digest `response` (with
//! the nonce beside it, enough to find a weak password offline), an SDES key (`a=crypto ...
//! inline:KEY`) and an ICE password (`a=ice-pwd`) are replaced by `[masked]`; the rest of the
//! message, its length and its lines are kept as they were.

const MASK: &str = "[masked]";

/// `message` as text for a trace, its secrets masked.
pub fn masked(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("authorization:") || lower.starts_with("proxy-authorization:") {
            mask_param(line, &lower, "response=", &mut out);
        } else if lower.starts_with("a=crypto:") {
            mask_inline_keys(line, &lower, &mut out);
        } else if lower.starts_with("a=ice-pwd:") {
            let end = line.trim_end_matches(['\r', '\n']).len();
            out.push_str("a=ice-pwd:");
            out.push_str(MASK);
            out.push_str(&line[end..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The line with the value of every `name` parameter (quoted or not) masked.
fn mask_param(line: &str, lower: &str, name: &str, out: &mut String) {
    let mut at = 0;
    while let Some(found) = lower[at..].find(name) {
        let param = at + found;
        let value = param + name.len();
        out.push_str(&line[at..value]);
        at = value;
        // A parameter starts after a space or a comma (not `xresponse=`).
        if !lower[..param].ends_with([' ', ',', '\t']) {
            continue;
        }
        let rest = &line[value..];
        let (len, shown) = match rest.strip_prefix('"') {
            Some(quoted) => (
                quoted.find('"').map_or(rest.len(), |end| end + 2),
                "\"[masked]\"",
            ),
            None => (
                rest.find([',', ' ', '\t', ';', '\r', '\n'])
                    .unwrap_or(rest.len()),
                MASK,
            ),
        };
        out.push_str(shown);
        at = value + len;
    }
    out.push_str(&line[at..]);
}

/// An `a=crypto` line with each `inline:` key (up to its `|` lifetime or MKI, or the end) masked.
fn mask_inline_keys(line: &str, lower: &str, out: &mut String) {
    let mut at = 0;
    while let Some(found) = lower[at..].find("inline:") {
        let start = at + found + "inline:".len();
        out.push_str(&line[at..start]);
        let rest = &line[start..];
        let len = rest.find(['|', ';', ' ', '\r', '\n']).unwrap_or(rest.len());
        out.push_str(MASK);
        at = start + len;
    }
    out.push_str(&line[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_nothing_else_changes() {
        let message = "INVITE sip:+15550001111@sip.example.com SIP/2.0\r\n\
            Proxy-Authorization: Digest username=\"15550001111\", realm=\"sip.example.com\", \
            nonce=\"abc\", uri=\"sip:+15550001111@sip.example.com\", response=\"0123456789abcdef\", \
            algorithm=SHA-256, cnonce=\"x\", qop=auth, nc=00000001\r\n\
            authorization: Digest username=\"u\",response=deadbeef,nonce=\"n\"\r\n\
            Content-Type: application/sdp\r\n\r\n\
            v=0\r\n\
            a=ice-ufrag:keepme\r\n\
            a=ice-pwd:s3cretpassword1234567890\r\n\
            a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj|2^31|1:1\r\n\
            a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj\r\n";
        let shown = masked(message.as_bytes());
        for secret in [
            "0123456789abcdef",
            "deadbeef",
            "s3cretpassword",
            "d0RmdmcmVCspeEc3",
            "NzB4d1BINUAvLEw6",
        ] {
            assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
        }
        for kept in [
            "INVITE sip:+15550001111@sip.example.com SIP/2.0\r\n",
            "nonce=\"abc\"",
            "response=\"[masked]\", algorithm=SHA-256, cnonce=\"x\"",
            "response=[masked],nonce=\"n\"",
            "a=ice-ufrag:keepme\r\n",
            "a=ice-pwd:[masked]\r\n",
            "inline:[masked]|2^31|1:1\r\n",
            "AES_CM_128_HMAC_SHA1_32 inline:[masked]\r\n",
        ] {
            assert!(shown.contains(kept), "{kept:?} not in:\n{shown}");
        }
        assert_eq!(shown.lines().count(), message.lines().count());
        let plain = "OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TLS x\r\n\r\n";
        assert_eq!(masked(plain.as_bytes()), plain);
    }
}
