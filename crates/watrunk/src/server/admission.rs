//! Who may start a call: the UAS admission policy for a new INVITE, sans-IO. The Request-URI's
//! user picks a business number, the number's digest challenge is issued and its answer checked
//! (407 with SHA-256 then MD5, or 401; `stale=true` for an expired nonce), and a server without
//! numbers refuses with 503 once the caller has proven it knows the password. Time comes in as
//! seconds since start.
//!
//! Nothing here tells a prober more than it knows: while any number is challenged, an unknown
//! number is challenged like a known one and every failed answer gets the same `403 Forbidden`
//! (what failed goes to the operator, in `AuthReport`s). Failed answers are counted per source
//! and per number; a source with `max_failures` of them is banned for `ban_secs`: all it sends
//! then gets that 403, the right password too. Numbers are never banned (anyone could lock Meta
//! out of one).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

use watrunk_sip::digest::{self, Algorithm, Authorization, NonceIssuer, Verifier};
use watrunk_sip::message::reason_phrase;
use watrunk_sip::{Request, Response};

use crate::config::{AuthConfig, BanPolicy, DigestOffer, DigestSettings, NumberConfig};

/// How long a nonce of ours is good for.
const NONCE_LIFETIME_SECS: u64 = 300;
/// Sources with recent failures tracked at most (beyond it, new sources are not tracked until
/// old records expire).
const MAX_TRACKED_SOURCES: usize = 65_536;
/// Reports kept for the core to collect (beyond it they are counted, not kept).
const MAX_REPORTS: usize = 1024;

pub struct Admission {
    verifier: Verifier,
    digest: DigestSettings,
    numbers: BTreeMap<String, NumberConfig>,
    /// Without numbers: every INVITE is challenged with this before its 503.
    without_numbers: Option<AuthConfig>,
    server: &'static str,
    /// Checked against for numbers we do not have: never right, so they fail like wrong passwords.
    decoy_password: String,
    bans: BanPolicy,
    sources: HashMap<IpAddr, SourceRecord>,
    number_failures: HashMap<String, u64>,
    reports: VecDeque<AuthReport>,
    /// Reports that did not fit.
    pub reports_lost: u64,
}

/// A source's failed authentications: how many since the last quiet spell, the last one's time,
/// and until when it is banned.
#[derive(Debug, Default, Clone, Copy)]
struct SourceRecord {
    failures: u32,
    last_failure: u64,
    banned_until: u64,
    refused_while_banned: u64,
}

/// What the operator is told: each failed authentication (logged, `auth.failed`) and each ban
/// (`auth.banned`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthReport {
    Failed {
        source: IpAddr,
        /// The number called (or `unknown`, or `pbx` for a PBX trunk's credentials).
        number: String,
        detail: String,
        source_failures: u32,
        number_failures: u64,
    },
    Banned {
        source: IpAddr,
        secs: u64,
        failures: u32,
    },
}

/// What becomes of a new INVITE.
#[derive(Debug)]
pub enum Verdict {
    /// It may become a call to this number.
    Admit(NumberConfig),
    /// This final response ends it (404, 401/407, 403, 503).
    Refuse(Response),
}

/// The digest check of one request.
enum Check {
    Passed,
    /// Challenged (no credentials yet, or a stale nonce).
    Challenge(Response),
    /// Wrong credentials: what was wrong, for the operator only.
    Failed(String),
}

impl Admission {
    /// `key`: the secret our nonces are signed with (the binary draws it per process).
    pub fn new(
        key: [u8; 32],
        digest: DigestSettings,
        numbers: BTreeMap<String, NumberConfig>,
        without_numbers: Option<AuthConfig>,
        bans: BanPolicy,
        server: &'static str,
    ) -> Admission {
        Admission {
            verifier: Verifier::new(
                NonceIssuer::new(key, NONCE_LIFETIME_SECS),
                digest.realm.clone(),
            ),
            digest,
            numbers,
            without_numbers,
            server,
            decoy_password: key.iter().map(|b| format!("{b:02x}")).collect(),
            bans,
            sources: HashMap::new(),
            number_failures: HashMap::new(),
            reports: VecDeque::new(),
            reports_lost: 0,
        }
    }

