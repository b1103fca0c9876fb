//! Codec parameters: everything encoder and decoder must agree on, and the hash-to-cell maps.
//!
//! Parameters are a pure function of `(seed, tensor id, dim, lane, sizing choice)`, so every
//! worker that agrees on those five values computes identical hashes, sizes and layouts without
//! any exchange. The sizing function itself lives in [`crate::sizing`] (re-exported here).
//!
//! # Sketch layouts
//! The sketch has `m` peeling cells plus [`CHECK_LANES`] check lane(s) at the end.
//! - [`Layout::Plain`]: a key's `h` cells are `h` distinct uniform cells of the `m`.
//! - [`Layout::Coupled`]: the `m` cells are `S` segments of `L` cells; a key picks one
//!   of the `W = S − h + 1` windows of `h` consecutive segments and one cell in each
//!   (spatial coupling, as in binary fuse filters). Peeling then succeeds with fewer cells
//!   per key (about 1.09–1.15 instead of 1.23 for large tables) and its accesses stay
//!   within a few segments, which the decoder exploits by processing keys window by window.
//!   It is only another hash-to-cell map: homomorphism and exactness do not change.
//!
//! # Index layouts
//! - [`IndexKind::Bitmap`]: one bit per position.
//! - [`IndexKind::Groups`]: one bit per aligned group of `2^shift` positions; every position
//!   of a marked group is a candidate (row-sparse gradients such as embeddings).
//! - [`IndexKind::Bloom`]: blocks of [`BLOOM_BLOCK_BITS`] bits; the [`BLOOM_GROUP`]
//!   consecutive positions of an aligned group share a block (picked by hashing the group),
//!   and each key sets `k` bits of it, bit `i` taken from the top bits of
//!   `mix32(key ^ s) · SALT[i]`. Sharing the block lets the decoder test eight positions at
//!   once with SIMD against a block held in registers.
//! - [`IndexKind::GroupBloom`]: that Bloom filter over group ids `key >> shift`; every
//!   position of a reported group is a candidate.

use crate::error::CodecError;
use crate::fixed::LaneWidth;
use crate::hash;

pub use crate::sizing::{
    bloom_fpr, choose_index, choose_index_with, expected_candidates, expected_candidates_with,
    sketch_cells_for, sketch_shape, IndexChoice, LayoutChoice, Sizing, SketchShape, SupportProfile,
    DEFAULT_FAILURE_PROB,
};

/// Bits per Bloom block.
pub const BLOOM_BLOCK_BITS: u64 = 256;
/// 32-bit words per Bloom block.
pub const BLOOM_BLOCK_WORDS: usize = 8;
/// Consecutive positions sharing a Bloom block.
pub const BLOOM_GROUP: u64 = 8;
/// Largest group shift of [`IndexKind::Groups`] (256 positions per bit).
pub const MAX_GROUP_SHIFT: u8 = 8;
/// Largest group shift of [`IndexKind::GroupBloom`] (32 positions per group).
pub const MAX_GROUP_BLOOM_SHIFT: u8 = 5;
/// Largest supported dimension (indices travel as `u32`).
pub const MAX_DIM: u64 = u32::MAX as u64;
/// Check lanes after the peeling cells: `Σ value · weight(key)` over all keys, verified after
/// peeling so contributions made with other parameters cannot decode to a wrong value.
pub const CHECK_LANES: usize = 1;

/// How the positions of nonzeros are recorded; combined with bitwise OR in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexKind {
    /// Exact bitmap, one bit per parameter (bit `i % 32` of word `i / 32`).
    Bitmap,
    /// One bit per aligned group of `2^shift` positions (`shift` in `1..=MAX_GROUP_SHIFT`);
    /// all positions of a marked group are candidates.
    Groups {
        /// log2 of the positions per bit.
        shift: u8,
    },
    /// Blocked Bloom filter: `blocks` blocks of 256 bits, `k` bits set per key inside the
    /// block of its group of 8 positions.
    Bloom {
        /// Number of 256-bit blocks.
        blocks: u32,
        /// Bits set per key (1..=8).
        k: u8,
    },
    /// The same Bloom filter over group ids (`key >> shift`, `shift` in
    /// `1..=MAX_GROUP_BLOOM_SHIFT`): every position of a group the filter reports is a
    /// candidate. For row-sparse supports whose marked groups are few.
    GroupBloom {
        /// Number of 256-bit blocks.
        blocks: u32,
        /// Bits set per group (1..=8).
        k: u8,
        /// log2 of the positions per group.
        shift: u8,
    },
}

