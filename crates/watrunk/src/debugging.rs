//! The debugging options of `watrunk serve` (issue 23): `--key-log`, `--hep` and `--hep-id`, their
//! `[debug]` config-file keys, and their resolution. Both are off unless asked for.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

#[derive(Args, Debug, Default, Clone)]
pub struct DebugArgs {
    /// Write every call's SRTP master keys and DTLS secrets to this file (created 0600), for
    /// `watrunk capture decrypt` and Wireshark. Anyone who reads it can decrypt the calls: debug only.
    #[arg(long, value_name = "FILE")]
    pub key_log: Option<PathBuf>,
    /// Send a copy of every SIP message sent and received to this HEPv3 collector (Homer, sngrep),
    /// over UDP (host:port).
    #[arg(long, value_name = "HOST:PORT")]
    pub hep: Option<String>,
    /// The capture agent id in the HEP packets (default 2001).
    #[arg(long, value_name = "ID")]
    pub hep_id: Option<u32>,
}

/// The `[debug]` table of the config file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileDebug {
    key_log: Option<PathBuf>,
    hep: Option<String>,
    hep_id: Option<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct Debugging {
    pub key_log: Option<PathBuf>,
    pub hep: Option<SocketAddr>,
    pub hep_id: u32,
}

impl Debugging {
    pub fn resolve(args: &DebugArgs, file: &FileDebug) -> Result<Debugging> {
        let hep = match args.hep.as_deref().or(file.hep.as_deref()) {
            None => None,
            Some(addr) => Some(
                std::net::ToSocketAddrs::to_socket_addrs(addr)
                    .ok()
                    .and_then(|mut a| a.next())
                    .with_context(|| {
                        format!(
                            "--hep (config key debug.hep): {addr:?} is not a reachable host:port"
                        )
                    })?,
            ),
        };
        Ok(Debugging {
            key_log: args.key_log.clone().or_else(|| file.key_log.clone()),
            hep,
            hep_id: args.hep_id.or(file.hep_id).unwrap_or(2001),
        })
    }
}
