//! The media stack against a real third-party WebRTC stack standing in for Meta's relay: rtpengine
//! (userspace, ICE-lite) turns a plain Opus 440 Hz tone into an ICE-lite DTLS-SRTP (or SDES) offer,
//! `watrunk media answer` answers it and relays to a local sink that plays 880 Hz and records. The
//! checks are rtpengine's and tcpdump's view, not ours: both tones arrive at the right frequency and
//! level, rtpengine accepted our certificate, our checks are ICE-CONTROLLING with USE-CANDIDATE, we are
//! the DTLS client, and the first SRTP packet on the wire is ours. Runs in a private network namespace
//! (`unshare -n`): ICE peers do not use loopback addresses.

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Mutex;

use common::*;

/// One real-peer run at a time: each starts rtpengine, Chromium or aiortc, tcpdump and watrunk, and
/// on 2 cores several at once starve each other's 20 ms media clocks.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

struct Run {
    ok: bool,
    report: String,
    media_log: String,
}

fn meta_standin(mode: &str, extra: &[(&str, &str)]) -> Run {
    for t in ["unshare", "rtpengine", "tcpdump"] {
        tool(t);
    }
    let dir = TempDir::new(&format!("standin-{mode}"));
    let script = peers_dir().join("rtpengine/meta-standin.sh");
    let answerer = peers_dir().join("rtpengine/watrunk-answerer.sh");
    let mut cmd = Command::new(tool("unshare"));
    cmd.arg("-n")
        .arg("--")
        .arg("env")
        .arg(format!("WATRUNK={}", bin().display()))
        .arg(format!("ANSWER_CMD=bash {}", answerer.display()))
        .arg("ANSWERER_RX_WAV=rx.wav")
        .arg("REQUIRE_ENDPOINT_FIRST=1")
        .arg("SECS=4")
        .arg("ANSWER_TIMEOUT=20");
    for (k, v) in extra {
        cmd.arg(format!("{k}={v}"));
    }
    let out = cmd
        .arg("bash")
        .arg(&script)
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
    let media_log = std::fs::read_to_string(dir.path().join("media.log")).unwrap_or_default();
    Run {
        ok: out.status.success(),
        report,
        media_log,
    }
}

fn assert_pass(run: &Run, line: &str) {
    assert!(
        run.report
            .lines()
            .any(|l| l.starts_with("PASS ") && l.contains(line)),
        "no PASS line with {line:?}\n{}\n--- media.log\n{}",
        run.report,
        run.media_log
    );
}

/// The media events watrunk printed, in order, by name.
fn events(media_log: &str) -> Vec<String> {
    media_log
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some(v["event"].as_str()?.to_string())
        })
        .collect()
}

fn two_way_tone(run: &Run) {
    assert!(
        run.ok,
        "meta-standin failed\n{}\n--- media.log\n{}",
        run.report, run.media_log
    );
    assert!(
        !run.report.lines().any(|l| l.starts_with("FAIL")),
        "{}",
        run.report
    );
    // 880 Hz from our sink reached rtpengine's plain side; 440 Hz from it reached our sink.
    assert_pass(
        run,
        "endpoint->relay->plain (recorded on the plain side): freq=880",
    );
    assert_pass(
        run,
        "plain->relay->endpoint (recorded by the endpoint): freq=440",
    );
    assert_pass(run, "endpoint sent the first SRTP packet");
}

