//! `watrunk sim`: a Meta-like peer for tests and for businesses without WhatsApp calling approval
//! yet. `sim serve` is Meta toward a business that calls out, `sim call` is a WhatsApp user calling
//! a business, `sim sink` stands in for the voice agent behind watrunk (tone out, recording in).
//! Each call ends with one JSON line on stdout (`sim.call`, `sink.stream`) saying what happened
//! and what was heard.

/// Opus tone, recorder and frequency estimate (also what tests decode captured RTP with).
pub mod audio;
mod engine;
pub mod judge;
mod link;
mod load;
mod media;
mod placed;
mod uac;
mod uas;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use watrunk_sdp::Security;

use audio::{Recorder, Tone};
use link::Link;
use media::MediaOptions;

pub const META_DOMAIN: &str = "wa.meta.vc";
pub const USER_AGENT: &str = "Facebook SipGateway (watrunk sim)";

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Be Meta toward a business that places calls: TLS listener, 407 (SHA-256 + MD5), ICE-lite.
    Serve(SimServeArgs),
    /// Place a WhatsApp user's call to a business's SIP server, as Meta delivers it.
    Call(SimCallArgs),
    /// A voice-agent stand-in for `watrunk serve --sink`: plays a tone back to every call's port
    /// and reports what it heard.
    Sink(SinkArgs),
    /// Meta at scale: N concurrent calls through watrunk serve (or rtpengine, or a bare UDP relay)
    /// with 50 packets/s each way, echoed by the agent's side in this process; one `sim.load`
    /// report with set-up times, loss, latency, jitter and CPU per relayed packet.
    Load(Box<load::LoadArgs>),
    /// The bare UDP relay `sim load --through bare` is measured against.
    BareRelay(load::BareRelayArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SrtpMode {
    Dtls,
    Sdes,
}

#[derive(Args, Debug, Clone)]
pub struct SimMediaArgs {
    /// The relay's media address (its ICE-lite host candidate).
    #[arg(long, default_value = "127.0.0.1")]
    pub media_ip: IpAddr,
    #[arg(long, value_enum, default_value = "dtls")]
    pub srtp: SrtpMode,
    /// The tone the WhatsApp user "speaks".
    #[arg(long, default_value_t = 440.0)]
    pub tone_hz: f64,
    /// Hang up when the business sends no media for this long (Meta: 20 s).
    #[arg(long, default_value_t = 20.0)]
    pub rtp_timeout_secs: f64,
    /// Hang up (BYE with x-wa-meta-call-duration) after this many seconds of call.
    #[arg(long, default_value_t = 10.0)]
    pub hangup_after: f64,
    /// Send with the SSRC the SDP announced (Meta's relay overwrites it; so does the sim by default).
    #[arg(long)]
    pub keep_ssrc: bool,
    /// The user presses these keys (0-9, *, #, A-D) as RFC 4733 events, 100 ms each, once the
    /// call has been up for `--dtmf-after` seconds.
    #[arg(long)]
    pub dtmf: Option<String>,
    #[arg(long, default_value_t = 1.5)]
    pub dtmf_after: f64,
}

impl SimMediaArgs {
    fn options(&self) -> MediaOptions {
        MediaOptions {
            media_ip: self.media_ip,
            tone_hz: self.tone_hz,
            rtp_timeout: Duration::from_secs_f64(self.rtp_timeout_secs.max(0.1)),
            keep_ssrc: self.keep_ssrc,
            speak_first: false,
            dtmf: self
                .dtmf
                .clone()
                .map(|keys| (keys, Duration::from_secs_f64(self.dtmf_after.max(0.0)))),
        }
    }

    fn security(&self) -> Security {
        match self.srtp {
            SrtpMode::Dtls => Security::Dtls,
            SrtpMode::Sdes => Security::Sdes,
        }
    }
}

#[derive(Args, Debug)]
pub struct SimServeArgs {
    #[arg(long, default_value = "[::]:5061")]
    pub listen: SocketAddr,
    /// The SIP server hostname configured for the business's numbers: the From host of its INVITEs
    /// must be this one (403 otherwise, as Meta answers).
    #[arg(long)]
    pub business_host: String,
    /// The numbers' SIP password (Meta's per-number password; username: the number without '+').
    #[arg(long)]
    pub password_file: PathBuf,
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The name (or IP address) a self-signed certificate is made for when no --cert is given.
    #[arg(long, default_value = META_DOMAIN)]
    pub tls_name: String,
    /// Where that self-signed certificate is kept (default: the `sim` folder of watrunk's state
    /// directory, e.g. ~/.local/state/watrunk/sim).
    #[arg(long, default_value_os_t = watrunk_sip::io::tls::default_state_dir().join("sim"))]
    pub state_dir: PathBuf,
    /// Exit after this many calls (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub calls: u32,
    /// The user lets it ring this many seconds (after our 180) before answering.
    #[arg(long, default_value_t = 0.0)]
    pub answer_after: f64,
    #[arg(long)]
    pub sip_trace: bool,
    #[command(flatten)]
    pub media: SimMediaArgs,
}

/// How the sim reaches a business's SIP server: the TLS trust and the number's SIP password.
#[derive(Args, Debug, Clone)]
pub struct BusinessAccess {
    /// Answer the business's digest challenge with this password (the number's SIP password).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Trust this CA (PEM) besides the web PKI roots. Without it, the self-signed certificate a
    /// local `watrunk serve` made for the target's name in its default state directory is trusted.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The TLS server name to verify (default: the target's host).
    #[arg(long)]
    pub server_name: Option<String>,
}

impl BusinessAccess {
    async fn target(&self, target: &str) -> Result<uac::Target> {
        uac::Target::resolve(target, self.ca.as_deref(), self.server_name.as_deref()).await
    }

    fn password(&self) -> Result<Option<String>> {
        self.password_file.as_deref().map(read_password).transpose()
    }
}

#[derive(Args, Debug)]
pub struct SimCallArgs {
    /// The business's SIP server: host[:port] (port 5061 by default).
    pub target: String,
    /// The business number called (+E.164).
    #[arg(long)]
    pub to: String,
    /// The WhatsApp user calling.
    #[arg(long, default_value = "+12195550714")]
    pub from: String,
    #[command(flatten)]
    pub access: BusinessAccess,
    /// CANCEL the INVITE if it has no final response after this many milliseconds.
    #[arg(long)]
    pub cancel_after_ms: Option<u64>,
    /// Exit non-zero unless the business's audio is this tone (within 3 %).
    #[arg(long)]
    pub expect_hz: Option<f64>,
    #[arg(long)]
    pub sip_trace: bool,
    #[command(flatten)]
    pub media: SimMediaArgs,
}

#[derive(Args, Debug)]
pub struct SinkArgs {
    #[arg(long, default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// The tone played back to every call (the "agent's voice").
    #[arg(long, default_value_t = 880.0)]
    pub tone_hz: f64,
    /// Send every packet straight back instead of a tone.
    #[arg(long)]
    pub echo: bool,
    /// A call whose port sends nothing for this long is reported and forgotten.
    #[arg(long, default_value_t = 1000)]
    pub idle_ms: u64,
    /// Exit after this many seconds (0: run until interrupted).
    #[arg(long, default_value_t = 0.0)]
    pub seconds: f64,
}

/// The sim's randomness: `run` is given one seed, and every task that draws (a connection, a
/// call) gets a generator forked from it. Nothing draws from a global source, so a run's tags,
/// branches, SSRCs and sequence numbers follow from its seed.
pub type Draws = StdRng;

/// A generator of its own for a task started by the owner of `parent`.
pub fn fork(parent: &mut Draws) -> Draws {
    Draws::seed_from_u64(parent.gen())
}

/// Runs a sim command with randomness drawn from `seed`; `Ok(false)` when a placed call failed its
/// checks.
pub async fn run(command: SimCommand, seed: u64) -> Result<bool> {
    let mut draws = Draws::seed_from_u64(seed);
    match command {
        SimCommand::Serve(args) => uas::run(args, draws).await,
        SimCommand::Call(args) => uac::run(args, &mut draws).await,
        SimCommand::Sink(args) => sink(args, draws).await.map(|()| true),
        SimCommand::Load(args) => load::run(*args, draws).await,
        SimCommand::BareRelay(args) => load::bare_relay(args).await.map(|()| true),
    }
}

fn emit(report: Value) {
    println!("{report}");
}

fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the password file {}", path.display()))?;
    Ok(text.trim().to_string())
}