impl IndexKind {
    /// Short name used in reports ("bitmap", "groups" or "bloom").
    pub fn name(&self) -> &'static str {
        match self {
            IndexKind::Bitmap => "bitmap",
            IndexKind::Groups { .. } => "groups",
            IndexKind::Bloom { .. } => "bloom",
            IndexKind::GroupBloom { .. } => "group_bloom",
        }
    }
}

/// Number of 32-bit index words of an index kind for `dim` positions.
pub fn index_words_for(dim: u64, index: IndexKind) -> usize {
    match index {
        IndexKind::Bitmap => dim.div_ceil(32) as usize,
        IndexKind::Groups { shift } => dim.div_ceil(1u64 << shift).div_ceil(32) as usize,
        IndexKind::Bloom { blocks, .. } | IndexKind::GroupBloom { blocks, .. } => {
            blocks as usize * BLOOM_BLOCK_WORDS
        }
    }
}

impl IndexKind {
    /// `(blocks, k, shift)` of a Bloom index (plain Bloom has shift 0), `None` for bitmaps.
    pub fn bloom_parts(&self) -> Option<(u32, u8, u8)> {
        match *self {
            IndexKind::Bloom { blocks, k } => Some((blocks, k, 0)),
            IndexKind::GroupBloom { blocks, k, shift } => Some((blocks, k, shift)),
            _ => None,
        }
    }
}

/// How a key's `h` cells are chosen among the peeling cells (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `h` distinct uniform cells.
    Plain,
    /// Spatially coupled: segments of `segment_len` cells, one cell in each of `h`
    /// consecutive segments.
    Coupled {
        /// Cells per segment.
        segment_len: u32,
    },
}

impl Layout {
    /// Short name used in reports ("plain" or "coupled").
    pub fn name(&self) -> &'static str {
        match self {
            Layout::Plain => "plain",
            Layout::Coupled { .. } => "coupled",
        }
    }
}

/// Everything encoder and decoder must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CodecParams {
    dim: u64,
    lane: LaneWidth,
    value_bits: u8,
    index: IndexKind,
    layout: Layout,
    /// Peeling cells (the check lane comes after them).
    peel: usize,
    /// Coupled layout: number of windows `S − h + 1` (0 for plain).
    windows: u32,
    hashes: u8,
    signs: bool,
    key: u64,
    /// Bloom seeds: group-to-block and in-block bits.
    bloom_seeds: (u32, u32),
}

impl CodecParams {
    /// Parameters with every choice explicit and the plain layout (for tests, `--cells`, or
    /// replaying a peer's choice). `seed` is the job seed and `tensor_id` distinguishes
    /// tensors; `cells` counts every lane of the sketch, check lane included.
    #[allow(clippy::too_many_arguments)]
    pub fn explicit(
        seed: u64,
        tensor_id: u64,
        dim: u64,
        lane: LaneWidth,
        index: IndexKind,
        cells: usize,
        hashes: u8,
        signs: bool,
    ) -> Result<Self, CodecError> {
        if dim > MAX_DIM {
            return Err(CodecError::InvalidParams(format!("dim {dim} > {MAX_DIM}")));
        }
        if !(3..=4).contains(&hashes) {
            return Err(CodecError::InvalidParams(format!(
                "hashes {hashes} not in 3..=4"
            )));
        }
        let min = hashes as usize + CHECK_LANES;
        if cells < min || cells > u32::MAX as usize {
            return Err(CodecError::InvalidParams(format!(
                "cells {cells} must be in {min}..={}",
                u32::MAX
            )));
        }
        if let IndexKind::GroupBloom { shift, .. } = index {
            if !(1..=MAX_GROUP_BLOOM_SHIFT).contains(&shift) {
                return Err(CodecError::InvalidParams(format!(
                    "group bloom shift {shift} not in 1..={MAX_GROUP_BLOOM_SHIFT}"
                )));
            }
        }
        match index {
            IndexKind::Bloom { blocks, k } | IndexKind::GroupBloom { blocks, k, .. } => {
                if blocks == 0 || !(1..=8).contains(&k) {
                    return Err(CodecError::InvalidParams(format!(
                        "bloom blocks {blocks} (>0) k {k} (1..=8)"
                    )));
                }
                if blocks as u64 * BLOOM_BLOCK_WORDS as u64 > u32::MAX as u64 {
                    return Err(CodecError::InvalidParams(format!(
                        "bloom blocks {blocks} too many"
                    )));
                }
            }
            IndexKind::Groups { shift } => {
                if !(1..=MAX_GROUP_SHIFT).contains(&shift) {
                    return Err(CodecError::InvalidParams(format!(
                        "group shift {shift} not in 1..={MAX_GROUP_SHIFT}"
                    )));
                }
            }
            IndexKind::Bitmap => {}
        }
        let key = hash::derive_key(seed, tensor_id);
        let b = hash::mix64(key ^ 0xb10f_b10f_b10f_b10f);
        Ok(CodecParams {
            dim,
            lane,
            value_bits: lane.bits() as u8,
            index,
            layout: Layout::Plain,
            peel: cells - CHECK_LANES,
            windows: 0,
            hashes,
            signs,
            key,
            bloom_seeds: (b as u32, (b >> 32) as u32),
        })
    }