    /// New numbers, passwords and digest settings (a reload). Nonces issued stay good, and bans
    /// are lifted: a source that failed against the old passwords starts afresh.
    pub fn reconfigure(
        &mut self,
        digest: DigestSettings,
        numbers: BTreeMap<String, NumberConfig>,
        without_numbers: Option<AuthConfig>,
        bans: BanPolicy,
    ) {
        self.digest = digest;
        self.numbers = numbers;
        self.without_numbers = without_numbers;
        self.bans = bans;
        self.sources.clear();
    }

    /// The next report for the operator.
    pub fn poll_report(&mut self) -> Option<AuthReport> {
        self.reports.pop_front()
    }

    /// The verdict on a new INVITE from `source`; `to_tag` goes in a refusal, `now_secs` dates
    /// nonces and bans.
    pub fn admit(&mut self, req: &Request, source: IpAddr, to_tag: &str, now_secs: u64) -> Verdict {
        if self.banned(source, now_secs) {
            return Verdict::Refuse(self.forbidden(req, to_tag));
        }
        if self.numbers.is_empty() {
            if let Some(auth) = self.without_numbers.clone() {
                let check = self.authenticate(
                    req,
                    to_tag,
                    &auth.password,
                    auth.username.as_deref(),
                    now_secs,
                );
                if let Some(refusal) = self.refusal(check, req, source, "any", to_tag, now_secs) {
                    return Verdict::Refuse(refusal);
                }
            }
            let mut r = self.reply(
                req,
                503,
                "Service Unavailable (no business number configured: --number)",
                to_tag,
            );
            r.headers.push("Retry-After", "300");
            return Verdict::Refuse(r);
        }
        let called = req.uri.as_sip().and_then(|u| u.user_base()).unwrap_or("");
        let number = self.numbers.get(called).cloned();
        let (password, username, counted_as) = match &number {
            Some(n) if !n.challenge => return Verdict::Admit(n.clone()),
            Some(n) => (
                n.password.clone().unwrap_or_default(),
                // Meta's digest username is the number without '+' (WHATSAPP-SIP §3.6).
                Some(
                    self.digest
                        .username
                        .clone()
                        .unwrap_or_else(|| n.number.trim_start_matches('+').to_string()),
                ),
                n.number.clone(),
            ),
            // With challenged numbers, an unknown one looks the same until credentials are
            // checked, and then fails as a wrong password does.
            None if self.numbers.values().any(|n| n.challenge) => {
                (self.decoy_password.clone(), None, "unknown".to_string())
            }
            None => {
                return Verdict::Refuse(self.reply(
                    req,
                    404,
                    &format!("Not Found (no business number {called:?} here)"),
                    to_tag,
                ))
            }
        };
        let check = self.authenticate(req, to_tag, &password, username.as_deref(), now_secs);
        match self.refusal(check, req, source, &counted_as, to_tag, now_secs) {
            Some(refusal) => Verdict::Refuse(refusal),
            None => match number {
                Some(n) => Verdict::Admit(n),
                None => Verdict::Refuse(self.forbidden(req, to_tag)),
            },
        }
    }

    /// A PBX's INVITE (to a WhatsApp user) with our trunk credentials for it: None when it may
    /// proceed, else our challenge or 403. `username`: the one it must use, if any.
    pub fn admit_pbx(
        &mut self,
        req: &Request,
        source: IpAddr,
        to_tag: &str,
        username: Option<&str>,
        password: &str,
        now_secs: u64,
    ) -> Option<Response> {
        if self.banned(source, now_secs) {
            return Some(self.forbidden(req, to_tag));
        }
        let check = self.authenticate(req, to_tag, password, username, now_secs);
        self.refusal(check, req, source, "pbx", to_tag, now_secs)
    }

