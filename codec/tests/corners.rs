//! The silent-wrong corners of issue 10, each with the attack or mistake that used to decode
//! to a wrong value, and the typed error expected now.

mod common;

use common::*;
use sketchreduce_codec::sizing::{bloom_fpr_model, expected_candidates_with};
use sketchreduce_codec::*;

fn one_key(params: &CodecParams, key: u32, v: f32, fixed: &FixedPoint) -> Encoding<i32> {
    let mut enc = Encoder::<i32>::new(params).unwrap();
    let mut e = enc.new_encoding();
    enc.encode_sparse(&[key], &[v], fixed, &mut e).unwrap();
    e
}

/// Three encodings of 1.9 summed with a one-worker scale wrap the 32-bit lane (the sum
/// decoded as −2.3 before): the contribution counter and the |sum| bound catch it.
#[test]
fn more_contributions_than_workers_is_an_error() {
    let fixed = FixedPoint::new(exponent_of(1.9).unwrap(), 1, LaneWidth::W32).unwrap();
    let params = CodecParams::sized(1, 0, 8, LaneWidth::W32, &Sizing::new(1)).unwrap();
    let mut total = Encoding::<i32>::new(&params).unwrap();
    for _ in 0..3 {
        total.merge(&one_key(&params, 5, 1.9, &fixed)).unwrap();
    }
    assert_eq!(total.contributions(), 3);
    let mut dec = Decoder::<i32>::new();
    let mut dense = vec![0.0; 8];
    let out = dec.decode_encoding(&total).unwrap();
    assert_eq!(
        out.to_dense(&fixed, &mut dense),
        Err(CodecError::TooManyContributions {
            contributions: 3,
            workers: 1
        })
    );
    // From raw slices the count is unknown; the wrapped sum is out of any valid range.
    let out = dec
        .decode(&params, total.index_words(), total.sketch_cells())
        .unwrap();
    assert!(matches!(
        out.to_dense(&fixed, &mut dense),
        Err(CodecError::SumOutOfRange { .. })
    ));
    // With the right scale the same data decode exactly.
    let fixed3 = FixedPoint::new(exponent_of(1.9).unwrap(), 3, LaneWidth::W32).unwrap();
    let mut total = Encoding::<i32>::new(&params).unwrap();
    for _ in 0..3 {
        total.merge(&one_key(&params, 5, 1.9, &fixed3)).unwrap();
    }
    let out = dec.decode_encoding(&total).unwrap();
    out.to_dense(&fixed3, &mut dense).unwrap();
    let half_ulp = (dense[5].next_up() - dense[5]) as f64 / 2.0;
    assert!((dense[5] as f64 - 3.0 * 1.9f32 as f64).abs() <= fixed3.abs_error_bound() + half_ulp);
}

/// Contributions made with different parameters (another tensor id, so other hashes) on a
/// tiny table: before, 116 of 1,000 such pairs decoded Ok with a wrong value. Now every one
/// is an error or exact.
#[test]
fn mismatched_parameters_never_decode_wrong() {
    let fixed = FixedPoint::new(exponent_of(100.0).unwrap(), 2, LaneWidth::W32).unwrap();
    let mut errors = 0;
    for t in 0..1000u64 {
        let sizing = Sizing::new(1);
        let a = CodecParams::sized(t, 0, 16, LaneWidth::W32, &sizing).unwrap();
        let b = CodecParams::sized(t, 1, 16, LaneWidth::W32, &sizing).unwrap();
        assert_eq!(a.cells(), b.cells());
        let (ka, kb) = ((t % 16) as u32, ((t / 16) % 16) as u32);
        let (va, vb) = (1.0 + (t % 7) as f32, -2.0 - (t % 5) as f32);
        let ea = one_key(&a, ka, va, &fixed);
        let eb = one_key(&b, kb, vb, &fixed);
        let (mut iw, mut cw) = ea.into_parts();
        merge_slices::<i32>(&mut iw, &mut cw, eb.index_words(), eb.sketch_cells()).unwrap();
        let mut dec = Decoder::<i32>::new();
        match dec.decode(&a, &iw, &cw) {
            Err(_) => errors += 1,
            Ok(out) => {
                let mut want = [0i64; 16];
                want[ka as usize] += fixed.to_fixed(va);
                want[kb as usize] += fixed.to_fixed(vb);
                let mut got = [0i64; 16];
                out.to_dense_sums(&mut got).unwrap();
                assert_eq!(got, want, "trial {t}: decoded Ok with a wrong value");
            }
        }
    }
    // Nearly all are caught (the rest are pairs whose values land exactly right).
    assert!(errors > 900, "{errors}");
}

