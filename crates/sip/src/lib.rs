//! watrunk-sip: sans-IO SIP for the WhatsApp trunk. Framing, a lenient parser and strict printer,
//! RFC 3261 transactions and dialogs, and digest authentication both ways. No sockets, no clocks:
//! callers pass `now` in and take messages and timers out. The optional `io` feature adds the one
//! tokio driver that `watrunk serve`, `watrunk probe` and `watrunk sim` share: listeners, a task per
//! connection and TLS set-up (it is the only part that touches sockets and the clock).

pub mod dialog;
pub mod digest;
pub mod framing;
pub mod header;
#[cfg(feature = "io")]
pub mod io;
pub mod message;
pub mod method;
pub mod routing;
pub mod samples;
pub mod trace;
pub mod transaction;
pub mod uri;
pub mod validate;
pub mod values;

pub use dialog::{new_tag, retry_with_auth, Dialog, DialogId, DialogState};
pub use header::{Header, HeaderName, Headers};
pub use message::{Message, ParseError, ParseErrorKind, Request, Response};
pub use method::Method;
pub use transaction::{new_branch, Peer, TransactionId, TransactionLayer, Transport};
pub use uri::{Host, SipUri, Uri};
pub use values::{CSeq, NameAddr, Via};
