//! `watrunk probe`: one client request through the same transaction layer, digest client and transports
//! the server uses. It answers one 401/407 challenge (SHA-256 preferred over MD5) and reports the final
//! response; a second challenge means the credentials were refused, and that ends the probe.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use watrunk_sip::digest::{self, Challenge, Credentials};
use watrunk_sip::transaction::{
    new_branch, new_tag, Event, Output, Peer, TimerConfig, TransactionLayer, Transport,
};
use watrunk_sip::{Message, Method, Request, Response, Uri, Via};

use watrunk_sip::io::transport::{self, ConnCommand, Inbound, Limits, Shared};

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Request-URI, e.g. sip:+15550001111@wa.meta.vc;transport=tls
    pub uri: String,
    /// Where to send it (host:port); defaults to the URI's host and port.
    #[arg(long)]
    pub server: Option<String>,
    #[arg(long, default_value = "tls")]
    pub transport: String,
    /// TLS server name to verify; defaults to the host of --server.
    #[arg(long)]
    pub server_name: Option<String>,
    /// Extra CA certificate (PEM) trusted besides the web PKI roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    #[arg(long, default_value = "OPTIONS")]
    pub method: String,
    /// From URI; defaults to sip:watrunk@<local address>.
    #[arg(long)]
    pub from: Option<String>,
    /// Digest username (Meta: the business number without '+').
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long, env = "WATRUNK_SIP_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub timeout_secs: u64,
    #[arg(long)]
    pub sip_trace: bool,
}

pub async fn probe(args: ProbeArgs) -> Result<()> {
    let uri = Uri::parse(&args.uri).map_err(|e| anyhow!("{}: {e}", args.uri))?;
    let sip_uri = uri
        .as_sip()
        .ok_or_else(|| anyhow!("{}: only sip: and sips: URIs can be probed", args.uri))?;
    let method = Method::parse(&args.method)
        .ok_or_else(|| anyhow!("{:?} is not a SIP method", args.method))?;
    if method == Method::ACK || method == Method::CANCEL {
        bail!("{method} cannot be sent on its own");
    }
    let transport = match args.transport.to_ascii_lowercase().as_str() {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        "tls" => Transport::Tls,
        other => bail!("--transport {other}: use udp, tcp or tls"),
    };
    let server = match &args.server {
        Some(s) => s.clone(),
        None => {
            let default_port = if transport == Transport::Tls {
                5061
            } else {
                5060
            };
            format!("{}:{}", sip_uri.host, sip_uri.port.unwrap_or(default_port))
        }
    };
    let remote: SocketAddr = tokio::net::lookup_host(&server)
        .await
        .with_context(|| format!("cannot resolve {server}"))?
        .next()
        .ok_or_else(|| anyhow!("{server} has no address"))?;
    let server_name = args.server_name.clone().unwrap_or_else(|| {
        server.rsplit_once(':').map_or(server.clone(), |(h, _)| {
            h.trim_matches(['[', ']']).to_string()
        })
    });
    let credentials = match (&args.username, &args.password_file) {
        (Some(u), Some(f)) => Some(Credentials {
            username: u.clone(),
            password: std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?
                .trim()
                .to_string(),
        }),
        (None, None) => None,
        _ => bail!("--username and --password-file go together"),
    };

    let (core_tx, mut core_rx) = mpsc::channel(1024);
    let shared = Shared::new(core_tx, Limits::default());
    let mut udp = None;
    let mut conn_tx: Option<mpsc::Sender<ConnCommand>> = None;
    let local_stream: Option<SocketAddr>;
    let local: SocketAddr;
    match transport {
        Transport::Udp => {
            let bind: SocketAddr = if remote.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let sock = std::sync::Arc::new(UdpSocket::bind(bind).await?);
            sock.connect(remote).await?;
            local = sock.local_addr()?;
            tokio::spawn(transport::run_udp(sock.clone(), 0, shared.clone()));
            udp = Some(sock);
        }
        Transport::Tcp | Transport::Tls => {
            let tls = match transport {
                Transport::Tls => {
                    let (tls, local) =
                        watrunk_sip::io::tls::client_config_for(&server_name, args.ca.as_deref())?;
                    if let Some(local) = local {
                        eprintln!(
                            "probe: trusting the self-signed certificate watrunk serve made ({})",
                            local.display()
                        );
                    }
                    Some(tokio_rustls::TlsConnector::from(tls))
                }
                _ => None,
            };
            transport::connect(
                transport::next_conn_id(),
                transport,
                remote,
                server_name.clone(),
                tls,
                shared.clone(),
            );
            match tokio::time::timeout(Duration::from_secs(15), core_rx.recv()).await {
                Ok(Some(Inbound::Opened { tx, local: l, .. })) => {
                    conn_tx = Some(tx);
                    local_stream = Some(l);
                }
                Ok(Some(Inbound::ConnectFailed { reason, .. })) => bail!("{reason}"),
                _ => bail!("no connection to {remote}"),
            }
            local = local_stream.ok_or_else(|| anyhow!("no connection to {remote}"))?;
        }
    }

    let via_transport = match transport {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
    };
    let from = args
        .from
        .clone()
        .unwrap_or_else(|| format!("sip:watrunk@{}", host_of(local)));
    let mut req = Request::new(method.clone(), uri.clone());
    let via = Via::new(
        via_transport,
        watrunk_sip::Host::parse(&host_of(local), false)
            .unwrap_or(watrunk_sip::Host::Domain("invalid".into())),
        Some(local.port()),
        &new_branch(&mut rand::thread_rng()),
    );
    req.headers.push("Via", format!("{via};rport"));
    req.headers.push("Max-Forwards", "70");
    req.headers.push(
        "From",
        format!("<{from}>;tag={}", new_tag(&mut rand::thread_rng())),
    );
    req.headers.push("To", format!("<{uri}>"));
    req.headers.push(
        "Call-ID",
        format!("{}@watrunk", new_tag(&mut rand::thread_rng())),
    );
    req.headers.push("CSeq", format!("1 {method}"));
    req.headers.push("User-Agent", crate::server::SERVER);
    if method == Method::INVITE {
        req.headers.push(
            "Contact",
            format!(
                "<sip:watrunk@{};transport={}>",
                host_of(local),
                via_transport.to_ascii_lowercase()
            ),
        );
    }

    let peer = Peer {
        transport,
        addr: remote,
        conn: Some(1),
    };
    let mut layer = TransactionLayer::new(TimerConfig::default());
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut current = req.clone();
    layer
        .send_request(Instant::now(), current.clone(), peer.clone())
        .map_err(|e| anyhow!("{e}"))?;
    let mut answered_challenge = false;
    loop {
        while let Some(out) = layer.poll_output() {
            match out {
                Output::Transmit { message, .. } => {
                    let bytes = message.to_bytes();
                    if args.sip_trace {
                        eprintln!(">>> {remote}\n{}", watrunk_sip::trace::masked(&bytes));
                    }
                    match (&udp, &conn_tx) {
                        (Some(sock), _) => {
                            let _ = sock.send(&bytes).await;
                        }
                        (None, Some(tx)) => {
                            let _ = tx.send(ConnCommand::Send(bytes)).await;
                        }
                        _ => {}
                    }
                }
                Output::Event(Event::Response { response, .. }) => {
                    if response.status < 200 {
                        continue;
                    }
                    if (response.status == 401 || response.status == 407) && !answered_challenge {
                        let Some(creds) = &credentials else {
                            bail!("{} {}: the peer wants credentials; pass --username and --password-file", response.status, response.reason);
                        };
                        current = authenticated_retry(&current, &response, creds)?;
                        answered_challenge = true;
                        layer
                            .send_request(Instant::now(), current.clone(), peer.clone())
                            .map_err(|e| anyhow!("{e}"))?;
                        continue;
                    }
                    println!("{} {}", response.status, response.reason);
                    if (response.status == 401 || response.status == 407) && answered_challenge {
                        bail!("credentials refused: challenged again after answering with them");
                    }
                    if (200..300).contains(&response.status) {
                        return Ok(());
                    }
                    bail!("final response {} {}", response.status, response.reason);
                }
                Output::Event(Event::Timeout { .. }) => {
                    bail!("no final response from {remote} (transaction timed out)")
                }
                Output::Event(Event::TransportError { .. }) => {
                    bail!("transport error toward {remote}")
                }
                Output::Event(_) => {}
            }
        }
        let wake = layer.poll_timeout().map_or(deadline, |t| t.min(deadline));
        if Instant::now() >= deadline {
            bail!(
                "no final response from {remote} within {} s",
                args.timeout_secs
            );
        }
        tokio::select! {
            input = core_rx.recv() => match input {
                Some(Inbound::Datagram { bytes, from, .. }) => receive(&mut layer, &bytes, None, from, transport, args.sip_trace),
                Some(Inbound::Message { head, body, from, .. }) => receive(&mut layer, &head, Some(&body), from, transport, args.sip_trace),
                Some(Inbound::Closed { .. }) => bail!("{remote} closed the connection"),
                Some(_) => {}
                None => bail!("transport stopped"),
            },
            _ = tokio::time::sleep_until(wake.into()) => layer.handle_timeout(Instant::now()),
        }
    }
}

