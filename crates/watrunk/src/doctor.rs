//! `watrunk doctor`: checks a deployment the way Meta will meet it, before its INVITEs silently
//! fail. It reads serve's flags and config file through the same `ServeConfig::resolve`, then
//! checks the certificate (name, chain, self-signed, expiry), the TLS port (answers without ALPN,
//! asks for no client certificate), DNS, the media port, each number's password file and sink,
//! and the clock. One line per check (`PASS`/`WARN`/`FAIL name: detail`), a fix under each
//! failure; exit 1 on any failure.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use clap::Args;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::{ServeArgs, ServeConfig};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Check the TLS port of a running watrunk at this HOST:PORT (default: the --tls listen
    /// address, loopback when it is a wildcard).
    #[arg(long, value_name = "HOST:PORT")]
    connect: Option<String>,
    /// Also trust this CA (PEM) when checking the certificate chain: for testing and private
    /// CAs only, since Meta trusts public CAs alone.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// Certificates expiring sooner than this are warned about.
const EXPIRY_WARN_DAYS: i64 = 14;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pass,
    Warn,
    Fail,
}

/// The checks made so far, printed as they are made.
#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, status: Status, name: &str, detail: &str, fix: Option<&str>) {
        let word = match status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{word} {name}: {detail}");
        if let (Some(fix), true) = (fix, status != Status::Pass) {
            let _ = writeln!(out, "     fix: {fix}");
        }
        self.failed |= status == Status::Fail;
    }
    fn pass(&mut self, name: &str, detail: &str) {
        self.line(Status::Pass, name, detail, None);
    }
    fn warn(&mut self, name: &str, detail: &str, fix: &str) {
        self.line(Status::Warn, name, detail, Some(fix));
    }
    fn fail(&mut self, name: &str, detail: &str, fix: &str) {
        self.line(Status::Fail, name, detail, Some(fix));
    }
}

