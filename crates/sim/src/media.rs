//! Meta's media relay as the sim plays it: ICE-lite (answers checks, never sends one) for DTLS-SRTP,
//! a plain address for SDES, an SSRC other than the one its SDP announced (Meta overwrites SSRCs),
//! and nothing sent before the business's first packet. Behind the relay, a tone goes in and what
//! the business sends is recorded; the call's task hears when the business stays silent too long.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use watrunk_media::{
    IceRole, Identity, MediaConfig, MediaEvent, MediaSession, MediaSocket, Prepared, Stats,
};
use watrunk_sdp::{self as sdp, Capabilities, LocalMedia, MediaPlan, OfferState, Security};

use rand::Rng;

use super::audio::{Recorder, Tone};
use super::{fork, Draws};

/// What the sim's relay does with a call's media.
#[derive(Clone, Debug)]
pub struct MediaOptions {
    pub media_ip: IpAddr,
    pub tone_hz: f64,
    /// Hang up when the business sends nothing for this long (Meta: 20 s).
    pub rtp_timeout: Duration,
    /// Send with the SSRC announced in the SDP instead of another one.
    pub keep_ssrc: bool,
    /// Send before the far side's first packet (Meta does not; `sim load` does toward a relay that
    /// waits for media itself, as rtpengine does).
    pub speak_first: bool,
    /// Keys the user presses (RFC 4733), and how long into the call.
    pub dtmf: Option<(String, Duration)>,
}

pub struct Relay {
    socket: Arc<MediaSocket>,
    identity: Identity,
    options: MediaOptions,
}

/// One call's media, ready to be described in an SDP.
pub struct Leg {
    prepared: Prepared,
    local: LocalMedia,
    /// Where the tone comes from and the business's audio is recorded (none when the leg's plain
    /// side is someone else's socket, as in `sim load`).
    ear: Option<UdpSocket>,
    /// What the call draws once its media starts (the tone's SSRC and first numbers).
    draws: Draws,
}

impl Relay {
    pub async fn new(options: MediaOptions) -> Result<Relay> {
        let identity = Identity::generate().map_err(|e| anyhow!("{e}"))?;
        Relay::with_identity(options, identity).await
    }

    /// A relay with its own media socket and a DTLS certificate shared with others.
    pub async fn with_identity(options: MediaOptions, identity: Identity) -> Result<Relay> {
        let socket = MediaSocket::bind(SocketAddr::new(options.media_ip, 0))
            .await
            .with_context(|| format!("media socket on {}", options.media_ip))?;
        Ok(Relay {
            socket,
            identity,
            options,
        })
    }

    /// Media for a call secured as `security` (ICE-lite for DTLS, a plain address for SDES), with
    /// its own tone and recorder.
    pub async fn leg(&self, security: Security, rng: &mut Draws) -> Result<Leg> {
        let ear = UdpSocket::bind(SocketAddr::new(self.options.media_ip, 0)).await?;
        let mut leg = self.leg_to(security, ear.local_addr()?, rng).await?;
        leg.ear = Some(ear);
        Ok(leg)
    }

    /// Media for a call whose plain RTP goes to and comes from `app`.
    pub async fn leg_to(
        &self,
        security: Security,
        app: SocketAddr,
        rng: &mut Draws,
    ) -> Result<Leg> {
        let mut cfg = MediaConfig::new(
            self.options.media_ip,
            SocketAddr::new(self.options.media_ip, 0),
            app,
            rng.gen(),
        );
        cfg.speak_first = self.options.speak_first;
        let role = match security {
            Security::Dtls => IceRole::Lite,
            _ => IceRole::None,
        };
        let prepared = Prepared::new(cfg, self.identity.clone(), role, &self.socket)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let local = prepared.local_media(&Capabilities::whatsapp(security), rng);
        Ok(Leg {
            prepared,
            local,
            ear: None,
            draws: fork(rng),
        })
    }

    /// Calls and connections still on the relay's socket (idle: 0 and 0).
    pub fn usage(&self) -> (usize, usize) {
        self.socket.usage()
    }
}

impl Leg {
    /// A Meta-shaped offer (user-initiated call).
    pub fn offer(&self) -> Result<(String, OfferState)> {
        let state = sdp::offer(&self.local).map_err(|e| anyhow!("our offer: {e}"))?;
        // Meta's SDP is ICE-lite at session level (`local_media` marks it so for `IceRole::Lite`).
        let text = sdp::print(state.sdp());
        Ok((text, state))
    }

