//! `watrunk config reference`: docs/configuration.md, generated from the definitions themselves so
//! that it cannot drift: every `serve` flag as clap knows it (help, default, environment variable),
//! the config file key it maps to, and every key the file's types accept (found by asking their
//! serde derive for its field names). The tests fail when a flag or key is added without a place
//! here, and when docs/configuration.md differs from the output.

use std::fmt::Write as _;

use clap::{ArgAction, Args as _};
use serde::de::{self, Deserialize, Visitor};

use super::{
    FileAuth, FileConfig, FileLimits, FileListen, FileMedia, FileMeta, FileNumber, FilePbx,
    FileTls, FileWebhooks, ServeArgs,
};

/// The command that rewrites docs/configuration.md (named by the test that finds it stale).
pub const REGENERATE: &str = "cargo run -p watrunk -- config reference > docs/configuration.md";

/// The `serve` flags a config file key also sets: (flag, key, how the key's value relates).
const FLAG_KEYS: &[(&str, &str, &str)] = &[
    ("hostname", "hostname", ""),
    ("tls", "listen.tls", ""),
    ("tcp", "listen.tcp", ""),
    ("udp", "listen.udp", ""),
    ("cert", "tls.cert", ""),
    ("key", "tls.key", ""),
    ("state-dir", "state_dir", ""),
    ("sip-trace", "sip_trace", ""),
    ("challenge", "auth.challenge", ""),
    ("sip-password-file", "auth.password_file", ""),
    ("sip-username", "auth.username", ""),
    (
        "challenge-401",
        "auth.status",
        " (the flag is `status = 401`)",
    ),
    ("digest-algorithm", "auth.algorithm", ""),
    ("auth-max-failures", "auth.max_failures", ""),
    ("auth-ban-secs", "auth.ban_secs", ""),
    ("max-message-size", "limits.max_message_size", ""),
    ("idle-timeout-secs", "limits.idle_timeout_secs", ""),
    ("drain-timeout-secs", "limits.drain_timeout_secs", ""),
    ("number", "number.number", " (one `[[number]]` table each)"),
    ("media-ip", "media.ip", ""),
    ("media-ip6", "media.ip6", ""),
    ("media-port", "media.port", ""),
    ("public-ip", "media.public_ip", ""),
    ("sink", "media.sink", ""),
    ("sink-codec", "media.sink_codec", ""),
    ("rtp-timeout-secs", "media.rtp_timeout_secs", ""),
    ("srtp", "media.srtp", ""),
    ("events", "events", ""),
    ("cdr", "cdr", ""),
    (
        "webhook",
        "webhooks.urls",
        " (a list; the flags, when given, replace it)",
    ),
    ("webhook-secret-file", "webhooks.secret_file", ""),
    ("key-log", "debug.key_log", ""),
    ("hep", "debug.hep", ""),
    ("hep-id", "debug.hep_id", ""),
    ("meta-server", "meta.server", ""),
    ("meta-domain", "meta.domain", ""),
    ("tls-ca", "meta.tls_ca", ""),
    ("api", "api", ""),
    (
        "pbx",
        "pbx.target",
        " (the flags `--pbx*` set the first `[[pbx]]`)",
    ),
    ("pbx-ring-timeout-secs", "pbx.ring_timeout_secs", ""),
    ("pbx-rtp-timeout-secs", "pbx.rtp_timeout_secs", ""),
    ("pbx-username", "pbx.username", ""),
    ("pbx-password-file", "pbx.password_file", ""),
    ("pbx-asserted-identity", "pbx.asserted_identity", ""),
    ("pbx-challenge", "pbx.challenge", ""),
    ("pbx-register", "pbx.register", ""),
    ("pbx-srtp", "pbx.srtp", ""),
    (
        "pbx-no-symmetric-rtp",
        "pbx.symmetric_rtp",
        " (the flag is `symmetric_rtp = false`)",
    ),
    ("pbx-ringback", "pbx.ringback", ""),
];

/// The config file keys no flag sets, with what they do.
const FILE_ONLY: &[(&str, &str)] = &[
    ("limits.max_connections", "Stream connections open at once, from all sources together (10000)."),
    ("limits.max_connections_per_source", "Stream connections open at once from one address (128)."),
    ("limits.first_message_secs", "An accepted connection must send a complete SIP message within this many seconds (30)."),
    ("limits.udp_per_source_rate", "UDP datagrams one address may send per second (500)."),
    ("limits.max_transactions", "Server transactions open at once, from all sources together (8192)."),
    ("limits.max_transactions_per_source", "Server transactions open at once for one address (1024)."),
    ("limits.max_completed", "Answered transactions kept for their retransmissions (non-INVITE over UDP: Timer J, 32 s; an INVITE whose 2xx was ACKed: Timer L, 32 s), which count against neither limit above; beyond, the oldest is let go early (65536)."),
    ("number.password_file", "A file holding this number's SIP password (Meta's, per number); default: `auth.password_file`."),
    ("number.password", "This number's SIP password itself, instead of `password_file` (keep the file private)."),
    ("number.challenge", "Challenge INVITEs to this number; default: `auth.challenge`."),
    ("number.sink", "Where this number's calls' audio goes; default: `media.sink`."),
    ("number.sink_codec", "What this number's sink speaks; default: `media.sink_codec`."),
    ("number.srtp", "Media keying of the calls placed from this number (dtls or sdes); default: `media.srtp`."),
    ("pbx.codecs", "Codecs offered to the PBX, in this order: any of opus, pcmu, pcma, g722 (telephone-event is always added); default: all four, Opus first."),
    ("pbx.numbers", "The business numbers bridged to this PBX; none: every number no other `[[pbx]]` names."),
    ("pbx.sources", "More addresses this PBX's calls may come from, beside its target host's (a cluster, a proxy in front of it)."),
];

