//! `watrunk serve` configuration: command-line flags over an optional TOML file over defaults. Every
//! problem is reported at start-up naming the flag or key to fix.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use watrunk_media::{Law, SinkAudio};

pub mod reference;

#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// The SIP hostname configured on the WhatsApp number (certificate name, Contact, digest realm).
    #[arg(long, env = "WATRUNK_HOSTNAME")]
    pub hostname: Option<String>,
    /// TLS listener (Meta connects here). Default [::]:5061 (IPv6 and IPv4).
    #[arg(long)]
    pub tls: Option<SocketAddr>,
    /// Plain TCP listener for the PBX side (off unless given).
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// UDP listener for the PBX side (off unless given).
    #[arg(long)]
    pub udp: Option<SocketAddr>,
    /// PEM certificate chain; without --cert/--key a self-signed certificate is made for --hostname.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// TOML configuration file; flags override its values.
    #[arg(long, env = "WATRUNK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where a generated self-signed certificate is kept (default: $STATE_DIRECTORY under
    /// systemd, else $XDG_STATE_HOME/watrunk, else ~/.local/state/watrunk).
    #[arg(long, env = "WATRUNK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log every SIP message received and sent, with digest responses, SDES keys and ICE
    /// passwords masked.
    #[arg(long)]
    pub sip_trace: bool,
    /// The same, secrets and all (a traced digest response lets a weak password be found offline;
    /// an SDES key decrypts the call).
    #[arg(long)]
    pub sip_trace_unmasked: bool,
    #[command(flatten)]
    pub debug: crate::debugging::DebugArgs,
    /// Challenge INVITEs with digest authentication (needs a SIP password).
    #[arg(long)]
    pub challenge: bool,
    /// File holding the SIP password (Meta's per-number password), for --challenge.
    #[arg(long, env = "WATRUNK_SIP_PASSWORD_FILE")]
    pub sip_password_file: Option<PathBuf>,
    /// Digest username to accept (Meta sends the business number without '+'); any when unset.
    #[arg(long)]
    pub sip_username: Option<String>,
    /// Challenge with 401 (WWW-Authenticate) instead of 407 (Proxy-Authenticate).
    #[arg(long)]
    pub challenge_401: bool,
    /// Digest algorithms offered: md5, sha-256, or both (SHA-256 first).
    #[arg(long)]
    pub digest_algorithm: Option<String>,
    /// Failed digest answers a source may give before it is banned (10; 0: never banned).
    #[arg(long)]
    pub auth_max_failures: Option<u32>,
    /// How long a ban lasts, and how long a source's failures are remembered (300 s).
    #[arg(long)]
    pub auth_ban_secs: Option<u64>,
    /// Largest SIP message accepted, in octets.
    #[arg(long)]
    pub max_message_size: Option<usize>,
    /// Close a stream connection idle for this many seconds.
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
    /// On SIGTERM or SIGINT, how long live calls may go on before each gets a BYE (60 s).
    #[arg(long)]
    pub drain_timeout_secs: Option<u64>,
    #[command(flatten)]
    pub calls: CallArgs,
}

/// What calls need: the business numbers, the media address, where audio goes, where events go.
#[derive(Args, Debug, Default, Clone)]
pub struct CallArgs {
    /// A business number taking calls (E.164 with '+'; repeat for several). Its SIP password is
    /// --sip-password-file; per-number passwords go in the config file ([[number]]).
    #[arg(long = "number", env = "WATRUNK_NUMBER", value_delimiter = ',')]
    pub numbers: Vec<String>,
    /// Our media address (ICE host candidate): an address of this host Meta can reach.
    #[arg(long, env = "WATRUNK_MEDIA_IP")]
    pub media_ip: Option<IpAddr>,
    /// A second media address (IPv6 beside an IPv4 --media-ip).
    #[arg(long)]
    pub media_ip6: Option<IpAddr>,
    /// The one UDP port all calls' media uses (0: any free port).
    #[arg(long)]
    pub media_port: Option<u16>,
    /// The public address of a 1:1 NAT in front of --media-ip, announced instead of it.
    #[arg(long)]
    pub public_ip: Option<IpAddr>,
    /// Where each call's audio goes (the voice agent or media server): plain RTP over UDP.
    #[arg(long, env = "WATRUNK_SINK")]
    pub sink: Option<SocketAddr>,
    /// What the sink speaks: opus (relayed as it is, the default), pcmu or pcma (G.711 at 8 kHz)
    /// or g722 (16 kHz), transcoded both ways.
    #[arg(long)]
    pub sink_codec: Option<String>,
    /// End a call whose far side (Meta) has sent no RTP for this many seconds after set-up, with a
    /// BYE saying so (20, Meta's own no-media limit; 0: never).
    #[arg(long)]
    pub rtp_timeout_secs: Option<u64>,
    /// Media keying for the calls we place: dtls (ICE + DTLS-SRTP, the default) or sdes.
    #[arg(long)]
    pub srtp: Option<String>,
    /// Call events as JSON lines: `-` for stdout, or a file path.
    #[arg(long)]
    pub events: Option<String>,
    /// A call detail record per call, as one JSON line when it ends: a file path, or `-`.
    #[arg(long)]
    pub cdr: Option<String>,
    /// POST each event as JSON to this URL (repeat for several), retried with backoff.
    #[arg(long = "webhook")]
    pub webhooks: Vec<String>,
    /// The key that signs webhook deliveries (X-Watrunk-Signature, HMAC-SHA256).
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Where calls we place go (Meta: wa.meta.vc:5061).
    #[arg(long, env = "WATRUNK_META_SERVER")]
    pub meta_server: Option<String>,
    /// The domain of the Request-URI and To of the calls we place (Meta: wa.meta.vc).
    #[arg(long)]
    pub meta_domain: Option<String>,
    /// An extra CA (PEM) trusted for TLS connections we open (tests, `watrunk sim`).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Do not answer calls by themselves: the control API answers them.
    #[arg(long)]
    pub no_auto_answer: bool,
    /// The control API's address (HTTP + JSON, WebSocket events), or `off`.
    #[arg(long, env = "WATRUNK_API")]
    pub api: Option<String>,
    /// A file holding the bearer token every control API request must carry
    /// (`Authorization: Bearer TOKEN`); needed when --api is not a loopback address.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Bridge WhatsApp calls into this PBX, as an ordinary SIP trunk peer:
    /// `sip:pbx.example.com[:PORT][;transport=udp|tcp|tls]` (UDP needs --udp and TCP --tcp, where
    /// the PBX reaches us; TLS uses --tls and verifies the PBX's certificate as for Meta).
    #[arg(long)]
    pub pbx: Option<String>,
    /// How long the PBX may ring before its INVITE is cancelled and WhatsApp gets 480 (60 s).
    #[arg(long)]
    pub pbx_ring_timeout_secs: Option<u64>,
    /// How long an answered PBX leg that is not on hold may send no RTP before the call is ended
    /// as gone, both legs with a BYE (60 s; 0: never).
    #[arg(long)]
    pub pbx_rtp_timeout_secs: Option<u64>,
    /// Our digest username toward the PBX (or a proxy in front of it) when it challenges our
    /// INVITEs with 401/407 (default: the calling number, without '+').
    #[arg(long)]
    pub pbx_username: Option<String>,
    /// A file holding our digest password toward the PBX (needed to answer its 401/407).
    #[arg(long)]
    pub pbx_password_file: Option<PathBuf>,
    /// Name the WhatsApp caller in P-Asserted-Identity too (RFC 3325), for a PBX that trusts us.
    #[arg(long)]
    pub pbx_asserted_identity: bool,
    /// Challenge the PBX's INVITEs (digest, as for Meta's) with the --pbx-username and
    /// --pbx-password-file credentials, beside checking their source address.
    #[arg(long)]
    pub pbx_challenge: bool,
    /// Register watrunk at the PBX as a trunk (REGISTER every few minutes, answering its
    /// challenge with --pbx-username, default the first number without '+', and
    /// --pbx-password-file). Never toward Meta.
    #[arg(long)]
    pub pbx_register: bool,
    /// Media toward the PBX: none (plain RTP/AVP, the default) or sdes (RTP/SAVP with SDES keys,
    /// RFC 4568; the PBX's offer must be SAVP too). Over UDP or TCP the keys cross the network in
    /// clear SIP: use sdes with transport=tls.
    #[arg(long)]
    pub pbx_srtp: Option<String>,
    /// Send the PBX's audio only to the address its SDP names, and take RTP only from there (by
    /// default the source of its first valid packet wins: symmetric RTP for a PBX behind NAT).
    #[arg(long)]
    pub pbx_no_symmetric_rtp: bool,
    /// When the PBX calls a WhatsApp user, play it a ring tone of ours while the user's phone
    /// rings (183 with early media) instead of a bare 180: eu (425 Hz, 1 s on, 4 s off), us
    /// (440+480 Hz, 2 s on, 4 s off) or off (the default; the PBX plays its own on 180).
    #[arg(long)]
    pub pbx_ringback: Option<String>,
}

