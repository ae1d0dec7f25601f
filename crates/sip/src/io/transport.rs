//! Sockets for SIP: UDP, TCP and TLS listeners, one task per stream connection (read → framer → core,
//! core → bounded queue → write), and outbound connections opened on demand. Everything protocol-level
//! happens in the task that owns the queue (the server's core, a sim call); this file only moves bytes
//! and enforces limits (message size, connection count in all and per source address, idle,
//! handshake and first-message time), backing off when the process is out of descriptors.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::throttle::LogThrottle;
use crate::framing::{Frame, FramingError, StreamFramer};
use crate::transaction::Transport;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub type ConnId = u64;

/// Events from the sockets to the core task.
#[derive(Debug)]
pub enum Inbound {
    Datagram {
        bytes: Vec<u8>,
        from: SocketAddr,
        socket: usize,
    },
    Message {
        conn: ConnId,
        transport: Transport,
        from: SocketAddr,
        head: Vec<u8>,
        body: Vec<u8>,
    },
    /// The stream can no longer be framed; the connection task closes after the core had its say.
    BadFrame {
        conn: ConnId,
        transport: Transport,
        from: SocketAddr,
        error: FramingError,
    },
    Opened {
        conn: ConnId,
        transport: Transport,
        remote: SocketAddr,
        local: SocketAddr,
        tx: mpsc::Sender<ConnCommand>,
    },
    ConnectFailed {
        conn: ConnId,
        reason: String,
    },
    Closed {
        conn: ConnId,
    },
    /// Nothing arrived for the idle timeout: the core closes the connection unless a call uses it.
    Idle {
        conn: ConnId,
    },
}

#[derive(Debug)]
pub enum ConnCommand {
    Send(Vec<u8>),
    /// Answered once everything queued before it has been written.
    Flush(tokio::sync::oneshot::Sender<()>),
    Close,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Messages queued toward one connection before the core treats it as stuck.
    pub conn_queue: usize,
    /// Accepted connections one source address may hold at once.
    pub max_connections_per_source: usize,
    /// An accepted connection that has sent no complete SIP message this long after it opened
    /// is closed.
    pub first_message_timeout: Duration,
    /// Datagrams a second one source address may send (a burst of as many); beyond, they are
    /// dropped before they cost the core anything. ACK, BYE and CANCEL have ten times as much.
    pub udp_per_source_rate: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 64 * 1024,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(900),
            handshake_timeout: Duration::from_secs(10),
            conn_queue: 256,
            max_connections_per_source: 128,
            first_message_timeout: Duration::from_secs(30),
            udp_per_source_rate: 500,
        }
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

pub fn next_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

#[derive(Clone)]
pub struct Shared {
    pub core: mpsc::Sender<Inbound>,
    pub limits: Limits,
    pub slots: Arc<Semaphore>,
    /// Accepted connections per source address.
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// What the listeners say about refused connections, at most so often.
    refusals: Arc<Mutex<LogThrottle>>,
    /// The same for failed TLS handshakes (a scanner makes many; Meta failing one is news).
    handshakes: Arc<Mutex<LogThrottle>>,
}

impl Shared {
    pub fn new(core: mpsc::Sender<Inbound>, limits: Limits) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        Shared {
            core,
            limits,
            slots,
            per_source: Arc::default(),
            refusals: Arc::new(Mutex::new(LogThrottle::new(Duration::from_secs(10), 5))),
            handshakes: Arc::new(Mutex::new(LogThrottle::new(Duration::from_secs(10), 5))),
        }
    }

    /// A slot for one more connection from `source`, if it has fewer than its limit.
    fn source_slot(&self, source: IpAddr) -> Option<SourceSlot> {
        let mut map = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(source).or_default();
        if *n >= self.limits.max_connections_per_source {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            source,
            map: self.per_source.clone(),
        })
    }

    /// Says why a connection was refused, a few times in ten seconds at most.
    fn refused(&self, why: std::fmt::Arguments<'_>) {
        if let Some(line) = throttled(&self.refusals, why, "refusals") {
            tracing::warn!("{line}");
        }
    }

    /// Says that a TLS handshake failed, a few times in ten seconds at most.
    fn handshake_failed(&self, what: std::fmt::Arguments<'_>) {
        if let Some(line) = throttled(&self.handshakes, what, "failed handshakes") {
            tracing::info!("{line}");
        }
    }
}

