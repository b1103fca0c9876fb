//! Hash functions shared by encoder and decoder; every worker must compute identical positions.
//!
//! One 64-bit mix per key (the murmur3 finaliser, a bijection with full avalanche) feeds
//! everything: each sketch hash `j` multiplies a rotation of it by its own odd constant and
//! maps the high bits onto the `m` cells with Lemire's multiply-shift "fastrange" (no
//! division). A repeated cell is re-mixed, so a key's `h` cells are distinct. (A layout with
//! one segment per hash would avoid that check but raises the small-table error floor: two
//! keys then share all cells with probability `(h/m)^h` instead of `h!/m^h`.)

/// murmur3 `fmix64`.
#[inline(always)]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

const K: [u64; 4] = [
    0x9e37_79b9_7f4a_7c15,
    0xd6e8_feb8_6659_fd93,
    0xa076_1d64_78bd_642f,
    0xe703_7ed1_a0b4_28db,
];
const KB: u64 = 0x8ebc_6af0_9c88_c6e3;
const KB2: u64 = 0x5899_65cc_7537_4cc3;

/// Lemire's fastrange: maps a uniform 64-bit `x` to `[0, n)`.
#[inline(always)]
pub(crate) fn fastrange(x: u64, n: u64) -> u64 {
    ((x as u128 * n as u128) >> 64) as u64
}

/// Sub-hash `j` of a key hash, used for sketch cell `j`.
#[inline(always)]
pub(crate) fn sub_hash(hash: u64, j: usize) -> u64 {
    hash.rotate_left(21 * j as u32).wrapping_mul(K[j])
}

/// Bloom block selector and in-block bit source.
#[inline(always)]
pub(crate) fn bloom_hashes(hash: u64) -> (u64, u64) {
    (
        hash.wrapping_mul(KB),
        (hash ^ (hash >> 31)).wrapping_mul(KB2),
    )
}

/// Derives the per-tensor hashing key from the job seed and the tensor id.
pub(crate) fn derive_key(seed: u64, tensor_id: u64) -> u64 {
    mix64(seed ^ mix64(tensor_id ^ 0x243f_6a88_85a3_08d3))
}
