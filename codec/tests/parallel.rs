//! Two-thread decoding (candidates by halves of the index, the counting sort by halves of
//! the keys, the coupled peel by halves of the table, the dense output by halves) gives
//! exactly what one thread gives, and both equal an independent reference: successes,
//! stalls and corrupted aggregates alike.

mod common;

use common::*;
use sketchreduce_codec::*;

/// Large enough for every split path (more than 100,000 candidates, a coupled layout,
/// over a million positions).
const DIM: usize = 1_200_000;

fn inputs(seed: u64) -> Vec<Vec<f32>> {
    let spec = synth::SynthSpec {
        dim: DIM,
        workers: 4,
        density: 0.08,
        overlap: 0.5,
        pattern: synth::Pattern::Random,
        seed,
    };
    synth::generate(&spec).unwrap()
}

fn decoders<L: Lane>() -> (Decoder<L>, Decoder<L>) {
    let mut one = Decoder::<L>::new();
    one.set_threads(1);
    let mut two = Decoder::<L>::new();
    two.set_threads(2);
    assert_eq!((one.threads(), two.threads()), (1, 2));
    (one, two)
}

/// Decodes with one and two threads; asserts they agree (result or error) and returns the
/// two-thread result.
fn both<L: Lane>(
    params: &CodecParams,
    index: &[u32],
    cells: &[L::Cell],
) -> Result<DecodedSums, CodecError> {
    let (mut one, mut two) = decoders::<L>();
    let (mut a, mut b) = (DecodedSums::new(), DecodedSums::new());
    let ra = one.decode_into(params, index, cells, Some(4), &mut a);
    let rb = two.decode_into(params, index, cells, Some(4), &mut b);
    match (&ra, &rb) {
        // Which cells spread a corrupted value depends on the peeling order; the error
        // does not.
        (Err(CodecError::Inconsistent { .. }), Err(CodecError::Inconsistent { .. })) => {}
        _ => assert_eq!(ra, rb, "one thread vs two"),
    }
    assert_eq!(a.keys(), b.keys());
    if rb.is_ok() {
        assert_eq!(a.sums(), b.sums());
    }
    rb.map(|()| b)
}

#[test]
fn two_threads_decode_exactly_what_one_does() {
    for (seed, index, signs) in [
        (1u64, IndexChoice::Bitmap, false),
        (2, IndexChoice::Bloom, false),
        (3, IndexChoice::Bitmap, true),
    ] {
        let inputs = inputs(seed);
        let fixed = FixedPoint::new(global_exponent(&inputs), 4, LaneWidth::W32).unwrap();
        let reference = reference(&inputs, &fixed);
        let mut sizing = Sizing::new(union_nnz(&inputs, &fixed));
        sizing.index = index;
        sizing.signs = signs;
        let params = CodecParams::sized(seed, 7, DIM as u64, LaneWidth::W32, &sizing).unwrap();
        assert!(matches!(params.layout(), Layout::Coupled { .. }));
        let total = encode_all::<i32>(&params, &inputs, &fixed).unwrap();
        let out = both::<i32>(&params, total.index_words(), total.sketch_cells())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(
            out.keys().len() > 100_000,
            "{} candidates",
            out.keys().len()
        );
        let mut sums = vec![0i64; DIM];
        out.view().to_dense_sums(&mut sums).unwrap();
        for (i, (&d, &r)) in sums.iter().zip(&reference).enumerate() {
            assert_eq!(d as i128, r, "seed {seed} position {i}");
        }
        // The dense floats, written by two threads (streaming stores where the CPU has
        // AVX-512), are the one rounding of each exact sum.
        let mut dense = vec![f32::NAN; DIM];
        out.to_dense(&fixed, &mut dense).unwrap();
        for (i, (&d, &r)) in dense.iter().zip(&reference).enumerate() {
            assert_eq!(d, fixed.to_float(r as i64), "seed {seed} position {i}");
        }
    }
}

#[test]
fn two_threads_fail_as_one_does() {
    let inputs = inputs(4);
    let fixed = FixedPoint::new(global_exponent(&inputs), 4, LaneWidth::W32).unwrap();
    let union = union_nnz(&inputs, &fixed);
    let mut sizing = Sizing::new(union);
    sizing.index = IndexChoice::Bitmap;
    let params = CodecParams::sized(4, 0, DIM as u64, LaneWidth::W32, &sizing).unwrap();
    let total = encode_all::<i32>(&params, &inputs, &fixed).unwrap();

    // One cell changed: the peel still completes, then a residue or the check lane is off.
    let mut cells = total.sketch_cells().to_vec();
    let mid = cells.len() / 2;
    cells[mid] ^= 1 << 7;
    let e = both::<i32>(&params, total.index_words(), &cells).unwrap_err();
    assert!(
        matches!(e, CodecError::Inconsistent { .. } | CodecError::CheckFailed),
        "{e}"
    );

    // Too few cells for the keys (the same layout with fewer, still above the candidate
    // count): the peel stalls, with the same number of keys left over by both.
    let Layout::Coupled { segment_len } = params.layout() else {
        panic!("coupled expected");
    };
    let segments = (union as usize * 104 / 100).div_ceil(segment_len as usize);
    let small = CodecParams::explicit(
        4,
        0,
        DIM as u64,
        LaneWidth::W32,
        params.index_kind(),
        segments * segment_len as usize + CHECK_LANES,
        params.hashes(),
        false,
    )
    .unwrap()
    .with_layout(Layout::Coupled { segment_len })
    .unwrap();
    let total = encode_all::<i32>(&small, &inputs, &fixed).unwrap();
    match both::<i32>(&small, total.index_words(), total.sketch_cells()) {
        Err(CodecError::Stalled { unresolved, .. }) => assert!(unresolved > 0),
        other => panic!("expected a stall, got {other:?}"),
    }
}

#[test]
fn wide_lanes_split_too() {
    let inputs = inputs(5);
    let fixed = FixedPoint::new(global_exponent(&inputs), 4, LaneWidth::W64).unwrap();
    let reference = reference(&inputs, &fixed);
    let sizing = Sizing::new(union_nnz(&inputs, &fixed));
    let params = CodecParams::sized(5, 0, DIM as u64, LaneWidth::W64, &sizing).unwrap();
    let total = encode_all::<i64>(&params, &inputs, &fixed).unwrap();
    let out = both::<i64>(&params, total.index_words(), total.sketch_cells()).unwrap();
    let mut sums = vec![0i64; DIM];
    out.view().to_dense_sums(&mut sums).unwrap();
    for (i, (&d, &r)) in sums.iter().zip(&reference).enumerate() {
        assert_eq!(d as i128, r, "position {i}");
    }
}
