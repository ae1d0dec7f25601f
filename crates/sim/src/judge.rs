//! `watrunk sim` as a strict judge of the business side: the rules of WHATSAPP-SIP a business can
//! break while the call still works against a lenient peer, each checked on what the business
//! actually sent and named in the `sim.call` line's `violations` (which makes the exit status
//! non-zero). Users run the sim against their own stacks before Meta approves a number; a rule
//! Meta enforces silently (a lost ACK 32 s later, a rejected fingerprint) is reported here by name.

use serde_json::{json, Value};
use watrunk_sdp::{self as sdp, Kind, Side};
use watrunk_sip::digest::{Algorithm, Authorization};
use watrunk_sip::{Request, Response};

/// One broken rule: its stable name and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule: String,
    pub detail: String,
}

impl Violation {
    fn new(rule: impl Into<String>, detail: impl Into<String>) -> Violation {
        Violation {
            rule: rule.into(),
            detail: detail.into(),
        }
    }
}

/// Every violation of a call, in the order found.
#[derive(Clone, Debug, Default)]
pub struct Verdict(Vec<Violation>);

impl Verdict {
    pub fn add(&mut self, v: Option<Violation>) {
        self.0.extend(v);
    }

    pub fn extend(&mut self, vs: impl IntoIterator<Item = Violation>) {
        self.0.extend(vs);
    }

    pub fn is_clean(&self) -> bool {
        self.0.is_empty()
    }

    pub fn json(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|v| json!({"rule": v.rule, "detail": v.detail}))
                .collect(),
        )
    }
}

/// WHATSAPP-SIP §5.2-§5.3: in the dialog, the business sends Meta nothing but ACK, BYE (and
/// OPTIONS): no re-INVITE (Meta answers 500: no hold, no renegotiation, no session-timer refresh),
/// no UPDATE, PRACK, INFO or REFER.
pub fn in_dialog(req: &Request) -> Option<Violation> {
    use watrunk_sip::Method;
    let allowed = matches!(
        req.method,
        Method::ACK | Method::BYE | Method::CANCEL | Method::OPTIONS
    );
    (!allowed).then(|| {
        Violation::new(
            "in-dialog",
            format!(
                "{} in the dialog: Meta takes no re-INVITE, UPDATE, PRACK, INFO or REFER",
                req.method
            ),
        )
    })
}

/// What Meta answers an in-dialog request the business should not have sent: 500 to a re-INVITE
/// or UPDATE, 405 to the rest (WHATSAPP-SIP §5.2).
pub fn refusal_of(req: &Request) -> (u16, &'static str) {
    use watrunk_sip::Method;
    match req.method {
        Method::INVITE | Method::UPDATE => (500, "Server Internal Error"),
        _ => (405, "Method Not Allowed"),
    }
}

/// WHATSAPP-SIP §4.3: the 200 OK copies the INVITE's Record-Route unchanged and in order (Meta's
/// ACK is lost otherwise and the call dies after about 32 s). Proxies of the business that
/// record-route (a Kamailio in front of several watrunk instances) add theirs above Meta's, as
/// RFC 3261 §16.6 has them do and as §3.8 sees in Meta's own 200s: Meta's must be the last ones.
pub fn record_route(invite: &Request, ok: &Response) -> Option<Violation> {
    let sent: Vec<&str> = invite.headers.get_all("Record-Route").collect();
    let echoed: Vec<&str> = ok.headers.get_all("Record-Route").collect();
    (!echoed.ends_with(&sent)).then(|| {
        Violation::new(
            "record-route",
            format!("the 200 OK's Record-Route is {echoed:?}, the INVITE's was {sent:?}"),
        )
    })
}

/// WHATSAPP-SIP §6: the business's SDP meets the profile (`watrunk sdp check` rules).
pub fn sdp_profile(body: &[u8], kind: Kind) -> Vec<Violation> {
    let what = match kind {
        Kind::Offer => "offer",
        Kind::Answer => "answer",
    };
    match sdp::parse(body) {
        Err(e) => vec![Violation::new(
            format!("sdp:{}", e.rule()),
            format!("the {what}: {e}"),
        )],
        Ok(session) => sdp::check(&session, Side::Business, Some(kind))
            .into_iter()
            .map(|e| Violation::new(format!("sdp:{}", e.rule()), format!("the {what}: {e}")))
            .collect(),
    }
}

/// WHATSAPP-SIP §3.4-§3.6: the answer to Meta's two challenges takes SHA-256, names the number
/// without '+', and its uri is the Request-URI.
pub fn digest(auth: &Authorization, invite: &Request, from_user: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    if auth.algorithm != Algorithm::Sha256 {
        out.push(Violation::new(
            "digest-algorithm",
            format!(
                "answered {} although SHA-256 was offered first",
                auth.algorithm
            ),
        ));
    }
    if auth.username != from_user.trim_start_matches('+') {
        out.push(Violation::new(
            "digest-username",
            format!(
                "username {:?} is not the number {from_user} without '+'",
                auth.username
            ),
        ));
    }
    let ruri = invite.uri.to_string();
    if !watrunk_sip::digest::digest_uri_matches(&ruri, &auth.uri) {
        out.push(Violation::new(
            "digest-uri",
            format!("uri {:?} is not the Request-URI {ruri:?}", auth.uri),
        ));
    }
    out
}

