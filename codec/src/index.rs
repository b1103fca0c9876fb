//! The index of nonzero positions (bitmap, group bitmap or blocked Bloom filter), combined by
//! bitwise OR in the network (the OR of indexes built with the same hashes is the index of
//! the union), and the decoder's candidate enumeration.

use crate::error::CodecError;
use crate::hash;
use crate::params::{CodecParams, IndexKind, BLOOM_BLOCK_WORDS, BLOOM_GROUP};
#[cfg(target_arch = "x86_64")]
use crate::prefetch::prefetch;

/// Where a key goes in the index: `(word, bits)`. Bitmaps: the word and the bit number;
/// Bloom: the first word of the key's block and the in-block hash.
#[inline(always)]
pub(crate) fn slot(params: &CodecParams, key: u32) -> (usize, u64) {
    match params.index_kind() {
        IndexKind::Bitmap => ((key >> 5) as usize, (key & 31) as u64),
        IndexKind::Groups { shift } => {
            let g = key >> shift;
            ((g >> 5) as usize, (g & 31) as u64)
        }
        IndexKind::Bloom { blocks, .. } => bloom_slot(params, key, blocks),
        IndexKind::GroupBloom { blocks, shift, .. } => bloom_slot(params, key >> shift, blocks),
    }
}

/// Slot of Bloom key `unit` (a position, or a group id).
#[inline(always)]
fn bloom_slot(params: &CodecParams, unit: u32, blocks: u32) -> (usize, u64) {
    let (s1, s2) = params.bloom_seeds();
    (
        bloom_block(unit >> 3, s1, blocks) * BLOOM_BLOCK_WORDS,
        hash::mix32(unit ^ s2) as u64,
    )
}

/// Block of a group of [`BLOOM_GROUP`] positions.
#[inline(always)]
fn bloom_block(group: u32, seed: u32, blocks: u32) -> usize {
    ((hash::mix32(group ^ seed) as u64 * blocks as u64) >> 32) as usize
}

/// Records `key` in the index words.
#[inline(always)]
pub(crate) fn insert(params: &CodecParams, words: &mut [u32], key: u32) {
    let (w, g) = slot(params, key);
    insert_at(params, words, w, g);
}

/// Records a key given its [`slot`].
#[inline(always)]
pub(crate) fn insert_at(params: &CodecParams, words: &mut [u32], base: usize, g: u64) {
    match params.index_kind() {
        IndexKind::Bitmap | IndexKind::Groups { .. } => words[base] |= 1 << g,
        IndexKind::Bloom { k, .. } | IndexKind::GroupBloom { k, .. } => {
            let block: &mut [u32; BLOOM_BLOCK_WORDS] = (&mut words[base..base + BLOOM_BLOCK_WORDS])
                .try_into()
                .expect("block slice has BLOOM_BLOCK_WORDS words");
            let g = g as u32;
            for &salt in &hash::SALT[..k as usize] {
                let t = g.wrapping_mul(salt);
                block[((t >> 24) & 7) as usize] |= 1 << (t >> 27);
            }
        }
    }
}

/// Whether the `k` bits of in-block hash `g` are all set in a block.
#[inline(always)]
fn block_contains(block: &[u32], k: u8, g: u32) -> bool {
    let mut ok = true;
    for &salt in &hash::SALT[..k as usize] {
        let t = g.wrapping_mul(salt);
        ok &= block[((t >> 24) & 7) as usize] >> (t >> 27) & 1 == 1;
    }
    ok
}

/// Sets the index bits of `keys` (any order) in `words`, which must have
/// `params.index_words()` entries: the index of a contribution without its sketch (the first
/// round of union-rank).
pub fn insert_keys(
    params: &CodecParams,
    keys: &[u32],
    words: &mut [u32],
) -> Result<(), CodecError> {
    if words.len() != params.index_words() {
        return Err(CodecError::ShapeMismatch {
            what: "index words",
            expected: params.index_words(),
            got: words.len(),
        });
    }
    let dim = params.dim();
    for &k in keys {
        if k as u64 >= dim {
            return Err(CodecError::IndexOutOfRange {
                index: k as u64,
                dim,
            });
        }
        insert(params, words, k);
    }
    Ok(())
}

