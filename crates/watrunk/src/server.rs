//! `watrunk serve`: binds the listeners and runs the core task, the one place that owns SIP and call
//! state. The core turns socket events into transaction-layer input, answers requests itself
//! (OPTIONS, 405/501/481 ...), asks the admission policy about new INVITEs (`admission.rs`: number
//! routing and digest), hands calls and in-dialog requests to the calls (`calls.rs`), and moves the
//! layer's output to the transport pool (`connections.rs`).

mod admission;
mod calls;
mod commands;
mod connections;
mod hops;
mod lifecycle;
mod media_task;
mod pbx;
mod registry;

pub use calls::CallInput;
pub use commands::Command;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use watrunk_sip::framing::FramingError;
use watrunk_sip::routing::stamp_received;
use watrunk_sip::transaction::{
    Event, Output, Peer, TimeoutReason, TimerConfig, TransactionId, TransactionLayer, Transport,
};
use watrunk_sip::validate::{check_request, UasPolicy};
use watrunk_sip::{Message, Method, ParseError, Request, Response};

use crate::config::ServeConfig;
use crate::events::Events;
use admission::{Admission, Verdict};
use connections::Connections;
use watrunk_sip::io::throttle::LogThrottle;
use watrunk_sip::io::tls::{self, CertOrigin};
use watrunk_sip::io::transport::{self, Inbound, Limits, Shared};

pub const SERVER: &str = concat!("watrunk/", env!("CARGO_PKG_VERSION"));

/// `watrunk serve`: runs until SIGTERM or SIGINT has drained it; SIGHUP reloads `args`.
pub async fn run(args: crate::config::ServeArgs) -> Result<()> {
    let cfg = ServeConfig::resolve(args.clone())?;
    let (call_tx, call_rx) = mpsc::channel(4096);
    run_with(cfg, Some(args), call_tx, call_rx, false).await
}

