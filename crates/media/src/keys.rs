//! SRTP keys: from the DTLS handshake (fingerprint checked, keys exported) or from SDES, and the
//! one place where the DTLS crate's protection profiles meet ours.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use watrunk_sdp::{DtlsRole, Fingerprint, SdesSuite};
use webrtc_dtls::config::{Config as DtlsConfig, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::{Conn, KeyingMaterialExporter};

use crate::dtls_endpoint::DtlsEndpoint;
use crate::srtp::{SrtpContext, SrtpProfile};
use crate::MediaError;

use crate::identity::Identity;

pub(crate) struct Keys {
    pub(crate) outbound: SrtpContext,
    pub(crate) inbound: SrtpContext,
    pub(crate) profile: &'static str,
    /// The keys themselves, kept only for a key log (`MediaConfig::key_log`).
    pub(crate) logged: Option<Box<KeyMaterial>>,
}

/// One call's SRTP master keys and salts as a key log records them: what decrypting a capture of
/// the call needs. Made once per call at set-up, only when a key log is on.
pub struct KeyMaterial {
    pub profile: SrtpProfile,
    /// Our master key followed by its salt (what protects what we send).
    pub outbound: Vec<u8>,
    /// The far side's master key followed by its salt.
    pub inbound: Vec<u8>,
    /// DTLS-SRTP: the handshake's client random and master secret (NSS key log `CLIENT_RANDOM`).
    pub dtls: Option<DtlsSecrets>,
}

pub struct DtlsSecrets {
    pub client_random: Vec<u8>,
    pub master_secret: Vec<u8>,
}

/// A call's keys, where its packets go: `local` is our address, `remote` the far side's.
pub struct LoggedKeys<'a> {
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    pub keys: &'a KeyMaterial,
}

/// Told each call's keys once they exist (`--key-log`). Called once per call at set-up, in the
/// call's task: never on the per-packet path.
#[derive(Clone)]
pub struct KeyLogHook(pub Arc<dyn Fn(&LoggedKeys<'_>) + Send + Sync>);

/// Keys stay out of logs.
impl std::fmt::Debug for KeyLogHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLogHook")
    }
}

fn key_and_salt(key: &[u8], salt: &[u8]) -> Vec<u8> {
    [key, salt].concat()
}

pub(crate) fn srtp_profile_of_suite(suite: SdesSuite) -> SrtpProfile {
    match suite {
        SdesSuite::AesCm128HmacSha1_80 => SrtpProfile::AesCm128HmacSha1_80,
        SdesSuite::AesCm128HmacSha1_32 => SrtpProfile::AesCm128HmacSha1_32,
    }
}

pub(crate) fn dtls_profile_of(p: SrtpProfile) -> SrtpProtectionProfile {
    match p {
        SrtpProfile::AesCm128HmacSha1_80 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        SrtpProfile::AesCm128HmacSha1_32 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
        SrtpProfile::AeadAes128Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    }
}

/// The one place where dtls's profile enum meets ours (with `dtls_profile_of`).
pub(crate) fn srtp_profile_of_dtls(
    p: SrtpProtectionProfile,
) -> Option<(SrtpProfile, &'static str)> {
    match p {
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => Some((
            SrtpProfile::AesCm128HmacSha1_80,
            "SRTP_AES128_CM_HMAC_SHA1_80",
        )),
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => Some((
            SrtpProfile::AesCm128HmacSha1_32,
            "SRTP_AES128_CM_HMAC_SHA1_32",
        )),
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => {
            Some((SrtpProfile::AeadAes128Gcm, "SRTP_AEAD_AES_128_GCM"))
        }
        _ => None,
    }
}

pub(crate) fn contexts(
    profile: SrtpProfile,
    local: (&[u8], &[u8]),
    remote: (&[u8], &[u8]),
) -> Result<(SrtpContext, SrtpContext), MediaError> {
    let outbound = SrtpContext::new(profile, local.0, local.1)
        .map_err(|e| MediaError::Local(format!("SRTP context: {e}")))?;
    let inbound = SrtpContext::new(profile, remote.0, remote.1)
        .map_err(|e| MediaError::Peer(format!("SRTP keys: {e}")))?;
    Ok((outbound, inbound))
}