/// Where the control API listens unless told otherwise.
pub const DEFAULT_API: &str = "127.0.0.1:8061";

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    hostname: Option<String>,
    state_dir: Option<PathBuf>,
    sip_trace: Option<bool>,
    #[serde(default)]
    debug: crate::debugging::FileDebug,
    #[serde(default)]
    listen: FileListen,
    #[serde(default)]
    tls: FileTls,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    media: FileMedia,
    #[serde(default)]
    meta: FileMeta,
    events: Option<String>,
    cdr: Option<String>,
    #[serde(default)]
    webhooks: FileWebhooks,
    api: Option<String>,
    #[serde(default, rename = "number")]
    numbers: Vec<FileNumber>,
    #[serde(default)]
    pbx: Vec<FilePbx>,
}

/// `[webhooks]`: where every event is POSTed, and the key that signs it.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileWebhooks {
    #[serde(default)]
    urls: Vec<String>,
    secret_file: Option<PathBuf>,
}

/// The call sections of the file, taken out of it whole.
struct FileCalls {
    api: Option<String>,
    media: FileMedia,
    meta: FileMeta,
    events: Option<String>,
    cdr: Option<String>,
    webhooks: FileWebhooks,
    numbers: Vec<FileNumber>,
    pbx: Vec<FilePbx>,
}

