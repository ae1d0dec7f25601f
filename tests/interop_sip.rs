//! Real SIP peers, no mocks: SIPp (a third-party UAC with its own digest code) against `watrunk serve
//! --challenge` over UDP, TCP and TLS (through stunnel), and Kamailio (a real 407-checking proxy, MD5 and
//! SHA-256) accepting `watrunk probe`'s Proxy-Authorization.

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const NUMBER: &str = "15550001111";
const PASSWORD: &str = "s3cret-from-meta";

fn challenging_server(dir: &Path) -> Server {
    let pw = dir.join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    Server::start(&[
        "--challenge",
        "--sip-password-file",
        pw.to_str().unwrap(),
        "--sip-username",
        NUMBER,
    ])
}

/// The scenario with the final status the test expects after the authenticated INVITE.
fn scenario(dir: &Path, expected_final: u16, tls: bool) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(peers_dir().join("sipp/uac_auth_invite.xml")).unwrap();
    text = text.replace("EXPECTED_FINAL", &expected_final.to_string());
    if tls {
        text = text
            .replace("SIP/2.0/[transport]", "SIP/2.0/TLS")
            .replace(";transport=[transport]", ";transport=tls");
    }
    let p = dir.join(format!("uac_{expected_final}_{tls}.xml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn sipp(
    dir: &Path,
    scenario: &Path,
    transport: &str,
    target: SocketAddr,
    password: &str,
    calls: u32,
) -> (bool, String) {
    let local_port = free_port();
    let mut cmd = Command::new(tool("sipp"));
    cmd.current_dir(dir)
        .arg("-sf")
        .arg(scenario)
        .args(["-s", NUMBER, "-au", NUMBER, "-ap", password])
        .args(["-auth_uri", &format!("{NUMBER}@{target}")])
        .args([
            "-t",
            transport,
            "-i",
            "127.0.0.1",
            "-p",
            &local_port.to_string(),
        ])
        .args([
            "-m",
            &calls.to_string(),
            "-r",
            "20",
            "-nostdin",
            "-timeout",
            "30",
            "-timeout_error",
            "-trace_err",
        ])
        .arg(target.to_string());
    run(&mut cmd, Duration::from_secs(60))
}

#[test]
fn sipp_uac_with_407_digest_over_udp_and_tcp() {
    let dir = TempDir::new("sipp");
    let mut server = challenging_server(dir.path());
    for (transport, target) in [("u1", server.udp.unwrap()), ("t1", server.tcp.unwrap())] {
        let (ok, out) = sipp(
            dir.path(),
            &scenario(dir.path(), 503, false),
            transport,
            target,
            PASSWORD,
            5,
        );
        assert!(
            ok,
            "SIPp {transport}: authenticated INVITEs did not all reach the 503 stage:\n{out}\n{}",
            server.log()
        );
        let (ok, out) = sipp(
            dir.path(),
            &scenario(dir.path(), 403, false),
            transport,
            target,
            "wrong-password",
            1,
        );
        assert!(
            ok,
            "SIPp {transport}: a wrong password did not get 403:\n{out}"
        );
    }
    server.assert_alive();
}

#[test]
fn sipp_uac_with_407_digest_over_tls_through_stunnel() {
    let dir = TempDir::new("sipp-tls");
    let mut server = challenging_server(dir.path());
    let accept = free_port();
    let conf = dir.path().join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\ndebug = 5\n[sip-tls-out]\nclient = yes\naccept = 127.0.0.1:{accept}\nconnect = {}\nverifyPeer = yes\nCAfile = {}\ncheckHost = localhost\nsni = localhost\n",
            server.tls.unwrap(),
            server.cert_path().display()
        ),
    )
    .unwrap();
    let stunnel = Background::spawn(
        "stunnel",
        Command::new(tool("stunnel4")).arg(&conf),
        dir.path().join("stunnel.log"),
    );
    wait_tcp(
        format!("127.0.0.1:{accept}").parse().unwrap(),
        Duration::from_secs(10),
    );
    let target: SocketAddr = format!("127.0.0.1:{accept}").parse().unwrap();
    let (ok, out) = sipp(
        dir.path(),
        &scenario(dir.path(), 503, true),
        "t1",
        target,
        PASSWORD,
        3,
    );
    assert!(
        ok,
        "SIPp over TLS: {out}\nstunnel:\n{}\nwatrunk:\n{}",
        stunnel.log(),
        server.log()
    );
    assert!(
        stunnel.log().contains("Certificate accepted")
            || stunnel.log().contains("Certificate verification succeeded")
            || stunnel.log().contains("verify ok"),
        "stunnel did not verify watrunk's certificate:\n{}",
        stunnel.log()
    );
    let (ok, out) = sipp(
        dir.path(),
        &scenario(dir.path(), 403, true),
        "t1",
        target,
        "wrong-password",
        1,
    );
    assert!(ok, "SIPp over TLS, wrong password: {out}");
    server.assert_alive();
}

