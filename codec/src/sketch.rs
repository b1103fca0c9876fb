//! Encodings (index + value sketch), the encoder, and merging.
//!
//! An [`Encoding`] is two plain slices: `index_words` (`u32`, combined by OR) and
//! `sketch_cells` (`u32` for 32-bit lanes, `u64` for 64-bit lanes, combined by wrapping add).
//! That is all that travels; a switch or a collective only needs those two operations, and
//! [`Encoding::from_parts`] / the slice-based decoder accept what comes back without copies.

use crate::prefetch::prefetch;
use std::fmt::Debug;

use crate::error::CodecError;
use crate::fixed::{FixedPoint, LaneWidth};
use crate::hash;
use crate::index;
use crate::params::CodecParams;

mod sealed {
    pub trait Sealed {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
}

/// A wrapping integer lane: `i32` (cells stored as `u32`) or `i64` (cells stored as `u64`).
///
/// Cells are unsigned words holding two's-complement values, so wrapping addition on the words
/// is exactly wrapping addition of the signed lanes, and they go on the wire unchanged.
pub trait Lane: sealed::Sealed + Copy + Send + Sync + Debug + 'static {
    /// The word a cell is stored in.
    type Cell: Copy + Default + Eq + Debug + Send + Sync + 'static;
    /// Width tag matching [`CodecParams::lane`].
    const WIDTH: LaneWidth;
    /// Truncates an integer into a cell (mod `2^w`).
    fn from_i64(v: i64) -> Self::Cell;
    /// Sign-extends a cell to `i64`.
    fn to_i64(c: Self::Cell) -> i64;
    /// Wrapping addition.
    fn add(a: Self::Cell, b: Self::Cell) -> Self::Cell;
    /// Wrapping subtraction.
    fn sub(a: Self::Cell, b: Self::Cell) -> Self::Cell;
    /// The cell's bits, zero-extended.
    fn to_u64(c: Self::Cell) -> u64;
    /// The low bits of `v` as a cell (mod `2^w`).
    fn from_u64(v: u64) -> Self::Cell;
}

impl Lane for i32 {
    type Cell = u32;
    const WIDTH: LaneWidth = LaneWidth::W32;
    #[inline(always)]
    fn from_i64(v: i64) -> u32 {
        v as u32
    }
    #[inline(always)]
    fn to_i64(c: u32) -> i64 {
        c as i32 as i64
    }
    #[inline(always)]
    fn add(a: u32, b: u32) -> u32 {
        a.wrapping_add(b)
    }
    #[inline(always)]
    fn sub(a: u32, b: u32) -> u32 {
        a.wrapping_sub(b)
    }
    #[inline(always)]
    fn to_u64(c: u32) -> u64 {
        c as u64
    }
    #[inline(always)]
    fn from_u64(v: u64) -> u32 {
        v as u32
    }
}

impl Lane for i64 {
    type Cell = u64;
    const WIDTH: LaneWidth = LaneWidth::W64;
    #[inline(always)]
    fn from_i64(v: i64) -> u64 {
        v as u64
    }
    #[inline(always)]
    fn to_i64(c: u64) -> i64 {
        c as i64
    }
    #[inline(always)]
    fn add(a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
    #[inline(always)]
    fn sub(a: u64, b: u64) -> u64 {
        a.wrapping_sub(b)
    }
    #[inline(always)]
    fn to_u64(c: u64) -> u64 {
        c
    }
    #[inline(always)]
    fn from_u64(v: u64) -> u64 {
        v
    }
}

/// Checks that a params/lane pair agrees.
pub(crate) fn check_lane<L: Lane>(params: &CodecParams) -> Result<(), CodecError> {
    if params.lane() != L::WIDTH {
        return Err(CodecError::InvalidParams(format!(
            "params are for {:?} lanes, used with {:?}",
            params.lane(),
            L::WIDTH
        )));
    }
    Ok(())
}

/// Checks slice lengths against the parameters.
pub(crate) fn check_shapes(
    params: &CodecParams,
    index_words: usize,
    cells: usize,
) -> Result<(), CodecError> {
    if index_words != params.index_words() {
        return Err(CodecError::ShapeMismatch {
            what: "index words",
            expected: params.index_words(),
            got: index_words,
        });
    }
    if cells != params.cells() {
        return Err(CodecError::ShapeMismatch {
            what: "sketch cells",
            expected: params.cells(),
            got: cells,
        });
    }
    Ok(())
}

/// One worker's (or an aggregate's) compressed gradient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding<L: Lane> {
    params: CodecParams,
    index: Vec<u32>,
    cells: Vec<L::Cell>,
    /// Number of worker encodings summed into this one (0 = none, or unknown after
    /// [`Encoding::from_parts`]); travels beside the data (e.g. an ADD lane).
    contributions: u32,
}