/// A `[[pbx]]` table: a PBX trunk, as the `--pbx*` flags give it (the flags speak for the first).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FilePbx {
    target: String,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ring_timeout_secs: Option<u64>,
    rtp_timeout_secs: Option<u64>,
    asserted_identity: Option<bool>,
    challenge: Option<bool>,
    register: Option<bool>,
    /// Offered to the PBX in this order: opus, pcmu, pcma, g722 (telephone-event is always added).
    codecs: Option<Vec<String>>,
    /// none or sdes.
    srtp: Option<String>,
    symmetric_rtp: Option<bool>,
    /// The business numbers bridged to this PBX; none: every number no other `[[pbx]]` names.
    numbers: Option<Vec<String>>,
    /// More addresses the PBX's calls may come from, beside its target host's (a cluster, a
    /// proxy in front of it).
    sources: Option<Vec<IpAddr>>,
    /// eu, us or off.
    ringback: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileMedia {
    ip: Option<IpAddr>,
    ip6: Option<IpAddr>,
    port: Option<u16>,
    public_ip: Option<IpAddr>,
    sink: Option<SocketAddr>,
    sink_codec: Option<String>,
    srtp: Option<String>,
    rtp_timeout_secs: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileMeta {
    server: Option<String>,
    domain: Option<String>,
    tls_ca: Option<PathBuf>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileNumber {
    number: String,
    password_file: Option<PathBuf>,
    password: Option<String>,
    challenge: Option<bool>,
    sink: Option<SocketAddr>,
    sink_codec: Option<String>,
    srtp: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileListen {
    tls: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    challenge: Option<bool>,
    password_file: Option<PathBuf>,
    username: Option<String>,
    status: Option<u16>,
    algorithm: Option<String>,
    max_failures: Option<u32>,
    ban_secs: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_message_size: Option<usize>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    first_message_secs: Option<u64>,
    drain_timeout_secs: Option<u64>,
    udp_per_source_rate: Option<u32>,
    max_transactions: Option<usize>,
    max_transactions_per_source: Option<usize>,
    max_completed: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestOffer {
    Md5,
    Sha256,
    Both,
}

/// How INVITEs are challenged (for every number that is).
#[derive(Clone, Debug)]
pub struct DigestSettings {
    pub username: Option<String>,
    pub realm: String,
    pub status: u16,
    pub offer: DigestOffer,
}

/// When a source that keeps failing digest authentication is banned, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanPolicy {
    /// Failures before the ban (0: never).
    pub max_failures: u32,
    pub ban_secs: u64,
}

impl Default for BanPolicy {
    fn default() -> Self {
        BanPolicy {
            max_failures: 10,
            ban_secs: 300,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub password: String,
    pub username: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Srtp {
    Dtls,
    Sdes,
}

/// One business number: its SIP password (Meta's, per number), whether INVITEs to it are
/// challenged, where its calls' audio goes and how the calls we place from it are keyed.
#[derive(Clone, Debug)]
pub struct NumberConfig {
    pub number: String,
    pub password: Option<String>,
    pub challenge: bool,
    /// Where its calls' audio goes (the loader refuses a number without one).
    pub sink: SocketAddr,
    /// What the sink speaks.
    pub sink_audio: SinkAudio,
    pub srtp: Srtp,
}

#[derive(Clone, Debug)]
pub struct MediaSettings {
    pub ip: IpAddr,
    pub ip6: Option<IpAddr>,
    pub port: u16,
    pub public_ip: Option<IpAddr>,
    /// How long the far side may send no RTP before its call ends (None: never).
    pub rtp_timeout: Option<Duration>,
}

/// Meta ends a call after 20 s without media; a far side silent that long is gone.
pub const DEFAULT_RTP_TIMEOUT_SECS: u64 = 20;

#[derive(Clone, Debug)]
pub struct CallsConfig {
    pub numbers: BTreeMap<String, NumberConfig>,
    pub media: Option<MediaSettings>,
    pub events: Option<String>,
    pub cdr: Option<String>,
    pub webhooks: crate::webhooks::WebhookConfig,
    /// host:port calls we place are sent to.
    pub meta_server: String,
    /// The domain of the Request-URI and To of calls we place.
    pub meta_domain: String,
    pub tls_ca: Option<PathBuf>,
    pub auto_answer: bool,
    pub api: Option<SocketAddr>,
    /// The bearer token the control API asks for, if any.
    pub api_token: Option<String>,
    /// Where WhatsApp calls are bridged to, if anywhere: the PBX trunks, each for its numbers.
    pub pbxs: Vec<PbxTarget>,
}

/// A PBX that WhatsApp calls are bridged to: the business number is the Request-URI's user at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PbxTarget {
    /// `host[:port]`, as the Request-URI names it.
    pub hostport: String,
    pub host: String,
    pub port: u16,
    pub transport: watrunk_sip::Transport,
    /// The codecs offered to the PBX, in our order of preference (Opus first: no transcoding).
    pub codecs: Vec<watrunk_sdp::Codec>,
    /// How long it may ring before the call is given up.
    pub ring_timeout: Duration,
    /// How long its answered leg, not on hold, may send no RTP before the call ends (None: never).
    pub rtp_timeout: Option<Duration>,
    /// Our digest credentials toward it, for its 401/407.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Its INVITEs carry P-Asserted-Identity.
    pub asserted_identity: bool,
    /// Its INVITEs to us are challenged with `username` and `password`.
    pub challenge: bool,
    /// We REGISTER at it as a trunk.
    pub register: bool,
    /// Plain RTP or SDES-SRTP on its leg.
    pub security: watrunk_sdp::Security,
    /// Its RTP is sent back to where it comes from (symmetric RTP), not only to its SDP's address.
    pub symmetric_rtp: bool,
    /// The addresses the PBX's calls come from (its host's, looked up at start, and those
    /// configured): an INVITE from one of them over the PBX's transport is the PBX calling a
    /// WhatsApp user.
    pub sources: Vec<std::net::IpAddr>,
    /// The business numbers whose calls go to this PBX (empty: every number no other PBX names).
    pub numbers: Vec<String>,
    /// A ring tone of ours toward it while a WhatsApp user's phone rings for its call.
    pub ringback: Option<watrunk_media::ringback::RingTone>,
}

impl PbxTarget {
    /// `sip:host[:port][;transport=udp|tcp|tls]` (port 5060, 5061 for TLS).
    pub fn parse(text: &str, key: &str) -> Result<PbxTarget> {
        let uri = watrunk_sip::Uri::parse(text)
            .ok()
            .and_then(|u| u.as_sip().cloned())
            .with_context(|| {
                format!(
                    "{key}: {text:?} is not a SIP URI like sip:pbx.example.com:5060;transport=udp"
                )
            })?;
        let transport = match uri
            .param("transport")
            .flatten()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("udp") => watrunk_sip::Transport::Udp,
            Some("tcp") => watrunk_sip::Transport::Tcp,
            Some("tls") => watrunk_sip::Transport::Tls,
            Some(other) => {
                bail!("{key}: transport={other} toward a PBX is not one of udp, tcp, tls")
            }
        };
        let host = uri.host.to_string();
        let default_port = if transport == watrunk_sip::Transport::Tls {
            5061
        } else {
            5060
        };
        let port = uri.port.unwrap_or(default_port);
        Ok(PbxTarget {
            hostport: format!("{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            transport,
            codecs: vec![
                watrunk_sdp::Codec::Opus,
                watrunk_sdp::Codec::Pcmu,
                watrunk_sdp::Codec::Pcma,
                watrunk_sdp::Codec::G722,
                watrunk_sdp::Codec::TelephoneEvent,
            ],
            ring_timeout: Duration::from_secs(60),
            rtp_timeout: Some(Duration::from_secs(60)),
            username: None,
            password: None,
            asserted_identity: false,
            challenge: false,
            register: false,
            security: watrunk_sdp::Security::Plain,
            symmetric_rtp: true,
            sources: Vec::new(),
            numbers: Vec::new(),
            ringback: None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub hostname: String,
    pub tls: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub sip_trace: bool,
    /// The trace keeps its secrets (`--sip-trace-unmasked`).
    pub sip_trace_unmasked: bool,
    /// `--key-log`, `--hep` (debugging.rs).
    pub debug: crate::debugging::Debugging,
    /// Without numbers: every INVITE is challenged with this (then refused: no number to call).
    pub auth: Option<AuthConfig>,
    pub digest: DigestSettings,
    pub bans: BanPolicy,
    pub max_message: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// An accepted connection must send a complete SIP message within this.
    pub first_message_timeout: Duration,
    pub max_transactions: usize,
    pub max_transactions_per_source: usize,
    pub max_completed: usize,
    /// Datagrams a second one address may send over UDP.
    pub udp_per_source_rate: u32,
    /// How long live calls may go on once the server is told to stop.
    pub drain_timeout: Duration,
    pub calls: CallsConfig,
}

impl ServeConfig {
    pub fn resolve(args: ServeArgs) -> Result<ServeConfig> {
        let mut file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let file_calls = FileCalls {
            api: file.api.take(),
            media: std::mem::take(&mut file.media),
            meta: std::mem::take(&mut file.meta),
            events: file.events.take(),
            cdr: file.cdr.take(),
            webhooks: std::mem::take(&mut file.webhooks),
            numbers: std::mem::take(&mut file.numbers),
            pbx: std::mem::take(&mut file.pbx),
        };
        let Some(hostname) = args.hostname.or(file.hostname) else {
            bail!("no hostname: pass --hostname sip.example.com (or set `hostname` in the config file)");
        };
        let cert = args.cert.or(file.tls.cert);
        let key = args.key.or(file.tls.key);
        if cert.is_some() != key.is_some() {
            bail!("tls.cert and tls.key go together: set both or neither");
        }
        let challenge = args.challenge || file.auth.challenge.unwrap_or(false);
        let password = match args.sip_password_file.or(file.auth.password_file.clone()) {
            Some(pw_file) => Some(read_password(
                &pw_file,
                "auth.password_file (--sip-password-file)",
            )?),
            None => None,
        };
        if challenge
            && password.is_none()
            && args.calls.numbers.is_empty()
            && file_calls.numbers.is_empty()
        {
            bail!("--challenge needs a password: pass --sip-password-file FILE (config key auth.password_file)");
        }
        let status = if args.challenge_401 {
            401
        } else {
            file.auth.status.unwrap_or(407)
        };
        if status != 401 && status != 407 {
            bail!("auth.status must be 401 or 407, not {status}");
        }
        let offer = match args
            .digest_algorithm
            .or(file.auth.algorithm)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("md5") => DigestOffer::Md5,
            Some("sha-256") | Some("sha256") => DigestOffer::Sha256,
            Some("both") => DigestOffer::Both,
            Some(other) => bail!("auth.algorithm: {other:?} is not md5, sha-256 or both"),
        };
        let bans = BanPolicy {
            max_failures: args
                .auth_max_failures
                .or(file.auth.max_failures)
                .unwrap_or(BanPolicy::default().max_failures),
            ban_secs: args
                .auth_ban_secs
                .or(file.auth.ban_secs)
                .unwrap_or(BanPolicy::default().ban_secs),
        };
        let digest = DigestSettings {
            username: args.sip_username.or(file.auth.username),
            realm: hostname.clone(),
            status,
            offer,
        };
        let calls = resolve_calls(&args.calls, &file_calls, challenge, password.as_deref())?;
        let auth = match (challenge, &password) {
            (true, Some(password)) => Some(AuthConfig {
                password: password.clone(),
                username: digest.username.clone(),
            }),
            _ => None,
        };
        let tls = args
            .tls
            .or(file.listen.tls)
            .or_else(|| Some("[::]:5061".parse().expect("valid default")));
        let udp = args.udp.or(file.listen.udp);
        let tcp = args.tcp.or(file.listen.tcp);
        for pbx in &calls.pbxs {
            match pbx.transport {
                watrunk_sip::Transport::Udp if udp.is_none() => {
                    bail!("--pbx over UDP needs a UDP listener the PBX answers to: pass --udp ADDR (config key listen.udp)");
                }
                watrunk_sip::Transport::Tcp if tcp.is_none() => {
                    bail!("--pbx over TCP needs a TCP listener the PBX answers to: pass --tcp ADDR (config key listen.tcp)");
                }
                _ => {}
            }
        }
        Ok(ServeConfig {
            tls,
            tcp,
            udp,
            cert,
            key,
            state_dir: args
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(watrunk_sip::io::tls::default_state_dir),
            sip_trace: args.sip_trace || args.sip_trace_unmasked || file.sip_trace.unwrap_or(false),
            sip_trace_unmasked: args.sip_trace_unmasked,
            debug: crate::debugging::Debugging::resolve(&args.debug, &file.debug)?,
            auth,
            digest,
            bans,
            max_message: args
                .max_message_size
                .or(file.limits.max_message_size)
                .unwrap_or(64 * 1024),
            idle_timeout: Duration::from_secs(
                args.idle_timeout_secs
                    .or(file.limits.idle_timeout_secs)
                    .unwrap_or(900),
            ),
            max_connections: file.limits.max_connections.unwrap_or(10_000),
            max_connections_per_source: file.limits.max_connections_per_source.unwrap_or(128),
            first_message_timeout: Duration::from_secs(
                file.limits.first_message_secs.unwrap_or(30),
            ),
            max_transactions: file.limits.max_transactions.unwrap_or(8192),
            max_transactions_per_source: file.limits.max_transactions_per_source.unwrap_or(1024),
            max_completed: file.limits.max_completed.unwrap_or(65_536),
            udp_per_source_rate: file.limits.udp_per_source_rate.unwrap_or(500),
            drain_timeout: Duration::from_secs(
                args.drain_timeout_secs
                    .or(file.limits.drain_timeout_secs)
                    .unwrap_or(60),
            ),
            calls,
            hostname,
        })
    }
}

fn parse_sink_codec(value: Option<&str>, key: &str) -> Result<SinkAudio> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("opus") => Ok(SinkAudio::Opus),
        Some("pcmu") => Ok(SinkAudio::G711(Law::Mu)),
        Some("pcma") => Ok(SinkAudio::G711(Law::A)),
        Some("g722") => Ok(SinkAudio::G722),
        Some(other) => bail!("{key}: {other:?} is not opus, pcmu, pcma or g722"),
    }
}

fn parse_srtp(value: Option<&str>, key: &str) -> Result<Srtp> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("dtls") => Ok(Srtp::Dtls),
        Some("sdes") => Ok(Srtp::Sdes),
        Some(other) => bail!("{key}: {other:?} is neither dtls nor sdes"),
    }
}

fn check_number(number: &str, key: &str) -> Result<()> {
    let digits = number.strip_prefix('+').unwrap_or("");
    if digits.len() < 6 || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        bail!("{key}: {number:?} is not an E.164 number with '+' (e.g. +15550001111)");
    }
    Ok(())
}

/// The PBX trunks: each `[[pbx]]` table, the `--pbx*` flags over the first (or making it).
fn resolve_pbxs(args: &CallArgs, tables: &[FilePbx]) -> Result<Vec<PbxTarget>> {
    let mut pbxs = tables
        .iter()
        .enumerate()
        .map(|(i, table)| file_pbx(table, &format!("pbx[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    if let Some(target) = &args.pbx {
        let flagged = PbxTarget::parse(target, "--pbx")?;
        match pbxs.first_mut() {
            Some(first) => {
                first.hostport = flagged.hostport;
                first.host = flagged.host;
                first.port = flagged.port;
                first.transport = flagged.transport;
            }
            None => pbxs.push(flagged),
        }
    }
    if let Some(first) = pbxs.first_mut() {
        if let Some(path) = &args.pbx_password_file {
            first.password = Some(read_password(path, "--pbx-password-file")?);
        }
        if let Some(user) = &args.pbx_username {
            first.username = Some(user.clone());
        }
        first.asserted_identity |= args.pbx_asserted_identity;
        first.challenge |= args.pbx_challenge;
        first.register |= args.pbx_register;
        if let Some(secs) = args.pbx_ring_timeout_secs {
            first.ring_timeout = Duration::from_secs(secs.max(1));
        }
        if let Some(secs) = args.pbx_rtp_timeout_secs {
            first.rtp_timeout = (secs > 0).then(|| Duration::from_secs(secs));
        }
        if let Some(srtp) = &args.pbx_srtp {
            first.security = parse_pbx_srtp(srtp, "--pbx-srtp")?;
        }
        first.symmetric_rtp &= !args.pbx_no_symmetric_rtp;
        if let Some(tone) = &args.pbx_ringback {
            first.ringback = parse_ringback(tone, "--pbx-ringback")?;
        }
    }
    let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
    let mut catch_all: Option<&str> = None;
    for pbx in &pbxs {
        if pbx.ringback.is_some() && pbx.security == watrunk_sdp::Security::Sdes {
            bail!(
                "[[pbx]] {}: ringback is plain RTP; it cannot go with srtp = \"sdes\"",
                pbx.hostport
            );
        }
        if pbx.challenge && pbx.password.is_none() {
            bail!("--pbx-challenge (pbx.challenge) needs the PBX's password: pass --pbx-password-file FILE (pbx.password_file)");
        }
        if pbx.numbers.is_empty() {
            if let Some(other) = catch_all.replace(&pbx.hostport) {
                bail!("[[pbx]]: {other} and {} both take every number: give one of them `numbers = [...]`", pbx.hostport);
            }
        }
        for number in &pbx.numbers {
            if let Some(other) = claimed.insert(number, &pbx.hostport) {
                bail!(
                    "[[pbx]]: {number} is bridged to both {other} and {}",
                    pbx.hostport
                );
            }
        }
    }
    Ok(pbxs)
}

/// One `[[pbx]]` table (`key` names it in errors).
fn file_pbx(table: &FilePbx, key: &str) -> Result<PbxTarget> {
    let pbx = PbxTarget::parse(&table.target, &format!("{key}.target"))?;
    Ok(PbxTarget {
        username: table.username.clone(),
        password: table
            .password_file
            .as_deref()
            .map(|p| read_password(p, &format!("{key}.password_file")))
            .transpose()?,
        asserted_identity: table.asserted_identity.unwrap_or(false),
        challenge: table.challenge.unwrap_or(false),
        register: table.register.unwrap_or(false),
        ring_timeout: table
            .ring_timeout_secs
            .map_or(pbx.ring_timeout, |s| Duration::from_secs(s.max(1))),
        rtp_timeout: match table.rtp_timeout_secs {
            None => pbx.rtp_timeout,
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
        },
        codecs: match &table.codecs {
            Some(names) => parse_pbx_codecs(names)?,
            None => pbx.codecs.clone(),
        },
        security: match &table.srtp {
            Some(v) => parse_pbx_srtp(v, &format!("{key}.srtp"))?,
            None => pbx.security,
        },
        symmetric_rtp: table.symmetric_rtp.unwrap_or(true),
        numbers: table.numbers.clone().unwrap_or_default(),
        ringback: match &table.ringback {
            Some(v) => parse_ringback(v, &format!("{key}.ringback"))?,
            None => None,
        },
        sources: table
            .sources
            .iter()
            .flatten()
            .map(|ip| ip.to_canonical())
            .collect(),
        ..pbx
    })
}

fn parse_ringback(value: &str, key: &str) -> Result<Option<watrunk_media::ringback::RingTone>> {
    use watrunk_media::ringback::RingTone;
    match value {
        "off" | "none" => Ok(None),
        "eu" => Ok(Some(RingTone::Europe)),
        "us" => Ok(Some(RingTone::NorthAmerica)),
        other => bail!("{key}: {other:?} is none of eu, us, off"),
    }
}

fn parse_pbx_srtp(value: &str, key: &str) -> Result<watrunk_sdp::Security> {
    match value {
        "none" | "rtp" => Ok(watrunk_sdp::Security::Plain),
        "sdes" => Ok(watrunk_sdp::Security::Sdes),
        other => bail!("{key}: {other:?} is neither none nor sdes (DTLS-SRTP is for Meta's leg)"),
    }
}

/// `pbx.codecs`: names in the order to offer them; telephone-event is always added.
fn parse_pbx_codecs(names: &[String]) -> Result<Vec<watrunk_sdp::Codec>> {
    let mut codecs = Vec::new();
    for name in names {
        let codec = match name.to_ascii_lowercase().as_str() {
            "opus" => watrunk_sdp::Codec::Opus,
            "pcmu" => watrunk_sdp::Codec::Pcmu,
            "pcma" => watrunk_sdp::Codec::Pcma,
            "g722" => watrunk_sdp::Codec::G722,
            other => bail!("pbx.codecs: {other:?} is not one of opus, pcmu, pcma, g722"),
        };
        if !codecs.contains(&codec) {
            codecs.push(codec);
        }
    }
    if codecs.is_empty() {
        bail!("pbx.codecs: name at least one of opus, pcmu, pcma, g722");
    }
    codecs.push(watrunk_sdp::Codec::TelephoneEvent);
    Ok(codecs)
}

fn read_password(path: &std::path::Path, key: &str) -> Result<String> {
    let password = std::fs::read_to_string(path)
        .with_context(|| format!("{key}: cannot read {}", path.display()))?
        .trim()
        .to_string();
    if password.is_empty() {
        bail!("{key}: {} is empty", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{key}: {} can be read by others (mode {:o}): chmod 600 it",
                    path.display(),
                    mode & 0o777
                );
            }
        }
    }
    Ok(password)
}

fn resolve_calls(
    args: &CallArgs,
    file: &FileCalls,
    challenge: bool,
    password: Option<&str>,
) -> Result<CallsConfig> {
    let srtp = parse_srtp(
        args.srtp.as_deref().or(file.media.srtp.as_deref()),
        "--srtp (media.srtp)",
    )?;
    let sink = args.sink.or(file.media.sink);
    let sink_audio = parse_sink_codec(
        args.sink_codec
            .as_deref()
            .or(file.media.sink_codec.as_deref()),
        "--sink-codec (media.sink_codec)",
    )?;
    let media = args.media_ip.or(file.media.ip).map(|ip| MediaSettings {
        ip,
        ip6: args.media_ip6.or(file.media.ip6),
        port: args.media_port.or(file.media.port).unwrap_or(0),
        public_ip: args.public_ip.or(file.media.public_ip),
        rtp_timeout: match args
            .rtp_timeout_secs
            .or(file.media.rtp_timeout_secs)
            .unwrap_or(DEFAULT_RTP_TIMEOUT_SECS)
        {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        },
    });
    if (!args.numbers.is_empty() || !file.numbers.is_empty()) && media.is_none() {
        bail!("calls need a media address: pass --media-ip IP (config key media.ip)");
    }
    let pbxs = resolve_pbxs(args, &file.pbx)?;
    // Bridged calls' audio goes to the PBX's RTP address, which its answer names.
    let bridged = !pbxs.is_empty();
    let need_sink = |number: &str, sink: Option<SocketAddr>| {
        if bridged {
            return Ok(sink.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))));
        }
        sink.with_context(|| {
            format!("no sink for {number}: pass --sink HOST:PORT (config key media.sink) where its calls' audio goes")
        })
    };
    let mut numbers = BTreeMap::new();
    for number in &args.numbers {
        check_number(number, "--number")?;
        // The flag's numbers share --sip-password-file and --challenge.
        if challenge && password.is_none() {
            bail!("--challenge for {number} needs its SIP password: pass --sip-password-file FILE (config key auth.password_file or number.password_file)");
        }
        numbers.insert(
            number.clone(),
            NumberConfig {
                number: number.clone(),
                password: password.map(str::to_string),
                challenge,
                sink: need_sink(number, sink)?,
                sink_audio,
                srtp,
            },
        );
    }
    for (i, n) in file.numbers.iter().enumerate() {
        let key = format!("number[{i}] ({})", n.number);
        check_number(&n.number, &format!("number[{i}].number"))?;
        let password = match (&n.password_file, &n.password) {
            (Some(_), Some(_)) => bail!("{key}: set password_file or password, not both"),
            (Some(p), None) => Some(read_password(p, &format!("{key}.password_file"))?),
            (None, Some(p)) => Some(p.clone()),
            (None, None) => password.map(str::to_string),
        };
        let challenge = n.challenge.unwrap_or(challenge);
        if challenge && password.is_none() {
            bail!("{key}: challenge = true needs a password: set number[{i}].password_file");
        }
        numbers.insert(
            n.number.clone(),
            NumberConfig {
                number: n.number.clone(),
                password,
                challenge,
                sink: need_sink(&n.number, n.sink.or(sink))?,
                sink_audio: match &n.sink_codec {
                    Some(v) => parse_sink_codec(Some(v), &format!("{key}.sink_codec"))?,
                    None => sink_audio,
                },
                srtp: match &n.srtp {
                    Some(v) => parse_srtp(Some(v), &format!("{key}.srtp"))?,
                    None => srtp,
                },
            },
        );
    }
    let domain = args
        .meta_domain
        .clone()
        .or(file.meta.domain.clone())
        .unwrap_or_else(|| "wa.meta.vc".into());
    for pbx in &pbxs {
        if let Some(unknown) = pbx.numbers.iter().find(|n| !numbers.contains_key(*n)) {
            bail!(
                "[[pbx]] {}: {unknown} is not one of our numbers (--number, [[number]])",
                pbx.hostport
            );
        }
    }
    Ok(CallsConfig {
        numbers,
        media,
        events: args.events.clone().or(file.events.clone()),
        cdr: args.cdr.clone().or(file.cdr.clone()),
        webhooks: webhooks(args, &file.webhooks)?,
        meta_server: args
            .meta_server
            .clone()
            .or(file.meta.server.clone())
            .unwrap_or_else(|| format!("{domain}:5061")),
        meta_domain: domain,
        tls_ca: args.tls_ca.clone().or(file.meta.tls_ca.clone()),
        auto_answer: !args.no_auto_answer,
        pbxs,
        api_token: args
            .api_token_file
            .as_deref()
            .map(|p| read_password(p, "--api-token-file"))
            .transpose()?,
        api: match args
            .api
            .as_deref()
            .or(file.api.as_deref())
            .unwrap_or(DEFAULT_API)
        {
            "off" => None,
            a => Some(a.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--api (config key api): {a:?} is not an address like 127.0.0.1:8061, nor off"
                )
            })?),
        },
    })
    .and_then(|calls| match (calls.api, &calls.api_token) {
        (Some(addr), None) if !addr.ip().is_loopback() => bail!(
            "--api {addr} is reachable beyond this host: give it a token with --api-token-file FILE (or bind it to 127.0.0.1)"
        ),
        _ => Ok(calls),
    })
}

