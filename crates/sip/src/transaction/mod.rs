//! The RFC 3261 §17 transaction layer, sans-IO: the four transaction state machines and the
//! [`TransactionLayer`] that owns them, matches messages to them, runs their timers on the caller's
//! clock and bounds how many may live at once.
//!
//! Two RFC 6026 changes are in: a server INVITE transaction that sent a 2xx stays in Accepted for
//! 64*T1 (absorbing INVITE retransmissions, matching the ACK, retransmitting the 2xx until the ACK
//! arrives as RFC 3261 §13.3.1.4 asks of the UAS core), and a client INVITE transaction that got a
//! 2xx stays in Accepted for 64*T1, passing 2xx retransmissions and forks to the TU.
//!
//! A CANCEL that matches a server INVITE without a final response is answered 200 and the INVITE
//! 487 automatically (RFC 3261 §9.2 "SHOULD"); the TU learns it from [`Event::Cancelled`].

mod client;
mod key;
mod server;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use client::ack_for_non_2xx;
use client::{ClientInvite, ClientNonInvite};
use key::{AckKey, ClientKey, ServerKey};
use server::{ServerInvite, ServerNonInvite};

pub use crate::dialog::new_tag;
use crate::header::{split_list, Headers};
use crate::message::{reason_phrase, Message, Request, Response};
use crate::method::Method;
use crate::values::{Via, MAGIC_COOKIE};

/// RFC 3261 timer values (§17.1.1.1, Table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate: first retransmission interval; 64*T1 is Timers B, F, H, J, L and M.
    pub t1: Duration,
    /// Cap on retransmission intervals of non-INVITE requests and of INVITE responses.
    pub t2: Duration,
    /// How long the network may hold a message: Timers I and K on unreliable transports.
    pub t4: Duration,
    /// Timer D on unreliable transports (RFC 3261: at least 32 s).
    pub d: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            d: Duration::from_secs(32),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub timers: TimerConfig,
    /// When a server INVITE transaction sends 100 Trying itself if the TU has sent no provisional
    /// response yet (RFC 3261 §17.2.1: 200 ms). `None`: never; the TU sends its own.
    pub trying_delay: Option<Duration>,
    /// Live transactions at most. A new request beyond it is answered 503 (with Retry-After) by
    /// the layer, unless it belongs to a dialog (a To tag: BYE, re-INVITE, UPDATE ... of calls
    /// that are up are never refused for overload); a new client transaction is refused with
    /// [`SendError::TooManyTransactions`].
    pub max_transactions: usize,
    /// Live server transactions one source address may hold at most (out of dialog; the same
    /// 503 beyond it), so that one flooding host cannot take every slot.
    pub max_transactions_per_source: usize,
    /// Answered server transactions kept to absorb retransmissions (non-INVITE over UDP: Timer
    /// J, 32 s; an INVITE whose 2xx was ACKed: Timer L, 32 s): they count against neither limit
    /// above, and beyond this many the oldest is let go early (a retransmission of its request
    /// after that is taken as new).
    pub max_completed: usize,
    /// The Retry-After of an overload 503, seconds.
    pub overload_retry_after_secs: u32,
    /// `host[:port]` for the Via the layer adds to outgoing requests that carry none.
    pub sent_by: Option<String>,
    /// The same for requests over UDP (the UDP listener's address), when it differs.
    pub udp_sent_by: Option<String>,
    /// Seeds the layer's generator (branches, the To tags of its own answers). The binary draws it
    /// from the OS; tests pin it.
    pub seed: u64,
}

