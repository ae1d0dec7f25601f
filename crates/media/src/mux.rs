//! One UDP socket for the media of every call, and the fast path that relays a call's packets
//! after set-up without the ICE agent.
//!
//! The socket is webrtc-ice's `UDPMux`: until a call is secured, packets are routed to its agent by
//! remote address, or for a first STUN request by the ufrag in USERNAME (the slow path: ICE,
//! consent, DTLS). Once the call's keys exist, its selected remote address gets a route here:
//! RTP and RTCP from that address are unprotected in the receive buffer and sent on to the call's
//! sink by this socket's one reader task (no copy, no allocation, no task hop). The agent then goes,
//! and STUN from that address reaches the call's consent keeper (consent.rs); DTLS records go to
//! the call's slow path, which drops them once the handshake is done.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc_ice::udp_mux::{UDPMux, UDPMuxConn, UDPMuxConnParams, UDPMuxWriter};
use webrtc_util::Conn;

use crate::batch::Batch;
use crate::demux::{classify, PacketKind};
use crate::quiet::{sweep_loop, QuietSinks, SinkClock};
use crate::relay::{InboundRoute, SinkProtect};
use crate::restamp::SinkPayloads;
use crate::role::{RoleConflicts, Verdict};
use crate::transcode::ToSink;

/// Largest datagram we read; anything longer is truncated and fails authentication.
const RECEIVE_MTU: usize = 1500;
const ROUTE_COMMANDS: usize = 256;
const SLOW_PATH_PACKETS: usize = 64;
/// SRTP that comes before the call's keys: kept for the route, the rest dropped.
const EARLY_PACKETS: usize = 16;
/// A consent check each way every few seconds; more than this queued is a flood, dropped.
const CONSENT_PATH_PACKETS: usize = 4;

/// The slow-path key of a call without ICE.
pub(crate) fn plain_key(remote: SocketAddr) -> String {
    format!("plain {remote}")
}

enum RouteCommand {
    Add(SocketAddr, Box<InboundRoute>, Handover),
    Move(SocketAddr, SocketAddr),
    /// The route of this remote address sends to another sink, or in another codec.
    Retarget(SocketAddr, Box<SinkTarget>),
    /// The route of this remote address sends to where its sink's packets come from (symmetric
    /// RTP), nothing else changed.
    Latch(SocketAddr, SocketAddr),
    /// Answered once the route is gone, so a call that ends leaves nothing behind.
    Remove(SocketAddr, tokio::sync::oneshot::Sender<()>),
}

/// A call's slow path: DTLS records for its handshake, and the SRTP that came before its keys.
pub(crate) struct SlowPath {
    pub dtls: mpsc::Receiver<Vec<u8>>,
    pub early: mpsc::Receiver<Vec<u8>>,
}

struct SlowSenders {
    dtls: mpsc::Sender<Vec<u8>>,
    early: mpsc::Sender<Vec<u8>>,
}

/// What a route takes over from its call's slow path: the reader closes the path, runs the early
/// SRTP through the route and installs it in one step, so no packet falls between the two.
pub(crate) struct Handover {
    pub slow_path_key: String,
    pub early: mpsc::Receiver<Vec<u8>>,
}

/// What a route sends to: the sink, its payload types, for a G.711 sink its transcoder, and for a
/// sink that speaks SRTP what protects its packets (`None`: the same keys as before, kept with
/// their state).
pub(crate) struct SinkTarget {
    pub sink: SocketAddr,
    pub payloads: SinkPayloads,
    pub to_sink: Option<Box<ToSink>>,
    pub protect: Option<Option<Box<SinkProtect>>>,
}

/// A packet and its source, boxed: a channel's block of 32 of them lives as long as the call.
pub(crate) type Datagram = Box<(Vec<u8>, SocketAddr)>;

/// What the reader and the agents' connections share.
struct Shared {
    socket: Arc<UdpSocket>,
    local_addr: SocketAddr,
    by_ufrag: Mutex<HashMap<String, UDPMuxConn>>,
    by_address: RwLock<HashMap<SocketAddr, UDPMuxConn>>,
    role_conflicts: RoleConflicts,
    /// Per call (by ufrag, or `plain_key`), where its non-STUN packets go until the fast path takes
    /// them: DTLS records and early SRTP. They bypass the agent, whose per-candidate readers would
    /// drop a packet of the other address family (all its candidates share this one connection).
    /// `None` once the call is routed: what still comes that way is dropped.
    slow_paths: Mutex<HashMap<String, Option<SlowSenders>>>,
    /// Per call (by ufrag) once its agent is gone, where its STUN goes: the consent keeper. A
    /// `UDPMuxConn` reader would hold an 8 KiB buffer per call for a packet every few seconds.
    consent_paths: Mutex<HashMap<String, mpsc::Sender<Datagram>>>,
    routes: AtomicUsize,
}

