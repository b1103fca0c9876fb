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

use std::collections::HashMap;
use std::time::Instant;

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
        }
    }
}

/// The result of one all-reduce: exact integer sums at the candidate positions, and the
/// conversion back to floats. The float sum is returned; callers average if they want.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduced {
    /// Tensor id.
    pub tensor_id: u64,
    /// Dimension.
    pub dim: usize,
    /// The agreed fixed-point conversion (`None` if every input was all-zero).
    pub fixed: Option<FixedPoint>,
    /// Candidate positions, increasing (a superset of the union's nonzeros).
    pub keys: Vec<u32>,
    /// Exact integer sum at each candidate (the lane value, sign-extended).
    pub sums: Vec<i64>,
    /// 1 if the sketch stalled and the union-rank recovery ran, else 0.
    pub decode_retries: u32,
    /// Sketch cells used (0 if skipped).
    pub cells: usize,
}

impl Reduced {
    /// Writes the dense float sums into `out` (length `dim`).
    pub fn to_dense(&self, out: &mut [f32]) -> Result<(), AgentError> {
        if out.len() != self.dim {
            return Err(AgentError::Config(format!(
                "dense output of {} for a tensor of {}",
                out.len(),
                self.dim
            )));
        }
        out.fill(0.0);
        if let Some(f) = &self.fixed {
            for (&k, &s) in self.keys.iter().zip(&self.sums) {
                out[k as usize] = f.to_float(s);
            }
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
        if out.len() != self.dim {
            return Err(AgentError::Config(format!(
                "dense output of {} for a tensor of {}",
                out.len(),
                self.dim
            )));
        }
        out.fill(0);
        for (&k, &s) in self.keys.iter().zip(&self.sums) {
            out[k as usize] = s;
        }
        Ok(())
    }

    /// Positions with a nonzero sum.
    pub fn nonzeros(&self) -> usize {
        self.sums.iter().filter(|&&s| s != 0).count()
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

#[derive(Debug)]
enum Phase {
    Idle,
    Agree {
        tensor_id: u64,
        dim: usize,
        hash: u64,
        exponent: u32,
        non_finite: bool,
    },
    Payload {
        tensor_id: u64,
        dim: usize,
        fixed: FixedPoint,
        params: CodecParams,
    },
    Recover {
        tensor_id: u64,
        dim: usize,
        fixed: FixedPoint,
        cells: usize,
        keys: Vec<u32>,
    },
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
    calls: u64,
    phase: Phase,
    decoder: Decoder<i32>,
    idx: Vec<u32>,
    vals: Vec<f32>,
    bufs: (Vec<u32>, Vec<u32>),
    done: Option<Result<Reduced, AgentError>>,
    decode_retries: u64,
    all_reduces: u64,
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
            calls: 0,
            phase: Phase::Idle,
            decoder: Decoder::new(),
            idx: Vec::new(),
            vals: Vec::new(),
            bufs: (Vec::new(), Vec::new()),
            done: None,
            decode_retries: 0,
            all_reduces: 0,
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
        fnv(&mut h, b"sketchreduce-innet-v1");
        fnv(&mut h, &tensor_id.to_le_bytes());
        fnv(&mut h, &(dim as u64).to_le_bytes());
        fnv(&mut h, &self.cfg.seed.to_le_bytes());
        fnv(&mut h, &[self.cfg.index as u8]);
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

    /// Starts the all-reduce of `values` (identical `tensor_id` and length on every worker).
    /// The values are copied in sparse form, so the caller may drop them.
    pub fn start(&mut self, tensor_id: u64, values: &[f32]) -> Result<(), AgentError> {
        if self.is_busy() {
            return Err(AgentError::Busy);
        }
        if let Some(e) = self.agg.error() {
            return Err(e.clone());
        }
        if values.len() as u64 > sketchreduce_codec::params::MAX_DIM {
            return Err(AgentError::Config(format!(
                "tensor of {} elements exceeds {}",
                values.len(),
                sketchreduce_codec::params::MAX_DIM
            )));
        }
        self.done = None;
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
        let nnz = self.idx.len() as u32;
        tracing::debug!(
            scan_us = t0.elapsed().as_micros() as u64,
            nnz,
            "innet start"
        );
        let hint = self.prev_union.get(&tensor_id).copied().unwrap_or(0);
        let hash = self.config_hash(tensor_id, values.len(), hint);
        self.calls += 1;
        let lanes = self.agg.lanes();
        let mut max = vec![0u32; lanes];
        max[0] = exponent;
        max[1] = non_finite as u32;
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
        self.phase = Phase::Agree {
            tensor_id,
            dim: values.len(),
            hash,
            exponent,
            non_finite,
        };
        Ok(())
    }

    /// The result of the all-reduce, once (then the core is idle again).
    pub fn poll_complete(&mut self) -> Option<Result<Reduced, AgentError>> {
        self.done.take()
    }

    fn finish(&mut self, r: Result<Reduced, AgentError>) {
        if let Err(e) = &r {
            tracing::warn!(error = %e, "in-network all-reduce failed");
        } else {
            self.all_reduces += 1;
        }
        self.phase = Phase::Idle;
        self.done = Some(r);
    }

    fn advance(&mut self) {
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
        let r = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Idle => return,
            Phase::Agree {
                tensor_id,
                dim,
                hash,
                exponent,
                non_finite,
            } => self.after_agree(tensor_id, dim, hash, exponent, non_finite),
            Phase::Payload {
                tensor_id,
                dim,
                fixed,
                params,
            } => self.after_payload(tensor_id, dim, fixed, params),
            Phase::Recover {
                tensor_id,
                dim,
                fixed,
                cells,
                keys,
            } => self.after_recover(tensor_id, dim, fixed, cells, keys),
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

    fn after_agree(
        &mut self,
        tensor_id: u64,
        dim: usize,
        hash: u64,
        exponent: u32,
        non_finite: bool,
    ) -> Result<Option<Reduced>, AgentError> {
        let streams = self.agg.take_streams();
        let (max, add) = (&streams[0].words, &streams[1].words);
        let job = self.agg.job();
        if max[1] != 0 {
            return Err(AgentError::Codec(format!(
                "job {job} tensor {tensor_id}: {} has NaN or infinite values; nothing was aggregated",
                if non_finite {
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
                    "tensor {tensor_id} (dim {dim}): workers disagree on the tensor id, dimension, codec configuration or call sequence (this worker's parameter hash {hash:#018x}; the MAX over workers is {:#010x}{:08x} and of the complements {:#010x}{:08x})",
                    max[4], max[2], !max[5], !max[3]
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
        let nnz_sum = add[0] as u64 + ((add[1] as u64) << 16);
        let max_nnz = max[6] as u64;
        let global_exp = max[0].max(exponent);
        if nnz_sum == 0 {
            return Ok(Some(Reduced {
                tensor_id,
                dim,
                fixed: None,
                keys: Vec::new(),
                sums: Vec::new(),
                decode_retries: 0,
                cells: 0,
            }));
        }
        let fixed =
            FixedPoint::new(global_exp, world, LaneWidth::W32).map_err(|e| self.codec_err(e))?;
        let upper = nnz_sum.min(dim as u64).max(1);
        let expected = match self.prev_union.get(&tensor_id) {
            Some(&prev) => {
                ((prev as f64 * self.cfg.headroom).ceil() as u64).clamp(max_nnz.min(upper), upper)
            }
            None => upper,
        };
        let t_size = Instant::now();
        let sizing = Sizing {
            expected_union_nnz: expected,
            failure_prob: self.cfg.failure_prob,
            index: self.cfg.index,
            hashes: self.cfg.hashes,
            cells: self.cfg.cells,
            signs: false,
            ..Sizing::new(expected)
        };
        let params = CodecParams::sized(
            self.cfg.seed,
            tensor_id,
            dim as u64,
            LaneWidth::W32,
            &sizing,
        )
        .map_err(|e| self.codec_err(e))?;
        let mut enc = Encoder::<i32>::new(&params).map_err(|e| self.codec_err(e))?;
        let (mut iw, mut cw) = std::mem::take(&mut self.bufs);
        iw.clear();
        iw.resize(params.index_words(), 0);
        cw.clear();
        cw.resize(params.cells(), 0);
        let mut encoding =
            Encoding::<i32>::from_parts(&params, iw, cw).map_err(|e| self.codec_err(e))?;
        enc.encode_sparse(&self.idx, &self.vals, &fixed, &mut encoding)
            .map_err(|e| self.codec_err(e))?;
        let (iw, cw) = encoding.into_parts();
        tracing::debug!(
            size_and_encode_us = t_size.elapsed().as_micros() as u64,
            tensor_id,
            expected,
            cells = params.cells(),
            index = params.index_kind().name(),
            index_words = params.index_words(),
            "innet payload"
        );
        self.agg
            .start(vec![Stream::new(Op::Or, iw), Stream::new(Op::Add, cw)])?;
        self.phase = Phase::Payload {
            tensor_id,
            dim,
            fixed,
            params,
        };
        Ok(None)
    }

    fn after_payload(
        &mut self,
        tensor_id: u64,
        dim: usize,
        fixed: FixedPoint,
        params: CodecParams,
    ) -> Result<Option<Reduced>, AgentError> {
        let mut streams = self.agg.take_streams();
        let cw = std::mem::take(&mut streams[1].words);
        let iw = std::mem::take(&mut streams[0].words);
        let t_dec = Instant::now();
        let decoded = self.decoder.decode(&params, &iw, &cw);
        tracing::debug!(
            decode_us = t_dec.elapsed().as_micros() as u64,
            "innet decode"
        );
        let res = match decoded {
            Ok(d) => {
                let nz = d.nonzeros() as u64;
                let out = Reduced {
                    tensor_id,
                    dim,
                    fixed: Some(fixed),
                    keys: d.keys.to_vec(),
                    sums: d.sums.to_vec(),
                    decode_retries: 0,
                    cells: params.cells(),
                };
                self.prev_union.insert(tensor_id, nz);
                Ok(Some(out))
            }
            Err(e @ (CodecError::Stalled { .. } | CodecError::Saturated { .. })) => {
                self.decode_retries += 1;
                tracing::warn!(
                    job = self.agg.job(),
                    tensor_id,
                    error = %e,
                    "sketch decode failed; recovering with a union-rank round (one lane per candidate)"
                );
                // A saturated decode stopped listing candidates early: list them all.
                let mut keys = Vec::new();
                sketchreduce_codec::candidates_into(&params, &iw, &mut keys)
                    .map_err(|e| self.codec_err(e))?;
                let mut vec = vec![0u32; keys.len()];
                for (&i, &v) in self.idx.iter().zip(&self.vals) {
                    let q = fixed.to_fixed(v);
                    if q == 0 {
                        continue;
                    }
                    let r = sketchreduce_codec::candidate_rank(&keys, i).ok_or_else(|| {
                        AgentError::Codec(format!(
                            "job {}: own nonzero {i} missing from the aggregated index",
                            self.agg.job()
                        ))
                    })?;
                    vec[r] = vec[r].wrapping_add(q as u32);
                }
                self.agg.start(vec![Stream::new(Op::Add, vec)])?;
                self.phase = Phase::Recover {
                    tensor_id,
                    dim,
                    fixed,
                    cells: params.cells(),
                    keys,
                };
                Ok(None)
            }
            Err(e) => Err(self.codec_err(e)),
        };
        self.bufs = (iw, cw);
        res
    }

    fn after_recover(
        &mut self,
        tensor_id: u64,
        dim: usize,
        fixed: FixedPoint,
        cells: usize,
        keys: Vec<u32>,
    ) -> Result<Option<Reduced>, AgentError> {
        let streams = self.agg.take_streams();
        let sums: Vec<i64> = streams[0].words.iter().map(|&c| c as i32 as i64).collect();
        let nz = sums.iter().filter(|&&s| s != 0).count() as u64;
        self.prev_union.insert(tensor_id, nz);
        Ok(Some(Reduced {
            tensor_id,
            dim,
            fixed: Some(fixed),
            keys,
            sums,
            decode_retries: 1,
            cells,
        }))
    }

    /// Feeds a datagram.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        self.agg.handle_datagram(now, datagram);
        self.advance();
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let t = self.agg.poll_transmit(now, buf);
        if t.is_none() {
            self.advance();
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
}
