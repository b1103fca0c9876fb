//! Wide values through 32-bit lanes, and the choice between narrow and wide values.
//!
//! A P4 switch adds 32-bit lanes. To sum 64-bit cells through it, each worker splits every
//! cell value `v` (a `u64` holding a two's-complement integer) into two words, with
//! `n` workers and `c = ceil(log2 n)`:
//!
//! ```text
//! lo = v & (2^(32−c) − 1)          (non-negative and < 2^(32−c): n of them never carry out)
//! hi = (v >> (32−c)) mod 2^32      (wrapping)
//! ```
//!
//! After the switch adds `n` of each, `V = LO + HI · 2^(32−c)` equals the sum of the `v`
//! modulo `2^(64−c)` (the bits of `v` above `64 − c` were dropped by `hi`). So a wide
//! aggregation has value width `w = 64 − c`: build the scale with
//! [`FixedPoint::with_bits`](crate::FixedPoint::with_bits)`(E, n, 64 − c)`, the parameters
//! with [`CodecParams::with_value_bits`](crate::CodecParams::with_value_bits)`(64 − c)`, and the
//! decoder sign-extends every cell from `w` bits. [`split_wide`] and [`join_wide`] do the
//! word conversion; the words of cell `i` are at `2i` (lo) and `2i + 1` (hi).
//!
//! [`choose_value_bits`] picks 32 or `64 − c` bits per operation from the agreed exponents.

use crate::error::CodecError;
use crate::fixed::ceil_log2;

/// How [`choose_value_bits`] chooses the value width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValuePolicy {
    /// 32 bits when every nonzero element's quantized integer keeps at least
    /// [`AUTO_MIN_RELATIVE_BITS`] significant bits in a 32-bit lane, else wide.
    #[default]
    Auto,
    /// Always 32 bits (one lane per value).
    Narrow,
    /// Always `64 − c` bits (two 32-bit lanes per value).
    Wide,
}

/// Bits of relative precision [`ValuePolicy::Auto`] requires for the smallest nonzero element.
pub const AUTO_MIN_RELATIVE_BITS: u32 = 20;

/// Value width for one aggregation of `workers` workers whose largest exponent (MAX over
/// workers) is `e_max` and smallest nonzero exponent (MIN over workers) is `e_min_nonzero`.
///
/// A 32-bit value gives an element of exponent `e` a quantized integer of at least
/// `(30 − c) − (e_max − e)` significant bits (`c = ceil(log2 workers)`: the scale maps
/// `2^(e_max−149)` to `2^(30−c)`), so [`ValuePolicy::Auto`] picks 32 iff
/// `e_max − e_min ≤ 30 − c − 20`, otherwise `64 − c`. All-zero inputs (`e_max = 0`) take 32.
pub fn choose_value_bits(
    e_max: u32,
    e_min_nonzero: u32,
    workers: u32,
    policy: ValuePolicy,
) -> Result<u32, CodecError> {
    if workers == 0 {
        return Err(CodecError::InvalidFixedPoint("zero workers".into()));
    }
    let c = ceil_log2(workers);
    let wide = 64 - c;
    Ok(match policy {
        ValuePolicy::Narrow => 32,
        ValuePolicy::Wide => wide,
        ValuePolicy::Auto => {
            if e_max == 0 {
                return Ok(32);
            }
            let spread = e_max.saturating_sub(e_min_nonzero.max(1)) as i64;
            if spread <= 30 - c as i64 - AUTO_MIN_RELATIVE_BITS as i64 {
                32
            } else {
                wide
            }
        }
    })
}

fn check_split(cells: usize, words: usize, workers: u32) -> Result<u32, CodecError> {
    if workers == 0 || ceil_log2(workers) > 30 {
        return Err(CodecError::InvalidFixedPoint(format!(
            "{workers} workers cannot split a wide lane"
        )));
    }
    if words != 2 * cells {
        return Err(CodecError::ShapeMismatch {
            what: "wide words",
            expected: 2 * cells,
            got: words,
        });
    }
    Ok(32 - ceil_log2(workers))
}

/// Splits 64-bit cells into `2 · cells.len()` 32-bit words for `workers` workers (formulas in
/// the module docs): `out[2i] = lo(cells[i])`, `out[2i + 1] = hi(cells[i])`.
pub fn split_wide(cells: &[u64], workers: u32, out: &mut [u32]) -> Result<(), CodecError> {
    let b = check_split(cells.len(), out.len(), workers)?;
    let mask = (1u64 << b) - 1;
    for (o, &v) in out.chunks_exact_mut(2).zip(cells) {
        o[0] = (v & mask) as u32;
        o[1] = (v >> b) as u32;
    }
    Ok(())
}