impl From<TimerConfig> for Config {
    fn from(timers: TimerConfig) -> Self {
        Config {
            timers,
            ..Config::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timers: TimerConfig::default(),
            trying_delay: Some(Duration::from_millis(200)),
            max_transactions: 8192,
            max_transactions_per_source: 1024,
            max_completed: 65_536,
            overload_retry_after_secs: 5,
            sent_by: None,
            udp_sent_by: None,
            seed: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Reliable transports get no retransmissions and zero Timers D, I, J, K (RFC 3261 §17).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// Where a message came from or goes to. Opaque to the layer: the binary fills it and gets it back
/// in [`Output::Transmit`]; `conn` names a stream connection when there is one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub conn: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransactionId(u64);

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tx{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `message` to `to`. `id` is the transaction that sends it (for
    /// [`TransactionLayer::handle_transport_error`]); `None` for stateless sends (503 under
    /// overload, [`TransactionLayer::send_stateless`]).
    Transmit {
        id: Option<TransactionId>,
        to: Peer,
        message: Message,
    },
    Event(Event),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new request created a server transaction; answer it with [`TransactionLayer::respond`].
    /// Retransmissions are absorbed and not reported again.
    Request {
        id: TransactionId,
        request: Request,
        from: Peer,
    },
    /// A response for a client transaction: provisionals, the final response, and for INVITE every
    /// further 2xx (retransmissions, forks), which the UAC core must ACK.
    Response {
        id: TransactionId,
        response: Response,
    },
    /// An ACK for a 2xx: for the dialog, not a transaction. `invite_id` is the server INVITE
    /// transaction whose 2xx it acknowledges (its retransmissions then stop), `None` when none is
    /// live.
    Ack {
        invite_id: Option<TransactionId>,
        request: Request,
        from: Peer,
    },
    /// A CANCEL matched this server INVITE before its final response: the layer has answered the
    /// CANCEL 200 and the INVITE 487. `request` is the CANCEL (it may carry a Reason header).
    Cancelled {
        invite_id: TransactionId,
        request: Request,
        from: Peer,
    },
    Timeout {
        id: TransactionId,
        reason: TimeoutReason,
    },
    /// The binary reported that sending for this transaction failed; it is terminated.
    TransportError { id: TransactionId },
    /// The transaction is gone; its id will not appear again.
    Terminated { id: TransactionId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutReason {
    /// The peer never sent a final response: Timer B or F, or 64*T1 after our CANCEL (RFC 3261
    /// §9.1).
    NoFinalResponse,
    /// The peer never ACKed our final response: Timer H, or Timer L after a 2xx (RFC 3261
    /// §13.3.1.4: the session should then be ended with a BYE).
    NoAck,
    /// Our TU gave no final response to a non-INVITE request within 64*T1.
    NoTuResponse,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("local misuse: ACK is not a transaction; send it with send_stateless")]
    AckIsNotATransaction,
    #[error("local misuse: the request has no Via and no sent_by is configured")]
    NoVia,
    #[error("local misuse: the top Via of the request does not parse")]
    BadVia,
    #[error("local misuse: CSeq is missing or its method differs from the request method")]
    BadCSeq,
    #[error("local misuse: the request has no {0}")]
    MissingHeader(&'static str),
    #[error("local misuse: a client transaction with this branch and method is live")]
    DuplicateBranch,
    #[error("overload: {limit} transactions are live")]
    TooManyTransactions { limit: usize },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    #[error("local misuse: no live transaction with this id")]
    UnknownTransaction,
    #[error("local misuse: responses are sent on server transactions only")]
    NotServerTransaction,
    #[error("local misuse: status {0} is outside 100-699")]
    InvalidStatus(u16),
    #[error("local misuse: a final response was already sent")]
    AlreadyFinal,
    #[error("local misuse: a 2xx to INVITE needs a To tag (it creates a dialog)")]
    NoToTag,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    #[error("local misuse: no live transaction with this id")]
    UnknownTransaction,
    #[error("local misuse: only a client INVITE transaction can be cancelled")]
    NotClientInvite,
    #[error("not yet: a CANCEL may only be sent after a provisional response (RFC 3261 §9.1)")]
    NoProvisionalYet,
    #[error("too late: the INVITE already has a final response")]
    AlreadyFinal,
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Why an incoming message was discarded. Both are the peer's doing; log them, answer nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IncomingError {
    #[error("peer error: message without a usable top Via or CSeq")]
    NoTransactionHeaders,
    #[error(
        "peer error: {status} response matches no client transaction (RFC 3261 §17.1.3: discarded)"
    )]
    UnmatchedResponse { status: u16 },
}

/// A fresh RFC 3261 branch: the magic cookie and 22 random alphanumerics from `rng`.
pub fn new_branch(rng: &mut impl Rng) -> String {
    let mut b = String::with_capacity(MAGIC_COOKIE.len() + 22);
    b.push_str(MAGIC_COOKIE);
    b.extend(rng.sample_iter(Alphanumeric).take(22).map(char::from));
    b
}

/// The CANCEL for a client INVITE (RFC 3261 §9.1): Request-URI, Call-ID, From, To, the top Via
/// (same branch) and Route of the INVITE, CSeq number with method CANCEL.
pub fn build_cancel(invite: &Request) -> Request {
    let mut c = Request::new(Method::CANCEL, invite.uri.clone());
    if let Some(via) = invite.headers.values("Via").next() {
        c.headers.push("Via", via.to_string());
    }
    c.headers.push("Max-Forwards", "70");
    for name in ["From", "To", "Call-ID"] {
        c.headers.copy_from(&invite.headers, name);
    }
    let seq = invite.cseq().map_or(0, |c| c.seq);
    c.headers.push("CSeq", format!("{seq} CANCEL"));
    c.headers.copy_from(&invite.headers, "Route");
    c
}

/// Replaces the first Via value (the first element of the first Via line), keeping the rest.
pub(crate) fn set_top_via(headers: &mut Headers, via: &Via) {
    if let Some(line) = headers.first_mut("Via") {
        let mut value = via.to_string();
        let rest: Vec<String> = split_list(line).skip(1).map(str::to_string).collect();
        for r in rest {
            value.push_str(", ");
            value.push_str(&r);
        }
        *line = value;
    } else {
        headers.push_front("Via", via.to_string());
    }
}

/// A retransmission timer: when it fires next and the interval that led there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Backoff {
    at: Instant,
    interval: Duration,
}

impl Backoff {
    fn start(now: Instant, interval: Duration) -> Self {
        Backoff {
            at: now + interval,
            interval,
        }
    }

    /// After a retransmission at `now`: double the interval, up to `cap` when there is one.
    fn next(self, now: Instant, cap: Option<Duration>) -> Self {
        let doubled = self.interval * 2;
        Backoff::start(now, cap.map_or(doubled, |c| doubled.min(c)))
    }
}

/// What a state machine may touch while it handles one input.
struct Ctx<'a> {
    id: TransactionId,
    peer: &'a Peer,
    timers: &'a TimerConfig,
    out: &'a mut VecDeque<Output>,
}

impl Ctx<'_> {
    fn reliable(&self) -> bool {
        self.peer.transport.is_reliable()
    }

    /// 64*T1: Timers B, F, H, J, L, M.
    fn long(&self) -> Duration {
        self.timers.t1 * 64
    }

    /// Timers D, I, J, K: their value on unreliable transports, zero on reliable ones.
    fn unreliable_only(&self, d: Duration) -> Duration {
        if self.reliable() {
            Duration::ZERO
        } else {
            d
        }
    }

    fn send(&mut self, message: Message) {
        self.out.push_back(Output::Transmit {
            id: Some(self.id),
            to: self.peer.clone(),
            message,
        });
    }

    fn send_request(&mut self, r: Request) {
        self.send(Message::Request(r));
    }

    fn send_response(&mut self, r: Response) {
        self.send(Message::Response(r));
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }
}

#[derive(Debug)]
#[allow(clippy::enum_variant_names)] // the RFC's names
enum Machine {
    ClientInvite(ClientInvite),
    ClientNonInvite(ClientNonInvite),
    ServerInvite(ServerInvite),
    ServerNonInvite(ServerNonInvite),
}

impl Machine {
    fn request(&self) -> &Request {
        match self {
            Machine::ClientInvite(t) => t.request(),
            Machine::ClientNonInvite(t) => t.request(),
            Machine::ServerInvite(t) => t.request(),
            Machine::ServerNonInvite(t) => t.request(),
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        match self {
            Machine::ClientInvite(t) => t.next_timeout(),
            Machine::ClientNonInvite(t) => t.next_timeout(),
            Machine::ServerInvite(t) => t.next_timeout(),
            Machine::ServerNonInvite(t) => t.next_timeout(),
        }
    }

    fn on_timeout(&mut self, now: Instant, cx: &mut Ctx<'_>) {
        match self {
            Machine::ClientInvite(t) => t.on_timeout(now, cx),
            Machine::ClientNonInvite(t) => t.on_timeout(now, cx),
            Machine::ServerInvite(t) => t.on_timeout(now, cx),
            Machine::ServerNonInvite(t) => t.on_timeout(now, cx),
        }
    }

    /// A server transaction that only absorbs retransmissions: an answered non-INVITE one
    /// (Completed, Timer J) or an INVITE whose 2xx was ACKed (Accepted, Timer L).
    fn waits_for_retransmissions(&self) -> bool {
        match self {
            Machine::ServerNonInvite(t) => t.is_completed(),
            Machine::ServerInvite(t) => t.is_acked_accepted(),
            _ => false,
        }
    }

    fn is_terminated(&self) -> bool {
        match self {
            Machine::ClientInvite(t) => t.is_terminated(),
            Machine::ClientNonInvite(t) => t.is_terminated(),
            Machine::ServerInvite(t) => t.is_terminated(),
            Machine::ServerNonInvite(t) => t.is_terminated(),
        }
    }

    fn terminate(&mut self) {
        match self {
            Machine::ClientInvite(t) => t.terminate(),
            Machine::ClientNonInvite(t) => t.terminate(),
            Machine::ServerInvite(t) => t.terminate(),
            Machine::ServerNonInvite(t) => t.terminate(),
        }
    }
}

#[derive(Debug)]
enum EntryKey {
    Server(ServerKey),
    Client(ClientKey),
}

#[derive(Debug)]
struct Entry {
    peer: Peer,
    machine: Machine,
    key: EntryKey,
    ack_key: Option<AckKey>,
    /// The deadline this entry has in the timer set.
    scheduled: Option<Instant>,
    /// Whether the TU knows this id (the layer's own CANCEL server transactions are silent).
    visible: bool,
    /// The source it counts against (`Config::max_transactions_per_source`), if any.
    source: Option<IpAddr>,
    /// A server transaction waiting out Timer J or, ACKed, Timer L (`Config::max_completed`).
    completed: bool,
}

/// All transactions of one endpoint.
///
/// Feed it with [`handle_incoming`](Self::handle_incoming), [`send_request`](Self::send_request),
/// [`respond`](Self::respond), [`cancel`](Self::cancel) and
/// [`handle_timeout`](Self::handle_timeout); drain [`poll_output`](Self::poll_output) after each
/// call and sleep until [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct TransactionLayer {
    config: Config,
    next_id: u64,
    entries: HashMap<TransactionId, Entry>,
    server_keys: HashMap<ServerKey, TransactionId>,
    client_keys: HashMap<ClientKey, TransactionId>,
    ack_keys: HashMap<AckKey, TransactionId>,
    /// Live out-of-dialog server transactions per source address.
    per_source: HashMap<IpAddr, usize>,
    /// The entries that are `completed`, oldest first (some may be gone already).
    completed: VecDeque<TransactionId>,
    completed_count: usize,
    timers: BTreeSet<(Instant, TransactionId)>,
    out: VecDeque<Output>,
    rng: StdRng,
}

impl TransactionLayer {
    pub fn new(config: impl Into<Config>) -> Self {
        let config = config.into();
        TransactionLayer {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            next_id: 0,
            entries: HashMap::new(),
            server_keys: HashMap::new(),
            client_keys: HashMap::new(),
            ack_keys: HashMap::new(),
            per_source: HashMap::new(),
            completed: VecDeque::new(),
            completed_count: 0,
            timers: BTreeSet::new(),
            out: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Transactions that count against `Config::max_transactions`: all but the answered
    /// non-INVITE server transactions that only wait for retransmissions.
    fn busy(&self) -> usize {
        self.entries.len() - self.completed_count
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The request of a live transaction: as sent (with the Via the layer completed) for a client
    /// transaction, as received for a server transaction.
    pub fn request(&self, id: TransactionId) -> Option<&Request> {
        self.entries.get(&id).map(|e| e.machine.request())
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<TransactionId> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect();
        for id in due {
            self.drive(id, |m, cx| m.on_timeout(now, cx));
        }
    }

    /// A message from the network (already framed, parsed and validated).
    pub fn handle_incoming(
        &mut self,
        now: Instant,
        message: Message,
        from: Peer,
    ) -> Result<(), IncomingError> {
        match message {
            Message::Request(r) => self.incoming_request(now, r, from),
            Message::Response(r) => self.incoming_response(now, r),
        }
    }

    /// Starts a client transaction. The top Via gets a fresh branch if it has none; a request
    /// without Via gets one built from [`Config::sent_by`]; Max-Forwards 70 is added if missing.
    pub fn send_request(
        &mut self,
        now: Instant,
        request: Request,
        to: Peer,
    ) -> Result<TransactionId, SendError> {
        if request.method == Method::ACK {
            return Err(SendError::AckIsNotATransaction);
        }
        if self.busy() >= self.config.max_transactions {
            return Err(SendError::TooManyTransactions {
                limit: self.config.max_transactions,
            });
        }
        self.start_client(now, request, to)
    }

    /// Sends a response on a server transaction.
    pub fn respond(
        &mut self,
        now: Instant,
        id: TransactionId,
        response: Response,
    ) -> Result<(), RespondError> {
        if !(100..=699).contains(&response.status) {
            return Err(RespondError::InvalidStatus(response.status));
        }
        let entry = self
            .entries
            .get(&id)
            .ok_or(RespondError::UnknownTransaction)?;
        let ack_key = match &entry.machine {
            Machine::ServerInvite(_) if (200..300).contains(&response.status) => {
                Some(AckKey::of_response(&response).ok_or(RespondError::NoToTag)?)
            }
            Machine::ServerInvite(_) | Machine::ServerNonInvite(_) => None,
            _ => return Err(RespondError::NotServerTransaction),
        };
        let result = self
            .drive(id, |m, cx| match m {
                Machine::ServerInvite(t) => t.respond(now, response, cx),
                Machine::ServerNonInvite(t) => t.respond(now, response, cx),
                _ => Err(RespondError::NotServerTransaction),
            })
            .unwrap_or(Err(RespondError::UnknownTransaction));
        if let (Ok(()), Some(key)) = (&result, ack_key) {
            if let Some(entry) = self.entries.get_mut(&id) {
                if let Some(old) = entry.ack_key.take() {
                    self.ack_keys.remove(&old);
                }
                self.ack_keys.insert(key.clone(), id);
                entry.ack_key = Some(key);
            }
        }
        result
    }

    /// Cancels a client INVITE transaction that has received a provisional response: sends the
    /// CANCEL of RFC 3261 §9.1 on a client transaction of its own (whose id is returned) and gives
    /// the INVITE 64*T1 more for its final response. CANCEL is not counted against the transaction
    /// limit.
    pub fn cancel(
        &mut self,
        now: Instant,
        invite_id: TransactionId,
    ) -> Result<TransactionId, CancelError> {
        let (cancel, peer) = match self.entries.get(&invite_id) {
            None => return Err(CancelError::UnknownTransaction),
            Some(Entry {
                machine: Machine::ClientInvite(t),
                peer,
                ..
            }) => (build_cancel(t.request()), peer.clone()),
            Some(_) => return Err(CancelError::NotClientInvite),
        };
        self.drive(invite_id, |m, cx| match m {
            Machine::ClientInvite(t) => t.cancel_sent(now, cx),
            _ => Err(CancelError::NotClientInvite),
        })
        .unwrap_or(Err(CancelError::UnknownTransaction))?;
        Ok(self.start_client(now, cancel, peer)?)
    }

    /// Sends a message outside any transaction: the ACK for a 2xx (a request without Via gets one
    /// as in [`send_request`](Self::send_request)), or a stateless response.
    pub fn send_stateless(&mut self, message: Message, to: Peer) -> Result<(), SendError> {
        let message = match message {
            Message::Request(mut r) => {
                self.prepare_via(&mut r, to.transport)?;
                Message::Request(r)
            }
            m => m,
        };
        self.out.push_back(Output::Transmit {
            id: None,
            to,
            message,
        });
        Ok(())
    }

    /// The binary could not send a [`Output::Transmit`] of this transaction (RFC 3261 §17.1.4,
    /// §17.2.4): the TU gets [`Event::TransportError`] and the transaction ends.
    pub fn handle_transport_error(&mut self, id: TransactionId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if entry.machine.is_terminated() {
            return;
        }
        entry.machine.terminate();
        if entry.visible {
            self.out
                .push_back(Output::Event(Event::TransportError { id }));
        }
        self.settle(id);
    }

    fn alloc_id(&mut self) -> TransactionId {
        self.next_id += 1;
        TransactionId(self.next_id)
    }

    /// Runs `f` on a transaction's machine, then reschedules or removes it.
    fn drive<R>(
        &mut self,
        id: TransactionId,
        f: impl FnOnce(&mut Machine, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let entry = self.entries.get_mut(&id)?;
        let mut cx = Ctx {
            id,
            peer: &entry.peer,
            timers: &self.config.timers,
            out: &mut self.out,
        };
        let r = f(&mut entry.machine, &mut cx);
        self.settle(id);
        Some(r)
    }

    fn insert(
        &mut self,
        id: TransactionId,
        peer: Peer,
        machine: Machine,
        key: EntryKey,
        visible: bool,
    ) {
        match &key {
            EntryKey::Server(k) => self.server_keys.insert(k.clone(), id),
            EntryKey::Client(k) => self.client_keys.insert(k.clone(), id),
        };
        self.entries.insert(
            id,
            Entry {
                peer,
                machine,
                key,
                ack_key: None,
                scheduled: None,
                visible,
                source: None,
                completed: false,
            },
        );
        self.settle(id);
    }

    fn settle(&mut self, id: TransactionId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let terminated = entry.machine.is_terminated();
        let next = if terminated {
            None
        } else {
            entry.machine.next_timeout()
        };
        if next != entry.scheduled {
            if let Some(t) = entry.scheduled {
                self.timers.remove(&(t, id));
            }
            if let Some(t) = next {
                self.timers.insert((t, id));
            }
            entry.scheduled = next;
        }
        if !terminated {
            if !entry.completed && entry.machine.waits_for_retransmissions() {
                entry.completed = true;
                let source = entry.source.take();
                self.release_source(source);
                self.completed_count += 1;
                self.completed.push_back(id);
                self.let_go_of_the_oldest_completed();
            }
            return;
        }
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        match entry.key {
            EntryKey::Server(k) if self.server_keys.get(&k) == Some(&id) => {
                self.server_keys.remove(&k);
            }
            EntryKey::Client(k) if self.client_keys.get(&k) == Some(&id) => {
                self.client_keys.remove(&k);
            }
            _ => {}
        }
        if let Some(k) = entry.ack_key {
            if self.ack_keys.get(&k) == Some(&id) {
                self.ack_keys.remove(&k);
            }
        }
        self.release_source(entry.source);
        if entry.completed {
            self.completed_count -= 1;
        }
        if entry.visible {
            self.out.push_back(Output::Event(Event::Terminated { id }));
        }
    }

    fn release_source(&mut self, source: Option<IpAddr>) {
        if let Some(ip) = source {
            if let Some(n) = self.per_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&ip);
                }
            }
        }
    }

    /// Beyond `Config::max_completed`, the oldest answered transactions end before their Timer J
    /// (or L).
    fn let_go_of_the_oldest_completed(&mut self) {
        while self.completed_count > self.config.max_completed {
            let Some(oldest) = self.completed.pop_front() else {
                return;
            };
            if self.entries.get(&oldest).is_some_and(|e| e.completed) {
                self.drive(oldest, |m, _| m.terminate());
            }
        }
        // Ids of transactions already gone are dropped from the front as they come up.
        while self
            .completed
            .front()
            .is_some_and(|id| !self.entries.get(id).is_some_and(|e| e.completed))
        {
            self.completed.pop_front();
        }
    }

    fn prepare_via(&mut self, req: &mut Request, transport: Transport) -> Result<(), SendError> {
        if !req.headers.contains("Via") {
            let sent_by = match (transport, &self.config.udp_sent_by) {
                (Transport::Udp, Some(udp)) => udp.as_str(),
                _ => self.config.sent_by.as_deref().ok_or(SendError::NoVia)?,
            };
            let rport = if transport == Transport::Udp {
                ";rport"
            } else {
                ""
            };
            req.headers.push_front(
                "Via",
                format!(
                    "SIP/2.0/{} {sent_by};branch={}{rport}",
                    transport.via_token(),
                    new_branch(&mut self.rng)
                ),
            );
            return Ok(());
        }
        let mut via = req.top_via().ok_or(SendError::BadVia)?;
        if via.branch().is_none() {
            via.params
                .push(("branch".into(), Some(new_branch(&mut self.rng))));
            set_top_via(&mut req.headers, &via);
        }
        Ok(())
    }

    fn start_client(
        &mut self,
        now: Instant,
        mut req: Request,
        to: Peer,
    ) -> Result<TransactionId, SendError> {
        if !req.cseq().is_some_and(|c| c.method == req.method) {
            return Err(SendError::BadCSeq);
        }
        for name in ["From", "To", "Call-ID"] {
            if !req.headers.contains(name) {
                return Err(SendError::MissingHeader(name));
            }
        }
        self.prepare_via(&mut req, to.transport)?;
        if !req.headers.contains("Max-Forwards") {
            req.headers.push("Max-Forwards", "70");
        }
        let key = ClientKey::of_request(&req).ok_or(SendError::BadVia)?;
        if self.client_keys.contains_key(&key) {
            return Err(SendError::DuplicateBranch);
        }
        let id = self.alloc_id();
        let mut cx = Ctx {
            id,
            peer: &to,
            timers: &self.config.timers,
            out: &mut self.out,
        };
        let machine = if req.method == Method::INVITE {
            Machine::ClientInvite(ClientInvite::start(now, req, &mut cx))
        } else {
            Machine::ClientNonInvite(ClientNonInvite::start(now, req, &mut cx))
        };
        self.insert(id, to, machine, EntryKey::Client(key), true);
        Ok(id)
    }

    fn incoming_response(&mut self, now: Instant, resp: Response) -> Result<(), IncomingError> {
        let key = ClientKey::of_response(&resp).ok_or(IncomingError::NoTransactionHeaders)?;
        let Some(&id) = self.client_keys.get(&key) else {
            return Err(IncomingError::UnmatchedResponse {
                status: resp.status,
            });
        };
        self.drive(id, |m, cx| match m {
            Machine::ClientInvite(t) => t.on_response(now, resp, cx),
            Machine::ClientNonInvite(t) => t.on_response(now, resp, cx),
            Machine::ServerInvite(_) | Machine::ServerNonInvite(_) => {}
        });
        Ok(())
    }

    fn incoming_request(
        &mut self,
        now: Instant,
        req: Request,
        from: Peer,
    ) -> Result<(), IncomingError> {
        let key = ServerKey::of(&req).ok_or(IncomingError::NoTransactionHeaders)?;
        if let Some(&id) = self.server_keys.get(&key) {
            self.drive(id, |m, cx| match m {
                Machine::ServerInvite(t) => t.on_request(now, req, &from, cx),
                Machine::ServerNonInvite(t) => t.on_request(cx),
                Machine::ClientInvite(_) | Machine::ClientNonInvite(_) => {}
            });
            return Ok(());
        }
        if req.method == Method::ACK {
            let invite = AckKey::of_request(&req).and_then(|k| self.ack_keys.get(&k).copied());
            match invite {
                Some(id) => {
                    self.drive(id, |m, cx| {
                        if let Machine::ServerInvite(t) = m {
                            t.on_request(now, req, &from, cx);
                        }
                    });
                }
                None => self.out.push_back(Output::Event(Event::Ack {
                    invite_id: None,
                    request: req,
                    from,
                })),
            }
            return Ok(());
        }
        if req.method == Method::CANCEL {
            self.incoming_cancel(now, req, from, key);
            return Ok(());
        }
        let in_dialog = req.to().is_some_and(|t| t.tag().is_some());
        let source = from.addr.ip().to_canonical();
        if !in_dialog {
            if self.busy() >= self.config.max_transactions {
                self.reject_overloaded(&req, from, "too many transactions");
                return Ok(());
            }
            if self.per_source.get(&source).copied().unwrap_or(0)
                >= self.config.max_transactions_per_source
            {
                self.reject_overloaded(&req, from, "too many transactions from this address");
                return Ok(());
            }
        }
        let id = self.alloc_id();
        self.out.push_back(Output::Event(Event::Request {
            id,
            request: req.clone(),
            from: from.clone(),
        }));
        let fresh_tag = if req.method == Method::INVITE {
            new_tag(&mut self.rng)
        } else {
            String::new()
        };
        let mut cx = Ctx {
            id,
            peer: &from,
            timers: &self.config.timers,
            out: &mut self.out,
        };
        let machine = if req.method == Method::INVITE {
            Machine::ServerInvite(ServerInvite::start(
                now,
                req,
                self.config.trying_delay,
                fresh_tag,
                &mut cx,
            ))
        } else {
            Machine::ServerNonInvite(ServerNonInvite::start(now, req, &cx))
        };
        self.insert(id, from, machine, EntryKey::Server(key), true);
        if !in_dialog {
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.source = Some(source);
                *self.per_source.entry(source).or_default() += 1;
            }
        }
        Ok(())
    }

