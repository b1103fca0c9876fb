//! Encodes one synthetic gradient repeatedly, for profiling the encoder with `perf stat`:
//! `cargo run --release -p sketchreduce-codec --example encode_prof -- [DIM] [DENSITY] [REPS] [bitmap|bloom]`.

use std::time::Instant;

use sketchreduce_codec::synth::{generate, Pattern, SynthSpec};
use sketchreduce_codec::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let dim: usize = a.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let density: f64 = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.01);
    let reps: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let index = match a.get(4).map(String::as_str) {
        Some("bitmap") => IndexChoice::Bitmap,
        Some("bloom") => IndexChoice::Bloom,
        _ => IndexChoice::Auto,
    };
    let spec = SynthSpec {
        dim,
        workers: 1,
        density,
        overlap: 0.0,
        pattern: Pattern::Random,
        seed: 1,
    };
    let g = &generate(&spec)?[0];
    let fixed = FixedPoint::new(max_exponent(g)?, 8, LaneWidth::W32)?;
    let nnz = g.iter().filter(|v| **v != 0.0).count();
    let mut sizing = Sizing::new(nnz as u64 * 4);
    sizing.index = index;
    let params = CodecParams::sized(1, 0, dim as u64, LaneWidth::W32, &sizing)?;
    let mut enc = Encoder::<i32>::new(&params)?;
    let mut out = enc.new_encoding();
    let t = Instant::now();
    for _ in 0..reps {
        enc.encode_dense(g, &fixed, &mut out)?;
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{} nnz={nnz} {:.3} ms/encode {:.2} GB/s {:.1} ns/key",
        params.index_kind().name(),
        s * 1e3,
        dim as f64 * 4.0 / s / 1e9,
        s / nnz.max(1) as f64 * 1e9
    );
    Ok(())
}
