//! `watrunk sim load`: Meta at scale. N concurrent WhatsApp-user calls, each as `sim call` places
//! it (its own TLS connection, Meta's INVITE, the 407 answered, an ICE-lite DTLS or SDES offer, its
//! own media socket), with Opus-sized packets at 50 per second each way. The agent's side is this
//! process too (`--sink`, which the relay under test sends every call's plain RTP to): it echoes
//! each packet, so both ends of the path share one clock and every packet carries its own
//! timestamps (sent by "Meta", echoed by the agent). Set-up runs in a task per call; the packets
//! of all calls run on two threads (`engine`: Meta's side, SRTP in place on each call's socket,
//! and the agent's side, batched), so that the generator costs less than the relay it measures. The same load can go through rtpengine's
//! userspace relay (ng protocol) or a bare UDP relay (`sim bare-relay`) as references in the same
//! run. One `sim.load` JSON line reports set-up times, loss, one-way latency and jitter (p50, p99,
//! max) and, over a measurement window at full load, the relay's and this generator's CPU per
//! relayed packet and the relay's resident memory per call.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use watrunk_media::srtp::{SrtpContext, SrtpProfile};
use watrunk_media::{dtls_srtp_over_udp, Identity, MediaEvent, MediaSession};
use watrunk_sdp::{self as sdp, Capabilities, Keying, LocalMedia, MediaPlan, SdesSuite, Security};
use watrunk_sip::{new_tag, Dialog, Message, Method, Response};

use super::engine::{self, agent_side, Command, Engine, Ice, Keys};
use super::link::Link;
use super::media::{MediaOptions, Relay};
use super::placed::{Incoming, Placing};
use super::uac::{self, Caller, Target};
use super::uas::{self, Gate, MediaFrom};
use super::{fork, BusinessAccess, Draws, SrtpMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Through {
    /// `watrunk serve` at --target, over SIP/TLS.
    Watrunk,
    /// rtpengine's userspace relay, driven over its ng protocol at --ng.
    Rtpengine,
    /// `watrunk sim bare-relay` at --relay: plain RTP, no SRTP (the kernel's UDP path alone).
    Bare,
}

/// Who calls whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// WhatsApp users call the business: Meta's INVITEs go to watrunk serve at --target.
    ToBusiness,
    /// The business calls WhatsApp users: each call is placed through watrunk's control API at
    /// --api, and its INVITE comes to this process, Meta's SIP server at --listen (watrunk's
    /// --meta-server).
    ToUser,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    #[arg(long, value_enum, default_value = "watrunk")]
    pub through: Through,
    #[arg(long, value_enum, default_value = "to-business")]
    pub direction: Direction,
    /// The business's SIP server (host[:port]), for --through watrunk.
    #[arg(long, default_value = "127.0.0.1:5061")]
    pub target: String,
    /// The business number: called, or calling with --direction to-user.
    #[arg(long, default_value = "+15550001111")]
    pub to: String,
    /// watrunk's control API, for --direction to-user.
    #[arg(long, default_value = "127.0.0.1:8061")]
    pub api: SocketAddr,
    /// Meta's SIP server as this process plays it (TLS), for --direction to-user.
    #[arg(long, default_value = "127.0.0.1:5062")]
    pub listen: SocketAddr,
    /// The host the business's INVITEs must carry in From (its --hostname), for --direction to-user.
    #[arg(long, default_value = "localhost")]
    pub business_host: String,
    /// Meta's TLS certificate and key (PEM), for --direction to-user; without them a self-signed
    /// certificate for the --listen address is made in --state-dir.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[arg(long, default_value_os_t = watrunk_sip::io::tls::default_state_dir().join("sim"))]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub access: BusinessAccess,
    /// rtpengine's ng control address, for --through rtpengine.
    #[arg(long, default_value = "127.0.0.1:2223")]
    pub ng: SocketAddr,
    /// The bare relay's address, for --through bare.
    #[arg(long, default_value = "127.0.0.1:4200")]
    pub relay: SocketAddr,
    /// The agent's side: the relay under test sends every call's plain RTP here.
    #[arg(long, default_value = "127.0.0.1:4100")]
    pub sink: SocketAddr,
    #[arg(long, default_value = "127.0.0.1")]
    pub media_ip: IpAddr,
    #[arg(long, value_enum, default_value = "dtls")]
    pub srtp: SrtpMode,
    /// Concurrent calls.
    #[arg(long, default_value_t = 100)]
    pub calls: usize,
    /// Calls placed in all (default: --calls).
    #[arg(long)]
    pub total: Option<usize>,
    /// Call set-ups started per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds each call lasts after its answer; 0: until the measurement window has closed.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// Seconds of full load measured (CPU, latency), after --settle.
    #[arg(long, default_value_t = 10.0)]
    pub window: f64,
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// The relay's process, whose CPU time and resident memory are measured.
    #[arg(long)]
    pub pid: Option<u32>,
    /// RTP payload bytes (an Opus frame of 20 ms at ~32 kbit/s is 80).
    #[arg(long, default_value_t = 80)]
    pub payload: usize,
    /// Seconds between `sim.load.interval` lines during the window (packets, loss, CPU and the
    /// kernel's UDP drop counters of that interval); 0: none.
    #[arg(long, default_value_t = 60.0)]
    pub report_every: f64,
    /// The agent side also sends back packets that carry no stamp, as they are (a relay that
    /// transcodes toward the agent rewrites the payloads the stamps ride in): the traffic keeps
    /// its rate both ways, but loss and latency can no longer be read.
    #[arg(long)]
    pub echo_unstamped: bool,
}

const PT: u8 = 111;
/// Starts with an Opus TOC byte (CELT fullband, 20 ms, one frame) so that the payload also decodes
/// as Opus: a relay that transcodes it carries it on.
const MAGIC: [u8; 4] = [0xf8, b'W', b'T', b'L'];
/// The payload's stamp: magic, call, sequence, sent (ns), echoed (ns).
const STAMP: usize = 28;
pub(crate) const SLOTS: u64 = 20;

/// One packet's stamp, read from an RTP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) call: u32,
    pub(crate) seq: u32,
    pub(crate) sent_ns: u64,
    pub(crate) echoed_ns: u64,
}