/// The server with its call channel given: the control API and `watrunk call` send commands on it.
/// `reload`: the flags SIGHUP reads the configuration from again. `one_shot`: return once a call
/// has been made and none is left.
pub async fn run_with(
    mut cfg: ServeConfig,
    reload: Option<crate::config::ServeArgs>,
    call_tx: mpsc::Sender<CallInput>,
    call_rx: mpsc::Receiver<CallInput>,
    one_shot: bool,
) -> Result<()> {
    let loaded = cfg.clone();
    let signals = lifecycle::Signals::install().context("cannot install signal handlers")?;
    let (core_tx, core_rx) = mpsc::channel(8192);
    let limits = Limits {
        max_message: cfg.max_message,
        max_connections: connections_within_open_files(cfg.max_connections),
        idle_timeout: cfg.idle_timeout,
        max_connections_per_source: cfg.max_connections_per_source,
        first_message_timeout: cfg.first_message_timeout,
        udp_per_source_rate: cfg.udp_per_source_rate,
        ..Limits::default()
    };
    let shared = Shared::new(core_tx, limits);
    let mut udp_sockets = Vec::new();
    if let Some(addr) = cfg.udp {
        let sock = Arc::new(
            UdpSocket::bind(addr)
                .await
                .with_context(|| format!("cannot bind UDP {addr} (listen.udp)"))?,
        );
        let bound = sock.local_addr()?;
        tracing::info!("SIP over UDP on {bound}");
        // Via and Contact name the port actually bound (port 0 picks one).
        cfg.udp = Some(bound);
        tokio::spawn(transport::run_udp(
            sock.clone(),
            udp_sockets.len(),
            shared.clone(),
        ));
        udp_sockets.push(sock);
    }
    for pbx in cfg.calls.pbxs.iter_mut() {
        match tokio::net::lookup_host((pbx.host.as_str(), pbx.port)).await {
            Ok(addrs) => {
                // The target's own addresses first: REGISTER goes to the first.
                let mut sources: Vec<_> = addrs.map(|a| a.ip().to_canonical()).collect();
                sources.append(&mut pbx.sources);
                pbx.sources = sources;
            }
            Err(e) => tracing::warn!(
                "cannot look up the PBX {}: {e}; calls from it are not recognised",
                pbx.host
            ),
        }
    }
    if let Some(addr) = cfg.tcp {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind TCP {addr} (listen.tcp)"))?;
        tracing::info!("SIP over TCP on {}", l.local_addr()?);
        // Contact names the port actually bound (port 0 picks one).
        cfg.tcp = Some(l.local_addr()?);
        tokio::spawn(transport::run_stream_listener(l, None, shared.clone()));
    }
    let mut certificate = None;
    // Where the self-signed certificate's listener is: a local `sim call` is told how to reach it.
    let mut self_signed_tls = None;
    let mut tls_bound = None;
    if let Some(addr) = cfg.tls {
        let (server_cfg, origin, reloadable) = tls::reloadable_server_config(&tls::CertSource {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            hostname: cfg.hostname.clone(),
            state_dir: cfg.state_dir.clone(),
        })?;
        match &origin {
            CertOrigin::Configured(p) => tracing::info!("TLS certificate {}", p.display()),
            CertOrigin::SelfSignedNew(p) => tracing::warn!(
                "no --cert given: made a self-signed certificate for {} at {} (fine for tests and `watrunk sim`; Meta needs a certificate from a public CA)",
                cfg.hostname,
                p.display()
            ),
            CertOrigin::SelfSignedExisting(p) => tracing::warn!(
                "no --cert given: using the self-signed certificate for {} at {} (Meta needs a certificate from a public CA)",
                cfg.hostname,
                p.display()
            ),
        }
        certificate = Some(reloadable);
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind TLS {addr} (listen.tls)"))?;
        tracing::info!("SIP over TLS on {} as {}", l.local_addr()?, cfg.hostname);
        if !matches!(origin, CertOrigin::Configured(_)) {
            self_signed_tls = Some(l.local_addr()?);
        }
        tls_bound = Some(l.local_addr()?);
        tokio::spawn(transport::run_stream_listener(
            l,
            Some(TlsAcceptor::from(server_cfg)),
            shared.clone(),
        ));
    }
    let (hep, key_log) = debugging_start(&cfg, tls_bound)?;
    if cfg.sip_trace_unmasked {
        tracing::warn!("--sip-trace-unmasked: the trace shows digest responses, SDES keys and ICE passwords; keep its log private");
    }
    let media = match &cfg.calls.media {
        None => None,
        Some(m) => {
            let socket = watrunk_media::MediaSocket::bind_media(m.ip, m.ip6, m.port)
                .await
                .with_context(|| {
                    format!(
                        "cannot bind media on {} port {} (media.ip, media.port)",
                        m.ip, m.port
                    )
                })?;
            tracing::info!("media on {}", socket.local_addr());
            Some(media_task::MediaShared {
                socket,
                identity: watrunk_media::Identity::generate()?,
                ip: m.ip,
                ip6: m.ip6,
                public_ip: m.public_ip,
                rtp_timeout: m.rtp_timeout,
                key_log,
            })
        }
    };
    let tls_client =
        tokio_rustls::TlsConnector::from(tls::client_config(cfg.calls.tls_ca.as_deref())?);
    let mut events =
        Events::open(cfg.calls.events.as_deref())?.with_webhooks(&cfg.calls.webhooks)?;
    if let Some(cdr) = &cfg.calls.cdr {
        events = events.with_cdr(cdr)?;
    }
    if let Some(addr) = cfg.calls.api {
        let token = cfg.calls.api_token.clone();
        let local = crate::api::serve(
            addr,
            token,
            call_tx.clone(),
            events.sender(),
            events.metrics(),
        )
        .await?;
        tracing::info!("control API on http://{local}");
    }
    for n in cfg.calls.numbers.values() {
        tracing::info!(
            "number {}: {}challenged, audio to {}",
            n.number,
            if n.challenge { "" } else { "not " },
            n.sink
        );
    }
    if let Some(bound) = self_signed_tls {
        tracing::info!("{}", local_sim_command(&cfg, bound));
    }
    let mut core = Core::new(cfg, udp_sockets, shared, media, tls_client, events, call_tx);
    core.one_shot = one_shot;
    core.reload_args = reload;
    core.loaded = Some(Box::new(loaded));
    core.certificate = certificate;
    core.hep = hep;
    core.run(core_rx, call_rx, signals).await;
    // The last ACK or BYE is written before the process goes.
    core.connections
        .flush(std::time::Duration::from_secs(1))
        .await;
    match core.unanswered.first() {
        Some(failed) if one_shot => anyhow::bail!("the call was not answered: {failed}"),
        _ => Ok(()),
    }
}

