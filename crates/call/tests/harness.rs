//! Two invite sessions in virtual time, no sockets: ours and a far end (Meta-like, or a generic
//! PBX-like peer), each with its own transaction layer, joined by an in-memory wire that can add
//! Record-Route like Meta's edge proxy and lose messages. Media is a stand-in that hands each leg
//! a local description when asked and records what it was told to do. Flows: user- and
//! business-initiated calls with Meta's two digest challenges, Record-Route, CANCEL, a lost ACK,
//! BYE both ways, re-INVITE refused on the WhatsApp leg and answered on a generic one, hold and
//! resume both ways, an offerless re-INVITE, an UPDATE refresh, and glare.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use watrunk_call::{
    CallEvent, CallOutput, Direction, Ending, Leg, LegPolicy, LegSetup, Local, MediaIntent,
    OutboundCall, Reoffer, Side,
};
use watrunk_sdp::{
    self as sdp, Capabilities, Codec, Fingerprint, IceRole, Keying, LocalMedia, MediaPlan, Security,
};
use watrunk_sip::digest::{Algorithm, Authorization, NonceIssuer, Verifier};
use watrunk_sip::transaction::{
    Config, Event, Output, Peer, TimeoutReason, TransactionLayer, Transport,
};
use watrunk_sip::uri::Uri;
use watrunk_sip::{Message, Method, Request, Response};

const OURS: usize = 0;
const FAR: usize = 1;
const PASSWORD: &str = "s3cret-per-number";
/// Meta's edge and internal proxy, as they Record-Route (WHATSAPP-SIP §4.1).
const META_RR: [&str; 2] = [
    "<sip:wa.meta.vc;transport=tls;lr>",
    "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
];

/// A UAS's digest admission: challenges a new INVITE with SHA-256 and MD5 (Meta's order) and
/// checks the answer, recording what the UAC chose.
struct Admission {
    verifier: Verifier,
    realm: String,
    /// (username, algorithm, digest uri, Request-URI) of each accepted answer.
    accepted: Vec<(String, Algorithm, String, String)>,
}

impl Admission {
    fn new(realm: &str) -> Admission {
        Admission {
            verifier: Verifier::new(NonceIssuer::new([5; 32], 300), realm)
                .with_algorithms(&[Algorithm::Sha256, Algorithm::Md5]),
            realm: realm.into(),
            accepted: Vec::new(),
        }
    }

    /// None: the INVITE may proceed; else the 407 or 403 to send.
    fn check(&mut self, req: &Request) -> Option<Response> {
        let creds = req
            .headers
            .get_all("Proxy-Authorization")
            .filter_map(|v| Authorization::parse(v).ok())
            .find(|a| a.realm == self.realm);
        match creds {
            Some(a) => {
                let uri = req.uri.to_string();
                match self
                    .verifier
                    .verify(&a, "INVITE", &uri, PASSWORD, &req.body, 10)
                {
                    Ok(()) => {
                        self.accepted
                            .push((a.username.clone(), a.algorithm, a.uri.clone(), uri));
                        None
                    }
                    Err(e) => Some(Response::to_request(
                        req,
                        403,
                        format!("Forbidden ({e})"),
                        Some("uas"),
                    )),
                }
            }
            None => {
                let mut r =
                    Response::to_request(req, 407, "Proxy Authentication Required", Some("uas"));
                for alg in [Algorithm::Sha256, Algorithm::Md5] {
                    r.headers.push(
                        "Proxy-Authenticate",
                        self.verifier.challenge(alg, 10, false).to_string(),
                    );
                }
                Some(r)
            }
        }
    }
}

/// One side: a transaction layer, at most one leg, its admission and what its media was told.
struct End {
    addr: SocketAddr,
    layer: TransactionLayer,
    setup: LegSetup,
    leg: Option<Leg>,
    admission: Option<Admission>,
    /// Our media stand-in's description is ICE-lite (Meta's relay).
    lite: bool,
    /// A new INVITE's leg is answered at once (else it rings until the test answers).
    auto_answer: bool,
    rng: StdRng,
    media: Vec<MediaIntent>,
    events: Vec<CallEvent>,
    /// Every response this side's layer sent and every request it received, in order.
    sent_responses: Vec<Response>,
    received: Vec<Request>,
}

