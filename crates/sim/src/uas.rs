//! `watrunk sim serve`: Meta's side of business-initiated calls (WHATSAPP-SIP §3). TLS only. An
//! INVITE gets a 407 with two challenges (SHA-256, then MD5) and, with the right credentials
//! (username: the calling number without '+'), 100, 180 and a 200 with Meta's Record-Route,
//! Contact and an ICE-lite answer. Refused as Meta refuses: a From host other than the configured
//! business hostname (403 + Warning), an offer without ICE in DTLS mode (488), REGISTER (403), a
//! re-INVITE (500), session timers (500). The call ends by the business's BYE, after the hold time
//! (our BYE with x-wa-meta-call-duration), or after the RTP timeout (our BYE saying so).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rand::Rng;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use watrunk_sdp::{self as sdp, MediaPlan, Security};
use watrunk_sip::digest::{Algorithm, Authorization, NonceIssuer, Verifier};
use watrunk_sip::{new_tag, Dialog, Message, Method, Request, Response};

use super::judge::{self, Verdict, Violation};
use super::link::{is_new_invite, ByCallId, Link};
use super::media::{Leg, MediaOptions, Note, Relay};
use super::{emit, fork, meta_reason, new_via, Draws, SimServeArgs, META_DOMAIN, USER_AGENT};

/// Exit status: every call the business placed kept the rules the judge checks.
pub async fn run(args: SimServeArgs, mut draws: Draws) -> Result<bool> {
    let options = args.media.options();
    let relay = Arc::new(Relay::new(options.clone()).await?);
    let (tls, origin) = watrunk_sip::io::tls::server_config(&watrunk_sip::io::tls::CertSource {
        cert: args.cert.clone(),
        key: args.key.clone(),
        hostname: args.tls_name.clone(),
        state_dir: args.state_dir.clone(),
    })?;
    if let watrunk_sip::io::tls::CertOrigin::SelfSignedNew(p)
    | watrunk_sip::io::tls::CertOrigin::SelfSignedExisting(p) = &origin
    {
        eprintln!(
            "sim: self-signed certificate for {} in {}",
            args.tls_name,
            p.display()
        );
    }
    let password = super::read_password(&args.password_file)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "sim: Meta's side listening on {} (TLS)",
        listener.local_addr()?
    );
    let shared = Arc::new(Shared {
        gate: Gate::new(
            args.business_host.clone(),
            password,
            args.media.security(),
            &mut draws,
        ),
        hold: Duration::from_secs_f64(args.media.hangup_after),
        ring: Duration::from_secs_f64(args.answer_after),
        options,
        relay,
    });
    let acceptor = TlsAcceptor::from(tls);
    let (done_tx, mut done_rx) = mpsc::channel::<bool>(16);
    let mut finished = 0u32;
    let mut all_clean = true;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = accepted?;
                let local = tcp.local_addr()?;
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                let done = done_tx.clone();
                let trace = args.sip_trace;
                let draws = fork(&mut draws);
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(stream) => connection(stream, local, peer, shared, done, trace, draws).await,
                        Err(e) => eprintln!("sim: TLS handshake with {peer} failed: {e}"),
                    }
                });
            }
            Some(clean) = done_rx.recv() => {
                finished += 1;
                all_clean &= clean;
                if args.calls > 0 && finished >= args.calls {
                    return Ok(all_clean);
                }
            }
        }
    }
}

struct Shared {
    gate: Gate,
    hold: Duration,
    /// How long the user lets it ring before answering.
    ring: Duration,
    options: MediaOptions,
    relay: Arc<Relay>,
}

/// What Meta checks before it answers a business's INVITE: the From host, the digest (its nonces
/// and the number's password) and the offer's key exchange.
pub(super) struct Gate {
    business_host: String,
    password: String,
    security: Security,
    verifier: std::sync::Mutex<Verifier>,
}

impl Gate {
    pub(super) fn new(
        business_host: String,
        password: String,
        security: Security,
        rng: &mut Draws,
    ) -> Gate {
        Gate {
            business_host,
            password,
            security,
            verifier: std::sync::Mutex::new(
                Verifier::new(NonceIssuer::new(rng.gen(), 300), META_DOMAIN)
                    .with_algorithms(&[Algorithm::Sha256, Algorithm::Md5]),
            ),
        }
    }
}

