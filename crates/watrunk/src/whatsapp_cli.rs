//! `watrunk whatsapp`: the phone number's calling settings through Meta's Graph API (show, enable
//! SIP toward us, disable it) and its SIP password into a file `serve --sip-password-file` reads.
//! The token comes from `WHATSAPP_TOKEN` or `--token-file`, never a flag; neither it nor the
//! password is ever printed. Graph errors are turned into advice naming what to fix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Graph API version used unless `--graph-version` says otherwise: the newest seen in use for SIP
/// calling (livekit/sip#685); Meta's FAQ gives v17.0 as the minimum for calling.
pub const DEFAULT_GRAPH_VERSION: &str = "v25.0";

#[derive(Subcommand, Debug)]
pub enum WhatsappCommand {
    /// The number's calling settings: show them, point SIP at this host, or turn SIP off.
    Settings {
        #[command(subcommand)]
        command: SettingsCommand,
    },
    /// Read the number's SIP password (Meta makes one per number and app) into a file for
    /// `watrunk serve --sip-password-file`, readable by its owner only.
    Password {
        #[command(flatten)]
        graph: GraphArgs,
        /// Where to write the password (mode 600; replaced if it exists).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum SettingsCommand {
    /// Print the calling settings (`--json`: Meta's JSON as it came).
    Show {
        #[command(flatten)]
        graph: GraphArgs,
        #[arg(long)]
        json: bool,
    },
    /// Enable calling and SIP, with this host as the number's SIP server.
    Enable {
        #[command(flatten)]
        graph: GraphArgs,
        /// Our SIP hostname (what the certificate covers; Meta connects to it).
        #[arg(long, env = "WATRUNK_HOSTNAME")]
        hostname: String,
        /// Our TLS port.
        #[arg(long, default_value_t = 5061)]
        port: u16,
        /// Media keying Meta offers on calls to us: dtls (the default) or sdes.
        #[arg(long, default_value = "dtls")]
        srtp: String,
        /// KEY=VALUE added as `;KEY=VALUE` to the user part of the Request-URI of Meta's
        /// INVITEs (repeat; 128 characters in all).
        #[arg(long = "request-uri-user-param", value_name = "KEY=VALUE")]
        request_uri_user_params: Vec<String>,
    },
    /// Disable SIP on the number (`"servers": []`); enabling it again makes a new SIP password.
    Disable {
        #[command(flatten)]
        graph: GraphArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct GraphArgs {
    /// The phone number's ID in the Graph API (WhatsApp Manager / API Setup), not the number.
    #[arg(long)]
    phone_number_id: String,
    /// A file holding the access token (else the environment variable WHATSAPP_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The Graph API's base URL (plain http only to a loopback address, for tests).
    #[arg(long, default_value = "https://graph.facebook.com")]
    graph_url: String,
    /// The Graph API version.
    #[arg(long, default_value = DEFAULT_GRAPH_VERSION)]
    graph_version: String,
}

/// Why a command failed: Meta refused it (exit 1) or it could not be asked (exit 2).
enum Failure {
    Graph(String),
    Local(String),
}

pub fn run(command: WhatsappCommand) -> ExitCode {
    let done = match command {
        WhatsappCommand::Settings { command } => match command {
            SettingsCommand::Show { graph, json } => show(&graph, json),
            SettingsCommand::Enable {
                graph,
                hostname,
                port,
                srtp,
                request_uri_user_params,
            } => enable(&graph, &hostname, port, &srtp, &request_uri_user_params),
            SettingsCommand::Disable { graph } => disable(&graph),
        },
        WhatsappCommand::Password { graph, out } => password(&graph, &out),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Graph(text)) => {
            eprintln!("watrunk: {text}");
            ExitCode::from(1)
        }
        Err(Failure::Local(text)) => {
            eprintln!("watrunk: {text}");
            ExitCode::from(2)
        }
    }
}

/// The token, the settings URL and an HTTP agent, checked before anything is sent.
struct Graph {
    token: String,
    settings_url: String,
    /// `/VERSION/ID/settings`, for messages.
    path: String,
    agent: ureq::Agent,
}

impl Graph {
    fn new(args: &GraphArgs) -> Result<Graph, Failure> {
        let id = &args.phone_number_id;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Failure::Local(format!(
                "--phone-number-id {id:?} is not a phone number ID: it is the number's ID in the Graph API (digits only, shown in WhatsApp Manager and the app's API Setup), not the phone number itself"
            )));
        }
        let version = &args.graph_version;
        if !version.starts_with('v') || version.contains('/') {
            return Err(Failure::Local(format!(
                "--graph-version {version:?} is not a version like {DEFAULT_GRAPH_VERSION}"
            )));
        }
        let base = args.graph_url.trim_end_matches('/');
        check_base_url(base)?;
        let path = format!("/{version}/{id}/settings");
        Ok(Graph {
            token: token(args.token_file.as_deref())?,
            settings_url: format!("{base}{path}"),
            path,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .user_agent(concat!("watrunk/", env!("CARGO_PKG_VERSION")))
                .build(),
        })
    }