/// Replaces `out` with every position the (aggregated) index reports, in increasing order
/// (bitmap: the union; group bitmap: every position of a marked group; Bloom: the union plus
/// false positives). Works on the index alone, so a receiver can run it while the sketch is
/// still arriving.
pub fn candidates_into(
    params: &CodecParams,
    index_words: &[u32],
    out: &mut Vec<u32>,
) -> Result<(), CodecError> {
    if index_words.len() != params.index_words() {
        return Err(CodecError::ShapeMismatch {
            what: "index words",
            expected: params.index_words(),
            got: index_words.len(),
        });
    }
    candidates(params, index_words, out, usize::MAX)
}

/// [`candidates_into`] without the shape check, stopping with [`CodecError::Saturated`] as
/// soon as more than `limit` candidates are found.
pub(crate) fn candidates(
    params: &CodecParams,
    words: &[u32],
    out: &mut Vec<u32>,
    limit: usize,
) -> Result<(), CodecError> {
    out.clear();
    let dim = params.dim();
    let saturated = |n: usize| CodecError::Saturated {
        candidates: n,
        cells: params.peel_cells(),
    };
    match params.index_kind() {
        IndexKind::Bitmap => {
            // Count first (popcount is cheap) so a saturated index fails before any work;
            // padding bits past `dim` in the last word do not count.
            let mut n: usize = words.iter().map(|w| w.count_ones() as usize).sum();
            if !dim.is_multiple_of(32) {
                if let Some(&w) = words.last() {
                    n -= (w >> (dim % 32)).count_ones() as usize;
                }
            }
            if n > limit {
                return Err(saturated(n));
            }
            bitmap_keys(words, 0, &bitmap_valid(dim, words.len()), n, out);
        }
        IndexKind::Groups { shift } => {
            let size = 1u64 << shift;
            let groups = dim.div_ceil(size);
            // Exact count first (padding bits past the last group ignored, the last group
            // cut at `dim`), so a saturated index fails before any work.
            let valid = |wi: usize, w: u32| -> u32 {
                let left = groups.saturating_sub(wi as u64 * 32);
                if left >= 32 {
                    w
                } else {
                    w & ((1u32 << left) - 1)
                }
            };
            let mut n: u64 = 0;
            for (wi, &w) in words.iter().enumerate() {
                n += valid(wi, w).count_ones() as u64 * size;
            }
            let last = groups.saturating_sub(1);
            if !dim.is_multiple_of(size)
                && words
                    .get((last / 32) as usize)
                    .is_some_and(|w| w >> (last % 32) & 1 == 1)
            {
                n -= size - dim % size;
            }
            if n > limit as u64 {
                return Err(saturated(n.min(usize::MAX as u64) as usize));
            }
            out.reserve(n as usize);
            for (wi, &w) in words.iter().enumerate() {
                let mut w = valid(wi, w);
                while w != 0 {
                    let g = ((wi as u64) << 5) + w.trailing_zeros() as u64;
                    let lo = g << shift;
                    let hi = (lo + size).min(dim);
                    out.extend((lo..hi).map(|k| k as u32));
                    w &= w - 1;
                }
            }
        }
        IndexKind::Bloom { blocks, k } => {
            let groups = dim.div_ceil(BLOOM_GROUP) as usize;
            bloom_scan(params, words, blocks, k, dim, 0..groups, out, limit)?
        }
        IndexKind::GroupBloom { blocks, k, shift } => {
            let size = 1u64 << shift;
            let units = dim.div_ceil(size);
            let groups = units.div_ceil(BLOOM_GROUP) as usize;
            let r = bloom_scan(
                params,
                words,
                blocks,
                k,
                units,
                0..groups,
                out,
                limit >> shift,
            );
            if let Err(CodecError::Saturated { candidates, .. }) = r {
                return Err(saturated(candidates << shift));
            }
            r?;
            // Expand the reported groups to their positions, in place from the back.
            let groups = out.len();
            let last_len = |g: u32| ((g as u64 + 1) * size).min(dim) - g as u64 * size;
            let total = match out.last() {
                Some(&g) => (groups - 1) * size as usize + last_len(g) as usize,
                None => 0,
            };
            if total > limit {
                return Err(saturated(total));
            }
            out.resize(total, 0);
            let mut end = total;
            for gi in (0..groups).rev() {
                let g = out[gi];
                let len = last_len(g) as usize;
                let lo = (g as u64 * size) as u32;
                for (j, o) in out[end - len..end].iter_mut().enumerate() {
                    *o = lo + j as u32;
                }
                end -= len;
            }
        }
    }
    Ok(())
}

