//! The reduction itself, shared by every algorithm:
//!
//! 1. every rank reports (operation number, collective, shape, max exponent, nonzeros, …: a
//!    [`crate::meta::Meta`]) to every other rank (a tiny ring all-gather); disagreements and
//!    non-finite inputs become errors on *every* rank, naming the rank;
//! 2. the global exponent `E` is the MAX, and [`FixedPoint::new`]`(E, world, lane)` is the
//!    conversion — the same one the in-network path uses;
//! 3. the chosen algorithm sums the integers exactly (wrapping lanes);
//! 4. [`finish`] turns each integer sum into a float: `to_float(sum)`, divided by the world
//!    size (as `f32`) for [`ReduceOp::Avg`].
//!
//! Since steps 2 and 4 are common and step 3 is exact, all algorithms give bit-identical
//! results. [`reference_all_reduce`] is the same computation in one process.
//!
//! [`ReduceOp::Min`] and [`ReduceOp::Max`] skip the fixed point: the ranks compare the floats
//! themselves (as order keys), which is exact. They run on the ring and the all-gather only;
//! the switch can only add, so an `innet` request for them is refused on every rank.

use crate::buf::DenseBuf;
use crate::config::{Algo, Config, Precision};
use crate::error::{CollectiveError, Result};
use crate::innet::InnetPath;
use crate::lanes::{from_order_key, order_key, ring_lanes};
use crate::meta::{verdict, Agreed, Meta, Rules};
use crate::net::Ring;
use crate::sparse::SparseVec;
use sketchreduce_codec::{max_exponent, FixedPoint, LaneWidth};
use std::time::{Duration, Instant};

/// How the ranks' values are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Σ over ranks (exact fixed-point sum, see the crate docs).
    Sum,
    /// Σ over ranks / world size.
    Avg,
    /// Smallest value over ranks (exact; −0.0 counts as +0.0). Ring and all-gather only.
    Min,
    /// Largest value over ranks (exact; −0.0 counts as +0.0). Ring and all-gather only.
    Max,
}

impl ReduceOp {
    pub(crate) fn code(self) -> u8 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
            ReduceOp::Min => 2,
            ReduceOp::Max => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Min, ReduceOp::Max]
            .into_iter()
            .find(|o| o.code() == c)
    }

    /// Min or Max: compared as floats, not summed in fixed point.
    pub fn is_order(self) -> bool {
        matches!(self, ReduceOp::Min | ReduceOp::Max)
    }

    /// The combine of two order keys (see [`crate::lanes::order_key`]).
    pub(crate) fn pick(self) -> fn(i32, i32) -> i32 {
        match self {
            ReduceOp::Min => std::cmp::min,
            _ => std::cmp::max,
        }
    }
}

/// Which collective an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collective {
    /// Every rank gets the reduction of every rank's vector.
    AllReduce,
    /// Rank r gets the reduction of chunk r ([`crate::chunk_range`]).
    ReduceScatter,
    /// Every rank gets the source rank's bytes.
    Broadcast,
    /// Every rank gets every rank's bytes.
    AllGather,
}

impl Collective {
    /// Name used in errors and reports.
    pub fn name(self) -> &'static str {
        match self {
            Collective::AllReduce => "all-reduce",
            Collective::ReduceScatter => "reduce-scatter",
            Collective::Broadcast => "broadcast",
            Collective::AllGather => "all-gather",
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        [
            Collective::AllReduce,
            Collective::ReduceScatter,
            Collective::Broadcast,
            Collective::AllGather,
        ]
        .into_iter()
        .find(|k| *k as u8 == c)
    }
}

/// What one operation did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpInfo {
    /// The collective.
    pub collective: Collective,
    /// The algorithm that ran (resolved from [`Algo::Auto`]; [`Algo::Ring`] for broadcast,
    /// all-gather and reduce-scatter, which run on the ring of TCP connections).
    pub algo: Algo,
    /// Bytes this rank sent to peers (TCP frames, or the agent's datagrams for innet).
    pub bytes_sent: u64,
    /// Bytes this rank received from peers.
    pub bytes_recv: u64,
    /// Wall time of the whole operation on this rank.
    pub elapsed: Duration,
    /// Σ over ranks of nonzero values / length: the density [`Algo::Auto`] looks at.
    pub aggregate_density: f64,
    /// The agreed global exponent (sums only).
    pub exponent: u32,
    /// Where the time went on this rank.
    pub phases: OpPhases,
    /// Width of the fixed-point values (32, or `64 − ⌈log2 n⌉` wide; 0 when none were used).
    pub value_bits: u32,
    /// Bound of the rounding error of each result element against the exact real sum of the
    /// inputs, before the final conversion to `f32` (`n · 2^-(s+1)` for scale `2^s`; 0 when
    /// no fixed point was used). The result is that sum rounded once to `f32`.
    pub error_bound: f64,
}

/// Where the time of one operation went on this rank (wall time; zero for phases an
/// algorithm does not have). Also emitted as `tracing` events (debug) per operation, and the
/// in-network phases as spans by the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpPhases {
    /// The per-operation header exchange among ranks (shapes, exponents, nonzero counts).
    pub agree: Duration,
    /// Finding this rank's nonzeros (in-network path).
    pub scan: Duration,
    /// Quantizing and encoding (sketch or dense lanes) before anything is sent.
    pub encode: Duration,
    /// Moving the data: the ring's or all-gather's transfers, or sending through the switch
    /// and waiting for every aggregated chunk.
    pub aggregate: Duration,
    /// Decoding the sketch (in-network).
    pub decode: Duration,
    /// The union-rank round after a stalled decode (in-network).
    pub recovery: Duration,
    /// Turning the integer sums back into floats (and averaging).
    pub convert: Duration,
    /// How the in-network payload travelled ("sketch", "dense", "empty"); `None` otherwise.
    pub innet_mode: Option<&'static str>,
}