pub struct Core {
    cfg: ServeConfig,
    layer: TransactionLayer,
    policy: UasPolicy,
    connections: Connections,
    admission: Admission,
    started: Instant,
    calls: registry::Calls,
    media: Option<media_task::MediaShared>,
    events: Events,
    metrics: Arc<crate::metrics::Metrics>,
    call_tx: mpsc::Sender<CallInput>,
    pump_later: Vec<registry::CallKey>,
    /// Why a transaction's connection could not be made, until its transport error is handled:
    /// its method and the reason (a call then says what happened, not "no answer").
    connect_failures: HashMap<TransactionId, (Method, String)>,
    /// Bridged calls' own timers (the PBX's ring timeout), soonest first.
    call_timers: std::collections::BTreeSet<(Instant, registry::CallKey)>,
    call_done: Option<(String, tokio::sync::oneshot::Sender<()>)>,
    /// The core's generator (tags, per-call seeds), seeded from the OS at start.
    rng: StdRng,
    one_shot: bool,
    had_call: bool,
    /// Calls we placed that ended without an answer (`watrunk call` exits non-zero for them).
    unanswered: Vec<String>,
    /// Our registrations at PBXs as a trunk (`--pbx-register`), with the trunk of each.
    registrations: Vec<(usize, watrunk_call::Registration)>,
    /// Failed authentications logged at most so often (each is an event all the same).
    auth_log: LogThrottle,
    /// A new INVITE admitted before its transaction existed, by (Call-ID, branch): its call
    /// takes the verdict when the transaction layer hands the INVITE on.
    admitted: Option<((String, String), crate::config::NumberConfig)>,
    /// Set once SIGTERM or SIGINT came.
    draining: Option<lifecycle::Drain>,
    /// The flags SIGHUP reloads from, and the configuration they gave last.
    reload_args: Option<crate::config::ServeArgs>,
    loaded: Option<Box<ServeConfig>>,
    /// The TLS certificate SIGHUP may replace.
    certificate: Option<Arc<tls::ReloadableCert>>,
    /// `--hep`: where copies of the SIP messages go.
    hep: Option<crate::hep::Hep>,
}

