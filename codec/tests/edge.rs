//! Edge values, errors, baselines agreement, determinism.

mod common;

use common::*;
use sketchreduce_codec::synth::{generate, read_npy, Pattern, SynthSpec};
use sketchreduce_codec::*;

fn roundtrip<L: Lane>(inputs: &[Vec<f32>], lane: LaneWidth) -> (FixedPoint, Vec<f32>) {
    let fixed = FixedPoint::new(global_exponent(inputs), inputs.len() as u32, lane).unwrap();
    let reference = reference(inputs, &fixed);
    let dim = inputs[0].len();
    let mut sizing = Sizing::new(union_nnz(inputs, &fixed));
    sizing.failure_prob = 1e-9;
    let params = CodecParams::sized(1, 2, dim as u64, lane, &sizing).unwrap();
    let total = encode_all::<L>(&params, inputs, &fixed).unwrap();
    decode_and_check::<L>(&params, &total, &reference).unwrap();
    let mut dec = Decoder::<L>::new();
    let out = dec.decode_encoding(&total).unwrap();
    let mut dense = vec![0.0; dim];
    out.to_dense(&fixed, &mut dense).unwrap();
    (fixed, dense)
}

#[test]
fn edge_values_decode_exactly() {
    let tiny = f32::from_bits(1);
    let sub = f32::from_bits(0x0040_0000);
    let row = vec![
        0.0,
        -0.0,
        tiny,
        -tiny,
        sub,
        f32::MIN_POSITIVE,
        f32::MAX,
        -f32::MAX,
        1.0,
        -1.0,
    ];
    for workers in [1usize, 2, 3, 64] {
        let inputs = vec![row.clone(); workers];
        let (_, d32) = roundtrip::<i32>(&inputs, LaneWidth::W32);
        let (_, d64) = roundtrip::<i64>(&inputs, LaneWidth::W64);
        for d in [&d32, &d64] {
            assert_eq!(d[0], 0.0);
            assert_eq!(d[1], 0.0);
            // The largest magnitudes of same sign at the overflow edge: no wrap-around sign flip.
            assert!(d[6] > 0.0 && d[7] < 0.0, "{d:?}");
            assert_eq!(d[6], -d[7]);
        }
    }
    // Only subnormals: the scale adapts and they are exact.
    let inputs = vec![vec![tiny, -sub, 0.0, sub]; 5];
    let (_, d) = roundtrip::<i32>(&inputs, LaneWidth::W32);
    assert_eq!(d, vec![tiny * 5.0, -sub * 5.0, 0.0, sub * 5.0]);
}

#[test]
fn overflow_edge_all_workers_at_limit() {
    for lane in [LaneWidth::W32, LaneWidth::W64] {
        for n in [1u32, 7, 64] {
            let v = 1.999_999_9f32; // just below 2^1: exponent 150
            let e = exponent_of(v).unwrap();
            let fixed = FixedPoint::new(e, n, lane).unwrap();
            // Independent quantization: round(v · 2^s), s from the documented formula.
            let c = (n as f64).log2().ceil() as i32;
            let s = (lane.bits() as i32 - 2 - c) - (e as i32 - 149);
            let want = (v as f64 * 2f64.powi(s)).round_ties_even() as i64;
            assert_eq!(fixed.try_to_fixed(v, 0), Ok(want));
            let inputs = vec![vec![v, -v]; n as usize];
            let reference = reference(&inputs, &fixed);
            assert!(reference[0] < (1i128 << (lane.bits() - 1)));
            let params = CodecParams::sized(
                0,
                0,
                2,
                lane,
                &Sizing {
                    failure_prob: 1e-9,
                    ..Sizing::new(2)
                },
            )
            .unwrap();
            match lane {
                LaneWidth::W32 => {
                    let t = encode_all::<i32>(&params, &inputs, &fixed).unwrap();
                    decode_and_check::<i32>(&params, &t, &reference).unwrap();
                }
                LaneWidth::W64 => {
                    let t = encode_all::<i64>(&params, &inputs, &fixed).unwrap();
                    decode_and_check::<i64>(&params, &t, &reference).unwrap();
                }
            }
        }
    }
}

#[test]
fn non_finite_is_an_error() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let v = vec![0.0, 1.0, bad, 2.0];
        assert_eq!(max_exponent(&v), Err(CodecError::NonFinite { position: 2 }));
        let fixed = FixedPoint::new(160, 1, LaneWidth::W32).unwrap();
        let params = CodecParams::sized(0, 0, 4, LaneWidth::W32, &Sizing::new(3)).unwrap();
        let mut enc = Encoder::<i32>::new(&params).unwrap();
        let mut out = enc.new_encoding();
        assert_eq!(
            enc.encode_dense(&v, &fixed, &mut out),
            Err(CodecError::NonFinite { position: 2 })
        );
    }
}