pub fn run(args: DoctorArgs) -> ExitCode {
    let mut report = Report::default();
    check(&args, &mut report);
    if report.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn check(args: &DoctorArgs, report: &mut Report) {
    // Password files first: serve refuses to start on an unreadable one, and so does the
    // resolve below, so each is named here on its own.
    password_files(&args.serve, report);
    let cfg = match ServeConfig::resolve(args.serve.clone()) {
        Ok(cfg) => cfg,
        Err(e) => {
            report.fail(
                "configuration",
                &format!("watrunk serve would refuse it: {e:#}"),
                "fix what the message names; the checks that need the configuration were not made",
            );
            return;
        }
    };
    report.pass(
        "configuration",
        &format!("read as watrunk serve reads it (hostname {})", cfg.hostname),
    );
    let chain = certificate(&cfg, args.ca.as_deref(), report);
    let running = tls_port(&cfg, args.connect.as_deref(), chain.as_deref(), report);
    dns(&cfg, report);
    media(&cfg, running, report);
    sinks(&cfg, report);
    clock(chain.as_deref(), report);
}

// ---- password files -------------------------------------------------------------------------

/// Each number's password file (and the shared one), as serve would pick it, read here.
fn password_files(args: &ServeArgs, report: &mut Report) {
    let file: toml::Value = match &args.config {
        Some(path) => match std::fs::read_to_string(path)
            .ok()
            .and_then(|t| toml::from_str(&t).ok())
        {
            Some(v) => v,
            // resolve() names what is wrong with the file.
            None => return,
        },
        None => toml::Value::Table(Default::default()),
    };
    let shared: Option<(String, PathBuf)> = match &args.sip_password_file {
        Some(p) => Some(("--sip-password-file".into(), p.clone())),
        None => file
            .get("auth")
            .and_then(|a| a.get("password_file"))
            .and_then(|p| p.as_str())
            .map(|p| ("auth.password_file".into(), PathBuf::from(p))),
    };
    let mut wanted: Vec<(String, Option<(String, PathBuf)>)> = args
        .calls
        .numbers
        .iter()
        .map(|n| (n.clone(), shared.clone()))
        .collect();
    let tables = file
        .get("number")
        .and_then(|n| n.as_array())
        .cloned()
        .unwrap_or_default();
    for (i, table) in tables.iter().enumerate() {
        let number = table
            .get("number")
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        if table.get("password").is_some() {
            report.warn(
                &format!("password {number}"),
                &format!("number[{i}] holds its password in the config file itself"),
                "move it to a file of its own (mode 600) and name it in number.password_file",
            );
            continue;
        }
        let own = table
            .get("password_file")
            .and_then(|p| p.as_str())
            .map(|p| (format!("number[{i}].password_file"), PathBuf::from(p)));
        wanted.push((number, own.or_else(|| shared.clone())));
    }
    if wanted.is_empty() {
        if let Some((key, path)) = &shared {
            wanted.push(("(any number)".into(), Some((key.clone(), path.clone()))));
        }
    }
    for (number, source) in wanted {
        let name = format!("password {number}");
        let Some((key, path)) = source else {
            report.warn(
                &name,
                "no SIP password: its INVITEs are not challenged and the calls it places cannot answer Meta's 407",
                "watrunk whatsapp password --phone-number-id ID --out FILE, then --sip-password-file FILE (or number.password_file)",
            );
            continue;
        };
        password_file(&name, &key, &path, report);
    }
}

fn password_file(name: &str, key: &str, path: &Path, report: &mut Report) {
    let fix = format!(
        "write the number's SIP password to {} (watrunk whatsapp password --phone-number-id ID --out {}), readable by the user watrunk runs as, or correct {key}",
        path.display(),
        path.display()
    );
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            report.fail(
                name,
                &format!("{key} {}: cannot read it: {e}", path.display()),
                &fix,
            );
            return;
        }
    };
    if text.trim().is_empty() {
        report.fail(name, &format!("{key} {} is empty", path.display()), &fix);
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    if mode & 0o077 != 0 {
        report.warn(
            name,
            &format!("{} can be read by others (mode {mode:o})", path.display()),
            &format!("chmod 600 {}", path.display()),
        );
    } else {
        report.pass(
            name,
            &format!("{} readable (mode {mode:o})", path.display()),
        );
    }
}

// ---- certificate ----------------------------------------------------------------------------

/// The configured chain, checked: it loads with its key, covers the hostname, is not
/// self-signed, leads to a trusted root, has not expired.
fn certificate(
    cfg: &ServeConfig,
    ca: Option<&Path>,
    report: &mut Report,
) -> Option<Vec<CertificateDer<'static>>> {
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        report.fail(
            "certificate",
            "no --cert/--key (tls.cert/tls.key): serve makes a self-signed certificate, which Meta rejects",
            &format!("get a certificate from a public CA for {h} (e.g. certbot certonly --standalone -d {h}) and pass --cert fullchain.pem --key privkey.pem", h = cfg.hostname),
        );
        return None;
    };
    let source = watrunk_sip::io::tls::CertSource {
        cert: Some(cert.clone()),
        key: Some(key.clone()),
        hostname: cfg.hostname.clone(),
        state_dir: cfg.state_dir.clone(),
    };
    if let Err(e) = watrunk_sip::io::tls::server_config(&source) {
        report.fail(
            "certificate",
            &format!("serve cannot load it: {e}"),
            "give the PEM chain (leaf first) as --cert and the private key that belongs to it as --key",
        );
        return None;
    }
    let pem = std::fs::read(cert).unwrap_or_default();
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(|c| c.ok())
        .collect();
    let Some(Ok((_, leaf))) = chain.first().map(|c| X509Certificate::from_der(c)) else {
        report.fail(
            "certificate",
            &format!("{}: the first certificate cannot be parsed", cert.display()),
            "give the PEM chain with the server's own certificate first",
        );
        return None;
    };
    report.pass(
        "certificate",
        &format!(
            "{}: {} certificate(s), subject {}",
            cert.display(),
            chain.len(),
            leaf.subject()
        ),
    );
    check_leaf(&cfg.hostname, &chain, &leaf, ca, report);
    Some(chain)
}