impl Core {
    fn new(
        cfg: ServeConfig,
        udp: Vec<Arc<UdpSocket>>,
        shared: Shared,
        media: Option<media_task::MediaShared>,
        tls_client: tokio_rustls::TlsConnector,
        events: Events,
        call_tx: mpsc::Sender<CallInput>,
    ) -> Self {
        let mut rng = StdRng::from_entropy();
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let sent_by = match cfg.tls.map(|a| a.port()) {
            Some(5061) | None => cfg.hostname.clone(),
            Some(port) => format!("{}:{port}", cfg.hostname),
        };
        Core {
            layer: TransactionLayer::new(watrunk_sip::transaction::Config {
                timers: TimerConfig::default(),
                sent_by: Some(sent_by),
                udp_sent_by: cfg.udp.map(|a| udp_hostport(&cfg.hostname, a)),
                seed: rng.next_u64(),
                max_transactions: cfg.max_transactions,
                max_transactions_per_source: cfg.max_transactions_per_source,
                max_completed: cfg.max_completed,
                ..Default::default()
            }),
            policy: uas_policy(&cfg),
            connections: Connections::new(udp, tls_client, shared),
            admission: Admission::new(
                key,
                cfg.digest.clone(),
                cfg.calls.numbers.clone(),
                cfg.auth.clone(),
                cfg.bans,
                SERVER,
            ),
            started: Instant::now(),
            calls: registry::Calls::default(),
            media,
            metrics: events.metrics(),
            events,
            call_tx,
            pump_later: Vec::new(),
            connect_failures: HashMap::new(),
            call_timers: std::collections::BTreeSet::new(),
            call_done: None,
            rng,
            one_shot: false,
            had_call: false,
            unanswered: Vec::new(),
            registrations: Vec::new(),
            auth_log: LogThrottle::new(std::time::Duration::from_secs(10), 10),
            admitted: None,
            draining: None,
            reload_args: None,
            loaded: None,
            certificate: None,
            hep: None,
            cfg,
        }
    }

    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Inbound>,
        mut call_rx: mpsc::Receiver<CallInput>,
        mut signals: lifecycle::Signals,
    ) {
        self.registrations = self.pbx_registrations();
        loop {
            let deadline = self
                .layer
                .poll_timeout()
                .into_iter()
                .chain(self.call_timers.first().map(|(t, _)| *t))
                .chain(
                    self.registrations
                        .iter()
                        .filter_map(|(_, r)| r.poll_timeout()),
                )
                .chain(self.drain_timeout())
                .min();
            let far = Instant::now() + std::time::Duration::from_secs(3600);
            tokio::select! {
                m = rx.recv() => {
                    let Some(input) = m else { return };
                    self.handle(input);
                }
                c = call_rx.recv() => {
                    let Some(input) = c else { return };
                    self.on_call_input(input);
                }
                asked = signals.next() => self.on_signal(asked, Instant::now()),
                _ = tokio::time::sleep_until(deadline.unwrap_or(far).into()) => {
                    let now = Instant::now();
                    self.layer.handle_timeout(now);
                    self.call_timeouts(now);
                    for (_, r) in &mut self.registrations {
                        r.handle_timeout(now);
                    }
                    self.pump_registrations();
                    self.drain_timers(now);
                }
            }
            self.drain();
            if self.drained(Instant::now()) {
                tracing::info!("drained: stopping");
                return;
            }
            if !self.calls.is_empty() {
                self.had_call = true;
            } else if self.one_shot && self.had_call {
                return;
            }
        }
    }

    fn handle(&mut self, input: Inbound) {
        let now = Instant::now();
        match input {
            Inbound::Datagram {
                bytes,
                from,
                socket,
            } => {
                let peer = Peer {
                    transport: Transport::Udp,
                    addr: from,
                    conn: Some(socket as u64),
                };
                self.trace_in(&peer, &bytes);
                match Message::parse_datagram(&bytes) {
                    Ok(msg) => self.receive(now, msg, peer),
                    Err(e) => self.reject_unparseable(&e, &peer, &bytes),
                }
            }
            Inbound::Message {
                conn,
                transport,
                from,
                head,
                body,
            } => {
                let peer = Peer {
                    transport,
                    addr: from,
                    conn: Some(conn),
                };
                if self.cfg.sip_trace || self.hep.is_some() {
                    let mut all = head.clone();
                    all.extend_from_slice(&body);
                    self.trace_in(&peer, &all);
                }
                match Message::parse_framed(&head, &body) {
                    Ok(msg) => self.receive(now, msg, peer),
                    Err(e) => self.reject_unparseable(&e, &peer, &head),
                }
            }
            Inbound::BadFrame {
                conn,
                transport,
                from,
                error,
            } => {
                let peer = Peer {
                    transport,
                    addr: from,
                    conn: Some(conn),
                };
                let answer = match &error {
                    FramingError::Unrecoverable { detail, head } => {
                        Message::parse_head(head).err().or_else(|| {
                            // The head itself is fine; the framing (Content-Length) is what failed.
                            match Message::parse_head(head) {
                                Ok((Message::Request(r), _)) => Some(bad_request_from(&r, detail)),
                                _ => None,
                            }
                        })
                    }
                    FramingError::TooLarge {
                        head: Some(head),
                        limit,
                    } => match Message::parse_head(head) {
                        Ok((Message::Request(r), _)) => {
                            let mut resp = Response::to_request(
                                &r,
                                513,
                                format!("Message Too Large (limit {limit} octets)"),
                                None,
                            );
                            resp.headers.push("Server", SERVER);
                            self.send_bytes(&peer, resp.to_bytes());
                            None
                        }
                        _ => None,
                    },
                    FramingError::TooLarge { head: None, .. } => None,
                };
                if let Some(e) = answer {
                    if let Some(resp) = e.response() {
                        self.send_bytes(&peer, with_server(resp).to_bytes());
                    }
                }
                self.connections.close(conn);
            }
            Inbound::Opened {
                conn,
                transport,
                remote,
                tx,
                ..
            } => {
                self.metrics.connection_opened(transport_name(transport));
                self.connections.opened(conn, transport, remote, tx)
            }
            Inbound::ConnectFailed { conn, reason } => {
                tracing::warn!("{reason}");
                for id in self.connections.connect_failed(conn) {
                    if let Some(req) = self.layer.request(id) {
                        self.connect_failures
                            .insert(id, (req.method.clone(), reason.clone()));
                    }
                    self.layer.handle_transport_error(id);
                }
            }
            Inbound::Closed { conn } => {
                if let Some(transport) = self.connections.closed(conn) {
                    self.metrics.connection_closed(transport_name(transport));
                }
            }
            Inbound::Idle { conn } => {
                // A call outlives any idle timer: its BYE and Meta's go over this connection.
                let Some(remote) = self.connections.remote(conn) else {
                    return;
                };
                if !self.calls.may_use(conn, remote) {
                    self.connections.close(conn);
                }
            }
        }
    }

    fn receive(&mut self, now: Instant, mut msg: Message, peer: Peer) {
        if let Message::Response(r) = &msg {
            self.metrics.received_response(r.status);
        }
        if let Message::Request(r) = &mut msg {
            stamp_received(r, peer.addr);
            if let Some(refusal) = self.refused_statelessly(r, &peer) {
                self.send_bytes(&peer, refusal.to_bytes());
                return;
            }
        }
        if let Err(e) = self.layer.handle_incoming(now, msg, peer) {
            tracing::debug!("{e}");
        }
    }

    /// A new INVITE to a business number is admitted or refused before any transaction exists:
    /// a challenge, a 403 or a 404 costs no state and is not retransmitted (a retransmitted
    /// INVITE gets another), so that a flood of unauthenticated INVITEs holds nothing. An
    /// admitted INVITE's verdict waits for its transaction. Requests that fail validation, PBX
    /// INVITEs and retransmissions go the usual way.
    fn refused_statelessly(&mut self, req: &Request, from: &Peer) -> Option<Response> {
        if req.method == Method::INVITE
            && req.to().is_none_or(|t| t.tag().is_none())
            && !self.layer.is_retransmission(req)
        {
            if let Some(refusal) = self.drain_refusal(req) {
                return Some(refusal);
            }
        }
        if req.method != Method::INVITE
            || req.to().is_some_and(|t| t.tag().is_some())
            || self.layer.is_retransmission(req)
            || check_request(req, &self.policy).is_err()
            || self.pbx_of(req, from).is_some()
        {
            return None;
        }
        let to_tag = local_tag(req);
        let now_secs = self.started.elapsed().as_secs() + 1;
        let verdict = self
            .admission
            .admit(req, from.addr.ip().to_canonical(), &to_tag, now_secs);
        self.auth_reports();
        match verdict {
            Verdict::Refuse(r) => Some(r),
            Verdict::Admit(number) => {
                self.admitted = Some((invite_key(req), number));
                None
            }
        }
    }

    /// A request we cannot parse still gets its 400/505 with the reason; responses and non-SIP are dropped.
    fn reject_unparseable(&mut self, e: &ParseError, peer: &Peer, bytes: &[u8]) {
        tracing::debug!("unparseable message from {}: {e}", peer.addr);
        let Some(resp) = e.response() else { return };
        // Over UDP the answer goes to the packet's source address and port, like every other response
        // (symmetric signalling, RFC 3581), even when the Via could not be read.
        let _ = bytes;
        self.send_bytes(peer, with_server(resp).to_bytes());
    }

    fn drain(&mut self) {
        while let Some(out) = self.layer.poll_output() {
            match out {
                Output::Transmit { id, to, message } => {
                    let bytes = message.to_bytes();
                    self.send_bytes_for(id, &to, bytes);
                }
                Output::Event(ev) => self.on_event(ev),
            }
            self.pump_pending();
        }
        self.admitted = None;
    }

    fn on_event(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Request { id, request, from } => {
                if let Some(resp) = self.answer(id, &request, &from) {
                    if let Err(e) = self.layer.respond(now, id, resp) {
                        tracing::debug!("respond: {e}");
                    }
                }
            }
            Event::Ack { request, .. } => self.on_ack(&request),
            Event::Cancelled { request, .. } => self.on_cancelled(&request),
            Event::Response { id, response } => match self.registration_of(id) {
                Some(r) => {
                    r.handle_response(now, id, &response);
                    self.pump_registrations();
                }
                None => self.on_response(id, &response),
            },
            Event::Timeout { id, reason } => {
                tracing::info!("transaction {id} timed out: {reason:?}");
                match self.registration_of(id) {
                    Some(r) => {
                        r.handle_request_timeout(now, id);
                        self.pump_registrations();
                    }
                    None => self.on_timeout(id, reason == TimeoutReason::NoAck),
                }
            }
            Event::TransportError { id } => {
                tracing::info!("transaction {id}: transport error");
                let failure = self.connect_failures.remove(&id);
                match (self.registration_of(id), failure) {
                    (Some(r), _) => {
                        r.handle_request_timeout(now, id);
                        self.pump_registrations();
                    }
                    (None, Some((method, reason))) => self.on_send_failure(id, &method, &reason),
                    (None, None) => self.on_timeout(id, false),
                }
            }
            _ => {}
        }
    }

    /// The UAS core's answer to a new request (None: no response now, e.g. ACK, or a call took it).
    fn answer(&mut self, id: TransactionId, req: &Request, from: &Peer) -> Option<Response> {
        if req.method == Method::ACK {
            return None;
        }
        let to_tag = local_tag(req);
        if let Err(rejection) = check_request(req, &self.policy) {
            return Some(with_server(rejection.response(req, Some(&to_tag))));
        }
        let in_dialog = req.to().is_some_and(|t| t.tag().is_some());
        if in_dialog || req.method == Method::BYE {
            if let Some(answer) = self.in_dialog_request(id, req) {
                return answer;
            }
            return Some(reply(
                req,
                481,
                "Call/Transaction Does Not Exist (no such dialog)",
                &to_tag,
            ));
        }
        if req.method == Method::OPTIONS {
            // A draining server answers a proxy's keepalive 503, so that it is taken out of
            // rotation (Kamailio's dispatcher; docs/scale-out.md) while its live calls go on.
            if let Some(refusal) = self.drain_refusal(req) {
                return Some(refusal);
            }
            let mut r = reply(req, 200, "OK", &to_tag);
            r.headers.push("Allow", self.policy.allow_header());
            r.headers.push("Accept", "application/sdp");
            return Some(r);
        }
        if let Some(trunk) = self.pbx_of(req, from) {
            if let Some(pbx) = self.cfg.calls.pbxs.get(trunk).filter(|p| p.challenge) {
                let now_secs = self.started.elapsed().as_secs() + 1;
                let password = pbx.password.clone().unwrap_or_default();
                let username = pbx.username.clone();
                let refusal = self.admission.admit_pbx(
                    req,
                    from.addr.ip().to_canonical(),
                    &to_tag,
                    username.as_deref(),
                    &password,
                    now_secs,
                );
                self.auth_reports();
                if let Some(refusal) = refusal {
                    return Some(refusal);
                }
            }
            return self.pbx_invite(id, req, &to_tag, trunk);
        }
        if req.method == Method::INVITE {
            let now_secs = self.started.elapsed().as_secs() + 1;
            let verdict = match self.admitted.take() {
                Some((key, number)) if key == invite_key(req) => Verdict::Admit(number),
                _ => {
                    let v =
                        self.admission
                            .admit(req, from.addr.ip().to_canonical(), &to_tag, now_secs);
                    self.auth_reports();
                    v
                }
            };
            return match verdict {
                Verdict::Admit(number) => self.incoming_invite(id, req, from, &number, &to_tag),
                Verdict::Refuse(r) => Some(r),
            };
        }
        Some(reply(req, 501, "Not Implemented", &to_tag))
    }

    /// What admission has to say: each failed authentication (logged, throttled) and each ban,
    /// as events.
    fn auth_reports(&mut self) {
        while let Some(report) = self.admission.poll_report() {
            match report {
                admission::AuthReport::Failed {
                    source,
                    number,
                    detail,
                    source_failures,
                    number_failures,
                } => {
                    if let Some(line) = self.auth_log.line(
                        Instant::now(),
                        format_args!("authentication failed from {source} for {number}: {detail} ({source_failures} from this source, {number_failures} for this number)"),
                        "failures",
                    ) {
                        tracing::warn!("{line}");
                    }
                    self.events.emit(serde_json::json!({
                        "event": "auth.failed", "source": source.to_string(), "number": number,
                        "detail": detail, "source_failures": source_failures,
                        "number_failures": number_failures,
                    }));
                }
                admission::AuthReport::Banned {
                    source,
                    secs,
                    failures,
                } => {
                    tracing::warn!("{source} banned for {secs} s after {failures} failed authentications: everything it sends gets 403");
                    self.events.emit(serde_json::json!({
                        "event": "auth.banned", "source": source.to_string(), "secs": secs,
                        "failures": failures,
                    }));
                }
            }
        }
    }

    fn send_bytes(&mut self, to: &Peer, bytes: Vec<u8>) {
        self.send_bytes_for(None, to, bytes)
    }

    fn send_bytes_for(&mut self, id: Option<TransactionId>, to: &Peer, bytes: Vec<u8>) {
        self.metrics.sent(&bytes);
        self.trace_out(to, &bytes);
        self.connections.send(id, to, bytes);
    }

    fn trace_in(&self, peer: &Peer, bytes: &[u8]) {
        if let Some(hep) = &self.hep {
            let local = hep.local_end(&self.cfg, peer.transport, peer.addr);
            hep.send(
                peer.addr,
                local,
                peer.transport == Transport::Udp,
                &self.hep_copy(bytes),
            );
        }
        if self.cfg.sip_trace {
            tracing::info!(
                "<<< {:?} {}\n{}",
                peer.transport,
                peer.addr,
                self.traced(bytes)
            );
        }
    }

    fn trace_out(&self, peer: &Peer, bytes: &[u8]) {
        if let Some(hep) = &self.hep {
            let local = hep.local_end(&self.cfg, peer.transport, peer.addr);
            hep.send(
                local,
                peer.addr,
                peer.transport == Transport::Udp,
                &self.hep_copy(bytes),
            );
        }
        if self.cfg.sip_trace {
            tracing::info!(
                ">>> {:?} {}\n{}",
                peer.transport,
                peer.addr,
                self.traced(bytes)
            );
        }
    }

    /// A message as HEP gets it: its secrets masked as in the trace, unless `--sip-trace-unmasked`.
    fn hep_copy<'a>(&self, bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if self.cfg.sip_trace_unmasked {
            std::borrow::Cow::Borrowed(bytes)
        } else {
            std::borrow::Cow::Owned(watrunk_sip::trace::masked(bytes).into_bytes())
        }
    }

    /// A message as the trace shows it: its secrets masked unless `--sip-trace-unmasked`.
    fn traced(&self, bytes: &[u8]) -> String {
        if self.cfg.sip_trace_unmasked {
            String::from_utf8_lossy(bytes).into_owned()
        } else {
            watrunk_sip::trace::masked(bytes)
        }
    }
}