impl<L: Lane> Encoding<L> {
    /// The all-zero encoding (the identity of merge), sized by `params`.
    pub fn new(params: &CodecParams) -> Result<Self, CodecError> {
        check_lane::<L>(params)?;
        Ok(Encoding {
            params: params.clone(),
            index: vec![0; params.index_words()],
            cells: vec![L::Cell::default(); params.cells()],
            contributions: 0,
        })
    }

    /// Wraps aggregated slices received from the network (no copy); checks their lengths.
    /// The contribution count is unknown (0) until [`Self::set_contributions`].
    pub fn from_parts(
        params: &CodecParams,
        index_words: Vec<u32>,
        cells: Vec<L::Cell>,
    ) -> Result<Self, CodecError> {
        check_lane::<L>(params)?;
        check_shapes(params, index_words.len(), cells.len())?;
        Ok(Encoding {
            params: params.clone(),
            index: index_words,
            cells,
            contributions: 0,
        })
    }

    /// Number of worker encodings merged into this one (1 after an encode; `merge` adds).
    pub fn contributions(&self) -> u32 {
        self.contributions
    }

    /// Sets the contribution count (e.g. from the count aggregated beside the data).
    pub fn set_contributions(&mut self, contributions: u32) {
        self.contributions = contributions;
    }

    /// Gives the buffers back (e.g. to reuse them as receive buffers).
    pub fn into_parts(self) -> (Vec<u32>, Vec<L::Cell>) {
        (self.index, self.cells)
    }

    /// Parameters this encoding was built with.
    pub fn params(&self) -> &CodecParams {
        &self.params
    }

    /// Index words (bitmap or Bloom bits), combined by OR.
    pub fn index_words(&self) -> &[u32] {
        &self.index
    }

    /// Sketch cells, combined by wrapping add.
    pub fn sketch_cells(&self) -> &[L::Cell] {
        &self.cells
    }

    /// Mutable index words, to receive an aggregate in place.
    pub fn index_words_mut(&mut self) -> &mut [u32] {
        &mut self.index
    }

    /// Mutable sketch cells, to receive an aggregate in place.
    pub fn sketch_cells_mut(&mut self) -> &mut [L::Cell] {
        &mut self.cells
    }

    /// Resets to the all-zero encoding without reallocating.
    pub fn clear(&mut self) {
        self.index.fill(0);
        self.cells.fill(L::Cell::default());
        self.contributions = 0;
    }

    /// `self += other`: lane-wise wrapping add and index OR (associative and commutative).
    pub fn merge(&mut self, other: &Encoding<L>) -> Result<(), CodecError> {
        if self.params != other.params {
            return Err(CodecError::ParamsMismatch);
        }
        merge_slices::<L>(&mut self.index, &mut self.cells, &other.index, &other.cells)?;
        self.contributions = self.contributions.saturating_add(other.contributions);
        Ok(())
    }
}

/// Merges raw slices in place: `dst_index |= src_index`, `dst_cells += src_cells` (wrapping).
/// What a switch or a reduce step does; no parameters needed beyond matching lengths.
pub fn merge_slices<L: Lane>(
    dst_index: &mut [u32],
    dst_cells: &mut [L::Cell],
    src_index: &[u32],
    src_cells: &[L::Cell],
) -> Result<(), CodecError> {
    if dst_index.len() != src_index.len() {
        return Err(CodecError::ShapeMismatch {
            what: "index words",
            expected: dst_index.len(),
            got: src_index.len(),
        });
    }
    if dst_cells.len() != src_cells.len() {
        return Err(CodecError::ShapeMismatch {
            what: "sketch cells",
            expected: dst_cells.len(),
            got: src_cells.len(),
        });
    }
    for (d, s) in dst_index.iter_mut().zip(src_index) {
        *d |= *s;
    }
    for (d, s) in dst_cells.iter_mut().zip(src_cells) {
        *d = L::add(*d, *s);
    }
    Ok(())
}