/// Candidates of a large bitmap or Bloom index enumerated by two threads, each over half of
/// the positions: the lower half's into `lo`, the upper half's into `hi` (the candidates
/// are `lo` then `hi`). `None` for the other index kinds (enumerate them with
/// [`candidates`]).
pub(crate) fn candidates_split(
    params: &CodecParams,
    words: &[u32],
    lo: &mut Vec<u32>,
    hi: &mut Vec<u32>,
    limit: usize,
) -> Option<Result<(), CodecError>> {
    lo.clear();
    hi.clear();
    let dim = params.dim();
    let saturated = |n: usize| CodecError::Saturated {
        candidates: n,
        cells: params.peel_cells(),
    };
    match params.index_kind() {
        IndexKind::Bitmap => {
            let valid = bitmap_valid(dim, words.len());
            let mid = words.len() / 2;
            let count = |ws: &[u32], first: usize| -> usize {
                ws.iter()
                    .enumerate()
                    .map(|(i, &w)| valid(first + i, w).count_ones() as usize)
                    .sum()
            };
            let (n_lo, n_hi) = (count(&words[..mid], 0), count(&words[mid..], mid));
            if n_lo + n_hi > limit {
                return Some(Err(saturated(n_lo + n_hi)));
            }
            crate::join::join(
                || bitmap_keys(&words[..mid], 0, &valid, n_lo, lo),
                || bitmap_keys(&words[mid..], mid, &valid, n_hi, hi),
            );
            Some(Ok(()))
        }
        IndexKind::Bloom { blocks, k } => {
            let groups = dim.div_ceil(BLOOM_GROUP) as usize;
            let mid = groups / 2;
            let (r_lo, r_hi) = crate::join::join(
                || bloom_scan(params, words, blocks, k, dim, 0..mid, lo, limit),
                || bloom_scan(params, words, blocks, k, dim, mid..groups, hi, limit),
            );
            let r = r_lo.and(r_hi);
            Some(match r {
                Ok(()) if lo.len() + hi.len() > limit => Err(saturated(lo.len() + hi.len())),
                Err(CodecError::Saturated { .. }) => Err(saturated(lo.len() + hi.len())),
                r => r,
            })
        }
        _ => None,
    }
}

/// Word `wi` of a bitmap over `dim` positions without its padding bits (those past `dim` in
/// the last of `words` words).
fn bitmap_valid(dim: u64, words: usize) -> impl Fn(usize, u32) -> u32 {
    let last = words.saturating_sub(1);
    move |wi: usize, w: u32| -> u32 {
        if wi == last && !dim.is_multiple_of(32) {
            w & ((1u32 << (dim % 32)) - 1)
        } else {
            w
        }
    }
}

/// Appends the keys of bitmap `words` (word `i` holds positions `(first + i)·32 ..`), with
/// `valid` masking padding; `n` is their exact number.
fn bitmap_keys(
    words: &[u32],
    first: usize,
    valid: &impl Fn(usize, u32) -> u32,
    n: usize,
    out: &mut Vec<u32>,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was just detected; `n` is the exact number of keys.
        unsafe { bitmap_keys_avx512(words, first, valid, n, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected; `n` is the exact number of keys.
        unsafe { bitmap_keys_avx2(words, first, valid, n, out) };
        return;
    }
    out.reserve(n);
    let start = out.len();
    let mut i = 0usize;
    let dst = out.spare_capacity_mut();
    for (wi, &w) in words.iter().enumerate() {
        let mut w = valid(first + wi, w);
        while w != 0 {
            // i < n: n counts exactly these bits.
            dst[i].write((((first + wi) as u32) << 5) + w.trailing_zeros());
            i += 1;
            w &= w - 1;
        }
    }
    // SAFETY: the first i <= n entries of the spare capacity were written above.
    unsafe { out.set_len(start + i) };
}

/// The Bloom scan over `units` keys (positions, or group ids), for the groups of
/// [`BLOOM_GROUP`] units in `groups`; appends to `out`.
#[allow(clippy::too_many_arguments)]
fn bloom_scan(
    params: &CodecParams,
    words: &[u32],
    blocks: u32,
    k: u8,
    units: u64,
    groups: std::ops::Range<usize>,
    out: &mut Vec<u32>,
    limit: usize,
) -> Result<(), CodecError> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("popcnt") {
        // SAFETY: AVX2 and POPCNT were just detected.
        return unsafe { bloom_scan_avx2(params, words, blocks, k, units, groups, out, limit) };
    }
    bloom_scan_scalar(params, words, blocks, k, units, groups, out, limit)
}