fn payload_offset(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    if first >> 6 != 2 {
        return None;
    }
    let mut offset = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = packet.get(offset + 2..offset + 4)?;
        offset += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (packet.len() >= offset + STAMP).then_some(offset)
}

pub(crate) fn read_stamp(packet: &[u8]) -> Option<(usize, Stamp)> {
    let at = payload_offset(packet)?;
    let p = &packet[at..at + STAMP];
    if p[..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap_or_default());
    let u64_at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().unwrap_or_default());
    Some((
        at,
        Stamp {
            call: u32_at(4),
            seq: u32_at(8),
            sent_ns: u64_at(12),
            echoed_ns: u64_at(20),
        },
    ))
}

pub(crate) fn write_packet(buf: &mut [u8], payload: usize, stamp: Stamp) -> usize {
    let len = 12 + payload.max(STAMP);
    buf[0] = 0x80;
    buf[1] = PT;
    buf[2..4].copy_from_slice(&(stamp.seq as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&stamp.seq.wrapping_mul(960).to_be_bytes());
    buf[8..12].copy_from_slice(&(0x5741_0000 ^ stamp.call).to_be_bytes());
    let p = &mut buf[12..len];
    p[..4].copy_from_slice(&MAGIC);
    p[4..8].copy_from_slice(&stamp.call.to_be_bytes());
    p[8..12].copy_from_slice(&stamp.seq.to_be_bytes());
    p[12..20].copy_from_slice(&stamp.sent_ns.to_be_bytes());
    p[20..28].copy_from_slice(&stamp.echoed_ns.to_be_bytes());
    p[28..].fill(0);
    len
}

/// One direction of one call: what arrived, by sequence range, and RFC 3550 interarrival jitter.
#[derive(Debug, Default, Clone)]
pub(crate) struct Flow {
    received: u64,
    min_seq: u32,
    max_seq: u32,
    jitter_ns: f64,
    last_transit_ns: Option<i64>,
}

impl Flow {
    /// Records one packet; returns how much it changed the count of lost packets (a gap before it
    /// adds, a late packet filling one takes away).
    pub(crate) fn record(&mut self, seq: u32, sent_ns: u64, now_ns: u64) -> i64 {
        let lost_before = self.lost() as i64;
        if self.received == 0 {
            self.min_seq = seq;
            self.max_seq = seq;
        }
        self.received += 1;
        self.min_seq = self.min_seq.min(seq);
        self.max_seq = self.max_seq.max(seq);
        let transit = now_ns as i64 - sent_ns as i64;
        if let Some(last) = self.last_transit_ns {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
        }
        self.last_transit_ns = Some(transit);
        self.lost() as i64 - lost_before
    }

    fn expected(&self) -> u64 {
        if self.received == 0 {
            0
        } else {
            u64::from(self.max_seq - self.min_seq) + 1
        }
    }

    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// Counters the packet tasks keep and the window reads (one writer each).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) meta_sent: AtomicU64,
    pub(crate) meta_received: AtomicU64,
    pub(crate) agent_received: AtomicU64,
    pub(crate) send_failed: AtomicU64,
    /// Packets missing from each direction's sequence ranges so far.
    pub(crate) lost_to_agent: AtomicI64,
    pub(crate) lost_to_meta: AtomicI64,
    /// Calls whose echo has come back at least once, and are still up.
    pub(crate) flowing: AtomicUsize,
    /// `--echo-unstamped`: packets without a stamp count as received too (and the agent sends
    /// them back).
    pub(crate) unstamped: AtomicBool,
}

/// The shared clock of both ends and the switch that opens the latency window.
pub(crate) struct Clock {
    pub(crate) epoch: Instant,
    pub(crate) measuring: AtomicBool,
}

impl Clock {
    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// A UDP socket with room for bursts (the default 208 KiB overflows at a few hundred calls).
fn roomy_socket(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    Ok(socket.into())
}

/// One call's set-up times from its first message (INVITE or ng offer), and how it ended.
#[derive(Debug, Default)]
struct CallRecord {
    answered_ms: Option<f64>,
    ice_ms: Option<f64>,
    secure_ms: Option<f64>,
    first_rtp_ms: Option<f64>,
    /// When the media came up, from the load's start (for the set-up rate).
    secure_at: Option<Duration>,
    /// The digest algorithm the business answered our challenge with (business-placed calls).
    digest: Option<String>,
    failure: Option<String>,
}

struct Shared {
    args: LoadArgs,
    target: Option<Target>,
    /// Meta's SIP server and watrunk's API, for business-placed calls.
    placing: Option<Arc<Placing>>,
    password: Option<String>,
    identity: Identity,
    options: MediaOptions,
    /// Meta's side of every call's packets.
    engine: std::sync::mpsc::Sender<Command>,
    /// Turns true when calls held "until the window closed" are to hang up.
    hang_up: watch::Receiver<bool>,
    started: Instant,
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// How a call's signalling goes on while its media runs, and how it is ended.
enum Signalling {
    Sip {
        link: Link,
        rx: mpsc::Receiver<Message>,
        dialog: Box<Dialog>,
    },
    Ng {
        call_id: String,
    },
    None,
}

impl Signalling {
    /// Answers in-dialog requests until the far side ends the call.
    async fn remote_end(&mut self) -> String {
        let Signalling::Sip { link, rx, .. } = self else {
            return std::future::pending().await;
        };
        loop {
            match rx.recv().await {
                None => return "the business closed the TLS connection".into(),
                Some(Message::Request(req)) if req.method == Method::ACK => {}
                Some(Message::Request(req)) => {
                    link.respond(&Response::to_request(&req, 200, "OK", None))
                        .await;
                    if req.method == Method::BYE {
                        return "the business hung up".into();
                    }
                }
                Some(Message::Response(_)) => {}
            }
        }
    }

    async fn end(self, ng: SocketAddr, duration: u64, rng: &mut Draws) {
        match self {
            Signalling::Sip {
                link,
                mut rx,
                mut dialog,
            } => {
                let _ =
                    uac::hang_up(&link, &mut rx, &mut dialog, duration, "user hung up", rng).await;
            }
            Signalling::Ng { call_id } => {
                let delete = NgCommand {
                    command: "delete",
                    call_id: &call_id,
                    ..NgCommand::default()
                };
                let _ = ng_request(ng, &delete, rng).await;
            }
            Signalling::None => {}
        }
    }
}

async fn run_call(shared: Arc<Shared>, call: u32, mut draws: Draws) -> CallRecord {
    let mut record = CallRecord::default();
    if let Err(e) = call_inner(&shared, call, &mut record, &mut draws).await {
        record.failure = Some(format!("{e:#}"));
    }
    record
}

async fn call_inner(
    shared: &Shared,
    call: u32,
    record: &mut CallRecord,
    rng: &mut Draws,
) -> Result<()> {
    let args = &shared.args;
    let t0 = Instant::now();
    let socket = engine::call_socket(args.media_ip)?;
    let _ = shared.engine.send(Command::Open {
        call,
        socket: socket.clone(),
    });
    let outcome = match (&shared.placing, args.through) {
        (_, Through::Bare) => bare_call(shared, call, record, t0, rng).await,
        (Some(placing), _) => placed_call(shared, placing, call, &socket, record, t0, rng).await,
        (None, _) => offered_call(shared, call, &socket, record, t0, rng).await,
    };
    let _ = shared.engine.send(Command::Close(call));
    outcome
}

/// A call Meta places (or rtpengine carries): our offer, its answer, then ICE-lite and DTLS (or
/// SDES keys) on the call's own socket, and the packets on the engine.
async fn offered_call(
    shared: &Shared,
    call: u32,
    socket: &Arc<std::net::UdpSocket>,
    record: &mut CallRecord,
    t0: Instant,
    rng: &mut Draws,
) -> Result<()> {
    let args = &shared.args;
    let security = match args.srtp {
        SrtpMode::Dtls => Security::Dtls,
        SrtpMode::Sdes => Security::Sdes,
    };
    let mut local = LocalMedia::for_capabilities(&Capabilities::whatsapp(security), rng)
        .with_candidates([socket.local_addr()?])
        .with_fingerprint(shared.identity.fingerprint().clone());
    if security == Security::Dtls {
        local.ice_lite = true;
    } else {
        local.ice_ufrag.clear();
        local.ice_pwd.clear();
    }
    let offer_state = sdp::offer(&local).map_err(|e| anyhow!("our offer: {e}"))?;
    let offer = sdp::print(offer_state.sdp());
    let (signalling, plan) = match args.through {
        Through::Watrunk => {
            let target = shared
                .target
                .as_ref()
                .ok_or_else(|| anyhow!("no --target"))?;
            let (link, mut rx) = target.connect(false).await?;
            let from = format!("+1219{:07}", call);
            let caller = Caller {
                to: &args.to,
                from: &from,
                password: shared.password.as_deref(),
                cancel_after: None,
            };
            let placed = uac::place(target, &link, &mut rx, &caller, offer, rng).await?;
            if placed.response.status != 200 {
                bail!(
                    "{} {}",
                    placed.response.status,
                    placed.response.reason.as_str()
                );
            }
            record.answered_ms = Some(ms_since(t0));
            let (dialog, plan) = uac::confirm(&link, &placed, &offer_state, rng)
                .await?
                .map_err(|e| anyhow!(e))?;
            (
                Signalling::Sip {
                    link,
                    rx,
                    dialog: Box::new(dialog),
                },
                plan,
            )
        }
        Through::Rtpengine => {
            let (call_id, plan) =
                rtpengine_negotiate(shared, call, &offer, &offer_state, rng).await?;
            record.answered_ms = Some(ms_since(t0));
            (Signalling::Ng { call_id }, plan)
        }
        Through::Bare => unreachable!("handled by the caller"),
    };
    let media = secure(shared, call, socket, &local, &plan, record, t0);
    let (remote, keys) = match tokio::time::timeout(Duration::from_secs(10), media).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            signalling.end(args.ng, 0, rng).await;
            return Err(e);
        }
        Err(_) => {
            signalling.end(args.ng, 0, rng).await;
            bail!("media failed: no ICE nomination or DTLS handshake in 10 s");
        }
    };
    let (first_rtp, first_rtp_rx) = oneshot::channel();
    let _ = shared.engine.send(Command::Start {
        call,
        remote,
        keys,
        speak_first: args.through == Through::Rtpengine,
        first_rtp: Some(first_rtp),
    });
    hold(
        shared,
        None,
        Some(first_rtp_rx),
        signalling,
        record,
        t0,
        rng,
    )
    .await
}

/// The call's keys and where its packets go: ICE-lite answers until the relay nominates our
/// address, then the DTLS handshake; or the SDES keys of the SDP and its address.
async fn secure(
    shared: &Shared,
    call: u32,
    socket: &Arc<std::net::UdpSocket>,
    local: &LocalMedia,
    plan: &MediaPlan,
    record: &mut CallRecord,
    t0: Instant,
) -> Result<(SocketAddr, Keys)> {
    let keys = match &plan.keying {
        Keying::Sdes {
            suite,
            local_key,
            remote_key,
            ..
        } => {
            let profile = match suite {
                SdesSuite::AesCm128HmacSha1_80 => SrtpProfile::AesCm128HmacSha1_80,
                SdesSuite::AesCm128HmacSha1_32 => SrtpProfile::AesCm128HmacSha1_32,
            };
            let context = |key: &[u8]| {
                let key = key.get(..30).ok_or_else(|| anyhow!("short SDES key"))?;
                SrtpContext::new(profile, &key[..16], &key[16..])
                    .map(Box::new)
                    .map_err(|e| anyhow!("SDES keys: {e}"))
            };
            let remote = plan
                .remote_rtp
                .ok_or_else(|| anyhow!("no media address in the answer"))?;
            let keys = Keys::Srtp {
                outbound: context(local_key)?,
                inbound: context(remote_key)?,
            };
            (remote, keys)
        }
        Keying::Dtls { fingerprint, role } => {
            let (records, records_rx) = mpsc::channel(32);
            let remote = match &plan.remote_ice {
                Some(theirs) => {
                    let (nominated, nominated_rx) = oneshot::channel();
                    let _ = shared.engine.send(Command::Connect {
                        call,
                        ice: Some(Ice {
                            username: format!("{}:{}", local.ice_ufrag, theirs.ufrag),
                            pwd: local.ice_pwd.clone(),
                            nominated: Some(nominated),
                        }),
                        dtls: Some(records),
                    });
                    let remote = nominated_rx
                        .await
                        .map_err(|_| anyhow!("media failed: the call's socket was closed"))?;
                    record.ice_ms = Some(ms_since(t0));
                    remote
                }
                None => {
                    let _ = shared.engine.send(Command::Connect {
                        call,
                        ice: None,
                        dtls: Some(records),
                    });
                    plan.remote_rtp
                        .ok_or_else(|| anyhow!("no media address in the answer"))?
                }
            };
            let (outbound, inbound, _) = dtls_srtp_over_udp(
                socket.clone(),
                remote,
                records_rx,
                &shared.identity,
                fingerprint,
                *role,
            )
            .await
            .map_err(|e| anyhow!("media failed: {e}"))?;
            let keys = Keys::Srtp {
                outbound: Box::new(outbound),
                inbound: Box::new(inbound),
            };
            (remote, keys)
        }
        Keying::Plain => bail!("plain RTP toward Meta"),
    };
    record.secure_ms = Some(ms_since(t0));
    record.secure_at = Some(shared.started.elapsed());
    Ok(keys)
}

/// A call the business places: through watrunk's API, then its INVITE answered as Meta answers.
/// Its media keeps a session of ours (ICE-lite, DTLS or SDES) whose plain side is the call's
/// socket on the engine.
async fn placed_call(
    shared: &Shared,
    placing: &Placing,
    call: u32,
    socket: &Arc<std::net::UdpSocket>,
    record: &mut CallRecord,
    t0: Instant,
    rng: &mut Draws,
) -> Result<()> {
    let args = &shared.args;
    let Incoming {
        invite,
        mut rx,
        link,
    } = placing.place(call, &args.to, args.sink).await?;
    let relay = Relay::with_identity(shared.options.clone(), shared.identity.clone()).await?;
    let to_tag = new_tag(rng);
    let media = MediaFrom {
        relay: &relay,
        app: Some(socket.local_addr()?),
    };
    let admitted = match uas::admit(invite, &mut rx, &link, &placing.gate, media, &to_tag, rng)
        .await
    {
        Ok(a) => a,
        Err(refusal) => {
            if let Some(req) = &refusal.request {
                let r = uas::refused(req, refusal.status, &refusal.phrase, &refusal.why, &to_tag);
                link.respond(&r).await;
            }
            bail!("we refused the INVITE: {} {}", refusal.status, refusal.why);
        }
    };
    record.digest = Some(admitted.algorithm.to_string());
    // The ICE-lite side is listening before the 200 tells the business where it is.
    let session = admitted.leg.start_session(admitted.plan, &shared.options);
    link.respond(&admitted.ok).await;
    record.answered_ms = Some(ms_since(t0));
    let _ = shared.engine.send(Command::Start {
        call,
        remote: session.app_addr(),
        keys: Keys::Plain,
        speak_first: true,
        first_rtp: None,
    });
    let signalling = Signalling::Sip {
        link,
        rx,
        dialog: Box::new(admitted.dialog),
    };
    let outcome = hold(shared, Some(session), None, signalling, record, t0, rng).await;
    drop(relay);
    outcome
}

/// Runs the call's media until its hold time, the load's end or the far side's hang-up.
async fn hold(
    shared: &Shared,
    mut session: Option<MediaSession>,
    mut first_rtp: Option<oneshot::Receiver<()>>,
    mut signalling: Signalling,
    record: &mut CallRecord,
    t0: Instant,
    rng: &mut Draws,
) -> Result<()> {
    let args = &shared.args;
    let mut hang_up = shared.hang_up.clone();
    let answered = Instant::now();
    let hold = async {
        if args.hold > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        } else {
            let _ = hang_up.wait_for(|&h| h).await;
        }
    };
    tokio::pin!(hold);
    let mut failure = None;
    let mut ours = true;
    loop {
        tokio::select! {
            () = &mut hold => break,
            why = signalling.remote_end() => {
                failure = Some(why);
                ours = false;
                break;
            }
            r = async {
                match first_rtp.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            } => {
                first_rtp = None;
                if r.is_ok() {
                    record.first_rtp_ms = Some(ms_since(t0));
                }
            }
            e = async {
                match session.as_mut() {
                    Some(s) => s.events.recv().await,
                    None => std::future::pending().await,
                }
            } => match e {
                Some(MediaEvent::IceConnected(_)) => record.ice_ms = Some(ms_since(t0)),
                Some(MediaEvent::SecureUp { .. }) => {
                    record.secure_ms = Some(ms_since(t0));
                    record.secure_at = Some(shared.started.elapsed());
                }
                Some(MediaEvent::FirstRtpIn { .. }) => record.first_rtp_ms = Some(ms_since(t0)),
                Some(MediaEvent::Failed(reason)) => {
                    failure = Some(format!("media failed: {reason}"));
                    break;
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    if ours {
        signalling
            .end(args.ng, answered.elapsed().as_secs(), rng)
            .await;
    }
    if let Some(session) = session {
        session.stop().await;
    }
    match failure {
        Some(f) => Err(anyhow!(f)),
        None => Ok(()),
    }
}

/// The bare path: the call's socket sends its plain RTP to the bare relay and reads what comes
/// back, as a call's SRTP socket would.
async fn bare_call(
    shared: &Shared,
    call: u32,
    record: &mut CallRecord,
    t0: Instant,
    rng: &mut Draws,
) -> Result<()> {
    record.answered_ms = Some(ms_since(t0));
    record.secure_at = Some(shared.started.elapsed());
    let _ = shared.engine.send(Command::Start {
        call,
        remote: shared.args.relay,
        keys: Keys::Plain,
        speak_first: true,
        first_rtp: None,
    });
    hold(shared, None, None, Signalling::None, record, t0, rng).await
}

/// rtpengine between Meta's side (our offer) and the agent (an answer at --sink): offer, then
/// answer, as a SIP proxy in front of it would send them.
async fn rtpengine_negotiate(
    shared: &Shared,
    call: u32,
    offer: &str,
    state: &sdp::OfferState,
    rng: &mut Draws,
) -> Result<(String, MediaPlan)> {
    let ng = shared.args.ng;
    let call_id = format!("load-{}-{call}", std::process::id());
    ng_request(
        ng,
        &NgCommand {
            command: "offer",
            call_id: &call_id,
            from_tag: Some("meta"),
            sdp: Some(offer),
            transport_protocol: Some("RTP/AVP"),
            ice: Some("remove"),
            rtcp_mux: &["demux"],
            replace: &["origin", "session-connection"],
            ..NgCommand::default()
        },
        rng,
    )
    .await
    .context("rtpengine offer")?;
    let sink = shared.args.sink;
    let agent = format!(
        "v=0\r\no=- {call} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {PT}\r\na=rtpmap:{PT} opus/48000/2\r\na=ptime:20\r\na=sendrecv\r\n",
        ip = sink.ip(),
        port = sink.port(),
    );
    let reply = ng_request(
        ng,
        &NgCommand {
            command: "answer",
            call_id: &call_id,
            from_tag: Some("meta"),
            to_tag: Some("agent"),
            sdp: Some(&agent),
            replace: &["origin", "session-connection"],
            flags: &["no-rtcp-attribute"],
            ..NgCommand::default()
        },
        rng,
    )
    .await
    .context("rtpengine answer")?;
    let answer = reply
        .sdp
        .ok_or_else(|| anyhow!("rtpengine's answer has no SDP"))?;
    let answer = sdp::parse(answer.as_bytes()).map_err(|e| anyhow!("rtpengine's SDP: {e}"))?;
    let plan = sdp::accept_answer(state, &answer).map_err(|e| anyhow!("rtpengine's SDP: {e}"))?;
    Ok((call_id, plan))
}

/// An rtpengine ng command (a bencoded dict; empty fields are left out).
#[derive(Serialize, Default)]
struct NgCommand<'a> {
    command: &'a str,
    #[serde(rename = "call-id")]
    call_id: &'a str,
    #[serde(rename = "from-tag", skip_serializing_if = "Option::is_none")]
    from_tag: Option<&'a str>,
    #[serde(rename = "to-tag", skip_serializing_if = "Option::is_none")]
    to_tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sdp: Option<&'a str>,
    #[serde(rename = "transport-protocol", skip_serializing_if = "Option::is_none")]
    transport_protocol: Option<&'a str>,
    #[serde(rename = "ICE", skip_serializing_if = "Option::is_none")]
    ice: Option<&'a str>,
    #[serde(rename = "rtcp-mux", skip_serializing_if = "<[_]>::is_empty")]
    rtcp_mux: &'a [&'a str],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    replace: &'a [&'a str],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    flags: &'a [&'a str],
}

