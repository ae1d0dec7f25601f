//! `watrunk sim call`: a WhatsApp user calling a business, as Meta delivers it (WHATSAPP-SIP §4):
//! a TLS connection to the business's SIP server, an INVITE with Meta's headers (Record-Route,
//! `x-wa-meta-wacid`, From `+user@wa.meta.vc`, Contact `;isfocus`) and an ICE-lite offer (DTLS) or
//! an SDES offer; a 401/407 is answered once with the number's password (username: the business
//! number without '+'). After the 200 and our ACK the call runs until the hold time (our BYE with
//! `x-wa-meta-call-duration`), the business's BYE, or the RTP timeout. `--cancel-after-ms` cancels
//! an unanswered call instead (the business must answer 487). The steps are public to `sim load`,
//! which places many such calls at once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use watrunk_sdp::{self as sdp, MediaPlan, OfferState};
use watrunk_sip::digest::{self, Challenge, Credentials};
use watrunk_sip::{new_tag, retry_with_auth, Dialog, Message, Method, Request, Response, Uri};

use super::judge::{self, Verdict};
use super::link::Link;
use super::media::Relay;
use super::uas::wait_final;
use super::{emit, meta_reason, new_via, Draws, SimCallArgs, META_DOMAIN, USER_AGENT};

/// A business's SIP server over TLS: where to connect and which name to verify.
pub struct Target {
    pub host: String,
    remote: SocketAddr,
    name: ServerName<'static>,
    tls: TlsConnector,
}

impl Target {
    pub async fn resolve(
        target: &str,
        ca: Option<&Path>,
        server_name: Option<&str>,
    ) -> Result<Target> {
        let (host, port) = split_target(target);
        let remote: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} has no address"))?;
        let server_name = server_name.unwrap_or(&host).to_string();
        let (tls, local) = watrunk_sip::io::tls::client_config_for(&server_name, ca)?;
        if let Some(local) = local {
            eprintln!(
                "sim: trusting the self-signed certificate watrunk serve made for {server_name} ({})",
                local.display()
            );
        }
        let name = ServerName::try_from(server_name.clone())
            .map_err(|_| anyhow!("{server_name:?} is not a TLS server name"))?;
        Ok(Target {
            host,
            remote,
            name,
            tls: TlsConnector::from(Arc::new((*tls).clone())),
        })
    }

    /// A new verified TLS connection (Meta opens one per call toward a business).
    pub async fn connect(&self, trace: bool) -> Result<(Link, mpsc::Receiver<Message>)> {
        let tcp = TcpStream::connect(self.remote)
            .await
            .with_context(|| format!("cannot connect to {}", self.remote))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr()?;
        let stream = self
            .tls
            .connect(self.name.clone(), tcp)
            .await
            .with_context(|| format!("TLS with {} (server name {:?})", self.remote, self.name))?;
        Link::open(stream, local, self.remote, trace)
            .await
            .ok_or_else(|| anyhow!("the connection to {} ended at once", self.remote))
    }
}

/// Who calls whom, and how the business's challenge is answered.
pub struct Caller<'a> {
    pub to: &'a str,
    pub from: &'a str,
    pub password: Option<&'a str>,
    pub cancel_after: Option<Duration>,
}

/// The INVITE's final response and what led to it.
pub struct Placed {
    /// The INVITE as last sent (with credentials after a challenge).
    pub invite: Request,
    pub response: Response,
    pub provisional: Vec<u16>,
    /// The digest algorithm answered, if the business challenged.
    pub digest: Option<String>,
    pub cancelled: bool,
}

