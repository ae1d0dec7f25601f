//! WhatsApp calls bridged into a PBX (`watrunk serve --pbx sip:HOST:PORT;transport=udp`), with
//! baresip as the agent's phone behind the PBX leg (plain RTP over UDP, auto-answer, its own SIP
//! stack and codecs) and `watrunk sim call` as Meta. The user's 440 Hz must reach baresip and
//! baresip's 880 Hz the user, within 2 % and 6 dB of what was sent, through transcoding (PCMU,
//! PCMA) or passthrough (Opus); Meta sees one 180, one 200, and the sim's BYE ends the PBX leg
//! with a BYE of its own. SIPp plays PBXs with other habits: busy, hanging up, holding and
//! refreshing, answering with no common codec, never answering.

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// baresip listening for SIP on UDP `port`, answering calls to +15550001111 at once with
/// `codec`, playing 880 Hz and recording what it hears under `dir/snd`.
fn baresip_phone(dir: &std::path::Path, port: u16, codec: &str) -> Background {
    baresip_phone_dialing(dir, port, codec, None).0
}

/// The same phone, dialing `dial` once it is up; and the TCP port of its control interface
/// (ctrl_tcp: netstring JSON commands).
fn baresip_phone_dialing(
    dir: &std::path::Path,
    port: u16,
    codec: &str,
    dial: Option<&str>,
) -> (Background, u16) {
    baresip_phone_with(dir, port, codec, dial, "")
}

/// The phone with `account` parameters added to its account line (`;auth_user=...`).
fn baresip_phone_with(
    dir: &std::path::Path,
    port: u16,
    codec: &str,
    dial: Option<&str>,
    account: &str,
) -> (Background, u16) {
    baresip_phone_tls(dir, port, codec, dial, account, None)
}

