//! The SDP negotiator against offers produced live by real third-party stacks, and those stacks'
//! verdict on the SDP we produce. `tests/peers/sdp/capture-offers.sh` (inside `unshare -n`) records
//! offers from aiortc, headless Chromium, baresip (DTLS+ICE and SDES) and rtpengine (ICE-lite DTLS and
//! SDES, standing in for Meta's relay); every one must negotiate with `watrunk sdp answer`, and the
//! answer must re-parse, pass `watrunk sdp check`, and carry the offer's payload types and the right
//! setup role. `tests/peers/sdp/accept-answer.sh` (a second namespace) hands our answers back to
//! aiortc, Chromium (setRemoteDescription) and rtpengine (ng `answer`), and our offer to aiortc and
//! Chromium, whose answers `watrunk sdp accept` must turn into the right media plan. Each script runs
//! once per test binary (shared through a `OnceLock`), not per assertion. A missing peer is a failure:
//! scripts/test.sh installs them.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MEDIA_ADDR: &str = "198.18.0.1:40000";
/// Normal runs take a few seconds (capture ~3 s, accept ~2 s); a machine busy with other builds is much slower.
const SCRIPT_TIMEOUT_S: u64 = 100;
const SCRIPT_LIMIT: Duration = Duration::from_secs(SCRIPT_TIMEOUT_S + 15);

// ---------------------------------------------------------------------------------------------------
// running the scripts
// ---------------------------------------------------------------------------------------------------

/// What a script left in its output folder (files read into memory; the folder is removed).
struct ScriptRun {
    ok: bool,
    report: String,
    files: BTreeMap<String, Vec<u8>>,
}

impl ScriptRun {
    fn text(&self, name: &str) -> String {
        match self.files.get(name) {
            Some(b) => String::from_utf8_lossy(b).into_owned(),
            None => panic!(
                "{name} was not produced; script output:\n{}\n{}",
                self.report,
                self.logs()
            ),
        }
    }
    fn logs(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.files {
            if k.starts_with("logs/") && (k.ends_with(".log") || k.ends_with(".txt")) {
                let t = String::from_utf8_lossy(v);
                let tail: Vec<&str> = t.lines().rev().take(25).collect();
                s.push_str(&format!("--- {k} (tail)\n"));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }
}

fn require_peers() {
    for t in ["unshare", "ip", "rtpengine", "baresip", "chromium"] {
        tool(t);
    }
    let py = Path::new("/usr/bin/python3");
    assert!(
        py.is_file(),
        "/usr/bin/python3 is not installed: run scripts/test.sh, which installs the test peers"
    );
    let ok = Command::new(py)
        .args(["-c", "import aiortc, websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3-aiortc / python3-websockets are not installed: run scripts/test.sh, which installs the test peers"
    );
}

fn run_in_namespace(script: &str, tag: &str) -> Result<ScriptRun, String> {
    let dir = TempDir::new(tag);
    let path = peers_dir().join("sdp").join(script);
    let started = Instant::now();
    let mut cmd = Command::new(tool("unshare"));
    // timeout (TERM first) inside the namespace, before run()'s SIGKILL: the scripts' EXIT trap then stops the peers
    cmd.args(["-n", "--"])
        .arg(tool("timeout"))
        .args(["-k", "5", &SCRIPT_TIMEOUT_S.to_string(), "env"])
        .arg(format!("WATRUNK={}", bin().display()))
        .arg("bash")
        .arg(&path)
        .arg(dir.path());
    let (ok, report) = run(&mut cmd, SCRIPT_LIMIT);
    eprintln!("{script} took {:.1} s", started.elapsed().as_secs_f64());
    let mut files = BTreeMap::new();
    collect(dir.path(), dir.path(), &mut files);
    if files.is_empty() {
        return Err(format!("{script} produced nothing:\n{report}"));
    }
    Ok(ScriptRun { ok, report, files })
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, b);
        }
    }
}

fn shared(cell: &'static OnceLock<Result<ScriptRun, String>>, script: &str) -> &'static ScriptRun {
    let r = cell.get_or_init(|| {
        require_peers();
        run_in_namespace(script, script.trim_end_matches(".sh"))
    });
    match r {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    }
}

fn captured() -> &'static ScriptRun {
    static CAPTURE: OnceLock<Result<ScriptRun, String>> = OnceLock::new();
    // A panic inside get_or_init (a missing tool) would leave the cell empty and re-run for the next test:
    // require_peers() is cheap, and the script is only started when it passes.
    shared(&CAPTURE, "capture-offers.sh")
}

