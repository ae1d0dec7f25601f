//! One TLS connection of the sim: a reader task that frames and parses what arrives (answering
//! CRLF keep-alives) and a writer fed through a bounded queue, so that a call's task can send
//! without owning the stream. Over TLS no request is retransmitted (RFC 3261 §17.1.1.2).

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use watrunk_sip::framing::{Frame, StreamFramer};
use watrunk_sip::{Message, Method, Request, Response};

const MAX_MESSAGE: usize = 64 * 1024;
const QUEUE: usize = 64;

#[derive(Clone)]
pub struct Link {
    out: mpsc::Sender<Vec<u8>>,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    trace: bool,
}

impl Link {
    /// Splits `stream`; messages that arrive come out of the receiver, which ends with the
    /// connection.
    pub fn open<S>(
        stream: S,
        local: SocketAddr,
        peer: SocketAddr,
        trace: bool,
    ) -> (Link, mpsc::Receiver<Message>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let (in_tx, in_rx) = mpsc::channel(QUEUE);
        let pong = out.clone();
        tokio::spawn(async move {
            while let Some(bytes) = out_rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let _ = writer.shutdown().await;
        });
        tokio::spawn(async move {
            let mut framer = StreamFramer::new(MAX_MESSAGE);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                framer.push(&buf[..n]);
                loop {
                    match framer.next_frame() {
                        Ok(Some(Frame::Message { head, body })) => {
                            match Message::parse_framed(&head, &body) {
                                Ok(m) => {
                                    if trace {
                                        eprintln!(
                                            "sim: <- {peer}\n{}",
                                            String::from_utf8_lossy(&head)
                                        );
                                    }
                                    if in_tx.send(m).await.is_err() {
                                        return;
                                    }
                                }
                                Err(e) => eprintln!("sim: unparsable message from {peer}: {e}"),
                            }
                        }
                        Ok(Some(Frame::Ping)) => {
                            let _ = pong.try_send(b"\r\n".to_vec());
                        }
                        Ok(Some(Frame::Pong)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("sim: framing lost with {peer}: {e}");
                            return;
                        }
                    }
                }
            }
        });
        (
            Link {
                out,
                local,
                peer,
                trace,
            },
            in_rx,
        )
    }

    pub async fn send(&self, bytes: Vec<u8>) {
        if self.trace {
            let text = String::from_utf8_lossy(&bytes);
            let head = text.split("\r\n\r\n").next().unwrap_or_default();
            eprintln!("sim: -> {}\n{head}\r\n", self.peer);
        }
        let _ = self.out.send(bytes).await;
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
