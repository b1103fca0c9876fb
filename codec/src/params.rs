//! Codec parameters and the sizing function.
//!
//! Parameters are a pure function of `(seed, tensor id, dim, lane, sizing choice)`, so every
//! worker that agrees on those five values computes identical hashes, sizes and layouts without
//! any exchange.
//!
//! # Sizing formulas
//! Let `c` be the expected number of *candidates* the decoder will see: the union's nonzeros
//! `u` plus, for a Bloom index, the expected false positives `(d-u)·fpr` (plus three standard
//! deviations `3·sqrt(fp)` of slack, since false positives fluctuate). For `h` hashes the cells
//! per candidate are
//!
//! ```text
//! r_h(c, δ) = max( t_h + 5 / sqrt(c),  floor_h(c, δ) )
//! t_3 = 1.222, t_4 = 1.295                       (asymptotic peeling thresholds)
//! floor_3 = (3 / (δ·c))^(1/3)                    (two keys sharing all 3 cells: ≈ 3/(r³c))
//! floor_4 = (12 / (δ·c²))^(1/4)                  (two keys sharing all 4 cells: ≈ 12/(r⁴c²))
//! cells = max(h, ceil(r_h · c))
//! ```
//!
//! and the `h ∈ {3, 4}` giving fewer cells wins (3 on ties). The `5/sqrt(c)` term covers the
//! finite-size width of the peeling threshold (above ~10⁵ candidates this is ≈ 1.23 cells per
//! candidate); the floor covers the small-table error floor, which makes small tables take
//! more headroom or `h = 4`. `δ` is the target probability that decoding stalls (default
//! [`DEFAULT_FAILURE_PROB`]). A stall is always reported, never guessed around.
//!
//! # Index choice
//! Bitmap: `ceil(d/32)` 32-bit words. Blocked Bloom with `B` blocks of 512 bits and `k` bits per
//! key set inside the key's block: each block holds `Poisson(λ = u/B)` keys, so
//! `fpr = Σ_i P(i; λ) · (1 - (1 - 1/512)^(k·i))^k`. [`IndexChoice::Auto`] evaluates the bitmap and
//! a grid of Bloom sizes (`k ∈ 1..=8`, bits per key from 1 to 64 in 10% steps) and keeps the one
//! with the fewest total bytes `index + cells(c) · lane_bytes`.

use crate::error::CodecError;
use crate::fixed::LaneWidth;
use crate::hash;

/// Default target probability that decoding stalls for a correctly sized sketch.
pub const DEFAULT_FAILURE_PROB: f64 = 1e-5;
/// Bits per Bloom block: one 64-byte cache line.
pub const BLOOM_BLOCK_BITS: u64 = 512;
/// 32-bit words per Bloom block.
pub const BLOOM_BLOCK_WORDS: usize = 16;
/// Largest supported dimension (indices travel as `u32`).
pub const MAX_DIM: u64 = u32::MAX as u64;

/// How the positions of nonzeros are recorded; combined with bitwise OR in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexKind {
    /// Exact bitmap, one bit per parameter (bit `i % 32` of word `i / 32`).
    Bitmap,
    /// Cache-blocked Bloom filter: `blocks` blocks of 512 bits; `k` bits set per key, all inside
    /// one block, so a query touches one cache line.
    Bloom {
        /// Number of 512-bit blocks.
        blocks: u32,
        /// Bits set per key (1..=7).
        k: u8,
    },
}

impl IndexKind {
    /// Short name used in reports ("bitmap" or "bloom").
    pub fn name(&self) -> &'static str {
        match self {
            IndexKind::Bitmap => "bitmap",
            IndexKind::Bloom { .. } => "bloom",
        }
    }
}

/// Which index the sizing function may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexChoice {
    /// Fewest total bytes (index + sketch, Bloom false positives counted as extra keys).
    #[default]
    Auto,
    /// Always the exact bitmap.
    Bitmap,
    /// Always a Bloom filter (sized for the fewest total bytes).
    Bloom,
}