    /// A Meta-shaped answer to the business's offer (business-initiated call).
    pub fn answer(&self, offer: &sdp::Session) -> Result<(String, MediaPlan), sdp::SdpError> {
        let (answer, plan) = sdp::answer(offer, &self.local)?;
        Ok((sdp::print(&answer), plan))
    }

    /// The SSRC Meta's relay sends with: another one than its SDP announced, unless told to keep it.
    fn sending_ssrc(&self, options: &MediaOptions) -> u32 {
        let announced = self.local.ssrc;
        if options.keep_ssrc {
            announced
        } else {
            announced.wrapping_add(0x1000_0001)
        }
    }

    /// Starts only the relay for `plan`: its plain side is the `app` address the leg was made for.
    pub fn start_session(self, plan: MediaPlan, options: &MediaOptions) -> MediaSession {
        let ssrc = self.sending_ssrc(options);
        self.prepared.start(plan, ssrc)
    }

    /// Starts the relay, the tone and the recorder for `plan`.
    pub fn start(mut self, plan: MediaPlan, options: &MediaOptions) -> Result<Running> {
        let announced = self.local.ssrc;
        let ssrc = self.sending_ssrc(options);
        let ear = self
            .ear
            .ok_or_else(|| anyhow!("this leg's plain side belongs to someone else"))?;
        let app = self.prepared.app_addr();
        let business_announced = plan.remote_ssrc;
        let session = self.prepared.start(plan.clone(), ssrc);
        let tone = Tone::new(options.tone_hz, plan.audio_pt, &mut self.draws)?;
        let recorder = Recorder::new(plan.audio_pt)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (notes_tx, notes) = mpsc::channel(4);
        let rtp_timeout = options.rtp_timeout;
        let mut dtmf = options.dtmf.clone();
        let task = tokio::spawn(async move {
            let mut report = Report {
                announced_ssrc: announced,
                sent_ssrc: ssrc,
                business_ssrc: business_announced,
                ..Report::default()
            };
            let started = Instant::now();
            let mut tone = tone;
            let mut recorder = recorder;
            let mut session = session;
            let mut stop_rx = stop_rx;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_heard = started;
            let mut told_silence = false;
            let mut buf = [0u8; 1500];
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tick.tick() => {
                        if let Ok(n) = tone.next_packet(&mut buf) {
                            let _ = ear.send_to(&buf[..n], app).await;
                        }
                        if let Some((keys, _)) = dtmf.take_if(|(_, after)| started.elapsed() >= *after) {
                            for key in keys.chars() {
                                if let Err(e) = session.send_dtmf(key, Duration::from_millis(100)) {
                                    report.dtmf_failure = Some(format!("{key}: {e}"));
                                }
                            }
                            report.dtmf_sent = keys;
                        }
                        if !told_silence && last_heard.elapsed() >= rtp_timeout {
                            told_silence = true;
                            let _ = notes_tx.try_send(Note::RtpTimeout);
                        }
                    }
                    r = ear.recv_from(&mut buf) => {
                        if let Ok((n, from)) = r {
                            if from == app {
                                recorder.push(&buf[..n]);
                                last_heard = Instant::now();
                            }
                        }
                    }
                    e = session.events.recv() => match e {
                        Some(e) => report.note(&e, &notes_tx),
                        None => break,
                    },
                }
            }
            for e in session.stop().await {
                report.note(&e, &notes_tx);
            }
            report.heard = recorder.analyse(1.0);
            report.heard_packets = recorder.packets;
            report.business_ssrcs = recorder.ssrcs.clone();
            report.repeated_seqs = recorder.repeated_seqs;
            report.seq_jumps = recorder.seq_jumps;
            report.reordered = recorder.reordered;
            report.max_gap_ms = recorder.max_gap.as_secs_f64() * 1000.0;
            report.heard_dtmf = recorder.dtmf.keys.clone();
            report.heard_dtmf_ms = recorder.dtmf.durations_ms.clone();
            report
        });
        Ok(Running {
            stop: stop_tx,
            task,
            notes,
        })
    }
}

/// What a running call's media tells the call.
#[derive(Debug)]
pub enum Note {
    /// Nothing from the business for the RTP timeout.
    RtpTimeout,
    Failed(String),
}

pub struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Report>,
    pub notes: mpsc::Receiver<Note>,
}

