//! Block floating point shared by every aggregation algorithm of the project.
//!
//! All algorithms (sketch, dense ring, all-gather of pairs, union-rank) convert floats to lane
//! integers with the *same* [`FixedPoint`], so integer sums are identical whatever the order of
//! additions, and decoded floats are bit-identical across algorithms.
//!
//! # Exponent
//! For a nonzero finite `v`, [`exponent_of`] returns the unique `e ≥ 1` with
//! `2^(e-150) ≤ |v| < 2^(e-149)` (so the smallest subnormal has `e = 1`, `1.0` has `e = 150`,
//! the largest finite float has `e = 277`); zero (and `-0.0`) has `e = 0`. The exponent is
//! monotone in `|v|`, so the exponent of a block's max |value| bounds every value of the block,
//! and the global exponent `E` is an unsigned MAX over workers (a switch can compute it).
//!
//! # Scale
//! With lane width `w` (32 or 64), `n` workers and `c = ceil(log2 n)`, the per-worker budget is
//! `L = 2^(w-2-c)` and the scale is `2^s` with `s = (w-2-c) - (E-149)`. Every value with
//! `|v| < 2^(E-149)` maps to `q = round_ties_even(v · 2^s)` with `|q| ≤ L`, so any sum of `n`
//! contributions satisfies `|Σq| ≤ 2^(w-2) < 2^(w-1)`: it fits the signed lane, and wrapping
//! lane arithmetic (mod `2^w`) recovers it exactly. The product `v · 2^s` is computed exactly
//! in `f64` (24-bit mantissa times a power of two), so rounding is deterministic on every
//! machine. Converting back rounds `sum · 2^-s` to the nearest `f32` once (see
//! [`FixedPoint::to_float`]).
//!
//! # Value width
//! [`FixedPoint::with_bits`] takes the *value width* `w` explicitly instead of a lane width:
//! the sums are then known modulo `2^w` only (e.g. `w = 64 − c` for a 64-bit cell carried
//! through a 32-bit switch as two words, see [`crate::wide`]). Same formulas with that `w`.
//!
//! # Error bound
//! Each contribution is rounded by at most half a unit `2^-(s+1)`, so the exact integer sum of
//! `n` contributions, times `2^-s`, is within `n · 2^-(s+1)` of the exact real sum of the
//! inputs ([`FixedPoint::abs_error_bound`]); the final conversion to `f32` adds at most half
//! an `f32` ulp of the result.

use crate::error::CodecError;

/// Largest exponent a finite `f32` can have (see the module docs).
pub const MAX_FINITE_EXPONENT: u32 = 277;

/// Width of the integer lanes the network adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaneWidth {
    /// 32-bit lanes, the P4 switch default.
    W32,
    /// 64-bit lanes, more precision for software aggregation.
    W64,
}

impl LaneWidth {
    /// Number of bits of a lane.
    pub const fn bits(self) -> u32 {
        match self {
            LaneWidth::W32 => 32,
            LaneWidth::W64 => 64,
        }
    }

    /// Bytes of one lane on the wire.
    pub const fn bytes(self) -> usize {
        (self.bits() / 8) as usize
    }

    /// Reduces `v` modulo `2^w` and sign-extends it, i.e. what a wrapping lane holds after
    /// the additions; lets dense baselines accumulate in `i64` and still match the sketch.
    pub const fn wrap(self, v: i64) -> i64 {
        match self {
            LaneWidth::W32 => v as i32 as i64,
            LaneWidth::W64 => v,
        }
    }
}

/// Exponent of a single value (see the module docs); `None` for NaN or ±Inf.
#[inline]
pub fn exponent_of(v: f32) -> Option<u32> {
    let a = v.to_bits() & 0x7fff_ffff;
    if a >= 0x7f80_0000 {
        None
    } else {
        Some(exponent_of_abs_bits(a))
    }
}

#[inline]
fn exponent_of_abs_bits(a: u32) -> u32 {
    let field = a >> 23;
    if a == 0 {
        0
    } else if field == 0 {
        32 - a.leading_zeros()
    } else {
        field + 23
    }
}

