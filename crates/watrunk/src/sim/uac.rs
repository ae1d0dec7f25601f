//! `watrunk sim call`: a WhatsApp user calling a business, as Meta delivers it (WHATSAPP-SIP §4):
//! a TLS connection to the business's SIP server, an INVITE with Meta's headers (Record-Route,
//! `x-wa-meta-wacid`, From `+user@wa.meta.vc`, Contact `;isfocus`) and an ICE-lite offer (DTLS) or
//! an SDES offer; a 401/407 is answered once with the number's password (username: the business
//! number without '+'). After the 200 and our ACK the call runs until the hold time (our BYE with
//! `x-wa-meta-call-duration`), the business's BYE, or the RTP timeout. `--cancel-after-ms` cancels
//! an unanswered call instead (the business must answer 487).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use watrunk_sdp as sdp;
use watrunk_sip::digest::{self, Challenge, Credentials};
use watrunk_sip::{new_tag, retry_with_auth, Dialog, Message, Method, Request, Response, Uri};

use super::link::Link;
use super::media::Relay;
use super::uas::wait_final;
use super::{emit, meta_reason, new_via, SimCallArgs, META_DOMAIN, USER_AGENT};

/// Exit status: the call was answered and, with `--expect-hz`, the business's audio was that tone.
pub async fn run(args: SimCallArgs) -> Result<bool> {
    let (host, port) = split_target(&args.target);
    let remote: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address"))?;
    let server_name = args.server_name.clone().unwrap_or_else(|| host.clone());
    let tls = crate::tls::client_config(args.ca.as_deref())?;
    let name = rustls_pki_types::ServerName::try_from(server_name.clone())
        .map_err(|_| anyhow!("{server_name:?} is not a TLS server name"))?;
    let tcp = TcpStream::connect(remote)
        .await
        .with_context(|| format!("cannot connect to {remote}"))?;
    let local = tcp.local_addr()?;
    let stream = TlsConnector::from(Arc::new((*tls).clone()))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with {remote} (server name {server_name})"))?;
    let (link, mut rx) = Link::open(stream, local, remote, args.sip_trace);

    let options = args.media.options();
    let relay = Relay::new(options.clone()).await?;
    let security = args.media.security();
    let leg = relay.leg(security).await?;
    let (offer, offer_state) = leg.offer()?;

    let call_id = format!("outgoing:wacid.{}", new_tag());
    let ruri = format!("sip:{}@{host};transport=tls", args.to);
    let mut invite = Request::new(
        Method::INVITE,
        Uri::parse(&ruri).map_err(|e| anyhow!("{ruri}: {e}"))?,
    );
    let h = &mut invite.headers;
    h.push("Via", new_via(&link));
    h.push(
        "Record-Route",
        format!("<sip:{};transport=tls;lr>", link.hostport()),
    );
    h.push("Max-Forwards", "69");
    h.push(
        "From",
        format!(
            "\"{}\" <sip:{}@{META_DOMAIN}>;tag={}",
            args.from.trim_start_matches('+'),
            args.from,
            new_tag()
        ),
    );
    h.push("To", format!("<sip:{}@{host}>", args.to));
    h.push(
        "Contact",
        format!(
            "<sip:{}@{};transport=tls;ob>;isfocus",
            args.from,
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

    let started = Instant::now();
    let mut report = json!({
        "event": "sim.call",
        "direction": "user-initiated",
        "call_id": call_id,
        "from": args.from,
        "to": args.to,
        "srtp": if security == sdp::Security::Dtls { "dtls" } else { "sdes" },
    });
    link.request(&invite).await;
    let password = args
        .password_file
        .as_deref()
        .map(super::read_password)
        .transpose()?;
    let mut authenticated = false;
    let cancel_at = args
        .cancel_after_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut cancelled = false;
    let mut provisional = Vec::new();
    let ok = loop {
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
        if matches!(resp.status, 401 | 407) && !authenticated {
            let Some(password) = &password else {
                report["status"] = resp.status.into();
                report["reason"] = "challenged, and no --password-file to answer with".into();
                emit(report);
                return Ok(false);
            };
            let header = if resp.status == 407 {
                "Proxy-Authenticate"
            } else {
                "WWW-Authenticate"
            };
            let challenges = Challenge::parse_supported(resp.headers.get_all(header));
            let challenge = digest::choose_challenge(&challenges)
                .ok_or_else(|| anyhow!("{} without a challenge we can answer", resp.status))?;
            let creds = Credentials::new(args.to.trim_start_matches('+'), password.clone());
            let auth = digest::answer_with_random_cnonce(
                challenge,
                &creds,
                "INVITE",
                &ruri,
                &invite.body,
                1,
            );
            let name = if resp.status == 407 {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            invite = retry_with_auth(&invite, name, &auth.to_string());
            report["digest"] = challenge.algorithm.to_string().into();
            authenticated = true;
            link.request(&invite).await;
            continue;
        }
        break resp;
    };
    report["provisional"] = provisional.into();
    report["status"] = ok.status.into();
    report["reason"] = ok.reason.clone().into();
    if let Some(w) = ok.headers.get("Warning") {
        report["warning"] = w.into();
    }
    if ok.status >= 300 {
        report["cancelled"] = cancelled.into();
        emit(report);
        return Ok(false);
    }
    report["answered_ms"] = (started.elapsed().as_secs_f64() * 1000.0).round().into();
    let mut dialog = Dialog::from_uac(&invite, &ok).map_err(|e| anyhow!("the 200 OK: {e}"))?;
    let mut ack = dialog
        .create_request(Method::ACK)
        .map_err(|e| anyhow!("ACK: {e}"))?;
    ack.headers.push_front("Via", new_via(&link));
    link.request(&ack).await;
    let answer = sdp::parse(&ok.body).map_err(|e| anyhow!("the business's answer: {e}"))?;
    let plan = match sdp::accept_answer(&offer_state, &answer) {
        Ok(p) => p,
        Err(e) => {
            report["reason"] = format!("the answer breaks the WhatsApp profile: {e}").into();
            let mut bye = dialog
                .create_request(Method::BYE)
                .map_err(|e| anyhow!("{e}"))?;
            bye.headers.push_front("Via", new_via(&link));
            bye.headers.push("Reason", meta_reason("bad answer"));
            link.request(&bye).await;
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
                Some(Message::Request(req)) => {
                    let bye = req.method == Method::BYE;
                    link.respond(&Response::to_request(&req, 200, "OK", None)).await;
                    if bye {
                        break ("business", req.headers.get("Reason").unwrap_or("BYE").to_string());
                    }
                }
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
        let mut bye = dialog
            .create_request(Method::BYE)
            .map_err(|e| anyhow!("{e}"))?;
        bye.headers.push_front("Via", new_via(&link));
        bye.headers
            .push("x-wa-meta-call-duration", duration.to_string());
        bye.headers.push("Reason", meta_reason(&reason));
        link.request(&bye).await;
        report["bye_status"] = wait_final(&mut rx, Duration::from_secs(5)).await.into();
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
    report["media"] = audio.json();
    report["ok"] = heard_ok.into();
    emit(report);
    Ok(heard_ok)
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