impl End {
    fn new(addr: &str, setup: LegSetup, seed: u64) -> End {
        End {
            addr: addr.parse().unwrap(),
            layer: TransactionLayer::new(Config {
                sent_by: Some(addr.to_string()),
                seed,
                ..Config::default()
            }),
            setup,
            leg: None,
            admission: None,
            lite: false,
            auto_answer: true,
            rng: StdRng::seed_from_u64(seed + 1000),
            media: Vec::new(),
            events: Vec::new(),
            sent_responses: Vec::new(),
            received: Vec::new(),
        }
    }

    fn leg(&mut self) -> &mut Leg {
        self.leg.as_mut().expect("a leg")
    }

    /// The media stand-in's local description for a `Prepare`.
    fn local_media(&mut self, security: Security) -> LocalMedia {
        let mut caps = self.setup.capabilities.clone();
        caps.security = security;
        let mut local = LocalMedia::for_capabilities(&caps, &mut self.rng)
            .with_candidates([SocketAddr::new(self.addr.ip(), 40000)])
            .with_fingerprint(Fingerprint::sha256(vec![
                self.addr.ip().to_string().len()
                    as u8;
                32
            ]));
        local.ice_lite = self.lite;
        local
    }

    /// The first `method` request this side received.
    fn first_received(&self, method: Method) -> Request {
        self.received
            .iter()
            .find(|r| r.method == method)
            .cloned()
            .unwrap_or_else(|| panic!("no {method} received"))
    }

    fn ended(&self) -> Option<&Ending> {
        self.events.iter().find_map(|e| match e {
            CallEvent::Ended(e) => Some(e),
            _ => None,
        })
    }

    fn plans(&self) -> Vec<&MediaPlan> {
        self.media
            .iter()
            .filter_map(|m| match m {
                MediaIntent::Start { plan, .. } | MediaIntent::Update { plan } => Some(&**plan),
                _ => None,
            })
            .collect()
    }

    fn last_plan(&self) -> &MediaPlan {
        self.plans().last().copied().expect("media was started")
    }
}

type WireHook = Box<dyn FnMut(usize, &mut Message) -> bool>;

/// Both ends and the wire between them, on a virtual clock.
struct Pair {
    now: Instant,
    ends: [End; 2],
    wire: VecDeque<(usize, Message)>,
    /// Sees every message leaving `from`; may change it; `false` loses it.
    hook: WireHook,
}

impl Pair {
    fn new(ours: End, far: End) -> Pair {
        Pair {
            now: Instant::now(),
            ends: [ours, far],
            wire: VecDeque::new(),
            hook: Box::new(|_, _| true),
        }
    }

    fn peer_of(&self, side: usize) -> Peer {
        Peer {
            transport: Transport::Tls,
            addr: self.ends[1 - side].addr,
            conn: Some(1),
        }
    }

