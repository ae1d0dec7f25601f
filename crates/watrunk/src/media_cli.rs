//! `watrunk media answer|offer`: one SDP exchange through files and its media against a local sink,
//! printing media events as JSON lines. It is the media stack without SIP, for testing against real
//! peers (rtpengine as Meta's stand-in, browsers) and for users checking their network path.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use watrunk_media::srtp::SrtpProfile;
use watrunk_media::{IceRole, Identity, MediaConfig, MediaEvent, MediaSocket, Prepared};
use watrunk_sdp::{self as sdp, Capabilities, LocalMedia, Security};

#[derive(Subcommand)]
pub enum MediaCommand {
    /// Answer an offer file, write our answer, relay the call's media to and from a local sink.
    Answer(AnswerArgs),
    /// Write our offer, wait for the answer file, relay the call's media to and from a local sink.
    Offer(OfferArgs),
}

#[derive(Args)]
pub struct AnswerArgs {
    /// The remote offer (SDP).
    #[arg(long)]
    offer: PathBuf,
    /// Where our answer SDP is written (CRLF).
    #[arg(long)]
    answer_out: PathBuf,
    #[command(flatten)]
    sink: SinkArgs,
}

#[derive(Args)]
pub struct OfferArgs {
    /// Where our offer SDP is written (CRLF).
    #[arg(long)]
    offer_out: PathBuf,
    /// The remote answer: waited for (60 s), then read.
    #[arg(long)]
    answer: PathBuf,
    #[command(flatten)]
    sink: SinkArgs,
}

pub async fn run(command: MediaCommand) -> Result<()> {
    match command {
        MediaCommand::Answer(a) => answer(a).await,
        MediaCommand::Offer(a) => offer(a).await,
    }
}

