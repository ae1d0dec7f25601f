//! Harness for tests that run the real `watrunk` binary and real third-party peers: start a server on
//! ephemeral ports (read back from its log), talk to it over UDP/TCP/TLS with blocking sockets, and find
//! the tools (SIPp, stunnel, Kamailio) the test script installs.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

pub fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers")
}

pub fn read_data(rel: &str) -> Vec<u8> {
    let p = data_dir().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_watrunk"))
}

/// A required external tool; the test command (scripts/test.sh) installs it, so its absence is a failure.
pub fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/test.sh, which installs the test peers");
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "watrunk-test-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() & 0xffff_ffff
}

/// A running `watrunk serve`, killed on drop. Its log is collected for assertions.
pub struct Server {
    child: Child,
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    /// The control API (HTTP), when the server has one.
    pub api: Option<SocketAddr>,
    pub state: TempDir,
    log: Arc<Mutex<String>>,
    /// What it printed on stdout (`--events -`: one JSON event per line).
    stdout: Arc<Mutex<String>>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the server a signal (`TERM`, `HUP` ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {}", self.pid());
    }

    /// Waits up to `limit` for the server to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `watrunk serve --hostname localhost` with UDP, TCP and TLS on ephemeral loopback ports plus
    /// `extra` flags, and waits until every listener is up.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_open_files(extra, None)
    }

    /// The same with the server's open-files limit (soft and hard) set to `open_files`.
    pub fn start_with_open_files(extra: &[&str], open_files: Option<u64>) -> Server {
        let listen = [
            "--hostname",
            "localhost",
            "--udp",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
            "--tls",
            "127.0.0.1:0",
        ];
        Server::launch(&listen, extra, open_files)
    }

    /// `watrunk serve` with its own hostname and listeners (`listen`, e.g. `--hostname H --tls
    /// ADDR`) plus `extra`, waiting until those listeners are up.
    pub fn start_as(listen: &[&str], extra: &[&str]) -> Server {
        Server::launch(listen, extra, None)
    }

    fn launch(listen: &[&str], extra: &[&str], open_files: Option<u64>) -> Server {
        use std::os::unix::process::CommandExt;
        let state = TempDir::new("serve");
        let mut command = Command::new(bin());
        if let Some(n) = open_files {
            // SAFETY: setrlimit is async-signal-safe; the struct lives on the child's stack.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .arg("serve")
            .args(listen)
            .arg("--state-dir")
            .arg(state.path())
            .args(if extra.contains(&"--api") {
                &[][..]
            } else {
                &["--api", "127.0.0.1:0"][..]
            })
            .args(extra)
            .env("WATRUNK_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start watrunk serve");
        let stderr = child.stderr.take().unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let (out, sink) = (child.stdout.take().unwrap(), stdout.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        let (mut udp, mut tcp, mut tls, mut api) = (None, None, None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let want_api = !extra.contains(&"off");
        let waits = |flag: &str, up: &Option<SocketAddr>| listen.contains(&flag) && up.is_none();
        while waits("--udp", &udp)
            || waits("--tcp", &tcp)
            || waits("--tls", &tls)
            || (want_api && api.is_none())
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("server did not start:\n{}", log.lock().unwrap()));
            let addr = || {
                line.split(" on ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
            };
            if line.contains("SIP over UDP on") {
                udp = addr();
            } else if line.contains("SIP over TCP on") {
                tcp = addr();
            } else if line.contains("SIP over TLS on") {
                tls = addr();
            } else if let Some(rest) = line.split("control API on http://").nth(1) {
                api = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Server {
            child,
            udp,
            tcp,
            tls,
            api,
            state,
            log,
            stdout,
        }
    }

    /// The JSON events printed so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until an event named `name` matching `pred` is printed.
    pub fn wait_event(
        &self,
        name: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
        limit: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .find(|e| e["event"] == name && pred(e))
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {name} event within {limit:?}\nevents:\n{}\nlog:\n{}",
                self.stdout.lock().unwrap(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The self-signed certificate the server made for `localhost`.
    pub fn cert_path(&self) -> PathBuf {
        self.state.path().join("localhost.selfsigned.crt")
    }

    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "watrunk exited:\n{}",
            self.log()
        );
        assert!(
            !self.log().contains("panicked"),
            "watrunk panicked:\n{}",
            self.log()
        );
    }

    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(self.cert_path()).unwrap();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    pub fn tls_connect(&self) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let tcp = TcpStream::connect(self.tls.unwrap()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn =
            rustls::ClientConnection::new(self.tls_config(), "localhost".try_into().unwrap())
                .unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.flush().unwrap();
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .expect("TLS handshake with watrunk");
        }
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON objects among `text`'s lines.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits up to `limit` for a JSON line whose `event` is `event` in what `log` returns (a process
/// may write its report a while after the call it reports on ended).
pub fn wait_json_event(
    log: impl Fn() -> String,
    event: &str,
    limit: Duration,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = json_lines(&log()).into_iter().find(|e| e["event"] == event) {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends one datagram and waits up to `wait` for one answer.
pub fn udp_exchange(to: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(bytes, to).unwrap();
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// What a stream peer saw after sending a message.
#[derive(Debug)]
pub struct StreamOutcome {
    pub response: Option<Vec<u8>>,
    pub closed: bool,
}

/// Writes `bytes`, then reads one framed response (if any) within `wait` and whether the server closed.
pub fn stream_exchange<S: Read + Write>(
    stream: &mut S,
    bytes: &[u8],
    wait: Duration,
) -> StreamOutcome {
    stream.write_all(bytes).unwrap();
    stream.flush().unwrap();
    read_stream_response(stream, wait)
}

pub fn read_stream_response<S: Read>(stream: &mut S, wait: Duration) -> StreamOutcome {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut closed = false;
    let mut response = None;
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if response.is_some() {
                    break;
                }
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
        if response.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                response = Some(buf[..end + 4].to_vec());
            }
        }
    }
    StreamOutcome { response, closed }
}

/// Status code and reason phrase of a response.
pub fn status_of(resp: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(resp);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.splitn(3, ' ');
    let _ = parts.next();
    let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, parts.next().unwrap_or_default().to_string())
}

pub fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        let n = n.trim();
        let compact = match name.to_ascii_lowercase().as_str() {
            "call-id" => "i",
            "via" => "v",
            "to" => "t",
            "from" => "f",
            _ => "",
        };
        (n.eq_ignore_ascii_case(name) || (!compact.is_empty() && n.eq_ignore_ascii_case(compact)))
            .then(|| v.trim())
    })
}

