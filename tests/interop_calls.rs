//! Whole calls through `watrunk serve` against real third-party media peers. rtpengine (userspace,
//! ICE-lite, Meta's stand-in) turns a plain Opus 440 Hz tone into a Meta-shaped offer; a Meta-shaped
//! SIP UAC (tests/peers/rtpengine/meta_sip_uac.py) carries it to watrunk over TLS, answers the 407,
//! ACKs the 200 and later says BYE; watrunk relays the call to a local sink that plays 880 Hz and
//! records. The checks are rtpengine's and tcpdump's view (both tones at the right frequency, the
//! first SRTP packet ours) and watrunk's events (call.answered, media.up, call.ended with Meta's
//! duration and the server back to idle). Runs in a private network namespace (`unshare -n`).

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

struct Run {
    ok: bool,
    report: String,
    events: Vec<serde_json::Value>,
    logs: String,
    /// The endpoint leg of the capture decrypted with watrunk's key log.
    decrypted: Decrypted,
}

/// meta-standin.sh (rtpengine as Meta) in `dir` with `watrunk serve` answering through SIP
/// (watrunk-serve-answerer.sh), `env` added to its environment, run by `runner` (an `env`
/// command, e.g. behind `unshare -n --`).
fn serve_standin(
    mut runner: Command,
    dir: &std::path::Path,
    mode: &str,
    env: &[(&str, String)],
) -> std::process::Output {
    runner
        .arg(format!("WATRUNK={}", bin().display()))
        .arg(format!(
            "ANSWER_CMD=bash {}",
            peers_dir()
                .join("rtpengine/watrunk-serve-answerer.sh")
                .display()
        ))
        .args([
            "ANSWERER_RX_WAV=rx.wav",
            "REQUIRE_ENDPOINT_FIRST=1",
            "ANSWER_TIMEOUT=20",
        ]);
    for (key, value) in env {
        runner.arg(format!("{key}={value}"));
    }
    runner
        .arg("bash")
        .arg(peers_dir().join("rtpengine/meta-standin.sh"))
        .arg(dir)
        .arg(mode)
        .arg("external")
        .output()
        .expect("run meta-standin.sh")
}