#[derive(Deserialize)]
struct NgReply {
    result: String,
    #[serde(rename = "error-reason", default)]
    error_reason: Option<String>,
    #[serde(default)]
    sdp: Option<String>,
}

/// One ng command (`"<cookie> <bencoded dict>"` over UDP) and rtpengine's reply.
async fn ng_request(ng: SocketAddr, command: &NgCommand<'_>, rng: &mut Draws) -> Result<NgReply> {
    let cookie = format!("{:012x}", rng.gen::<u64>() & 0xffff_ffff_ffff);
    let mut request = format!("{cookie} ").into_bytes();
    request.extend(serde_bencode::to_bytes(command)?);
    let local = SocketAddr::new(
        if ng.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        },
        0,
    );
    let socket = UdpSocket::bind(local).await?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        socket.send_to(&request, ng).await?;
        let Ok(r) = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await
        else {
            continue;
        };
        let n = r?;
        let Some(body) = buf[..n].strip_prefix(format!("{cookie} ").as_bytes()) else {
            continue;
        };
        let reply: NgReply = serde_bencode::from_bytes(body).context("rtpengine's ng reply")?;
        if reply.result != "ok" {
            bail!(
                "rtpengine: {}",
                reply.error_reason.as_deref().unwrap_or(&reply.result)
            );
        }
        return Ok(reply);
    }
    bail!("rtpengine at {ng} did not answer (ng)")
}

