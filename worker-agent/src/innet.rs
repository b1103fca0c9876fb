//! In-network all-reduce of one `f32` tensor with the homomorphic codec, as a sans-I/O state
//! machine on top of [`Aggregation`].
//!
//! # Phases
//! 1. **Agree** (one MAX chunk and one ADD chunk, in the same window):
//!    - MAX lanes: `[exponent, non_finite_flag, h_lo, !h_lo, h_hi, !h_hi, nnz]`, where `h` is
//!      a 64-bit hash of everything the workers must agree on: tensor id, dimension, codec
//!      configuration (seed, lane, index choice, failure probability, forced cells/hashes),
//!      the sizing hint (the previous union size cached for this tensor id), and the number
//!      of all-reduces this agent ran before (which catches workers out of step).
//!      A switch can only OR/ADD/MAX, so equality is checked as `MAX(h) == h` and
//!      `MAX(!h) == !h`: both hold on a worker iff every worker sent the same `h`, and if any
//!      hash differs, every worker sees at least one of the two checks fail.
//!    - ADD lanes: `[nnz & 0xffff, nnz >> 16, 1]`: the total nonzero count (split so 32
//!      workers cannot overflow a lane) and the number of contributors.
//!
//!    A worker whose input has NaN/±Inf still takes part (with the flag set), so every worker
//!    fails fast with the same error instead of waiting for the timeout.
//! 2. **Payload**: the fixed point scale comes from the MAX exponent; the sketch is sized
//!    (identically on every worker) for an expected union of
//!    `clamp(ceil(prev_union · headroom), max_nnz, min(nnz_sum, dim))` when this tensor id was
//!    reduced before, else for the upper bound `min(nnz_sum, dim)`. The index words (OR) and
//!    the sketch cells (ADD) go in one aggregation, pipelined through the same window.
//! 3. **Decode** locally. On [`CodecError::Stalled`] the **recovery** is a union-rank round:
//!    the aggregated index already gives the candidate list, so each worker sends one lane per
//!    candidate (its fixed-point value at the candidate's rank, 0 elsewhere) and the ADD
//!    aggregate *is* the exact sum, without any peeling. Recovery is counted
//!    ([`Reduced::decode_retries`]) and logged with `tracing`. A wrong value is never
//!    returned: any other decode error fails the all-reduce.
//!
//! # Payload modes
//! The payload goes as a **sketch** (index OR + cells ADD) or as **dense lanes** (one lane per
//! element, ADD, no index: SwitchML's scheme), whichever is fewer bytes for the agreed nonzero
//! count ([`ModeChoice::Auto`]), so innet never sends more than dense aggregation through the
//! switch would. Every worker takes the same choice from the same agreed inputs. Values wider
//! than 32 bits (`fixed.bits() > 32`) travel as two carry-split 32-bit lanes in either mode
//! (`codec::wide`).
//!
//! # Pre-agreed starts
//! A caller that already agreed on the exponent, value width and nonzero count by other means
//! (the collectives' operation header over TCP, which every operation exchanges anyway) starts
//! with [`InnetCore::start_agreed`], [`InnetCore::start_agreed_dense`] or
//! [`InnetCore::start_agreed_dense_lazy`] and skips phase 1: one round trip fewer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sketchreduce_codec::{
    max_exponent, CodecError, CodecParams, Decoder, Encoder, Encoding, FixedPoint, IndexChoice,
    LaneWidth, Sizing,
};
use sketchreduce_wire::{JobSpec, Op};

use crate::aggregation::{AggConfig, AggStats, Aggregation, Stream, Transmit};
use crate::error::AgentError;
use crate::Endpoint;

/// Codec settings of the in-network all-reduce; must be identical on every worker (checked).
#[derive(Debug, Clone, PartialEq)]
pub struct InnetConfig {
    /// Seed of the codec's hashes (with the tensor id).
    pub seed: u64,
    /// Index layout choice.
    pub index: IndexChoice,
    /// Target probability that peeling stalls.
    pub failure_prob: f64,
    /// Multiplier on the previous union size when sizing from history.
    pub headroom: f64,
    /// Force the number of sketch cells (tests: provoke stalls and the recovery path).
    pub cells: Option<usize>,
    /// Force the number of hashes (3 or 4).
    pub hashes: Option<u8>,
    /// Sketch, union-rank, dense lanes, or the cheapest.
    pub mode: ModeChoice,
    /// [`ModeChoice::Auto`] takes union-rank instead of the sketch from this many expected
    /// union nonzeros on: peeling costs tens of nanoseconds per key and the sketch ~0.1–0.2
    /// extra lanes per key, union-rank one more round trip.
    pub union_rank_from: u64,
}

/// How the payload of an in-network all-reduce is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModeChoice {
    /// Dense lanes when the sketch would be larger than one lane per element, else the
    /// sketch for small unions and union-rank for large ones
    /// ([`InnetConfig::union_rank_from`]); decided identically on every worker from the agreed
    /// nonzero counts.
    #[default]
    Auto,
    /// Always index + sketch.
    Sketch,
    /// Always the index, then one lane per candidate (two rounds, no peeling).
    UnionRank,
    /// Always one lane per element (SwitchML-style dense aggregation, no index).
    Dense,
}

/// The payload mode an all-reduce actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    /// Nothing to send (every input was zero).
    Empty,
    /// Index (OR) + value sketch (ADD), decoded by peeling.
    Sketch,
    /// Index (OR), then one ADD lane per candidate of the aggregated index.
    UnionRank,
    /// One ADD lane per element.
    Dense,
}

impl PayloadMode {
    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            PayloadMode::Empty => "empty",
            PayloadMode::Sketch => "sketch",
            PayloadMode::UnionRank => "union-rank",
            PayloadMode::Dense => "dense",
        }
    }
}

/// Where the time of one all-reduce went (wall time on this worker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// Scanning the input (exponent, nonzeros) before anything is sent.
    pub scan: Duration,
    /// The agreement round through the switch (exponent, nonzero counts, parameter hash).
    pub agree: Duration,
    /// Sizing and encoding the payload (sketch or dense lanes).
    pub encode: Duration,
    /// Sending the payload and waiting for every aggregated chunk.
    pub aggregate: Duration,
    /// Decoding the aggregate (candidates and peeling).
    pub decode: Duration,
    /// The union-rank round after a stalled decode (0 if none).
    pub recovery: Duration,
}

impl Phases {
    /// Sum of all phases.
    pub fn total(&self) -> Duration {
        self.scan + self.agree + self.encode + self.aggregate + self.decode + self.recovery
    }
}

