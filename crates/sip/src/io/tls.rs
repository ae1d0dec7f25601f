//! TLS for SIP: the server side Meta connects to (no ALPN, never a CertificateRequest: WHATSAPP-SIP
//! §1.4/§1.5) and the client side toward `wa.meta.vc` (web PKI roots plus an optional extra CA, SNI
//! sent, no ALPN). With no certificate configured, a self-signed one for the hostname is made on first
//! run and kept in the state directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up. Every case is the operator's to fix (a file, a path, a pair).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--cert and --key go together: give both or neither (config keys tls.cert / tls.key)")]
    HalfPair,
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not PEM certificates: {source}", path.display())]
    NotPem {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: not a usable CA certificate: {source}", path.display())]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the certificate and key do not form a usable pair: {0}")]
    Unusable(rustls::Error),
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, TlsSetupError>;

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

pub struct CertSource {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub hostname: String,
    pub state_dir: PathBuf,
}

/// Where the certificate came from, for the start-up message.
pub enum CertOrigin {
    Configured(PathBuf),
    SelfSignedNew(PathBuf),
    SelfSignedExisting(PathBuf),
}

/// The certificate chain and key `src` names (or the self-signed pair, made if need be).
fn certificate(
    src: &CertSource,
) -> Result<(
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    CertOrigin,
)> {
    match (&src.cert, &src.key) {
        (Some(c), Some(k)) => {
            let (chain, key) = load_pair(c, k)?;
            Ok((chain, key, CertOrigin::Configured(c.clone())))
        }
        (None, None) => self_signed(&src.hostname, &src.state_dir),
        _ => Err(TlsSetupError::HalfPair),
    }
}

/// The server's certificate, replaceable while it serves (SIGHUP): handshakes after a
/// [`reload`](Self::reload) use the new one; connections already up keep theirs.
#[derive(Debug)]
pub struct ReloadableCert(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl ReloadableCert {
    fn load(src: &CertSource) -> Result<(ReloadableCert, CertOrigin)> {
        let (chain, key, origin) = certificate(src)?;
        let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider())
            .map_err(TlsSetupError::Unusable)?;
        Ok((
            ReloadableCert(std::sync::RwLock::new(Arc::new(certified))),
            origin,
        ))
    }

    /// Reads `src` again; on any error the certificate in use stays.
    pub fn reload(&self, src: &CertSource) -> Result<CertOrigin> {
        let (fresh, origin) = ReloadableCert::load(src)?;
        let fresh = fresh.0.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(origin)
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The server side with a certificate that [`ReloadableCert::reload`] can replace.
pub fn reloadable_server_config(
    src: &CertSource,
) -> Result<(Arc<rustls::ServerConfig>, CertOrigin, Arc<ReloadableCert>)> {
    let (cert, origin) = ReloadableCert::load(src)?;
    let cert = Arc::new(cert);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Unusable)?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    cfg.alpn_protocols.clear();
    Ok((Arc::new(cfg), origin, cert))
}

pub fn server_config(src: &CertSource) -> Result<(Arc<rustls::ServerConfig>, CertOrigin)> {
    let (chain, key, origin) = certificate(src)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Unusable)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsSetupError::Unusable)?;
    cfg.alpn_protocols.clear();
    Ok((Arc::new(cfg), origin))
}

pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|source| TlsSetupError::BadCa {
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Unusable)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Meta answers ALPN "sip" with alert no_application_protocol (WHATSAPP-SIP §1.5).
    cfg.alpn_protocols.clear();
    Ok(Arc::new(cfg))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|source| TlsSetupError::NotPem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = read_certs(cert)?;
    let pem = read(key)?;
    let no_key = || TlsSetupError::NoKey {
        path: key.to_path_buf(),
    };
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|_| no_key())?
        .ok_or_else(no_key)?;
    Ok((chain, key))
}

/// Where a self-signed certificate is kept when no state directory is given: `WATRUNK_STATE_DIR`,
/// else systemd's `STATE_DIRECTORY`, else `$XDG_STATE_HOME/watrunk`, else
/// `~/.local/state/watrunk`; never the working directory (a repository checkout, say), unless there
/// is no home either.
pub fn default_state_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("WATRUNK_STATE_DIR") {
        return PathBuf::from(dir);
    }
    // systemd's StateDirectory= may list several, separated by ':'.
    if let Some(dirs) = var("STATE_DIRECTORY") {
        if let Some(first) = std::env::split_paths(&dirs).next() {
            return first;
        }
    }
    if let Some(state) = var("XDG_STATE_HOME") {
        return PathBuf::from(state).join("watrunk");
    }
    match var("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/watrunk"),
        None => PathBuf::from(".watrunk"),
    }
}

/// The self-signed certificate `watrunk serve` made for `hostname` in `dir`, if it made one.
pub fn self_signed_path(hostname: &str, dir: &Path) -> PathBuf {
    dir.join(format!("{}.selfsigned.crt", file_safe(hostname)))
}

/// A client's trust for talking to `server_name`: `extra_ca` when given, else the self-signed
/// certificate a local `watrunk serve` made for that name in the default state directory, if
/// there is one (it is this user's own file, in a directory only they can read); the second value
/// says which was taken.
pub fn client_config_for(
    server_name: &str,
    extra_ca: Option<&Path>,
) -> Result<(Arc<rustls::ClientConfig>, Option<PathBuf>)> {
    if let Some(ca) = extra_ca {
        return Ok((client_config(Some(ca))?, None));
    }
    let local = self_signed_path(server_name, &default_state_dir());
    if local.is_file() {
        return Ok((client_config(Some(&local))?, Some(local)));
    }
    Ok((client_config(None)?, None))
}

fn file_safe(hostname: &str) -> String {
    hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn self_signed(
    hostname: &str,
    dir: &Path,
) -> Result<(
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    CertOrigin,
)> {
    let safe = file_safe(hostname);
    let cert_path = self_signed_path(hostname, dir);
    let key_path = dir.join(format!("{safe}.selfsigned.key"));
    if cert_path.exists() && key_path.exists() {
        let (chain, key) = load_pair(&cert_path, &key_path)?;
        return Ok((chain, key, CertOrigin::SelfSignedExisting(cert_path)));
    }
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let cert = params.self_signed(&key_pair)?;
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsSetupError::Write { path, source }
    };
    create_private_dir(dir).map_err(write_error(dir))?;
    std::fs::write(&cert_path, cert.pem()).map_err(write_error(&cert_path))?;
    write_private(&key_path, key_pair.serialize_pem().as_bytes())
        .map_err(write_error(&key_path))?;
    let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    Ok((
        vec![cert.der().clone()],
        key,
        CertOrigin::SelfSignedNew(cert_path),
    ))
}

/// The state directory, made readable by its owner only (it holds a private key).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)?.write_all(data)?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_state_dir_and_its_key_are_their_owners_only() {
        let root = std::env::temp_dir().join(format!("watrunk-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("state");
        create_private_dir(&dir).unwrap();
        let key = dir.join("k.key");
        write_private(&key, b"secret").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let (dir_mode, key_mode) = (mode(&dir), mode(&key));
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!((dir_mode, key_mode), (0o700, 0o600));
    }
}