fn throttled(
    throttle: &Mutex<LogThrottle>,
    what: std::fmt::Arguments<'_>,
    held: &str,
) -> Option<String> {
    throttle
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .line(Instant::now(), what, held)
}

/// One accepted connection counted against its source; given back on drop.
struct SourceSlot {
    source: IpAddr,
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// Sources whose datagram rate is tracked at most; beyond, the idle ones are forgotten.
const MAX_RATED_SOURCES: usize = 65_536;

/// A token bucket per source address and kind of datagram: what `run_udp` lets through.
struct SourceRates {
    rate: f64,
    buckets: HashMap<(IpAddr, bool), (f64, Instant)>,
    dropped: u64,
}

impl SourceRates {
    fn new(rate: u32) -> SourceRates {
        SourceRates {
            rate: f64::from(rate.max(1)),
            buckets: HashMap::new(),
            dropped: 0,
        }
    }

    /// Whether one more datagram from `source` may pass; `dialog`: an ACK, BYE or CANCEL, which
    /// get ten times the rate (a call must be able to end while its peer's address floods).
    fn admit(&mut self, source: IpAddr, dialog: bool, now: Instant) -> bool {
        let rate = if dialog { self.rate * 10.0 } else { self.rate };
        if self.buckets.len() >= MAX_RATED_SOURCES && !self.buckets.contains_key(&(source, dialog))
        {
            self.buckets
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < Duration::from_secs(1));
        }
        let (tokens, at) = self.buckets.entry((source, dialog)).or_insert((rate, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// Whether a datagram is an ACK, BYE or CANCEL (looked at by its first bytes only).
fn ends_or_acks(datagram: &[u8]) -> bool {
    [&b"ACK "[..], b"BYE ", b"CANCEL "]
        .iter()
        .any(|m| datagram.starts_with(m))
}

/// Reads datagrams and hands them to the core. A full core queue drops the datagram (UDP semantics;
/// the peer retransmits) instead of blocking the socket; so does a source over its rate.
pub async fn run_udp(socket: Arc<UdpSocket>, index: usize, shared: Shared) {
    let mut buf = vec![0u8; 65_535];
    let mut rates = SourceRates::new(shared.limits.udp_per_source_rate);
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if n > shared.limits.max_message {
                    continue;
                }
                let source = from.ip().to_canonical();
                if !rates.admit(source, ends_or_acks(&buf[..n]), Instant::now()) {
                    shared.refused(format_args!(
                        "UDP from {source} above {} datagrams a second: dropping ({} dropped so far)",
                        shared.limits.udp_per_source_rate, rates.dropped
                    ));
                    continue;
                }
                let _ = shared.core.try_send(Inbound::Datagram {
                    bytes: buf[..n].to_vec(),
                    from,
                    socket: index,
                });
            }
            Err(e) => {
                // ICMP errors surface here on Linux (ECONNREFUSED for an earlier send); keep serving.
                tracing::debug!("udp recv: {e}");
            }
        }
    }
}

/// Accepts TCP connections (with `tls`: TLS over them, within the handshake time limit) and serves each
/// in its own task, refusing connections beyond the configured limit.
pub async fn run_stream_listener(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Shared) {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    let mut pause = FIRST_PAUSE;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => {
                pause = FIRST_PAUSE;
                accepted
            }
            // Out of descriptors (EMFILE, ENFILE) or memory: trying again at once only burns
            // the CPU live calls need; pause, longer each time, until an accept succeeds.
            Err(e) => {
                shared.refused(format_args!(
                    "cannot accept connections: {e}; pausing accepts for {pause:?} (the open-files limit or limits.max_connections is too high for this host)"
                ));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let source = remote.ip().to_canonical();
        let Some(source_slot) = shared.source_slot(source) else {
            shared.refused(format_args!(
                "{source} already has {} connections: refusing another (limits.max_connections_per_source)",
                shared.limits.max_connections_per_source
            ));
            continue;
        };
        let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
            shared.refused(format_args!(
                "connection limit {} reached: refusing {remote}",
                shared.limits.max_connections
            ));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let shared = shared.clone();
        let local = stream.local_addr().unwrap_or(remote);
        tokio::spawn(async move {
            let conn = next_conn_id();
            let first = Some(shared.limits.first_message_timeout);
            match tls {
                None => {
                    serve_stream(stream, remote, local, Transport::Tcp, conn, shared, first).await
                }
                Some(acceptor) => {
                    // The handshake's state and the TLS stream are boxed: held inline they would
                    // size the connection's task, one after the other, for its whole life.
                    let handshake = Box::pin(tokio::time::timeout(
                        shared.limits.handshake_timeout,
                        acceptor.accept(stream),
                    ));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let tls = Box::new(tls);
                            serve_stream(tls, remote, local, Transport::Tls, conn, shared, first)
                                .await
                        }
                        Ok(Err(e)) => shared.handshake_failed(format_args!(
                            "TLS handshake with {remote} failed: {e}"
                        )),
                        Err(_) => shared.handshake_failed(format_args!(
                            "TLS handshake with {remote} timed out"
                        )),
                    }
                }
            }
            drop(permit);
            drop(source_slot);
        });
    }
}