/// The media socket shared by all calls. Dropping it stops its reader.
pub struct MediaSocket {
    shared: Arc<Shared>,
    commands: mpsc::Sender<RouteCommand>,
    reader: tokio::task::JoinHandle<()>,
    quiet: Arc<QuietSinks>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl MediaSocket {
    /// Binds `addr` (port 0: any). An unspecified IPv6 address takes IPv4 too.
    pub async fn bind(addr: SocketAddr) -> io::Result<Arc<MediaSocket>> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if addr.is_ipv6() {
            socket.set_only_v6(!addr.ip().is_unspecified())?;
        }
        // Room for a burst of every call's packets while the reader is busy.
        let _ = socket.set_recv_buffer_size(4 << 20);
        let _ = socket.set_send_buffer_size(4 << 20);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let socket = Arc::new(UdpSocket::from_std(socket.into())?);
        let local_addr = socket.local_addr()?;
        let shared = Arc::new(Shared {
            socket,
            local_addr,
            by_ufrag: Mutex::default(),
            by_address: RwLock::default(),
            role_conflicts: RoleConflicts::default(),
            slow_paths: Mutex::default(),
            consent_paths: Mutex::default(),
            routes: AtomicUsize::new(0),
        });
        let (commands, commands_rx) = mpsc::channel(ROUTE_COMMANDS);
        let reader = tokio::spawn(read_loop(shared.clone(), commands_rx));
        let quiet = Arc::new(QuietSinks::new());
        let sweeper = tokio::spawn(sweep_loop(quiet.clone()));
        Ok(Arc::new(MediaSocket {
            shared,
            commands,
            reader,
            quiet,
            sweeper,
        }))
    }