#[allow(clippy::too_many_arguments)]
fn bloom_scan_scalar(
    params: &CodecParams,
    words: &[u32],
    blocks: u32,
    k: u8,
    dim: u64,
    groups: std::ops::Range<usize>,
    out: &mut Vec<u32>,
    limit: usize,
) -> Result<(), CodecError> {
    let (s1, s2) = params.bloom_seeds();
    for gi in groups.start as u64..groups.end as u64 {
        let base = bloom_block(gi as u32, s1, blocks) * BLOOM_BLOCK_WORDS;
        let block = &words[base..base + BLOOM_BLOCK_WORDS];
        let lo = gi * BLOOM_GROUP;
        for key in lo..(lo + BLOOM_GROUP).min(dim) {
            if block_contains(block, k, hash::mix32(key as u32 ^ s2)) {
                out.push(key as u32);
            }
        }
        if out.len() > limit {
            return Err(CodecError::Saturated {
                candidates: out.len(),
                cells: params.peel_cells(),
            });
        }
    }
    Ok(())
}

/// The Bloom scan with AVX2: the eight positions of a group share a block, which is loaded
/// into one register; the eight in-block hashes are computed with 32-bit vector multiplies
/// and each of the `k` bits is fetched with one in-register permute and one variable shift.
///
/// # Safety
/// The CPU must support AVX2 and POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
#[allow(clippy::too_many_arguments)]
unsafe fn bloom_scan_avx2(
    params: &CodecParams,
    words: &[u32],
    blocks: u32,
    k: u8,
    dim: u64,
    groups: std::ops::Range<usize>,
    out: &mut Vec<u32>,
    limit: usize,
) -> Result<(), CodecError> {
    let g = groups;
    match k {
        1 => bloom_scan_avx2_k::<1>(params, words, blocks, dim, g, out, limit),
        2 => bloom_scan_avx2_k::<2>(params, words, blocks, dim, g, out, limit),
        3 => bloom_scan_avx2_k::<3>(params, words, blocks, dim, g, out, limit),
        4 => bloom_scan_avx2_k::<4>(params, words, blocks, dim, g, out, limit),
        5 => bloom_scan_avx2_k::<5>(params, words, blocks, dim, g, out, limit),
        6 => bloom_scan_avx2_k::<6>(params, words, blocks, dim, g, out, limit),
        7 => bloom_scan_avx2_k::<7>(params, words, blocks, dim, g, out, limit),
        _ => bloom_scan_avx2_k::<8>(params, words, blocks, dim, g, out, limit),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn bloom_scan_avx2_k<const K: usize>(
    params: &CodecParams,
    words: &[u32],
    blocks: u32,
    dim: u64,
    groups: std::ops::Range<usize>,
    out: &mut Vec<u32>,
    limit: usize,
) -> Result<(), CodecError> {
    use std::arch::x86_64::*;
    let (s1, s2) = params.bloom_seeds();
    let salts: [__m256i; 8] = hash::SALT.map(|s| _mm256_set1_epi32(s as i32));
    let seed = _mm256_set1_epi32(s2 as i32);
    let c1 = _mm256_set1_epi32(0x85eb_ca6bu32 as i32);
    let c2 = _mm256_set1_epi32(0xc2b2_ae35u32 as i32);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Candidates are written into spare capacity 8 at a time (branch-free), so keep 8 free.
    // Blocks are grouped so the bound check on `words` happens once per block.
    assert_eq!(words.len(), blocks as usize * BLOOM_BLOCK_WORDS);
    let wp = words.as_ptr();
    let mut n = out.len();
    out.reserve(4096);
    // The output pointer lives in a local (a store through it could otherwise alias the
    // Vec's own fields and force a reload every group); refreshed when the Vec grows.
    let mut op = out.as_mut_ptr();
    let mut cap_check = out.capacity() - 8;
    // Block of each group, computed once when it is prefetched PREFETCH_GROUPS ahead.
    let first = groups.start;
    let mut ring = [0usize; PREFETCH_GROUPS];
    for (i, slot) in ring.iter_mut().enumerate() {
        *slot = bloom_block((first + i) as u32, s1, blocks);
        prefetch(wp.wrapping_add(*slot * BLOOM_BLOCK_WORDS));
    }
    for gi in groups {
        if n >= cap_check {
            if n > limit {
                out.set_len(n.min(out.capacity()));
                return Err(CodecError::Saturated {
                    candidates: n,
                    cells: params.peel_cells(),
                });
            }
            out.set_len(n);
            out.reserve(4096 + n / 4);
            op = out.as_mut_ptr();
            cap_check = out.capacity() - 8;
        }
        // The blocks are random reads: fetch the one PREFETCH_GROUPS groups ahead now.
        let slot = &mut ring[(gi - first) % PREFETCH_GROUPS];
        let b = *slot;
        *slot = bloom_block((gi + PREFETCH_GROUPS) as u32, s1, blocks);
        prefetch(wp.wrapping_add(*slot * BLOOM_BLOCK_WORDS));
        // SAFETY: b < blocks, so the 8 words at b·8 are inside `words` (length checked).
        let blk = _mm256_loadu_si256(wp.add(b * BLOOM_BLOCK_WORDS) as *const __m256i);
        if _mm256_testz_si256(blk, blk) == 1 {
            continue;
        }
        let base = (gi as u64 * BLOOM_GROUP) as u32;
        let mut x = _mm256_xor_si256(
            _mm256_add_epi32(_mm256_set1_epi32(base as i32), lanes),
            seed,
        );
        x = _mm256_xor_si256(x, _mm256_srli_epi32::<16>(x));
        x = _mm256_mullo_epi32(x, c1);
        x = _mm256_xor_si256(x, _mm256_srli_epi32::<13>(x));
        x = _mm256_mullo_epi32(x, c2);
        x = _mm256_xor_si256(x, _mm256_srli_epi32::<16>(x));
        let mut acc = _mm256_set1_epi32(-1);
        for salt in salts.iter().take(K) {
            let t = _mm256_mullo_epi32(x, *salt);
            // Word = bits 24..27 of t (permutevar uses the low 3 bits of each index).
            let sel = _mm256_permutevar8x32_epi32(blk, _mm256_srli_epi32::<24>(t));
            acc = _mm256_and_si256(acc, _mm256_srlv_epi32(sel, _mm256_srli_epi32::<27>(t)));
        }
        let mut mask =
            _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32::<31>(acc))) as u32 & 0xff;
        let end = base as u64 + BLOOM_GROUP;
        if end > dim {
            mask &= (1u32 << (dim - base as u64)) - 1;
        }
        // Branch-free emit: move the selected lanes to the front with one permute (indices
        // from a table by mask) and store all 8; only popcount(mask) of them count.
        let pos = _mm256_add_epi32(_mm256_set1_epi32(base as i32), lanes);
        let idx = _mm256_loadu_si256(COMPRESS[mask as usize].as_ptr() as *const __m256i);
        // SAFETY: n + 8 <= capacity (cap_check), so the 8-lane store stays in the allocation.
        _mm256_storeu_si256(
            op.add(n) as *mut __m256i,
            _mm256_permutevar8x32_epi32(pos, idx),
        );
        n += mask.count_ones() as usize;
    }
    out.set_len(n);
    if n > limit {
        return Err(CodecError::Saturated {
            candidates: n,
            cells: params.peel_cells(),
        });
    }
    Ok(())
}