/// Opens an outbound connection for the core (TCP, or TLS verified against `server_name`) and then
/// serves it like an accepted one.
pub fn connect(
    conn: ConnId,
    transport: Transport,
    remote: SocketAddr,
    server_name: String,
    tls: Option<TlsConnector>,
    shared: Shared,
) {
    tokio::spawn(async move {
        let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
            let _ = shared
                .core
                .send(Inbound::ConnectFailed {
                    conn,
                    reason: "connection limit reached".into(),
                })
                .await;
            return;
        };
        let timeout = shared.limits.handshake_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(remote)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let _ = shared
                    .core
                    .send(Inbound::ConnectFailed {
                        conn,
                        reason: format!("connect to {remote}: {e}"),
                    })
                    .await;
                return;
            }
            Err(_) => {
                let _ = shared
                    .core
                    .send(Inbound::ConnectFailed {
                        conn,
                        reason: format!("connect to {remote} timed out"),
                    })
                    .await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(remote);
        match (transport, tls) {
            (Transport::Tls, Some(connector)) => {
                let name = match rustls_pki_types::ServerName::try_from(server_name.clone()) {
                    Ok(n) => n,
                    Err(_) => {
                        let reason = format!("{server_name:?} is not a valid TLS server name");
                        let _ = shared
                            .core
                            .send(Inbound::ConnectFailed { conn, reason })
                            .await;
                        return;
                    }
                };
                // Boxed as on accept: the handshake's state would size the task.
                let handshake = Box::pin(tokio::time::timeout(
                    timeout,
                    connector.connect(name, stream),
                ));
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let tls = Box::new(tls);
                        serve_stream(tls, remote, local, Transport::Tls, conn, shared, None).await
                    }
                    Ok(Err(e)) => {
                        let reason =
                            format!("TLS handshake with {server_name} ({remote}) failed: {e}");
                        let _ = shared
                            .core
                            .send(Inbound::ConnectFailed { conn, reason })
                            .await;
                    }
                    Err(_) => {
                        let reason =
                            format!("TLS handshake with {server_name} ({remote}) timed out");
                        let _ = shared
                            .core
                            .send(Inbound::ConnectFailed { conn, reason })
                            .await;
                    }
                }
            }
            _ => serve_stream(stream, remote, local, Transport::Tcp, conn, shared, None).await,
        }
        drop(permit);
    });
}

