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
//!
//! This file owns the call's life (`Prepared`, `MediaSession`, the set-up sequence); ICE is in
//! `ice.rs`, the DTLS identity in `identity.rs`, SRTP keys in `keys.rs`, the outbound fast path
//! and RTCP sender reports in `outbound.rs`, consent after set-up in `consent.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
pub use watrunk_sdp::IceRole;
use watrunk_sdp::{Capabilities, LocalMedia};
use watrunk_sdp::{Fingerprint, Keying, MediaPlan};
use webrtc_ice::agent::Agent;
use webrtc_util::Conn;

use crate::consent::{self, Freshness, IceCredentials};
use crate::dtmf::DtmfSender;
use crate::ice::{connect_ice, ice_agent, lite_credentials, CHECK_INTERVAL};
pub use crate::identity::Identity;
use crate::keys::{
    contexts, dtls_keys, srtp_profile_of_suite, KeyLogHook, KeyMaterial, Keys, LoggedKeys, SinkKeys,
};
use crate::mux::{plain_key, Handover, MediaSocket, SlowPath};
use crate::outbound::{write_loop, Outbound, SinkCheck};
use crate::quiet::SinkClock;
use crate::relay::{InboundCounters, InboundRoute, Reception, SinkProtect};
use crate::restamp::{PayloadMap, SinkPayloads};
use crate::srtp::SrtpProfile;
use crate::transcode::{FromSink, SinkAudio, ToSink};
use crate::MediaError;

pub(crate) const SET_UP_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const RTCP_INTERVAL: Duration = Duration::from_secs(5);
pub(crate) const FIRST_RTCP: Duration = Duration::from_secs(1);
/// The sink counts as silent after this long without a packet; we fill in with silence frames.
pub(crate) const SINK_SILENCE: Duration = Duration::from_millis(60);
/// The loss toward the far side that the Opus we encode from a G.711 sink carries FEC for.
const SINK_FEC_LOSS_PERCENT: u8 = 10;

fn local_error(e: crate::transcode::TranscodeError) -> MediaError {
    MediaError::Local(e.to_string())
}
pub(crate) const MTU: usize = 1500;
/// Room after a packet for the SRTP tag (or SRTCP's tag and index).
pub(crate) const TAG_ROOM: usize = 32;

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
    /// L already bound, instead of `app_bind` (a bridged call announced it to the PBX before its
    /// media was prepared).
    pub app_socket: Option<Arc<std::net::UdpSocket>>,
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
    /// Seeds this call's random values (ICE-lite credentials, the consent tie-breaker and
    /// jitter, the first sequence number and timestamp): the owner draws it, the binary from
    /// the OS.
    pub seed: u64,
    /// Send our first packet as soon as the keys exist (WhatsApp: the business speaks first).
    /// Off, nothing is sent before the far side's first packet arrived (Meta's side, `watrunk sim`).
    pub speak_first: bool,
    /// What the sink speaks: Opus (relayed as it is) or G.711 (transcoded both ways).
    pub sink_audio: SinkAudio,
    /// The payload types the sink uses for Opus and telephone-event.
    pub sink_payloads: SinkPayloads,
    /// Report `SinkQuiet` each time the sink has sent nothing for this long (a PBX's RTP timeout);
    /// None: a quiet sink is no news.
    pub sink_timeout: Option<Duration>,
    /// End the call's media (`MediaEvent::Failed` with a timeout) once the far side has sent no
    /// RTP for this long after set-up: a far side that vanished without a BYE. None: never.
    pub rtp_timeout: Option<Duration>,
    /// The sink speaks SRTP with these SDES keys (a PBX leg on RTP/SAVP); None: plain RTP.
    pub sink_keys: Option<SinkKeys>,
    /// Symmetric RTP (a PBX behind NAT): after the start and each retarget, the source of the
    /// first valid packet of the sink's becomes where the sink's audio goes and the only source
    /// taken. Off, only `sink` is heard and sent to.
    pub sink_latch: bool,
    /// Opt-in key log (`--key-log`): told the call's SRTP keys once they exist. None: the keys
    /// never leave the SRTP contexts.
    pub key_log: Option<KeyLogHook>,
}