/// CPU time (user + system) of a process, summed over its threads' scheduler statistics.
fn process_cpu(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        total += text
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(Duration::from_nanos(total))
}

fn own_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given and cannot fail for RUSAGE_SELF.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// p50 / p99 / max of some milliseconds.
fn spread(mut values: Vec<f64>) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let v = values[((values.len() - 1) as f64 * q).round() as usize];
        (v * 1000.0).round() / 1000.0
    };
    json!({ "p50": at(0.5), "p99": at(0.99), "max": at(1.0), "n": values.len() })
}

/// p50 / p99 / max of a histogram of microseconds, in milliseconds.
fn spread_us(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "p50": ms(h.value_at_quantile(0.5)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
        "n": h.len(),
    })
}

fn loss_pct(flows: &[Flow]) -> f64 {
    let expected: u64 = flows.iter().map(Flow::expected).sum();
    let lost: u64 = flows.iter().map(Flow::lost).sum();
    if expected == 0 {
        return 0.0;
    }
    (lost as f64 * 100.0 / expected as f64 * 1000.0).round() / 1000.0
}

fn jitter_ms(flows: &[Flow]) -> Value {
    spread(
        flows
            .iter()
            .filter(|f| f.received > 1)
            .map(|f| f.jitter_ns / 1e6)
            .collect(),
    )
}

