//! Framing SIP on stream transports (TCP, TLS): the header section ends at CRLFCRLF and the body is
//! Content-Length octets (RFC 3261 §18.3). CRLF keep-alives (RFC 5626 §3.5.1) are reported separately.
//! The buffer is bounded: a peer that sends more than `max_message` octets for one message gets an error
//! and the caller closes the connection.

use crate::message::find_head_end;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// One complete message: the header section (with its final CRLFCRLF) and the body.
    Message { head: Vec<u8>, body: Vec<u8> },
    /// CRLFCRLF: the peer pings; answer with a single CRLF.
    Ping,
    /// A lone CRLF: the pong to our ping.
    Pong,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("message exceeds the {limit}-octet limit")]
    TooLarge { limit: usize, head: Option<Vec<u8>> },
    #[error("framing lost: {detail}")]
    /// Content-Length missing, negative, repeated with different values or unreadable: the stream can no
    /// longer be split into messages. `head` is kept so a 400 can be sent before closing.
    Unrecoverable { detail: &'static str, head: Vec<u8> },
}

#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    max_message: usize,
}

impl StreamFramer {
    pub fn new(max_message: usize) -> Self {
        StreamFramer {
            buf: Vec::new(),
            max_message,
        }
    }

    /// Octets received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends received octets. The caller should then call `next_frame` until it returns `Ok(None)`.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        if self.buf.starts_with(b"\r\n\r\n") {
            self.buf.drain(..4);
            return Ok(Some(Frame::Ping));
        }
        if self.buf.starts_with(b"\r\n") {
            // A lone CRLF (pong) cannot be told from the start of a ping until more octets arrive.
            if self.buf.len() < 4 && b"\r\n\r\n".starts_with(&self.buf) {
                return Ok(None);
            }
            self.buf.drain(..2);
            return Ok(Some(Frame::Pong));
        }
        let Some(head_end) = find_head_end(&self.buf) else {
            if self.buf.len() > self.max_message {
                return Err(FramingError::TooLarge {
                    limit: self.max_message,
                    head: None,
                });
            }
            return Ok(None);
        };
        let head = &self.buf[..head_end];
        let content_length = match content_length(head) {
            Ok(n) => n,
            Err(detail) => {
                let head = head.to_vec();
                self.buf.clear();
                return Err(FramingError::Unrecoverable { detail, head });
            }
        };
        if head_end.saturating_add(content_length) > self.max_message {
            let head = head.to_vec();
            self.buf.clear();
            return Err(FramingError::TooLarge {
                limit: self.max_message,
                head: Some(head),
            });
        }
        if self.buf.len() < head_end + content_length {
            return Ok(None);
        }
        let rest = self.buf.split_off(head_end + content_length);
        let mut frame = std::mem::replace(&mut self.buf, rest);
        let body = frame.split_off(head_end);
        Ok(Some(Frame::Message { head: frame, body }))
    }
}

/// Reads Content-Length (or `l`) from a header section, following line folding.
fn content_length(head: &[u8]) -> Result<usize, &'static str> {
    let mut found: Option<Vec<u8>> = None;
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip(1)
        .peekable();
    while let Some(line) = lines.next() {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if !(name.eq_ignore_ascii_case(b"Content-Length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let mut value = trim(&line[colon + 1..]).to_vec();
        while let Some(next) = lines.peek() {
            if next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                value.extend_from_slice(trim(next));
                lines.next();
            } else {
                break;
            }
        }
        let value = trim(&value).to_vec();
        match &found {
            Some(prev) if *prev != value => return Err("several different Content-Length values"),
            _ => found = Some(value),
        }
    }
    let v = found.ok_or("Content-Length is required on stream transports")?;
    let v = v.as_slice();
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return Err("Content-Length is not a non-negative number");
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("Content-Length is not a non-negative number")
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nl: 4\r\n\r\nbody";

    #[test]
    fn frames_split_across_reads_and_pipelined() {
        let mut f = StreamFramer::new(65536);
        let mut wire = MSG.to_vec();
        wire.extend_from_slice(b"\r\n\r\n");
        wire.extend_from_slice(MSG);
        let mut frames = Vec::new();
        for chunk in wire.chunks(3) {
            f.push(chunk);
            while let Some(fr) = f.next_frame().unwrap() {
                frames.push(fr);
            }
        }
        assert_eq!(frames.len(), 3);
        assert!(matches!(&frames[0], Frame::Message { body, .. } if body == b"body"));
        assert_eq!(frames[1], Frame::Ping);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn bad_content_length_loses_framing() {
        let mut f = StreamFramer::new(65536);
        f.push(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -999\r\n\r\nxx");
        assert!(matches!(
            f.next_frame(),
            Err(FramingError::Unrecoverable { .. })
        ));
        let mut f = StreamFramer::new(65536);
        f.push(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nxx");
        assert!(matches!(
            f.next_frame(),
            Err(FramingError::Unrecoverable { .. })
        ));
    }

    #[test]
    fn limit_applies_before_and_after_the_head() {
        let mut f = StreamFramer::new(100);
        f.push(&[b'a'; 101]);
        assert!(matches!(f.next_frame(), Err(FramingError::TooLarge { .. })));
        let mut f = StreamFramer::new(100);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 10485760\r\n\r\n");
        assert!(matches!(
            f.next_frame(),
            Err(FramingError::TooLarge { head: Some(_), .. })
        ));
    }
}