fn inbound_call(mode: &str) -> Run {
    for t in ["unshare", "rtpengine", "tcpdump"] {
        tool(t);
    }
    let dir = TempDir::new(&format!("call-{mode}"));
    let mut unshare = Command::new(tool("unshare"));
    unshare.args(["-n", "--", "env"]);
    let key_log = dir.path().join("keys.log").display().to_string();
    let out = serve_standin(
        unshare,
        dir.path(),
        mode,
        &[("SECS", "4".into()), ("KEY_LOG", key_log)],
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    let events = read("events.log")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let logs = format!(
        "--- uac.log\n{}--- serve.log\n{}--- sink.log\n{}",
        read("uac.log"),
        read("serve.log"),
        read("sink.log")
    );
    let decrypted = decrypt(dir.path());
    Run {
        ok: out.status.success(),
        report,
        events,
        logs,
        decrypted,
    }
}

/// One direction of the endpoint leg as tshark reads it from the decrypted capture.
#[derive(Debug, Default)]
struct Flow {
    /// `SRTP` key log line: call-id, direction, src, dst.
    line: Vec<String>,
    rtp: usize,
    payload_types: std::collections::BTreeSet<u8>,
    /// The decoded Opus's dominant frequency and level.
    tone: Option<(f64, f64)>,
}

#[derive(Debug, Default)]
struct Decrypted {
    report: String,
    /// Packets of the output whose IP or UDP checksum tshark finds wrong.
    bad_checksums: String,
    key_log: String,
    flows: Vec<Flow>,
}

/// `watrunk capture decrypt` on tcpdump's capture with the key log watrunk wrote, then tshark on
/// the result, each direction's RTP (as tshark decodes it) decoded as Opus by the sim's recorder.
fn decrypt(dir: &std::path::Path) -> Decrypted {
    let key_log = std::fs::read_to_string(dir.join("keys.log")).unwrap_or_default();
    let (ok, report) = run(
        Command::new(bin())
            .args(["capture", "decrypt", "--keys"])
            .arg(dir.join("keys.log"))
            .arg(dir.join("cap.pcap"))
            .arg(dir.join("plain.pcap")),
        Duration::from_secs(60),
    );
    let mut out = Decrypted {
        report,
        key_log,
        ..Decrypted::default()
    };
    if !ok {
        return out;
    }
    let (_, bad) = run(
        Command::new(tool("tshark"))
            .arg("-r")
            .arg(dir.join("plain.pcap"))
            .args([
                "-o",
                "udp.check_checksum:TRUE",
                "-o",
                "ip.check_checksum:TRUE",
            ])
            .args(["-Y", "udp.checksum.status==2 || ip.checksum.status==2"]),
        Duration::from_secs(60),
    );
    out.bad_checksums = bad
        .lines()
        .filter(|l| !l.starts_with("Running as user"))
        .collect();
    for line in out.key_log.lines().filter(|l| l.starts_with("SRTP ")) {
        let f: Vec<String> = line.split(' ').map(str::to_string).collect();
        let (src, dst): (std::net::SocketAddr, std::net::SocketAddr) =
            (f[3].parse().unwrap(), f[4].parse().unwrap());
        // Its output is larger than a pipe holds: read while it runs.
        let tshark = Command::new(tool("tshark"))
            .arg("-r")
            .arg(dir.join("plain.pcap"))
            .args(["-d", &format!("udp.port=={},rtp", src.port())])
            .args(["-d", &format!("udp.port=={},rtp", dst.port())])
            .args([
                "-Y",
                &format!(
                    "rtp && ip.src=={} && udp.srcport=={} && ip.dst=={} && udp.dstport=={}",
                    src.ip(),
                    src.port(),
                    dst.ip(),
                    dst.port()
                ),
            ])
            .args(["-T", "fields", "-E", "separator=|"])
            .args(["-e", "rtp.p_type", "-e", "rtp.seq", "-e", "rtp.timestamp"])
            .args(["-e", "rtp.ssrc", "-e", "rtp.payload"])
            .output()
            .expect("run tshark");
        let fields = String::from_utf8_lossy(&tshark.stdout);
        let mut flow = Flow {
            line: f,
            ..Flow::default()
        };
        let mut recorder = watrunk_sim::audio::Recorder::new(111).expect("an Opus decoder");
        for l in fields.lines() {
            let v: Vec<&str> = l.split('|').collect();
            if v.len() != 5 {
                continue;
            }
            let (Ok(pt), Ok(seq), Ok(ts)) =
                (v[0].parse::<u8>(), v[1].parse::<u16>(), v[2].parse::<u32>())
            else {
                continue;
            };
            let ssrc = u32::from_str_radix(v[3].trim_start_matches("0x"), 16).unwrap_or(0);
            flow.rtp += 1;
            flow.payload_types.insert(pt);
            let mut packet = vec![0x80, pt];
            packet.extend_from_slice(&seq.to_be_bytes());
            packet.extend_from_slice(&ts.to_be_bytes());
            packet.extend_from_slice(&ssrc.to_be_bytes());
            // tshark prints bytes as hex, with or without ':' between them (by version).
            let hex: Vec<u8> = v[4].bytes().filter(u8::is_ascii_hexdigit).collect();
            packet.extend(
                hex.chunks(2).filter_map(|pair| {
                    u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()
                }),
            );
            recorder.push(&packet);
        }
        flow.tone = recorder.analyse(1.0);
        out.flows.push(flow);
    }
    out
}

/// The capture's endpoint leg, decrypted: each direction's RTP has the tone's payload type, no
/// packet failed authentication, and the Opus decodes to the direction's tone (880 Hz ours, 440
/// Hz the plain side's). `dtls`: the key log has the handshake's `CLIENT_RANDOM` too.
fn assert_the_capture_decrypts(run: &Run, dtls: bool) {
    let d = &run.decrypted;
    let context = format!("{}\n--- key log\n{}\n{:?}", d.report, d.key_log, d.flows);
    assert!(d.report.contains("auth failures: 0"), "{context}");
    assert_eq!(d.bad_checksums, "", "{context}");
    assert_eq!(
        d.key_log
            .lines()
            .filter(|l| l.starts_with("CLIENT_RANDOM "))
            .count(),
        usize::from(dtls),
        "{context}"
    );
    assert_eq!(d.flows.len(), 2, "{context}");
    for (flow, (direction, hz)) in d.flows.iter().zip([("out", 880.0), ("in", 440.0)]) {
        assert_eq!(flow.line[2], direction, "{context}");
        assert!(flow.rtp > 150, "{context}");
        assert_eq!(
            flow.payload_types,
            std::collections::BTreeSet::from([111]),
            "{context}"
        );
        // Each packet tshark shows as RTP is one the decrypter counted for the flow.
        let counted = format!("flow {} -> {} ", flow.line[3], flow.line[4]);
        let line = d
            .report
            .lines()
            .find(|l| l.starts_with(&counted))
            .unwrap_or_default();
        assert!(
            line.contains(&format!(": {} RTP and ", flow.rtp))
                && line.contains(", 0 auth failures"),
            "{context}"
        );
        let (freq, rms) = flow.tone.unwrap_or_default();
        assert!(
            (freq - hz).abs() <= hz * 0.03 && rms > 0.05,
            "{direction}: {freq} Hz rms {rms}\n{context}"
        );
    }
}

fn event<'a>(run: &'a Run, name: &str) -> &'a serde_json::Value {
    run.events
        .iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event\n{:?}\n{}", run.events, run.logs))
}