/// Inputs of the sizing function beyond the tensor identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    /// Estimate of the number of nonzeros in the union of all workers' supports.
    pub expected_union_nnz: u64,
    /// Target probability that peeling stalls.
    pub failure_prob: f64,
    /// Index choice.
    pub index: IndexChoice,
    /// Force the number of hashes (3 or 4); `None` lets the sizing choose.
    pub hashes: Option<u8>,
    /// Force the number of cells; `None` lets the sizing choose.
    pub cells: Option<usize>,
    /// Multiply each cell contribution by a ±1 sign (count-sketch style).
    pub signs: bool,
}

impl Sizing {
    /// Defaults for an expected union size: auto index, [`DEFAULT_FAILURE_PROB`], sized cells.
    pub fn new(expected_union_nnz: u64) -> Self {
        Sizing {
            expected_union_nnz,
            failure_prob: DEFAULT_FAILURE_PROB,
            index: IndexChoice::Auto,
            hashes: None,
            cells: None,
            signs: false,
        }
    }
}

/// Everything encoder and decoder must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CodecParams {
    dim: u64,
    lane: LaneWidth,
    index: IndexKind,
    cells: usize,
    hashes: u8,
    signs: bool,
    key: u64,
}

/// Cells per candidate and hash count from the formulas in the module docs.
pub fn sketch_cells_for(candidates: f64, failure_prob: f64, hashes: Option<u8>) -> (usize, u8) {
    let c = candidates.max(0.0);
    let delta = failure_prob.clamp(1e-300, 1.0);
    let cells_for = |h: u8| -> usize {
        if c <= 1.0 {
            // Zero or one key always peels with h distinct cells.
            return h as usize;
        }
        let (t, floor) = match h {
            3 => (1.222, (3.0 / (delta * c)).cbrt()),
            _ => (1.295, (12.0 / (delta * c * c)).powf(0.25)),
        };
        let r = (t + 5.0 / c.sqrt()).max(floor);
        ((r * c).ceil() as usize).max(h as usize)
    };
    match hashes {
        Some(h) => (cells_for(h), h),
        None => {
            let (c3, c4) = (cells_for(3), cells_for(4));
            if c4 < c3 {
                (c4, 4)
            } else {
                (c3, 3)
            }
        }
    }
}

/// Expected false-positive rate of a blocked Bloom filter holding `keys` keys (formula in the
/// module docs).
pub fn bloom_fpr(keys: f64, blocks: u32, k: u8) -> f64 {
    if blocks == 0 {
        return 1.0;
    }
    let lambda = keys / blocks as f64;
    if lambda <= 0.0 {
        return 0.0;
    }
    let q = 1.0 - 1.0 / BLOOM_BLOCK_BITS as f64;
    let hi = (lambda + 12.0 * lambda.sqrt() + 30.0) as u64;
    let mut p = (-lambda).exp();
    let mut sum = 0.0;
    // Poisson weights in log space avoid underflow for large λ.
    let mut logp = -lambda;
    for i in 0..=hi {
        if i > 0 {
            logp += lambda.ln() - (i as f64).ln();
            p = logp.exp();
        }
        sum += p * (1.0 - q.powf(k as f64 * i as f64)).powi(k as i32);
    }
    sum.min(1.0)
}

/// Expected candidates for an index: the union plus, for Bloom, false positives with three
/// standard deviations of slack.
pub fn expected_candidates(dim: u64, union: f64, index: IndexKind) -> f64 {
    match index {
        IndexKind::Bitmap => union,
        IndexKind::Bloom { blocks, k } => {
            let fp = (dim as f64 - union).max(0.0) * bloom_fpr(union, blocks, k);
            union + fp + 3.0 * fp.sqrt()
        }
    }
}