    /// A check's refusal, if any; a failure is counted (and may ban the source).
    fn refusal(
        &mut self,
        check: Check,
        req: &Request,
        source: IpAddr,
        number: &str,
        to_tag: &str,
        now_secs: u64,
    ) -> Option<Response> {
        match check {
            Check::Passed => None,
            Check::Challenge(r) => Some(r),
            Check::Failed(detail) => {
                self.count_failure(source, number, detail, now_secs);
                Some(self.forbidden(req, to_tag))
            }
        }
    }

    fn banned(&mut self, source: IpAddr, now_secs: u64) -> bool {
        match self.sources.get_mut(&source) {
            Some(r) if r.banned_until > now_secs => {
                r.refused_while_banned += 1;
                true
            }
            _ => false,
        }
    }

    fn count_failure(&mut self, source: IpAddr, number: &str, detail: String, now_secs: u64) {
        let number_failures = {
            let key = if self.numbers.contains_key(number) || number == "pbx" || number == "any" {
                number
            } else {
                "unknown"
            };
            let n = self.number_failures.entry(key.to_string()).or_default();
            *n += 1;
            *n
        };
        let ban_secs = self.bans.ban_secs;
        if self.sources.len() >= MAX_TRACKED_SOURCES && !self.sources.contains_key(&source) {
            self.sources
                .retain(|_, r| r.banned_until > now_secs || r.last_failure + ban_secs > now_secs);
        }
        let source_failures =
            if self.sources.len() < MAX_TRACKED_SOURCES || self.sources.contains_key(&source) {
                let r = self.sources.entry(source).or_default();
                // Failures are forgotten after a quiet spell as long as a ban.
                if r.last_failure + ban_secs <= now_secs {
                    r.failures = 0;
                }
                r.failures += 1;
                r.last_failure = now_secs;
                let failures = r.failures;
                if self.bans.max_failures > 0 && failures >= self.bans.max_failures {
                    r.banned_until = now_secs + ban_secs;
                    r.failures = 0;
                    self.report(AuthReport::Banned {
                        source,
                        secs: ban_secs,
                        failures,
                    });
                }
                failures
            } else {
                0
            };
        self.report(AuthReport::Failed {
            source,
            number: number.to_string(),
            detail,
            source_failures,
            number_failures,
        });
    }

    fn report(&mut self, report: AuthReport) {
        if self.reports.len() < MAX_REPORTS {
            self.reports.push_back(report);
        } else {
            self.reports_lost += 1;
        }
    }

    /// Digest check of an INVITE.
    fn authenticate(
        &mut self,
        req: &Request,
        to_tag: &str,
        password: &str,
        username: Option<&str>,
        now_secs: u64,
    ) -> Check {
        let (challenge_header, creds_header) = match self.digest.status {
            401 => ("WWW-Authenticate", "Authorization"),
            _ => ("Proxy-Authenticate", "Proxy-Authorization"),
        };
        let credentials = req
            .headers
            .get_all(creds_header)
            .filter_map(|v| Authorization::parse(v).ok())
            .find(|a| a.realm == self.digest.realm);
        let stale = match credentials {
            None => false,
            Some(a) => {
                let uri = req.uri.to_string();
                // Checked whatever the username, so that every failure costs the same.
                let verdict = self.verifier.verify(
                    &a,
                    req.method.to_string().as_str(),
                    &uri,
                    password,
                    &req.body,
                    now_secs,
                );
                if let Some(user) = username.filter(|u| *u != a.username) {
                    return Check::Failed(format!(
                        "unknown user {:?} (expected {user:?})",
                        a.username
                    ));
                }
                match verdict {
                    Ok(()) => return Check::Passed,
                    Err(digest::AuthFailure::Stale) => true,
                    Err(e) => return Check::Failed(e.to_string()),
                }
            }
        };
        let status = self.digest.status;
        let mut r = self.reply(req, status, reason_phrase(status), to_tag);
        let algorithms: &[Algorithm] = match self.digest.offer {
            DigestOffer::Md5 => &[Algorithm::Md5],
            DigestOffer::Sha256 => &[Algorithm::Sha256],
            DigestOffer::Both => &[Algorithm::Sha256, Algorithm::Md5],
        };
        for alg in algorithms {
            let c = self.verifier.challenge(*alg, now_secs, stale);
            r.headers.push(challenge_header, c.to_string());
        }
        Check::Challenge(r)
    }