    /// Runs both sides until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for side in [OURS, FAR] {
                moved |= self.drain_layer(side);
                moved |= self.drain_leg(side);
            }
            if let Some((from, mut msg)) = self.wire.pop_front() {
                moved = true;
                if (self.hook)(from, &mut msg) {
                    let to = 1 - from;
                    let peer = Peer {
                        transport: Transport::Tls,
                        addr: self.ends[from].addr,
                        conn: Some(1),
                    };
                    let now = self.now;
                    let _ = self.ends[to].layer.handle_incoming(now, msg, peer);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the pair never settled");
    }

    /// Moves the clock by `d` in 100 ms steps, firing every timer on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + Duration::from_millis(100)).min(end);
            let now = self.now;
            for side in [OURS, FAR] {
                let e = &mut self.ends[side];
                if e.layer.poll_timeout().is_some_and(|t| t <= now) {
                    e.layer.handle_timeout(now);
                }
                if let Some(leg) = e.leg.as_mut() {
                    if leg.poll_timeout().is_some_and(|t| t <= now) {
                        leg.handle_timeout(now);
                    }
                }
            }
            self.settle();
        }
    }

    fn drain_layer(&mut self, side: usize) -> bool {
        let mut moved = false;
        while let Some(out) = self.ends[side].layer.poll_output() {
            moved = true;
            match out {
                Output::Transmit { message, .. } => {
                    if let Message::Response(r) = &message {
                        self.ends[side].sent_responses.push(r.clone());
                    }
                    self.wire.push_back((side, message));
                }
                Output::Event(ev) => self.on_event(side, ev),
            }
        }
        moved
    }

    fn on_event(&mut self, side: usize, ev: Event) {
        let now = self.now;
        let e = &mut self.ends[side];
        match ev {
            Event::Request { id, request, .. } => {
                e.received.push(request.clone());
                let in_dialog = request.to().is_some_and(|t| t.tag().is_some());
                if in_dialog || request.method != Method::INVITE {
                    match e.leg.as_mut() {
                        Some(leg) => leg.handle_request(id, &request),
                        None => {
                            let r = Response::to_request(&request, 481, "No Dialog", None);
                            let _ = e.layer.respond(now, id, r);
                        }
                    }
                    return;
                }
                if let Some(refusal) = e.admission.as_mut().and_then(|a| a.check(&request)) {
                    let _ = e.layer.respond(now, id, refusal);
                    return;
                }
                match Leg::incoming(now, request, id, e.setup.clone(), &mut e.rng) {
                    Ok(mut leg) => {
                        if e.auto_answer {
                            leg.answer().expect("a new leg rings");
                        }
                        e.leg = Some(leg);
                    }
                    Err(refusal) => {
                        let _ = e.layer.respond(now, id, refusal);
                    }
                }
            }
            Event::Ack { request, .. } => {
                e.received.push(request.clone());
                if let Some(leg) = e.leg.as_mut() {
                    leg.handle_ack(now, &request);
                }
            }
            Event::Cancelled { request, .. } => {
                e.received.push(request.clone());
                if let Some(leg) = e.leg.as_mut() {
                    leg.handle_cancel(&request);
                }
            }
            Event::Response { id, response } => {
                if let Some(leg) = e.leg.as_mut() {
                    leg.handle_response(now, id, &response);
                }
            }
            Event::Timeout { id, reason } => {
                if let Some(leg) = e.leg.as_mut() {
                    if reason == TimeoutReason::NoAck {
                        leg.handle_ack_timeout();
                    } else {
                        leg.handle_request_timeout(id);
                    }
                }
            }
            Event::TransportError { id } => {
                if let Some(leg) = e.leg.as_mut() {
                    leg.handle_request_timeout(id);
                }
            }
            _ => {}
        }
    }

    fn drain_leg(&mut self, side: usize) -> bool {
        let now = self.now;
        let peer = self.peer_of(side);
        let mut moved = false;
        loop {
            let e = &mut self.ends[side];
            let Some(out) = e.leg.as_mut().and_then(Leg::poll_output) else {
                return moved;
            };
            moved = true;
            match out {
                CallOutput::Respond {
                    transaction,
                    response,
                } => {
                    e.layer.respond(now, transaction, response).unwrap();
                }
                CallOutput::Send(req) => {
                    let method = req.method.clone();
                    match e.layer.send_request(now, req, peer.clone()) {
                        Ok(id) => e.leg().request_sent(&method, id),
                        Err(err) => e.leg().handle_send_failure(&method, &err.to_string()),
                    }
                }
                CallOutput::Ack(ack) => {
                    e.layer
                        .send_stateless(Message::Request(ack), peer.clone())
                        .unwrap();
                }
                CallOutput::Cancel { invite } => {
                    e.layer.cancel(now, invite).unwrap();
                }
                CallOutput::Media(MediaIntent::Prepare { security, ice_role }) => {
                    e.media.push(MediaIntent::Prepare { security, ice_role });
                    let local = e.local_media(security);
                    e.leg().media_ready(local);
                }
                CallOutput::Media(intent) => e.media.push(intent),
                CallOutput::Event(ev) => e.events.push(ev),
            }
        }
    }

    fn ours(&mut self) -> &mut End {
        &mut self.ends[OURS]
    }

    fn far(&mut self) -> &mut End {
        &mut self.ends[FAR]
    }
}

fn whatsapp_setup(number: &str, host: &str, security: Security) -> LegSetup {
    LegSetup {
        local: Local {
            contact: format!("<sip:{number}@{host};transport=tls>"),
            user_agent: "harness".into(),
            warning_host: host.into(),
        },
        capabilities: Capabilities::whatsapp(security),
        policy: LegPolicy::whatsapp(),
    }
}

fn pbx_setup(user: &str, host: &str) -> LegSetup {
    LegSetup {
        local: Local {
            contact: format!("<sip:{user}@{host};transport=tls>"),
            user_agent: "harness-pbx".into(),
            warning_host: host.into(),
        },
        capabilities: Capabilities::pbx(
            Security::Plain,
            vec![Codec::Opus, Codec::Pcmu, Codec::TelephoneEvent],
        ),
        policy: LegPolicy::generic(),
    }
}