/// Reassembles aggregated words (as [`split_wide`] laid them out) into cell values exact
/// modulo `2^(64 − c)`: `out[i] = words[2i] + words[2i + 1] · 2^(32 − c)` (wrapping).
pub fn join_wide(words: &[u32], workers: u32, out: &mut [u64]) -> Result<(), CodecError> {
    let b = check_split(out.len(), words.len(), workers)?;
    for (o, w) in out.iter_mut().zip(words.chunks_exact(2)) {
        *o = (w[0] as u64).wrapping_add((w[1] as u64) << b);
    }
    Ok(())
}

/// Sign-extends the low `bits` bits of `v` (`1..=64`).
#[inline(always)]
pub fn sign_extend(v: u64, bits: u32) -> i64 {
    let s = 64 - bits;
    ((v << s) as i64) >> s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_join_matches_i128_sum_mod_2_w() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for n in [1u32, 2, 3, 4, 7, 8, 9, 64, 1000] {
            let c = ceil_log2(n);
            let w = 64 - c;
            let cells = 50;
            let mut acc = vec![0u32; 2 * cells];
            let mut reference = vec![0i128; cells];
            let mut words = vec![0u32; 2 * cells];
            for _ in 0..n {
                let vals: Vec<u64> = (0..cells).map(|_| next()).collect();
                split_wide(&vals, n, &mut words).unwrap();
                // The switch: wrapping 32-bit adds.
                for (a, &v) in acc.iter_mut().zip(&words) {
                    *a = a.wrapping_add(v);
                }
                for (r, &v) in reference.iter_mut().zip(&vals) {
                    *r += v as i64 as i128;
                }
            }
            let mut joined = vec![0u64; cells];
            join_wide(&acc, n, &mut joined).unwrap();
            let m = 1i128 << w;
            for (j, r) in joined.iter().zip(&reference) {
                let want = r.rem_euclid(m);
                let got = (*j as i128).rem_euclid(m);
                assert_eq!(got, want, "n {n}");
                // Sign extension recovers any sum that fits w bits.
                let small = (*r).clamp(-(m / 2), m / 2 - 1);
                if small == *r {
                    assert_eq!(sign_extend(*j, w) as i128, *r);
                }
            }
        }
        assert!(split_wide(&[1, 2], 4, &mut [0; 3]).is_err());
        assert!(join_wide(&[0; 4], 0, &mut [0; 2]).is_err());
    }

    #[test]
    fn choose_bits_follows_the_rule() {
        // 8 workers: c = 3, 32-bit allowed iff spread <= 30 - 3 - 20 = 7.
        assert_eq!(choose_value_bits(150, 143, 8, ValuePolicy::Auto), Ok(32));
        assert_eq!(choose_value_bits(150, 142, 8, ValuePolicy::Auto), Ok(61));
        assert_eq!(choose_value_bits(150, 142, 8, ValuePolicy::Narrow), Ok(32));
        assert_eq!(choose_value_bits(150, 150, 8, ValuePolicy::Wide), Ok(61));
        // 1 worker: c = 0, spread <= 10.
        assert_eq!(choose_value_bits(160, 150, 1, ValuePolicy::Auto), Ok(32));
        assert_eq!(choose_value_bits(160, 149, 1, ValuePolicy::Auto), Ok(64));
        // 2048 workers: 30 - 11 - 20 < 0: always wide unless all zero.
        assert_eq!(choose_value_bits(150, 150, 2048, ValuePolicy::Auto), Ok(53));
        assert_eq!(choose_value_bits(0, 0, 2048, ValuePolicy::Auto), Ok(32));
        assert!(choose_value_bits(1, 1, 0, ValuePolicy::Auto).is_err());
    }

    /// Auto's promise, checked against an independent f64 computation: with 32 bits, the
    /// smallest nonzero element is resolved to at least 20 bits relative to its magnitude.
    #[test]
    fn auto_narrow_keeps_twenty_bits() {
        use crate::fixed::{exponent_of, FixedPoint};
        for n in [1u32, 2, 5, 8, 16] {
            for spread in 0..12u32 {
                let big = 3.0f32;
                let small = big / 2f32.powi(spread as i32);
                let (emax, emin) = (exponent_of(big).unwrap(), exponent_of(small).unwrap());
                if choose_value_bits(emax, emin, n, ValuePolicy::Auto).unwrap() != 32 {
                    continue;
                }
                let fp = FixedPoint::new(emax, n, crate::LaneWidth::W32).unwrap();
                // Significant bits of the quantized integer, from f64 (not the codec).
                let q = (small as f64 * 2f64.powi(fp.shift())).abs();
                let bits = q.log2().floor() + 1.0;
                assert!(bits >= 20.0, "n {n} spread {spread}: {bits}");
            }
        }
    }
}
