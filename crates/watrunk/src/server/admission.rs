//! Who may start a call: the UAS admission policy for a new INVITE, sans-IO. The Request-URI's
//! user picks a business number (404 otherwise), the number's digest challenge is issued and its
//! answer checked (407 with SHA-256 then MD5, or 401; 403 for a wrong username, password or
//! replayed count; `stale=true` for an expired nonce), and a server without numbers refuses with
//! 503 once the caller has proven it knows the password. Time comes in as seconds since start.

use std::collections::BTreeMap;

use watrunk_sip::digest::{self, Algorithm, Authorization, NonceIssuer, Verifier};
use watrunk_sip::message::reason_phrase;
use watrunk_sip::{Request, Response};

use crate::config::{AuthConfig, DigestOffer, DigestSettings, NumberConfig};

/// How long a nonce of ours is good for.
const NONCE_LIFETIME_SECS: u64 = 300;

pub struct Admission {
    verifier: Verifier,
    digest: DigestSettings,
    numbers: BTreeMap<String, NumberConfig>,
    /// Without numbers: every INVITE is challenged with this before its 503.
    without_numbers: Option<AuthConfig>,
    server: &'static str,
}

/// What becomes of a new INVITE.
#[derive(Debug)]
pub enum Verdict {
    /// It may become a call to this number.
    Admit(NumberConfig),
    /// This final response ends it (404, 401/407, 403, 503).
    Refuse(Response),
}