    fn get(&self, with_credentials: bool) -> Result<Value, Failure> {
        let mut req = self
            .agent
            .get(&self.settings_url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Accept", "application/json");
        let mut shown = format!("GET {}", self.path);
        if with_credentials {
            req = req.query("include_sip_credentials", "true");
            shown.push_str("?include_sip_credentials=true");
        }
        answer(req.call(), &shown)
    }

    fn post(&self, body: &Value) -> Result<Value, Failure> {
        let req = self
            .agent
            .post(&self.settings_url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Accept", "application/json");
        let answer = answer(req.send_json(body), &format!("POST {}", self.path))?;
        if answer.get("success") != Some(&Value::Bool(true)) {
            return Err(Failure::Graph(format!(
                "POST {}: Meta did not answer {{\"success\": true}} but {}",
                self.path,
                redacted(&answer)
            )));
        }
        Ok(answer)
    }
}

/// Plain http would carry the token in clear: only toward this host (tests).
fn check_base_url(base: &str) -> Result<(), Failure> {
    if base.starts_with("https://") {
        return Ok(());
    }
    if let Some(rest) = base.strip_prefix("http://") {
        let host = rest.split('/').next().unwrap_or("");
        let host = match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Ok(());
        }
    }
    Err(Failure::Local(format!(
        "--graph-url {base:?}: give an https:// URL (Meta's is https://graph.facebook.com); plain http only to a loopback address, since the token would cross the network in clear"
    )))
}

fn token(file: Option<&Path>) -> Result<String, Failure> {
    let token = match file {
        Some(path) => {
            let token = std::fs::read_to_string(path).map_err(|e| {
                Failure::Local(format!("--token-file: cannot read {}: {e}", path.display()))
            })?;
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o777);
            if mode & 0o077 != 0 {
                eprintln!(
                    "watrunk: warning: --token-file {} can be read by others (mode {mode:o}): chmod 600 it",
                    path.display()
                );
            }
            token
        }
        None => std::env::var("WHATSAPP_TOKEN").map_err(|_| {
            Failure::Local(
                "no access token: set WHATSAPP_TOKEN in the environment or pass --token-file FILE (a System User token with whatsapp_business_management)".into(),
            )
        })?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        let whence = match file {
            Some(path) => format!("--token-file {}", path.display()),
            None => "WHATSAPP_TOKEN".into(),
        };
        return Err(Failure::Local(format!(
            "{whence} is empty: it must hold the access token"
        )));
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Failure::Local(
            "the access token holds spaces or control characters: the file or WHATSAPP_TOKEN must hold the token alone".into(),
        ));
    }
    Ok(token)
}