fn event_json(e: &MediaEvent) -> String {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    match e {
        MediaEvent::IceConnected(ice) => format!(
            r#"{{"event":"ice.connected","local":"{}","remote":"{}","role":"{}","ms":{:.1}}}"#,
            ice.local,
            ice.remote,
            ice.role.name(),
            ms(&ice.elapsed)
        ),
        MediaEvent::SecureUp { profile, elapsed } => format!(
            r#"{{"event":"secure.up","profile":"{profile}","ms":{:.1}}}"#,
            ms(elapsed)
        ),
        MediaEvent::FirstRtpOut { elapsed } => {
            format!(r#"{{"event":"rtp.first_out","ms":{:.1}}}"#, ms(elapsed))
        }
        MediaEvent::FirstRtpIn { elapsed } => {
            format!(r#"{{"event":"rtp.first_in","ms":{:.1}}}"#, ms(elapsed))
        }
        MediaEvent::Stats(s) => serde_json::json!({
            "event": "stats",
            "packets_out": s.packets_out,
            "silence_out": s.silence_out,
            "dtmf_out": s.dtmf_out,
            "bytes_out": s.bytes_out,
            "packets_in": s.packets_in,
            "bytes_in": s.bytes_in,
            "srtp_rejected": s.srtp_rejected,
            "strangers": s.strangers,
            "lost": s.lost,
            "jitter_us": s.jitter_us,
            "rtt_us": s.rtt_us,
        })
        .to_string(),
        MediaEvent::SinkQuiet(quiet) => {
            format!(r#"{{"event":"sink.quiet","ms":{:.1}}}"#, ms(quiet))
        }
        MediaEvent::SinkLatched { announced, source } => serde_json::json!({
            "event": "sink.latched", "announced": announced.to_string(), "source": source.to_string(),
        })
        .to_string(),
        MediaEvent::DtmfReceived { key, duration } => serde_json::json!({
            "event": "dtmf.received", "digit": key.to_string(), "duration_ms": duration.as_millis() as u64,
        })
        .to_string(),
        MediaEvent::Failed(reason) => {
            serde_json::json!({"event": "failed", "reason": reason.to_string()}).to_string()
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DtlsProfile {
    #[value(name = "aead-aes-128-gcm")]
    AeadAes128Gcm,
    #[value(name = "aes-cm-128-hmac-sha1-80")]
    AesCm128HmacSha1_80,
    #[value(name = "aes-cm-128-hmac-sha1-32")]
    AesCm128HmacSha1_32,
}

impl DtlsProfile {
    fn profile(self) -> SrtpProfile {
        match self {
            DtlsProfile::AeadAes128Gcm => SrtpProfile::AeadAes128Gcm,
            DtlsProfile::AesCm128HmacSha1_80 => SrtpProfile::AesCm128HmacSha1_80,
            DtlsProfile::AesCm128HmacSha1_32 => SrtpProfile::AesCm128HmacSha1_32,
        }
    }
}

/// Where the call's audio goes: the options `answer` and `offer` share.
#[derive(Args)]
pub struct SinkArgs {
    /// Our media address (host candidate).
    #[arg(long)]
    media_ip: IpAddr,
    /// A second media address (IPv6 beside an IPv4 --media-ip).
    #[arg(long)]
    media_ip6: Option<IpAddr>,
    /// The UDP port all media uses (0: any free port).
    #[arg(long, default_value_t = 0)]
    media_port: u16,
    /// The public address of a 1:1 NAT in front of --media-ip, announced instead of it.
    #[arg(long)]
    public_ip: Option<IpAddr>,
    /// A STUN server for a server-reflexive candidate, e.g. stun:stun.example.net:3478.
    #[arg(long)]
    stun_server: Option<String>,
    /// The local sink: the far side's RTP is sent there, and its RTP is accepted from there only.
    #[arg(long)]
    sink: SocketAddr,
    /// The call's local RTP port L (where the sink sends its audio). Default: any port on the sink's IP.
    #[arg(long)]
    local_rtp: Option<SocketAddr>,
    /// How long to relay before hanging up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Send DTMF keys (RFC 4733, 100 ms each) at a time into the call: `KEYS@SECONDS`, e.g. `12#@2.5`.
    #[arg(long)]
    dtmf: Option<String>,
    /// SRTP profiles offered in DTLS, preferred first.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [DtlsProfile::AeadAes128Gcm, DtlsProfile::AesCm128HmacSha1_80])]
    srtp_profiles: Vec<DtlsProfile>,
    /// Fail the call when the peer leaves consent checks unanswered this long (RFC 7675: 30).
    #[arg(long, default_value_t = 30.0)]
    consent_timeout_secs: f64,
}

async fn prepare(
    sink: &SinkArgs,
    role: IceRole,
) -> Result<(Prepared, LocalMedia, Arc<MediaSocket>)> {
    let socket = MediaSocket::bind_media(sink.media_ip, sink.media_ip6, sink.media_port)
        .await
        .with_context(|| format!("media socket on {} port {}", sink.media_ip, sink.media_port))?;
    let local_rtp = sink.local_rtp.unwrap_or(SocketAddr::new(sink.sink.ip(), 0));
    let mut cfg = MediaConfig::new(sink.media_ip, local_rtp, sink.sink, rand::random());
    cfg.consent_timeout = Duration::from_secs_f64(sink.consent_timeout_secs);
    cfg.media_ip6 = sink.media_ip6;
    cfg.public_ip = sink.public_ip;
    cfg.stun_server = sink.stun_server.clone();
    cfg.dtls_profiles = sink.srtp_profiles.iter().map(|p| p.profile()).collect();
    let prepared = Prepared::new(cfg, Identity::generate()?, role, &socket).await?;
    let local = prepared.local_media(
        &Capabilities::whatsapp(Security::Dtls),
        &mut rand::thread_rng(),
    );
    Ok((prepared, local, socket))
}

/// Written whole, then renamed: a peer polling for the file never reads half an SDP.
fn write_sdp(path: &Path, session: &sdp::Session) -> Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, sdp::print(session))
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

async fn answer(args: AnswerArgs) -> Result<()> {
    let text =
        std::fs::read(&args.offer).with_context(|| format!("--offer {}", args.offer.display()))?;
    let offer = sdp::parse(&text).map_err(|e| anyhow::anyhow!("offer: {e}"))?;
    let role = IceRole::answering(&offer);
    let (prepared, local, _socket) = prepare(&args.sink, role).await?;
    let (answer, plan) = match sdp::answer(&offer, &local) {
        Ok(x) => x,
        Err(e) => bail!("the offer is refused: {}: {e}", e.rule()),
    };
    write_sdp(&args.answer_out, &answer)?;
    relay(prepared, plan, local.ssrc, &args.sink).await
}

async fn offer(args: OfferArgs) -> Result<()> {
    let (prepared, local, _socket) = prepare(&args.sink, IceRole::Controlling).await?;
    let state = sdp::offer(&local).map_err(|e| anyhow::anyhow!("offer: {e}"))?;
    write_sdp(&args.offer_out, state.sdp())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        match std::fs::read(&args.answer) {
            Ok(t) if !t.is_empty() => break t,
            _ if Instant::now() > deadline => {
                bail!("no answer in {} after 60 s", args.answer.display())
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = std::fs::read(&args.answer).unwrap_or(text);
    let answer = sdp::parse(&text).map_err(|e| anyhow::anyhow!("answer: {e}"))?;
    let plan = sdp::accept_answer(&state, &answer)
        .map_err(|e| anyhow::anyhow!("the answer is refused: {}: {e}", e.rule()))?;
    relay(prepared, plan, local.ssrc, &args.sink).await
}

fn parse_dtmf(spec: &str) -> Result<(String, Duration)> {
    let (keys, at) = spec
        .split_once('@')
        .with_context(|| format!("--dtmf {spec:?}: expected KEYS@SECONDS"))?;
    let at: f64 = at
        .parse()
        .with_context(|| format!("--dtmf {spec:?}: {at:?} is not a number of seconds"))?;
    Ok((keys.to_string(), Duration::from_secs_f64(at)))
}

async fn relay(prepared: Prepared, plan: sdp::MediaPlan, ssrc: u32, args: &SinkArgs) -> Result<()> {
    let seconds = args.seconds;
    let dtmf = args.dtmf.as_deref().map(parse_dtmf).transpose()?;
    // Never the SDES keys: only which key exchange and our DTLS role.
    let keying = match &plan.keying {
        sdp::Keying::Dtls { role, .. } => format!(
            "dtls-{}",
            serde_json::to_value(role)?.as_str().unwrap_or("?")
        ),
        sdp::Keying::Sdes { suite, .. } => format!("sdes-{}", suite.name()),
        sdp::Keying::Plain => "plain".into(),
    };
    println!(
        r#"{{"event":"media.ready","local_rtp":"{}","ssrc":{ssrc},"keying":"{keying}"}}"#,
        prepared.app_addr()
    );
    let started = Instant::now();
    let mut session = prepared.start(plan, ssrc);
    let deadline = tokio::time::sleep(Duration::from_secs_f64(seconds));
    tokio::pin!(deadline);
    let (keys, dtmf_at) = dtmf.unwrap_or_default();
    let dtmf_timer = tokio::time::sleep(if keys.is_empty() {
        Duration::from_secs(86_400)
    } else {
        dtmf_at
    });
    tokio::pin!(dtmf_timer);
    let mut keys_pending = !keys.is_empty();
    let mut failed = None;
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = &mut dtmf_timer, if keys_pending => {
                keys_pending = false;
                for key in keys.chars() {
                    session.send_dtmf(key, Duration::from_millis(100))?;
                }
                println!("{}", serde_json::json!({"event": "dtmf.sent", "keys": keys}));
            }
            e = session.events.recv() => match e {
                Some(MediaEvent::Failed(reason)) => {
                    let reason = reason.to_string();
                    // Timed here: the session's own clock started with it.
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    println!("{}", serde_json::json!({"event": "failed", "ms": ms, "reason": reason}));
                    failed = Some(reason);
                    break;
                }
                Some(e) => println!("{}", event_json(&e)),
                None => break,
            }
        }
    }
    // What the call still had to say, its final stats last.
    for e in session.stop().await {
        if let MediaEvent::Failed(reason) = &e {
            failed.get_or_insert(reason.to_string());
        }
        println!("{}", event_json(&e));
    }
    match failed {
        Some(reason) => bail!("media failed: {reason}"),
        None => Ok(()),
    }
}