/// What an encode call saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodeStats {
    /// Keys added (nonzero after quantization).
    pub nnz: usize,
}

/// Floats scanned per batch by [`Encoder::encode_dense`] (64 KiB: stays in L2).
const BATCH: usize = 16384;
/// How many staged keys ahead the encoder prefetches cells and index words.
const PREFETCH_AHEAD: usize = 16;

/// A key between the two stages of [`Encoder::encode_dense`].
#[derive(Debug, Clone, Copy)]
struct Staged {
    q: i64,
    hash: u64,
    slot: (usize, u64),
    cells: [u32; 4],
}

const STAGED_ZERO: Staged = Staged {
    q: 0,
    hash: 0,
    slot: (0, 0),
    cells: [0; 4],
};

/// Encodes gradients with fixed parameters. Holds its scratch buffer so hot paths do not
/// allocate; the output [`Encoding`] is reused by the caller.
#[derive(Debug, Clone)]
pub struct Encoder<L: Lane> {
    params: CodecParams,
    batch: Vec<u32>,
    stage: Vec<Staged>,
    _lane: std::marker::PhantomData<L>,
}

impl<L: Lane> Encoder<L> {
    /// An encoder for `params` (whose lane must be `L`).
    pub fn new(params: &CodecParams) -> Result<Self, CodecError> {
        check_lane::<L>(params)?;
        Ok(Encoder {
            params: params.clone(),
            batch: vec![0; BATCH + 16],
            stage: vec![STAGED_ZERO; BATCH],
            _lane: std::marker::PhantomData,
        })
    }

    /// The parameters.
    pub fn params(&self) -> &CodecParams {
        &self.params
    }

    /// Switches to other parameters (same lane), keeping the scratch buffers: one encoder can
    /// serve every operation of a worker without allocating.
    pub fn set_params(&mut self, params: &CodecParams) -> Result<(), CodecError> {
        check_lane::<L>(params)?;
        if &self.params != params {
            self.params = params.clone();
        }
        Ok(())
    }

    /// A fresh zero encoding for these parameters.
    pub fn new_encoding(&self) -> Encoding<L> {
        Encoding {
            params: self.params.clone(),
            index: vec![0; self.params.index_words()],
            cells: vec![L::Cell::default(); self.params.cells()],
            contributions: 0,
        }
    }

    #[inline(always)]
    fn prefetch_entry<const H: usize>(&self, index_words: &[u32], cells: &[L::Cell], k: usize) {
        let s = &self.stage[k];
        for &c in &s.cells[..H] {
            prefetch(cells.as_ptr().wrapping_add(c as usize));
        }
        // A Bloom block is 32 bytes and may straddle two lines: fetch both ends.
        let w = s.slot.0;
        prefetch(index_words.as_ptr().wrapping_add(w));
        prefetch(index_words.as_ptr().wrapping_add(w + 7));
    }

    fn prepare(&self, fixed: &FixedPoint, out: &mut Encoding<L>) -> Result<(), CodecError> {
        check_fixed::<L>(&self.params, fixed)?;
        if out.params != self.params {
            return Err(CodecError::ParamsMismatch);
        }
        out.clear();
        Ok(())
    }

    /// Stage 1 for one key: hash, cells, index slot; adds its weighted value to `check`.
    #[inline(always)]
    fn stage_key<const H: usize>(params: &CodecParams, e: &mut Staged, key: u32, q: i64) -> u64 {
        let hash = params.key_hash(key);
        let cs = params.cells_of_n::<H>(hash);
        // Field by field: building the struct first made the compiler assemble it on the
        // stack and reload it wider (a store-forwarding stall).
        e.q = q;
        e.hash = hash;
        let (w, g) = index::slot(params, key);
        e.slot.0 = w;
        e.slot.1 = g;
        e.cells[0] = cs[0];
        e.cells[1] = cs[1];
        e.cells[2] = cs[2];
        e.cells[3] = cs[3];
        (q as u64).wrapping_mul(hash::check_weight(hash))
    }