    /// The same parameters with another sketch layout. For [`Layout::Coupled`] the peeling
    /// cells (`cells() − CHECK_LANES`) must be a multiple of the segment length with at least
    /// `hashes` segments.
    pub fn with_layout(mut self, layout: Layout) -> Result<Self, CodecError> {
        match layout {
            Layout::Plain => self.windows = 0,
            Layout::Coupled { segment_len } => {
                let len = segment_len as usize;
                let h = self.hashes as usize;
                if len == 0 || !self.peel.is_multiple_of(len) || self.peel / len < h {
                    return Err(CodecError::InvalidParams(format!(
                        "{} peeling cells are not a multiple of {len} with at least {h} segments",
                        self.peel
                    )));
                }
                self.windows = (self.peel / len + 1 - h) as u32;
            }
        }
        self.layout = layout;
        Ok(self)
    }

    /// The same parameters for values known modulo `2^bits` (`8..=lane bits`); see
    /// [`crate::wide`]. Must equal [`crate::FixedPoint::bits`] of the scale used.
    pub fn with_value_bits(mut self, bits: u32) -> Result<Self, CodecError> {
        if !(8..=self.lane.bits()).contains(&bits) {
            return Err(CodecError::InvalidParams(format!(
                "value width {bits} not in 8..={}",
                self.lane.bits()
            )));
        }
        self.value_bits = bits as u8;
        Ok(self)
    }

    /// Parameters from the sizing function (formulas in [`crate::sizing`]).
    pub fn sized(
        seed: u64,
        tensor_id: u64,
        dim: u64,
        lane: LaneWidth,
        sizing: &Sizing,
    ) -> Result<Self, CodecError> {
        if !(sizing.failure_prob > 0.0 && sizing.failure_prob < 1.0) {
            return Err(CodecError::InvalidParams(format!(
                "failure probability {} not in (0, 1)",
                sizing.failure_prob
            )));
        }
        if !(sizing.decode_bytes_per_ns >= 0.0 && sizing.decode_bytes_per_ns.is_finite()) {
            return Err(CodecError::InvalidParams(format!(
                "decode weight {} must be finite and >= 0",
                sizing.decode_bytes_per_ns
            )));
        }
        let u = (sizing.expected_union_nnz.min(dim)) as f64;
        let shape_of =
            |cand: f64| sketch_shape(cand, sizing.failure_prob, sizing.hashes, sizing.layout);
        let index = crate::sizing::choose_index_with(dim, u, lane, sizing, |c| {
            shape_of(c).peel_cells + CHECK_LANES
        });
        let cand =
            expected_candidates_with(dim, u, index, sizing.profile.as_ref(), sizing.failure_prob);
        let mut shape = shape_of(cand);
        if let Some(m) = sizing.cells {
            shape = SketchShape {
                layout: Layout::Plain,
                hashes: sizing.hashes.unwrap_or(3),
                peel_cells: m.saturating_sub(CHECK_LANES),
            };
        }
        Self::explicit(
            seed,
            tensor_id,
            dim,
            lane,
            index,
            shape.peel_cells + CHECK_LANES,
            shape.hashes,
            sizing.signs,
        )?
        .with_layout(shape.layout)
    }