async fn connection<S>(
    stream: S,
    local: SocketAddr,
    peer: SocketAddr,
    shared: Arc<Shared>,
    done: mpsc::Sender<bool>,
    trace: bool,
    mut draws: Draws,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let Some((link, mut incoming)) = Link::open(stream, local, peer, trace).await else {
        return;
    };
    let mut calls = ByCallId::default();
    while let Some(message) = incoming.recv().await {
        let Some((call_id, req)) = calls.route(message) else {
            continue;
        };
        match req.method {
            Method::INVITE if is_new_invite(&req) => {
                let rx = calls.add(call_id);
                let (link, shared, done) = (link.clone(), shared.clone(), done.clone());
                let draws = fork(&mut draws);
                tokio::spawn(async move {
                    let clean = call(req, rx, link, shared, draws).await;
                    let _ = done.send(clean).await;
                });
            }
            Method::REGISTER => {
                let mut r = reply(&req, 403, "Forbidden", &mut draws);
                r.headers.push(
                    "Warning",
                    format!("399 {META_DOMAIN} \"REGISTER is not used: Meta calls the SIP server configured for the number\""),
                );
                link.respond(&r).await;
            }
            Method::OPTIONS => link.respond(&reply(&req, 200, "OK", &mut draws)).await,
            Method::ACK => {}
            _ => {
                link.respond(&reply(
                    &req,
                    481,
                    "Call/Transaction Does Not Exist",
                    &mut draws,
                ))
                .await
            }
        }
    }
}