    /// Stage 2: index inserts and cell adds of `staged` keys, prefetching
    /// [`PREFETCH_AHEAD`] keys ahead; `more` is called once per key (input prefetching).
    #[inline(always)]
    fn apply_staged<const H: usize>(
        &self,
        staged: usize,
        index_words: &mut [u32],
        cells: &mut [L::Cell],
        mut more: impl FnMut(),
    ) {
        let params = &self.params;
        for k in 0..staged.min(PREFETCH_AHEAD) {
            self.prefetch_entry::<H>(index_words, cells, k);
        }
        for k in 0..staged {
            if k + PREFETCH_AHEAD < staged {
                self.prefetch_entry::<H>(index_words, cells, k + PREFETCH_AHEAD);
            }
            more();
            let Staged {
                q,
                hash,
                slot,
                cells: cs,
            } = self.stage[k];
            index::insert_at(params, index_words, slot.0, slot.1);
            let pos = L::from_i64(q);
            let neg = L::from_i64(q.wrapping_neg());
            for (j, &c) in cs[..H].iter().enumerate() {
                let v = if params.negate(hash, j) { neg } else { pos };
                let c = c as usize;
                cells[c] = L::add(cells[c], v);
            }
        }
    }

    /// Encodes a dense gradient into `out` (reset first; unspecified content on error).
    ///
    /// Scans batches of [`BATCH`] floats: 16 at a time, a branch-free OR of their magnitude
    /// bits skips all-zero groups; groups with a nonzero are compacted branch-free into a
    /// position list; then each listed value is quantized, hashed once and added to its
    /// cells. Zeros and values that quantize to 0 are not recorded.
    pub fn encode_dense(
        &mut self,
        values: &[f32],
        fixed: &FixedPoint,
        out: &mut Encoding<L>,
    ) -> Result<EncodeStats, CodecError> {
        if values.len() as u64 != self.params.dim() {
            return Err(CodecError::ShapeMismatch {
                what: "dense input",
                expected: self.params.dim() as usize,
                got: values.len(),
            });
        }
        self.prepare(fixed, out)?;
        // Monomorphised per hash count so the per-key cell loops are unrolled.
        let r = match self.params.hashes() {
            3 => self.encode_dense_h::<3>(values, fixed, out),
            _ => self.encode_dense_h::<4>(values, fixed, out),
        };
        out.contributions = 1;
        r
    }

    /// [`Self::encode_dense`] after the checks, for `H == params.hashes()`.
    fn encode_dense_h<const H: usize>(
        &mut self,
        values: &[f32],
        fixed: &FixedPoint,
        out: &mut Encoding<L>,
    ) -> Result<EncodeStats, CodecError> {
        debug_assert_eq!(H, self.params.hashes() as usize);
        self.batch.resize(BATCH + 16, 0);
        self.stage.resize(BATCH, STAGED_ZERO);
        let peel = self.params.peel_cells();
        let (index_words, cells) = (&mut out.index[..], &mut out.cells[..]);
        let mut check = 0u64;
        let mut nnz = 0usize;
        let mut dense = false;
        #[cfg(target_arch = "x86_64")]
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("bmi1");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        for (bi, block) in values.chunks(BATCH).enumerate() {
            // The skip test of the sparse scan mispredicts once nonzeros are no longer rare;
            // the previous batch tells which scan fits (both give the same list).
            let n = if dense && avx2 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `avx2` is true only if the CPU has AVX2 and BMI1.
                unsafe {
                    compact_nonzeros_dense_avx2(block, &mut self.batch)
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!()
            } else if dense {
                compact_nonzeros_dense(block, &mut self.batch)
            } else {
                compact_nonzeros(block, &mut self.batch)
            };
            dense = n * 256 > block.len();
            let base = bi * BATCH;
            // Stage 1: quantize, hash, compute cells and prefetch them, so that stage 2's
            // random read-modify-writes find their cache lines already on the way.
            let mut ns = 0usize;
            // While the core works on keys, keep DRAM busy: prefetch the next batch of the
            // input (a few lines per key), so streaming and key work overlap.
            let next_end = (base + 2 * BATCH).min(values.len());
            let mut pf = (base + BATCH).min(next_end);
            let mut prefetch_input = || {
                if pf < next_end {
                    prefetch(values.as_ptr().wrapping_add(pf));
                    prefetch(values.as_ptr().wrapping_add(pf + 16));
                    prefetch(values.as_ptr().wrapping_add(pf + 32));
                    prefetch(values.as_ptr().wrapping_add(pf + 48));
                    pf += 64;
                }
            };
            for &off in &self.batch[..n] {
                prefetch_input();
                let i = base + off as usize;
                let q = fixed.try_to_fixed(block[off as usize], i)?;
                if q != 0 {
                    // ns < n <= BATCH = stage.len(): a plain store, no capacity check.
                    let e = &mut self.stage[ns];
                    check = check.wrapping_add(Self::stage_key::<H>(&self.params, e, i as u32, q));
                    ns += 1;
                }
            }
            self.apply_staged::<H>(ns, index_words, cells, &mut prefetch_input);
            nnz += ns;
        }
        cells[peel] = L::add(cells[peel], L::from_u64(check));
        Ok(EncodeStats { nnz })
    }