fn check_leaf(
    hostname: &str,
    chain: &[CertificateDer<'static>],
    leaf: &X509Certificate<'_>,
    ca: Option<&Path>,
    report: &mut Report,
) {
    let names: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.iter().any(|n| name_matches(n, hostname)) {
        report.pass(
            "certificate name",
            &format!("its subjectAltName covers {hostname}"),
        );
    } else {
        let has = if names.is_empty() {
            "no DNS names in subjectAltName".to_string()
        } else {
            format!("subjectAltName names {}", names.join(", "))
        };
        report.fail(
            "certificate name",
            &format!("{has}, not {hostname}: Meta's TLS check fails and no INVITE arrives"),
            &format!("get a certificate whose subjectAltName covers {hostname}, or set --hostname (and the number's settings) to a name it covers"),
        );
    }
    let self_signed = chain.len() == 1 && leaf.subject().as_raw() == leaf.issuer().as_raw();
    if self_signed {
        report.fail(
            "certificate issuer",
            "self-signed: Meta rejects it",
            "use a certificate from a public CA (e.g. Let's Encrypt: certbot certonly --standalone -d HOST)",
        );
    } else {
        report.pass(
            "certificate issuer",
            &format!("issued by {}", leaf.issuer()),
        );
        chain_check(hostname, chain, leaf, ca, report);
    }
    let now = unix_now();
    let not_after = leaf.validity().not_after;
    let days = (not_after.timestamp() - now) / 86_400;
    if not_after.timestamp() <= now {
        report.fail(
            "certificate expiry",
            &format!("expired on {not_after} ({} days ago)", -days),
            "renew it (certbot renew) and reload watrunk (kill -HUP its pid) or restart it",
        );
    } else if days < EXPIRY_WARN_DAYS {
        report.warn(
            "certificate expiry",
            &format!("expires on {not_after}, in {days} days"),
            "renew it now (certbot renew) and reload watrunk (kill -HUP its pid)",
        );
    } else {
        report.pass(
            "certificate expiry",
            &format!("valid until {not_after} ({days} days)"),
        );
    }
}

/// The chain against the public roots (and `--ca`), judged at a time inside the leaf's validity
/// so that expiry is reported by its own check.
fn chain_check(
    hostname: &str,
    chain: &[CertificateDer<'static>],
    leaf: &X509Certificate<'_>,
    ca: Option<&Path>,
    report: &mut Report,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut trusted = "the public web PKI roots".to_string();
    if let Some(path) = ca {
        let pem = std::fs::read(path).unwrap_or_default();
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .filter_map(|c| c.ok())
            .collect();
        if certs.is_empty() {
            report.fail(
                "certificate chain",
                &format!("--ca {}: no PEM certificate in it", path.display()),
                "give --ca the CA certificate (PEM) that issued the chain",
            );
            return;
        }
        for c in certs {
            let _ = roots.add(c);
        }
        trusted.push_str(&format!(" and --ca {}", path.display()));
    }
    let verifier = match rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        watrunk_sip::io::tls::provider(),
    )
    .build()
    {
        Ok(v) => v,
        Err(e) => {
            report.fail(
                "certificate chain",
                &format!("cannot set up verification: {e}"),
                "check --ca",
            );
            return;
        }
    };
    let Ok(name) = ServerName::try_from(hostname.to_string()) else {
        report.fail(
            "certificate chain",
            &format!("{hostname:?} is not a DNS name"),
            "set --hostname to the DNS name Meta connects to",
        );
        return;
    };
    let validity = leaf.validity();
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    // A malformed validity (notAfter before notBefore) is judged at notBefore: webpki refuses it.
    let at = unix_now().min(until).max(from);
    let at = UnixTime::since_unix_epoch(Duration::from_secs(at.max(0) as u64));
    let outcome = verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], at);
    match outcome {
        Ok(_)
        | Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => report.pass(
            "certificate chain",
            &format!("leads to {trusted}"),
        ),
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => report.fail(
            "certificate chain",
            &format!("does not lead to a CA Meta trusts (checked against {trusted})"),
            "put the intermediate certificates after the server's own in the --cert file (certbot's fullchain.pem); a private CA's certificate only works with test peers",
        ),
        Err(e) => report.fail(
            "certificate chain",
            &format!("refused: {e}"),
            "give a chain from a public CA, the server's certificate first, then the intermediates",
        ),
    }
}

