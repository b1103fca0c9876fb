//! The reduction itself, shared by every algorithm:
//!
//! 1. every rank reports (operation number, shape, max exponent, nonzeros) to every other
//!    rank (a tiny ring all-gather); shape or order disagreements and non-finite inputs become
//!    errors on *every* rank;
//! 2. the global exponent `E` is the MAX, and [`FixedPoint::new`]`(E, world, lane)` is the
//!    conversion — the same one the in-network path uses;
//! 3. the chosen algorithm sums the integers exactly (wrapping lanes);
//! 4. [`finish`] turns each integer sum into a float: `to_float(sum)`, divided by the world
//!    size (as `f32`) for [`ReduceOp::Avg`].
//!
//! Since steps 2 and 4 are common and step 3 is exact, all algorithms give bit-identical
//! results. [`reference_all_reduce`] is the same computation in one process.

use crate::config::{Algo, Config};
use crate::error::{CollectiveError, Result};
use crate::innet::InnetPath;
use crate::net::Ring;
use crate::sparse::SparseVec;
use sketchreduce_codec::{max_exponent, FixedPoint, LaneWidth};
use std::time::{Duration, Instant};

/// Sum or average over ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Σ over ranks.
    Sum,
    /// Σ over ranks / world size.
    Avg,
}

/// What one all-reduce did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpInfo {
    /// The algorithm that ran (resolved from [`Algo::Auto`]).
    pub algo: Algo,
    /// Bytes this rank sent to peers (TCP frames, or the agent's datagrams for innet).
    pub bytes_sent: u64,
    /// Bytes this rank received from peers.
    pub bytes_recv: u64,
    /// Wall time of the whole operation on this rank.
    pub elapsed: Duration,
    /// Σ over ranks of nonzero values / length: the density [`Algo::Auto`] looks at.
    pub aggregate_density: f64,
    /// The agreed global exponent.
    pub exponent: u32,
}

/// Data handed to a reduction.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A dense vector.
    Dense(Vec<f32>),
    /// A sparse vector of blocks.
    Sparse(SparseVec),
    /// Output only (of [`crate::Communicator::start_fixed`]): the exact integer sums
    /// (sign-extended lanes) and the agreed fixed point.
    Sums(Vec<i64>, FixedPoint),
}

/// Converts an exact integer sum into the result float: the one rounding every algorithm
/// shares.
#[inline]
pub fn finish(fp: &FixedPoint, sum: i64, op: ReduceOp, world: usize) -> f32 {
    let v = fp.to_float(fp.lane().wrap(sum));
    match op {
        ReduceOp::Sum => v,
        ReduceOp::Avg => v / world as f32,
    }
}

/// The exact result every algorithm must produce, computed in one process from every rank's
/// dense input (the global exponent, one [`FixedPoint`] for `inputs.len()` workers, integer
/// sums, [`finish`]).
pub fn reference_all_reduce(
    inputs: &[Vec<f32>],
    lane: LaneWidth,
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
    let fp = FixedPoint::new(e, n.max(1) as u32, lane)?;
    let mut sums = vec![0i64; d];
    for v in inputs {
        for (s, &x) in sums.iter_mut().zip(v) {
            *s = s.wrapping_add(fp.to_fixed(x));
        }
    }
    Ok(sums.into_iter().map(|s| finish(&fp, s, op, n)).collect())
}

/// An integer lane on the TCP wire.
pub(crate) trait WireLane: Copy + Default + Send + Sync {
    const BYTES: usize;
    fn put(src: &[Self], out: &mut Vec<u8>);
    fn add_from(dst: &mut [Self], src: &[u8]);
    fn copy_from(dst: &mut [Self], src: &[u8]);
}

macro_rules! wire_lane {
    ($t:ty, $n:expr) => {
        impl WireLane for $t {
            const BYTES: usize = $n;
            fn put(src: &[Self], out: &mut Vec<u8>) {
                out.reserve(src.len() * $n);
                for v in src {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            fn add_from(dst: &mut [Self], src: &[u8]) {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact($n)) {
                    *d = d.wrapping_add(<$t>::from_le_bytes(c.try_into().unwrap()));
                }
            }
            fn copy_from(dst: &mut [Self], src: &[u8]) {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact($n)) {
                    *d = <$t>::from_le_bytes(c.try_into().unwrap());
                }
            }
        }
    };
}
wire_lane!(i32, 4);
wire_lane!(i64, 8);

