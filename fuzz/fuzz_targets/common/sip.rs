//! Invariants every SIP target checks on a parsed message or a parse error.

use watrunk_sip::{Message, ParseError};

/// What must survive printing and parsing again.
fn summary(msg: &Message) -> (String, Vec<u8>, Option<String>) {
    let start = match msg {
        Message::Request(r) => format!("{} {}", r.method, r.uri),
        Message::Response(r) => r.status.to_string(),
    };
    let (body, call_id) = match msg {
        Message::Request(r) => (r.body.clone(), r.call_id().map(str::to_string)),
        Message::Response(r) => (r.body.clone(), r.call_id().map(str::to_string)),
    };
    (start, body, call_id)
}

/// A message we parsed, printed as we would send it, parses again (as a datagram and as one stream
/// frame) to the same start line, body and Call-ID.
pub fn check_message(msg: &Message) {
    let wire = msg.to_bytes();
    let again = Message::parse_datagram(&wire)
        .unwrap_or_else(|e| panic!("printed message does not parse again: {e}\n{wire:?}"));
    assert_eq!(
        summary(msg),
        summary(&again),
        "round trip changed the message"
    );
    let mut framer = watrunk_sip::framing::StreamFramer::new(wire.len() + 1);
    framer.push(&wire);
    match framer.next_frame() {
        Ok(Some(watrunk_sip::framing::Frame::Message { head, body })) => {
            assert_eq!(
                head.len() + body.len(),
                wire.len(),
                "printed message framed short"
            );
            let framed = Message::parse_framed(&head, &body)
                .unwrap_or_else(|e| panic!("printed message does not parse framed: {e}"));
            assert_eq!(summary(msg), summary(&framed));
        }
        other => panic!("printed message does not frame: {other:?}"),
    }
}

/// The error response we would send for an unparseable request has a clean status line with that
/// status and frames as exactly one message. (It echoes the request's Via, From, To, Call-ID and
/// CSeq as RFC 3261 §8.2.6.2 wants, so our own strict parser may refuse it: a Via of `SIP/7.0/UDP`.)
pub fn check_error(e: &ParseError) {
    if let Some(resp) = e.response() {
        let status = resp.status;
        assert_eq!(Some(status), e.status());
        let wire = resp.to_bytes();
        let line_end = wire
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("status line");
        let line = &wire[..line_end];
        assert!(
            line.starts_with(format!("SIP/2.0 {status} ").as_bytes()),
            "{line:?}"
        );
        assert!(
            !line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
            "{line:?}"
        );
        let mut framer = watrunk_sip::framing::StreamFramer::new(wire.len() + 1);
        framer.push(&wire);
        assert!(
            matches!(
                framer.next_frame(),
                Ok(Some(watrunk_sip::framing::Frame::Message { .. }))
            ),
            "our error response does not frame: {wire:?}"
        );
        assert_eq!(
            framer.buffered(),
            0,
            "our error response frames short: {wire:?}"
        );
        if let Ok(Message::Response(r)) = Message::parse_datagram(&wire) {
            assert_eq!(r.status, status);
        }
    }
}