impl Default for InnetConfig {
    fn default() -> Self {
        InnetConfig {
            seed: 0x5eed_5ca1_ab1e,
            index: IndexChoice::Auto,
            failure_prob: sketchreduce_codec::params::DEFAULT_FAILURE_PROB,
            headroom: 1.25,
            cells: None,
            hashes: None,
            mode: ModeChoice::Auto,
            union_rank_from: DEFAULT_UNION_RANK_FROM,
        }
    }
}

/// Default [`InnetConfig::union_rank_from`]: 16,384 keys peel in ~0.5 ms, about one round
/// trip through a switch plus the barrier between the two rounds.
pub const DEFAULT_UNION_RANK_FROM: u64 = 16_384;

/// The result of one all-reduce: exact integer sums (at the candidate positions of a sketch,
/// or at every position in dense mode), and the conversion back to floats. The float sum is
/// returned; callers average if they want.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduced {
    /// Tensor id.
    pub tensor_id: u64,
    /// Dimension.
    pub dim: usize,
    /// The agreed fixed-point conversion (`None` if every input was all-zero).
    pub fixed: Option<FixedPoint>,
    /// How the payload travelled.
    pub mode: PayloadMode,
    /// Sketch mode: candidate positions, increasing (a superset of the union's nonzeros).
    pub keys: Vec<u32>,
    /// Sketch mode: exact integer sum at each candidate (the lane value, sign-extended).
    pub sums: Vec<i64>,
    /// Dense mode with 32-bit values: the aggregated lane of every position (wrapping sums).
    pub lanes: Vec<u32>,
    /// Dense mode with wide values (`fixed.bits() > 32`, two lanes per position through the
    /// switch): the exact sum of every position.
    pub wide: Vec<i64>,
    /// 1 if the sketch stalled and the union-rank recovery ran, else 0.
    pub decode_retries: u32,
    /// Sketch cells used (0 if none).
    pub cells: usize,
    /// Where the time went.
    pub phases: Phases,
}

impl Reduced {
    /// Calls `f(position, exact sum)` for every position whose sum may be nonzero (the
    /// candidates in sketch mode, every position in dense mode), in increasing position.
    pub fn for_each_sum(&self, mut f: impl FnMut(usize, i64)) {
        match self.mode {
            PayloadMode::Dense if !self.wide.is_empty() => {
                for (i, &s) in self.wide.iter().enumerate() {
                    f(i, s);
                }
            }
            PayloadMode::Dense => {
                for (i, &w) in self.lanes.iter().enumerate() {
                    f(i, w as i32 as i64);
                }
            }
            _ => {
                for (&k, &s) in self.keys.iter().zip(&self.sums) {
                    f(k as usize, s);
                }
            }
        }
    }

    fn check_len(&self, len: usize) -> Result<(), AgentError> {
        if len != self.dim {
            return Err(AgentError::Config(format!(
                "dense output of {len} for a tensor of {}",
                self.dim
            )));
        }
        Ok(())
    }

    /// Writes the dense float sums into `out` (length `dim`).
    pub fn to_dense(&self, out: &mut [f32]) -> Result<(), AgentError> {
        self.check_len(out.len())?;
        out.fill(0.0);
        if let Some(f) = &self.fixed {
            self.for_each_sum(|k, s| out[k] = f.to_float(s));
        }
        Ok(())
    }

    /// The dense float sums.
    pub fn dense(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.dim];
        let _ = self.to_dense(&mut v);
        v
    }

    /// Writes the dense exact integer sums into `out` (length `dim`).
    pub fn to_dense_sums(&self, out: &mut [i64]) -> Result<(), AgentError> {
        self.check_len(out.len())?;
        out.fill(0);
        self.for_each_sum(|k, s| out[k] = s);
        Ok(())
    }

    /// Positions with a nonzero sum.
    pub fn nonzeros(&self) -> usize {
        match self.mode {
            PayloadMode::Dense if !self.wide.is_empty() => {
                self.wide.iter().filter(|&&w| w != 0).count()
            }
            PayloadMode::Dense => self.lanes.iter().filter(|&&w| w != 0).count(),
            _ => self.sums.iter().filter(|&&s| s != 0).count(),
        }
    }
}

/// Counters of an [`InnetCore`] (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InnetStats {
    /// Aggregation counters (packets, retransmissions, ...).
    pub agg: AggStats,
    /// All-reduces completed.
    pub all_reduces: u64,
    /// Stalled decodes recovered by union-rank.
    pub decode_retries: u64,
}

/// What a worker contributes to one all-reduce, in sparse form.
#[derive(Debug, Clone, Copy)]
struct Input {
    tensor_id: u64,
    dim: usize,
    exponent: u32,
    non_finite: bool,
}

/// Parameters the workers agreed on before the payload (through the switch, or handed in by
/// a caller that agreed on them another way, see [`InnetCore::start_agreed`]).
#[derive(Debug, Clone, Copy)]
pub struct Agreed {
    /// The fixed-point conversion (global exponent, worker count, lane width).
    pub fixed: FixedPoint,
    /// Σ over workers of nonzero counts (an upper bound on the union).
    pub nnz_sum: u64,
    /// Largest nonzero count of a single worker (a lower bound on the union).
    pub max_nnz: u64,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Agree {
        input: Input,
        hash: u64,
    },
    Payload {
        input: Input,
        fixed: FixedPoint,
        params: Option<CodecParams>,
        /// Only the index travels (union-rank's first round).
        union_rank: bool,
    },
    /// One lane per candidate: union-rank's second round, or the recovery of a stalled
    /// sketch (`mode` tells which).
    Recover {
        input: Input,
        fixed: FixedPoint,
        cells: usize,
        keys: Vec<u32>,
        mode: PayloadMode,
    },
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Agree { .. } => "agree",
            Phase::Payload { .. } => "aggregate",
            Phase::Recover { .. } => "recovery",
        }
    }
}

const MAX_LANES_USED: usize = 7;

