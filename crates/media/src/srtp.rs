//! SRTP and SRTCP (RFC 3711, RFC 7714 for AES-GCM) transformed in place, for the per-packet path.
//!
//! webrtc-srtp returns every packet in a newly allocated buffer, parses each header into `Vec`s and
//! builds a new AES key schedule per packet; the relay's path after set-up must not allocate.
//! This module keeps the keyed ciphers and MAC per
//! context and works inside the caller's buffer. It is checked against RFC 3711/7714 and libsrtp's
//! vectors and byte for byte against webrtc-srtp (tests/srtp.rs), and on the wire by every peer.

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha1::Sha1;

type Aes128Ctr = ctr::Ctr128BE<Aes128>;
type HmacSha1 = Hmac<Sha1>;

const RTP_HEADER: usize = 12;
const RTCP_HEADER: usize = 8;
const REPLAY_WINDOW: u64 = 128;
/// SSRCs whose rollover counter and replay window an inbound context tracks at once.
const STREAMS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpProfile {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    AeadAes128Gcm,
}

impl SrtpProfile {
    pub fn key_len(self) -> usize {
        16
    }

    /// The profile's name as SDES (RFC 4568) and RFC 7714 spell it; what a key log records.
    pub fn name(self) -> &'static str {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpProfile::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpProfile::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    pub fn from_name(name: &str) -> Option<SrtpProfile> {
        [
            SrtpProfile::AesCm128HmacSha1_80,
            SrtpProfile::AesCm128HmacSha1_32,
            SrtpProfile::AeadAes128Gcm,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    pub fn salt_len(self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm => 12,
            _ => 14,
        }
    }

    pub fn rtp_tag_len(self) -> usize {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => 10,
            SrtpProfile::AesCm128HmacSha1_32 => 4,
            SrtpProfile::AeadAes128Gcm => 16,
        }
    }

    /// Bytes SRTCP adds to a packet: the tag and the E flag with the 31-bit index.
    pub fn rtcp_overhead(self) -> usize {
        4 + match self {
            SrtpProfile::AeadAes128Gcm => 16,
            // RFC 3711 §5.1: SRTCP keeps the 80-bit tag even for _32.
            _ => 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("packet too short or malformed")]
    Malformed,
    #[error("authentication failed")]
    Auth,
    #[error("replayed or too old")]
    Replay,
    #[error("no room for the tag in the buffer")]
    NoRoom,
    #[error("master key or salt of the wrong length")]
    KeyLength,
}

enum Cipher {
    AesCm {
        aes: Aes128,
        salt: [u8; 14],
        mac: HmacSha1,
        tag_len: usize,
    },
    Gcm {
        aead: Aes128Gcm,
        salt: [u8; 12],
    },
}

/// One direction's SRTP (or SRTCP) transform with its session keys.
struct Transform {
    cipher: Cipher,
}

/// Rollover counter and replay window of one SSRC (RFC 3711 §3.3.1, Appendix A).
#[derive(Clone, Copy)]
struct Stream {
    ssrc: u32,
    /// Highest index seen (ROC << 16 | SEQ for RTP, the SRTCP index for RTCP).
    highest: u64,
    /// Bit i set: index `highest - i` was seen.
    window: u128,
    last_used: u64,
}

impl Stream {
    fn new(ssrc: u32, index: u64) -> Stream {
        Stream {
            ssrc,
            highest: index,
            window: 0,
            last_used: 0,
        }
    }

    /// RFC 3711 Appendix A: the packet index of `seq` relative to the highest seen.
    fn estimate_rtp_index(&self, seq: u16) -> u64 {
        let roc = self.highest >> 16;
        let s_l = (self.highest & 0xffff) as i64;
        let seq_i = i64::from(seq);
        let v = if s_l < 32768 {
            if seq_i - s_l > 32768 && roc > 0 {
                roc - 1
            } else {
                roc
            }
        } else if s_l - 32768 > seq_i {
            roc + 1
        } else {
            roc
        };
        (v << 16) | u64::from(seq)
    }

