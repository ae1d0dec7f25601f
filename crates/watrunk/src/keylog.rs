//! The key log (`watrunk serve --key-log FILE`): each call's SRTP master keys per direction, and its
//! DTLS secrets as NSS key-log `CLIENT_RANDOM` lines, one line each, for `watrunk capture decrypt`
//! and Wireshark. The format is docs/debugging-media.md's; this module writes it and parses it.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use watrunk_media::srtp::SrtpProfile;
use watrunk_media::{KeyLogHook, LoggedKeys};

/// The open key log every call's hook appends to. A call writes at most three lines, once, at its
/// set-up: the lock is taken once per call, never per packet.
pub struct KeyLog {
    file: Mutex<File>,
    path: String,
}

impl KeyLog {
    /// Opens (appending) or creates the file, readable by its owner only.
    pub fn open(path: &Path) -> Result<Arc<KeyLog>> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("--key-log: cannot open {}", path.display()))?;
        // An existing file keeps its mode on open: make it private too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("--key-log: cannot make {} private", path.display()))?;
        Ok(Arc::new(KeyLog {
            file: Mutex::new(file),
            path: path.display().to_string(),
        }))
    }

    /// The hook one call's media is given: its lines name the call by its SIP Call-ID.
    pub fn hook(self: &Arc<KeyLog>, call_id: &str) -> KeyLogHook {
        let log = self.clone();
        let call_id = call_id.to_string();
        KeyLogHook(Arc::new(move |keys: &LoggedKeys<'_>| {
            let lines = lines(&call_id, keys);
            let written = log
                .file
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))
                .and_then(|mut f| f.write_all(lines.as_bytes()));
            if let Err(e) = written {
                tracing::warn!(
                    "--key-log {}: cannot write call {call_id}'s keys: {e}",
                    log.path
                );
            }
        }))
    }
}

/// A Call-ID as one word of a line (SIP allows no white space in it; a broken peer might).
fn word(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

/// The lines of one call: `CLIENT_RANDOM` (DTLS), then `SRTP` out and in.
pub fn lines(call_id: &str, keys: &LoggedKeys<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let call_id = word(call_id);
    let k = keys.keys;
    let mut out = String::new();
    if let Some(d) = &k.dtls {
        let hex = watrunk_sip::digest::hex;
        let _ = writeln!(
            out,
            "CLIENT_RANDOM {} {}",
            hex(&d.client_random),
            hex(&d.master_secret)
        );
    }
    let profile = k.profile.name();
    let _ = writeln!(
        out,
        "SRTP {call_id} out {} {} {profile} {}",
        keys.local,
        keys.remote,
        b64.encode(&k.outbound)
    );
    let _ = writeln!(
        out,
        "SRTP {call_id} in {} {} {profile} {}",
        keys.remote,
        keys.local,
        b64.encode(&k.inbound)
    );
    out
}

/// One `SRTP` line of a key log: the keys of the packets from `src` to `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpLine {
    pub call_id: String,
    pub direction: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub profile: SrtpProfile,
    pub key: Vec<u8>,
    pub salt: Vec<u8>,
}

/// The `SRTP` lines of a key log; other lines (`CLIENT_RANDOM`, comments) are skipped. A broken
/// `SRTP` line is an error naming its line number.
pub fn parse(text: &str) -> Result<Vec<SrtpLine>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&"SRTP") {
            continue;
        }
        let at = || format!("key log line {}", n + 1);
        let [_, call_id, direction, src, dst, profile, keys] = fields[..] else {
            bail!(
                "{}: an SRTP line has 7 fields (SRTP CALL-ID DIRECTION SRC DST PROFILE KEY), this one {}",
                at(),
                fields.len()
            );
        };
        let src: SocketAddr = src
            .parse()
            .with_context(|| format!("{}: source {src:?} is not ip:port", at()))?;
        let dst: SocketAddr = dst
            .parse()
            .with_context(|| format!("{}: destination {dst:?} is not ip:port", at()))?;
        let profile = SrtpProfile::from_name(profile)
            .with_context(|| format!("{}: unknown SRTP profile {profile:?}", at()))?;
        let bytes = b64
            .decode(keys)
            .with_context(|| format!("{}: the key is not base64", at()))?;
        let key_len = profile.key_len();
        if bytes.len() != key_len + profile.salt_len() {
            bail!(
                "{}: {} needs {} bytes of key and salt, the line has {}",
                at(),
                profile.name(),
                key_len + profile.salt_len(),
                bytes.len()
            );
        }
        out.push(SrtpLine {
            call_id: call_id.to_string(),
            direction: direction.to_string(),
            src,
            dst,
            profile,
            key: bytes[..key_len].to_vec(),
            salt: bytes[key_len..].to_vec(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use watrunk_media::{DtlsSecrets, KeyMaterial};

    #[test]
    fn a_calls_lines_parse_back_to_its_keys() {
        let keys = KeyMaterial {
            profile: SrtpProfile::AesCm128HmacSha1_80,
            outbound: (0..30).collect(),
            inbound: (100..130).collect(),
            dtls: Some(DtlsSecrets {
                client_random: vec![0xab; 32],
                master_secret: vec![0x01; 48],
            }),
        };
        let logged = LoggedKeys {
            local: "198.18.0.1:3478".parse().unwrap(),
            remote: "[2001:db8::7]:30000".parse().unwrap(),
            keys: &keys,
        };
        let text = lines("abc@host", &logged);
        let mut it = text.lines();
        assert_eq!(
            it.next().unwrap(),
            format!("CLIENT_RANDOM {} {}", "ab".repeat(32), "01".repeat(48))
        );
        assert_eq!(
            it.next().unwrap(),
            "SRTP abc@host out 198.18.0.1:3478 [2001:db8::7]:30000 AES_CM_128_HMAC_SHA1_80 \
             AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd"
        );
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].direction, "in");
        assert_eq!(parsed[1].src, logged.remote);
        assert_eq!(parsed[1].dst, logged.local);
        assert_eq!(parsed[1].key, (100..116).collect::<Vec<u8>>());
        assert_eq!(parsed[1].salt, (116..130).collect::<Vec<u8>>());
    }

    #[test]
    fn a_broken_line_is_named() {
        let e = parse("# x\nSRTP a out 1.2.3.4:5 1.2.3.4:6 AES_CM_128_HMAC_SHA1_80 AAAA\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key log line 2") && e.contains("30 bytes"),
            "{e}"
        );
        let e = parse("SRTP a out nowhere 1.2.3.4:6 X Y\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("\"nowhere\""), "{e}");
    }
}
