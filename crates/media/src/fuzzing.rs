//! Entry points for the fuzz targets in `fuzz/` (not a stable API): the parts of the per-packet
//! path that are private to the crate, reached without copying them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::relay::InboundRoute;
use crate::srtp::SrtpContext;

/// Our ufrag from the USERNAME of a STUN request, as the media socket routes it.
pub fn stun_username_ufrag(packet: &[u8]) -> Option<String> {
    crate::mux::stun_username_ufrag(packet)
}

/// The ICE-lite answer to a connectivity check (and whether it nominates).
pub fn answer_check(
    packet: &[u8],
    from: SocketAddr,
    username: &str,
    password: &str,
) -> Option<(Vec<u8>, bool)> {
    crate::lite::answer_check(packet, from, username, password)
}

/// A call's inbound fast path (SRTP in, RTP to a sink), as the media socket's reader runs it.
pub struct Inbound {
    route: InboundRoute,
}

impl Inbound {
    /// `app` is the call's local socket and `sink` where it sends (nothing needs to listen).
    /// Needs a tokio runtime for `app`.
    pub fn new(
        srtp: SrtpContext,
        app: Arc<tokio::net::UdpSocket>,
        sink: SocketAddr,
        local_ssrc: u32,
    ) -> Inbound {
        Inbound {
            route: InboundRoute::bare(srtp, app, sink, local_ssrc),
        }
    }

    /// One packet from the far side (first octet 128-191).
    pub fn handle(&mut self, packet: &mut [u8]) {
        self.route.handle(packet, Instant::now());
    }

    /// Packets accepted and rejected so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.route.counters.packets.load(Relaxed),
            self.route.counters.rejected.load(Relaxed),
        )
    }
}
