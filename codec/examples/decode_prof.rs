//! Decodes an aggregate of synthetic gradients repeatedly, for profiling the decoder:
//! `cargo run --release -p sketchreduce-codec --example decode_prof -- [DIM] [DENSITY] [WORKERS] [REPS] [bitmap|bloom] [THREADS]`.
//! Reports the best decode (`decode_into`, as the agent's) and the best decode plus dense
//! output (as `sketchreduce bench codec` times it).

use std::time::Instant;

use sketchreduce_codec::synth::{generate, Pattern, SynthSpec};
use sketchreduce_codec::*;

/// CPU time of this thread (wall time is meaningless on a shared, oversubscribed machine).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let dim: usize = a.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let density: f64 = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.01);
    let workers: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(8);
    let reps: usize = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(20);
    let index = match a.get(5).map(String::as_str) {
        Some("bitmap") => IndexChoice::Bitmap,
        Some("bloom") => IndexChoice::Bloom,
        _ => IndexChoice::Auto,
    };
    let threads: Option<usize> = a.get(6).and_then(|s| s.parse().ok());
    let spec = SynthSpec {
        dim,
        workers,
        density,
        overlap: 0.5,
        pattern: Pattern::Random,
        seed: 1,
    };
    let grads = generate(&spec)?;
    let e = grads
        .iter()
        .map(|g| max_exponent(g))
        .collect::<Result<Vec<_>, _>>()?;
    let fixed = FixedPoint::new(*e.iter().max().unwrap(), workers as u32, LaneWidth::W32)?;
    let mut union = vec![false; dim];
    for g in &grads {
        for (u, v) in union.iter_mut().zip(g) {
            *u |= fixed.to_fixed(*v) != 0;
        }
    }
    let union_nnz = union.iter().filter(|&&u| u).count();
    let mut sizing = Sizing::new(union_nnz as u64);
    sizing.index = index;
    let params = CodecParams::sized(1, 0, dim as u64, LaneWidth::W32, &sizing)?;
    let mut enc = Encoder::<i32>::new(&params)?;
    let mut total = enc.new_encoding();
    let mut one = enc.new_encoding();
    for g in &grads {
        enc.encode_dense(g, &fixed, &mut one)?;
        total.merge(&one)?;
    }
    eprintln!(
        "{:?} layout {:?} cells {}",
        params.index_kind(),
        params.layout(),
        params.cells()
    );
    let mut dec = Decoder::<i32>::new();
    if let Some(t) = threads {
        dec.set_threads(t);
    }
    let mut sums = DecodedSums::new();
    let mut dense = vec![0f32; dim];
    let n = Some(workers as u32);
    let (mut best, mut best_dense, mut best_cpu) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..reps {
        let t = Instant::now();
        let c = cpu_seconds();
        dec.decode_into(
            &params,
            total.index_words(),
            total.sketch_cells(),
            n,
            &mut sums,
        )?;
        best_cpu = best_cpu.min(cpu_seconds() - c);
        best = best.min(t.elapsed().as_secs_f64());
        sums.to_dense(&fixed, &mut dense)?;
        best_dense = best_dense.min(t.elapsed().as_secs_f64());
        if std::env::var_os("EACH").is_some() {
            eprintln!("{:.3} ms", t.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "{} threads={} union={union_nnz} candidates={} decode {:.3} ms (this thread's cpu {:.3} ms), with dense {:.3} ms = {:.3} GB/s",
        params.index_kind().name(),
        dec.threads(),
        sums.keys().len(),
        best * 1e3,
        best_cpu * 1e3,
        best_dense * 1e3,
        dim as f64 * 4.0 / best_dense / 1e9
    );
    Ok(())
}
