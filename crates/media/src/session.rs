//! One call's media, from a `MediaPlan` to relayed audio.
//!
//! ```text
//! Prepared::new ── host candidates gathered, DTLS identity ready (they go into our SDP)
//!     │ start(plan)
//!     ▼
//! Ice ── controlling checks (regular nomination) ──► IceConnected      (SDES without ICE: skipped)
//!     ▼
//! Secure ── DTLS handshake, fingerprint verified, keys exported ──► SecureUp   (SDES: keys from SDP)
//!     ▼
//! Relaying ── SRTP ⇄ RTP with the sink, silence until the sink speaks ──► FirstRtpOut, FirstRtpIn
//!     ▼
//! Ended ── stop() or Failed{reason}
//! ```
//!
//! webrtc-rs does ICE and the DTLS handshake over the shared `MediaSocket`; both go once the keys
//! exist, and consent is kept without them (consent.rs). The packets after set-up go through our
//! own path: inbound, the socket's reader unprotects in place and sends to the sink (relay.rs);
//! outbound, the call's task reads the sink, re-stamps, protects in place and sends on the shared
//! socket. One receive, one SRTP operation, one send, no allocation.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;
pub use watrunk_sdp::IceRole;
use watrunk_sdp::{Capabilities, LocalMedia};
use watrunk_sdp::{DtlsRole, Fingerprint, Keying, MediaPlan, RemoteIce, SdesSuite};
use webrtc_dtls::config::{Config as DtlsConfig, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::agent::Agent;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::candidate::{Candidate, CandidateType};
use webrtc_ice::mdns::MulticastDnsMode;
use webrtc_ice::network_type::NetworkType;
use webrtc_ice::udp_network::UDPNetwork;
use webrtc_util::{Conn, KeyingMaterialExporter};

use crate::consent::{self, Freshness, IceCredentials, CONSENT_INTERVAL};
use crate::demux::{classify, PacketKind};
use crate::dtls_endpoint::DtlsEndpoint;
use crate::dtmf::DtmfSender;
use crate::mux::{plain_key, MediaSocket};
use crate::quiet::SinkClock;
use crate::relay::{sender_report, InboundCounters, InboundRoute, Reception, SenderInfo};
use crate::restamp::{PayloadMap, Restamper, FRAME};
use crate::srtp::{SrtpContext, SrtpProfile};
use crate::MediaError;

const SET_UP_TIMEOUT: Duration = Duration::from_secs(10);
const RTCP_INTERVAL: Duration = Duration::from_secs(5);
const FIRST_RTCP: Duration = Duration::from_secs(1);
/// The sink counts as silent after this long without a packet; we fill in with silence frames.
const SINK_SILENCE: Duration = Duration::from_millis(60);
const MTU: usize = 1500;
/// Room after a packet for the SRTP tag (or SRTCP's tag and index).
const TAG_ROOM: usize = 32;
/// SRTP packets kept while the keys are still being agreed (the far side may finish first).
const EARLY_PACKETS: usize = 16;

#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// The address our host candidates (and plain SDES socket) use.
    pub media_ip: IpAddr,
    /// A second host address, typically IPv6 beside an IPv4 `media_ip` (Meta offers both).
    pub media_ip6: Option<IpAddr>,
    /// The public address of a 1:1 NAT in front of `media_ip`: announced instead of it.
    pub public_ip: Option<IpAddr>,
    /// A STUN server (`stun:host:port`) for a server-reflexive candidate.
    pub stun_server: Option<String>,
    /// Offer loopback candidates (tests on 127.0.0.1).
    pub include_loopback: bool,
    /// Where the call's local RTP port L is bound (port 0: any).
    pub app_bind: SocketAddr,
    /// The sink S: caller's RTP goes there, and only RTP from there is accepted.
    pub sink: SocketAddr,
    /// ICE's pacing while checking (RFC 8445 Ta). webrtc-ice nominates a pair on the tick after
    /// its first success, so against an ICE-lite peer this is most of the time to a selected pair.
    pub check_interval: Duration,
    /// How long the peer may leave our consent checks unanswered before the call fails (RFC 7675:
    /// 30 s); the first 5 s of it count as disconnected.
    pub consent_timeout: Duration,
    /// The SRTP protection profiles offered in DTLS, preferred first.
    pub dtls_profiles: Vec<SrtpProfile>,
    /// Send our first packet as soon as the keys exist (WhatsApp: the business speaks first).
    /// Off, nothing is sent before the far side's first packet arrived (Meta's side, `watrunk sim`).
    pub speak_first: bool,
}

impl MediaConfig {
    pub fn new(media_ip: IpAddr, app_bind: SocketAddr, sink: SocketAddr) -> MediaConfig {
        MediaConfig {
            media_ip,
            media_ip6: None,
            public_ip: None,
            stun_server: None,
            include_loopback: media_ip.is_loopback(),
            app_bind,
            sink,
            check_interval: CHECK_INTERVAL,
            consent_timeout: Duration::from_secs(30),
            dtls_profiles: vec![SrtpProfile::AeadAes128Gcm, SrtpProfile::AesCm128HmacSha1_80],
            speak_first: true,
        }
    }
}

/// RFC 8445 §14.2's floor for Ta.
const CHECK_INTERVAL: Duration = Duration::from_millis(5);
/// How long a pair is checked before webrtc-ice stops sending to it (a late answer still counts).
const CHECKING_A_PAIR: Duration = Duration::from_millis(200);

