//! `sim load --direction to-user`: the business calls WhatsApp users at scale. Each call is placed
//! through watrunk's control API (`POST /calls`, to a number that names the call), and its INVITE
//! comes to this process playing Meta's SIP server as `sim serve` does (TLS, 407 with SHA-256 and
//! MD5, From host checked, ICE-lite answer); the call's media then runs as in the other direction.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use watrunk_sip::{Message, Method, Request, Response};

use super::link::{is_new_invite, ByCallId, Link};
use super::uas::{self, Gate};

/// How long a placed call may take to reach us as an INVITE.
const INVITE_WAIT: Duration = Duration::from_secs(10);
/// Calls waiting for their INVITE at most (the load's concurrency bounds it long before).
const WAITING_MAX: usize = 65_536;

/// A placed call's INVITE, with its connection and the rest of its messages.
pub struct Incoming {
    pub invite: Request,
    pub rx: mpsc::Receiver<Message>,
    pub link: Link,
}

/// Meta's SIP server for business-placed calls, and watrunk's API that places them.
pub struct Placing {
    api: String,
    http: ureq::Agent,
    pub gate: Gate,
    /// Calls placed whose INVITE has not come yet, by call number.
    waiting: Mutex<HashMap<u32, oneshot::Sender<Incoming>>>,
}

/// The called number that names load call `call` (and back).
pub fn user_of(call: u32) -> String {
    format!("+1219{call:07}")
}

fn call_of(user: &str) -> Option<u32> {
    user.strip_prefix("+1219")?.parse().ok()
}

impl Placing {
    /// Listens on `listen` (TLS with `cert`/`key`, or a self-signed certificate for the listening
    /// address kept in `state_dir`) and accepts connections until the process ends.
    pub async fn start(
        listen: SocketAddr,
        tls: (Option<PathBuf>, Option<PathBuf>, PathBuf),
        api: SocketAddr,
        gate: Gate,
    ) -> Result<Arc<Placing>> {
        let (cert, key, state_dir) = tls;
        let (config, origin) =
            watrunk_sip::io::tls::server_config(&watrunk_sip::io::tls::CertSource {
                cert,
                key,
                hostname: listen.ip().to_string(),
                state_dir,
            })?;
        if let watrunk_sip::io::tls::CertOrigin::SelfSignedNew(p)
        | watrunk_sip::io::tls::CertOrigin::SelfSignedExisting(p) = &origin
        {
            eprintln!("sim load: Meta's TLS certificate in {}", p.display());
        }
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let placing = Arc::new(Placing {
            api: format!("http://{api}/calls"),
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
            gate,
            waiting: Mutex::new(HashMap::new()),
        });
        let acceptor = TlsAcceptor::from(config);
        let accepting = Arc::downgrade(&placing);
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let Some(placing) = accepting.upgrade() else {
                    return;
                };
                let Ok(local) = tcp.local_addr() else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(stream) => {
                            if let Some((link, incoming)) =
                                Link::open(stream, local, peer, false).await
                            {
                                connection(link, incoming, placing).await;
                            }
                        }
                        Err(e) => eprintln!("sim load: TLS handshake with {peer} failed: {e}"),
                    }
                });
            }
        });
        Ok(placing)
    }

    /// Places call `call` from `from` through the API and waits for its INVITE.
    pub async fn place(&self, call: u32, from: &str, sink: SocketAddr) -> Result<Incoming> {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if waiting.len() >= WAITING_MAX {
                bail!("{WAITING_MAX} calls already wait for their INVITE");
            }
            waiting.insert(call, tx);
        }
        let (http, url) = (self.http.clone(), self.api.clone());
        let body = serde_json::json!({"from": from, "to": user_of(call), "sink": sink});
        let posted = tokio::task::spawn_blocking(move || match http.post(&url).send_json(body) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, r)) => Err(anyhow!(
                "watrunk's API refused the call ({code}): {}",
                r.into_string().unwrap_or_default()
            )),
            Err(e) => Err(anyhow!("watrunk's API: {e}")),
        })
        .await
        .map_err(|e| anyhow!("API request task: {e}"))
        .and_then(|r| r);
        let incoming = match posted {
            Ok(()) => tokio::time::timeout(INVITE_WAIT, rx).await,
            Err(e) => {
                self.claim(call);
                return Err(e);
            }
        };
        match incoming {
            Ok(Ok(incoming)) => Ok(incoming),
            _ => {
                self.claim(call);
                bail!(
                    "no INVITE {}s after the API placed the call",
                    INVITE_WAIT.as_secs()
                )
            }
        }
    }

    /// Takes call `call` off the waiting list (its INVITE came, or it will not).
    fn claim(&self, call: u32) -> Option<oneshot::Sender<Incoming>> {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&call)
    }
}

/// One connection from watrunk: a new INVITE goes to the load call its To names, everything else
/// to the call of its Call-ID.
async fn connection(link: Link, mut incoming: mpsc::Receiver<Message>, placing: Arc<Placing>) {
    let mut calls = ByCallId::default();
    while let Some(message) = incoming.recv().await {
        let Some((call_id, req)) = calls.route(message) else {
            continue;
        };
        let waiting = is_new_invite(&req)
            .then(|| call_of(&uas::users(&req).1))
            .flatten()
            .and_then(|call| placing.claim(call));
        match waiting {
            Some(waiting) => {
                let rx = calls.add(call_id);
                let _ = waiting.send(Incoming {
                    invite: req,
                    rx,
                    link: link.clone(),
                });
            }
            None if req.method == Method::ACK => {}
            None => {
                let mut r =
                    Response::to_request(&req, 481, "Call/Transaction Does Not Exist", None);
                r.headers
                    .push("Warning", "399 wa.meta.vc \"no load call waits for this\"");
                link.respond(&r).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_number_names_its_call() {
        assert_eq!(user_of(42), "+12190000042");
        assert_eq!(call_of(&user_of(42)), Some(42));
        assert_eq!(call_of("+15550001111"), None);
        assert_eq!(call_of("+1219abc"), None);
    }
}