fn reply(req: &Request, status: u16, reason: &str, rng: &mut Draws) -> Response {
    let mut r = Response::to_request(req, status, reason, Some(&new_tag(rng)));
    r.headers.push("Server", USER_AGENT);
    r
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The user parts of a request's From and To (the calling and the called number).
pub(super) fn users(req: &Request) -> (String, String) {
    let user = |addr: Option<watrunk_sip::NameAddr>| {
        addr.and_then(|a| a.uri.user_base().map(str::to_string))
            .unwrap_or_default()
    };
    (user(req.from()), user(req.to()))
}

/// Whether an ACK comes on the call's queue within `limit`.
async fn ack_within(rx: &mut mpsc::Receiver<Message>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        while let Some(message) = rx.recv().await {
            if matches!(&message, Message::Request(r) if r.method == Method::ACK) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// One business-initiated call, from its first INVITE to its end; false when the business broke a
/// rule the judge checks (or the call was refused).
async fn call(
    first: Request,
    mut rx: mpsc::Receiver<Message>,
    link: Link,
    shared: Arc<Shared>,
    mut draws: Draws,
) -> bool {
    let started = Instant::now();
    let call_id = first.call_id().unwrap_or_default().to_string();
    let to_tag = new_tag(&mut draws);
    let (from_user, to_user) = users(&first);
    let mut report = json!({
        "event": "sim.call",
        "direction": "business-initiated",
        "call_id": call_id,
        "from": from_user,
        "to": to_user,
    });
    let admitted = admit(
        first,
        &mut rx,
        &link,
        &shared.gate,
        MediaFrom {
            relay: &shared.relay,
            app: None,
        },
        &to_tag,
        &mut draws,
    )
    .await;
    let mut verdict = Verdict::default();
    let admitted = match admitted {
        Ok(a) => match a.leg.start(a.plan, &shared.options) {
            Ok(media) => {
                verdict.extend(a.violations);
                Ok((a.ok, a.dialog, media, a.algorithm))
            }
            Err(e) => Err(Refusal::new(
                &a.invite,
                500,
                "Server Internal Error",
                e.to_string(),
            )),
        },
        Err(refusal) => Err(refusal),
    };
    let (ok, mut dialog, media, algorithm) = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            if let Some(req) = &refusal.request {
                let r = refused(req, refusal.status, &refusal.phrase, &refusal.why, &to_tag);
                link.respond(&r).await;
                // The business acknowledges a final refusal (RFC 3261 §17.1.1.3): over TLS
                // nothing is resent, so an ACK that never left is a transaction left to Timer H.
                report["refusal_acked"] = ack_within(&mut rx, Duration::from_secs(2)).await.into();
            }
            report["status"] = refusal.status.into();
            report["reason"] = refusal.why.into();
            verdict.extend(refusal.violations);
            report["violations"] = verdict.json();
            emit(report);
            return false;
        }
    };
    report["digest"] = algorithm.to_string().into();
    tokio::time::sleep(shared.ring).await;
    link.respond(&ok).await;
    report["status"] = 200.into();
    report["answered_ms"] = (started.elapsed().as_secs_f64() * 1000.0).round().into();
    let answered = Instant::now();

    let mut media = media;
    let hold = tokio::time::sleep(shared.hold);
    tokio::pin!(hold);
    let mut acked = false;
    let ack_deadline = tokio::time::sleep(Duration::from_secs(32));
    tokio::pin!(ack_deadline);
    let (by, reason) = loop {
        tokio::select! {
            m = rx.recv() => match m {
                None => break ("connection", "the business's TLS connection closed".to_string()),
                Some(Message::Request(req)) => match req.method {
                    Method::ACK => {
                        acked = true;
                        verdict.add(judge::route_set(&req, &ok));
                    }
                    Method::BYE => {
                        verdict.add(judge::route_set(&req, &ok));
                        link.respond(&reply_in_dialog(&req, 200, "OK", &to_tag)).await;
                        let why = req.headers.get("Reason").unwrap_or("BYE").to_string();
                        break ("business", why);
                    }
                    _ => match judge::in_dialog(&req) {
                        Some(v) => {
                            let (status, phrase) = judge::refusal_of(&req);
                            let why = format!("{} is not supported", req.method);
                            link.respond(&refused(&req, status, phrase, &why, &to_tag)).await;
                            verdict.add(Some(v));
                        }
                        None => link.respond(&reply_in_dialog(&req, 200, "OK", &to_tag)).await,
                    },
                },
                Some(Message::Response(_)) => {}
            },
            () = &mut ack_deadline, if !acked => {
                break ("sim", "no ACK for the 200 OK".to_string());
            }
            () = &mut hold => break ("sim", "user hung up".to_string()),
            note = media.notes.recv() => match note {
                Some(Note::RtpTimeout) => break ("sim", "RTP timeout".to_string()),
                Some(Note::Failed(why)) => break ("sim", format!("media failed: {why}")),
                None => {}
            },
        }
    };
    let duration = answered.elapsed().as_secs();
    if by == "sim" {
        if let Ok(mut bye) = dialog.create_request(Method::BYE) {
            bye.headers.push_front("Via", new_via(&link, &mut draws));
            bye.headers
                .push("x-wa-meta-call-duration", duration.to_string());
            bye.headers.push("Reason", meta_reason(&reason));
            bye.headers.push("User-Agent", USER_AGENT);
            link.request(&bye).await;
            let answered = wait_final(&mut rx, Duration::from_secs(5)).await;
            report["bye_status"] = answered.into();
        }
    }
    let audio = media.stop().await;
    report["acked"] = acked.into();
    report["ended_by"] = by.into();
    report["reason"] = reason.into();
    report["duration_secs"] = duration.into();
    verdict.extend(judge::media(&audio.seen()));
    report["media"] = audio.json();
    let (routes, conns) = shared.relay.usage();
    report["relay"] = json!({"media_routes": routes, "media_conns": conns});
    report["violations"] = verdict.json();
    emit(report);
    verdict.is_clean()
}

/// A refusal as Meta words it: the reason in a `Warning: 399 wa.meta.vc "..."`.
pub(super) fn refused(
    req: &Request,
    status: u16,
    phrase: &str,
    why: &str,
    to_tag: &str,
) -> Response {
    let mut r = reply_in_dialog(req, status, phrase, to_tag);
    r.headers.push("X-FB-External-Domain", META_DOMAIN);
    r.headers.push(
        "Warning",
        format!("399 {META_DOMAIN} \"{}\"", why.replace('"', "'")),
    );
    r
}

/// Why a call was not answered, and the request to answer (none when the business went quiet).
pub(super) struct Refusal {
    pub request: Option<Request>,
    pub status: u16,
    pub phrase: String,
    pub why: String,
    /// The rules the business broke that made Meta refuse.
    pub violations: Vec<Violation>,
}

impl Refusal {
    fn new(req: &Request, status: u16, phrase: &str, why: impl Into<String>) -> Refusal {
        Refusal {
            request: Some(req.clone()),
            status,
            phrase: phrase.to_string(),
            why: why.into(),
            violations: Vec::new(),
        }
    }
}

/// An admitted call: the 200 OK to send once its media has started, and the media's leg and plan.
pub(super) struct Admitted {
    pub invite: Request,
    pub ok: Response,
    pub dialog: Dialog,
    pub leg: Leg,
    pub plan: MediaPlan,
    pub algorithm: Algorithm,
    /// Rules the business broke without Meta refusing the call (digest choice, offer profile).
    pub violations: Vec<Violation>,
}

/// Where an admitted call's media leg comes from: `app` is its plain side when that belongs to
/// someone else (`sim load`); none gives the leg its own tone and recorder.
pub(super) struct MediaFrom<'a> {
    pub relay: &'a Relay,
    pub app: Option<SocketAddr>,
}