/// A subjectAltName DNS name matches `host`: equal, or a `*.` wildcard for exactly one label.
fn name_matches(name: &str, host: &str) -> bool {
    let (name, host) = (name.to_ascii_lowercase(), host.to_ascii_lowercase());
    let host = host.trim_end_matches('.');
    match name.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => name.trim_end_matches('.') == host,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ---- TLS port -------------------------------------------------------------------------------

/// Accepts any server certificate (the checks above judge it) and keeps the chain presented.
#[derive(Debug)]
struct Recorder {
    presented: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.presented.lock().unwrap_or_else(|e| e.into_inner()) = chain;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Offers no client certificate, and notes whether the server asked for one.
#[derive(Debug, Default)]
struct AskedForCert(Mutex<bool>);

impl rustls::client::ResolvesClientCert for AskedForCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        None
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Connects to the TLS port as Meta does (SNI, no ALPN, no client certificate): whether a server
/// is running there.
fn tls_port(
    cfg: &ServeConfig,
    connect: Option<&str>,
    configured: Option<&[CertificateDer<'static>]>,
    report: &mut Report,
) -> bool {
    let target = match connect {
        Some(text) => match text.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => addr,
            _ => {
                report.fail(
                    "tls port",
                    &format!("--connect {text:?} is not a HOST:PORT that resolves"),
                    "give --connect the address of the running watrunk, e.g. 127.0.0.1:5061",
                );
                return false;
            }
        },
        None => {
            let listen = cfg
                .tls
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 5061)));
            let ip = match listen.ip() {
                ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
                ip => ip,
            };
            SocketAddr::new(ip, listen.port())
        }
    };
    let closed_fix = format!(
        "start watrunk serve (its --tls listener), and open TCP {} in the firewall for Meta",
        target.port()
    );
    let tcp = match TcpStream::connect_timeout(&target, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => {
            report.fail(
                "tls port",
                &format!("port closed: nothing answers on {target} ({e})"),
                &closed_fix,
            );
            return false;
        }
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(5)));
    let provider = watrunk_sip::io::tls::provider();
    let recorder = Arc::new(Recorder {
        presented: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let asked = Arc::new(AskedForCert::default());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(recorder.clone())
                .with_client_cert_resolver(asked.clone())
        });
    let (Ok(config), Ok(name)) = (config, ServerName::try_from(cfg.hostname.clone())) else {
        report.fail(
            "tls port",
            "cannot set up a TLS client for the hostname",
            "set --hostname to a DNS name",
        );
        return true;
    };
    // No ALPN: Meta sends none.
    let Ok(conn) = rustls::ClientConnection::new(Arc::new(config), name) else {
        report.fail("tls port", "cannot start a TLS client", "report this");
        return true;
    };
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut handshake = Ok(());
    while stream.conn.is_handshaking() {
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            handshake = Err(e);
            break;
        }
    }
    if let Err(e) = handshake {
        report.fail(
            "tls port",
            &format!("{target} answers TCP but the TLS handshake fails: {e}"),
            "point --tls (or --connect) at watrunk's TLS listener: a plain SIP port (5060) or another service fails Meta's check too",
        );
        return true;
    }
    let version = stream
        .conn
        .protocol_version()
        .map_or("TLS".into(), |v| format!("{v:?}"));
    match stream.conn.alpn_protocol() {
        None => report.pass(
            "tls port",
            &format!("{target} answers a handshake like Meta's ({version}, no ALPN)"),
        ),
        Some(p) => report.fail(
            "tls port",
            &format!(
                "{target} chose ALPN {:?} though none was offered",
                String::from_utf8_lossy(p)
            ),
            "turn ALPN off on whatever terminates TLS there",
        ),
    }
    if *asked.0.lock().unwrap_or_else(|e| e.into_inner()) {
        report.fail(
            "client certificate",
            &format!("{target} asks for a client certificate (CertificateRequest): Meta does not do mutual TLS and its INVITEs never arrive"),
            "turn client-certificate authentication off on whatever terminates TLS (an SBC or proxy); watrunk serve never asks",
        );
    } else {
        report.pass(
            "client certificate",
            "no CertificateRequest (Meta does not do mutual TLS)",
        );
    }
    let presented = recorder
        .presented
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let (Some(configured), Some(served)) = (configured, presented.first()) {
        if configured.first() != Some(served) {
            report.warn(
                "served certificate",
                &format!("{target} presents another certificate than the --cert file"),
                "reload watrunk after renewing (kill -HUP its pid), or point --connect at the instance this configuration is for",
            );
        } else {
            report.pass(
                "served certificate",
                &format!("{target} presents the --cert file's certificate"),
            );
        }
    }
    let _ = stream.sock.shutdown(std::net::Shutdown::Both);
    true
}