fn chunk(d: usize, n: usize, c: usize) -> std::ops::Range<usize> {
    (c * d / n)..((c + 1) * d / n)
}

/// Dense ring all-reduce (reduce-scatter then all-gather) of integer lanes, in place.
pub(crate) fn ring_lanes<L: WireLane>(ring: &mut Ring, x: &mut [L]) -> Result<()> {
    let n = ring.world;
    if n == 1 {
        return Ok(());
    }
    let r = ring.rank;
    let d = x.len();
    let mut out = Vec::new();
    let mut input = Vec::new();
    for s in 0..n - 1 {
        let send = (r + n - s) % n;
        let recv = (r + 2 * n - s - 1) % n;
        out.clear();
        L::put(&x[chunk(d, n, send)], &mut out);
        ring.send_recv(&out, &mut input, &format!("ring reduce-scatter step {s}"))?;
        let dst = &mut x[chunk(d, n, recv)];
        check_len(
            input.len(),
            dst.len() * L::BYTES,
            ring,
            "ring reduce-scatter",
        )?;
        L::add_from(dst, &input);
    }
    for s in 0..n - 1 {
        let send = (r + 1 + n - s) % n;
        let recv = (r + n - s) % n;
        out.clear();
        L::put(&x[chunk(d, n, send)], &mut out);
        ring.send_recv(&out, &mut input, &format!("ring all-gather step {s}"))?;
        let dst = &mut x[chunk(d, n, recv)];
        check_len(input.len(), dst.len() * L::BYTES, ring, "ring all-gather")?;
        L::copy_from(dst, &input);
    }
    Ok(())
}

fn check_len(got: usize, want: usize, ring: &Ring, during: &str) -> Result<()> {
    if got != want {
        return Err(CollectiveError::Mismatch(format!(
            "rank {}: {during}: rank {} sent {got} bytes, expected {want}",
            ring.rank,
            ring.prev_rank()
        )));
    }
    Ok(())
}

/// Per-rank metadata exchanged before every operation.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Meta {
    seq: u64,
    len: u64,
    block: u64,
    /// `u32::MAX`: non-finite input at `bad`.
    exponent: u32,
    algo: u8,
    sparse: u8,
    nnz: u64,
    bad: u64,
}

const META_BYTES: usize = 8 * 5 + 4 + 2;

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(META_BYTES);
        for v in [self.seq, self.len, self.block, self.nnz, self.bad] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.exponent.to_le_bytes());
        b.push(self.algo);
        b.push(self.sparse);
        b
    }
    fn decode(b: &[u8]) -> Option<Meta> {
        if b.len() != META_BYTES {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        Some(Meta {
            seq: u(0),
            len: u(1),
            block: u(2),
            nnz: u(3),
            bad: u(4),
            exponent: u32::from_le_bytes(b[40..44].try_into().unwrap()),
            algo: b[44],
            sparse: b[45],
        })
    }
}

fn algo_code(a: Algo) -> u8 {
    match a {
        Algo::Innet => 0,
        Algo::Ring => 1,
        Algo::AllGather => 2,
        Algo::Auto => 3,
    }
}

/// State one rank keeps across operations.
pub(crate) struct Engine {
    pub cfg: Config,
    pub ring: Ring,
    pub innet: Option<Box<dyn InnetPath>>,
    pub seq: u64,
}