/// Sends the INVITE with `offer` and waits for its final response, answering one 401/407 (a second
/// challenge, or one without a password to answer with, is returned as the final response).
pub async fn place(
    target: &Target,
    link: &Link,
    rx: &mut mpsc::Receiver<Message>,
    caller: &Caller<'_>,
    offer: String,
    rng: &mut Draws,
) -> Result<Placed> {
    let host = &target.host;
    let call_id = format!("outgoing:wacid.{}", new_tag(rng));
    let ruri = format!("sip:{}@{host};transport=tls", caller.to);
    let mut invite = Request::new(
        Method::INVITE,
        Uri::parse(&ruri).map_err(|e| anyhow!("{ruri}: {e}"))?,
    );
    let h = &mut invite.headers;
    h.push("Via", new_via(link, rng));
    h.push("Record-Route", own_record_route(link));
    h.push("Max-Forwards", "69");
    h.push(
        "From",
        format!(
            "\"{}\" <sip:{}@{META_DOMAIN}>;tag={}",
            caller.from.trim_start_matches('+'),
            caller.from,
            new_tag(rng)
        ),
    );
    h.push("To", format!("<sip:{}@{host}>", caller.to));
    h.push(
        "Contact",
        format!(
            "<sip:{}@{};transport=tls;ob>;isfocus",
            caller.from,
            link.hostport()
        ),
    );
    h.push("Call-ID", call_id.clone());
    h.push("CSeq", "1 INVITE");
    h.push("X-FB-External-Domain", META_DOMAIN);
    h.push(
        "x-wa-meta-wacid",
        call_id.trim_start_matches("outgoing:wacid."),
    );
    h.push("Allow", "INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS");
    h.push("User-Agent", USER_AGENT);
    h.push("Content-Type", "application/sdp");
    invite.body = offer.into_bytes();

    link.request(&invite).await;
    let mut digest_used = None;
    let cancel_at = caller.cancel_after.map(|d| tokio::time::Instant::now() + d);
    let mut cancelled = false;
    let mut provisional = Vec::new();
    let response = loop {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(64);
        let wait = match cancel_at {
            Some(at) if !cancelled => at.min(deadline),
            _ => deadline,
        };
        let message = match tokio::time::timeout_at(wait, rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => bail!("the business closed the TLS connection before a final response"),
            Err(_) if cancel_at.is_some() && !cancelled => {
                cancelled = true;
                link.request(&cancel_for(&invite)).await;
                continue;
            }
            Err(_) => bail!("no final response to the INVITE in 64 s"),
        };
        let resp = match message {
            Message::Response(r) => r,
            Message::Request(req) => {
                link.respond(&Response::to_request(
                    &req,
                    481,
                    "Call/Transaction Does Not Exist",
                    None,
                ))
                .await;
                continue;
            }
        };
        let is_invite = resp.cseq().is_some_and(|c| c.method == Method::INVITE);
        if !is_invite {
            // The 200 to our CANCEL.
            continue;
        }
        if resp.status < 200 {
            provisional.push(resp.status);
            continue;
        }
        if resp.status >= 300 {
            link.request(&ack_for_failure(&invite, &resp)).await;
        }
        let challenged = matches!(resp.status, 401 | 407);
        let (Some(password), true, None) = (caller.password, challenged, &digest_used) else {
            break resp;
        };
        let header = if resp.status == 407 {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let challenges = Challenge::parse_supported(resp.headers.get_all(header));
        let challenge = digest::choose_challenge(&challenges)
            .ok_or_else(|| anyhow!("{} without a challenge we can answer", resp.status))?;
        let creds = Credentials::new(caller.to.trim_start_matches('+'), password.to_string());
        let auth = digest::answer_with_random_cnonce(
            challenge,
            &creds,
            "INVITE",
            &ruri,
            &invite.body,
            1,
            rng,
        );
        let name = if resp.status == 407 {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        invite = retry_with_auth(&invite, name, &auth.to_string(), rng);
        digest_used = Some(challenge.algorithm.to_string());
        link.request(&invite).await;
    };
    Ok(Placed {
        invite,
        response,
        provisional,
        digest: digest_used,
        cancelled,
    })
}

/// The Record-Route entry the sim puts in its INVITEs, as Meta's edge proxy does.
fn own_record_route(link: &Link) -> String {
    format!("<sip:{};transport=tls;lr>", link.hostport())
}

/// An in-dialog request of the sim's. Meta's edge proxy record-routes the INVITE and, as the
/// first hop of the requests that follow, takes its own entry off their Route (RFC 3261 §16.4);
/// the sim plays both, so its requests leave without that entry. Left on, a proxy of the
/// business's in between (Kamailio in front of several watrunk instances) forwards them to it.
fn in_dialog(
    dialog: &mut Dialog,
    method: Method,
    link: &Link,
) -> Result<Request, watrunk_sip::dialog::DialogError> {
    let mut req = dialog.create_request(method)?;
    let routes: Vec<String> = req.headers.values("Route").map(str::to_string).collect();
    if routes.first() == Some(&own_record_route(link)) {
        req.headers.remove("Route");
        for route in &routes[1..] {
            req.headers.push("Route", route.clone());
        }
    }
    Ok(req)
}

/// ACKs a 200 and takes its answer; an answer outside the WhatsApp profile gets our BYE at once
/// and is the `Err` reason.
pub async fn confirm(
    link: &Link,
    placed: &Placed,
    offer: &OfferState,
    rng: &mut Draws,
) -> Result<Result<(Dialog, MediaPlan), String>> {
    let mut dialog = Dialog::from_uac(&placed.invite, &placed.response)
        .map_err(|e| anyhow!("the 200 OK: {e}"))?;
    let mut ack = in_dialog(&mut dialog, Method::ACK, link).map_err(|e| anyhow!("ACK: {e}"))?;
    ack.headers.push_front("Via", new_via(link, rng));
    link.request(&ack).await;
    let accepted = sdp::parse(&placed.response.body)
        .map_err(|e| format!("the business's answer: {e}"))
        .and_then(|answer| {
            sdp::accept_answer(offer, &answer)
                .map_err(|e| format!("the answer breaks the WhatsApp profile: {e}"))
        });
    match accepted {
        Ok(plan) => Ok(Ok((dialog, plan))),
        Err(reason) => {
            let mut bye = in_dialog(&mut dialog, Method::BYE, link).map_err(|e| anyhow!("{e}"))?;
            bye.headers.push_front("Via", new_via(link, rng));
            bye.headers.push("Reason", meta_reason("bad answer"));
            link.request(&bye).await;
            Ok(Err(reason))
        }
    }
}

/// Our BYE, as Meta sends it (call duration, Reason); the status of its response, if one came.
pub async fn hang_up(
    link: &Link,
    rx: &mut mpsc::Receiver<Message>,
    dialog: &mut Dialog,
    duration_secs: u64,
    reason: &str,
    rng: &mut Draws,
) -> Result<Option<u16>> {
    let mut bye = in_dialog(dialog, Method::BYE, link).map_err(|e| anyhow!("{e}"))?;
    bye.headers.push_front("Via", new_via(link, rng));
    bye.headers
        .push("x-wa-meta-call-duration", duration_secs.to_string());
    bye.headers.push("Reason", meta_reason(reason));
    link.request(&bye).await;
    Ok(wait_final(rx, Duration::from_secs(5)).await)
}

/// Exit status: the call was answered and, with `--expect-hz`, the business's audio was that tone.
pub async fn run(args: SimCallArgs, rng: &mut Draws) -> Result<bool> {
    let target = args.access.target(&args.target).await?;
    let (link, mut rx) = target.connect(args.sip_trace).await?;

    let options = args.media.options();
    let relay = Relay::new(options.clone()).await?;
    let security = args.media.security();
    let leg = relay.leg(security, rng).await?;
    let (offer, offer_state) = leg.offer()?;
    let password = args.access.password()?;
    let caller = Caller {
        to: &args.to,
        from: &args.from,
        password: password.as_deref(),
        cancel_after: args.cancel_after_ms.map(Duration::from_millis),
    };

    let started = Instant::now();
    let placed = place(&target, &link, &mut rx, &caller, offer, rng).await?;
    let ok = &placed.response;
    let mut report = json!({
        "event": "sim.call",
        "direction": "user-initiated",
        "call_id": placed.invite.headers.get("Call-ID"),
        "from": args.from,
        "to": args.to,
        "srtp": if security == sdp::Security::Dtls { "dtls" } else { "sdes" },
        "provisional": placed.provisional,
        "status": ok.status,
        "reason": ok.reason,
    });
    if let Some(d) = &placed.digest {
        report["digest"] = d.as_str().into();
    }
    if matches!(ok.status, 401 | 407) && caller.password.is_none() {
        report["reason"] = "challenged, and no --password-file to answer with".into();
    }
    if let Some(w) = ok.headers.get("Warning") {
        report["warning"] = w.into();
    }
    if let Some(r) = ok.headers.get("Reason") {
        report["sip_reason"] = r.into();
    }
    if ok.status >= 300 {
        report["cancelled"] = placed.cancelled.into();
        emit(report);
        return Ok(false);
    }
    report["answered_ms"] = (started.elapsed().as_secs_f64() * 1000.0).round().into();
    // The business's 200 as Meta would judge it (WHATSAPP-SIP §4.3, §6).
    let mut verdict = Verdict::default();
    verdict.add(judge::record_route(&placed.invite, ok));
    verdict.extend(judge::sdp_profile(&ok.body, sdp::Kind::Answer));
    let (mut dialog, plan) = match confirm(&link, &placed, &offer_state, rng).await? {
        Ok(confirmed) => confirmed,
        Err(reason) => {
            report["reason"] = reason.into();
            report["violations"] = verdict.json();
            emit(report);
            return Ok(false);
        }
    };
    let answered = Instant::now();
    let mut media = leg.start(plan, &options)?;
    let hold = tokio::time::sleep(Duration::from_secs_f64(args.media.hangup_after));
    tokio::pin!(hold);
    let (by, reason) = loop {
        tokio::select! {
            m = rx.recv() => match m {
                None => break ("connection", "the business closed the TLS connection".to_string()),
                Some(Message::Request(req)) if req.method == Method::BYE => {
                    link.respond(&Response::to_request(&req, 200, "OK", None)).await;
                    break ("business", req.headers.get("Reason").unwrap_or("BYE").to_string());
                }
                Some(Message::Request(req)) => match judge::in_dialog(&req) {
                    Some(v) => {
                        verdict.add(Some(v));
                        let (status, phrase) = judge::refusal_of(&req);
                        link.respond(&Response::to_request(&req, status, phrase, None)).await;
                    }
                    None => link.respond(&Response::to_request(&req, 200, "OK", None)).await,
                },
                Some(Message::Response(_)) => {}
            },
            () = &mut hold => break ("sim", "user hung up".to_string()),
            note = media.notes.recv() => match note {
                Some(super::media::Note::RtpTimeout) => break ("sim", "RTP timeout".to_string()),
                Some(super::media::Note::Failed(why)) => break ("sim", format!("media failed: {why}")),
                None => {}
            },
        }
    };
    let duration = answered.elapsed().as_secs();
    if by == "sim" {
        report["bye_status"] = hang_up(&link, &mut rx, &mut dialog, duration, &reason, rng)
            .await?
            .into();
    }
    let audio = media.stop().await;
    report["ended_by"] = by.into();
    report["reason"] = reason.into();
    report["duration_secs"] = duration.into();
    let heard_ok = match (args.expect_hz, audio.heard) {
        (Some(want), Some((hz, rms))) => super::audio::near(hz, want) && rms > 0.02,
        (Some(_), None) => false,
        (None, _) => audio.heard_packets > 0,
    };
    verdict.extend(judge::media(&audio.seen()));
    report["media"] = audio.json();
    report["violations"] = verdict.json();
    report["ok"] = (heard_ok && verdict.is_clean()).into();
    emit(report);
    Ok(heard_ok && verdict.is_clean())
}

fn split_target(target: &str) -> (String, u16) {
    let target = target
        .trim_start_matches("sips:")
        .trim_start_matches("sip:");
    if let Some(rest) = target.strip_prefix('[') {
        return match rest.split_once("]:") {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(5061)),
            None => (rest.trim_end_matches(']').to_string(), 5061),
        };
    }
    match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().unwrap_or(5061)),
        _ => (target.to_string(), 5061),
    }
}