/// Biased exponent of the largest |value| (0 if all values are zero), the quantity each worker
/// reports for the MAX reduction. NaN or ±Inf anywhere gives [`CodecError::NonFinite`].
///
/// Runs as one branch-free max over the raw bits so it vectorises (the exponent is monotone in
/// the bits of |v|, and non-finite values have the largest bit patterns).
pub fn max_exponent(values: &[f32]) -> Result<u32, CodecError> {
    let mut acc = [0u32; 16];
    let mut chunks = values.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] = acc[i].max(c[i].to_bits() & 0x7fff_ffff);
        }
    }
    let mut max = acc.iter().copied().max().unwrap_or(0);
    for v in chunks.remainder() {
        max = max.max(v.to_bits() & 0x7fff_ffff);
    }
    if max >= 0x7f80_0000 {
        let position = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(CodecError::NonFinite { position });
    }
    Ok(exponent_of_abs_bits(max))
}

/// The agreed fixed-point conversion for one aggregation (one tensor, one step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedPoint {
    exponent: u32,
    workers: u32,
    lane: LaneWidth,
    bits: u32,
    shift: i32,
    limit: i64,
    scale: f64,
    inv_scale: f64,
}

/// Round half to even of `x = v · 2^s` for an `f32` `v`, without a libm call (baseline x86_64
/// has no rounding instruction). Below `2^51` the classic magic-constant addition rounds in the
/// default round-to-nearest-even mode; at or above `2^24` such an `x` is already an integer
/// (24-bit mantissa), so the two cases cover every input. Same result as `round_ties_even`.
#[inline(always)]
fn round_even(x: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52
    if x.abs() < 2_251_799_813_685_248.0 {
        // |x| < 2^51
        (x + MAGIC) - MAGIC
    } else {
        x
    }
}

fn pow2(e: i32) -> f64 {
    // Exact power of two for the exponent range used here (|e| < 300).
    f64::from_bits(((e + 1023) as u64) << 52)
}

impl FixedPoint {
    /// Builds the conversion from the global (MAX-reduced) exponent, the number of workers
    /// whose contributions are summed, and the lane width (value width = lane width).
    pub fn new(global_exponent: u32, workers: u32, lane: LaneWidth) -> Result<Self, CodecError> {
        Self::build(global_exponent, workers, lane.bits(), lane)
    }

    /// Like [`Self::new`] for an explicit value width of `bits` bits (`8..=64`): sums are
    /// exact modulo `2^bits`, the per-worker budget is `bits − 2 − ceil(log2 workers)` bits.
    /// Widths up to 32 use 32-bit lanes ([`LaneWidth::W32`]), wider ones 64-bit lanes.
    pub fn with_bits(global_exponent: u32, workers: u32, bits: u32) -> Result<Self, CodecError> {
        if !(8..=64).contains(&bits) {
            return Err(CodecError::InvalidFixedPoint(format!(
                "value width {bits} not in 8..=64"
            )));
        }
        let lane = if bits <= 32 {
            LaneWidth::W32
        } else {
            LaneWidth::W64
        };
        Self::build(global_exponent, workers, bits, lane)
    }

    fn build(
        global_exponent: u32,
        workers: u32,
        bits: u32,
        lane: LaneWidth,
    ) -> Result<Self, CodecError> {
        if global_exponent > MAX_FINITE_EXPONENT {
            return Err(CodecError::InvalidFixedPoint(format!(
                "exponent {global_exponent} > {MAX_FINITE_EXPONENT}"
            )));
        }
        if workers == 0 {
            return Err(CodecError::InvalidFixedPoint("zero workers".into()));
        }
        let c = ceil_log2(workers) as i32;
        let w = bits as i32;
        let budget = w - 2 - c;
        if budget < 1 {
            return Err(CodecError::InvalidFixedPoint(format!(
                "{workers} workers do not fit a {w}-bit value"
            )));
        }
        let e = global_exponent.max(1) as i32;
        let shift = budget - (e - 149);
        Ok(FixedPoint {
            exponent: global_exponent,
            workers,
            lane,
            bits,
            shift,
            limit: 1i64 << budget,
            scale: pow2(shift),
            inv_scale: pow2(-shift),
        })
    }

    /// The global exponent this conversion was built for.
    pub fn exponent(&self) -> u32 {
        self.exponent
    }

    /// Number of workers whose sum is guaranteed to fit.
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// Lane width.
    pub fn lane(&self) -> LaneWidth {
        self.lane
    }