fn receive(
    layer: &mut TransactionLayer,
    head: &[u8],
    body: Option<&[u8]>,
    from: SocketAddr,
    transport: Transport,
    trace: bool,
) {
    if trace {
        let mut all = head.to_vec();
        all.extend_from_slice(body.unwrap_or_default());
        eprintln!("<<< {from}\n{}", watrunk_sip::trace::masked(&all));
    }
    let parsed = match body {
        None => Message::parse_datagram(head),
        Some(b) => Message::parse_framed(head, b),
    };
    if let Ok(msg) = parsed {
        let _ = layer.handle_incoming(
            Instant::now(),
            msg,
            Peer {
                transport,
                addr: from,
                conn: Some(1),
            },
        );
    }
}

/// The request again with credentials for the best challenge in `resp`: same Call-ID and From tag,
/// CSeq + 1, a new branch (the transaction layer's retry helper), digest uri = Request-URI verbatim.
fn authenticated_retry(req: &Request, resp: &Response, creds: &Credentials) -> Result<Request> {
    let (challenge_header, answer_header) = match resp.status {
        401 => ("WWW-Authenticate", "Authorization"),
        _ => ("Proxy-Authenticate", "Proxy-Authorization"),
    };
    let challenges: Vec<Challenge> = resp
        .headers
        .get_all(challenge_header)
        .filter_map(|v| Challenge::parse(v).ok())
        .collect();
    let challenge = digest::choose_challenge(&challenges).ok_or_else(|| {
        anyhow!(
            "{} without a usable Digest challenge (SHA-256 or MD5)",
            resp.status
        )
    })?;
    let uri = req.uri.to_string();
    let auth = digest::answer(
        challenge,
        creds,
        &req.method.to_string(),
        &uri,
        &req.body,
        1,
        &digest::new_cnonce(&mut rand::thread_rng()),
    );
    eprintln!(
        "answering {} challenge from realm {:?} with {}",
        resp.status, challenge.realm, challenge.algorithm
    );
    Ok(watrunk_sip::dialog::retry_with_auth(
        req,
        answer_header,
        &auth.to_string(),
        &mut rand::thread_rng(),
    ))
}

fn host_of(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}
