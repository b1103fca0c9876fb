//! The sizing function: how many cells, which layout and hash count, which index.
//!
//! Everything here is a pure function of its arguments, so every worker computes the same
//! parameters without an exchange.
//!
//! # Cells
//! Let `c` be the expected number of *candidates* the decoder will see (the union's nonzeros
//! plus the index's expected false positives plus `z_δ` standard deviations of them). For
//! each layout and hash count `h` the sketch needs `r(c) · c` peeling cells, where `r` is the
//! largest of
//!
//! - the **finite-size peeling threshold** measured with the `peel_rate` example (0 stalls
//!   in 1,000 seeded tables at that ratio or below, plus a margin; see `docs/design.md`):
//!   plain `t_3 + 5/√c` (`t_3 = 1.222`), `t_4 + 5/√c` (`t_4 = 1.295`); coupled: a bulk
//!   ratio `r·(S − h + 1)/S ≥` [`coupled_bulk_ratio`] with at least
//!   [`COUPLED_MIN_SEGMENTS`] segments;
//! - the **small-stopping-set floor**: two keys sharing all `h` cells never peel. Their
//!   expected number must stay below `δ/2`: plain `c²·h!/(2 m^h)`; coupled (same window,
//!   same offset in each of the `h` segments) `c²/(2 W L^h)` with `W` windows of `L`-cell
//!   segments, which the coupled layout meets by choosing `L` large enough.
//!
//! The layout/hash pair with the fewest cells wins; one check lane is added
//! ([`crate::params::CHECK_LANES`]) and tiny tables keep at least [`MIN_PEEL_CELLS`] cells.
//!
//! # Index
//! See [`choose_index`]: total cost = index bytes + lanes × lane bytes + a CPU term
//! (estimated decode nanoseconds × [`Sizing::decode_bytes_per_ns`]).

use crate::fixed::LaneWidth;
use crate::params::{
    IndexKind, Layout, BLOOM_BLOCK_BITS, BLOOM_BLOCK_WORDS, BLOOM_GROUP, MAX_GROUP_BLOOM_SHIFT,
    MAX_GROUP_SHIFT,
};

/// Default target probability that decoding stalls for a correctly sized sketch.
pub const DEFAULT_FAILURE_PROB: f64 = 1e-5;
/// Fewest peeling cells of any sketch: with spare cells, a contribution made with other
/// parameters lands in a cell the decoder does not expect and leaves a residue.
pub const MIN_PEEL_CELLS: usize = 8;
/// Default weight of decode CPU in the index choice: bytes of network transfer worth one
/// nanosecond of decode. 0.125 bytes/ns is a 1 Gbit/s link, where the project measures its
/// case (docs/benchmarks.md); on faster links raise it (10 Gbit/s: 1.25).
pub const DEFAULT_DECODE_BYTES_PER_NS: f64 = 0.125;

/// Which index the sizing function may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexChoice {
    /// Lowest total cost (bytes plus weighted decode CPU) among all kinds below.
    #[default]
    Auto,
    /// Always the exact bitmap.
    Bitmap,
    /// Always a Bloom filter (sized for the lowest cost).
    Bloom,
    /// Always a group index: group bitmap or Bloom filter over groups (granularity with the
    /// lowest cost; needs a [`SupportProfile`] to know how clustered the support is, else a
    /// random support is assumed).
    Groups,
}

/// Which sketch layout the sizing function may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayoutChoice {
    /// Fewest cells (ties: coupled, which decodes faster).
    #[default]
    Auto,
    /// Always the plain layout.
    Plain,
    /// Coupled whenever the table is large enough to have one (else plain).
    Coupled,
}

/// How clustered a support is: `groups[j]` = number of aligned groups of `2^j` positions
/// holding at least one nonzero (`groups[0]` is the number of nonzeros). Known exactly for a
/// previous step's union (e.g. [`SupportProfile::from_sorted_keys`] on the decoded keys), or
/// estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SupportProfile {
    /// Nonzero groups at granularity `2^j`, `j = 0..=MAX_GROUP_SHIFT`.
    pub groups: [u64; MAX_GROUP_SHIFT as usize + 1],
}