/// The file's tables: (name, is an array of tables, its keys).
fn sections() -> Vec<(&'static str, bool, &'static [&'static str])> {
    vec![
        ("listen", false, fields_of::<FileListen>()),
        ("tls", false, fields_of::<FileTls>()),
        ("auth", false, fields_of::<FileAuth>()),
        ("limits", false, fields_of::<FileLimits>()),
        ("media", false, fields_of::<FileMedia>()),
        ("meta", false, fields_of::<FileMeta>()),
        ("webhooks", false, fields_of::<FileWebhooks>()),
        ("debug", false, fields_of::<crate::debugging::FileDebug>()),
        ("number", true, fields_of::<FileNumber>()),
        ("pbx", true, fields_of::<FilePbx>()),
    ]
}

/// The field names a struct's derived `Deserialize` accepts (what `deny_unknown_fields` lets
/// through): serde hands them to `deserialize_struct`, which is all this deserializer answers.
fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Every key of the file, dotted (`media.ip`, `number.sink`), top-level keys bare.
fn file_keys() -> Vec<String> {
    let sections = sections();
    let (mut keys, mut tables) = (Vec::new(), Vec::new());
    for top in fields_of::<FileConfig>() {
        match sections.iter().find(|(name, ..)| name == top) {
            Some((name, _, fields)) => tables.extend(fields.iter().map(|f| format!("{name}.{f}"))),
            None => keys.push(top.to_string()),
        }
    }
    keys.extend(tables);
    keys
}

/// The `watrunk serve` command as clap builds it.
fn serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("serve"))
}

/// The long flags of `watrunk serve` (help and version left out).
fn serve_flags(serve: &clap::Command) -> Vec<&clap::Arg> {
    serve
        .get_arguments()
        .filter(|a| a.get_long().is_some())
        .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
        .collect()
}

/// docs/configuration.md.
pub fn markdown() -> String {
    let serve = serve_command();
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Configuration reference\n");
    let _ = writeln!(
        w,
        "<!-- Generated by `watrunk config reference` from the flag and config file definitions; \
         do not edit. Regenerate with: {REGENERATE} -->\n"
    );
    let _ = writeln!(
        w,
        "`watrunk serve` reads its settings from flags, from environment variables (for the flags \
         that name one) and from a TOML file given with `--config` (`WATRUNK_CONFIG`); a flag or \
         its variable wins over the file, and the file over the defaults. Every problem is \
         reported at start-up naming the flag or key to fix. SIGHUP reloads the file (numbers, \
         passwords, sinks, digest and ban settings, the RTP timeout, the certificate); the log \
         names what needs a restart. `examples/watrunk.toml` is a commented example.\n"
    );
    let _ = writeln!(w, "## Flags of `watrunk serve`\n");
    for arg in serve_flags(&serve) {
        let long = arg.get_long().unwrap_or_default();
        let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
        let value = arg
            .get_value_names()
            .and_then(|n| n.first())
            .map(|n| n.to_string())
            .unwrap_or_else(|| arg.get_id().as_str().to_ascii_uppercase());
        match takes_value {
            true => {
                let _ = writeln!(w, "### `--{long} <{value}>`\n");
            }
            false => {
                let _ = writeln!(w, "### `--{long}`\n");
            }
        }
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_else(|| match long {
                "key" => "The private key (PEM) of --cert.".to_string(),
                _ => String::new(),
            });
        let _ = writeln!(w, "{}\n", one_paragraph(&help));
        if arg.get_value_delimiter() == Some(',') {
            let _ = writeln!(w, "- Repeat it, or separate values with `,`.");
        }
        if let Some(env) = arg.get_env() {
            let _ = writeln!(w, "- Environment: `{}`", env.to_string_lossy());
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() {
            let _ = writeln!(w, "- Default: `{}`", defaults.join(","));
        }
        match FLAG_KEYS.iter().find(|(flag, ..)| *flag == long) {
            Some((_, key, note)) => {
                let _ = writeln!(w, "- Config file: {}{note}", key_name(key));
            }
            None => {
                let _ = writeln!(w, "- Config file: none (flag only)");
            }
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "## Config file keys\n");
    let _ = writeln!(
        w,
        "Every key the file accepts (an unknown key stops start-up). Top-level keys first, then \
         each table; `[[number]]` and `[[pbx]]` may be repeated.\n"
    );
    let keys = file_keys();
    let mut section = "";
    for key in &keys {
        let (table, field) = key.split_once('.').unwrap_or(("", key));
        if table != section {
            section = table;
            let array = sections()
                .iter()
                .any(|(name, array, _)| *name == table && *array);
            let _ = match array {
                true => writeln!(w, "\n### `[[{table}]]`\n"),
                false => writeln!(w, "\n### `[{table}]`\n"),
            };
        }
        let what = match FLAG_KEYS.iter().find(|(_, k, _)| k == key) {
            Some((flag, _, note)) => format!("as `--{flag}`{note}"),
            None => FILE_ONLY
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, d)| d.to_string())
                .unwrap_or_default(),
        };
        let _ = writeln!(w, "- `{field}`: {what}");
    }
    out
}