    /// Value width `w`: sums are exact modulo `2^w` (the lane width unless built by
    /// [`Self::with_bits`]).
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Bound on `|decoded − exact real sum|` per element before the final `f32` rounding:
    /// `workers · 2^-(shift+1)` (each contribution is rounded by at most half a unit).
    pub fn abs_error_bound(&self) -> f64 {
        self.workers as f64 * pow2(-self.shift - 1)
    }

    /// Largest |sum| that `contributions` valid contributions can produce
    /// (`contributions · per_worker_limit`).
    pub fn sum_limit(&self, contributions: u32) -> i128 {
        contributions as i128 * self.limit as i128
    }

    /// Checks a decoded sum of `contributions` contributions: the count must not exceed the
    /// workers the scale was built for, and `|sum|` must be within [`Self::sum_limit`].
    /// Either failure means the lane wrapped and the value is wrong.
    pub fn check_sum(&self, sum: i64, contributions: u32) -> Result<(), CodecError> {
        if contributions > self.workers {
            return Err(CodecError::TooManyContributions {
                contributions,
                workers: self.workers,
            });
        }
        if (sum as i128).abs() > self.sum_limit(contributions.max(1)) {
            return Err(CodecError::SumOutOfRange {
                sum,
                limit: self.sum_limit(contributions.max(1)),
            });
        }
        Ok(())
    }

    /// `s` such that `q = round(v · 2^s)`.
    pub fn shift(&self) -> i32 {
        self.shift
    }

    /// Largest |integer| a single worker may contribute.
    pub fn per_worker_limit(&self) -> i64 {
        self.limit
    }

    /// The integer a worker contributes for `v` (round to nearest, ties to even). Values beyond
    /// the agreed exponent saturate at ±[`Self::per_worker_limit`] and NaN maps to 0; use
    /// [`Self::try_to_fixed`] to get an error instead.
    #[inline]
    pub fn to_fixed(&self, v: f32) -> i64 {
        let x = round_even(v as f64 * self.scale);
        // `as` saturates and maps NaN to 0; clamp keeps the sum-fits guarantee.
        (x as i64).clamp(-self.limit, self.limit)
    }

    /// Like [`Self::to_fixed`] but rejects non-finite values and values the global exponent
    /// does not cover (`position` is only used in the error).
    #[inline]
    pub fn try_to_fixed(&self, v: f32, position: usize) -> Result<i64, CodecError> {
        if !v.is_finite() {
            return Err(CodecError::NonFinite { position });
        }
        let x = round_even(v as f64 * self.scale);
        if x.abs() > self.limit as f64 {
            return Err(CodecError::OutOfRange {
                position,
                exponent: self.exponent,
            });
        }
        Ok(x as i64)
    }

    /// Converts a lane sum back to a float: `sum · 2^-s` rounded once to the nearest `f32`
    /// (ties to even). For 32-bit lanes pass the sign-extended lane value (see
    /// [`LaneWidth::wrap`]).
    #[inline]
    pub fn to_float(&self, sum: i64) -> f32 {
        if sum.unsigned_abs() <= 1 << 53 {
            // Exact in f64 (53-bit mantissa, power-of-two scale): one rounding, to f32.
            (sum as f64 * self.inv_scale) as f32
        } else {
            to_float_wide(sum, self.shift)
        }
    }

    /// Bulk [`Self::to_fixed`] into 32-bit lanes (two's complement), for value widths up to
    /// 32 bits: `dst[i] = to_fixed(src[i]) as u32`. Written as one branch-free loop (clamp,
    /// then round half to even with the magic constant, which is exact below 2^51) so the
    /// compiler vectorises it; same results as [`Self::to_fixed`].
    ///
    /// # Panics
    /// If the lengths differ or the width is above 32 bits (programming errors).
    pub fn quantize_narrow(&self, src: &[f32], dst: &mut [u32]) {
        assert!(
            self.bits() <= 32,
            "quantize_narrow on a {}-bit scale",
            self.bits()
        );
        assert_eq!(src.len(), dst.len(), "quantize_narrow lengths");
        const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52
        let (scale, lim) = (self.scale, self.limit as f64);
        for (d, &v) in dst.iter_mut().zip(src) {
            // NaN stays NaN through clamp and rounding and casts to 0, as in `to_fixed`.
            let x = (v as f64 * scale).clamp(-lim, lim);
            *d = ((x + MAGIC) - MAGIC) as i32 as u32;
        }
    }