impl SupportProfile {
    /// Profile of a support given as increasing positions.
    pub fn from_sorted_keys(keys: &[u32]) -> Self {
        let mut p = SupportProfile::default();
        for (j, g) in p.groups.iter_mut().enumerate() {
            let mut last = u64::MAX;
            for &k in keys {
                let grp = (k as u64) >> j;
                if grp != last {
                    *g += 1;
                    last = grp;
                }
            }
        }
        p
    }

    /// Profile of the nonzero (magnitude bits ≠ 0) positions of a dense vector.
    pub fn from_dense(values: &[f32]) -> Self {
        let keys: Vec<u32> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.to_bits() << 1 != 0)
            .map(|(i, _)| i as u32)
            .collect();
        Self::from_sorted_keys(&keys)
    }

    /// Expected profile of `union` positions drawn at random among `dim`.
    pub fn random(dim: u64, union: f64) -> Self {
        let mut p = SupportProfile::default();
        let rho = if dim == 0 {
            0.0
        } else {
            (union / dim as f64).clamp(0.0, 1.0)
        };
        for (j, g) in p.groups.iter_mut().enumerate() {
            let size = 1u64 << j;
            let n = dim.div_ceil(size) as f64;
            *g = (n * (1.0 - (1.0 - rho).powi(size as i32))).round() as u64;
        }
        p.groups[0] = union.round() as u64;
        p
    }

    /// Scales the profile to a different union size (e.g. the sizing's headroom over the
    /// previous step's union), keeping its clustering.
    pub fn scaled(&self, union: f64) -> Self {
        let base = self.groups[0].max(1) as f64;
        let f = union / base;
        let mut p = *self;
        for g in &mut p.groups {
            *g = (*g as f64 * f).ceil() as u64;
        }
        p
    }
}

/// Inputs of the sizing function beyond the tensor identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    /// Estimate of the number of nonzeros in the union of all workers' supports.
    pub expected_union_nnz: u64,
    /// Target probability that peeling stalls.
    pub failure_prob: f64,
    /// Index choice.
    pub index: IndexChoice,
    /// Force the number of hashes (3 or 4); `None` lets the sizing choose.
    pub hashes: Option<u8>,
    /// Force the number of cells (total, check lane included); `None` lets the sizing choose.
    pub cells: Option<usize>,
    /// Multiply each cell contribution by a ±1 sign (count-sketch style).
    pub signs: bool,
    /// Sketch layout choice.
    pub layout: LayoutChoice,
    /// Clustering of the expected union (`None`: assume random positions).
    pub profile: Option<SupportProfile>,
    /// Bytes of transfer one nanosecond of decode CPU is worth in the index choice (0 counts
    /// bytes only).
    pub decode_bytes_per_ns: f64,
}

impl Sizing {
    /// Defaults for an expected union size: auto index and layout, [`DEFAULT_FAILURE_PROB`],
    /// sized cells, random support, [`DEFAULT_DECODE_BYTES_PER_NS`].
    pub fn new(expected_union_nnz: u64) -> Self {
        Sizing {
            expected_union_nnz,
            failure_prob: DEFAULT_FAILURE_PROB,
            index: IndexChoice::Auto,
            hashes: None,
            cells: None,
            signs: false,
            layout: LayoutChoice::Auto,
            profile: None,
            decode_bytes_per_ns: DEFAULT_DECODE_BYTES_PER_NS,
        }
    }
}

/// A sketch shape: layout, hashes per key and peeling cells (the check lane comes on top).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SketchShape {
    /// Hash-to-cell map.
    pub layout: Layout,
    /// Hashes per key.
    pub hashes: u8,
    /// Peeling cells (for the coupled layout a multiple of the segment length).
    pub peel_cells: usize,
}

/// Asymptotic plain thresholds and the finite-size margin numerator (see module docs).
fn plain_ratio(c: f64, h: u8) -> f64 {
    let t = if h == 3 { 1.222 } else { 1.295 };
    t + 5.0 / c.sqrt()
}

