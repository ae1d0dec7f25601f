//! Whole calls between `watrunk serve` / `watrunk call` and `watrunk sim` over TLS on loopback, both
//! directions, DTLS and SDES: the sim plays Meta (407 with SHA-256 + MD5, ICE-lite that never sends
//! a check, an SSRC other than its SDP's, nothing sent before the business's first packet) and
//! `watrunk sim sink` plays the voice agent. Checks: two-way tone by frequency (440 Hz from the
//! user, 880 Hz from the agent), digest both ways, the business spoke first, both sides back to idle,
//! and the refusals Meta gives (From host mismatch, wrong password) and CANCEL → 487. With
//! `--sink-codec pcmu|pcma`, the agent is tests/peers/g711/sink.py (CPython's audioop codes G.711).
//! The same calls against real peers are in interop_calls.rs (rtpengine, baresip).

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn find<'a>(events: &'a [serde_json::Value], name: &str, logs: &str) -> &'a serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name}\n{events:?}\n{logs}"))
}

fn near(v: &serde_json::Value, hz: f64) -> bool {
    v.as_f64().is_some_and(|f| (f - hz).abs() <= hz * 0.03)
}

/// The sink's report of the call's stream (the agent heard the user's 440 Hz), and the one SSRC
/// it arrived with: the one the sim says it sent, which is not the one its SDP announced (Meta's
/// relay overwrites SSRCs), so watrunk relays what is on the wire and does not trust the SDP.
fn assert_agent_heard_the_user(sink: &Background, call: &serde_json::Value) {
    // A stream is reported once its port has been quiet for a second.
    for _ in 0..50 {
        if sink.log().contains("sink.stream") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let streams = json_lines(&sink.log());
    let stream = find(&streams, "sink.stream", &sink.log());
    assert!(near(&stream["heard_hz"], 440.0), "{stream}");
    assert!(stream["packets"].as_u64().unwrap() > 100, "{stream}");
    let media = &call["media"];
    assert_eq!(
        stream["ssrcs"],
        serde_json::json!([media["sent_ssrc"]]),
        "{stream}\n{call}"
    );
    assert_ne!(
        stream["ssrcs"][0], media["announced_ssrc"],
        "{stream}\n{call}"
    );
}

/// The sim's report: answered, our tone (880 Hz from the agent) heard, the business first, idle.
fn assert_sim_heard_the_agent(call: &serde_json::Value, srtp_profile_prefix: &str) {
    assert_eq!(call["status"], 200, "{call}");
    let media = &call["media"];
    assert!(near(&media["heard_hz"], 880.0), "{call}");
    assert!(media["heard_rms"].as_f64().unwrap() > 0.05, "{call}");
    assert_eq!(media["business_sent_first"], true, "{call}");
    assert_eq!(media["srtp_rejected"], 0, "{call}");
    assert_eq!(call["violations"], serde_json::json!([]), "{call}");
    assert_ne!(media["announced_ssrc"], media["sent_ssrc"], "{call}");
    assert!(
        media["srtp_profile"]
            .as_str()
            .is_some_and(|p| p.starts_with(srtp_profile_prefix)),
        "{call}"
    );
    assert_eq!(call["bye_status"], 200, "{call}");
}

/// watrunk's call.ended: no call, media route or media connection left.
fn assert_server_idle(ended: &serde_json::Value) {
    assert_eq!(
        ended["server"],
        serde_json::json!({"calls": 0, "media_conns": 0, "media_routes": 0}),
        "{ended}"
    );
}

fn sink(dir: &std::path::Path, port: u16, secs: u32) -> Background {
    let b = Background::spawn(
        "sim sink",
        Command::new(bin()).args([
            "sim",
            "sink",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--seconds",
            &secs.to_string(),
        ]),
        dir.join("sink.log"),
    );
    std::thread::sleep(Duration::from_millis(300));
    b
}

/// `watrunk serve` for the sim's WhatsApp user: one number, challenged with SHA-256 and MD5, its
/// media relayed to `sink`, events on stdout.
fn business_server(pw: &std::path::Path, srtp: &str, sink: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--number",
        "+15550001111",
        "--sip-password-file",
        pw.to_str().unwrap(),
        "--challenge",
        "--digest-algorithm",
        "both",
        "--srtp",
        srtp,
        "--media-ip",
        "127.0.0.1",
        "--sink",
        sink,
        "--events",
        "-",
        "--api",
        "off",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// `watrunk sim call` to the business's number on `server`: a 4 s call, exit status 0 only when the
/// agent's 880 Hz was heard.
fn sim_call(server: &Server, pw: &std::path::Path, srtp: &str) -> (bool, String) {
    let tls = server.tls.unwrap();
    let ca = server.state.path().join("localhost.selfsigned.crt");
    run(
        Command::new(bin())
            .args([
                "sim",
                "call",
                &tls.to_string(),
                "--server-name",
                "localhost",
            ])
            .args([
                "--to",
                "+15550001111",
                "--hangup-after",
                "4",
                "--srtp",
                srtp,
            ])
            .args(["--expect-hz", "880"])
            .arg("--password-file")
            .arg(pw)
            .arg("--ca")
            .arg(&ca),
        Duration::from_secs(40),
    )
}

fn user_calls_business(srtp: &str) {
    let _serial = serial();
    let dir = TempDir::new(&format!("sim-in-{srtp}"));
    std::fs::write(dir.path().join("pw"), "per-number-secret\n").unwrap();
    let sink_port = free_port();
    let sink = sink(dir.path(), sink_port, 30);
    let pw = dir.path().join("pw");
    // The DTLS call also goes to a real HEP collector (sngrep) and writes a key log.
    let hep_port = free_port();
    let collector = (srtp == "dtls").then(|| hep_collector(dir.path(), hep_port));
    let hep = format!("127.0.0.1:{hep_port}");
    let key_log = dir.path().join("keys.log");
    let mut extra = vec!["--sip-trace"];
    if collector.is_some() {
        extra.extend(["--hep", &hep, "--hep-id", "2999", "--key-log"]);
        extra.push(key_log.to_str().unwrap());
    }
    let server = business_server(&pw, srtp, &format!("127.0.0.1:{sink_port}"), &extra);
    let (ok, out) = sim_call(&server, &pw, srtp);
    std::thread::sleep(Duration::from_millis(1500));
    let logs = format!("--- sim call\n{out}\n--- serve\n{}", server.log());
    let _ = &logs;
    let reports = json_lines(&out);
    let call = find(&reports, "sim.call", &logs);
    assert!(ok, "{logs}");
    assert_eq!(call["digest"], "SHA-256", "{call}");
    assert_eq!(call["provisional"], serde_json::json!([180]), "{call}");
    assert_sim_heard_the_agent(
        call,
        if srtp == "dtls" {
            "SRTP_"
        } else {
            "AES_CM_128"
        },
    );
    if srtp == "dtls" {
        assert!(call["media"]["ice_ms"].as_f64().is_some(), "{call}");
    }
    let ended = server.wait_event("call.ended", |_| true, Duration::from_secs(5));
    assert_eq!(ended["by"], "remote", "{ended}");
    assert_eq!(ended["meta_call_duration_secs"], 4, "{ended}");
    assert_eq!(
        ended["sip_reason"], "SIP;cause=200;text=\"user hung up\"",
        "{ended}"
    );
    assert_server_idle(&ended);
    assert_agent_heard_the_user(&sink, call);
    assert_the_trace_masks_every_secret(&server.log(), srtp);
    if let Some(collector) = collector {
        let call_id = call["call_id"]
            .as_str()
            .expect("the sim reports its Call-ID");
        assert_the_key_log_names_the_call(&key_log, call_id, &server.log());
        assert_the_collector_got_the_call(collector, dir.path(), call_id, server.tls.unwrap());
    }
    assert!(
        server.log().contains("(--sip-password-file): ")
            && server
                .log()
                .contains("can be read by others (mode 644): chmod 600 it"),
        "the test's password file is 0644: a warning\n{}",
        server.log()
    );
}

/// sngrep as a HEP collector on 127.0.0.1:`port`, saving what it gets to DIR/hep.pcap.
fn hep_collector(dir: &std::path::Path, port: u16) -> Background {
    let b = Background::spawn(
        "sngrep",
        Command::new(tool("sngrep"))
            .args(["-N", "-q", "-L", &format!("udp:127.0.0.1:{port}"), "-O"])
            .arg(dir.join("hep.pcap")),
        dir.join("sngrep.log"),
    );
    std::thread::sleep(Duration::from_millis(300));
    b
}

/// The key log: private, the WARN said so, and one DTLS secret and two SRTP lines for the call.
fn assert_the_key_log_names_the_call(path: &std::path::Path, call_id: &str, log: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key log is private");
    assert!(
        log.contains("WARN") && log.contains("--key-log: every call's SRTP keys"),
        "{log}"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0][0], "CLIENT_RANDOM", "{text}");
    assert_eq!((lines[0][1].len(), lines[0][2].len()), (64, 96), "{text}");
    for (line, direction) in lines[1..].iter().zip(["out", "in"]) {
        assert_eq!(line.len(), 7, "{text}");
        assert_eq!(&line[..3], ["SRTP", call_id, direction], "{text}");
        assert!(line[5].starts_with("AE"), "a DTLS-SRTP profile: {text}");
    }
    // Out is from our media address to the sim's, in the other way round.
    assert_eq!(
        (lines[1][3], lines[1][4]),
        (lines[2][4], lines[2][3]),
        "{text}"
    );
    assert!(lines[1][3].starts_with("127.0.0.1:"), "{text}");
}

/// What sngrep saved of the call: every message of it both ways, with the call's Call-ID and the
/// TLS listener's address on our side (read back by tshark).
fn assert_the_collector_got_the_call(
    collector: Background,
    dir: &std::path::Path,
    call_id: &str,
    tls: std::net::SocketAddr,
) {
    // sngrep writes its pcap out when it is told to stop.
    let _ = Command::new("kill")
        .args(["-TERM", &collector.child.id().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(500));
    drop(collector);
    let (ok, out) = run(
        Command::new(tool("tshark"))
            .arg("-r")
            .arg(dir.join("hep.pcap"))
            .args(["-d", &format!("udp.port=={},sip", tls.port())])
            .args(["-Y", "sip", "-T", "fields", "-E", "separator=|"])
            .args([
                "-e",
                "sip.Method",
                "-e",
                "sip.Status-Code",
                "-e",
                "sip.CSeq.method",
            ])
            .args([
                "-e",
                "sip.Call-ID",
                "-e",
                "ip.src",
                "-e",
                "udp.srcport",
                "-e",
                "udp.dstport",
            ]),
        Duration::from_secs(30),
    );
    assert!(ok, "{out}");
    let messages: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.contains('|'))
        .map(|l| l.split('|').collect())
        .collect();
    let port = tls.port().to_string();
    let seen = |method: &str, status: &str, cseq: &str, from_us: bool| {
        messages
            .iter()
            .filter(|m| {
                m[0] == method
                    && m[1] == status
                    && m[2] == cseq
                    && m[3] == call_id
                    && (m[5] == port) == from_us
                    && (m[6] == port) != from_us
            })
            .count()
    };
    // The challenged INVITE and the one with credentials; the 407 and the 180 and 200 we sent.
    assert_eq!(seen("INVITE", "", "INVITE", false), 2, "{out}");
    assert_eq!(seen("", "407", "INVITE", true), 1, "{out}");
    assert_eq!(seen("", "180", "INVITE", true), 1, "{out}");
    assert_eq!(seen("", "200", "INVITE", true), 1, "{out}");
    assert_eq!(seen("ACK", "", "ACK", false), 2, "{out}");
    assert_eq!(seen("BYE", "", "BYE", false), 1, "{out}");
    assert_eq!(seen("", "200", "BYE", true), 1, "{out}");
    assert!(
        messages
            .iter()
            .all(|m| m[3] == call_id && m[4] == "127.0.0.1"),
        "{out}"
    );
}

/// `--sip-trace` shows the whole exchange but no digest response, ICE password or SDES key: each
/// is `[masked]` wherever it appears (and appears, so that the check is not empty).
fn assert_the_trace_masks_every_secret(log: &str, srtp: &str) {
    assert!(
        log.contains("<<< Tls") && log.contains("Proxy-Authorization: Digest"),
        "the trace shows the messages:\n{log}"
    );
    let (secret_field, at_least) = match srtp {
        "dtls" => ("a=ice-pwd:", 2),
        _ => ("inline:", 2),
    };
    assert!(
        log.matches(secret_field).count() >= at_least,
        "no {secret_field} traced:\n{log}"
    );
    for (field, mask) in [
        ("response=", "\"[masked]\""),
        ("a=ice-pwd:", "[masked]"),
        ("inline:", "[masked]"),
    ] {
        for (at, _) in log.match_indices(field) {
            let shown = &log[at + field.len()..];
            assert!(
                shown.starts_with(mask),
                "{field} shown in the trace: {}",
                &shown[..shown.len().min(40)]
            );
        }
    }
}

#[test]
fn a_user_calls_the_business_through_sim_with_dtls_two_way_tone() {
    user_calls_business("dtls");
}

#[test]
fn a_user_calls_the_business_through_sim_with_sdes_two_way_tone() {
    user_calls_business("sdes");
}

/// An agent that speaks G.711 (`--sink-codec pcmu|pcma`): a Python agent whose mu-law/A-law coding
/// is CPython's audioop, not ours, hears the user's 440 Hz in 20 ms G.711 packets on the 8 kHz clock
/// with the user's SSRC and no sequence gap, and its 880 Hz, sent at 30 ms ptime, reaches the sim
/// as Opus.
fn user_calls_a_g711_agent(law: &str, payload_type: u64) {
    let _serial = serial();
    let dir = TempDir::new(&format!("sim-g711-{law}"));
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    let sink_port = free_port();
    let agent = g711_phone(dir.path(), sink_port, law, 880, 30, 12);
    std::thread::sleep(Duration::from_millis(500));
    let server = business_server(
        &pw,
        "dtls",
        &format!("127.0.0.1:{sink_port}"),
        &["--sink-codec", law],
    );
    let (ok, out) = sim_call(&server, &pw, "dtls");
    let logs = format!("--- sim call\n{out}\n--- serve\n{}", server.log());
    let call = find(&json_lines(&out), "sim.call", &logs).clone();
    assert!(ok, "{logs}");
    assert_sim_heard_the_agent(&call, "SRTP_");
    let up = server.wait_event("media.up", |_| true, Duration::from_secs(5));
    assert_eq!(up["sink_codec"], law, "{up}");
    let ended = server.wait_event("call.ended", |_| true, Duration::from_secs(5));
    assert_server_idle(&ended);
    // The agent reports when its time is up.
    let stream = &g711_report(&agent, &logs);
    assert_eq!(
        stream["payload_types"],
        serde_json::json!([payload_type]),
        "{stream}"
    );
    assert_eq!(
        stream["payload_sizes"],
        serde_json::json!([160]),
        "{stream}"
    );
    assert_eq!(stream["ts_steps"], serde_json::json!([160]), "{stream}");
    assert_eq!(stream["seq_gaps"], 0, "{stream}");
    assert_eq!(
        stream["ssrcs"],
        serde_json::json!([call["media"]["sent_ssrc"]]),
        "{stream}\n{call}"
    );
    assert!(stream["packets"].as_u64().unwrap() > 150, "{stream}");
    let hz = stream["heard_hz"].as_f64().unwrap();
    assert!((hz - 440.0).abs() <= 440.0 * 0.02, "{stream}");
    // The sim's tone is 0.3 of full scale (RMS 0.21); within 6 dB of it.
    let rms = stream["heard_rms"].as_f64().unwrap();
    assert!((0.106..=0.42).contains(&rms), "{stream}");
}

#[test]
fn a_user_calls_a_pcmu_agent_transcoded_both_ways() {
    user_calls_a_g711_agent("pcmu", 0);
}

#[test]
fn a_user_calls_a_pcma_agent_transcoded_both_ways() {
    user_calls_a_g711_agent("pcma", 8);
}

fn business_call(
    dir: &std::path::Path,
    sim: &SimServe,
    srtp: &str,
    sink_port: u16,
) -> (bool, String) {
    std::fs::write(dir.join("pw"), "per-number-secret\n").unwrap();
    run(
        Command::new(bin())
            .args(["call", "--from", "+15550001111", "--to", "+12195550714"])
            .args([
                "--hostname",
                "localhost",
                "--tls",
                "127.0.0.1:0",
                "--api",
                "off",
            ])
            .args(["--meta-server", &sim.addr.to_string(), "--srtp", srtp])
            .args(["--media-ip", "127.0.0.1", "--events", "-"])
            .args(["--sink", &format!("127.0.0.1:{sink_port}")])
            .arg("--tls-ca")
            .arg(&sim.cert)
            .arg("--sip-password-file")
            .arg(dir.join("pw"))
            .arg("--state-dir")
            .arg(dir.join("state")),
        Duration::from_secs(40),
    )
}

fn business_calls_user(srtp: &str) {
    let _serial = serial();
    let dir = TempDir::new(&format!("sim-out-{srtp}"));
    let sink_port = free_port();
    let sink = sink(dir.path(), sink_port, 30);
    let sim = sim_serve(dir.path(), srtp, "localhost", "per-number-secret");
    let (ok, out) = business_call(dir.path(), &sim, srtp, sink_port);
    std::thread::sleep(Duration::from_millis(1000));
    let logs = format!("--- watrunk call\n{out}\n--- sim\n{}", sim.process.log());
    assert!(ok, "{logs}");
    let reports = json_lines(&sim.process.log());
    let call = find(&reports, "sim.call", &logs);
    assert_eq!(call["digest"], "SHA-256", "{call}");
    assert_eq!(call["from"], "+15550001111", "{call}");
    assert_eq!(call["acked"], true, "{call}");
    assert_eq!(
        call["relay"],
        serde_json::json!({"media_conns": 0, "media_routes": 0}),
        "{call}"
    );
    assert_sim_heard_the_agent(
        call,
        if srtp == "dtls" {
            "SRTP_"
        } else {
            "AES_CM_128"
        },
    );
    let events = json_lines(&out);
    let ended = find(&events, "call.ended", &logs);
    assert_eq!(ended["meta_call_duration_secs"], 4, "{ended}");
    assert_server_idle(ended);
    assert_agent_heard_the_user(&sink, call);
}

#[test]
fn the_business_calls_a_user_through_sim_with_dtls_two_way_tone() {
    business_calls_user("dtls");
}

#[test]
fn the_business_calls_a_user_through_sim_with_sdes_two_way_tone() {
    business_calls_user("sdes");
}

#[test]
fn sim_refuses_what_meta_refuses_from_host_wrong_password_offer_without_ice_register() {
    let _serial = serial();
    let dir = TempDir::new("sim-refusals");
    let sim = sim_serve(dir.path(), "dtls", "sip.example.com", "per-number-secret");
    let (ok, out) = business_call(dir.path(), &sim, "dtls", free_port());
    assert!(!ok, "{out}");
    let reports = json_lines(&sim.process.log());
    let call = find(&reports, "sim.call", &sim.process.log());
    assert_eq!(call["status"], 403, "{call}");
    assert!(
        call["reason"]
            .as_str()
            .unwrap()
            .starts_with("SIP server localhost from INVITE does not match"),
        "{call}"
    );
    drop(sim);

    let dir = TempDir::new("sim-wrong-password");
    let sim = sim_serve(dir.path(), "dtls", "localhost", "not-the-password");
    let (ok, out) = business_call(dir.path(), &sim, "dtls", free_port());
    assert!(!ok, "{out}");
    let reports = json_lines(&sim.process.log());
    let call = find(&reports, "sim.call", &sim.process.log());
    assert_eq!(call["status"], 403, "{call}");
    let events = json_lines(&out);
    let ended = find(&events, "call.ended", &out);
    assert_eq!(ended["status"], 403, "{ended}");
    drop(sim);

    // A number set up for DTLS gets an SDES offer without ICE: 488 with the reason.
    let dir = TempDir::new("sim-no-ice");
    let sim = sim_serve(dir.path(), "dtls", "localhost", "per-number-secret");
    let (ok, out) = business_call(dir.path(), &sim, "sdes", free_port());
    assert!(!ok, "{out}");
    let reports = json_lines(&sim.process.log());
    let call = find(&reports, "sim.call", &sim.process.log());
    assert_eq!(call["status"], 488, "{call}");
    assert!(
        call["reason"].as_str().unwrap().contains("without ICE"),
        "{call}"
    );
    let events = json_lines(&out);
    let ended = find(&events, "call.ended", &out);
    assert_eq!(ended["status"], 488, "{ended}");

    // Meta takes no REGISTER.
    let (_, out) = run(
        Command::new(bin())
            .args(["probe", "sip:+15550001111@127.0.0.1;transport=tls"])
            .args(["--server", &sim.addr.to_string(), "--transport", "tls"])
            .args(["--method", "REGISTER", "--timeout-secs", "5"])
            .arg("--ca")
            .arg(&sim.cert),
        Duration::from_secs(20),
    );
    // The probe prints the final response as its own line; Meta's answer to REGISTER is 403.
    let finals: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.len() > 4
                && l.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                && l.as_bytes()[3] == b' '
        })
        .collect();
    assert_eq!(finals, ["403 Forbidden"], "{out}");
}