/// The kernel's UDP drop counters: this network namespace's (`/proc/net/snmp`), and the host's
/// per-CPU input backlog (`/proc/net/softnet_stat`), where every loopback packet waits for its
/// softirq and is dropped beyond `net.core.netdev_max_backlog`.
#[derive(Debug, Default, Clone, Copy)]
struct KernelDrops {
    udp_in_errors: u64,
    udp_rcvbuf_errors: u64,
    udp_sndbuf_errors: u64,
    backlog_dropped: u64,
    /// Softirq rounds that ran out of budget with packets left (not drops: a sign of a busy CPU).
    time_squeezed: u64,
}

impl KernelDrops {
    fn read() -> KernelDrops {
        let mut drops = KernelDrops::default();
        let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        if let (Some(names), Some(values)) = (udp.next(), udp.next()) {
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                let value = value.parse().unwrap_or(0);
                match name {
                    "InErrors" => drops.udp_in_errors = value,
                    "RcvbufErrors" => drops.udp_rcvbuf_errors = value,
                    "SndbufErrors" => drops.udp_sndbuf_errors = value,
                    _ => {}
                }
            }
        }
        let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
        for cpu in softnet.lines() {
            let column = |i: usize| {
                cpu.split_whitespace()
                    .nth(i)
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                    .unwrap_or(0)
            };
            drops.backlog_dropped += column(1);
            drops.time_squeezed += column(2);
        }
        drops
    }

    fn since(&self, earlier: &KernelDrops) -> Value {
        json!({
            "udp_in_errors": self.udp_in_errors.saturating_sub(earlier.udp_in_errors),
            "udp_rcvbuf_errors": self.udp_rcvbuf_errors.saturating_sub(earlier.udp_rcvbuf_errors),
            "udp_sndbuf_errors": self.udp_sndbuf_errors.saturating_sub(earlier.udp_sndbuf_errors),
            "backlog_dropped": self.backlog_dropped.saturating_sub(earlier.backlog_dropped),
            "time_squeezed": self.time_squeezed.saturating_sub(earlier.time_squeezed),
        })
    }
}

