//! The index of nonzero positions: exact bitmap or cache-blocked Bloom filter, both combined by
//! bitwise OR (the OR of Bloom filters built with the same hashes is the filter of the union).

use crate::hash;
use crate::params::{CodecParams, IndexKind, BLOOM_BLOCK_WORDS};
use crate::prefetch::prefetch;

/// Where a key goes in the index: `(word, bits)`. Bitmap: the word and the bit number;
/// Bloom: the first word of the key's 512-bit block and the in-block bit source.
#[inline(always)]
pub(crate) fn slot(params: &CodecParams, key: u32, hash: u64) -> (usize, u64) {
    match params.index_kind() {
        IndexKind::Bitmap => ((key >> 5) as usize, (key & 31) as u64),
        IndexKind::Bloom { blocks, .. } => {
            let (b, g) = hash::bloom_hashes(hash);
            (
                hash::fastrange(b, blocks as u64) as usize * BLOOM_BLOCK_WORDS,
                g,
            )
        }
    }
}

/// Records `key` (with base hash `hash`) in the index words.
#[inline(always)]
pub(crate) fn insert(params: &CodecParams, words: &mut [u32], key: u32, hash: u64) {
    let (w, g) = slot(params, key, hash);
    insert_at(params, words, w, g);
}

/// Records a key given its [`slot`].
#[inline(always)]
pub(crate) fn insert_at(params: &CodecParams, words: &mut [u32], base: usize, g: u64) {
    match params.index_kind() {
        IndexKind::Bitmap => words[base] |= 1 << g,
        IndexKind::Bloom { k, .. } => {
            let block: &mut [u32; BLOOM_BLOCK_WORDS] = (&mut words[base..base + BLOOM_BLOCK_WORDS])
                .try_into()
                .expect("block slice has BLOOM_BLOCK_WORDS words");
            // Unrolled per k: the k bit positions are independent and need no bounds checks.
            match k {
                1 => set_bits::<1>(block, g),
                2 => set_bits::<2>(block, g),
                3 => set_bits::<3>(block, g),
                4 => set_bits::<4>(block, g),
                5 => set_bits::<5>(block, g),
                6 => set_bits::<6>(block, g),
                _ => set_bits::<7>(block, g),
            }
        }
    }
}

/// Sets the `K` bits (9 bits of `g` each) of a key in its 512-bit block.
#[inline(always)]
fn set_bits<const K: usize>(block: &mut [u32; BLOOM_BLOCK_WORDS], g: u64) {
    for i in 0..K {
        let bit = ((g >> (9 * i)) & 511) as usize;
        block[bit >> 5] |= 1 << (bit & 31);
    }
}

/// Appends to `out`, in increasing order, every position the (aggregated) index reports.
/// `words` must have `params.index_words()` entries (checked by the callers).
pub(crate) fn candidates(params: &CodecParams, words: &[u32], out: &mut Vec<u32>) {
    out.clear();
    match params.index_kind() {
        IndexKind::Bitmap => {
            for (wi, &w) in words.iter().enumerate() {
                let mut w = w;
                while w != 0 {
                    let b = w.trailing_zeros();
                    let key = ((wi as u64) << 5) + b as u64;
                    // Bits past `dim` in the last word are padding; ignore them.
                    if key < params.dim() {
                        out.push(key as u32);
                    }
                    w &= w - 1;
                }
            }
        }
        IndexKind::Bloom { blocks, k } => {
            // Groups of 32 keys: hash and prefetch every block first, then test, so the
            // random block reads overlap instead of stalling one by one.
            const G: u64 = 32;
            let mut slot = [(0usize, 0u64); G as usize];
            let dim = params.dim();
            let mut start = 0u64;
            while start < dim {
                let end = (start + G).min(dim);
                for (s, key) in slot.iter_mut().zip(start..end) {
                    let (b, g) = hash::bloom_hashes(params.key_hash(key as u32));
                    let base = hash::fastrange(b, blocks as u64) as usize * BLOOM_BLOCK_WORDS;
                    prefetch(words.as_ptr().wrapping_add(base));
                    prefetch(words.as_ptr().wrapping_add(base + BLOOM_BLOCK_WORDS - 1));
                    *s = (base, g);
                }
                for (s, key) in slot.iter().zip(start..end) {
                    if block_contains(&words[s.0..s.0 + BLOOM_BLOCK_WORDS], k, s.1) {
                        out.push(key as u32);
                    }
                }
                start = end;
            }
        }
    }
}

/// Whether the `k` bits of `g` are all set in a 512-bit block.
#[inline(always)]
fn block_contains(block: &[u32], k: u8, mut g: u64) -> bool {
    let mut ok = true;
    for _ in 0..k {
        let bit = (g & 511) as usize;
        ok &= block[bit >> 5] & (1 << (bit & 31)) != 0;
        g >>= 9;
    }
    ok
}

/// Number of set bits (a cheap fill diagnostic for Bloom filters).
pub fn popcount(words: &[u32]) -> u64 {
    words.iter().map(|w| w.count_ones() as u64).sum()
}