/// Bitmap keys with AVX2, branch-free: each byte of a word selects (by table) the positions
/// of its set bits, all 8 lanes are stored and only `popcount(byte)` of them kept.
///
/// # Safety
/// The CPU must support AVX2; `n` must be the number of set bits of `valid(words)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bitmap_keys_avx2(
    words: &[u32],
    first: usize,
    valid: &impl Fn(usize, u32) -> u32,
    n: usize,
    out: &mut Vec<u32>,
) {
    use std::arch::x86_64::*;
    out.reserve(n + 8);
    let p = out.as_mut_ptr();
    let mut i = out.len();
    let end = i + n;
    for (wi, &w) in words.iter().enumerate() {
        let w = valid(first + wi, w);
        if w == 0 {
            continue;
        }
        let base = ((first + wi) as u32) << 5;
        for b in 0..4u32 {
            let m = ((w >> (8 * b)) & 0xff) as usize;
            let idx = _mm256_loadu_si256(COMPRESS[m].as_ptr() as *const __m256i);
            let v = _mm256_add_epi32(idx, _mm256_set1_epi32((base + 8 * b) as i32));
            // SAFETY: i <= end and the capacity is at least end + 8.
            _mm256_storeu_si256(p.add(i) as *mut __m256i, v);
            i += m.count_ones() as usize;
        }
    }
    debug_assert_eq!(i, end);
    // SAFETY: the first i entries were written.
    out.set_len(i);
}

