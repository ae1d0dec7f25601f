//! SIP over UDP: one datagram parsed. What parses prints and parses again to the same start line,
//! body and Call-ID; the 400/505 we would answer to what does not parse is itself a valid response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use watrunk_sip::Message;

#[path = "common/sip.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    match Message::parse_datagram(data) {
        Ok(msg) => {
            if let Message::Request(r) = &msg {
                assert!(r.body.len() <= data.len());
                let _ = (r.top_via(), r.cseq(), r.from(), r.to(), r.max_forwards());
            }
            common::check_message(&msg);
        }
        Err(e) => common::check_error(&e),
    }
});
