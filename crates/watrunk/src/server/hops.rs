//! Where a call's request goes: the route set's first hop, else the Request-URI (RFC 3261
//! §8.1.2), and for calls we place the configured Meta server. Names are looked up off the core
//! task; the answer comes back as `CallInput::Resolved`.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use watrunk_call::LegId;
use watrunk_sip::transaction::{Peer, Transport};
use watrunk_sip::values::NameAddr;
use watrunk_sip::{Message, Method, Uri};

use super::calls::CallInput;
use super::registry::CallKey;
use super::Core;

impl Core {
    /// Where a call's request goes: the route set's first hop, else the Request-URI (RFC 3261
    /// §8.1.2); calls we place go to the configured Meta server.
    pub(super) fn route(&mut self, key: CallKey, leg: LegId, message: Message) {
        let Message::Request(req) = &message else {
            return;
        };
        let target = req
            .headers
            .values("Route")
            .next()
            .and_then(|r| NameAddr::parse(r, "Route").ok())
            .map(|n| n.uri)
            .unwrap_or_else(|| req.uri.clone());
        let outbound_initial =
            req.method == Method::INVITE && req.to().is_some_and(|t| t.tag().is_none());
        let pbx = self
            .calls
            .get(key)
            .and_then(|e| self.cfg.calls.pbxs.get(e.pbx))
            .filter(|_| leg != LegId::WhatsApp);
        let default_port = if pbx.is_some() { 5060 } else { 5061 };
        // A transfer's new leg goes where the REFER named (checked to be the PBX).
        let (host, port) =
            if leg == LegId::Transfer && (outbound_initial || req.method == Method::CANCEL) {
                match hop_of(&req.uri, default_port) {
                    Some(h) => h,
                    None => {
                        tracing::warn!("call {key}: no next hop in {}", req.uri);
                        return;
                    }
                }
            } else if outbound_initial || req.method == Method::CANCEL {
                match pbx {
                    Some(pbx) => (pbx.host.clone(), pbx.port),
                    None => split_server(&self.cfg.calls.meta_server),
                }
            } else {
                match hop_of(&target, default_port) {
                    Some(h) => h,
                    None => {
                        tracing::warn!("call {key}: no next hop in {target}");
                        return;
                    }
                }
            };
        // A hop we already talk to (the INVITE's connection) needs no lookup.
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.send_to_hop(key, leg, message, SocketAddr::new(ip, port), host);
            return;
        }
        let tx = self.call_tx.clone();
        tokio::spawn(async move {
            let to = match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => {
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    addrs
                        .iter()
                        .find(|a| a.is_ipv4())
                        .or(addrs.first())
                        .copied()
                        .ok_or_else(|| format!("{host} has no address"))
                }
                Err(e) => Err(format!("cannot resolve {host}: {e}")),
            };
            let _ = tx
                .send(CallInput::Resolved {
                    key,
                    leg,
                    message,
                    to,
                    server_name: host,
                })
                .await;
        });
    }

    pub(super) fn send_to_hop(
        &mut self,
        key: CallKey,
        leg: LegId,
        message: Message,
        addr: SocketAddr,
        server_name: String,
    ) {
        let now = Instant::now();
        // The INVITE's own connection when the hop is where it came from; else any live one.
        let conn = self
            .calls
            .get(key)
            .and_then(|e| e.origin.as_ref())
            .filter(|o| o.addr == addr && o.conn.is_some_and(|c| self.connections.is_live(c)))
            .and_then(|o| o.conn);
        let peer = match leg {
            LegId::Pbx | LegId::Transfer => Peer {
                transport: self
                    .calls
                    .get(key)
                    .and_then(|e| self.cfg.calls.pbxs.get(e.pbx))
                    .map_or(Transport::Udp, |p| p.transport),
                addr,
                conn: None,
            },
            LegId::WhatsApp => Peer {
                transport: Transport::Tls,
                addr,
                conn,
            },
        };
        self.connections.name_hop(addr, server_name);
        match message {
            Message::Request(r) if r.method == Method::ACK => {
                if let Err(e) = self.layer.send_stateless(Message::Request(r), peer) {
                    tracing::debug!("call {key}: ack: {e}");
                }
            }
            Message::Request(r) => {
                let method = r.method.clone();
                if self
                    .calls
                    .get(key)
                    .is_none_or(|e| e.leg.leg(leg).is_ended())
                {
                    return;
                }
                match self.layer.send_request(now, r, peer) {
                    Ok(id) => {
                        self.calls.index_leg_transaction(id, key, leg);
                        if let Some(e) = self.calls.get_mut(key) {
                            e.leg.leg_mut(leg).request_sent(&method, id);
                        }
                    }
                    Err(err) => {
                        tracing::warn!("call {key}: {method}: {err}");
                        if let Some(e) = self.calls.get_mut(key) {
                            e.leg
                                .leg_mut(leg)
                                .handle_send_failure(&method, &err.to_string());
                        }
                    }
                }
            }
            Message::Response(_) => {}
        }
        self.pump(key);
    }
}

/// host and port of a URI, for the next hop (`default_port` when it names none).
fn hop_of(uri: &Uri, default_port: u16) -> Option<(String, u16)> {
    let sip = uri.as_sip()?;
    let host = sip.host.to_string();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Some((host, sip.port.unwrap_or(default_port)))
}

fn split_server(s: &str) -> (String, u16) {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return (addr.ip().to_string(), addr.port());
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse().unwrap_or(5061),
        ),
        _ => (s.to_string(), 5061),
    }
}