    fn check_replay(&self, index: u64) -> Result<(), SrtpError> {
        if index > self.highest {
            return Ok(());
        }
        let behind = self.highest - index;
        if behind >= REPLAY_WINDOW || self.window & (1u128 << behind) != 0 {
            return Err(SrtpError::Replay);
        }
        Ok(())
    }

    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let ahead = index - self.highest;
            self.window = if ahead >= REPLAY_WINDOW {
                0
            } else {
                self.window << ahead
            };
            self.window |= 1;
            self.highest = index;
        } else {
            self.window |= 1u128 << (self.highest - index);
        }
    }
}

/// A fixed set of per-SSRC states: no allocation when a sender changes SSRC.
struct Streams {
    slots: [Option<Stream>; STREAMS],
    clock: u64,
    /// The slot of the last packet: nearly always the next one's.
    last: usize,
}

impl Streams {
    fn new() -> Streams {
        Streams {
            slots: [None; STREAMS],
            clock: 0,
            last: 0,
        }
    }

    /// The state of `ssrc`, made (replacing the least recently used) with `initial` if new.
    fn get(&mut self, ssrc: u32, initial: u64) -> (usize, bool) {
        self.clock += 1;
        if self.slots[self.last].is_some_and(|s| s.ssrc == ssrc) {
            return (self.last, false);
        }
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.is_some_and(|s| s.ssrc == ssrc))
        {
            self.last = i;
            return (i, false);
        }
        let i = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                (0..STREAMS)
                    .min_by_key(|&i| self.slots[i].map_or(0, |s| s.last_used))
                    .unwrap_or(0)
            });
        self.slots[i] = Some(Stream::new(ssrc, initial));
        self.last = i;
        (i, true)
    }

    fn at(&mut self, i: usize) -> &mut Stream {
        let clock = self.clock;
        let s = self.slots[i].as_mut().expect("slot chosen by get");
        s.last_used = clock;
        s
    }
}

/// SRTP and SRTCP for one direction of a call: outbound (protect) or inbound (unprotect, with
/// replay protection).
pub struct SrtpContext {
    profile: SrtpProfile,
    rtp: Transform,
    rtcp: Transform,
    rtp_streams: Streams,
    rtcp_streams: Streams,
    /// The next SRTCP index we send.
    rtcp_index: u32,
}