    /// Bulk [`Self::to_float`] of 32-bit lane sums (each lane sign-extended): exact in `f64`,
    /// one rounding to `f32`, in a loop the compiler vectorises. Same results as
    /// [`Self::to_float`].
    ///
    /// # Panics
    /// If the lengths differ (a programming error).
    pub fn dequantize_narrow(&self, lanes: &[u32], dst: &mut [f32]) {
        assert_eq!(lanes.len(), dst.len(), "dequantize_narrow lengths");
        let inv = self.inv_scale;
        for (d, &w) in dst.iter_mut().zip(lanes) {
            *d = (w as i32 as f64 * inv) as f32;
        }
    }

    /// Bulk [`Self::try_to_fixed`]: `dst[i] = q(src[i])`.
    pub fn quantize_slice(&self, src: &[f32], dst: &mut [i64]) -> Result<(), CodecError> {
        if src.len() != dst.len() {
            return Err(CodecError::ShapeMismatch {
                what: "quantize output",
                expected: src.len(),
                got: dst.len(),
            });
        }
        for (i, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
            *d = self.try_to_fixed(v, i)?;
        }
        Ok(())
    }

    /// Bulk [`Self::to_float`]: `dst[i] = f(src[i])`.
    pub fn dequantize_slice(&self, src: &[i64], dst: &mut [f32]) -> Result<(), CodecError> {
        if src.len() != dst.len() {
            return Err(CodecError::ShapeMismatch {
                what: "dequantize output",
                expected: src.len(),
                got: dst.len(),
            });
        }
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = self.to_float(s);
        }
        Ok(())
    }
}

/// `ceil(log2 n)` for `n ≥ 1`.
pub(crate) fn ceil_log2(n: u32) -> u32 {
    n.next_power_of_two().trailing_zeros()
}

/// `sum · 2^-shift` rounded once to `f32` for `|sum| > 2^53`, where going through `f64` would
/// round twice: the integer is first rounded (ties to even) to the bits the `f32` result can
/// hold, which makes it exact in `f64`, so the remaining conversions are exact.
#[cold]
fn to_float_wide(sum: i64, shift: i32) -> f32 {
    let mag = sum.unsigned_abs();
    let len = 64 - mag.leading_zeros() as i32; // bit length, > 53
                                               // Keep 24 significant bits, or fewer if the result is subnormal (lowest kept bit has
                                               // weight 2^-149, i.e. integer bit shift − 149).
    let drop = (len - 24).max(shift - 149).max(0);
    let rounded = if drop >= 64 {
        0u128
    } else {
        let m = mag as u128;
        let q = m >> drop;
        let rem = m - (q << drop);
        let half = 1u128 << drop >> 1;
        let up = drop > 0 && (rem > half || (rem == half && q & 1 == 1));
        (q + up as u128) << drop
    };
    let v = (rounded as f64) * pow2(-shift);
    let v = v as f32; // exact: at most 25 significant bits, in f32 range or ±inf
    if sum < 0 {
        -v
    } else {
        v
    }
}