    /// The socket for host candidates on `media_ip` (and `media_ip6`: then one dual-stack socket
    /// on every address) at `port` (0: any).
    pub async fn bind_media(
        media_ip: IpAddr,
        media_ip6: Option<IpAddr>,
        port: u16,
    ) -> io::Result<Arc<MediaSocket>> {
        let ip = match media_ip6 {
            Some(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            None => media_ip,
        };
        MediaSocket::bind(SocketAddr::new(ip, port)).await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    pub(crate) fn socket(&self) -> &Arc<UdpSocket> {
        &self.shared.socket
    }

    /// Calls with a fast-path route, and connections plus slow paths of calls on this socket
    /// (idle: 0 and 0).
    pub fn usage(&self) -> (usize, usize) {
        let connections = self.shared.by_ufrag.lock().map(|m| m.len()).unwrap_or(0);
        let slow_paths = self.shared.slow_paths.lock().map(|m| m.len()).unwrap_or(0);
        (
            self.shared.routes.load(Ordering::Relaxed),
            connections + slow_paths,
        )
    }

    /// The destination form of `addr` for this socket (IPv4 peers on a dual-stack socket).
    pub(crate) fn target(&self, addr: SocketAddr) -> SocketAddr {
        match (addr, self.shared.local_addr) {
            (SocketAddr::V4(v4), SocketAddr::V6(_)) => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            _ => addr,
        }
    }

    /// Routes `remote`'s RTP and RTCP to `route` from the next datagram on, after what its call's
    /// slow path kept (`handover`).
    pub(crate) async fn add_route(
        &self,
        remote: SocketAddr,
        route: Box<InboundRoute>,
        handover: Handover,
    ) {
        let _ = self
            .commands
            .send(RouteCommand::Add(remote, route, handover))
            .await;
    }

    pub(crate) async fn move_route(&self, from: SocketAddr, to: SocketAddr) {
        let _ = self.commands.send(RouteCommand::Move(from, to)).await;
    }

    pub(crate) async fn retarget_route(&self, remote: SocketAddr, target: Box<SinkTarget>) {
        let _ = self
            .commands
            .send(RouteCommand::Retarget(remote, target))
            .await;
    }

    pub(crate) async fn latch_route(&self, remote: SocketAddr, sink: SocketAddr) {
        let _ = self.commands.send(RouteCommand::Latch(remote, sink)).await;
    }

    pub(crate) async fn remove_route(&self, remote: SocketAddr) {
        let (done, removed) = tokio::sync::oneshot::channel();
        if self
            .commands
            .send(RouteCommand::Remove(remote, done))
            .await
            .is_ok()
        {
            let _ = removed.await;
        }
    }

    /// The non-STUN packets of the call known by `key` (its ufrag, or `plain_key`) until its fast
    /// path is routed (`add_route`).
    pub(crate) fn slow_path(&self, key: &str) -> SlowPath {
        let (dtls, dtls_rx) = mpsc::channel(SLOW_PATH_PACKETS);
        let (early, early_rx) = mpsc::channel(EARLY_PACKETS);
        self.shared
            .slow_paths
            .lock()
            .expect("slow path map")
            .insert(key.to_string(), Some(SlowSenders { dtls, early }));
        SlowPath {
            dtls: dtls_rx,
            early: early_rx,
        }
    }

    pub(crate) fn drop_slow_path(&self, key: &str) {
        self.shared
            .slow_paths
            .lock()
            .expect("slow path map")
            .remove(key);
    }

    /// The STUN of the call with local `ufrag` (and its source), from now on (consent.rs).
    pub(crate) fn consent_path(&self, ufrag: &str) -> mpsc::Receiver<Datagram> {
        let (tx, rx) = mpsc::channel(CONSENT_PATH_PACKETS);
        self.shared
            .consent_paths
            .lock()
            .expect("consent path map")
            .insert(ufrag.to_string(), tx);
        rx
    }

    /// Tells when the agent with local `ufrag` must take the other ICE role; the passwords check
    /// that the messages saying so are genuine.
    pub(crate) fn watch_role_conflicts(
        &self,
        ufrag: &str,
        password: &str,
        remote_password: &str,
    ) -> mpsc::Receiver<()> {
        self.shared
            .role_conflicts
            .watch(ufrag, password, remote_password)
    }

    pub(crate) fn unwatch_role_conflicts(&self, ufrag: &str) {
        self.shared.role_conflicts.unwatch(ufrag);
    }

    /// A connection for a call without ICE: everything from `remote` that is not on the fast path.
    pub(crate) fn plain_conn(self: &Arc<Self>, remote: SocketAddr) -> Arc<dyn Conn + Send + Sync> {
        let key = plain_key(remote);
        let conn = self.shared.conn_for(&key);
        self.shared
            .by_address
            .write()
            .expect("address map")
            .insert(remote, conn.clone());
        Arc::new(PlainConn {
            inner: conn,
            remote: self.target(remote),
            shared: Arc::downgrade(&self.shared),
            key,
        })
    }
}

impl MediaSocket {
    /// A call's clock in the socket's quiet-sink sweep (quiet.rs).
    pub(crate) fn sink_clock(&self, quiet_after: std::time::Duration) -> Arc<SinkClock> {
        self.quiet.clock(quiet_after)
    }

    /// The connection that takes the STUN for local `ufrag` without an agent: an ICE-lite call's
    /// (lite.rs), or a full one's after set-up (consent.rs).
    pub(crate) fn ufrag_conn(self: &Arc<Self>, ufrag: &str) -> UDPMuxConn {
        self.shared.conn_for(ufrag)
    }

    /// A connected view of `remote` for the ICE-lite call with local `ufrag`: what DTLS writes.
    pub(crate) fn lite_target(
        self: &Arc<Self>,
        ufrag: &str,
        remote: SocketAddr,
    ) -> Arc<dyn Conn + Send + Sync> {
        Arc::new(PlainConn {
            inner: self.shared.conn_for(ufrag),
            remote: self.target(remote),
            shared: Arc::downgrade(&self.shared),
            key: ufrag.to_string(),
        })
    }

    /// Forgets the `ufrag_conn` (and every address) of local `ufrag`, its slow path and its
    /// consent path.
    pub(crate) fn remove_ufrag_conn(&self, ufrag: &str) {
        self.shared.remove_conn(ufrag);
        self.drop_slow_path(ufrag);
        self.shared
            .consent_paths
            .lock()
            .expect("consent path map")
            .remove(ufrag);
    }

    /// Forgets the slow-path connection of a call without ICE.
    pub(crate) fn remove_plain(&self, remote: SocketAddr) {
        self.shared.remove_conn(&plain_key(remote));
        self.drop_slow_path(&plain_key(remote));
    }
}

impl Drop for MediaSocket {
    fn drop(&mut self) {
        self.reader.abort();
        self.sweeper.abort();
    }
}

impl Shared {
    /// The call known by `key` is routed: its slow path's channels go, and what still arrives
    /// that way (a DTLS record after the handshake) is dropped until the call ends.
    fn close_slow_path(&self, key: &str) {
        if let Some(slow) = self.slow_paths.lock().expect("slow path map").get_mut(key) {
            *slow = None;
        }
    }

    fn conn_for(self: &Arc<Self>, key: &str) -> UDPMuxConn {
        let mut by_ufrag = self.by_ufrag.lock().expect("ufrag map");
        by_ufrag
            .entry(key.to_string())
            .or_insert_with(|| {
                UDPMuxConn::new(UDPMuxConnParams {
                    local_addr: self.local_addr,
                    key: key.to_string(),
                    udp_mux: Arc::downgrade(self) as Weak<dyn UDPMuxWriter + Send + Sync>,
                })
            })
            .clone()
    }

    fn remove_conn(&self, key: &str) {
        let removed = self.by_ufrag.lock().expect("ufrag map").remove(key);
        if let Some(conn) = removed {
            let mut by_address = self.by_address.write().expect("address map");
            by_address.retain(|_, c| c.key() != key);
            conn.close();
        }
    }

    /// The slow path: the agent (or plain connection) this packet belongs to.
    fn conn_of(&self, packet: &[u8], from: SocketAddr) -> Option<UDPMuxConn> {
        if let Some(conn) = self.by_address.read().expect("address map").get(&from) {
            return Some(conn.clone());
        }
        let ufrag = stun_username_ufrag(packet)?;
        self.by_ufrag
            .lock()
            .expect("ufrag map")
            .get(ufrag.as_str())
            .cloned()
    }
}

/// Our ufrag from the USERNAME (`ours:theirs`) of a STUN request.
pub(crate) fn stun_username_ufrag(packet: &[u8]) -> Option<String> {
    if !stun::message::is_message(packet) {
        return None;
    }
    let mut message = stun::message::Message::new();
    message.unmarshal_binary(packet).ok()?;
    let username = message.get(stun::attributes::ATTR_USERNAME).ok()?;
    let username = String::from_utf8(username).ok()?;
    username.split(':').next().map(str::to_string)
}

async fn read_loop(shared: Arc<Shared>, mut commands: mpsc::Receiver<RouteCommand>) {
    let mut routes: HashMap<SocketAddr, Box<InboundRoute>> = HashMap::new();
    let mut batch = Batch::<RECEIVE_MTU>::new();
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => {
                match command {
                    None => return,
                    Some(RouteCommand::Add(remote, mut route, handover)) => {
                        shared.close_slow_path(&handover.slow_path_key);
                        let Handover { mut early, .. } = handover;
                        let now = Instant::now();
                        while let Ok(mut packet) = early.try_recv() {
                            route.handle(&mut packet, now);
                        }
                        routes.insert(remote, route);
                    }
                    Some(RouteCommand::Retarget(remote, target)) => {
                        if let Some(route) = routes.get_mut(&remote) {
                            let SinkTarget { sink, payloads, to_sink, protect } = *target;
                            route.sink = sink;
                            route.payloads.sink = payloads;
                            route.to_sink = to_sink;
                            if let Some(protect) = protect {
                                route.sink_protect = protect;
                            }
                        }
                    }
                    Some(RouteCommand::Latch(remote, sink)) => {
                        if let Some(route) = routes.get_mut(&remote) {
                            route.sink = sink;
                        }
                    }
                    Some(RouteCommand::Move(from, to)) => {
                        if let Some(route) = routes.remove(&from) {
                            routes.insert(to, route);
                        }
                    }
                    Some(RouteCommand::Remove(remote, done)) => {
                        routes.remove(&remote);
                        shared.routes.store(routes.len(), Ordering::Relaxed);
                        let _ = done.send(());
                    }
                }
                shared.routes.store(routes.len(), Ordering::Relaxed);
            }
            ready = shared.socket.readable() => {
                if ready.is_err() {
                    return;
                }
                // Every datagram queued now, in one wake-up and a system call per BATCH of them.
                loop {
                    let received = match batch.receive(&shared.socket) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors reported on the socket: not ours to act on.
                        Err(_) => continue,
                    };
                    let now = Instant::now();
                    for i in 0..received {
                        let (packet, from) = batch.packet(i);
                        handle_datagram(&shared, &mut routes, packet, canonical(from), now).await;
                    }
                }
            }
        }
    }
}