/// Bulk ratio a coupled table needs: cells per key inside the windows' overlap,
/// `r · (S − h + 1)/S` for `r` cells per key and `S` segments (the first and last `h − 1`
/// segments are covered by fewer windows, which is where peeling starts). Measured with the
/// `peel_rate` example for `h = 4` (table in `docs/design.md`): 1.058 stalled 1.5% of 50,000-key
/// tables, 1.07 none of 200; larger tables need less. The constant keeps a margin above
/// that for the 10⁻⁵ target. `h = 3` is only used for very large tables (see the pair floor)
/// and was not calibrated as finely; its constant is higher (its asymptotic threshold is
/// 1.089 against 1.024 for `h = 4`).
pub fn coupled_bulk_ratio(h: u8) -> f64 {
    if h == 3 {
        1.14
    } else {
        1.085
    }
}

/// Fewest segments a coupled table may have (below, the wave does not get going: 20,000
/// keys in 17 segments stalled at every ratio up to 1.2).
pub const COUPLED_MIN_SEGMENTS: usize = 30;

/// Smallest coupled table a layout is tried for (fewer keys: the plain layout's error floor
/// is lower and the windows too few to couple).
pub const COUPLED_MIN_KEYS: f64 = 2000.0;

/// Plain shape for `c` candidates.
fn plain_shape(c: f64, delta: f64, h: u8) -> SketchShape {
    let peel = if c <= 1.0 {
        h as usize
    } else {
        // Pair floor: c²·h!/(2·m^h) ≤ δ/2  ⇔  m ≥ (c²·h!/δ)^(1/h).
        let fact = if h == 3 { 6.0 } else { 24.0 };
        let floor = (c * c * fact / delta).powf(1.0 / h as f64);
        ((plain_ratio(c, h) * c).max(floor).ceil()) as usize
    };
    SketchShape {
        layout: Layout::Plain,
        hashes: h,
        peel_cells: peel.max(MIN_PEEL_CELLS),
    }
}

/// Geometry of a coupled table of about `m` peeling cells for `c` keys with `h` hashes:
/// `(segments, segment_len)`. The segment length is at least what the pair floor needs,
/// `L^(h−1) ≥ c²/(m·δ)`, and at least the binary fuse filter rule (which keeps the coupling
/// effective); the segment count is then as large as that allows, and the length is
/// rounded so `segments · len` is within one segment count of `m`. `None` if fewer than
/// [`COUPLED_MIN_SEGMENTS`] segments fit or the floor still fails.
pub fn coupled_geometry(c: f64, m: f64, h: u8, delta: f64) -> Option<(usize, usize)> {
    if c < COUPLED_MIN_KEYS || m < 1.0 {
        return None;
    }
    let need = (c * c / (m * delta)).powf(1.0 / (h as f64 - 1.0));
    let fuse = if h == 3 {
        (c.ln() / 3.33f64.ln() + 2.25).floor()
    } else {
        (c.ln() / 2.91f64.ln() - 0.5).floor()
    };
    let min_len = need.max(fuse.exp2()).ceil().max(1.0);
    let mut segments = (m / min_len).floor() as usize;
    // The floor with the real window count W = S − h + 1 (the estimate above used m/L):
    // fewer, longer segments until it holds.
    while segments >= COUPLED_MIN_SEGMENTS.max(h as usize) {
        let len = (m / segments as f64).ceil() as usize;
        let windows = (segments + 1 - h as usize) as f64;
        let pairs = c * c / (2.0 * windows * (len as f64).powi(h as i32));
        if pairs <= delta / 2.0 {
            if len > u32::MAX as usize || segments * len > u32::MAX as usize {
                return None;
            }
            return Some((segments, len));
        }
        segments -= 1;
    }
    None
}

/// Coupled shape for `c` candidates, or `None` if the table is too small to couple: the
/// smallest ratio (steps of 0.0025 from 1.05) whose geometry meets the bulk ratio
/// [`coupled_bulk_ratio`].
fn coupled_shape(c: f64, delta: f64, h: u8) -> Option<SketchShape> {
    let mut r = 1.05;
    while r <= 1.35 {
        if let Some((segments, len)) = coupled_geometry(c, r * c, h, delta) {
            let bulk = r * (segments + 1 - h as usize) as f64 / segments as f64;
            if bulk >= coupled_bulk_ratio(h) {
                return Some(SketchShape {
                    layout: Layout::Coupled {
                        segment_len: len as u32,
                    },
                    hashes: h,
                    peel_cells: segments * len,
                });
            }
        }
        r += 0.0025;
    }
    None
}

