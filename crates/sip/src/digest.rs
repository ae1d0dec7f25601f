//! Digest authentication both ways (RFC 2617, RFC 7616, RFC 8760): parsing and printing challenges
//! and credentials, answering a challenge as a client, and stateless nonces with replay-checked
//! verification as a server. Times are seconds passed in by the caller; nothing here reads a clock.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512_256};

use crate::method::is_token_char;

/// A header we could not use. Every variant is the peer's fault: it sent something malformed or
/// something we do not implement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("peer used auth scheme `{0}`, not Digest")]
    NotDigest(String),
    #[error("peer sent a malformed Digest header: {0}")]
    Malformed(&'static str),
    #[error("peer's Digest header lacks the `{0}` parameter")]
    MissingParameter(&'static str),
    #[error("peer asked for digest algorithm `{0}`, which we do not support")]
    UnsupportedAlgorithm(String),
    #[error("peer asked for qop `{0}`, which we do not support")]
    UnsupportedQop(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    #[default]
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
    /// FIPS 180-4 SHA-512/256, which is what the name means. RFC 7616 §3.9.2 prints example values
    /// computed with truncated SHA-512 instead; peers that copied those will not interoperate.
    Sha512_256,
    Sha512_256Sess,
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Md5,
        Algorithm::Md5Sess,
        Algorithm::Sha256,
        Algorithm::Sha256Sess,
        Algorithm::Sha512_256,
        Algorithm::Sha512_256Sess,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
            Algorithm::Sha512_256 => "SHA-512-256",
            Algorithm::Sha512_256Sess => "SHA-512-256-sess",
        }
    }

    pub fn is_sess(self) -> bool {
        matches!(
            self,
            Algorithm::Md5Sess | Algorithm::Sha256Sess | Algorithm::Sha512_256Sess
        )
    }

    /// H(data) as lower-case hex.
    pub fn hash_hex(self, data: &[u8]) -> String {
        self.hash_joined(&[data])
    }

    /// H(p1 ":" p2 ":" ...) as lower-case hex.
    fn hash_joined(self, parts: &[&[u8]]) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => digest_hex::<Md5>(parts),
            Algorithm::Sha256 | Algorithm::Sha256Sess => digest_hex::<Sha256>(parts),
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => digest_hex::<Sha512_256>(parts),
        }
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;

    /// Case-insensitive. A missing `algorithm` parameter means MD5; callers handle that.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| DigestError::UnsupportedAlgorithm(s.to_string()))
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qop {
    Auth,
    AuthInt,
}

impl Qop {
    pub fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

impl FromStr for Qop {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auth") {
            Ok(Qop::Auth)
        } else if s.eq_ignore_ascii_case("auth-int") {
            Ok(Qop::AuthInt)
        } else {
            Err(DigestError::UnsupportedQop(s.to_string()))
        }
    }
}

impl fmt::Display for Qop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `WWW-Authenticate` / `Proxy-Authenticate` Digest challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The offered qop values we understand, in offered order; empty for an RFC 2069 challenge.
    pub qop: Vec<Qop>,
    pub stale: bool,
    pub domain: Option<String>,
    pub userhash: bool,
}

impl Challenge {
    /// Parses a header value such as `Digest realm="wa.meta.vc",nonce="…",algorithm=MD5,qop="auth"`.
    /// An algorithm we do not implement is an error, so a list of parsed challenges only holds
    /// ones we can answer.
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let params = Params::parse(value)?;
        let qop = match params.get("qop") {
            None => Vec::new(),
            Some(list) => {
                let known: Vec<Qop> =
                    list.split(',')
                        .filter_map(|q| q.parse().ok())
                        .fold(Vec::new(), |mut v, q| {
                            if !v.contains(&q) {
                                v.push(q);
                            }
                            v
                        });
                if known.is_empty() {
                    return Err(DigestError::UnsupportedQop(list.trim().to_string()));
                }
                known
            }
        };
        Ok(Challenge {
            realm: params.required("realm")?.to_string(),
            nonce: params.required("nonce")?.to_string(),
            opaque: params.get("opaque").map(str::to_string),
            algorithm: params.algorithm()?,
            qop,
            stale: params.flag("stale"),
            domain: params.get("domain").map(str::to_string),
            userhash: params.flag("userhash"),
        })
    }

    /// Parses every header value, dropping the ones we cannot answer (malformed, another scheme,
    /// an unsupported algorithm or qop).
    pub fn parse_supported<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
        values
            .into_iter()
            .filter_map(|v| Challenge::parse(v).ok())
            .collect()
    }
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Digest realm={}, nonce={}",
            Quoted(&self.realm),
            Quoted(&self.nonce)
        )?;
        if let Some(opaque) = &self.opaque {
            write!(f, ", opaque={}", Quoted(opaque))?;
        }
        write!(f, ", algorithm={}", self.algorithm)?;
        if !self.qop.is_empty() {
            let list: Vec<&str> = self.qop.iter().map(|q| q.as_str()).collect();
            write!(f, ", qop=\"{}\"", list.join(","))?;
        }
        if self.stale {
            f.write_str(", stale=true")?;
        }
        if let Some(domain) = &self.domain {
            write!(f, ", domain={}", Quoted(domain))?;
        }
        if self.userhash {
            f.write_str(", userhash=true")?;
        }
        Ok(())
    }
}

/// Picks the challenge to answer: SHA-256 first, then MD5, then SHA-512-256 (ranked last because
/// of the RFC 7616 example mix-up, see [`Algorithm::Sha512_256`]); within an algorithm the plain
/// variant before -sess, then a challenge offering qop=auth, then the server's order.
pub fn choose_challenge(challenges: &[Challenge]) -> Option<&Challenge> {
    fn algorithm_rank(a: Algorithm) -> u8 {
        match a {
            Algorithm::Sha256 => 0,
            Algorithm::Sha256Sess => 1,
            Algorithm::Md5 => 2,
            Algorithm::Md5Sess => 3,
            Algorithm::Sha512_256 => 4,
            Algorithm::Sha512_256Sess => 5,
        }
    }
    fn qop_rank(qop: &[Qop]) -> u8 {
        if qop.contains(&Qop::Auth) {
            0
        } else if qop.contains(&Qop::AuthInt) {
            1
        } else {
            2
        }
    }
    challenges
        .iter()
        .enumerate()
        .min_by_key(|(i, c)| (algorithm_rank(c.algorithm), qop_rank(&c.qop), *i))
        .map(|(_, c)| c)
}