fn accepted() -> &'static ScriptRun {
    static ACCEPT: OnceLock<Result<ScriptRun, String>> = OnceLock::new();
    shared(&ACCEPT, "accept-answer.sh")
}

// ---------------------------------------------------------------------------------------------------
// running watrunk
// ---------------------------------------------------------------------------------------------------

fn watrunk(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run watrunk")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Answered {
    offer: String,
    answer: String,
    plan: Value,
    check: String,
}

/// `watrunk sdp answer` on a captured offer; the answer must re-parse and pass `watrunk sdp check`.
fn answer(name: &str, extra: &[&str]) -> Answered {
    let offer = captured().text(name);
    let dir = TempDir::new("sdp-answer");
    let offer_path = dir.path().join(name);
    std::fs::write(&offer_path, &offer).unwrap();
    let plan_path = dir.path().join("plan.json");
    let mut args = vec![
        "sdp",
        "answer",
        offer_path.to_str().unwrap(),
        "--media-addr",
        MEDIA_ADDR,
        "--plan-out",
        plan_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = watrunk(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "watrunk sdp answer refused the live {name}:\n{}\n--- offer\n{offer}",
        stderr(&out)
    );
    let answer = stdout(&out);
    assert_crlf(&answer, "our answer");
    let plan: Value = serde_json::from_slice(
        &std::fs::read(&plan_path).unwrap_or_else(|e| panic!("--plan-out: {e}")),
    )
    .expect("plan JSON");
    let answer_path = dir.path().join("answer.sdp");
    std::fs::write(&answer_path, &answer).unwrap();
    let chk = watrunk(&["sdp", "check", answer_path.to_str().unwrap()]);
    assert_eq!(
        chk.status.code(),
        Some(0),
        "our answer to {name} does not pass sdp check:\n{}{}\n--- answer\n{answer}",
        stdout(&chk),
        stderr(&chk)
    );
    Answered {
        offer,
        answer,
        plan,
        check: stdout(&chk),
    }
}

// ---------------------------------------------------------------------------------------------------
// a small SDP reader for the assertions (deliberately independent of watrunk-sdp)
// ---------------------------------------------------------------------------------------------------

fn assert_crlf(sdp: &str, what: &str) {
    assert!(!sdp.is_empty(), "{what} is empty");
    assert!(sdp.ends_with("\r\n"), "{what} does not end in CRLF");
    assert!(
        !sdp.replace("\r\n", "").contains('\n'),
        "{what} has bare LF line ends:\n{sdp}"
    );
}

fn lines(sdp: &str) -> impl Iterator<Item = &str> {
    sdp.lines().map(|l| l.trim_end_matches('\r'))
}

/// Values of `a=NAME:` (or the bare flag `a=NAME`) lines, anywhere in the SDP.
fn attrs<'a>(sdp: &'a str, name: &str) -> Vec<&'a str> {
    let colon = format!("a={name}:");
    let flag = format!("a={name}");
    lines(sdp)
        .filter_map(|l| {
            if let Some(v) = l.strip_prefix(colon.as_str()) {
                Some(v.trim())
            } else if l == flag {
                Some("")
            } else {
                None
            }
        })
        .collect()
}

fn attr<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    attrs(sdp, name).into_iter().next()
}

/// The audio m= line: (port, proto, payload types).
fn m_audio(sdp: &str) -> (u16, String, Vec<u8>) {
    let l = lines(sdp)
        .find(|l| l.starts_with("m=audio "))
        .unwrap_or_else(|| panic!("no m=audio in\n{sdp}"));
    let f: Vec<&str> = l[2..].split_whitespace().collect();
    (
        f[1].parse().unwrap(),
        f[2].to_string(),
        f[3..].iter().map(|p| p.parse().unwrap()).collect(),
    )
}

/// The payload type of an rtpmap encoding such as `opus/48000/2` (case-insensitive).
fn pt_of(sdp: &str, encoding: &str) -> Option<u8> {
    attrs(sdp, "rtpmap").into_iter().find_map(|v| {
        let (pt, enc) = v.split_once(' ')?;
        enc.trim()
            .eq_ignore_ascii_case(encoding)
            .then(|| pt.parse().ok())?
    })
}