/// A valid aggregate with only its check lane changed is rejected.
#[test]
fn check_lane_is_verified() {
    let fixed = FixedPoint::new(150, 1, LaneWidth::W32).unwrap();
    let params = CodecParams::sized(3, 0, 1000, LaneWidth::W32, &Sizing::new(10)).unwrap();
    let keys: Vec<u32> = (0..10).map(|k| k * 37).collect();
    let vals: Vec<f32> = (0..10).map(|k| k as f32 * 0.1 - 0.4).collect();
    let mut enc = Encoder::<i32>::new(&params).unwrap();
    let mut e = enc.new_encoding();
    enc.encode_sparse(&keys, &vals, &fixed, &mut e).unwrap();
    let mut dec = Decoder::<i32>::new();
    assert!(dec.decode_encoding(&e).is_ok());
    let last = params.cells() - 1;
    e.sketch_cells_mut()[last] ^= 1 << 7;
    assert_eq!(
        dec.decode_encoding(&e).map(|_| ()),
        Err(CodecError::CheckFailed)
    );
}

/// Union-rank with a bitmap: a value at a key outside the union used to be added into the
/// next key's lane; now it is an error, and the agent's rank function agrees.
#[test]
fn union_rank_rejects_keys_outside_the_union() {
    let params =
        CodecParams::explicit(0, 0, 64, LaneWidth::W32, IndexKind::Bitmap, 4, 3, false).unwrap();
    let fixed = FixedPoint::new(150, 2, LaneWidth::W32).unwrap();
    let mut union = vec![0u32; params.index_words()];
    union[0] = (1 << 3) | (1 << 9);
    let mut ur = UnionRank::<i32>::new();
    assert_eq!(ur.prepare(&params, &union).unwrap(), 2);
    assert_eq!(ur.rank(&union, 9), Some(1));
    assert_eq!(ur.rank(&union, 5), None);
    assert_eq!(candidate_rank(ur.keys(), 9), Some(1));
    assert_eq!(candidate_rank(ur.keys(), 5), None);
    let mut g = vec![0.0f32; 64];
    g[5] = 1.0;
    let mut out = vec![0u32; 2];
    assert_eq!(
        ur.round2(&union, &g, &fixed, &mut out),
        Err(CodecError::NotInIndex { key: 5 })
    );
}

/// A saturated index (every bit set) is refused before the candidates are built, instead of
/// listing every position and then stalling.
#[test]
fn saturated_index_fails_early() {
    for index in [IndexKind::Bitmap, IndexKind::Bloom { blocks: 4, k: 3 }] {
        let params =
            CodecParams::explicit(0, 0, 5_000_000, LaneWidth::W32, index, 101, 3, false).unwrap();
        let iw = vec![u32::MAX; params.index_words()];
        let cw = vec![0u32; params.cells()];
        let mut dec = Decoder::<i32>::new();
        match dec.decode(&params, &iw, &cw) {
            Err(CodecError::Saturated { candidates, cells }) => {
                assert_eq!(cells, 100);
                assert!(candidates > cells);
                // Stopped early: nowhere near the 5M positions.
                assert!(dec.last_candidates().len() < 100_000);
            }
            other => panic!("{index:?}: {:?}", other.map(|_| ())),
        }
    }
}

/// The nearest f32 to `sum · 2^-shift`, from exact integer arithmetic (not the codec).
fn nearest_f32(sum: i64, shift: i32) -> f32 {
    assert!(shift >= 0);
    let f = ((sum as f64) * 2f64.powi(-shift)) as f32; // a neighbour of the answer
    let exact = sum as i128;
    let dist = |g: f32| -> (i128, bool) {
        // g · 2^shift as an integer (true for the values used here).
        let scaled = g as f64 * 2f64.powi(shift);
        assert_eq!(scaled.fract(), 0.0);
        ((scaled as i128 - exact).abs(), g.to_bits() & 1 == 0)
    };
    let mut best = f;
    for g in [f.next_down(), f, f.next_up()] {
        let (dg, even_g) = dist(g);
        let (db, _) = dist(best);
        if dg < db || (dg == db && even_g) {
            best = g;
        }
    }
    best
}

