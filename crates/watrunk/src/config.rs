//! `watrunk serve` configuration: command-line flags over an optional TOML file over defaults. Every
//! problem is reported at start-up naming the flag or key to fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;

#[derive(Args, Debug, Default)]
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
    /// Where a generated self-signed certificate is kept.
    #[arg(long, env = "WATRUNK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log every SIP message received and sent.
    #[arg(long)]
    pub sip_trace: bool,
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
    /// Largest SIP message accepted, in octets.
    #[arg(long)]
    pub max_message_size: Option<usize>,
    /// Close a stream connection idle for this many seconds.
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    hostname: Option<String>,
    state_dir: Option<PathBuf>,
    sip_trace: Option<bool>,
    #[serde(default)]
    listen: FileListen,
    #[serde(default)]
    tls: FileTls,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    limits: FileLimits,
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
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_message_size: Option<usize>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestOffer {
    Md5,
    Sha256,
    Both,
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub password: String,
    pub username: Option<String>,
    pub realm: String,
    pub status: u16,
    pub offer: DigestOffer,
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
    pub auth: Option<AuthConfig>,
    pub max_message: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ServeConfig {
    pub fn resolve(args: ServeArgs) -> Result<ServeConfig> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?
            }
            None => FileConfig::default(),
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
        let auth = if challenge {
            let Some(pw_file) = args.sip_password_file.or(file.auth.password_file) else {
                bail!("--challenge needs a password: pass --sip-password-file FILE (config key auth.password_file)");
            };
            let password = std::fs::read_to_string(&pw_file)
                .with_context(|| format!("auth.password_file: cannot read {}", pw_file.display()))?
                .trim()
                .to_string();
            if password.is_empty() {
                bail!("auth.password_file: {} is empty", pw_file.display());
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
            Some(AuthConfig {
                password,
                username: args.sip_username.or(file.auth.username),
                realm: hostname.clone(),
                status,
                offer,
            })
        } else {
            None
        };
        let tls = args
            .tls
            .or(file.listen.tls)
            .or_else(|| Some("[::]:5061".parse().expect("valid default")));
        Ok(ServeConfig {
            tls,
            tcp: args.tcp.or(file.listen.tcp),
            udp: args.udp.or(file.listen.udp),
            cert,
            key,
            state_dir: args
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(".watrunk")),
            sip_trace: args.sip_trace || file.sip_trace.unwrap_or(false),
            auth,
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
            hostname,
        })
    }
}
