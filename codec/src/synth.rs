//! Deterministic synthetic sparse gradients, shared by the benches, the CLI and other crates,
//! so every tool measures the same inputs for the same seed.
//!
//! Each worker gets `round(density · units)` nonzero *units* (single positions for
//! [`Pattern::Random`], rows of `W` consecutive positions for [`Pattern::Rows`], like the
//! gradient of an embedding table). A shared set of `round(overlap · that)` units is common to
//! every worker; the rest are drawn independently per worker (so `overlap = 1` gives identical
//! supports and `overlap = 0` independent ones). Values are `N(0,1) · 10^(-3u)` with one
//! `u ~ U[0,1)` per unit: both signs and three decades of magnitudes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

pub use crate::npy::{read_npy, NpyError};

/// Sparsity pattern of the synthetic gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Independent positions.
    Random,
    /// Whole rows of the given width (embedding-table-like).
    Rows(u32),
}

impl std::str::FromStr for Pattern {
    type Err = String;
    /// Parses `random` or `rows:W`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "random" {
            return Ok(Pattern::Random);
        }
        if let Some(w) = s.strip_prefix("rows:") {
            return match w.parse::<u32>() {
                Ok(w) if w > 0 => Ok(Pattern::Rows(w)),
                _ => Err(format!("bad row width in {s:?} (want rows:W with W >= 1)")),
            };
        }
        Err(format!("unknown pattern {s:?} (want random or rows:W)"))
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Random => write!(f, "random"),
            Pattern::Rows(w) => write!(f, "rows:{w}"),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthSpec {
    /// Dimension of each gradient.
    pub dim: usize,
    /// Number of workers.
    pub workers: usize,
    /// Fraction of nonzero units per worker, in `[0, 1]`.
    pub density: f64,
    /// Fraction of each worker's units shared by all workers, in `[0, 1]`.
    pub overlap: f64,
    /// Sparsity pattern.
    pub pattern: Pattern,
    /// Seed; same seed, same gradients.
    pub seed: u64,
}

/// A spec that cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid synthetic spec: {0}")]
pub struct SynthError(pub String);

impl SynthSpec {
    /// Checks ranges (density and overlap in `[0,1]`, dimension within `u32`).
    pub fn validate(&self) -> Result<(), SynthError> {
        if !(0.0..=1.0).contains(&self.density) {
            return Err(SynthError(format!(
                "density {} not in [0, 1]",
                self.density
            )));
        }
        if !(0.0..=1.0).contains(&self.overlap) {
            return Err(SynthError(format!(
                "overlap {} not in [0, 1]",
                self.overlap
            )));
        }
        if self.dim as u64 > u32::MAX as u64 {
            return Err(SynthError(format!("dim {} > {}", self.dim, u32::MAX)));
        }
        if let Pattern::Rows(0) = self.pattern {
            return Err(SynthError("row width must be >= 1".into()));
        }
        Ok(())
    }
}

fn worker_seed(seed: u64, w: usize) -> u64 {
    seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Generates one dense gradient per worker.
pub fn generate(spec: &SynthSpec) -> Result<Vec<Vec<f32>>, SynthError> {
    spec.validate()?;
    let width = match spec.pattern {
        Pattern::Random => 1usize,
        Pattern::Rows(w) => w as usize,
    };
    let units = spec.dim.div_ceil(width);
    let per_worker = ((spec.density * units as f64).round() as usize).min(units);
    let shared_n = ((spec.overlap * per_worker as f64).round() as usize).min(per_worker);
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let shared = rand::seq::index::sample(&mut rng, units, shared_n).into_vec();
    let mut is_shared = vec![false; units];
    for &u in &shared {
        is_shared[u] = true;
    }
    let mut out = Vec::with_capacity(spec.workers);
    for w in 0..spec.workers {
        let mut rng = StdRng::seed_from_u64(worker_seed(spec.seed, w));
        let mut g = vec![0.0f32; spec.dim];
        let private = rand::seq::index::sample(&mut rng, units, per_worker)
            .into_iter()
            .filter(|&u| !is_shared[u])
            .take(per_worker - shared_n)
            .collect::<Vec<_>>();
        for &u in shared.iter().chain(&private) {
            let scale = 10f64.powf(-3.0 * rng.gen::<f64>());
            let lo = u * width;
            let hi = (lo + width).min(spec.dim);
            for x in &mut g[lo..hi] {
                let n: f64 = rng.sample(StandardNormal);
                let v = (n * scale) as f32;
                *x = if v == 0.0 { scale as f32 } else { v };
            }
        }
        out.push(g);
    }
    Ok(out)
}
