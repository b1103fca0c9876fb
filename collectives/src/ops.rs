//! The collectives other than all-reduce: reduce-scatter (same fixed point and rounding as the
//! all-reduce, so rank r's chunk is bit-identical to the same slice of an all-reduce), and the
//! exact byte collectives, broadcast and all-gather.

use crate::config::Algo;
use crate::error::{CollectiveError, Result};
use crate::lanes::{chunk_range, from_order_key, order_key, ring_reduce_scatter};
use crate::meta::{Meta, Rules};
use crate::reduce::{
    algo_code, finish, Collective, Data, Engine, OpInfo, OpRequest, OpResult, Output, Payload,
};
use sketchreduce_codec::LaneWidth;
use std::time::Instant;

impl Engine {
    /// Reduce-scatter of a dense buffer: this rank gets its [`chunk_range`] of the reduction.
    pub(crate) fn reduce_scatter(&mut self, req: OpRequest) -> Result<OpResult> {
        let t0 = Instant::now();
        let (sent0, recv0) = (self.ring.bytes_sent, self.ring.bytes_recv);
        let (n, rank) = (self.cfg.world_size, self.cfg.rank);
        self.seq += 1;
        let mut req = req;
        let payload = match std::mem::replace(&mut req.data, Data::Bytes(Vec::new())) {
            Data::Reduce(Payload::Dense(v)) => Payload::Dense(v),
            _ => {
                req.problem
                    .get_or_insert("reduce-scatter needs a dense f32 buffer".into());
                Payload::Dense(Vec::new().into())
            }
        };
        let (agreed, len, _, _) = self.agree_floats(&req, &payload)?;
        let Payload::Dense(v) = payload else {
            unreachable!("made dense above")
        };
        let mine = chunk_range(len, n, rank);
        let op = req.op;
        let fp = (!op.is_order())
            .then(|| {
                crate::reduce::agreed_fixed_point(
                    agreed.exponent,
                    agreed.e_med_min,
                    n,
                    self.cfg.codec.precision,
                )
            })
            .transpose()?;
        let out: Vec<f32> = match fp {
            None => {
                let mut keys: Vec<i32> = v.iter().map(|&x| order_key(x)).collect();
                ring_reduce_scatter(&mut self.ring, &mut keys, op.pick())?;
                keys[mine].iter().map(|&k| from_order_key(k)).collect()
            }
            Some(fp) => match fp.lane() {
                LaneWidth::W32 => {
                    let mut l: Vec<i32> = v.iter().map(|&x| fp.to_fixed(x) as i32).collect();
                    ring_reduce_scatter(&mut self.ring, &mut l, i32::wrapping_add)?;
                    l[mine]
                        .iter()
                        .map(|&q| finish(&fp, q as i64, op, n))
                        .collect()
                }
                LaneWidth::W64 => {
                    let mut l: Vec<i64> = v.iter().map(|&x| fp.to_fixed(x)).collect();
                    ring_reduce_scatter(&mut self.ring, &mut l, i64::wrapping_add)?;
                    l[mine].iter().map(|&q| finish(&fp, q, op, n)).collect()
                }
            },
        };
        Ok(OpResult {
            out: Output::Reduced(Payload::Dense(out.into())),
            info: OpInfo {
                collective: Collective::ReduceScatter,
                algo: Algo::Ring,
                bytes_sent: self.ring.bytes_sent - sent0,
                bytes_recv: self.ring.bytes_recv - recv0,
                elapsed: t0.elapsed(),
                aggregate_density: agreed.total_nnz as f64 / len.max(1) as f64,
                exponent: agreed.exponent,
                phases: Default::default(),
                value_bits: fp.map_or(0, |f| f.bits()),
                error_bound: fp.map_or(0.0, |f| f.abs_error_bound()),
            },
            used: agreed.used,
        })
    }

    /// Broadcast (from `req.src`, every rank passing a buffer of the same length) or
    /// all-gather (lengths may differ) of raw bytes: exact whatever they encode.
    pub(crate) fn bytes_op(&mut self, req: OpRequest) -> Result<OpResult> {
        let t0 = Instant::now();
        let (sent0, recv0) = (self.ring.bytes_sent, self.ring.bytes_recv);
        let (n, rank) = (self.cfg.world_size, self.cfg.rank);
        self.seq += 1;
        let mut problem = req.problem.clone();
        let bytes = match req.data {
            Data::Bytes(b) => b,
            Data::Reduce(_) => {
                problem.get_or_insert("expected raw bytes".into());
                Vec::new()
            }
        };
        let broadcast = req.collective == Collective::Broadcast;
        let me = Meta {
            seq: self.seq,
            collective: req.collective as u8,
            algo: algo_code(Algo::Ring),
            src: req.src as u64,
            len: bytes.len() as u64,
            block: 1,
            key: req.key,
            check: req.check.0,
            used: req.used.clone(),
            problem,
            ..Meta::default()
        };
        let agreed = self.agree(
            me,
            Rules {
                same_len: broadcast || req.equal_len,
                check_what: req.check.1,
                world: n,
            },
        )?;
        let mine = if broadcast && rank != req.src {
            Vec::new()
        } else {
            bytes
        };
        let what = req.collective.name();
        // Each rank's blob must have the length it announced (peers are not trusted): a
        // longer frame is refused before it is read, a shorter one below.
        let want = |r: usize| {
            if broadcast && r != req.src {
                0
            } else {
                agreed.lens.get(r).copied().unwrap_or(0)
            }
        };
        let mut blobs = if n > 1 {
            self.ring.all_gather(
                mine,
                |r| usize::try_from(want(r)).unwrap_or(usize::MAX),
                what,
            )?
        } else {
            vec![mine]
        };
        for (r, b) in blobs.iter().enumerate() {
            let want = want(r);
            if b.len() as u64 != want {
                return Err(CollectiveError::Mismatch(format!(
                    "{what}: rank {r}'s data arrived with {} bytes, {want} announced",
                    b.len()
                )));
            }
        }
        let out = if broadcast {
            Output::Bytes(std::mem::take(&mut blobs[req.src]))
        } else {
            Output::Gathered(blobs)
        };
        Ok(OpResult {
            out,
            info: OpInfo {
                collective: req.collective,
                algo: Algo::Ring,
                bytes_sent: self.ring.bytes_sent - sent0,
                bytes_recv: self.ring.bytes_recv - recv0,
                elapsed: t0.elapsed(),
                aggregate_density: 0.0,
                exponent: 0,
                phases: Default::default(),
                value_bits: 0,
                error_bound: 0.0,
            },
            used: agreed.used,
        })
    }
}