impl Running {
    /// Stops the media and waits until every socket and task of it is gone.
    pub async fn stop(self) -> Report {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub announced_ssrc: u32,
    pub sent_ssrc: u32,
    /// The business's SDP's SSRC, and the ones its RTP came with.
    pub business_ssrc: Option<u32>,
    pub business_ssrcs: Vec<u32>,
    pub repeated_seqs: u64,
    pub seq_jumps: u64,
    /// Packets that came after one with a higher sequence number.
    pub reordered: u64,
    pub max_gap_ms: f64,
    pub ice_ms: Option<f64>,
    pub secure_ms: Option<f64>,
    pub profile: Option<&'static str>,
    pub first_rtp_in_ms: Option<f64>,
    pub first_rtp_out_ms: Option<f64>,
    pub failure: Option<String>,
    pub stats: Stats,
    /// Dominant frequency and RMS level of what the business sent.
    pub heard: Option<(f64, f64)>,
    pub heard_packets: u64,
    /// The keys the user pressed, and why one could not be.
    pub dtmf_sent: String,
    pub dtmf_failure: Option<String>,
    /// The business's telephone-events (PT 126, as Meta's SDP names it), and each one's duration
    /// on the 8000 Hz clock.
    pub heard_dtmf: String,
    pub heard_dtmf_ms: Vec<u32>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

impl Report {
    fn note(&mut self, e: &MediaEvent, notes: &mpsc::Sender<Note>) {
        match e {
            MediaEvent::IceConnected(ice) => self.ice_ms = Some(ms(ice.elapsed)),
            MediaEvent::SecureUp { profile, elapsed } => {
                self.secure_ms = Some(ms(*elapsed));
                self.profile = Some(profile);
            }
            MediaEvent::FirstRtpIn { elapsed } => self.first_rtp_in_ms = Some(ms(*elapsed)),
            MediaEvent::FirstRtpOut { elapsed } => self.first_rtp_out_ms = Some(ms(*elapsed)),
            MediaEvent::Stats(s) => self.stats = (**s).clone(),
            // The sim's sink timeout is not set: its own RTP timeout is on the far side's stream.
            MediaEvent::SinkQuiet(_) | MediaEvent::SinkLatched { .. } => {}
            // Its recorder hears the business's keys itself (`heard_dtmf`).
            MediaEvent::DtmfReceived { .. } => {}
            MediaEvent::Failed(e) => {
                let reason = e.to_string();
                self.failure = Some(reason.clone());
                let _ = notes.try_send(Note::Failed(reason));
            }
        }
    }

    /// The business spoke first: its first packet reached us before we sent any.
    /// What the judge checks of the business's media.
    pub fn seen(&self) -> super::judge::MediaSeen {
        super::judge::MediaSeen {
            business_first: self.first_rtp_in_ms.map(|_| self.business_first()),
            announced: self.business_ssrc,
            ssrcs: self.business_ssrcs.clone(),
            repeated_seqs: self.repeated_seqs,
            srtp_rejected: self.stats.srtp_rejected,
        }
    }

    pub fn business_first(&self) -> bool {
        match (self.first_rtp_in_ms, self.first_rtp_out_ms) {
            (Some(i), Some(o)) => i <= o,
            (Some(_), None) => true,
            _ => false,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "ice_ms": self.ice_ms,
            "secure_ms": self.secure_ms,
            "srtp_profile": self.profile,
            "first_rtp_in_ms": self.first_rtp_in_ms,
            "first_rtp_out_ms": self.first_rtp_out_ms,
            "business_sent_first": self.business_first(),
            "announced_ssrc": self.announced_ssrc,
            "sent_ssrc": self.sent_ssrc,
            "business_announced_ssrc": self.business_ssrc,
            "business_ssrcs": self.business_ssrcs,
            "repeated_seqs": self.repeated_seqs,
            "seq_jumps": self.seq_jumps,
            "reordered": self.reordered,
            "max_gap_ms": (self.max_gap_ms * 10.0).round() / 10.0,
            "dtmf_sent": self.dtmf_sent,
            "dtmf_failure": self.dtmf_failure,
            "heard_dtmf": self.heard_dtmf,
            "heard_dtmf_ms": self.heard_dtmf_ms,
            "packets_in": self.stats.packets_in,
            "packets_out": self.stats.packets_out,
            "srtp_rejected": self.stats.srtp_rejected,
            // The business's stream as this side's RTCP reports it (RFC 3550 A.3, A.8).
            "lost": self.stats.lost,
            "jitter_us": self.stats.jitter_us,
            "rtt_us": self.stats.rtt_us,
            "heard_packets": self.heard_packets,
            "heard_hz": self.heard.map(|h| (h.0 * 10.0).round() / 10.0),
            "heard_rms": self.heard.map(|h| (h.1 * 1000.0).round() / 1000.0),
            "failure": self.failure,
        })
    }
}