fn checks_per_pair(interval: Duration) -> u16 {
    let interval = interval.max(Duration::from_millis(1)).as_millis();
    (CHECKING_A_PAIR.as_millis() / interval).clamp(7, 200) as u16
}

/// Our DTLS certificate (ECDSA P-256) and its sha-256 fingerprint.
#[derive(Clone)]
pub struct Identity {
    certificate: Certificate,
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

/// What a call's media tells its owner. The large events are boxed: every call's event channel
/// holds a block of 32 of them for as long as the call lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    IceConnected(Box<IceConnected>),
    SecureUp {
        profile: &'static str,
        elapsed: Duration,
    },
    FirstRtpOut {
        elapsed: Duration,
    },
    FirstRtpIn {
        elapsed: Duration,
    },
    Stats(Box<Stats>),
    /// Boxed like the other large events; says whose fault it is.
    Failed(Box<MediaError>),
}

/// The pair ICE selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceConnected {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Our role in the end: the other one than chosen when the peer won a role conflict.
    pub role: IceRole,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub silence_out: u64,
    /// RFC 4733 packets sent for DTMF keys.
    pub dtmf_out: u64,
    /// SRTP packets that failed authentication or replay checks (dropped, never forwarded).
    pub srtp_rejected: u64,
    /// Packets on the sink port from anyone but the sink (ignored).
    pub strangers: u64,
    /// Inbound packets the far side sent that never arrived (RFC 3550 A.3).
    pub lost: i64,
    /// Inbound interarrival jitter (RFC 3550 A.8), in µs.
    pub jitter_us: u64,
    /// Round-trip time from the far side's RTCP report on our stream, once it sent one.
    pub rtt_us: Option<u64>,
}

impl Stats {
    fn take_inbound(&mut self, counters: &InboundCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        self.packets_in = counters.packets.load(Relaxed);
        self.bytes_in = counters.bytes.load(Relaxed);
        self.srtp_rejected = counters.rejected.load(Relaxed);
        self.lost = counters.lost();
        self.jitter_us = counters.jitter.load(Relaxed) * 1_000_000 / 48_000;
        self.rtt_us = Some(counters.rtt_us.load(Relaxed)).filter(|&r| r > 0);
    }
}

/// Media resources made before the SDP is written: our candidates and identity go into it.
pub struct Prepared {
    cfg: MediaConfig,
    identity: Identity,
    agent: Option<Arc<Agent>>,
    role: IceRole,
    socket: Arc<MediaSocket>,
    ufrag: String,
    pwd: String,
    candidates: Vec<SocketAddr>,
    /// Taken by `start`.
    app: Option<UdpSocket>,
}

/// What a started call takes of `Prepared`.
struct Parts {
    cfg: MediaConfig,
    identity: Identity,
    agent: Option<Arc<Agent>>,
    role: IceRole,
    socket: Arc<MediaSocket>,
    app: UdpSocket,
    /// Our ICE ufrag and password (kept if the agent is made again in the other role).
    credentials: (String, String),
    clock: Arc<SinkClock>,
    plan: MediaPlan,
}

/// What a call leaves on the shared socket until whoever ends it clears it.
#[derive(Default)]
struct Leftovers {
    remote: Option<SocketAddr>,
    agent: Option<Arc<Agent>>,
}

impl Prepared {
    /// Gives up a call prepared but never started, and waits until its agent has left the socket.
    pub async fn close(mut self) {
        if let Some(agent) = self.agent.take() {
            let _ = agent.close().await;
        }
    }
}

impl Drop for Prepared {
    /// A call prepared but never started leaves no connection on the shared socket.
    fn drop(&mut self) {
        if self.role == IceRole::Lite && self.app.is_some() {
            self.socket.remove_ufrag_conn(&self.ufrag);
        }
        if let Some(agent) = self.agent.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = agent.close().await;
                });
            }
        }
    }
}

impl Prepared {
    /// Gathers host candidates on `cfg.media_ip` (ICE) with the port of the shared `socket`, or
    /// just takes that address (`IceRole::None`, SDES toward an offer without ICE), and binds the
    /// local RTP port.
    pub async fn new(
        cfg: MediaConfig,
        identity: Identity,
        role: IceRole,
        socket: &Arc<MediaSocket>,
    ) -> Result<Prepared, MediaError> {
        let app = UdpSocket::bind(cfg.app_bind)
            .await
            .map_err(|e| MediaError::Local(format!("bind {}: {e}", cfg.app_bind)))?;
        if matches!(role, IceRole::None | IceRole::Lite) {
            let port = socket.local_addr().port();
            let (ufrag, pwd, candidates) = if role == IceRole::Lite {
                let (ufrag, pwd) = lite_credentials();
                // Checks that arrive before `start` wait on the connection.
                socket.ufrag_conn(&ufrag);
                let candidates = std::iter::once(cfg.media_ip)
                    .chain(cfg.media_ip6)
                    .map(|ip| SocketAddr::new(cfg.public_ip.unwrap_or(ip), port))
                    .collect();
                (ufrag, pwd, candidates)
            } else {
                let plain = SocketAddr::new(cfg.media_ip, port);
                (String::new(), String::new(), vec![plain])
            };
            return Ok(Prepared {
                cfg,
                identity,
                agent: None,
                role,
                socket: socket.clone(),
                ufrag,
                pwd,
                candidates,
                app: Some(app),
            });
        }
        let (agent, candidates) = ice_agent(&cfg, socket, role, None).await?;
        let (ufrag, pwd) = agent.get_local_user_credentials().await;
        Ok(Prepared {
            cfg,
            identity,
            agent: Some(agent),
            role,
            socket: socket.clone(),
            ufrag,
            pwd,
            candidates,
            app: Some(app),
        })
    }