/// Serves one stream connection until it ends: reads and frames (answering CRLF keep-alives),
/// hands each message to `shared.core`, and writes what the owner queues on the sender it gets in
/// `Inbound::Opened`. The listeners and `connect` use it; so does a caller that opened the stream
/// itself. `first_message`: close the connection when no complete message came that long after
/// its start (accepted connections: a peer that connects and says nothing holds a slot).
pub async fn serve_stream<S>(
    stream: S,
    remote: SocketAddr,
    local: SocketAddr,
    transport: Transport,
    conn: ConnId,
    shared: Shared,
    first_message: Option<Duration>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut silent_until = first_message.map(|d| tokio::time::Instant::now() + d);
    let (tx, mut rx) = mpsc::channel::<ConnCommand>(shared.limits.conn_queue);
    if shared
        .core
        .send(Inbound::Opened {
            conn,
            transport,
            remote,
            local,
            tx: tx.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writer_task = tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                ConnCommand::Send(bytes) => {
                    if writer.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                ConnCommand::Flush(done) => {
                    let _ = writer.flush().await;
                    let _ = done.send(());
                }
                ConnCommand::Close => break,
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut framer = StreamFramer::new(shared.limits.max_message);
    // The framer keeps what a read leaves of a message: a small buffer is enough, and it is held
    // for as long as the connection lives.
    let mut buf = vec![0u8; 4 * 1024];
    'read: loop {
        let wait = match silent_until {
            Some(at) => at
                .saturating_duration_since(tokio::time::Instant::now())
                .min(shared.limits.idle_timeout),
            None => shared.limits.idle_timeout,
        };
        let n = tokio::select! {
            r = tokio::time::timeout(wait, reader.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break 'read,
                Ok(Ok(n)) => n,
                Err(_) if silent_until.is_some_and(|at| at <= tokio::time::Instant::now()) => {
                    tracing::debug!("{transport:?} connection from {remote} sent no SIP message in {:?}: closing it", first_message.unwrap_or_default());
                    break 'read;
                }
                Err(_) => {
                    if shared.core.send(Inbound::Idle { conn }).await.is_err() {
                        break 'read;
                    }
                    continue 'read;
                }
            },
            _ = tx.closed() => break 'read,
            _ = shared.core.closed() => break 'read,
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Ping)) => {
                    let _ = tx.try_send(ConnCommand::Send(b"\r\n".to_vec()));
                }
                Ok(Some(Frame::Pong)) => {}
                Ok(Some(Frame::Message { head, body })) => {
                    silent_until = None;
                    if shared
                        .core
                        .send(Inbound::Message {
                            conn,
                            transport,
                            from: remote,
                            head,
                            body,
                        })
                        .await
                        .is_err()
                    {
                        break 'read;
                    }
                }
                Err(error) => {
                    tracing::info!("{transport:?} connection from {remote}: {error}; closing it");
                    let _ = shared
                        .core
                        .send(Inbound::BadFrame {
                            conn,
                            transport,
                            from: remote,
                            error,
                        })
                        .await;
                    break 'read;
                }
            }
        }
    }
    let _ = shared.core.send(Inbound::Closed { conn }).await;
    // Give the core's last words (a 400 or 513) a moment to leave, then close.
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_over_its_rate_is_cut_and_another_is_not() {
        let t0 = Instant::now();
        let mut rates = SourceRates::new(100);
        let flood: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let passed = (0..1000).filter(|_| rates.admit(flood, false, t0)).count();
        assert_eq!(passed, 100, "a burst of one second's worth");
        assert!(rates.admit(other, false, t0));
        // Its BYEs have a budget of their own.
        assert!(rates.admit(flood, true, t0));
        // Half a second later, half a second's worth again.
        let later = t0 + Duration::from_millis(500);
        let passed = (0..1000)
            .filter(|_| rates.admit(flood, false, later))
            .count();
        assert_eq!(passed, 50);
        assert!(ends_or_acks(b"BYE sip:x SIP/2.0") && !ends_or_acks(b"INVITE sip:x SIP/2.0"));
    }
}