    /// Encodes a sparse gradient given as `(indices, values)` (indices may come in any order;
    /// duplicates add up). Keys go through the same two prefetching stages as
    /// [`Self::encode_dense`], in batches.
    pub fn encode_sparse(
        &mut self,
        indices: &[u32],
        values: &[f32],
        fixed: &FixedPoint,
        out: &mut Encoding<L>,
    ) -> Result<EncodeStats, CodecError> {
        if indices.len() != values.len() {
            return Err(CodecError::ShapeMismatch {
                what: "sparse values",
                expected: indices.len(),
                got: values.len(),
            });
        }
        self.prepare(fixed, out)?;
        let r = match self.params.hashes() {
            3 => self.encode_pairs::<3>(indices, out, |i| fixed.try_to_fixed(values[i], i)),
            _ => self.encode_pairs::<4>(indices, out, |i| fixed.try_to_fixed(values[i], i)),
        };
        out.contributions = 1;
        r
    }

    /// Staged encode of `(indices[i], value(i))` pairs into a cleared `out`.
    fn encode_pairs<const H: usize>(
        &mut self,
        indices: &[u32],
        out: &mut Encoding<L>,
        value: impl Fn(usize) -> Result<i64, CodecError>,
    ) -> Result<EncodeStats, CodecError> {
        self.stage.resize(BATCH, STAGED_ZERO);
        let dim = self.params.dim();
        let peel = self.params.peel_cells();
        let (index_words, cells) = (&mut out.index[..], &mut out.cells[..]);
        let mut check = 0u64;
        let mut nnz = 0usize;
        for (bi, chunk) in indices.chunks(BATCH).enumerate() {
            let mut ns = 0usize;
            for (j, &k) in chunk.iter().enumerate() {
                if k as u64 >= dim {
                    return Err(CodecError::IndexOutOfRange {
                        index: k as u64,
                        dim,
                    });
                }
                let q = value(bi * BATCH + j)?;
                if q != 0 {
                    let e = &mut self.stage[ns];
                    check = check.wrapping_add(Self::stage_key::<H>(&self.params, e, k, q));
                    ns += 1;
                }
            }
            self.apply_staged::<H>(ns, index_words, cells, || {});
            nnz += ns;
        }
        cells[peel] = L::add(cells[peel], L::from_u64(check));
        Ok(EncodeStats { nnz })
    }