/// The webhooks: the flags' URLs, else the file's; the flag's key file, else the file's.
fn webhooks(args: &CallArgs, file: &FileWebhooks) -> Result<crate::webhooks::WebhookConfig> {
    let urls = if args.webhooks.is_empty() {
        file.urls.clone()
    } else {
        args.webhooks.clone()
    };
    for url in &urls {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!(
                "--webhook (config key webhooks.urls): {url:?} is not an http:// or https:// URL"
            );
        }
    }
    let secret = args
        .webhook_secret_file
        .as_ref()
        .or(file.secret_file.as_ref())
        .map(|p| read_password(p, "--webhook-secret-file (webhooks.secret_file)"))
        .transpose()?;
    if !urls.is_empty() && secret.is_none() {
        tracing::warn!("webhooks are not signed: give them a key with --webhook-secret-file");
    }
    Ok(crate::webhooks::WebhookConfig {
        urls,
        secret: secret.map(String::into_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_names_only_known_keys() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/watrunk.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let file: FileConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(file.numbers.len(), 1);
        assert_eq!(file.numbers[0].number, "+15550001111");
        assert!(file.media.sink.is_some());
    }

    #[test]
    fn the_packaged_config_loads_and_takes_no_calls_until_a_number_is_set() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/debian/watrunk.toml");
        let cfg = ServeConfig::resolve(ServeArgs {
            config: Some(path.into()),
            ..ServeArgs::default()
        })
        .unwrap_or_else(|e| panic!("{path}: {e:#}"));
        assert_eq!(cfg.hostname, "sip.example.com");
        assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/watrunk"));
        assert_eq!(cfg.tls, Some("[::]:5061".parse().unwrap()));
        assert!(cfg.calls.numbers.is_empty() && cfg.calls.media.is_none());
        assert_eq!(cfg.drain_timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_number_that_is_not_e164_is_refused_naming_the_flag() {
        let args = ServeArgs {
            hostname: Some("sip.example.com".into()),
            calls: CallArgs {
                numbers: vec!["15550001111".into()],
                media_ip: Some("127.0.0.1".parse().unwrap()),
                sink: Some("127.0.0.1:4000".parse().unwrap()),
                ..CallArgs::default()
            },
            ..ServeArgs::default()
        };
        let e = ServeConfig::resolve(args).unwrap_err().to_string();
        assert!(e.contains("--number") && e.contains("E.164"), "{e}");
    }

    #[test]
    fn calls_without_a_sink_are_refused_naming_the_key() {
        let args = ServeArgs {
            hostname: Some("sip.example.com".into()),
            calls: CallArgs {
                numbers: vec!["+15550001111".into()],
                media_ip: Some("127.0.0.1".parse().unwrap()),
                ..CallArgs::default()
            },
            ..ServeArgs::default()
        };
        let e = ServeConfig::resolve(args).unwrap_err().to_string();
        assert!(e.contains("media.sink"), "{e}");
    }

    #[test]
    fn the_sink_codec_comes_from_the_flag_or_the_number_and_a_bad_one_is_named() {
        let args = CallArgs {
            numbers: vec!["+15550001111".into()],
            media_ip: Some("127.0.0.1".parse().unwrap()),
            sink: Some("127.0.0.1:4000".parse().unwrap()),
            sink_codec: Some("PCMU".into()),
            ..CallArgs::default()
        };
        let file = file_calls(
            "[[number]]\nnumber = \"+15550002222\"\nsink_codec = \"pcma\"\n\
             [[number]]\nnumber = \"+15550003333\"\n",
        );
        let calls = resolve_calls(&args, &file, false, None).unwrap();
        let audio = |n: &str| calls.numbers[n].sink_audio;
        assert_eq!(audio("+15550001111"), SinkAudio::G711(Law::Mu));
        assert_eq!(audio("+15550002222"), SinkAudio::G711(Law::A));
        assert_eq!(
            audio("+15550003333"),
            SinkAudio::G711(Law::Mu),
            "the flag is the default"
        );
        let default = resolve_calls(
            &CallArgs {
                sink_codec: None,
                ..args.clone()
            },
            &file_calls(""),
            false,
            None,
        )
        .unwrap();
        assert_eq!(default.numbers["+15550001111"].sink_audio, SinkAudio::Opus);
        let bad = CallArgs {
            sink_codec: Some("g729".into()),
            ..args
        };
        let e = resolve_calls(&bad, &file_calls(""), false, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--sink-codec") && e.contains("g729"), "{e}");
    }

    #[test]
    fn a_pbx_target_is_a_sip_uri_and_udp_needs_a_udp_listener() {
        let pbx = PbxTarget::parse("sip:pbx.example.com;transport=UDP", "--pbx").unwrap();
        assert_eq!(
            (pbx.host.as_str(), pbx.port, pbx.hostport.as_str()),
            ("pbx.example.com", 5060, "pbx.example.com:5060")
        );
        assert_eq!(pbx.transport, watrunk_sip::Transport::Udp);
        assert_eq!(pbx.codecs[0], watrunk_sdp::Codec::Opus, "passthrough first");
        let v6 = PbxTarget::parse("sip:[2001:db8::5]:5070", "--pbx").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::5", 5070));
        let tls = PbxTarget::parse("sip:pbx.example.com;transport=tls", "--pbx").unwrap();
        assert_eq!(
            (tls.transport, tls.port),
            (watrunk_sip::Transport::Tls, 5061)
        );
        let e = PbxTarget::parse("sip:pbx.example.com;transport=sctp", "--pbx")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--pbx") && e.contains("sctp"), "{e}");
        let e = PbxTarget::parse("pbx.example.com", "--pbx")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a SIP URI"), "{e}");
        let args = |udp: Option<SocketAddr>| ServeArgs {
            hostname: Some("sip.example.com".into()),
            udp,
            calls: CallArgs {
                numbers: vec!["+15550001111".into()],
                media_ip: Some("127.0.0.1".parse().unwrap()),
                pbx: Some("sip:127.0.0.1:5070".into()),
                ..CallArgs::default()
            },
            ..ServeArgs::default()
        };
        let e = ServeConfig::resolve(args(None)).unwrap_err().to_string();
        assert!(e.contains("--udp"), "{e}");
        let cfg = ServeConfig::resolve(args(Some("127.0.0.1:5060".parse().unwrap())))
            .expect("a bridged number needs no sink");
        assert_eq!(cfg.calls.pbxs.len(), 1);
    }

    #[test]
    fn the_meta_domain_flag_wins_over_the_file() {
        let mut file = file_calls("");
        file.meta.domain = Some("file.example".into());
        let flagged = CallArgs {
            meta_domain: Some("flag.example".into()),
            ..CallArgs::default()
        };
        let calls = resolve_calls(&flagged, &file, false, None).unwrap();
        assert_eq!(calls.meta_domain, "flag.example");
        assert_eq!(calls.meta_server, "flag.example:5061");
        let calls = resolve_calls(&CallArgs::default(), &file, false, None).unwrap();
        assert_eq!(calls.meta_domain, "file.example");
    }

    #[test]
    fn an_api_beyond_loopback_needs_a_token() {
        let args = CallArgs {
            numbers: vec!["+15550001111".into()],
            media_ip: Some("127.0.0.1".parse().unwrap()),
            sink: Some("127.0.0.1:4000".parse().unwrap()),
            api: Some("0.0.0.0:8061".into()),
            ..CallArgs::default()
        };
        let e = resolve_calls(&args, &file_calls(""), false, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--api-token-file"), "{e}");
        let local = CallArgs {
            api: Some("127.0.0.1:8061".into()),
            ..args
        };
        assert!(resolve_calls(&local, &file_calls(""), false, None).is_ok());
    }

    #[test]
    fn a_pbx_table_in_the_file_is_the_flags_default() {
        let args = CallArgs {
            numbers: vec!["+15550001111".into()],
            media_ip: Some("127.0.0.1".parse().unwrap()),
            ..CallArgs::default()
        };
        let calls = file_calls(
            "[[pbx]]\ntarget = \"sip:pbx.example.com:5070\"\nusername = \"trunk\"\n\
             ring_timeout_secs = 20\nrtp_timeout_secs = 0\ncodecs = [\"pcma\", \"opus\"]\n",
        );
        let pbx = resolve_calls(&args, &calls, false, None)
            .unwrap()
            .pbxs
            .pop()
            .expect("the file's PBX");
        assert_eq!(pbx.hostport, "pbx.example.com:5070");
        assert_eq!(pbx.username.as_deref(), Some("trunk"));
        assert_eq!(pbx.ring_timeout, Duration::from_secs(20));
        assert_eq!(pbx.rtp_timeout, None, "0: never");
        assert_eq!(
            pbx.codecs,
            [
                watrunk_sdp::Codec::Pcma,
                watrunk_sdp::Codec::Opus,
                watrunk_sdp::Codec::TelephoneEvent
            ]
        );
        let two = file_calls(
            "[[pbx]]\ntarget = \"sip:pbx-a.example.com\"\n\
             [[pbx]]\ntarget = \"sip:pbx-b.example.com;transport=tcp\"\nnumbers = [\"+15550001111\"]\n\
             sources = [\"10.0.0.7\", \"::ffff:10.0.0.8\"]\nsrtp = \"sdes\"\nsymmetric_rtp = false\n",
        );
        let pbxs = resolve_calls(&args, &two, false, None).unwrap().pbxs;
        assert_eq!(pbxs.len(), 2);
        assert!(
            pbxs[0].numbers.is_empty(),
            "the first takes every other number"
        );
        assert_eq!(pbxs[1].numbers, ["+15550001111"]);
        assert_eq!(
            pbxs[1].sources,
            [
                "10.0.0.7".parse::<IpAddr>().unwrap(),
                "10.0.0.8".parse().unwrap()
            ],
            "the allow-list, IPv4-mapped addresses as IPv4"
        );
        assert_eq!(pbxs[1].security, watrunk_sdp::Security::Sdes);
        assert!(!pbxs[1].symmetric_rtp && pbxs[0].symmetric_rtp);
        let flags = CallArgs {
            pbx: Some("sip:10.0.0.5".into()),
            pbx_ring_timeout_secs: Some(5),
            ..args.clone()
        };
        let pbx = resolve_calls(&flags, &calls, false, None)
            .unwrap()
            .pbxs
            .pop()
            .unwrap();
        assert_eq!(
            (pbx.hostport.as_str(), pbx.ring_timeout),
            ("10.0.0.5:5060", Duration::from_secs(5)),
            "flags win"
        );
        for (text, words) in [
            (
                "[[pbx]]\ntarget = \"sip:a\"\n[[pbx]]\ntarget = \"sip:b\"\n",
                ["a:5060 and b:5060 both take every number", "numbers"],
            ),
            (
                "[[pbx]]\ntarget = \"sip:a\"\nnumbers = [\"+15550009999\"]\n",
                ["+15550009999 is not one of our numbers", "a:5060"],
            ),
            (
                "[[pbx]]\ntarget = \"sip:a\"\ncodecs = [\"g729\"]\n",
                ["pbx.codecs", "g729"],
            ),
            (
                "[[pbx]]\ntarget = \"sip:a\"\nsrtp = \"sdes\"\nringback = \"eu\"\n",
                ["ringback is plain RTP", "sdes"],
            ),
            (
                "[[pbx]]\ntarget = \"sip:a\"\nringback = \"uk\"\n",
                ["pbx[0].ringback", "\"uk\""],
            ),
        ] {
            let e = resolve_calls(&args, &file_calls(text), false, None)
                .unwrap_err()
                .to_string();
            assert!(words.iter().all(|w| e.contains(w)), "{e}");
        }
    }

    /// The call sections of a config file's text.
    fn file_calls(text: &str) -> FileCalls {
        let file: FileConfig = toml::from_str(text).unwrap();
        FileCalls {
            api: None,
            media: file.media,
            meta: file.meta,
            events: None,
            cdr: file.cdr,
            webhooks: file.webhooks,
            numbers: file.numbers,
            pbx: file.pbx,
        }
    }
}
