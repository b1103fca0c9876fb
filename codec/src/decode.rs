//! Decoding an aggregated encoding by peeling, with exact wrapping integer arithmetic.
//!
//! 1. Candidates = every position the aggregated index reports (bitmap: the union; Bloom: the
//!    union plus false positives).
//! 2. For every cell, the number of candidates hashing into it and the XOR of their ordinals
//!    are computed locally (these never travel).
//! 3. A cell with count 1 holds exactly one candidate's sum: record it, subtract it from the
//!    candidate's other cells, decrement their counts, repeat.
//! 4. If any candidate is left, return [`CodecError::Stalled`]; never estimate. After a full
//!    peel every cell must be back to zero, otherwise [`CodecError::Inconsistent`].
//!
//! Because every contribution to a cell comes from a candidate, a peeled value is exactly the
//! sum mod `2^w`; false positives (no contributions) decode to 0.

use crate::error::CodecError;
use crate::fixed::FixedPoint;
use crate::index;
use crate::params::CodecParams;
use crate::prefetch::prefetch;
use crate::sketch::{check_lane, check_shapes, Encoding, Lane};

/// Per-cell peeling state, kept together so touching a cell costs one cache line: `st` packs
/// the number of unpeeled candidates in the cell (low 32 bits) and the XOR of their ordinals
/// (high 32 bits); `work` is the residual cell value.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(16))]
struct CellState<C> {
    st: u64,
    work: C,
}

/// Reusable decoder state: every buffer is kept between calls, so decoding tensors of a
/// stable size does not allocate.
#[derive(Debug, Default)]
pub struct Decoder<L: Lane> {
    keys: Vec<u32>,
    cell_of: Vec<u32>,
    neg: Vec<u8>,
    state: Vec<CellState<L::Cell>>,
    sums: Vec<i64>,
    queue: Vec<u32>,
}

/// How many candidates ahead the counting pass prefetches cell states.
const COUNT_AHEAD: usize = 16;
/// Pipeline distance (in queue entries) of each prefetch stage of the peeling loop.
const PEEL_AHEAD: usize = 8;