    /// Encodes already quantized integers `(indices, ints)` into `out` (reset first). The
    /// caller is responsible for the integers' sum fitting the value width.
    pub fn encode_fixed_sparse(
        &mut self,
        indices: &[u32],
        ints: &[i64],
        out: &mut Encoding<L>,
    ) -> Result<EncodeStats, CodecError> {
        if indices.len() != ints.len() {
            return Err(CodecError::ShapeMismatch {
                what: "sparse values",
                expected: indices.len(),
                got: ints.len(),
            });
        }
        if out.params != self.params {
            return Err(CodecError::ParamsMismatch);
        }
        out.clear();
        let r = match self.params.hashes() {
            3 => self.encode_pairs::<3>(indices, out, |i| Ok(ints[i])),
            _ => self.encode_pairs::<4>(indices, out, |i| Ok(ints[i])),
        };
        out.contributions = 1;
        r
    }
}

/// Checks that a fixed-point scale fits the parameters' lane and value width.
pub(crate) fn check_fixed<L: Lane>(
    params: &CodecParams,
    fixed: &FixedPoint,
) -> Result<(), CodecError> {
    if fixed.lane() != L::WIDTH {
        return Err(CodecError::InvalidFixedPoint(
            "fixed point lane differs from the sketch lane".into(),
        ));
    }
    if fixed.bits() != params.value_bits() {
        return Err(CodecError::InvalidFixedPoint(format!(
            "fixed point value width {} differs from the parameters' {}",
            fixed.bits(),
            params.value_bits()
        )));
    }
    Ok(())
}

/// Bit `i` set iff `c[i]` has nonzero magnitude bits (`-0.0` counts as zero); `c.len() == 16`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn nonzero_mask16(c: &[f32]) -> u32 {
    use std::arch::x86_64::*;
    assert_eq!(c.len(), 16);
    // SAFETY: SSE2 is part of the x86_64 baseline; the four unaligned 16-byte loads stay inside
    // `c`, whose length was just checked.
    unsafe {
        let p = c.as_ptr() as *const __m128i;
        let z = _mm_setzero_si128();
        let zero_lanes = |v: __m128i| -> u32 {
            _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_slli_epi32::<1>(v), z))) as u32
        };
        let a = zero_lanes(_mm_loadu_si128(p));
        let b = zero_lanes(_mm_loadu_si128(p.add(1)));
        let d = zero_lanes(_mm_loadu_si128(p.add(2)));
        let e = zero_lanes(_mm_loadu_si128(p.add(3)));
        !(a | (b << 4) | (d << 8) | (e << 12)) & 0xffff
    }
}

/// Whether any of the 32 floats of `c` has nonzero magnitude bits; `c.len() == 32`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn any_nonzero32(c: &[f32]) -> bool {
    use std::arch::x86_64::*;
    assert_eq!(c.len(), 32);
    // SAFETY: SSE2 is part of the x86_64 baseline; the eight unaligned 16-byte loads stay
    // inside `c`, whose length was just checked.
    unsafe {
        let p = c.as_ptr() as *const __m128i;
        let a = _mm_or_si128(_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)));
        let b = _mm_or_si128(_mm_loadu_si128(p.add(2)), _mm_loadu_si128(p.add(3)));
        let d = _mm_or_si128(_mm_loadu_si128(p.add(4)), _mm_loadu_si128(p.add(5)));
        let e = _mm_or_si128(_mm_loadu_si128(p.add(6)), _mm_loadu_si128(p.add(7)));
        let x = _mm_slli_epi32::<1>(_mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(d, e)));
        _mm_movemask_epi8(_mm_cmpeq_epi32(x, _mm_setzero_si128())) != 0xffff
    }
}

/// Portable version of [`any_nonzero32`].
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn any_nonzero32(c: &[f32]) -> bool {
    c.iter().fold(0u32, |a, v| a | (v.to_bits() << 1)) != 0
}

/// Portable version of the nonzero mask.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn nonzero_mask16(c: &[f32]) -> u32 {
    let mut m = 0u32;
    for (i, v) in c.iter().enumerate() {
        m |= ((v.to_bits() << 1 != 0) as u32) << i;
    }
    m
}

/// Bit `i` set iff `c[i]` has nonzero magnitude bits; `c.len() == 64`.
#[inline(always)]
fn nonzero_mask64(c: &[f32]) -> u64 {
    let (a, b) = c.split_at(32);
    let (a0, a1) = a.split_at(16);
    let (b0, b1) = b.split_at(16);
    nonzero_mask16(a0) as u64
        | (nonzero_mask16(a1) as u64) << 16
        | (nonzero_mask16(b0) as u64) << 32
        | (nonzero_mask16(b1) as u64) << 48
}