fn assert_two_way_call(run: &Run) {
    assert!(run.ok, "{}\n{}", run.report, run.logs);
    for line in [
        "endpoint->relay->plain (recorded on the plain side): freq=880",
        "plain->relay->endpoint (recorded by the endpoint): freq=440",
        "endpoint sent the first SRTP packet",
    ] {
        assert!(
            run.report
                .lines()
                .any(|l| l.starts_with("PASS ") && l.contains(line)),
            "no PASS {line:?}\n{}\n{}",
            run.report,
            run.logs
        );
    }
    let incoming = event(run, "call.incoming");
    assert_eq!(incoming["to"], "+15550001111");
    assert_eq!(incoming["from"], "+12195550714");
    assert!(incoming["meta_call_id"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    let answered = event(run, "call.answered");
    assert!(answered["local_rtp"].as_str().is_some());
    let up = event(run, "media.up");
    assert_eq!(up["ssrc"], answered["ssrc"]);
    let ended = event(run, "call.ended");
    assert_eq!(ended["by"], "remote", "{ended}");
    assert_eq!(ended["meta_call_duration_secs"], 5, "{ended}");
    assert_eq!(ended["server"]["calls"], 0, "{ended}");
    assert_eq!(ended["server"]["media_routes"], 0, "{ended}");
    assert_eq!(ended["server"]["media_conns"], 0, "{ended}");
    let stats = &ended["stats"];
    assert!(stats["packets_in"].as_u64().unwrap() > 150, "{ended}");
    assert!(stats["packets_out"].as_u64().unwrap() > 150, "{ended}");
    assert_eq!(stats["srtp_rejected"], 0, "{ended}");
    for t in ["final_response", "first_rtp_out", "secure"] {
        assert!(ended["timings_ms"][t].as_f64().is_some(), "{t}: {ended}");
    }
}

#[test]
fn rtpengine_dtls_call_through_serve_two_way_tone_and_we_send_first() {
    let _serial = serial();
    let run = inbound_call("dtls");
    assert_two_way_call(&run);
    assert_the_capture_decrypts(&run, true);
    assert!(run
        .report
        .contains("PASS rtpengine accepted the endpoint's DTLS certificate"));
    assert!(event(&run, "media.ice")["role"] == "controlling");
}

#[test]
fn rtpengine_sdes_call_through_serve_two_way_tone_and_we_send_first() {
    let _serial = serial();
    let run = inbound_call("sdes");
    assert_two_way_call(&run);
    assert_the_capture_decrypts(&run, false);
}

#[test]
fn watrunk_call_places_a_call_to_a_meta_shaped_uas_fronting_rtpengine_two_way_tone() {
    let _serial = serial();
    for t in ["unshare", "rtpengine", "openssl"] {
        tool(t);
    }
    let dir = TempDir::new("call-out");
    let out = Command::new(tool("unshare"))
        .arg("-n")
        .arg("--")
        .arg("env")
        .arg(format!("WATRUNK={}", bin().display()))
        .arg("bash")
        .arg(peers_dir().join("rtpengine/watrunk-call-offerer.sh"))
        .arg(dir.path())
        .output()
        .expect("run watrunk-call-offerer.sh");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    let logs = format!(
        "--- uas.log\n{}--- call.log\n{}--- events.log\n{}",
        read("uas.log"),
        read("call.log"),
        read("events.log")
    );
    assert!(out.status.success(), "{report}\n{logs}");
    for line in [
        "watrunk call exited 0",
        "call ran, BYE answered 200",
        "407 answered with SHA-256, username without '+'",
        "call.ended: the server is back to idle",
        "watrunk->rtpengine->plain (recorded on the plain side): freq=880",
        "plain->rtpengine->watrunk (recorded by the sink): freq=440",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("PASS ") && l.contains(line)),
            "no PASS {line:?}\n{report}\n{logs}"
        );
    }
    let ended: serde_json::Value = read("events.log")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|e: &serde_json::Value| e["event"] == "call.ended")
        .expect("call.ended");
    assert_eq!(ended["meta_call_duration_secs"], 5, "{ended}");
    assert_eq!(ended["by"], "remote", "{ended}");
}