pub fn options_request(transport: &str, local: &str, call_id: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:probe@localhost SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{call_id};rport\r\nMax-Forwards: 70\r\nTo: <sip:probe@localhost>\r\nFrom: <sip:tester@localhost>;tag=t{call_id}\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Runs a command to completion with a time limit; returns (success, stdout+stderr).
pub fn run(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            return (status.success(), out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (false, format!("timed out after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback port (bound and released; good enough for peers that need a port number up front).
pub fn free_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let u = UdpSocket::bind(s.local_addr().unwrap());
    match u {
        Ok(_) => s.local_addr().unwrap().port(),
        Err(_) => free_port(),
    }
}

/// A port free for UDP and TCP whose next one is free too (a peer that listens on both, as
/// baresip's SIP over UDP on PORT and TLS on PORT + 1).
pub fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        let next = port.wrapping_add(1);
        let free = next > port
            && std::net::TcpListener::bind(("127.0.0.1", next)).is_ok()
            && UdpSocket::bind(("127.0.0.1", next)).is_ok();
        if free {
            return port;
        }
    }
}

/// A background process killed on drop with every process it forked (Kamailio forks its workers):
/// it runs in a process group of its own, and the whole group is killed.
pub struct Background {
    pub child: Child,
    pub name: &'static str,
    pub log: PathBuf,
}

impl Background {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Background {
        use std::os::unix::process::CommandExt;
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .process_group(0)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Background { child, name, log }
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_tcp(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Throw-away CA + server certificate for `localhost` (certs/gen-dev-ca.sh), made at test time.
pub fn dev_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../certs/gen-dev-ca.sh");
    let (ok, out) = run(
        Command::new("sh").arg(script).arg(dir).arg("localhost"),
        Duration::from_secs(30),
    );
    assert!(ok, "gen-dev-ca.sh failed: {out}");
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

/// The next SIP message on a stream (framed by Content-Length); None when the stream ends first.
pub fn read_message<S: Read>(stream: &mut S, buf: &mut Vec<u8>) -> Option<watrunk_sip::Message> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let msg: Vec<u8> = buf.drain(..end + 4 + len).collect();
                return watrunk_sip::Message::parse_datagram(&msg).ok();
            }
        }
        let mut chunk = [0u8; 16384];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `watrunk sim serve` playing Meta for business-initiated calls: it answers over TLS with its own
/// self-signed certificate (`cert`), challenges with `password`, plays 440 Hz, hangs up after 4 s.
pub struct SimServe {
    pub process: Background,
    pub addr: std::net::SocketAddr,
    pub cert: std::path::PathBuf,
}

pub fn sim_serve(dir: &Path, srtp: &str, business_host: &str, password: &str) -> SimServe {
    sim_serve_with(dir, srtp, business_host, password, &[])
}

/// The same with `extra` flags for `sim serve` (`--dtmf`, `--hangup-after`, ...).
pub fn sim_serve_with(
    dir: &Path,
    srtp: &str,
    business_host: &str,
    password: &str,
    extra: &[&str],
) -> SimServe {
    let port = free_port();
    std::fs::write(dir.join("meta-pw"), password).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let process = Background::spawn(
        "sim serve",
        Command::new(bin())
            .args([
                "sim",
                "serve",
                "--listen",
                &addr.to_string(),
                "--tls-name",
                "127.0.0.1",
            ])
            .args(["--business-host", business_host, "--srtp", srtp])
            // The user hangs up after 4 s unless told otherwise.
            .args(match extra.contains(&"--hangup-after") {
                true => &[][..],
                false => &["--hangup-after", "4"][..],
            })
            .arg("--password-file")
            .arg(dir.join("meta-pw"))
            .arg("--state-dir")
            .arg(dir.join("simstate"))
            .args(extra),
        dir.join("simserve.log"),
    );
    wait_tcp(addr, Duration::from_secs(10));
    SimServe {
        process,
        addr,
        cert: dir.join("simstate/127.0.0.1.selfsigned.crt"),
    }
}

/// tests/peers/g711/sink.py on `port`: a G.711 phone or agent whose coding is CPython's audioop,
/// answering every source with `tone_hz` in `law` at `ptime` ms for `seconds`, then reporting.
pub fn g711_phone(
    dir: &Path,
    port: u16,
    law: &str,
    tone_hz: u32,
    ptime: u32,
    seconds: u32,
) -> Background {
    Background::spawn(
        "g711 phone",
        Command::new("/usr/bin/python3")
            .arg(peers_dir().join("g711/sink.py"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--law", law, "--tone-hz", &tone_hz.to_string()])
            .args([
                "--ptime",
                &ptime.to_string(),
                "--seconds",
                &seconds.to_string(),
            ]),
        dir.join(format!("g711-{port}.log")),
    )
}

/// What a `g711_phone` heard (its `g711.stream` report, printed when its time is up).
pub fn g711_report(phone: &Background, logs: &str) -> serde_json::Value {
    for _ in 0..100 {
        if phone.log().contains("g711.stream") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = phone.log();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "g711.stream")
        .unwrap_or_else(|| panic!("the G.711 phone reported nothing\n{log}\n{logs}"))
}

/// Runs the test `name` of this binary again inside a private network namespace (`unshare -n`,
/// loopback up), where it may change addresses and the firewall; true when this is that run. The
/// inner run's output is printed (seen with `--nocapture`).
pub fn in_private_namespace(name: &str) -> bool {
    in_private_namespace_retrying(name, None)
}

/// The same, run once more when the inner run failed with `third_party_fault` in its output: a
/// crash of a peer's own (Kamailio's, say), named as such by the test, not a failure of ours.
/// Both runs' output is printed.
pub fn in_private_namespace_retrying(name: &str, third_party_fault: Option<&str>) -> bool {
    if std::env::var_os("WATRUNK_TEST_NETNS").is_some() {
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        assert!(up.is_ok_and(|s| s.success()), "ip link set lo up");
        return true;
    }
    let (unshare, _) = (tool("unshare"), tool("iptables"));
    let inner = || {
        run(
            Command::new(&unshare)
                .args(["-n", "env", "WATRUNK_TEST_NETNS=1"])
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", name, "--nocapture", "--test-threads", "1"]),
            Duration::from_secs(120),
        )
    };
    let (mut ok, mut out) = inner();
    let passed = |ok: bool, out: &str| ok && out.contains("1 passed");
    if let Some(fault) = third_party_fault.filter(|f| !passed(ok, &out) && out.contains(f)) {
        println!("{out}\n--- {fault}: run once more");
        (ok, out) = inner();
    }
    println!("{out}");
    assert!(passed(ok, &out), "{out}");
    false
}

/// One iptables command, which must succeed (in a private namespace: see `in_private_namespace`).
pub fn iptables(rule: &str) {
    let ok = Command::new("iptables")
        .args(rule.split_whitespace())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "iptables {rule}");
}