/// The connection address that applies to the audio stream: media-level c= first, then session-level.
fn audio_conn(sdp: &str) -> String {
    let mut session = None;
    let mut media = None;
    let mut in_audio = false;
    for l in lines(sdp) {
        if l.starts_with("m=") {
            in_audio = l.starts_with("m=audio ");
        } else if let Some(c) = l.strip_prefix("c=IN IP4 ") {
            if in_audio {
                media.get_or_insert(c.to_string());
            } else if media.is_none() {
                session.get_or_insert(c.to_string());
            }
        }
    }
    media.or(session).expect("no c= line")
}

fn ssrc_ids(sdp: &str) -> Vec<String> {
    let mut ids: Vec<String> = attrs(sdp, "ssrc")
        .into_iter()
        .filter_map(|v| v.split_whitespace().next().map(str::to_string))
        .collect();
    ids.dedup();
    ids
}

/// (tag, suite, inline key) of every a=crypto line.
fn cryptos(sdp: &str) -> Vec<(u32, String, String)> {
    attrs(sdp, "crypto")
        .into_iter()
        .map(|v| {
            let f: Vec<&str> = v.split_whitespace().collect();
            let key = f[2].strip_prefix("inline:").unwrap_or(f[2]);
            (
                f[0].parse().unwrap(),
                f[1].to_string(),
                key.split('|').next().unwrap().to_string(),
            )
        })
        .collect()
}

fn fingerprint(sdp: &str) -> (String, String) {
    let v = attr(sdp, "fingerprint").unwrap_or_else(|| panic!("no a=fingerprint in\n{sdp}"));
    let (alg, fp) = v.split_once(' ').unwrap();
    (alg.to_ascii_lowercase(), fp.trim().to_ascii_uppercase())
}

fn candidate_addrs(sdp: &str) -> Vec<String> {
    attrs(sdp, "candidate")
        .into_iter()
        .map(|v| {
            let f: Vec<&str> = v.split_whitespace().collect();
            format!("{}:{}", f[4], f[5])
        })
        .collect()
}

fn ctx(a: &Answered) -> String {
    format!(
        "--- offer\n{}--- answer\n{}--- plan\n{}",
        a.offer,
        a.answer,
        serde_json::to_string_pretty(&a.plan).unwrap()
    )
}

// ---------------------------------------------------------------------------------------------------
// the checks shared by every offer
// ---------------------------------------------------------------------------------------------------

/// Payload types: Opus and telephone-event/8000 keep the offer's numbers, nothing else is answered.
fn check_payload_types(a: &Answered) {
    let c = ctx(a);
    let offer_opus = pt_of(&a.offer, "opus/48000/2").expect("the peer offers opus/48000/2");
    let (_, _, pts) = m_audio(&a.answer);
    assert_eq!(pts[0], offer_opus, "Opus first, with the offer's PT\n{c}");
    assert_eq!(
        pt_of(&a.answer, "opus/48000/2"),
        Some(offer_opus),
        "answer's opus rtpmap\n{c}"
    );
    assert_eq!(a.plan["audio_pt"], offer_opus, "plan audio_pt\n{c}");
    assert_eq!(a.plan["codec"], "opus", "{c}");
    let answer_te = pt_of(&a.answer, "telephone-event/8000");
    match pt_of(&a.offer, "telephone-event/8000") {
        Some(te) => {
            assert_eq!(
                answer_te,
                Some(te),
                "telephone-event keeps the offer's PT\n{c}"
            );
            assert_eq!(a.plan["dtmf_pt"], te, "plan dtmf_pt\n{c}");
        }
        None => {
            // not offered: the answer does not add it (RFC 3264) and the plan has none
            assert!(answer_te.is_none(), "{c}");
            assert!(a.plan["dtmf_pt"].is_null(), "plan dtmf_pt\n{c}");
        }
    }
    // Chromium also offers telephone-event/48000, red, G722, CN; PCMU/PCMA everywhere: none may be answered.
    let allowed: Vec<u8> = [Some(offer_opus), answer_te]
        .into_iter()
        .flatten()
        .collect();
    assert!(
        pts.iter().all(|p| allowed.contains(p)),
        "only Opus (+ telephone-event/8000) in the answer, got {pts:?}\n{c}"
    );
    assert!(pt_of(&a.answer, "telephone-event/48000").is_none(), "{c}");
    for p in &pts {
        assert!(
            attrs(&a.answer, "rtpmap")
                .iter()
                .any(|v| v.starts_with(&format!("{p} "))),
            "PT {p} has no rtpmap in the answer\n{c}"
        );
    }
    assert_eq!(a.plan["ptime"], 20, "{c}");
}