/// Sums above 2^53 used to round twice (to f64, then to f32).
#[test]
fn to_float_rounds_once() {
    // Shift 0: one worker, 64-bit lanes, exponent 149 + 62.
    let fixed = FixedPoint::new(211, 1, LaneWidth::W64).unwrap();
    assert_eq!(fixed.shift(), 0);
    let s = (1i64 << 54) + (1 << 30) + 1;
    assert_eq!(fixed.to_float(s), ((1i64 << 54) + (1 << 31)) as f32);
    assert_eq!(fixed.to_float(-s), -(((1i64 << 54) + (1 << 31)) as f32));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let sum = (x >> (x & 15)) as i64 * if x & 16 == 0 { 1 } else { -1 };
        assert_eq!(fixed.to_float(sum), nearest_f32(sum, 0), "{sum}");
    }
}

/// The shift is the documented formula, computed here independently; dropping one bit in
/// `FixedPoint::new` fails this.
#[test]
fn shift_follows_the_documented_formula() {
    for bits in [16u32, 32, 40, 61, 64] {
        for n in [1u32, 2, 3, 4, 5, 8, 9, 100] {
            let c = (n as f64).log2().ceil() as i32;
            for e in [1u32, 100, 149, 150, 200, 277] {
                let fp = FixedPoint::with_bits(e, n, bits).unwrap();
                let want = (bits as i32 - 2 - c) - (e as i32 - 149);
                assert_eq!(fp.shift(), want, "bits {bits} n {n} e {e}");
                assert_eq!(fp.per_worker_limit(), 1i64 << (bits as i32 - 2 - c));
                assert!((fp.abs_error_bound() - n as f64 * 2f64.powi(-want - 1)).abs() == 0.0);
                if bits == 32 {
                    assert_eq!(FixedPoint::new(e, n, LaneWidth::W32).unwrap(), fp);
                }
                if bits == 64 {
                    assert_eq!(FixedPoint::new(e, n, LaneWidth::W64).unwrap(), fp);
                }
            }
        }
    }
}

/// Decoded floats are within the stated bound of an f64 sum of the inputs, the bound coming
/// from the formula (not from the codec).
#[test]
fn decode_is_within_the_stated_bound_of_f64() {
    let spec = synth::SynthSpec {
        dim: 30_000,
        workers: 6,
        density: 0.05,
        overlap: 0.5,
        pattern: synth::Pattern::Random,
        seed: 5,
    };
    let inputs = synth::generate(&spec).unwrap();
    for lane in [LaneWidth::W32, LaneWidth::W64] {
        let e = global_exponent(&inputs);
        let fixed = FixedPoint::new(e, 6, lane).unwrap();
        let c = 3; // ceil(log2 6)
        let shift = (lane.bits() as i32 - 2 - c) - (e as i32 - 149);
        let bound = 6.0 * 2f64.powi(-shift - 1);
        let params =
            CodecParams::sized(2, 0, 30_000, lane, &Sizing::new(union_nnz(&inputs, &fixed)))
                .unwrap();
        let mut dense = vec![0f32; 30_000];
        match lane {
            LaneWidth::W32 => {
                let t = encode_all::<i32>(&params, &inputs, &fixed).unwrap();
                let mut dec = Decoder::<i32>::new();
                dec.decode_encoding(&t)
                    .unwrap()
                    .to_dense(&fixed, &mut dense)
                    .unwrap();
            }
            LaneWidth::W64 => {
                let t = encode_all::<i64>(&params, &inputs, &fixed).unwrap();
                let mut dec = Decoder::<i64>::new();
                dec.decode_encoding(&t)
                    .unwrap()
                    .to_dense(&fixed, &mut dense)
                    .unwrap();
            }
        }
        let mut worst = 0f64;
        for (i, &d) in dense.iter().enumerate() {
            let f: f64 = inputs.iter().map(|g| g[i] as f64).sum();
            let half_ulp = if d == 0.0 {
                0.0
            } else {
                (d.abs().next_up() - d.abs()) as f64 / 2.0
            };
            let err = (d as f64 - f).abs();
            assert!(
                err <= bound + half_ulp,
                "{lane:?} position {i}: {err} > {bound}"
            );
            worst = worst.max(err / bound);
        }
        // The bound is tight enough to notice a lost bit (errors reach over half of it).
        assert!(worst > 0.5, "{lane:?}: {worst}");
    }
}