    /// Tensor dimension.
    pub fn dim(&self) -> u64 {
        self.dim
    }
    /// Lane width of the sketch cells.
    pub fn lane(&self) -> LaneWidth {
        self.lane
    }
    /// Value width: cell values are known (and checked) modulo `2^value_bits`.
    pub fn value_bits(&self) -> u32 {
        self.value_bits as u32
    }
    /// Index layout.
    pub fn index_kind(&self) -> IndexKind {
        self.index
    }
    /// Sketch layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Number of sketch cells on the wire (peeling cells plus the check lane).
    pub fn cells(&self) -> usize {
        self.peel + CHECK_LANES
    }
    /// Number of peeling cells (the first cells of the sketch; the check lane follows).
    pub fn peel_cells(&self) -> usize {
        self.peel
    }
    /// Hashes per key (cells each nonzero is added to).
    pub fn hashes(&self) -> u8 {
        self.hashes
    }
    /// Whether contributions are multiplied by ±1 signs.
    pub fn signs(&self) -> bool {
        self.signs
    }
    /// Number of 32-bit index words.
    pub fn index_words(&self) -> usize {
        index_words_for(self.dim, self.index)
    }
    /// Bytes of the index on the wire.
    pub fn index_bytes(&self) -> usize {
        self.index_words() * 4
    }
    /// Bytes of the sketch on the wire.
    pub fn sketch_bytes(&self) -> usize {
        self.cells() * self.lane.bytes()
    }
    /// Total bytes each worker sends (index + sketch).
    pub fn bytes(&self) -> usize {
        self.index_bytes() + self.sketch_bytes()
    }

    /// Base hash of a key.
    #[inline(always)]
    pub(crate) fn key_hash(&self, key: u32) -> u64 {
        hash::mix64(key as u64 ^ self.key)
    }

    /// Seeds of the Bloom index (group-to-block, in-block bits).
    #[inline(always)]
    pub(crate) fn bloom_seeds(&self) -> (u32, u32) {
        self.bloom_seeds
    }

    /// Window of a key hash in the coupled layout (`0` for plain).
    #[inline(always)]
    pub(crate) fn window_of(&self, hash: u64) -> u32 {
        (((hash >> 32) * self.windows as u64) >> 32) as u32
    }

    /// Number of windows of the coupled layout (`0` for plain).
    pub(crate) fn windows(&self) -> u32 {
        self.windows
    }

    /// The `h` distinct cells of a key hash (first `hashes()` entries), for `H == hashes()`
    /// known at compile time. Cells are below `cells() <= u32::MAX`, so they are returned as
    /// `u32` (unused entries of the array are unspecified).
    ///
    /// Plain: cell `j` is `fastrange(sub_hash_j, m)`; if it repeats an earlier cell of the same
    /// key the sub-hash is re-mixed until it does not (probability about `j/m`). Coupled:
    /// window `w` from the top 32 bits of the hash, offset `j` from the top bits of a second
    /// product; cell `j` is `(w + j)·L + offset_j`, distinct by construction.
    #[inline(always)]
    pub(crate) fn cells_of_n<const H: usize>(&self, hash: u64) -> [u32; 4] {
        debug_assert_eq!(H, self.hashes as usize);
        if let Layout::Coupled { segment_len } = self.layout {
            let len = segment_len as u64;
            let first = self.window_of(hash) as u64 * len;
            let (o1, o2) = hash::offset_bits(hash);
            let at = |j: u64, x: u64| (first + j * len + (((x & 0xffff_ffff) * len) >> 32)) as u32;
            let d = if H == 4 { at(3, o2) } else { u32::MAX };
            return [at(0, o1 >> 32), at(1, o1), at(2, o2 >> 32), d];
        }
        let m = self.peel as u64;
        let cell = |j: usize| hash::fastrange(hash::sub_hash(hash, j), m) as u32;
        let (a, b, c) = (cell(0), cell(1), cell(2));
        let d = if H == 4 { cell(3) } else { u32::MAX };
        let distinct = a != b && a != c && b != c && (H == 3 || (d != a && d != b && d != c));
        // Packed in two u64 so both paths stay in registers (an array merged with the cold
        // call's result went through the stack and stalled the wide reload).
        let (lo, hi) = if distinct {
            (a as u64 | (b as u64) << 32, c as u64 | (d as u64) << 32)
        } else {
            self.cells_of_slow(hash)
        };
        [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32]
    }