/// Our media address is where the answer says, and one SSRC is announced.
fn check_addressing(a: &Answered) {
    let c = ctx(a);
    let (port, _, _) = m_audio(&a.answer);
    assert_eq!(
        format!("{}:{port}", audio_conn(&a.answer)),
        MEDIA_ADDR,
        "{c}"
    );
    let ids = ssrc_ids(&a.answer);
    assert_eq!(ids.len(), 1, "exactly one a=ssrc id, got {ids:?}\n{c}");
    // where we will send: the offer's media-level c= (baresip puts 127.0.0.1 at session level) and m= port
    let (oport, _, _) = m_audio(&a.offer);
    assert_eq!(
        a.plan["remote_rtp"],
        format!("{}:{oport}", audio_conn(&a.offer)),
        "{c}"
    );
    // mid and BUNDLE echo the offer (aiortc/Chromium "0", rtpengine "audio", baresip none)
    assert_eq!(attr(&a.answer, "mid"), attr(&a.offer, "mid"), "{c}");
    match attr(&a.offer, "mid") {
        Some(mid) => assert_eq!(a.plan["mid"], mid, "{c}"),
        None => assert!(a.plan["mid"].is_null(), "{c}"),
    }
    if attr(&a.offer, "group").is_none() {
        assert!(
            attr(&a.answer, "group").is_none(),
            "no BUNDLE group answered to an offer without one\n{c}"
        );
    }
    assert!(a.check.starts_with("ok"), "{}", a.check);
}