/// The in-network all-reduce of one worker (sans-I/O). Drive it like an [`Aggregation`]:
/// [`InnetCore::start`], then feed datagrams and poll transmits and timeouts until
/// [`InnetCore::poll_complete`] returns the result.
#[derive(Debug)]
pub struct InnetCore {
    agg: Aggregation,
    cfg: InnetConfig,
    prev_union: HashMap<u64, u64>,
    /// Codec parameters by (tensor id, dimension, rounded expected union).
    sizing_cache: HashMap<(u64, u64, u64, u32), CodecParams>,
    calls: u64,
    phase: Phase,
    decoder: Decoder<i32>,
    /// Decoder of wide (64-bit cell) sketches.
    decoder64: Decoder<i64>,
    idx: Vec<u32>,
    vals: Vec<f32>,
    bufs: (Vec<u32>, Vec<u32>),
    done: Option<Result<Reduced, AgentError>>,
    decode_retries: u64,
    all_reduces: u64,
    /// Dense lanes quantized on demand from the caller's input (see
    /// [`InnetCore::fill_dense`]): words written so far.
    lazy_dense: Option<usize>,
    /// Phase times of the operation in flight, and when its current phase started.
    phases: Phases,
    phase_start: Instant,
    /// A tracing span per phase (closed when the phase ends, so a subscriber with span
    /// events sees each phase's duration).
    span: tracing::Span,
}

/// Most tensor ids whose last union size is remembered for sizing (oldest forgotten first
/// would need an order; the table is simply cleared when full, costing one unsized call).
const MAX_HISTORY: usize = 4096;

/// Fewest cells per candidate any sketch layout needs (coupled peeling thresholds are above
/// 1.08), so a sketch of an expected union `u` is never smaller than `1.08 · u` lanes.
const MIN_CELLS_PER_KEY: f64 = 1.08;

/// Splits wide values into two 32-bit lanes each (carry split, `sketchreduce_codec::wide`),
/// a block at a time so no 64-bit copy of the whole tensor is made.
fn wide_words(
    values: impl Iterator<Item = i64>,
    workers: u32,
    out: &mut [u32],
) -> Result<(), CodecError> {
    const BLOCK: usize = 4096;
    let mut block = [0u64; BLOCK];
    let mut done = 0usize;
    let mut n = 0usize;
    for v in values {
        block[n] = v as u64;
        n += 1;
        if n == BLOCK {
            sketchreduce_codec::split_wide(&block, workers, &mut out[2 * done..2 * (done + n)])?;
            done += n;
            n = 0;
        }
    }
    sketchreduce_codec::split_wide(&block[..n], workers, &mut out[2 * done..2 * (done + n)])
}

/// Joins aggregated wide words back into exact sums of `bits`-bit values.
fn join_sums(words: &[u32], workers: u32, bits: u32) -> Result<Vec<i64>, CodecError> {
    let mut cells = vec![0u64; words.len() / 2];
    sketchreduce_codec::join_wide(words, workers, &mut cells)?;
    Ok(cells
        .into_iter()
        .map(|c| sketchreduce_codec::wide::sign_extend(c, bits))
        .collect())
}

