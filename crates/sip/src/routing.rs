//! Transport-level Via rules (RFC 3261 §18.2.1/§18.2.2, RFC 3581): stamping `received`/`rport` on
//! requests as they arrive, and where a response to a request goes.

use std::net::{IpAddr, SocketAddr};

use crate::header::split_list;
use crate::message::Request;
use crate::uri::Host;
use crate::values::Via;

/// Adds `received=<source ip>` when the top Via's sent-by differs from the packet's source, and fills
/// an empty `rport` with the source port. Only the top Via value is rewritten; the rest of the header
/// stays byte-identical.
pub fn stamp_received(req: &mut Request, source: SocketAddr) {
    let Some(line) = req.headers.first_mut("Via") else {
        return;
    };
    let mut values: Vec<String> = split_list(line).map(str::to_string).collect();
    let Some(top) = values.first_mut() else {
        return;
    };
    let Ok(via) = Via::parse(top) else { return };
    let source_host = match source.ip() {
        IpAddr::V4(a) => Host::V4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => Host::V4(v4),
            None => Host::V6(a),
        },
    };
    let mut stamped = via.clone();
    stamped
        .params
        .retain(|(k, _)| !k.eq_ignore_ascii_case("received"));
    let wants_rport = via.rport().is_some();
    if via.host != source_host || wants_rport {
        let received = match &source_host {
            Host::V6(a) => a.to_string(),
            other => other.to_string(),
        };
        stamped.params.push(("received".into(), Some(received)));
    }
    if wants_rport {
        for (k, v) in stamped.params.iter_mut() {
            if k.eq_ignore_ascii_case("rport") {
                *v = Some(source.port().to_string());
            }
        }
    }
    if stamped != via {
        *top = stamped.to_string();
        *line = values.join(", ");
    }
}

/// Where to send a response to a request that arrived over UDP from `source` (RFC 3261 §18.2.2 with
/// RFC 3581): with rport, back to the source address and port; otherwise to the source address (the
/// `received` value) at the sent-by port, 5060 by default. A request whose Via cannot be read gets its
/// answer at the source address.
pub fn udp_response_destination(req: &Request, source: SocketAddr) -> SocketAddr {
    match req.top_via() {
        Some(via) if via.rport().is_none() => {
            if let Some(Some(maddr)) = via
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("maddr"))
                .map(|(_, v)| v.as_deref())
            {
                if let Ok(ip) = maddr.parse::<IpAddr>() {
                    return SocketAddr::new(ip, via.port.unwrap_or(5060));
                }
            }
            SocketAddr::new(source.ip(), via.port.unwrap_or(5060))
        }
        _ => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn req(via: &str) -> Request {
        let raw = format!(
            "OPTIONS sip:u@e SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP second;branch=z9hG4bK2\r\nTo: <sip:u@e>\r\nFrom: <sip:c@e>;tag=1\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        match Message::parse_datagram(raw.as_bytes()).unwrap() {
            Message::Request(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn rport_filled_and_received_added() {
        let mut r = req("SIP/2.0/UDP client.example.com:5080;rport;branch=z9hG4bK1");
        stamp_received(&mut r, "192.0.2.7:40000".parse().unwrap());
        let via = r.top_via().unwrap();
        assert_eq!(via.rport(), Some(Some(40000)));
        assert_eq!(via.received(), Some(Host::V4("192.0.2.7".parse().unwrap())));
        assert_eq!(
            r.headers.values("Via").nth(1),
            Some("SIP/2.0/UDP second;branch=z9hG4bK2")
        );
        assert_eq!(
            udp_response_destination(&r, "192.0.2.7:40000".parse().unwrap()).port(),
            40000
        );
    }

    #[test]
    fn no_change_when_sent_by_matches() {
        let mut r = req("SIP/2.0/UDP 192.0.2.7:5080;branch=z9hG4bK1");
        let before = r.clone();
        stamp_received(&mut r, "192.0.2.7:5080".parse().unwrap());
        assert_eq!(r, before);
        assert_eq!(
            udp_response_destination(&r, "192.0.2.7:6000".parse().unwrap()).port(),
            5080
        );
    }

    #[test]
    fn ipv6_source() {
        let mut r = req("SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1");
        stamp_received(&mut r, "[2001:db8::2]:5060".parse().unwrap());
        assert_eq!(
            r.top_via().unwrap().received(),
            Some(Host::V6("2001:db8::2".parse().unwrap()))
        );
    }
}