// ---- DNS, media, sinks, clock ---------------------------------------------------------------

fn dns(cfg: &ServeConfig, report: &mut Report) {
    let host = &cfg.hostname;
    let found: Vec<IpAddr> = match (host.as_str(), 0).to_socket_addrs() {
        Ok(addrs) => {
            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip().to_canonical()).collect();
            ips.sort();
            ips.dedup();
            ips
        }
        Err(_) => Vec::new(),
    };
    if found.is_empty() {
        report.fail(
            "dns",
            &format!("{host} has no A or AAAA record: Meta cannot find us"),
            &format!(
                "add an A record (and AAAA for IPv6) for {host} with this host's public address"
            ),
        );
        return;
    }
    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let announced: Vec<IpAddr> = cfg
        .calls
        .media
        .iter()
        .flat_map(|m| [Some(m.public_ip.unwrap_or(m.ip)), m.ip6])
        .flatten()
        .map(|ip| ip.to_canonical())
        .collect();
    let listen = cfg
        .tls
        .map(|a| a.ip().to_canonical())
        .filter(|ip| !ip.is_unspecified());
    if let Some(ip) = listen.filter(|ip| !found.contains(ip)) {
        report.warn(
            "dns",
            &format!("{host} resolves to {}, but --tls listens on {ip} only", list(&found)),
            &format!("listen on the address {host} resolves to (or on [::]), or correct its A/AAAA record"),
        );
    } else if !announced.is_empty() && !announced.iter().any(|ip| found.contains(ip)) {
        report.warn(
            "dns",
            &format!(
                "{host} resolves to {}; media is announced on {}",
                list(&found),
                list(&announced)
            ),
            "fine when SIP and media are on different addresses; otherwise correct the A/AAAA record or --public-ip",
        );
    } else if found.iter().all(|ip| !is_public(ip)) {
        report.warn(
            "dns",
            &format!(
                "{host} resolves to {} only: not addresses Meta can reach",
                list(&found)
            ),
            &format!("give {host} a public A/AAAA record (fine for local tests)"),
        );
    } else {
        report.pass("dns", &format!("{host} resolves to {}", list(&found)));
    }
}

fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

