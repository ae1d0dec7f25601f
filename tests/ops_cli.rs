//! The operations commands: `watrunk whatsapp` against a local stand-in for Meta's Graph API that
//! records each request (method, path, query, headers, JSON body) and answers as told, and
//! `watrunk doctor` against a correct set-up (a test CA, its leaf for localhost, a running serve)
//! and broken ones (wrong name, self-signed, expired, port closed, a server asking for a client
//! certificate, unreadable password file, a sink nobody listens on). Certificates are made here
//! with rcgen.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use common::{bin, free_port, Server, TempDir};
use serde_json::{json, Value};

const TOKEN: &str = "EAAtest-token-0123456789";
const PHONE_ID: &str = "106540352242922";

/// One request as the stand-in Graph API saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request was `method target`, carrying our token.
    fn assert_request(&self, method: &str, target: &str) {
        assert_eq!(
            (self.method.as_str(), self.target.as_str()),
            (method, target)
        );
        assert_eq!(
            self.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
}

/// A Graph API stand-in answering one request with `status` and `body`.
fn graph(status: u16, answer: Value) -> (String, JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').unwrap();
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let text = answer.to_string();
        let mut out = stream;
        write!(
            out,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )
        .unwrap();
        Seen {
            method,
            target,
            headers,
            body: String::from_utf8(body).unwrap(),
        }
    });
    (url, handle)
}

/// `watrunk whatsapp ARGS` with the token in the environment (or not, `token: None`).
fn whatsapp(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("whatsapp").args(args).env_remove("WHATSAPP_TOKEN");
    if let Some(t) = token {
        cmd.env("WHATSAPP_TOKEN", t);
    }
    cmd.output().expect("run watrunk whatsapp")
}

