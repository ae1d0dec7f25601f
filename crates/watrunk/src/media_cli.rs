//! `watrunk media answer`: answers one SDP offer from a file and runs its media against a local sink,
//! printing media events as JSON lines. It is the media stack without SIP, for testing against real
//! peers (rtpengine as Meta's stand-in, browsers) and for users checking their network path.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use watrunk_media::{IceRole, Identity, MediaConfig, MediaEvent, Prepared};
use watrunk_sdp::{self as sdp, LocalMedia, Profile, Security};

#[derive(Subcommand)]
pub enum MediaCommand {
    /// Answer an offer file, write our answer, relay the call's media to and from a local sink.
    Answer(AnswerArgs),
}

#[derive(Args)]
pub struct AnswerArgs {
    /// The remote offer (SDP).
    #[arg(long)]
    offer: PathBuf,
    /// Where our answer SDP is written (CRLF).
    #[arg(long)]
    answer_out: PathBuf,
    /// Our media address (host candidate).
    #[arg(long)]
    media_ip: IpAddr,
    /// The local sink: the caller's RTP is sent there, and its RTP is accepted from there only.
    #[arg(long)]
    sink: SocketAddr,
    /// The call's local RTP port L (where the sink sends its audio). Default: any port on the sink's IP.
    #[arg(long)]
    local_rtp: Option<SocketAddr>,
    /// How long to relay before hanging up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

pub async fn run(command: MediaCommand) -> Result<()> {
    match command {
        MediaCommand::Answer(a) => answer(a).await,
    }
}

fn event_json(e: &MediaEvent) -> String {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    match e {
        MediaEvent::IceConnected {
            local,
            remote,
            elapsed,
        } => format!(
            r#"{{"event":"ice.connected","local":"{local}","remote":"{remote}","ms":{:.1}}}"#,
            ms(elapsed)
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
        MediaEvent::Stats(s) => format!(
            r#"{{"event":"stats","packets_out":{},"silence_out":{},"bytes_out":{},"packets_in":{},"bytes_in":{},"srtp_rejected":{},"strangers":{}}}"#,
            s.packets_out,
            s.silence_out,
            s.bytes_out,
            s.packets_in,
            s.bytes_in,
            s.srtp_rejected,
            s.strangers
        ),
        MediaEvent::Failed { reason } => {
            serde_json::json!({"event": "failed", "reason": reason}).to_string()
        }
    }
}

async fn answer(args: AnswerArgs) -> Result<()> {
    let text =
        std::fs::read(&args.offer).with_context(|| format!("--offer {}", args.offer.display()))?;
    let offer = sdp::parse(&text).map_err(|e| anyhow::anyhow!("offer: {e}"))?;
    let role = match sdp::remote_ice_mode(&offer) {
        None => IceRole::None,
        Some(lite) => IceRole::for_answer(true, lite),
    };
    let local_rtp = args.local_rtp.unwrap_or(SocketAddr::new(args.sink.ip(), 0));
    let cfg = MediaConfig::new(args.media_ip, local_rtp, args.sink);
    let identity = Identity::generate()?;
    let prepared = Prepared::new(cfg, identity, role).await?;

    let mut local = LocalMedia::generate(Profile::WhatsApp, Security::Dtls)
        .with_candidates(prepared.candidates().iter().copied())
        .with_fingerprint(prepared.fingerprint().clone());
    let (ufrag, pwd) = prepared.ice_credentials();
    local.ice_ufrag = ufrag.to_string();
    local.ice_pwd = pwd.to_string();
    let (answer, plan) = match sdp::answer(&offer, &local) {
        Ok(x) => x,
        Err(e) => bail!("the offer is refused: {}: {e}", e.rule()),
    };
    // Written whole, then renamed: a peer polling for the file never reads half an answer.
    let partial = args.answer_out.with_extension("partial");
    std::fs::write(&partial, sdp::print(&answer))
        .and_then(|()| std::fs::rename(&partial, &args.answer_out))
        .with_context(|| format!("--answer-out {}", args.answer_out.display()))?;
    println!(
        r#"{{"event":"media.ready","local_rtp":"{}","ssrc":{}}}"#,
        prepared.app_addr(),
        local.ssrc
    );

    let started = std::time::Instant::now();
    let mut session = prepared.start(plan, local.ssrc);
    let deadline = tokio::time::sleep(Duration::from_secs_f64(args.seconds));
    tokio::pin!(deadline);
    let mut failed = None;
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            e = session.events.recv() => match e {
                Some(e) => {
                    let line = event_json(&e);
                    if let MediaEvent::Failed { .. } = e {
                        // When it failed, seen from here (the session's own clock started with it).
                        println!("{}", line.replace(r#"{"event":"failed""#, &format!(r#"{{"event":"failed","ms":{:.1}"#, started.elapsed().as_secs_f64() * 1000.0)));
                    } else {
                        println!("{line}");
                    }
                    if let MediaEvent::Failed { reason } = e {
                        failed = Some(reason);
                        break;
                    }
                }
                None => break,
            }
        }
    }
    session.stop().await;
    match failed {
        Some(reason) => bail!("media failed: {reason}"),
        None => Ok(()),
    }
}
