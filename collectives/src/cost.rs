//! The cost model [`crate::Algo::Auto`] picks an algorithm with: the wire time of each
//! algorithm's bytes on the measured link, its message latencies, and its CPU work.
//!
//! The link is measured once, when the communicator starts: every rank times a small and a
//! large exchange with its ring neighbours ([`LinkModel::probe`]); the ranks keep rank 0's
//! figures, so every rank takes the same decision from the same inputs (the operation's agreed
//! header). Per operation, with `d` elements, `n` ranks, `nnz` the nonzeros summed over ranks,
//! `b` bytes per fixed-point value, link rate `R` and one-hop latency `L`:
//!
//! ```text
//! ring       2(n−1)/n · d · b / R      + 2(n−1) · L + d · RING_NS_PER_ELEM
//! all-gather (n−1)/n · nnz · (4 + b)/R + (n−1) · L  + d · GATHER_NS_PER_ELEM + nnz · gather_ns
//!            (no d term for a sparse input: nothing dense is scanned or written)
//! innet      2 · L + d · SCAN_NS + (sketch smaller than dense:
//!                u < UNION_RANK_FROM: sketch / R + u · SKETCH_NS_PER_KEY
//!                else:                (index + u · b) / R + 2 · L + u · UNION_NS_PER_KEY
//!             otherwise d · b / R)
//!            u = min(nnz, d), sketch ≈ index + 1.15 · u · b, dense = d · b
//! ```
//!
//! innet's bytes travel up and down at the same time (full-duplex links to the switch), as the
//! ring's and the all-gather's do. The CPU constants are per rank, fitted to the network-bound
//! testbed (`benches/netbench`, 4 ranks sharing 2 cores, docs/benchmarks.md): e.g. the ring's
//! 255 ms at 4M values is 192 ms of wire and ~60 ms of CPU. `gather_ns` (per value) comes from
//! [`crate::Config::crossover`] (flat) and [`crate::Config::crossover_rows`] (rows): on a link so
//! fast that bytes cost nothing the model switches from all-gather to ring exactly at those
//! measured densities.

use crate::error::Result;
use crate::net::Ring;
use std::time::{Duration, Instant};

/// Ring CPU per element and rank (quantize, add, convert), in ns.
pub const RING_NS_PER_ELEM: f64 = 15.0;
/// All-gather CPU per element of the dense form (finding nonzeros, writing the result), in ns.
/// Fitted to the testbed after the k-way merge: 4 ranks at density 0.001 of 4M take 10.3 ms,
/// of which ~1 ms is wire and latency and ~3 ms is per value.
pub const GATHER_NS_PER_ELEM: f64 = 1.5;
/// innet CPU per element (scan of a dense input, result conversion), in ns.
pub const SCAN_NS: f64 = 2.5;
/// innet CPU per nonzero for encoding and peeling a sketch, in ns.
pub const SKETCH_NS_PER_KEY: f64 = 75.0;
/// innet CPU per nonzero for union-rank (index, candidates, ranks, no peeling), in ns.
pub const UNION_NS_PER_KEY: f64 = 30.0;

/// The link every rank sees, as rank 0 measured it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    /// Bytes per second a rank can push to its neighbour (and receive at the same time).
    pub rate: f64,
    /// One-way latency of a small message between neighbours, in seconds.
    pub latency: f64,
}

impl Default for LinkModel {
    /// 1 Gbit/s and 100 µs: used for a single rank, or when the probe could not run.
    fn default() -> Self {
        LinkModel {
            rate: 125e6,
            latency: 100e-6,
        }
    }
}

/// Bytes of the large probe exchange.
const PROBE_BYTES: usize = 1 << 20;