#[test]
fn a_user_who_hangs_up_before_the_answer_cancels_and_gets_487() {
    let _serial = serial();
    let server = Server::start(&[
        "--number",
        "+15550001111",
        "--media-ip",
        "127.0.0.1",
        "--sink",
        &format!("127.0.0.1:{}", free_port()),
        "--no-auto-answer",
        "--events",
        "-",
        "--api",
        "off",
    ]);
    let ca = server.state.path().join("localhost.selfsigned.crt");
    let (ok, out) = run(
        Command::new(bin())
            .args(["sim", "call", &server.tls.unwrap().to_string()])
            .args(["--server-name", "localhost", "--to", "+15550001111"])
            .args(["--cancel-after-ms", "500"])
            .arg("--ca")
            .arg(&ca),
        Duration::from_secs(30),
    );
    assert!(!ok, "{out}");
    let reports = json_lines(&out);
    let call = find(&reports, "sim.call", &out);
    assert_eq!(call["status"], 487, "{call}");
    assert_eq!(call["cancelled"], true, "{call}");
    let ended = server.wait_event("call.ended", |_| true, Duration::from_secs(5));
    assert_eq!(ended["server"]["calls"], 0, "{ended}");
}

/// `sim load`: twenty concurrent DTLS calls (TLS, 407, ICE-lite, DTLS) through `watrunk serve`, each
/// packet echoed by the load's agent side: all calls up, packets both ways with nothing lost, the
/// latency and CPU figures present and plausible, the server idle afterwards.
#[test]
fn load_of_twenty_dtls_calls_through_serve() {
    let _serial = serial();
    let dir = TempDir::new("sim-load");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    let sink = format!("127.0.0.1:{}", free_port());
    let server = business_server(&pw, "dtls", &sink, &[]);
    let ca = server.state.path().join("localhost.selfsigned.crt");
    let (ok, out) = run(
        Command::new(bin())
            .args(["sim", "load", "--target", &server.tls.unwrap().to_string()])
            .args(["--server-name", "localhost", "--sink", &sink])
            .args([
                "--calls", "20", "--rate", "40", "--window", "2", "--settle", "1",
            ])
            .args(["--pid", &server.pid().to_string()])
            .arg("--password-file")
            .arg(&pw)
            .arg("--ca")
            .arg(&ca),
        Duration::from_secs(60),
    );
    let logs = format!("--- sim load\n{out}\n--- serve\n{}", server.log());
    let reports = json_lines(&out);
    let load = find(&reports, "sim.load", &logs);
    assert!(ok, "{logs}");
    assert_eq!(load["established"], 20, "{load}");
    assert_eq!(load["failed"], 0, "{load}");
    assert_eq!(load["loss_pct"]["to_agent"], 0.0, "{load}");
    assert_eq!(load["loss_pct"]["to_meta"], 0.0, "{load}");
    // 20 calls × 50 packets/s × 2 directions over the 2 s window.
    let relayed = load["window"]["relayed_packets"].as_u64().unwrap();
    assert!((3_600..=4_400).contains(&relayed), "{load}");
    assert!(
        load["window"]["relay_us_per_packet"].as_f64().unwrap() > 0.0,
        "{load}"
    );
    for way in ["to_agent", "to_meta"] {
        let p50 = load["latency_ms"][way]["p50"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 < 50.0, "{load}");
    }
    let secure = &load["setup_ms"]["secure"];
    assert_eq!(secure["n"], 20, "{load}");
    assert!(
        secure["p50"].as_f64().unwrap() >= load["setup_ms"]["answered"]["p50"].as_f64().unwrap(),
        "{load}"
    );
    let last = server.wait_event(
        "call.ended",
        |e| e["server"]["calls"] == 0,
        Duration::from_secs(5),
    );
    assert_server_idle(&last);
    let ended = server
        .events()
        .into_iter()
        .filter(|e| e["event"] == "call.ended")
        .count();
    assert_eq!(ended, 20, "{logs}");
}