/// A transport as the metrics label it.
fn transport_name(transport: watrunk_sip::Transport) -> &'static str {
    match transport {
        watrunk_sip::Transport::Udp => "udp",
        watrunk_sip::Transport::Tcp => "tcp",
        watrunk_sip::Transport::Tls => "tls",
    }
}

/// `--hep` and `--key-log` as the server starts: the collector's socket and the open key log.
fn debugging_start(
    cfg: &ServeConfig,
    tls_bound: Option<std::net::SocketAddr>,
) -> Result<(Option<crate::hep::Hep>, Option<Arc<crate::keylog::KeyLog>>)> {
    let hep = match cfg.debug.hep {
        Some(addr) => {
            tracing::info!(
                "--hep: copies of every SIP message go to {addr} (capture agent {})",
                cfg.debug.hep_id
            );
            Some(crate::hep::Hep::new(addr, cfg.debug.hep_id, tls_bound)?)
        }
        None => None,
    };
    let key_log = match &cfg.debug.key_log {
        Some(path) => {
            let log = crate::keylog::KeyLog::open(path)?;
            tracing::warn!(
                "--key-log: every call's SRTP keys and DTLS secrets are written to {}; whoever reads it can decrypt the calls. Debugging only: turn it off and delete the file afterwards",
                path.display()
            );
            Some(log)
        }
        None => None,
    };
    Ok((hep, key_log))
}

