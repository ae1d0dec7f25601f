//! Tones for the audio tests, and what a recording holds: its strongest frequency and its level.

use std::f64::consts::PI;

/// `n` samples of a sine at `hz`, amplitude `amp` of full scale, starting at sample `from`.
pub fn tone(hz: f64, rate: u32, amp: f64, from: usize, n: usize) -> Vec<i16> {
    (from..from + n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            ((2.0 * PI * hz * t).sin() * amp * f64::from(i16::MAX)) as i16
        })
        .collect()
}

/// The frequency with the most energy between 100 and 3,400 Hz (1 Hz steps, Goertzel) and the RMS
/// level (fraction of full scale) of `samples`.
pub fn heard(samples: &[i16], rate: u32) -> (f64, f64) {
    let power = |hz: f64| {
        let w = 2.0 * PI * hz / f64::from(rate);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in samples {
            let s0 = f64::from(x) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        s1 * s1 + s2 * s2 - coeff * s1 * s2
    };
    let best = (100..3400)
        .map(f64::from)
        .max_by(|a, b| power(*a).total_cmp(&power(*b)))
        .unwrap();
    let rms = (samples.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / samples.len() as f64)
        .sqrt()
        / f64::from(i16::MAX);
    (best, rms)
}