fn baresip(direction: &str) {
    let _serial = serial();
    for t in ["unshare", "baresip", "openssl"] {
        tool(t);
    }
    let dir = TempDir::new(&format!("baresip-{direction}"));
    let out = Command::new(tool("unshare"))
        .arg("-n")
        .arg("--")
        .arg("env")
        .arg(format!("WATRUNK={}", bin().display()))
        .arg("bash")
        .arg(peers_dir().join("baresip/watrunk-baresip.sh"))
        .arg(dir.path())
        .arg(direction)
        .output()
        .expect("run watrunk-baresip.sh");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    let logs = format!(
        "--- events.log\n{}--- serve.log\n{}--- call.log\n{}",
        read("events.log"),
        read("serve.log"),
        read("call.log")
    );
    assert!(out.status.success(), "{report}\n{logs}");
    let lines: &[&str] = if direction == "echo" {
        &[
            "call.ended: the server is back to idle",
            "the echo agent heard the call",
            "baresip->watrunk->echo agent->watrunk->baresip (recorded by baresip): freq=440",
        ]
    } else {
        &[
            "call.ended: the server is back to idle",
            "baresip->watrunk->sink (recorded by the sink): freq=440",
            "sink->watrunk->baresip (recorded by baresip): freq=880",
        ]
    };
    for line in lines {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("PASS ") && l.contains(line)),
            "no PASS {line:?}\n{report}\n{logs}"
        );
    }
    let events: Vec<serde_json::Value> = read("events.log")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let up = events
        .iter()
        .find(|e| e["event"] == "media.up")
        .expect("media.up");
    assert!(
        up["srtp"].as_str().is_some_and(|p| p.starts_with("SRTP_")),
        "{up}"
    );
    let ended = events
        .iter()
        .find(|e| e["event"] == "call.ended")
        .expect("call.ended");
    assert_eq!(
        ended["direction"],
        if direction == "out" {
            "outbound"
        } else {
            "inbound"
        },
        "{ended}"
    );
}

#[test]
fn baresip_calls_watrunk_serve_over_tls_with_ice_dtls_and_opus() {
    baresip("in");
}

#[test]
fn watrunk_calls_baresip_through_the_control_api() {
    baresip("out");
}

/// docs/voice-agent.md's example, examples/voice-agent/echo_agent.py, as the sink of a real call.
#[test]
fn the_example_voice_agent_plays_the_callers_audio_back() {
    baresip("echo");
}

/// One HTTP request as a webhook receiver saw it: its headers (names in lower case) and body.
struct Delivery {
    headers: std::collections::HashMap<String, String>,
    body: String,
}

