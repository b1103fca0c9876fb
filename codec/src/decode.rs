//! Decoding an aggregated encoding by peeling, with exact wrapping integer arithmetic.
//!
//! 1. Candidates = every position the aggregated index reports ([`candidates_into`]; a
//!    receiver may run it as soon as the index has arrived). More candidates than peeling
//!    cells can never peel: [`CodecError::Saturated`], before any further work.
//! 2. Candidates are bucketed by their window (coupled layout), so every later pass touches
//!    only a few consecutive segments at a time; for each cell the number of candidates
//!    hashing into it and the XOR of their (bucketed) ordinals are computed locally (these
//!    never travel).
//! 3. A cell with count 1 holds exactly one candidate's sum: record it, subtract it from the
//!    candidate's other cells, decrement their counts; the cells that drop to count 1 go on a
//!    stack, so peeling follows the wave through neighbouring segments.
//! 4. If any candidate is left, [`CodecError::Stalled`]; never estimate. After a full peel,
//!    every cell must be zero modulo `2^w` ([`CodecError::Inconsistent`]) and the check lane
//!    must equal `Σ sum · weight(key)` ([`CodecError::CheckFailed`]).
//!
//! Because every contribution to a cell comes from a candidate, a peeled value is exactly the
//! sum mod `2^w`; false positives (no contributions) decode to 0. Values are sign-extended
//! from the parameters' value width `w` ([`CodecParams::value_bits`]).
//!
//! [`DecodedSums`] then checks the result against the [`FixedPoint`] before converting: the
//! number of merged contributions must not exceed the scale's workers, and every `|sum|` must
//! be within `contributions · per_worker_limit` — otherwise the lane wrapped.

use crate::error::CodecError;
use crate::fixed::FixedPoint;
use crate::hash;
use crate::index;
use crate::params::{CodecParams, Layout};
use crate::prefetch::prefetch;
use crate::sketch::{check_lane, check_shapes, Encoding, Lane};
use crate::wide::sign_extend;

pub use crate::index::candidates_into;

/// How many queue entries ahead the peel prefetches (cell state, then the candidate's hash).
const PEEL_AHEAD: usize = 16;

/// Reusable decoder state: every buffer is kept between calls, so decoding tensors of a
/// stable size does not allocate.
///
/// Candidates are renumbered in peeling order `p` (window order for the coupled layout): the
/// per-candidate arrays are indexed by `p`, so the peel touches them locally, and only the
/// final gather goes back to key order through `pos` (`pos[i]` = `p` of the `i`-th key).
#[derive(Debug, Default)]
pub struct Decoder<L: Lane> {
    out: DecodedSums,
    /// Key hash by `p`.
    hashes: Vec<u64>,
    /// Key hash by key order (scratch of the bucketing).
    key_hashes: Vec<u64>,
    /// `p` of each key (key order).
    pos: Vec<u32>,
    /// Peeled raw value by `p`.
    values: Vec<u64>,
    window_start: Vec<u32>,
    /// Per cell: number of unpeeled candidates (low 32 bits) and XOR of their `p` (high).
    count_xor: Vec<u64>,
    /// Per cell: residual value.
    work: Vec<L::Cell>,
    stack: Vec<u32>,
}

/// Exact sums at the candidate positions, in caller-owned buffers that
/// [`Decoder::decode_into`] refills (reuse one per tensor to decode without allocating).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodedSums {
    dim: u64,
    value_bits: u32,
    contributions: Option<u32>,
    keys: Vec<u32>,
    sums: Vec<i64>,
}

impl DecodedSums {
    /// Empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Candidate positions, increasing.
    pub fn keys(&self) -> &[u32] {
        &self.keys
    }

    /// Exact sum at each candidate (sign-extended from the value width); 0 for false
    /// positives.
    pub fn sums(&self) -> &[i64] {
        &self.sums
    }

    /// Dimension of the decoded tensor.
    pub fn dim(&self) -> u64 {
        self.dim
    }

    /// Contributions merged into the decoded aggregate, if known.
    pub fn contributions(&self) -> Option<u32> {
        self.contributions
    }

    /// Takes the buffers (keys, sums).
    pub fn into_parts(self) -> (Vec<u32>, Vec<i64>) {
        (self.keys, self.sums)
    }

