//! The server's transport pool: its UDP sockets, the live stream connections (each a task in
//! `transport.rs` fed through a bounded queue), and the TLS connections being opened for requests
//! toward a next hop with no live connection (Meta's BYEs, calls we place). A message waits for
//! its connection in a bounded queue; a connection that fails hands back the transactions whose
//! messages waited for it. Calls are never tied to a connection: a request reuses a live one to
//! the peer's address or opens a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use watrunk_sip::transaction::{Peer, TransactionId, Transport};

use watrunk_sip::io::transport::{self, ConnCommand, ConnId, Shared};

/// Messages at most waiting for one connection to open.
const WAITING_PER_CONNECTION: usize = 64;

struct Conn {
    tx: mpsc::Sender<ConnCommand>,
    remote: SocketAddr,
    transport: Transport,
}

/// A message waiting for its connection, and the transaction that sent it.
type Waiting = (Option<TransactionId>, Vec<u8>);

pub struct Connections {
    udp: Vec<Arc<UdpSocket>>,
    conns: HashMap<ConnId, Conn>,
    /// Connections being opened for a request, and what waits for each.
    connecting: HashMap<SocketAddr, ConnId>,
    waiting: HashMap<ConnId, Vec<Waiting>>,
    /// The TLS name to verify for a next hop (from its URI).
    server_names: HashMap<SocketAddr, String>,
    tls_client: tokio_rustls::TlsConnector,
    shared: Shared,
}

impl Connections {
    pub fn new(
        udp: Vec<Arc<UdpSocket>>,
        tls_client: tokio_rustls::TlsConnector,
        shared: Shared,
    ) -> Connections {
        Connections {
            udp,
            conns: HashMap::new(),
            connecting: HashMap::new(),
            waiting: HashMap::new(),
            server_names: HashMap::new(),
            tls_client,
            shared,
        }
    }

    /// Waits (at most `limit`) until what is queued toward every connection has been written:
    /// before the process exits, so that a last ACK or BYE is not lost.
    pub async fn flush(&self, limit: std::time::Duration) {
        let mut written = Vec::new();
        for conn in self.conns.values() {
            let (done, wait) = tokio::sync::oneshot::channel();
            if conn.tx.try_send(ConnCommand::Flush(done)).is_ok() {
                written.push(wait);
            }
        }
        let _ = tokio::time::timeout(limit, async {
            for wait in written {
                let _ = wait.await;
            }
        })
        .await;
    }

    /// A connection is up (accepted, or opened by us): what waited for it goes out.
    pub fn opened(
        &mut self,
        conn: ConnId,
        transport: Transport,
        remote: SocketAddr,
        tx: mpsc::Sender<ConnCommand>,
    ) {
        for (_, bytes) in self.waiting.remove(&conn).unwrap_or_default() {
            if tx.try_send(ConnCommand::Send(bytes)).is_err() {
                tracing::warn!("connection to {remote} is not draining: message dropped");
            }
        }
        self.connecting.retain(|_, c| *c != conn);
        self.conns.insert(
            conn,
            Conn {
                tx,
                remote,
                transport,
            },
        );
    }

    /// A connection we opened failed: the transactions whose messages waited for it.
    pub fn connect_failed(&mut self, conn: ConnId) -> Vec<TransactionId> {
        self.conns.remove(&conn);
        self.connecting.retain(|_, c| *c != conn);
        self.waiting
            .remove(&conn)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, _)| id)
            .collect()
    }

    /// Forgets a closed connection; its transport, if it was open.
    pub fn closed(&mut self, conn: ConnId) -> Option<Transport> {
        self.conns.remove(&conn).map(|c| c.transport)
    }

    pub fn close(&self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.try_send(ConnCommand::Close);
        }
    }

    pub fn is_live(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// The remote address of a live connection.
    pub fn remote(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns.get(&conn).map(|c| c.remote)
    }

    /// The TLS name to verify when a connection to `addr` has to be opened.
    pub fn name_hop(&mut self, addr: SocketAddr, server_name: String) {
        self.server_names.insert(addr, server_name);
    }

    /// Sends `bytes` to `to`: on its UDP socket, on the connection it names or a live one to its
    /// address, or (a request, `to.conn` unset) over a new TLS connection. `id` is the
    /// transaction that sent it, failed if the new connection fails.
    pub fn send(&mut self, id: Option<TransactionId>, to: &Peer, bytes: Vec<u8>) {
        match to.transport {
            Transport::Udp => {
                let idx = to.conn.unwrap_or(0) as usize;
                if let Some(sock) = self.udp.get(idx).or_else(|| self.udp.first()) {
                    if let Err(e) = sock.try_send_to(&bytes, to.addr) {
                        tracing::debug!("udp send to {}: {e}", to.addr);
                    }
                }
            }
            Transport::Tcp | Transport::Tls => {
                let conn = to.conn.filter(|c| self.conns.contains_key(c)).or_else(|| {
                    self.conns
                        .iter()
                        .find(|(_, c)| c.remote == to.addr && c.transport == to.transport)
                        .map(|(id, _)| *id)
                });
                match conn.and_then(|c| self.conns.get(&c)) {
                    Some(c) => {
                        if c.tx.try_send(ConnCommand::Send(bytes)).is_err() {
                            tracing::warn!(
                                "connection to {} is not draining: message dropped",
                                to.addr
                            );
                        }
                    }
                    None if to.conn.is_none() => self.send_over_new_connection(id, to, bytes),
                    None => tracing::info!("no connection to {} for a response; dropped", to.addr),
                }
            }
        }
    }

    /// A request toward a peer we have no connection to: one is opened (TCP, or TLS verified
    /// against the hop's name) and the message waits for it.
    fn send_over_new_connection(&mut self, id: Option<TransactionId>, to: &Peer, bytes: Vec<u8>) {
        if to.transport == Transport::Udp {
            return;
        }
        let conn = match self.connecting.get(&to.addr) {
            Some(c) => *c,
            None => {
                let conn = transport::next_conn_id();
                let name = self
                    .server_names
                    .get(&to.addr)
                    .cloned()
                    .unwrap_or_else(|| to.addr.ip().to_string());
                tracing::info!(
                    "opening a {:?} connection to {name} ({})",
                    to.transport,
                    to.addr
                );
                let tls = (to.transport == Transport::Tls).then(|| self.tls_client.clone());
                transport::connect(conn, to.transport, to.addr, name, tls, self.shared.clone());
                self.connecting.insert(to.addr, conn);
                conn
            }
        };
        let queue = self.waiting.entry(conn).or_default();
        if queue.len() < WAITING_PER_CONNECTION {
            queue.push((id, bytes));
        }
    }
}