/// The business calls users at load: ten calls placed through serve's control API, each INVITE
/// answered by `sim load` playing Meta (407 with SHA-256 and MD5, ICE-lite, DTLS), every packet
/// echoed by the agent side: all calls up, SHA-256 chosen, nothing lost, the server idle after.
#[test]
fn load_of_ten_business_placed_dtls_calls_through_the_api() {
    let _serial = serial();
    let dir = TempDir::new("sim-load-to-user");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    // Meta's certificate exists before serve starts, so that serve can be told to trust it.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("meta.crt"), dir.path().join("meta.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let sink = format!("127.0.0.1:{}", free_port());
    let meta = format!("127.0.0.1:{}", free_port());
    let server = Server::start(&[
        "--number",
        "+15550001111",
        "--sip-password-file",
        pw.to_str().unwrap(),
        "--srtp",
        "dtls",
        "--media-ip",
        "127.0.0.1",
        "--sink",
        &sink,
        "--events",
        "-",
        "--meta-server",
        &meta,
        "--tls-ca",
        cert_file.to_str().unwrap(),
    ]);
    let api = server.api.expect("serve's control API").to_string();
    let (ok, out) = run(
        Command::new(bin())
            .args(["sim", "load", "--direction", "to-user", "--api", &api])
            .args(["--listen", &meta, "--sink", &sink])
            .args([
                "--calls", "10", "--rate", "20", "--window", "2", "--settle", "1",
            ])
            .args(["--pid", &server.pid().to_string()])
            .arg("--password-file")
            .arg(&pw)
            .arg("--cert")
            .arg(&cert_file)
            .arg("--key")
            .arg(&key_file),
        Duration::from_secs(60),
    );
    let logs = format!("--- sim load\n{out}\n--- serve\n{}", server.log());
    let reports = json_lines(&out);
    let load = find(&reports, "sim.load", &logs);
    assert!(ok, "{logs}");
    assert_eq!(load["direction"], "to-user", "{load}");
    assert_eq!(load["established"], 10, "{load}");
    assert_eq!(load["failed"], 0, "{load}");
    assert_eq!(load["digest"], serde_json::json!({"SHA-256": 10}), "{load}");
    assert_eq!(load["loss_pct"]["to_agent"], 0.0, "{load}");
    assert_eq!(load["loss_pct"]["to_meta"], 0.0, "{load}");
    // 10 calls × 50 packets/s × 2 directions over the 2 s window.
    let relayed = load["window"]["relayed_packets"].as_u64().unwrap();
    assert!((1_800..=2_200).contains(&relayed), "{load}");
    assert_eq!(load["setup_ms"]["first_rtp"]["n"], 10, "{load}");
    let last = server.wait_event(
        "call.ended",
        |e| e["server"]["calls"] == 0,
        Duration::from_secs(5),
    );
    assert_server_idle(&last);
    let ended: Vec<_> = server
        .events()
        .into_iter()
        .filter(|e| e["event"] == "call.ended")
        .collect();
    assert_eq!(ended.len(), 10, "{logs}");
    for e in &ended {
        assert_eq!(e["direction"], "outbound", "{e}");
        assert_eq!(e["by"], "remote", "{e}");
        assert!(e["stats"]["packets_in"].as_u64().unwrap() > 50, "{e}");
    }
}

