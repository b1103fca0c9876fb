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
//!    queue, so peeling follows the wave through neighbouring segments. Counting and peeling
//!    are one sweep over the segments; a large coupled table is swept from both ends at once
//!    by two threads, then the middle is peeled ([`Decoder::set_threads`]).
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

use crate::dense::write_dense;
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
const PEEL_AHEAD: usize = 8;

/// Candidates from which a coupled peel is split over two threads (below, the split's
/// bookkeeping and hand-off cost more than they save; chosen when every split still
/// started a thread).
const PARALLEL_MIN_KEYS: usize = 100_000;

/// Dense output length from which it is written by two threads.
const PARALLEL_MIN_DENSE: usize = 1 << 20;

/// Two threads if the machine has two cores, else one.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Reusable decoder state: every buffer is kept between calls, so decoding tensors of a
/// stable size does not allocate.
///
/// Candidates are renumbered in peeling order `p` (window order for the coupled layout): the
/// per-candidate arrays are indexed by `p`, so the peel touches them locally, and only the
/// final gather goes back to key order through `pos` (`pos[i]` = `p` of the `i`-th key).
#[derive(Debug)]
pub struct Decoder<L: Lane> {
    out: DecodedSums,
    /// Key hash by `p`.
    hashes: Vec<u64>,
    /// Key hash by key order (scratch of the bucketing).
    key_hashes: Vec<u64>,
    /// `p` of each key (key order).
    pos: Vec<u32>,
    /// Peeled raw value by `p`.
    values: Vec<L::Cell>,
    window_start: Vec<u32>,
    /// Per cell: number of unpeeled candidates (low 32 bits) and XOR of their `p` (high).
    count_xor: Vec<u64>,
    /// Per cell: residual value.
    work: Vec<L::Cell>,
    stack: Vec<u32>,
    /// Candidates of the index's upper half, when two threads enumerate them.
    upper_keys: Vec<u32>,
    /// Per window, where the upper half of the keys goes, when two threads sort them.
    upper_starts: Vec<u32>,
    /// Threads a large coupled peel may use (1 or 2).
    threads: usize,
}

/// Exact sums at the candidate positions, in caller-owned buffers that
/// [`Decoder::decode_into`] refills (reuse one per tensor to decode without allocating).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodedSums {
    dim: u64,
    value_bits: u32,
    contributions: Option<u32>,
    /// Threads the conversions may use (the decoder's).
    threads: usize,
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
            threads: self.threads,
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
    threads: usize,
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
        if self.threads > 1 && out.len() >= PARALLEL_MIN_DENSE {
            // Two halves of the output, each with the keys that fall in it.
            let mid = out.len() / 2;
            let split = self.keys.partition_point(|&k| (k as usize) < mid);
            let (lo, hi) = out.split_at_mut(mid);
            let (keys, sums) = (self.keys.split_at(split), self.sums.split_at(split));
            crate::join::join(
                || write_dense(keys.0, sums.0, 0, fixed, lo),
                || write_dense(keys.1, sums.1, mid as u32, fixed, hi),
            );
        } else {
            write_dense(self.keys, self.sums, 0, fixed, out);
        }
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

