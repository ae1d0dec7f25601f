//! The call registry: every live call's entry (its leg, names, sink, media channel, timings and
//! what it ended with), found by our key, the SIP Call-ID, the API's name or a transaction.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use watrunk_call::{Bridge, BridgeOutput, Ending, Leg, LegId, MetaHeaders};
use watrunk_media::{Sink, SinkAudio, SinkPayloads, Stats};
use watrunk_sip::transaction::{Peer, TransactionId};

use super::media_task::MediaCmd;
use watrunk_sip::io::transport::ConnId;

pub type CallKey = u64;

#[derive(Default)]
pub(super) struct Timings {
    /// The authenticated INVITE (inbound) or the originate request (outbound).
    pub(super) start: Option<Instant>,
    pub(super) media_ready: Option<Duration>,
    pub(super) final_response: Option<Duration>,
    pub(super) ice: Option<Duration>,
    pub(super) secure: Option<Duration>,
    pub(super) first_rtp_out: Option<Duration>,
    pub(super) first_rtp_in: Option<Duration>,
}

/// A call's invite sessions: the WhatsApp leg alone, or bridged to a PBX leg.
// The entry is boxed in the registry already: the common case (one leg) stays inline, without a
// second allocation per call.
#[allow(clippy::large_enum_variant)]
pub(super) enum Session {
    Single(Leg),
    Bridged(Box<Bridge>),
}

impl Session {
    pub(super) fn leg_mut(&mut self, id: LegId) -> &mut Leg {
        match self {
            Session::Single(leg) => leg,
            Session::Bridged(bridge) => bridge.leg_mut(id),
        }
    }

    pub(super) fn leg(&self, id: LegId) -> &Leg {
        match self {
            Session::Single(leg) => leg,
            Session::Bridged(bridge) => bridge.leg(id),
        }
    }

    /// The WhatsApp leg: the call as the API and the events see it.
    pub(super) fn whatsapp(&mut self) -> &mut Leg {
        self.leg_mut(LegId::WhatsApp)
    }

    /// Ends the call: every leg that is up gets a BYE with this reason and Q.850 cause.
    pub(super) fn hang_up(&mut self, reason: &str, q850_cause: u16) {
        match self {
            Session::Single(leg) => leg.hang_up(reason, q850_cause),
            Session::Bridged(bridge) => bridge.hang_up(reason, q850_cause),
        }
    }

    pub(super) fn is_ended(&self) -> bool {
        match self {
            Session::Single(leg) => leg.is_ended(),
            Session::Bridged(bridge) => bridge.is_ended(),
        }
    }

    /// A bridge's own timer (the WhatsApp leg alone has none the core drives).
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Session::Single(_) => None,
            Session::Bridged(bridge) => bridge.poll_timeout(),
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        if let Session::Bridged(bridge) = self {
            bridge.handle_timeout(now);
        }
    }

    pub(super) fn poll_output(&mut self) -> Option<BridgeOutput> {
        match self {
            Session::Single(leg) => leg
                .poll_output()
                .map(|out| BridgeOutput::Leg(LegId::WhatsApp, out)),
            Session::Bridged(bridge) => bridge.poll_output(),
        }
    }
}

pub(super) struct Entry {
    pub(super) leg: Session,
    pub(super) id: String,
    pub(super) number: String,
    pub(super) remote: String,
    /// Where the call's media meets its sink (the agent's, or a PBX's as its SDP agreed: its
    /// address, codec, payload types and SDES keys).
    pub(super) sink: Sink,
    pub(super) meta: MetaHeaders,
    pub(super) media: Option<mpsc::Sender<MediaCmd>>,
    /// The peer the INVITE came from (inbound): its connection is tried first for our requests.
    pub(super) origin: Option<Peer>,
    pub(super) timings: Timings,
    pub(super) stats: Option<Stats>,
    /// Kept until the media task has stopped, then reported with the final stats.
    pub(super) ended: Option<Ending>,
    /// When this call's own timer (a bridge's ring timeout) is due, as the core has it scheduled.
    pub(super) timer: Option<Instant>,
    /// A bridged call's local RTP port, bound when the PBX leg's offer needed it.
    pub(super) plain_socket: Option<std::sync::Arc<std::net::UdpSocket>>,
    pub(super) local_rtp: Option<SocketAddr>,
    pub(super) ssrc: u32,
    pub(super) answered: bool,
    /// A bridged call's PBX trunk (its index in the configuration).
    pub(super) pbx: usize,
    /// Our ring tone toward the PBX while Meta rings (dropping it stops it).
    pub(super) ringback: Option<watrunk_media::ringback::Ringback>,
    /// Every log line about the call is in it: its id and Meta's wacid.
    pub(super) span: tracing::Span,
}

#[derive(Default)]
pub struct Calls {
    next_key: CallKey,
    /// Boxed: a table of 2.4 KiB entries at most 7/8 full leaves whole pages of empty slots.
    entries: HashMap<CallKey, Box<Entry>>,
    by_sip_call_id: HashMap<String, (CallKey, LegId)>,
    by_name: HashMap<String, CallKey>,
    by_transaction: HashMap<TransactionId, (CallKey, LegId)>,
    /// What each call put in the two indexes above, so that its end removes just that (a `retain`
    /// over every live call's entries made each call's end cost O(calls)).
    indexed: HashMap<CallKey, Indexed>,
}

#[derive(Default)]
struct Indexed {
    sip_call_ids: Vec<String>,
    transactions: Vec<TransactionId>,
}