/// Everything before the 200 OK: the From host, digest, the offer, the media's leg. The 200 is
/// returned unsent.
pub(super) async fn admit(
    first: Request,
    rx: &mut mpsc::Receiver<Message>,
    link: &Link,
    gate: &Gate,
    media: MediaFrom<'_>,
    to_tag: &str,
    rng: &mut Draws,
) -> Result<Admitted, Refusal> {
    let (from_user, to_user) = users(&first);
    // The From host must be the SIP server configured for the number (WHATSAPP-SIP §3.3).
    let from_host = first
        .from()
        .and_then(|f| f.uri.as_sip().map(|u| u.host.to_string()))
        .unwrap_or_default();
    if !from_host.eq_ignore_ascii_case(&gate.business_host) {
        let text = format!(
            "SIP server {from_host} from INVITE does not match any SIP server configured for phone number {from_user}"
        );
        return Err(Refusal::new(&first, 403, &text, text.clone()));
    }

    // Digest: a 407 with SHA-256 then MD5, one retry.
    let mut invite = first;
    let mut challenged = false;
    let mut violations = Vec::new();
    let algorithm = loop {
        if let Some(value) = invite.headers.get("Proxy-Authorization") {
            let judged = Authorization::parse(value)
                .map(|auth| judge::digest(&auth, &invite, &from_user))
                .unwrap_or_default();
            // Meta refuses a wrong username or uri; a weaker algorithm only costs strength.
            let (fatal, tolerated): (Vec<Violation>, Vec<Violation>) = judged
                .into_iter()
                .partition(|v| v.rule != "digest-algorithm");
            violations.extend(tolerated);
            if !fatal.is_empty() {
                let why = fatal
                    .iter()
                    .map(|v| v.detail.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                let mut refusal = Refusal::new(&invite, 403, "Forbidden", why);
                refusal.violations = fatal;
                return Err(refusal);
            }
            let verdict = Authorization::parse(value)
                .map_err(|e| e.to_string())
                .and_then(|auth| {
                    let uri = invite.uri.to_string();
                    let mut verifier = gate.verifier.lock().unwrap_or_else(|e| e.into_inner());
                    verifier
                        .verify(
                            &auth,
                            "INVITE",
                            &uri,
                            &gate.password,
                            &invite.body,
                            now_secs(),
                        )
                        .map(|()| auth.algorithm)
                        .map_err(|e| e.to_string())
                });
            match verdict {
                Ok(algorithm) => break algorithm,
                Err(why) => return Err(Refusal::new(&invite, 403, "Forbidden", why)),
            }
        }
        if challenged {
            return Err(Refusal::new(
                &invite,
                403,
                "Forbidden",
                "no credentials after the challenge",
            ));
        }
        challenged = true;
        let mut r = reply_in_dialog(&invite, 407, "Proxy Authentication Required", to_tag);
        r.headers.push("X-FB-External-Domain", META_DOMAIN);
        {
            let verifier = gate.verifier.lock().unwrap_or_else(|e| e.into_inner());
            for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
                let challenge = verifier.challenge(algorithm, now_secs(), false);
                r.headers.push("Proxy-Authenticate", challenge.to_string());
            }
        }
        link.respond(&r).await;
        invite = loop {
            match tokio::time::timeout(Duration::from_secs(32), rx.recv()).await {
                Ok(Some(Message::Request(req))) if req.method == Method::INVITE => break req,
                Ok(Some(_)) => continue,
                _ => {
                    return Err(Refusal {
                        request: None,
                        status: 407,
                        phrase: String::new(),
                        why: "no INVITE with credentials after the 407".into(),
                        violations: Vec::new(),
                    })
                }
            }
        };
    };

    // Meta runs no session timers (WHATSAPP-SIP §6.3).
    let timers = invite.headers.contains("Session-Expires")
        || invite
            .headers
            .values("Supported")
            .chain(invite.headers.values("Require"))
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("timer")));
    if timers {
        return Err(Refusal::new(
            &invite,
            500,
            "Server Internal Error",
            "session timers are not supported",
        ));
    }
    violations.extend(judge::sdp_profile(&invite.body, sdp::Kind::Offer));
    let offer = sdp::parse(&invite.body)
        .map_err(|e| Refusal::new(&invite, 488, "Not Acceptable Here", e.to_string()))?;
    if gate.security == Security::Dtls && sdp::IceRole::answering(&offer) == sdp::IceRole::None {
        return Err(Refusal::new(
            &invite,
            488,
            "Not Acceptable Here",
            "offer without ICE: the number is set up for DTLS-SRTP, which needs ICE",
        ));
    }
    link.respond(&reply_in_dialog(&invite, 100, "Trying", to_tag))
        .await;
    let leg = match media.app {
        Some(app) => media.relay.leg_to(gate.security, app, rng).await,
        None => media.relay.leg(gate.security, rng).await,
    }
    .map_err(|e| Refusal::new(&invite, 500, "Server Internal Error", e.to_string()))?;
    let (answer, plan) = leg
        .answer(&offer)
        .map_err(|e| Refusal::new(&invite, 488, "Not Acceptable Here", e.to_string()))?;
    link.respond(&reply_in_dialog(&invite, 180, "Ringing", to_tag))
        .await;
    let contact = format!(
        "<sip:{to_user}@{};transport=tls;ob>;isfocus",
        link.hostport()
    );
    let mut ok = Response::dialog_response(&invite, 200, "OK", to_tag, &contact);
    // Meta's internal proxy, then its edge (us): the business's route set is the reverse, so its
    // requests come here first (WHATSAPP-SIP §3.8).
    ok.headers.push("Record-Route", META_INTERNAL_PROXY);
    ok.headers.push(
        "Record-Route",
        format!("<sip:{};transport=tls;lr>", link.hostport()),
    );
    ok.headers
        .push("Allow", "INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS");
    ok.headers.push("X-FB-External-Domain", META_DOMAIN);
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = answer.into_bytes();
    let dialog = Dialog::from_uas(&invite, &ok)
        .map_err(|e| Refusal::new(&invite, 400, "Bad Request", e.to_string()))?;
    Ok(Admitted {
        invite,
        ok,
        dialog,
        leg,
        plan,
        algorithm,
        violations,
    })
}

/// Meta's internal proxy as its 200s Record-Route it (never a next hop for the business).
const META_INTERNAL_PROXY: &str = "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>";

fn reply_in_dialog(req: &Request, status: u16, reason: &str, to_tag: &str) -> Response {
    let mut r = Response::to_request(req, status, reason, Some(to_tag));
    r.headers.push("Server", USER_AGENT);
    r
}

/// The status of the final response to our request, `None` when none came.
pub(super) async fn wait_final(rx: &mut mpsc::Receiver<Message>, limit: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Message::Response(r))) if r.status >= 200 => return Some(r.status),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}