/// CANCEL for our INVITE (RFC 3261 §9.1): same Request-URI, top Via, Call-ID, From, To, CSeq number.
fn cancel_for(invite: &Request) -> Request {
    let mut c = Request::new(Method::CANCEL, invite.uri.clone());
    for name in ["Via", "From", "To", "Call-ID"] {
        if let Some(v) = invite.headers.get(name) {
            c.headers.push(name, v.to_string());
        }
    }
    c.headers.push("Max-Forwards", "70");
    if let Some(cseq) = invite.cseq() {
        c.headers.push("CSeq", format!("{} CANCEL", cseq.seq));
    }
    c
}

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3): the INVITE's top Via, To with the
/// response's tag.
fn ack_for_failure(invite: &Request, resp: &Response) -> Request {
    let mut a = Request::new(Method::ACK, invite.uri.clone());
    if let Some(v) = invite.headers.get("Via") {
        a.headers.push("Via", v.to_string());
    }
    a.headers.push("Max-Forwards", "70");
    for name in ["From", "Call-ID"] {
        if let Some(v) = invite.headers.get(name) {
            a.headers.push(name, v.to_string());
        }
    }
    if let Some(to) = resp.headers.get("To") {
        a.headers.push("To", to.to_string());
    }
    if let Some(cseq) = invite.cseq() {
        a.headers.push("CSeq", format!("{} ACK", cseq.seq));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::split_target;

    #[test]
    fn targets_take_a_default_port_and_ipv6_brackets() {
        assert_eq!(
            split_target("sip.example.com"),
            ("sip.example.com".into(), 5061)
        );
        assert_eq!(
            split_target("sip.example.com:5070"),
            ("sip.example.com".into(), 5070)
        );
        assert_eq!(split_target("127.0.0.1:5061"), ("127.0.0.1".into(), 5061));
        assert_eq!(split_target("[::1]:5062"), ("::1".into(), 5062));
        assert_eq!(
            split_target("sip:host.example"),
            ("host.example".into(), 5061)
        );
    }
}
