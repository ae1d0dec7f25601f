//! Transcoding between Opus (as Meta sends it: 48 kHz, 20 ms) and G.711: the tone that comes out
//! has the frequency and level that went in, both ways and for both laws; lost packets are
//! concealed or recovered from FEC; any PBX ptime is regrouped into 20 ms frames; a bad packet is
//! the peer's fault and changes nothing.

#[path = "common/audio.rs"]
mod audio;

use audio::{heard, tone};
use watrunk_media::transcode::{
    Law, OpusToPbx, PbxCodec, PbxToOpus, TranscodeError, FRAME_SAMPLES,
};

const OPUS_HZ: u32 = 48_000;

fn db(a: f64, b: f64) -> f64 {
    20.0 * (a / b).log10()
}

/// Meta's side: 20 ms Opus frames of a tone, encoded at 48 kHz.
fn meta_packets(hz: f64, frames: usize) -> Vec<Vec<u8>> {
    let mut encoder =
        opus::Encoder::new(OPUS_HZ, opus::Channels::Mono, opus::Application::Voip).unwrap();
    // As a phone sends voice: SILK at a voice bit rate, with in-band FEC for the loss it expects.
    encoder.set_bitrate(opus::Bitrate::Bits(24_000)).unwrap();
    encoder.set_signal(opus::Signal::Voice).unwrap();
    encoder.set_inband_fec(true).unwrap();
    encoder.set_packet_loss_perc(20).unwrap();
    (0..frames)
        .map(|f| {
            let pcm = tone(hz, OPUS_HZ, 0.3, f * 960, 960);
            encoder.encode_vec(&pcm, 1500).unwrap()
        })
        .collect()
}

fn decode_g711(law: Law, bytes: &[u8]) -> Vec<i16> {
    use audio_codec_algorithms::{decode_alaw, decode_ulaw};
    bytes
        .iter()
        .map(|&b| match law {
            Law::Mu => decode_ulaw(b),
            Law::A => decode_alaw(b),
        })
        .collect()
}

fn encode_g711(law: Law, samples: &[i16]) -> Vec<u8> {
    use audio_codec_algorithms::{encode_alaw, encode_ulaw};
    samples
        .iter()
        .map(|&s| match law {
            Law::Mu => encode_ulaw(s),
            Law::A => encode_alaw(s),
        })
        .collect()
}

#[test]
fn metas_opus_tone_reaches_the_pbx_as_g711_with_its_frequency_and_level() {
    for law in [Law::Mu, Law::A] {
        let mut to_pbx = OpusToPbx::new(PbxCodec::G711(law)).unwrap();
        let mut out = [0u8; 960];
        let mut g711 = Vec::new();
        for packet in meta_packets(440.0, 50) {
            let n = to_pbx.packet(&packet, &mut out).unwrap();
            assert_eq!(n, FRAME_SAMPLES, "20 ms of Opus is 160 G.711 samples");
            g711.extend_from_slice(&out[..n]);
        }
        // The decoder's first frames ramp up; judge the last 0.8 s.
        let (hz, rms) = heard(&decode_g711(law, &g711[1600..]), 8000);
        assert!((hz - 440.0).abs() <= 440.0 * 0.02, "{law:?}: heard {hz} Hz");
        let sent = 0.3 / 2f64.sqrt();
        assert!(db(rms, sent).abs() <= 3.0, "{law:?}: level {rms} vs {sent}");
    }
}