impl LinkModel {
    /// Times a small and a large ring exchange (every rank takes part), and returns rank 0's
    /// figures on every rank.
    pub(crate) fn probe(ring: &mut Ring) -> Result<LinkModel> {
        if ring.world < 2 {
            return Ok(LinkModel::default());
        }
        let mut input = Vec::new();
        // Warm the connections, then small exchanges with the neighbours: one hop's latency,
        // the fastest of eight (a descheduled rank only ever adds time, and one such stall
        // in a mean turned `auto` towards the all-gather for small dense tensors).
        ring.send_recv(&[0; 8], &mut input, 8, "link probe")?;
        let mut latency = f64::INFINITY;
        for _ in 0..8 {
            let t = Instant::now();
            ring.send_recv(&[0; 8], &mut input, 8, "link probe")?;
            latency = latency.min(t.elapsed().as_secs_f64());
        }
        let big = vec![0u8; PROBE_BYTES];
        let t = Instant::now();
        ring.send_recv(&big, &mut input, PROBE_BYTES, "link probe")?;
        let dt = t.elapsed().saturating_sub(Duration::from_secs_f64(latency));
        let rate = PROBE_BYTES as f64 / dt.as_secs_f64().max(1e-6);
        let mine = LinkModel { rate, latency };
        let blobs = ring.all_gather(mine.encode(), |_| 16, "link model")?;
        Ok(blobs
            .first()
            .and_then(|b| LinkModel::decode(b))
            .unwrap_or(mine))
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = self.rate.to_le_bytes().to_vec();
        v.extend_from_slice(&self.latency.to_le_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<LinkModel> {
        let rate = f64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let latency = f64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        (rate.is_finite() && rate > 0.0 && latency.is_finite() && latency >= 0.0)
            .then_some(LinkModel { rate, latency })
    }
}

/// What the model knows about one operation (all agreed among the ranks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpShape {
    /// Ranks.
    pub world: usize,
    /// Elements of the (flattened) tensor.
    pub elems: usize,
    /// Nonzero values summed over ranks.
    pub nnz: u64,
    /// Values per sparse index (1 for flat tensors).
    pub block: usize,
    /// Bytes per fixed-point value (4 or 8).
    pub value_bytes: usize,
    /// The input is a [`crate::SparseVec`]: the all-gather neither scans a dense form nor
    /// writes one (its per-element term drops out); ring and innet still work densely.
    pub sparse: bool,
}

/// Estimated seconds of each algorithm: (ring, all-gather, innet or `None` without a switch).
pub fn estimate(
    link: &LinkModel,
    op: &OpShape,
    gather_ns: f64,
    innet: bool,
) -> (f64, f64, Option<f64>) {
    let n = op.world.max(1) as f64;
    let d = op.elems as f64;
    let nnz = op.nnz as f64;
    let b = op.value_bytes as f64;
    let (r, l) = (link.rate.max(1.0), link.latency);
    let ring = 2.0 * (n - 1.0) / n * d * b / r + 2.0 * (n - 1.0) * l + d * RING_NS_PER_ELEM * 1e-9;
    let index_per_value = 4.0 / op.block.max(1) as f64;
    let gather = (n - 1.0) / n * nnz * (index_per_value + b) / r
        + (n - 1.0) * l
        + if op.sparse {
            0.0
        } else {
            d * GATHER_NS_PER_ELEM * 1e-9
        }
        + nnz * gather_ns * 1e-9;
    let innet = innet.then(|| {
        // The agent itself picks dense lanes when the sketch would send more, else the
        // sketch for small unions and union-rank for large ones.
        let union = nnz.min(d);
        let index = (d / 8.0).min(union * 1.5);
        let sketch_bytes = index + 1.15 * union * b;
        let fixed = 2.0 * l + d * SCAN_NS * 1e-9;
        let sparse = if union < sketchreduce_agent::DEFAULT_UNION_RANK_FROM as f64 {
            sketch_bytes / r + union * SKETCH_NS_PER_KEY * 1e-9
        } else {
            (index + union * b) / r + 2.0 * l + union * UNION_NS_PER_KEY * 1e-9
        };
        let dense = d * b / r;
        fixed + if sketch_bytes < d * b { sparse } else { dense }
    });
    (ring, gather, innet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(density: f64, world: usize) -> OpShape {
        let elems = 4_000_000;
        OpShape {
            world,
            elems,
            nnz: (density * elems as f64 * world as f64) as u64,
            block: 1,
            value_bytes: 4,
            sparse: false,
        }
    }

    #[test]
    fn on_a_slow_link_bytes_decide() {
        let link = LinkModel::default();
        let gather_ns = RING_NS_PER_ELEM / crate::AUTO_CROSSOVER;
        // Very sparse (0.1 % per rank): a few KB either way, so fixed costs decide and the
        // all-gather wins (testbed, 4 ranks: 9.6–10.3 ms against innet's 14–15 ms).
        let (ring, gather, innet) = estimate(&link, &shape(0.001, 4), gather_ns, true);
        assert!(
            gather < innet.unwrap() && innet.unwrap() < ring,
            "{ring} {gather} {innet:?}"
        );
        // Sparse (1 %): innet's bytes win (testbed: 21–24 ms against 25–28 ms).
        let (ring, gather, innet) = estimate(&link, &shape(0.01, 4), gather_ns, true);
        assert!(
            innet.unwrap() < gather && gather < ring,
            "{ring} {gather} {innet:?}"
        );
        // Dense: innet (one pass of d values) beats the ring (2(n−1)/n passes).
        let (ring, gather, innet) = estimate(&link, &shape(1.0, 4), gather_ns, true);
        assert!(innet.unwrap() < ring && ring < gather);
    }

    #[test]
    fn on_a_free_link_the_measured_crossover_decides() {
        let link = LinkModel {
            rate: 1e15,
            latency: 0.0,
        };
        let gather_ns = RING_NS_PER_ELEM / crate::AUTO_CROSSOVER;
        // Aggregate density below / above the crossover.
        let lo = shape(crate::AUTO_CROSSOVER * 0.5 / 4.0, 4);
        let hi = shape(crate::AUTO_CROSSOVER * 2.0 / 4.0, 4);
        let (r, g, _) = estimate(&link, &lo, gather_ns, false);
        assert!(g < r);
        let (r, g, _) = estimate(&link, &hi, gather_ns, false);
        assert!(r < g);
    }

    #[test]
    fn a_few_embedding_rows_go_to_the_all_gather() {
        // train_ncf's user table (138,493 × 64) with ~1,500 rows touched per rank: the
        // sparse all-gather moves ~1.6 MB in ~2 ms measured, while innet scans and converts
        // the 8.9M-value dense form (~45 ms measured). With a dense input the all-gather pays
        // that scan too.
        let link = LinkModel::default();
        let gather_ns = RING_NS_PER_ELEM / crate::AUTO_CROSSOVER_ROWS;
        let mut op = OpShape {
            world: 4,
            elems: 138_493 * 64,
            nnz: 4 * 1_500 * 64,
            block: 64,
            value_bytes: 4,
            sparse: true,
        };
        let (_, gather, innet) = estimate(&link, &op, gather_ns, true);
        assert!(gather < innet.unwrap(), "{gather} {innet:?}");
        op.sparse = false;
        let (_, dense_gather, _) = estimate(&link, &op, gather_ns, true);
        assert!(dense_gather > gather + 0.01, "{dense_gather} {gather}");
    }

    #[test]
    fn link_model_round_trips_and_refuses_garbage() {
        let m = LinkModel {
            rate: 1.2e8,
            latency: 3e-5,
        };
        assert_eq!(LinkModel::decode(&m.encode()), Some(m));
        assert_eq!(LinkModel::decode(&[0; 3]), None);
        let mut bad = m.encode();
        bad[..8].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(LinkModel::decode(&bad), None);
    }
}