/// Wide values through a 32-bit switch: split into two words per cell, summed as u32 lanes,
/// joined, decoded with value width 64 − c; exact against an i128 reference.
#[test]
fn wide_values_through_32_bit_lanes() {
    let n = 8u32;
    let spec = synth::SynthSpec {
        dim: 20_000,
        workers: n as usize,
        density: 0.02,
        overlap: 0.3,
        pattern: synth::Pattern::Random,
        seed: 9,
    };
    let mut inputs = synth::generate(&spec).unwrap();
    // A huge dynamic range: 32-bit values would lose the small ones.
    inputs[0][7] = 3.0e4;
    inputs[1][11] = 1.0e-6;
    let (mut emax, mut emin) = (0, u32::MAX);
    for g in &inputs {
        let (a, b) = exponent_range(g).unwrap();
        emax = emax.max(a);
        if b > 0 {
            emin = emin.min(b);
        }
    }
    let bits = choose_value_bits(emax, emin, n, ValuePolicy::Auto).unwrap();
    assert_eq!(bits, 61);
    let fixed = FixedPoint::with_bits(emax, n, bits).unwrap();
    let reference = reference(&inputs, &fixed);
    assert_ne!(reference[11], 0, "the small value survives");
    let params = CodecParams::sized(
        4,
        0,
        20_000,
        LaneWidth::W64,
        &Sizing::new(union_nnz(&inputs, &fixed)),
    )
    .unwrap()
    .with_value_bits(bits)
    .unwrap();
    let mut enc = Encoder::<i64>::new(&params).unwrap();
    let mut one = enc.new_encoding();
    let mut words = vec![0u32; 2 * params.cells()];
    let mut switch = vec![0u32; 2 * params.cells()];
    let mut index = vec![0u32; params.index_words()];
    for g in &inputs {
        enc.encode_dense(g, &fixed, &mut one).unwrap();
        split_wide(one.sketch_cells(), n, &mut words).unwrap();
        for (s, w) in switch.iter_mut().zip(&words) {
            *s = s.wrapping_add(*w);
        }
        for (i, w) in index.iter_mut().zip(one.index_words()) {
            *i |= w;
        }
    }
    let mut cells = vec![0u64; params.cells()];
    join_wide(&switch, n, &mut cells).unwrap();
    let mut dec = Decoder::<i64>::new();
    let mut out = DecodedSums::new();
    dec.decode_into(&params, &index, &cells, Some(n), &mut out)
        .unwrap();
    let mut dense = vec![0i64; 20_000];
    out.view().to_dense_sums(&mut dense).unwrap();
    for (i, (&d, &r)) in dense.iter().zip(&reference).enumerate() {
        assert_eq!(d as i128, r, "position {i}");
    }
    let mut floats = vec![0f32; 20_000];
    out.to_dense(&fixed, &mut floats).unwrap();
    let f: f64 = inputs.iter().map(|g| g[11] as f64).sum();
    assert!((floats[11] as f64 - f).abs() <= fixed.abs_error_bound() + 1e-12);
    // A scale of another width is refused.
    let narrow = FixedPoint::new(emax, n, LaneWidth::W64).unwrap();
    assert!(out.to_dense(&narrow, &mut floats).is_err());
}

