//! Sparse vectors of blocks: `indices[i]` names block `indices[i]` of `block` consecutive
//! values (`block = 1` for plain sparse vectors, the row width for an embedding gradient).

use crate::error::{CollectiveError, Result};

/// A sparse vector of `len` blocks of `block` values, with sorted, distinct block indices.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseVec {
    /// Number of blocks of the dense vector (rows of an embedding table).
    pub len: usize,
    /// Values per block (≥ 1).
    pub block: usize,
    /// Strictly increasing block indices, each `< len`.
    pub indices: Vec<u64>,
    /// `indices.len() * block` values, block after block.
    pub values: Vec<f32>,
}

impl SparseVec {
    /// An empty (all-zero) vector.
    pub fn zeros(len: usize, block: usize) -> Self {
        SparseVec {
            len,
            block,
            indices: Vec::new(),
            values: Vec::new(),
        }
    }

    /// The blocks of `dense` (whose length must be a multiple of `block`) that hold a nonzero.
    pub fn from_dense(dense: &[f32], block: usize) -> Result<Self> {
        if block == 0 || !dense.len().is_multiple_of(block) {
            return Err(CollectiveError::Input(format!(
                "dense length {} is not a multiple of block {block}",
                dense.len()
            )));
        }
        let mut s = SparseVec::zeros(dense.len() / block, block);
        for (i, b) in dense.chunks_exact(block).enumerate() {
            if b.iter().any(|&v| v != 0.0) {
                s.indices.push(i as u64);
                s.values.extend_from_slice(b);
            }
        }
        Ok(s)
    }

    /// [`Self::from_dense`] of the dense vector of `len * block` zeros with `pairs` (distinct
    /// positions, any order) written in, without materialising it: O(pairs · log pairs)
    /// instead of O(len · block), for results with a small support in a large table.
    pub fn from_pairs(len: usize, block: usize, mut pairs: Vec<(usize, f32)>) -> Result<Self> {
        if block == 0 || pairs.iter().any(|&(p, _)| p / block >= len) {
            return Err(CollectiveError::Input(format!(
                "position beyond {len} blocks of {block}, or block 0"
            )));
        }
        pairs.sort_unstable_by_key(|&(p, _)| p);
        let mut s = SparseVec::zeros(len, block);
        let mut i = 0;
        while i < pairs.len() {
            let row = pairs[i].0 / block;
            let end = i + pairs[i..].partition_point(|&(p, _)| p / block == row);
            if pairs[i..end].iter().any(|&(_, v)| v != 0.0) {
                s.indices.push(row as u64);
                let at = s.values.len();
                s.values.resize(at + block, 0.0);
                for &(p, v) in &pairs[i..end] {
                    s.values[at + p % block] = v;
                }
            }
            i = end;
        }
        Ok(s)
    }

    /// Dense form (`len * block` values, zeros outside the support).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut d = vec![0.0; self.len * self.block];
        for (k, &i) in self.indices.iter().enumerate() {
            let i = i as usize * self.block;
            d[i..i + self.block]
                .copy_from_slice(&self.values[k * self.block..(k + 1) * self.block]);
        }
        d
    }

    /// Number of stored values (`indices.len() * block`).
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Checks the invariants (block ≥ 1, value count, sorted distinct in-range indices).
    pub fn validate(&self) -> Result<()> {
        if self.block == 0 {
            return Err(CollectiveError::Input("sparse block width is 0".into()));
        }
        if self.values.len() != self.indices.len() * self.block {
            return Err(CollectiveError::Input(format!(
                "{} values for {} indices of block {}",
                self.values.len(),
                self.indices.len(),
                self.block
            )));
        }
        for (k, w) in self.indices.windows(2).enumerate() {
            if w[0] >= w[1] {
                return Err(CollectiveError::Input(format!(
                    "sparse indices must be strictly increasing (coalesced): {} then {} at {}",
                    w[0],
                    w[1],
                    k + 1
                )));
            }
        }
        if let Some(&last) = self.indices.last() {
            if last as usize >= self.len {
                return Err(CollectiveError::Input(format!(
                    "sparse index {last} out of range for length {}",
                    self.len
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_pairs_equals_from_dense_of_the_dense_form() {
        let (len, block) = (50, 4);
        let mut dense = vec![0.0f32; len * block];
        let mut pairs = Vec::new();
        let mut x = 12345u64;
        for _ in 0..60 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let p = (x >> 33) as usize % (len * block);
            if pairs.iter().any(|&(q, _)| q == p) {
                continue;
            }
            // Some explicit zeros and negative zeros: rows holding only those stay out.
            let v = match x % 7 {
                0 => 0.0,
                1 => -0.0,
                _ => (x % 1000) as f32 - 500.0,
            };
            dense[p] = v;
            pairs.push((p, v));
        }
        let a = SparseVec::from_dense(&dense, block).unwrap();
        let b = SparseVec::from_pairs(len, block, pairs).unwrap();
        assert!(!a.indices.is_empty());
        assert_eq!(a.indices, b.indices);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.values), bits(&b.values));
        assert!(SparseVec::from_pairs(len, block, vec![(len * block, 1.0)]).is_err());
    }
}
