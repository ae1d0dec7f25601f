//! ICE for set-up: webrtc-ice agents on the shared socket (pacing, host candidates, the ICE-lite
//! credentials), the connectivity checks until a pair is selected, made again in the other role
//! when the peer wins a role conflict, and consent pacing while the agent lives.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::debug;
pub use watrunk_sdp::IceRole;
use watrunk_sdp::RemoteIce;
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::agent::Agent;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::candidate::{Candidate, CandidateType};
use webrtc_ice::mdns::MulticastDnsMode;
use webrtc_ice::network_type::NetworkType;
use webrtc_ice::udp_network::UDPNetwork;
use webrtc_util::Conn;

use crate::consent::CONSENT_INTERVAL;
use crate::mux::MediaSocket;
use crate::MediaError;

use crate::session::{Leftovers, MediaConfig, SET_UP_TIMEOUT};

/// RFC 8445 §14.2's floor for Ta.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(5);
/// How long a pair is checked before webrtc-ice stops sending to it (a late answer still counts).
pub(crate) const CHECKING_A_PAIR: Duration = Duration::from_millis(200);

pub(crate) fn checks_per_pair(interval: Duration) -> u16 {
    let interval = interval.max(Duration::from_millis(1)).as_millis();
    (CHECKING_A_PAIR.as_millis() / interval).clamp(7, 200) as u16
}

/// A lite agent's ufrag and password (RFC 8445 §5.3: at least 24 and 128 bits of randomness).
pub(crate) fn lite_credentials(rng: &mut impl rand::Rng) -> (String, String) {
    use rand::distributions::{Alphanumeric, DistString};
    (
        Alphanumeric.sample_string(rng, 8),
        Alphanumeric.sample_string(rng, 24),
    )
}

/// An ICE agent on the shared socket with host candidates gathered: `credentials` keeps a call's ufrag
/// and password when its agent is made again in the other role (RFC 8445 §7.2.5.1).
pub(crate) async fn ice_agent(
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

/// Consent freshness (RFC 7675) as webrtc-ice's timers, while the agent lives (until the keys
/// exist; consent.rs keeps it after): a check on the selected pair every `interval` (§5.1: 5 s);
/// Disconnected after two unanswered checks, which webrtc-ice recovers from by itself; Failed once
/// `timeout` passed without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConsentPacing {
    pub(crate) interval: Duration,
    pub(crate) disconnected: Duration,
    pub(crate) failed: Duration,
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

/// Runs the connectivity checks until a pair is selected. When the peer wins a role conflict (role.rs:
/// by the tie-breakers or by answering 487), webrtc-ice cannot switch roles, so the agent is made again
/// in the other role with the same credentials and candidates, once.
pub(crate) async fn connect_ice(
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