/// The counters at one moment of the window.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    to_agent: u64,
    to_meta: u64,
    lost_to_agent: i64,
    lost_to_meta: i64,
    send_failed: u64,
    relay_cpu: Option<Duration>,
    own_cpu: Duration,
    kernel: KernelDrops,
}

impl Snapshot {
    fn take(counters: &Counters, pid: Option<u32>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            to_agent: counters.agent_received.load(Relaxed),
            to_meta: counters.meta_received.load(Relaxed),
            lost_to_agent: counters.lost_to_agent.load(Relaxed),
            lost_to_meta: counters.lost_to_meta.load(Relaxed),
            send_failed: counters.send_failed.load(Relaxed),
            relay_cpu: pid.and_then(process_cpu),
            own_cpu: own_cpu(),
            kernel: KernelDrops::read(),
        }
    }

    fn relayed(&self) -> u64 {
        self.to_agent + self.to_meta
    }
}

/// Packets lost in one direction between two snapshots, and their share of those expected.
fn interval_loss(received: u64, lost: i64) -> Value {
    let lost = lost.max(0) as u64;
    let expected = received + lost;
    let pct = if expected == 0 {
        0.0
    } else {
        (lost as f64 * 100.0 / expected as f64 * 1000.0).round() / 1000.0
    };
    json!({ "packets": lost, "pct": pct })
}

fn window_report(a: &Snapshot, b: &Snapshot, calls: usize) -> Value {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let relayed = b.relayed().saturating_sub(a.relayed());
    let per_packet = |cpu: Duration| {
        (relayed > 0).then(|| (cpu.as_secs_f64() * 1e6 / relayed as f64 * 1000.0).round() / 1000.0)
    };
    let relay_cpu = match (a.relay_cpu, b.relay_cpu) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x)),
        _ => None,
    };
    let own = b.own_cpu.saturating_sub(a.own_cpu);
    let relay_cores = relay_cpu.map(|c| c.as_secs_f64() / secs);
    json!({
        "secs": (secs * 1000.0).round() / 1000.0,
        "relayed_packets": relayed,
        "relayed_pps": (relayed as f64 / secs).round(),
        "relay_cpu_secs": relay_cpu.map(|c| c.as_secs_f64()),
        "relay_us_per_packet": relay_cpu.and_then(per_packet),
        "relay_cores": relay_cores.map(|c| (c * 1000.0).round() / 1000.0),
        "calls_per_relay_core": relay_cores.filter(|&c| c > 0.0).map(|c| (calls as f64 / c).round()),
        "generator_cpu_secs": own.as_secs_f64(),
        "generator_cores": ((own.as_secs_f64() / secs) * 1000.0).round() / 1000.0,
        "generator_us_per_packet": per_packet(own),
        "lost": {
            "to_agent": interval_loss(b.to_agent - a.to_agent, b.lost_to_agent - a.lost_to_agent),
            "to_meta": interval_loss(b.to_meta - a.to_meta, b.lost_to_meta - a.lost_to_meta),
        },
        "send_failed": b.send_failed - a.send_failed,
        "kernel_drops": b.kernel.since(&a.kernel),
    })
}