    /// Our local description for the SDP: fresh per-call values for `caps` (SSRC, CNAME, SDES
    /// key, drawn from `rng`) with this call's candidates, ICE credentials and fingerprint; marked
    /// ICE-lite when we play Meta's relay.
    pub fn local_media(&self, caps: &Capabilities, rng: &mut impl RngCore) -> LocalMedia {
        let mut local = LocalMedia::for_capabilities(caps, rng)
            .with_candidates(self.candidates.iter().copied())
            .with_fingerprint(self.fingerprint().clone());
        local.ice_ufrag = self.ufrag.clone();
        local.ice_pwd = self.pwd.clone();
        local.ice_lite = self.role == IceRole::Lite;
        local
    }

    pub fn ice_credentials(&self) -> (&str, &str) {
        (&self.ufrag, &self.pwd)
    }

    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        self.identity.fingerprint()
    }

    /// The call's local RTP port L (the application sends its audio here).
    pub fn app_addr(&self) -> SocketAddr {
        self.app
            .as_ref()
            .and_then(|a| a.local_addr().ok())
            .expect("bound socket, not yet started")
    }

    /// Starts the media for `plan`; `ssrc` is the one outbound SSRC announced in our SDP.
    pub fn start(mut self, plan: MediaPlan, ssrc: u32) -> MediaSession {
        let (events_tx, events_rx) = mpsc::channel(64);
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let app_addr = self.app_addr();
        let dtmf_negotiated = plan.dtmf_pt.is_some();
        // Boxed: the call's task would otherwise hold the parts (and the plan) for its whole life.
        let parts = Box::new(Parts {
            cfg: self.cfg.clone(),
            identity: self.identity.clone(),
            agent: self.agent.take(),
            role: self.role,
            socket: self.socket.clone(),
            app: self.app.take().expect("a Prepared starts once"),
            credentials: (self.ufrag.clone(), self.pwd.clone()),
            clock: self.socket.sink_clock(SINK_SILENCE),
            plan,
        });
        let clock = parts.clock.clone();
        let moves_tx = commands_tx.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let socket = parts.socket.clone();
            let ufrag = parts.credentials.0.clone();
            let role = parts.role;
            let leftovers = std::sync::Mutex::new(Leftovers {
                remote: None,
                agent: parts.agent.clone(),
            });
            let result = run(
                parts,
                ssrc,
                started,
                events_tx.clone(),
                (moves_tx, commands_rx),
                &leftovers,
            )
            .await;
            // Whatever ended the call, nothing of it stays on the shared socket.
            let Leftovers { remote, agent } = leftovers.into_inner().unwrap_or_default();
            if let Some(remote) = remote {
                socket.remove_route(remote).await;
            }
            socket.unwatch_role_conflicts(&ufrag);
            socket.drop_slow_path(&ufrag);
            match agent {
                Some(agent) => {
                    let _ = Box::pin(agent.close()).await;
                }
                None => {
                    // The ICE-lite responder's connection, or the consent keeper's.
                    if role != IceRole::None {
                        socket.remove_ufrag_conn(&ufrag);
                    }
                    if let Some(remote) = remote {
                        socket.remove_plain(remote);
                    }
                }
            }
            if let Err(e) = result {
                let _ = events_tx.send(MediaEvent::Failed(Box::new(e))).await;
            }
        });
        MediaSession {
            events: events_rx,
            commands: commands_tx,
            clock,
            dtmf_negotiated,
            task,
            app_addr,
        }
    }
}

/// A lite agent's ufrag and password (RFC 8445 §5.3: at least 24 and 128 bits of randomness).
fn lite_credentials() -> (String, String) {
    use rand::distributions::{Alphanumeric, DistString};
    let mut rng = rand::thread_rng();
    (
        Alphanumeric.sample_string(&mut rng, 8),
        Alphanumeric.sample_string(&mut rng, 24),
    )
}