/// `decode_into` with reused buffers, and `candidates_into` + `peel_into` (the overlapped
/// path), give the same result as a fresh decode.
#[test]
fn reused_buffers_and_split_decode_agree() {
    let mut dec = Decoder::<i32>::new();
    let mut out = DecodedSums::new();
    let mut keys = Vec::new();
    let mut sums = Vec::new();
    for (seed, density) in [(1u64, 0.05), (2, 0.01), (3, 0.2)] {
        let spec = synth::SynthSpec {
            dim: 50_000,
            workers: 3,
            density,
            overlap: 0.5,
            pattern: synth::Pattern::Random,
            seed,
        };
        let inputs = synth::generate(&spec).unwrap();
        let fixed = FixedPoint::new(global_exponent(&inputs), 3, LaneWidth::W32).unwrap();
        let reference = reference(&inputs, &fixed);
        let mut sizing = Sizing::new(union_nnz(&inputs, &fixed));
        sizing.index = if seed == 2 {
            IndexChoice::Bloom
        } else {
            IndexChoice::Auto
        };
        let params = CodecParams::sized(seed, 0, 50_000, LaneWidth::W32, &sizing).unwrap();
        let t = encode_all::<i32>(&params, &inputs, &fixed).unwrap();
        dec.decode_into(
            &params,
            t.index_words(),
            t.sketch_cells(),
            Some(3),
            &mut out,
        )
        .unwrap();
        let mut dense = vec![0i64; 50_000];
        out.view().to_dense_sums(&mut dense).unwrap();
        for (&d, &r) in dense.iter().zip(&reference) {
            assert_eq!(d as i128, r);
        }
        candidates_into(&params, t.index_words(), &mut keys).unwrap();
        assert_eq!(keys, out.keys());
        dec.peel_into(&params, &keys, t.sketch_cells(), &mut sums)
            .unwrap();
        assert_eq!(sums, out.sums());
    }
}

/// The Bloom false-positive model does not under-count (measured over many filters).
#[test]
fn bloom_false_positive_model_does_not_under_count() {
    let dim = 200_000u64;
    for (union, bpk, k) in [(4_000usize, 8.0, 3u8), (4_000, 12.0, 6), (20_000, 6.0, 2)] {
        let blocks = ((union as f64 * bpk) / 256.0).ceil() as u32;
        let index = IndexKind::Bloom { blocks, k };
        let (mut fp_total, trials) = (0usize, 20);
        for t in 0..trials {
            let params =
                CodecParams::explicit(t, 0, dim, LaneWidth::W32, index, 8, 3, false).unwrap();
            let mut enc = Encoder::<i32>::new(&params).unwrap();
            let mut e = enc.new_encoding();
            let keys: Vec<u32> = rand_keys(dim, union, t);
            let ints = vec![1i64; keys.len()];
            enc.encode_fixed_sparse(&keys, &ints, &mut e).unwrap();
            let mut c = Vec::new();
            candidates_into(&params, e.index_words(), &mut c).unwrap();
            fp_total += c.len() - union;
        }
        let measured = fp_total as f64 / trials as f64;
        let (rate, _) = bloom_fpr_model(dim, union as f64, blocks, k, None);
        let model = rate * (dim as usize - union) as f64;
        assert!(
            model >= measured * 0.97,
            "union {union} bpk {bpk} k {k}: model {model} measured {measured}"
        );
        assert!(
            model <= measured * 1.15 + 5.0,
            "model {model} measured {measured}"
        );
        // The sizing's candidate estimate includes slack above the mean.
        let est = expected_candidates_with(dim, union as f64, index, None, 1e-5);
        assert!(est > union as f64 + measured);
    }
}

fn rand_keys(dim: u64, n: usize, seed: u64) -> Vec<u32> {
    let mut set = std::collections::BTreeSet::new();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while set.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        set.insert((x % dim) as u32);
    }
    set.into_iter().collect()
}

/// Sized tables of 60,000 keys (coupled layout) do not stall: 30 seeds here (the
/// `peel_rate` example runs 1,000).
#[test]
fn sized_coupled_tables_do_not_stall() {
    let keys: Vec<u32> = (0..60_000u32).map(|k| k * 3 + 1).collect();
    let ints: Vec<i64> = (0..60_000i64).map(|k| k % 97 - 48).collect();
    let mut dec = Decoder::<i32>::new();
    for t in 0..30 {
        let params = CodecParams::sized(
            t,
            0,
            180_001,
            LaneWidth::W32,
            &Sizing {
                index: IndexChoice::Bitmap,
                ..Sizing::new(60_000)
            },
        )
        .unwrap();
        assert!(matches!(params.layout(), Layout::Coupled { .. }));
        assert!((params.cells() as f64) < 1.2 * 60_000.0);
        let mut enc = Encoder::<i32>::new(&params).unwrap();
        let mut e = enc.new_encoding();
        enc.encode_fixed_sparse(&keys, &ints, &mut e).unwrap();
        let out = dec.decode_encoding(&e).unwrap();
        assert_eq!(out.nonzeros(), ints.iter().filter(|&&v| v != 0).count());
    }
}
