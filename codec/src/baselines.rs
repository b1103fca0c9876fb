//! Comparison codecs for benchmarks: dense, COO and two-round union-rank.
//!
//! All of them use the same [`FixedPoint`] integers as the sketch, so their sums are
//! bit-identical to the sketch's decoded sums.

use crate::error::CodecError;
use crate::fixed::FixedPoint;
use crate::index;
use crate::params::{CodecParams, IndexKind};
use crate::sketch::{check_lane, Lane};

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), CodecError> {
    if expected != got {
        return Err(CodecError::ShapeMismatch {
            what,
            expected,
            got,
        });
    }
    Ok(())
}

/// Dense: every position's fixed-point value in a lane (no compression; aggregatable).
pub fn dense_encode<L: Lane>(
    values: &[f32],
    fixed: &FixedPoint,
    out: &mut [L::Cell],
) -> Result<(), CodecError> {
    check_len("dense output", values.len(), out.len())?;
    for (i, (o, &v)) in out.iter_mut().zip(values).enumerate() {
        *o = L::from_i64(fixed.try_to_fixed(v, i)?);
    }
    Ok(())
}

/// Bytes a worker sends with the dense codec.
pub fn dense_bytes(dim: u64, lane_bytes: usize) -> u64 {
    dim * lane_bytes as u64
}

/// COO: the `(index, fixed value)` pairs of one worker (compact, but not aggregatable in the
/// network: the receiver must gather all of them and sum).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coo {
    /// Positions of nonzeros, increasing.
    pub indices: Vec<u32>,
    /// Their fixed-point integers.
    pub values: Vec<i64>,
}

impl Coo {
    /// Replaces the content with the nonzeros of `values` (reusing the buffers).
    pub fn encode(&mut self, values: &[f32], fixed: &FixedPoint) -> Result<(), CodecError> {
        self.indices.clear();
        self.values.clear();
        for (i, &v) in values.iter().enumerate() {
            if v != 0.0 || v.is_nan() {
                let q = fixed.try_to_fixed(v, i)?;
                if q != 0 {
                    self.indices.push(i as u32);
                    self.values.push(q);
                }
            }
        }
        Ok(())
    }

    /// Bytes on the wire: a 32-bit index plus one lane per pair.
    pub fn bytes(&self, lane_bytes: usize) -> u64 {
        self.indices.len() as u64 * (4 + lane_bytes as u64)
    }

    /// Adds the pairs into dense lane sums (`sums` has length dim; wrapping in the lane).
    pub fn accumulate<L: Lane>(&self, sums: &mut [L::Cell]) -> Result<(), CodecError> {
        for (&k, &q) in self.indices.iter().zip(&self.values) {
            let s = sums
                .get_mut(k as usize)
                .ok_or(CodecError::IndexOutOfRange {
                    index: k as u64,
                    dim: self.indices.len() as u64,
                })?;
            *s = L::add(*s, L::from_i64(q));
        }
        Ok(())
    }
}

/// Rank of `key` in increasing `candidates` (e.g. from [`crate::candidates_into`]), or
/// `None` if it is not a candidate: the one rank function for union-rank rounds, so a value
/// can never land in another key's lane.
pub fn candidate_rank(candidates: &[u32], key: u32) -> Option<usize> {
    candidates.binary_search(&key).ok()
}

/// Union-rank: round 1 ORs the index (as the sketch's index), round 2 sums a vector with one
/// lane per union candidate, each worker writing its value at the key's rank in the union.
/// Lossless with exactly one cell per candidate, but round 2 can only start after round 1.
#[derive(Debug, Default)]
pub struct UnionRank<L: Lane> {
    params: Option<CodecParams>,
    keys: Vec<u32>,
    prefix: Vec<u32>,
    _lane: std::marker::PhantomData<L>,
}

impl<L: Lane> UnionRank<L> {
    /// An empty helper; buffers are reused across rounds.
    pub fn new() -> Self {
        UnionRank {
            params: None,
            keys: Vec::new(),
            prefix: Vec::new(),
            _lane: std::marker::PhantomData,
        }
    }

