//! A small adaptive reorder buffer for the transcoding path: RTP packets of one direction come out
//! in sequence order, a packet that arrives after the one before it was skipped is too late, and
//! a hole is waited for only as long as this stream's reordering has shown to be worth it.
//!
//! Released on arrival: a packet in order goes straight through (no added delay); only packets
//! behind a hole are held, until the hole fills or has been waited for `wait`, then they go out
//! at once, so no delay builds up. Timing jitter itself is left to the PBX's or the phone's
//! playout buffer (every phone has one): what the codecs need from us is order, and a loss
//! concealed at its place. `wait` starts at one frame, doubles (to 100 ms at most) each time a
//! packet comes after its hole was given up, and comes down by 10 ms after 500 packets without
//! one. A new SSRC, or a sequence jump of more than 20 s (music on hold, a transfer), starts the
//! stream over: what was held goes out first.
//!
//! Sans-IO and allocation-free per packet: the slots are allocated with the buffer.

use std::time::{Duration, Instant};

/// Packets held at most: 160 ms of 20 ms frames.
const SLOTS: usize = 8;
/// The longest packet held (a longer one goes through only in order).
const SLOT_BYTES: usize = 640;
/// How long a hole is waited for at first, and at most.
const FIRST_WAIT: Duration = Duration::from_millis(20);
const MAX_WAIT: Duration = Duration::from_millis(100);
/// After this many packets without a late one, `wait` comes down by `WAIT_STEP`.
const CALM_PACKETS: u32 = 500;
const WAIT_STEP: Duration = Duration::from_millis(10);
/// A jump of more than this many packets (20 s of 20 ms frames) is a new stream, not a loss.
const RESYNC_PACKETS: u16 = 1000;

/// What the buffer has seen, for the call's statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets that waited behind a hole, and the longest wait, in µs.
    pub held: u64,
    pub held_max_us: u64,
    /// Packets that came after their hole was given up (dropped).
    pub late: u64,
    /// Duplicates of a packet held or already out (dropped).
    pub duplicates: u64,
    /// Holes given up (the packets never came in time).
    pub skipped: u64,
    /// Times the stream started over (new SSRC, sequence jump).
    pub resyncs: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    seq: u16,
    len: u16,
    arrived: Instant,
}

pub struct JitterBuffer {
    /// The next sequence number due out, once a packet came.
    next: Option<u16>,
    ssrc: u32,
    slots: [Option<Slot>; SLOTS],
    bytes: Box<[[u8; SLOT_BYTES]; SLOTS]>,
    wait: Duration,
    calm: u32,
    pub stats: JitterStats,
}

impl Default for JitterBuffer {
    fn default() -> Self {
        JitterBuffer::new()
    }
}

impl JitterBuffer {
    pub fn new() -> JitterBuffer {
        JitterBuffer {
            next: None,
            ssrc: 0,
            slots: [None; SLOTS],
            bytes: Box::new([[0; SLOT_BYTES]; SLOTS]),
            wait: FIRST_WAIT,
            calm: 0,
            stats: JitterStats::default(),
        }
    }

