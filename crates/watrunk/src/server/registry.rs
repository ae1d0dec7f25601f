//! The call registry: every live call's entry (its leg, names, sink, media channel, timings and
//! what it ended with), found by our key, the SIP Call-ID, the API's name or a transaction.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use watrunk_call::{Ending, Leg, MetaHeaders};
use watrunk_media::{SinkAudio, Stats};
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

pub(super) struct Entry {
    pub(super) leg: Leg,
    pub(super) id: String,
    pub(super) number: String,
    pub(super) remote: String,
    pub(super) sink: SocketAddr,
    pub(super) sink_audio: SinkAudio,
    pub(super) meta: MetaHeaders,
    pub(super) media: Option<mpsc::Sender<MediaCmd>>,
    /// The peer the INVITE came from (inbound): its connection is tried first for our requests.
    pub(super) origin: Option<Peer>,
    pub(super) timings: Timings,
    pub(super) stats: Option<Stats>,
    /// Kept until the media task has stopped, then reported with the final stats.
    pub(super) ended: Option<Ending>,
    pub(super) local_rtp: Option<SocketAddr>,
    pub(super) ssrc: u32,
    pub(super) answered: bool,
}

#[derive(Default)]
pub struct Calls {
    next_key: CallKey,
    /// Boxed: a table of 2.4 KiB entries at most 7/8 full leaves whole pages of empty slots.
    entries: HashMap<CallKey, Box<Entry>>,
    by_sip_call_id: HashMap<String, CallKey>,
    by_name: HashMap<String, CallKey>,
    by_transaction: HashMap<TransactionId, CallKey>,
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
    pub(super) fn new(leg: Leg, id: String, parties: Parties) -> Entry {
        Entry {
            leg,
            id,
            number: parties.number,
            remote: parties.remote,
            sink: parties.sink,
            sink_audio: parties.sink_audio,
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
        self.by_sip_call_id.insert(sip_call_id.to_string(), key);
        self.by_name.insert(entry.id.clone(), key);
        self.entries.insert(key, Box::new(entry));
    }

    /// Our requests' and the INVITE's transactions lead to their call.
    pub(super) fn index_transaction(&mut self, id: TransactionId, key: CallKey) {
        self.by_transaction.insert(id, key);
    }

    pub(super) fn get(&self, key: CallKey) -> Option<&Entry> {
        self.entries.get(&key).map(|e| &**e)
    }

    pub(super) fn get_mut(&mut self, key: CallKey) -> Option<&mut Entry> {
        self.entries.get_mut(&key).map(|e| &mut **e)
    }

    pub(super) fn by_sip_call_id(&self, call_id: &str) -> Option<CallKey> {
        self.by_sip_call_id.get(call_id).copied()
    }

    pub(super) fn by_name(&self, name: &str) -> Option<CallKey> {
        self.by_name.get(name).copied()
    }

    pub(super) fn by_transaction(&self, id: TransactionId) -> Option<CallKey> {
        self.by_transaction.get(&id).copied()
    }

    /// Forgets a call and every index to it.
    pub(super) fn remove(&mut self, key: CallKey) -> Option<Box<Entry>> {
        let entry = self.entries.remove(&key)?;
        self.by_sip_call_id.retain(|_, k| *k != key);
        self.by_name.remove(&entry.id);
        self.by_transaction.retain(|_, k| *k != key);
        Some(entry)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
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