/// SDES keys of a sink that speaks SRTP (a PBX leg on RTP/SAVP): ours protect what we send it,
/// theirs check what it sends us. Both are a 16-byte master key and its 14-byte salt.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SinkKeys {
    pub suite: SdesSuite,
    ours: [u8; 30],
    theirs: [u8; 30],
}

impl SinkKeys {
    /// None unless both keys are an AES-CM master key and salt (30 bytes, RFC 4568 §6.2.1).
    pub fn sdes(suite: SdesSuite, ours: &[u8], theirs: &[u8]) -> Option<SinkKeys> {
        Some(SinkKeys {
            suite,
            ours: ours.try_into().ok()?,
            theirs: theirs.try_into().ok()?,
        })
    }

    /// The context that protects toward the sink, and the one that checks what it sends.
    pub(crate) fn contexts(&self) -> Result<(SrtpContext, SrtpContext), MediaError> {
        let (ours, theirs) = (&self.ours, &self.theirs);
        contexts(
            srtp_profile_of_suite(self.suite),
            (&ours[..16], &ours[16..]),
            (&theirs[..16], &theirs[16..]),
        )
    }
}

/// Keys stay out of logs.
impl std::fmt::Debug for SinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SinkKeys({})", self.suite.name())
    }
}

/// How often an unanswered handshake flight is sent again. webrtc-dtls resends at a fixed
/// interval (no backoff), 1 s by default: under 20 % loss a flight of several datagrams often
/// needs a few resends, and at 1 s apart the set-up overran its 10 s limit in 1 call of 5
/// (tests/faults.rs). A handshake is a few kilobytes; resending it four times a second for at
/// most those 10 s costs nothing worth saving.
const FLIGHT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

pub(crate) async fn dtls_keys(
    conn: Arc<dyn Conn + Send + Sync>,
    dtls_rx: mpsc::Receiver<Vec<u8>>,
    identity: &Identity,
    expected: &Fingerprint,
    role: DtlsRole,
    profiles: &[SrtpProfile],
    keep_for_log: bool,
) -> Result<Keys, MediaError> {
    let expected_bytes = expected.bytes.clone();
    let config = DtlsConfig {
        certificates: vec![Certificate::clone(&identity.certificate)],
        roots_cas: identity.roots.clone(),
        client_cas: identity.roots.clone(),
        srtp_protection_profiles: profiles.iter().map(|&p| dtls_profile_of(p)).collect(),
        extended_master_secret: ExtendedMasterSecretType::Request,
        // The certificate is self-signed by design (RFC 5763): trust comes from the SDP fingerprint.
        insecure_skip_verify: true,
        verify_peer_certificate: Some(Arc::new(move |certs: &[Vec<u8>], _| {
            let Some(leaf) = certs.first() else {
                return Err(webrtc_dtls::Error::Other(
                    "the peer sent no certificate".into(),
                ));
            };
            let got = Sha256::digest(leaf);
            if got.as_slice() == expected_bytes.as_slice() {
                Ok(())
            } else {
                Err(webrtc_dtls::Error::Other(format!(
                    "the peer's certificate does not match the SDP fingerprint (got sha-256 {})",
                    Fingerprint::sha256(got.to_vec()).hex()
                )))
            }
        })),
        flight_interval: FLIGHT_INTERVAL,
        ..Default::default()
    };
    let endpoint: Arc<dyn Conn + Send + Sync> = Arc::new(DtlsEndpoint::new(conn, dtls_rx));
    let is_client = role == DtlsRole::Client;
    let dtls = DTLSConn::new(endpoint, config, is_client, None)
        .await
        .map_err(|e| MediaError::Peer(format!("DTLS: {e}")))?;
    let (profile, name) = srtp_profile_of_dtls(dtls.selected_srtpprotection_profile())
        .ok_or_else(|| MediaError::Peer("DTLS: no SRTP protection profile agreed".into()))?;
    let key_len = profile.key_len();
    let salt_len = profile.salt_len();
    let material = dtls
        .connection_state()
        .await
        .export_keying_material("EXTRACTOR-dtls_srtp", &[], 2 * (key_len + salt_len))
        .await
        .map_err(|e| MediaError::Local(format!("DTLS key export: {e}")))?;
    // RFC 5764 §4.2: client key, server key, client salt, server salt.
    let (client_key, rest) = material.split_at(key_len);
    let (server_key, rest) = rest.split_at(key_len);
    let (client_salt, server_salt) = rest.split_at(salt_len);
    let (local, remote) = if is_client {
        ((client_key, client_salt), (server_key, server_salt))
    } else {
        ((server_key, server_salt), (client_key, client_salt))
    };
    let (outbound, inbound) = contexts(profile, local, remote)?;
    let logged = if keep_for_log {
        let state = dtls.connection_state().await;
        let dtls_secrets = state.key_log_data().ok().map(|d| DtlsSecrets {
            client_random: if is_client {
                d.local_random
            } else {
                d.remote_random
            },
            master_secret: d.master_secret,
        });
        Some(Box::new(KeyMaterial {
            profile,
            outbound: key_and_salt(local.0, local.1),
            inbound: key_and_salt(remote.0, remote.1),
            dtls: dtls_secrets,
        }))
    } else {
        None
    };
    // The connection goes now, without a close_notify (the call's end is SIP's BYE): the keys are
    // all a call needs of it, and it holds ~60 KiB (its read task and 8 KiB buffer, the handshake
    // cache). webrtc-dtls answers no handshake record once its handshake returned, so keeping it
    // would not answer a peer's retransmitted final flight either. Records that come later are
    // dropped by the slow path.
    drop(dtls);
    Ok(Keys {
        outbound,
        inbound,
        profile: name,
        logged,
    })
}