/// Biased exponents of the largest and of the smallest nonzero |value| (`(0, 0)` if all are
/// zero): what the workers MAX- and MIN-reduce to pick a value width with
/// [`crate::wide::choose_value_bits`]. NaN or ±Inf gives [`CodecError::NonFinite`].
pub fn exponent_range(values: &[f32]) -> Result<(u32, u32), CodecError> {
    let max = max_exponent(values)?;
    let mut min = u32::MAX;
    for &v in values {
        let a = v.to_bits() & 0x7fff_ffff;
        if a != 0 {
            min = min.min(a);
        }
    }
    if min == u32::MAX {
        return Ok((max, 0));
    }
    Ok((max, exponent_of_abs_bits(min)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponents() {
        assert_eq!(exponent_of(0.0), Some(0));
        assert_eq!(exponent_of(-0.0), Some(0));
        assert_eq!(exponent_of(f32::from_bits(1)), Some(1));
        assert_eq!(exponent_of(1.0), Some(150));
        assert_eq!(exponent_of(-1.5), Some(150));
        assert_eq!(exponent_of(2.0), Some(151));
        assert_eq!(exponent_of(f32::MAX), Some(MAX_FINITE_EXPONENT));
        assert_eq!(exponent_of(f32::MIN_POSITIVE), Some(24));
        assert_eq!(exponent_of(f32::NAN), None);
        assert_eq!(max_exponent(&[0.0, -3.0, 1.0]), Ok(151));
        assert_eq!(max_exponent(&[]), Ok(0));
        assert!(matches!(
            max_exponent(
                &[0.0; 40]
                    .iter()
                    .copied()
                    .chain([f32::INFINITY])
                    .collect::<Vec<_>>()
            ),
            Err(CodecError::NonFinite { position: 40 })
        ));
    }

    /// At the largest exponent, `f32::MAX` quantizes (without saturating) to the value the
    /// formula gives, computed here in f64, and `n` of them fit the signed lane.
    #[test]
    fn sums_fit_at_the_edge() {
        for lane in [LaneWidth::W32, LaneWidth::W64] {
            for n in [1u32, 2, 3, 8, 64, 1000] {
                let fp = FixedPoint::new(MAX_FINITE_EXPONENT, n, lane).unwrap();
                let c = (n as f64).log2().ceil() as i32;
                let s = (lane.bits() as i32 - 2 - c) - (MAX_FINITE_EXPONENT as i32 - 149);
                let want = (f32::MAX as f64 * 2f64.powi(s)).round();
                let q = fp.try_to_fixed(f32::MAX, 0).unwrap();
                assert_eq!(q as f64, want, "{lane:?} n {n}");
                assert!((n as i128 * q as i128) < (1i128 << (lane.bits() - 1)));
                assert_eq!(fp.try_to_fixed(-f32::MAX, 0).unwrap(), -q);
                // Within half a unit of the input (a coarse scale may round it up to 2^128,
                // which is then infinite as an f32: the correctly rounded value).
                let back = q as f64 * 2f64.powi(-s);
                assert!((back - f32::MAX as f64).abs() <= 2f64.powi(-s - 1));
            }
        }
    }

    #[test]
    fn bulk_narrow_conversions_match_the_scalar_ones() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut vals: Vec<f32> = (0..5000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let m = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                m * 2f32.powi((i % 40) - 30)
            })
            .collect();
        vals.extend([0.0, -0.0, f32::NAN, 3.9, -3.9, 0.5, -0.5, 1.5, 2.5]);
        for n in [1u32, 4, 7] {
            let fp = FixedPoint::new(exponent_of(3.9).unwrap(), n, LaneWidth::W32).unwrap();
            let mut q = vec![0u32; vals.len()];
            fp.quantize_narrow(&vals, &mut q);
            for (i, (&v, &w)) in vals.iter().zip(&q).enumerate() {
                assert_eq!(w as i32 as i64, fp.to_fixed(v), "value {i} = {v}");
            }
            let mut back = vec![0f32; q.len()];
            fp.dequantize_narrow(&q, &mut back);
            for (&w, &b) in q.iter().zip(&back) {
                assert_eq!(b.to_bits(), fp.to_float(w as i32 as i64).to_bits());
            }
        }
    }

    #[test]
    fn fast_rounding_matches_std() {
        for x in [
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            3.49,
            -7.51,
            1e-300,
            4503599627370497.0,
        ] {
            assert_eq!(round_even(x), x.round_ties_even(), "{x}");
        }
        for bits in (0u32..0x7f80_0000).step_by(999_983) {
            let v = f32::from_bits(bits) as f64;
            for s in [-20, 0, 5, 23, 30, 60] {
                let x = v * pow2(s);
                assert_eq!(round_even(x), x.round_ties_even());
                assert_eq!(round_even(-x), (-x).round_ties_even());
            }
        }
    }

    #[test]
    fn round_trip_exact_for_top_bits() {
        let fp = FixedPoint::new(exponent_of(3.0).unwrap(), 4, LaneWidth::W32).unwrap();
        for v in [1.0f32, -2.5, 3.0, 0.125] {
            assert_eq!(fp.to_float(fp.to_fixed(v)), v);
        }
        assert!(fp.try_to_fixed(5.0, 7).is_err());
    }
}