/// The cheapest sketch shape for `candidates` expected candidates.
pub fn sketch_shape(
    candidates: f64,
    failure_prob: f64,
    hashes: Option<u8>,
    layout: LayoutChoice,
) -> SketchShape {
    let c = candidates.max(0.0);
    let delta = failure_prob.clamp(1e-300, 1.0);
    let hs: &[u8] = match hashes {
        Some(3) => &[3],
        Some(_) => &[4],
        None => &[3, 4],
    };
    let mut best: Option<SketchShape> = None;
    let consider = |best: &mut Option<SketchShape>, s: SketchShape| {
        let better = match *best {
            None => true,
            Some(b) => {
                s.peel_cells < b.peel_cells
                    || (s.peel_cells == b.peel_cells
                        && matches!(s.layout, Layout::Coupled { .. })
                        && b.layout == Layout::Plain)
            }
        };
        if better {
            *best = Some(s);
        }
    };
    for &h in hs {
        if layout != LayoutChoice::Plain {
            if let Some(s) = coupled_shape(c, delta, h) {
                consider(&mut best, s);
            }
        }
    }
    // Coupled when forced and available; otherwise plain is always a candidate.
    let forced_coupled = layout == LayoutChoice::Coupled && best.is_some();
    if !forced_coupled {
        for &h in hs {
            consider(&mut best, plain_shape(c, delta, h));
        }
    }
    best.unwrap_or_else(|| plain_shape(c, delta, 3))
}

/// Plain-layout cells and hash count for `candidates` (the peeling cells of
/// [`sketch_shape`] with the plain layout; kept for callers of the first release).
pub fn sketch_cells_for(candidates: f64, failure_prob: f64, hashes: Option<u8>) -> (usize, u8) {
    let s = sketch_shape(candidates, failure_prob, hashes, LayoutChoice::Plain);
    (s.peel_cells, s.hashes)
}

/// One-sided standard normal quantile for a tail probability `p` (Acklam's rational
/// approximation of the lower region; enough for slack terms).
fn normal_quantile_upper(p: f64) -> f64 {
    let p = p.clamp(1e-300, 0.5);
    let q = (-2.0 * p.ln()).sqrt();
    let c = [2.515517, 0.802853, 0.010328];
    let d = [1.432788, 0.189269, 0.001308];
    q - (c[0] + c[1] * q + c[2] * q * q) / (1.0 + d[0] * q + d[1] * q * q + d[2] * q * q * q)
}

/// `P(all k query bits set | i keys in a block)` for `i < TABLE_KEYS`, computed exactly for
/// bits drawn uniformly with replacement: `E[(X/b)^k]` where `X` is the number of distinct
/// bits set by `k·i` draws (a Markov chain on `X`). The usual `(1 − (1 − 1/b)^(ki))^k` is
/// `E[X/b]^k`, which under-counts by Jensen's inequality.
fn fp_given_load(k: u8) -> &'static [f64] {
    use std::sync::OnceLock;
    static TABLES: OnceLock<Vec<Vec<f64>>> = OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let b = BLOOM_BLOCK_BITS as usize;
        (1..=8usize)
            .map(|k| {
                let mut dist = vec![0.0f64; b + 1];
                dist[0] = 1.0;
                let mut out = Vec::with_capacity(TABLE_KEYS);
                for _ in 0..TABLE_KEYS {
                    let e: f64 = dist
                        .iter()
                        .enumerate()
                        .map(|(x, p)| p * (x as f64 / b as f64).powi(k as i32))
                        .sum();
                    out.push(e);
                    for _ in 0..k {
                        let mut next = vec![0.0f64; b + 1];
                        for (x, &p) in dist.iter().enumerate() {
                            if p == 0.0 {
                                continue;
                            }
                            let hit = x as f64 / b as f64;
                            next[x] += p * hit;
                            if x < b {
                                next[x + 1] += p * (1.0 - hit);
                            }
                        }
                        dist = next;
                    }
                }
                out
            })
            .collect()
    });
    &t[(k.clamp(1, 8) - 1) as usize]
}

