//! watrunk-media: one call's media. ICE-full and controlling (webrtc-ice), DTLS-SRTP (dtls) or
//! SDES-SRTP keys, and the relay between SRTP toward the far side and plain RTP toward a local UDP
//! sink, with one outbound SSRC and silence until the sink speaks (we send first). All calls share
//! one UDP socket (`MediaSocket`); after set-up their packets take our own allocation-free path
//! (in-place SRTP, no ICE agent in between).
//!
//! The boundary is `Prepared` (our candidates and fingerprint, for the SDP), `MediaPlan` (from
//! watrunk-sdp) and `MediaEvent`s; nothing of webrtc-rs shows through it.

mod batch;
mod consent;
mod demux;
mod dtls_endpoint;
pub mod dtmf;
#[doc(hidden)]
pub mod fuzzing;
mod ice;
mod identity;
pub mod jitter;
mod keys;
mod lite;
mod mux;
mod outbound;
mod quiet;
mod relay;
pub mod restamp;
pub mod ringback;
mod role;
mod session;
pub mod srtp;
pub mod transcode;

pub use demux::{classify, is_rtcp, PacketKind};
pub use identity::Identity;
pub use keys::{dtls_srtp_over_udp, DtlsSecrets, KeyLogHook, KeyMaterial, LoggedKeys, SinkKeys};
pub use lite::answer_check;
pub use mux::MediaSocket;
pub use restamp::SinkPayloads;
pub use session::{
    IceConnected, IceRole, MediaConfig, MediaEvent, MediaSession, Prepared, Sink, Stats,
};
pub use transcode::{Law, PbxCodec, SinkAudio};

/// Whose fault a media failure is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The far side broke the protocol or failed a check (fingerprint, keys, ICE).
    #[error("peer: {0}")]
    Peer(String),
    /// Nothing answered in time.
    #[error("timeout: {0}")]
    Timeout(String),
    /// Our configuration or environment (address not on an interface, port in use).
    #[error("local: {0}")]
    Local(String),
}