/// Picks the index with the fewest total bytes `index + lanes(candidates) · lane_bytes`, where
/// `lanes` maps expected candidates to the number of value lanes sent (the sketch's cells, or
/// exactly the candidates for union-rank). See the module docs for the Bloom grid.
pub fn choose_index(
    dim: u64,
    union: f64,
    lane: LaneWidth,
    choice: IndexChoice,
    lanes: impl Fn(f64) -> usize,
) -> IndexKind {
    let lane_bytes = lane.bytes() as f64;
    let total = |index: IndexKind| -> f64 {
        let words = match index {
            IndexKind::Bitmap => bitmap_words(dim),
            IndexKind::Bloom { blocks, .. } => blocks as usize * BLOOM_BLOCK_WORDS,
        };
        (words * 4) as f64 + lanes(expected_candidates(dim, union, index)) as f64 * lane_bytes
    };
    let best_bloom = || {
        let mut best = (f64::INFINITY, IndexKind::Bloom { blocks: 1, k: 1 });
        let keys = union.max(1.0);
        let mut bpk = 1.0f64;
        while bpk <= 64.0 {
            let blocks = ((keys * bpk / BLOOM_BLOCK_BITS as f64).ceil() as u64)
                .clamp(1, u32::MAX as u64) as u32;
            for k in 1..=7u8 {
                let index = IndexKind::Bloom { blocks, k };
                let t = total(index);
                if t < best.0 {
                    best = (t, index);
                }
            }
            bpk *= 1.1;
        }
        best
    };
    match choice {
        IndexChoice::Bitmap => IndexKind::Bitmap,
        IndexChoice::Bloom => best_bloom().1,
        IndexChoice::Auto => {
            let (bt, bloom) = best_bloom();
            if bt < total(IndexKind::Bitmap) {
                bloom
            } else {
                IndexKind::Bitmap
            }
        }
    }
}

fn bitmap_words(dim: u64) -> usize {
    dim.div_ceil(32) as usize
}