/// An ICE agent on the shared socket with host candidates gathered: `credentials` keeps a call's ufrag
/// and password when its agent is made again in the other role (RFC 8445 §7.2.5.1).
async fn ice_agent(
    cfg: &MediaConfig,
    socket: &Arc<MediaSocket>,
    role: IceRole,
    credentials: Option<(String, String)>,
) -> Result<(Arc<Agent>, Vec<SocketAddr>), MediaError> {
    let media_ip = cfg.media_ip;
    let media_ips: Vec<IpAddr> = std::iter::once(media_ip).chain(cfg.media_ip6).collect();
    let mut network_types: Vec<NetworkType> = media_ips
        .iter()
        .map(|ip| {
            if ip.is_ipv4() {
                NetworkType::Udp4
            } else {
                NetworkType::Udp6
            }
        })
        .collect();
    network_types.dedup();
    let mut urls = Vec::new();
    let mut candidate_types = vec![CandidateType::Host];
    if let Some(stun) = &cfg.stun_server {
        urls.push(
            webrtc_ice::url::Url::parse_url(stun)
                .map_err(|e| MediaError::Local(format!("STUN server {stun:?}: {e}")))?,
        );
        candidate_types.push(CandidateType::ServerReflexive);
    }
    let filter_ips = media_ips.clone();
    let udp_network = UDPNetwork::Muxed(socket.clone());
    let consent = ConsentPacing::of(cfg.consent_timeout);
    let agent = Agent::new(AgentConfig {
        network_types,
        candidate_types,
        urls,
        nat_1to1_ips: cfg
            .public_ip
            .iter()
            .map(|ip| format!("{ip}/{media_ip}"))
            .collect(),
        nat_1to1_ip_candidate_type: CandidateType::Host,
        udp_network,
        is_controlling: role == IceRole::Controlling,
        check_interval: cfg.check_interval,
        max_binding_requests: Some(checks_per_pair(cfg.check_interval)),
        multicast_dns_mode: MulticastDnsMode::Disabled,
        include_loopback: cfg.include_loopback,
        ip_filter: Arc::new(Some(Box::new(move |ip: IpAddr| filter_ips.contains(&ip)))),
        disconnected_timeout: Some(consent.disconnected),
        failed_timeout: Some(consent.failed),
        keepalive_interval: Some(consent.interval),
        local_ufrag: credentials
            .as_ref()
            .map(|c| c.0.clone())
            .unwrap_or_default(),
        local_pwd: credentials.map(|c| c.1).unwrap_or_default(),
        ..Default::default()
    })
    .await
    .map_err(|e| MediaError::Local(format!("ICE agent: {e}")))?;
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    agent.on_candidate(Box::new(
        move |c: Option<Arc<dyn Candidate + Send + Sync>>| {
            let done_tx = done_tx.clone();
            Box::pin(async move {
                if c.is_none() {
                    let _ = done_tx.try_send(());
                }
            })
        },
    ));
    agent
        .gather_candidates()
        .map_err(|e| MediaError::Local(format!("ICE gathering: {e}")))?;
    let _ = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
    let candidates: Vec<SocketAddr> = agent
        .get_local_candidates()
        .await
        .map_err(|e| MediaError::Local(format!("ICE candidates: {e}")))?
        .iter()
        .map(|c| c.addr())
        .collect();
    if candidates.is_empty() {
        return Err(MediaError::Local(format!(
            "no ICE host candidate on {media_ip} (is the address configured on an interface?)"
        )));
    }
    Ok((Arc::new(agent), candidates))
}

pub struct MediaSession {
    pub events: mpsc::Receiver<MediaEvent>,
    commands: mpsc::Sender<Command>,
    /// Wakes the call's task for a command while it sleeps on its sink.
    clock: Arc<SinkClock>,
    dtmf_negotiated: bool,
    task: tokio::task::JoinHandle<()>,
    app_addr: SocketAddr,
}

enum Command {
    Dtmf(DtmfSender),
    /// The agent selected another pair: the call's packets now go to (and come from) there.
    Moved(SocketAddr),
}

impl MediaSession {
    pub fn app_addr(&self) -> SocketAddr {
        self.app_addr
    }

    /// Sends one DTMF key (0-9, *, #, A-D) as RFC 4733 events on the call's SSRC. Refused when the
    /// far side negotiated no telephone-event, or when keys are queued faster than they are sent.
    pub fn send_dtmf(&self, key: char, duration: Duration) -> Result<(), MediaError> {
        if !self.dtmf_negotiated {
            return Err(MediaError::Local(
                "the far side negotiated no telephone-event/8000".into(),
            ));
        }
        let sender = DtmfSender::new(key, duration.as_millis() as u32)?;
        self.commands
            .try_send(Command::Dtmf(sender))
            .map_err(|_| MediaError::Local("DTMF queue full or call ended".into()))?;
        self.clock.poke();
        Ok(())
    }

    /// Ends the media and waits until every socket and task of the call is gone. Returns the events
    /// not yet received; a call that got past set-up ends them with its final `Stats`.
    pub async fn stop(mut self) -> Vec<MediaEvent> {
        self.clock.stop();
        let _ = (&mut self.task).await;
        let mut rest = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            rest.push(e);
        }
        rest
    }
}

struct Keys {
    outbound: SrtpContext,
    inbound: SrtpContext,
    profile: &'static str,
}

/// Consent freshness (RFC 7675) as webrtc-ice's timers, while the agent lives (until the keys
/// exist; consent.rs keeps it after): a check on the selected pair every `interval` (§5.1: 5 s);
/// Disconnected after two unanswered checks, which webrtc-ice recovers from by itself; Failed once
/// `timeout` passed without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConsentPacing {
    interval: Duration,
    disconnected: Duration,
    failed: Duration,
}

impl ConsentPacing {
    fn of(timeout: Duration) -> ConsentPacing {
        let interval = CONSENT_INTERVAL.min(timeout / 2);
        let disconnected = (2 * interval + Duration::from_secs(1)).min(timeout);
        ConsentPacing {
            interval,
            disconnected,
            // webrtc-ice fails after disconnected + failed without an answer.
            failed: timeout
                .saturating_sub(disconnected)
                .max(Duration::from_secs(1)),
        }
    }
}

fn srtp_profile_of_suite(suite: SdesSuite) -> SrtpProfile {
    match suite {
        SdesSuite::AesCm128HmacSha1_80 => SrtpProfile::AesCm128HmacSha1_80,
        SdesSuite::AesCm128HmacSha1_32 => SrtpProfile::AesCm128HmacSha1_32,
    }
}

