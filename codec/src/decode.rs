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
use crate::sketch::{check_lane, check_shapes, Encoding, Lane};

/// Reusable decoder state: every buffer is kept between calls, so decoding tensors of a
/// stable size does not allocate.
#[derive(Debug, Default)]
pub struct Decoder<L: Lane> {
    keys: Vec<u32>,
    cell_of: Vec<u32>,
    neg: Vec<u8>,
    counts: Vec<u32>,
    ordxor: Vec<u32>,
    work: Vec<L::Cell>,
    sums: Vec<i64>,
    stack: Vec<u32>,
}

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
            counts: Vec::new(),
            ordxor: Vec::new(),
            work: Vec::new(),
            sums: Vec::new(),
            stack: Vec::new(),
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

        self.counts.clear();
        self.counts.resize(m, 0);
        self.ordxor.clear();
        self.ordxor.resize(m, 0);
        self.cell_of.clear();
        self.cell_of.reserve(n * h);
        self.neg.clear();
        for (ord, &key) in self.keys.iter().enumerate() {
            let hash = params.key_hash(key);
            let mut signs = 0u8;
            let cs = params.cells_of(hash);
            for (j, &c) in cs[..h].iter().enumerate() {
                self.cell_of.push(c as u32);
                self.counts[c] += 1;
                self.ordxor[c] ^= ord as u32;
                signs |= (params.negate(hash, j) as u8) << j;
            }
            if params.signs() {
                self.neg.push(signs);
            }
        }

        self.work.clear();
        self.work.extend_from_slice(cells);
        self.sums.clear();
        self.sums.resize(n, 0);
        self.stack.clear();
        self.stack.extend(
            self.counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c == 1)
                .map(|(i, _)| i as u32),
        );

        let mut resolved = 0usize;
        while let Some(c) = self.stack.pop() {
            let c = c as usize;
            if self.counts[c] != 1 {
                continue;
            }
            let ord = self.ordxor[c] as usize;
            let my = &self.cell_of[ord * h..ord * h + h];
            let signs = if params.signs() { self.neg[ord] } else { 0 };
            // Sign of this key in cell c.
            let jc = my.iter().position(|&x| x as usize == c).unwrap_or(0);
            let cell_val = self.work[c];
            let value = if (signs >> jc) & 1 == 1 {
                L::sub(L::Cell::default(), cell_val)
            } else {
                cell_val
            };
            let neg_value = L::sub(L::Cell::default(), value);
            self.sums[ord] = L::to_i64(value);
            for (j, &cj) in my.iter().enumerate() {
                let cj = cj as usize;
                let contrib = if (signs >> j) & 1 == 1 {
                    neg_value
                } else {
                    value
                };
                self.work[cj] = L::sub(self.work[cj], contrib);
                self.counts[cj] -= 1;
                self.ordxor[cj] ^= ord as u32;
                if self.counts[cj] == 1 {
                    self.stack.push(cj as u32);
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
        let nonzero_cells = self.work.iter().filter(|&&w| w != zero).count();
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