/// Block loads tabulated exactly; beyond, the (then saturated) approximation is used.
const TABLE_KEYS: usize = 600;

fn fp_at(k: u8, load: usize) -> f64 {
    let t = fp_given_load(k);
    if load < t.len() {
        t[load]
    } else {
        let b = BLOOM_BLOCK_BITS as f64;
        (1.0 - (1.0 - 1.0 / b).powf(k as f64 * load as f64)).powi(k as i32)
    }
}

/// Expected false-positive rate and its standard deviation *per block* (for the count's
/// variance), for the Bloom index of [`crate::params`]: `blocks` blocks, `k` bits per key,
/// groups of [`BLOOM_GROUP`] positions sharing a block, `union` keys in `dim` positions with
/// clustering `profile`.
///
/// A non-key query's block holds the keys of its own group (`Binomial(7, ρ)`, `ρ = u/d`)
/// plus those of the other groups hashed there: a compound Poisson number of nonzero groups
/// (rate `n₈/B`), each holding `1 + Binomial(7, p')` keys with mean `u/n₈`; its
/// distribution comes from Panjer's recursion. The rate is averaged over that load.
pub fn bloom_fpr_model(
    dim: u64,
    union: f64,
    blocks: u32,
    k: u8,
    profile: Option<&SupportProfile>,
) -> (f64, f64) {
    if blocks == 0 {
        return (1.0, 0.0);
    }
    if union <= 0.0 {
        return (0.0, 0.0);
    }
    let rho = (union / dim.max(1) as f64).clamp(0.0, 1.0);
    let g = BLOOM_GROUP as u32;
    let gshift = g.trailing_zeros() as usize;
    let n8 = match profile {
        Some(p) => p.groups[gshift].max(1) as f64,
        None => SupportProfile::random(dim, union).groups[gshift].max(1) as f64,
    }
    .min(union);
    let mu = (union / n8).clamp(1.0, g as f64);
    let pp = ((mu - 1.0) / (g - 1) as f64).clamp(0.0, 1.0);
    // Severity: group sizes s = 1 + Binomial(g−1, pp).
    let mut sev = vec![0.0f64; g as usize + 1];
    for (j, s) in sev.iter_mut().enumerate().skip(1) {
        *s = binom_pmf(g as usize - 1, j - 1, pp);
    }
    let lambda = n8 / blocks as f64;
    let mean = lambda * mu;
    let hi = (mean + 14.0 * (mean * g as f64).sqrt() + 40.0) as usize;
    // Panjer recursion for the compound Poisson load.
    let mut f = vec![0.0f64; hi + 1];
    f[0] = (-lambda).exp();
    if f[0] == 0.0 {
        // Very large λ: start from a tiny value and renormalise (ratio-preserving).
        f[0] = 1e-300;
    }
    for x in 1..=hi {
        let mut acc = 0.0;
        for s in 1..=(g as usize).min(x) {
            acc += s as f64 * sev[s] * f[x - s];
        }
        f[x] = lambda / x as f64 * acc;
    }
    let total: f64 = f.iter().sum();
    // Own group: Binomial(g−1, ρ) more keys in the same block.
    let own: Vec<f64> = (0..g as usize)
        .map(|a| binom_pmf(g as usize - 1, a, rho))
        .collect();
    let (mut e1, mut e2) = (0.0, 0.0);
    for (x, &px) in f.iter().enumerate() {
        if px == 0.0 {
            continue;
        }
        let px = px / total;
        for (a, &pa) in own.iter().enumerate() {
            let t = fp_at(k, x + a);
            e1 += px * pa * t;
            e2 += px * pa * t * t;
        }
    }
    (e1.min(1.0), (e2 - e1 * e1).max(0.0).sqrt())
}