/// A call outlives the connection idle timer: Meta's TLS connection carries nothing but the call's
/// BYE for as long as the call lasts, and watrunk keeps it open (found by a 20-minute soak, where
/// every call lost its connection at the 900 s idle timeout).
#[test]
fn a_call_keeps_its_connection_past_the_idle_timeout() {
    let _serial = serial();
    let dir = TempDir::new("sim-idle");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    let sink_port = free_port();
    let _sink = sink(dir.path(), sink_port, 30);
    let server = business_server(
        &pw,
        "sdes",
        &format!("127.0.0.1:{sink_port}"),
        &["--idle-timeout-secs", "1"],
    );
    let ca = server.state.path().join("localhost.selfsigned.crt");
    let (ok, out) = run(
        Command::new(bin())
            .args(["sim", "call", &server.tls.unwrap().to_string()])
            .args(["--server-name", "localhost", "--to", "+15550001111"])
            .args([
                "--hangup-after",
                "4",
                "--srtp",
                "sdes",
                "--expect-hz",
                "880",
            ])
            .arg("--password-file")
            .arg(&pw)
            .arg("--ca")
            .arg(&ca),
        Duration::from_secs(40),
    );
    let logs = format!("--- sim call\n{out}\n--- serve\n{}", server.log());
    let reports = json_lines(&out);
    let call = find(&reports, "sim.call", &logs);
    assert!(ok, "{logs}");
    assert_eq!(call["ended_by"], "sim", "{logs}");
    assert_eq!(call["reason"], "user hung up", "{logs}");
    assert_eq!(call["bye_status"], 200, "{logs}");
    assert!(call["duration_secs"].as_u64().unwrap() >= 4, "{call}");
}