impl SrtpContext {
    pub fn new(
        profile: SrtpProfile,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Result<SrtpContext, SrtpError> {
        if master_key.len() != profile.key_len() || master_salt.len() != profile.salt_len() {
            return Err(SrtpError::KeyLength);
        }
        let mut salt14 = [0u8; 14];
        salt14[..master_salt.len()].copy_from_slice(master_salt);
        let master = Aes128::new_from_slice(master_key).map_err(|_| SrtpError::KeyLength)?;
        let transform = |labels: [u8; 3]| -> Transform {
            let mut key = [0u8; 16];
            derive(&master, &salt14, labels[0], &mut key);
            match profile {
                SrtpProfile::AeadAes128Gcm => {
                    let mut salt = [0u8; 12];
                    derive(&master, &salt14, labels[2], &mut salt);
                    Transform {
                        cipher: Cipher::Gcm {
                            aead: Aes128Gcm::new(&key.into()),
                            salt,
                        },
                    }
                }
                _ => {
                    let mut salt = [0u8; 14];
                    let mut auth = [0u8; 20];
                    derive(&master, &salt14, labels[2], &mut salt);
                    derive(&master, &salt14, labels[1], &mut auth);
                    Transform {
                        cipher: Cipher::AesCm {
                            aes: Aes128::new(&key.into()),
                            salt,
                            mac: <HmacSha1 as Mac>::new_from_slice(&auth).expect("any key length"),
                            tag_len: 0,
                        },
                    }
                }
            }
        };
        let mut rtp = transform([0, 1, 2]);
        let mut rtcp = transform([3, 4, 5]);
        if let Cipher::AesCm { tag_len, .. } = &mut rtp.cipher {
            *tag_len = profile.rtp_tag_len();
        }
        if let Cipher::AesCm { tag_len, .. } = &mut rtcp.cipher {
            *tag_len = 10;
        }
        Ok(SrtpContext {
            profile,
            rtp,
            rtcp,
            rtp_streams: Streams::new(),
            rtcp_streams: Streams::new(),
            // As libsrtp and webrtc-srtp: the first SRTCP packet has index 1.
            rtcp_index: 1,
        })
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Protects the RTP packet in `buf[..len]`; the tag is written after it. Returns the new length.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let header = rtp_header_len(&buf[..len])?;
        let tag_len = self.profile.rtp_tag_len();
        if buf.len() < len + tag_len {
            return Err(SrtpError::NoRoom);
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let (slot, new) = self.rtp_streams.get(ssrc, u64::from(seq));
        let stream = self.rtp_streams.at(slot);
        let index = if new {
            u64::from(seq)
        } else {
            stream.estimate_rtp_index(seq)
        };
        if index > stream.highest {
            stream.highest = index;
        }
        let roc = (index >> 16) as u32;
        match &self.rtp.cipher {
            Cipher::AesCm { aes, salt, mac, .. } => {
                keystream(aes, salt, ssrc, index).apply_keystream(&mut buf[header..len]);
                let mut mac = mac.clone();
                mac.update(&buf[..len]);
                mac.update(&roc.to_be_bytes());
                let full = mac.finalize().into_bytes();
                buf[len..len + tag_len].copy_from_slice(&full[..tag_len]);
            }
            Cipher::Gcm { aead, salt } => {
                let nonce = gcm_rtp_nonce(salt, ssrc, roc, seq);
                let (aad, payload) = buf[..len].split_at_mut(header);
                let tag = aead
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, payload)
                    .map_err(|_| SrtpError::Malformed)?;
                buf[len..len + tag_len].copy_from_slice(&tag);
            }
        }
        Ok(len + tag_len)
    }

    /// Authenticates, replay-checks and decrypts the SRTP packet in `packet`. Returns the length of
    /// the RTP packet now at its start; on any error the packet must be dropped.
    pub fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.profile.rtp_tag_len();
        if packet.len() < RTP_HEADER + tag_len {
            return Err(SrtpError::Malformed);
        }
        let len = packet.len() - tag_len;
        let header = rtp_header_len(&packet[..len])?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let (slot, new) = self.rtp_streams.get(ssrc, u64::from(seq));
        let index = if new {
            u64::from(seq)
        } else {
            let stream = self.rtp_streams.at(slot);
            let index = stream.estimate_rtp_index(seq);
            stream.check_replay(index)?;
            index
        };
        let roc = (index >> 16) as u32;
        let result = match &self.rtp.cipher {
            Cipher::AesCm { aes, salt, mac, .. } => {
                let mut mac = mac.clone();
                mac.update(&packet[..len]);
                mac.update(&roc.to_be_bytes());
                if mac.verify_truncated_left(&packet[len..]).is_err() {
                    Err(SrtpError::Auth)
                } else {
                    keystream(aes, salt, ssrc, index).apply_keystream(&mut packet[header..len]);
                    Ok(len)
                }
            }
            Cipher::Gcm { aead, salt } => {
                let nonce = gcm_rtp_nonce(salt, ssrc, roc, seq);
                let (body, tag) = packet.split_at_mut(len);
                let (aad, payload) = body.split_at_mut(header);
                aead.decrypt_in_place_detached(
                    Nonce::from_slice(&nonce),
                    aad,
                    payload,
                    Tag::from_slice(tag),
                )
                .map(|_| len)
                .map_err(|_| SrtpError::Auth)
            }
        };
        match result {
            Ok(len) => {
                self.rtp_streams.at(slot).accept(index);
                Ok(len)
            }
            Err(e) => {
                if new {
                    // A forged first packet must not claim a slot's state.
                    self.rtp_streams.slots[slot] = None;
                }
                Err(e)
            }
        }
    }