fn binom_pmf(n: usize, x: usize, p: f64) -> f64 {
    if x > n {
        return 0.0;
    }
    if p <= 0.0 {
        return if x == 0 { 1.0 } else { 0.0 };
    }
    if p >= 1.0 {
        return if x == n { 1.0 } else { 0.0 };
    }
    let mut c = 1.0f64;
    for i in 0..x {
        c = c * (n - i) as f64 / (i + 1) as f64;
    }
    c * p.powi(x as i32) * (1.0 - p).powi((n - x) as i32)
}

/// Expected false-positive rate of the Bloom index with a random support (see
/// [`bloom_fpr_model`]).
pub fn bloom_fpr(keys: f64, blocks: u32, k: u8) -> f64 {
    // Without a dimension, the own-group term vanishes (ρ → 0).
    bloom_fpr_model(u32::MAX as u64, keys, blocks, k, None).0
}

/// Expected candidates for an index and the slack to size for: the union, plus for Bloom
/// the expected false positives and `z_δ` standard deviations of their count, plus for
/// group bitmaps every position of a nonzero group.
pub fn expected_candidates_with(
    dim: u64,
    union: f64,
    index: IndexKind,
    profile: Option<&SupportProfile>,
    failure_prob: f64,
) -> f64 {
    match index {
        IndexKind::Bitmap => union,
        IndexKind::Groups { shift } => {
            let groups = match profile {
                Some(p) => p.groups[shift as usize] as f64,
                None => SupportProfile::random(dim, union).groups[shift as usize] as f64,
            };
            (groups * (1u64 << shift) as f64).min(dim as f64).max(union)
        }
        IndexKind::Bloom { blocks, k } => {
            bloom_candidates(dim, union, blocks, k, profile, failure_prob)
        }
        IndexKind::GroupBloom { blocks, k, shift } => {
            // The Bloom filter sees group ids: `dim >> shift` units, the nonzero groups as
            // keys, and the profile shifted by `shift`.
            let size = (1u64 << shift) as f64;
            let units = dim.div_ceil(1 << shift);
            let p = match profile {
                Some(p) => *p,
                None => SupportProfile::random(dim, union),
            };
            let mut shifted = SupportProfile::default();
            for (j, g) in shifted.groups.iter_mut().enumerate() {
                *g = p.groups[(j + shift as usize).min(MAX_GROUP_SHIFT as usize)];
            }
            let groups = shifted.groups[0] as f64;
            let units_cand =
                bloom_candidates(units, groups, blocks, k, Some(&shifted), failure_prob);
            (units_cand * size).min(dim as f64).max(union)
        }
    }
}

/// [`expected_candidates_with`] of a Bloom filter over `dim` units holding `union` keys.
fn bloom_candidates(
    dim: u64,
    union: f64,
    blocks: u32,
    k: u8,
    profile: Option<&SupportProfile>,
    failure_prob: f64,
) -> f64 {
    let nonkeys = (dim as f64 - union).max(0.0);
    let (fpr, block_sd) = bloom_fpr_model(dim, union, blocks, k, profile);
    let fp = nonkeys * fpr;
    // Blocks are (nearly) independent: Var = Σ_b Var(FP_b) with FP_b ≈ (non-keys per
    // block) × rate(load_b), plus the Bernoulli part.
    let per_block = nonkeys / blocks.max(1) as f64;
    let var = blocks as f64 * (per_block * block_sd).powi(2) + fp;
    let z = normal_quantile_upper(failure_prob.clamp(1e-12, 0.5) / 2.0);
    union + fp + z * var.sqrt()
}

/// [`expected_candidates_with`] for a random support and the default failure probability.
pub fn expected_candidates(dim: u64, union: f64, index: IndexKind) -> f64 {
    expected_candidates_with(dim, union, index, None, DEFAULT_FAILURE_PROB)
}