#[test]
fn the_pbxs_g711_tone_reaches_meta_as_20ms_opus_with_its_frequency_and_level() {
    for law in [Law::Mu, Law::A] {
        let mut to_meta = PbxToOpus::new(PbxCodec::G711(law), 10).unwrap();
        // Meta's side decodes at 48 kHz, as a WhatsApp client would.
        let mut decoder = opus::Decoder::new(OPUS_HZ, opus::Channels::Mono).unwrap();
        let mut pcm = vec![0i16; 5760];
        let mut heard_pcm = Vec::new();
        let mut out = [0u8; 1500];
        for packet in 0..50 {
            let g711 = encode_g711(law, &tone(1000.0, 8000, 0.3, packet * 160, 160));
            to_meta.push(&g711);
            let n = to_meta
                .frame(&mut out)
                .unwrap()
                .expect("20 ms in, a frame out");
            assert!(to_meta.frame(&mut out).unwrap().is_none());
            let samples = decoder.decode(&out[..n], &mut pcm, false).unwrap();
            assert_eq!(samples, 960, "each frame is 20 ms at Opus's 48 kHz clock");
            heard_pcm.extend_from_slice(&pcm[..samples]);
        }
        let (hz, rms) = heard(&heard_pcm[9600..], OPUS_HZ);
        assert!(
            (hz - 1000.0).abs() <= 1000.0 * 0.02,
            "{law:?}: heard {hz} Hz"
        );
        let sent = 0.3 / 2f64.sqrt();
        assert!(db(rms, sent).abs() <= 3.0, "{law:?}: level {rms} vs {sent}");
    }
}

#[test]
fn any_pbx_ptime_is_regrouped_into_20ms_frames_and_a_runaway_pbx_is_bounded() {
    let mut to_meta = PbxToOpus::new(PbxCodec::G711(Law::Mu), 0).unwrap();
    let mut out = [0u8; 1500];
    let mut frames = 0;
    // 30 ms packets (240 samples): 600 ms in, 30 frames out, nothing left over.
    for packet in 0..20 {
        to_meta.push(&encode_g711(
            Law::Mu,
            &tone(440.0, 8000, 0.3, packet * 240, 240),
        ));
        while to_meta.frame(&mut out).unwrap().is_some() {
            frames += 1;
        }
    }
    assert_eq!(frames, 30);
    assert_eq!(to_meta.pending(), 0);
    assert_eq!(to_meta.overflowed, 0);
    // A PBX that sends 10 s at once keeps only the newest 120 ms.
    to_meta.push(&vec![0xff; 80_000]);
    assert_eq!(to_meta.pending(), 960);
    assert_eq!(to_meta.overflowed, 80_000 - 960);
    to_meta.push(&[0xff; 160]);
    assert_eq!(to_meta.pending(), 960);
    assert_eq!(to_meta.overflowed, 80_000 - 960 + 160);
}

#[test]
fn a_lost_opus_packet_is_recovered_from_the_next_ones_fec_or_concealed() {
    let packets = meta_packets(440.0, 60);
    // The premise: packets 11 and 21 carry FEC for 10 and 20 (libopus's own reading of them).
    for i in [11, 21] {
        let p = &packets[i];
        assert_eq!(
            unsafe { opusic_sys::opus_packet_has_lbrr(p.as_ptr(), p.len() as i32) },
            1,
            "packet {i} has no FEC"
        );
    }
    let mut to_pbx = OpusToPbx::new(PbxCodec::G711(Law::Mu)).unwrap();
    let mut out = [0u8; 960];
    let mut g711 = Vec::new();
    for (i, packet) in packets.iter().enumerate() {
        let n = match i {
            // Lost, with the next packet at hand: its FEC.
            10 | 20 => to_pbx.lost(Some(&packets[i + 1]), &mut out).unwrap(),
            // Lost with nothing after it yet: concealment.
            40 => to_pbx.lost(None, &mut out).unwrap(),
            _ => to_pbx.packet(packet, &mut out).unwrap(),
        };
        assert_eq!(n, FRAME_SAMPLES, "packet {i}: every 20 ms is filled");
        g711.extend_from_slice(&out[..n]);
    }
    assert_eq!(to_pbx.recovered, 2);
    assert_eq!(to_pbx.concealed, 1);
    // The tone goes on through the losses: no hole, same pitch.
    let (hz, rms) = heard(&decode_g711(Law::Mu, &g711[1280..7680]), 8000);
    assert!((hz - 440.0).abs() <= 440.0 * 0.02, "heard {hz} Hz");
    assert!(rms > 0.1, "level {rms}");
}