    /// Borrowed view with the conversion helpers.
    pub fn view(&self) -> Decoded<'_> {
        Decoded {
            dim: self.dim,
            value_bits: self.value_bits,
            contributions: self.contributions,
            keys: &self.keys,
            sums: &self.sums,
        }
    }

    /// See [`Decoded::check`].
    pub fn check(&self, fixed: &FixedPoint) -> Result<(), CodecError> {
        self.view().check(fixed)
    }

    /// See [`Decoded::to_dense`].
    pub fn to_dense(&self, fixed: &FixedPoint, out: &mut [f32]) -> Result<(), CodecError> {
        self.view().to_dense(fixed, out)
    }

    /// See [`Decoded::to_sparse`].
    pub fn to_sparse(
        &self,
        fixed: &FixedPoint,
        out: &mut Vec<(u32, f32)>,
    ) -> Result<(), CodecError> {
        self.view().to_sparse(fixed, out)
    }
}

/// A successful decode: candidate positions (increasing) and their exact integer sums
/// (borrowed from the decoder's or a [`DecodedSums`]' buffers).
#[derive(Debug, Clone, Copy)]
pub struct Decoded<'a> {
    dim: u64,
    value_bits: u32,
    contributions: Option<u32>,
    /// Candidate positions, in increasing order.
    pub keys: &'a [u32],
    /// Exact lane sum (sign-extended) at each candidate; 0 for false positives.
    pub sums: &'a [i64],
}

impl Decoded<'_> {
    /// Dimension of the decoded tensor.
    pub fn dim(&self) -> u64 {
        self.dim
    }

    /// Number of candidates.
    pub fn candidates(&self) -> usize {
        self.keys.len()
    }

    /// Number of candidates whose sum is nonzero.
    pub fn nonzeros(&self) -> usize {
        self.sums.iter().filter(|&&s| s != 0).count()
    }

    /// Contributions merged into the decoded aggregate, if known.
    pub fn contributions(&self) -> Option<u32> {
        self.contributions
    }

    /// Checks the sums against the scale: same value width, no more contributions than the
    /// scale's workers ([`CodecError::TooManyContributions`]) and every `|sum|` within
    /// `contributions · per_worker_limit` ([`CodecError::SumOutOfRange`]; with an unknown
    /// count, the scale's workers are assumed).
    pub fn check(&self, fixed: &FixedPoint) -> Result<(), CodecError> {
        if fixed.bits() != self.value_bits {
            return Err(CodecError::InvalidFixedPoint(format!(
                "fixed point value width {} differs from the decoded {}",
                fixed.bits(),
                self.value_bits
            )));
        }
        let n = self.contributions.unwrap_or(fixed.workers());
        if n > fixed.workers() {
            return Err(CodecError::TooManyContributions {
                contributions: n,
                workers: fixed.workers(),
            });
        }
        let limit = fixed.sum_limit(n.max(1));
        // One branch-free pass for the max, the error path only when it fails.
        let max = self
            .sums
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap_or(0);
        if max as i128 > limit {
            let sum = *self
                .sums
                .iter()
                .find(|s| s.unsigned_abs() == max)
                .unwrap_or(&0);
            return Err(CodecError::SumOutOfRange { sum, limit });
        }
        Ok(())
    }

    /// Writes the dense float sum into `out` (length `dim`) after [`Self::check`].
    pub fn to_dense(&self, fixed: &FixedPoint, out: &mut [f32]) -> Result<(), CodecError> {
        if out.len() as u64 != self.dim {
            return Err(CodecError::ShapeMismatch {
                what: "dense output",
                expected: self.dim as usize,
                got: out.len(),
            });
        }
        self.check(fixed)?;
        write_dense(self.keys, self.sums, fixed, out);
        Ok(())
    }

    /// Writes the dense integer sums into `out` (length `dim`).
    pub fn to_dense_sums(&self, out: &mut [i64]) -> Result<(), CodecError> {
        if out.len() as u64 != self.dim {
            return Err(CodecError::ShapeMismatch {
                what: "dense output",
                expected: self.dim as usize,
                got: out.len(),
            });
        }
        out.fill(0);
        for (&k, &s) in self.keys.iter().zip(self.sums) {
            out[k as usize] = s;
        }
        Ok(())
    }

    /// Replaces `out` with the nonzero `(position, float sum)` pairs, in increasing position,
    /// after [`Self::check`].
    pub fn to_sparse(
        &self,
        fixed: &FixedPoint,
        out: &mut Vec<(u32, f32)>,
    ) -> Result<(), CodecError> {
        self.check(fixed)?;
        out.clear();
        out.extend(
            self.keys
                .iter()
                .zip(self.sums)
                .filter(|(_, &s)| s != 0)
                .map(|(&k, &s)| (k, fixed.to_float(s))),
        );
        Ok(())
    }
}