#[test]
fn rtpengine_ice_lite_dtls_offer_two_way_tone_and_we_send_first() {
    let _serial = serial();
    let run = meta_standin("dtls", &[("DTMF", "5#@1.5")]);
    two_way_tone(&run);
    // Two DTMF keys as RFC 4733 events (7 packets each) reached rtpengine's plain side on PT 126.
    assert!(
        run.report.contains("(payload types [111, 126])"),
        "{}",
        run.report
    );
    assert!(
        run.media_log.contains(r#""dtmf_out":14"#),
        "{}",
        run.media_log
    );
    assert_pass(&run, "rtpengine accepted the endpoint's DTLS certificate");
    assert_pass(&run, "answer has a=setup:active");
    assert_pass(&run, "endpoint sent ICE-CONTROLLING checks");
    assert_pass(&run, "endpoint sent the DTLS ClientHello (DTLS client)");
    assert!(
        run.report.contains("USE-CANDIDATE,ICE-CONTROLLING"),
        "regular nomination\n{}",
        run.report
    );
    assert!(
        run.report.contains("relay STUN requests: 0"),
        "rtpengine stays ICE-lite"
    );
    let ev = events(&run.media_log);
    let pos = |name: &str| {
        ev.iter()
            .position(|e| e == name)
            .unwrap_or_else(|| panic!("no {name} in {ev:?}"))
    };
    assert!(pos("media.ready") < pos("ice.connected"));
    assert!(pos("ice.connected") < pos("secure.up"));
    assert!(pos("secure.up") < pos("rtp.first_out"));
    assert!(pos("rtp.first_out") < pos("rtp.first_in"), "{ev:?}");
    assert!(!ev.contains(&"failed".to_string()), "{}", run.media_log);
}

/// Our in-place AEAD_AES_128_GCM against rtpengine's (libsrtp-compatible) one: we offer only that
/// profile in DTLS, rtpengine takes it, and the tones get through both ways.
#[test]
fn rtpengine_dtls_with_aead_aes_128_gcm_two_way_tone() {
    let _serial = serial();
    let run = meta_standin("dtls", &[("SRTP_PROFILES", "aead-aes-128-gcm")]);
    two_way_tone(&run);
    assert!(
        run.media_log
            .contains(r#""profile":"SRTP_AEAD_AES_128_GCM""#),
        "{}",
        run.media_log
    );
    assert_pass(&run, "rtpengine accepted the endpoint's DTLS certificate");
    assert!(
        run.media_log.contains(r#""srtp_rejected":0"#),
        "{}",
        run.media_log
    );
}

#[test]
fn rtpengine_sdes_offer_two_way_tone_and_we_send_first() {
    let _serial = serial();
    let run = meta_standin("sdes", &[]);
    two_way_tone(&run);
    assert!(
        run.media_log
            .contains(r#""profile":"AES_CM_128_HMAC_SHA1_80""#),
        "{}",
        run.media_log
    );
    let ev = events(&run.media_log);
    assert!(
        !ev.contains(&"ice.connected".to_string()),
        "no ICE in Meta's SDES mode: {ev:?}"
    );
}

#[test]
fn a_fingerprint_that_does_not_match_fails_the_call_with_the_reason() {
    let _serial = serial();
    let run = meta_standin("dtls", &[("CORRUPT_FINGERPRINT", "1")]);
    assert!(
        !run.ok,
        "the stand-in must not pass with a corrupted fingerprint"
    );
    let failed: Vec<serde_json::Value> = run
        .media_log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{}", run.media_log);
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not match the SDP fingerprint"),
        "{reason}"
    );
    let ev = events(&run.media_log);
    assert!(
        !ev.contains(&"secure.up".to_string()) && !ev.contains(&"rtp.first_out".to_string()),
        "{ev:?}"
    );
    // Reported with the time it took (the acceptance asks for under a second; measured, not enforced).
    eprintln!("fingerprint mismatch reported after {} ms", failed[0]["ms"]);
}

struct AiortcRun {
    report: String,
    answer: String,
    offer: String,
    media_log: String,
}

fn aiortc(script: &str, env: &[(&str, &str)]) -> AiortcRun {
    let dir = TempDir::new("aiortc");
    let mut cmd = Command::new(tool("unshare"));
    cmd.args(["-n", "--", "env"])
        .arg(format!("WATRUNK={}", bin().display()));
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    let out = cmd
        .arg("bash")
        .arg(peers_dir().join("aiortc").join(script))
        .arg(dir.path())
        .output()
        .expect("run the aiortc script");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed\n{report}");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    AiortcRun {
        answer: read("answer.sdp"),
        offer: read("offer.sdp"),
        media_log: read("media.log"),
        report,
    }
}

/// `freq=… rms=…` of the recording named on the line starting with `prefix`.
fn tone(report: &str, prefix: &str) -> (f64, f64) {
    let line = report
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line\n{report}"));
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line}"))
    };
    (field("freq="), field("rms="))
}