impl<L: Lane> Default for Decoder<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: Lane> Decoder<L> {
    /// Sets how many threads a large peel may use: 1, or 2 (the default on machines with
    /// two or more cores) to peel the two halves of a coupled table at once.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.clamp(1, 2);
    }

    /// Threads a large peel may use.
    pub fn threads(&self) -> usize {
        self.threads
    }

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
            upper_keys: Vec::new(),
            upper_starts: Vec::new(),
            threads: default_threads(),
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
        out.threads = self.threads;
        out.sums.clear();
        let limit = params.peel_cells();
        let split = (self.threads > 1 && params.dim() >= PARALLEL_MIN_DENSE as u64)
            .then(|| {
                index::candidates_split(
                    params,
                    index_words,
                    &mut out.keys,
                    &mut self.upper_keys,
                    limit,
                )
            })
            .flatten();
        match split {
            Some(r) => {
                out.keys.extend_from_slice(&self.upper_keys);
                r?
            }
            None => index::candidates(params, index_words, &mut out.keys, limit)?,
        }
        // The lane and shapes were checked above, and the enumeration lists positions below
        // `dim`, at most `limit` of them.
        self.peel_valid(params, &out.keys, cells, &mut out.sums)
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
        self.peel_valid(params, keys, cells, sums)
    }

    /// [`Self::peel_into`] for inputs already checked (lane, cell count, keys below `dim`
    /// and no more than the peeling cells), as [`Self::decode_into`]'s own candidates are.
    fn peel_valid(
        &mut self,
        params: &CodecParams,
        keys: &[u32],
        cells: &[L::Cell],
        sums: &mut Vec<i64>,
    ) -> Result<(), CodecError> {
        sums.clear();
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
        sums: &mut Vec<i64>,
    ) -> Result<(), CodecError> {
        let n = keys.len();
        let m = params.peel_cells();
        let bits = params.value_bits();
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        self.order_candidates(params, keys);

        // The plain layout is one segment and one window; a coupled key of window `w` has
        // its cells in segments `w .. w + h`.
        let (seg_len, span, windows) = match params.layout() {
            Layout::Coupled { segment_len } => (
                segment_len as usize,
                H,
                self.window_start.len().saturating_sub(1),
            ),
            Layout::Plain => (m.max(1), 1, 1),
        };
        let segments = m.div_ceil(seg_len);
        let geometry = Geometry {
            seg_len,
            span,
            m,
            starts: &self.window_start,
            n,
        };
        // Only sized here: each sweep zeroes the counts and copies the residuals of its
        // cells segment by segment as it reaches them (so each segment is brought into the
        // cache of the core that peels it, once); every cell is set by the time the sweeps
        // end. `values` is written for every key peeled, and read only after a full peel.
        self.count_xor.resize(m, 0);
        self.work.resize(m, L::Cell::default());
        self.values.resize(n, L::Cell::default());
        // Each cell enters a queue at most twice (the scan of its segment, its drop to
        // count 1 afterwards), so 2m + 2 entries never overflow, split or not.
        if self.stack.len() < 2 * m + 2 {
            self.stack.resize(2 * m + 2, 0);
        }

        // Two sweeps in parallel when the table is large: the lower half upwards, the upper
        // half downwards, each over the keys whose cells all lie in its half. The `h − 1`
        // windows straddling the middle are counted afterwards, and one last pass peels
        // what the middle holds (plus anything it frees on either side). Peeling until no
        // count-1 cell is left gives the same result in any order, so the split changes
        // only the speed.
        let split = self.threads > 1
            && span == H
            && n >= PARALLEL_MIN_KEYS
            && segments >= 4 * H
            && windows + H - 1 == segments;
        let (mut resolved, mut check) = (0usize, 0u64);
        let hashes = &self.hashes[..];
        let (straddle, middle) = if split {
            let b = segments / 2;
            let (wa, wb) = (b + 1 - H, b);
            let (pa, pb) = (geometry.window_begin(wa), geometry.window_begin(wb));
            let cut = b * seg_len;
            let (cx_a, cx_b) = self.count_xor[..m].split_at_mut(cut);
            let (work_a, work_b) = self.work[..m].split_at_mut(cut);
            let (values_a, rest) = self.values[..n].split_at_mut(pa);
            let values_b = &mut rest[pb - pa..];
            let (queue_a, queue_b) = self.stack.split_at_mut(2 * cut + 1);
            let lower: Part<'_, L> = Part {
                params,
                hashes,
                cx: cx_a,
                work: work_a,
                src: &cells[..cut],
                init: 0..0,
                c_lo: 0,
                values: values_a,
                p_lo: 0,
                queue: queue_a,
            };
            let upper: Part<'_, L> = Part {
                params,
                hashes,
                cx: cx_b,
                work: work_b,
                src: &cells[cut..m],
                init: m..m,
                c_lo: cut,
                values: values_b,
                p_lo: pb,
                queue: queue_b,
            };
            let g = &geometry;
            let (ra, rb) = crate::join::join(
                move || lower.sweep_up::<H>(g, 0..wa, 0..wa),
                move || upper.sweep_down::<H>(g, wb..windows, b + H - 1),
            );
            resolved += ra.0 + rb.0;
            check = check.wrapping_add(ra.1).wrapping_add(rb.1);
            (wa..wb, (wa * seg_len)..((wb + H - 1) * seg_len).min(m))
        } else {
            (0..windows, 0..m)
        };
        // The rest on the whole table: every window not counted yet, then its segments are
        // scanned (in the unsplit case, this is the one sweep, segment by segment).
        let whole: Part<'_, L> = Part {
            params,
            hashes,
            cx: &mut self.count_xor[..m],
            work: &mut self.work[..m],
            src: &cells[..m],
            init: if split { 0..m } else { 0..0 },
            c_lo: 0,
            values: &mut self.values[..n],
            p_lo: 0,
            queue: &mut self.stack,
        };
        let r = if split {
            whole.finish::<H>(&geometry, straddle, middle)
        } else {
            whole.sweep_up::<H>(&geometry, straddle, 0..segments)
        };
        resolved += r.0;
        check = check.wrapping_add(r.1);
        if resolved != n {
            return Err(CodecError::Stalled {
                unresolved: n - resolved,
                candidates: n,
                cells: params.cells(),
            });
        }
        // Every residual must be zero, and the sums go back to key order (independent
        // loads, so they overlap). After a split peel both halves of the state are in the
        // two cores' caches: each thread takes half of the cells and half of the keys.
        let work = &self.work[..m];
        let (values, pos) = (&self.values[..n], &self.pos[..n]);
        let nonzero = |w: &[L::Cell]| w.iter().filter(|&&w| L::to_u64(w) & mask != 0).count();
        let gather = |pos: &[u32], out: &mut [std::mem::MaybeUninit<i64>]| {
            for (s, &p) in out.iter_mut().zip(pos) {
                s.write(sign_extend(L::to_u64(values[p as usize]), bits));
            }
        };
        sums.clear();
        sums.reserve(n);
        let spare = &mut sums.spare_capacity_mut()[..n];
        let nonzero_cells = if split {
            let (w_lo, w_hi) = work.split_at(m / 2);
            let (pos_lo, pos_hi) = pos.split_at(n / 2);
            let (out_lo, out_hi) = spare.split_at_mut(n / 2);
            let (lo, hi) = crate::join::join(
                || {
                    gather(pos_lo, out_lo);
                    nonzero(w_lo)
                },
                || {
                    gather(pos_hi, out_hi);
                    nonzero(w_hi)
                },
            );
            lo + hi
        } else {
            gather(pos, spare);
            nonzero(work)
        };
        if nonzero_cells != 0 {
            return Err(CodecError::Inconsistent { nonzero_cells });
        }
        let lane_mask = mask & L::to_u64(L::from_u64(u64::MAX));
        if (L::to_u64(cells[m]).wrapping_sub(check)) & lane_mask != 0 {
            return Err(CodecError::CheckFailed);
        }
        // SAFETY: the first `n` entries of the spare capacity were all written above.
        unsafe { sums.set_len(n) };
        Ok(())
    }

    /// Renumbers the candidates in peeling order: by window for the coupled layout (a
    /// counting sort, stable), key order for the plain one. Fills `hashes` (by `p`) and
    /// `pos` (`p` by key order).
    fn order_candidates(&mut self, params: &CodecParams, keys: &[u32]) {
        let n = keys.len();
        // Every entry below `n` is written below: resizing needs no clearing.
        self.hashes.resize(n, 0);
        self.pos.resize(n, 0);
        match params.layout() {
            Layout::Plain => {
                self.window_start.clear();
                for (i, (h, &k)) in self.hashes.iter_mut().zip(keys).enumerate() {
                    *h = params.key_hash(k);
                    self.pos[i] = i as u32;
                }
            }
            Layout::Coupled { .. } => {
                // A stable counting sort by window. With two threads, each hashes, counts
                // and then places half of the keys: the lower half's keys of a window go
                // first, so the order is the same as with one.
                let w = params.windows() as usize;
                let half = if self.threads > 1 && n >= PARALLEL_MIN_KEYS {
                    n / 2
                } else {
                    n
                };
                let lo = &mut self.window_start;
                lo.clear();
                lo.resize(w + 1, 0);
                let hi = &mut self.upper_starts;
                hi.clear();
                hi.resize(w + 1, 0);
                self.key_hashes.resize(n, 0);
                let (kh_lo, kh_hi) = self.key_hashes.split_at_mut(half);
                let (keys_lo, keys_hi) = keys.split_at(half);
                let hash_count = |keys: &[u32], kh: &mut [u64], counts: &mut [u32]| {
                    let (mut keys, mut kh) = (keys, kh);
                    // Eight hashes at a time with AVX-512.
                    #[cfg(target_arch = "x86_64")]
                    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
                        let whole = keys.len() / 8 * 8;
                        for (k8, h8) in keys[..whole].chunks_exact(8).zip(kh.chunks_exact_mut(8)) {
                            let k8: &[u32; 8] = k8.try_into().unwrap_or(&[0; 8]);
                            // SAFETY: AVX-512F/DQ were just detected.
                            h8.copy_from_slice(&unsafe { params.key_hashes_x8(k8) });
                            for &h in &*h8 {
                                counts[params.window_of(h) as usize] += 1;
                            }
                        }
                        (keys, kh) = (&keys[whole..], &mut kh[whole..]);
                    }
                    for (h, &k) in kh.iter_mut().zip(keys) {
                        *h = params.key_hash(k);
                        counts[params.window_of(*h) as usize] += 1;
                    }
                };
                if half < n {
                    crate::join::join(
                        || hash_count(keys_lo, kh_lo, lo),
                        || hash_count(keys_hi, kh_hi, hi),
                    );
                } else {
                    hash_count(keys_lo, kh_lo, lo);
                }
                // Where each half's keys of each window start.
                let mut at = 0u32;
                for (l, h) in lo[..w].iter_mut().zip(&mut hi[..w]) {
                    let (cl, ch) = (*l, *h);
                    *l = at;
                    *h = at + cl;
                    at += cl + ch;
                }
                let hashes = SharedSlice::new(&mut self.hashes);
                let place = |kh: &[u64], pos: &mut [u32], next: &mut [u32]| {
                    for (p, &h) in pos.iter_mut().zip(kh) {
                        let slot = &mut next[params.window_of(h) as usize];
                        // SAFETY: each slot is handed out once (the two halves' slots of a
                        // window are disjoint ranges), and slots are below `n`.
                        unsafe { hashes.write(*slot as usize, h) };
                        *p = *slot;
                        *slot += 1;
                    }
                };
                let (pos_lo, pos_hi) = self.pos.split_at_mut(half);
                if half < n {
                    crate::join::join(|| place(kh_lo, pos_lo, lo), || place(kh_hi, pos_hi, hi));
                    // The upper half's ends are the windows' ends.
                    lo[..w].copy_from_slice(&hi[..w]);
                } else {
                    place(kh_lo, pos_lo, lo);
                }
                lo[w] = n as u32;
            }
        }
    }

    /// Candidates of the last decode attempt through [`Self::decode`] or
    /// [`Self::decode_encoding`] (also valid after a stall), for diagnostics and recovery.
    pub fn last_candidates(&self) -> &[u32] {
        &self.out.keys
    }
}