fn with_server(mut r: Response) -> Response {
    r.headers.push("Server", SERVER);
    r
}

fn reply(req: &Request, status: u16, reason: &str, to_tag: &str) -> Response {
    with_server(Response::to_request(req, status, reason, Some(to_tag)))
}

fn bad_request_from(req: &Request, detail: &str) -> ParseError {
    ParseError::bad_request(detail, &req.headers)
}

/// The command that places a simulated WhatsApp call to this server from this host, trusting its
/// self-signed certificate (found in the default state directory, else named with `--ca`).
fn local_sim_command(cfg: &ServeConfig, bound: SocketAddr) -> String {
    let ip = match bound.ip() {
        ip if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
        ip => ip,
    };
    let mut command = format!(
        "try a call from this host: watrunk sim call {} --server-name {}",
        SocketAddr::new(ip, bound.port()),
        cfg.hostname
    );
    if cfg.state_dir != tls::default_state_dir() {
        let cert = tls::self_signed_path(&cfg.hostname, &cfg.state_dir);
        command += &format!(" --ca {}", cert.display());
    }
    match cfg.calls.numbers.values().next() {
        Some(n) => {
            command += &format!(" --to {}", n.number);
            if n.challenge {
                command += " --password-file <the number's SIP password file>";
            }
        }
        None => command += " --to +NUMBER (after adding --number, --sink and --media-ip)",
    }
    command
}