fn call(from: &str, host: &str, to: &str, domain: &str, password: Option<&str>) -> OutboundCall {
    OutboundCall {
        from_number: from.into(),
        hostname: host.into(),
        to_user: to.into(),
        domain: domain.into(),
        transport: "tls".into(),
        password: password.map(str::to_string),
        username: None,
        asserted_identity: false,
    }
}

/// Meta's edge adds its Record-Route to the INVITEs that pass it toward `to_side`.
fn record_route_toward(to_side: usize) -> WireHook {
    Box::new(move |from, msg| {
        if let Message::Request(r) = msg {
            if r.method == Method::INVITE
                && 1 - from == to_side
                && !r.headers.contains("Record-Route")
            {
                for rr in META_RR {
                    r.headers.push("Record-Route", rr);
                }
            }
        }
        true
    })
}

/// Our side: the business number's WhatsApp leg.
fn business(seed: u64, security: Security) -> End {
    End::new(
        "198.18.0.1:5061",
        whatsapp_setup("+15550001111", "sip.example.com", security),
        seed,
    )
}

/// The far side as Meta: its relay's description is ICE-lite.
fn meta(seed: u64, security: Security) -> End {
    let mut far = End::new(
        "198.18.0.2:5061",
        whatsapp_setup("+12195550714", "wa.meta.vc", security),
        seed,
    );
    far.lite = true;
    far
}

/// A WhatsApp user (Meta) calls the business number.
fn user_call(password: Option<&str>) -> OutboundCall {
    call(
        "+12195550714",
        "wa.meta.vc",
        "+15550001111",
        "sip.example.com",
        password,
    )
}

/// The business calls a WhatsApp user through Meta.
fn business_call(password: Option<&str>) -> OutboundCall {
    call(
        "+15550001111",
        "sip.example.com",
        "+12195550714",
        "wa.meta.vc",
        password,
    )
}

impl Pair {
    /// `side`'s leg re-offers with `direction`; the pair runs until nothing moves.
    fn reoffer(&mut self, side: usize, how: Reoffer, direction: Direction) {
        self.ends[side].leg().reoffer(how, direction).unwrap();
        self.settle();
    }

    /// An in-dialog request of the far side's (the caller's) dialog, built by hand: what a PBX
    /// sends that our own leg would not.
    fn far_request(&self, method: Method, cseq: u32) -> Request {
        let ours = &self.ends[OURS];
        let ok = last_response_to(ours, Method::INVITE);
        let invite = ours
            .received
            .iter()
            .find(|r| r.method == Method::INVITE)
            .cloned()
            .unwrap();
        let mut r = Request::new(
            method.clone(),
            Uri::parse("sip:bridge@198.18.0.1:5061").unwrap(),
        );
        r.headers.push("From", invite.headers.get("From").unwrap());
        r.headers.push("To", ok.headers.get("To").unwrap());
        r.headers.push("Call-ID", invite.call_id().unwrap());
        r.headers.push("CSeq", format!("{cseq} {method}"));
        r
    }

    /// `side` places `call` with its own leg setup; the pair runs until nothing moves.
    fn dial(&mut self, side: usize, call: OutboundCall, seed: u64) {
        let setup = self.ends[side].setup.clone();
        let leg = Leg::outgoing(call, setup, &mut StdRng::seed_from_u64(seed)).unwrap();
        self.ends[side].leg = Some(leg);
        self.settle();
    }
}

/// A WhatsApp user calls the business: Meta (far) places the call, we challenge it and answer.
fn user_calls_business(security: Security) -> Pair {
    let mut ours = business(1, security);
    ours.admission = Some(Admission::new("sip.example.com"));
    let mut pair = Pair::new(ours, meta(2, security));
    pair.hook = record_route_toward(OURS);
    pair.dial(FAR, user_call(Some(PASSWORD)), 20);
    pair
}

fn assert_media_agrees(ours: &MediaPlan, far: &MediaPlan) {
    assert_eq!(
        ours.audio_pt, far.audio_pt,
        "one Opus payload type both ways"
    );
    match (&ours.keying, &far.keying) {
        (
            Keying::Dtls {
                role: ours_role, ..
            },
            Keying::Dtls { role: far_role, .. },
        ) => assert_ne!(ours_role, far_role, "one DTLS client, one server"),
        (
            Keying::Sdes {
                local_key: ours_local,
                remote_key: ours_remote,
                ..
            },
            Keying::Sdes {
                local_key: far_local,
                remote_key: far_remote,
                ..
            },
        ) => {
            assert_eq!(
                ours_local, far_remote,
                "the far side unprotects with our key"
            );
            assert_eq!(far_local, ours_remote, "we unprotect with theirs");
        }
        other => panic!("keying differs: {other:?}"),
    }
}