/// How a dotted key reads in the file.
fn key_name(key: &str) -> String {
    match key.split_once('.') {
        Some((table, field)) if ["number", "pbx"].contains(&table) => {
            format!("`{field}` in `[[{table}]]`")
        }
        Some((table, field)) => format!("`{field}` in `[{table}]`"),
        None => format!("`{key}` (top level)"),
    }
}

/// Help text as one markdown paragraph (clap keeps the doc comment's line breaks).
fn one_paragraph(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_and_file_key_has_its_place_in_the_reference() {
        let serve = serve_command();
        let flags: Vec<&str> = serve_flags(&serve)
            .iter()
            .filter_map(|a| a.get_long())
            .collect();
        let keys = file_keys();
        assert!(keys.contains(&"media.ip".to_string()), "{keys:?}");
        assert!(
            keys.contains(&"number.password_file".to_string()),
            "{keys:?}"
        );
        for (flag, key, _) in FLAG_KEYS {
            assert!(
                flags.contains(flag),
                "FLAG_KEYS names --{flag}, which `watrunk serve` does not have"
            );
            assert!(
                keys.iter().any(|k| k == key),
                "FLAG_KEYS maps --{flag} to {key}, which the config file does not accept"
            );
        }
        for (key, _) in FILE_ONLY {
            assert!(
                keys.iter().any(|k| k == key),
                "FILE_ONLY describes {key}, which the config file does not accept"
            );
            assert!(
                !FLAG_KEYS.iter().any(|(_, k, _)| k == key),
                "{key} is in both FLAG_KEYS and FILE_ONLY"
            );
        }
        for key in &keys {
            let known = FLAG_KEYS.iter().any(|(_, k, _)| k == key)
                || FILE_ONLY.iter().any(|(k, _)| k == key);
            assert!(
                known,
                "config file key {key} is undocumented: map it to its flag in FLAG_KEYS or describe it in FILE_ONLY (a new table goes in sections()) in crates/watrunk/src/config/reference.rs, then run: {REGENERATE}"
            );
        }
        for arg in serve_flags(&serve) {
            let help = arg.get_long_help().or(arg.get_help());
            assert!(
                help.is_some() || arg.get_long() == Some("key"),
                "--{} has no help text (a doc comment on its field in config.rs)",
                arg.get_long().unwrap_or_default()
            );
        }
    }

    #[test]
    fn docs_configuration_md_is_the_generated_reference() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let written = std::fs::read_to_string(path).unwrap_or_default();
        let generated = markdown();
        assert!(
            written == generated,
            "docs/configuration.md is not what `watrunk config reference` prints: regenerate it with\n    {REGENERATE}\n(first difference at line {})",
            written
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .map_or(written.lines().count().min(generated.lines().count()), |i| i)
                + 1
        );
    }

    #[test]
    fn docs_scale_out_md_quotes_the_tested_kamailio_configuration_as_it_is() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let doc = std::fs::read_to_string(format!("{root}/docs/scale-out.md")).unwrap();
        for file in [
            "examples/kamailio-scale-out.cfg",
            "examples/kamailio-scale-out.list",
        ] {
            let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
            assert!(
                doc.contains(&format!("```\n{text}```")),
                "docs/scale-out.md does not quote {file} as it is: copy it in again"
            );
        }
    }

    #[test]
    fn the_reference_names_a_flag_its_variable_and_its_key() {
        let md = markdown();
        let media_ip = md
            .split("### `--media-ip <MEDIA_IP>`")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .expect("a --media-ip entry");
        assert!(
            media_ip.contains("- Environment: `WATRUNK_MEDIA_IP`"),
            "{media_ip}"
        );
        assert!(
            media_ip.contains("- Config file: `ip` in `[media]`"),
            "{media_ip}"
        );
        assert!(media_ip.contains("ICE host candidate"), "{media_ip}");
        assert!(md.contains("- `max_connections_per_source`: Stream connections open at once from one address (128)."));
        assert!(md.contains("### `[[pbx]]`"));
        assert!(md.contains("### `--sip-trace-unmasked`\n"));
    }
}