/// The certificate's origin, as the reload log and event say it.
fn cert_origin_name(origin: &CertOrigin) -> String {
    match origin {
        CertOrigin::Configured(p) => p.display().to_string(),
        CertOrigin::SelfSignedNew(p) | CertOrigin::SelfSignedExisting(p) => {
            format!("{} (self-signed)", p.display())
        }
    }
}

/// What tells one new INVITE from another until its transaction exists: Call-ID and branch.
fn invite_key(req: &Request) -> (String, String) {
    (
        req.call_id().unwrap_or_default().to_string(),
        req.top_via()
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default(),
    )
}

/// A To tag that is the same for retransmissions of one request (so a stateless answer repeats).
fn local_tag(req: &Request) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.call_id().hash(&mut h);
    req.from()
        .and_then(|f| f.tag().map(str::to_string))
        .hash(&mut h);
    req.top_via()
        .and_then(|v| v.branch().map(str::to_string))
        .hash(&mut h);
    format!("wt{:016x}", h.finish())
}

/// Descriptors kept back from SIP connections: the media socket, each call's sink socket, files.
const DESCRIPTORS_KEPT: u64 = 256;

/// Raises the soft open-files limit to the hard one and returns how many connections fit in it
/// beside what calls need: at most `wanted`. Connections beyond are refused at accept, before the
/// process runs out of descriptors.
fn connections_within_open_files(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    let fits = limit.rlim_cur.saturating_sub(DESCRIPTORS_KEPT).max(64);
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    if fits < wanted {
        tracing::warn!(
            "open-files limit {}: at most {fits} SIP connections (limits.max_connections is {wanted}); raise it with `ulimit -n` or LimitNOFILE=",
            limit.rlim_cur
        );
    }
    wanted.min(fits)
}

