//! Meta's documentation samples (vectors/whatsapp, copied to tests/data/whatsapp) as wire bytes:
//! the normalisation their SOURCES.md describes, shared by every crate's tests and by `watrunk sim`.

/// Turns one of Meta's documentation samples into wire bytes, as vectors/whatsapp/SOURCES.md says:
/// HTML comments and blank lines inside the header block removed, the documentation's indentation
/// removed, `<PLACEHOLDER>` values replaced by a sample BSUID, LF line ends made CRLF, and one
/// Content-Length that matches the body.
pub fn normalize_meta_sample(raw: &str) -> Vec<u8> {
    let comment = regex_lite::Regex::new(r"<!--.*?-->").unwrap();
    let placeholder = regex_lite::Regex::new(r"<[A-Z][A-Z_]*>").unwrap();
    let header_line = regex_lite::Regex::new(r"^\s*[A-Za-z0-9_.!%*+`'~-]+\s*:").unwrap();
    let text = raw.replace("\r\n", "\n");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !(l.contains("<!--") && comment.replace_all(l, "").trim().is_empty()))
        .map(|l| comment.replace_all(l, "").to_string())
        .skip_while(|l| l.trim().is_empty())
        .collect();
    let indent = lines
        .iter()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    for l in lines.iter_mut().skip(1) {
        if l.len() >= indent && l[..indent].trim().is_empty() {
            *l = l[indent..].to_string();
        }
    }
    let mut head = vec![placeholder
        .replace_all(&lines[0], "US.13491208655302741918")
        .to_string()];
    let mut body_start = lines.len();
    for (i, l) in lines.iter().enumerate().skip(1) {
        if l.trim().is_empty() {
            // A blank line ends the header block only when no further header follows it.
            let next_header = lines[i + 1..]
                .iter()
                .find(|n| !n.trim().is_empty())
                .is_some_and(|n| header_line.is_match(n));
            if !next_header {
                body_start = i + 1;
                break;
            }
            continue;
        }
        if !header_line.is_match(l) && !l.starts_with([' ', '\t']) {
            // Doc samples sometimes put a body placeholder right after the headers, with no empty line.
            body_start = i;
            break;
        }
        if !l.to_ascii_lowercase().starts_with("content-length") {
            head.push(
                placeholder
                    .replace_all(l, "US.13491208655302741918")
                    .to_string(),
            );
        }
    }
    let body: Vec<&str> = lines
        .get(body_start..)
        .unwrap_or(&[])
        .iter()
        .map(String::as_str)
        .collect();
    let mut body = body.join("\r\n");
    while body.ends_with("\r\n\r\n") {
        body.truncate(body.len() - 2);
    }
    if !body.is_empty() && !body.ends_with("\r\n") {
        body.push_str("\r\n");
    }
    let mut out = head.join("\r\n");
    out.push_str(&format!("\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    out.into_bytes()
}