/// Bitmap keys with AVX-512, branch-free: each 16-bit half of a word compresses the
/// positions of its set bits to the front of a register, all 16 lanes are stored and only
/// `popcount` of them kept. (The compress goes through a register: compressing straight to
/// memory is slow on some CPUs.)
///
/// # Safety
/// The CPU must support AVX-512F; `n` must be the number of set bits of `valid(words)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bitmap_keys_avx512(
    words: &[u32],
    first: usize,
    valid: &impl Fn(usize, u32) -> u32,
    n: usize,
    out: &mut Vec<u32>,
) {
    use std::arch::x86_64::*;
    out.reserve(n + 16);
    let p = out.as_mut_ptr();
    let mut i = out.len();
    let end = i + n;
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // Empty words are skipped only when nearly all are: in between, the test mispredicts
    // too often to pay.
    let skip_empty = n * 8 < words.len();
    for (wi, &w) in words.iter().enumerate() {
        let w = valid(first + wi, w);
        if skip_empty && w == 0 {
            continue;
        }
        let base = ((first + wi) as u32) << 5;
        for half in 0..2u32 {
            let m = (w >> (16 * half)) as u16;
            let v = _mm512_add_epi32(iota, _mm512_set1_epi32((base + 16 * half) as i32));
            // SAFETY: i <= end and the capacity is at least end + 16.
            _mm512_storeu_si512(p.add(i) as *mut _, _mm512_maskz_compress_epi32(m, v));
            i += m.count_ones() as usize;
        }
    }
    debug_assert_eq!(i, end);
    // SAFETY: the first i entries were written.
    out.set_len(i);
}

/// Groups ahead whose Bloom block the AVX2 scan prefetches.
#[cfg(target_arch = "x86_64")]
const PREFETCH_GROUPS: usize = 16;

/// For each 8-bit mask, the indices of its set bits first (the rest arbitrary): the permute
/// that packs the selected lanes of a vector to the front.
#[cfg(target_arch = "x86_64")]
static COMPRESS: [[u32; 8]; 256] = {
    let mut t = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut j = 0;
        let mut b = 0;
        while b < 8 {
            if m >> b & 1 == 1 {
                t[m][j] = b as u32;
                j += 1;
            }
            b += 1;
        }
        m += 1;
    }
    t
};