/// [`compact_nonzeros`] for denser blocks (about ≥ 1 nonzero per 256 floats), where the
/// all-zero skip test of 32 floats would be taken at random and mispredict often: every group
/// of 64 floats is turned into a bit mask and its first four nonzeros are written branch-free
/// (at ≤ 1% density that is almost always all of them). Same output as [`compact_nonzeros`].
#[inline(always)]
fn compact_nonzeros_dense(block: &[f32], out: &mut [u32]) -> usize {
    let out = &mut out[..block.len() + 16];
    let mut n = 0usize;
    let mut groups = block.chunks_exact(64);
    let mut off = 0u32;
    for c in &mut groups {
        let mask = nonzero_mask64(c);
        n = emit_group(mask, off, out, n);
        off += 64;
    }
    compact_tail(groups.remainder(), off, out, n)
}

/// Appends the offsets `off + i` of the set bits `i` of `mask` to `out` at `n`, returning the
/// new length. The first four are written branch-free (at ≤ 1% density that is almost always
/// all of them); `n` ≤ nonzeros so far ≤ `off` and `off + 64 ≤ out.len() - 16`: in bounds.
#[inline(always)]
fn emit_group(mut mask: u64, off: u32, out: &mut [u32], mut n: usize) -> usize {
    for _ in 0..4 {
        out[n] = off + (mask.trailing_zeros() & 63);
        n += (mask != 0) as usize;
        mask &= mask.wrapping_sub(1);
    }
    while mask != 0 {
        out[n] = off + mask.trailing_zeros();
        n += 1;
        mask &= mask - 1;
    }
    n
}

/// The last `< 64` floats of a block, branch-free, after [`emit_group`]s.
#[inline(always)]
fn compact_tail(tail: &[f32], off: u32, out: &mut [u32], mut n: usize) -> usize {
    for (i, v) in tail.iter().enumerate() {
        out[n] = off + i as u32;
        n += (v.to_bits() << 1 != 0) as usize;
    }
    n
}

/// [`compact_nonzeros_dense`] with AVX2 masks (8 floats per compare), about half the
/// instructions of the SSE2 scan. Same output.
///
/// # Safety
/// The CPU must support AVX2 and BMI1 (checked by the caller at run time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1")]
unsafe fn compact_nonzeros_dense_avx2(block: &[f32], out: &mut [u32]) -> usize {
    use std::arch::x86_64::*;
    let out = &mut out[..block.len() + 16];
    let mut n = 0usize;
    let mut groups = block.chunks_exact(64);
    let mut off = 0u32;
    let z = _mm256_setzero_si256();
    for c in &mut groups {
        let p = c.as_ptr() as *const __m256i;
        // Bit i of the result is set iff float i of the 8 is zero (magnitude bits all 0).
        let zero8 = |i: usize| -> u64 {
            // SAFETY: c has 64 floats, so the 8 unaligned 32-byte loads (i < 8) stay inside.
            let v = unsafe { _mm256_loadu_si256(p.add(i)) };
            _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(
                _mm256_slli_epi32::<1>(v),
                z,
            ))) as u32 as u64
        };
        let zeros = zero8(0)
            | zero8(1) << 8
            | zero8(2) << 16
            | zero8(3) << 24
            | zero8(4) << 32
            | zero8(5) << 40
            | zero8(6) << 48
            | zero8(7) << 56;
        let mask = !zeros;
        n = emit_group(mask, off, out, n);
        off += 64;
    }
    compact_tail(groups.remainder(), off, out, n)
}

