//! Every SIP sample from Meta's documentation (tests/data/whatsapp, normalised as its SOURCES.md says)
//! parses, and the fields the trunk relies on come out right.

mod common;

use watrunk_sip::{Host, Message, Request, Response};

fn sample(name: &str) -> Message {
    let raw = String::from_utf8(common::read(&format!("whatsapp/{name}"))).unwrap();
    let wire = common::normalize_meta_sample(&raw);
    Message::parse_datagram(&wire)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", String::from_utf8_lossy(&wire)))
}

fn request(name: &str) -> Request {
    match sample(name) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("{name} is a response"),
    }
}

fn response(name: &str) -> Response {
    match sample(name) {
        Message::Response(r) => r,
        Message::Request(_) => panic!("{name} is a request"),
    }
}

#[test]
fn every_sip_sample_parses() {
    let dir = common::data_dir().join("whatsapp");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        // The -fragment- file holds only two header lines (the dual challenge); digest tests read it.
        if name.ends_with(".sip") && !name.contains("-fragment-") {
            sample(&name);
            n += 1;
        }
    }
    assert!(n >= 18, "only {n} samples found");
}

#[test]
fn user_initiated_invite_fields() {
    let r = request("meta-invite-user-initiated-digest-01.sip");
    let uri = r.uri.as_sip().unwrap();
    assert_eq!(uri.user_base(), Some("+12145551869"));
    assert_eq!(uri.param("transport"), Some(Some("tls")));
    let vias: Vec<_> = r
        .headers
        .values("Via")
        .map(|v| watrunk_sip::Via::parse(v).unwrap())
        .collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(
        vias[0].host,
        Host::V6("2803:6080:f948:9597::".parse().unwrap())
    );
    assert_eq!(vias[0].port, Some(47237));
    assert_eq!(vias[0].rport(), Some(None));
    assert_eq!(
        vias[0].branch(),
        Some("z9hG4bKPj1e6c665db16b3ecacf32cadb4497fe77")
    );
    assert_eq!(
        vias[2].received(),
        Some(Host::V6(
            "2803:6080:f8bc:9272:e488:9927:400:0".parse().unwrap()
        ))
    );
    assert_eq!(vias[2].rport(), Some(Some(58279)));
    assert_eq!(
        vias[2].branch(),
        Some("z9hG4bKPjr33j97A1mx5J8HWHEy2zIgqZYCCIb4Fb")
    );
    let rr: Vec<_> = r.headers.values("Record-Route").collect();
    assert_eq!(
        rr,
        vec![
            "<sip:wa.meta.vc;transport=tls;lr>",
            "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>"
        ]
    );
    assert_eq!(r.from().unwrap().display.as_deref(), Some("12195550714"));
    assert_eq!(
        r.from().unwrap().tag(),
        Some("ece2da15-39e7-4983-ac65-e312f325d94a")
    );
    assert!(r.call_id().unwrap().starts_with("outgoing:wacid."));
    assert_eq!(r.max_forwards(), Some(69));
    assert_eq!(r.headers.get("x-fb-external-domain"), Some("wa.meta.vc"));
    assert!(String::from_utf8_lossy(&r.body).starts_with("v=0\r\n"));
}

#[test]
fn bsuid_headers_in_both_spellings() {
    let r = request("meta-invite-user-initiated-bsuid-template-02.sip");
    assert_eq!(
        r.headers.get("x-wa-meta-user-id"),
        Some("US.13491208655302741918")
    );
    assert_eq!(
        r.headers.get("X-WA_META-PARENT-USER-ID"),
        Some("US.13491208655302741918")
    );
    let meta: Vec<_> = r
        .headers
        .iter()
        .filter(|h| {
            let n = h.name.as_str().to_ascii_lowercase();
            n.starts_with("x-wa-meta-") || n.starts_with("x-wa_meta-")
        })
        .collect();
    assert_eq!(meta.len(), 3);
    assert_eq!(
        r.from().unwrap().uri.as_sip().unwrap().user_base(),
        Some("US.13491208655302741918")
    );
    let route = r.headers.get("Route").unwrap();
    assert_eq!(
        route,
        "<sip:onevc-sip-proxy-dev.fbinfra.net:8191;transport=tls;lr>"
    );
}

#[test]
fn business_initiated_200_record_route_order() {
    let r = response("meta-200ok-business-initiated-bsuid-template-01.sip");
    assert_eq!(r.status, 200);
    let rr: Vec<_> = r.headers.values("Record-Route").collect();
    assert_eq!(rr.len(), 4);
    assert_eq!(
        rr[0],
        "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>"
    );
    assert_eq!(rr[1], "<sip:wa.meta.vc;transport=tls;lr>");
    let via = r.top_via().unwrap();
    assert_eq!(
        via.received(),
        Some(Host::V6(
            "2803:6080:f934:8894:7eb5:24f9:300:0".parse().unwrap()
        ))
    );
    assert_eq!(
        via.branch(),
        Some("z9hG4bK1e5a.0da2ace9cc912d9e5f2595ca4acb9847.0")
    );
    let contact =
        watrunk_sip::NameAddr::parse(r.headers.get("Contact").unwrap(), "Contact").unwrap();
    let c = contact.uri.as_sip().unwrap();
    assert!(c.has_param("ob"));
    assert_eq!(
        c.param("X-FB-Sip-Smc-Tier"),
        Some(Some("collaboration.sip_gateway.sip.prod"))
    );
    assert!(contact.params.iter().any(|(k, _)| k == "isfocus"));
}

#[test]
fn meta_403_warning_and_bye_headers() {
    let r = response("meta-403-sip-server-mismatch-01.sip");
    assert_eq!(r.status, 403);
    assert!(r
        .reason
        .starts_with("SIP server wa.meta.vc from INVITE does not match"));
    assert!(r
        .headers
        .get("Warning")
        .unwrap()
        .starts_with("399 wa.meta.vc \"SIP server"));
    let b = request("meta-bye-from-meta-bsuid-template-01.sip");
    assert_eq!(
        b.headers.get("x-wa-meta-user-country-code"),
        Some("US.13491208655302741918")
    );
    assert_eq!(
        b.top_via().unwrap().host,
        Host::V6("2803:6080:e800:6746::".parse().unwrap())
    );
}

#[test]
fn dual_challenge_407_keeps_both_headers_in_order() {
    let raw =
        String::from_utf8(common::read("whatsapp/meta-407-business-initiated-01.sip")).unwrap();
    let r = match Message::parse_datagram(&common::normalize_meta_sample(&raw)).unwrap() {
        Message::Response(r) => r,
        _ => panic!(),
    };
    assert_eq!(r.status, 407);
    assert!(r
        .headers
        .get("Proxy-Authenticate")
        .unwrap()
        .contains("algorithm=MD5"));
}