/// Number of set bits (a cheap fill diagnostic for Bloom filters).
pub fn popcount(words: &[u32]) -> u64 {
    words.iter().map(|w| w.count_ones() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::LaneWidth;

    #[test]
    fn insert_keys_gives_the_index_of_the_keys() {
        let kinds = [
            IndexKind::Bitmap,
            IndexKind::Bloom { blocks: 4, k: 4 },
            IndexKind::Groups { shift: 3 },
        ];
        for kind in kinds {
            let p = CodecParams::explicit(3, 2, 1000, LaneWidth::W32, kind, 10, 3, false).unwrap();
            let keys = [999u32, 5, 17, 5, 400];
            let mut words = vec![0u32; p.index_words()];
            insert_keys(&p, &keys, &mut words).unwrap();
            let mut cands = Vec::new();
            candidates_into(&p, &words, &mut cands).unwrap();
            for k in keys {
                assert!(cands.binary_search(&k).is_ok(), "{kind:?}: {k} missing");
            }
            if kind == IndexKind::Bitmap {
                assert_eq!(cands, vec![5, 17, 400, 999]);
            }
            assert!(matches!(
                insert_keys(&p, &[1000], &mut words),
                Err(CodecError::IndexOutOfRange { .. })
            ));
            assert!(matches!(
                insert_keys(&p, &keys, &mut words[1..]),
                Err(CodecError::ShapeMismatch { .. })
            ));
        }
    }

    #[test]
    fn simd_and_scalar_bloom_scans_agree_and_find_every_key() {
        for (dim, keys, blocks, k) in [
            (1000u64, 50usize, 3u32, 3u8),
            (77, 10, 1, 8),
            (100_003, 3000, 150, 5),
            (5000, 4000, 10, 1),
        ] {
            let p = CodecParams::explicit(
                9,
                1,
                dim,
                LaneWidth::W32,
                IndexKind::Bloom { blocks, k },
                10,
                3,
                false,
            )
            .unwrap();
            let mut words = vec![0u32; p.index_words()];
            let mut x = 7u64;
            let mut inserted = Vec::new();
            for _ in 0..keys {
                x = hash::mix64(x);
                let key = (x % dim) as u32;
                insert(&p, &mut words, key);
                inserted.push(key);
            }
            let mut a = Vec::new();
            let groups = dim.div_ceil(BLOOM_GROUP) as usize;
            bloom_scan_scalar(&p, &words, blocks, k, dim, 0..groups, &mut a, usize::MAX).unwrap();
            for key in &inserted {
                assert!(a.binary_search(key).is_ok());
            }
            assert!(a.windows(2).all(|w| w[0] < w[1]));
            assert!(a.iter().all(|&c| (c as u64) < dim));
            let mut b = Vec::new();
            candidates_into(&p, &words, &mut b).unwrap();
            assert_eq!(a, b);
            // Two threads, each over half of the groups, find the same candidates.
            let (mut lo, mut hi) = (Vec::new(), Vec::new());
            candidates_split(&p, &words, &mut lo, &mut hi, usize::MAX)
                .expect("Bloom splits")
                .unwrap();
            lo.extend_from_slice(&hi);
            assert_eq!(a, lo);
            // The limit stops early with a typed error.
            if a.len() > 5 {
                let mut c = Vec::new();
                assert!(matches!(
                    candidates(&p, &words, &mut c, 5),
                    Err(CodecError::Saturated { .. })
                ));
            }
        }
    }

    /// Dense words and nearly empty ones (the enumerator skips empty words only then), at
    /// sizes around word boundaries; one thread and two.
    #[test]
    fn bitmap_candidates_match_a_naive_scan() {
        for dim in [1u64, 31, 32, 33, 1000, 4097, 100_003] {
            for sparse in [false, true] {
                let p = CodecParams::explicit(
                    1,
                    1,
                    dim,
                    LaneWidth::W32,
                    IndexKind::Bitmap,
                    10,
                    3,
                    false,
                )
                .unwrap();
                let mut x = dim | 1;
                // Padding bits set too: they must not be listed.
                let words: Vec<u32> = (0..p.index_words())
                    .map(|_| {
                        x = hash::mix64(x);
                        if sparse {
                            ((x % 40 == 0) as u32) << (x >> 59)
                        } else {
                            x as u32 & (x >> 32) as u32
                        }
                    })
                    .collect();
                let want: Vec<u32> = (0..dim as u32)
                    .filter(|&k| words[(k >> 5) as usize] >> (k & 31) & 1 == 1)
                    .collect();
                let mut got = Vec::new();
                candidates_into(&p, &words, &mut got).unwrap();
                assert_eq!(got, want, "dim {dim} sparse {sparse}");
                let (mut lo, mut hi) = (Vec::new(), Vec::new());
                candidates_split(&p, &words, &mut lo, &mut hi, usize::MAX)
                    .expect("bitmaps split")
                    .unwrap();
                lo.extend_from_slice(&hi);
                assert_eq!(lo, want, "split, dim {dim} sparse {sparse}");
            }
        }
    }

    /// Candidates of an index over 70 positions holding keys 3 and 66.
    fn candidates_of_3_and_66(index: IndexKind) -> Vec<u32> {
        let p = CodecParams::explicit(1, 1, 70, LaneWidth::W32, index, 10, 3, false).unwrap();
        let mut words = vec![0u32; p.index_words()];
        insert(&p, &mut words, 3);
        insert(&p, &mut words, 66);
        let mut c = Vec::new();
        candidates_into(&p, &words, &mut c).unwrap();
        c
    }

    #[test]
    fn group_indexes_list_whole_groups() {
        let want: Vec<u32> = (0..16).chain(64..70).collect();
        assert_eq!(candidates_of_3_and_66(IndexKind::Groups { shift: 4 }), want);
        let c = candidates_of_3_and_66(IndexKind::GroupBloom {
            blocks: 2,
            k: 6,
            shift: 4,
        });
        // Groups 0 and 4 at least (a false positive group adds 16 more positions).
        assert!(want.iter().all(|k| c.binary_search(k).is_ok()));
        assert!(c.windows(2).all(|w| w[0] < w[1]) && c.iter().all(|&k| k < 70));
        assert_eq!(c.len() % 16, 6);
    }
}