impl Engine {
    /// Runs one all-reduce of `payload` on this rank.
    pub fn run(
        &mut self,
        payload: Payload,
        op: ReduceOp,
        algo: Algo,
        raw: bool,
    ) -> Result<(Payload, OpInfo)> {
        let t0 = Instant::now();
        let (sent0, recv0) = (self.ring.bytes_sent, self.ring.bytes_recv);
        let n = self.cfg.world_size;
        let lane = self.cfg.codec.lane;
        self.seq += 1;

        let (values, len, block, nnz, sparse): (&[f32], usize, usize, usize, bool) = match &payload
        {
            Payload::Dense(v) => (
                v,
                v.len(),
                1,
                v.iter().filter(|&&x| x != 0.0).count(),
                false,
            ),
            Payload::Sparse(s) => {
                s.validate()?;
                (&s.values, s.len, s.block, s.nnz(), true)
            }
            Payload::Sums(..) => {
                return Err(CollectiveError::Input(
                    "integer sums are an output, not an input".into(),
                ))
            }
        };
        let (exponent, bad) = match max_exponent(values) {
            Ok(e) => (e, 0),
            Err(sketchreduce_codec::CodecError::NonFinite { position }) => {
                (u32::MAX, position as u64)
            }
            Err(e) => return Err(e.into()),
        };
        let me = Meta {
            seq: self.seq,
            len: len as u64,
            block: block as u64,
            exponent,
            algo: algo_code(algo),
            sparse: sparse as u8,
            nnz: nnz as u64,
            bad,
        };
        let metas = if n > 1 {
            let blobs = self
                .ring
                .all_gather(me.encode(), "exchange of shapes and exponents")?;
            let mut m = Vec::with_capacity(n);
            for (r, b) in blobs.iter().enumerate() {
                m.push(Meta::decode(b).ok_or_else(|| {
                    CollectiveError::Mismatch(format!("rank {r} sent a malformed header"))
                })?);
            }
            m
        } else {
            vec![me]
        };
        for (r, m) in metas.iter().enumerate() {
            if m.seq != me.seq
                || m.len != me.len
                || m.block != me.block
                || m.algo != me.algo
                || m.sparse != me.sparse
            {
                return Err(CollectiveError::Mismatch(format!(
                    "rank {r} is at operation #{} with {} blocks of {} ({}, algo code {}) while rank {} is at #{} with {} blocks of {} ({}, algo code {})",
                    m.seq, m.len, m.block, if m.sparse == 1 { "sparse" } else { "dense" }, m.algo,
                    self.cfg.rank, me.seq, me.len, me.block, if sparse { "sparse" } else { "dense" }, me.algo
                )));
            }
        }
        if let Some((r, m)) = metas
            .iter()
            .enumerate()
            .find(|(_, m)| m.exponent == u32::MAX)
        {
            return Err(CollectiveError::NonFinite {
                rank: r,
                position: m.bad,
            });
        }
        let e = metas.iter().map(|m| m.exponent).max().unwrap_or(0);
        let total_nnz: u64 = metas.iter().map(|m| m.nnz).sum();
        let elems = (len * block).max(1) as f64;
        let density = total_nnz as f64 / elems;
        let crossover = if block >= crate::config::AUTO_ROW_BLOCK {
            self.cfg.crossover_rows
        } else {
            self.cfg.crossover
        };
        let resolved = match algo {
            Algo::Auto if density > crossover => Algo::Ring,
            Algo::Auto if self.cfg.auto_innet && self.innet.is_some() => Algo::Innet,
            Algo::Auto => Algo::AllGather,
            a => a,
        };
        let fp = FixedPoint::new(e, n as u32, lane)?;
        let mut innet_bytes = (0, 0);
        let out = match (resolved, payload) {
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
                let (idx, sums) = self.all_gather_pairs(&fp, &s)?;
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
                let (indices, sums) = self.all_gather_pairs(&fp, &s)?;
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
                let max_nnz = metas.iter().map(|m| m.nnz).max().unwrap_or(0);
                let out =
                    crate::innet::run(path, self.seq, fp, payload, op, n, raw, total_nnz, max_nnz)?;
                let after = path.bytes();
                innet_bytes = (after.0 - before.0, after.1 - before.1);
                out
            }
            (Algo::Auto, _) | (_, Payload::Sums(..)) => unreachable!("resolved or rejected above"),
        };
        Ok((
            out,
            OpInfo {
                algo: resolved,
                bytes_sent: self.ring.bytes_sent - sent0 + innet_bytes.0,
                bytes_recv: self.ring.bytes_recv - recv0 + innet_bytes.1,
                elapsed: t0.elapsed(),
                aggregate_density: density,
                exponent: e,
            },
        ))
    }

    /// Quantizes `v` and ring-all-reduces the lanes; returns the sign-extended sums.
    fn ring_sums(&mut self, fp: &FixedPoint, v: &[f32]) -> Result<Vec<i64>> {
        match fp.lane() {
            LaneWidth::W32 => {
                let mut lanes: Vec<i32> = v.iter().map(|&x| fp.to_fixed(x) as i32).collect();
                ring_lanes(&mut self.ring, &mut lanes)?;
                Ok(lanes.into_iter().map(i64::from).collect())
            }
            LaneWidth::W64 => {
                let mut lanes: Vec<i64> = v.iter().map(|&x| fp.to_fixed(x)).collect();
                ring_lanes(&mut self.ring, &mut lanes)?;
                Ok(lanes)
            }
        }
    }

    /// All-gather of (block index, fixed-point block) pairs; returns the union of indices and
    /// the integer sums per value (`block` per index).
    fn all_gather_pairs(&mut self, fp: &FixedPoint, s: &SparseVec) -> Result<(Vec<u64>, Vec<i64>)> {
        let lane = fp.lane();
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
            let q = fp.to_fixed(v);
            match lane {
                LaneWidth::W32 => blob.extend_from_slice(&(q as i32).to_le_bytes()),
                LaneWidth::W64 => blob.extend_from_slice(&q.to_le_bytes()),
            }
        }
        let blobs = if self.cfg.world_size > 1 {
            self.ring.all_gather(blob, "sparse all-gather")?
        } else {
            vec![blob]
        };
        // Parse every rank's pairs, then merge by index (wrapping sums are order-free).
        let ib = if wide_index { 8 } else { 4 };
        let vb = lane.bytes();
        let b = s.block;
        let mut parts: Vec<(&[u8], &[u8], usize)> = Vec::with_capacity(blobs.len());
        for (r, blob) in blobs.iter().enumerate() {
            let bad =
                || CollectiveError::Mismatch(format!("rank {r} sent a malformed sparse blob"));
            if blob.len() < 8 {
                return Err(bad());
            }
            let k = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
            // Checked: k comes from the peer, and a wrapped length must not pass the check.
            let want = k
                .checked_mul(ib + b.checked_mul(vb).ok_or_else(bad)?)
                .and_then(|n| n.checked_add(8));
            if want != Some(blob.len()) {
                return Err(bad());
            }
            parts.push((&blob[8..8 + k * ib], &blob[8 + k * ib..], k));
        }
        let read_idx = |p: &[u8], k: usize| -> u64 {
            if wide_index {
                u64::from_le_bytes(p[k * 8..k * 8 + 8].try_into().unwrap())
            } else {
                u32::from_le_bytes(p[k * 4..k * 4 + 4].try_into().unwrap()) as u64
            }
        };
        let read_val = |p: &[u8], k: usize| -> i64 {
            match lane {
                LaneWidth::W32 => {
                    i32::from_le_bytes(p[k * 4..k * 4 + 4].try_into().unwrap()) as i64
                }
                LaneWidth::W64 => i64::from_le_bytes(p[k * 8..k * 8 + 8].try_into().unwrap()),
            }
        };
        let total: usize = parts.iter().map(|p| p.2).sum();
        let mut indices = Vec::new();
        let mut sums: Vec<i64> = Vec::new();
        if total.saturating_mul(16) >= s.len {
            // Many pairs relative to the length: accumulate into a dense table, O(len + pairs).
            let mut acc = vec![0i64; s.len * b];
            let mut seen = vec![false; s.len];
            for (r, (ip, vp, k)) in parts.iter().enumerate() {
                for j in 0..*k {
                    let i = read_idx(ip, j) as usize;
                    if i >= s.len {
                        return Err(CollectiveError::Mismatch(format!(
                            "rank {r} sent index {i} beyond length {}",
                            s.len
                        )));
                    }
                    seen[i] = true;
                    for c in 0..b {
                        acc[i * b + c] = acc[i * b + c].wrapping_add(read_val(vp, j * b + c));
                    }
                }
            }
            for (i, _) in seen.iter().enumerate().filter(|(_, &x)| x) {
                indices.push(i as u64);
                sums.extend_from_slice(&acc[i * b..(i + 1) * b]);
            }
            return Ok((indices, sums));
        }
        let mut keys: Vec<(u64, u32, u32)> = Vec::with_capacity(total);
        for (r, (ip, _, k)) in parts.iter().enumerate() {
            for j in 0..*k {
                let i = read_idx(ip, j);
                if i as usize >= s.len {
                    return Err(CollectiveError::Mismatch(format!(
                        "rank {r} sent index {i} beyond length {}",
                        s.len
                    )));
                }
                keys.push((i, r as u32, j as u32));
            }
        }
        keys.sort_unstable_by_key(|k| k.0);
        let mut last = u64::MAX;
        for (i, r, j) in keys {
            if i != last {
                indices.push(i);
                sums.extend(std::iter::repeat_n(0i64, b));
                last = i;
            }
            let base = sums.len() - b;
            let vp = parts[r as usize].1;
            for c in 0..b {
                sums[base + c] = sums[base + c].wrapping_add(read_val(vp, j as usize * b + c));
            }
        }
        Ok((indices, sums))
    }
}