/// What we authenticate with. For Meta the username is the business number without `+`; the
/// caller decides.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An `Authorization` / `Proxy-Authorization` Digest credentials value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
    pub qop: Option<Qop>,
    pub nc: Option<u32>,
    /// `username` is H(username:realm) (RFC 7616 §3.4.4).
    pub userhash: bool,
}

impl Authorization {
    /// Parses a header value. Lenient where peers differ: qop and algorithm quoted or not, nc of any
    /// hex width that fits 32 bits, `username*` (RFC 7616 §3.4.4) instead of `username`.
    pub fn parse(value: &str) -> Result<Authorization, DigestError> {
        let params = Params::parse(value)?;
        let username = match (params.get("username"), params.get("username*")) {
            (Some(_), Some(_)) => {
                return Err(DigestError::Malformed("both username and username*"))
            }
            (Some(u), None) => u.to_string(),
            (None, Some(ext)) => decode_ext_value(ext)?,
            (None, None) => return Err(DigestError::MissingParameter("username")),
        };
        Ok(Authorization {
            username,
            realm: params.required("realm")?.to_string(),
            nonce: params.required("nonce")?.to_string(),
            uri: params.required("uri")?.to_string(),
            response: params.required("response")?.to_string(),
            algorithm: params.algorithm()?,
            cnonce: params.get("cnonce").map(str::to_string),
            opaque: params.get("opaque").map(str::to_string),
            qop: params.get("qop").map(str::parse).transpose()?,
            nc: params.get("nc").map(parse_nc).transpose()?,
            userhash: params.flag("userhash"),
        })
    }
}

impl fmt::Display for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Digest username={}, realm={}, nonce={}, uri={}, response={}, algorithm={}",
            Quoted(&self.username),
            Quoted(&self.realm),
            Quoted(&self.nonce),
            Quoted(&self.uri),
            Quoted(&self.response),
            self.algorithm
        )?;
        if let Some(cnonce) = &self.cnonce {
            write!(f, ", cnonce={}", Quoted(cnonce))?;
        }
        if let Some(opaque) = &self.opaque {
            write!(f, ", opaque={}", Quoted(opaque))?;
        }
        if let Some(qop) = self.qop {
            write!(f, ", qop={qop}")?;
        }
        if let Some(nc) = self.nc {
            write!(f, ", nc={nc:08x}")?;
        }
        if self.userhash {
            f.write_str(", userhash=true")?;
        }
        Ok(())
    }
}

/// HA1 (RFC 7616 §3.4.2). `cnonce` only matters for the -sess algorithms.
pub fn ha1(
    algorithm: Algorithm,
    username: &str,
    realm: &str,
    password: &str,
    nonce: &str,
    cnonce: &str,
) -> String {
    let base = algorithm.hash_joined(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()]);
    if algorithm.is_sess() {
        algorithm.hash_joined(&[base.as_bytes(), nonce.as_bytes(), cnonce.as_bytes()])
    } else {
        base
    }
}

/// HA2 (RFC 7616 §3.4.3). The body is only hashed for auth-int.
pub fn ha2(algorithm: Algorithm, qop: Option<Qop>, method: &str, uri: &str, body: &[u8]) -> String {
    match qop {
        Some(Qop::AuthInt) => {
            let body_hash = algorithm.hash_hex(body);
            algorithm.hash_joined(&[method.as_bytes(), uri.as_bytes(), body_hash.as_bytes()])
        }
        _ => algorithm.hash_joined(&[method.as_bytes(), uri.as_bytes()]),
    }
}

/// The qop part of a response computation. `nc` is hashed exactly as given (normally 8 hex digits).
#[derive(Clone, Copy, Debug)]
pub struct QopInput<'a> {
    pub qop: Qop,
    pub nc: &'a str,
    pub cnonce: &'a str,
}

/// The `response` value: H(HA1:nonce:nc:cnonce:qop:HA2), or the RFC 2069 form H(HA1:nonce:HA2)
/// without qop.
pub fn request_digest(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    qop: Option<QopInput<'_>>,
    ha2: &str,
) -> String {
    match qop {
        Some(q) => algorithm.hash_joined(&[
            ha1.as_bytes(),
            nonce.as_bytes(),
            q.nc.as_bytes(),
            q.cnonce.as_bytes(),
            q.qop.as_str().as_bytes(),
            ha2.as_bytes(),
        ]),
        None => algorithm.hash_joined(&[ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes()]),
    }
}

/// Answers a challenge. qop=auth when offered, else auth-int (hashing `body`), else the RFC 2069
/// form without nc/cnonce. `digest_uri` should be the Request-URI verbatim (WHATSAPP-SIP §3.6).
pub fn answer(
    challenge: &Challenge,
    creds: &Credentials,
    method: &str,
    digest_uri: &str,
    body: &[u8],
    nc: u32,
    cnonce: &str,
) -> Authorization {
    let algorithm = challenge.algorithm;
    let qop = if challenge.qop.contains(&Qop::Auth) {
        Some(Qop::Auth)
    } else if challenge.qop.contains(&Qop::AuthInt) {
        Some(Qop::AuthInt)
    } else {
        None
    };
    // -sess needs a cnonce even in the (non-standard) case of a challenge without qop.
    let send_cnonce = qop.is_some() || algorithm.is_sess();
    let nc_text = format!("{nc:08x}");
    let ha1 = ha1(
        algorithm,
        &creds.username,
        &challenge.realm,
        &creds.password,
        &challenge.nonce,
        cnonce,
    );
    let ha2 = ha2(algorithm, qop, method, digest_uri, body);
    let qop_input = qop.map(|qop| QopInput {
        qop,
        nc: &nc_text,
        cnonce,
    });
    Authorization {
        username: creds.username.clone(),
        realm: challenge.realm.clone(),
        nonce: challenge.nonce.clone(),
        uri: digest_uri.to_string(),
        response: request_digest(algorithm, &ha1, &challenge.nonce, qop_input, &ha2),
        algorithm,
        cnonce: send_cnonce.then(|| cnonce.to_string()),
        opaque: challenge.opaque.clone(),
        qop,
        nc: qop.map(|_| nc),
        userhash: false,
    }
}

