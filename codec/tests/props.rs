//! Property tests: homomorphism, exact decode, stall safety.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use sketchreduce_codec::synth::{generate, Pattern, SynthSpec};
use sketchreduce_codec::*;

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5eed),
        max_shrink_iters: 256,
        ..Config::default()
    }
}

fn index_choice() -> impl Strategy<Value = IndexChoice> {
    prop_oneof![
        Just(IndexChoice::Auto),
        Just(IndexChoice::Bitmap),
        Just(IndexChoice::Bloom),
        Just(IndexChoice::Groups)
    ]
}

fn layout() -> impl Strategy<Value = LayoutChoice> {
    prop_oneof![
        Just(LayoutChoice::Auto),
        Just(LayoutChoice::Plain),
        Just(LayoutChoice::Coupled)
    ]
}

fn pattern() -> impl Strategy<Value = Pattern> {
    prop_oneof![3 => Just(Pattern::Random), 1 => (1u32..8).prop_map(Pattern::Rows)]
}

/// A sparse integer vector: (dim, [(index, value)]).
fn sparse_ints(dim: u32) -> impl Strategy<Value = Vec<(u32, i64)>> {
    proptest::collection::vec(
        (0..dim.max(1), -1000i64..1000),
        0..(dim as usize).min(200) + 1,
    )
    .prop_map(move |v| v.into_iter().filter(|(k, _)| *k < dim).collect())
}

fn split(v: &[(u32, i64)]) -> (Vec<u32>, Vec<i64>) {
    v.iter().copied().unzip()
}

fn check_exact<L: Lane>(
    spec: &SynthSpec,
    lane: LaneWidth,
    index: IndexChoice,
    signs: bool,
    layout: LayoutChoice,
) -> Result<(), TestCaseError> {
    let inputs = generate(spec).unwrap();
    let fixed = FixedPoint::new(global_exponent(&inputs), spec.workers as u32, lane).unwrap();
    let reference = reference(&inputs, &fixed);
    let mut sizing = Sizing::new(union_nnz(&inputs, &fixed));
    sizing.index = index;
    sizing.failure_prob = 1e-9;
    sizing.signs = signs;
    sizing.layout = layout;
    let params = CodecParams::sized(spec.seed, 3, spec.dim as u64, lane, &sizing).unwrap();
    let total = encode_all::<L>(&params, &inputs, &fixed).unwrap();
    decode_and_check::<L>(&params, &total, &reference)
        .map_err(|e| TestCaseError::fail(format!("{e} with {params:?}")))?;
    Ok(())
}

