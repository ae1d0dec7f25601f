//! A call's media task: it prepares our local description for the leg's `Prepare`, reports it,
//! starts the session on `Start`, forwards the session's events to the core and the core's
//! commands (DTMF, a moved sink, stop) to the session. The core never awaits it: they talk over bounded channels.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::mpsc;
use watrunk_call::{Fault, MediaFailure};
use watrunk_media::{
    IceRole, Identity, MediaConfig, MediaError, MediaSession, MediaSocket, Prepared, Sink,
};
use watrunk_sdp::{self as sdp, Capabilities, LocalMedia, Security};

use super::calls::CallInput;
use super::registry::{CallKey, Session};
use super::Core;

/// A call's local description, made by its media task.
pub struct Ready {
    pub(super) local: LocalMedia,
    pub(super) app_addr: SocketAddr,
}

pub(super) enum MediaCmd {
    /// Boxed: every call's command channel has room for 32 of these.
    Start {
        plan: Box<sdp::MediaPlan>,
        ssrc: u32,
    },
    Dtmf(String),
    /// The PBX moved its media, or changed codec or keys (bridged calls).
    Retarget(Box<Sink>),
    Stop,
}

/// The media every call shares: one UDP socket, one DTLS identity.
pub struct MediaShared {
    pub socket: Arc<MediaSocket>,
    pub identity: Identity,
    pub ip: IpAddr,
    pub ip6: Option<IpAddr>,
    pub public_ip: Option<IpAddr>,
    pub rtp_timeout: Option<Duration>,
    /// `--key-log`: each call's keys go there, named by the WhatsApp leg's Call-ID.
    pub key_log: Option<Arc<crate::keylog::KeyLog>>,
}

/// The media stack's failure as the leg takes it: whose fault, and what happened.
pub(super) fn media_failure(e: &MediaError) -> MediaFailure {
    let (fault, detail) = match e {
        MediaError::Peer(d) => (Fault::Peer, d),
        MediaError::Timeout(d) => (Fault::Timeout, d),
        MediaError::Local(d) => (Fault::Local, d),
    };
    MediaFailure {
        fault,
        detail: detail.clone(),
    }
}

impl Core {
    /// The leg's `Prepare`: a media task that makes our local description, then runs the session.
    pub(super) fn start_media(&mut self, key: CallKey, role: IceRole, security: Security) {
        let (Some(media), Some(entry)) = (self.media.as_ref(), self.calls.get_mut(key)) else {
            return;
        };
        if entry.media.is_some() {
            return;
        }
        let mut cfg = MediaConfig::new(
            media.ip,
            SocketAddr::new(entry.sink.addr.ip(), 0),
            entry.sink.addr,
            self.rng.next_u64(),
        );
        cfg.media_ip6 = media.ip6;
        cfg.sink_audio = entry.sink.audio;
        cfg.sink_payloads = entry.sink.payloads;
        cfg.sink_keys = entry.sink.keys;
        cfg.rtp_timeout = media.rtp_timeout;
        if let (Session::Bridged(_), Some(pbx)) = (&entry.leg, self.cfg.calls.pbxs.get(entry.pbx)) {
            cfg.sink_timeout = pbx.rtp_timeout;
            cfg.sink_latch = pbx.symmetric_rtp;
        }
        cfg.app_socket = entry.plain_socket.clone();
        cfg.public_ip = media.public_ip;
        cfg.key_log = media
            .key_log
            .as_ref()
            .map(|log| log.hook(entry.leg.leg(watrunk_call::LegId::WhatsApp).call_id()));
        let (tx, rx) = mpsc::channel(16);
        entry.media = Some(tx);
        // The set-up is boxed: its state would otherwise size the call's media task for its
        // whole life.
        let set_up = Box::pin(set_up_media(
            key,
            MediaSetUp {
                cfg,
                identity: media.identity.clone(),
                role,
                socket: media.socket.clone(),
                security,
                seed: self.rng.next_u64(),
            },
            rx,
            self.call_tx.clone(),
        ));
        let span = entry.span.clone();
        tokio::spawn(tracing::Instrument::instrument(
            run_media(key, set_up, self.call_tx.clone()),
            span,
        ));
    }
}

