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

fn inbound_call(mode: &str) -> Run {
    for t in ["unshare", "rtpengine", "tcpdump"] {
        tool(t);
    }
    let dir = TempDir::new(&format!("call-{mode}"));
    let out = Command::new(tool("unshare"))
        .arg("-n")
        .arg("--")
        .arg("env")
        .arg(format!("WATRUNK={}", bin().display()))
        .arg(format!("KEY_LOG={}", dir.path().join("keys.log").display()))
        .arg(format!(
            "ANSWER_CMD=bash {}",
            peers_dir()
                .join("rtpengine/watrunk-serve-answerer.sh")
                .display()
        ))
        .arg("ANSWERER_RX_WAV=rx.wav")
        .arg("REQUIRE_ENDPOINT_FIRST=1")
        .arg("SECS=4")
        .arg("ANSWER_TIMEOUT=20")
        .arg("bash")
        .arg(peers_dir().join("rtpengine/meta-standin.sh"))
        .arg(dir.path())
        .arg(mode)
        .arg("external")
        .output()
        .expect("run meta-standin.sh");
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