#[test]
fn a_packet_that_does_not_decode_is_the_peers_fault_and_changes_nothing() {
    let packets = meta_packets(440.0, 3);
    let mut to_pbx = OpusToPbx::new(PbxCodec::G711(Law::A)).unwrap();
    let mut out = [0u8; 960];
    assert_eq!(to_pbx.packet(&packets[0], &mut out).unwrap(), FRAME_SAMPLES);
    // A code-3 TOC byte announcing 49 frames: invalid (RFC 6716 §3.2.5, at most 120 ms).
    let bad = [0x03u8, 0x31, 0x00];
    match to_pbx.packet(&bad, &mut out) {
        Err(TranscodeError::PeerPacket(_)) => {}
        other => panic!("expected the peer's fault, got {other:?}"),
    }
    assert_eq!(to_pbx.packet(&[], &mut out).unwrap(), 0);
    assert_eq!(to_pbx.packet(&packets[1], &mut out).unwrap(), FRAME_SAMPLES);
    let mut short = [0u8; 100];
    match to_pbx.packet(&packets[2], &mut short) {
        Err(TranscodeError::ShortBuffer {
            need: 160,
            have: 100,
        }) => {}
        other => panic!("expected a short buffer, got {other:?}"),
    }
}

/// G.722 both ways (16 kHz audio, 160 bytes per 20 ms on the 8000 Hz RTP clock), decoded and
/// encoded here by the same crate's coder: the level and frequency survive. baresip's G.722
/// (spandsp) is the other witness (tests/pbx_bridge.rs).
#[test]
fn g722_carries_the_tone_both_ways_in_160_bytes_per_20_ms() {
    use audio_codec::{Decoder as _, Encoder as _};
    let mut to_pbx = OpusToPbx::new(PbxCodec::G722).unwrap();
    let mut decoder = audio_codec::g722::G722Decoder::new();
    let mut out = [0u8; 960];
    let mut pcm = [0i16; 1920];
    let mut heard_pcm = Vec::new();
    for packet in meta_packets(440.0, 50) {
        let n = to_pbx.packet(&packet, &mut out).unwrap();
        assert_eq!(n, FRAME_SAMPLES, "20 ms of G.722 is 160 bytes");
        let samples = decoder.decode_into(&out[..n], &mut pcm).unwrap();
        assert_eq!(samples, 320, "at 16 kHz");
        heard_pcm.extend_from_slice(&pcm[..samples]);
    }
    let (hz, rms) = heard(&heard_pcm[3200..], 16_000);
    assert!((hz - 440.0).abs() <= 440.0 * 0.02, "heard {hz} Hz");
    let sent = 0.3 / 2f64.sqrt();
    assert!(db(rms, sent).abs() <= 3.0, "level {rms} vs {sent}");

    let mut encoder = audio_codec::g722::G722Encoder::new();
    let mut to_meta = PbxToOpus::new(PbxCodec::G722, 10).unwrap();
    let mut opus_decoder = opus::Decoder::new(OPUS_HZ, opus::Channels::Mono).unwrap();
    let mut decoded = vec![0i16; 5760];
    let mut heard_pcm = Vec::new();
    let mut g722 = [0u8; 160];
    let mut frame = [0u8; 1500];
    for packet in 0..50 {
        let n = encoder
            .encode_into(&tone(1000.0, 16_000, 0.3, packet * 320, 320), &mut g722)
            .unwrap();
        assert_eq!(n, 160);
        to_meta.push(&g722[..n]);
        let n = to_meta
            .frame(&mut frame)
            .unwrap()
            .expect("a frame per 20 ms");
        let samples = opus_decoder
            .decode(&frame[..n], &mut decoded, false)
            .unwrap();
        heard_pcm.extend_from_slice(&decoded[..samples]);
    }
    let (hz, rms) = heard(&heard_pcm[9600..], OPUS_HZ);
    assert!((hz - 1000.0).abs() <= 1000.0 * 0.02, "Meta heard {hz} Hz");
    assert!(db(rms, sent).abs() <= 3.0, "level {rms} vs {sent}");
}