#[test]
fn value_beyond_exponent_is_an_error() {
    let fixed = FixedPoint::new(exponent_of(1.0).unwrap(), 2, LaneWidth::W32).unwrap();
    let params = CodecParams::sized(0, 0, 2, LaneWidth::W32, &Sizing::new(2)).unwrap();
    let mut enc = Encoder::<i32>::new(&params).unwrap();
    let mut out = enc.new_encoding();
    assert!(matches!(
        enc.encode_dense(&[0.5, 4.0], &fixed, &mut out),
        Err(CodecError::OutOfRange { position: 1, .. })
    ));
}

#[test]
fn mismatches_are_errors() {
    let p32 = CodecParams::sized(0, 0, 100, LaneWidth::W32, &Sizing::new(10)).unwrap();
    let other = CodecParams::sized(0, 1, 100, LaneWidth::W32, &Sizing::new(10)).unwrap();
    assert!(Encoder::<i64>::new(&p32).is_err());
    let mut a = Encoding::<i32>::new(&p32).unwrap();
    let b = Encoding::<i32>::new(&other).unwrap();
    assert_eq!(a.merge(&b), Err(CodecError::ParamsMismatch));
    assert!(Encoding::<i32>::from_parts(&p32, vec![0; 1], vec![0; p32.cells()]).is_err());
    let mut dec = Decoder::<i32>::new();
    assert!(dec.decode(&p32, &[0; 3], &[0; 3]).is_err());
    assert!(
        CodecParams::explicit(0, 0, 10, LaneWidth::W32, IndexKind::Bitmap, 2, 3, false).is_err()
    );
    assert!(
        CodecParams::explicit(0, 0, 10, LaneWidth::W32, IndexKind::Bitmap, 9, 5, false).is_err()
    );
}

#[test]
fn inconsistent_data_is_detected() {
    let params = CodecParams::sized(0, 0, 64, LaneWidth::W32, &Sizing::new(4)).unwrap();
    let mut enc = Encoder::<i32>::new(&params).unwrap();
    let mut e = enc.new_encoding();
    enc.encode_fixed_sparse(&[3, 10], &[5, -7], &mut e).unwrap();
    // A contribution the index does not report (corruption): caught, not decoded.
    e.sketch_cells_mut()[0] = e.sketch_cells()[0].wrapping_add(1);
    let mut dec = Decoder::<i32>::new();
    assert!(dec.decode_encoding(&e).is_err());
}

#[test]
fn params_are_deterministic_per_tensor() {
    let s = Sizing::new(1000);
    let a = CodecParams::sized(42, 7, 1 << 20, LaneWidth::W32, &s).unwrap();
    let b = CodecParams::sized(42, 7, 1 << 20, LaneWidth::W32, &s).unwrap();
    assert_eq!(a, b);
    let fixed = FixedPoint::new(150, 1, LaneWidth::W32).unwrap();
    let mut enc_a = Encoder::<i32>::new(&a).unwrap();
    let c = CodecParams::sized(42, 8, 1 << 20, LaneWidth::W32, &s).unwrap();
    let mut enc_c = Encoder::<i32>::new(&c).unwrap();
    let (mut ea, mut ec) = (enc_a.new_encoding(), enc_c.new_encoding());
    enc_a
        .encode_sparse(&[12345], &[0.5], &fixed, &mut ea)
        .unwrap();
    enc_c
        .encode_sparse(&[12345], &[0.5], &fixed, &mut ec)
        .unwrap();
    assert_ne!(ea.sketch_cells(), ec.sketch_cells());
}

#[test]
fn sparse_and_dense_encode_agree_and_from_parts_decodes() {
    let spec = SynthSpec {
        dim: 5000,
        workers: 1,
        density: 0.05,
        overlap: 0.0,
        pattern: Pattern::Random,
        seed: 3,
    };
    let g = &generate(&spec).unwrap()[0];
    let fixed = FixedPoint::new(max_exponent(g).unwrap(), 4, LaneWidth::W64).unwrap();
    let params = CodecParams::sized(5, 5, 5000, LaneWidth::W64, &Sizing::new(250)).unwrap();
    let mut enc = Encoder::<i64>::new(&params).unwrap();
    let (mut d, mut s) = (enc.new_encoding(), enc.new_encoding());
    enc.encode_dense(g, &fixed, &mut d).unwrap();
    let (idx, vals): (Vec<u32>, Vec<f32>) = g
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != 0.0)
        .map(|(i, v)| (i as u32, *v))
        .rev()
        .unzip();
    enc.encode_sparse(&idx, &vals, &fixed, &mut s).unwrap();
    assert_eq!(d, s);
    let (iw, cells) = d.into_parts();
    let mut dec = Decoder::<i64>::new();
    let out = dec.decode(&params, &iw, &cells).unwrap();
    let mut pairs = Vec::new();
    out.to_sparse(&fixed, &mut pairs).unwrap();
    assert_eq!(pairs.len(), idx.len());
    for (k, v) in pairs {
        assert_eq!(v, fixed.to_float(fixed.to_fixed(g[k as usize])));
    }
}