/// `settings enable` for sip.example.com with every other setting left to its default.
fn enable_with_defaults(graph_url: &str) -> Output {
    whatsapp(
        &[
            "settings",
            "enable",
            "--phone-number-id",
            PHONE_ID,
            "--hostname",
            "sip.example.com",
            "--graph-url",
            graph_url,
        ],
        Some(TOKEN),
    )
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn assert_secret_free(out: &Output, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !text(&out.stdout).contains(s) && !text(&out.stderr).contains(s),
            "{s} was printed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn settings_enable_posts_calling_sip_toward_our_host() {
    let (url, seen) = graph(200, json!({"success": true}));
    let out = whatsapp(
        &[
            "settings",
            "enable",
            "--phone-number-id",
            PHONE_ID,
            "--hostname",
            "sip.example.com",
            "--port",
            "5071",
            "--srtp",
            "sdes",
            "--request-uri-user-param",
            "tgrp=wacall",
            "--request-uri-user-param",
            "trunk-context=byoc.example.com",
            "--graph-url",
            &url,
        ],
        Some(TOKEN),
    );
    let seen = seen.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    seen.assert_request("POST", &format!("/v25.0/{PHONE_ID}/settings"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(
        body,
        json!({"calling": {"status": "ENABLED", "sip": {
            "status": "ENABLED",
            "srtp_key_exchange_protocol": "SDES",
            "servers": [{"hostname": "sip.example.com", "port": 5071,
                "request_uri_user_params": {"tgrp": "wacall", "trunk-context": "byoc.example.com"}}]
        }}})
    );
    assert!(
        text(&out.stdout).starts_with(&format!(
            "SIP enabled on {PHONE_ID}: Meta sends calls to sip.example.com:5071 (SDES)\n"
        )),
        "{}",
        text(&out.stdout)
    );
    assert_secret_free(&out, &[TOKEN]);

    // Defaults: port 5061, DTLS, no user parameters.
    let (url, seen) = graph(200, json!({"success": true}));
    let out = enable_with_defaults(&url);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let body: Value = serde_json::from_str(&seen.join().unwrap().body).unwrap();
    assert_eq!(
        body["calling"]["sip"],
        json!({"status": "ENABLED", "srtp_key_exchange_protocol": "DTLS",
            "servers": [{"hostname": "sip.example.com", "port": 5061}]})
    );
}

#[test]
fn settings_disable_empties_the_servers_with_the_token_from_a_file() {
    let dir = TempDir::new("graph-disable");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (url, seen) = graph(200, json!({"success": true}));
    let out = whatsapp(
        &[
            "settings",
            "disable",
            "--phone-number-id",
            PHONE_ID,
            "--token-file",
            token_file.to_str().unwrap(),
            "--graph-url",
            &format!("{url}/"),
            "--graph-version",
            "v23.0",
        ],
        None,
    );
    let seen = seen.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    seen.assert_request("POST", &format!("/v23.0/{PHONE_ID}/settings"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(
        body,
        json!({"calling": {"sip": {"status": "DISABLED", "servers": []}}})
    );
    assert_eq!(
        text(&out.stdout),
        format!("SIP disabled on {PHONE_ID} (enabling it again makes a new SIP password)\n")
    );
    assert_eq!(
        text(&out.stderr),
        format!(
            "watrunk: warning: --token-file {} can be read by others (mode 640): chmod 600 it\n",
            token_file.display()
        )
    );
    assert_secret_free(&out, &[TOKEN]);
}

#[test]
fn settings_show_prints_a_summary_or_the_json() {
    let settings = json!({"calling": {"status": "ENABLED", "call_icon_visibility": "DEFAULT",
        "sip": {"status": "ENABLED", "srtp_key_exchange_protocol": "SDES",
        "servers": [{"hostname": "sip.example.com", "port": 5061, "app_id": "7766",
            "request_uri_user_params": {"tgrp": "wacall"}}]}}});
    let (url, seen) = graph(200, settings.clone());
    let out = whatsapp(
        &[
            "settings",
            "show",
            "--phone-number-id",
            PHONE_ID,
            "--graph-url",
            &url,
        ],
        Some(TOKEN),
    );
    let seen = seen.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    seen.assert_request("GET", &format!("/v25.0/{PHONE_ID}/settings"));
    assert_eq!(seen.body, "");
    assert_eq!(
        text(&out.stdout),
        "calling: ENABLED\nsip: ENABLED\n  srtp_key_exchange_protocol: SDES\n  server: sip.example.com:5061 (app 7766)\n    request_uri_user_params: tgrp=wacall\ncall_icon_visibility: DEFAULT\n"
    );

    let (url, seen) = graph(200, settings.clone());
    let out = whatsapp(
        &[
            "settings",
            "show",
            "--json",
            "--phone-number-id",
            PHONE_ID,
            "--graph-url",
            &url,
        ],
        Some(TOKEN),
    );
    seen.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(printed, settings);
}

#[test]
fn password_is_written_mode_600_as_serve_reads_it_and_never_printed() {
    let dir = TempDir::new("graph-password");
    let out_file = dir.path().join("15550001111.password");
    // A file already there, readable by all: replaced, and owner-only after.
    std::fs::write(&out_file, "old\n").unwrap();
    std::fs::set_permissions(&out_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let password = "Zq8-t0pS3cret_pw";
    let (url, seen) = graph(
        200,
        json!({"calling": {"status": "ENABLED", "sip": {"status": "ENABLED", "servers": [
            {"hostname": "sip.example.com", "port": 5061, "app_id": "7766", "sip_user_password": password}]}}}),
    );
    let out = whatsapp(
        &[
            "password",
            "--phone-number-id",
            PHONE_ID,
            "--out",
            out_file.to_str().unwrap(),
            "--graph-url",
            &url,
        ],
        Some(TOKEN),
    );
    let seen = seen.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    seen.assert_request(
        "GET",
        &format!("/v25.0/{PHONE_ID}/settings?include_sip_credentials=true"),
    );
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        format!("{password}\n")
    );
    let mode = std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        text(&out.stdout),
        format!(
            "SIP password for sip.example.com written to {f} (mode 600): serve with --sip-password-file {f}\n",
            f = out_file.display()
        )
    );
    assert_secret_free(&out, &[TOKEN, password]);

    // SIP not configured: no password in the answer, and no file touched.
    let (url, seen) = graph(
        200,
        json!({"calling": {"status": "ENABLED", "sip": {"status": "DISABLED"}}}),
    );
    let missing = dir.path().join("none.password");
    let out = whatsapp(
        &[
            "password",
            "--phone-number-id",
            PHONE_ID,
            "--out",
            missing.to_str().unwrap(),
            "--graph-url",
            &url,
        ],
        Some(TOKEN),
    );
    seen.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the answer holds no sip_user_password: SIP is not configured on this number (run `watrunk whatsapp settings enable` first)"),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists());
}

#[test]
fn graph_errors_become_advice_with_exit_code_1() {
    for (http, code, message, advice) in [
        (
            400,
            131055,
            "Method not allowed for this number",
            "the Graph calling API is refused while SIP is enabled on this number",
        ),
        (
            400,
            138006,
            "Calling is not enabled",
            "a WhatsApp calling error (138006): Meta refused the calling settings or call",
        ),
        (
            401,
            190,
            "Error validating access token: Session has expired",
            "the access token is expired or invalid: make a new one",
        ),
        (
            400,
            100,
            "Invalid parameter",
            "Meta calls a parameter invalid: check --phone-number-id",
        ),
        (
            403,
            10,
            "Application does not have permission for this action",
            "give its app or System User the whatsapp_business_management permission",
        ),
        (
            403,
            200,
            "Permissions error",
            "give its app or System User the whatsapp_business_management permission",
        ),
    ] {
        let (url, seen) = graph(
            http,
            json!({"error": {"message": message, "type": "OAuthException", "code": code,
                "fbtrace_id": "Atrace"}}),
        );
        let out = enable_with_defaults(&url);
        seen.join().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{code}: {stderr}");
        let head = format!(
            "watrunk: POST /v25.0/{PHONE_ID}/settings: Meta refused it (HTTP {http}, error {code}): {message}\n  what to do: "
        );
        assert!(stderr.starts_with(&head), "{code}: {stderr}");
        assert!(stderr.contains(advice), "{code}: {stderr}");
        assert_secret_free(&out, &[TOKEN]);
    }
}

#[test]
fn local_mistakes_are_refused_before_anything_is_sent_with_exit_code_2() {
    let base = ["settings", "show", "--phone-number-id", PHONE_ID];
    let out = whatsapp(&base, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(
            "no access token: set WHATSAPP_TOKEN in the environment or pass --token-file FILE"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = whatsapp(
        &[&base[..], &["--graph-url", "http://graph.example.com"][..]].concat(),
        Some(TOKEN),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("plain http only to a loopback address"),
        "{}",
        text(&out.stderr)
    );
    let out = whatsapp(
        &["settings", "show", "--phone-number-id", "+15550001111"],
        Some(TOKEN),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not a phone number ID"),
        "{}",
        text(&out.stderr)
    );
    // Nothing listens: the port of a listener just closed.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = whatsapp(
        &[&base[..], &["--graph-url", closed.as_str()][..]].concat(),
        Some(TOKEN),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot reach the Graph API"),
        "{}",
        text(&out.stderr)
    );
}

// ---- doctor ---------------------------------------------------------------------------------

/// A test CA and certificates it (or nobody) signs, as PEM files in `dir`.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "watrunk test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
        }
    }

    /// A leaf for `name` valid `from`..`until` (None: rcgen's defaults), CA-signed or
    /// self-signed: (cert, key) paths.
    fn leaf(
        &self,
        tag: &str,
        name: &str,
        validity: Option<(SystemTime, SystemTime)>,
        self_signed: bool,
    ) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if let Some((from, until)) = validity {
            let epoch = rcgen::date_time_ymd(1970, 1, 1);
            let since = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            params.not_before = epoch + since(from);
            params.not_after = epoch + since(until);
        }
        let cert = if self_signed {
            params.self_signed(&key).unwrap()
        } else {
            params.signed_by(&key, &self.ca, &self.ca_key).unwrap()
        };
        let (c, k) = (
            self.dir.join(format!("{tag}.crt")),
            self.dir.join(format!("{tag}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A serve config file (what serve and doctor both read).
fn config(dir: &Path, tag: &str, cert: &Path, key: &Path, password: &Path, sink: u16) -> PathBuf {
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(
        &path,
        format!(
            "hostname = \"localhost\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n[media]\nip = \"127.0.0.1\"\nsink = \"127.0.0.1:{sink}\"\n\
             [[number]]\nnumber = \"+15550001111\"\npassword_file = \"{}\"\n",
            cert.display(),
            key.display(),
            password.display()
        ),
    )
    .unwrap();
    path
}

/// `watrunk doctor ARGS`: exit code and stdout.
/// `doctor` on a config file, checking the running server at `connect` and trusting the test CA.
fn doctor_at(config: &Path, connect: &str, ca: &str) -> (Option<i32>, String) {
    doctor(&[
        "--config",
        config.to_str().unwrap(),
        "--connect",
        connect,
        "--ca",
        ca,
    ])
}

fn doctor(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .arg("doctor")
        .args(args)
        .env_remove("WATRUNK_CONFIG")
        .env_remove("WATRUNK_HOSTNAME")
        .output()
        .expect("run watrunk doctor");
    (out.status.code(), text(&out.stdout) + &text(&out.stderr))
}

/// The names of the checks that failed, in order.
fn failed(report: &str) -> Vec<String> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL "))
        .map(|l| l.split(':').next().unwrap().to_string())
        .collect()
}

/// The fix printed under the failed check `name`.
fn fix_for<'a>(report: &'a str, name: &str) -> &'a str {
    let lines: Vec<&str> = report.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("FAIL {name}:")))
        .unwrap_or_else(|| panic!("no FAIL {name}:\n{report}"));
    lines
        .get(at + 1)
        .and_then(|l| l.trim_start().strip_prefix("fix: "))
        .unwrap_or_else(|| panic!("no fix under FAIL {name}:\n{report}"))
}

#[test]
fn doctor_passes_a_correct_set_up_and_names_each_broken_one_with_its_fix() {
    let dir = TempDir::new("doctor");
    let d = dir.path();
    let pki = Pki::new(d);
    let ca = d.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let (good, good_key) = pki.leaf("good", "localhost", None, false);
    let password = d.join("pw");
    std::fs::write(&password, "s3cret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let good_cfg = config(d, "good", &good, &good_key, &password, sink_port);
    let server = Server::start(&["--config", good_cfg.to_str().unwrap()]);
    let tls = server.tls.unwrap().to_string();

    let (code, report) = doctor_at(&good_cfg, &tls, ca);
    assert_eq!(code, Some(0), "{report}");
    assert!(failed(&report).is_empty(), "{report}");
    for line in [
        "PASS configuration: read as watrunk serve reads it (hostname localhost)".to_string(),
        "PASS certificate name: its subjectAltName covers localhost".into(),
        "PASS certificate issuer: issued by CN=watrunk test CA".into(),
        format!("PASS certificate chain: leads to the public web PKI roots and --ca {ca}"),
        format!("PASS tls port: {tls} answers a handshake like Meta's (TLSv1_3, no ALPN)"),
        "PASS client certificate: no CertificateRequest (Meta does not do mutual TLS)".into(),
        format!("PASS served certificate: {tls} presents the --cert file's certificate"),
        format!(
            "PASS password +15550001111: {} readable (mode 600)",
            password.display()
        ),
        "PASS media port: not bound here: watrunk serve is running and holds it".into(),
        format!(
            "PASS sink +15550001111: UDP 127.0.0.1:{sink_port} reachable (no refusal; UDP cannot confirm more)"
        ),
    ] {
        assert!(report.lines().any(|l| l == line), "no {line:?} in:\n{report}");
    }
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("PASS certificate expiry: valid until")),
        "{report}"
    );
    assert!(
        report.lines().any(|l| l.starts_with("PASS clock: sane")),
        "{report}"
    );

    // Each broken set-up, checked against the running server so that only its own fault fails.
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    // An hour off whole days, so that the second the certificate's times are cut to and the time
    // doctor takes never move the count of days.
    let hour = Duration::from_secs(3_600);
    let (wrong, wrong_key) = pki.leaf("wrong", "other.example.com", None, false);
    let (selfs, selfs_key) = pki.leaf("self", "localhost", None, true);
    let (old, old_key) = pki.leaf(
        "old",
        "localhost",
        Some((now - 400 * day, now - 30 * day - hour)),
        false,
    );
    let missing = d.join("no-such.password");
    let unreadable = format!(
        "FAIL password +15550001111: number[0].password_file {}: cannot read it: No such file or directory",
        missing.display()
    );
    let cases: Vec<(&str, PathBuf, &[&str], &str, &str)> = vec![
        (
            "wrong name",
            config(d, "wrong", &wrong, &wrong_key, &password, sink_port),
            &["certificate name"],
            "subjectAltName names other.example.com, not localhost: Meta's TLS check fails",
            "get a certificate whose subjectAltName covers localhost",
        ),
        (
            "self-signed",
            config(d, "self", &selfs, &selfs_key, &password, sink_port),
            &["certificate issuer"],
            "FAIL certificate issuer: self-signed: Meta rejects it",
            "use a certificate from a public CA",
        ),
        (
            "expired",
            config(d, "old", &old, &old_key, &password, sink_port),
            &["certificate expiry"],
            "(30 days ago)",
            "renew it (certbot renew) and reload watrunk",
        ),
        (
            "unreadable password file",
            config(d, "nopw", &good, &good_key, &missing, sink_port),
            &["password +15550001111", "configuration"],
            &unreadable,
            "write the number's SIP password to",
        ),
        (
            "sink nobody listens on",
            config(d, "nosink", &good, &good_key, &password, free_port()),
            &["sink +15550001111"],
            "refuses datagrams: nothing listens there",
            "start the voice agent or media server on UDP 127.0.0.1:",
        ),
    ];
    for (what, cfg, names, detail, fix) in cases {
        let (code, report) = doctor_at(&cfg, &tls, ca);
        assert_eq!(code, Some(1), "{what}:\n{report}");
        assert_eq!(failed(&report), names, "{what}:\n{report}");
        assert!(
            report.contains(detail),
            "{what}: no {detail:?} in:\n{report}"
        );
        assert!(
            fix_for(&report, names[0]).starts_with(fix),
            "{what}: fix {:?} in:\n{report}",
            fix
        );
    }

    // A TLS server that asks for a client certificate (mutual TLS, as some SBCs do by default).
    let mutual = mutual_tls_server(&good, &good_key, &d.join("ca.pem"));
    let (code, report) = doctor_at(&good_cfg, &mutual.0, ca);
    mutual.1.join().unwrap();
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(failed(&report), ["client certificate"], "{report}");
    assert!(
        report.contains(&format!(
            "FAIL client certificate: {} asks for a client certificate (CertificateRequest)",
            mutual.0
        )),
        "{report}"
    );
    assert!(
        fix_for(&report, "client certificate")
            .starts_with("turn client-certificate authentication off"),
        "{report}"
    );

    // Port closed: nothing listens where doctor connects; the media port is checked then.
    let closed = format!("127.0.0.1:{}", free_port());
    let (code, report) = doctor_at(&good_cfg, &closed, ca);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(failed(&report), ["tls port"], "{report}");
    assert!(
        report.contains(&format!(
            "FAIL tls port: port closed: nothing answers on {closed}"
        )),
        "{report}"
    );
    assert!(
        fix_for(&report, "tls port").starts_with("start watrunk serve"),
        "{report}"
    );
    assert!(
        report.contains("PASS media port: UDP 127.0.0.1:0 can be bound"),
        "{report}"
    );

    // Expiring within 14 days: a warning, not a failure.
    let (soon, soon_key) = pki.leaf(
        "soon",
        "localhost",
        Some((now - day, now + 5 * day - hour)),
        false,
    );
    let soon_cfg = config(d, "soon", &soon, &soon_key, &password, sink_port);
    let (code, report) = doctor_at(&soon_cfg, &tls, ca);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("WARN certificate expiry: expires on")
                && l.ends_with("in 4 days")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "WARN served certificate: {tls} presents another certificate than the --cert file"
        )),
        "{report}"
    );
    drop(server);
}

/// A TLS server (one connection) serving `cert` that asks for a client certificate from `ca`.
fn mutual_tls_server(cert: &Path, key: &Path, ca: &Path) -> (String, JoinHandle<()>) {
    use std::sync::Arc;
    let pem = |p: &Path| std::fs::read(p).unwrap();
    let chain: Vec<_> = rustls_pemfile::certs(&mut pem(cert).as_slice())
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut pem(key).as_slice())
        .unwrap()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem(ca).as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut conn = rustls::ServerConnection::new(config).unwrap();
        // The handshake fails at the end (no client certificate comes): that is the point.
        while conn.is_handshaking() {
            if conn.complete_io(&mut tcp).is_err() {
                break;
            }
        }
    });
    (addr, handle)
}