/// Without a call, an idle connection is still closed at the idle timeout.
#[test]
fn an_idle_connection_without_a_call_is_closed() {
    use std::io::Read;
    let _serial = serial();
    let dir = TempDir::new("sim-idle-close");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    let server = business_server(&pw, "sdes", "127.0.0.1:9", &["--idle-timeout-secs", "1"]);
    let mut conn = std::net::TcpStream::connect(server.tcp.unwrap()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = conn.read(&mut buf).expect("closed, not timed out");
    assert_eq!(n, 0, "the server closed the connection");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// A far side that vanishes without a BYE (its process frozen: no more RTP, its TLS connection still
/// open) ends the call at the RTP timeout: our BYE carries a Reason saying so, `call.ended` says it,
/// and the far side, thawed, finds that BYE waiting.
#[test]
fn an_sdes_call_whose_far_side_vanishes_ends_at_the_rtp_timeout_with_a_bye_saying_why() {
    let _serial = serial();
    let dir = TempDir::new("sim-rtp-timeout");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    let sink_port = free_port();
    let _sink = sink(dir.path(), sink_port, 40);
    let server = business_server(
        &pw,
        "sdes",
        &format!("127.0.0.1:{sink_port}"),
        &["--rtp-timeout-secs", "3", "--sip-trace"],
    );
    let ca = server.state.path().join("localhost.selfsigned.crt");
    let sim = sim_call_in_background(
        &server,
        dir.path(),
        "sim",
        &pw,
        &ca,
        30,
        &["--rtp-timeout-secs", "60"],
    );
    server.wait_event("media.up", |_| true, Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(1));
    let pid = sim.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let frozen = std::time::Instant::now();
    let sent_bye = |log: &str| {
        log.split(">>> Tls")
            .find(|m| m.contains("\nBYE sip:"))
            .map(str::to_string)
    };
    let bye = loop {
        if let Some(bye) = sent_bye(&server.log()) {
            break bye;
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(20),
            "no BYE in the trace\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let after = frozen.elapsed();
    // Thawed, the far side reads our BYE and answers it.
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let logs = || format!("--- sim\n{}\n--- serve\n{}", sim.log(), server.log());
    // The timeout is 3 s from the far side's last packet (a little before the freeze); the call
    // looks at its far side on its own wake-ups (every RTCP interval, 5 s, while the sink speaks).
    assert!(
        after >= Duration::from_millis(2800) && after < Duration::from_secs(10),
        "BYE {after:?} after the far side froze\n{}",
        logs()
    );
    assert!(
        bye.contains("Reason: Q.850;cause=41;text=\"media failed: ")
            && bye.contains("no RTP from the far side for 3 s"),
        "{bye}"
    );
    let ended = server.wait_event("call.ended", |_| true, Duration::from_secs(10));
    assert_eq!(ended["by"], "local", "{ended}");
    let reason = ended["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("no RTP from the far side for 3 s"),
        "{ended}"
    );
    assert_eq!(ended["q850_cause"], 41, "{ended}");
    // The far side reports the call ended by the business, saying why.
    let call = sim_report(&sim, Duration::from_secs(15));
    assert_eq!(call["ended_by"], "business", "{call}");
    assert!(
        call["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no RTP"),
        "{call}"
    );
}

/// `watrunk sim call` to the business's number in the background, ending after `secs` unless the
/// business ends it first; its `sim.call` report goes to its log.
fn sim_call_in_background(
    server: &Server,
    dir: &std::path::Path,
    name: &str,
    pw: &std::path::Path,
    ca: &std::path::Path,
    secs: u32,
    extra: &[&str],
) -> Background {
    Background::spawn(
        "sim call",
        Command::new(bin())
            .args(["sim", "call", &server.tls.unwrap().to_string()])
            .args(["--server-name", "localhost", "--to", "+15550001111"])
            .args(["--hangup-after", &secs.to_string(), "--srtp", "sdes"])
            .args(["--expect-hz", "880"])
            .args(extra)
            .arg("--password-file")
            .arg(pw)
            .arg("--ca")
            .arg(ca),
        dir.join(format!("{name}.log")),
    )
}

/// The `sim.call` report of a background sim, once it has one.
fn sim_report(sim: &Background, limit: Duration) -> serde_json::Value {
    wait_json_event(|| sim.log(), "sim.call", limit)
        .unwrap_or_else(|| panic!("no sim.call report\n{}", sim.log()))
}

/// SIGTERM with ten live calls: a new call gets 503 with Retry-After, the live calls keep their
/// audio until the drain timeout, then each far side gets a BYE saying why, every call.ended is
/// emitted, and the server exits 0.
#[test]
fn sigterm_drains_ten_live_calls_then_exits_zero() {
    let _serial = serial();
    let dir = TempDir::new("sim-drain");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    let sink_port = free_port();
    let _sink = sink(dir.path(), sink_port, 60);
    let mut server = business_server(
        &pw,
        "sdes",
        &format!("127.0.0.1:{sink_port}"),
        &["--drain-timeout-secs", "5"],
    );
    let ca = server.state.path().join("localhost.selfsigned.crt");
    let sims: Vec<Background> = (0..10)
        .map(|n| sim_call_in_background(&server, dir.path(), &format!("sim{n}"), &pw, &ca, 60, &[]))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server
        .events()
        .iter()
        .filter(|e| e["event"] == "media.up")
        .count()
        < 10
    {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    server.signal("TERM");
    let signalled = std::time::Instant::now();
    // A new call while draining: 503 with Retry-After (the sim reports the status).
    let late = sim_call_in_background(&server, dir.path(), "late", &pw, &ca, 5, &[]);
    let refused = sim_report(&late, Duration::from_secs(10));
    assert_eq!(refused["status"], 503, "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("shutting down"),
        "{refused}"
    );
    // An OPTIONS keepalive (a load balancer's probe) gets the same 503, so the proxy takes this
    // instance out of rotation while its calls go on.
    let mut tls = server.tls_connect();
    let probe = stream_exchange(
        &mut tls,
        &options_request("TLS", "127.0.0.1:5999", "drain-options"),
        Duration::from_secs(3),
    );
    let probe = String::from_utf8_lossy(&probe.response.expect("an answer to OPTIONS")).to_string();
    assert_eq!(status_of(probe.as_bytes()).0, 503, "{probe}");
    assert_eq!(header(&probe, "Retry-After"), Some("30"), "{probe}");
    let status = server.wait_exit(Duration::from_secs(20));
    let took = signalled.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}\n{}",
        server.log()
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(12),
        "exited {took:?} after SIGTERM (drain timeout 5 s)"
    );
    let ended: Vec<serde_json::Value> = server
        .events()
        .into_iter()
        .filter(|e| e["event"] == "call.ended")
        .collect();
    assert_eq!(ended.len(), 10, "{ended:?}");
    for e in &ended {
        assert_eq!(e["reason"], "the server is shutting down", "{e}");
        assert_eq!(e["q850_cause"], 41, "{e}");
    }
    for sim in &sims {
        let call = sim_report(sim, Duration::from_secs(10));
        assert_eq!(call["ended_by"], "business", "{call}");
        assert!(
            call["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("the server is shutting down"),
            "{call}"
        );
        // Audio until the end: the agent's tone heard, over more than the drain timeout.
        assert!(near(&call["media"]["heard_hz"], 880.0), "{call}");
        assert!(call["duration_secs"].as_u64().unwrap() >= 5, "{call}");
    }
}

/// SIGHUP with a new password file and a new certificate: a new call needs both (the old password
/// is refused, the new CA's certificate is served), while the call that was up keeps its audio to
/// its end.
#[test]
fn sighup_reloads_the_password_and_the_certificate_without_touching_a_live_call() {
    let _serial = serial();
    let dir = TempDir::new("sim-reload");
    let (first_ca, first_cert, first_key) = dev_pki(&dir.path().join("first"));
    let (second_ca, second_cert, second_key) = dev_pki(&dir.path().join("second"));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&first_cert, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    let pw = dir.path().join("pw");
    let old_pw = dir.path().join("old-pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    std::fs::write(&old_pw, "per-number-secret\n").unwrap();
    let sink_port = free_port();
    let _sink = sink(dir.path(), sink_port, 60);
    let server = business_server(
        &pw,
        "sdes",
        &format!("127.0.0.1:{sink_port}"),
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let live = sim_call_in_background(&server, dir.path(), "live", &pw, &first_ca, 10, &[]);
    server.wait_event("media.up", |_| true, Duration::from_secs(15));
    std::fs::write(&pw, "a-new-secret\n").unwrap();
    std::fs::copy(&second_cert, &cert).unwrap();
    std::fs::copy(&second_key, &key).unwrap();
    server.signal("HUP");
    let reloaded = server.wait_event("server.reloaded", |_| true, Duration::from_secs(5));
    assert_eq!(
        reloaded["certificate"],
        cert.display().to_string(),
        "{reloaded}"
    );
    // The new password and the new certificate's CA: the call is taken, with audio.
    let new = sim_call_in_background(&server, dir.path(), "new", &pw, &second_ca, 3, &[]);
    let call = sim_report(&new, Duration::from_secs(20));
    assert_eq!(call["status"], 200, "{call}\n{}", server.log());
    assert!(near(&call["media"]["heard_hz"], 880.0), "{call}");
    // The old password is refused now.
    let old = sim_call_in_background(&server, dir.path(), "old", &old_pw, &second_ca, 3, &[]);
    let refused = sim_report(&old, Duration::from_secs(20));
    assert_eq!(refused["status"], 403, "{refused}");
    // The old CA no longer vouches for what the server presents.
    let stale = sim_call_in_background(&server, dir.path(), "stale", &pw, &first_ca, 3, &[]);
    let (ok, _) = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut stale = stale;
        loop {
            if let Ok(Some(status)) = stale.child.try_wait() {
                break (status.success(), stale.log());
            }
            assert!(std::time::Instant::now() < deadline, "{}", stale.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(
        !ok,
        "a client trusting only the old CA must fail after the reload"
    );
    // The call that was up went on to its own end, with audio.
    let call = sim_report(&live, Duration::from_secs(20));
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["ended_by"], "sim", "{call}");
    assert!(call["duration_secs"].as_u64().unwrap() >= 10, "{call}");
    assert!(near(&call["media"]["heard_hz"], 880.0), "{call}");
    assert_eq!(call["bye_status"], 200, "{call}");
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A UDP INVITE flood from one address (at least 50,000 a second for 10 s, made here): a call
/// placed over TLS during the flood is answered with two-way audio, a call that was up ends with
/// its BYE answered 200, memory grows by at most 64 MB and comes back down, and the flooding
/// address is answered again within a second of the flood's end.
#[test]
fn a_udp_invite_flood_costs_the_other_calls_nothing() {
    let _serial = serial();
    let dir = TempDir::new("sim-flood");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    let sink_port = free_port();
    let sink = sink(dir.path(), sink_port, 60);
    let server = business_server(&pw, "sdes", &format!("127.0.0.1:{sink_port}"), &[]);
    let ca = server.state.path().join("localhost.selfsigned.crt");
    let before = rss_kib(server.pid());
    let up = sim_call_in_background(&server, dir.path(), "up", &pw, &ca, 6, &[]);
    server.wait_event("media.up", |_| true, Duration::from_secs(15));
    let target = server.udp.unwrap();
    let invite = "INVITE sip:+15550001111@localhost SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.3:5099;branch=z9hG4bKflood;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+12195550714@wa.meta.vc>;tag=flood\r\n\
         To: <sip:+15550001111@localhost>\r\n\
         Call-ID: flood@127.0.0.3\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:flood@127.0.0.3:5099>\r\n\
         Content-Length: 0\r\n\r\n";
    let flood = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
    let flooder = {
        let flood = flood.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            flood.connect(target).unwrap();
            // 64 datagrams a system call (sendmmsg), so that the rate does not depend on how
            // loaded the machine running the test is.
            let mut iov = libc::iovec {
                iov_base: invite.as_ptr() as *mut libc::c_void,
                iov_len: invite.len(),
            };
            let mut batch: Vec<libc::mmsghdr> = (0..64)
                .map(|_| {
                    // SAFETY: all-zero is a valid mmsghdr; the header is pointed at one iovec.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = &mut iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let started = std::time::Instant::now();
            let mut sent = 0u64;
            while started.elapsed() < Duration::from_secs(10) {
                // SAFETY: `batch` holds 64 headers, each pointing at `iov`, alive for the call.
                let n = unsafe { libc::sendmmsg(flood.as_raw_fd(), batch.as_mut_ptr(), 64, 0) };
                if n > 0 {
                    sent += n as u64;
                }
            }
            (sent, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let during = sim_call_in_background(&server, dir.path(), "during", &pw, &ca, 4, &[]);
    let mut peak = before;
    while !flooder.is_finished() {
        peak = peak.max(rss_kib(server.pid()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (sent, took) = flooder.join().unwrap();
    let rate = sent as f64 / took.as_secs_f64();
    // The flooding address is served again within a second.
    let ended = std::time::Instant::now();
    flood
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while flood.recv_from(&mut buf).is_ok() {}
    let options = options_request("UDP", "127.0.0.3:5099", "after-flood");
    let mut answered = None;
    while answered.is_none() && ended.elapsed() < Duration::from_secs(1) {
        flood.send_to(&options, target).unwrap();
        while let Ok((n, _)) = flood.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if text.starts_with("SIP/2.0 200") && text.contains("after-flood") {
                answered = Some(ended.elapsed());
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(server.pid());
    let logs = || format!("--- serve\n{}", server.log());
    assert!(rate >= 50_000.0, "the flood ran at {rate:.0}/s only");
    assert!(
        answered.is_some(),
        "no 200 to OPTIONS within 1 s of the flood's end\n{}",
        logs()
    );
    assert!(
        server
            .log()
            .contains("UDP from 127.0.0.3 above 500 datagrams a second: dropping"),
        "{}",
        logs()
    );
    // The call that was up ended by its own BYE, answered.
    let call = sim_report(&up, Duration::from_secs(20));
    assert_eq!(call["bye_status"], 200, "{call}");
    assert!(near(&call["media"]["heard_hz"], 880.0), "{call}");
    // The call placed during the flood: answered, the agent's tone heard by the user.
    let call = sim_report(&during, Duration::from_secs(20));
    assert_eq!(call["status"], 200, "{call}\n{}", logs());
    assert!(near(&call["media"]["heard_hz"], 880.0), "{call}");
    assert_eq!(call["bye_status"], 200, "{call}");
    // ... and the user's tone by the agent, on both calls' streams.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let streams = loop {
        let streams: Vec<_> = json_lines(&sink.log())
            .into_iter()
            .filter(|s| s["event"] == "sink.stream")
            .collect();
        if streams.len() >= 2 || std::time::Instant::now() > deadline {
            break streams;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert!(
        streams.iter().all(|s| near(&s["heard_hz"], 440.0)),
        "{streams:?}"
    );
    let grew = peak.saturating_sub(before);
    assert!(
        grew <= 64 * 1024,
        "RSS grew by {grew} KiB ({before} -> {peak})"
    );
    assert!(
        after <= peak,
        "RSS {after} KiB after the flood, {peak} KiB at its peak"
    );
    eprintln!(
        "flood: {sent} INVITEs at {rate:.0}/s; RSS {before} KiB before, {peak} KiB peak, {after} KiB after; served again {:?} after",
        answered.unwrap()
    );
}

/// A one-shot `watrunk call` that Meta refuses (a wrong password: 403 after the challenge) writes
/// its ACK to the 403 before the process exits. It used to exit first in 2-3 runs of 30-40, leaving
/// Meta's transaction to Timer H; the sim now reports whether each refusal was acknowledged.
#[test]
fn refused_one_shot_calls_acknowledge_the_403_before_exiting() {
    let _serial = serial();
    let dir = TempDir::new("sim-refused-ack");
    let sim = sim_serve(dir.path(), "sdes", "localhost", "not-the-password");
    const CALLS: usize = 20;
    for _ in 0..CALLS {
        let (ok, out) = business_call(dir.path(), &sim, "sdes", free_port());
        assert!(!ok, "{out}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reports = loop {
        let reports: Vec<serde_json::Value> = json_lines(&sim.process.log())
            .into_iter()
            .filter(|e| e["event"] == "sim.call")
            .collect();
        if reports.len() >= CALLS || std::time::Instant::now() > deadline {
            break reports;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(reports.len(), CALLS, "{}", sim.process.log());
    for call in &reports {
        assert_eq!(call["status"], 403, "{call}");
        assert_eq!(call["refusal_acked"], true, "{call}");
    }
}

/// The README's "A first call, on this machine", exactly as written (its three commands, with
/// `scripts/serve.sh` as the `serve` it runs and the binary under test as `target/release/watrunk`),
/// in a private network namespace with a fresh HOME: the call works, trusting the self-signed
/// certificate serve made in its default state directory, and nothing lands in the working
/// directory.
#[test]
fn the_readmes_first_call_works_as_written() {
    if !in_private_namespace("the_readmes_first_call_works_as_written") {
        return;
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme
        .split("### A first call, on this machine")
        .nth(1)
        .expect("the README has its first-call section");
    let commands: Vec<Vec<String>> = section
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("scripts/serve.sh ") || l.starts_with("target/release/watrunk "))
        .take(3)
        .map(|l| {
            let l = l.replacen("scripts/serve.sh", "serve", 1);
            let l = l.replacen("target/release/watrunk ", "", 1);
            l.split_whitespace().map(String::from).collect()
        })
        .collect();
    assert_eq!(
        commands.len(),
        3,
        "serve, sim sink and sim call: {commands:?}"
    );
    let home = TempDir::new("readme-home");
    let work = TempDir::new("readme-cwd");
    let spawn = |name: &'static str, args: &[String]| {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .current_dir(work.path())
            .env("HOME", home.path())
            .env_remove("XDG_STATE_HOME")
            .env_remove("WATRUNK_STATE_DIR")
            .env_remove("STATE_DIRECTORY");
        (name, cmd)
    };
    let (name, mut cmd) = spawn("serve", &commands[0]);
    let serve = Background::spawn(name, &mut cmd, home.path().join("serve.log"));
    let (name, mut cmd) = spawn("sink", &commands[1]);
    let _sink = Background::spawn(name, &mut cmd, home.path().join("sink.log"));
    wait_tcp("127.0.0.1:5061".parse().unwrap(), Duration::from_secs(20));
    let (_, mut call) = spawn("call", &commands[2]);
    let (ok, out) = run(&mut call, Duration::from_secs(60));
    let serve_log = serve.log();
    assert!(ok, "{out}\n--- serve\n{serve_log}");
    let result = json_lines(&out)
        .into_iter()
        .find(|e| e["event"] == "sim.call")
        .unwrap_or_else(|| panic!("no sim.call line\n{out}"));
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["media"]["heard_hz"], 880.0, "{result}");
    assert!(
        out.contains("trusting the self-signed certificate"),
        "{out}"
    );
    // Serve's start-up line gives the same command.
    assert!(
        serve_log.contains(&format!("watrunk {}", commands[2][..6].join(" "))),
        "{serve_log}"
    );
    let cert = home
        .path()
        .join(".local/state/watrunk/localhost.selfsigned.crt");
    assert!(cert.is_file(), "{}", cert.display());
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
    assert!(left.is_empty(), "the working directory got {left:?}");
    // No colour codes in a log written to a file.
    assert!(!serve_log.contains('\u{1b}'), "{serve_log}");
}