/// Who a new call is with, for its entry.
pub(super) struct Parties {
    pub(super) number: String,
    pub(super) remote: String,
    pub(super) sink: SocketAddr,
    pub(super) sink_audio: SinkAudio,
    pub(super) meta: MetaHeaders,
    /// Inbound: where the INVITE came from.
    pub(super) origin: Option<Peer>,
}

impl Entry {
    /// A call that starts now: nothing of its media known yet.
    pub(super) fn new(leg: Session, id: String, parties: Parties) -> Entry {
        let span = tracing::info_span!(
            "call",
            id = %id,
            wacid = parties.meta.call_id.as_deref().unwrap_or_default()
        );
        Entry {
            span,
            leg,
            timer: None,
            plain_socket: None,
            id,
            number: parties.number,
            remote: parties.remote,
            sink: Sink {
                addr: parties.sink,
                audio: parties.sink_audio,
                payloads: SinkPayloads::default(),
                keys: None,
            },
            meta: parties.meta,
            media: None,
            origin: parties.origin,
            timings: Timings {
                start: Some(Instant::now()),
                ..Timings::default()
            },
            stats: None,
            ended: None,
            local_rtp: None,
            ssrc: 0,
            pbx: 0,
            ringback: None,
            answered: false,
        }
    }
}

impl Calls {
    /// A key for a new call.
    pub(super) fn new_key(&mut self) -> CallKey {
        self.next_key += 1;
        self.next_key
    }

    /// Registers a call under its key, SIP Call-ID and name.
    pub(super) fn insert(&mut self, key: CallKey, sip_call_id: &str, entry: Entry) {
        self.index_call_id(sip_call_id, key, LegId::WhatsApp);
        self.by_name.insert(entry.id.clone(), key);
        self.entries.insert(key, Box::new(entry));
    }

    /// Our requests' and the INVITE's transactions lead to their call.
    pub(super) fn index_transaction(&mut self, id: TransactionId, key: CallKey) {
        self.index_leg_transaction(id, key, LegId::WhatsApp);
    }

    pub(super) fn index_leg_transaction(&mut self, id: TransactionId, key: CallKey, leg: LegId) {
        self.by_transaction.insert(id, (key, leg));
        self.indexed.entry(key).or_default().transactions.push(id);
    }

    /// A bridged call's PBX leg has a Call-ID of its own.
    pub(super) fn index_call_id(&mut self, sip_call_id: &str, key: CallKey, leg: LegId) {
        self.by_sip_call_id
            .insert(sip_call_id.to_string(), (key, leg));
        self.indexed
            .entry(key)
            .or_default()
            .sip_call_ids
            .push(sip_call_id.to_string());
    }

    /// A call's transfer leg became its PBX leg (`BridgeOutput::Promoted`): its Call-ID and its
    /// transactions are the PBX leg's from now on.
    pub(super) fn promote(&mut self, sip_call_id: &str, key: CallKey) {
        self.index_call_id(sip_call_id, key, LegId::Pbx);
        let ids = self.indexed.get(&key).map(|i| i.transactions.as_slice());
        for id in ids.unwrap_or_default() {
            if let Some((k, leg)) = self.by_transaction.get_mut(id) {
                if *k == key && *leg == LegId::Transfer {
                    *leg = LegId::Pbx;
                }
            }
        }
    }

    pub(super) fn get(&self, key: CallKey) -> Option<&Entry> {
        self.entries.get(&key).map(|e| &**e)
    }

    pub(super) fn get_mut(&mut self, key: CallKey) -> Option<&mut Entry> {
        self.entries.get_mut(&key).map(|e| &mut **e)
    }

    pub(super) fn by_sip_call_id(&self, call_id: &str) -> Option<CallKey> {
        self.leg_of_call_id(call_id).map(|(key, _)| key)
    }

    pub(super) fn leg_of_call_id(&self, call_id: &str) -> Option<(CallKey, LegId)> {
        self.by_sip_call_id.get(call_id).copied()
    }

    pub(super) fn by_name(&self, name: &str) -> Option<CallKey> {
        self.by_name.get(name).copied()
    }

    pub(super) fn leg_of_transaction(&self, id: TransactionId) -> Option<(CallKey, LegId)> {
        self.by_transaction.get(&id).copied()
    }

    /// Forgets a call and every index to it.
    pub(super) fn remove(&mut self, key: CallKey) -> Option<Box<Entry>> {
        let entry = self.entries.remove(&key)?;
        self.by_name.remove(&entry.id);
        let indexed = self.indexed.remove(&key).unwrap_or_default();
        for call_id in indexed.sip_call_ids {
            if self
                .by_sip_call_id
                .get(&call_id)
                .is_some_and(|(k, _)| *k == key)
            {
                self.by_sip_call_id.remove(&call_id);
            }
        }
        for id in indexed.transactions {
            if self.by_transaction.get(&id).is_some_and(|(k, _)| *k == key) {
                self.by_transaction.remove(&id);
            }
        }
        Some(entry)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn keys(&self) -> Vec<CallKey> {
        self.entries.keys().copied().collect()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().map(|e| &**e)
    }
}

impl Calls {
    /// Whether a live call may send or receive over the connection `conn` to `remote`: the one
    /// its INVITE came on or from the same peer, or (for calls we placed, whose hop is chosen per
    /// request) any connection at all.
    pub fn may_use(&self, conn: ConnId, remote: SocketAddr) -> bool {
        self.entries.values().any(|e| match &e.origin {
            Some(o) => o.conn == Some(conn) || o.addr == remote,
            None => true,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