/// Estimated decode time in nanoseconds for an index with `candidates` candidates: a
/// per-position scan cost (bitmaps read one bit per position or group, the Bloom filter
/// hashes and tests every position in SIMD) plus a per-candidate peeling cost. Calibrated
/// with `sketchreduce bench codec` on the development machine (see `docs/design.md`).
pub fn decode_ns_estimate(dim: u64, index: IndexKind, candidates: f64) -> f64 {
    let scan = match index {
        IndexKind::Bitmap => dim as f64 * 0.01,
        IndexKind::Groups { shift } => dim as f64 * 0.01 / (1u64 << shift) as f64,
        IndexKind::Bloom { k, .. } => dim as f64 * (0.15 + 0.06 * k as f64),
        IndexKind::GroupBloom { k, shift, .. } => {
            dim as f64 * (0.15 + 0.06 * k as f64) / (1u64 << shift) as f64
        }
    };
    scan + candidates * PEEL_NS_PER_CANDIDATE
}

/// Peeling cost per candidate in [`decode_ns_estimate`].
pub const PEEL_NS_PER_CANDIDATE: f64 = 10.0;

/// Picks the index with the lowest cost `index bytes + lanes(candidates) · lane bytes +
/// decode_bytes_per_ns · decode_ns_estimate`, where `lanes` maps expected candidates to the
/// number of value lanes sent (the sketch's cells, or exactly the candidates for
/// union-rank). Bloom: `k ∈ 1..=8` and 1 to 64 bits per key in 10% steps; groups: `2^j`
/// positions per bit for `j = 1..=MAX_GROUP_SHIFT`.
pub fn choose_index_with(
    dim: u64,
    union: f64,
    lane: LaneWidth,
    sizing: &Sizing,
    lanes: impl Fn(f64) -> usize,
) -> IndexKind {
    let lane_bytes = lane.bytes() as f64;
    let profile = sizing.profile.as_ref();
    let cost = |index: IndexKind| -> f64 {
        let cand = expected_candidates_with(dim, union, index, profile, sizing.failure_prob);
        let words = crate::params::index_words_for(dim, index) as f64;
        words * 4.0
            + lanes(cand) as f64 * lane_bytes
            + sizing.decode_bytes_per_ns * decode_ns_estimate(dim, index, cand)
    };
    let mut best = (f64::INFINITY, IndexKind::Bitmap);
    let mut consider = |index: IndexKind| {
        let t = cost(index);
        if t < best.0 {
            best = (t, index);
        }
    };
    let bloom = matches!(sizing.index, IndexChoice::Auto | IndexChoice::Bloom);
    let groups = matches!(sizing.index, IndexChoice::Auto | IndexChoice::Groups);
    if matches!(sizing.index, IndexChoice::Auto | IndexChoice::Bitmap) {
        consider(IndexKind::Bitmap);
    }
    if groups {
        for shift in 1..=MAX_GROUP_SHIFT {
            consider(IndexKind::Groups { shift });
        }
    }
    let bloom_grid = |keys: f64, consider: &mut dyn FnMut(u32, u8)| {
        let keys = keys.max(1.0);
        let mut bpk = 1.0f64;
        let mut last_blocks = 0;
        while bpk <= 64.0 {
            let blocks = ((keys * bpk / BLOOM_BLOCK_BITS as f64).ceil() as u64)
                .clamp(1, (u32::MAX / BLOOM_BLOCK_WORDS as u32) as u64)
                as u32;
            if blocks != last_blocks {
                for k in 1..=8u8 {
                    consider(blocks, k);
                }
                last_blocks = blocks;
            }
            bpk *= 1.1;
        }
    };
    if bloom {
        bloom_grid(union, &mut |blocks, k| {
            consider(IndexKind::Bloom { blocks, k })
        });
    }
    if groups {
        let p = match profile {
            Some(p) => *p,
            None => SupportProfile::random(dim, union),
        };
        for shift in 1..=MAX_GROUP_BLOOM_SHIFT {
            let keys = p.groups[shift as usize] as f64;
            bloom_grid(keys, &mut |blocks, k| {
                consider(IndexKind::GroupBloom { blocks, k, shift })
            });
        }
    }
    best.1
}