#[test]
fn a_user_calls_the_business_through_two_challenges_and_record_route_and_hangs_up() {
    let mut pair = user_calls_business(Security::Dtls);
    // Our 407 carried SHA-256 then MD5; Meta's leg answered SHA-256 for the number without '+'.
    let challenge = pair.ours().sent_responses[0].clone();
    assert_eq!(challenge.status, 407);
    let offered: Vec<&str> = challenge.headers.get_all("Proxy-Authenticate").collect();
    assert!(
        offered[0].contains("SHA-256") && offered[1].contains("MD5"),
        "{offered:?}"
    );
    let accepted = pair.ours().admission.as_ref().unwrap().accepted.clone();
    assert_eq!(accepted.len(), 1);
    let (username, algorithm, digest_uri, ruri) = &accepted[0];
    assert_eq!(username, "12195550714");
    assert_eq!(*algorithm, Algorithm::Sha256);
    assert_eq!(digest_uri, ruri);

    // 180 then 200, both with Meta's Record-Route exactly and in order.
    let statuses: Vec<u16> = pair
        .ours()
        .sent_responses
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [407, 180, 200]);
    for r in &pair.ours().sent_responses[1..] {
        let rr: Vec<&str> = r.headers.get_all("Record-Route").collect();
        assert_eq!(rr, META_RR);
    }
    // Meta's ACK came back through the route set, and both media started on agreeing plans.
    assert!(pair.ours().received.iter().any(|r| r.method == Method::ACK));
    assert!(pair.ours().events.contains(&CallEvent::Confirmed));
    assert!(matches!(
        pair.ours().media[0],
        MediaIntent::Prepare {
            security: Security::Dtls,
            ice_role: IceRole::Controlling
        }
    ));
    let ours = pair.ours().last_plan().clone();
    let far = pair.far().last_plan().clone();
    assert_media_agrees(&ours, &far);
    assert!(
        ours.remote_ice.as_ref().unwrap().lite,
        "Meta's relay is ICE-lite"
    );

    // The user hangs up: Meta's BYE follows its route set to us.
    pair.far().leg().hang_up("user hung up", 16);
    pair.settle();
    let bye = pair.ours().first_received(Method::BYE);
    let routes: Vec<&str> = bye.headers.get_all("Route").collect();
    assert_eq!(
        routes,
        [META_RR[1], META_RR[0]],
        "the UAC's route set is the RR reversed"
    );
    let ending = pair.ours().ended().cloned().expect("ended");
    assert_eq!(ending.by, Side::Remote);
    assert!(pair.ours().media.contains(&MediaIntent::Stop));
    assert_eq!(pair.far().ended().unwrap().by, Side::Local);
}

#[test]
fn the_business_calls_a_user_answers_metas_sha256_challenge_and_acks_through_the_route_set() {
    let mut far = meta(4, Security::Sdes);
    far.admission = Some(Admission::new("wa.meta.vc"));
    let mut pair = Pair::new(business(3, Security::Sdes), far);
    pair.hook = record_route_toward(FAR);
    pair.dial(OURS, business_call(Some(PASSWORD)), 30);

    let accepted = pair.far().admission.as_ref().unwrap().accepted.clone();
    let (username, algorithm, digest_uri, ruri) = &accepted[0];
    assert_eq!(
        username, "15550001111",
        "the username is the number without '+'"
    );
    assert_eq!(
        *algorithm,
        Algorithm::Sha256,
        "SHA-256 is preferred over MD5"
    );
    assert_eq!(digest_uri, ruri, "the digest uri is the Request-URI");
    assert_eq!(ruri, "sip:+12195550714@wa.meta.vc;transport=tls");

    // The ACK for Meta's 200 goes through Meta's route set, to its Contact.
    let ack = pair
        .far()
        .received
        .iter()
        .rfind(|r| r.method == Method::ACK)
        .cloned()
        .expect("the 2xx's ACK");
    let routes: Vec<&str> = ack.headers.get_all("Route").collect();
    assert_eq!(routes, [META_RR[1], META_RR[0]]);
    assert!(ack.uri.to_string().contains("+12195550714@wa.meta.vc"));
    assert!(pair.ours().events.contains(&CallEvent::Answered));
    let ours = pair.ours().last_plan().clone();
    let far = pair.far().last_plan().clone();
    assert_media_agrees(&ours, &far);

    // The business hangs up.
    pair.ours().leg().hang_up("done", 16);
    pair.settle();
    let bye = pair.far().first_received(Method::BYE);
    let routes: Vec<&str> = bye.headers.get_all("Route").collect();
    assert_eq!(routes, [META_RR[1], META_RR[0]]);
    assert!(bye
        .headers
        .get("Reason")
        .unwrap()
        .starts_with("Q.850;cause=16"));
    assert_eq!(pair.far().ended().unwrap().by, Side::Remote);
    assert_eq!(pair.ours().ended().unwrap().by, Side::Local);
}

