//! SIP over a stream transport: the octets, cut into chunks of fuzzed sizes, fed to the framer;
//! every frame parsed. Checks that the framer accounts for every octet, that chunking never changes
//! the frames, and that what parses prints and parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use watrunk_sip::framing::{Frame, StreamFramer};
use watrunk_sip::Message;

#[path = "common/sip.rs"]
mod common;

/// Small enough that fuzzed inputs reach the limit.
const MAX_MESSAGE: usize = 4096;

/// The frames until the first error, and whether there was one.
fn run(chunks: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Frame>, bool) {
    let mut framer = StreamFramer::new(MAX_MESSAGE);
    let mut frames = Vec::new();
    let mut fed = 0usize;
    let mut taken = 0usize;
    for chunk in chunks {
        framer.push(chunk);
        fed += chunk.len();
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    taken += match &frame {
                        Frame::Message { head, body } => {
                            assert!(head.ends_with(b"\r\n\r\n"), "head without its CRLFCRLF");
                            assert!(head.len() + body.len() <= MAX_MESSAGE);
                            head.len() + body.len()
                        }
                        Frame::Ping => 4,
                        Frame::Pong => 2,
                    };
                    assert_eq!(
                        taken + framer.buffered(),
                        fed,
                        "framer lost or made up octets"
                    );
                    frames.push(frame);
                }
                Ok(None) => break,
                // The connection is closed.
                Err(_) => return (frames, true),
            }
        }
        assert_eq!(taken + framer.buffered(), fed);
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, wire)) = data.split_first() else {
        return;
    };
    // Chunk sizes from the first octet: 1..=256, varied per chunk.
    let mut sizes = (0usize..).map(|i| 1 + (usize::from(cut).wrapping_mul(i * 7 + 3) % 256));
    let mut rest = wire;
    let mut chunked = std::iter::from_fn(|| {
        if rest.is_empty() {
            return None;
        }
        let n = sizes.next().unwrap_or(1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    });
    let (frames, failed) = run(&mut chunked);
    let (whole, whole_failed) = run(&mut std::iter::once(wire));
    assert_eq!(frames, whole, "chunking changed the frames");
    assert_eq!(
        failed, whole_failed,
        "chunking changed whether framing failed"
    );

    for frame in &frames {
        if let Frame::Message { head, body } = frame {
            match Message::parse_framed(head, body) {
                Ok(msg) => common::check_message(&msg),
                Err(e) => common::check_error(&e),
            }
        }
    }
});
