//! Dense output of decoded sums: zeros everywhere but at the candidate positions.
//!
//! The plain way (fill the whole buffer, then write each key) writes every key's cache line
//! twice: the fill evicts it from the cache before the key's write brings it back (a
//! read-for-ownership per key). With AVX-512 the output is written once instead, a block at
//! a time: the block's keys are converted into a small buffer, then each cache line is
//! assembled in a register (a masked expand of the next floats into the lines' key slots)
//! and streamed to memory with a non-temporal store.

use crate::fixed::FixedPoint;

/// Positions per block of the streaming writer (64 cache lines of 16 floats).
#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 1024;

/// Writes `out`, which holds positions `base ..`: zero everywhere except
/// `out[k − base] = fixed.to_float(sum)` for each key. `keys` are increasing and all fall
/// in `out` (checked by the callers).
pub(crate) fn write_dense(
    keys: &[u32],
    sums: &[i64],
    base: u32,
    fixed: &FixedPoint,
    out: &mut [f32],
) {
    debug_assert_eq!(keys.len(), sums.len());
    #[cfg(target_arch = "x86_64")]
    if out.len() >= 4 * BLOCK && is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F.
        unsafe { write_dense_avx512(keys, sums, base, fixed, out) };
        return;
    }
    write_dense_scalar(keys, sums, base, fixed, out);
}

/// Fill, then write each key (in increasing order).
fn write_dense_scalar(keys: &[u32], sums: &[i64], base: u32, fixed: &FixedPoint, out: &mut [f32]) {
    out.fill(0.0);
    for (&k, &s) in keys.iter().zip(sums) {
        out[(k - base) as usize] = fixed.to_float(s);
    }
}

/// The streaming writer: scalar up to the first 64-byte boundary, whole blocks of aligned
/// cache lines, scalar for the rest.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn write_dense_avx512(
    keys: &[u32],
    sums: &[i64],
    base: u32,
    fixed: &FixedPoint,
    out: &mut [f32],
) {
    use std::arch::x86_64::{_mm512_maskz_expandloadu_ps, _mm512_stream_ps, _mm_sfence};
    let head = out.as_ptr().align_offset(64).min(out.len());
    let blocks = (out.len() - head) / BLOCK;
    let body_end = head + blocks * BLOCK;
    let at = |k: u32| (k - base) as usize;
    let k_head = keys.partition_point(|&k| at(k) < head);
    let k_body = keys.partition_point(|&k| at(k) < body_end);
    write_dense_scalar(
        &keys[..k_head],
        &sums[..k_head],
        base,
        fixed,
        &mut out[..head],
    );
    write_dense_scalar(
        &keys[k_body..],
        &sums[k_body..],
        base + body_end as u32,
        fixed,
        &mut out[body_end..],
    );
    let mut floats = [0f32; BLOCK];
    let mut masks = [0u16; BLOCK / 16];
    let mut i = k_head;
    for b in 0..blocks {
        let start = head + b * BLOCK;
        let end = start + BLOCK;
        let first = i;
        masks.fill(0);
        while i < k_body && at(keys[i]) < end {
            let off = at(keys[i]) - start;
            masks[off >> 4] |= 1 << (off & 15);
            floats[i - first] = fixed.to_float(sums[i]);
            i += 1;
        }
        // SAFETY: `start` is 64-byte aligned (`head` is, and blocks are 4096 bytes) and the
        // block lies in `out`; each expand reads `popcount(mask)` floats, all written above.
        unsafe {
            let dst = out.as_mut_ptr().add(start);
            let mut src = floats.as_ptr();
            for (l, &m) in masks.iter().enumerate() {
                let v = _mm512_maskz_expandloadu_ps(m, src);
                _mm512_stream_ps(dst.add(16 * l), v);
                src = src.add(m.count_ones() as usize);
            }
        }
    }
    // Non-temporal stores are weakly ordered: make them visible before returning.
    _mm_sfence();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::LaneWidth;

    /// The streaming writer and the plain one agree at every offset of the output's start
    /// (aligned or not), with keys at both ends, in runs, and none at all.
    #[test]
    fn streaming_and_plain_writers_agree() {
        let fixed = FixedPoint::new(130, 4, LaneWidth::W32).unwrap();
        let len = 5 * 1024 + 37;
        let mut x = 12345u64;
        let mut keys: Vec<u32> = (0..len as u32)
            .filter(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.is_multiple_of(5)
            })
            .collect();
        keys.extend([0, 1, 15, 16, len as u32 - 1]);
        keys.extend(2000..2100);
        keys.sort_unstable();
        keys.dedup();
        let sums: Vec<i64> = keys.iter().map(|&k| k as i64 * 7919 - 1_000_000).collect();
        for shift in 0..17 {
            for (keys, sums) in [(&keys[..], &sums[..]), (&[][..], &[][..])] {
                let base = 100u32;
                let keys: Vec<u32> = keys.iter().map(|k| k + base).collect();
                let mut a = vec![f32::NAN; len + shift];
                let mut b = vec![f32::NAN; len + shift];
                write_dense(&keys, sums, base, &fixed, &mut a[shift..]);
                write_dense_scalar(&keys, sums, base, &fixed, &mut b[shift..]);
                assert_eq!(&a[shift..], &b[shift..], "shift {shift}");
                assert!(
                    a[..shift].iter().all(|v| v.is_nan()),
                    "wrote before the slice"
                );
            }
        }
    }
}