/// Meta's answer as JSON, or its error turned into advice.
fn answer(result: Result<ureq::Response, ureq::Error>, shown: &str) -> Result<Value, Failure> {
    match result {
        Ok(resp) => {
            let text = resp
                .into_string()
                .map_err(|e| Failure::Local(format!("{shown}: cannot read Meta's answer: {e}")))?;
            serde_json::from_str(&text).map_err(|e| {
                Failure::Graph(format!(
                    "{shown}: Meta's answer is not JSON ({e}): {}",
                    clip(&text)
                ))
            })
        }
        Err(ureq::Error::Status(status, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            Err(Failure::Graph(graph_error(shown, status, &text)))
        }
        Err(ureq::Error::Transport(t)) => Err(Failure::Local(format!(
            "{shown}: cannot reach the Graph API: {t} (check the network, a proxy, or --graph-url)"
        ))),
    }
}

/// A Graph error answer (`{"error":{"message","code","error_subcode",...}}`) as one message with
/// what to do about it.
fn graph_error(shown: &str, status: u16, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let Some(error) = parsed.as_ref().and_then(|v| v.get("error")) else {
        return format!(
            "{shown}: HTTP {status} without a Graph error: {}",
            clip(body)
        );
    };
    let code = error.get("code").and_then(Value::as_i64);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("(no message)");
    let details = error
        .pointer("/error_data/details")
        .and_then(Value::as_str)
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    let code_text = code.map_or("no code".to_string(), |c| format!("error {c}"));
    let advice = match code {
        Some(131055) => "the Graph calling API is refused while SIP is enabled on this number: its calls go through SIP (watrunk) only; `watrunk whatsapp settings disable` turns SIP off if you mean to use the Graph calling endpoints".to_string(),
        Some(c) if (138000..139000).contains(&c) => format!(
            "a WhatsApp calling error ({c}): Meta refused the calling settings or call; see https://developers.facebook.com/documentation/business-messaging/whatsapp/calling/troubleshooting for this code"
        ),
        Some(190) => "the access token is expired or invalid: make a new one (a System User token does not expire) and give it in WHATSAPP_TOKEN or --token-file".to_string(),
        Some(100) => "Meta calls a parameter invalid: check --phone-number-id (the number's Graph ID, not the number), --hostname, --port and any --request-uri-user-param".to_string(),
        Some(10) | Some(200..=299) => "the token lacks a permission: give its app or System User the whatsapp_business_management permission on the WhatsApp Business Account that owns this number".to_string(),
        _ => "see Meta's message above".to_string(),
    };
    format!("{shown}: Meta refused it (HTTP {status}, {code_text}): {message}{details}\n  what to do: {advice}")
}

fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// `value` with every `sip_user_password` masked, for printing.
fn redacted(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if k == "sip_user_password" {
                        Value::String("(hidden)".into())
                    } else {
                        redacted(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

fn show(args: &GraphArgs, json: bool) -> Result<(), Failure> {
    let graph = Graph::new(args)?;
    let settings = graph.get(false)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&redacted(&settings)).unwrap_or_default()
        );
    } else {
        print!("{}", summary(&settings));
    }
    Ok(())
}

/// The calling settings, one fact a line.
fn summary(settings: &Value) -> String {
    let calling = &settings["calling"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "(not set)".into(),
        other => other.to_string(),
    };
    let mut out = format!("calling: {}\n", text(&calling["status"]));
    let sip = &calling["sip"];
    out.push_str(&format!("sip: {}\n", text(&sip["status"])));
    let srtp = match sip.get("srtp_key_exchange_protocol") {
        Some(v) => text(v),
        None => "(not set: DTLS)".into(),
    };
    out.push_str(&format!("  srtp_key_exchange_protocol: {srtp}\n"));
    let servers = sip["servers"].as_array().cloned().unwrap_or_default();
    if servers.is_empty() {
        out.push_str("  servers: none\n");
    }
    for server in &servers {
        out.push_str(&format!(
            "  server: {}:{}",
            text(&server["hostname"]),
            server["port"]
                .as_u64()
                .map_or("5061 (default)".into(), |p| p.to_string())
        ));
        if let Some(app) = server.get("app_id") {
            out.push_str(&format!(" (app {})", text(app)));
        }
        out.push('\n');
        if let Some(params) = server["request_uri_user_params"].as_object() {
            let params: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            out.push_str(&format!(
                "    request_uri_user_params: {}\n",
                params.join(";")
            ));
        }
    }
    if let Some(map) = calling.as_object() {
        for (key, value) in map {
            if key != "status" && key != "sip" && !value.is_object() && !value.is_array() {
                out.push_str(&format!("{key}: {}\n", text(value)));
            }
        }
    }
    out
}

/// `KEY=VALUE` flags as the JSON object, refused when Meta would (over 128 characters as
/// `;KEY=VALUE`) or a SIP URI could not carry them.
fn user_params(params: &[String]) -> Result<serde_json::Map<String, Value>, Failure> {
    let mut map = serde_json::Map::new();
    let mut length = 0;
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            return Err(Failure::Local(format!(
                "--request-uri-user-param {param:?} is not KEY=VALUE"
            )));
        };
        // RFC 3261 user-part characters, less the separators `;`, `=`, `@`.
        let fits = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&+$,/?:".contains(&b))
        };
        if key.is_empty() || !fits(key) || !fits(value) {
            return Err(Failure::Local(format!(
                "--request-uri-user-param {param:?}: KEY and VALUE must be letters, digits or -_.!~*'()&+$,/?: (it goes into a SIP URI's user part)"
            )));
        }
        length += 1 + param.len();
        map.insert(key.to_string(), Value::String(value.to_string()));
    }
    if length > 128 {
        return Err(Failure::Local(format!(
            "--request-uri-user-param: the parameters come to {length} characters as ;KEY=VALUE, over Meta's 128"
        )));
    }
    Ok(map)
}