/// Data handed to a reduction.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A dense vector (owned, or the blocking caller's own buffer: see [`DenseBuf`]).
    Dense(DenseBuf),
    /// A sparse vector of blocks.
    Sparse(SparseVec),
    /// Output only (of [`crate::Communicator::start_fixed`]): the exact integer sums
    /// (sign-extended lanes) and the agreed fixed point.
    Sums(Vec<i64>, FixedPoint),
}

/// Converts an exact integer sum into the result float: the one rounding every algorithm
/// shares. ([`ReduceOp::Min`]/[`ReduceOp::Max`] never go through fixed point; they are
/// converted as `Sum` here.)
#[inline]
pub fn finish(fp: &FixedPoint, sum: i64, op: ReduceOp, world: usize) -> f32 {
    let v = fp.to_float(fp.lane().wrap(sum));
    match op {
        ReduceOp::Avg => v / world as f32,
        _ => v,
    }
}

/// Median biased exponent (see [`sketchreduce_codec::exponent_of`]) of the nonzero values
/// (0 if there are none): a rank's "typical" magnitude, which picks the value width. Large
/// inputs are sampled at a fixed stride (every rank computes its own; the ranks then agree on
/// the smallest), so this costs a small fraction of a pass over the data.
pub fn median_exponent(values: &[f32]) -> u32 {
    const SAMPLES: usize = 1 << 16;
    let stride = (values.len() / SAMPLES).max(1);
    let mut hist = [0u32; sketchreduce_codec::fixed::MAX_FINITE_EXPONENT as usize + 2];
    let mut n = 0u32;
    for &v in values.iter().step_by(stride) {
        if let Some(e) = sketchreduce_codec::exponent_of(v) {
            if e > 0 {
                hist[e as usize] += 1;
                n += 1;
            }
        }
    }
    if n == 0 && stride > 1 {
        // A sparse input the stride missed: look at every value.
        return median_exponent_exact(values);
    }
    median_of(&hist, n)
}

fn median_exponent_exact(values: &[f32]) -> u32 {
    let mut hist = [0u32; sketchreduce_codec::fixed::MAX_FINITE_EXPONENT as usize + 2];
    let mut n = 0u32;
    for &v in values {
        if let Some(e) = sketchreduce_codec::exponent_of(v) {
            if e > 0 {
                hist[e as usize] += 1;
                n += 1;
            }
        }
    }
    median_of(&hist, n)
}

fn median_of(hist: &[u32], n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    let mut seen = 0u32;
    for (e, &c) in hist.iter().enumerate() {
        seen += c;
        if 2 * seen >= n {
            return e as u32;
        }
    }
    0
}

/// The fixed point every rank uses for an operation: built from the agreed largest exponent
/// `e_max`, the smallest of the ranks' median exponents `e_med_min`, the number of ranks and
/// the [`Precision`] policy. [`Precision::Auto`] keeps 32-bit values while the typical value of
/// every rank keeps [`AUTO_TYPICAL_BITS`] significant bits, otherwise it goes wide.
pub fn agreed_fixed_point(
    e_max: u32,
    e_med_min: u32,
    world: usize,
    precision: Precision,
) -> Result<FixedPoint> {
    let n = world.max(1) as u32;
    let bits = match precision {
        Precision::Auto => {
            // The codec's rule applied to the typical (median) value instead of the smallest
            // one: the smallest values of real gradients always span tens of bits.
            let c = n.next_power_of_two().trailing_zeros();
            let spread = e_max.saturating_sub(e_med_min.max(1));
            if e_max == 0 || spread + AUTO_TYPICAL_BITS + c <= 30 {
                32
            } else {
                64 - c
            }
        }
        p => sketchreduce_codec::choose_value_bits(e_max, e_max, n, p)?,
    };
    Ok(FixedPoint::with_bits(e_max, n, bits)?)
}

/// Significant bits [`Precision::Auto`] keeps for each rank's median nonzero value with
/// 32-bit values; below that it switches to wide values.
pub const AUTO_TYPICAL_BITS: u32 = 16;

/// The fixed point [`agreed_fixed_point`] gives for these inputs (one per rank), as the
/// ranks would agree on it.
pub fn fixed_point_for(inputs: &[Vec<f32>], precision: Precision) -> Result<FixedPoint> {
    let mut e_max = 0;
    let mut e_med_min = 0u32;
    for v in inputs {
        e_max = e_max.max(max_exponent(v)?);
        let m = median_exponent(v);
        if m > 0 && (e_med_min == 0 || m < e_med_min) {
            e_med_min = m;
        }
    }
    agreed_fixed_point(e_max, e_med_min, inputs.len(), precision)
}

/// The exact result every algorithm must produce, computed in one process from every rank's
/// dense input (sums: the global exponent, one [`FixedPoint`] for `inputs.len()` workers,
/// integer sums, [`finish`]; min/max: the extreme value, −0.0 as +0.0).
pub fn reference_all_reduce(
    inputs: &[Vec<f32>],
    lane: LaneWidth,
    op: ReduceOp,
) -> Result<Vec<f32>> {
    let precision = match lane {
        LaneWidth::W32 => Precision::Narrow,
        LaneWidth::W64 => Precision::Wide,
    };
    reference_all_reduce_with(inputs, precision, op)
}

