//! Digest authentication headers. The input is lines: a challenge (WWW-/Proxy-Authenticate value),
//! credentials (Authorization value), then method, Request-URI, username and password.
//! Checks: what parses prints and parses again to the same value; our answer to a parsed challenge
//! parses back; and a Verifier accepts, once, our answer to its own challenge for any
//! method/URI/username/password, and refuses the replay.
#![no_main]

use libfuzzer_sys::fuzz_target;
use watrunk_sip::digest::{
    self, Algorithm, AuthFailure, Authorization, Challenge, Credentials, NonceIssuer, Verifier,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let challenge_text = lines.next().unwrap_or("");
    let auth_text = lines.next().unwrap_or("");
    let method = lines.next().unwrap_or("INVITE");
    let uri = lines.next().unwrap_or("sip:+15551234567@wa.meta.vc");
    let username = lines.next().unwrap_or("15551234567");
    let password = lines.next().unwrap_or("secret");
    let body = lines.next().unwrap_or("").as_bytes();
    let creds = Credentials::new(username, password);

    let challenges = Challenge::parse_supported([challenge_text, auth_text]);
    let _ = digest::choose_challenge(&challenges);
    if let Ok(challenge) = Challenge::parse(challenge_text) {
        let printed = challenge.to_string();
        let again = Challenge::parse(&printed)
            .unwrap_or_else(|e| panic!("printed challenge does not parse: {e}: {printed}"));
        assert_eq!(challenge, again, "challenge round trip: {printed}");
        let answer = digest::answer(&challenge, &creds, method, uri, body, 1, "0a4f113b");
        let printed = answer.to_string();
        let again = Authorization::parse(&printed)
            .unwrap_or_else(|e| panic!("our answer does not parse: {e}: {printed}"));
        assert_eq!(answer, again, "answer round trip: {printed}");
    }

    if let Ok(auth) = Authorization::parse(auth_text) {
        let printed = auth.to_string();
        let again = Authorization::parse(&printed)
            .unwrap_or_else(|e| panic!("printed credentials do not parse: {e}: {printed}"));
        assert_eq!(auth, again, "credentials round trip: {printed}");
        let mut verifier = Verifier::new(NonceIssuer::new([7; 32], 300), "wa.meta.vc");
        let _ = verifier.verify(&auth, method, uri, password, body, 1_000);
    }
    assert!(digest::digest_uri_matches(uri, uri));

    // Our own challenge, answered with the fuzzed values, is accepted once.
    let algorithm =
        Algorithm::ALL[usize::from(data.first().copied().unwrap_or(0)) % Algorithm::ALL.len()];
    let mut verifier = Verifier::new(NonceIssuer::new([9; 32], 300), "wa.meta.vc");
    let challenge = verifier.challenge(algorithm, 1_000, false);
    let answer = digest::answer(&challenge, &creds, method, uri, body, 1, "c0ffee");
    let wire = answer.to_string();
    let received = Authorization::parse(&wire)
        .unwrap_or_else(|e| panic!("our answer does not parse: {e}: {wire}"));
    assert_eq!(
        verifier.verify(&received, method, uri, password, body, 1_010),
        Ok(()),
        "a right answer was refused: {wire}"
    );
    assert_eq!(
        verifier.verify(&received, method, uri, password, body, 1_011),
        Err(AuthFailure::ReusedNc)
    );
});