/// The body that enables calling and SIP toward `hostname:port`.
fn enable_body(hostname: &str, port: u16, srtp: &str, params: &[String]) -> Result<Value, Failure> {
    let protocol = match srtp.to_ascii_lowercase().as_str() {
        "dtls" => "DTLS",
        "sdes" => "SDES",
        other => {
            return Err(Failure::Local(format!(
                "--srtp {other:?} is neither dtls nor sdes"
            )))
        }
    };
    let valid_host = !hostname.is_empty()
        && hostname.len() <= 253
        && hostname
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !valid_host || hostname.parse::<std::net::IpAddr>().is_ok() {
        return Err(Failure::Local(format!(
            "--hostname {hostname:?} is not a DNS name: Meta connects to a name its certificate check can match (e.g. sip.example.com)"
        )));
    }
    if port == 0 {
        return Err(Failure::Local(
            "--port 0 is not a port Meta can connect to".into(),
        ));
    }
    let mut server = json!({ "hostname": hostname, "port": port });
    let params = user_params(params)?;
    if !params.is_empty() {
        server["request_uri_user_params"] = Value::Object(params);
    }
    Ok(json!({
        "calling": {
            "status": "ENABLED",
            "sip": {
                "status": "ENABLED",
                "srtp_key_exchange_protocol": protocol,
                "servers": [server],
            }
        }
    }))
}

fn enable(
    args: &GraphArgs,
    hostname: &str,
    port: u16,
    srtp: &str,
    params: &[String],
) -> Result<(), Failure> {
    let body = enable_body(hostname, port, srtp, params)?;
    let graph = Graph::new(args)?;
    graph.post(&body)?;
    println!(
        "SIP enabled on {}: Meta sends calls to {hostname}:{port} ({})",
        args.phone_number_id,
        body["calling"]["sip"]["srtp_key_exchange_protocol"]
            .as_str()
            .unwrap_or("DTLS")
    );
    println!(
        "next: watrunk whatsapp password --phone-number-id {} --out FILE, then serve with --sip-password-file FILE",
        args.phone_number_id
    );
    Ok(())
}