/// [`answer`] with a fresh cnonce from `rng`.
pub fn answer_with_random_cnonce(
    challenge: &Challenge,
    creds: &Credentials,
    method: &str,
    digest_uri: &str,
    body: &[u8],
    nc: u32,
    rng: &mut impl RngCore,
) -> Authorization {
    answer(
        challenge,
        creds,
        method,
        digest_uri,
        body,
        nc,
        &new_cnonce(rng),
    )
}

/// 128 random bits from `rng` as 32 hex digits.
pub fn new_cnonce(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Whether a digest `uri` names the Request-URI: equal, or equal once any `;transport=` parameter
/// is removed from both (Meta's retry drops `;transport=tls`, WHATSAPP-SIP §4.2).
pub fn digest_uri_matches(request_uri: &str, digest_uri: &str) -> bool {
    request_uri == digest_uri || without_transport(request_uri) == without_transport(digest_uri)
}

fn without_transport(uri: &str) -> String {
    let (main, headers) = uri.split_at(uri.find('?').unwrap_or(uri.len()));
    let host_start = match main.find('@') {
        Some(i) => i + 1,
        None => main.find(':').map_or(0, |i| i + 1),
    };
    let (head, rest) = main.split_at(host_start);
    let mut out = head.to_string();
    for (i, segment) in rest.split(';').enumerate() {
        if i > 0 {
            let name = segment.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("transport") {
                continue;
            }
            out.push(';');
        }
        out.push_str(segment);
    }
    out.push_str(headers);
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceState {
    Valid,
    /// Ours, but older than the lifetime: challenge again with `stale=true`.
    Stale,
    /// Not issued by us for this realm (forged, mangled, or from another key).
    Invalid,
}

const NONCE_SALT_LEN: usize = 8;
const NONCE_TAG_LEN: usize = 16;
const NONCE_LEN: usize = 8 + NONCE_SALT_LEN + NONCE_TAG_LEN;

/// Issues stateless nonces: hex(timestamp ‖ salt ‖ HMAC-SHA256(key, timestamp ‖ salt ‖ realm)),
/// the MAC truncated to 128 bits. The salt, a counter, keeps nonces issued in the same second apart,
/// so their nonce counts are tracked separately.
pub struct NonceIssuer {
    key: [u8; 32],
    lifetime_secs: u64,
    /// Nonces issued so far: the next one's salt.
    issued: AtomicU64,
}

impl Clone for NonceIssuer {
    fn clone(&self) -> Self {
        NonceIssuer {
            key: self.key,
            lifetime_secs: self.lifetime_secs,
            issued: AtomicU64::new(self.issued.load(Ordering::Relaxed)),
        }
    }
}

impl fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceIssuer")
            .field("key", &"<redacted>")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish()
    }
}

impl NonceIssuer {
    /// `key` is the caller's secret (the binary draws one per process: nonces do not survive a
    /// restart).
    pub fn new(key: [u8; 32], lifetime_secs: u64) -> Self {
        NonceIssuer {
            key,
            lifetime_secs,
            issued: AtomicU64::new(0),
        }
    }

    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    pub fn issue(&self, realm: &str, now_secs: u64) -> String {
        let salt: [u8; NONCE_SALT_LEN] = self.issued.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        let mut raw = Vec::with_capacity(NONCE_LEN);
        raw.extend_from_slice(&now_secs.to_be_bytes());
        raw.extend_from_slice(&salt);
        let tag = self.nonce_mac(&raw, realm).finalize().into_bytes();
        raw.extend_from_slice(&tag[..NONCE_TAG_LEN]);
        hex(&raw)
    }

    pub fn check(&self, nonce: &str, realm: &str, now_secs: u64) -> NonceState {
        match self.issued_at(nonce, realm) {
            None => NonceState::Invalid,
            Some(issued) if self.expired(issued, now_secs) => NonceState::Stale,
            Some(_) => NonceState::Valid,
        }
    }

    /// A challenge with a fresh nonce, qop="auth" and an opaque derived from the nonce.
    pub fn challenge(
        &self,
        realm: &str,
        algorithm: Algorithm,
        now_secs: u64,
        stale: bool,
    ) -> Challenge {
        let nonce = self.issue(realm, now_secs);
        Challenge {
            realm: realm.to_string(),
            opaque: Some(self.opaque(&nonce)),
            nonce,
            algorithm,
            qop: vec![Qop::Auth],
            stale,
            domain: None,
            userhash: false,
        }
    }

    fn opaque(&self, nonce: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"o");
        mac.update(nonce.as_bytes());
        hex(&mac.finalize().into_bytes()[..8])
    }

    /// The issue time of an authentic nonce.
    fn issued_at(&self, nonce: &str, realm: &str) -> Option<u64> {
        let raw = unhex(nonce)?;
        if raw.len() != NONCE_LEN {
            return None;
        }
        let (body, tag) = raw.split_at(8 + NONCE_SALT_LEN);
        self.nonce_mac(body, realm)
            .verify_truncated_left(tag)
            .ok()?;
        Some(u64::from_be_bytes(body[..8].try_into().ok()?))
    }

    fn expired(&self, issued: u64, now_secs: u64) -> bool {
        now_secs.saturating_sub(issued) > self.lifetime_secs
    }

    fn nonce_mac(&self, timestamp_and_salt: &[u8], realm: &str) -> Hmac<Sha256> {
        let mut mac = self.mac();
        mac.update(b"n");
        mac.update(timestamp_and_salt);
        mac.update(realm.as_bytes());
        mac
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }
}

