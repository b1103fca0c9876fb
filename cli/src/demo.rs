//! `sketchreduce demo`: the README's main job for now. Simulates workers on a realistic
//! sparse gradient (row-sparse, like an embedding table), compresses each one, aggregates the
//! encodings with only integer addition and OR (what the switch does), decodes, and shows that
//! the decoded sum is exact and how much smaller than dense the traffic is.

use std::time::Instant;

use anyhow::{bail, Context};
use sketchreduce_codec::synth::{self, Pattern, SynthSpec};
use sketchreduce_codec::{
    max_exponent, CodecParams, Decoder, Encoder, FixedPoint, LaneWidth, Sizing,
};

/// Arguments of `sketchreduce demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of simulated workers.
    #[arg(long, default_value_t = 4)]
    pub workers: u32,
    /// Parameters of the gradient (an embedding table of rows of width 64).
    #[arg(long, default_value_t = 1 << 24)]
    pub dim: u64,
    /// Fraction of rows each worker touches.
    #[arg(long, default_value_t = 0.01)]
    pub density: f64,
    /// Fraction of touched rows common to all workers (popular embeddings).
    #[arg(long, default_value_t = 0.3)]
    pub overlap: f64,
    /// Seed.
    #[arg(long, default_value_t = 2024)]
    pub seed: u64,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.workers == 0 || args.dim == 0 || args.dim > u32::MAX as u64 {
        bail!("--workers must be >= 1 and --dim in 1..={}", u32::MAX);
    }
    if !(0.0..=1.0).contains(&args.density) || !(0.0..=1.0).contains(&args.overlap) {
        bail!("--density and --overlap must be in [0, 1]");
    }
    let n = args.workers as usize;
    let dim = args.dim as usize;
    let spec = SynthSpec {
        dim,
        workers: n,
        density: args.density,
        overlap: args.overlap,
        pattern: Pattern::Rows(64),
        seed: args.seed,
    };
    let grads = synth::generate(&spec)?;
    let nnz: Vec<usize> = grads
        .iter()
        .map(|g| g.iter().filter(|v| **v != 0.0).count())
        .collect();
    println!(
        "sketchreduce demo: {n} workers, gradient of {dim} parameters (embedding table, rows of 64; \
         each worker touches {:.1}% of rows, {:.0}% of them shared)",
        args.density * 100.0,
        args.overlap * 100.0
    );

    // 1. Agree on the fixed-point scale (a MAX reduction of one exponent per worker).
    let mut e = 0;
    for g in &grads {
        e = e.max(max_exponent(g)?);
    }
    let fixed = FixedPoint::new(e, args.workers, LaneWidth::W32)?;
    // 2. Size the sketch from an estimate of the union (here: the local count times workers,
    //    discounted by the shared fraction, as a training loop would from the previous step).
    let local = nnz.iter().copied().max().unwrap_or(0) as f64;
    let estimate = (local * args.overlap + local * (1.0 - args.overlap) * n as f64) as u64;
    let params = CodecParams::sized(
        args.seed,
        0,
        dim as u64,
        LaneWidth::W32,
        &Sizing::new(estimate),
    )?;
    // 3. Encode on every worker; the network adds cells and ORs the index.
    let mut enc = Encoder::<i32>::new(&params)?;
    let mut total = enc.new_encoding();
    let mut one = enc.new_encoding();
    let t = Instant::now();
    for g in &grads {
        enc.encode_dense(g, &fixed, &mut one)?;
        total.merge(&one)?;
    }
    let t_enc = t.elapsed();
    // 4. Any worker decodes the aggregate.
    let mut dec = Decoder::<i32>::new();
    let t = Instant::now();
    let out = dec
        .decode(&params, total.index_words(), total.sketch_cells())
        .context("decoding the aggregate (the sketch was too small for this step)")?;
    let t_dec = t.elapsed();
    let mut sum = vec![0f32; dim];
    out.to_dense(&fixed, &mut sum)?;
    let candidates = out.candidates();

    // 5. Check against an independent reference: the same integers summed in i128.
    let mut exact = true;
    let mut union = 0usize;
    let mut max_err = 0f64;
    let mut next = 0usize;
    for i in 0..dim {
        let r: i128 = grads.iter().map(|g| fixed.to_fixed(g[i]) as i128).sum();
        let f: f64 = grads.iter().map(|g| g[i] as f64).sum();
        union += grads.iter().any(|g| fixed.to_fixed(g[i]) != 0) as usize;
        let mut got = 0i128;
        if next < out.keys.len() && out.keys[next] as usize == i {
            got = out.sums[next] as i128;
            next += 1;
        }
        exact &= got == r;
        max_err = max_err.max((sum[i] as f64 - f).abs());
    }
    let dense = dim * 4;
    let mb = |b: usize| b as f64 / 1e6;
    println!(
        "  nonzeros per worker: {}; union over workers: {union}; decoder candidates: {candidates}",
        nnz.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  bytes per worker: {:.2} MB ({} index {:.2} MB + {} cells x h={} {:.2} MB) vs dense {:.2} MB: {:.1}x smaller",
        mb(params.bytes()),
        params.index_kind().name(),
        mb(params.index_bytes()),
        params.cells(),
        params.hashes(),
        mb(params.sketch_bytes()),
        mb(dense),
        dense as f64 / params.bytes() as f64
    );
    println!(
        "  aggregated in one round with integer add + OR; encode+merge {:.1} ms for {n} workers, decode {:.1} ms",
        t_enc.as_secs_f64() * 1e3,
        t_dec.as_secs_f64() * 1e3
    );
    if exact {
        println!(
            "  decoded sum is EXACT: all {dim} positions equal the fixed-point reference \
             (max |error| vs the f64 sum of the floats: {max_err:.2e})"
        );
        Ok(())
    } else {
        bail!("decoded sum differs from the reference (this is a bug)")
    }
}