fn media(cfg: &ServeConfig, running: bool, report: &mut Report) {
    let Some(media) = &cfg.calls.media else {
        report.warn(
            "media port",
            "no business number configured (--number, [[number]]): every call is refused",
            "add --number +E164 with --media-ip and --sink",
        );
        return;
    };
    if media.public_ip.is_none() && !is_public(&media.ip) {
        report.warn(
            "media address",
            &format!("--media-ip {} is not a public address and no --public-ip is given: Meta's relay cannot reach it", media.ip),
            "behind a 1:1 NAT give the public address as --public-ip (fine for local tests)",
        );
    }
    if running {
        report.pass(
            "media port",
            "not bound here: watrunk serve is running and holds it",
        );
        return;
    }
    for ip in [Some(media.ip), media.ip6].into_iter().flatten() {
        let addr = SocketAddr::new(ip, media.port);
        match UdpSocket::bind(addr) {
            Ok(_) => report.pass("media port", &format!("UDP {addr} can be bound")),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => report.fail(
                "media port",
                &format!("UDP {addr} is in use by another process"),
                "stop that process or choose another --media-port (media.port)",
            ),
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => report.fail(
                "media port",
                &format!("{ip} is not an address of this host ({e})"),
                "--media-ip must be an address of this host; behind NAT give the public one as --public-ip",
            ),
            Err(e) => report.fail(
                "media port",
                &format!("cannot bind UDP {addr}: {e}"),
                "choose a --media-port this user may bind (1024 and up)",
            ),
        }
    }
}

/// Each distinct sink: a datagram-free probe cannot exist for UDP, so an empty datagram is sent
/// and an ICMP port-unreachable (a refusal) is what fails.
fn sinks(cfg: &ServeConfig, report: &mut Report) {
    let mut seen = Vec::new();
    for number in cfg.calls.numbers.values() {
        let sink = number.sink;
        if sink.port() == 0 || seen.contains(&sink) {
            continue;
        }
        seen.push(sink);
        let name = format!("sink {}", number.number);
        let fix = format!("start the voice agent or media server on UDP {sink}, or correct --sink (media.sink / number.sink)");
        let local: SocketAddr = if sink.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let outcome = UdpSocket::bind(local).and_then(|s| {
            s.connect(sink)?;
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            s.send(&[])?;
            let mut buf = [0u8; 64];
            s.recv(&mut buf).map(|_| ())
        });
        match outcome {
            Ok(()) => report.pass(&name, &format!("UDP {sink} answers")),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                report.pass(
                    &name,
                    &format!("UDP {sink} reachable (no refusal; UDP cannot confirm more)"),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => report.fail(
                &name,
                &format!("UDP {sink} refuses datagrams: nothing listens there"),
                &fix,
            ),
            Err(e) => report.fail(&name, &format!("UDP {sink} unreachable: {e}"), &fix),
        }
    }
}

fn clock(chain: Option<&[CertificateDer<'static>]>, report: &mut Report) {
    let now = unix_now();
    // 2024-01-01 .. 2100-01-01.
    if !(1_704_067_200..4_102_444_800).contains(&now) {
        report.fail(
            "clock",
            &format!("the system clock reads {now} s since 1970: not a sane date"),
            "set the clock and keep it synchronised (timedatectl set-ntp true)",
        );
        return;
    }
    let not_before = chain
        .and_then(|c| c.first())
        .and_then(|der| X509Certificate::from_der(der).ok())
        .map(|(_, leaf)| leaf.validity().not_before);
    match not_before {
        Some(nb) if now < nb.timestamp() => report.fail(
            "clock",
            &format!("the clock is before the certificate's notBefore ({nb}): TLS peers will see a certificate not valid yet, and so will we"),
            "synchronise the clock (timedatectl set-ntp true)",
        ),
        Some(nb) => report.pass("clock", &format!("sane, and after the certificate's notBefore ({nb})")),
        None => report.pass("clock", "sane"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label_only() {
        assert!(name_matches("sip.example.com", "SIP.example.com"));
        assert!(name_matches("*.example.com", "sip.example.com"));
        assert!(!name_matches("*.example.com", "a.sip.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("other.example.com", "sip.example.com"));
    }

    #[test]
    fn private_and_loopback_addresses_are_not_public() {
        for ip in [
            "10.1.2.3",
            "192.168.0.1",
            "127.0.0.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
        ] {
            assert!(!is_public(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["203.0.113.10", "2001:db8::1", "57.144.67.157"] {
            assert!(is_public(&ip.parse().unwrap()), "{ip}");
        }
    }
}