/// [`choose_index_with`] with bytes only (no CPU term) and a random support: the first
/// release's signature.
pub fn choose_index(
    dim: u64,
    union: f64,
    lane: LaneWidth,
    choice: IndexChoice,
    lanes: impl Fn(f64) -> usize,
) -> IndexKind {
    let sizing = Sizing {
        index: choice,
        decode_bytes_per_ns: 0.0,
        ..Sizing::new(union as u64)
    };
    choose_index_with(dim, union, lane, &sizing, lanes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_large_tables_near_1_23() {
        let (m, h) = sketch_cells_for(450_000.0, DEFAULT_FAILURE_PROB, None);
        assert_eq!(h, 3);
        let r = m as f64 / 450_000.0;
        assert!(r > 1.222 && r < 1.235, "{r}");
    }

    #[test]
    fn small_tables_get_headroom_and_spare_cells() {
        let (m, _) = sketch_cells_for(100.0, DEFAULT_FAILURE_PROB, None);
        assert!(m as f64 / 100.0 > 1.5);
        assert_eq!(sketch_cells_for(0.0, 1e-5, None).0, MIN_PEEL_CELLS);
        assert_eq!(sketch_cells_for(1.0, 1e-5, None).0, MIN_PEEL_CELLS);
    }

    #[test]
    fn coupled_is_chosen_for_large_tables_and_meets_the_pair_floor() {
        for c in [50_000.0, 450_000.0, 5e6] {
            let s = sketch_shape(c, DEFAULT_FAILURE_PROB, None, LayoutChoice::Auto);
            let Layout::Coupled { segment_len } = s.layout else {
                panic!("{c}: {s:?}");
            };
            let len = segment_len as usize;
            assert_eq!(s.peel_cells % len, 0);
            let w = (s.peel_cells / len + 1 - s.hashes as usize) as f64;
            let pairs = c * c / (2.0 * w * (len as f64).powi(s.hashes as i32));
            assert!(pairs <= DEFAULT_FAILURE_PROB / 2.0, "{c}: {pairs}");
            assert!((s.peel_cells as f64) < 1.2 * c, "{c}: {s:?}");
        }
        let small = sketch_shape(100.0, DEFAULT_FAILURE_PROB, None, LayoutChoice::Coupled);
        assert_eq!(small.layout, Layout::Plain);
    }

    #[test]
    fn tables_of_50k_keys_and_more_take_at_most_1_2_cells_per_key() {
        let mut c = 50_000.0f64;
        while c < 2e8 {
            let s = sketch_shape(c, DEFAULT_FAILURE_PROB, None, LayoutChoice::Auto);
            let r = (s.peel_cells + crate::params::CHECK_LANES) as f64 / c;
            assert!(r <= 1.2, "{c}: {r} {s:?}");
            if c >= 400_000.0 {
                assert!(r <= 1.15, "{c}: {r}");
            }
            c *= 1.07;
        }
    }

    #[test]
    fn exact_bloom_rate_is_not_below_the_approximation() {
        for k in 1..=8u8 {
            for load in [1usize, 10, 30, 80, 200] {
                let approx =
                    (1.0 - (1.0 - 1.0 / 256.0f64).powf(k as f64 * load as f64)).powi(k as i32);
                let exact = fp_at(k, load);
                assert!(exact >= approx * (1.0 - 1e-12), "k {k} load {load}");
                if k == 1 {
                    assert!((exact - approx).abs() < 1e-12);
                }
            }
        }
        let f = bloom_fpr(1000.0, 40, 6);
        assert!(f > 0.0 && f < 0.05, "{f}");
        assert!(bloom_fpr(1000.0, 80, 6) < f);
    }

    #[test]
    fn profiles() {
        let p = SupportProfile::from_sorted_keys(&[0, 1, 2, 3, 64, 200]);
        assert_eq!(p.groups[0], 6);
        assert_eq!(p.groups[1], 4);
        assert_eq!(p.groups[2], 3);
        assert_eq!(p.groups[6], 3);
        let r = SupportProfile::random(1_000_000, 10_000.0);
        assert_eq!(r.groups[0], 10_000);
        assert!(r.groups[3] > 9_000 && r.groups[3] < 10_000);
    }

    #[test]
    fn quantile() {
        assert!((normal_quantile_upper(0.5e-5) - 4.417).abs() < 0.01);
        assert!((normal_quantile_upper(0.00135) - 3.0).abs() < 0.01);
    }
}