/// `v` rounded up to `bits` significant bits (integer arithmetic: identical everywhere).
fn round_up_significant(v: u64, bits: u32) -> u64 {
    let len = 64 - v.leading_zeros();
    if len <= bits {
        return v;
    }
    let unit = 1u64 << (len - bits);
    v.div_ceil(unit).saturating_mul(unit)
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

impl InnetCore {
    /// A core for worker `rank` of `job`.
    pub fn new(
        job: &JobSpec,
        rank: u8,
        agg: AggConfig,
        cfg: InnetConfig,
    ) -> Result<Self, AgentError> {
        let agg = Aggregation::new(job, rank, agg)?;
        if agg.window() < 2 {
            return Err(AgentError::Config(
                "the in-network all-reduce needs a window of at least 2 slots".into(),
            ));
        }
        if agg.lanes() < MAX_LANES_USED {
            return Err(AgentError::Config(
                "need at least 8 lanes per packet".into(),
            ));
        }
        Ok(InnetCore {
            agg,
            cfg,
            prev_union: HashMap::new(),
            sizing_cache: HashMap::new(),
            calls: 0,
            phase: Phase::Idle,
            decoder: Decoder::new(),
            decoder64: Decoder::new(),
            idx: Vec::new(),
            vals: Vec::new(),
            bufs: (Vec::new(), Vec::new()),
            done: None,
            decode_retries: 0,
            all_reduces: 0,
            lazy_dense: None,
            phases: Phases::default(),
            phase_start: Instant::now(),
            span: tracing::Span::none(),
        })
    }

    /// The underlying aggregation machine (e.g. for its counters).
    pub fn aggregation(&self) -> &Aggregation {
        &self.agg
    }

    /// Counters.
    pub fn stats(&self) -> InnetStats {
        InnetStats {
            agg: self.agg.stats(),
            all_reduces: self.all_reduces,
            decode_retries: self.decode_retries,
        }
    }

    /// Whether an all-reduce is in progress.
    pub fn is_busy(&self) -> bool {
        !matches!(self.phase, Phase::Idle)
    }

    fn config_hash(&self, tensor_id: u64, dim: usize, hint: u64) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        fnv(&mut h, b"sketchreduce-innet-v2");
        fnv(&mut h, &tensor_id.to_le_bytes());
        fnv(&mut h, &(dim as u64).to_le_bytes());
        fnv(&mut h, &self.cfg.seed.to_le_bytes());
        fnv(&mut h, &[self.cfg.index as u8, self.cfg.mode as u8]);
        fnv(&mut h, &self.cfg.failure_prob.to_bits().to_le_bytes());
        fnv(&mut h, &self.cfg.headroom.to_bits().to_le_bytes());
        fnv(
            &mut h,
            &(self.cfg.cells.map_or(0, |c| c as u64 + 1)).to_le_bytes(),
        );
        fnv(&mut h, &[self.cfg.hashes.unwrap_or(0)]);
        fnv(&mut h, &hint.to_le_bytes());
        fnv(&mut h, &self.calls.to_le_bytes());
        h
    }

    /// Checks that a new operation may start.
    fn ready(&mut self, dim: usize) -> Result<(), AgentError> {
        if self.is_busy() {
            return Err(AgentError::Busy);
        }
        if let Some(e) = self.agg.error() {
            return Err(e.clone());
        }
        if dim as u64 > sketchreduce_codec::params::MAX_DIM {
            return Err(AgentError::Config(format!(
                "tensor of {dim} elements exceeds {}",
                sketchreduce_codec::params::MAX_DIM
            )));
        }
        self.done = None;
        self.phases = Phases::default();
        Ok(())
    }

    /// Starts the all-reduce of a dense tensor `values` (identical `tensor_id` and length on
    /// every worker). The nonzeros are copied, so the caller may drop `values`.
    pub fn start(&mut self, tensor_id: u64, values: &[f32]) -> Result<(), AgentError> {
        self.ready(values.len())?;
        let t0 = Instant::now();
        let (exponent, non_finite) = match max_exponent(values) {
            Ok(e) => (e, false),
            Err(_) => (0, true),
        };
        self.idx.clear();
        self.vals.clear();
        if !non_finite {
            for (i, &v) in values.iter().enumerate() {
                if v.to_bits() << 1 != 0 {
                    self.idx.push(i as u32);
                    self.vals.push(v);
                }
            }
        }
        self.phases.scan = t0.elapsed();
        let input = Input {
            tensor_id,
            dim: values.len(),
            exponent,
            non_finite,
        };
        self.start_agree(input)
    }

    /// Starts the all-reduce of a sparse tensor of length `dim` given as increasing positions
    /// and their values (zeros allowed and skipped).
    pub fn start_sparse(
        &mut self,
        tensor_id: u64,
        dim: usize,
        indices: &[u32],
        values: &[f32],
    ) -> Result<(), AgentError> {
        self.ready(dim)?;
        self.load_sparse(dim, indices, values)?;
        let t0 = Instant::now();
        let (exponent, non_finite) = match max_exponent(&self.vals) {
            Ok(e) => (e, false),
            Err(_) => (0, true),
        };
        self.phases.scan = t0.elapsed();
        let input = Input {
            tensor_id,
            dim,
            exponent,
            non_finite,
        };
        self.start_agree(input)
    }

    /// Starts the all-reduce of a sparse tensor whose parameters every worker already agreed
    /// on by other means (a caller that exchanged exponents and nonzero counts itself, such
    /// as the collectives' metadata round): no agreement round through the switch. Every
    /// worker must pass the same `tensor_id`, `dim` and `agreed`.
    pub fn start_agreed(
        &mut self,
        tensor_id: u64,
        dim: usize,
        indices: &[u32],
        values: &[f32],
        agreed: Agreed,
    ) -> Result<(), AgentError> {
        self.ready(dim)?;
        self.load_sparse(dim, indices, values)?;
        self.start_payload(tensor_id, dim, agreed, None)
    }

    /// [`Self::start_agreed`] for a dense tensor. When the payload goes as dense lanes (the
    /// sketch would be larger), the values are quantized straight into the lanes, without
    /// extracting nonzeros first; everything is encoded before this returns, so `values` need
    /// not outlive the call.
    pub fn start_agreed_dense(
        &mut self,
        tensor_id: u64,
        values: &[f32],
        agreed: Agreed,
    ) -> Result<(), AgentError> {
        self.start_agreed_dense_with(tensor_id, values, agreed, false)
    }

    /// [`Self::start_agreed_dense`] that, when the payload goes as dense lanes, quantizes only
    /// the first window now: the caller must then call [`Self::fill_dense`] with the same
    /// `values` before every [`Self::poll_transmit`], so quantizing overlaps with the
    /// transfer. (Chunks that are due but not filled are not sent: the operation fails
    /// rather than send zeros.)
    pub fn start_agreed_dense_lazy(
        &mut self,
        tensor_id: u64,
        values: &[f32],
        agreed: Agreed,
    ) -> Result<(), AgentError> {
        self.start_agreed_dense_with(tensor_id, values, agreed, true)
    }

    fn start_agreed_dense_with(
        &mut self,
        tensor_id: u64,
        values: &[f32],
        agreed: Agreed,
        lazy: bool,
    ) -> Result<(), AgentError> {
        self.ready(values.len())?;
        self.lazy_dense = lazy.then_some(0);
        self.idx.clear();
        self.vals.clear();
        self.start_payload(tensor_id, values.len(), agreed, Some(values))
    }

    /// The payload phase of a pre-agreed operation, with this worker's input in
    /// `self.idx`/`self.vals` or, for `dense`, as a dense slice: an operation that needs no
    /// aggregation finishes at once; a failure leaves the core idle.
    fn start_payload(
        &mut self,
        tensor_id: u64,
        dim: usize,
        agreed: Agreed,
        dense: Option<&[f32]>,
    ) -> Result<(), AgentError> {
        self.calls += 1;
        let input = Input {
            tensor_id,
            dim,
            exponent: agreed.fixed.exponent(),
            non_finite: false,
        };
        self.enter(Instant::now(), "encode", tensor_id);
        match self.begin_payload_from(input, agreed, dense) {
            Ok(Some(r)) => {
                self.finish(Ok(r));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.phase = Phase::Idle;
                Err(e)
            }
        }
    }

    fn load_sparse(
        &mut self,
        dim: usize,
        indices: &[u32],
        values: &[f32],
    ) -> Result<(), AgentError> {
        if indices.len() != values.len() {
            return Err(AgentError::Config(format!(
                "{} positions for {} values",
                indices.len(),
                values.len()
            )));
        }
        self.idx.clear();
        self.vals.clear();
        let mut prev: Option<u32> = None;
        for (&i, &v) in indices.iter().zip(values) {
            if i as usize >= dim || prev.is_some_and(|p| p >= i) {
                return Err(AgentError::Config(format!(
                    "sparse positions must increase and stay below {dim} (got {i} after {prev:?})"
                )));
            }
            prev = Some(i);
            if v.to_bits() << 1 != 0 {
                self.idx.push(i);
                self.vals.push(v);
            }
        }
        Ok(())
    }

    /// Ends the current phase's span and starts timing the next one.
    fn enter(&mut self, now: Instant, name: &'static str, tensor_id: u64) {
        self.phase_start = now;
        self.span = tracing::debug_span!("innet_phase", phase = name, tensor_id);
    }

    /// Time since the current phase started.
    fn lap(&mut self, now: Instant) -> Duration {
        let d = now.saturating_duration_since(self.phase_start);
        self.phase_start = now;
        d
    }

    fn start_agree(&mut self, input: Input) -> Result<(), AgentError> {
        let nnz = self.idx.len() as u32;
        let hint = self.prev_union.get(&input.tensor_id).copied().unwrap_or(0);
        let hash = self.config_hash(input.tensor_id, input.dim, hint);
        self.calls += 1;
        let lanes = self.agg.lanes();
        let mut max = vec![0u32; lanes];
        max[0] = input.exponent;
        max[1] = input.non_finite as u32;
        max[2] = hash as u32;
        max[3] = !(hash as u32);
        max[4] = (hash >> 32) as u32;
        max[5] = !((hash >> 32) as u32);
        max[6] = nnz;
        let mut add = vec![0u32; lanes];
        add[0] = nnz & 0xffff;
        add[1] = nnz >> 16;
        add[2] = 1;
        self.agg
            .start(vec![Stream::new(Op::Max, max), Stream::new(Op::Add, add)])?;
        self.enter(Instant::now(), "agree", input.tensor_id);
        self.phase = Phase::Agree { input, hash };
        Ok(())
    }

    /// The result of the all-reduce, once (then the core is idle again).
    pub fn poll_complete(&mut self) -> Option<Result<Reduced, AgentError>> {
        self.done.take()
    }

    fn finish(&mut self, r: Result<Reduced, AgentError>) {
        match &r {
            Err(e) => tracing::warn!(error = %e, "in-network all-reduce failed"),
            Ok(red) => {
                self.all_reduces += 1;
                let p = &red.phases;
                tracing::debug!(
                    tensor_id = red.tensor_id,
                    mode = red.mode.name(),
                    scan_us = p.scan.as_micros() as u64,
                    agree_us = p.agree.as_micros() as u64,
                    encode_us = p.encode.as_micros() as u64,
                    aggregate_us = p.aggregate.as_micros() as u64,
                    decode_us = p.decode.as_micros() as u64,
                    recovery_us = p.recovery.as_micros() as u64,
                    "in-network all-reduce done"
                );
            }
        }
        self.span = tracing::Span::none();
        self.phase = Phase::Idle;
        self.lazy_dense = None;
        self.done = Some(r);
    }

    fn advance(&mut self, now: Instant) {
        if !self.is_busy() {
            return;
        }
        if let Some(e) = self.agg.error() {
            let e = e.clone();
            self.finish(Err(e));
            return;
        }
        if !self.agg.is_done() {
            return;
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        tracing::trace!(phase = phase.name(), "phase complete");
        let r = match phase {
            Phase::Idle => return,
            Phase::Agree { input, hash } => {
                self.phases.agree = self.lap(now);
                self.after_agree(input, hash)
            }
            Phase::Payload {
                input,
                fixed,
                params,
                union_rank,
            } => {
                self.phases.aggregate = self.lap(now);
                self.after_payload(input, fixed, params, union_rank)
            }
            Phase::Recover {
                input,
                fixed,
                cells,
                keys,
                mode,
            } => {
                let d = self.lap(now);
                if mode == PayloadMode::UnionRank {
                    // Union-rank's second round is part of its aggregation.
                    self.phases.aggregate += d;
                } else {
                    self.phases.recovery += d;
                }
                self.after_recover(input, fixed, cells, keys, mode)
            }
        };
        match r {
            Ok(Some(reduced)) => self.finish(Ok(reduced)),
            Ok(None) => {}
            Err(e) => self.finish(Err(e)),
        }
    }

    fn codec_err(&self, e: CodecError) -> AgentError {
        AgentError::Codec(format!("job {}: {e}", self.agg.job()))
    }

    fn empty(&self, input: &Input, fixed: Option<FixedPoint>) -> Reduced {
        Reduced {
            tensor_id: input.tensor_id,
            dim: input.dim,
            fixed,
            mode: PayloadMode::Empty,
            keys: Vec::new(),
            sums: Vec::new(),
            lanes: Vec::new(),
            wide: Vec::new(),
            decode_retries: 0,
            cells: 0,
            phases: self.phases,
        }
    }

    fn after_agree(&mut self, input: Input, hash: u64) -> Result<Option<Reduced>, AgentError> {
        let streams = self.agg.take_streams();
        let (max, add) = (&streams[0].words, &streams[1].words);
        let job = self.agg.job();
        let tensor_id = input.tensor_id;
        if max[1] != 0 {
            return Err(AgentError::Codec(format!(
                "job {job} tensor {tensor_id}: {} has NaN or infinite values; nothing was aggregated",
                if input.non_finite {
                    "this worker's gradient"
                } else {
                    "another worker's gradient"
                }
            )));
        }
        let (h_lo, h_hi) = (hash as u32, (hash >> 32) as u32);
        if max[2] != h_lo || max[3] != !h_lo || max[4] != h_hi || max[5] != !h_hi {
            return Err(AgentError::Mismatch {
                job,
                detail: format!(
                    "tensor {tensor_id} (dim {}): workers disagree on the tensor id, dimension, codec configuration or call sequence (this worker's parameter hash {hash:#018x}; the MAX over workers is {:#010x}{:08x} and of the complements {:#010x}{:08x})",
                    input.dim, max[4], max[2], !max[5], !max[3]
                ),
            });
        }
        let world = self.agg.world() as u32;
        if add[2] != world {
            return Err(AgentError::Mismatch {
                job,
                detail: format!("{} contributions for {world} workers", add[2]),
            });
        }
        // A MAX below this worker's own contribution means the aggregate is not a MAX over
        // the workers (a forged or corrupted result): refuse rather than quantize with it.
        if max[0] < input.exponent || max[6] < self.idx.len() as u32 {
            return Err(AgentError::Desync {
                job,
                slot: 0,
                detail: format!(
                    "agreement MAX (exponent {}, nonzeros {}) is below this worker's own (exponent {}, nonzeros {})",
                    max[0],
                    max[6],
                    input.exponent,
                    self.idx.len()
                ),
            });
        }
        let nnz_sum = add[0] as u64 + ((add[1] as u64) << 16);
        if nnz_sum == 0 {
            return Ok(Some(self.empty(&input, None)));
        }
        let fixed =
            FixedPoint::new(max[0], world, LaneWidth::W32).map_err(|e| self.codec_err(e))?;
        self.enter(Instant::now(), "encode", tensor_id);
        self.begin_payload(
            input,
            Agreed {
                fixed,
                nnz_sum,
                max_nnz: max[6] as u64,
            },
        )
    }

    /// Sizes the payload from the agreed counts, encodes this worker's contribution and
    /// starts its aggregation.
    fn begin_payload(
        &mut self,
        input: Input,
        agreed: Agreed,
    ) -> Result<Option<Reduced>, AgentError> {
        self.begin_payload_from(input, agreed, None)
    }

    /// [`Self::begin_payload`] with this worker's input either in `self.idx`/`self.vals`
    /// (`dense: None`) or as a dense slice.
    fn begin_payload_from(
        &mut self,
        input: Input,
        agreed: Agreed,
        dense_input: Option<&[f32]>,
    ) -> Result<Option<Reduced>, AgentError> {
        let Agreed {
            fixed,
            nnz_sum,
            max_nnz,
        } = agreed;
        let t0 = Instant::now();
        if nnz_sum == 0 {
            return Ok(Some(self.empty(&input, Some(fixed))));
        }
        let dim = input.dim;
        let upper = nnz_sum.min(dim as u64).max(1);
        let expected = match self.prev_union.get(&input.tensor_id) {
            Some(&prev) => {
                ((prev as f64 * self.cfg.headroom).ceil() as u64).clamp(max_nnz.min(upper), upper)
            }
            None => upper,
        };
        let wide = fixed.bits() > 32;
        let workers = self.agg.world() as u32;
        // A sketch needs more than one cell per candidate: when the expected union is close
        // to the dimension, dense lanes win without sizing anything.
        let surely_dense = expected as f64 * MIN_CELLS_PER_KEY >= dim as f64;
        let params = match self.cfg.mode {
            ModeChoice::Dense => None,
            ModeChoice::Auto if surely_dense => None,
            _ => Some(self.sized(input.tensor_id, dim, expected, fixed.bits())?),
        };
        let dense = match (&params, self.cfg.mode) {
            (None, _) => true,
            (Some(_), ModeChoice::Sketch) => false,
            // Dense is also cheaper to produce and to use: prefer it on a tie.
            // Both sides in 32-bit words: a wide value takes two, a wide cell two.
            (Some(p), _) => {
                let per = if wide { 2 } else { 1 };
                p.index_words() as u64 + per * p.cells() as u64 >= per * dim as u64
            }
        };
        let union_rank = !dense
            && match self.cfg.mode {
                ModeChoice::UnionRank => true,
                ModeChoice::Auto => expected >= self.cfg.union_rank_from,
                ModeChoice::Sketch | ModeChoice::Dense => false,
            };
        let (mut iw, mut cw) = std::mem::take(&mut self.bufs);
        let mut scanned = Duration::ZERO;
        if let (Some(values), false) = (dense_input, dense) {
            // A sketch needs this worker's nonzeros (also for a union-rank recovery).
            let t = Instant::now();
            for (i, &v) in values.iter().enumerate() {
                if v.to_bits() << 1 != 0 {
                    self.idx.push(i as u32);
                    self.vals.push(v);
                }
            }
            scanned = t.elapsed();
            self.phases.scan += scanned;
        }
        if !dense {
            self.lazy_dense = None;
        }
        let (streams, params) = if dense && wide {
            // Two lanes per value (carry split, see `sketchreduce_codec::wide`).
            self.lazy_dense = None;
            iw.clear();
            iw.resize(2 * dim, 0);
            match dense_input {
                Some(values) => {
                    wide_words(values.iter().map(|&v| fixed.to_fixed(v)), workers, &mut iw)
                        .map_err(|e| self.codec_err(e))?
                }
                None => {
                    let mut q = vec![0i64; dim];
                    for (&i, &v) in self.idx.iter().zip(&self.vals) {
                        q[i as usize] = fixed
                            .try_to_fixed(v, i as usize)
                            .map_err(|e| self.codec_err(e))?;
                    }
                    wide_words(q.into_iter(), workers, &mut iw).map_err(|e| self.codec_err(e))?;
                }
            }
            (vec![Stream::new(Op::Add, iw)], None)
        } else if dense {
            iw.clear();
            match dense_input {
                // Straight from the dense input. The agreed exponent covers every value, so
                // the clamp in `to_fixed` never bites; NaN/Inf were refused by the caller's
                // agreement.
                Some(values) => {
                    iw.resize(values.len(), 0);
                    match self.lazy_dense {
                        // The first window now, the rest as chunks start (`fill_dense`).
                        Some(_) => {
                            let first = (self.agg.window() * self.agg.lanes()).min(values.len());
                            fixed.quantize_narrow(&values[..first], &mut iw[..first]);
                            self.lazy_dense = Some(first);
                        }
                        None => fixed.quantize_narrow(values, &mut iw),
                    }
                }
                None => {
                    iw.resize(dim, 0);
                    for (&i, &v) in self.idx.iter().zip(&self.vals) {
                        iw[i as usize] = fixed
                            .try_to_fixed(v, i as usize)
                            .map_err(|e| self.codec_err(e))?
                            as u32;
                    }
                }
            }
            (vec![Stream::new(Op::Add, iw)], None)
        } else {
            let params =
                params.ok_or_else(|| AgentError::Config("sketch without parameters".into()))?;
            if union_rank {
                // Round 1: the index of this worker's nonzeros (those that do not round to 0).
                let mut keys = std::mem::take(&mut cw);
                keys.clear();
                for (&i, &v) in self.idx.iter().zip(&self.vals) {
                    if fixed
                        .try_to_fixed(v, i as usize)
                        .map_err(|e| self.codec_err(e))?
                        != 0
                    {
                        keys.push(i);
                    }
                }
                iw.clear();
                iw.resize(params.index_words(), 0);
                sketchreduce_codec::insert_keys(&params, &keys, &mut iw)
                    .map_err(|e| self.codec_err(e))?;
                self.bufs.1 = keys;
                (vec![Stream::new(Op::Or, iw)], Some(params))
            } else if wide {
                let mut enc = Encoder::<i64>::new(&params).map_err(|e| self.codec_err(e))?;
                let mut encoding = Encoding::<i64>::new(&params).map_err(|e| self.codec_err(e))?;
                enc.encode_sparse(&self.idx, &self.vals, &fixed, &mut encoding)
                    .map_err(|e| self.codec_err(e))?;
                let (index, cells) = encoding.into_parts();
                cw.clear();
                cw.resize(2 * cells.len(), 0);
                sketchreduce_codec::split_wide(&cells, workers, &mut cw)
                    .map_err(|e| self.codec_err(e))?;
                (
                    vec![Stream::new(Op::Or, index), Stream::new(Op::Add, cw)],
                    Some(params),
                )
            } else {
                let mut enc = Encoder::<i32>::new(&params).map_err(|e| self.codec_err(e))?;
                iw.clear();
                iw.resize(params.index_words(), 0);
                cw.clear();
                cw.resize(params.cells(), 0);
                let mut encoding =
                    Encoding::<i32>::from_parts(&params, iw, cw).map_err(|e| self.codec_err(e))?;
                enc.encode_sparse(&self.idx, &self.vals, &fixed, &mut encoding)
                    .map_err(|e| self.codec_err(e))?;
                let (iw, cw) = encoding.into_parts();
                (
                    vec![Stream::new(Op::Or, iw), Stream::new(Op::Add, cw)],
                    Some(params),
                )
            }
        };
        tracing::debug!(
            tensor_id = input.tensor_id,
            expected,
            mode = if dense {
                "dense"
            } else if union_rank {
                "union-rank"
            } else {
                "sketch"
            },
            words = streams.iter().map(|s| s.words.len()).sum::<usize>(),
            "innet payload"
        );
        self.agg.start(streams)?;
        self.phases.encode = t0.elapsed().saturating_sub(scanned);
        self.enter(Instant::now(), "aggregate", input.tensor_id);
        self.phase = Phase::Payload {
            input,
            fixed,
            params,
            union_rank,
        };
        Ok(None)
    }

    /// The codec parameters for an expected union, identical on every worker. Sizing
    /// evaluates many index and layout candidates (tens of milliseconds), so results are
    /// cached; the expected union is first rounded up to 6 significant bits (≤ 1.6 % more
    /// cells), with integer arithmetic so every worker rounds alike, so that a bucket whose
    /// union moves a little between steps still hits the cache.
    fn sized(
        &mut self,
        tensor_id: u64,
        dim: usize,
        expected: u64,
        bits: u32,
    ) -> Result<CodecParams, AgentError> {
        let expected = round_up_significant(expected, 6);
        let key = (tensor_id, dim as u64, expected, bits);
        if let Some(p) = self.sizing_cache.get(&key) {
            return Ok(p.clone());
        }
        let sizing = Sizing {
            expected_union_nnz: expected,
            failure_prob: self.cfg.failure_prob,
            index: self.cfg.index,
            hashes: self.cfg.hashes,
            cells: self.cfg.cells,
            signs: false,
            ..Sizing::new(expected)
        };
        // Wide values: 64-bit cells, known modulo 2^bits after the carry split.
        let lane = if bits > 32 {
            LaneWidth::W64
        } else {
            LaneWidth::W32
        };
        let p = CodecParams::sized(self.cfg.seed, tensor_id, dim as u64, lane, &sizing)
            .and_then(|p| p.with_value_bits(bits))
            .map_err(|e| self.codec_err(e))?;
        if self.sizing_cache.len() >= MAX_HISTORY {
            self.sizing_cache.clear();
        }
        self.sizing_cache.insert(key, p.clone());
        Ok(p)
    }

    fn remember_union(&mut self, tensor_id: u64, nonzeros: u64) {
        if self.prev_union.len() >= MAX_HISTORY && !self.prev_union.contains_key(&tensor_id) {
            self.prev_union.clear();
        }
        self.prev_union.insert(tensor_id, nonzeros);
    }

    fn after_payload(
        &mut self,
        input: Input,
        fixed: FixedPoint,
        params: Option<CodecParams>,
        union_rank: bool,
    ) -> Result<Option<Reduced>, AgentError> {
        let mut streams = self.agg.take_streams();
        let workers = self.agg.world() as u32;
        let wide = fixed.bits() > 32;
        let Some(params) = params else {
            // Dense: the aggregate is the sum itself.
            let lanes = std::mem::take(&mut streams[0].words);
            if wide {
                let sums =
                    join_sums(&lanes, workers, fixed.bits()).map_err(|e| self.codec_err(e))?;
                let nz = sums.iter().filter(|&&w| w != 0).count() as u64;
                self.remember_union(input.tensor_id, nz);
                return Ok(Some(Reduced {
                    mode: PayloadMode::Dense,
                    wide: sums,
                    ..self.empty(&input, Some(fixed))
                }));
            }
            let nz = lanes.iter().filter(|&&w| w != 0).count() as u64;
            self.remember_union(input.tensor_id, nz);
            return Ok(Some(Reduced {
                mode: PayloadMode::Dense,
                lanes,
                ..self.empty(&input, Some(fixed))
            }));
        };
        if union_rank {
            let iw = std::mem::take(&mut streams[0].words);
            let t = Instant::now();
            let mut keys = Vec::new();
            let r = sketchreduce_codec::candidates_into(&params, &iw, &mut keys)
                .map_err(|e| self.codec_err(e))
                .and_then(|()| {
                    self.start_rank_round(input, fixed, &params, keys, PayloadMode::UnionRank)
                });
            self.phases.decode = t.elapsed();
            self.bufs.0 = iw;
            return r.map(|()| None);
        }
        let cw = std::mem::take(&mut streams[1].words);
        let iw = std::mem::take(&mut streams[0].words);
        let t_dec = Instant::now();
        let decoded = if wide {
            let mut cells = vec![0u64; cw.len() / 2];
            sketchreduce_codec::join_wide(&cw, workers, &mut cells)
                .map_err(|e| self.codec_err(e))?;
            self.decoder64
                .decode(&params, &iw, &cells)
                .map(|d| (d.keys.to_vec(), d.sums.to_vec(), d.nonzeros()))
        } else {
            self.decoder
                .decode(&params, &iw, &cw)
                .map(|d| (d.keys.to_vec(), d.sums.to_vec(), d.nonzeros()))
        };
        let res = match decoded {
            Ok((keys, sums, nz)) => {
                let nz = nz as u64;
                self.phases.decode = t_dec.elapsed();
                self.remember_union(input.tensor_id, nz);
                Ok(Some(Reduced {
                    mode: PayloadMode::Sketch,
                    keys,
                    sums,
                    cells: params.cells(),
                    ..self.empty(&input, Some(fixed))
                }))
            }
            Err(e @ (CodecError::Stalled { .. } | CodecError::Saturated { .. })) => {
                self.decode_retries += 1;
                tracing::warn!(
                    job = self.agg.job(),
                    tensor_id = input.tensor_id,
                    error = %e,
                    "sketch decode failed; recovering with a union-rank round (one lane per candidate)"
                );
                // A saturated decode stopped listing candidates early: list them all.
                let mut keys = Vec::new();
                sketchreduce_codec::candidates_into(&params, &iw, &mut keys)
                    .map_err(|e| self.codec_err(e))?;
                let r = self.start_rank_round(input, fixed, &params, keys, PayloadMode::Sketch);
                self.phases.decode = t_dec.elapsed();
                r.map(|()| None)
            }
            Err(e) => Err(self.codec_err(e)),
        };
        self.bufs = (iw, cw);
        res
    }

    /// Starts a round with one lane per candidate of the aggregated index (`keys`,
    /// increasing): this worker's fixed-point value at its key's rank, 0 elsewhere. The ADD
    /// aggregate is then the exact sum at every candidate, without peeling.
    fn start_rank_round(
        &mut self,
        input: Input,
        fixed: FixedPoint,
        params: &CodecParams,
        keys: Vec<u32>,
        mode: PayloadMode,
    ) -> Result<(), AgentError> {
        let workers = self.agg.world() as u32;
        let wide = fixed.bits() > 32;
        let mut q = vec![0i64; keys.len()];
        // Own positions in increasing order (the usual case: a scan of a dense input) are
        // ranked by one merge pass over the candidates, others by binary search.
        let sorted = self.idx.windows(2).all(|w| w[0] < w[1]);
        let mut at = 0usize;
        for (&i, &v) in self.idx.iter().zip(&self.vals) {
            let x = fixed.to_fixed(v);
            if x == 0 {
                continue;
            }
            let r = if sorted {
                while at < keys.len() && keys[at] < i {
                    at += 1;
                }
                (keys.get(at) == Some(&i)).then_some(at)
            } else {
                sketchreduce_codec::candidate_rank(&keys, i)
            };
            let r = r.ok_or_else(|| {
                AgentError::Codec(format!(
                    "job {}: own nonzero {i} missing from the aggregated index",
                    self.agg.job()
                ))
            })?;
            q[r] = q[r].wrapping_add(x);
        }
        // One lane per candidate (two for wide values).
        let words = if wide {
            let mut w = vec![0u32; 2 * q.len()];
            wide_words(q.into_iter(), workers, &mut w).map_err(|e| self.codec_err(e))?;
            w
        } else {
            q.iter().map(|&x| x as u32).collect()
        };
        self.agg.start(vec![Stream::new(Op::Add, words)])?;
        let name = if mode == PayloadMode::UnionRank {
            "aggregate"
        } else {
            "recovery"
        };
        self.enter(Instant::now(), name, input.tensor_id);
        let cells = if mode == PayloadMode::UnionRank {
            0
        } else {
            params.cells()
        };
        self.phase = Phase::Recover {
            input,
            fixed,
            cells,
            keys,
            mode,
        };
        Ok(())
    }

    fn after_recover(
        &mut self,
        input: Input,
        fixed: FixedPoint,
        cells: usize,
        keys: Vec<u32>,
        mode: PayloadMode,
    ) -> Result<Option<Reduced>, AgentError> {
        let streams = self.agg.take_streams();
        let sums: Vec<i64> = if fixed.bits() > 32 {
            join_sums(&streams[0].words, self.agg.world() as u32, fixed.bits())
                .map_err(|e| self.codec_err(e))?
        } else {
            streams[0].words.iter().map(|&c| c as i32 as i64).collect()
        };
        let nz = sums.iter().filter(|&&s| s != 0).count() as u64;
        self.remember_union(input.tensor_id, nz);
        Ok(Some(Reduced {
            mode,
            keys,
            sums,
            decode_retries: (mode == PayloadMode::Sketch) as u32,
            cells,
            ..self.empty(&input, Some(fixed))
        }))
    }

    /// Feeds a datagram.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        self.agg.handle_datagram(now, datagram);
        self.advance(now);
    }

    /// Quantizes the dense lanes of every started chunk (and one window ahead) from
    /// `values`, for an operation started with [`Self::start_agreed_dense_lazy`]; a no-op
    /// otherwise.
    pub fn fill_dense(&mut self, values: &[f32]) {
        let (Some(done), Phase::Payload { fixed, .. }) = (self.lazy_dense, &self.phase) else {
            return;
        };
        let fixed = *fixed;
        let lanes = self.agg.lanes();
        let want =
            ((self.agg.started_chunks() as usize + self.agg.window()) * lanes).min(values.len());
        if want <= done {
            return;
        }
        if let Some(words) = self.agg.stream_words_mut(0) {
            if words.len() == values.len() {
                fixed.quantize_narrow(&values[done..want], &mut words[done..want]);
                self.lazy_dense = Some(want);
            }
        }
    }

    /// Whether every started chunk of a lazily filled dense stream has its words.
    fn lazy_ready(&self) -> bool {
        match (self.lazy_dense, &self.phase) {
            (Some(done), Phase::Payload { input, .. }) => {
                let need = (self.agg.started_chunks() as usize * self.agg.lanes()).min(input.dim);
                done >= need
            }
            _ => true,
        }
    }

    /// Hands back the lane buffer of a dense result once the caller is done with it, so the
    /// next operation reuses its memory instead of allocating and faulting in a new one.
    pub fn recycle(&mut self, lanes: Vec<u32>) {
        if self.bufs.0.capacity() < lanes.capacity() {
            self.bufs.0 = lanes;
        }
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if !self.lazy_ready() {
            self.agg_fail_lazy();
            return None;
        }
        let t = self.agg.poll_transmit(now, buf);
        if t.is_none() {
            self.advance(now);
            // A phase change may have queued new chunks.
            if self.is_busy() {
                return self.agg.poll_transmit(now, buf);
            }
        }
        t
    }

    /// Next timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.agg.poll_timeout()
    }

    /// Largest datagram emitted.
    pub fn max_datagram(&self) -> usize {
        self.agg.max_datagram()
    }

    fn agg_fail_lazy(&mut self) {
        self.lazy_dense = None;
        self.finish(Err(AgentError::Config(
            "dense input not supplied: an operation started with start_agreed_dense_lazy needs fill_dense before every poll_transmit".into(),
        )));
    }

    /// See [`Aggregation::keepalive_probe`]; `None` while an all-reduce runs.
    pub fn keepalive_probe(&self, buf: &mut [u8]) -> Option<Transmit> {
        if self.is_busy() {
            return None;
        }
        self.agg.keepalive_probe(buf)
    }
}

impl Endpoint for InnetCore {
    fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        InnetCore::handle_datagram(self, now, datagram)
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        InnetCore::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        InnetCore::poll_timeout(self)
    }
    fn peer_gone(&mut self, now: Instant, rank: u8) {
        self.agg.peer_gone(now, rank);
        self.advance(now);
    }
}

#[cfg(test)]
mod tests {
    use super::round_up_significant;

    #[test]
    fn rounding_up_keeps_six_significant_bits() {
        assert_eq!(round_up_significant(0, 6), 0);
        assert_eq!(round_up_significant(63, 6), 63);
        assert_eq!(round_up_significant(64, 6), 64);
        assert_eq!(round_up_significant(65, 6), 66);
        assert_eq!(round_up_significant(160_001, 6), 163_840);
        for v in [1u64, 1000, 123_457, 4_000_000, u64::MAX / 3] {
            let r = round_up_significant(v, 6);
            assert!(r >= v && (r - v) as f64 <= v as f64 / 32.0, "{v} -> {r}");
        }
    }
}