/// [`reference_all_reduce`] under a [`Precision`] policy, as the communicator applies it
/// (see [`fixed_point_for`]).
pub fn reference_all_reduce_with(
    inputs: &[Vec<f32>],
    precision: Precision,
    op: ReduceOp,
) -> Result<Vec<f32>> {
    let n = inputs.len();
    let d = inputs.first().map_or(0, |v| v.len());
    if inputs.iter().any(|v| v.len() != d) {
        return Err(CollectiveError::Mismatch(
            "inputs of different lengths".into(),
        ));
    }
    let mut e = 0;
    for v in inputs {
        e = e.max(max_exponent(v)?);
    }
    if op.is_order() {
        let pick = op.pick();
        return Ok((0..d)
            .map(|i| {
                from_order_key(
                    inputs
                        .iter()
                        .map(|v| order_key(v[i]))
                        .reduce(pick)
                        .unwrap_or(0),
                )
            })
            .collect());
    }
    let _ = e;
    let fp = fixed_point_for(inputs, precision)?;
    let mut sums = vec![0i64; d];
    for v in inputs {
        for (s, &x) in sums.iter_mut().zip(v) {
            *s = s.wrapping_add(fp.to_fixed(x));
        }
    }
    Ok(sums.into_iter().map(|s| finish(&fp, s, op, n)).collect())
}

pub(crate) fn algo_code(a: Algo) -> u8 {
    a.code()
}