pub async fn run(args: LoadArgs, mut draws: Draws) -> Result<bool> {
    let total = args.total.unwrap_or(args.calls).max(1);
    let calls = args.calls.clamp(1, total);
    if args.hold <= 0.0 && total != calls {
        bail!("--hold 0 (until the window closes) needs --total equal to --calls");
    }
    if args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let clock = Arc::new(Clock {
        epoch: Instant::now(),
        measuring: AtomicBool::new(false),
    });
    let counters = Arc::new(Counters::default());
    counters.unstamped.store(args.echo_unstamped, Relaxed);
    let kernel_at_start = KernelDrops::read();
    let agent_socket = roomy_socket(args.sink)?;
    let (engine, commands) = Engine::start(total, args.payload, clock.clone(), counters.clone())?;
    let stop_agent = Arc::new(AtomicBool::new(false));
    let agent_thread = {
        let (stop, clock, counters) = (stop_agent.clone(), clock.clone(), counters.clone());
        let echo_unstamped = args.echo_unstamped;
        std::thread::Builder::new()
            .name("sim-load-agent".into())
            .spawn(move || agent_side(agent_socket, stop, total, clock, counters, echo_unstamped))?
    };
    let password = args.access.password()?;
    let (target, placing) = match (args.through, args.direction) {
        (Through::Watrunk, Direction::ToBusiness) => {
            (Some(args.access.target(&args.target).await?), None)
        }
        (Through::Watrunk, Direction::ToUser) => {
            let password = password
                .clone()
                .ok_or_else(|| anyhow!("--direction to-user needs --password-file"))?;
            let security = match args.srtp {
                SrtpMode::Dtls => Security::Dtls,
                SrtpMode::Sdes => Security::Sdes,
            };
            let gate = Gate::new(args.business_host.clone(), password, security, &mut draws);
            let tls = (args.cert.clone(), args.key.clone(), args.state_dir.clone());
            let placing = Placing::start(args.listen, tls, args.api, gate).await?;
            (None, Some(placing))
        }
        (_, Direction::ToUser) => bail!("--direction to-user is for --through watrunk"),
        _ => (None, None),
    };
    let options = MediaOptions {
        media_ip: args.media_ip,
        tone_hz: 440.0,
        rtp_timeout: Duration::from_secs(20),
        keep_ssrc: false,
        speak_first: args.through == Through::Rtpengine,
        dtmf: None,
    };
    let (hang_up, hang_up_rx) = watch::channel(false);
    let pid = args.pid;
    let rate = args.rate;
    let (hold, window, settle) = (args.hold, args.window, args.settle);
    let report_every = args.report_every;
    let through = args.through;
    let srtp = args.srtp;
    let rss_idle = pid.and_then(resident_kib);
    let direction = args.direction;
    let shared = Arc::new(Shared {
        args,
        target,
        placing,
        password,
        identity: Identity::generate().map_err(|e| anyhow!("{e}"))?,
        options,
        engine: commands,
        hang_up: hang_up_rx,
        started: Instant::now(),
    });

    let permits = Arc::new(Semaphore::new(calls));
    let launcher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut handles = Vec::with_capacity(total);
            for call in 0..total {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                tokio::time::sleep_until(start + Duration::from_secs_f64(call as f64 / rate)).await;
                let shared = shared.clone();
                let draws = fork(&mut draws);
                handles.push(tokio::spawn(async move {
                    let record = run_call(shared, call as u32, draws).await;
                    drop(permit);
                    record
                }));
            }
            handles
        })
    };

    let mut report = json!({
        "event": "sim.load",
        "through": format!("{through:?}").to_lowercase(),
        "direction": if direction == Direction::ToUser { "to-user" } else { "to-business" },
        "srtp": if through == Through::Bare { "none".to_string() } else { format!("{srtp:?}").to_lowercase() },
        "calls": calls,
        "total": total,
        "rate": rate,
        "hold": hold,
    });
    if hold <= 0.0 {
        let limit = Instant::now() + Duration::from_secs_f64(total as f64 / rate + 30.0);
        while counters.flowing.load(Relaxed) < calls && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report["flowing_at_window"] = counters.flowing.load(Relaxed).into();
        tokio::time::sleep(Duration::from_secs_f64(settle)).await;
        let rss_loaded = pid.and_then(resident_kib);
        let a = Snapshot::take(&counters, pid);
        clock.measuring.store(true, Relaxed);
        let window_end = Instant::now() + Duration::from_secs_f64(window);
        let every = (report_every > 0.0 && report_every < window)
            .then(|| Duration::from_secs_f64(report_every));
        let mut mark = a;
        while Instant::now() < window_end {
            let next = every.map_or(window_end, |e| (Instant::now() + e).min(window_end));
            tokio::time::sleep_until(next.into()).await;
            if every.is_some() {
                let here = Snapshot::take(&counters, pid);
                let mut line = window_report(&mark, &here, calls);
                line["event"] = "sim.load.interval".into();
                line["t"] = (here.at.duration_since(a.at).as_secs_f64().round()).into();
                line["flowing"] = counters.flowing.load(Relaxed).into();
                line["rss_kib"] = pid.and_then(resident_kib).into();
                super::emit(line);
                mark = here;
            }
        }
        clock.measuring.store(false, Relaxed);
        let b = Snapshot::take(&counters, pid);
        report["window"] = window_report(&a, &b, calls);
        report["rss_kib"] = json!({
            "idle": rss_idle,
            "loaded": rss_loaded,
            "per_call": match (rss_idle, rss_loaded) {
                (Some(i), Some(l)) => Some(((l.saturating_sub(i)) as f64 / calls as f64 * 10.0).round() / 10.0),
                _ => None,
            },
        });
        let _ = hang_up.send(true);
    }
    let whole_run = (hold > 0.0).then(|| Snapshot::take(&counters, pid));
    let handles = launcher.await?;
    let mut records = Vec::with_capacity(handles.len());
    for h in handles {
        records.push(h.await.unwrap_or_else(|e| CallRecord {
            failure: Some(format!("call task: {e}")),
            ..CallRecord::default()
        }));
    }
    if let Some(a) = whole_run {
        // Set-up runs: the relay's CPU over the whole run, per call placed (its media included).
        let b = Snapshot::take(&counters, pid);
        let relay = match (a.relay_cpu, b.relay_cpu) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x).as_secs_f64()),
            _ => None,
        };
        report["run"] = json!({
            "secs": b.at.duration_since(a.at).as_secs_f64(),
            "relay_cpu_secs": relay,
            "relay_cpu_ms_per_call": relay.map(|r| (r * 1000.0 / total as f64 * 1000.0).round() / 1000.0),
            "generator_cpu_secs": b.own_cpu.saturating_sub(a.own_cpu).as_secs_f64(),
        });
    }
    drop(shared);
    stop_agent.store(true, Relaxed);
    let (meta, agent) = tokio::task::spawn_blocking(move || {
        let meta = engine.finish();
        let agent = agent_thread.join().expect("the agent side does not panic");
        (meta, agent)
    })
    .await?;

    let failed: Vec<&str> = records
        .iter()
        .filter_map(|r| r.failure.as_deref())
        .collect();
    let mut failures: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &failed {
        *failures.entry(f).or_default() += 1;
    }
    let up: Vec<Duration> = records.iter().filter_map(|r| r.secure_at).collect();
    let last_up = up.iter().max().copied().unwrap_or_default().as_secs_f64();
    let pick = |f: fn(&CallRecord) -> Option<f64>| records.iter().filter_map(f).collect::<Vec<_>>();
    let mut digests: BTreeMap<&str, usize> = BTreeMap::new();
    for d in records.iter().filter_map(|r| r.digest.as_deref()) {
        *digests.entry(d).or_default() += 1;
    }
    if !digests.is_empty() {
        report["digest"] = json!(digests);
    }
    report["established"] = up.len().into();
    report["failed"] = failed.len().into();
    report["failures"] = json!(failures.into_iter().take(5).collect::<BTreeMap<_, _>>());
    report["setups_per_second"] = if last_up > 0.0 {
        ((up.len() as f64 / last_up) * 10.0).round() / 10.0
    } else {
        0.0
    }
    .into();
    report["setup_ms"] = json!({
        "answered": spread(pick(|r| r.answered_ms)),
        "ice": spread(pick(|r| r.ice_ms)),
        "secure": spread(pick(|r| r.secure_ms)),
        "first_rtp": spread(pick(|r| r.first_rtp_ms)),
    });
    report["packets"] = json!({
        "meta_sent": counters.meta_sent.load(Relaxed),
        "agent_received": counters.agent_received.load(Relaxed),
        "meta_received": counters.meta_received.load(Relaxed),
        "send_failed": counters.send_failed.load(Relaxed),
    });
    // Established calls that one direction never reached, and how far the other got.
    let silent: Vec<Value> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.secure_at.is_some() && r.failure.is_none())
        .filter(|(c, _)| {
            let received = |flows: &[Flow]| flows.get(*c).map_or(0, |f| f.received);
            received(&agent.flows) == 0 || received(&meta.flows) == 0
        })
        .map(|(c, r)| {
            json!({
                "call": c,
                "to_agent": agent.flows.get(c).map_or(0, |f| f.received),
                "to_meta": meta.flows.get(c).map_or(0, |f| f.received),
                "secure_ms": r.secure_ms,
                "first_rtp_ms": r.first_rtp_ms,
            })
        })
        .collect();
    report["silent_calls"] = silent.len().into();
    report["silent_examples"] = silent.into_iter().take(5).collect::<Vec<_>>().into();
    report["loss_pct"] = json!({
        "to_agent": loss_pct(&agent.flows),
        "to_meta": loss_pct(&meta.flows),
    });
    report["kernel_drops"] = KernelDrops::read().since(&kernel_at_start);
    report["latency_ms"] = json!({
        "to_agent": spread_us(&agent.latency),
        "to_meta": spread_us(&meta.latency),
        "round_trip": spread_us(&meta.round_trip),
    });
    report["jitter_ms"] = json!({
        "to_agent": jitter_ms(&agent.flows),
        "to_meta": jitter_ms(&meta.flows),
    });
    let ok = failed.is_empty();
    super::emit(report);
    Ok(ok)
}