#[test]
fn hanging_up_while_the_user_rings_cancels_with_487_on_both_sides() {
    let mut far = meta(6, Security::Dtls);
    far.auto_answer = false;
    let mut pair = Pair::new(business(5, Security::Dtls), far);
    pair.dial(OURS, business_call(None), 40);
    assert!(pair.ours().events.contains(&CallEvent::Ringing));
    assert!(pair.far().leg().is_ringing());
    pair.ours().leg().hang_up("business hung up", 16);
    pair.settle();
    assert!(pair
        .far()
        .received
        .iter()
        .any(|r| r.method == Method::CANCEL));
    let ours = pair.ours().ended().cloned().expect("ended");
    assert_eq!(ours.status, Some(487));
    let far = pair.far().ended().cloned().expect("the far end ended too");
    assert_eq!(far.status, Some(487));
    assert_eq!(far.by, Side::Remote);
    assert!(pair.ours().media.contains(&MediaIntent::Stop));
    assert!(
        !pair
            .far()
            .media
            .iter()
            .any(|m| matches!(m, MediaIntent::Start { .. })),
        "an unanswered leg never starts media"
    );
}

#[test]
fn a_lost_ack_makes_us_send_bye_with_its_reason_after_timer_h() {
    let mut pair = Pair::new(business(7, Security::Dtls), meta(8, Security::Dtls));
    // Every ACK toward us is lost (a broken route set, WHATSAPP-SIP §4.3).
    pair.hook = Box::new(|from, msg| {
        !(from == FAR && matches!(msg, Message::Request(r) if r.method == Method::ACK))
    });
    pair.dial(FAR, user_call(None), 50);
    assert_eq!(pair.ours().leg().state_name(), "answered");
    pair.advance(Duration::from_secs(31));
    assert!(pair.ours().ended().is_none(), "Timer H is 64*T1 = 32 s");
    pair.advance(Duration::from_secs(2));
    let bye = pair.far().first_received(Method::BYE);
    assert!(bye.headers.get("Reason").unwrap().contains("no ACK"));
    let ending = pair
        .ours()
        .ended()
        .cloned()
        .expect("ended once the BYE was answered");
    assert_eq!(ending.by, Side::Local);
    assert!(ending.reason.contains("Record-Route"), "{}", ending.reason);
}

/// A call between our leg and a far end, both generic (a PBX) unless `ours_whatsapp`, up and
/// confirmed, the far end calling us.
fn pbx_calls_us(ours_whatsapp: bool) -> Pair {
    let ours_setup = if ours_whatsapp {
        let mut s = whatsapp_setup("+15550001111", "sip.example.com", Security::Dtls);
        s.capabilities =
            Capabilities::pbx(Security::Plain, vec![Codec::Opus, Codec::TelephoneEvent]);
        s
    } else {
        pbx_setup("bridge", "watrunk.example.com")
    };
    let ours = End::new("198.18.0.1:5061", ours_setup, 9);
    let far = End::new("198.18.0.2:5061", pbx_setup("1000", "pbx.example.com"), 10);
    let mut pair = Pair::new(ours, far);
    pair.dial(
        FAR,
        call(
            "1000",
            "pbx.example.com",
            "bridge",
            "watrunk.example.com",
            None,
        ),
        60,
    );
    assert_eq!(pair.ours().leg().state_name(), "up");
    assert_eq!(pair.far().leg().state_name(), "up");
    pair
}