/// A WebRTC (DTLS-SRTP + ICE) offer; `lite` only for rtpengine.
fn check_webrtc(name: &str, lite: bool) {
    let a = answer(name, &[]);
    let c = ctx(&a);
    check_payload_types(&a);
    check_addressing(&a);
    let (_, proto, _) = m_audio(&a.answer);
    assert_eq!(proto, "UDP/TLS/RTP/SAVPF", "{c}");
    assert_eq!(
        attrs(&a.answer, "setup"),
        vec!["active"],
        "exactly one a=setup:active\n{c}"
    );
    let fps = attrs(&a.answer, "fingerprint");
    assert_eq!(fps.len(), 1, "exactly one a=fingerprint\n{c}");
    assert!(fps[0].starts_with("sha-256 "), "{c}");
    let hex = fps[0]["sha-256 ".len()..].split(':').count();
    assert_eq!(hex, 32, "a sha-256 fingerprint has 32 bytes\n{c}");
    assert!(
        attr(&a.answer, "ice-lite").is_none(),
        "we are a full ICE agent\n{c}"
    );
    assert!(
        !attrs(&a.answer, "ice-options")
            .iter()
            .any(|v| v.contains("trickle")),
        "no trickle\n{c}"
    );
    assert!(attr(&a.answer, "rtcp-mux").is_some(), "{c}");
    assert!(attr(&a.answer, "crypto").is_none(), "{c}");
    assert_eq!(attrs(&a.answer, "ice-ufrag").len(), 1, "{c}");
    assert_eq!(attrs(&a.answer, "ice-pwd").len(), 1, "{c}");
    assert!(attr(&a.answer, "ice-ufrag").unwrap().len() >= 4, "{c}");
    assert!(attr(&a.answer, "ice-pwd").unwrap().len() >= 22, "{c}");
    assert_eq!(
        candidate_addrs(&a.answer),
        vec![MEDIA_ADDR.to_string()],
        "{c}"
    );
    // the plan
    let dtls = &a.plan["keying"]["dtls"];
    assert_eq!(
        dtls["role"], "client",
        "we answered active: DTLS client\n{c}"
    );
    let (alg, fp) = fingerprint(&a.offer);
    assert_eq!(alg, "sha-256", "{c}");
    assert_eq!(dtls["fingerprint"]["algorithm"], "sha-256", "{c}");
    assert_eq!(
        dtls["fingerprint"]["bytes"]
            .as_str()
            .unwrap()
            .to_ascii_uppercase(),
        fp,
        "the plan keeps the peer's fingerprint\n{c}"
    );
    let ice = &a.plan["remote_ice"];
    assert_eq!(ice["lite"], lite, "remote ICE-lite only for rtpengine\n{c}");
    assert_eq!(ice["ufrag"], attr(&a.offer, "ice-ufrag").unwrap(), "{c}");
    assert_eq!(ice["pwd"], attr(&a.offer, "ice-pwd").unwrap(), "{c}");
    let planned: Vec<String> = ice["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .map(|c| c["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(planned, candidate_addrs(&a.offer), "{c}");
    assert_eq!(a.plan["rtcp_mux"], true, "{c}");
}

/// An SDES offer answered with `--srtp sdes`.
fn check_sdes(name: &str) {
    let a = answer(name, &["--srtp", "sdes"]);
    let c = ctx(&a);
    check_payload_types(&a);
    check_addressing(&a);
    let (_, proto, _) = m_audio(&a.answer);
    assert_eq!(proto, "RTP/SAVP", "{c}");
    let offered = cryptos(&a.offer);
    let ours = cryptos(&a.answer);
    assert_eq!(ours.len(), 1, "exactly one a=crypto\n{c}");
    let (tag, suite, key) = &ours[0];
    let matching = offered
        .iter()
        .find(|(t, s, _)| t == tag && s == suite)
        .unwrap_or_else(|| panic!("our crypto {tag} {suite} is not one offered\n{c}"));
    if offered
        .iter()
        .any(|(_, s, _)| s == "AES_CM_128_HMAC_SHA1_80")
    {
        assert_eq!(suite, "AES_CM_128_HMAC_SHA1_80", "preferred suite\n{c}");
    }
    assert_eq!(key.len(), 40, "30-byte master key+salt in base64\n{c}");
    assert!(
        offered.iter().all(|(_, _, k)| k != key),
        "our own key, not the peer's\n{c}"
    );
    for a_name in [
        "fingerprint",
        "setup",
        "ice-ufrag",
        "ice-pwd",
        "candidate",
        "ice-lite",
    ] {
        assert!(
            attr(&a.answer, a_name).is_none(),
            "no a={a_name} in an SDES answer\n{c}"
        );
    }
    let sdes = &a.plan["keying"]["sdes"];
    assert_eq!(sdes["suite"], suite.as_str(), "{c}");
    assert_eq!(sdes["tag"], *tag, "{c}");
    assert_eq!(sdes["remote_key"], matching.2.as_str(), "{c}");
    assert_eq!(sdes["local_key"], key.as_str(), "{c}");
    assert!(a.plan["remote_ice"].is_null(), "{c}");
}

// ---------------------------------------------------------------------------------------------------
// live offers: watrunk answers them
// ---------------------------------------------------------------------------------------------------

#[test]
fn capture_produced_every_offer_live() {
    let run = captured();
    assert!(
        run.ok,
        "capture-offers.sh failed:\n{}\n{}",
        run.report,
        run.logs()
    );
    for f in [
        "aiortc-offer.sdp",
        "chromium-offer.sdp",
        "baresip-offer.sdp",
        "baresip-sdes-offer.sdp",
        "rtpengine-dtls-offer.sdp",
        "rtpengine-sdes-offer.sdp",
    ] {
        let sdp = run.text(f);
        assert_crlf(&sdp, f);
        assert!(sdp.starts_with("v=0\r\n"), "{f}:\n{sdp}");
        if !f.contains("sdes") {
            // live: host candidates on the namespace address, gathered complete (non-trickle capture)
            assert!(
                candidate_addrs(&sdp)
                    .iter()
                    .any(|a| a.starts_with("198.18.0.")),
                "{f} has no host candidate:\n{sdp}"
            );
        }
    }
    eprintln!("{}", run.text("versions.txt"));
}

#[test]
fn aiortc_offer_negotiates() {
    check_webrtc("aiortc-offer.sdp", false);
}

#[test]
fn chromium_offer_negotiates() {
    // Chromium offers two telephone-events (110 /48000, 126 /8000), red, G722, CN and a=ice-options:trickle
    check_webrtc("chromium-offer.sdp", false);
}

#[test]
fn baresip_dtls_offer_negotiates() {
    // baresip: ICE credentials, setup and an upper-case "SHA-256" fingerprint at session level, no mid, PT 96/101
    check_webrtc("baresip-offer.sdp", false);
}

#[test]
fn rtpengine_ice_lite_dtls_offer_negotiates() {
    check_webrtc("rtpengine-dtls-offer.sdp", true);
}

#[test]
fn rtpengine_sdes_offer_negotiates() {
    check_sdes("rtpengine-sdes-offer.sdp");
}

#[test]
fn baresip_sdes_offer_negotiates() {
    check_sdes("baresip-sdes-offer.sdp");
}

// ---------------------------------------------------------------------------------------------------
// real stacks judge our SDP
// ---------------------------------------------------------------------------------------------------

/// (first line, parsed JSON detail line) of a peer's result file.
fn result(run: &ScriptRun, name: &str) -> (String, Value) {
    let t = run.text(name);
    let mut it = t.lines();
    let first = it.next().unwrap_or_default().to_string();
    let detail = it
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    (first, detail)
}

fn no_watrunk_error(run: &ScriptRun, peer: &str) {
    let key = format!("{peer}.watrunk-error");
    if let Some(e) = run.files.get(&key) {
        panic!(
            "watrunk sdp answer refused {peer}'s live offer: {}\n--- offer\n{}",
            String::from_utf8_lossy(e),
            run.text(&format!("{peer}-offer.sdp"))
        );
    }
}

/// The peer applied our answer to its own offer with setRemoteDescription, and negotiated what we meant.
fn peer_accepts_our_answer(peer: &str, expected_role: &str) {
    let run = accepted();
    no_watrunk_error(run, peer);
    let offer = run.text(&format!("{peer}-offer.sdp"));
    let ours = run.text(&format!("{peer}-answer.sdp"));
    let c = format!(
        "--- {peer} offer\n{offer}--- our answer\n{ours}\n{}",
        run.report
    );
    let (verdict, detail) = result(run, &format!("{peer}-answer.result"));
    assert_eq!(verdict, "OK", "{peer} refused our answer\n{c}");
    assert_eq!(detail["signalingState"], "stable", "{c}");
    assert_eq!(detail["currentDirection"], "sendrecv", "{c}");
    let codecs = detail["codecs"].as_array().expect("negotiated codecs");
    let opus = pt_of(&offer, "opus/48000/2").unwrap();
    assert_eq!(
        codecs[0]["payloadType"], opus,
        "{peer} sends Opus with its PT\n{c}"
    );
    assert_eq!(codecs[0]["mimeType"], "audio/opus", "{c}");
    if let Some(te) = pt_of(&offer, "telephone-event/8000") {
        assert!(
            codecs
                .iter()
                .any(|k| k["payloadType"] == te && k["mimeType"] == "audio/telephone-event"),
            "{peer} negotiated telephone-event/8000 on {te}\n{c}"
        );
    }
    if !expected_role.is_empty() {
        assert_eq!(detail["dtlsRole"], expected_role, "{c}");
    }
    // control: the same answer with a=setup:actpass (illegal in an answer) is refused by the same stack
    let (control, _) = result(run, &format!("{peer}-control.result"));
    assert_ne!(
        control, "OK",
        "{peer} accepted a=setup:actpass in an answer: its verdict means nothing\n{c}"
    );
    assert!(
        control.contains("active") && control.contains("passive"),
        "{control}"
    );
}

#[test]
fn aiortc_accepts_our_answer() {
    // aiortc becomes the DTLS server because we answered a=setup:active
    peer_accepts_our_answer("aiortc", "server");
}

#[test]
fn chromium_accepts_our_answer() {
    peer_accepts_our_answer("chromium", "");
}

#[test]
fn rtpengine_accepts_our_answers() {
    let run = accepted();
    for (mode, proto) in [("dtls", "UDP/TLS/RTP/SAVPF"), ("sdes", "RTP/SAVP")] {
        let n = format!("rtpengine-{mode}");
        no_watrunk_error(run, &n);
        let ours = run.text(&format!("{n}-answer.sdp"));
        let c = format!("--- our answer\n{ours}\n{}", run.report);
        assert_eq!(m_audio(&ours).1, proto, "{c}");
        let (verdict, _) = result(run, &format!("{n}-answer.result"));
        assert_eq!(verdict, "OK", "rtpengine's ng answer for {mode}\n{c}");
        let plan: Value =
            serde_json::from_str(&run.text(&format!("{n}-answer.plan.json"))).unwrap();
        if mode == "dtls" {
            assert_eq!(plan["remote_ice"]["lite"], true, "{c}");
            assert_eq!(plan["keying"]["dtls"]["role"], "client", "{c}");
        } else {
            assert_eq!(
                plan["keying"]["sdes"]["suite"], "AES_CM_128_HMAC_SHA1_80",
                "{c}"
            );
        }
        // rtpengine translated our answer for its plain side: Opus 111 + telephone-event 126 still there
        let plain = run.text(&format!("{n}-plain-answer.sdp"));
        let (_, pproto, pts) = m_audio(&plain);
        assert_eq!(pproto, "RTP/AVP", "{plain}");
        assert_eq!(pts, vec![111, 126], "{plain}");
        assert_eq!(pt_of(&plain, "opus/48000/2"), Some(111), "{plain}");
    }
}

/// The peer answered `watrunk sdp offer`; `watrunk sdp accept` turns its answer into the right plan.
fn peer_answers_our_offer(peer: &str) {
    let run = accepted();
    let ours = run.text(&format!("our-offer-{peer}.sdp"));
    let theirs_name = format!("{peer}-answer-to-ours.sdp");
    let (verdict, detail) = result(run, &format!("{peer}-answer-to-ours.result"));
    assert_eq!(
        verdict, "OK",
        "{peer} could not answer our offer\n--- our offer\n{ours}\n{}",
        run.report
    );
    let theirs = run.text(&theirs_name);
    let c = format!("--- our offer\n{ours}--- {peer}'s answer\n{theirs}");
    let opus = pt_of(&ours, "opus/48000/2").expect("we offer opus/48000/2");
    assert_eq!(pt_of(&theirs, "opus/48000/2"), Some(opus), "{c}");
    assert_eq!(detail["codecs"][0]["payloadType"], opus, "{c}");
    let dir = TempDir::new("sdp-accept");
    let (o, a) = (dir.path().join("offer.sdp"), dir.path().join("answer.sdp"));
    std::fs::write(&o, &ours).unwrap();
    std::fs::write(&a, &theirs).unwrap();
    let out = watrunk(&["sdp", "accept", o.to_str().unwrap(), a.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "watrunk sdp accept refused {peer}'s answer: {}\n{c}",
        stderr(&out)
    );
    let plan: Value = serde_json::from_str(&stdout(&out)).expect("plan JSON");
    let c = format!("{c}--- plan\n{}", stdout(&out));
    assert_eq!(plan["audio_pt"], opus, "{c}");
    match pt_of(&theirs, "telephone-event/8000") {
        Some(te) => assert_eq!(plan["dtmf_pt"], te, "{c}"),
        // aiortc answers no telephone-event at all: then the plan has none either
        None => assert!(plan["dtmf_pt"].is_null(), "{c}"),
    }
    let setup = attrs(&theirs, "setup");
    assert_eq!(setup.len(), 1, "{c}");
    let role = match setup[0] {
        "active" => "server",
        "passive" => "client",
        other => panic!("{peer} answered a=setup:{other}\n{c}"),
    };
    assert_eq!(plan["keying"]["dtls"]["role"], role, "{c}");
    let (_, fp) = fingerprint(&theirs);
    assert_eq!(
        plan["keying"]["dtls"]["fingerprint"]["bytes"]
            .as_str()
            .unwrap()
            .to_ascii_uppercase(),
        fp,
        "{c}"
    );
    assert_eq!(plan["remote_ice"]["lite"], false, "{c}");
    assert_eq!(
        plan["remote_ice"]["ufrag"],
        attr(&theirs, "ice-ufrag").unwrap(),
        "{c}"
    );
    let (port, _, _) = m_audio(&theirs);
    assert_eq!(
        plan["remote_rtp"],
        format!("{}:{port}", audio_conn(&theirs)),
        "{c}"
    );
}

#[test]
fn aiortc_answers_our_offer() {
    peer_answers_our_offer("aiortc");
}

#[test]
fn chromium_answers_our_offer() {
    peer_answers_our_offer("chromium");
}

#[test]
fn accept_script_reported_no_failure() {
    let run = accepted();
    assert!(
        run.ok,
        "accept-answer.sh failed:\n{}\n{}",
        run.report,
        run.logs()
    );
}