/// WHATSAPP-SIP §3.11, §4.4: an in-dialog request of the business (ACK, BYE) carries the route
/// set: the 200's Record-Route, reversed.
pub fn route_set(request: &Request, ok: &Response) -> Option<Violation> {
    let mut expected: Vec<&str> = ok.headers.get_all("Record-Route").collect();
    expected.reverse();
    let routes: Vec<&str> = request.headers.get_all("Route").collect();
    (routes != expected).then(|| {
        Violation::new(
            "route-set",
            format!(
                "the {}'s Route is {routes:?}, the route set is {expected:?}",
                request.method
            ),
        )
    })
}

/// What the business's media did, as the sim saw it on its side of the relay.
pub struct MediaSeen {
    /// Whether the business's first media packet came before ours (§7.3); None: it sent none.
    pub business_first: Option<bool>,
    /// The SSRC of the business's SDP (`a=ssrc`), if it announced one.
    pub announced: Option<u32>,
    /// The SSRCs its RTP arrived with.
    pub ssrcs: Vec<u32>,
    /// Sequence numbers that arrived twice.
    pub repeated_seqs: u64,
    /// SRTP packets that failed authentication or the replay check (a repeated index).
    pub srtp_rejected: u64,
}

/// WHATSAPP-SIP §6.1, §7.3: the business speaks first, with the one SSRC it announced, and never
/// sends a sequence number twice.
pub fn media(seen: &MediaSeen) -> Vec<Violation> {
    let mut out = Vec::new();
    match seen.business_first {
        Some(true) => {}
        Some(false) => out.push(Violation::new(
            "first-media",
            "Meta's first media packet came before the business's (the business must send first)",
        )),
        None => out.push(Violation::new(
            "first-media",
            "the business sent no media (it must send first; Meta hangs up after 20 s)",
        )),
    }
    match (seen.announced, seen.ssrcs.as_slice()) {
        (_, []) => {}
        (Some(a), [one]) if *one == a => {}
        (announced, ssrcs) => out.push(Violation::new(
            "one-ssrc",
            format!("RTP came with SSRCs {ssrcs:?}, the SDP announced {announced:?}"),
        )),
    }
    if seen.srtp_rejected > 0 {
        out.push(Violation::new(
            "srtp-rejected",
            format!(
                "{} SRTP packets failed authentication or the replay check (a sequence number sent twice, or the wrong key)",
                seen.srtp_rejected
            ),
        ));
    }
    if seen.repeated_seqs > 0 {
        out.push(Violation::new(
            "sequence",
            format!(
                "{} RTP sequence numbers were sent twice",
                seen.repeated_seqs
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(
        first: Option<bool>,
        announced: Option<u32>,
        ssrcs: Vec<u32>,
        repeats: u64,
    ) -> MediaSeen {
        MediaSeen {
            business_first: first,
            announced,
            ssrcs,
            repeated_seqs: repeats,
            srtp_rejected: 0,
        }
    }

    fn rules(vs: &[Violation]) -> Vec<&str> {
        vs.iter().map(|v| v.rule.as_str()).collect()
    }

    #[test]
    fn a_proxy_of_the_business_may_record_route_above_metas_entries() {
        let meta = [
            "<sip:wa.meta.vc;transport=tls;lr>",
            "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
        ];
        let message = |first: &str, rr: &[&str]| {
            let mut text = format!("{first}\r\nVia: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK1\r\n");
            for r in rr {
                text.push_str(&format!("Record-Route: {r}\r\n"));
            }
            text.push_str("From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
            watrunk_sip::Message::parse_datagram(text.as_bytes()).unwrap()
        };
        let watrunk_sip::Message::Request(invite) =
            message("INVITE sip:+15550001111@h SIP/2.0", &meta)
        else {
            panic!("a request")
        };
        let ok = |rr: &[&str]| match message("SIP/2.0 200 OK", rr) {
            watrunk_sip::Message::Response(r) => r,
            _ => panic!("a response"),
        };
        let proxy = "<sip:203.0.113.5:5061;transport=tls;r2=on;lr>";
        assert_eq!(record_route(&invite, &ok(&meta)), None);
        assert_eq!(
            record_route(&invite, &ok(&[proxy, proxy, meta[0], meta[1]])),
            None
        );
        for wrong in [
            &[meta[0]][..],
            &[meta[1], meta[0]],
            &[meta[0], meta[1], proxy],
            &[],
        ] {
            let v = record_route(&invite, &ok(wrong)).expect("a violation");
            assert_eq!(v.rule, "record-route", "{wrong:?}");
        }
    }

    #[test]
    fn media_rules_are_named() {
        assert!(media(&seen(Some(true), Some(7), vec![7], 0)).is_empty());
        assert_eq!(
            rules(&media(&seen(Some(false), Some(7), vec![7], 0))),
            ["first-media"]
        );
        assert_eq!(
            rules(&media(&seen(Some(true), Some(7), vec![9], 0))),
            ["one-ssrc"]
        );
        assert_eq!(
            rules(&media(&seen(Some(true), Some(7), vec![7, 9], 0))),
            ["one-ssrc"]
        );
        assert_eq!(
            rules(&media(&seen(Some(true), None, vec![7], 0))),
            ["one-ssrc"]
        );
        assert_eq!(
            rules(&media(&seen(Some(true), Some(7), vec![7], 3))),
            ["sequence"]
        );
        assert_eq!(
            rules(&media(&seen(None, Some(7), vec![], 0))),
            ["first-media"]
        );
        let mut replayed = seen(Some(true), Some(7), vec![7], 0);
        replayed.srtp_rejected = 2;
        assert_eq!(rules(&media(&replayed)), ["srtp-rejected"]);
    }
}