#[test]
fn baselines_match_the_sketch_bit_for_bit() {
    let spec = SynthSpec {
        dim: 20_000,
        workers: 5,
        density: 0.02,
        overlap: 0.5,
        pattern: Pattern::Rows(16),
        seed: 11,
    };
    let inputs = generate(&spec).unwrap();
    let fixed = FixedPoint::new(global_exponent(&inputs), 5, LaneWidth::W32).unwrap();
    let reference = reference(&inputs, &fixed);
    for choice in [IndexChoice::Bitmap, IndexChoice::Bloom] {
        let mut sizing = Sizing::new(union_nnz(&inputs, &fixed));
        sizing.index = choice;
        let params = CodecParams::sized(1, 1, 20_000, LaneWidth::W32, &sizing).unwrap();
        // Sketch.
        let total = encode_all::<i32>(&params, &inputs, &fixed).unwrap();
        decode_and_check::<i32>(&params, &total, &reference).unwrap();
        // Dense.
        let mut dense = vec![0u32; 20_000];
        let mut one = vec![0u32; 20_000];
        for g in &inputs {
            dense_encode::<i32>(g, &fixed, &mut one).unwrap();
            merge_slices::<i32>(&mut [], &mut dense, &[], &one).unwrap();
        }
        // COO.
        let mut coo_sum = vec![0u32; 20_000];
        let mut coo = Coo::default();
        for g in &inputs {
            coo.encode(g, &fixed).unwrap();
            coo.accumulate::<i32>(&mut coo_sum).unwrap();
        }
        assert_eq!(coo_sum, dense);
        // Union-rank.
        let mut union = vec![0u32; params.index_words()];
        let mut idx = vec![0u32; params.index_words()];
        for g in &inputs {
            UnionRank::<i32>::round1(&params, g, &fixed, &mut idx).unwrap();
            for (u, i) in union.iter_mut().zip(&idx) {
                *u |= i;
            }
        }
        assert_eq!(union, total.index_words());
        let mut ur = UnionRank::<i32>::new();
        let n = ur.prepare(&params, &union).unwrap();
        let mut acc = vec![0u32; n];
        let mut part = vec![0u32; n];
        for g in &inputs {
            ur.round2(&union, g, &fixed, &mut part).unwrap();
            merge_slices::<i32>(&mut [], &mut acc, &[], &part).unwrap();
        }
        let mut sums = Vec::new();
        ur.decode(&acc, &mut sums).unwrap();
        let mut ur_dense = vec![0u32; 20_000];
        for (&k, &s) in ur.keys().iter().zip(&sums) {
            ur_dense[k as usize] = s as u32;
        }
        assert_eq!(ur_dense, dense);
        for (i, &r) in reference.iter().enumerate() {
            assert_eq!(dense[i] as i32 as i128, r);
        }
    }
}

#[test]
fn synth_is_deterministic_and_respects_spec() {
    let spec = SynthSpec {
        dim: 10_000,
        workers: 3,
        density: 0.1,
        overlap: 1.0,
        pattern: Pattern::Random,
        seed: 9,
    };
    let a = generate(&spec).unwrap();
    assert_eq!(a, generate(&spec).unwrap());
    for g in &a {
        assert_eq!(g.iter().filter(|v| **v != 0.0).count(), 1000);
        assert!(g.iter().any(|v| *v < 0.0) && g.iter().any(|v| *v > 0.0));
    }
    let supp = |g: &Vec<f32>| g.iter().map(|v| *v != 0.0).collect::<Vec<_>>();
    assert_eq!(supp(&a[0]), supp(&a[1]));
    let indep = generate(&SynthSpec {
        overlap: 0.0,
        ..spec
    })
    .unwrap();
    assert_ne!(supp(&indep[0]), supp(&indep[1]));
    assert!(generate(&SynthSpec {
        density: 1.5,
        ..spec
    })
    .is_err());
    let rows = generate(&SynthSpec {
        pattern: Pattern::Rows(10),
        ..spec
    })
    .unwrap();
    for r in rows[0].chunks(10) {
        let nz = r.iter().filter(|v| **v != 0.0).count();
        assert!(nz == 0 || nz == 10);
    }
}

#[test]
fn npy_file_round_trip() {
    let dir = std::env::temp_dir().join(format!("sketchreduce-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("g.npy");
    let v = vec![1.0f32, 0.0, -2.5];
    std::fs::write(&path, sketchreduce_codec::npy::to_npy_bytes(&v)).unwrap();
    assert_eq!(read_npy(&path).unwrap(), v);
    assert!(read_npy(dir.join("missing.npy")).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