/// A successful decode: candidate positions (increasing) and their exact integer sums
/// (borrowed from the decoder's buffers).
#[derive(Debug, Clone, Copy)]
pub struct Decoded<'a> {
    dim: u64,
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

    /// Writes the dense float sum into `out` (length `dim`).
    pub fn to_dense(&self, fixed: &FixedPoint, out: &mut [f32]) -> Result<(), CodecError> {
        if out.len() as u64 != self.dim {
            return Err(CodecError::ShapeMismatch {
                what: "dense output",
                expected: self.dim as usize,
                got: out.len(),
            });
        }
        out.fill(0.0);
        for (&k, &s) in self.keys.iter().zip(self.sums) {
            out[k as usize] = fixed.to_float(s);
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

    /// Replaces `out` with the nonzero `(position, float sum)` pairs, in increasing position.
    pub fn to_sparse(&self, fixed: &FixedPoint, out: &mut Vec<(u32, f32)>) {
        out.clear();
        out.extend(
            self.keys
                .iter()
                .zip(self.sums)
                .filter(|(_, &s)| s != 0)
                .map(|(&k, &s)| (k, fixed.to_float(s))),
        );
    }
}

impl<L: Lane> Decoder<L> {
    /// An empty decoder; buffers grow on first use and are then reused.
    pub fn new() -> Self {
        Decoder {
            keys: Vec::new(),
            cell_of: Vec::new(),
            neg: Vec::new(),
            state: Vec::new(),
            sums: Vec::new(),
            queue: Vec::new(),
        }
    }

    /// Decodes an [`Encoding`].
    pub fn decode_encoding<'a>(&'a mut self, enc: &Encoding<L>) -> Result<Decoded<'a>, CodecError> {
        self.decode(enc.params(), enc.index_words(), enc.sketch_cells())
    }

    /// Decodes aggregated slices as received from the network.
    pub fn decode<'a>(
        &'a mut self,
        params: &CodecParams,
        index_words: &[u32],
        cells: &[L::Cell],
    ) -> Result<Decoded<'a>, CodecError> {
        check_lane::<L>(params)?;
        check_shapes(params, index_words.len(), cells.len())?;
        index::candidates(params, index_words, &mut self.keys);
        let n = self.keys.len();
        let h = params.hashes() as usize;
        let m = params.cells();

        // Cells (and signs) of every candidate: sequential, compute-bound.
        self.cell_of.clear();
        self.cell_of.reserve(n * h);
        self.neg.clear();
        for &key in &self.keys {
            let hash = params.key_hash(key);
            let cs = params.cells_of(hash);
            self.cell_of.extend(cs[..h].iter().map(|&c| c as u32));
            if params.signs() {
                let mut signs = 0u8;
                for j in 0..h {
                    signs |= (params.negate(hash, j) as u8) << j;
                }
                self.neg.push(signs);
            }
        }

        // Cell states: residual values from the input, then counts and ordinal XORs, with the
        // random cell updates prefetched a few candidates ahead.
        self.state.clear();
        self.state
            .extend(cells.iter().map(|&work| CellState { st: 0, work }));
        let state = &mut self.state[..];
        let cell_of = &self.cell_of[..];
        for (ord, my) in cell_of.chunks_exact(h).enumerate() {
            if let Some(ahead) = cell_of.get((ord + COUNT_AHEAD) * h..(ord + COUNT_AHEAD + 1) * h) {
                for &c in ahead {
                    prefetch(state.as_ptr().wrapping_add(c as usize));
                }
            }
            let tag = 1 | (ord as u64) << 32;
            for &c in my {
                let s = &mut state[c as usize];
                s.st = (s.st + 1) ^ (tag & !1);
            }
        }

        self.sums.clear();
        self.sums.resize(n, 0);
        self.queue.clear();
        self.queue.extend(
            state
                .iter()
                .enumerate()
                .filter(|(_, s)| s.st as u32 == 1)
                .map(|(i, _)| i as u32),
        );

        // Peeling, breadth first from a FIFO queue. The random reads form a chain (cell state
        // -> candidate's cells -> their states), so they are prefetched in a pipeline: the
        // state of the entry 3·A ahead, the cell list of the entry 2·A ahead, the other states
        // of the entry A ahead. Those look-aheads may read stale states; they only pick
        // addresses to prefetch, every decision is taken on the current state below.
        let signs_on = params.signs();
        let mut resolved = 0usize;
        let mut head = 0usize;
        while head < self.queue.len() {
            let queue = &self.queue[..];
            if let Some(&c) = queue.get(head + 3 * PEEL_AHEAD) {
                prefetch(state.as_ptr().wrapping_add(c as usize));
            }
            if let Some(&c) = queue.get(head + 2 * PEEL_AHEAD) {
                let s = state[c as usize].st;
                if s as u32 == 1 {
                    let ord = (s >> 32) as usize;
                    prefetch(cell_of.as_ptr().wrapping_add(ord * h));
                    prefetch(self.sums.as_ptr().wrapping_add(ord));
                }
            }
            if let Some(&c) = queue.get(head + PEEL_AHEAD) {
                let s = state[c as usize].st;
                if s as u32 == 1 {
                    let ord = (s >> 32) as usize;
                    if let Some(my) = cell_of.get(ord * h..ord * h + h) {
                        for &cj in my {
                            prefetch(state.as_ptr().wrapping_add(cj as usize));
                        }
                    }
                }
            }
            let c = queue[head] as usize;
            head += 1;
            let s = state[c].st;
            if s as u32 != 1 {
                continue;
            }
            let ord = (s >> 32) as usize;
            let my = &cell_of[ord * h..ord * h + h];
            let signs = if signs_on { self.neg[ord] } else { 0 };
            // Sign of this key in cell c.
            let jc = my.iter().position(|&x| x as usize == c).unwrap_or(0);
            let cell_val = state[c].work;
            let value = if (signs >> jc) & 1 == 1 {
                L::sub(L::Cell::default(), cell_val)
            } else {
                cell_val
            };
            let neg_value = L::sub(L::Cell::default(), value);
            self.sums[ord] = L::to_i64(value);
            let untag = (ord as u64) << 32;
            for (j, &cj) in my.iter().enumerate() {
                let contrib = if (signs >> j) & 1 == 1 {
                    neg_value
                } else {
                    value
                };
                let sj = &mut state[cj as usize];
                sj.work = L::sub(sj.work, contrib);
                sj.st = (sj.st - 1) ^ untag;
                if sj.st as u32 == 1 {
                    self.queue.push(cj);
                }
            }
            resolved += 1;
        }
        if resolved != n {
            return Err(CodecError::Stalled {
                unresolved: n - resolved,
                candidates: n,
                cells: m,
            });
        }
        let zero = L::Cell::default();
        let nonzero_cells = state.iter().filter(|s| s.work != zero).count();
        if nonzero_cells != 0 {
            return Err(CodecError::Inconsistent { nonzero_cells });
        }
        Ok(Decoded {
            dim: params.dim(),
            keys: &self.keys,
            sums: &self.sums,
        })
    }

    /// Candidates of the last decode attempt (also valid after a stall), for diagnostics.
    pub fn last_candidates(&self) -> &[u32] {
        &self.keys
    }
}