/// Segment and window geometry of one peel.
struct Geometry<'a> {
    seg_len: usize,
    /// Segments a window spans (`h` coupled, 1 plain).
    span: usize,
    /// Peeling cells.
    m: usize,
    /// After the renumbering, `starts[w]` is the end of window `w`'s `p` range (coupled);
    /// empty for the plain layout.
    starts: &'a [u32],
    /// Candidates.
    n: usize,
}

impl Geometry<'_> {
    /// First `p` of window `w`.
    fn window_begin(&self, w: usize) -> usize {
        match w {
            0 => 0,
            _ => self.starts.get(w - 1).map_or(self.n, |&x| x as usize),
        }
    }

    /// Cells of segment `s`.
    fn segment(&self, s: usize) -> std::ops::Range<usize> {
        (s * self.seg_len).min(self.m)..((s + 1) * self.seg_len).min(self.m)
    }
}

/// Where a sweep is: its queue (`head..tail`), keys resolved and their check-lane sum.
#[derive(Debug, Default)]
struct Progress {
    head: usize,
    tail: usize,
    resolved: usize,
    check: u64,
}

/// The decoder state of a range of cells (from `c_lo`) and of keys (from `p_lo`), which one
/// thread peels: every key counted into it has all its cells inside it.
struct Part<'a, L: Lane> {
    params: &'a CodecParams,
    /// Key hash by `p` (all keys).
    hashes: &'a [u64],
    /// Count (low 32 bits) and XOR of global `p` (high) per cell of the range.
    cx: &'a mut [u64],
    /// Residual per cell of the range (same length as `cx`).
    work: &'a mut [L::Cell],
    /// The aggregated cells of the range, which the residuals start from.
    src: &'a [L::Cell],
    /// Cells (global) whose count and residual are initialised: a range that grows.
    init: std::ops::Range<usize>,
    /// Global index of the range's first cell.
    c_lo: usize,
    /// Peeled raw value by `p − p_lo`.
    values: &'a mut [L::Cell],
    p_lo: usize,
    /// FIFO of cells (global index) to look at: at least `2 · cx.len() + 1` entries.
    queue: &'a mut [u32],
}