/// Why we refuse a request's credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("peer used an expired nonce of ours: challenge again with stale=true")]
    Stale,
    #[error("peer used a nonce we did not issue (forged, or from an earlier key)")]
    UnknownNonce,
    #[error("peer answered for realm `{0}`, not ours")]
    WrongRealm(String),
    #[error("peer's digest uri `{digest_uri}` does not match the Request-URI `{request_uri}`")]
    UriMismatch {
        digest_uri: String,
        request_uri: String,
    },
    #[error("wrong credentials: the digest response does not match the password we hold")]
    BadResponse,
    #[error("peer reused a nonce count for this nonce (replay?)")]
    ReusedNc,
    #[error("peer used digest algorithm `{0}`, which we do not accept")]
    UnsupportedAlgorithm(String),
    #[error("peer's credentials lack the `{0}` parameter")]
    MissingField(&'static str),
    #[error("peer sent userhash credentials, which we never offer")]
    UserhashUnsupported,
    #[error(transparent)]
    Malformed(DigestError),
}

impl From<DigestError> for AuthFailure {
    fn from(e: DigestError) -> Self {
        match e {
            DigestError::MissingParameter(p) => AuthFailure::MissingField(p),
            DigestError::UnsupportedAlgorithm(a) => AuthFailure::UnsupportedAlgorithm(a),
            other => AuthFailure::Malformed(other),
        }
    }
}

pub const DEFAULT_REPLAY_CAPACITY: usize = 4096;

/// Highest nonce count recorded for a nonce used without qop: any further use is a replay.
const USED_WITHOUT_QOP: u32 = u32::MAX;

struct Seen {
    issued: u64,
    highest_nc: u32,
}

/// Verifies credentials against nonces from its [`NonceIssuer`], remembering the highest nonce
/// count per nonce in a bounded table so a captured request cannot be replayed.
pub struct Verifier {
    issuer: NonceIssuer,
    realm: String,
    algorithms: Vec<Algorithm>,
    capacity: usize,
    seen: HashMap<String, Seen>,
    /// Nonces in the order they were first used, for eviction.
    order: VecDeque<String>,
    /// Newest issue time of a nonce evicted to make room. Unknown nonces issued no later than this
    /// may have been evicted, so they are treated as stale rather than trusted with a fresh count.
    evicted_up_to: Option<u64>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("realm", &self.realm)
            .field("algorithms", &self.algorithms)
            .field("capacity", &self.capacity)
            .field("tracked_nonces", &self.seen.len())
            .finish()
    }
}

impl Verifier {
    /// Accepts every algorithm in [`Algorithm::ALL`] and tracks up to [`DEFAULT_REPLAY_CAPACITY`]
    /// nonces.
    pub fn new(issuer: NonceIssuer, realm: impl Into<String>) -> Self {
        Verifier {
            issuer,
            realm: realm.into(),
            algorithms: Algorithm::ALL.to_vec(),
            capacity: DEFAULT_REPLAY_CAPACITY,
            seen: HashMap::new(),
            order: VecDeque::new(),
            evicted_up_to: None,
        }
    }

    pub fn with_replay_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    pub fn with_algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.algorithms = algorithms.to_vec();
        self
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn issuer(&self) -> &NonceIssuer {
        &self.issuer
    }

    /// Nonces currently tracked for replay detection.
    pub fn tracked_nonces(&self) -> usize {
        self.seen.len()
    }

    pub fn challenge(&self, algorithm: Algorithm, now_secs: u64, stale: bool) -> Challenge {
        self.issuer
            .challenge(&self.realm, algorithm, now_secs, stale)
    }

    /// Checks `auth` for a request. The caller looks up `password` by `auth.username`. The response
    /// is only checked for nonces we issued, and a count is only recorded once the response is right.
    pub fn verify(
        &mut self,
        auth: &Authorization,
        method: &str,
        request_uri: &str,
        password: &str,
        body: &[u8],
        now_secs: u64,
    ) -> Result<(), AuthFailure> {
        if !self.algorithms.contains(&auth.algorithm) {
            return Err(AuthFailure::UnsupportedAlgorithm(
                auth.algorithm.to_string(),
            ));
        }
        if auth.userhash {
            return Err(AuthFailure::UserhashUnsupported);
        }
        if auth.realm != self.realm {
            return Err(AuthFailure::WrongRealm(auth.realm.clone()));
        }
        let issued = self
            .issuer
            .issued_at(&auth.nonce, &self.realm)
            .ok_or(AuthFailure::UnknownNonce)?;
        if self.issuer.expired(issued, now_secs) {
            return Err(AuthFailure::Stale);
        }
        if !digest_uri_matches(request_uri, &auth.uri) {
            return Err(AuthFailure::UriMismatch {
                digest_uri: auth.uri.clone(),
                request_uri: request_uri.to_string(),
            });
        }
        let nc_text;
        let qop_input = match auth.qop {
            Some(qop) => {
                let nc = auth.nc.ok_or(AuthFailure::MissingField("nc"))?;
                let cnonce = auth
                    .cnonce
                    .as_deref()
                    .ok_or(AuthFailure::MissingField("cnonce"))?;
                nc_text = format!("{nc:08x}");
                Some(QopInput {
                    qop,
                    nc: &nc_text,
                    cnonce,
                })
            }
            None => None,
        };
        if auth.algorithm.is_sess() && auth.cnonce.is_none() {
            return Err(AuthFailure::MissingField("cnonce"));
        }

        let prior = self.seen.get(&auth.nonce).map(|s| s.highest_nc);
        if prior.is_none() && self.evicted_up_to.is_some_and(|t| issued <= t) {
            return Err(AuthFailure::Stale);
        }
        let next_nc = match (auth.qop, auth.nc) {
            (Some(_), Some(nc)) => nc,
            _ => USED_WITHOUT_QOP,
        };
        let reused = match (prior, auth.qop) {
            (Some(_), None) => true,
            (Some(highest), Some(_)) => next_nc <= highest,
            (None, _) => next_nc == 0,
        };
        if reused {
            return Err(AuthFailure::ReusedNc);
        }

        let ha1 = ha1(
            auth.algorithm,
            &auth.username,
            &auth.realm,
            password,
            &auth.nonce,
            auth.cnonce.as_deref().unwrap_or(""),
        );
        let ha2 = ha2(auth.algorithm, auth.qop, method, &auth.uri, body);
        let expected = request_digest(auth.algorithm, &ha1, &auth.nonce, qop_input, &ha2);
        if !constant_time_eq(
            expected.as_bytes(),
            auth.response.to_ascii_lowercase().as_bytes(),
        ) {
            return Err(AuthFailure::BadResponse);
        }

        self.record(&auth.nonce, issued, next_nc, now_secs);
        Ok(())
    }