fn last_response_to(end: &End, method: Method) -> Response {
    end.sent_responses
        .iter()
        .rfind(|r| r.cseq().is_some_and(|c| c.method == method))
        .cloned()
        .unwrap_or_else(|| panic!("no response to {method}"))
}

#[test]
fn the_whatsapp_leg_refuses_a_reinvite_with_488_and_keeps_the_call() {
    let mut pair = pbx_calls_us(true);
    let starts = pair.ours().plans().len();
    pair.reoffer(FAR, Reoffer::Invite, Direction::SendOnly);
    let refused = last_response_to(&pair.ends[OURS], Method::INVITE);
    assert_eq!(refused.status, 488);
    assert!(
        refused.reason.contains("no re-INVITE"),
        "{}",
        refused.reason
    );
    assert_eq!(
        pair.ours().plans().len(),
        starts,
        "our media is not touched"
    );
    assert!(pair.far().events.contains(&CallEvent::ReofferRefused(488)));
    assert_eq!(pair.ours().leg().state_name(), "up");
    assert_eq!(pair.far().leg().state_name(), "up");
    assert!(pair.ours().ended().is_none());
}

#[test]
fn a_generic_leg_answers_hold_and_resume_per_rfc_3264() {
    let mut pair = pbx_calls_us(false);
    assert_eq!(pair.ours().last_plan().direction, Direction::SendRecv);
    // The PBX holds us: sendonly offered, recvonly answered.
    pair.reoffer(FAR, Reoffer::Invite, Direction::SendOnly);
    let ok = last_response_to(&pair.ends[OURS], Method::INVITE);
    assert_eq!(ok.status, 200);
    let answer = sdp::parse(&ok.body).unwrap();
    assert!(sdp::print(&answer).contains("a=recvonly"));
    assert!(matches!(
        pair.ours().media.last(),
        Some(MediaIntent::Update { .. })
    ));
    assert_eq!(pair.ours().last_plan().direction, Direction::RecvOnly);
    assert_eq!(pair.far().last_plan().direction, Direction::SendOnly);
    assert!(pair
        .ours()
        .events
        .contains(&CallEvent::MediaUpdated(Direction::RecvOnly)));
    // The re-INVITE's 2xx was ACKed.
    let acks = pair
        .ours()
        .received
        .iter()
        .filter(|r| r.method == Method::ACK)
        .count();
    assert_eq!(acks, 2, "the initial INVITE's and the re-INVITE's");
    // Inactive, then resumed.
    pair.reoffer(FAR, Reoffer::Update, Direction::Inactive);
    assert_eq!(pair.ours().last_plan().direction, Direction::Inactive);
    pair.reoffer(FAR, Reoffer::Invite, Direction::SendRecv);
    assert_eq!(pair.ours().last_plan().direction, Direction::SendRecv);
    assert_eq!(pair.far().last_plan().direction, Direction::SendRecv);
    // Every SDP we sent raised o='s version.
    let versions: Vec<String> = pair
        .ours()
        .sent_responses
        .iter()
        .filter(|r| !r.body.is_empty())
        .map(|r| {
            let text = String::from_utf8_lossy(&r.body).to_string();
            text.lines()
                .find(|l| l.starts_with("o="))
                .unwrap()
                .split(' ')
                .nth(2)
                .unwrap()
                .to_string()
        })
        .collect();
    let mut sorted = versions.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), versions.len(), "o= versions {versions:?}");
}

#[test]
fn we_hold_the_far_side_of_a_generic_leg_and_resume() {
    let mut pair = pbx_calls_us(false);
    pair.reoffer(OURS, Reoffer::Invite, Direction::SendOnly);
    assert_eq!(pair.ours().last_plan().direction, Direction::SendOnly);
    assert_eq!(pair.far().last_plan().direction, Direction::RecvOnly);
    // While held, their re-offer of sendrecv is answered sendonly: we still hold (RFC 3264 §6.1).
    pair.reoffer(FAR, Reoffer::Update, Direction::SendRecv);
    assert_eq!(pair.ours().last_plan().direction, Direction::SendOnly);
    pair.reoffer(OURS, Reoffer::Invite, Direction::SendRecv);
    assert_eq!(pair.ours().last_plan().direction, Direction::SendRecv);
    assert_eq!(pair.far().last_plan().direction, Direction::SendRecv);
}

