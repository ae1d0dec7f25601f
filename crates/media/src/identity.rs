//! Our DTLS identity: one ECDSA P-256 certificate per process and its sha-256 fingerprint, which
//! every call's SDP carries.

use sha2::{Digest, Sha256};
use watrunk_sdp::Fingerprint;
use webrtc_dtls::crypto::Certificate;

use crate::MediaError;

/// Our DTLS certificate (ECDSA P-256) and its sha-256 fingerprint.
#[derive(Clone)]
pub struct Identity {
    pub(crate) certificate: Certificate,
    fingerprint: Fingerprint,
}

impl Identity {
    pub fn generate() -> Result<Identity, MediaError> {
        let certificate = Certificate::generate_self_signed(vec!["watrunk".to_string()])
            .map_err(|e| MediaError::Local(format!("DTLS certificate: {e}")))?;
        let fingerprint = Fingerprint::sha256(Sha256::digest(&certificate.certificate[0]).to_vec());
        Ok(Identity {
            certificate,
            fingerprint,
        })
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}