fn dtls_profile_of(p: SrtpProfile) -> SrtpProtectionProfile {
    match p {
        SrtpProfile::AesCm128HmacSha1_80 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        SrtpProfile::AesCm128HmacSha1_32 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
        SrtpProfile::AeadAes128Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    }
}

/// The one place where dtls's profile enum meets ours (with `dtls_profile_of`).
fn srtp_profile_of_dtls(p: SrtpProtectionProfile) -> Option<(SrtpProfile, &'static str)> {
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

fn contexts(
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

/// What a set-up call keeps: its outbound side, its inbound counters, and what answers or sends
/// consent checks for as long as it runs.
struct Established {
    out: Box<Outbound>,
    counters: Arc<InboundCounters>,
    _consent: Option<consent::Keeper>,
    _responder: Option<crate::lite::Responder>,
}

async fn run(
    parts: Box<Parts>,
    ssrc: u32,
    started: Instant,
    events: mpsc::Sender<MediaEvent>,
    (moves, commands): (mpsc::Sender<Command>, mpsc::Receiver<Command>),
    leftovers: &std::sync::Mutex<Leftovers>,
) -> Result<(), MediaError> {
    // Set-up is boxed: its state (ICE, the DTLS handshake, keys on their way) would otherwise
    // size the call's task for its whole life.
    let set_up = Box::pin(set_up(parts, ssrc, started, &events, moves, leftovers));
    let Some(Established {
        out,
        counters,
        _consent,
        _responder,
    }) = set_up.await?
    else {
        return Ok(());
    };
    write_loop(out, commands, &counters, started, events, leftovers).await
}

/// ICE (or the ICE-lite responder, or a plain address), the keys, the fast path's route and the
/// consent keeper: everything before the call's first outbound packet. `None` when the call was
/// stopped first.
async fn set_up(
    parts: Box<Parts>,
    ssrc: u32,
    started: Instant,
    events: &mpsc::Sender<MediaEvent>,
    moves: mpsc::Sender<Command>,
    leftovers: &std::sync::Mutex<Leftovers>,
) -> Result<Option<Established>, MediaError> {
    let Parts {
        cfg,
        identity,
        agent,
        role,
        socket,
        app,
        credentials,
        clock,
        plan,
    } = *parts;

    // The call's non-STUN packets until its fast path is routed.
    let (slow, slow_path_key): (_, String);
    // An ICE-lite call answers checks (consent too) for as long as it runs.
    let mut responder = None;
    // ICE, or the remote address of an SDES call without ICE; the agent that selected the pair.
    let (conn, remote, checked): (Arc<dyn Conn + Send + Sync>, SocketAddr, _) =
        match (&agent, &plan.remote_ice) {
            (Some(agent), Some(ice)) => {
                // Before the first check: the peer may start DTLS as soon as its side connects.
                slow_path_key = credentials.0.clone();
                slow = socket.slow_path(&slow_path_key);
                // Set-up futures are boxed: held inline they would size the call's task for its
                // whole life.
                let checks = Box::pin(connect_ice(
                    agent.clone(),
                    role,
                    ice,
                    &cfg,
                    &socket,
                    credentials.clone(),
                    leftovers,
                ));
                let (agent, conn, ice_role) = tokio::select! {
                    r = checks => r?,
                    () = clock.stopped() => return Ok(None),
                };
                let (local, remote) = agent
                    .get_selected_candidate_pair()
                    .map(|p| (p.local.addr(), p.remote.addr()))
                    .ok_or_else(|| {
                        MediaError::Peer("ICE connected without a selected pair".into())
                    })?;
                let _ = events
                    .send(MediaEvent::IceConnected(Box::new(IceConnected {
                        local,
                        remote,
                        role: ice_role,
                        elapsed: started.elapsed(),
                    })))
                    .await;
                // While the keys are agreed the agent may still switch pairs (a peer's nomination):
                // the route follows.
                let poke = clock.clone();
                agent.on_selected_candidate_pair_change(Box::new(move |_, remote| {
                    let _ = moves.try_send(Command::Moved(remote.addr()));
                    poke.poke();
                    Box::pin(async {})
                }));
                (conn, remote, Some((agent, ice_role, ice)))
            }
            (None, Some(ice)) if role == IceRole::Lite => {
                slow_path_key = credentials.0.clone();
                slow = socket.slow_path(&slow_path_key);
                let conn = socket.ufrag_conn(&credentials.0);
                let (answering, mut nominated) = crate::lite::respond(
                    socket.clone(),
                    conn,
                    credentials.clone(),
                    ice.ufrag.clone(),
                );
                responder = Some(answering);
                let remote = tokio::select! {
                    r = tokio::time::timeout(SET_UP_TIMEOUT, nominated.recv()) => match r {
                        Ok(Some(remote)) => remote,
                        _ => return Err(MediaError::Timeout(
                            "ICE-lite: the peer nominated no pair in 10 s".into(),
                        )),
                    },
                    () = clock.stopped() => return Ok(None),
                };
                let _ = events
                    .send(MediaEvent::IceConnected(Box::new(IceConnected {
                        local: socket.local_addr(),
                        remote,
                        role,
                        elapsed: started.elapsed(),
                    })))
                    .await;
                set_routed(leftovers, remote);
                (socket.lite_target(&credentials.0, remote), remote, None)
            }
            (None, _) => {
                let remote = plan
                    .remote_rtp
                    .ok_or_else(|| MediaError::Peer("no remote media address in the SDP".into()))?;
                set_routed(leftovers, remote);
                slow_path_key = plain_key(remote);
                slow = socket.slow_path(&slow_path_key);
                (socket.plain_conn(remote), remote, None)
            }
            (Some(_), None) => {
                return Err(MediaError::Local(
                    "prepared for ICE but the plan has no remote ICE agent".into(),
                ))
            }
        };

    // Until the fast path is routed, the slow path's reader hands DTLS records to the endpoint and
    // keeps the first SRTP packets for the inbound context.
    let (dtls_tx, dtls_rx) = mpsc::channel::<Vec<u8>>(32);
    let (early_tx, mut early_rx) = mpsc::channel::<Vec<u8>>(EARLY_PACKETS);
    let reader = tokio::spawn(slow_path_reader(slow, dtls_tx, early_tx));

    let secured = Box::pin(async {
        match &plan.keying {
            Keying::Dtls { fingerprint, role } => {
                dtls_keys(
                    conn.clone(),
                    dtls_rx,
                    &identity,
                    fingerprint,
                    *role,
                    &cfg.dtls_profiles,
                )
                .await
            }
            Keying::Sdes {
                suite,
                local_key,
                remote_key,
                ..
            } => {
                let profile = srtp_profile_of_suite(*suite);
                let (outbound, inbound) = contexts(
                    profile,
                    (&local_key[..16], &local_key[16..30]),
                    (&remote_key[..16], &remote_key[16..30]),
                )?;
                Ok(Keys {
                    outbound,
                    inbound,
                    profile: suite.name(),
                })
            }
            Keying::Plain => Err(MediaError::Local(
                "plain RTP is for PBX legs, not this media session".into(),
            )),
        }
    });
    let keys = tokio::select! {
        r = tokio::time::timeout(SET_UP_TIMEOUT, secured) => match r {
            Ok(k) => k?,
            Err(_) => {
                return Err(MediaError::Timeout(
                    "DTLS handshake did not finish in 10 s".into(),
                ))
            }
        },
        () = clock.stopped() => return Ok(None),
    };
    // The SRTP contexts go straight to the heap, each with its direction's state: nothing of the
    // keys is held in the call's task across an await.
    let Keys {
        outbound,
        inbound,
        profile,
    } = keys;
    let app = Arc::new(app);
    let counters = Arc::new(InboundCounters::default());
    let payloads = PayloadMap {
        remote_audio: plan.audio_pt,
        remote_dtmf: plan.dtmf_pt,
    };
    let mut route = Box::new(InboundRoute {
        srtp: inbound,
        app: app.clone(),
        sink: cfg.sink,
        payloads,
        counters: counters.clone(),
        local_ssrc: ssrc,
        epoch: started,
        first_rtp: Some(events.clone()),
        reception: Reception::default(),
    });
    let out = Box::new(Outbound {
        app,
        clock,
        sink: cfg.sink,
        socket: socket.clone(),
        remote,
        srtp: outbound,
        ssrc,
        audio_pt: plan.audio_pt,
        payloads,
        speak_first: cfg.speak_first,
    });
    let _ = events
        .send(MediaEvent::SecureUp {
            profile,
            elapsed: started.elapsed(),
        })
        .await;
    while let Ok(mut packet) = early_rx.try_recv() {
        route.handle(&mut packet, Instant::now());
    }
    socket.add_route(remote, route).await;
    set_routed(leftovers, remote);
    drop(conn);
    // Routed: the slow path has nothing left to deliver (the DTLS connection is gone with its
    // keys, RTP takes the fast path), so its reader and channels go; what still arrives there is
    // dropped.
    socket.close_slow_path(&slow_path_key);
    reader.abort();
    drop(early_rx);

    // Set up: the agent goes, and consent is kept on the selected pair without it (consent.rs).
    let consent = match checked {
        Some((checking, ice_role, ice)) => {
            if let Ok(mut l) = leftovers.lock() {
                l.agent = None;
            }
            let _ = checking.close().await;
            drop((checking, agent));
            let freshness = Freshness::new(
                Instant::now(),
                IceCredentials {
                    ufrag: credentials.0.clone(),
                    pwd: credentials.1.clone(),
                },
                IceCredentials {
                    ufrag: ice.ufrag.clone(),
                    pwd: ice.pwd.clone(),
                },
                ice_role == IceRole::Controlling,
                cfg.consent_timeout,
            );
            let conn = socket.ufrag_conn(&credentials.0);
            Some(consent::keep(
                socket.clone(),
                conn,
                remote,
                freshness,
                events.clone(),
            ))
        }
        None => None,
    };

    Ok(Some(Established {
        out,
        counters,
        _consent: consent,
        _responder: responder,
    }))
}

fn set_routed(leftovers: &std::sync::Mutex<Leftovers>, remote: SocketAddr) {
    if let Ok(mut l) = leftovers.lock() {
        l.remote = Some(remote);
    }
}

async fn dtls_keys(
    conn: Arc<dyn Conn + Send + Sync>,
    dtls_rx: mpsc::Receiver<Vec<u8>>,
    identity: &Identity,
    expected: &Fingerprint,
    role: DtlsRole,
    profiles: &[SrtpProfile],
) -> Result<Keys, MediaError> {
    let expected_bytes = expected.bytes.clone();
    let config = DtlsConfig {
        certificates: vec![identity.certificate.clone()],
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
    })
}

/// Runs the connectivity checks until a pair is selected. When the peer wins a role conflict (role.rs:
/// by the tie-breakers or by answering 487), webrtc-ice cannot switch roles, so the agent is made again
/// in the other role with the same credentials and candidates, once.
async fn connect_ice(
    mut agent: Arc<Agent>,
    mut role: IceRole,
    ice: &RemoteIce,
    cfg: &MediaConfig,
    socket: &Arc<MediaSocket>,
    credentials: (String, String),
    leftovers: &std::sync::Mutex<Leftovers>,
) -> Result<(Arc<Agent>, Arc<dyn Conn + Send + Sync>, IceRole), MediaError> {
    let mut conflicts = socket.watch_role_conflicts(&credentials.0, &credentials.1, &ice.pwd);
    let deadline = tokio::time::Instant::now() + SET_UP_TIMEOUT;
    let mut switched = false;
    loop {
        for c in &ice.candidates {
            let line = format!(
                "{} {} udp {} {} {} typ {}",
                c.foundation,
                c.component,
                c.priority,
                c.address.ip(),
                c.address.port(),
                c.typ
            );
            match unmarshal_candidate(&line) {
                Ok(candidate) => {
                    let candidate: Arc<dyn Candidate + Send + Sync> = Arc::new(candidate);
                    let _ = agent.add_remote_candidate(&candidate);
                }
                Err(e) => debug!("remote candidate {line:?} skipped: {e}"),
            }
        }
        let (_cancel_tx, cancel_rx) = mpsc::channel(1);
        let (ufrag, pwd) = (ice.ufrag.clone(), ice.pwd.clone());
        let checking = agent.clone();
        let connected = async move {
            let conn: Arc<dyn Conn + Send + Sync> = if role == IceRole::Controlling {
                checking.dial(cancel_rx, ufrag, pwd).await?
            } else {
                checking.accept(cancel_rx, ufrag, pwd).await?
            };
            Ok::<_, webrtc_ice::Error>(conn)
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline, connected) => {
                let conn = r
                    .map_err(|_| MediaError::Timeout("ICE: no candidate pair answered in 10 s".into()))?
                    .map_err(|e| MediaError::Peer(format!("ICE: {e}")))?;
                return Ok((agent, conn, role));
            }
            Some(()) = conflicts.recv(), if !switched => {
                switched = true;
                role = match role {
                    IceRole::Controlling => IceRole::Controlled,
                    _ => IceRole::Controlling,
                };
                debug!("ICE role conflict lost to the peer: continuing {}", role.name());
                let _ = agent.close().await;
                agent = ice_agent(cfg, socket, role, Some(credentials.clone())).await?.0;
                if let Ok(mut l) = leftovers.lock() {
                    l.agent = Some(agent.clone());
                }
            }
        }
    }
}