/// The phone, also listening for SIP over TLS on `port` + 1 with `certificate` (a PEM of its
/// certificate and key) when given.
fn baresip_phone_tls(
    dir: &std::path::Path,
    port: u16,
    codec: &str,
    dial: Option<&str>,
    account: &str,
    certificate: Option<&std::path::Path>,
) -> (Background, u16) {
    let home = dir.join("baresip");
    std::fs::create_dir_all(home.join("snd")).unwrap();
    let template = std::fs::read_to_string(peers_dir().join("baresip/config.template")).unwrap();
    let rtp = free_port();
    let ctrl = free_port();
    let config: String = template
        .replace("@SIP_PORT@", &port.to_string())
        .replace("@FREQ@", "880")
        .replace("@SNDDIR@", home.join("snd").to_str().unwrap())
        .replace("@RTP_PORTS@", &format!("{rtp}-{}", rtp + 9))
        .replace("@CTRL_PORT@", &ctrl.to_string())
        .lines()
        // TLS only with a certificate; the phone verifies no one.
        .filter(|l| {
            !l.starts_with("sip_cafile")
                && (certificate.is_some() || !l.starts_with("sip_certificate"))
        })
        .map(|l| match (l.starts_with("sip_certificate"), certificate) {
            (true, Some(pem)) => format!("sip_certificate\t\t{}", pem.display()),
            _ => l.to_string(),
        })
        // G.722 too (spandsp's), beside the template's G.711 and Opus.
        .map(
            |l| match l.starts_with("module") && l.ends_with("g711.so") {
                true => format!("{l}\nmodule\t\t\tg722.so\nmodule\t\t\tsrtp.so\n"),
                false => format!("{l}\n"),
            },
        )
        .collect();
    std::fs::write(home.join("config"), config).unwrap();
    std::fs::write(
        home.join("accounts"),
        format!(
            "<sip:+15550001111@127.0.0.1:{port}>;regint=0;audio_codecs={codec};answermode=auto{account}\n"
        ),
    )
    .unwrap();
    let mut command = Command::new("baresip");
    command.arg("-f").arg(&home).arg("-v");
    if let Some(target) = dial {
        command.arg("-e").arg(format!("/dial {target}"));
    }
    let phone = Background::spawn("baresip", &mut command, dir.join("baresip.log"));
    for _ in 0..50 {
        if phone.log().contains("baresip is ready") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (phone, ctrl)
}

/// Sends `command` with `params` to baresip's ctrl_tcp module (a netstring of JSON).
fn baresip_command(ctrl: u16, command: &str, params: &str) {
    use std::io::Write;
    let json =
        serde_json::json!({"command": command, "params": params, "token": "test"}).to_string();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", ctrl)).expect("baresip's ctrl_tcp");
    stream
        .write_all(format!("{}:{json},", json.len()).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
}

/// The dominant frequency and RMS level of a WAV file, from the rtpengine stand-in's helper
/// (numpy), skipping its first second.
fn heard(wav: &std::path::Path) -> (f64, f64) {
    let out = Command::new("/usr/bin/python3")
        .arg(peers_dir().join("rtpengine/standin_helper.py"))
        .arg("freq")
        .arg(wav)
        .args(["--skip", "1"])
        .output()
        .expect("run standin_helper.py");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {text:?}"))
    };
    (field("freq="), field("rms="))
}

/// `codec` is baresip's only codec; `relay` what watrunk's media must run toward it (`opus`: the
/// payloads pass through; `pcmu`/`pcma`: transcoded).
fn a_whatsapp_call_rings_a_baresip_phone_behind_the_pbx_leg(codec: &str, relay: &str) {
    assert!(
        tool_exists("baresip"),
        "baresip is not installed (scripts/test.sh installs it)"
    );
    let dir = TempDir::new(&format!("pbx-{}", codec.replace('/', "_")));
    let phone_port = free_port();
    let phone = baresip_phone(dir.path(), phone_port, codec);
    let (server, ok, out) = call_through_the_bridge(
        dir.path(),
        phone_port,
        &["--hangup-after", "5", "--expect-hz", "880"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let logs = format!(
        "--- sim call\n{out}\n--- serve\n{}\n--- baresip\n{}",
        server.log(),
        phone.log()
    );
    let call = sim_call_report(&out, &logs);
    assert!(ok, "{logs}");
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["provisional"], serde_json::json!([180]), "{call}");
    assert_eq!(call["violations"], serde_json::json!([]), "{call}");
    assert_eq!(call["media"]["business_sent_first"], true, "{call}");
    let hz = call["media"]["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 880.0).abs() <= 880.0 * 0.02,
        "the user heard {hz} Hz\n{logs}"
    );
    assert_eq!(call["bye_status"], 200, "{call}");
    let up = server.wait_event("media.up", |_| true, Duration::from_secs(5));
    assert_eq!(up["sink_codec"], relay, "{up}");
    let pbx_ended = server.wait_event("pbx.ended", |_| true, Duration::from_secs(5));
    assert_eq!(
        pbx_ended["by"], "local",
        "our BYE ended the PBX leg: {pbx_ended}"
    );
    let ended = server.wait_event("call.ended", |_| true, Duration::from_secs(5));
    assert_eq!(
        ended["server"],
        serde_json::json!({"calls": 0, "media_conns": 0, "media_routes": 0}),
        "{ended}"
    );
    drop(phone);
    let sim_heard = call["media"]["heard_rms"].as_f64().unwrap();
    assert_baresip_and_the_user_heard_each_other(dir.path(), sim_heard, &logs);
}

/// baresip heard the user's 440 Hz and the user baresip's tone (`sim_heard`: its RMS at the
/// user), each within 6 dB of what was sent: the sim's tone is 0.3 of full scale (RMS 0.212);
/// baresip's is what its encoder was given (its sndfile module keeps what it sent, -enc.wav, and
/// what it heard, -dec.wav).
fn assert_baresip_and_the_user_heard_each_other(dir: &std::path::Path, sim_heard: f64, logs: &str) {
    let recording = |suffix: &str| {
        std::fs::read_dir(dir.join("baresip/snd"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("baresip recorded no {suffix}\n{logs}"))
    };
    let (hz, rms) = heard(&recording("-dec.wav"));
    assert!(
        (hz - 440.0).abs() <= 440.0 * 0.02,
        "baresip heard {hz} Hz\n{logs}"
    );
    let within_6_db = |got: f64, sent: f64| (20.0 * (got / sent).log10()).abs() <= 6.0;
    assert!(
        within_6_db(rms, 0.3 / 2f64.sqrt()),
        "baresip heard rms {rms}"
    );
    let (_, baresip_sent) = heard(&recording("-enc.wav"));
    assert!(
        within_6_db(sim_heard, baresip_sent),
        "the user heard rms {sim_heard}, baresip sent {baresip_sent}"
    );
}

fn tool_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_whatsapp_call_reaches_a_pcmu_phone_through_the_pbx_leg() {
    a_whatsapp_call_rings_a_baresip_phone_behind_the_pbx_leg("PCMU/8000/1", "pcmu");
}

#[test]
fn a_whatsapp_call_reaches_a_pcma_phone_through_the_pbx_leg() {
    a_whatsapp_call_rings_a_baresip_phone_behind_the_pbx_leg("PCMA/8000/1", "pcma");
}

#[test]
fn a_whatsapp_call_reaches_an_opus_phone_through_the_pbx_leg_untranscoded() {
    a_whatsapp_call_rings_a_baresip_phone_behind_the_pbx_leg("opus/48000/2", "opus");
}

/// `watrunk serve` between `sim` (Meta, for the calls it places) and a PBX on UDP `pbx_port` of
/// 127.0.0.1, for +15550001111 (its password in `dir/pw`), with `extra` flags.
fn serve_between(dir: &std::path::Path, sim: &SimServe, pbx_port: u16, extra: &[&str]) -> Server {
    let pw = dir.join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    let pbx = format!("sip:127.0.0.1:{pbx_port};transport=udp");
    let meta = sim.addr.to_string();
    let mut args = vec![
        "--number",
        "+15550001111",
        "--sip-password-file",
        pw.to_str().unwrap(),
        "--media-ip",
        "127.0.0.1",
        "--pbx",
        &pbx,
        "--meta-server",
        &meta,
        "--tls-ca",
        sim.cert.to_str().unwrap(),
        "--events",
        "-",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The agent's phone (baresip) calls a WhatsApp user through the PBX leg: watrunk places a
/// business-initiated call to `watrunk sim serve` (Meta: its 407, SHA-256 digest, its checks),
/// rings the phone when Meta rings and answers it when Meta answers; two-way tone, transcoded
/// (`relay` as for the other direction).
fn a_baresip_phone_calls_a_whatsapp_user_through_the_bridge(codec: &str, relay: &str) {
    assert!(
        tool_exists("baresip"),
        "baresip is not installed (scripts/test.sh installs it)"
    );
    let dir = TempDir::new(&format!("pbx-out-{}", codec.replace('/', "_")));
    let sim = sim_serve(dir.path(), "dtls", "localhost", "per-number-secret");
    let phone_port = free_port();
    let server = serve_between(dir.path(), &sim, phone_port, &[]);
    let target = format!("sip:+12195550714@{}", server.udp.unwrap());
    let (phone, _) = baresip_phone_dialing(dir.path(), phone_port, codec, Some(&target));
    let ended = server.wait_event("call.ended", |_| true, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1000));
    let logs = format!(
        "--- sim serve\n{}\n--- serve\n{}\n--- baresip\n{}",
        sim.process.log(),
        server.log(),
        phone.log()
    );
    let call = meta_answered(&sim, &logs);
    assert_eq!(call["digest"], "SHA-256", "{call}");
    assert_eq!(call["from"], "+15550001111", "the business number: {call}");
    assert_eq!(call["media"]["business_sent_first"], true, "{call}");
    let hz = call["media"]["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 880.0).abs() <= 880.0 * 0.02,
        "the user heard {hz} Hz\n{logs}"
    );
    let outgoing = server.wait_event("call.outgoing", |_| true, Duration::from_secs(1));
    assert_eq!(outgoing["via"], "pbx", "{outgoing}");
    assert_eq!(outgoing["to"], "+12195550714", "{outgoing}");
    let up = server.wait_event("media.up", |_| true, Duration::from_secs(1));
    assert_eq!(up["sink_codec"], relay, "{up}");
    assert_eq!(ended["by"], "remote", "the user (sim) hung up: {ended}");
    assert_eq!(ended["meta_call_duration_secs"], 4, "{ended}");
    let pbx_ended = server.wait_event("pbx.ended", |_| true, Duration::from_secs(5));
    assert_eq!(
        pbx_ended["by"], "local",
        "our BYE ended the PBX leg: {pbx_ended}"
    );
    let idle = server.wait_event(
        "call.ended",
        |e| e["server"]["calls"] == 0,
        Duration::from_secs(5),
    );
    assert_eq!(idle["server"]["media_routes"], 0, "{idle}");
    drop(phone);
    let sim_heard = call["media"]["heard_rms"].as_f64().unwrap();
    assert_baresip_and_the_user_heard_each_other(dir.path(), sim_heard, &logs);
}

#[test]
fn a_pcmu_phone_behind_the_pbx_calls_a_whatsapp_user() {
    a_baresip_phone_calls_a_whatsapp_user_through_the_bridge("PCMU/8000/1", "pcmu");
}

#[test]
fn an_opus_phone_behind_the_pbx_calls_a_whatsapp_user_untranscoded() {
    a_baresip_phone_calls_a_whatsapp_user_through_the_bridge("opus/48000/2", "opus");
}

/// SIPp playing the PBX with `scenario` (tests/peers/sipp) on `port`, for one call: over UDP
/// unless `extra` says `-t t1` (TCP).
fn sipp_pbx(dir: &std::path::Path, scenario: &str, port: u16, extra: &[&str]) -> Background {
    let transport: &[&str] = if extra.contains(&"-t") {
        &[]
    } else {
        &["-t", "u1"]
    };
    let phone = Background::spawn(
        "sipp",
        Command::new(tool("sipp"))
            .current_dir(dir)
            .arg("-sf")
            .arg(peers_dir().join("sipp").join(scenario))
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(transport)
            .args(["-mp", &free_port().to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30", "-trace_err"])
            .args(extra),
        dir.join("sipp.log"),
    );
    wait_bound(port, extra.windows(2).any(|w| w == ["-t", "t1"]));
    phone
}

/// Waits (up to 10 s) until something listens on 127.0.0.1:`port` (UDP, or TCP when `tcp`): a
/// peer that is slow to start on a loaded machine must not miss our first INVITE.
fn wait_bound(port: u16, tcp: bool) {
    for _ in 0..200 {
        let taken = if tcp {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
        } else {
            std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()
        };
        if taken {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `watrunk serve` bridging +15550001111 to the PBX on UDP `pbx_port`, and the sim's call to it
/// with `sim_args` (when to hang up, what to expect).
fn call_through_the_bridge(
    dir: &std::path::Path,
    pbx_port: u16,
    sim_args: &[&str],
) -> (Server, bool, String) {
    let pbx = format!("sip:127.0.0.1:{pbx_port};transport=udp");
    call_through_the_bridge_with(dir, &pbx, &[], sim_args)
}

/// The same with `serve_args` for watrunk serve too.
fn call_through_the_bridge_with(
    dir: &std::path::Path,
    pbx: &str,
    serve_args: &[&str],
    sim_args: &[&str],
) -> (Server, bool, String) {
    let pw = dir.join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    let mut args = vec![
        "--number",
        "+15550001111",
        "--sip-password-file",
        pw.to_str().unwrap(),
        "--challenge",
        "--media-ip",
        "127.0.0.1",
        "--pbx",
        pbx,
        "--events",
        "-",
    ];
    args.extend_from_slice(serve_args);
    let server = Server::start(&args);
    let ca = server.state.path().join("localhost.selfsigned.crt");
    let (ok, out) = run(
        Command::new(bin())
            .args(["sim", "call", &server.tls.unwrap().to_string()])
            .args(["--server-name", "localhost", "--to", "+15550001111"])
            .args(sim_args)
            .arg("--password-file")
            .arg(&pw)
            .arg("--ca")
            .arg(&ca),
        Duration::from_secs(40),
    );
    (server, ok, out)
}

/// The call `watrunk sim serve` (Meta) took from us: answered, and no rule of Meta's broken.
/// The sim writes its report once its side of the call has wound down: on a loaded machine that
/// can be a while after watrunk's call.ended.
fn meta_answered(sim: &SimServe, logs: &str) -> serde_json::Value {
    let call = wait_json_event(|| sim.process.log(), "sim.call", Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "no sim.call\n{logs}\n--- sim serve now\n{}",
                sim.process.log()
            )
        });
    assert_eq!(call["status"], 200, "{call}\n{logs}");
    assert_eq!(call["violations"], serde_json::json!([]), "{call}");
    call
}

fn sim_call_report(out: &str, logs: &str) -> serde_json::Value {
    json_lines(out)
        .into_iter()
        .find(|e| e["event"] == "sim.call")
        .unwrap_or_else(|| panic!("no sim.call\n{logs}"))
}

/// One call from the sim through `watrunk serve --pbx` to SIPp playing `scenario`: what each side
/// said. The directory stays for as long as the run.
struct SippRun {
    _dir: TempDir,
    server: Server,
    pbx: Background,
    ok: bool,
    call: serde_json::Value,
    logs: String,
    took: Duration,
}

impl SippRun {
    fn new(tag: &str, scenario: &str, serve_args: &[&str], sim_args: &[&str]) -> SippRun {
        SippRun::with_sipp_args(tag, scenario, &[], serve_args, sim_args)
    }

    /// The same with `sipp_args` for SIPp too (`-set` values for its scenario; `-t t1`: the PBX
    /// leg over TCP).
    fn with_sipp_args(
        tag: &str,
        scenario: &str,
        sipp_args: &[&str],
        serve_args: &[&str],
        sim_args: &[&str],
    ) -> SippRun {
        let dir = TempDir::new(tag);
        let port = free_port();
        let pbx = sipp_pbx(dir.path(), scenario, port, sipp_args);
        let started = std::time::Instant::now();
        let transport = if sipp_args.windows(2).any(|w| w == ["-t", "t1"]) {
            "tcp"
        } else {
            "udp"
        };
        let target = format!("sip:127.0.0.1:{port};transport={transport}");
        let (server, ok, out) =
            call_through_the_bridge_with(dir.path(), &target, serve_args, sim_args);
        let took = started.elapsed();
        let logs = format!(
            "--- sim\n{out}\n--- serve\n{}\n--- sipp\n{}",
            server.log(),
            pbx.log()
        );
        let call = sim_call_report(&out, &logs);
        SippRun {
            _dir: dir,
            server,
            pbx,
            ok,
            call,
            logs,
            took,
        }
    }

    /// SIPp ran its scenario to the end.
    fn sipp_completed(&mut self) -> bool {
        self.pbx.child.wait().unwrap().success()
    }

    /// What the PBX did in its dialog stayed there: the call went on until the PBX's BYE, Meta got
    /// no other request (the sim names any as a violation), the user's stream had no sequence jump
    /// nor a gap over 60 ms; and SIPp ran its scenario to the end (`sipp_checked`: what its
    /// scenario checks).
    fn assert_meta_saw_nothing_until_the_pbx_hung_up(&mut self, sipp_checked: &str) {
        let (call, logs) = (&self.call, &self.logs);
        assert!(self.ok, "{logs}");
        assert_eq!(call["violations"], serde_json::json!([]), "{call}");
        assert_eq!(
            call["ended_by"], "business",
            "the PBX's BYE ended it: {call}\n{logs}"
        );
        let media = &call["media"];
        assert_eq!(media["seq_jumps"], 0, "{call}");
        assert_eq!(media["repeated_seqs"], 0, "{call}");
        let gap = media["max_gap_ms"].as_f64().unwrap();
        assert!(gap <= 60.0, "a {gap} ms gap toward Meta: {call}");
        let logs = logs.clone();
        assert!(self.sipp_completed(), "{sipp_checked}\n{logs}");
    }
}

#[test]
fn a_busy_pbx_extension_is_a_486_to_meta_with_a_q850_reason() {
    let mut run = SippRun::new(
        "pbx-busy",
        "pbx_uas_busy.xml",
        &[],
        &["--hangup-after", "5"],
    );
    let (ok, call, logs) = (run.ok, run.call.clone(), run.logs.clone());
    assert!(!ok, "a refused call fails the sim: {logs}");
    assert_eq!(call["status"], 486, "{call}");
    assert_eq!(call["provisional"], serde_json::json!([180]), "{call}");
    let reason = call["sip_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("Q.850;cause=17;"), "{call}");
    let pbx_ended = run
        .server
        .wait_event("pbx.ended", |_| true, Duration::from_secs(5));
    assert_eq!(pbx_ended["status"], 486, "{pbx_ended}");
    let ended = run
        .server
        .wait_event("call.ended", |_| true, Duration::from_secs(5));
    assert_eq!(ended["status"], 486, "{ended}");
    assert_eq!(ended["server"]["calls"], 0, "{ended}");
    assert!(run.sipp_completed(), "SIPp got the ACK for its 486\n{logs}");
}

#[test]
fn the_pbx_hanging_up_ends_the_whatsapp_call_with_a_bye() {
    the_pbx_hangs_up(&[]);
}

/// The same PBX reached over TCP (`--pbx ...;transport=tcp`): our INVITE and its BYE on a TCP
/// connection of ours and of its own.
#[test]
fn a_pbx_over_tcp_rings_answers_and_hangs_up() {
    the_pbx_hangs_up(&["-t", "t1"]);
}

/// The PBX answers, then hangs up: the WhatsApp leg gets a BYE with the PBX's cause.
fn the_pbx_hangs_up(sipp_args: &[&str]) {
    let mut run = SippRun::with_sipp_args(
        "pbx-bye",
        "pbx_uas_answer_then_bye.xml",
        sipp_args,
        &[],
        &["--hangup-after", "20"],
    );
    let (ok, call, logs) = (run.ok, run.call.clone(), run.logs.clone());
    if sipp_args.contains(&"t1") {
        assert!(
            run.server
                .log()
                .contains("opening a Tcp connection to 127.0.0.1"),
            "the INVITE went over TCP\n{logs}"
        );
    }
    assert!(ok, "{logs}");
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["ended_by"], "business", "{call}");
    assert!(
        call["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("cause=16"),
        "{call}"
    );
    assert!(
        call["duration_secs"].as_u64().unwrap() < 10,
        "the PBX's BYE ended it, not the sim: {call}"
    );
    assert_eq!(call["violations"], serde_json::json!([]), "{call}");
    let pbx_ended = run
        .server
        .wait_event("pbx.ended", |_| true, Duration::from_secs(5));
    assert_eq!(pbx_ended["by"], "remote", "{pbx_ended}");
    let ended = run
        .server
        .wait_event("call.ended", |_| true, Duration::from_secs(5));
    assert_eq!(ended["by"], "local", "{ended}");
    assert_eq!(ended["server"]["calls"], 0, "{ended}");
    assert!(
        run.sipp_completed(),
        "SIPp's scenario completed (200 to its BYE)\n{logs}"
    );
}

/// Asterisk's and FreeSWITCH's in-dialog habits on the PBX leg (hold sendonly, inactive, resume,
/// an UPDATE session refresh, a connected-line re-INVITE without SDP): each answered 200 on the
/// PBX leg, none reaching Meta (the sim names any in-dialog request as a violation), the call
/// alive until the PBX's BYE, and the stream toward Meta continuous throughout.
#[test]
fn the_pbx_legs_hold_refresh_and_connected_line_reinvites_stay_on_the_pbx_leg() {
    let mut run = SippRun::new(
        "pbx-habits",
        "pbx_uas_habits.xml",
        &[],
        &["--hangup-after", "30"],
    );
    let heard = run.call["media"]["heard_packets"].as_u64().unwrap();
    assert!(heard > 150, "{}", run.call);
    run.assert_meta_saw_nothing_until_the_pbx_hung_up("every request of SIPp's got its 200");
}

/// A PBX answering with a codec the trunk never offered (G.729 only): its answer is refused (ACK,
/// then BYE on the PBX leg) and Meta's call is refused with 488 and Q.850 cause 65 (bearer
/// capability not implemented), naming the rule.
#[test]
fn a_pbx_answer_without_a_common_codec_is_a_488_to_meta() {
    let mut run = SippRun::new(
        "pbx-codec",
        "pbx_uas_no_common_codec.xml",
        &[],
        &["--hangup-after", "5"],
    );
    let (ok, call, logs) = (run.ok, run.call.clone(), run.logs.clone());
    assert!(!ok, "{logs}");
    assert_eq!(call["status"], 488, "{call}\n{logs}");
    let reason = call["sip_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("Q.850;cause=65;"), "{call}");
    assert!(reason.contains("no-common-codec"), "{call}");
    let pbx_ended = run
        .server
        .wait_event("pbx.ended", |_| true, Duration::from_secs(5));
    assert_eq!(pbx_ended["by"], "local", "{pbx_ended}");
    assert!(
        run.sipp_completed(),
        "the PBX got its ACK and our BYE\n{logs}"
    );
}

/// A PBX that rings and never answers: its INVITE is cancelled at the ring timeout (2 s here) and
/// Meta gets 480 with Q.850 cause 19 (no answer).
#[test]
fn a_pbx_that_never_answers_is_cancelled_at_the_ring_timeout() {
    let mut run = SippRun::new(
        "pbx-ring",
        "pbx_uas_never_answers.xml",
        &["--pbx-ring-timeout-secs", "2"],
        &["--hangup-after", "5"],
    );
    let (ok, call, logs) = (run.ok, run.call.clone(), run.logs.clone());
    assert!(!ok, "{logs}");
    assert_eq!(call["status"], 480, "{call}\n{logs}");
    let reason = call["sip_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("Q.850;cause=19;"), "{call}");
    assert!(
        run.took < Duration::from_secs(10),
        "given up at the ring timeout: {:?}",
        run.took
    );
    let pbx_ended = run
        .server
        .wait_event("pbx.ended", |_| true, Duration::from_secs(5));
    assert_eq!(
        pbx_ended["status"], 487,
        "the PBX's INVITE was cancelled: {pbx_ended}"
    );
    assert!(
        run.sipp_completed(),
        "SIPp got our CANCEL and its ACK\n{logs}"
    );
}

/// Asterisk's `direct_media`: the PBX moves the media by re-INVITE to another address (here a
/// G.711 agent whose coding is CPython's audioop, playing 1000 Hz). The re-INVITE gets 200 on the
/// PBX leg and never reaches Meta; from then on the user's 440 Hz reaches the new address as PCMU
/// and the new address's 1000 Hz reaches the user, on the call's one stream without a gap.
#[test]
fn a_direct_media_reinvite_moves_the_pbx_legs_audio_and_meta_sees_nothing() {
    let agent_dir = TempDir::new("pbx-direct-media-agent");
    let new_port = free_port();
    let agent = g711_phone(agent_dir.path(), new_port, "pcmu", 1000, 20, 9);
    let new_port = new_port.to_string();
    let mut run = SippRun::with_sipp_args(
        "pbx-direct-media",
        "pbx_uas_direct_media.xml",
        &["-set", "newport", &new_port],
        &[],
        &["--hangup-after", "30"],
    );
    let hz = run.call["media"]["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 1000.0).abs() <= 1000.0 * 0.02,
        "the user heard {hz} Hz, not the new address's tone\n{}",
        run.logs
    );
    run.assert_meta_saw_nothing_until_the_pbx_hung_up("SIPp's re-INVITE got its 200");
    let stream = g711_report(&agent, &run.logs);
    assert_eq!(stream["payload_types"], serde_json::json!([0]), "{stream}");
    let hz = stream["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 440.0).abs() <= 440.0 * 0.02,
        "the new address heard {hz} Hz: {stream}"
    );
    assert!(stream["packets"].as_u64().unwrap() > 100, "{stream}");
}

/// A PBX that vanishes after answering (no BYE; its phone's RTP stops after about 3 s): with
/// `--pbx-rtp-timeout-secs 2`, both legs get a BYE whose Reason says the PBX's RTP stopped.
#[test]
fn a_vanished_pbx_ends_the_whatsapp_call_with_a_reason_after_the_rtp_timeout() {
    let agent_dir = TempDir::new("pbx-vanishes-agent");
    let media_port = free_port();
    let _agent = g711_phone(agent_dir.path(), media_port, "pcmu", 1000, 20, 4);
    let media_port = media_port.to_string();
    let mut run = SippRun::with_sipp_args(
        "pbx-vanishes",
        "pbx_uas_vanishes.xml",
        &["-set", "newport", &media_port],
        &["--pbx-rtp-timeout-secs", "2"],
        &["--hangup-after", "30"],
    );
    let (call, logs) = (run.call.clone(), run.logs.clone());
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["ended_by"], "business", "{call}\n{logs}");
    let reason = call["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("Q.850;cause=41;") && reason.contains("no RTP for 2 s"),
        "{call}"
    );
    // About 3 s of the phone's audio, then the 2 s timeout; not the sim's 30 s.
    assert!(
        run.took < Duration::from_secs(12),
        "took {:?}\n{logs}",
        run.took
    );
    let media = &call["media"];
    let hz = media["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 1000.0).abs() <= 20.0,
        "the user heard {hz} Hz: {call}"
    );
    assert!(run.sipp_completed(), "SIPp got our BYE\n{logs}");
}

/// Asterisk's `100rel=yes`: the PBX rings reliably and must get its PRACK (SIPp checks RAck);
/// the call then goes up, Meta sees one 180 and nothing of the PRACK, and hangs up after 3 s.
#[test]
fn the_pbxs_reliable_180_is_pracked_on_the_pbx_leg_only() {
    let mut run = SippRun::new(
        "pbx-100rel",
        "pbx_uas_100rel.xml",
        &[],
        &["--hangup-after", "3"],
    );
    let (ok, call, logs) = (run.ok, run.call.clone(), run.logs.clone());
    assert!(ok, "{logs}");
    assert_eq!(call["status"], 200, "{call}");
    assert_eq!(call["provisional"], serde_json::json!([180]), "{call}");
    assert_eq!(call["violations"], serde_json::json!([]), "{call}");
    assert_eq!(call["bye_status"], 200, "{call}");
    let media = &call["media"];
    assert_eq!(media["seq_jumps"], 0, "{call}");
    let gap = media["max_gap_ms"].as_f64().unwrap();
    assert!(gap <= 60.0, "a {gap} ms gap toward Meta: {call}");
    assert!(
        run.sipp_completed(),
        "SIPp got its PRACK (RAck checked) and our BYE\n{logs}"
    );
}

/// DTMF across the legs, with payload types that differ: baresip (PCMU, telephone-event 101 in its
/// offer) calls a WhatsApp user; the user's keys (RFC 4733, PT 126 at Meta) reach baresip as
/// events it decodes on its own PT, and the keys baresip sends (its `/sndcode`, RFC 4733 on 101)
/// reach the user as PT 126 events on the 8000 Hz clock.
#[test]
fn dtmf_crosses_the_bridge_both_ways_on_each_legs_payload_type() {
    assert!(
        tool_exists("baresip"),
        "baresip is not installed (scripts/test.sh installs it)"
    );
    let dir = TempDir::new("pbx-dtmf");
    let sim = sim_serve_with(
        dir.path(),
        "dtls",
        "localhost",
        "per-number-secret",
        &["--dtmf", "159#", "--dtmf-after", "1"],
    );
    let phone_port = free_port();
    let server = serve_between(dir.path(), &sim, phone_port, &[]);
    let target = format!("sip:+12195550714@{}", server.udp.unwrap());
    let (phone, ctrl) = baresip_phone_dialing(dir.path(), phone_port, "PCMU/8000/1", Some(&target));
    server.wait_event("pbx.answered", |_| true, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(800));
    baresip_command(ctrl, "sndcode", "2");
    std::thread::sleep(Duration::from_millis(400));
    baresip_command(ctrl, "sndcode", "7");
    server.wait_event("call.ended", |_| true, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(800));
    let logs = format!(
        "--- sim serve\n{}\n--- serve\n{}\n--- baresip\n{}",
        sim.process.log(),
        server.log(),
        phone.log()
    );
    let call = meta_answered(&sim, &logs);
    let media = &call["media"];
    assert_eq!(media["dtmf_sent"], "159#", "{call}");
    assert_eq!(media["dtmf_failure"], serde_json::Value::Null, "{call}");
    assert_eq!(
        media["heard_dtmf"], "27",
        "the user heard baresip's keys: {call}\n{logs}"
    );
    for ms in media["heard_dtmf_ms"].as_array().unwrap() {
        let ms = ms.as_u64().unwrap();
        assert!(
            (40..=400).contains(&ms),
            "a key of {ms} ms on the 8000 Hz clock: {call}"
        );
    }
    let phone_log = phone.log();
    let received: String = phone_log
        .lines()
        .filter(|l| l.contains("end=0"))
        .filter_map(|l| l.split("received event: '").nth(1))
        .filter_map(|rest| rest.chars().next())
        .collect();
    assert_eq!(
        received, "159#",
        "baresip decoded the user's keys on its PT\n{logs}"
    );
}

/// Keys by SIP INFO from the PBX (dtmf-relay and dtmf bodies) reach the user as RFC 4733 (PT 126,
/// 8000 Hz clock); an INFO of another type is refused 415; Meta sees no INFO.
#[test]
fn keys_the_pbx_sends_by_sip_info_reach_the_user_as_rfc_4733() {
    let mut run = SippRun::new(
        "pbx-info",
        "pbx_uas_info_dtmf.xml",
        &[],
        &["--hangup-after", "30"],
    );
    let (call, logs) = (run.call.clone(), run.logs.clone());
    let media = &call["media"];
    assert_eq!(media["heard_dtmf"], "4#", "{call}\n{logs}");
    for ms in media["heard_dtmf_ms"].as_array().unwrap() {
        assert_eq!(ms.as_u64(), Some(100), "our keys last 100 ms: {call}");
    }
    let keys: Vec<serde_json::Value> = run
        .server
        .events()
        .into_iter()
        .filter(|e| e["event"] == "pbx.dtmf")
        .map(|e| e["key"].clone())
        .collect();
    assert_eq!(keys, [serde_json::json!("4"), serde_json::json!("#")]);
    run.assert_meta_saw_nothing_until_the_pbx_hung_up("SIPp's INFOs got 200, 200, 415");
}

/// Kamailio in front of the PBX, challenging every INVITE with 407 (tests/peers/kamailio/
/// pbx-front.cfg): a WhatsApp user's call reaches the phone behind it with our credentials
/// (`--pbx-username`, `--pbx-password-file`), and the phone's call (with its own credentials)
/// reaches a WhatsApp user through it; two-way tone both times.
#[test]
fn calls_cross_a_kamailio_that_challenges_in_front_of_the_pbx_both_ways() {
    assert!(
        tool_exists("baresip"),
        "baresip is not installed (scripts/test.sh installs it)"
    );
    let dir = TempDir::new("pbx-kamailio");
    let sim = sim_serve(dir.path(), "dtls", "localhost", "per-number-secret");
    let pw = dir.path().join("pw");
    let pbx_pw = dir.path().join("pbx-pw");
    std::fs::write(&pbx_pw, "trunk-secret\n").unwrap();
    let (kam_port, phone_port) = (free_port(), free_port());
    let server = serve_between(
        dir.path(),
        &sim,
        kam_port,
        &[
            "--challenge",
            "--pbx-username",
            "watrunk-trunk",
            "--pbx-password-file",
            pbx_pw.to_str().unwrap(),
        ],
    );
    let cfg = std::fs::read_to_string(peers_dir().join("kamailio/pbx-front.cfg"))
        .unwrap()
        .replace("@PORT@", &kam_port.to_string())
        .replace("@WATRUNK_PORT@", &server.udp.unwrap().port().to_string())
        .replace("@PBX_PORT@", &phone_port.to_string())
        .replace("@USERNAME@", "watrunk-trunk")
        .replace("@PASSWORD@", "trunk-secret");
    let cfg_path = dir.path().join("kamailio.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let kamailio = Background::spawn(
        "kamailio",
        Command::new(tool("kamailio"))
            .arg("-f")
            .arg(&cfg_path)
            .args(["-DD", "-E", "-e", "-n", "1", "-P"])
            .arg(dir.path().join("kamailio.pid"))
            .arg("-Y")
            .arg(dir.path()),
        dir.path().join("kamailio.log"),
    );
    std::thread::sleep(Duration::from_millis(1000));

    // A WhatsApp user calls: our INVITE to the PBX is challenged, answered, relayed.
    let (phone, _) = baresip_phone_with(
        dir.path(),
        phone_port,
        "PCMU/8000/1",
        None,
        ";auth_user=watrunk-trunk;auth_pass=trunk-secret",
    );
    let ca = server.state.path().join("localhost.selfsigned.crt");
    let (ok, out) = run(
        Command::new(bin())
            .args(["sim", "call", &server.tls.unwrap().to_string()])
            .args(["--server-name", "localhost", "--to", "+15550001111"])
            .args(["--hangup-after", "4", "--expect-hz", "880"])
            .arg("--password-file")
            .arg(&pw)
            .arg("--ca")
            .arg(&ca),
        Duration::from_secs(40),
    );
    let logs = || {
        format!(
            "--- sim call\n{out}\n--- serve\n{}\n--- kamailio\n{}\n--- baresip\n{}",
            server.log(),
            kamailio.log(),
            phone.log()
        )
    };
    let call = sim_call_report(&out, &logs());
    assert!(ok, "{}", logs());
    assert_eq!(call["status"], 200, "{call}");
    let hz = call["media"]["heard_hz"].as_f64().unwrap();
    assert!((hz - 880.0).abs() <= 880.0 * 0.02, "{call}\n{}", logs());
    let kam = kamailio.log();
    assert!(
        kam.contains(&format!(
            "AUTH-CHALLENGE INVITE from 127.0.0.1:{}",
            server.udp.unwrap().port()
        )),
        "{}",
        logs()
    );
    assert!(
        kam.contains("AUTH-OK INVITE") && kam.contains("user=watrunk-trunk"),
        "{}",
        logs()
    );
    server.wait_event(
        "call.ended",
        |e| e["server"]["calls"] == 0,
        Duration::from_secs(10),
    );
    drop(phone);

    // The phone calls a WhatsApp user through Kamailio, which challenges it.
    let dir2 = dir.path().join("second");
    std::fs::create_dir_all(&dir2).unwrap();
    let target = format!("sip:+12195550714@127.0.0.1:{kam_port}");
    let (phone, _) = baresip_phone_with(
        &dir2,
        phone_port,
        "PCMU/8000/1",
        Some(&target),
        ";auth_user=watrunk-trunk;auth_pass=trunk-secret",
    );
    server.wait_event(
        "call.ended",
        |e| e["direction"] == "outbound",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(800));
    let logs = format!(
        "--- sim serve\n{}\n--- serve\n{}\n--- kamailio\n{}\n--- baresip\n{}",
        sim.process.log(),
        server.log(),
        kamailio.log(),
        phone.log()
    );
    let call = meta_answered(&sim, &logs);
    let hz = call["media"]["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 880.0).abs() <= 880.0 * 0.02,
        "the user heard {hz} Hz\n{logs}"
    );
    assert!(
        kamailio.log().matches("AUTH-OK INVITE").count() >= 2,
        "the phone's INVITE was challenged and accepted too\n{logs}"
    );
    drop(phone);
    assert_baresip_and_the_user_heard_each_other(
        &dir2,
        call["media"]["heard_rms"].as_f64().unwrap(),
        &logs,
    );
}

/// Glare on the PBX leg: a re-INVITE with an offer while our offer (in the 200 to its offerless
/// re-INVITE) waits for the ACK's answer gets 491; the first exchange completes, the retried
/// re-INVITE gets 200, and Meta sees none of it, its stream continuous.
#[test]
fn glare_on_the_pbx_leg_gets_491_there_and_meta_sees_nothing() {
    let mut run = SippRun::new(
        "pbx-glare",
        "pbx_uas_glare.xml",
        &[],
        &["--hangup-after", "30"],
    );
    run.assert_meta_saw_nothing_until_the_pbx_hung_up(
        "SIPp saw 200, 491, then 200 for its re-INVITEs",
    );
}

/// A blind transfer from the PBX: SIPp (the PBX) REFERs the call to extension 202, another SIPp
/// whose answer points at a G.711 phone (CPython's audioop, 1000 Hz). watrunk answers 202, calls
/// 202, moves the call's audio to the phone, tells the PBX in NOTIFYs (100, then 200) and ends
/// the old leg; the user hears the phone, on one SSRC, with no gap, and Meta sees no request.
#[test]
fn a_refer_from_the_pbx_transfers_the_user_to_the_new_target_on_one_stream() {
    the_pbx_transfers("pbx_uas_refer.xml", "pbx_uas_transfer_target.xml");
}

/// An attended transfer: the REFER's Refer-To carries the Replaces of the PBX's consultation call
/// with 202, and our INVITE to 202 carries it (the second SIPp checks it); the rest as above.
#[test]
fn an_attended_refer_carries_its_replaces_to_the_new_target() {
    the_pbx_transfers(
        "pbx_uas_refer_attended.xml",
        "pbx_uas_transfer_target_replaces.xml",
    );
}

/// The PBX (SIPp with `scenario`) transfers the call to 202 (SIPp with `target_scenario`).
fn the_pbx_transfers(scenario: &str, target_scenario: &str) {
    let side = TempDir::new("pbx-refer-target");
    let phone_port = free_port();
    let phone = g711_phone(side.path(), phone_port, "pcmu", 1000, 20, 9);
    let target_port = free_port();
    let mut target = sipp_extension(
        side.path(),
        "sipp-202",
        target_scenario,
        target_port,
        phone_port,
        &[],
    );
    let target_port = target_port.to_string();
    let mut run = SippRun::with_sipp_args(
        "pbx-refer",
        scenario,
        &["-set", "target_port", &target_port],
        &[],
        &["--hangup-after", "5"],
    );
    let (ok, call, logs) = (run.ok, run.call.clone(), run.logs.clone());
    let logs = format!("{logs}\n--- sipp 202\n{}", target.log());
    assert!(ok, "{logs}");
    assert_the_user_heard_on_one_stream(&call, 1000.0, "the transfer target", &logs);
    assert!(
        run.sipp_completed(),
        "the PBX got 202, NOTIFY 100 and 200, and our BYE\n{logs}"
    );
    assert!(
        target.child.wait().unwrap().success(),
        "202 was called and got our BYE when the user hung up\n{logs}"
    );
    let transfer = run
        .server
        .wait_event("pbx.transfer", |_| true, Duration::from_secs(1));
    assert!(
        transfer["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("sip:202@127.0.0.1:")),
        "{transfer}"
    );
    let stream = g711_report(&phone, &logs);
    let hz = stream["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 440.0).abs() <= 440.0 * 0.02,
        "the phone heard {hz} Hz: {stream}"
    );
}

/// A re-INVITE from the PBX with malformed SDP gets 488 on the PBX leg (SIPp checks it); the media
/// goes on as it was (the user's stream continuous, the PBX's audio still relayed) and Meta sees
/// nothing until the PBX's BYE.
#[test]
fn a_malformed_pbx_reinvite_gets_488_and_the_media_goes_on() {
    let mut run = SippRun::new(
        "pbx-bad-reinvite",
        "pbx_uas_bad_reinvite.xml",
        &[],
        &["--hangup-after", "30"],
    );
    run.assert_meta_saw_nothing_until_the_pbx_hung_up("SIPp got 488 for its re-INVITE");
}

#[test]
fn a_whatsapp_call_reaches_a_g722_phone_through_the_pbx_leg() {
    a_whatsapp_call_rings_a_baresip_phone_behind_the_pbx_leg("G722/16000/1", "g722");
}

/// The PBX leg over TLS (`--pbx sip:localhost:PORT;transport=tls`): watrunk verifies the phone's
/// certificate against the CA given with --tls-ca and calls it; two-way tone, and the PBX's BYE
/// comes back over TLS too.
#[test]
fn a_whatsapp_call_reaches_a_phone_over_tls() {
    a_whatsapp_call_reaches_a_phone_over_tls_with(false);
}

/// The PBX leg on RTP/SAVP with SDES keys (RFC 4568) over TLS: baresip requires SRTP
/// (`mediaenc=srtp-mand`) and drops anything that does not authenticate, so each tone crossing
/// proves our protection toward it and our check of its packets.
#[test]
fn a_whatsapp_call_reaches_a_phone_over_tls_with_sdes_srtp() {
    a_whatsapp_call_reaches_a_phone_over_tls_with(true);
}

fn a_whatsapp_call_reaches_a_phone_over_tls_with(sdes: bool) {
    assert!(
        tool_exists("baresip"),
        "baresip is not installed (scripts/test.sh installs it)"
    );
    let dir = TempDir::new(if sdes { "pbx-tls-sdes" } else { "pbx-tls" });
    let (ca, cert, key) = dev_pki(&dir.path().join("pki"));
    let pem = dir.path().join("phone.pem");
    let both = std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&key).unwrap();
    std::fs::write(&pem, both).unwrap();
    let phone_port = free_port_pair();
    let account = if sdes { ";mediaenc=srtp-mand" } else { "" };
    let (phone, _) = baresip_phone_tls(
        dir.path(),
        phone_port,
        "PCMU/8000/1",
        None,
        account,
        Some(&pem),
    );
    let pbx = format!("sip:localhost:{};transport=tls", phone_port + 1);
    let mut serve_args = vec!["--tls-ca", ca.to_str().unwrap()];
    if sdes {
        serve_args.extend(["--pbx-srtp", "sdes"]);
    }
    let (server, ok, out) = call_through_the_bridge_with(
        dir.path(),
        &pbx,
        &serve_args,
        &["--hangup-after", "4", "--expect-hz", "880"],
    );
    std::thread::sleep(Duration::from_millis(1000));
    let logs = format!(
        "--- sim call\n{out}\n--- serve\n{}\n--- baresip\n{}",
        server.log(),
        phone.log()
    );
    let call = sim_call_report(&out, &logs);
    assert!(ok, "{logs}");
    assert_eq!(call["status"], 200, "{call}");
    let hz = call["media"]["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 880.0).abs() <= 880.0 * 0.02,
        "the user heard {hz} Hz\n{logs}"
    );
    assert!(
        server
            .log()
            .contains("opening a Tls connection to localhost"),
        "the INVITE went over TLS, verified as localhost\n{logs}"
    );
    let up = server.wait_event("media.up", |_| true, Duration::from_secs(5));
    let srtp = if sdes {
        serde_json::json!("AES_CM_128_HMAC_SHA1_80")
    } else {
        serde_json::Value::Null
    };
    assert_eq!(up["sink_srtp"], srtp, "{up}");
    let pbx_ended = server.wait_event("pbx.ended", |_| true, Duration::from_secs(5));
    assert_eq!(
        pbx_ended["by"], "local",
        "our BYE ended the PBX leg: {pbx_ended}"
    );
    assert!(phone.log().contains("terminated"), "{logs}");
    drop(phone);
    let sim_heard = call["media"]["heard_rms"].as_f64().unwrap();
    assert_baresip_and_the_user_heard_each_other(dir.path(), sim_heard, &logs);
}

/// FreeSWITCH's `sip_require_timer` on a call from the PBX to a WhatsApp user (SIPp as the PBX):
/// the INVITE requiring session timers is taken, not refused 420; our 200 names the timer; the
/// PBX's UPDATE refresh is answered on its leg and never reaches Meta; the PBX hangs up.
#[test]
fn a_pbx_call_requiring_session_timers_reaches_whatsapp_and_its_refresh_stays_on_its_leg() {
    let run = PbxCalls::run("pbx-uac-timer", "pbx_uac_timer.xml", &[]);
    run.assert_sipp_done_and_the_pbx_hung_up(
        "SIPp's INVITE got a 200 naming the timer, its UPDATE a 200",
    );
}

/// A late offer from the PBX (its INVITE without SDP): our 200 offers, its ACK answers toward a
/// G.711 phone, and the call's media then runs between the phone and the user both ways.
#[test]
fn a_pbx_call_with_a_late_offer_gets_ours_and_its_ack_connects_the_media() {
    let side = TempDir::new("pbx-late-offer-phone");
    let phone_port = free_port();
    let phone = g711_phone(side.path(), phone_port, "pcmu", 1000, 20, 8);
    let port = phone_port.to_string();
    let run = PbxCalls::run(
        "pbx-late-offer",
        "pbx_uac_late_offer.xml",
        &["-set", "phoneport", &port],
    );
    assert!(run.sipp_completed, "our 200 carried an offer\n{}", run.logs);
    let hz = run.call["media"]["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 1000.0).abs() <= 1000.0 * 0.02,
        "the user heard {hz} Hz, not the phone\n{}",
        run.logs
    );
    let stream = g711_report(&phone, &run.logs);
    let hz = stream["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 440.0).abs() <= 440.0 * 0.02,
        "the phone heard {hz} Hz: {stream}"
    );
}

/// SIPp playing a PBX that calls a WhatsApp user (`scenario`, with `sipp_args`) through
/// `watrunk serve`, `watrunk sim serve` as Meta: what each said. Meta's side must have answered
/// and seen no request but the BYE.
struct PbxCalls {
    _dir: TempDir,
    call: serde_json::Value,
    logs: String,
    sipp_completed: bool,
}

impl PbxCalls {
    /// SIPp ran its scenario to the end (`sipp_checked`: what it checks), Meta saw no rule broken,
    /// and the PBX's BYE ended the call.
    fn assert_sipp_done_and_the_pbx_hung_up(&self, sipp_checked: &str) {
        assert!(self.sipp_completed, "{sipp_checked}\n{}", self.logs);
        assert_eq!(
            self.call["violations"],
            serde_json::json!([]),
            "{}",
            self.call
        );
        assert_eq!(
            self.call["ended_by"], "business",
            "the PBX's BYE crossed: {}",
            self.call
        );
    }

    fn run(tag: &str, scenario: &str, sipp_args: &[&str]) -> PbxCalls {
        PbxCalls::run_with(tag, scenario, sipp_args, &[], &[])
    }

    /// The same with `sim_args` for Meta's side (`sim serve`) and `serve_args` for watrunk.
    fn run_with(
        tag: &str,
        scenario: &str,
        sipp_args: &[&str],
        sim_args: &[&str],
        serve_args: &[&str],
    ) -> PbxCalls {
        let dir = TempDir::new(tag);
        let sim = sim_serve_with(
            dir.path(),
            "dtls",
            "localhost",
            "per-number-secret",
            sim_args,
        );
        let pbx_port = free_port();
        let server = serve_between(dir.path(), &sim, pbx_port, serve_args);
        let mut pbx = Background::spawn(
            "sipp uac",
            Command::new(tool("sipp"))
                .current_dir(dir.path())
                .arg(server.udp.unwrap().to_string())
                .arg("-sf")
                .arg(peers_dir().join("sipp").join(scenario))
                .args(["-i", "127.0.0.1", "-p", &pbx_port.to_string(), "-t", "u1"])
                .args(["-mp", &free_port().to_string()])
                .args(["-m", "1", "-nostdin", "-timeout", "30", "-trace_err"])
                .args(sipp_args),
            dir.path().join("sipp.log"),
        );
        let sipp_completed = pbx.child.wait().unwrap().success();
        assert!(
            sipp_completed || server.events().iter().any(|e| e["event"] == "call.ended"),
            "SIPp failed and the call goes on\n--- sipp\n{}\n--- serve\n{}",
            pbx.log(),
            server.log()
        );
        server.wait_event("call.ended", |_| true, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(500));
        let logs = format!(
            "--- sim serve\n{}\n--- serve\n{}\n--- sipp\n{}",
            sim.process.log(),
            server.log(),
            pbx.log()
        );
        let call = meta_answered(&sim, &logs);
        PbxCalls {
            _dir: dir,
            call,
            logs,
            sipp_completed,
        }
    }
}

/// Asterisk's `100rel=required` on a call from the PBX to a WhatsApp user: its INVITE requiring
/// reliable provisionals is taken (not 420); our 180, sent when Meta rings, asks for a PRACK, which
/// is answered on the PBX leg; the call is answered and the PBX hangs up (SIPp checks the 180's
/// Require and RSeq and that the PRACK got 200).
#[test]
fn a_pbx_call_requiring_100rel_gets_a_reliable_180_and_its_prack_answered() {
    let run = PbxCalls::run("pbx-uac-100rel", "pbx_uac_100rel.xml", &[]);
    run.assert_sipp_done_and_the_pbx_hung_up(
        "the 180 asked for a PRACK, which got 200; the INVITE got 200",
    );
}

/// A PBX that makes us the session timer's refresher (`refresher=uas` in its INVITE): our 200 keeps
/// it, and we refresh by UPDATE within the interval, on the PBX leg only (SIPp checks both).
#[test]
fn a_pbx_call_that_makes_us_the_refresher_is_refreshed_by_us() {
    let run = PbxCalls::run_with(
        "pbx-uac-refresher",
        "pbx_uac_timer_refresher.xml",
        &[],
        &["--hangup-after", "30"],
        &[],
    );
    run.assert_sipp_done_and_the_pbx_hung_up(
        "our 200 kept refresher=uas and our UPDATE refreshed the session in time",
    );
}

/// `--pbx-challenge`: the PBX's INVITE is challenged with our digest (407, as for Meta's) besides
/// its source address; baresip answers with the trunk's credentials and its call reaches a
/// WhatsApp user.
#[test]
fn a_challenged_pbx_call_with_the_trunks_credentials_reaches_whatsapp() {
    assert!(
        tool_exists("baresip"),
        "baresip is not installed (scripts/test.sh installs it)"
    );
    let dir = TempDir::new("pbx-challenge");
    let sim = sim_serve(dir.path(), "dtls", "localhost", "per-number-secret");
    let pbx_pw = dir.path().join("pbx-pw");
    std::fs::write(&pbx_pw, "trunk-secret\n").unwrap();
    let phone_port = free_port();
    let server = serve_between(
        dir.path(),
        &sim,
        phone_port,
        &[
            "--pbx-challenge",
            "--pbx-username",
            "watrunk-trunk",
            "--pbx-password-file",
            pbx_pw.to_str().unwrap(),
            "--sip-trace",
        ],
    );
    let target = format!("sip:+12195550714@{}", server.udp.unwrap());
    let (phone, _) = baresip_phone_with(
        dir.path(),
        phone_port,
        "PCMU/8000/1",
        Some(&target),
        ";auth_user=watrunk-trunk;auth_pass=trunk-secret",
    );
    server.wait_event("call.ended", |_| true, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let logs = format!(
        "--- sim serve\n{}\n--- serve\n{}\n--- baresip\n{}",
        sim.process.log(),
        server.log(),
        phone.log()
    );
    meta_answered(&sim, &logs);
    let serve_log = server.log();
    assert!(
        serve_log.contains("SIP/2.0 407 Proxy Authentication Required"),
        "the PBX's first INVITE was challenged\n{logs}"
    );
    assert!(
        serve_log.contains("username=\"watrunk-trunk\""),
        "its second INVITE answered with the trunk's username\n{logs}"
    );
}

/// `--pbx-register`: watrunk registers at the PBX as a trunk (SIPp as the registrar challenges
/// with 401, checks the digest, grants 2 s) and refreshes the binding before it ends.
#[test]
fn watrunk_registers_at_the_pbx_and_refreshes_its_binding() {
    let dir = TempDir::new("pbx-register");
    let pbx_pw = dir.path().join("pbx-pw");
    std::fs::write(&pbx_pw, "trunk-secret\n").unwrap();
    let port = free_port();
    let mut registrar = sipp_pbx(dir.path(), "pbx_registrar.xml", port, &[]);
    let pbx = format!("sip:127.0.0.1:{port};transport=udp");
    let server = Server::start(&[
        "--pbx",
        &pbx,
        "--pbx-register",
        "--pbx-username",
        "watrunk-trunk",
        "--pbx-password-file",
        pbx_pw.to_str().unwrap(),
        "--events",
        "-",
    ]);
    let first = server.wait_event("pbx.registered", |_| true, Duration::from_secs(10));
    assert_eq!(first["expires"], 2, "{first}");
    let refreshed = server.wait_event(
        "pbx.registered",
        |e| e["expires"] == 300,
        Duration::from_secs(10),
    );
    assert_eq!(
        refreshed["registrar"],
        format!("127.0.0.1:{port}"),
        "{refreshed}"
    );
    assert!(
        registrar.child.wait().unwrap().success(),
        "SIPp checked the digest and got the refresh in time\n{}\n{}",
        registrar.log(),
        server.log()
    );
}

/// A PBX behind NAT (Asterisk's `rtp_symmetric=no` peers, phones on a LAN): its SDP names its own
/// RTP port, but its RTP reaches us from another (an SNAT rule rewrites baresip's source ports),
/// and a packet sent straight to the SDP's port is dropped as a NAT drops what it has no mapping
/// for. With symmetric RTP (the default) the user's tone reaches baresip through the NAT's mapping
/// and baresip's tone the user; without it, nothing would reach baresip.
#[test]
fn a_pbx_behind_nat_gets_its_audio_where_its_rtp_comes_from() {
    if !in_private_namespace("a_pbx_behind_nat_gets_its_audio_where_its_rtp_comes_from") {
        return;
    }
    let dir = TempDir::new("pbx-nat");
    let phone_port = free_port();
    let phone = baresip_phone(dir.path(), phone_port, "PCMU/8000/1");
    let config = std::fs::read_to_string(dir.path().join("baresip/config")).unwrap();
    let ports = config
        .lines()
        .find_map(|l| l.strip_prefix("rtp_ports"))
        .map(|p| p.trim().replace('-', ":"))
        .expect("baresip's rtp_ports");
    // The NAT's ports well away from the phone's own, so that no mapping can keep a port as it is.
    let first: u16 = ports.split(':').next().unwrap().parse().unwrap();
    let mapped = if first > 30_000 {
        first - 5_000
    } else {
        first + 5_000
    };
    iptables(&format!(
        "-t nat -A POSTROUTING -p udp --sport {ports} -j SNAT --to-source 127.0.0.1:{mapped}-{}",
        mapped + 9
    ));
    iptables(&format!(
        "-A OUTPUT -p udp --dport {ports} -m conntrack --ctstate NEW -j DROP"
    ));
    let (server, ok, out) = call_through_the_bridge(
        dir.path(),
        phone_port,
        &["--hangup-after", "4", "--expect-hz", "880"],
    );
    std::thread::sleep(Duration::from_millis(1000));
    let logs = format!(
        "--- sim call\n{out}\n--- serve\n{}\n--- baresip\n{}",
        server.log(),
        phone.log()
    );
    let call = sim_call_report(&out, &logs);
    assert!(ok, "{logs}");
    assert_eq!(call["status"], 200, "{call}");
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-L", "-v", "-n"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let logs = format!("{logs}\n--- iptables -t nat\n{nat}");
    let Some(latched) = server
        .events()
        .into_iter()
        .find(|e| e["event"] == "media.latched")
    else {
        panic!("no media.latched event\n{logs}");
    };
    let source: std::net::SocketAddr = latched["source"].as_str().unwrap().parse().unwrap();
    assert!(
        (mapped..mapped + 10).contains(&source.port()),
        "the PBX's RTP came through the NAT's ports {mapped}-: {latched}\n{logs}"
    );
    drop(phone);
    let sim_heard = call["media"]["heard_rms"].as_f64().unwrap();
    assert_baresip_and_the_user_heard_each_other(dir.path(), sim_heard, &logs);
}

/// An attended transfer completed at the PBX (RFC 3891): the phone the agent consulted sends an
/// INVITE with Replaces naming the PBX leg's dialog (SIPp, from the dialog the first SIPp wrote
/// out). It is answered, the user hears the new phone's 1000 Hz on the same stream (one SSRC, no
/// sequence jump, no gap over 60 ms), the replaced leg gets a BYE with a Reason, and Meta sees
/// nothing until the user hangs up.
#[test]
fn an_invite_with_replaces_from_the_pbx_moves_the_user_to_the_new_phone_on_one_stream() {
    let side = TempDir::new("pbx-replacing-phone");
    let phone_port = free_port();
    let phone = g711_phone(side.path(), phone_port, "pcmu", 1000, 20, 9);
    let dialog_file = side.path().join("dialog.csv");
    let (dir, file) = (side.path().to_path_buf(), dialog_file.clone());
    let replacing = std::thread::spawn(move || {
        for _ in 0..200 {
            if file.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let us = text
            .lines()
            .nth(1)
            .and_then(|l| l.split(';').nth(3))
            .unwrap_or_else(|| panic!("the PBX wrote no dialog: {text:?}"))
            .to_string();
        let mut sipp = Background::spawn(
            "sipp replaces",
            Command::new(tool("sipp"))
                .current_dir(&dir)
                .arg(&us)
                .arg("-sf")
                .arg(peers_dir().join("sipp/pbx_uac_replaces.xml"))
                .arg("-inf")
                .arg(&file)
                .args(["-i", "127.0.0.1", "-p", &free_port().to_string()])
                .args(["-mp", &free_port().to_string(), "-t", "u1"])
                .args(["-m", "1", "-nostdin", "-timeout", "30", "-trace_err"])
                .args(["-set", "newport", &phone_port.to_string()]),
            dir.join("sipp-replaces.log"),
        );
        let ok = sipp.child.wait().unwrap().success();
        (ok, sipp.log())
    });
    let mut run = SippRun::with_sipp_args(
        "pbx-replaced",
        "pbx_uas_replaced.xml",
        &["-set", "dialog_file", dialog_file.to_str().unwrap()],
        &[],
        &["--hangup-after", "6"],
    );
    let (replaced_ok, replacing_log) = replacing.join().unwrap();
    let (call, logs) = (run.call.clone(), run.logs.clone());
    let logs = format!("{logs}\n--- sipp replacing\n{replacing_log}");
    assert!(run.ok, "{logs}");
    assert_the_user_heard_on_one_stream(&call, 1000.0, "the replacing phone", &logs);
    assert!(
        run.sipp_completed(),
        "the replaced leg got our BYE with Q.850 cause 16 and 'replaced'\n{logs}"
    );
    assert!(
        replaced_ok,
        "the replacing INVITE got 200, and our BYE when the user hung up\n{logs}"
    );
    let replaced = run
        .server
        .wait_event("pbx.replaced", |_| true, Duration::from_secs(1));
    assert!(replaced["replaced"].is_string(), "{replaced}");
    let stream = g711_report(&phone, &logs);
    let hz = stream["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 440.0).abs() <= 440.0 * 0.02,
        "the phone heard {hz} Hz: {stream}"
    );
}

/// Two PBX trunks (`[[pbx]]` twice, each with its `numbers`; the second PBX on 127.0.0.2): each
/// business number's WhatsApp call rings its own PBX and no other.
#[test]
fn two_pbx_trunks_each_take_their_own_numbers_calls() {
    let dir = TempDir::new("pbx-two-trunks");
    let (port_a, port_b) = (free_port(), free_port());
    let pbx = |name: &'static str, ip: &str, port: u16| {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        Background::spawn(
            name,
            Command::new(tool("sipp"))
                .current_dir(&home)
                .arg("-sf")
                .arg(peers_dir().join("sipp/pbx_uas_answer_then_bye.xml"))
                .args(["-i", ip, "-p", &port.to_string(), "-t", "u1"])
                .args(["-mp", &free_port().to_string()])
                .args(["-m", "1", "-nostdin", "-timeout", "30", "-trace_err"]),
            home.join("sipp.log"),
        )
    };
    let mut a = pbx("pbx-a", "127.0.0.1", port_a);
    let mut b = pbx("pbx-b", "127.0.0.2", port_b);
    std::thread::sleep(Duration::from_millis(500));
    let config = dir.path().join("watrunk.toml");
    std::fs::write(
        &config,
        format!(
            "[[pbx]]\ntarget = \"sip:127.0.0.1:{port_a};transport=udp\"\nnumbers = [\"+15550001111\"]\n\
             [[pbx]]\ntarget = \"sip:127.0.0.2:{port_b};transport=udp\"\nnumbers = [\"+15550002222\"]\n"
        ),
    )
    .unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    let server = Server::start(&[
        "--number",
        "+15550001111",
        "--number",
        "+15550002222",
        "--sip-password-file",
        pw.to_str().unwrap(),
        "--media-ip",
        "127.0.0.1",
        "--config",
        config.to_str().unwrap(),
        "--events",
        "-",
    ]);
    let ca = server.state.path().join("localhost.selfsigned.crt");
    let call = |to: &str| {
        run(
            Command::new(bin())
                .args(["sim", "call", &server.tls.unwrap().to_string()])
                .args([
                    "--server-name",
                    "localhost",
                    "--to",
                    to,
                    "--hangup-after",
                    "6",
                ])
                .arg("--password-file")
                .arg(&pw)
                .arg("--ca")
                .arg(&ca),
            Duration::from_secs(30),
        )
    };
    let logs = |a: &Background, b: &Background, out: &str| {
        format!(
            "--- sim\n{out}\n--- serve\n{}\n--- pbx a\n{}\n--- pbx b\n{}",
            server.log(),
            a.log(),
            b.log()
        )
    };
    let (ok, out) = call("+15550002222");
    assert!(ok, "{}", logs(&a, &b, &out));
    let b_took_it = b.child.wait().unwrap().success();
    assert!(
        b_took_it,
        "the second PBX took +15550002222's call\n{}",
        logs(&a, &b, &out)
    );
    let a_waits = a.child.try_wait().unwrap().is_none();
    assert!(
        a_waits,
        "the first PBX saw nothing of it (still waiting for its call)\n{}",
        logs(&a, &b, &out)
    );
    let (ok, out) = call("+15550001111");
    assert!(ok, "{}", logs(&a, &b, &out));
    let a_took_it = a.child.wait().unwrap().success();
    assert!(
        a_took_it,
        "the first PBX took +15550001111's call\n{}",
        logs(&a, &b, &out)
    );
}

/// What the user (the sim) heard: `hz` within 2 % (`who` sent it), on one SSRC with no sequence
/// jump and no gap over 60 ms, and no rule of Meta's broken.
fn assert_the_user_heard_on_one_stream(call: &serde_json::Value, hz: f64, who: &str, logs: &str) {
    assert_eq!(call["violations"], serde_json::json!([]), "{call}");
    let media = &call["media"];
    let heard = media["heard_hz"].as_f64().unwrap();
    assert!(
        (heard - hz).abs() <= hz * 0.02,
        "the user heard {heard} Hz, not {who}\n{logs}"
    );
    assert_eq!(
        media["business_ssrcs"].as_array().map(Vec::len),
        Some(1),
        "one SSRC throughout: {call}"
    );
    assert_eq!(media["seq_jumps"], 0, "{call}");
    let gap = media["max_gap_ms"].as_f64().unwrap();
    assert!(gap <= 60.0, "a {gap} ms gap toward Meta: {call}");
}

/// SIPp as a target extension of a transfer (`scenario`, `-p port`) whose answer points at a phone
/// on `phone_port`, with `extra` SIPp arguments.
fn sipp_extension(
    dir: &std::path::Path,
    name: &'static str,
    scenario: &str,
    port: u16,
    phone_port: u16,
    extra: &[&str],
) -> Background {
    let extension = Background::spawn(
        name,
        Command::new(tool("sipp"))
            .current_dir(dir)
            .arg("-sf")
            .arg(peers_dir().join("sipp").join(scenario))
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-t", "u1"])
            .args(["-mp", &free_port().to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30", "-trace_err"])
            .args(["-set", "newport", &phone_port.to_string()])
            .args(extra),
        dir.join(format!("{name}.log")),
    );
    wait_bound(port, false);
    extension
}

/// Two transfers in one call: the PBX transfers the user to 202 (REFER), and 202, once it is the
/// PBX leg, transfers the user on to 203 (a REFER of its own). The user hears 203's 1500 Hz at the
/// end, on one SSRC with no sequence jump and no gap over 60 ms, and Meta sees nothing until the
/// user hangs up; each SIPp runs its scenario to the end (202 and the first leg got their NOTIFYs
/// and BYEs).
#[test]
fn a_transferred_call_can_be_transferred_again_by_its_new_pbx_leg() {
    let side = TempDir::new("pbx-second-transfer");
    let (phone_202, phone_203) = (free_port(), free_port());
    let _p202 = g711_phone(side.path(), phone_202, "pcmu", 1000, 20, 10);
    let p203 = g711_phone(side.path(), phone_203, "pcmu", 1500, 20, 10);
    let (port_202, port_203) = (free_port(), free_port());
    let mut ext_203 = sipp_extension(
        side.path(),
        "sipp-203",
        "pbx_uas_transfer_target.xml",
        port_203,
        phone_203,
        &[],
    );
    let mut ext_202 = sipp_extension(
        side.path(),
        "sipp-202",
        "pbx_uas_transfer_target_refers.xml",
        port_202,
        phone_202,
        &["-set", "target_port", &port_203.to_string()],
    );
    let mut run = SippRun::with_sipp_args(
        "pbx-refer-twice",
        "pbx_uas_refer.xml",
        &["-set", "target_port", &port_202.to_string()],
        &[],
        &["--hangup-after", "7"],
    );
    let (call, logs) = (run.call.clone(), run.logs.clone());
    let logs = format!(
        "{logs}\n--- sipp 202\n{}\n--- sipp 203\n{}",
        ext_202.log(),
        ext_203.log()
    );
    assert!(run.ok, "{logs}");
    assert_the_user_heard_on_one_stream(&call, 1500.0, "203", &logs);
    assert!(
        run.sipp_completed(),
        "the first PBX leg: 202, NOTIFYs, BYE\n{logs}"
    );
    assert!(
        ext_202.child.wait().unwrap().success(),
        "202: answered, its REFER got 202 and NOTIFYs, then our BYE\n{logs}"
    );
    assert!(
        ext_203.child.wait().unwrap().success(),
        "203: answered, and our BYE when the user hung up\n{logs}"
    );
    let transfers: Vec<String> = run
        .server
        .events()
        .iter()
        .filter(|e| e["event"] == "pbx.transfer")
        .map(|e| e["target"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(transfers.len(), 2, "{transfers:?}");
    assert!(transfers[1].starts_with("sip:203@"), "{transfers:?}");
    let stream = g711_report(&p203, &logs);
    let hz = stream["heard_hz"].as_f64().unwrap();
    assert!(
        (hz - 440.0).abs() <= 440.0 * 0.02,
        "203's phone heard {hz} Hz: {stream}"
    );
}

/// Local ringback (`--pbx-ringback eu`): the PBX calls a WhatsApp user who lets it ring 3 s; the
/// PBX gets 183 with our answer at once and its phone hears our 425 Hz ring tone in its first
/// second, then the user's 1000 Hz once the user answers (SIPp checks the 183's SDP).
#[test]
fn a_pbx_caller_hears_our_ringback_while_the_user_rings_then_the_user() {
    let side = TempDir::new("pbx-ringback-phone");
    let phone_port = free_port();
    let phone = g711_phone(side.path(), phone_port, "pcmu", 880, 20, 9);
    let run = PbxCalls::run_with(
        "pbx-uac-ringback",
        "pbx_uac_ringback.xml",
        &["-set", "phoneport", &phone_port.to_string()],
        &[
            "--answer-after",
            "3",
            "--tone-hz",
            "1000",
            "--hangup-after",
            "30",
        ],
        &["--pbx-ringback", "eu"],
    );
    assert!(run.sipp_completed, "183 with SDP, then 200\n{}", run.logs);
    assert_eq!(
        run.call["violations"],
        serde_json::json!([]),
        "{}",
        run.call
    );
    let stream = g711_report(&phone, &run.logs);
    let early = stream["early_hz"].as_f64().unwrap_or_default();
    assert!(
        (early - 425.0).abs() <= 425.0 * 0.02,
        "the phone's first second: {early} Hz, not our ringback: {stream}\n{}",
        run.logs
    );
    let heard = stream["heard_hz"].as_f64().unwrap_or_default();
    assert!(
        (heard - 1000.0).abs() <= 1000.0 * 0.02,
        "then the user's 1000 Hz: {stream}"
    );
}

/// A PBX that cannot be reached at all (nothing listens on its TCP port): Meta's call is refused
/// at once with 503 and a Reason that says what happened (the connection was refused), not after
/// Timer B as "no answer (timeout)".
#[test]
fn an_unreachable_pbx_is_a_503_to_meta_saying_why_at_once() {
    let dir = TempDir::new("pbx-refused");
    let closed = free_port();
    let started = std::time::Instant::now();
    let (server, ok, out) = call_through_the_bridge_with(
        dir.path(),
        &format!("sip:127.0.0.1:{closed};transport=tcp"),
        &[],
        &["--hangup-after", "3"],
    );
    let took = started.elapsed();
    let logs = format!("--- sim call\n{out}\n--- serve\n{}", server.log());
    let call = sim_call_report(&out, &logs);
    assert!(!ok, "{logs}");
    assert_eq!(call["status"], 503, "{call}");
    let reason = call["sip_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("could not be sent") && reason.contains("refused"),
        "{call}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}: {call}");
}

/// Scale-out (docs/scale-out.md): Kamailio with examples/kamailio-scale-out.cfg and its dispatcher
/// list as they are, in a private network namespace holding their addresses (Meta's side
/// 203.0.113.5, the private side 10.0.0.1, two watrunk instances: 10.0.0.11 port 5071 and 10.0.0.12
/// port 5072, SIP and media), and `sim load` as Meta over TLS to Kamailio.
/// 100 calls are spread over both instances, each call's media going straight to its instance's
/// own address. Then, with 20 calls live, one instance gets SIGTERM: it drains (its OPTIONS answer
/// turns 503 and the dispatcher marks it down), new calls all go to the other, every live call on
/// both runs on with audio both ways until the user hangs up, and the drained instance exits 0.
#[test]
fn a_kamailio_dispatcher_spreads_calls_over_two_watrunk_instances_and_drains_one() {
    // Kamailio 5.6 crashed (SIGSEGV in its own timer) in about 1 run of 10 here: such a run is
    // run again, once; any other failure is not.
    if !in_private_namespace_retrying(
        "a_kamailio_dispatcher_spreads_calls_over_two_watrunk_instances_and_drains_one",
        Some("KAMAILIO CRASHED"),
    ) {
        return;
    }
    for addr in [
        "203.0.113.5",
        "203.0.113.9",
        "10.0.0.1",
        "10.0.0.11",
        "10.0.0.12",
    ] {
        let ok = Command::new("ip")
            .args(["addr", "add", &format!("{addr}/32"), "dev", "lo"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip addr add {addr}/32 dev lo");
    }
    let dir = TempDir::new("scale-out");
    // Kamailio's certificate: for Meta's side, and for its private address, which its
    // Record-Route names and the instances verify when they send a BYE through it.
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../certs/gen-dev-ca.sh");
    let (ok, out) = run(
        Command::new("sh")
            .arg(script)
            .arg(dir.path())
            .args(["localhost", "IP:10.0.0.1,IP:203.0.113.5"]),
        Duration::from_secs(30),
    );
    assert!(ok, "gen-dev-ca.sh: {out}");
    let ca = dir.path().join("ca.crt");
    let tls_cfg = std::fs::read_to_string(peers_dir().join("kamailio/tls.cfg"))
        .unwrap()
        .replace("@CERT@", dir.path().join("server.crt").to_str().unwrap())
        .replace("@KEY@", dir.path().join("server.key").to_str().unwrap());
    std::fs::write(dir.path().join("tls.cfg"), tls_cfg).unwrap();
    let examples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let kamailio = Background::spawn(
        "kamailio",
        Command::new(tool("kamailio"))
            .arg("-f")
            .arg(examples.join("kamailio-scale-out.cfg"))
            .args(["-DD", "-E", "-e", "-P"])
            .arg(dir.path().join("kamailio.pid"))
            .arg("-Y")
            .arg(dir.path())
            .arg("-A")
            .arg(format!(
                "TLSCFG=\"{}\"",
                dir.path().join("tls.cfg").display()
            ))
            .arg("-A")
            .arg(format!(
                "DSLIST=\"{}\"",
                examples.join("kamailio-scale-out.list").display()
            ))
            .args(["-A", "DS_PING_INTERVAL=1"]),
        dir.path().join("kamailio.log"),
    );
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "per-number-secret\n").unwrap();
    // Two numbers, each with its own agent (a `sim load` plays it), so that two loads can run
    // at once: the calls live across the drain, and the calls placed after it.
    let agents = [
        format!("203.0.113.9:{}", free_port()),
        format!("203.0.113.9:{}", free_port()),
    ];
    let config = dir.path().join("watrunk.toml");
    let mut toml = String::new();
    for (number, agent) in ["+15550001111", "+15550002222"].iter().zip(&agents) {
        toml.push_str(&format!(
            "[[number]]\nnumber = \"{number}\"\npassword_file = \"{}\"\nchallenge = true\nsink = \"{agent}\"\n",
            pw.display()
        ));
    }
    std::fs::write(&config, toml).unwrap();
    // Each its own hostname (so its own digest realm: an answer to the other's 407 gets a fresh
    // 407, not a 403) and its own address for SIP and media.
    let instance = |port: u16, address: &str| {
        let tls = format!("{address}:{port}");
        Server::start_as(
            &["--hostname", address, "--tls", &tls],
            &[
                "--config",
                config.to_str().unwrap(),
                // Behind a proxy every source is the proxy: no bans (docs/scale-out.md).
                "--auth-max-failures",
                "0",
                "--media-ip",
                address,
                "--tls-ca",
                ca.to_str().unwrap(),
                "--events",
                "-",
                "--api",
                "off",
            ],
        )
    };
    let mut a = instance(5071, "10.0.0.11");
    let b = instance(5072, "10.0.0.12");
    wait_tcp("203.0.113.5:5061".parse().unwrap(), Duration::from_secs(10));
    // `sim load` as Meta calling number `number`: `calls` at a time, `total` in all, each held
    // `hold` seconds.
    let load = |tag: &str, number: usize, calls: &str, total: &str, hold: &str| {
        let to = ["+15550001111", "+15550002222"][number];
        Background::spawn(
            "sim load",
            Command::new(bin())
                .args(["sim", "load", "--target", "203.0.113.5:5061", "--to", to])
                .args(["--server-name", "localhost", "--media-ip", "203.0.113.9"])
                .args([
                    "--sink",
                    &agents[number],
                    "--calls",
                    calls,
                    "--total",
                    total,
                ])
                .args(["--rate", "25", "--hold", hold])
                .arg("--password-file")
                .arg(&pw)
                .arg("--ca")
                .arg(&ca),
            dir.path().join(format!("{tag}.log")),
        )
    };
    let count = |server: &Server, name: &str| {
        server
            .events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .count()
    };
    // The last lines of each log (the inner run's output goes through a pipe read at its end:
    // whole logs would fill it), and whether Kamailio itself crashed.
    let logs = |runs: &[&Background]| {
        let tail = |text: String| last_lines(&text, 30);
        let mut text = String::new();
        for r in runs {
            text.push_str(&format!("--- {}\n{}\n", r.log.display(), tail(r.log())));
        }
        let crashed = kamailio
            .log()
            .lines()
            .find(|l| l.contains("exited by a signal"))
            .map(|l| format!("KAMAILIO CRASHED (a fault of Kamailio's, not watrunk's): {l}\n"))
            .unwrap_or_default();
        format!(
            "{crashed}{text}--- instance A\n{}\n--- instance B\n{}\n--- kamailio\n{}",
            tail(a.log()),
            tail(b.log()),
            tail(kamailio.log())
        )
    };
    // The sim.load line of a finished run, which must have set up every call with audio both
    // ways (no silent call, little loss).
    let finished = |run: &mut Background, calls: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = run.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sim load runs on: {}",
                last_lines(&run.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let report = json_lines(&run.log())
            .into_iter()
            .find(|e| e["event"] == "sim.load")
            .unwrap_or_else(|| panic!("no sim.load line: {}", last_lines(&run.log(), 30)));
        let crashed = kamailio
            .log()
            .lines()
            .any(|l| l.contains("exited by a signal"));
        assert!(
            !crashed,
            "KAMAILIO CRASHED (a fault of Kamailio's, not watrunk's)\n{}",
            last_lines(&kamailio.log(), 30)
        );
        assert!(status.success(), "{report}");
        assert_eq!(report["established"], calls, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
        assert_eq!(report["silent_calls"], 0, "{report}");
        for way in ["to_agent", "to_meta"] {
            let loss = report["loss_pct"][way].as_f64().unwrap();
            assert!(loss < 5.0, "{way} lost {loss} %: {report}");
        }
        report
    };

    // 100 calls, 25 at a time, spread over both instances.
    let mut spread = load("spread", 0, "25", "100", "1");
    finished(&mut spread, 100);
    let (on_a, on_b) = (count(&a, "media.up"), count(&b, "media.up"));
    assert!(
        on_a > 0 && on_b > 0 && on_a + on_b == 100,
        "both instances take a share of the 100 calls: A {on_a}, B {on_b}\n{}",
        logs(&[&spread])
    );
    // Each call's ICE pair: the instance's own media address and Meta's, no proxy between.
    for (server, media) in [(&a, "10.0.0.11:"), (&b, "10.0.0.12:")] {
        let pairs: Vec<_> = server
            .events()
            .into_iter()
            .filter(|e| e["event"] == "media.ice")
            .collect();
        assert_eq!(pairs.len(), count(server, "media.up"), "{}", logs(&[]));
        for pair in pairs {
            let (local, remote) = (pair["local"].as_str(), pair["remote"].as_str());
            assert!(
                local.is_some_and(|l| l.starts_with(media))
                    && remote.is_some_and(|r| r.starts_with("203.0.113.9:")),
                "media between {media} and Meta's 203.0.113.9: {pair}"
            );
        }
    }

    // 20 calls live on both when A is told to stop.
    let mut live = load("live", 0, "20", "20", "12");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(&a, "media.up") + count(&b, "media.up") < 120 {
        assert!(
            std::time::Instant::now() < deadline,
            "not 20 calls up\n{}",
            logs(&[&live])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (live_a, live_b) = (count(&a, "media.up") - on_a, count(&b, "media.up") - on_b);
    assert!(
        live_a > 0 && live_b > 0,
        "live calls on both: A {live_a}, B {live_b}"
    );
    println!("scale-out: of 100 calls A took {on_a}, B {on_b}; live at the drain: A {live_a}, B {live_b}");
    a.signal("TERM");
    a.wait_event(
        "server.draining",
        |e| e["calls"] == live_a,
        Duration::from_secs(5),
    );
    // Its keepalive answer turns 503 and the dispatcher takes it out, and only it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !kamailio.log().contains("DST-DOWN sip:10.0.0.11:5071") {
        assert!(
            std::time::Instant::now() < deadline,
            "the dispatcher did not mark the draining instance down\n{}",
            logs(&[&live])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !kamailio.log().contains("DST-DOWN sip:10.0.0.12:5072"),
        "{}",
        logs(&[&live])
    );

    // New calls go to B only.
    let mut after = load("after", 1, "10", "10", "1");
    finished(&mut after, 10);
    assert_eq!(
        count(&a, "media.up"),
        on_a + live_a,
        "no new call on the draining instance"
    );
    assert_eq!(
        count(&b, "media.up"),
        on_b + live_b + 10,
        "{}",
        logs(&[&after])
    );

    // The live calls, on either instance, ran their course with audio both ways.
    finished(&mut live, 20);
    let exit = a.wait_exit(Duration::from_secs(15));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the drained instance exits 0 once its calls are over: {exit:?}\n{}",
        last_lines(&a.log(), 30)
    );
    for (name, server, calls) in [("A", &a, on_a + live_a), ("B", &b, on_b + live_b + 10)] {
        let ended = || {
            server
                .events()
                .into_iter()
                .filter(|e| e["event"] == "call.ended")
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ended().len() < calls && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let ended = ended();
        assert_eq!(
            ended.len(),
            calls,
            "{name}: {}",
            last_lines(&server.log(), 30)
        );
        assert!(
            ended.iter().all(|e| e["by"] == "remote"),
            "{name}: every call ended by the user's BYE, none by the drain: {ended:?}"
        );
    }
}

/// The last `n` lines of a log.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