/// A webhook receiver on `port` that is down (nothing listens) until `down` after the first event
/// is written to `events`, then answers 200 to each request and keeps it, until `stop` is set.
fn webhook_receiver(
    port: u16,
    events: std::path::PathBuf,
    down: std::time::Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Delivery>> {
    use std::io::{BufRead, BufReader, Read, Write};
    std::thread::spawn(move || {
        while std::fs::metadata(&events).map_or(true, |m| m.len() == 0) {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Vec::new();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(down);
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut headers = std::collections::HashMap::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.starts_with("POST /hook HTTP/1.1"), "{line}");
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let Some((name, value)) = line.trim_end().split_once(": ") else {
                    break;
                };
                headers.insert(name.to_ascii_lowercase(), value.to_string());
            }
            let length: usize = headers["content-length"].parse().unwrap();
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut stream = reader.into_inner();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
            got.push(Delivery {
                headers,
                body: String::from_utf8(body).unwrap(),
            });
        }
        got
    })
}

/// A metric's value in a Prometheus text exposition.
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name_and_labels} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name_and_labels}\n{text}"))
}

/// What an operator gets from one real call (rtpengine as Meta, through `watrunk serve`, the
/// rtpengine side sending three keys): one `dtmf.received` per key in order; `/metrics` whose
/// packet counters are the call's own stats and whose call, key, SIP and connection counts are
/// this call's; one CDR line with its fields; and every event delivered to a webhook that was
/// down for the first 5 s, in order, each with a valid HMAC-SHA256 signature.
#[test]
fn a_full_call_gives_metrics_a_cdr_dtmf_events_and_signed_webhooks() {
    use hmac::Mac;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    if !in_private_namespace("a_full_call_gives_metrics_a_cdr_dtmf_events_and_signed_webhooks") {
        return;
    }
    let _serial = serial();
    let dir = TempDir::new("call-observed");
    let secret = dir.path().join("webhook.key");
    std::fs::write(&secret, "a-shared-webhook-key\n").unwrap();
    let cdr = dir.path().join("cdr.jsonl");
    let (hook_port, api_port) = (free_port(), free_port());
    let stop = Arc::new(AtomicBool::new(false));
    let work = TempDir::new("call-observed-standin");
    let receiver = webhook_receiver(
        hook_port,
        work.path().join("events.log"),
        Duration::from_secs(5),
        stop.clone(),
    );
    // /metrics, read until the call has ended (serve stops with the script).
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let text = ureq::get(&format!("http://127.0.0.1:{api_port}/metrics"))
                    .call()
                    .ok()
                    .and_then(|r| r.into_string().ok());
                if let Some(text) = text.filter(|t| t.contains("watrunk_calls_ended_total{")) {
                    return text;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            String::new()
        })
    };
    let out = serve_standin(
        Command::new("env"),
        work.path(),
        "dtls",
        &[
            ("SECS", "8".into()),
            ("PLAIN_DTMF", "1#9@2".into()),
            ("API", format!("127.0.0.1:{api_port}")),
            (
                "EXTRA_SERVE_ARGS",
                format!(
                    "--cdr {} --webhook http://127.0.0.1:{hook_port}/hook --webhook-secret-file {}",
                    cdr.display(),
                    secret.display()
                ),
            ),
        ],
    );
    let read = |f: &str| std::fs::read_to_string(work.path().join(f)).unwrap_or_default();
    let logs = format!(
        "{}{}\n--- serve.log\n{}--- plain.log\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        read("serve.log"),
        read("plain.log")
    );
    let metrics = scraper.join().unwrap();
    assert!(
        !metrics.is_empty(),
        "/metrics never showed the call's end\n{logs}"
    );
    // Deliveries retried after the receiver came up have had time to arrive.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let deliveries = receiver.join().unwrap();
    assert!(out.status.success(), "{logs}");
    let event_lines: Vec<String> = read("events.log").lines().map(String::from).collect();
    let events: Vec<serde_json::Value> = event_lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |name: &str| {
        events
            .iter()
            .find(|e| e["event"] == name)
            .unwrap_or_else(|| panic!("no {name}\n{logs}"))
            .clone()
    };
    let ended = find("call.ended");

    // The rtpengine side's three keys, each once, 100 ms each. In the order they arrived: rtpengine
    // was seen to hold one key's packets back until after the next key's (a capture showed it).
    assert!(read("plain.log").contains("plain: sent DTMF 1#9"), "{logs}");
    let mut keys: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e["event"] == "dtmf.received")
        .map(|e| {
            assert_eq!(e["call"], ended["call"]);
            (
                e["digit"].as_str().unwrap().to_string(),
                e["duration_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [("#".into(), 100), ("1".into(), 100), ("9".into(), 100)],
        "{logs}"
    );

    // Metrics: the packet counters are the call's stats; the rest counts this one call.
    let stats = &ended["stats"];
    for (direction, key) in [("in", "packets_in"), ("out", "packets_out")] {
        let counted = metric(
            &metrics,
            &format!("watrunk_media_packets_total{{direction=\"{direction}\"}}"),
        );
        let own = stats[key].as_f64().unwrap();
        assert!(own > 300.0, "{key} {own}\n{logs}");
        assert!(
            (counted - own).abs() <= own * 0.01,
            "{direction}: metrics {counted}, the call's stats {own}"
        );
    }
    let by = ended["by"].as_str().unwrap();
    assert_eq!(
        metric(
            &metrics,
            &format!("watrunk_calls_ended_total{{direction=\"inbound\",outcome=\"answered\",by=\"{by}\",status=\"200\"}}")
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "watrunk_dtmf_keys_total{direction=\"in\"}"),
        3.0
    );
    assert_eq!(
        metric(&metrics, "watrunk_sip_responses_sent_total{code=\"407\"}"),
        1.0
    );
    assert!(metric(&metrics, "watrunk_sip_responses_sent_total{code=\"200\"}") >= 2.0);
    assert_eq!(
        metric(
            &metrics,
            "watrunk_connections_opened_total{transport=\"tls\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "watrunk_call_setup_seconds_count{phase=\"secure\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "watrunk_calls{direction=\"inbound\",state=\"answered\"}"
        ),
        0.0
    );
    assert!(metric(&metrics, "watrunk_webhook_attempts_failed_total") >= 1.0);

    // One CDR line, the call's.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&cdr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    for (field, want) in [
        ("call", &ended["call"]),
        ("wacid", &ended["meta_call_id"]),
        ("from", &ended["from"]),
        ("to", &ended["to"]),
        ("ended_by", &ended["by"]),
        ("reason", &ended["reason"]),
        ("sip_status", &ended["status"]),
        ("srtp", &find("media.up")["srtp"]),
    ] {
        assert_eq!(&record[field], want, "{field}: {record}");
    }
    assert!(record["wacid"].is_string(), "{record}");
    assert_eq!(record["direction"], "inbound");
    assert_eq!(record["to"], "+15550001111");
    assert_eq!(record["media"]["packets_in"], stats["packets_in"]);
    assert!(record["answer"].is_string(), "{record}");
    let talk = record["talk_secs"].as_f64().unwrap();
    assert!((6.0..15.0).contains(&talk), "{record}");
    assert!(record["total_secs"].as_f64().unwrap() >= talk, "{record}");

    // Webhooks: every event, in order, signed, although the receiver was down at first.
    let bodies: Vec<&str> = deliveries.iter().map(|d| d.body.as_str()).collect();
    assert_eq!(bodies, event_lines, "every event, in order\n{logs}");
    for d in &deliveries {
        let signature = &d.headers["x-watrunk-signature"];
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .unwrap_or_else(|| panic!("{signature}"));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"a-shared-webhook-key").unwrap();
        mac.update(format!("{t}.{}", d.body).as_bytes());
        let want = watrunk_sip::digest::hex(&mac.finalize().into_bytes());
        assert_eq!(v1, want, "the signature of {}", d.body);
        let event: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(
            d.headers["x-watrunk-event"],
            event["event"].as_str().unwrap()
        );
        assert_eq!(d.headers["content-type"], "application/json");
    }
}