/// One datagram from the shared socket: a routed call's RTP or RTCP on the fast path, anything else
/// to its call's slow path (DTLS records, early SRTP) or ICE agent (STUN).
async fn handle_datagram(
    shared: &Shared,
    routes: &mut HashMap<SocketAddr, Box<InboundRoute>>,
    packet: &mut [u8],
    from: SocketAddr,
    now: Instant,
) {
    let Some(&first) = packet.first() else {
        return;
    };
    if (128..=191).contains(&first) {
        if let Some(route) = routes.get_mut(&from) {
            route.handle(packet, now);
            return;
        }
    }
    let Some(conn) = shared.conn_of(packet, from) else {
        return;
    };
    if first >= 2 {
        let slow_paths = shared.slow_paths.lock().expect("slow path map");
        if let Some(slow) = slow_paths.get(conn.key()) {
            match (slow, classify(packet)) {
                (Some(slow), PacketKind::Dtls) => {
                    let _ = slow.dtls.try_send(packet.to_vec());
                }
                (Some(slow), PacketKind::Rtp) => {
                    let _ = slow.early.try_send(packet.to_vec());
                }
                _ => {}
            }
            return;
        }
    } else if stun::message::is_message(packet) {
        if let Verdict::Answer(answer) = shared.role_conflicts.inbound(packet, conn.key()) {
            let _ = shared.socket.send_to(&answer, from).await;
            return;
        }
        let consent_paths = shared.consent_paths.lock().expect("consent path map");
        if let Some(consent) = consent_paths.get(conn.key()) {
            let _ = consent.try_send(Box::new((packet.to_vec(), from)));
            return;
        }
    }
    let _ = conn.write_packet(packet, from).await;
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[async_trait]
impl UDPMux for MediaSocket {
    async fn close(&self) -> Result<(), webrtc_util::Error> {
        // The socket is the process's; an agent closing is not the socket closing.
        Ok(())
    }

    async fn get_conn(
        self: Arc<Self>,
        ufrag: &str,
    ) -> Result<Arc<dyn Conn + Send + Sync>, webrtc_util::Error> {
        Ok(Arc::new(self.shared.conn_for(ufrag)))
    }

    async fn remove_conn_by_ufrag(&self, ufrag: &str) {
        self.shared.remove_conn(ufrag);
    }
}

#[async_trait]
impl UDPMuxWriter for Shared {
    async fn register_conn_for_address(&self, conn: &UDPMuxConn, addr: SocketAddr) {
        let addr = canonical(addr);
        let mut by_address = self.by_address.write().expect("address map");
        if let Some(old) = by_address.get(&addr) {
            if old.key() != conn.key() {
                old.remove_address(&addr);
            }
        }
        by_address.insert(addr, conn.clone());
    }

    async fn send_to(&self, buf: &[u8], target: &SocketAddr) -> Result<usize, webrtc_util::Error> {
        if buf.first().is_some_and(|&b| b < 2) {
            self.role_conflicts.outbound(buf);
        }
        Ok(self.socket.send_to(buf, *target).await?)
    }
}

/// A call without ICE: a connected-socket view of its remote address on the shared socket.
struct PlainConn {
    inner: UDPMuxConn,
    remote: SocketAddr,
    shared: Weak<Shared>,
    key: String,
}

#[async_trait]
impl Conn for PlainConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.inner.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        self.inner.recv_from(buf).await
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        let shared = self
            .shared
            .upgrade()
            .ok_or(webrtc_util::Error::ErrUseClosedNetworkConn)?;
        Ok(shared.socket.send_to(buf, self.remote).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let shared = self
            .shared
            .upgrade()
            .ok_or(webrtc_util::Error::ErrUseClosedNetworkConn)?;
        Ok(shared.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.remote)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        if let Some(shared) = self.shared.upgrade() {
            shared.remove_conn(&self.key);
        }
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Until a call is routed its DTLS records reach its slow path; once it is, the path's channel
    /// is gone and what still comes that way is dropped, not queued anywhere.
    #[tokio::test]
    async fn a_closed_slow_path_drops_what_still_arrives() {
        let socket = MediaSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let remote = peer.local_addr().unwrap();
        let _conn = socket.plain_conn(remote);
        let key = plain_key(remote);
        let SlowPath { mut dtls, .. } = socket.slow_path(&key);
        let record = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        peer.send_to(&record, socket.local_addr()).await.unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(2), dtls.recv()).await;
        assert_eq!(delivered.unwrap().as_deref(), Some(&record[..]));

        socket.shared.close_slow_path(&key);
        peer.send_to(&record, socket.local_addr()).await.unwrap();
        let after = tokio::time::timeout(Duration::from_secs(2), dtls.recv()).await;
        assert_eq!(
            after.unwrap(),
            None,
            "the channel closed, nothing delivered"
        );
        assert_eq!(
            socket.usage().1,
            2,
            "the call's connection and slow path entry stay"
        );
        socket.remove_plain(remote);
        assert_eq!(socket.usage(), (0, 0));
    }
}