fn disable_body() -> Value {
    json!({ "calling": { "sip": { "status": "DISABLED", "servers": [] } } })
}

fn disable(args: &GraphArgs) -> Result<(), Failure> {
    let graph = Graph::new(args)?;
    graph.post(&disable_body())?;
    println!(
        "SIP disabled on {} (enabling it again makes a new SIP password)",
        args.phone_number_id
    );
    Ok(())
}

fn password(args: &GraphArgs, out: &Path) -> Result<(), Failure> {
    let graph = Graph::new(args)?;
    let settings = graph.get(true)?;
    let servers = settings
        .pointer("/calling/sip/servers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some((hostname, password)) = servers.iter().find_map(|s| {
        let password = s.get("sip_user_password")?.as_str()?;
        Some((
            s["hostname"].as_str().unwrap_or("?").to_string(),
            password.to_string(),
        ))
    }) else {
        return Err(Failure::Graph(format!(
            "GET {}?include_sip_credentials=true: the answer holds no sip_user_password: SIP is not configured on this number (run `watrunk whatsapp settings enable` first), or the token lacks the whatsapp_business_management permission",
            graph.path
        )));
    };
    // serve reads the file trimmed (config.rs read_password): a password Meta padded with spaces
    // would not survive that, so it is refused rather than written wrong.
    if password.is_empty() || password.trim() != password || password.contains('\n') {
        return Err(Failure::Graph(
            "Meta's sip_user_password is empty or has leading/trailing white space: it cannot be kept in a --sip-password-file as it is".into(),
        ));
    }
    write_private(out, format!("{password}\n").as_bytes())
        .map_err(|e| Failure::Local(format!("--out: cannot write {}: {e}", out.display())))?;
    println!(
        "SIP password for {hostname} written to {} (mode 600): serve with --sip-password-file {}",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Writes `data` to `path` readable by its owner only: a new file beside it, renamed over it.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let temp = path.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_params_over_128_characters_are_refused_naming_the_flag() {
        let long = format!("k={}", "v".repeat(126));
        let Err(Failure::Local(e)) = user_params(&[long]) else {
            panic!("accepted");
        };
        assert!(
            e.contains("129 characters") && e.contains("--request-uri-user-param"),
            "{e}"
        );
        let Err(Failure::Local(e)) = user_params(&["novalue".into()]) else {
            panic!("accepted");
        };
        assert!(e.contains("not KEY=VALUE"), "{e}");
        let ok = user_params(&[
            "tgrp=wacall".into(),
            "trunk-context=byoc.example.com".into(),
        ])
        .ok()
        .unwrap();
        assert_eq!(ok["trunk-context"], "byoc.example.com");
    }

    #[test]
    fn plain_http_is_only_for_loopback() {
        assert!(check_base_url("http://127.0.0.1:9000").is_ok());
        assert!(check_base_url("http://[::1]:9000").is_ok());
        assert!(check_base_url("https://graph.facebook.com").is_ok());
        assert!(check_base_url("http://graph.facebook.com").is_err());
    }

    #[test]
    fn the_summary_hides_nothing_it_should_show_and_no_password() {
        let settings = json!({"calling": {"status": "ENABLED", "call_icon_visibility": "DEFAULT",
            "sip": {"status": "ENABLED", "servers": [{"hostname": "sip.example.com", "port": 5061,
            "app_id": "42", "sip_user_password": "secret", "request_uri_user_params": {"tgrp": "wacall"}}]}}});
        let text = summary(&settings);
        assert_eq!(
            text,
            "calling: ENABLED\nsip: ENABLED\n  srtp_key_exchange_protocol: (not set: DTLS)\n  server: sip.example.com:5061 (app 42)\n    request_uri_user_params: tgrp=wacall\ncall_icon_visibility: DEFAULT\n"
        );
        assert!(!redacted(&settings).to_string().contains("secret"));
    }
}