/// Dense output: a memset of the whole buffer, then the keys in increasing order. (Measured
/// on the development machine against a gap-by-gap fill and against assembling each line and
/// writing it with non-temporal stores: the plain memset, which the C library runs at
/// memory speed, plus ordered scattered writes was the fastest.)
fn write_dense(keys: &[u32], sums: &[i64], fixed: &FixedPoint, out: &mut [f32]) {
    out.fill(0.0);
    for (&k, &s) in keys.iter().zip(sums) {
        out[k as usize] = fixed.to_float(s);
    }
}

impl<L: Lane> Decoder<L> {
    /// An empty decoder; buffers grow on first use and are then reused.
    pub fn new() -> Self {
        Decoder {
            out: DecodedSums::default(),
            hashes: Vec::new(),
            key_hashes: Vec::new(),
            pos: Vec::new(),
            values: Vec::new(),
            window_start: Vec::new(),
            count_xor: Vec::new(),
            work: Vec::new(),
            stack: Vec::new(),
        }
    }

    /// Decodes an [`Encoding`] (its contribution count is checked by the result's
    /// conversions, if known).
    pub fn decode_encoding<'a>(&'a mut self, enc: &Encoding<L>) -> Result<Decoded<'a>, CodecError> {
        let n = enc.contributions();
        let mut out = std::mem::take(&mut self.out);
        let r = self.decode_into(
            enc.params(),
            enc.index_words(),
            enc.sketch_cells(),
            (n > 0).then_some(n),
            &mut out,
        );
        self.out = out;
        r?;
        Ok(self.out.view())
    }

    /// Decodes aggregated slices as received from the network, into the decoder's own
    /// buffers (contribution count unknown; see [`Self::decode_into`]).
    pub fn decode<'a>(
        &'a mut self,
        params: &CodecParams,
        index_words: &[u32],
        cells: &[L::Cell],
    ) -> Result<Decoded<'a>, CodecError> {
        let mut out = std::mem::take(&mut self.out);
        let r = self.decode_into(params, index_words, cells, None, &mut out);
        self.out = out;
        r?;
        Ok(self.out.view())
    }

    /// Decodes aggregated slices into caller-owned buffers (no copy, no allocation once the
    /// buffers have grown). `contributions` is the number of worker encodings summed (as
    /// counted beside the data), checked by [`DecodedSums::check`] and the conversions.
    /// On error, `out.keys()` still holds the candidates (also after a stall).
    pub fn decode_into(
        &mut self,
        params: &CodecParams,
        index_words: &[u32],
        cells: &[L::Cell],
        contributions: Option<u32>,
        out: &mut DecodedSums,
    ) -> Result<(), CodecError> {
        check_lane::<L>(params)?;
        check_shapes(params, index_words.len(), cells.len())?;
        out.dim = params.dim();
        out.value_bits = params.value_bits();
        out.contributions = contributions;
        out.sums.clear();
        index::candidates(params, index_words, &mut out.keys, params.peel_cells())?;
        self.peel_into(params, &out.keys, cells, &mut out.sums)
    }

    /// Peels the sketch for given candidates (from [`candidates_into`] on the aggregated
    /// index, e.g. computed while the sketch was still arriving): `sums[i]` becomes the sum
    /// at `keys[i]`. `keys` must be increasing and below `dim`.
    pub fn peel_into(
        &mut self,
        params: &CodecParams,
        keys: &[u32],
        cells: &[L::Cell],
        sums: &mut Vec<i64>,
    ) -> Result<(), CodecError> {
        check_lane::<L>(params)?;
        if cells.len() != params.cells() {
            return Err(CodecError::ShapeMismatch {
                what: "sketch cells",
                expected: params.cells(),
                got: cells.len(),
            });
        }
        if let Some(&k) = keys.iter().find(|&&k| k as u64 >= params.dim()) {
            return Err(CodecError::IndexOutOfRange {
                index: k as u64,
                dim: params.dim(),
            });
        }
        let m = params.peel_cells();
        if keys.len() > m {
            return Err(CodecError::Saturated {
                candidates: keys.len(),
                cells: m,
            });
        }
        sums.clear();
        sums.resize(keys.len(), 0);
        match params.hashes() {
            3 => self.peel_h::<3>(params, keys, cells, sums),
            _ => self.peel_h::<4>(params, keys, cells, sums),
        }
    }

    fn peel_h<const H: usize>(
        &mut self,
        params: &CodecParams,
        keys: &[u32],
        cells: &[L::Cell],
        sums: &mut [i64],
    ) -> Result<(), CodecError> {
        let n = keys.len();
        let m = params.peel_cells();
        let bits = params.value_bits();
        let signs = params.signs();
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        self.order_candidates(params, keys);

        // Counts and XORs of `p` per cell. In the coupled layout `p` follows the windows, so
        // these updates stay within a few segments at a time. (Measured slower: counting each
        // window just before the sweep reaches it; counts and values in one 16-byte cell;
        // storing each candidate's cells instead of recomputing them from the hash.)
        let cx = &mut self.count_xor;
        cx.clear();
        cx.resize(m, 0);
        for (p, &hash) in self.hashes.iter().enumerate() {
            let cs = params.cells_of_n::<H>(hash);
            let tag = (p as u64) << 32;
            for &c in &cs[..H] {
                let s = &mut cx[c as usize];
                *s = (*s + 1) ^ tag;
            }
        }
        self.work.clear();
        self.work.extend_from_slice(&cells[..m]);
        let work = &mut self.work[..];
        self.values.clear();
        self.values.resize(n, 0);

        // Peeling as one sweep over the segments (the plain layout is one segment): cells
        // of the current segment with count 1 are peeled, and so is every cell that drops to
        // count 1 in a segment already swept (at most h − 1 behind, still in cache); cells
        // ahead of the sweep are left for it to find. Any order that peels until no count-1
        // cell is left gives the same result, and this one keeps the working set to a few
        // segments: the peeling wave of a coupled table travels the same way.
        let seg_len = match params.layout() {
            Layout::Coupled { segment_len } => segment_len as usize,
            Layout::Plain => m.max(1),
        };
        let mut resolved = 0usize;
        let mut check = 0u64;
        // A FIFO per segment: the cells of the segment with count 1, then every cell that
        // drops to count 1 in a swept segment. Each cell enters at most twice (scan, drop),
        // so 2m entries never reallocate. The chain of dependent reads (cell → p → hash →
        // cells) is prefetched a few entries ahead.
        let queue = &mut self.stack;
        queue.clear();
        queue.resize(2 * m + 1, 0);
        let hashes = &self.hashes[..];
        let values = &mut self.values[..];
        let (mut head, mut tail) = (0usize, 0usize);
        const RING: usize = 2 * PEEL_AHEAD;
        let mut ring = [(u32::MAX, [0u32; 4]); RING];
        for seg_start in (0..m).step_by(seg_len) {
            let seg_end = (seg_start + seg_len).min(m);
            for (c0, &s) in cx[seg_start..seg_end].iter().enumerate() {
                queue[tail] = (seg_start + c0) as u32;
                tail += (s as u32 == 1) as usize;
            }
            while head < tail {
                if head + 3 * PEEL_AHEAD < tail {
                    prefetch(
                        cx.as_ptr()
                            .wrapping_add(queue[head + 3 * PEEL_AHEAD] as usize),
                    );
                }
                if head + 2 * PEEL_AHEAD < tail {
                    let s = cx[queue[head + 2 * PEEL_AHEAD] as usize];
                    prefetch(hashes.as_ptr().wrapping_add((s >> 32) as usize));
                }
                if head + PEEL_AHEAD < tail {
                    // May read a stale state or hash: only an address to prefetch. The
                    // cells are kept in a small ring, tagged with `p` (cells depend on `p`
                    // alone, so a matching tag is always right).
                    let s = cx[queue[head + PEEL_AHEAD] as usize];
                    let pa = (s >> 32) as usize;
                    if let Some(&h) = hashes.get(pa) {
                        let cs = params.cells_of_n::<H>(h);
                        for &cj in &cs[..H] {
                            prefetch(cx.as_ptr().wrapping_add(cj as usize));
                            prefetch(work.as_ptr().wrapping_add(cj as usize));
                        }
                        ring[(head + PEEL_AHEAD) % RING] = (pa as u32, cs);
                    }
                }
                let c = queue[head] as usize;
                head += 1;
                let s = cx[c];
                if s as u32 != 1 {
                    continue;
                }
                let p = (s >> 32) as usize;
                let hash = hashes[p];
                let (tag, cached) = ring[(head - 1) % RING];
                let my = if tag as usize == p {
                    cached
                } else {
                    params.cells_of_n::<H>(hash)
                };
                let mut value = work[c];
                if signs {
                    let jc = my[..H].iter().position(|&x| x as usize == c).unwrap_or(0);
                    if (hash >> jc) & 1 == 1 {
                        value = L::sub(L::Cell::default(), value);
                    }
                }
                let neg_value = L::sub(L::Cell::default(), value);
                let raw = L::to_u64(value);
                values[p] = raw;
                check = check.wrapping_add(raw.wrapping_mul(hash::check_weight(hash)));
                let untag = (p as u64) << 32;
                for (j, &cj) in my[..H].iter().enumerate() {
                    let cj = cj as usize;
                    let contrib = if signs && (hash >> j) & 1 == 1 {
                        neg_value
                    } else {
                        value
                    };
                    work[cj] = L::sub(work[cj], contrib);
                    let t = (cx[cj] - 1) ^ untag;
                    cx[cj] = t;
                    // Branch-free append; only count-1 cells of swept segments advance tail.
                    queue[tail] = cj as u32;
                    tail += (t as u32 == 1 && cj < seg_end) as usize;
                }
                resolved += 1;
            }
        }
        if resolved != n {
            return Err(CodecError::Stalled {
                unresolved: n - resolved,
                candidates: n,
                cells: params.cells(),
            });
        }
        let nonzero_cells = work.iter().filter(|&&w| L::to_u64(w) & mask != 0).count();
        if nonzero_cells != 0 {
            return Err(CodecError::Inconsistent { nonzero_cells });
        }
        let lane_mask = mask & L::to_u64(L::from_u64(u64::MAX));
        if (L::to_u64(cells[m]).wrapping_sub(check)) & lane_mask != 0 {
            return Err(CodecError::CheckFailed);
        }
        // Back to key order: independent loads, so they overlap.
        for (s, &p) in sums.iter_mut().zip(&self.pos) {
            *s = sign_extend(self.values[p as usize], bits);
        }
        Ok(())
    }

    /// Renumbers the candidates in peeling order: by window for the coupled layout (a
    /// counting sort, stable), key order for the plain one. Fills `hashes` (by `p`) and
    /// `pos` (`p` by key order).
    fn order_candidates(&mut self, params: &CodecParams, keys: &[u32]) {
        let n = keys.len();
        self.hashes.clear();
        self.hashes.resize(n, 0);
        self.pos.clear();
        self.pos.resize(n, 0);
        match params.layout() {
            Layout::Plain => {
                for (i, (h, &k)) in self.hashes.iter_mut().zip(keys).enumerate() {
                    *h = params.key_hash(k);
                    self.pos[i] = i as u32;
                }
            }
            Layout::Coupled { .. } => {
                let w = params.windows() as usize;
                let starts = &mut self.window_start;
                starts.clear();
                starts.resize(w + 1, 0);
                self.key_hashes.clear();
                self.key_hashes
                    .extend(keys.iter().map(|&k| params.key_hash(k)));
                for &h in &self.key_hashes {
                    starts[params.window_of(h) as usize + 1] += 1;
                }
                for i in 1..=w {
                    starts[i] += starts[i - 1];
                }
                for (i, &h) in self.key_hashes.iter().enumerate() {
                    let slot = &mut starts[params.window_of(h) as usize];
                    self.hashes[*slot as usize] = h;
                    self.pos[i] = *slot;
                    *slot += 1;
                }
            }
        }
    }

    /// Candidates of the last decode attempt through [`Self::decode`] or
    /// [`Self::decode_encoding`] (also valid after a stall), for diagnostics and recovery.
    pub fn last_candidates(&self) -> &[u32] {
        &self.out.keys
    }
}