/// The slow path's reader: DTLS records to the DTLS endpoint (the handshake's; later ones find it
/// gone and are dropped), and SRTP that arrives before the fast path is routed kept for it.
async fn slow_path_reader(
    mut slow: mpsc::Receiver<Vec<u8>>,
    dtls_tx: mpsc::Sender<Vec<u8>>,
    early_tx: mpsc::Sender<Vec<u8>>,
) {
    while let Some(packet) = slow.recv().await {
        match classify(&packet) {
            PacketKind::Dtls => {
                let _ = dtls_tx.try_send(packet);
            }
            PacketKind::Rtp => {
                let _ = early_tx.try_send(packet);
            }
            PacketKind::Stun | PacketKind::Other => {}
        }
    }
}

/// The call's outbound side: the sink's packets it reads, where and how they go.
struct Outbound {
    app: Arc<UdpSocket>,
    clock: Arc<SinkClock>,
    sink: SocketAddr,
    socket: Arc<MediaSocket>,
    remote: SocketAddr,
    srtp: SrtpContext,
    ssrc: u32,
    audio_pt: u8,
    payloads: PayloadMap,
    speak_first: bool,
}

async fn write_loop(
    mut out: Box<Outbound>,
    mut commands: mpsc::Receiver<Command>,
    inbound: &InboundCounters,
    started: Instant,
    events: mpsc::Sender<MediaEvent>,
    leftovers: &std::sync::Mutex<Leftovers>,
) -> Result<(), MediaError> {
    let mut target = out.socket.target(out.remote);
    let mut restamper = Restamper::new(out.ssrc, rand::random(), rand::random());
    let mut stats = Stats::default();
    let mut buf = [0u8; MTU + TAG_ROOM];
    let mut silence = [0u8; 15];
    // Our own frames (silence, DTMF) every 20 ms on our own timer; while the sink speaks, the task
    // sleeps on the sink socket alone and the socket's sweep wakes it when the sink goes quiet, a
    // report is due or a command came (quiet.rs): a relayed packet wakes it for its packet only.
    let tick = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(tick);
    let mut own_timer = true;
    let clock = out.clock.clone();
    // The first report soon (RFC 3550 §6.2 halves the first interval; we start at 1 s), so that
    // even a short call learns its round-trip time.
    let mut next_report = Instant::now() + FIRST_RTCP;
    let mut last_from_sink: Option<Instant> = None;
    let mut first = true;
    let mut dtmf: Option<DtmfSender> = None;
    let mut dtmf_queue: std::collections::VecDeque<DtmfSender> =
        std::collections::VecDeque::with_capacity(16);
    let payloads = out.payloads;
    let (app, sink) = (out.app.clone(), out.sink);
    let speak_first = out.speak_first;
    let may_speak = |inbound: &InboundCounters| {
        speak_first || inbound.packets.load(std::sync::atomic::Ordering::Relaxed) > 0
    };
    loop {
        let packet_len = tokio::select! {
            biased;
            r = app.recv_from(&mut buf[..MTU]) => {
                let (n, from) = match r {
                    Ok(x) => x,
                    // An ICMP port-unreachable from a sink that is restarting: not the call's end.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(MediaError::Local(format!("sink socket: {e}"))),
                };
                if from != sink {
                    stats.strangers += 1;
                    continue;
                }
                let now = Instant::now();
                // While a key is being sent, its events replace the sink's audio.
                if dtmf.is_some() || !payloads.to_remote(&mut buf[..n]) || !restamper.restamp(&mut buf[..n], now) {
                    continue;
                }
                last_from_sink = Some(now);
                clock.heard(now);
                n
            }
            () = clock.woken(), if !own_timer => {
                own_timer = true;
                tick.as_mut().reset(tokio::time::Instant::now());
                continue;
            }
            () = &mut tick, if own_timer => {
                if clock.is_stopping() {
                    stats.take_inbound(inbound);
                    let _ = events.try_send(MediaEvent::Stats(Box::new(stats.clone())));
                    return Ok(());
                }
                let now = Instant::now();
                let on_time = tick.deadline() + FRAME;
                tick.as_mut().reset(on_time.max(tokio::time::Instant::now()));
                while let Ok(command) = commands.try_recv() {
                    match command {
                        Command::Dtmf(d) if dtmf_queue.len() < 16 => dtmf_queue.push_back(d),
                        Command::Dtmf(_) => {}
                        Command::Moved(moved) if moved != out.remote => {
                            out.socket.move_route(out.remote, moved).await;
                            out.remote = moved;
                            set_routed(leftovers, moved);
                            target = out.socket.target(moved);
                        }
                        Command::Moved(_) => {}
                    }
                }
                if now >= next_report && may_speak(inbound) {
                    next_report = now + RTCP_INTERVAL;
                    let me = SenderInfo {
                        ssrc: out.ssrc,
                        rtp_timestamp: restamper.now_ts(now),
                        packets: stats.packets_out as u32,
                        octets: stats.bytes_out as u32,
                    };
                    let mut report = [0u8; 64 + TAG_ROOM];
                    let n = sender_report(&me, inbound, started, now, &mut report);
                    if let Ok(n) = out.srtp.protect_rtcp(&mut report, n) {
                        let _ = out.socket.socket().send_to(&report[..n], target).await;
                    }
                    stats.take_inbound(inbound);
                    let _ = events.try_send(MediaEvent::Stats(Box::new(stats.clone())));
                }
                if dtmf.is_none() {
                    dtmf = dtmf_queue.pop_front();
                }
                if let (Some(d), Some(pt)) = (dtmf.as_mut(), payloads.remote_dtmf) {
                    let next = d.next(restamper.now_ts(now));
                    if d.done() {
                        dtmf = None;
                    }
                    if let Some(p) = next {
                        let n = restamper.own_packet(pt, p.marker, p.timestamp, &p.payload, &mut buf[..MTU], now);
                        stats.dtmf_out += 1;
                        n
                    } else {
                        continue;
                    }
                } else if last_from_sink.is_some_and(|t| now.duration_since(t) < SINK_SILENCE) {
                    own_timer = false;
                    clock.watch(next_report);
                    continue;
                } else {
                    let n = restamper.silence(out.audio_pt, &mut silence, now);
                    buf[..n].copy_from_slice(&silence[..n]);
                    stats.silence_out += 1;
                    n
                }
            }
        };
        // With speak_first off, nothing goes out before the far side's first packet.
        if first && !may_speak(inbound) {
            continue;
        }
        let protected = out
            .srtp
            .protect_rtp(&mut buf, packet_len)
            .map_err(|e| MediaError::Local(format!("SRTP protect: {e}")))?;
        if out
            .socket
            .socket()
            .send_to(&buf[..protected], target)
            .await
            .is_ok()
        {
            stats.packets_out += 1;
            stats.bytes_out += packet_len as u64;
            if first {
                first = false;
                let _ = events
                    .send(MediaEvent::FirstRtpOut {
                        elapsed: started.elapsed(),
                    })
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_is_checked_every_5_s_and_expires_after_the_timeout() {
        let secs = Duration::from_secs;
        let pacing = ConsentPacing::of(secs(30));
        assert_eq!(pacing.interval, secs(5), "RFC 7675 §5.1");
        assert_eq!(pacing.disconnected, secs(11), "two checks unanswered");
        assert_eq!(pacing.disconnected + pacing.failed, secs(30));
        // A short timeout (tests, `media` CLI) still gets two checks before it.
        let short = ConsentPacing::of(secs(3));
        assert_eq!(short.interval, Duration::from_millis(1500));
        assert_eq!(short.disconnected, secs(3));
        assert_eq!(
            short.failed,
            secs(1),
            "webrtc-ice needs a non-zero failed timeout"
        );
    }
}