    /// Protects the compound RTCP packet in `buf[..len]` (encrypted, E flag set).
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if len < RTCP_HEADER {
            return Err(SrtpError::Malformed);
        }
        let overhead = self.profile.rtcp_overhead();
        if buf.len() < len + overhead {
            return Err(SrtpError::NoRoom);
        }
        let ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let index = self.rtcp_index;
        self.rtcp_index = (self.rtcp_index + 1) & 0x7fff_ffff;
        let e_index = (index | 0x8000_0000).to_be_bytes();
        match &self.rtcp.cipher {
            Cipher::AesCm {
                aes,
                salt,
                mac,
                tag_len,
            } => {
                keystream(aes, salt, ssrc, u64::from(index))
                    .apply_keystream(&mut buf[RTCP_HEADER..len]);
                buf[len..len + 4].copy_from_slice(&e_index);
                let mut mac = mac.clone();
                mac.update(&buf[..len + 4]);
                let full = mac.finalize().into_bytes();
                buf[len + 4..len + 4 + tag_len].copy_from_slice(&full[..*tag_len]);
            }
            Cipher::Gcm { aead, salt } => {
                let nonce = gcm_rtcp_nonce(salt, ssrc, index);
                let mut aad = [0u8; RTCP_HEADER + 4];
                aad[..RTCP_HEADER].copy_from_slice(&buf[..RTCP_HEADER]);
                aad[RTCP_HEADER..].copy_from_slice(&e_index);
                let tag = aead
                    .encrypt_in_place_detached(
                        Nonce::from_slice(&nonce),
                        &aad,
                        &mut buf[RTCP_HEADER..len],
                    )
                    .map_err(|_| SrtpError::Malformed)?;
                buf[len..len + 16].copy_from_slice(&tag);
                buf[len + 16..len + 20].copy_from_slice(&e_index);
            }
        }
        Ok(len + overhead)
    }

    /// Authenticates, replay-checks and decrypts the SRTCP packet in `packet`; returns the RTCP length.
    pub fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let overhead = self.profile.rtcp_overhead();
        if packet.len() < RTCP_HEADER + overhead {
            return Err(SrtpError::Malformed);
        }
        let len = packet.len() - overhead;
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let e_at = match self.profile {
            SrtpProfile::AeadAes128Gcm => packet.len() - 4,
            _ => len,
        };
        let e_index = u32::from_be_bytes([
            packet[e_at],
            packet[e_at + 1],
            packet[e_at + 2],
            packet[e_at + 3],
        ]);
        let encrypted = e_index & 0x8000_0000 != 0;
        let index = e_index & 0x7fff_ffff;
        let (slot, new) = self.rtcp_streams.get(ssrc, u64::from(index));
        if !new {
            self.rtcp_streams.at(slot).check_replay(u64::from(index))?;
        }
        let result = match &self.rtcp.cipher {
            Cipher::AesCm { aes, salt, mac, .. } => {
                let mut mac = mac.clone();
                mac.update(&packet[..len + 4]);
                if mac.verify_truncated_left(&packet[len + 4..]).is_err() {
                    Err(SrtpError::Auth)
                } else {
                    if encrypted {
                        keystream(aes, salt, ssrc, u64::from(index))
                            .apply_keystream(&mut packet[RTCP_HEADER..len]);
                    }
                    Ok(len)
                }
            }
            Cipher::Gcm { aead, salt } => {
                let nonce = gcm_rtcp_nonce(salt, ssrc, index);
                let mut aad = [0u8; RTCP_HEADER + 4];
                aad[..RTCP_HEADER].copy_from_slice(&packet[..RTCP_HEADER]);
                aad[RTCP_HEADER..].copy_from_slice(&e_index.to_be_bytes());
                let (body, rest) = packet.split_at_mut(len);
                let tag = Tag::from_slice(&rest[..16]);
                if encrypted {
                    aead.decrypt_in_place_detached(
                        Nonce::from_slice(&nonce),
                        &aad,
                        &mut body[RTCP_HEADER..],
                        tag,
                    )
                    .map(|_| len)
                    .map_err(|_| SrtpError::Auth)
                } else {
                    Err(SrtpError::Auth)
                }
            }
        };
        match result {
            Ok(len) => {
                self.rtcp_streams.at(slot).accept(u64::from(index));
                Ok(len)
            }
            Err(e) => {
                if new {
                    self.rtcp_streams.slots[slot] = None;
                }
                Err(e)
            }
        }
    }
}