    /// The one refusal for every failed authentication and a banned source.
    fn forbidden(&self, req: &Request, to_tag: &str) -> Response {
        self.reply(req, 403, "Forbidden", to_tag)
    }

    fn reply(&self, req: &Request, status: u16, reason: &str, to_tag: &str) -> Response {
        let mut r = Response::to_request(req, status, reason, Some(to_tag));
        r.headers.push("Server", self.server);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Srtp;
    use watrunk_sip::digest::{answer, Challenge, Credentials};
    use watrunk_sip::uri::Uri;
    use watrunk_sip::Method;

    const PASSWORD: &str = "per-number-secret";

    fn number(challenge: bool) -> NumberConfig {
        NumberConfig {
            number: "+15550001111".into(),
            password: Some(PASSWORD.into()),
            challenge,
            sink: "127.0.0.1:4000".parse().unwrap(),
            sink_audio: watrunk_media::SinkAudio::Opus,
            srtp: Srtp::Dtls,
        }
    }

    fn admission(offer: DigestOffer, numbers: Vec<NumberConfig>) -> Admission {
        Admission::new(
            [3; 32],
            DigestSettings {
                username: None,
                realm: "sip.example.com".into(),
                status: 407,
                offer,
            },
            numbers.into_iter().map(|n| (n.number.clone(), n)).collect(),
            None,
            BanPolicy {
                max_failures: 3,
                ban_secs: 60,
            },
            "watrunk/test",
        )
    }

    fn invite(user: &str) -> Request {
        let mut r = Request::new(
            Method::INVITE,
            Uri::parse(&format!("sip:{user}@sip.example.com;transport=tls")).unwrap(),
        );
        r.headers
            .push("Via", "SIP/2.0/TLS 198.18.0.2:5061;branch=z9hG4bKadmit1");
        r.headers
            .push("From", "<sip:+12195550714@wa.meta.vc>;tag=meta");
        r.headers
            .push("To", format!("<sip:{user}@sip.example.com>"));
        r.headers.push("Call-ID", "admission-test");
        r.headers.push("CSeq", "1 INVITE");
        r
    }

    /// The INVITE again with Meta's answer to `challenge` (the first one offered).
    fn answered(req: &Request, challenge: &Response, user: &str, password: &str) -> Request {
        let offered =
            Challenge::parse(challenge.headers.get("Proxy-Authenticate").unwrap()).unwrap();
        let auth = answer(
            &offered,
            &Credentials::new(user, password),
            "INVITE",
            &req.uri.to_string(),
            &req.body,
            1,
            "0a4f113b",
        );
        let mut retry = req.clone();
        retry.headers.set("CSeq", "2 INVITE");
        retry.headers.push("Proxy-Authorization", auth.to_string());
        retry
    }

    const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 2));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 3));

    fn refusal(v: Verdict) -> Response {
        match v {
            Verdict::Refuse(r) => r,
            Verdict::Admit(n) => panic!("admitted for {}", n.number),
        }
    }

    impl Admission {
        fn admit_from(&mut self, req: &Request, to_tag: &str, now_secs: u64) -> Verdict {
            self.admit(req, SOURCE, to_tag, now_secs)
        }
    }

    /// Without a challenged number there is nothing to hide: an unknown number gets 404.
    #[test]
    fn an_unknown_number_gets_404_naming_it_when_no_number_is_challenged() {
        let mut a = admission(DigestOffer::Both, vec![number(false)]);
        let r = refusal(a.admit_from(&invite("+19990000000"), "t1", 1));
        assert_eq!(r.status, 404);
        assert!(r.reason.contains("+19990000000"), "{}", r.reason);
        assert_eq!(r.to().unwrap().tag(), Some("t1"));
    }

    /// The response as a prober compares it: the called number, nonces and opaques made alike.
    fn comparable(r: &Response, number: &str) -> String {
        let text = String::from_utf8(r.to_bytes())
            .unwrap()
            .replace(number, "NUMBER");
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = ["nonce=\"", "opaque=\""]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| i + p.len()))
            .min()
        {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            rest = &rest[rest.find('"').unwrap_or(0)..];
        }
        out + rest
    }

    #[test]
    fn known_and_unknown_numbers_get_the_same_answers_until_the_credentials_are_right() {
        let mut a = admission(DigestOffer::Both, vec![number(true)]);
        let known = invite("+15550001111");
        let unknown = invite("+15550009999");
        let c_known = refusal(a.admit_from(&known, "t1", 1));
        let c_unknown = refusal(a.admit_from(&unknown, "t1", 1));
        assert_eq!(c_known.status, 407);
        assert_eq!(
            comparable(&c_known, "+15550001111"),
            comparable(&c_unknown, "+15550009999")
        );
        // Wrong password for the known number, and any password for the unknown one.
        let wrong_known =
            refusal(a.admit_from(&answered(&known, &c_known, "15550001111", "guess"), "t2", 2));
        let wrong_unknown = refusal(a.admit_from(
            &answered(&unknown, &c_unknown, "15550009999", PASSWORD),
            "t2",
            2,
        ));
        assert_eq!(
            (wrong_known.status, wrong_known.reason.as_str()),
            (403, "Forbidden")
        );
        assert_eq!(
            String::from_utf8(wrong_known.to_bytes())
                .unwrap()
                .replace("+15550001111", "N"),
            String::from_utf8(wrong_unknown.to_bytes())
                .unwrap()
                .replace("+15550009999", "N")
        );
        // The operator is told what was wrong, and which number was asked for.
        let reports: Vec<_> = std::iter::from_fn(|| a.poll_report()).collect();
        assert!(
            matches!(&reports[..], [AuthReport::Failed { number: n1, detail: d1, .. }, AuthReport::Failed { number: n2, .. }]
                if n1 == "+15550001111" && d1.contains("wrong credentials") && n2 == "unknown"),
            "{reports:?}"
        );
    }

    #[test]
    fn a_source_failing_too_often_is_banned_even_with_the_right_password_until_the_ban_ends() {
        let mut a = admission(DigestOffer::Md5, vec![number(true)]);
        let req = invite("+15550001111");
        let challenge = refusal(a.admit_from(&req, "t1", 1));
        for _ in 0..3 {
            let r =
                refusal(a.admit_from(&answered(&req, &challenge, "15550001111", "guess"), "t", 2));
            assert_eq!(r.status, 403);
        }
        let reports: Vec<_> = std::iter::from_fn(|| a.poll_report()).collect();
        assert!(
            reports.contains(&AuthReport::Banned {
                source: SOURCE,
                secs: 60,
                failures: 3
            }),
            "{reports:?}"
        );
        let right = answered(&req, &challenge, "15550001111", PASSWORD);
        let banned = refusal(a.admit_from(&right, "t", 3));
        assert_eq!((banned.status, banned.reason.as_str()), (403, "Forbidden"));
        // Another source is not affected.
        let fresh = refusal(a.admit(&req, OTHER, "t", 3));
        assert_eq!(fresh.status, 407);
        assert!(matches!(
            a.admit(
                &answered(&req, &fresh, "15550001111", PASSWORD),
                OTHER,
                "t",
                3
            ),
            Verdict::Admit(_)
        ));
        // After the ban, the banned source's right answer is taken.
        let later = refusal(a.admit_from(&req, "t", 63));
        assert!(matches!(
            a.admit_from(&answered(&req, &later, "15550001111", PASSWORD), "t", 63),
            Verdict::Admit(_)
        ));
    }

    #[test]
    fn a_challenged_number_gets_sha256_then_md5_and_admits_the_right_answer() {
        let mut a = admission(DigestOffer::Both, vec![number(true)]);
        let req = invite("+15550001111");
        let challenge = refusal(a.admit_from(&req, "t1", 1));
        assert_eq!(challenge.status, 407);
        let offered: Vec<&str> = challenge.headers.get_all("Proxy-Authenticate").collect();
        assert_eq!(offered.len(), 2);
        assert!(offered[0].contains("algorithm=SHA-256"), "{offered:?}");
        assert!(offered[1].contains("algorithm=MD5"), "{offered:?}");
        let retry = answered(&req, &challenge, "15550001111", PASSWORD);
        match a.admit_from(&retry, "t2", 2) {
            Verdict::Admit(n) => assert_eq!(n.number, "+15550001111"),
            Verdict::Refuse(r) => panic!("refused: {r:?}"),
        }
        // The same nonce count again is a replay.
        let again = refusal(a.admit_from(&retry, "t3", 3));
        assert_eq!(again.status, 403);
    }

    #[test]
    fn a_wrong_password_or_username_gets_the_same_403_and_the_operator_learns_which() {
        let mut a = admission(DigestOffer::Md5, vec![number(true)]);
        let req = invite("+15550001111");
        let challenge = refusal(a.admit_from(&req, "t1", 1));
        let wrong =
            refusal(a.admit_from(&answered(&req, &challenge, "15550001111", "nope"), "t2", 2));
        assert_eq!(wrong.status, 403);
        let user = refusal(a.admit_from(
            &answered(&req, &challenge, "+15550001111", PASSWORD),
            "t3",
            2,
        ));
        assert_eq!((user.status, user.reason.as_str()), (403, "Forbidden"));
        assert_eq!(wrong.reason, "Forbidden");
        let details: Vec<String> = std::iter::from_fn(|| a.poll_report())
            .filter_map(|r| match r {
                AuthReport::Failed { detail, .. } => Some(detail),
                AuthReport::Banned { .. } => None,
            })
            .collect();
        assert!(details[0].contains("wrong credentials"), "{details:?}");
        assert!(
            details[1].contains("unknown user \"+15550001111\""),
            "{details:?}"
        );
    }

    #[test]
    fn a_pbx_invite_is_challenged_with_the_trunks_credentials() {
        let mut a = admission(DigestOffer::Both, vec![number(true)]);
        let req = invite("+12195550714");
        let challenge = a
            .admit_pbx(&req, SOURCE, "t1", Some("trunk"), "trunk-secret", 1)
            .expect("a challenge");
        assert_eq!(challenge.status, 407);
        let right = answered(&req, &challenge, "trunk", "trunk-secret");
        assert!(a
            .admit_pbx(&right, SOURCE, "t2", Some("trunk"), "trunk-secret", 2)
            .is_none());
        let user = a
            .admit_pbx(
                &answered(&req, &challenge, "other", "trunk-secret"),
                SOURCE,
                "t3",
                Some("trunk"),
                "trunk-secret",
                2,
            )
            .unwrap();
        assert_eq!((user.status, user.reason.as_str()), (403, "Forbidden"));
        let wrong = a
            .admit_pbx(
                &answered(&req, &challenge, "trunk", "nope"),
                SOURCE,
                "t4",
                Some("trunk"),
                "trunk-secret",
                2,
            )
            .unwrap();
        assert_eq!(wrong.status, 403);
    }

    #[test]
    fn an_expired_nonce_is_challenged_again_as_stale() {
        let mut a = admission(DigestOffer::Sha256, vec![number(true)]);
        let req = invite("+15550001111");
        let challenge = refusal(a.admit_from(&req, "t1", 1));
        let late = refusal(a.admit_from(
            &answered(&req, &challenge, "15550001111", PASSWORD),
            "t2",
            1 + NONCE_LIFETIME_SECS + 1,
        ));
        assert_eq!(late.status, 407);
        assert!(late
            .headers
            .get("Proxy-Authenticate")
            .unwrap()
            .contains("stale=true"));
    }

    #[test]
    fn an_unchallenged_number_is_admitted_and_no_numbers_means_503() {
        let mut a = admission(DigestOffer::Both, vec![number(false)]);
        assert!(matches!(
            a.admit_from(&invite("+15550001111"), "t", 1),
            Verdict::Admit(_)
        ));
        let mut none = admission(DigestOffer::Both, Vec::new());
        let r = refusal(none.admit_from(&invite("+15550001111"), "t", 1));
        assert_eq!(r.status, 503);
        assert_eq!(r.headers.get("Retry-After"), Some("300"));
    }
}
