//! A call whose sink speaks G.711 (a PBX leg's far end, or a voice agent that wants PCMU): the far
//! side's Opus reaches the sink as PCMU with the same SSRC and sequence numbers on the 8 kHz clock,
//! a lost packet filled in; the sink's PCMU, sent at 30 ms ptime, reaches the far side as 20 ms
//! Opus on the call's one SSRC with continuous sequence numbers and timestamps. The tones keep
//! their frequency both ways.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use watrunk_media::srtp::{SrtpContext, SrtpProfile};
use watrunk_media::{IceRole, Identity, Law, MediaConfig, MediaSocket, Prepared, SinkAudio};

#[path = "common/audio.rs"]
mod audio;
mod common;

use audio::heard;

const KEY_IN: [u8; 30] = [5; 30];
const KEY_OUT: [u8; 30] = [6; 30];

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn fields(p: &[u8]) -> (u8, u16, u32, u32) {
    (
        p[1] & 0x7f,
        u16::from_be_bytes([p[2], p[3]]),
        u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcmu_sink_hears_the_far_sides_opus_and_is_heard_as_opus() {
    let loopback = "127.0.0.1".parse().unwrap();
    let socket = MediaSocket::bind(SocketAddr::new(loopback, 0))
        .await
        .unwrap();
    let far = UdpSocket::bind(SocketAddr::new(loopback, 0)).await.unwrap();
    far.connect(socket.local_addr()).await.unwrap();
    let sink = UdpSocket::bind(SocketAddr::new(loopback, 0)).await.unwrap();
    let mut cfg = MediaConfig::new(
        loopback,
        SocketAddr::new(loopback, 0),
        sink.local_addr().unwrap(),
        7,
    );
    cfg.sink_audio = SinkAudio::G711(Law::Mu);
    let prepared = Prepared::new(cfg, Identity::generate().unwrap(), IceRole::None, &socket)
        .await
        .unwrap();
    let local = prepared.app_addr();
    let plan = common::sdes_plan(far.local_addr().unwrap(), &KEY_OUT, &KEY_IN, None);
    let _call = prepared.start(plan, 0x0a0b_0c0d);
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let mut to_us = SrtpContext::new(profile, &KEY_IN[..16], &KEY_IN[16..]).unwrap();
    let mut from_us = SrtpContext::new(profile, &KEY_OUT[..16], &KEY_OUT[16..]).unwrap();

    // The far side: 100 packets of 440 Hz Opus (48 kHz), packet 50 lost on the way.
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    encoder.set_bitrate(opus::Bitrate::Bits(24_000)).unwrap();
    encoder.set_inband_fec(true).unwrap();
    encoder.set_packet_loss_perc(20).unwrap();
    let far_ssrc = 0x1111_2222;
    let mut buf = [0u8; 1500];
    for i in 0..100u16 {
        let payload = encoder
            .encode_vec(
                &audio::tone(440.0, 48_000, 0.3, usize::from(i) * 960, 960),
                1500,
            )
            .unwrap();
        if i == 50 {
            continue;
        }
        let mut packet = rtp(
            111,
            1000 + i,
            5_000_000 + u32::from(i) * 960,
            far_ssrc,
            &payload,
        );
        let n = packet.len();
        packet.resize(n + 16, 0);
        let n = to_us.protect_rtp(&mut packet, n).unwrap();
        far.send(&packet[..n]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut sink_heard = Vec::new();
    let mut seqs = Vec::new();
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), sink.recv(&mut buf)).await
    {
        let (pt, seq, ts, ssrc) = fields(&buf[..n]);
        assert_eq!(
            (pt, ssrc, n),
            (0, far_ssrc, 12 + 160),
            "PCMU, 20 ms, the far side's SSRC"
        );
        if let Some(&(last_seq, last_ts)) = seqs.last() {
            assert_eq!(
                seq,
                u16::wrapping_add(last_seq, 1),
                "continuous: the lost packet filled"
            );
            assert_eq!(ts, u32::wrapping_add(last_ts, 160), "the 8 kHz clock");
        }
        seqs.push((seq, ts));
        sink_heard.extend(
            buf[12..n]
                .iter()
                .map(|&b| audio_codec_algorithms::decode_ulaw(b)),
        );
        if seqs.len() == 100 {
            break;
        }
    }
    assert_eq!(
        seqs.len(),
        100,
        "every 20 ms reached the sink, the lost one included (first {:?}, last {:?})",
        seqs.first(),
        seqs.last()
    );
    assert_eq!(seqs[0].0, 1000);

    // The sink: 1000 Hz PCMU at 30 ms ptime (as some PBXs send), 40 packets = 1.2 s.
    for i in 0..40u16 {
        let samples = audio::tone(1000.0, 8000, 0.3, usize::from(i) * 240, 240);
        let pcmu: Vec<u8> = samples
            .into_iter()
            .map(audio_codec_algorithms::encode_ulaw)
            .collect();
        let packet = rtp(0, 7 + i, 99 + u32::from(i) * 240, 0x5151_5151, &pcmu);
        sink.send_to(&packet, local).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut pcm = vec![0i16; 5760];
    let mut opus_heard = Vec::new();
    let mut stream: Vec<(u16, u32)> = Vec::new();
    let (mut audio_steps, mut audio_steps_of_one_frame) = (0, 0);
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), far.recv(&mut buf)).await
    {
        if watrunk_media::is_rtcp(&buf[..n]) {
            continue; // our sender reports
        }
        let n = from_us.unprotect_rtp(&mut buf[..n]).unwrap();
        let (pt, seq, ts, ssrc) = fields(&buf[..n]);
        assert_eq!(
            (pt, ssrc),
            (111, 0x0a0b_0c0d),
            "Opus on the call's one SSRC"
        );
        if let Some(&(last_seq, last_ts)) = stream.last() {
            assert_eq!(seq, u16::wrapping_add(last_seq, 1), "continuous sequence");
            let step = ts.wrapping_sub(last_ts);
            if n > 15 && opus_heard.len() >= 960 {
                // A stalled sender (a loaded machine) is a gap in time, so in the timestamps too.
                assert!(
                    step >= 960 && step % 960 == 0,
                    "the sink's audio: 20 ms frames on the 48 kHz clock, step {step}"
                );
                audio_steps += 1;
                audio_steps_of_one_frame += usize::from(step == 960);
            } else {
                // Silence after the sink stops follows the wall clock: whole frames.
                assert!(
                    step >= 960 && step % 960 == 0 && step < 960 * 10,
                    "step {step}"
                );
            }
        }
        stream.push((seq, ts));
        // Silence flows again once the sink stopped: the sink's audio is all in.
        if n <= 15 && opus_heard.len() >= 58 * 960 {
            break;
        }
        // Our silence frames before the sink spoke are 3 octets; the sink's audio is more.
        if n > 15 {
            let got = decoder.decode(&buf[12..n], &mut pcm, false).unwrap();
            assert_eq!(got, 960);
            opus_heard.extend_from_slice(&pcm[..got]);
        }
    }
    // 1.2 s of the sink's audio is 60 frames of 20 ms.
    assert!(
        (58..=60).contains(&(opus_heard.len() / 960)),
        "{} frames of the sink's audio",
        opus_heard.len() / 960
    );
    assert!(
        audio_steps_of_one_frame * 10 >= audio_steps * 9,
        "{audio_steps_of_one_frame} of {audio_steps} steps of the sink's audio were one frame"
    );
    // Analysed once the call's I/O is done (the analysis is slow in a debug build).
    let (hz, _) = heard(&sink_heard[1600..], 8000);
    assert!((hz - 440.0).abs() <= 440.0 * 0.02, "the sink heard {hz} Hz");
    let (hz, _) = heard(&opus_heard[9600..], 48_000);
    assert!(
        (hz - 1000.0).abs() <= 1000.0 * 0.02,
        "the far side heard {hz} Hz"
    );
}
