//! Transcoding cost: one 20 ms packet each way (Meta's Opus → PCMU toward the PBX, the PBX's PCMU →
//! Opus toward Meta) through `watrunk_media::transcode`, against libopus doing the same decode and
//! encode of the same frames alone, measured alternately in the same run. Also counts the heap
//! allocations of the transcoding loop (there must be none).
//!
//! `cargo bench -p watrunk-media --bench transcode -- [--packets 2000] [--rounds 15]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::f64::consts::PI;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use watrunk_media::transcode::{Law, OpusToPbx, PbxCodec, PbxToOpus};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn tone(hz: f64, rate: u32, from: usize, n: usize) -> Vec<i16> {
    (from..from + n)
        .map(|i| ((2.0 * PI * hz * i as f64 / f64::from(rate)).sin() * 0.3 * 32767.0) as i16)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let packets = value("--packets", 2000);
    let rounds = value("--rounds", 15);

    // Meta's side: a voice-rate Opus stream at 48 kHz with FEC, as a phone sends it.
    let mut meta =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    meta.set_bitrate(opus::Bitrate::Bits(24_000)).unwrap();
    meta.set_inband_fec(true).unwrap();
    meta.set_packet_loss_perc(10).unwrap();
    let opus_in: Vec<Vec<u8>> = (0..packets)
        .map(|p| {
            meta.encode_vec(&tone(440.0, 48_000, p * 960, 960), 1500)
                .unwrap()
        })
        .collect();
    let pcmu_in: Vec<Vec<u8>> = (0..packets)
        .map(|p| {
            tone(1000.0, 8000, p * 160, 160)
                .into_iter()
                .map(audio_codec_algorithms::encode_ulaw)
                .collect()
        })
        .collect();

    // The reference: libopus's decode (8 kHz) and encode (8 kHz, FEC on) of the same frames.
    let mut ref_decoder = opus::Decoder::new(8000, opus::Channels::Mono).unwrap();
    let mut ref_encoder =
        opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    ref_encoder.set_inband_fec(true).unwrap();
    ref_encoder.set_packet_loss_perc(10).unwrap();
    let pcm_in: Vec<Vec<i16>> = pcmu_in
        .iter()
        .map(|p| {
            p.iter()
                .map(|&b| audio_codec_algorithms::decode_ulaw(b))
                .collect()
        })
        .collect();
    let mut pcm = [0i16; 960];
    let mut out = [0u8; 1500];
    let mut reference = || {
        let t = Instant::now();
        for (opus, pcm_frame) in opus_in.iter().zip(&pcm_in) {
            black_box(ref_decoder.decode(opus, &mut pcm, false).unwrap());
            black_box(ref_encoder.encode(pcm_frame, &mut out).unwrap());
        }
        t.elapsed().as_nanos() as f64 / packets as f64
    };

    let mut to_pbx = OpusToPbx::new(PbxCodec::G711(Law::Mu)).unwrap();
    let mut to_meta = PbxToOpus::new(PbxCodec::G711(Law::Mu), 10).unwrap();
    let mut g711_out = [0u8; 960];
    let mut opus_out = [0u8; 1500];
    let mut allocations = 0;
    let mut transcoding = || {
        let before = ALLOCATIONS.load(Relaxed);
        let t = Instant::now();
        for (opus, pcmu) in opus_in.iter().zip(&pcmu_in) {
            black_box(to_pbx.packet(opus, &mut g711_out).unwrap());
            to_meta.push(pcmu);
            black_box(to_meta.frame(&mut opus_out).unwrap());
        }
        let ns = t.elapsed().as_nanos() as f64 / packets as f64;
        allocations += ALLOCATIONS.load(Relaxed) - before;
        ns
    };

    let (mut r, mut x) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        r.push(reference());
        x.push(transcoding());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, x) = (median(&mut r), median(&mut x));
    println!("transcoding, one 20 ms packet each way (Opus 48 kHz <-> PCMU), {packets} packets x {rounds} rounds, medians");
    println!(
        "reference: libopus decode + encode alone   {:8.2} µs per packet pair",
        r / 1000.0
    );
    println!(
        "watrunk transcode (Opus->PCMU, PCMU->Opus) {:8.2} µs per packet pair",
        x / 1000.0
    );
    println!("ratio transcode / reference: {:.3}", x / r);
    println!(
        "one core carries {:.0} transcoded calls at 50 packets/s each way (transcoding alone)",
        1e9 / (x * 50.0)
    );
    println!("heap allocations in the transcoding loops: {allocations}");

    // The latency transcoding adds to one packet (its processing: the packet leaves as soon as it
    // is transcoded, nothing waits in a buffer at 20 ms ptime), timed packet by packet over one
    // more pass of each direction.
    let mut toward_pbx = Vec::with_capacity(packets);
    let mut toward_meta = Vec::with_capacity(packets);
    for (opus, pcmu) in opus_in.iter().zip(&pcmu_in) {
        let t = Instant::now();
        black_box(to_pbx.packet(opus, &mut g711_out).unwrap());
        toward_pbx.push(t.elapsed().as_nanos() as f64);
        let t = Instant::now();
        to_meta.push(pcmu);
        black_box(to_meta.frame(&mut opus_out).unwrap());
        toward_meta.push(t.elapsed().as_nanos() as f64);
    }
    let quantile = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize] / 1000.0
    };
    for (name, v) in [
        ("Opus -> PCMU (toward the PBX)", &mut toward_pbx),
        ("PCMU -> Opus (toward Meta)", &mut toward_meta),
    ] {
        println!(
            "added latency {name}: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            quantile(v, 0.5),
            quantile(v, 0.99),
            quantile(v, 1.0)
        );
    }
}