impl MediaConfig {
    pub fn new(media_ip: IpAddr, app_bind: SocketAddr, sink: SocketAddr, seed: u64) -> MediaConfig {
        MediaConfig {
            media_ip,
            media_ip6: None,
            public_ip: None,
            stun_server: None,
            include_loopback: media_ip.is_loopback(),
            app_bind,
            app_socket: None,
            sink,
            check_interval: CHECK_INTERVAL,
            consent_timeout: Duration::from_secs(30),
            dtls_profiles: vec![SrtpProfile::AeadAes128Gcm, SrtpProfile::AesCm128HmacSha1_80],
            speak_first: true,
            sink_audio: SinkAudio::Opus,
            sink_payloads: SinkPayloads::default(),
            sink_timeout: None,
            rtp_timeout: None,
            sink_keys: None,
            sink_latch: false,
            key_log: None,
            seed,
        }
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
    /// The sink has sent nothing for `MediaConfig::sink_timeout` (again, each time it passes).
    SinkQuiet(Duration),
    /// Symmetric RTP: the sink's RTP comes from `source`, not the `announced` address, and its
    /// audio now goes there.
    SinkLatched {
        announced: SocketAddr,
        source: SocketAddr,
    },
    /// A key the far side sent (RFC 4733), reported once at the end of its event, with its
    /// duration.
    DtmfReceived {
        key: char,
        duration: Duration,
    },
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
    /// SRTP packets from a sink that speaks SRTP that failed authentication or replay checks.
    pub sink_rejected: u64,
    /// Toward a transcoded sink: packets the reorder buffer held behind a hole, the longest hold,
    /// and packets that came after their place had gone (dropped).
    pub reordered: u64,
    pub reorder_max_us: u64,
    pub reorder_late: u64,
    /// Inbound packets the far side sent that never arrived (RFC 3550 A.3).
    pub lost: i64,
    /// Inbound interarrival jitter (RFC 3550 A.8), in µs.
    pub jitter_us: u64,
    /// Round-trip time from the far side's RTCP report on our stream, once it sent one.
    pub rtt_us: Option<u64>,
}

impl Stats {
    pub(crate) fn take_inbound(&mut self, counters: &InboundCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        self.packets_in = counters.packets.load(Relaxed);
        self.bytes_in = counters.bytes.load(Relaxed);
        self.srtp_rejected = counters.rejected.load(Relaxed);
        self.reordered = counters.reordered.load(Relaxed);
        self.reorder_max_us = counters.reorder_max_us.load(Relaxed);
        self.reorder_late = counters.reorder_late.load(Relaxed);
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
    draws: Draws,
}

/// A call's random values, drawn once from its seed (`MediaConfig::seed`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Draws {
    pub(crate) tie_breaker: u64,
    /// Seeds the consent interval's jitter.
    pub(crate) jitter: u64,
    pub(crate) first_seq: u16,
    pub(crate) first_ts: u32,
}

impl Draws {
    fn from(rng: &mut StdRng) -> Draws {
        Draws {
            tie_breaker: rng.gen(),
            jitter: rng.gen::<u64>() | 1,
            first_seq: rng.gen(),
            first_ts: rng.gen(),
        }
    }
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
    draws: Draws,
    /// Opened before the call's task runs, so the far side's first packets find it.
    opening: Opening,
}

/// Where a call's packets go until its fast path is routed.
struct Opening {
    slow: SlowPath,
    slow_path_key: String,
    /// A call without ICE: its one remote address, and the connection toward it.
    plain: Option<(SocketAddr, Arc<dyn Conn + Send + Sync>)>,
}

/// What a call leaves on the shared socket until whoever ends it clears it.
#[derive(Default)]
pub(crate) struct Leftovers {
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) agent: Option<Arc<Agent>>,
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
        let app = match &cfg.app_socket {
            Some(bound) => bound
                .try_clone()
                .and_then(|s| {
                    s.set_nonblocking(true)?;
                    UdpSocket::from_std(s)
                })
                .map_err(|e| MediaError::Local(format!("the local RTP port: {e}")))?,
            None => UdpSocket::bind(cfg.app_bind)
                .await
                .map_err(|e| MediaError::Local(format!("bind {}: {e}", cfg.app_bind)))?,
        };
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let draws = Draws::from(&mut rng);
        if matches!(role, IceRole::None | IceRole::Lite) {
            let port = socket.local_addr().port();
            let (ufrag, pwd, candidates) = if role == IceRole::Lite {
                let (ufrag, pwd) = lite_credentials(&mut rng);
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
                draws,
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
            draws,
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

    /// The call's slow path, and for a call without ICE its connection: the slow path first, so
    /// no packet finds the connection without it.
    fn open(&self, plan: &MediaPlan) -> Opening {
        let lite = plan.remote_ice.is_some() && self.role == IceRole::Lite;
        match plan.remote_rtp {
            Some(remote) if self.agent.is_none() && !lite => {
                let slow_path_key = plain_key(remote);
                Opening {
                    slow: self.socket.slow_path(&slow_path_key),
                    slow_path_key,
                    plain: Some((remote, self.socket.plain_conn(remote))),
                }
            }
            _ => Opening {
                slow: self.socket.slow_path(&self.ufrag),
                slow_path_key: self.ufrag.clone(),
                plain: None,
            },
        }
    }

    /// Starts the media for `plan`; `ssrc` is the one outbound SSRC announced in our SDP.
    pub fn start(mut self, plan: MediaPlan, ssrc: u32) -> MediaSession {
        let (events_tx, events_rx) = mpsc::channel(64);
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let app_addr = self.app_addr();
        let dtmf_negotiated = plan.dtmf_pt.is_some();
        let opening = self.open(&plan);
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
            opening,
            plan,
            draws: self.draws,
        });
        let clock = parts.clock.clone();
        let moves_tx = commands_tx.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let socket = parts.socket.clone();
            let ufrag = parts.credentials.0.clone();
            let role = parts.role;
            let leftovers = std::sync::Mutex::new(Leftovers {
                remote: parts.opening.plain.as_ref().map(|(remote, _)| *remote),
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

pub struct MediaSession {
    pub events: mpsc::Receiver<MediaEvent>,
    commands: mpsc::Sender<Command>,
    /// Wakes the call's task for a command while it sleeps on its sink.
    clock: Arc<SinkClock>,
    dtmf_negotiated: bool,
    task: tokio::task::JoinHandle<()>,
    app_addr: SocketAddr,
}

pub(crate) enum Command {
    Dtmf(DtmfSender),
    /// The sink moved, or changed its codec or keys (a PBX's re-offer).
    Retarget(Box<Sink>),
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

    /// The sink is now `sink` (a PBX that moved its media, or changed its codec or keys): both
    /// directions follow from the next packet on.
    pub fn retarget(&self, sink: Sink) -> Result<(), MediaError> {
        self.commands
            .try_send(Command::Retarget(Box::new(sink)))
            .map_err(|_| MediaError::Local("media command queue full or call ended".into()))?;
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

/// Where the sink is, what it speaks, and with which keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sink {
    pub addr: SocketAddr,
    pub audio: SinkAudio,
    pub payloads: SinkPayloads,
    pub keys: Option<SinkKeys>,
}

/// The transcoders for a sink speaking `audio` (none for Opus): the far side's Opus toward it, and
/// its audio toward the far side.
pub(crate) type Transcoders = (Option<Box<ToSink>>, Option<Box<FromSink>>);

pub(crate) fn transcoders(audio: SinkAudio) -> Result<Transcoders, MediaError> {
    Ok(match audio.transcoded() {
        None => (None, None),
        Some(codec) => (
            Some(Box::new(ToSink::new(codec).map_err(local_error)?)),
            Some(Box::new(
                FromSink::new(codec, SINK_FEC_LOSS_PERCENT).map_err(local_error)?,
            )),
        ),
    })
}

/// For a sink that speaks SRTP (`keys`): what protects the packets toward it, and what checks
/// the packets it sends, with the keys they came from.
pub(crate) fn sink_srtp(
    keys: Option<SinkKeys>,
) -> Result<(Option<Box<SinkProtect>>, Option<SinkCheck>), MediaError> {
    let Some(keys) = keys else {
        return Ok((None, None));
    };
    let (protect, check) = keys.contexts()?;
    Ok((
        Some(SinkProtect::new(protect)),
        Some(SinkCheck {
            keys,
            srtp: Box::new(check),
        }),
    ))
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
        draws,
        opening: Opening {
            slow,
            slow_path_key,
            plain,
        },
    } = *parts;

    // An ICE-lite call answers checks (consent too) for as long as it runs.
    let mut responder = None;
    // ICE, or the remote address of an SDES call without ICE; the agent that selected the pair.
    let (conn, remote, checked): (Arc<dyn Conn + Send + Sync>, SocketAddr, _) =
        match (&agent, &plan.remote_ice) {
            (Some(agent), Some(ice)) => {
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
                let (remote, conn) = plain
                    .ok_or_else(|| MediaError::Peer("no remote media address in the SDP".into()))?;
                (conn, remote, None)
            }
            (Some(_), None) => {
                return Err(MediaError::Local(
                    "prepared for ICE but the plan has no remote ICE agent".into(),
                ))
            }
        };

    // Until the fast path is routed, the slow path hands DTLS records to the endpoint and keeps the
    // first SRTP packets for the route.
    let SlowPath {
        dtls: dtls_rx,
        early,
    } = slow;

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
                    cfg.key_log.is_some(),
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
                let logged = cfg.key_log.as_ref().map(|_| {
                    Box::new(KeyMaterial {
                        profile,
                        outbound: local_key[..30].to_vec(),
                        inbound: remote_key[..30].to_vec(),
                        dtls: None,
                    })
                });
                Ok(Keys {
                    outbound,
                    inbound,
                    profile: suite.name(),
                    logged,
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
        logged,
    } = keys;
    if let (Some(hook), Some(keys)) = (&cfg.key_log, logged) {
        let local = socket.local_addr();
        let local_ip = match local.ip() {
            // A socket on every address (dual stack): the address of ours the far side sends to.
            ip if ip.is_unspecified() => match (remote.ip(), cfg.media_ip6) {
                (IpAddr::V6(_), Some(ip6)) => ip6,
                _ => cfg.media_ip,
            },
            ip => ip,
        };
        (hook.0)(&LoggedKeys {
            local: SocketAddr::new(local_ip, local.port()),
            remote,
            keys: &keys,
        });
    }
    let app = Arc::new(app);
    let counters = Arc::new(InboundCounters::default());
    let payloads = PayloadMap {
        remote_audio: plan.audio_pt,
        remote_dtmf: plan.dtmf_pt,
        sink: cfg.sink_payloads,
    };
    let (to_sink, from_sink) = transcoders(cfg.sink_audio)?;
    let (sink_protect, sink_check) = sink_srtp(cfg.sink_keys)?;
    let route = Box::new(InboundRoute {
        srtp: inbound,
        to_sink,
        app: app.clone(),
        sink: cfg.sink,
        sink_protect,
        payloads,
        counters: counters.clone(),
        local_ssrc: ssrc,
        epoch: started,
        first_rtp: Some(events.clone()),
        dtmf: (payloads.remote_dtmf.is_some()).then(|| (events.clone(), Default::default())),
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
        sink_timeout: cfg.sink_timeout,
        rtp_timeout: cfg.rtp_timeout,
        sink_check,
        sink_latch: cfg.sink_latch,
        from_sink,
        first_seq: draws.first_seq,
        first_ts: draws.first_ts,
    });
    let _ = events
        .send(MediaEvent::SecureUp {
            profile,
            elapsed: started.elapsed(),
        })
        .await;
    // Routed: the slow path has nothing left to deliver (the DTLS connection is gone with its
    // keys, RTP takes the fast path), so the socket's reader closes it as it installs the route;
    // what still arrives there is dropped.
    socket
        .add_route(
            remote,
            route,
            Handover {
                slow_path_key,
                early,
            },
        )
        .await;
    set_routed(leftovers, remote);
    drop(conn);

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
                draws,
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

pub(crate) fn set_routed(leftovers: &std::sync::Mutex<Leftovers>, remote: SocketAddr) {
    if let Ok(mut l) = leftovers.lock() {
        l.remote = Some(remote);
    }
}