    /// [`Self::key_hash`] of eight keys at once, with AVX-512.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512DQ.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(crate) unsafe fn key_hashes_x8(&self, keys: &[u32; 8]) -> [u64; 8] {
        use std::arch::x86_64::*;
        // SAFETY: 8 u32 are 32 bytes, 8 u64 are 64; unaligned loads and stores.
        unsafe {
            let k = _mm512_cvtepu32_epi64(_mm256_loadu_si256(keys.as_ptr() as *const __m256i));
            let mut x = _mm512_xor_si512(k, _mm512_set1_epi64(self.key as i64));
            // murmur3 fmix64, as `hash::mix64`.
            x = _mm512_xor_si512(x, _mm512_srli_epi64::<33>(x));
            x = _mm512_mullo_epi64(x, _mm512_set1_epi64(0xff51_afd7_ed55_8ccd_u64 as i64));
            x = _mm512_xor_si512(x, _mm512_srli_epi64::<33>(x));
            x = _mm512_mullo_epi64(x, _mm512_set1_epi64(0xc4ce_b9fe_1a85_ec53_u64 as i64));
            x = _mm512_xor_si512(x, _mm512_srli_epi64::<33>(x));
            let mut out = [0u64; 8];
            _mm512_storeu_si512(out.as_mut_ptr() as *mut _, x);
            out
        }
    }

    /// [`Self::cells_of_n`] for eight key hashes of a coupled layout at once, with AVX-512:
    /// `out[j][i]` is cell `j` of `hashes[i]` (the same arithmetic, eight lanes wide).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512DQ, and the layout must be coupled.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(crate) unsafe fn coupled_cells_x8(&self, hashes: &[u64; 8]) -> [[u32; 8]; 4] {
        use std::arch::x86_64::*;
        let Layout::Coupled { segment_len } = self.layout else {
            unreachable!("coupled_cells_x8 on a plain layout")
        };
        // SAFETY: 8 u64 are 64 bytes; unaligned loads and stores.
        unsafe {
            let h = _mm512_loadu_si512(hashes.as_ptr() as *const _);
            let len = _mm512_set1_epi64(segment_len as i64);
            // Window: the top 32 bits of the hash scaled to [0, windows); 32 × 32 → 64-bit
            // products throughout, as in the scalar code.
            let w = _mm512_srli_epi64::<32>(_mm512_mul_epu32(
                _mm512_srli_epi64::<32>(h),
                _mm512_set1_epi64(self.windows as i64),
            ));
            let first = _mm512_mul_epu32(w, len);
            let x = _mm512_xor_si512(h, _mm512_srli_epi64::<29>(h));
            let o1 = _mm512_mullo_epi64(x, _mm512_set1_epi64(hash::KC as i64));
            let o2 = _mm512_mullo_epi64(
                _mm512_rol_epi64::<32>(x),
                _mm512_set1_epi64(hash::KC2 as i64),
            );
            let at = |j: i64, v: __m512i| {
                let off = _mm512_srli_epi64::<32>(_mm512_mul_epu32(v, len));
                let base = _mm512_add_epi64(first, _mm512_set1_epi64(j * segment_len as i64));
                _mm512_cvtepi64_epi32(_mm512_add_epi64(base, off))
            };
            let cols = [
                at(0, _mm512_srli_epi64::<32>(o1)),
                at(1, o1),
                at(2, _mm512_srli_epi64::<32>(o2)),
                at(3, o2),
            ];
            let mut out = [[0u32; 8]; 4];
            for (o, c) in out.iter_mut().zip(cols) {
                _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, c);
            }
            out
        }
    }

    #[cold]
    #[inline(never)]
    fn cells_of_slow(&self, hash: u64) -> (u64, u64) {
        let m = self.peel as u64;
        let h = self.hashes as usize;
        let mut out = [u32::MAX as u64; 4];
        for j in 0..h {
            let mut x = hash::sub_hash(hash, j);
            let mut c = hash::fastrange(x, m);
            while out[..j].contains(&c) {
                x = hash::mix64(x ^ 0x5851_f42d_4c95_7f2d);
                c = hash::fastrange(x, m);
            }
            out[j] = c;
        }
        let [a, b, c, d] = out;
        (a | b << 32, c | d << 32)
    }

    /// Sign (+1 → false, −1 → true) of hash `j`, if signs are on.
    #[inline(always)]
    pub(crate) fn negate(&self, hash: u64, j: usize) -> bool {
        self.signs && (hash >> j) & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_bitmap_when_dense_and_bloom_when_sparse() {
        let dense = CodecParams::sized(1, 0, 1 << 20, LaneWidth::W32, &Sizing::new(200_000));
        assert_eq!(dense.unwrap().index_kind(), IndexKind::Bitmap);
        let mut s = Sizing::new(2_000);
        s.decode_bytes_per_ns = 0.0;
        let sparse = CodecParams::sized(1, 0, 1 << 24, LaneWidth::W32, &s);
        assert!(matches!(
            sparse.unwrap().index_kind(),
            IndexKind::Bloom { .. }
        ));
    }

    /// The eight-wide cell computation equals the scalar one (where the CPU has AVX-512).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn coupled_cells_x8_match_the_scalar_ones() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq")) {
            eprintln!("skipped: no AVX-512 here");
            return;
        }
        for (segment_len, segments, h) in [(60u32, 40usize, 4u8), (3574, 152, 4), (7, 5, 3)] {
            let cells = segment_len as usize * segments + CHECK_LANES;
            let p = CodecParams::explicit(
                9,
                2,
                1 << 20,
                LaneWidth::W32,
                IndexKind::Bitmap,
                cells,
                h,
                false,
            )
            .unwrap()
            .with_layout(Layout::Coupled { segment_len })
            .unwrap();
            let mut x = 77u64;
            for _ in 0..1000 {
                let hashes: [u64; 8] = std::array::from_fn(|_| {
                    x = hash::mix64(x);
                    x
                });
                // SAFETY: AVX-512F/DQ detected above; the layout is coupled.
                let cols = unsafe { p.coupled_cells_x8(&hashes) };
                let keys: [u32; 8] = std::array::from_fn(|i| hashes[i] as u32);
                // SAFETY: as above.
                let kh = unsafe { p.key_hashes_x8(&keys) };
                for (&k, &h) in keys.iter().zip(&kh) {
                    assert_eq!(h, p.key_hash(k));
                }
                for (i, &hash) in hashes.iter().enumerate() {
                    let want = if h == 4 {
                        p.cells_of_n::<4>(hash)
                    } else {
                        p.cells_of_n::<3>(hash)
                    };
                    for j in 0..h as usize {
                        assert_eq!(
                            cols[j][i], want[j],
                            "segment {segment_len} key {i} cell {j}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn coupled_cells_are_in_consecutive_segments() {
        let p = CodecParams::explicit(
            1,
            2,
            100,
            LaneWidth::W32,
            IndexKind::Bitmap,
            1 + 6 * 60,
            4,
            false,
        )
        .unwrap()
        .with_layout(Layout::Coupled { segment_len: 60 })
        .unwrap();
        let mut seen = [0u32; 6];
        let mut offsets = [0u32; 60];
        for k in 0..30_000u32 {
            let c = p.cells_of_n::<4>(p.key_hash(k));
            let w = c[0] / 60;
            seen[w as usize] += 1;
            for (j, &cj) in c.iter().enumerate() {
                assert_eq!(cj / 60, w + j as u32);
                assert!((cj as usize) < p.peel_cells());
                offsets[(cj % 60) as usize] += 1;
            }
        }
        // Three windows, each used about a third of the time; offsets uniform.
        assert!(seen[..3].iter().all(|&n| n > 9_000), "{seen:?}");
        assert!(seen[3..].iter().all(|&n| n == 0));
        assert!(
            offsets.iter().all(|&n| n > 1_700 && n < 2_300),
            "{offsets:?}"
        );
        assert!(p
            .clone()
            .with_layout(Layout::Coupled { segment_len: 70 })
            .is_err());
    }
}