impl Admission {
    /// `key`: the secret our nonces are signed with (the binary draws it per process).
    pub fn new(
        key: [u8; 32],
        digest: DigestSettings,
        numbers: BTreeMap<String, NumberConfig>,
        without_numbers: Option<AuthConfig>,
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
        }
    }

    /// The verdict on a new INVITE; `to_tag` goes in a refusal, `now_secs` dates nonces.
    pub fn admit(&mut self, req: &Request, to_tag: &str, now_secs: u64) -> Verdict {
        if self.numbers.is_empty() {
            if let Some(auth) = self.without_numbers.clone() {
                if let Some(challenge) = self.authenticate(
                    req,
                    to_tag,
                    &auth.password,
                    auth.username.as_deref(),
                    now_secs,
                ) {
                    return Verdict::Refuse(challenge);
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
        let Some(number) = self.numbers.get(called).cloned() else {
            return Verdict::Refuse(self.reply(
                req,
                404,
                &format!("Not Found (no business number {called:?} here)"),
                to_tag,
            ));
        };
        if number.challenge {
            let password = number.password.clone().unwrap_or_default();
            // Meta's digest username is the number without '+' (WHATSAPP-SIP §3.6).
            let username = self
                .digest
                .username
                .clone()
                .unwrap_or_else(|| number.number.trim_start_matches('+').to_string());
            if let Some(challenge) =
                self.authenticate(req, to_tag, &password, Some(&username), now_secs)
            {
                return Verdict::Refuse(challenge);
            }
        }
        Verdict::Admit(number)
    }

    /// A PBX's INVITE (to a WhatsApp user) with our trunk credentials for it: None when it may
    /// proceed, else our challenge or 403. `username`: the one it must use, if any.
    pub fn admit_pbx(
        &mut self,
        req: &Request,
        to_tag: &str,
        username: Option<&str>,
        password: &str,
        now_secs: u64,
    ) -> Option<Response> {
        self.authenticate(req, to_tag, password, username, now_secs)
    }

    /// Digest check of an INVITE: None when the request may proceed, else the challenge or 403.
    fn authenticate(
        &mut self,
        req: &Request,
        to_tag: &str,
        password: &str,
        username: Option<&str>,
        now_secs: u64,
    ) -> Option<Response> {
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
                if let Some(user) = username {
                    if a.username != user {
                        return Some(self.reply(
                            req,
                            403,
                            &format!("Forbidden (unknown user {:?})", a.username),
                            to_tag,
                        ));
                    }
                }
                let uri = req.uri.to_string();
                match self.verifier.verify(
                    &a,
                    req.method.to_string().as_str(),
                    &uri,
                    password,
                    &req.body,
                    now_secs,
                ) {
                    Ok(()) => return None,
                    Err(digest::AuthFailure::Stale) => true,
                    Err(e) => {
                        return Some(self.reply(req, 403, &format!("Forbidden ({e})"), to_tag))
                    }
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
        Some(r)
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

    fn refusal(v: Verdict) -> Response {
        match v {
            Verdict::Refuse(r) => r,
            Verdict::Admit(n) => panic!("admitted for {}", n.number),
        }
    }

    #[test]
    fn an_unknown_number_gets_404_naming_it() {
        let mut a = admission(DigestOffer::Both, vec![number(true)]);
        let r = refusal(a.admit(&invite("+19990000000"), "t1", 1));
        assert_eq!(r.status, 404);
        assert!(r.reason.contains("+19990000000"), "{}", r.reason);
        assert_eq!(r.to().unwrap().tag(), Some("t1"));
    }

    #[test]
    fn a_challenged_number_gets_sha256_then_md5_and_admits_the_right_answer() {
        let mut a = admission(DigestOffer::Both, vec![number(true)]);
        let req = invite("+15550001111");
        let challenge = refusal(a.admit(&req, "t1", 1));
        assert_eq!(challenge.status, 407);
        let offered: Vec<&str> = challenge.headers.get_all("Proxy-Authenticate").collect();
        assert_eq!(offered.len(), 2);
        assert!(offered[0].contains("algorithm=SHA-256"), "{offered:?}");
        assert!(offered[1].contains("algorithm=MD5"), "{offered:?}");
        let retry = answered(&req, &challenge, "15550001111", PASSWORD);
        match a.admit(&retry, "t2", 2) {
            Verdict::Admit(n) => assert_eq!(n.number, "+15550001111"),
            Verdict::Refuse(r) => panic!("refused: {r:?}"),
        }
        // The same nonce count again is a replay.
        let again = refusal(a.admit(&retry, "t3", 3));
        assert_eq!(again.status, 403);
    }

    #[test]
    fn a_wrong_password_or_username_gets_403_saying_which() {
        let mut a = admission(DigestOffer::Md5, vec![number(true)]);
        let req = invite("+15550001111");
        let challenge = refusal(a.admit(&req, "t1", 1));
        let wrong = refusal(a.admit(&answered(&req, &challenge, "15550001111", "nope"), "t2", 2));
        assert_eq!(wrong.status, 403);
        let user = refusal(a.admit(
            &answered(&req, &challenge, "+15550001111", PASSWORD),
            "t3",
            2,
        ));
        assert_eq!(user.status, 403);
        assert!(user.reason.contains("unknown user"), "{}", user.reason);
    }

    #[test]
    fn a_pbx_invite_is_challenged_with_the_trunks_credentials() {
        let mut a = admission(DigestOffer::Both, vec![number(true)]);
        let req = invite("+12195550714");
        let challenge = a
            .admit_pbx(&req, "t1", Some("trunk"), "trunk-secret", 1)
            .expect("a challenge");
        assert_eq!(challenge.status, 407);
        let right = answered(&req, &challenge, "trunk", "trunk-secret");
        assert!(a
            .admit_pbx(&right, "t2", Some("trunk"), "trunk-secret", 2)
            .is_none());
        let user = a
            .admit_pbx(
                &answered(&req, &challenge, "other", "trunk-secret"),
                "t3",
                Some("trunk"),
                "trunk-secret",
                2,
            )
            .unwrap();
        assert_eq!(
            (user.status, user.reason.contains("unknown user")),
            (403, true)
        );
        let wrong = a
            .admit_pbx(
                &answered(&req, &challenge, "trunk", "nope"),
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
        let challenge = refusal(a.admit(&req, "t1", 1));
        let late = refusal(a.admit(
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
            a.admit(&invite("+15550001111"), "t", 1),
            Verdict::Admit(_)
        ));
        let mut none = admission(DigestOffer::Both, Vec::new());
        let r = refusal(none.admit(&invite("+15550001111"), "t", 1));
        assert_eq!(r.status, 503);
        assert_eq!(r.headers.get("Retry-After"), Some("300"));
    }
}