    fn record(&mut self, nonce: &str, issued: u64, nc: u32, now_secs: u64) {
        if let Some(seen) = self.seen.get_mut(nonce) {
            seen.highest_nc = nc;
            return;
        }
        // Expired nonces are refused as stale before the table is consulted, so dropping them is safe.
        while let Some(front) = self.order.front() {
            let expired = match self.seen.get(front) {
                Some(seen) => self.issuer.expired(seen.issued, now_secs),
                None => true,
            };
            if !expired {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        while self.seen.len() >= self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(evicted) = self.seen.remove(&old) {
                self.evicted_up_to = Some(self.evicted_up_to.unwrap_or(0).max(evicted.issued));
            }
        }
        self.seen.insert(
            nonce.to_string(),
            Seen {
                issued,
                highest_nc: nc,
            },
        );
        self.order.push_back(nonce.to_string());
    }
}

/// Parameters of a Digest header value, names lower-cased, values unquoted.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(value: &str) -> Result<Params, DigestError> {
        let s = value.trim_start_matches(is_space);
        let scheme_end = s.find(is_space).unwrap_or(s.len());
        let scheme = &s[..scheme_end];
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(DigestError::NotDigest(scheme.to_string()));
        }
        let s = &s[scheme_end..];
        let b = s.as_bytes();
        let skip_space = |mut i: usize| {
            while i < b.len() && is_space(b[i] as char) {
                i += 1;
            }
            i
        };
        let mut out: Vec<(String, String)> = Vec::new();
        let mut i = 0;
        loop {
            while i < b.len() && (is_space(b[i] as char) || b[i] == b',') {
                i += 1;
            }
            if i == b.len() {
                break;
            }
            let start = i;
            while i < b.len() && is_token_char(b[i]) {
                i += 1;
            }
            if i == start {
                return Err(DigestError::Malformed("expected a parameter name"));
            }
            let name = s[start..i].to_ascii_lowercase();
            i = skip_space(i);
            if b.get(i) != Some(&b'=') {
                return Err(DigestError::Malformed("parameter without a value"));
            }
            i = skip_space(i + 1);
            let value = if b.get(i) == Some(&b'"') {
                i += 1;
                let mut v = Vec::new();
                loop {
                    match b.get(i) {
                        None => return Err(DigestError::Malformed("unterminated quoted string")),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if i + 1 < b.len() => {
                            v.push(b[i + 1]);
                            i += 2;
                        }
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                String::from_utf8(v).map_err(|_| DigestError::Malformed("invalid UTF-8"))?
            } else {
                let start = i;
                while i < b.len() && !is_space(b[i] as char) && b[i] != b',' && b[i] != b'"' {
                    i += 1;
                }
                if i == start {
                    return Err(DigestError::Malformed("empty parameter value"));
                }
                s[start..i].to_string()
            };
            i = skip_space(i);
            if i < b.len() && b[i] != b',' {
                return Err(DigestError::Malformed("junk after a parameter value"));
            }
            if out.iter().any(|(n, _)| *n == name) {
                return Err(DigestError::Malformed("duplicate parameter"));
            }
            out.push((name, value));
        }
        Ok(Params(out))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &'static str) -> Result<&str, DigestError> {
        self.get(name).ok_or(DigestError::MissingParameter(name))
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    fn algorithm(&self) -> Result<Algorithm, DigestError> {
        self.get("algorithm").map_or(Ok(Algorithm::Md5), str::parse)
    }
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// A nonce count: hex digits, usually exactly 8, value within 32 bits.
fn parse_nc(s: &str) -> Result<u32, DigestError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DigestError::Malformed("nc is not hexadecimal"));
    }
    u32::from_str_radix(s, 16).map_err(|_| DigestError::Malformed("nc does not fit 32 bits"))
}

/// An RFC 8187 ext-value (`UTF-8''J%C3%A4s%C3%B8n`), as `username*` carries it.
fn decode_ext_value(v: &str) -> Result<String, DigestError> {
    let bad = DigestError::Malformed("bad username* encoding");
    let (charset, rest) = v.split_once('\'').ok_or(bad.clone())?;
    let (_language, encoded) = rest.split_once('\'').ok_or(bad.clone())?;
    if !charset.eq_ignore_ascii_case("utf-8") {
        return Err(bad);
    }
    let b = encoded.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let digits = encoded.get(i + 1..i + 3).ok_or(bad.clone())?;
            if !digits.bytes().all(|d| d.is_ascii_hexdigit()) {
                return Err(bad);
            }
            out.push(u8::from_str_radix(digits, 16).map_err(|_| bad.clone())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad)
}

/// Prints a quoted-string, escaping `"` and `\`.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

fn digest_hex<D: Digest>(parts: &[&[u8]]) -> String {
    let mut d = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            d.update(b":");
        }
        d.update(part);
    }
    hex(&d.finalize())
}