impl<L: Lane> Part<'_, L> {
    /// Initialises the cells (global) of `want` within the range, growing `init` (which
    /// stays one range: `want` must touch or overlap it, or `init` must be empty).
    fn initialise(&mut self, want: std::ops::Range<usize>) {
        let c_hi = self.c_lo + self.cx.len();
        let want = want.start.max(self.c_lo)..want.end.min(c_hi);
        if want.is_empty() {
            return;
        }
        let fill = |r: std::ops::Range<usize>, part: &mut Self| {
            let l = r.start - part.c_lo..r.end - part.c_lo;
            part.cx[l.clone()].fill(0);
            part.work[l.clone()].copy_from_slice(&part.src[l]);
        };
        if self.init.is_empty() {
            fill(want.clone(), self);
            self.init = want;
            return;
        }
        if want.start < self.init.start {
            fill(want.start..self.init.start, self);
            self.init.start = want.start;
        }
        if want.end > self.init.end {
            fill(self.init.end..want.end, self);
            self.init.end = want.end;
        }
    }

    /// Adds the keys of `windows` to the counts, first initialising the cells they reach.
    fn count<const H: usize>(&mut self, g: &Geometry<'_>, windows: std::ops::Range<usize>) {
        if windows.is_empty() {
            return;
        }
        let first = g.segment(windows.start).start;
        let last = g.segment(windows.end - 1 + g.span - 1).end;
        self.initialise(first..last);
        let (params, c_lo) = (self.params, self.c_lo);
        let cx = &mut *self.cx;
        let r = g.window_begin(windows.start)..g.window_begin(windows.end);
        let mut hashes = &self.hashes[r.clone()];
        let mut p = r.start;
        // Eight keys' cells at a time with AVX-512 (the cell arithmetic is most of this loop).
        #[cfg(target_arch = "x86_64")]
        if g.span > 1 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq")
        {
            let mut chunks = hashes.chunks_exact(8);
            for chunk in &mut chunks {
                let chunk: &[u64; 8] = chunk.try_into().unwrap_or(&[0; 8]);
                // SAFETY: AVX-512F/DQ were just detected; a span above 1 means coupled.
                let cols = unsafe { params.coupled_cells_x8(chunk) };
                for i in 0..8 {
                    let tag = (p as u64) << 32;
                    for col in &cols[..H] {
                        let e = &mut cx[col[i] as usize - c_lo];
                        *e = (*e + 1) ^ tag;
                    }
                    p += 1;
                }
            }
            hashes = chunks.remainder();
        }
        for &hash in hashes {
            let cs = params.cells_of_n::<H>(hash);
            let tag = (p as u64) << 32;
            for &c in &cs[..H] {
                let e = &mut cx[c as usize - c_lo];
                *e = (*e + 1) ^ tag;
            }
            p += 1;
        }
    }

    /// Queues the count-1 cells of `cells` (global) at `tail`; returns the new tail.
    fn scan(&mut self, cells: std::ops::Range<usize>, mut tail: usize) -> usize {
        for c in cells {
            self.queue[tail] = c as u32;
            tail += (self.cx[c - self.c_lo] as u32 == 1) as usize;
        }
        tail
    }

    /// Sweeps segments `segs` upwards: before segment `s`, the windows up to `s` (of
    /// `windows`) are counted, which completes `s`. Returns keys resolved and their
    /// check-lane sum.
    fn sweep_up<const H: usize>(
        mut self,
        g: &Geometry<'_>,
        windows: std::ops::Range<usize>,
        segs: std::ops::Range<usize>,
    ) -> (usize, u64) {
        let mut progress = Progress::default();
        let mut next = windows.start;
        for s in segs {
            let upto = (s + 1).min(windows.end).max(next);
            self.count::<H>(g, next..upto);
            next = upto;
            self.segment::<H, true>(g, s, &mut progress);
        }
        self.count::<H>(g, next..windows.end);
        self.initialise(self.c_lo..self.c_lo + self.cx.len());
        (progress.resolved, progress.check)
    }

    /// Sweeps from the top segment of the range down to segment `lowest`: before segment
    /// `s`, the windows of `windows` down to `s − h + 1` are counted, which completes `s`.
    fn sweep_down<const H: usize>(
        mut self,
        g: &Geometry<'_>,
        windows: std::ops::Range<usize>,
        lowest: usize,
    ) -> (usize, u64) {
        let mut progress = Progress::default();
        let c_hi = self.c_lo + self.cx.len();
        let top = c_hi.div_ceil(g.seg_len);
        let mut next = windows.end;
        for s in (lowest..top).rev() {
            let from = (s + 1).saturating_sub(g.span).max(windows.start).min(next);
            self.count::<H>(g, from..next);
            next = from;
            self.segment::<H, false>(g, s, &mut progress);
        }
        self.count::<H>(g, windows.start..next);
        self.initialise(self.c_lo..self.c_lo + self.cx.len());
        (progress.resolved, progress.check)
    }

    /// One step of a sweep: segment `s` (complete by now) is initialised if needed, its
    /// count-1 cells queued, and the queue peeled; `UP` says which way the sweep goes.
    fn segment<const H: usize, const UP: bool>(
        &mut self,
        g: &Geometry<'_>,
        s: usize,
        progress: &mut Progress,
    ) {
        let seg = g.segment(s);
        self.initialise(seg.clone());
        let tail = self.scan(seg.clone(), progress.tail);
        let bound = if UP { seg.end } else { seg.start };
        let r = self.run::<H, UP>(progress.head, tail, bound);
        (progress.head, progress.tail) = (r.0, r.1);
        progress.resolved += r.2;
        progress.check = progress.check.wrapping_add(r.3);
    }

    /// After the split sweeps: counts the straddling `windows`, then peels from the count-1
    /// cells of `middle` with every cell complete.
    fn finish<const H: usize>(
        mut self,
        g: &Geometry<'_>,
        windows: std::ops::Range<usize>,
        middle: std::ops::Range<usize>,
    ) -> (usize, u64) {
        self.count::<H>(g, windows);
        let tail = self.scan(middle, 0);
        let r = self.run::<H, false>(0, tail, 0);
        (r.2, r.3)
    }

    /// Peels until the queue `head..tail` is empty; returns the new `head`, `tail`, keys
    /// resolved and their check-lane sum. A cell that drops to count 1 is queued if it is
    /// complete: below `bound` if `UP` (an upward sweep), else at or above it.
    fn run<const H: usize, const UP: bool>(
        &mut self,
        head: usize,
        tail: usize,
        bound: usize,
    ) -> (usize, usize, usize, u64) {
        if self.params.signs() {
            self.run_with::<H, UP, true>(head, tail, bound)
        } else {
            self.run_with::<H, UP, false>(head, tail, bound)
        }
    }

    /// [`Self::run`] with the sweep direction and the signs known at compile time.
    ///
    /// The cell state, hashes and values are indexed unchecked in this loop, the decoder's
    /// hot path, through base pointers shifted so that global cell indices and global `p`
    /// address them (fewer live registers than range-relative indices). Every index is
    /// computed here, never read from the input: queue entries are cells of the range; a
    /// complete cell with count 1 holds the XOR of exactly one counted `p` of this part,
    /// whose cells all lie in the range; and `tail` grows by at most one per pushed cell, at
    /// most twice per cell of the range, which `queue` was sized for.
    #[inline(never)]
    fn run_with<const H: usize, const UP: bool, const SIGNS: bool>(
        &mut self,
        mut head: usize,
        mut tail: usize,
        bound: usize,
    ) -> (usize, usize, usize, u64) {
        let params = self.params;
        let n = self.hashes.len();
        let (c_lo, len, p_lo) = (self.c_lo, self.cx.len(), self.p_lo);
        debug_assert_eq!(len, self.work.len());
        debug_assert!(self.queue.len() > 2 * len);
        let mut resolved = 0usize;
        let mut check = 0u64;
        const RING: usize = 2 * PEEL_AHEAD;
        let mut ring = [(u32::MAX, [0u32; 4]); RING];
        // Shifted bases: `cx.wrapping_add(c)` is the state of global cell `c`, and so on.
        // Only addresses inside the slices are ever dereferenced.
        let cx = self.cx.as_mut_ptr().wrapping_sub(c_lo);
        let work = self.work.as_mut_ptr().wrapping_sub(c_lo);
        let values = self.values.as_mut_ptr().wrapping_sub(p_lo);
        let queue = self.queue.as_mut_ptr();
        let hashes = self.hashes.as_ptr();
        while head < tail {
            // The chain of dependent reads (cell → p → hash → cells) is prefetched a few
            // entries ahead. Prefetches may read a stale state or hash: only an address.
            // SAFETY (reads in this block): queue entries below `tail` are cells of the
            // range; `pa` is checked against `n`.
            unsafe {
                if head + 3 * PEEL_AHEAD < tail {
                    let c = *queue.add(head + 3 * PEEL_AHEAD) as usize;
                    prefetch(cx.wrapping_add(c));
                }
                if head + 2 * PEEL_AHEAD < tail {
                    let c = *queue.add(head + 2 * PEEL_AHEAD) as usize;
                    prefetch(hashes.wrapping_add((*cx.wrapping_add(c) >> 32) as usize));
                }
                if head + PEEL_AHEAD < tail {
                    // The cells are kept in a small ring, tagged with `p` (cells depend on
                    // `p` alone, so a matching tag is always right).
                    let c = *queue.add(head + PEEL_AHEAD) as usize;
                    let pa = (*cx.wrapping_add(c) >> 32) as usize;
                    if pa < n {
                        let cs = params.cells_of_n::<H>(*hashes.add(pa));
                        for &cj in &cs[..H] {
                            prefetch(cx.wrapping_add(cj as usize));
                            prefetch(work.wrapping_add(cj as usize));
                        }
                        ring[(head + PEEL_AHEAD) % RING] = (pa as u32, cs);
                    }
                }
            }
            // SAFETY: see the function's comment.
            let c = unsafe { *queue.add(head) } as usize;
            head += 1;
            let e = unsafe { *cx.wrapping_add(c) };
            if e as u32 != 1 {
                continue;
            }
            let p = (e >> 32) as usize;
            debug_assert!(p >= p_lo && p - p_lo < self.values.len());
            let hash = unsafe { *hashes.add(p) };
            let (tag, cached) = ring[(head - 1) % RING];
            let my = if tag as usize == p {
                cached
            } else {
                params.cells_of_n::<H>(hash)
            };
            let mut value = unsafe { *work.wrapping_add(c) };
            if SIGNS {
                let jc = my[..H].iter().position(|&x| x as usize == c).unwrap_or(0);
                if (hash >> jc) & 1 == 1 {
                    value = L::sub(L::Cell::default(), value);
                }
            }
            let neg_value = L::sub(L::Cell::default(), value);
            let raw = L::to_u64(value);
            unsafe { *values.wrapping_add(p) = value };
            check = check.wrapping_add(raw.wrapping_mul(hash::check_weight(hash)));
            let untag = (p as u64) << 32;
            for (j, &cj) in my[..H].iter().enumerate() {
                let cj = cj as usize;
                debug_assert!(cj >= c_lo && cj - c_lo < len);
                let contrib = if SIGNS && (hash >> j) & 1 == 1 {
                    neg_value
                } else {
                    value
                };
                let complete = if UP { cj < bound } else { cj >= bound };
                // SAFETY: see the function's comment.
                unsafe {
                    let w = work.wrapping_add(cj);
                    *w = L::sub(*w, contrib);
                    let e = cx.wrapping_add(cj);
                    let t = (*e - 1) ^ untag;
                    *e = t;
                    // Branch-free append; only count-1 complete cells advance tail.
                    *queue.add(tail) = cj as u32;
                    tail += (t as u32 == 1 && complete) as usize;
                }
            }
            resolved += 1;
        }
        (head, tail, resolved, check)
    }
}

/// A slice that several threads write at distinct indices (which the borrow checker cannot
/// see: the indices come from a computation).
#[derive(Clone, Copy)]
struct SharedSlice<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: writers promise distinct indices (see `write`); `T` values move between threads.
unsafe impl<T: Send> Send for SharedSlice<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedSlice<T> {}

impl<T> SharedSlice<T> {
    fn new(slice: &mut [T]) -> Self {
        SharedSlice {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
        }
    }

    /// Writes `value` at `i`.
    ///
    /// # Safety
    /// No other thread reads or writes index `i` while the slice is shared, and the slice
    /// outlives the sharing.
    unsafe fn write(&self, i: usize, value: T) {
        assert!(i < self.len, "shared slice index {i} of {}", self.len);
        // SAFETY: in bounds (checked); exclusive per the caller's promise.
        unsafe { self.ptr.add(i).write(value) };
    }
}
