//! Helpers shared by the integration tests.
#![allow(dead_code)]

use sketchreduce_codec::*;

/// Reference: per-position i128 sum of every worker's fixed-point values.
pub fn reference(inputs: &[Vec<f32>], fixed: &FixedPoint) -> Vec<i128> {
    let dim = inputs.first().map_or(0, |v| v.len());
    let mut sums = vec![0i128; dim];
    for g in inputs {
        for (s, &v) in sums.iter_mut().zip(g) {
            *s += fixed.to_fixed(v) as i128;
        }
    }
    sums
}

/// Global exponent over all inputs.
pub fn global_exponent(inputs: &[Vec<f32>]) -> u32 {
    inputs
        .iter()
        .map(|g| max_exponent(g).expect("finite"))
        .max()
        .unwrap_or(0)
}

/// Number of positions any worker contributes a nonzero integer to.
pub fn union_nnz(inputs: &[Vec<f32>], fixed: &FixedPoint) -> u64 {
    let dim = inputs.first().map_or(0, |v| v.len());
    (0..dim)
        .filter(|&i| inputs.iter().any(|g| fixed.to_fixed(g[i]) != 0))
        .count() as u64
}

/// Encodes every input and merges them.
pub fn encode_all<L: Lane>(
    params: &CodecParams,
    inputs: &[Vec<f32>],
    fixed: &FixedPoint,
) -> Result<Encoding<L>, CodecError> {
    let mut enc = Encoder::<L>::new(params)?;
    let mut total = enc.new_encoding();
    let mut one = enc.new_encoding();
    for g in inputs {
        enc.encode_dense(g, fixed, &mut one)?;
        total.merge(&one)?;
    }
    Ok(total)
}

/// Decodes and, on success, checks every position against the reference; returns the error
/// on failure. Panics if a successful decode is not exact.
pub fn decode_and_check<L: Lane>(
    params: &CodecParams,
    total: &Encoding<L>,
    reference: &[i128],
) -> Result<(), CodecError> {
    let mut dec = Decoder::<L>::new();
    let out = dec.decode(params, total.index_words(), total.sketch_cells())?;
    let mut dense = vec![0i64; reference.len()];
    out.to_dense_sums(&mut dense)?;
    for (i, (&d, &r)) in dense.iter().zip(reference).enumerate() {
        assert_eq!(d as i128, r, "position {i}");
    }
    Ok(())
}