/// One call's media task: its set-up, then the session's events to the core and the core's
/// commands to the session.
async fn run_media(
    key: CallKey,
    set_up: impl std::future::Future<Output = Option<(MediaSession, mpsc::Receiver<MediaCmd>)>>,
    core: mpsc::Sender<CallInput>,
) {
    let Some((mut session, mut commands)) = set_up.await else {
        return;
    };
    loop {
        tokio::select! {
            e = session.events.recv() => match e {
                Some(event) => { let _ = core.send(CallInput::Media { key, event }).await; }
                None => break,
            },
            c = commands.recv() => match c {
                Some(MediaCmd::Dtmf(keys)) => {
                    for k in keys.chars() {
                        if let Err(e) = session.send_dtmf(k, Duration::from_millis(100)) {
                            tracing::info!("call {key}: DTMF {k}: {e}");
                        }
                    }
                }
                Some(MediaCmd::Start { .. }) => {}
                Some(MediaCmd::Retarget(c)) => retarget(key, &session, &c),
                Some(MediaCmd::Stop) | None => break,
            },
        }
    }
    for event in Box::pin(session.stop()).await {
        let _ = core.send(CallInput::Media { key, event }).await;
    }
    let _ = core.send(CallInput::MediaStopped { key }).await;
}

/// What a call's media set-up needs from the core.
struct MediaSetUp {
    cfg: MediaConfig,
    identity: Identity,
    role: IceRole,
    socket: Arc<MediaSocket>,
    security: Security,
    /// Seeds the generator of this call's ICE credentials, SSRC and SDES key.
    seed: u64,
}

/// Prepares the call's media, tells the core our local description, and starts the session when
/// the core says so; `None` when the call ended first (the core has been told).
async fn set_up_media(
    key: CallKey,
    set_up: MediaSetUp,
    mut commands: mpsc::Receiver<MediaCmd>,
    core: mpsc::Sender<CallInput>,
) -> Option<(MediaSession, mpsc::Receiver<MediaCmd>)> {
    let MediaSetUp {
        cfg,
        identity,
        role,
        socket,
        security,
        seed,
    } = set_up;
    let prepared = match Box::pin(Prepared::new(cfg, identity, role, &socket)).await {
        Ok(p) => p,
        Err(e) => {
            let _ = core
                .send(CallInput::MediaReady {
                    key,
                    result: Err(e),
                })
                .await;
            let _ = core.send(CallInput::MediaStopped { key }).await;
            return None;
        }
    };
    let local = prepared.local_media(
        &Capabilities::whatsapp(security),
        &mut StdRng::seed_from_u64(seed),
    );
    let ready = Ready {
        local,
        app_addr: prepared.app_addr(),
    };
    let _ = core
        .send(CallInput::MediaReady {
            key,
            result: Ok(ready),
        })
        .await;
    // A change before the start: the media starts where it was prepared, then follows.
    let mut change = None;
    let (plan, ssrc) = loop {
        match commands.recv().await {
            Some(MediaCmd::Start { plan, ssrc }) => break (plan, ssrc),
            Some(MediaCmd::Dtmf(_)) => continue,
            Some(MediaCmd::Retarget(c)) => change = Some(c),
            Some(MediaCmd::Stop) | None => {
                Box::pin(prepared.close()).await;
                let _ = core.send(CallInput::MediaStopped { key }).await;
                return None;
            }
        }
    };
    let session = prepared.start(*plan, ssrc);
    if let Some(c) = change {
        retarget(key, &session, &c);
    }
    Some((session, commands))
}

fn retarget(key: CallKey, session: &MediaSession, sink: &Sink) {
    if let Err(e) = session.retarget(*sink) {
        tracing::info!("call {key}: media to {}: {e}", sink.addr);
    }
}