#[test]
fn an_offerless_reinvite_gets_our_offer_and_its_ack_carries_the_answer() {
    let mut pair = pbx_calls_us(false);
    let updates_before = pair.ours().plans().len();
    // A PBX refreshing the session with an empty re-INVITE (connected-line updates do this).
    let mut reinvite = pair.far_request(Method::INVITE, 50);
    reinvite
        .headers
        .push("Contact", "<sip:1000@198.18.0.2:5061;transport=tls>");
    let now = pair.now;
    let peer = pair.peer_of(FAR);
    pair.far()
        .layer
        .send_request(now, reinvite.clone(), peer)
        .unwrap();
    pair.settle();
    let ok = last_response_to(&pair.ends[OURS], Method::INVITE);
    assert_eq!(ok.status, 200);
    let our_offer = sdp::parse(&ok.body).expect("our offer in the 200");
    // The PBX's answer goes in its ACK.
    let mut pbx = pair.far().local_media(Security::Plain);
    pbx.codecs = vec![Codec::Pcmu];
    let (answer, _) = sdp::answer(&our_offer, &pbx).unwrap();
    let mut ack = Request::new(
        Method::ACK,
        Uri::parse("sip:bridge@198.18.0.1:5061").unwrap(),
    );
    ack.headers
        .push("Via", "SIP/2.0/TLS 198.18.0.2:5061;branch=z9hG4bKackoffer1");
    for h in ["From", "Call-ID"] {
        ack.headers.push(h, reinvite.headers.get(h).unwrap());
    }
    ack.headers.push("To", ok.headers.get("To").unwrap());
    ack.headers.push("CSeq", "50 ACK");
    ack.headers.push("Content-Type", "application/sdp");
    ack.body = sdp::print(&answer).into_bytes();
    let peer = pair.peer_of(FAR);
    pair.far()
        .layer
        .send_stateless(Message::Request(ack), peer)
        .unwrap();
    pair.settle();
    assert_eq!(pair.ours().plans().len(), updates_before + 1);
    let plan = pair.ours().last_plan();
    assert_eq!(plan.codec, Codec::Pcmu, "the answer's codec");
    assert!(matches!(
        pair.ours().media.last(),
        Some(MediaIntent::Update { .. })
    ));
}

#[test]
fn an_update_without_an_offer_is_a_refresh_answered_200() {
    let mut pair = pbx_calls_us(false);
    let plans = pair.ours().plans().len();
    let mut update = pair.far_request(Method::UPDATE, 60);
    update.headers.push("Session-Expires", "1800;refresher=uac");
    let now = pair.now;
    let peer = pair.peer_of(FAR);
    pair.far().layer.send_request(now, update, peer).unwrap();
    pair.settle();
    let r = last_response_to(&pair.ends[OURS], Method::UPDATE);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(pair.ours().plans().len(), plans, "nothing renegotiated");
}

#[test]
fn glare_gets_491_both_ways_and_the_retries_settle_on_one_offer() {
    let mut pair = pbx_calls_us(false);
    // Both sides hold at the same moment: each re-INVITE crosses the other's.
    pair.ours()
        .leg()
        .reoffer(Reoffer::Invite, Direction::SendOnly)
        .unwrap();
    pair.reoffer(FAR, Reoffer::Invite, Direction::Inactive);
    let ours_491 = last_response_to(&pair.ends[OURS], Method::INVITE);
    let far_491 = last_response_to(&pair.ends[FAR], Method::INVITE);
    assert_eq!((ours_491.status, far_491.status), (491, 491));
    assert!(pair.ours().leg().poll_timeout().is_some());
    assert!(pair.far().leg().poll_timeout().is_some());
    // RFC 3261 §14.1: the Call-ID's owner (the far side placed the call) waits 2.1-4 s, we 0-2 s.
    let ours_at = pair.ours().leg().poll_timeout().unwrap() - pair.now;
    let far_at = pair.far().leg().poll_timeout().unwrap() - pair.now;
    assert!(ours_at <= Duration::from_secs(2), "{ours_at:?}");
    assert!(far_at >= Duration::from_millis(2100), "{far_at:?}");
    pair.advance(Duration::from_secs(5));
    // Ours went first and was answered with their wish (inactive); theirs came after and was
    // answered with ours (sendonly against inactive: inactive).
    let ours = pair.ours().last_plan().direction;
    let far = pair.far().last_plan().direction;
    assert_eq!(far, Direction::Inactive, "their hold came last: inactive");
    assert_eq!(ours, Direction::Inactive);
    assert!(pair.ours().ended().is_none() && pair.far().ended().is_none());
}