/// A connected view of a plain UDP socket for the DTLS endpoint: what DTLS writes goes to
/// `remote`; what it reads comes from the endpoint's channel.
struct UdpTo {
    socket: Arc<std::net::UdpSocket>,
    remote: std::net::SocketAddr,
}

#[async_trait::async_trait]
impl Conn for UdpTo {
    async fn connect(&self, _addr: std::net::SocketAddr) -> Result<(), webrtc_util::Error> {
        Err(webrtc_util::Error::Other("already connected".into()))
    }

    async fn recv(&self, _buf: &mut [u8]) -> Result<usize, webrtc_util::Error> {
        Err(webrtc_util::Error::Other(
            "records come through the endpoint".into(),
        ))
    }

    async fn recv_from(
        &self,
        _buf: &mut [u8],
    ) -> Result<(usize, std::net::SocketAddr), webrtc_util::Error> {
        Err(webrtc_util::Error::Other(
            "records come through the endpoint".into(),
        ))
    }

    async fn send(&self, buf: &[u8]) -> Result<usize, webrtc_util::Error> {
        Ok(self.socket.send_to(buf, self.remote)?)
    }

    async fn send_to(
        &self,
        buf: &[u8],
        _target: std::net::SocketAddr,
    ) -> Result<usize, webrtc_util::Error> {
        self.send(buf).await
    }

    fn local_addr(&self) -> Result<std::net::SocketAddr, webrtc_util::Error> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        Some(self.remote)
    }

    async fn close(&self) -> Result<(), webrtc_util::Error> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A DTLS-SRTP handshake over a plain UDP socket whose reader is someone else (`watrunk sim
/// load`'s packet engine): the DTLS records it reads come through `records`, what it writes goes
/// from `socket` to `remote`. The peer's certificate is checked against `expected`. Returns the
/// outbound and inbound SRTP contexts and the profile's name.
pub async fn dtls_srtp_over_udp(
    socket: Arc<std::net::UdpSocket>,
    remote: std::net::SocketAddr,
    records: mpsc::Receiver<Vec<u8>>,
    identity: &Identity,
    expected: &Fingerprint,
    role: DtlsRole,
) -> Result<(SrtpContext, SrtpContext, &'static str), MediaError> {
    let conn: Arc<dyn Conn + Send + Sync> = Arc::new(UdpTo { socket, remote });
    let profiles = [SrtpProfile::AeadAes128Gcm, SrtpProfile::AesCm128HmacSha1_80];
    let keys = dtls_keys(conn, records, identity, expected, role, &profiles, false).await?;
    Ok((keys.outbound, keys.inbound, keys.profile))
}