#[derive(Args, Debug)]
pub struct BareRelayArgs {
    /// The Meta-facing socket every call shares.
    #[arg(long, default_value = "127.0.0.1:4200")]
    pub listen: SocketAddr,
    /// Where every call's packets go (the agent).
    #[arg(long, default_value = "127.0.0.1:4100")]
    pub sink: SocketAddr,
    /// Far addresses learnt at most (each gets its own local socket until exit).
    #[arg(long, default_value_t = 8192)]
    pub max_calls: usize,
}

/// `watrunk sim bare-relay`: the reference for the media path, the same socket and task layout as
/// watrunk's (one shared socket toward Meta, a local socket L per call toward the agent, a task per
/// call for the way back) with nothing else: no SRTP, no re-stamping. A call is learnt from its
/// first packet.
pub async fn bare_relay(args: BareRelayArgs) -> Result<()> {
    let shared = Arc::new(UdpSocket::from_std(roomy_socket(args.listen)?)?);
    eprintln!("sim bare-relay: {} <-> {}", shared.local_addr()?, args.sink);
    let mut routes: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let local = SocketAddr::new(args.sink.ip(), 0);
    let mut buf = [0u8; 1500];
    loop {
        shared.readable().await?;
        while let Ok((n, from)) = shared.try_recv_from(&mut buf) {
            let l = match routes.get(&from) {
                Some(l) => l,
                None if routes.len() < args.max_calls => {
                    let l = Arc::new(UdpSocket::bind(local).await?);
                    let (back, l2) = (shared.clone(), l.clone());
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1500];
                        while let Ok((n, _)) = l2.recv_from(&mut buf).await {
                            let _ = back.send_to(&buf[..n], from).await;
                        }
                    });
                    routes.entry(from).or_insert(l)
                }
                None => continue,
            };
            let _ = l.try_send_to(&buf[..n], args.sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_the_packet_and_an_rtp_extension() {
        let mut buf = [0u8; 200];
        let stamp = Stamp {
            call: 7,
            seq: 300,
            sent_ns: 123_456_789,
            echoed_ns: 0,
        };
        let n = write_packet(&mut buf, 80, stamp);
        assert_eq!(n, 92);
        assert_eq!(read_stamp(&buf[..n]).unwrap(), (12, stamp));
        // The same payload behind a one-word header extension (X bit).
        let mut ext = vec![
            0x90, PT, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0, 1, 1, 2, 3, 4,
        ];
        ext.extend_from_slice(&buf[12..n]);
        assert_eq!(read_stamp(&ext).unwrap(), (20, stamp));
        assert!(read_stamp(&buf[..30]).is_none(), "short payload");
        buf[12] = b'X';
        assert!(read_stamp(&buf[..n]).is_none(), "not ours");
    }

    #[test]
    fn flows_count_loss_by_sequence_range_and_jitter_by_transit() {
        let mut flow = Flow::default();
        for (seq, sent, arrived) in [(10, 0, 1_000), (11, 20, 1_020), (13, 60, 1_560)] {
            flow.record(seq, sent * 1_000_000, arrived * 1_000_000);
        }
        assert_eq!((flow.expected(), flow.received, flow.lost()), (4, 3, 1));
        // Transit 1000, 1000, 1500 ms: one step of 500 ms, weighted 1/16.
        assert!(
            (flow.jitter_ns / 1e6 - 31.25).abs() < 1e-6,
            "{}",
            flow.jitter_ns
        );
    }
}
