//! Helpers shared by the agent's integration tests.

use sketchreduce_codec::{max_exponent, FixedPoint, LaneWidth};

/// The exact fixed-point sums an all-reduce of `grads` must produce, computed independently of
/// the codec and the switch: agree on the exponent, quantize, add in i64. Also returns the
/// fixed-point scale used.
pub fn reference(grads: &[Vec<f32>]) -> (FixedPoint, Vec<i64>) {
    let e = grads
        .iter()
        .map(|g| max_exponent(g).unwrap())
        .max()
        .unwrap();
    let f = FixedPoint::new(e, grads.len() as u32, LaneWidth::W32).unwrap();
    let mut sums = vec![0i64; grads[0].len()];
    for g in grads {
        for (s, &v) in sums.iter_mut().zip(g) {
            *s += f.to_fixed(v);
        }
    }
    (f, sums)
}
