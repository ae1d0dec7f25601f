//! What `Prepared` announces, on loopback: host candidates on the configured addresses only, the 1:1
//! NAT's public address in place of the private one, and a clear local error for an address that is
//! not on this machine.

use std::net::{IpAddr, SocketAddr};

use watrunk_media::{IceRole, Identity, MediaConfig, MediaError, MediaSocket, Prepared};

fn cfg(ip: &str) -> MediaConfig {
    let ip: IpAddr = ip.parse().unwrap();
    MediaConfig::new(
        ip,
        SocketAddr::new("127.0.0.1".parse().unwrap(), 0),
        "127.0.0.1:9".parse().unwrap(),
        3,
    )
}

async fn socket(ip: &str) -> std::sync::Arc<MediaSocket> {
    MediaSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .await
        .unwrap()
}

#[tokio::test]
async fn host_candidates_on_the_media_address_only() {
    let s = socket("127.0.0.1").await;
    let p = prepare_on_loopback(IceRole::Controlling, &s).await;
    assert!(!p.candidates().is_empty());
    assert!(p
        .candidates()
        .iter()
        .all(|c| c.ip() == "127.0.0.1".parse::<IpAddr>().unwrap()));
    let (ufrag, pwd) = p.ice_credentials();
    assert!(
        ufrag.len() >= 4 && pwd.len() >= 22,
        "RFC 8445 lengths: {ufrag} {pwd}"
    );
    assert_eq!(p.fingerprint().algorithm, "sha-256");
    assert_eq!(p.fingerprint().bytes.len(), 32);
}

#[tokio::test]
async fn a_one_to_one_nat_address_replaces_the_private_one() {
    let mut c = cfg("127.0.0.1");
    c.public_ip = Some("203.0.113.7".parse().unwrap());
    let s = socket("127.0.0.1").await;
    let p = Prepared::new(c, Identity::generate().unwrap(), IceRole::Controlling, &s)
        .await
        .unwrap();
    assert!(!p.candidates().is_empty());
    assert!(
        p.candidates()
            .iter()
            .all(|c| c.ip() == "203.0.113.7".parse::<IpAddr>().unwrap()),
        "{:?}",
        p.candidates()
    );
}

#[tokio::test]
async fn an_address_not_on_this_machine_is_a_local_error() {
    let s = socket("0.0.0.0").await;
    let err = Prepared::new(
        cfg("192.0.2.77"),
        Identity::generate().unwrap(),
        IceRole::Controlling,
        &s,
    )
    .await
    .err()
    .expect("no candidate on an absent address");
    assert!(
        matches!(err, MediaError::Local(ref m) if m.contains("192.0.2.77")),
        "{err}"
    );
}

async fn prepare_on_loopback(role: IceRole, s: &std::sync::Arc<MediaSocket>) -> Prepared {
    Prepared::new(cfg("127.0.0.1"), Identity::generate().unwrap(), role, s)
        .await
        .unwrap()
}

#[tokio::test]
async fn sdes_without_ice_uses_the_shared_port() {
    let s = socket("127.0.0.1").await;
    let p = prepare_on_loopback(IceRole::None, &s).await;
    assert_eq!(p.candidates(), &[s.local_addr()]);
    assert_eq!(p.ice_credentials(), ("", ""));
}

#[tokio::test]
async fn every_call_announces_the_one_shared_port_and_leaves_nothing_behind() {
    let s = socket("127.0.0.1").await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let p = prepare_on_loopback(IceRole::Controlling, &s).await;
        assert_eq!(p.candidates(), &[s.local_addr()]);
        calls.push(p);
    }
    let ufrags: std::collections::HashSet<String> = calls
        .iter()
        .map(|p| p.ice_credentials().0.to_string())
        .collect();
    assert_eq!(
        ufrags.len(),
        3,
        "each call its own ufrag on the shared port"
    );
    assert_eq!(s.usage(), (0, 3));
    drop(calls);
    for _ in 0..100 {
        if s.usage() == (0, 0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("connections left on the shared socket: {:?}", s.usage());
}

#[tokio::test]
async fn ipv4_and_ipv6_media_addresses_share_one_dual_stack_port() {
    let v4: IpAddr = "127.0.0.1".parse().unwrap();
    let v6: IpAddr = "::1".parse().unwrap();
    if std::net::UdpSocket::bind(SocketAddr::new(v6, 0)).is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let s = MediaSocket::bind_media(v4, Some(v6), 0).await.unwrap();
    let mut c = cfg("127.0.0.1");
    c.media_ip6 = Some(v6);
    let p = Prepared::new(c, Identity::generate().unwrap(), IceRole::Controlling, &s)
        .await
        .unwrap();
    let port = s.local_addr().port();
    let mut ips: Vec<IpAddr> = p.candidates().iter().map(|c| c.ip()).collect();
    ips.sort();
    assert_eq!(ips, vec![v4, v6], "{:?}", p.candidates());
    assert!(p.candidates().iter().all(|c| c.port() == port));
    assert!(
        s.local_addr().is_ipv6(),
        "one dual-stack socket: {}",
        s.local_addr()
    );
}