fn new_via(link: &Link, rng: &mut Draws) -> String {
    format!(
        "SIP/2.0/TLS {};rport;branch={};alias",
        link.hostport(),
        watrunk_sip::new_branch(rng)
    )
}

/// Meta's Reason header on its BYE.
fn meta_reason(text: &str) -> String {
    let cause = if text == "RTP timeout" { 408 } else { 200 };
    format!("SIP;cause={cause};text=\"{}\"", text.replace('"', "'"))
}

const MAX_STREAMS: usize = 4096;

struct Stream {
    recorder: Recorder,
    tone: Option<Tone>,
    last: Instant,
    first: Instant,
}

/// `watrunk sim sink`: the agent's side of every call, told apart by the source port L.
async fn sink(args: SinkArgs, mut draws: Draws) -> Result<()> {
    let socket = UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("cannot bind {}", args.listen))?;
    eprintln!("sim sink: listening on {}", socket.local_addr()?);
    let mut streams: HashMap<SocketAddr, Stream> = HashMap::new();
    let idle = Duration::from_millis(args.idle_ms.max(100));
    let until =
        (args.seconds > 0.0).then(|| Instant::now() + Duration::from_secs_f64(args.seconds));
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    let mut buf = [0u8; 1500];
    let mut out = [0u8; 1500];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Some((pt, _)) = audio::rtp_payload(&buf[..n]) else { continue };
                if !streams.contains_key(&from) {
                    if streams.len() >= MAX_STREAMS {
                        continue;
                    }
                    let tone = if args.echo { None } else { Some(Tone::new(args.tone_hz, pt, &mut draws)?) };
                    let now = Instant::now();
                    streams.insert(from, Stream { recorder: Recorder::new(pt)?, tone, last: now, first: now });
                }
                let Some(stream) = streams.get_mut(&from) else { continue };
                stream.recorder.push(&buf[..n]);
                stream.last = Instant::now();
                match &mut stream.tone {
                    Some(tone) => {
                        if let Ok(m) = tone.next_packet(&mut out) {
                            let _ = socket.send_to(&out[..m], from).await;
                        }
                    }
                    None => {
                        let _ = socket.send_to(&buf[..n], from).await;
                    }
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                let ended: Vec<SocketAddr> = streams
                    .iter()
                    .filter(|(_, s)| now.duration_since(s.last) >= idle)
                    .map(|(a, _)| *a)
                    .collect();
                for from in ended {
                    if let Some(mut s) = streams.remove(&from) {
                        report_stream(from, &mut s);
                    }
                }
                if until.is_some_and(|u| now >= u) {
                    for (from, mut s) in streams.drain() {
                        report_stream(from, &mut s);
                    }
                    return Ok(());
                }
            }
        }
    }
}

fn report_stream(from: SocketAddr, s: &mut Stream) {
    let heard = s.recorder.analyse(1.0);
    emit(json!({
        "event": "sink.stream",
        "from": from.to_string(),
        "packets": s.recorder.packets,
        "other_packets": s.recorder.other,
        "ssrcs": s.recorder.ssrcs,
        "reordered": s.recorder.reordered,
        "secs": (s.last.duration_since(s.first).as_secs_f64() * 10.0).round() / 10.0,
        "heard_hz": heard.map(|h| (h.0 * 10.0).round() / 10.0),
        "heard_rms": heard.map(|h| (h.1 * 1000.0).round() / 1000.0),
    }));
}