/// RFC 3711 §4.3: a session key (or salt) from the master key with the AES-CM PRF, kdr 0.
fn derive(master: &Aes128, master_salt: &[u8; 14], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    ctr_of(master, iv).apply_keystream(out);
}

/// RFC 3711 §4.1.1: the AES-CM keystream for one packet.
fn keystream(aes: &Aes128, salt: &[u8; 14], ssrc: u32, index: u64) -> Aes128Ctr {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= s;
    }
    ctr_of(aes, iv)
}

/// AES counter mode from an already keyed cipher: no key schedule per packet.
fn ctr_of(aes: &Aes128, iv: [u8; 16]) -> Aes128Ctr {
    Aes128Ctr::from_core(ctr::CtrCore::inner_iv_init(aes.clone(), &iv.into()))
}

/// RFC 7714 §8.1.
fn gcm_rtp_nonce(salt: &[u8; 12], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&roc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

/// RFC 7714 §9.1.
fn gcm_rtcp_nonce(salt: &[u8; 12], ssrc: u32, index: u32) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&(index & 0x7fff_ffff).to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

/// The length of the RTP header with CSRCs and extension (RFC 3550 §5.1, §5.3.1).
fn rtp_header_len(packet: &[u8]) -> Result<usize, SrtpError> {
    if packet.len() < RTP_HEADER || packet[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let mut len = RTP_HEADER + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        if packet.len() < len + 4 {
            return Err(SrtpError::Malformed);
        }
        let words = u16::from_be_bytes([packet[len + 2], packet[len + 3]]);
        len += 4 + 4 * usize::from(words);
    }
    if len > packet.len() {
        return Err(SrtpError::Malformed);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let master = Aes128::new_from_slice(&hex("E1F97A0D3E018BE0D64FA32C06DE4139")).unwrap();
        let salt: [u8; 14] = hex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap();
        let mut key = [0u8; 16];
        derive(&master, &salt, 0, &mut key);
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut s = [0u8; 14];
        derive(&master, &salt, 2, &mut s);
        assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        derive(&master, &salt, 1, &mut auth);
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    #[test]
    fn index_estimate_follows_rollover() {
        let mut s = Stream::new(1, 0xfffe);
        assert_eq!(s.estimate_rtp_index(0xffff), 0xffff);
        assert_eq!(s.estimate_rtp_index(2), 0x1_0002);
        s.accept(0x1_0002);
        assert_eq!(
            s.estimate_rtp_index(0xfffd),
            0xfffd,
            "late packet from before the wrap"
        );
        assert_eq!(s.estimate_rtp_index(3), 0x1_0003);
    }

    #[test]
    fn replay_window() {
        let mut s = Stream::new(1, 100);
        s.accept(100);
        assert_eq!(s.check_replay(100), Err(SrtpError::Replay));
        assert_eq!(s.check_replay(99), Ok(()));
        s.accept(99);
        assert_eq!(s.check_replay(99), Err(SrtpError::Replay));
        s.accept(400);
        assert_eq!(
            s.check_replay(272),
            Err(SrtpError::Replay),
            "older than the window"
        );
        assert_eq!(s.check_replay(273), Ok(()));
    }
}