fn assert_tone(report: &str, prefix: &str, hz: f64) {
    let (f, rms) = tone(report, prefix);
    assert!(
        (f - hz).abs() <= 5.0 && rms > 0.1,
        "{prefix} {f} Hz at rms {rms}, expected {hz} Hz\n{report}"
    );
}

/// The largest value a counter reached in the media log's stats events.
fn stat(media_log: &str, name: &str) -> Option<u64> {
    media_log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "stats")
        .filter_map(|e| e[name].as_u64())
        .max()
}

/// Consent freshness (RFC 7675) after set-up, from the capture: aiortc checked consent every 0.5 s
/// and we answered each check; we checked every 1-2 s (half our 4 s timeout) and aiortc answered
/// ours. Neither side let consent expire.
fn assert_consent_kept_both_ways(run: &AiortcRun) {
    let line = run
        .report
        .lines()
        .find_map(|l| l.strip_prefix("consent: "))
        .unwrap_or_else(|| panic!("no consent line\n{}", run.report));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let count = |way: &str, kind: &str| v[way][kind].as_u64().unwrap();
    // The last check of either side may still be in flight when the capture stops.
    assert!(
        count("received", "requests") >= 5,
        "aiortc's checks: {line}"
    );
    assert!(
        count("sent", "answers") + 1 >= count("received", "requests"),
        "every check of aiortc's answered: {line}"
    );
    assert!(count("sent", "requests") >= 2, "our checks: {line}");
    assert!(
        count("received", "answers") + 1 >= count("sent", "requests"),
        "every check of ours answered: {line}"
    );
    assert!(
        !run.report.contains("Consent to send expired"),
        "{}",
        run.report
    );
    assert!(
        !run.media_log.contains(r#""event":"failed""#),
        "{}",
        run.media_log
    );
}

/// aiortc offers as a browser would (full ICE, controlling, DTLS actpass, Opus on PT 96): we take the
/// controlled role (RFC 8445 §6.1.1, no role conflict), answer setup:active, and map the local Opus PT
/// 111 onto its 96. Each side records the other's tone. Mid-call, one of aiortc's SRTP packets is
/// replayed 5 times and sent 5 times with a broken tag from aiortc's own address: all 10 are dropped
/// and counted, and the audio is unharmed. Consent is kept both ways after set-up (we are controlled).
#[test]
fn aiortc_offerer_two_way_tone() {
    let _serial = serial();
    let run = aiortc(
        "watrunk-answers-aiortc.sh",
        &[("SECS", "5"), ("INJECT", "1"), ("CONSENT", "0.5")],
    );
    assert_consent_kept_both_ways(&run);
    assert!(
        run.report.contains("injected 5 replays and 5 bad tags"),
        "{}",
        run.report
    );
    assert_eq!(
        stat(&run.media_log, "srtp_rejected"),
        Some(10),
        "{}",
        run.media_log
    );
    assert_tone(&run.report, "aiortc-rx:", 880.0);
    assert_tone(&run.report, "sink-rx:", 440.0);
    assert!(run.answer.contains("a=setup:active\r\n"), "{}", run.answer);
    assert!(
        run.answer.contains("a=rtpmap:96 opus/48000/2\r\n"),
        "{}",
        run.answer
    );
    assert!(
        run.media_log.contains(r#""keying":"dtls-client""#),
        "{}",
        run.media_log
    );
    assert!(
        run.report.contains("offer conn connected"),
        "{}",
        run.report
    );
}

/// Our offer (actpass) answered by aiortc (setup:active: we are the DTLS server), with the sink
/// restarted half-way under another SSRC: aiortc hears the tone throughout and the capture shows one
/// SSRC from us for the whole call. Consent is kept both ways after set-up (we are controlling).
#[test]
fn aiortc_answerer_two_way_tone_and_one_ssrc_across_a_sink_restart() {
    let _serial = serial();
    let run = aiortc(
        "aiortc-answers-watrunk.sh",
        &[("SECS", "8"), ("RESTART_SINK", "1"), ("CONSENT", "0.5")],
    );
    assert_consent_kept_both_ways(&run);
    assert!(run.offer.contains("a=setup:actpass\r\n"), "{}", run.offer);
    assert!(run.answer.contains("a=setup:active"), "{}", run.answer);
    assert!(
        run.media_log.contains(r#""keying":"dtls-server""#),
        "{}",
        run.media_log
    );
    assert_tone(&run.report, "aiortc-rx:", 880.0);
    assert_tone(&run.report, "sink-rx:", 440.0);
    let line = run
        .report
        .lines()
        .find_map(|l| l.strip_prefix("sent-ssrcs: "))
        .unwrap_or_else(|| panic!("no sent-ssrcs line\n{}", run.report));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let ssrcs = v["ssrcs"].as_object().unwrap();
    assert_eq!(ssrcs.len(), 1, "one SSRC toward the peer: {line}");
    let (ssrc, count) = ssrcs.iter().next().unwrap();
    assert!(count.as_u64().unwrap() > 200, "{line}");
    assert!(
        run.media_log.contains(&format!(r#""ssrc":{ssrc}"#)),
        "the SSRC we announced: {ssrc}"
    );
}

/// With an IPv6 media address beside the IPv4 one, all media shares one dual-stack socket: we offer
/// both families on one port, and the call works whichever pair ICE picks (IPv4 peers arrive as
/// v4-mapped addresses).
#[test]
fn aiortc_answerer_over_a_dual_stack_media_socket() {
    let _serial = serial();
    let run = aiortc(
        "aiortc-answers-watrunk.sh",
        &[("SECS", "4"), ("MEDIA_IP6", "fd00::1")],
    );
    let ports: Vec<&str> = run
        .offer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .map(|l| l.split(' ').nth(5).unwrap_or(""))
        .collect();
    assert!(run.offer.contains(" fd00::1 "), "{}", run.offer);
    assert!(run.offer.contains(" 198.18.0.1 "), "{}", run.offer);
    assert!(
        ports.len() == 2 && ports[0] == ports[1],
        "one port: {ports:?}"
    );
    assert_tone(&run.report, "aiortc-rx:", 880.0);
    assert_tone(&run.report, "sink-rx:", 440.0);
}

/// aiortc answers our offer but claims the controlling role too (RFC 8445 §7.2.5): with the highest
/// tie-breaker it wins and answers our checks with 487, and we go on as controlled; with the lowest it
/// switches itself. Either way the call connects and the tone gets through both ways.
#[test]
fn a_role_conflict_is_resolved_by_the_tie_breaker_whoever_wins() {
    let _serial = serial();
    for (tie_breaker, our_role, their_role) in [
        ("18446744073709551615", "controlled", "controlling"),
        ("0", "controlling", "controlled"),
    ] {
        let run = aiortc(
            "aiortc-answers-watrunk.sh",
            &[("SECS", "4"), ("CLAIM_CONTROLLING", tie_breaker)],
        );
        assert!(
            run.media_log.contains(&format!(r#""role":"{our_role}""#)),
            "tie-breaker {tie_breaker}: we should end {our_role}\n{}",
            run.media_log
        );
        assert!(
            run.report.contains(&format!("ice-role: {their_role}")),
            "tie-breaker {tie_breaker}: aiortc should end {their_role}\n{}",
            run.report
        );
        assert_tone(&run.report, "aiortc-rx:", 880.0);
        assert_tone(&run.report, "sink-rx:", 440.0);
    }
}

/// One run of watrunk-chromium.sh: its report, Chromium's stats and watrunk's media log, or why the
/// run failed.
fn chromium_once(mode: &str) -> Result<(String, serde_json::Value, String), String> {
    let dir = TempDir::new("chromium");
    let out = Command::new(tool("unshare"))
        .args(["-n", "--", "env"])
        .arg(format!("WATRUNK={}", bin().display()))
        .arg("SECS=6")
        .arg("bash")
        .arg(peers_dir().join("chromium/watrunk-chromium.sh"))
        .arg(dir.path())
        .arg(mode)
        .output()
        .expect("run watrunk-chromium.sh");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("{mode}: the script failed\n{report}"));
    }
    let json = std::fs::read_to_string(dir.path().join("chromium.json")).unwrap_or_default();
    let stats: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| format!("{e}: {json}\n{report}"))?;
    let media_log = std::fs::read_to_string(dir.path().join("media.log")).unwrap_or_default();
    let heard = stats["peakHz"].as_f64() == Some(880.0) && tone(&report, "sink-rx:").1 > 0.1;
    if !heard {
        return Err(format!("{mode}: no two-way tone\n{report}"));
    }
    Ok((report, stats, media_log))
}

/// A headless browser's start-up can stall for seconds on a loaded 2-core machine (seen once in
/// about twenty runs, with the media path itself fine): a failed run is tried once more, and the
/// first failure is printed.
fn chromium(mode: &str) -> (String, serde_json::Value, String) {
    tool("chromium");
    match chromium_once(mode) {
        Ok(run) => run,
        Err(first) => {
            eprintln!("first Chromium run failed, trying once more:\n{first}");
            chromium_once(mode).unwrap_or_else(|second| panic!("{second}"))
        }
    }
}

fn chromium_heard_our_tone(stats: &serde_json::Value, report: &str) {
    assert_eq!(stats["peakHz"].as_f64(), Some(880.0), "{report}");
    assert!(stats["peakDb"].as_f64().unwrap() > -50.0, "{report}");
    assert!(stats["packetsReceived"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(stats["dtlsState"], "connected");
    assert_tone(report, "sink-rx:", 440.0);
}

/// Headless Chromium offers (it is controlling and DTLS actpass): we answer controlled and active.
/// Chromium's RTCP reports on our stream give us a round-trip time, and its stream arrives whole.
#[test]
fn chromium_offerer_two_way_tone() {
    let _serial = serial();
    let (report, stats, media_log) = chromium("chromium-offers");
    chromium_heard_our_tone(&stats, &report);
    assert_eq!(
        stats["iceRole"], "controlling",
        "Chromium kept its role: no conflict"
    );
    assert!(
        media_log.contains(r#""keying":"dtls-client""#),
        "{media_log}"
    );
    let last: serde_json::Value = media_log
        .lines()
        .rfind(|l| l.contains(r#""event":"stats""#))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("no stats event\n{media_log}"));
    let rtt = last["rtt_us"]
        .as_u64()
        .unwrap_or_else(|| panic!("no RTT from Chromium's reports: {last}"));
    assert!(
        rtt > 0 && rtt < 100_000,
        "RTT on a namespace loopback: {last}"
    );
    assert!(last["packets_in"].as_u64().unwrap() > 200, "{last}");
    assert!(last["lost"].as_i64().unwrap() <= 2, "{last}");
}

/// We offer to headless Chromium: we control ICE, Chromium answers setup:active (we are the server).
#[test]
fn chromium_answerer_two_way_tone() {
    let _serial = serial();
    let (report, stats, media_log) = chromium("watrunk-offers");
    chromium_heard_our_tone(&stats, &report);
    assert_eq!(stats["iceRole"], "controlled");
    assert!(
        media_log.contains(r#""keying":"dtls-server""#),
        "{media_log}"
    );
}

/// aiortc goes away mid-call: consent checks go unanswered and watrunk ends the call with that reason
/// (consent timeout shortened to 6 s for the test). A stranger's RTP sent to the call's local port
/// during the call is ignored and counted.
#[test]
fn a_vanished_peer_is_detected_by_consent_freshness_and_strangers_are_ignored() {
    let _serial = serial();
    let run = aiortc(
        "watrunk-answers-aiortc.sh",
        &[("SECS", "3"), ("VANISH", "1")],
    );
    let events: Vec<serde_json::Value> = run
        .media_log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let failed: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{}", run.media_log);
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("consent expired"),
        "{}",
        run.media_log
    );
    let ms = failed[0]["ms"].as_f64().unwrap();
    assert!(ms > 6000.0, "not before the consent timeout: {ms} ms");
    assert_eq!(
        stat(&run.media_log, "strangers"),
        Some(20),
        "{}",
        run.media_log
    );
    assert_tone(&run.report, "aiortc-rx:", 880.0);
}
