//! The driver under the sans-IO core, behind the `io` feature: sockets, one task per stream
//! connection (read → framer → the owner's queue; the owner's queue → write), and TLS set-up for
//! both directions. Protocol decisions stay with whoever reads the queue.

pub mod throttle;
pub mod tls;
pub mod transport;