/// The in-network path's tensor id for an operation: the caller's stable key when it gave
/// one, else one per shape (so the agent's sizing history of a tensor of the same shape
/// applies, and the history holds one entry per shape instead of one per call). The two
/// kinds are hashed apart so a key cannot alias a shape.
pub(crate) fn tensor_id(key: Option<u64>, len: usize, block: usize, sparse: bool) -> u64 {
    let mut b = Vec::with_capacity(32);
    match key {
        Some(k) => {
            b.extend_from_slice(b"key");
            b.extend_from_slice(&k.to_le_bytes());
        }
        None => {
            b.extend_from_slice(b"shape");
            for v in [len as u64, block as u64, sparse as u64] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    crate::config::fnv1a(&b)
}

/// One operation as submitted to the communicator thread.
pub(crate) struct OpRequest {
    pub collective: Collective,
    pub data: Data,
    pub op: ReduceOp,
    pub algo: Algo,
    /// Return the integer sums (all-reduce `Sum` of a dense buffer only).
    pub raw: bool,
    /// Broadcast source rank.
    pub src: usize,
    /// Stable key (see [`tensor_id`]).
    pub key: Option<u64>,
    /// Hash every rank must agree on (0: none), and what it covers.
    pub check: (u64, &'static str),
    /// Bits OR-combined over ranks, returned in [`OpResult::used`].
    pub used: Vec<u8>,
    /// An all-gather whose ranks must all send the same length.
    pub equal_len: bool,
    /// Why this rank cannot take part (it still joins the header exchange).
    pub problem: Option<String>,
}

impl OpRequest {
    /// An all-reduce of `payload` with defaults for everything else.
    pub fn all_reduce(payload: Payload, op: ReduceOp, algo: Algo) -> Self {
        OpRequest {
            collective: Collective::AllReduce,
            data: Data::Reduce(payload),
            op,
            algo,
            raw: false,
            src: 0,
            key: None,
            check: (0, ""),
            used: Vec::new(),
            equal_len: false,
            problem: None,
        }
    }

    /// A collective on raw bytes (broadcast, all-gather).
    pub fn bytes(collective: Collective, bytes: Vec<u8>, src: usize) -> Self {
        OpRequest {
            collective,
            data: Data::Bytes(bytes),
            src,
            ..OpRequest::all_reduce(Payload::Dense(Vec::new().into()), ReduceOp::Sum, Algo::Ring)
        }
    }
}

/// Input of an operation.
pub(crate) enum Data {
    /// Floats to reduce.
    Reduce(Payload),
    /// Raw bytes to broadcast or gather.
    Bytes(Vec<u8>),
}

/// Output of an operation.
pub(crate) enum Output {
    /// A reduction's result.
    Reduced(Payload),
    /// A broadcast's bytes.
    Bytes(Vec<u8>),
    /// Every rank's bytes.
    Gathered(Vec<Vec<u8>>),
}

/// What the communicator thread hands back.
pub(crate) struct OpResult {
    pub out: Output,
    pub info: OpInfo,
    /// OR over ranks of [`OpRequest::used`].
    pub used: Vec<u8>,
}

/// State one rank keeps across operations.
pub(crate) struct Engine {
    pub cfg: Config,
    pub ring: Ring,
    pub innet: Option<Box<dyn InnetPath>>,
    pub seq: u64,
    /// The last error was a refusal every rank agreed on (the ring is still consistent).
    pub refused: bool,
    /// The link [`Algo::Auto`] prices algorithms on (rank 0's measurement).
    pub link: crate::cost::LinkModel,
}

/// How long a dropped communicator waits for the other ranks' before releasing the job on
/// the switch (a slower rank may still be fetching its last results).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

impl Engine {
    /// [`Algo::Auto`]'s choice: the cheapest algorithm in the cost model (see
    /// [`crate::cost`]); every input is agreed among the ranks, so every rank picks the same.
    fn auto_algo(
        &self,
        op: ReduceOp,
        len: usize,
        block: usize,
        sparse: bool,
        nnz: u64,
        bits: u32,
    ) -> Algo {
        let crossover = if block >= crate::config::AUTO_ROW_BLOCK {
            self.cfg.crossover_rows
        } else {
            self.cfg.crossover
        };
        // All-gather CPU per value, calibrated so that on a free link the model switches to
        // the ring at the measured crossover density (see `crate::cost`).
        let gather_ns = crate::cost::RING_NS_PER_ELEM / crossover.max(1e-6);
        let shape = crate::cost::OpShape {
            world: self.cfg.world_size,
            elems: len * block,
            nnz,
            block,
            value_bytes: if bits > 32 { 8 } else { 4 },
            sparse,
        };
        let innet = self.cfg.auto_innet && self.innet.is_some() && !op.is_order();
        let (ring, gather, innet) = crate::cost::estimate(&self.link, &shape, gather_ns, innet);
        tracing::trace!(ring, gather, ?innet, "auto cost model (seconds)");
        match innet {
            Some(i) if i <= ring && i <= gather => Algo::Innet,
            _ if gather < ring => Algo::AllGather,
            _ => Algo::Ring,
        }
    }

    /// While idle: keeps the in-network path's registration alive.
    pub(crate) fn keepalive(&mut self) {
        if let Some(p) = self.innet.as_deref_mut() {
            p.keepalive();
        }
    }

    /// At the end: a short barrier with the other ranks (when the ring is healthy), then the
    /// in-network path releases its registration.
    pub(crate) fn shutdown(&mut self, healthy: bool) {
        let Some(p) = self.innet.as_deref_mut() else {
            return;
        };
        if healthy && self.cfg.world_size > 1 && !self.ring.shutdown_barrier(SHUTDOWN_WAIT) {
            tracing::debug!("not every rank left within the shutdown wait");
        }
        p.shutdown();
    }

    /// Sends this rank's header to every rank and draws the common verdict.
    pub(crate) fn agree(&mut self, me: Meta, rules: Rules) -> Result<Agreed> {
        let n = self.cfg.world_size;
        let metas = if n > 1 {
            let blobs = self.ring.all_gather(
                me.encode(),
                |_| Meta::MAX_ENCODED,
                "exchange of operation headers",
            )?;
            let mut m = Vec::with_capacity(n);
            for (r, b) in blobs.iter().enumerate() {
                m.push(
                    Meta::decode(b).ok_or_else(|| match crate::net::parse_bye(b) {
                        Some(_) => CollectiveError::PeerLost {
                            rank: self.cfg.rank,
                            peer: r,
                            during: "exchange of operation headers".into(),
                            reason: "the rank left the job (its communicator was dropped)".into(),
                        },
                        None => {
                            CollectiveError::Mismatch(format!("rank {r} sent a malformed header"))
                        }
                    })?,
                );
            }
            m
        } else {
            vec![me]
        };
        verdict(&metas, rules).map_err(|r| {
            self.refused = !r.out_of_step;
            r.error
        })
    }

    /// Runs one operation on this rank.
    pub fn execute(&mut self, req: OpRequest) -> Result<OpResult> {
        self.refused = false;
        match req.collective {
            Collective::AllReduce => self.run(req),
            Collective::ReduceScatter => self.reduce_scatter(req),
            Collective::Broadcast | Collective::AllGather => self.bytes_op(req),
        }
    }

    /// Header exchange of a float operation (every rank with the same length); returns the
    /// verdict and this rank's (length, block, sparse).
    pub(crate) fn agree_floats(
        &mut self,
        req: &OpRequest,
        payload: &Payload,
    ) -> Result<(Agreed, usize, usize, bool)> {
        let (me, len, block, sparse) = self.float_meta(req, payload);
        let rules = Rules {
            same_len: true,
            check_what: req.check.1,
            world: self.cfg.world_size,
        };
        Ok((self.agree(me, rules)?, len, block, sparse))
    }

    /// Header of a float operation: shape, exponent (or the first non-finite element).
    fn float_meta(&self, req: &OpRequest, payload: &Payload) -> (Meta, usize, usize, bool) {
        let mut problem = req.problem.clone();
        let (values, len, block, nnz, sparse): (&[f32], usize, usize, usize, bool) = match payload {
            Payload::Dense(v) => (
                v,
                v.len(),
                1,
                v.iter().filter(|&&x| x != 0.0).count(),
                false,
            ),
            Payload::Sparse(s) => {
                if let Err(e) = s.validate() {
                    problem.get_or_insert(e.to_string());
                }
                (&s.values, s.len, s.block, s.nnz(), true)
            }
            Payload::Sums(..) => {
                problem.get_or_insert("integer sums are an output, not an input".into());
                (&[], 0, 1, 0, false)
            }
        };
        let (exponent, bad) = match max_exponent(values) {
            Ok(e) => (e, 0),
            Err(sketchreduce_codec::CodecError::NonFinite { position }) => {
                // Name the element of the dense form, which every rank can locate.
                let bad = match payload {
                    Payload::Sparse(s) if s.block > 0 => {
                        let blk = s.indices.get(position / s.block).copied().unwrap_or(0);
                        blk * s.block as u64 + (position % s.block) as u64
                    }
                    _ => position as u64,
                };
                (u32::MAX, bad)
            }
            Err(e) => {
                problem.get_or_insert(e.to_string());
                (0, 0)
            }
        };
        let me = Meta {
            seq: self.seq,
            collective: req.collective as u8,
            op: req.op.code(),
            algo: algo_code(req.algo),
            sparse: sparse as u8,
            len: len as u64,
            block: block as u64,
            nnz: nnz as u64,
            exponent,
            // Only sums use it (value width); order statistics and bytes skip the histogram.
            e_med: if req.op.is_order() || exponent == u32::MAX {
                0
            } else {
                median_exponent(values)
            },
            bad,
            key: req.key,
            check: req.check.0,
            used: req.used.clone(),
            problem,
            ..Meta::default()
        };
        (me, len, block, sparse)
    }

    /// Runs one all-reduce on this rank.
    fn run(&mut self, mut req: OpRequest) -> Result<OpResult> {
        let t0 = Instant::now();
        let (sent0, recv0) = (self.ring.bytes_sent, self.ring.bytes_recv);
        let n = self.cfg.world_size;
        self.seq += 1;
        let payload = match std::mem::replace(&mut req.data, Data::Bytes(Vec::new())) {
            Data::Reduce(p) => p,
            Data::Bytes(_) => {
                req.problem
                    .get_or_insert("an all-reduce needs floats".into());
                Payload::Dense(Vec::new().into())
            }
        };
        let (op, algo, raw) = (req.op, req.algo, req.raw);
        let t_agree = Instant::now();
        let (agreed, len, block, sparse) = self.agree_floats(&req, &payload)?;
        let mut phases = OpPhases {
            agree: t_agree.elapsed(),
            ..Default::default()
        };
        let t_data = Instant::now();
        let e = agreed.exponent;
        let elems = (len * block).max(1) as f64;
        let density = agreed.total_nnz as f64 / elems;
        if op.is_order() && (algo == Algo::Innet || raw) {
            self.refused = true;
            return Err(CollectiveError::Input(format!(
                "{op:?} is not supported {}: the switch can only add (use ring, allgather or auto)",
                if raw {
                    "with integer sums"
                } else {
                    "in-network"
                }
            )));
        }
        let fp = agreed_fixed_point(e, agreed.e_med_min, n, self.cfg.codec.precision)?;
        let resolved = match algo {
            Algo::Auto => self.auto_algo(op, len, block, sparse, agreed.total_nnz, fp.bits()),
            a => a,
        };
        let tensor_id = tensor_id(req.key, len, block, sparse);
        let mut innet_bytes = (0, 0);
        let out = match (resolved, payload) {
            (Algo::Ring, Payload::Dense(mut v)) if op.is_order() => {
                self.ring_order(op, &mut v)?;
                Payload::Dense(v)
            }
            (Algo::Ring, Payload::Sparse(s)) if op.is_order() => {
                let mut d = s.to_dense();
                self.ring_order(op, &mut d)?;
                Payload::Sparse(SparseVec::from_dense(&d, s.block)?)
            }
            (Algo::AllGather, Payload::Dense(mut v)) if op.is_order() => {
                let s = SparseVec::from_dense(&v, 1)?;
                let (idx, keys) = self.all_gather_order(op, &s, &agreed.nnz)?;
                v.iter_mut().for_each(|x| *x = 0.0);
                for (&i, &k) in idx.iter().zip(&keys) {
                    v[i as usize] = from_order_key(k as i32);
                }
                Payload::Dense(v)
            }
            (Algo::AllGather, Payload::Sparse(s)) if op.is_order() => {
                let (indices, keys) = self.all_gather_order(op, &s, &agreed.nnz)?;
                Payload::Sparse(SparseVec {
                    len: s.len,
                    block: s.block,
                    indices,
                    values: keys.iter().map(|&k| from_order_key(k as i32)).collect(),
                })
            }
            (Algo::Ring, Payload::Dense(mut v)) => {
                let sums = self.ring_sums(&fp, &v)?;
                if raw {
                    Payload::Sums(sums, fp)
                } else {
                    v.iter_mut()
                        .zip(&sums)
                        .for_each(|(o, &q)| *o = finish(&fp, q, op, n));
                    Payload::Dense(v)
                }
            }
            (Algo::Ring, Payload::Sparse(s)) => {
                let mut d = s.to_dense();
                let sums = self.ring_sums(&fp, &d)?;
                d.iter_mut()
                    .zip(&sums)
                    .for_each(|(o, &q)| *o = finish(&fp, q, op, n));
                Payload::Sparse(SparseVec::from_dense(&d, s.block)?)
            }
            (Algo::AllGather, Payload::Dense(mut v)) => {
                let s = SparseVec::from_dense(&v, 1)?;
                let (idx, sums) = self.all_gather_pairs(&fp, &s, &agreed.nnz)?;
                if raw {
                    let mut dense = vec![0i64; v.len()];
                    idx.iter()
                        .zip(&sums)
                        .for_each(|(&i, &q)| dense[i as usize] = q);
                    Payload::Sums(dense, fp)
                } else {
                    v.iter_mut().for_each(|x| *x = 0.0);
                    for (k, &i) in idx.iter().enumerate() {
                        v[i as usize] = finish(&fp, sums[k], op, n);
                    }
                    Payload::Dense(v)
                }
            }
            (Algo::AllGather, Payload::Sparse(s)) => {
                let (indices, sums) = self.all_gather_pairs(&fp, &s, &agreed.nnz)?;
                let values = sums.iter().map(|&q| finish(&fp, q, op, n)).collect();
                Payload::Sparse(SparseVec {
                    len: s.len,
                    block: s.block,
                    indices,
                    values,
                })
            }
            (Algo::Innet, payload) => {
                let path = self.innet.as_deref_mut().ok_or_else(|| {
                    CollectiveError::Config(
                        "algo innet requested but no switch is configured".into(),
                    )
                })?;
                let before = path.bytes();
                let (out, p) = crate::innet::run(
                    path,
                    tensor_id,
                    fp,
                    payload,
                    op,
                    n,
                    raw,
                    agreed.total_nnz,
                    agreed.max_nnz,
                )?;
                phases = OpPhases {
                    agree: phases.agree,
                    ..p
                };
                let after = path.bytes();
                innet_bytes = (after.0 - before.0, after.1 - before.1);
                out
            }
            (Algo::Auto, _) | (_, Payload::Sums(..)) => unreachable!("resolved or rejected above"),
        };
        if resolved != Algo::Innet {
            // Ring and all-gather interleave conversion with the transfers: one phase.
            phases.aggregate = t_data.elapsed();
        }
        tracing::debug!(
            algo = resolved.name(),
            agree_us = phases.agree.as_micros() as u64,
            scan_us = phases.scan.as_micros() as u64,
            encode_us = phases.encode.as_micros() as u64,
            aggregate_us = phases.aggregate.as_micros() as u64,
            decode_us = phases.decode.as_micros() as u64,
            recovery_us = phases.recovery.as_micros() as u64,
            convert_us = phases.convert.as_micros() as u64,
            "all-reduce phases"
        );
        Ok(OpResult {
            out: Output::Reduced(out),
            info: OpInfo {
                collective: Collective::AllReduce,
                algo: resolved,
                bytes_sent: self.ring.bytes_sent - sent0 + innet_bytes.0,
                bytes_recv: self.ring.bytes_recv - recv0 + innet_bytes.1,
                elapsed: t0.elapsed(),
                aggregate_density: density,
                exponent: e,
                phases,
                value_bits: fp.bits(),
                error_bound: fp.abs_error_bound(),
            },
            used: agreed.used,
        })
    }

    /// Quantizes `v` and ring-all-reduces the lanes; returns the sign-extended sums.
    fn ring_sums(&mut self, fp: &FixedPoint, v: &[f32]) -> Result<Vec<i64>> {
        match fp.lane() {
            LaneWidth::W32 => {
                let mut lanes: Vec<i32> = v.iter().map(|&x| fp.to_fixed(x) as i32).collect();
                ring_lanes(&mut self.ring, &mut lanes, i32::wrapping_add)?;
                Ok(lanes.into_iter().map(i64::from).collect())
            }
            LaneWidth::W64 => {
                let mut lanes: Vec<i64> = v.iter().map(|&x| fp.to_fixed(x)).collect();
                ring_lanes(&mut self.ring, &mut lanes, i64::wrapping_add)?;
                Ok(lanes)
            }
        }
    }

    /// Ring min/max of `v` in place, on order keys.
    fn ring_order(&mut self, op: ReduceOp, v: &mut [f32]) -> Result<()> {
        let mut keys: Vec<i32> = v.iter().map(|&x| order_key(x)).collect();
        ring_lanes(&mut self.ring, &mut keys, op.pick())?;
        v.iter_mut()
            .zip(keys)
            .for_each(|(o, k)| *o = from_order_key(k));
        Ok(())
    }

    /// All-gather of (block index, fixed-point block) pairs; returns the union of indices and
    /// the integer sums per value (`block` per index).
    fn all_gather_pairs(
        &mut self,
        fp: &FixedPoint,
        s: &SparseVec,
        nnz: &[u64],
    ) -> Result<(Vec<u64>, Vec<i64>)> {
        let lane = fp.lane();
        self.gather_merge(s, nnz, lane, |v| fp.to_fixed(v), i64::wrapping_add, None)
    }

    /// All-gather of (block index, order-key block) pairs merged with min/max; a rank
    /// without an index contributes zeros there. Returns the union and the keys.
    fn all_gather_order(
        &mut self,
        op: ReduceOp,
        s: &SparseVec,
        nnz: &[u64],
    ) -> Result<(Vec<u64>, Vec<i64>)> {
        let pick = op.pick();
        self.gather_merge(
            s,
            nnz,
            LaneWidth::W32,
            |v| order_key(v) as i64,
            move |a, b| pick(a as i32, b as i32) as i64,
            Some(order_key(0.0) as i64),
        )
    }

    /// All-gather of (block index, lane block) pairs, merged by index with `combine` (the
    /// first value of an index starts its accumulator). With `absent: Some(z)`, an index
    /// that fewer than every rank sent is also combined with `z` (the lane of a zero).
    /// `nnz[r]` is the nonzero count rank r announced in its header: its blob is refused if
    /// longer than that many pairs.
    fn gather_merge(
        &mut self,
        s: &SparseVec,
        nnz: &[u64],
        lane: LaneWidth,
        enc: impl Fn(f32) -> i64,
        combine: impl Fn(i64, i64) -> i64,
        absent: Option<i64>,
    ) -> Result<(Vec<u64>, Vec<i64>)> {
        let world = self.cfg.world_size;
        let wide_index = s.len > u32::MAX as usize;
        let mut blob = Vec::with_capacity(8 + s.indices.len() * 8 + s.values.len() * lane.bytes());
        blob.extend_from_slice(&(s.indices.len() as u64).to_le_bytes());
        for &i in &s.indices {
            if wide_index {
                blob.extend_from_slice(&i.to_le_bytes());
            } else {
                blob.extend_from_slice(&(i as u32).to_le_bytes());
            }
        }
        for &v in &s.values {
            let q = enc(v);
            match lane {
                LaneWidth::W32 => blob.extend_from_slice(&(q as i32).to_le_bytes()),
                LaneWidth::W64 => blob.extend_from_slice(&q.to_le_bytes()),
            }
        }
        let ib = if wide_index { 8 } else { 4 };
        let vb = lane.bytes();
        // A rank's blob: the pair count, then at most one index and one value per announced
        // nonzero, and never more values than the agreed shape holds.
        let cap = (s.len as u64).saturating_mul(s.block as u64);
        let max_blob = |r: usize| {
            let k = nnz.get(r).copied().unwrap_or(0).min(cap);
            usize::try_from(k.saturating_mul((ib + vb) as u64).saturating_add(8))
                .unwrap_or(usize::MAX)
        };
        let blobs = if self.cfg.world_size > 1 {
            self.ring.all_gather(blob, max_blob, "sparse all-gather")?
        } else {
            vec![blob]
        };
        // Parse every rank's pairs, then merge by index (the combine is order-free).
        let b = s.block;
        let parts = parse_sparse_blobs(&blobs, s.len, b, ib, vb)?;
        let read_idx = |p: &[u8], k: usize| read_index(p, k, ib);
        let read_val = |p: &[u8], k: usize| -> i64 {
            match lane {
                LaneWidth::W32 => {
                    i32::from_le_bytes(p[k * 4..k * 4 + 4].try_into().unwrap()) as i64
                }
                LaneWidth::W64 => i64::from_le_bytes(p[k * 8..k * 8 + 8].try_into().unwrap()),
            }
        };
        let fill_absent = |acc: &mut [i64], count: u32| {
            if let Some(z) = absent {
                if (count as usize) < world {
                    acc.iter_mut().for_each(|a| *a = combine(*a, z));
                }
            }
        };
        let total: usize = parts.iter().map(|p| p.2).sum();
        let mut indices = Vec::new();
        let mut sums: Vec<i64> = Vec::new();
        if total >= s.len {
            // At least one pair per position on average: a dense table is O(len + pairs) and
            // beats the merge's log factor. Below that its allocation (12 B per position,
            // page-faulted each op) dominated: 240 ms for 8 ranks at 1 % of 4M on this VM.
            let mut acc = vec![0i64; s.len * b];
            let mut seen = vec![0u32; s.len];
            for (ip, vp, k) in parts.iter() {
                for j in 0..*k {
                    let i = read_idx(ip, j) as usize;
                    let first = seen[i] == 0;
                    seen[i] += 1;
                    for c in 0..b {
                        let v = read_val(vp, j * b + c);
                        let a = &mut acc[i * b + c];
                        *a = if first { v } else { combine(*a, v) };
                    }
                }
            }
            for (i, &cnt) in seen.iter().enumerate().filter(|(_, &x)| x > 0) {
                indices.push(i as u64);
                let at = sums.len();
                sums.extend_from_slice(&acc[i * b..(i + 1) * b]);
                fill_absent(&mut sums[at..], cnt);
            }
            return Ok((indices, sums));
        }
        // Sparse: a k-way merge of the ranks' sorted runs, O(pairs · log ranks), output only.
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut heads: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::with_capacity(parts.len());
        let mut pos = vec![0usize; parts.len()];
        for (r, (ip, _, k)) in parts.iter().enumerate() {
            if *k > 0 {
                heads.push(Reverse((read_idx(ip, 0), r)));
            }
        }
        indices.reserve(total);
        sums.reserve(total * b);
        let mut count = 0u32;
        while let Some(Reverse((i, r))) = heads.pop() {
            let (ip, vp, k) = parts[r];
            let j = pos[r];
            pos[r] += 1;
            if pos[r] < k {
                heads.push(Reverse((read_idx(ip, pos[r]), r)));
            }
            if indices.last() != Some(&i) {
                if !indices.is_empty() {
                    let at = sums.len() - b;
                    fill_absent(&mut sums[at..], count);
                }
                indices.push(i);
                sums.extend((0..b).map(|c| read_val(vp, j * b + c)));
                count = 1;
                continue;
            }
            count += 1;
            let base = sums.len() - b;
            for c in 0..b {
                sums[base + c] = combine(sums[base + c], read_val(vp, j * b + c));
            }
        }
        if !indices.is_empty() {
            let at = sums.len() - b;
            fill_absent(&mut sums[at..], count);
        }
        Ok((indices, sums))
    }
}

/// One rank's pairs in a sparse all-gather blob: its index bytes, its value bytes and the
/// pair count.
type SparsePart<'a> = (&'a [u8], &'a [u8], usize);

/// Index `k` of a blob's index bytes, `ib` (4 or 8) bytes each, little-endian.
fn read_index(p: &[u8], k: usize, ib: usize) -> u64 {
    if ib == 8 {
        u64::from_le_bytes(p[k * 8..k * 8 + 8].try_into().unwrap())
    } else {
        u32::from_le_bytes(p[k * 4..k * 4 + 4].try_into().unwrap()) as u64
    }
}

/// Splits every rank's sparse all-gather blob (pair count, `ib`-byte indices, `block`
/// values of `vb` bytes per index) and checks it against the agreed shape: the length must
/// match the count exactly, and the indices must be strictly increasing and below `len`
/// (every rank validated its own vector, so anything else is a malformed blob, refused
/// before merging).
fn parse_sparse_blobs(
    blobs: &[Vec<u8>],
    len: usize,
    block: usize,
    ib: usize,
    vb: usize,
) -> Result<Vec<SparsePart<'_>>> {
    let mut parts = Vec::with_capacity(blobs.len());
    for (r, blob) in blobs.iter().enumerate() {
        let bad = || CollectiveError::Mismatch(format!("rank {r} sent a malformed sparse blob"));
        let count: [u8; 8] = blob
            .get(..8)
            .and_then(|c| c.try_into().ok())
            .ok_or_else(bad)?;
        let k = u64::from_le_bytes(count) as usize;
        // Checked: k comes from the peer, and a wrapped length must not pass the check.
        let want = k
            .checked_mul(ib + block.checked_mul(vb).ok_or_else(bad)?)
            .and_then(|n| n.checked_add(8));
        if want != Some(blob.len()) {
            return Err(bad());
        }
        let ip = &blob[8..8 + k * ib];
        let mut prev: Option<u64> = None;
        for j in 0..k {
            let i = read_index(ip, j, ib);
            if i as usize >= len || prev.is_some_and(|p| i <= p) {
                return Err(CollectiveError::Mismatch(format!(
                    "rank {r} sent index {i} out of order or beyond length {len}"
                )));
            }
            prev = Some(i);
        }
        parts.push((ip, &blob[8 + k * ib..], k));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A sparse all-gather blob as a rank builds it: count, u32 indices, i32 values.
    fn blob(indices: &[u32], values: &[i32]) -> Vec<u8> {
        let mut b = (indices.len() as u64).to_le_bytes().to_vec();
        indices
            .iter()
            .for_each(|i| b.extend_from_slice(&i.to_le_bytes()));
        values
            .iter()
            .for_each(|v| b.extend_from_slice(&v.to_le_bytes()));
        b
    }

    #[test]
    fn hostile_sparse_blobs_are_refused_before_merging() {
        let good = blob(&[1, 5, 9], &[10, 20, 30]);
        let parts = parse_sparse_blobs(std::slice::from_ref(&good), 10, 1, 4, 4).unwrap();
        assert_eq!(parts[0].2, 3);
        assert_eq!(read_index(parts[0].0, 2, 4), 9);
        let malformed = |b: Vec<u8>, what: &str| {
            let blobs = vec![good.clone(), b];
            match parse_sparse_blobs(&blobs, 10, 1, 4, 4) {
                Err(CollectiveError::Mismatch(m)) => assert!(m.contains("rank 1"), "{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        };
        malformed(vec![1, 2, 3], "shorter than the count");
        malformed(blob(&[5, 1], &[1, 2]), "out of order");
        malformed(blob(&[1, 1], &[1, 2]), "repeated index");
        malformed(blob(&[10], &[1]), "beyond the length");
        let mut long = blob(&[1], &[1]);
        long.push(0);
        malformed(long, "a byte more than the count says");
        let mut huge = blob(&[1], &[1]);
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        malformed(huge, "a count whose byte size wraps");
    }

    /// One rank alone: the "switch" sum is the rank's own quantized values. Records the
    /// tensor ids it is handed (pure plumbing: which id reaches the in-network path).
    struct Recorder(Arc<Mutex<Vec<u64>>>);

    impl InnetPath for Recorder {
        fn all_reduce(
            &mut self,
            req: crate::innet::InnetRequest<'_>,
        ) -> Result<sketchreduce_agent::Reduced> {
            self.0.lock().unwrap().push(req.key);
            let fp = req.agreed.fixed;
            let (keys, sums) = match req.input {
                crate::innet::InnetInput::Dense(v) => (
                    (0..v.len() as u32).collect(),
                    v.iter().map(|&x| fp.to_fixed(x)).collect(),
                ),
                crate::innet::InnetInput::Sparse { indices, values } => (
                    indices.to_vec(),
                    values.iter().map(|&x| fp.to_fixed(x)).collect(),
                ),
            };
            Ok(sketchreduce_agent::Reduced {
                tensor_id: req.key,
                dim: req.dim,
                fixed: Some(fp),
                mode: sketchreduce_agent::PayloadMode::Sketch,
                keys,
                sums,
                lanes: Vec::new(),
                wide: Vec::new(),
                decode_retries: 0,
                cells: 0,
                phases: Default::default(),
            })
        }
        fn bytes(&self) -> (u64, u64) {
            (0, 0)
        }
    }

    #[test]
    fn innet_tensor_id_is_the_stable_key_or_the_shape() {
        let master = "127.0.0.1:1".parse().unwrap();
        let cfg = Config::new(0, 1, master);
        let ids = Arc::new(Mutex::new(Vec::new()));
        let mut e = Engine {
            ring: crate::rendezvous::connect(&cfg).unwrap(),
            cfg,
            innet: Some(Box::new(Recorder(ids.clone()))),
            seq: 0,
            refused: false,
            link: Default::default(),
        };
        let mut run = |key: Option<u64>, len: usize| {
            let req = OpRequest {
                key,
                ..OpRequest::all_reduce(
                    Payload::Dense(vec![0.5; len].into()),
                    ReduceOp::Sum,
                    Algo::Innet,
                )
            };
            let r = e.execute(req).unwrap();
            assert_eq!(r.info.algo, Algo::Innet);
        };
        // Two steps of two keyed buckets, then unkeyed operations of two shapes.
        for _ in 0..2 {
            run(Some(1), 10);
            run(Some(2), 10);
        }
        run(None, 10);
        run(None, 10);
        run(None, 11);
        let ids = ids.lock().unwrap().clone();
        assert_eq!(ids[0], ids[2], "same key, same id across steps");
        assert_eq!(ids[1], ids[3]);
        assert_ne!(ids[0], ids[1], "different keys, different ids");
        assert_eq!(ids[4], ids[5], "unkeyed: one id per shape, not per call");
        assert_ne!(ids[4], ids[6]);
        assert!(!ids[..4].contains(&ids[4]), "a key never aliases a shape");
    }
}
