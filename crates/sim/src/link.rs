//! One TLS connection of the sim, served by the same connection task as `watrunk serve`'s
//! (`watrunk_sip::io::transport`: framing, keep-alive answers, bounded queues both ways). Its
//! messages are parsed here and come out of a receiver; a call's task sends through the `Link`
//! without owning the stream. Over TLS no request is retransmitted (RFC 3261 §17.1.1.2).

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use watrunk_sip::io::transport::{self, ConnCommand, Inbound, Limits, Shared};
use watrunk_sip::{Message, Method, Request, Response, Transport};

const QUEUE: usize = 64;

#[derive(Clone)]
pub struct Link {
    out: mpsc::Sender<ConnCommand>,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    trace: bool,
}

impl Link {
    /// Serves `stream`; messages that arrive come out of the receiver, which ends with the
    /// connection. `None` if the connection ended before it was served.
    pub async fn open<S>(
        stream: S,
        local: SocketAddr,
        peer: SocketAddr,
        trace: bool,
    ) -> Option<(Link, mpsc::Receiver<Message>)>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (core, mut from_conn) = mpsc::channel(QUEUE);
        let limits = Limits {
            conn_queue: QUEUE,
            ..Limits::default()
        };
        let conn = transport::next_conn_id();
        let shared = Shared::new(core, limits);
        tokio::spawn(transport::serve_stream(
            stream,
            peer,
            local,
            Transport::Tls,
            conn,
            shared,
            None,
        ));
        let out = match from_conn.recv().await? {
            Inbound::Opened { tx, .. } => tx,
            _ => return None,
        };
        let (in_tx, in_rx) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            // The connection is served as long as somebody reads what arrives.
            while let Some(event) = tokio::select! {
                event = from_conn.recv() => event,
                _ = in_tx.closed() => None,
            } {
                let (head, body) = match event {
                    Inbound::Message { head, body, .. } => (head, body),
                    Inbound::BadFrame { error, .. } => {
                        eprintln!("sim: framing lost with {peer}: {error}");
                        return;
                    }
                    Inbound::Closed { .. } => return,
                    _ => continue,
                };
                match Message::parse_framed(&head, &body) {
                    Ok(m) => {
                        if trace {
                            eprintln!("sim: <- {peer}\n{}", String::from_utf8_lossy(&head));
                        }
                        if in_tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("sim: unparsable message from {peer}: {e}"),
                }
            }
        });
        Some((
            Link {
                out,
                local,
                peer,
                trace,
            },
            in_rx,
        ))
    }

    pub async fn send(&self, bytes: Vec<u8>) {
        if self.trace {
            let text = String::from_utf8_lossy(&bytes);
            let head = text.split("\r\n\r\n").next().unwrap_or_default();
            eprintln!("sim: -> {}\n{head}\r\n", self.peer);
        }
        let _ = self.out.send(ConnCommand::Send(bytes)).await;
    }

    pub async fn respond(&self, response: &Response) {
        self.send(response.to_bytes()).await;
    }

    pub async fn request(&self, request: &Request) {
        self.send(request.to_bytes()).await;
    }

    /// This side's address as written in Via, Contact and Record-Route.
    pub fn hostport(&self) -> String {
        match self.local {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        }
    }
}

/// A connection's messages by Call-ID: each call's go to the task that owns the call.
#[derive(Default)]
pub struct ByCallId {
    calls: HashMap<String, mpsc::Sender<Message>>,
}

impl ByCallId {
    /// Hands `message` to the call of its Call-ID; a request that no call owns comes back, with
    /// its Call-ID, for the connection to deal with.
    pub fn route(&mut self, message: Message) -> Option<(String, Request)> {
        let call_id = match &message {
            Message::Request(r) => r.call_id(),
            Message::Response(r) => r.call_id(),
        }
        .unwrap_or_default()
        .to_string();
        self.calls.retain(|_, tx| !tx.is_closed());
        if let Some(call) = self.calls.get(&call_id) {
            let _ = call.try_send(message);
            return None;
        }
        match message {
            Message::Request(req) => Some((call_id, req)),
            Message::Response(_) => None,
        }
    }

    /// From now on, the messages of `call_id` come out of the receiver.
    pub fn add(&mut self, call_id: String) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(16);
        self.calls.insert(call_id, tx);
        rx
    }
}

/// An INVITE that starts a call (no To tag yet).
pub fn is_new_invite(req: &Request) -> bool {
    req.method == Method::INVITE && req.to().and_then(|t| t.tag().map(str::to_string)).is_none()
}