    /// Whether a request is a retransmission of a live server transaction's (the layer answers
    /// it itself).
    pub fn is_retransmission(&self, req: &Request) -> bool {
        ServerKey::of(req).is_some_and(|k| self.server_keys.contains_key(&k))
    }

    /// A CANCEL that is not a retransmission (RFC 3261 §9.2): 200 if it matches a live server
    /// INVITE transaction (which then gets 487 unless it already has a final response), else 481.
    /// It may exceed the transaction limit when it matches, since it frees a slot.
    fn incoming_cancel(&mut self, now: Instant, req: Request, from: Peer, key: ServerKey) {
        let invite = self
            .server_keys
            .get(&key.with_method(Method::INVITE))
            .copied();
        if invite.is_none() && self.busy() >= self.config.max_transactions {
            self.reject_overloaded(&req, from, "too many transactions");
            return;
        }
        let to_tag = invite.and_then(|inv| match &mut self.entries.get_mut(&inv)?.machine {
            Machine::ServerInvite(t) => Some(t.to_tag()),
            _ => None,
        });
        let response = match &to_tag {
            Some(tag) => Response::to_request(&req, 200, reason_phrase(200), Some(tag)),
            None => {
                Response::to_request(&req, 481, reason_phrase(481), Some(&new_tag(&mut self.rng)))
            }
        };
        let id = self.alloc_id();
        let cx = Ctx {
            id,
            peer: &from,
            timers: &self.config.timers,
            out: &mut self.out,
        };
        let machine = ServerNonInvite::start(now, req.clone(), &cx);
        self.insert(
            id,
            from.clone(),
            Machine::ServerNonInvite(machine),
            EntryKey::Server(key),
            false,
        );
        self.drive(id, |m, cx| {
            if let Machine::ServerNonInvite(t) = m {
                // A fresh transaction in Trying accepts any final response.
                let _ = t.respond(now, response, cx);
            }
        });
        let Some(invite_id) = invite.filter(|_| to_tag.is_some()) else {
            return;
        };
        let cancelled = self
            .drive(invite_id, |m, cx| match m {
                Machine::ServerInvite(t) => t.cancel(now, cx),
                _ => false,
            })
            .unwrap_or(false);
        if cancelled {
            self.out.push_back(Output::Event(Event::Cancelled {
                invite_id,
                request: req,
                from,
            }));
        }
    }

    fn reject_overloaded(&mut self, req: &Request, from: Peer, why: &str) {
        let reason = format!("{} ({why})", reason_phrase(503));
        let mut resp = Response::to_request(req, 503, reason, Some(&new_tag(&mut self.rng)));
        resp.headers.push(
            "Retry-After",
            self.config.overload_retry_after_secs.to_string(),
        );
        self.out.push_back(Output::Transmit {
            id: None,
            to: from,
            message: Message::Response(resp),
        });
    }
}