    /// Round 1 of one worker: its index words (`out` has `params.index_words()` entries).
    pub fn round1(
        params: &CodecParams,
        values: &[f32],
        fixed: &FixedPoint,
        out: &mut [u32],
    ) -> Result<(), CodecError> {
        check_len("dense input", params.dim() as usize, values.len())?;
        check_len("index words", params.index_words(), out.len())?;
        out.fill(0);
        for (i, &v) in values.iter().enumerate() {
            if v.to_bits() << 1 != 0 && fixed.try_to_fixed(v, i)? != 0 {
                index::insert(params, out, i as u32);
            }
        }
        Ok(())
    }

    /// After round 1: learns the union from the aggregated index; returns the number of
    /// candidates (the length of round 2's vector).
    pub fn prepare(
        &mut self,
        params: &CodecParams,
        union_index: &[u32],
    ) -> Result<usize, CodecError> {
        check_lane::<L>(params)?;
        check_len("index words", params.index_words(), union_index.len())?;
        index::candidates(params, union_index, &mut self.keys, usize::MAX)?;
        self.prefix.clear();
        if params.index_kind() == IndexKind::Bitmap {
            let mut acc = 0u32;
            for &w in union_index {
                self.prefix.push(acc);
                acc += w.count_ones();
            }
        }
        self.params = Some(params.clone());
        Ok(self.keys.len())
    }

    /// Candidate positions of the prepared union, increasing (rank order).
    pub fn keys(&self) -> &[u32] {
        &self.keys
    }

    /// Rank of `key` among the prepared union's candidates, or `None` if the union does not
    /// contain it (a bitmap's bit must be set: a key outside the union has no lane).
    pub fn rank(&self, union_index: &[u32], key: u32) -> Option<usize> {
        match self.prefix.is_empty() {
            false => {
                let w = (key >> 5) as usize;
                let word = *union_index.get(w)?;
                if (word >> (key & 31)) & 1 == 0 {
                    return None;
                }
                let below = word & ((1u32 << (key & 31)) - 1);
                Some((*self.prefix.get(w)? + below.count_ones()) as usize)
            }
            true => candidate_rank(&self.keys, key),
        }
    }

    /// Round 2 of one worker: writes its fixed values at their ranks (`out` has one lane per
    /// candidate and is zeroed first).
    pub fn round2(
        &self,
        union_index: &[u32],
        values: &[f32],
        fixed: &FixedPoint,
        out: &mut [L::Cell],
    ) -> Result<(), CodecError> {
        check_len("rank vector", self.keys.len(), out.len())?;
        let dim = self.params.as_ref().map_or(0, |p| p.dim());
        check_len("dense input", dim as usize, values.len())?;
        out.fill(L::Cell::default());
        for (i, &v) in values.iter().enumerate() {
            if v.to_bits() << 1 != 0 {
                let q = fixed.try_to_fixed(v, i)?;
                if q != 0 {
                    let r = self
                        .rank(union_index, i as u32)
                        .ok_or(CodecError::NotInIndex { key: i as u32 })?;
                    out[r] = L::add(out[r], L::from_i64(q));
                }
            }
        }
        Ok(())
    }

    /// Decodes the summed round-2 vector into `(keys, sums)` (sums written to `sums`).
    pub fn decode(&self, summed: &[L::Cell], sums: &mut Vec<i64>) -> Result<(), CodecError> {
        check_len("rank vector", self.keys.len(), summed.len())?;
        sums.clear();
        sums.extend(summed.iter().map(|&c| L::to_i64(c)));
        Ok(())
    }

    /// Bytes each worker sends in both rounds together.
    pub fn bytes_per_worker(params: &CodecParams, candidates: usize) -> u64 {
        params.index_bytes() as u64 + (candidates * params.lane().bytes()) as u64
    }
}