/// Lower-case hexadecimal, as digest responses (and HMAC signatures, key logs) are written.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Lower-case hex only: nonces are ours and we print them lower-case.
fn unhex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const REALM: &str = "trunk.example.com";
    const RURI: &str = "sip:+12145551869@trunk.example.com;transport=tls";
    const PASSWORD: &str = "s3cret";

    fn verifier() -> Verifier {
        Verifier::new(NonceIssuer::new(KEY, 300), REALM)
    }

    fn creds() -> Credentials {
        Credentials::new("12145551869", PASSWORD)
    }

    #[test]
    fn algorithm_parse_and_display() {
        for a in Algorithm::ALL {
            assert_eq!(a.to_string().parse::<Algorithm>(), Ok(a));
            assert_eq!(
                a.to_string().to_ascii_lowercase().parse::<Algorithm>(),
                Ok(a)
            );
        }
        assert_eq!(
            "sha-256-SESS".parse::<Algorithm>(),
            Ok(Algorithm::Sha256Sess)
        );
        assert_eq!(Algorithm::Sha512_256.to_string(), "SHA-512-256");
        assert_eq!(Algorithm::Md5Sess.to_string(), "MD5-sess");
        assert!(matches!(
            "AKAv1-MD5".parse::<Algorithm>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        let c = Challenge::parse("Digest realm=\"r\", nonce=\"n\"").unwrap();
        assert_eq!(c.algorithm, Algorithm::Md5);
    }

    #[test]
    fn challenge_parse_is_lenient_about_layout() {
        let c = Challenge::parse(
            "  dIgEsT   REALM = \"a \\\"b\\\"\" ,,nonce=abc/+=,\tQop=\"auth-int , auth, auth-conf\", \
             ALGORITHM=\"sha-256\", stale=TRUE, x-unknown=\"1,2\", opaque=o, domain=\"sip:x\"",
        )
        .unwrap();
        assert_eq!(c.realm, "a \"b\"");
        assert_eq!(c.nonce, "abc/+=");
        assert_eq!(c.qop, vec![Qop::AuthInt, Qop::Auth]);
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert!(c.stale);
        assert_eq!(c.opaque.as_deref(), Some("o"));
        assert_eq!(c.domain.as_deref(), Some("sip:x"));
        assert_eq!(Challenge::parse(&c.to_string()), Ok(c));
    }

    #[test]
    fn challenge_parse_errors_blame_the_peer() {
        let cases: [(&str, DigestError); 7] = [
            ("Basic realm=\"x\"", DigestError::NotDigest("Basic".into())),
            ("Digest nonce=\"n\"", DigestError::MissingParameter("realm")),
            ("Digest realm=\"r\"", DigestError::MissingParameter("nonce")),
            (
                "Digest realm=\"r\", nonce=\"n\", algorithm=AKAv1-MD5",
                DigestError::UnsupportedAlgorithm("AKAv1-MD5".into()),
            ),
            (
                "Digest realm=\"r\", nonce=\"n\", qop=\"auth-conf\"",
                DigestError::UnsupportedQop("auth-conf".into()),
            ),
            (
                "Digest realm=\"r, nonce=\"n\"",
                DigestError::Malformed("junk after a parameter value"),
            ),
            (
                "Digest realm=\"r",
                DigestError::Malformed("unterminated quoted string"),
            ),
        ];
        for (value, expected) in cases {
            let err = Challenge::parse(value).unwrap_err();
            assert_eq!(err, expected, "{value}");
            assert!(err.to_string().starts_with("peer"), "{err}");
        }
        assert_eq!(
            Challenge::parse("Digest realm=\"r\", realm=\"s\", nonce=n"),
            Err(DigestError::Malformed("duplicate parameter"))
        );
    }

    #[test]
    fn choose_prefers_sha256_then_md5_then_qop_auth() {
        let mk = |algorithm, qop: Vec<Qop>, nonce: &str| Challenge {
            realm: "r".into(),
            nonce: nonce.into(),
            opaque: None,
            algorithm,
            qop,
            stale: false,
            domain: None,
            userhash: false,
        };
        let list = vec![
            mk(Algorithm::Md5, vec![Qop::Auth], "md5"),
            mk(Algorithm::Sha512_256, vec![Qop::Auth], "sha512"),
            mk(Algorithm::Sha256, vec![], "sha256-noqop"),
            mk(
                Algorithm::Sha256,
                vec![Qop::AuthInt, Qop::Auth],
                "sha256-auth",
            ),
        ];
        assert_eq!(choose_challenge(&list).unwrap().nonce, "sha256-auth");
        assert_eq!(choose_challenge(&list[..2]).unwrap().nonce, "md5");
        assert_eq!(choose_challenge(&list[1..2]).unwrap().nonce, "sha512");
        assert!(choose_challenge(&[]).is_none());

        let parsed = Challenge::parse_supported([
            "Digest realm=\"r\", nonce=\"aka\", algorithm=AKAv1-MD5",
            "Basic realm=\"r\"",
            "Digest realm=\"r\", nonce=\"m\", qop=\"auth\"",
        ]);
        assert_eq!(parsed.len(), 1);
        assert_eq!(choose_challenge(&parsed).unwrap().nonce, "m");
    }

    #[test]
    fn nc_prints_as_eight_lower_hex_digits() {
        let c = Challenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth\"").unwrap();
        let auth = answer(&c, &creds(), "INVITE", RURI, b"", 10, "0a4f113b");
        let printed = auth.to_string();
        assert!(printed.contains(", nc=0000000a"), "{printed}");
        assert!(printed.contains(", qop=auth"), "{printed}");
        assert!(printed.contains(", algorithm=MD5"), "{printed}");
        let back = Authorization::parse(&printed).unwrap();
        assert_eq!(back.nc, Some(10));
        assert_eq!(back, auth);

        for (text, value) in [
            ("0000000A", 10),
            ("ffffffff", u32::MAX),
            ("000000002", 2),
            ("1", 1),
        ] {
            let h = format!(
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", \
                 response=\"00\", qop=\"auth\", cnonce=\"c\", nc={text}"
            );
            let a = Authorization::parse(&h).unwrap();
            assert_eq!((a.nc, a.qop), (Some(value), Some(Qop::Auth)), "{text}");
        }
        for bad in ["100000000", "0x1", "+1", "z"] {
            let h = format!(
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", \
                 response=\"00\", nc={bad}"
            );
            assert!(Authorization::parse(&h).is_err(), "{bad}");
        }
    }

    #[test]
    fn authorization_username_star() {
        let a = Authorization::parse(
            "Digest username*=UTF-8''J%C3%A4s%C3%B8n%20Doe, realm=\"api@example.org\", \
             uri=\"/doe.json\", nonce=\"n\", response=\"r\"",
        )
        .unwrap();
        assert_eq!(a.username, "Jäsøn Doe");
        assert_eq!(
            Authorization::parse("Digest realm=\"r\", uri=\"u\", nonce=\"n\", response=\"r\""),
            Err(DigestError::MissingParameter("username"))
        );
    }

    #[test]
    fn answer_forms() {
        let legacy = Challenge::parse("Digest realm=\"r\", nonce=\"n\"").unwrap();
        let a = answer(&legacy, &creds(), "INVITE", RURI, b"", 1, "cn");
        assert_eq!((a.qop, a.nc, a.cnonce.as_deref()), (None, None, None));
        assert!(!a.to_string().contains("nc="));

        let int_only =
            Challenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\", opaque=\"o\"")
                .unwrap();
        let a = answer(&int_only, &creds(), "INVITE", RURI, b"v=0\r\n", 1, "cn");
        assert_eq!(a.qop, Some(Qop::AuthInt));
        assert_eq!(a.opaque.as_deref(), Some("o"));
        let b = answer(&int_only, &creds(), "INVITE", RURI, b"v=1\r\n", 1, "cn");
        assert_ne!(a.response, b.response, "auth-int hashes the body");

        let sess = Challenge::parse(
            "Digest realm=\"r\", nonce=\"n\", qop=\"auth\", algorithm=SHA-256-sess",
        )
        .unwrap();
        let a = answer(&sess, &creds(), "INVITE", RURI, b"", 1, "cn1");
        let b = answer(&sess, &creds(), "INVITE", RURI, b"", 1, "cn2");
        assert_eq!(a.response.len(), 64);
        assert_ne!(a.response, b.response);

        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let r = answer_with_random_cnonce(&sess, &creds(), "INVITE", RURI, b"", 1, &mut rng);
        let cnonce = r.cnonce.unwrap();
        assert!(cnonce.len() >= 16 && cnonce.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(new_cnonce(&mut rng), new_cnonce(&mut rng));
    }

    #[test]
    fn credentials_debug_hides_password() {
        assert!(!format!("{:?}", creds()).contains(PASSWORD));
        assert!(!format!("{:?}", NonceIssuer::new(KEY, 1)).contains("7, 7"));
    }

    #[test]
    fn nonce_issue_and_check() {
        let issuer = NonceIssuer::new(KEY, 300);
        let n = issuer.issue(REALM, 1_000);
        assert_ne!(n, issuer.issue(REALM, 1_000), "same-second nonces differ");
        assert_eq!(issuer.check(&n, REALM, 1_000), NonceState::Valid);
        assert_eq!(issuer.check(&n, REALM, 1_300), NonceState::Valid);
        assert_eq!(issuer.check(&n, REALM, 1_301), NonceState::Stale);
        assert_eq!(issuer.check(&n, "other.realm", 1_000), NonceState::Invalid);
        assert_eq!(
            NonceIssuer::new([8; 32], 300).check(&n, REALM, 1_000),
            NonceState::Invalid
        );
        let mut forged = n.clone().into_bytes();
        forged[3] = if forged[3] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(issuer.check(&forged, REALM, 1_000), NonceState::Invalid);
        assert_eq!(
            issuer.check(&n.to_uppercase(), REALM, 1_000),
            NonceState::Invalid
        );
        assert_eq!(issuer.check("", REALM, 1_000), NonceState::Invalid);
        assert_eq!(issuer.check("zz", REALM, 1_000), NonceState::Invalid);

        let c = issuer.challenge(REALM, Algorithm::Sha256, 1_000, true);
        assert_eq!(c.qop, vec![Qop::Auth]);
        assert!(c.stale && c.opaque.is_some());
        assert_eq!(issuer.check(&c.nonce, REALM, 1_000), NonceState::Valid);
        assert_eq!(Challenge::parse(&c.to_string()), Ok(c));
    }

    #[test]
    fn verify_round_trip_md5_and_sha256() {
        for algorithm in Algorithm::ALL {
            let mut v = verifier();
            let c = v.challenge(algorithm, 1_000, false);
            let header =
                answer(&c, &creds(), "INVITE", RURI, b"sdp", 1, "abcdef0123456789").to_string();
            let auth = Authorization::parse(&header).unwrap();
            assert_eq!(
                v.verify(&auth, "INVITE", RURI, PASSWORD, b"sdp", 1_010),
                Ok(())
            );
            assert_eq!(v.tracked_nonces(), 1);
        }
    }

    #[test]
    fn verify_rejects_wrong_password_and_replays() {
        let mut v = verifier();
        let c = v.challenge(Algorithm::Sha256, 1_000, false);
        let wrong = answer(
            &c,
            &Credentials::new("12145551869", "nope"),
            "INVITE",
            RURI,
            b"",
            1,
            "c",
        );
        assert_eq!(
            v.verify(&wrong, "INVITE", RURI, PASSWORD, b"", 1_000),
            Err(AuthFailure::BadResponse)
        );
        assert!(AuthFailure::BadResponse
            .to_string()
            .starts_with("wrong credentials"));

        let first = answer(&c, &creds(), "INVITE", RURI, b"", 1, "c");
        assert_eq!(
            v.verify(&first, "INVITE", RURI, PASSWORD, b"", 1_000),
            Ok(())
        );
        assert_eq!(
            v.verify(&first, "INVITE", RURI, PASSWORD, b"", 1_001),
            Err(AuthFailure::ReusedNc)
        );
        let second = answer(&c, &creds(), "BYE", RURI, b"", 2, "c");
        assert_eq!(v.verify(&second, "BYE", RURI, PASSWORD, b"", 1_002), Ok(()));
        let back = answer(&c, &creds(), "BYE", RURI, b"", 1, "c");
        assert_eq!(
            v.verify(&back, "BYE", RURI, PASSWORD, b"", 1_003),
            Err(AuthFailure::ReusedNc)
        );
        let zero = answer(
            &v.challenge(Algorithm::Md5, 1_000, false),
            &creds(),
            "BYE",
            RURI,
            b"",
            0,
            "c",
        );
        assert_eq!(
            v.verify(&zero, "BYE", RURI, PASSWORD, b"", 1_003),
            Err(AuthFailure::ReusedNc)
        );
    }

    #[test]
    fn verify_legacy_no_qop_is_single_use() {
        let mut v = verifier();
        let mut c = v.challenge(Algorithm::Md5, 1_000, false);
        c.qop.clear();
        let auth = answer(&c, &creds(), "INVITE", RURI, b"", 1, "c");
        assert_eq!((auth.nc, auth.cnonce.as_deref()), (None, None));
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Ok(())
        );
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Err(AuthFailure::ReusedNc)
        );
    }

    #[test]
    fn verify_detects_stale_and_forged_nonces() {
        let mut v = verifier();
        let c = v.challenge(Algorithm::Md5, 1_000, false);
        let auth = answer(&c, &creds(), "INVITE", RURI, b"", 1, "c");
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_301),
            Err(AuthFailure::Stale)
        );
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_300),
            Ok(())
        );

        let mut forged = c.clone();
        forged.nonce = NonceIssuer::new([1; 32], 300).issue(REALM, 1_000);
        let auth = answer(&forged, &creds(), "INVITE", RURI, b"", 1, "c");
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Err(AuthFailure::UnknownNonce)
        );
        forged.nonce = "47cdac2830f7539b".into();
        let auth = answer(&forged, &creds(), "INVITE", RURI, b"", 1, "c");
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Err(AuthFailure::UnknownNonce)
        );

        let mut other_realm = c.clone();
        other_realm.realm = "wa.meta.vc".into();
        let auth = answer(&other_realm, &creds(), "INVITE", RURI, b"", 1, "c");
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Err(AuthFailure::WrongRealm("wa.meta.vc".into()))
        );
    }

    #[test]
    fn verify_uri_with_or_without_transport() {
        let bare = "sip:+12145551869@trunk.example.com";
        for (digest_uri, ok) in [
            (RURI, true),
            (bare, true),
            ("sip:+12145551869@trunk.example.com;transport=TCP", true),
            (
                "sip:+12145551869@trunk.example.com;transport=tls;user=phone",
                false,
            ),
            ("sip:+19995550000@trunk.example.com;transport=tls", false),
            ("sip:+12145551869@other.example.com", false),
        ] {
            let mut v = verifier();
            let c = v.challenge(Algorithm::Sha256, 1_000, false);
            let auth = answer(&c, &creds(), "INVITE", digest_uri, b"", 1, "c");
            let got = v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000);
            if ok {
                assert_eq!(got, Ok(()), "{digest_uri}");
            } else {
                assert!(
                    matches!(got, Err(AuthFailure::UriMismatch { .. })),
                    "{digest_uri}"
                );
            }
            let got = verifier().verify(&auth, "INVITE", bare, PASSWORD, b"", 1_000);
            assert_eq!(got.is_ok(), ok, "bare R-URI vs {digest_uri}");
        }
        assert!(digest_uri_matches(
            "sip:+1;npdi@h;transport=tls?X=1",
            "sip:+1;npdi@h?X=1"
        ));
        assert!(!digest_uri_matches("sip:+1;npdi@h", "sip:+1@h"));
    }

    #[test]
    fn verify_missing_fields_and_algorithms() {
        let mut v = verifier().with_algorithms(&[Algorithm::Sha256]);
        let c = v.challenge(Algorithm::Md5, 1_000, false);
        let auth = answer(&c, &creds(), "INVITE", RURI, b"", 1, "c");
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Err(AuthFailure::UnsupportedAlgorithm("MD5".into()))
        );
        let c = v.challenge(Algorithm::Sha256, 1_000, false);
        let mut auth = answer(&c, &creds(), "INVITE", RURI, b"", 1, "c");
        auth.nc = None;
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Err(AuthFailure::MissingField("nc"))
        );
        auth.nc = Some(1);
        auth.cnonce = None;
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Err(AuthFailure::MissingField("cnonce"))
        );

        let parsed: Result<Authorization, AuthFailure> =
            Authorization::parse("Digest username=\"u\", realm=\"r\"").map_err(AuthFailure::from);
        assert_eq!(parsed, Err(AuthFailure::MissingField("nonce")));
        let parsed = Authorization::parse(
            "Digest username=\"u\", realm=\"r\", nonce=n, uri=u, response=r, algorithm=AKAv1-MD5",
        )
        .map_err(AuthFailure::from);
        assert_eq!(
            parsed,
            Err(AuthFailure::UnsupportedAlgorithm("AKAv1-MD5".into()))
        );
    }

    #[test]
    fn replay_table_is_bounded() {
        let mut v = verifier().with_replay_capacity(3);
        let challenges: Vec<Challenge> = (0..4)
            .map(|_| v.challenge(Algorithm::Md5, 1_000, false))
            .collect();
        for c in &challenges {
            let auth = answer(c, &creds(), "INVITE", RURI, b"", 1, "c");
            assert_eq!(
                v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
                Ok(())
            );
        }
        assert_eq!(v.tracked_nonces(), 3);
        // The evicted nonce's count is forgotten, so it must not be trusted again.
        let auth = answer(&challenges[0], &creds(), "INVITE", RURI, b"", 2, "c");
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Err(AuthFailure::Stale)
        );
        let auth = answer(&challenges[1], &creds(), "INVITE", RURI, b"", 2, "c");
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Ok(())
        );
        let later = v.challenge(Algorithm::Md5, 1_001, false);
        let auth = answer(&later, &creds(), "INVITE", RURI, b"", 1, "c");
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_001),
            Ok(())
        );

        // Expired entries go first once time has moved on.
        let fresh = v.challenge(Algorithm::Md5, 2_000, false);
        let auth = answer(&fresh, &creds(), "INVITE", RURI, b"", 1, "c");
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 2_000),
            Ok(())
        );
        assert_eq!(v.tracked_nonces(), 1);
    }

    #[test]
    fn response_comparison_ignores_hex_case_only() {
        let mut v = verifier();
        let c = v.challenge(Algorithm::Md5, 1_000, false);
        let mut auth = answer(&c, &creds(), "INVITE", RURI, b"", 1, "c");
        auth.response = auth.response.to_uppercase();
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Ok(())
        );
        auth.nc = Some(2);
        auth.response.truncate(31);
        assert_eq!(
            v.verify(&auth, "INVITE", RURI, PASSWORD, b"", 1_000),
            Err(AuthFailure::BadResponse)
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
