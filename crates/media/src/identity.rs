//! Our DTLS identity: one ECDSA P-256 certificate per process and its sha-256 fingerprint, which
//! every call's SDP carries.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use watrunk_sdp::Fingerprint;
use webrtc_dtls::crypto::Certificate;

use crate::MediaError;

/// Our DTLS certificate (ECDSA P-256) and its sha-256 fingerprint. Cloning it is cheap: webrtc-dtls's
/// `Certificate::clone` parses the private key again (a scalar multiplication in ring), so it is done
/// once per handshake, where the DTLS configuration takes the certificate by value, and nowhere else.
#[derive(Clone)]
pub struct Identity {
    pub(crate) certificate: Arc<Certificate>,
    /// A trust store holding our own certificate, for webrtc-dtls's configuration. Trust comes from
    /// the SDP fingerprint, never from this store; but with an empty store webrtc-dtls builds a
    /// throwaway self-signed root (a key generation and a signature) for every handshake.
    pub(crate) roots: rustls::RootCertStore,
    fingerprint: Fingerprint,
}

impl Identity {
    pub fn generate() -> Result<Identity, MediaError> {
        let certificate = Certificate::generate_self_signed(vec!["watrunk".to_string()])
            .map_err(|e| MediaError::Local(format!("DTLS certificate: {e}")))?;
        let fingerprint = Fingerprint::sha256(Sha256::digest(&certificate.certificate[0]).to_vec());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certificate.certificate[0].clone())
            .map_err(|e| MediaError::Local(format!("DTLS certificate as a trust anchor: {e}")))?;
        Ok(Identity {
            certificate: Arc::new(certificate),
            roots,
            fingerprint,
        })
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}
