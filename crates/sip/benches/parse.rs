//! Parse and print of Meta's user-initiated INVITE (the message every inbound call starts with), next to
//! a minimal OPTIONS as a reference measured in the same run.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use watrunk_sip::Message;

fn meta_invite() -> Vec<u8> {
    // tests/data/whatsapp/meta-invite-user-initiated-digest-01.sip is LF-only doc text; on the wire it is CRLF.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/whatsapp/meta-invite-user-initiated-digest-01.sip"
    );
    let text = std::fs::read_to_string(path)
        .expect("test data")
        .replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").expect("head and body");
    let body = body.replace('\n', "\r\n");
    let head: String = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("content-length"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    format!("{head}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

const OPTIONS: &[u8] = b"OPTIONS sip:probe@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK1;rport\r\nMax-Forwards: 70\r\nTo: <sip:probe@localhost>\r\nFrom: <sip:t@localhost>;tag=1\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

fn bench(c: &mut Criterion) {
    let invite = meta_invite();
    let parsed = Message::parse_datagram(&invite).expect("Meta's INVITE parses");
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Bytes(invite.len() as u64));
    g.bench_function("parse meta INVITE", |b| {
        b.iter(|| Message::parse_datagram(black_box(&invite)).unwrap())
    });
    g.bench_function("print meta INVITE", |b| {
        b.iter(|| black_box(&parsed).to_bytes())
    });
    g.bench_function("parse+print meta INVITE", |b| {
        b.iter(|| {
            Message::parse_datagram(black_box(&invite))
                .unwrap()
                .to_bytes()
        })
    });
    g.throughput(Throughput::Bytes(OPTIONS.len() as u64));
    g.bench_function("parse OPTIONS (reference)", |b| {
        b.iter(|| Message::parse_datagram(black_box(OPTIONS)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