impl CodecParams {
    /// Parameters with every choice explicit (for tests, `--cells`, or replaying a peer's
    /// choice). `seed` is the job seed and `tensor_id` distinguishes tensors.
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
        if cells < hashes as usize || cells > u32::MAX as usize {
            return Err(CodecError::InvalidParams(format!(
                "cells {cells} must be in {hashes}..={}",
                u32::MAX
            )));
        }
        if let IndexKind::Bloom { blocks, k } = index {
            if blocks == 0 || !(1..=7).contains(&k) {
                return Err(CodecError::InvalidParams(format!(
                    "bloom blocks {blocks} (>0) k {k} (1..=7)"
                )));
            }
        }
        Ok(CodecParams {
            dim,
            lane,
            index,
            cells,
            hashes,
            signs,
            key: hash::derive_key(seed, tensor_id),
        })
    }

    /// Parameters from the sizing function (formulas in the module docs).
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
        let u = (sizing.expected_union_nnz.min(dim)) as f64;
        let cells_of = |cand: f64| sketch_cells_for(cand, sizing.failure_prob, sizing.hashes);
        let index = choose_index(dim, u, lane, sizing.index, |c| cells_of(c).0);
        let cand = expected_candidates(dim, u, index);
        let (mut cells, mut hashes) = cells_of(cand);
        if let Some(m) = sizing.cells {
            cells = m;
            hashes = sizing.hashes.unwrap_or(3);
        }
        Self::explicit(
            seed,
            tensor_id,
            dim,
            lane,
            index,
            cells,
            hashes,
            sizing.signs,
        )
    }

    /// Tensor dimension.
    pub fn dim(&self) -> u64 {
        self.dim
    }
    /// Lane width of the sketch cells.
    pub fn lane(&self) -> LaneWidth {
        self.lane
    }
    /// Index layout.
    pub fn index_kind(&self) -> IndexKind {
        self.index
    }
    /// Number of sketch cells.
    pub fn cells(&self) -> usize {
        self.cells
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
        match self.index {
            IndexKind::Bitmap => bitmap_words(self.dim),
            IndexKind::Bloom { blocks, .. } => blocks as usize * BLOOM_BLOCK_WORDS,
        }
    }
    /// Bytes of the index on the wire.
    pub fn index_bytes(&self) -> usize {
        self.index_words() * 4
    }
    /// Bytes of the sketch on the wire.
    pub fn sketch_bytes(&self) -> usize {
        self.cells * self.lane.bytes()
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

    /// The `h` distinct cells of a key hash (first `hashes()` entries of the array).
    ///
    /// Cell `j` is `fastrange(sub_hash_j, m)`; if it repeats an earlier cell of the same key the
    /// sub-hash is re-mixed until it does not (probability about `j/m`, so almost never).
    #[inline(always)]
    pub(crate) fn cells_of(&self, hash: u64) -> [usize; 4] {
        let m = self.cells as u64;
        let h = self.hashes as usize;
        let mut out = [usize::MAX; 4];
        for (j, o) in out[..h].iter_mut().enumerate() {
            *o = hash::fastrange(hash::sub_hash(hash, j), m) as usize;
        }
        // Fast path: all distinct (explicit comparisons, no loop).
        let [a, b, c, d] = out;
        let distinct = a != b && a != c && b != c && (h == 3 || (d != a && d != b && d != c));
        if distinct {
            return out;
        }
        out = [usize::MAX; 4];
        for j in 0..h {
            let mut x = hash::sub_hash(hash, j);
            let mut c = hash::fastrange(x, m) as usize;
            while out[..j].contains(&c) {
                x = hash::mix64(x ^ 0x5851_f42d_4c95_7f2d);
                c = hash::fastrange(x, m) as usize;
            }
            out[j] = c;
        }
        out
    }

    /// [`Self::cells_of`] for `H == hashes()` known at compile time (same cells).
    /// Cells are below `cells() <= u32::MAX`, so they are returned as `u32` (unused entries of
    /// the array are unspecified).
    #[inline(always)]
    pub(crate) fn cells_of_n<const H: usize>(&self, hash: u64) -> [u32; 4] {
        debug_assert_eq!(H, self.hashes as usize);
        let m = self.cells as u64;
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

    #[cold]
    #[inline(never)]
    fn cells_of_slow(&self, hash: u64) -> (u64, u64) {
        let [a, b, c, d] = self.cells_of(hash).map(|c| c as u32 as u64);
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
    fn large_tables_near_1_23() {
        let (m, h) = sketch_cells_for(450_000.0, DEFAULT_FAILURE_PROB, None);
        assert_eq!(h, 3);
        let r = m as f64 / 450_000.0;
        assert!(r > 1.222 && r < 1.235, "{r}");
    }

    #[test]
    fn small_tables_get_headroom() {
        let (m, _) = sketch_cells_for(100.0, DEFAULT_FAILURE_PROB, None);
        assert!(m as f64 / 100.0 > 1.5);
        assert_eq!(sketch_cells_for(0.0, 1e-5, None).0, 3);
    }

    #[test]
    fn bloom_fpr_is_sane() {
        let f = bloom_fpr(1000.0, 32, 6);
        assert!(f > 0.0 && f < 0.05, "{f}");
        assert!(bloom_fpr(1000.0, 64, 6) < f);
    }

    #[test]
    fn auto_prefers_bitmap_when_dense_and_bloom_when_sparse() {
        let dense = CodecParams::sized(1, 0, 1 << 20, LaneWidth::W32, &Sizing::new(200_000));
        assert_eq!(dense.unwrap().index_kind(), IndexKind::Bitmap);
        let sparse = CodecParams::sized(1, 0, 1 << 24, LaneWidth::W32, &Sizing::new(2_000));
        assert!(matches!(
            sparse.unwrap().index_kind(),
            IndexKind::Bloom { .. }
        ));
    }
}