/// How requests over UDP name us (Via, Contact): the UDP listener's address, or our hostname at
/// its port when it listens on every address.
pub(crate) fn udp_hostport(hostname: &str, udp: std::net::SocketAddr) -> String {
    if udp.ip().is_unspecified() {
        format!("{hostname}:{}", udp.port())
    } else {
        udp.to_string()
    }
}

/// What the UAS core lets through to the calls: with a PBX leg, UPDATE (a session refresh or an
/// offer in the PBX's dialog), INFO with its DTMF bodies and REFER (a transfer) too; the WhatsApp leg refuses them on its own.
fn uas_policy(cfg: &ServeConfig) -> UasPolicy {
    let mut policy = UasPolicy::default();
    if !cfg.calls.pbxs.is_empty() {
        policy.allowed.push(watrunk_sip::Method::UPDATE);
        policy.allowed.push(watrunk_sip::Method::INFO);
        policy.allowed.push(watrunk_sip::Method::REFER);
        policy.allowed.push(watrunk_sip::Method::PRACK);
        // A PBX's INVITE may require session timers (RFC 4028) and reliable provisional
        // responses (RFC 3262): its leg answers them.
        policy.supported.push("timer".into());
        policy.supported.push("100rel".into());
        policy.content_types.extend([
            "application/dtmf-relay".to_string(),
            "application/dtmf".to_string(),
        ]);
    }
    policy
}