    /// How long a hole is waited for now.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Takes one RTP packet that arrived at `now`; `emit` gets every packet that may go out now,
    /// in sequence order, with `true` for the first packet of a stream (the first one, or after a
    /// new SSRC or a jump). A packet too short for an RTP header is dropped.
    pub fn push(&mut self, now: Instant, rtp: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        if rtp.len() < 12 {
            return;
        }
        let seq = u16::from_be_bytes([rtp[2], rtp[3]]);
        let ssrc = u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]);
        let next = match self.next {
            Some(next)
                if ssrc == self.ssrc
                    && !(RESYNC_PACKETS..=u16::MAX - RESYNC_PACKETS)
                        .contains(&seq.wrapping_sub(next)) =>
            {
                next
            }
            started => {
                if started.is_some() {
                    self.stats.resyncs += 1;
                }
                self.flush(&mut emit);
                self.next = Some(seq.wrapping_add(1));
                self.ssrc = ssrc;
                self.calm = 0;
                emit(rtp, true);
                return;
            }
        };
        let ahead = seq.wrapping_sub(next);
        if ahead >= 0x8000 {
            // Its hole was given up: the stream shows more reordering than we waited for.
            self.stats.late += 1;
            self.wait = (self.wait * 2).min(MAX_WAIT);
            self.calm = 0;
            return;
        }
        self.calm += 1;
        if self.calm >= CALM_PACKETS {
            self.calm = 0;
            self.wait = self.wait.saturating_sub(WAIT_STEP).max(FIRST_WAIT);
        }
        if usize::from(ahead) >= SLOTS {
            // Beyond what may be held: the holes before it are given up.
            self.flush(&mut emit);
            self.stats.skipped += 1;
            self.next = Some(seq);
        }
        let next = self.next.unwrap_or(seq);
        if seq == next && self.slots.iter().all(Option::is_none) {
            // In order, nothing held: straight through.
            self.next = Some(seq.wrapping_add(1));
            emit(rtp, false);
            return;
        }
        self.hold(now, rtp, seq);
        self.release(now, &mut emit);
    }

    fn hold(&mut self, now: Instant, rtp: &[u8], seq: u16) {
        let i = usize::from(seq) % SLOTS;
        if self.slots[i].is_some_and(|s| s.seq == seq) {
            self.stats.duplicates += 1;
            return;
        }
        if rtp.len() > SLOT_BYTES {
            // Too long to hold, and not in order: dropped as if lost.
            return;
        }
        self.bytes[i][..rtp.len()].copy_from_slice(rtp);
        self.slots[i] = Some(Slot {
            seq,
            len: rtp.len() as u16,
            arrived: now,
        });
    }

    /// Sends what is due: the packets in order from `next`, and past a hole that has been waited
    /// for long enough.
    fn release(&mut self, now: Instant, emit: &mut impl FnMut(&[u8], bool)) {
        while let Some(next) = self.next {
            let i = usize::from(next) % SLOTS;
            match self.slots[i] {
                Some(slot) if slot.seq == next => {
                    self.slots[i] = None;
                    let held = now.saturating_duration_since(slot.arrived);
                    if !held.is_zero() {
                        self.stats.held += 1;
                        self.stats.held_max_us =
                            self.stats.held_max_us.max(held.as_micros() as u64);
                    }
                    self.next = Some(next.wrapping_add(1));
                    emit(&self.bytes[i][..usize::from(slot.len)], false);
                }
                _ => {
                    // A hole: given up once the oldest packet behind it has waited `wait`.
                    let Some(oldest) = self.slots.iter().flatten().map(|s| s.arrived).min() else {
                        return;
                    };
                    if now.saturating_duration_since(oldest) < self.wait {
                        return;
                    }
                    let Some(first) = self.first_held(next) else {
                        return;
                    };
                    self.stats.skipped += 1;
                    self.next = Some(first);
                }
            }
        }
    }

    /// The sequence number of the first packet held after `next`.
    fn first_held(&self, next: u16) -> Option<u16> {
        self.slots
            .iter()
            .flatten()
            .map(|s| s.seq)
            .min_by_key(|seq| seq.wrapping_sub(next))
    }

    /// Everything held goes out now, in order, past its holes.
    fn flush(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        while let Some(next) = self.next {
            let Some(first) = self.first_held(next) else {
                return;
            };
            let i = usize::from(first) % SLOTS;
            if let Some(slot) = self.slots[i].take() {
                self.next = Some(first.wrapping_add(1));
                emit(&self.bytes[i][..usize::from(slot.len)], false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xf8, 0xff, 0xfe]);
        p
    }

    /// Pushes `(ms, seq)` arrivals; what came out, as (seq, ms it came out, fresh).
    fn run(buffer: &mut JitterBuffer, arrivals: &[(u64, u16)], ssrc: u32) -> Vec<(u16, u64, bool)> {
        let start = Instant::now();
        let mut out = Vec::new();
        for &(ms, seq) in arrivals {
            buffer.push(
                start + Duration::from_millis(ms),
                &packet(seq, ssrc),
                |p, fresh| {
                    out.push((u16::from_be_bytes([p[2], p[3]]), ms, fresh));
                },
            );
        }
        out
    }

    fn seqs(out: &[(u16, u64, bool)]) -> Vec<u16> {
        out.iter().map(|o| o.0).collect()
    }

    #[test]
    fn packets_in_order_go_straight_through() {
        let mut b = JitterBuffer::new();
        let arrivals: Vec<(u64, u16)> = (0..50).map(|i| (i * 20, 100 + i as u16)).collect();
        let out = run(&mut b, &arrivals, 7);
        assert_eq!(seqs(&out), (100..150).collect::<Vec<_>>());
        assert!(
            out.iter().zip(&arrivals).all(|(o, a)| o.1 == a.0),
            "no delay"
        );
        assert_eq!(b.stats.held, 0);
        assert!(out[0].2 && out[1..].iter().all(|o| !o.2));
    }

    #[test]
    fn a_swapped_pair_comes_out_in_order_held_only_until_the_hole_fills() {
        let mut b = JitterBuffer::new();
        let out = run(&mut b, &[(0, 1), (20, 3), (25, 2), (40, 4)], 7);
        assert_eq!(seqs(&out), [1, 2, 3, 4]);
        assert_eq!(out[1].1, 25, "2 as it arrives");
        assert_eq!(out[2].1, 25, "3 held 5 ms, out with 2");
        assert_eq!(b.stats.held, 1);
        assert_eq!(b.stats.held_max_us, 5_000);
        assert_eq!(b.stats.late, 0);
    }

    #[test]
    fn a_lost_packet_is_given_up_after_the_wait_and_a_later_arrival_is_late() {
        let mut b = JitterBuffer::new();
        // 3 never comes in time: 4 waits 20 ms, then 4 and 5 go out with 5.
        let out = run(
            &mut b,
            &[(0, 1), (20, 2), (60, 4), (80, 5), (90, 3), (100, 6)],
            7,
        );
        assert_eq!(seqs(&out), [1, 2, 4, 5, 6]);
        assert_eq!((out[2].1, out[3].1), (80, 80));
        assert_eq!(b.stats.skipped, 1);
        assert_eq!(b.stats.late, 1);
        assert_eq!(b.wait(), FIRST_WAIT * 2, "a late packet doubles the wait");
    }

    #[test]
    fn the_wait_comes_down_when_the_stream_is_calm() {
        let mut b = JitterBuffer::new();
        run(&mut b, &[(0, 1), (20, 3), (60, 4), (70, 2)], 7);
        assert_eq!(b.wait(), FIRST_WAIT * 2);
        let calm: Vec<(u64, u16)> = (0..CALM_PACKETS as u16)
            .map(|i| (100 + u64::from(i) * 20, 5 + i))
            .collect();
        run(&mut b, &calm, 7);
        assert_eq!(b.wait(), FIRST_WAIT * 2 - WAIT_STEP);
    }

    #[test]
    fn a_new_ssrc_or_a_far_jump_starts_over_after_what_was_held() {
        let mut b = JitterBuffer::new();
        let mut out = run(&mut b, &[(0, 10), (20, 12)], 7);
        // Music on hold: another SSRC, its own sequence numbers. 12 (held) goes out first.
        out.extend(run(&mut b, &[(30, 500), (50, 501)], 8));
        assert_eq!(seqs(&out), [10, 12, 500, 501]);
        assert!(out[2].2, "500 starts a stream");
        // The same SSRC, 30000 packets on: a new stream too, not 30000 losses.
        out = run(&mut b, &[(70, 30501), (90, 30502)], 8);
        assert_eq!(seqs(&out), [30501, 30502]);
        assert!(out[0].2);
        assert_eq!(b.stats.resyncs, 2);
    }

    #[test]
    fn a_hole_wider_than_the_buffer_is_given_up_at_once() {
        let mut b = JitterBuffer::new();
        let out = run(&mut b, &[(0, 1), (20, 3), (40, 20), (60, 21)], 7);
        assert_eq!(seqs(&out), [1, 3, 20, 21]);
        assert_eq!(
            out[1].1, 40,
            "3 goes out when 20 shows the hole cannot be held"
        );
    }

    #[test]
    fn duplicates_and_wrapping_sequence_numbers() {
        let mut b = JitterBuffer::new();
        let out = run(
            &mut b,
            &[
                (0, 65534),
                (20, 0),
                (25, 0),
                (30, 65535),
                (40, 1),
                (45, 65535),
            ],
            7,
        );
        assert_eq!(seqs(&out), [65534, 65535, 0, 1]);
        assert_eq!(b.stats.duplicates, 1);
        assert_eq!(b.stats.late, 1, "65535 again, after it went out");
    }

    proptest::proptest! {
        /// Whatever the order and timing of arrivals (each packet at most 120 ms from its time),
        /// what comes out is in sequence order, each packet once, and nothing that arrived in
        /// order behind no hole waits.
        #[test]
        fn out_in_order_each_once(
            jitter in proptest::collection::vec(0u64..120, 60),
            start in 0u16..=u16::MAX,
        ) {
            let mut arrivals: Vec<(u64, u16)> = jitter
                .iter()
                .enumerate()
                .map(|(i, j)| (i as u64 * 20 + j, start.wrapping_add(i as u16)))
                .collect();
            arrivals.sort();
            let mut b = JitterBuffer::new();
            let out = run(&mut b, &arrivals, 7);
            let offsets: Vec<u16> = out.iter().map(|o| o.0.wrapping_sub(start)).collect();
            proptest::prop_assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{:?}", offsets);
            let late = b.stats.late + b.stats.duplicates;
            proptest::prop_assert!(out.len() as u64 + late <= 60);
            proptest::prop_assert!(b.stats.held_max_us <= 160_000);
        }
    }
}
