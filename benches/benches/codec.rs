//! Codec throughput: encode / merge / decode over d ∈ {2^20, 2^24}, densities
//! {0.1%, 1%, 10%} and both sketch layouts (plain, coupled), with a memcpy of the same dense
//! buffer as the baseline. Throughput is reported in bytes of dense f32 input (`d · 4`), like
//! `sketchreduce bench codec`. Decoding goes through `decode_into` with reused buffers and
//! writes the dense output, as the agent does.
//!
//! Sample counts are kept small so `cargo bench -p sketchreduce-benches` finishes in a few
//! minutes on a 2-core machine.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sketchreduce_codec::synth::{generate, Pattern, SynthSpec};
use sketchreduce_codec::*;

const WORKERS: usize = 2;

fn codec(c: &mut Criterion) {
    for log_d in [20u32, 24] {
        let dim = 1usize << log_d;
        for density in [0.001, 0.01, 0.1] {
            let spec = SynthSpec {
                dim,
                workers: WORKERS,
                density,
                overlap: 0.5,
                pattern: Pattern::Random,
                seed: 1,
            };
            let inputs = generate(&spec).expect("valid spec");
            let e = inputs
                .iter()
                .map(|g| max_exponent(g).expect("finite"))
                .max()
                .unwrap_or(0);
            let fixed = FixedPoint::new(e, WORKERS as u32, LaneWidth::W32).expect("fixed");
            let union = (0..dim)
                .filter(|&i| inputs.iter().any(|g| g[i] != 0.0))
                .count() as u64;
            for layout in [LayoutChoice::Plain, LayoutChoice::Coupled] {
                let sizing = Sizing {
                    layout,
                    ..Sizing::new(union)
                };
                let params =
                    CodecParams::sized(1, 0, dim as u64, LaneWidth::W32, &sizing).expect("params");
                let mut enc = Encoder::<i32>::new(&params).expect("encoder");
                let mut encs: Vec<Encoding<i32>> =
                    (0..WORKERS).map(|_| enc.new_encoding()).collect();
                for (g, e) in inputs.iter().zip(&mut encs) {
                    enc.encode_dense(g, &fixed, e).expect("encode");
                }
                let mut total = enc.new_encoding();
                let name = format!("d=2^{log_d}/density={density}/{}", params.layout().name());
                let mut group = c.benchmark_group(name);
                group.throughput(Throughput::Bytes(dim as u64 * 4));
                group.sample_size(10);
                group.warm_up_time(Duration::from_millis(300));
                group.measurement_time(Duration::from_secs(1));

                let mut dst = vec![0f32; dim];
                group.bench_function(BenchmarkId::new("memcpy", ""), |b| {
                    b.iter(|| dst.copy_from_slice(black_box(&inputs[0])))
                });
                let mut out = enc.new_encoding();
                group.bench_function(
                    BenchmarkId::new("encode", params.index_kind().name()),
                    |b| {
                        b.iter(|| {
                            enc.encode_dense(black_box(&inputs[0]), &fixed, &mut out)
                                .expect("encode")
                        })
                    },
                );
                group.bench_function(BenchmarkId::new("merge", ""), |b| {
                    b.iter(|| total.merge(black_box(&encs[1])).expect("merge"))
                });
                total.clear();
                for e in &encs {
                    total.merge(e).expect("merge");
                }
                let mut dec = Decoder::<i32>::new();
                let mut sums = DecodedSums::new();
                let mut dense = vec![0f32; dim];
                group.bench_function(
                    BenchmarkId::new("decode", params.index_kind().name()),
                    |b| {
                        b.iter(|| {
                            dec.decode_into(
                                &params,
                                black_box(total.index_words()),
                                total.sketch_cells(),
                                Some(WORKERS as u32),
                                &mut sums,
                            )
                            .expect("decode");
                            sums.to_dense(&fixed, &mut dense).expect("dense");
                        })
                    },
                );
                group.finish();
            }
        }
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
