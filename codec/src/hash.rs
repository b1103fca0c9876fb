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

/// murmur3 `fmix32`: a bijection on 32 bits with full avalanche, cheap in SIMD (AVX2 has a
/// 32-bit multiply but no 64-bit one), used by the Bloom index so the decoder can hash eight
/// positions at once.
#[inline(always)]
pub(crate) fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x
}

/// Odd multipliers ("salts") of the Bloom index: bit `i` of a key comes from the top bits of
/// `mix32(key ^ s) · SALT[i]` (as in split-block Bloom filters).
pub(crate) const SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// Multipliers for the coupled layout's in-segment offsets.
pub(crate) const KC: u64 = 0x8ebc_6af0_9c88_c6e3;
pub(crate) const KC2: u64 = 0xd1b5_4a32_d192_ed03;
/// Multiplier for the check lane's per-key weight.
const KW: u64 = 0x5899_65cc_7537_4cc3;

/// The coupled layout's offsets source: two more 64-bit values whose four 32-bit halves
/// give the in-segment offsets by fastrange (the window comes from the top bits of `hash`).
#[inline(always)]
pub(crate) fn offset_bits(hash: u64) -> (u64, u64) {
    let x = hash ^ (hash >> 29);
    (x.wrapping_mul(KC), x.rotate_left(32).wrapping_mul(KC2))
}

/// Per-key weight of the check lane (odd, so every value change changes the weighted sum).
#[inline(always)]
pub(crate) fn check_weight(hash: u64) -> u64 {
    (hash.rotate_left(23) ^ KW).wrapping_mul(KW) | 1
}

/// Derives the per-tensor hashing key from the job seed and the tensor id.
pub(crate) fn derive_key(seed: u64, tensor_id: u64) -> u64 {
    mix64(seed ^ mix64(tensor_id ^ 0x243f_6a88_85a3_08d3))
}