struct Kamailio {
    _proc: Background,
    tls: SocketAddr,
}

fn kamailio(dir: &Path, target: SocketAddr, algorithm: &str) -> Kamailio {
    let (_ca, cert, key) = dev_pki(&dir.join("pki"));
    let tls_port = free_port();
    let udp_port = free_port();
    let tls_cfg = dir.join("tls.cfg");
    let t = std::fs::read_to_string(peers_dir().join("kamailio/tls.cfg")).unwrap();
    std::fs::write(
        &tls_cfg,
        t.replace("@CERT@", cert.to_str().unwrap())
            .replace("@KEY@", key.to_str().unwrap()),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(peers_dir().join("kamailio/auth-proxy.cfg"))
        .unwrap()
        .replace("@UDP_PORT@", &udp_port.to_string())
        .replace("@TLS_PORT@", &tls_port.to_string())
        .replace("@TLS_CFG@", tls_cfg.to_str().unwrap())
        .replace("@ALGORITHM@", algorithm)
        .replace("@PASSWORD@", PASSWORD)
        .replace("@USERNAME@", NUMBER)
        .replace("@TARGET@", &format!("sip:{target};transport=udp"));
    let cfg_path = dir.join("kamailio.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let proc = Background::spawn(
        "kamailio",
        Command::new(tool("kamailio"))
            .arg("-f")
            .arg(&cfg_path)
            .args(["-DD", "-E", "-e", "-n", "1", "-P"])
            .arg(dir.join("kamailio.pid"))
            .arg("-Y")
            .arg(dir),
        dir.join("kamailio.log"),
    );
    let tls: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    wait_tcp(tls, Duration::from_secs(15));
    Kamailio { _proc: proc, tls }
}

fn probe(dir: &Path, kam: &Kamailio, method: &str, password: &str) -> (bool, String) {
    let pw = dir.join(format!("pw-{password}"));
    std::fs::write(&pw, password).unwrap();
    run(
        Command::new(bin())
            .args([
                "probe",
                &format!("sip:{NUMBER}@localhost"),
                "--transport",
                "tls",
                "--server-name",
                "localhost",
            ])
            .args([
                "--server",
                &kam.tls.to_string(),
                "--method",
                method,
                "--username",
                NUMBER,
            ])
            .arg("--ca")
            .arg(dir.join("pki/ca.crt"))
            .arg("--password-file")
            .arg(&pw),
        Duration::from_secs(40),
    )
}

fn kamailio_accepts_watrunk_credentials(algorithm: &str) {
    let dir = TempDir::new(&format!("kamailio-{}", algorithm.to_ascii_lowercase()));
    let mut target = Server::start(&[]);
    let kam = kamailio(dir.path(), target.udp.unwrap(), algorithm);
    let log = || std::fs::read_to_string(dir.path().join("kamailio.log")).unwrap_or_default();

    let (ok, out) = probe(dir.path(), &kam, "OPTIONS", PASSWORD);
    assert!(
        ok && out.contains("200 OK"),
        "OPTIONS through Kamailio ({algorithm}): {out}\nkamailio:\n{}",
        log()
    );
    assert!(
        out.contains(&format!("with {algorithm}")) || algorithm == "MD5",
        "did not answer with {algorithm}: {out}"
    );
    assert!(
        log().contains(&format!("AUTH-OK OPTIONS user={NUMBER}")),
        "Kamailio did not accept the credentials:\n{}",
        log()
    );

    // INVITE: Kamailio accepts the credentials and relays watrunk serve's 503, which a proxy must
    // turn into 500 (RFC 3261 §16.7 step 6).
    let (ok, out) = probe(dir.path(), &kam, "INVITE", PASSWORD);
    assert!(
        !ok && out.contains("final response 500"),
        "INVITE through Kamailio: {out}\nkamailio:\n{}",
        log()
    );
    assert!(
        log().contains(&format!("AUTH-OK INVITE user={NUMBER}")),
        "{}",
        log()
    );

    // Wrong password: one retry, then a clear error (never a loop).
    let (ok, out) = probe(dir.path(), &kam, "OPTIONS", "not-the-password");
    assert!(
        !ok && out.contains("credentials refused"),
        "wrong password: {out}"
    );
    target.assert_alive();
}

#[test]
fn kamailio_407_md5_accepts_watrunk_proxy_authorization() {
    kamailio_accepts_watrunk_credentials("MD5");
}

#[test]
fn kamailio_407_sha256_accepts_watrunk_proxy_authorization() {
    kamailio_accepts_watrunk_credentials("SHA-256");
}