/// Writes the offsets of the nonzero (magnitude bits ≠ 0, so `-0.0` is skipped) entries of
/// `block` into `out` and returns how many; `out.len() >= block.len() + 16`.
///
/// The first two nonzeros of each group of 16 are written branch-free (at ≤ 10% density that is
/// almost always all of them), so sparse inputs cost no branch mispredictions per nonzero.
#[inline(always)]
fn compact_nonzeros(block: &[f32], out: &mut [u32]) -> usize {
    let out = &mut out[..block.len() + 16];
    let mut n = 0usize;
    let mut chunks = block.chunks_exact(16);
    let mut off = 0u32;
    let mut push16 = |c: &[f32], off: u32, n: &mut usize| {
        let mut mask = nonzero_mask16(c);
        // n <= nonzeros seen so far <= off + 16 <= block.len(): in bounds (slack of 16).
        out[*n] = off + (mask.trailing_zeros() & 15);
        *n += (mask != 0) as usize;
        mask &= mask.wrapping_sub(1);
        out[*n] = off + (mask.trailing_zeros() & 15);
        *n += (mask != 0) as usize;
        mask &= mask.wrapping_sub(1);
        while mask != 0 {
            out[*n] = off + mask.trailing_zeros();
            *n += 1;
            mask &= mask - 1;
        }
    };
    // Groups of 32 floats (128 bytes) are skipped with one OR test when all zero.
    let mut pairs = block.chunks_exact(32);
    for c in &mut pairs {
        if any_nonzero32(c) {
            push16(&c[..16], off, &mut n);
            push16(&c[16..], off + 16, &mut n);
        }
        off += 32;
    }
    for c in &mut chunks.by_ref().skip((block.len() / 32) * 2) {
        push16(c, off, &mut n);
        off += 16;
    }
    for (i, v) in chunks.remainder().iter().enumerate() {
        out[n] = off + i as u32;
        n += (v.to_bits() << 1 != 0) as usize;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic inputs with nonzeros at `1/period` density, plus `-0.0`s.
    fn input(len: usize, period: u64) -> Vec<f32> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let r = x % period;
                if r == 0 {
                    (x >> 40) as f32 / 1e6 - 8.0
                } else if i % 97 == 0 {
                    -0.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn scans_agree() {
        for len in [0usize, 5, 63, 64, 100, 1000, BATCH] {
            for period in [1u64, 2, 7, 50, 300, 100_000] {
                let v = input(len, period);
                let mut a = vec![0u32; len + 16];
                let mut b = vec![0u32; len + 16];
                let na = compact_nonzeros(&v, &mut a);
                let nb = compact_nonzeros_dense(&v, &mut b);
                assert_eq!(a[..na], b[..nb], "len {len} period {period}");
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("bmi1") {
                    let mut c = vec![0u32; len + 16];
                    // SAFETY: features checked just above.
                    let nc = unsafe { compact_nonzeros_dense_avx2(&v, &mut c) };
                    assert_eq!(a[..na], c[..nc], "len {len} period {period}");
                }
            }
        }
    }

    #[test]
    fn dense_matches_sparse_encoding() {
        use crate::fixed::{max_exponent, LaneWidth};
        use crate::params::{IndexChoice, Sizing};
        let dim = 3 * BATCH + 77;
        for period in [3u64, 60, 100, 1000, 50_000] {
            let v = input(dim, period);
            let fixed = FixedPoint::new(max_exponent(&v).unwrap(), 8, LaneWidth::W32).unwrap();
            let (idx, vals): (Vec<u32>, Vec<f32>) = v
                .iter()
                .enumerate()
                .filter(|(_, x)| x.to_bits() << 1 != 0)
                .map(|(i, &x)| (i as u32, x))
                .unzip();
            for (index, hashes) in [
                (IndexChoice::Bloom, Some(3)),
                (IndexChoice::Bloom, Some(4)),
                (IndexChoice::Bitmap, None),
            ] {
                let mut sizing = Sizing::new(idx.len() as u64 + 10);
                sizing.index = index;
                sizing.hashes = hashes;
                let params = CodecParams::sized(7, 1, dim as u64, LaneWidth::W32, &sizing).unwrap();
                let mut enc = Encoder::<i32>::new(&params).unwrap();
                let mut d = enc.new_encoding();
                let mut s = enc.new_encoding();
                let sd = enc.encode_dense(&v, &fixed, &mut d).unwrap();
                let ss = enc.encode_sparse(&idx, &vals, &fixed, &mut s).unwrap();
                assert_eq!(sd, ss);
                assert_eq!(d, s, "period {period} {index:?} {hashes:?}");
            }
        }
    }
}