proptest! {
    #![proptest_config(config(96))]

    /// encode(a) + encode(b) == encode(a + b) as integers (cells), and the index is the OR.
    #[test]
    fn homomorphism(
        (dim, a, b) in (0u32..3000).prop_flat_map(|d| (Just(d), sparse_ints(d), sparse_ints(d))),
        seed in any::<u64>(),
        lane64 in any::<bool>(),
        signs in any::<bool>(),
        index in index_choice(),
        segments in prop_oneof![1 => Just(0usize), 1 => 4usize..40],
    ) {
        let lane = if lane64 { LaneWidth::W64 } else { LaneWidth::W32 };
        let mut sizing = Sizing::new(200);
        sizing.index = index;
        sizing.signs = signs;
        let mut params = CodecParams::sized(seed, 1, dim as u64, lane, &sizing).unwrap();
        if segments > 0 {
            // A coupled table of the same size (small tables are never sized coupled).
            let len = 8u32;
            params = CodecParams::explicit(seed, 1, dim as u64, lane, params.index_kind(),
                segments * len as usize + CHECK_LANES, 4, signs)
                .unwrap()
                .with_layout(Layout::Coupled { segment_len: len })
                .unwrap();
        }
        let mut sum = std::collections::BTreeMap::<u32, i64>::new();
        for &(k, v) in a.iter().chain(&b) {
            *sum.entry(k).or_default() += v;
        }
        let nonzero: std::collections::BTreeSet<u32> =
            a.iter().chain(&b).filter(|(_, v)| *v != 0).map(|(k, _)| *k).collect();
        let support: Vec<(u32, i64)> = nonzero.into_iter().map(|k| (k, 1)).collect();
        let summed: Vec<(u32, i64)> = sum.into_iter().collect();
        macro_rules! run {
            ($l:ty) => {{
                let mut enc = Encoder::<$l>::new(&params).unwrap();
                let (mut ea, mut eb, mut es, mut eu) =
                    (enc.new_encoding(), enc.new_encoding(), enc.new_encoding(), enc.new_encoding());
                let (ka, va) = split(&a);
                let (kb, vb) = split(&b);
                let (ks, vs) = split(&summed);
                let (ku, vu) = split(&support);
                enc.encode_fixed_sparse(&ka, &va, &mut ea).unwrap();
                enc.encode_fixed_sparse(&kb, &vb, &mut eb).unwrap();
                enc.encode_fixed_sparse(&ks, &vs, &mut es).unwrap();
                enc.encode_fixed_sparse(&ku, &vu, &mut eu).unwrap();
                let mut ab = ea.clone();
                ab.merge(&eb).unwrap();
                let mut ba = eb.clone();
                ba.merge(&ea).unwrap();
                prop_assert_eq!(&ab, &ba);
                prop_assert_eq!(ab.sketch_cells(), es.sketch_cells());
                prop_assert_eq!(ab.index_words(), eu.index_words());
            }};
        }
        if lane64 { run!(i64) } else { run!(i32) }
    }

    /// Correctly sized sketches decode every position exactly.
    #[test]
    fn exact_decode(
        dim in prop_oneof![1 => Just(0usize), 1 => Just(1usize), 8 => 2usize..4000],
        workers in 1usize..64,
        density in prop_oneof![1 => Just(0.0), 1 => Just(1.0), 4 => 0.0f64..0.2, 3 => 0.0f64..1.0],
        overlap in 0.0f64..=1.0,
        pattern in pattern(),
        seed in any::<u64>(),
        lane64 in any::<bool>(),
        signs in any::<bool>(),
        index in index_choice(),
        layout in layout(),
    ) {
        // Keep debug-mode cost bounded: total input elements <= ~200k.
        let workers = workers.min((200_000 / dim.max(1)).max(1));
        let spec = SynthSpec { dim, workers, density, overlap, pattern, seed };
        if lane64 {
            check_exact::<i64>(&spec, LaneWidth::W64, index, signs, layout)?;
        } else {
            check_exact::<i32>(&spec, LaneWidth::W32, index, signs, layout)?;
        }
    }

    /// Undersized sketches either decode exactly or report an error; never wrong data.
    #[test]
    fn undersized_never_wrong(
        dim in 1usize..3000,
        workers in 1usize..8,
        density in 0.0f64..0.5,
        seed in any::<u64>(),
        frac in 0.05f64..1.3,
        hashes in 3u8..=4,
        lane64 in any::<bool>(),
        bloom in any::<bool>(),
        coupled in any::<bool>(),
    ) {
        let spec = SynthSpec { dim, workers, density, overlap: 0.3, pattern: Pattern::Random, seed };
        let inputs = generate(&spec).unwrap();
        let lane = if lane64 { LaneWidth::W64 } else { LaneWidth::W32 };
        let fixed = FixedPoint::new(global_exponent(&inputs), workers as u32, lane).unwrap();
        let reference = reference(&inputs, &fixed);
        let u = union_nnz(&inputs, &fixed);
        let mut sizing = Sizing::new(u);
        sizing.index = if bloom { IndexChoice::Bloom } else { IndexChoice::Bitmap };
        sizing.hashes = Some(hashes);
        sizing.cells = Some(((u as f64 * frac) as usize).max(hashes as usize + CHECK_LANES));
        let mut params = CodecParams::sized(seed, 9, dim as u64, lane, &sizing).unwrap();
        let len = 4usize;
        if coupled && params.peel_cells() / len >= hashes as usize {
            let peel = params.peel_cells() / len * len;
            params = CodecParams::explicit(seed, 9, dim as u64, lane, params.index_kind(),
                peel + CHECK_LANES, hashes, false)
                .unwrap()
                .with_layout(Layout::Coupled { segment_len: len as u32 })
                .unwrap();
        }
        let res = if lane64 {
            let total = encode_all::<i64>(&params, &inputs, &fixed).unwrap();
            decode_and_check::<i64>(&params, &total, &reference)
        } else {
            let total = encode_all::<i32>(&params, &inputs, &fixed).unwrap();
            decode_and_check::<i32>(&params, &total, &reference)
        };
        match res {
            Ok(()) => {}
            Err(CodecError::Stalled { unresolved, candidates, cells }) => {
                prop_assert!(unresolved > 0 && unresolved <= candidates);
                prop_assert_eq!(cells, params.cells());
            }
            Err(CodecError::Saturated { candidates, cells }) => {
                prop_assert!(candidates > cells);
                prop_assert_eq!(cells, params.peel_cells());
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }
}
