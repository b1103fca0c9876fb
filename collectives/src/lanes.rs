//! Dense ring collectives on fixed-width lanes: reduce-scatter, all-gather and their
//! composition, the ring all-reduce. Lanes are fixed-point integers (sums, wrapping) or
//! order keys of floats (min/max); the combine is any associative, commutative function, so
//! the result does not depend on the ring's order.

use crate::error::{CollectiveError, Result};
use crate::net::Ring;

/// A lane on the TCP wire.
pub(crate) trait WireLane: Copy + Default + Send + Sync {
    const BYTES: usize;
    fn put(src: &[Self], out: &mut Vec<u8>);
    /// Reads one lane from exactly `Self::BYTES` bytes.
    fn get(c: &[u8]) -> Self;
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
            #[inline]
            fn get(c: &[u8]) -> Self {
                let mut b = [0u8; $n];
                b.copy_from_slice(c);
                <$t>::from_le_bytes(b)
            }
        }
    };
}
wire_lane!(i32, 4);
wire_lane!(i64, 8);

/// Elements `rank` owns when `len` elements are split over `world` ranks: the contiguous
/// range `rank·len/world .. (rank+1)·len/world` (sizes differ by at most one). This is the
/// split of [`crate::Communicator::reduce_scatter`].
pub fn chunk_range(len: usize, world: usize, rank: usize) -> std::ops::Range<usize> {
    let w = world.max(1);
    (rank * len / w)..((rank + 1) * len / w)
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

/// `world − 1` ring steps: at step s this rank sends chunk `send(s)` to the next rank and
/// applies the chunk `recv(s)` received from the previous one with `apply(own, received)`.
fn ring_steps<L: WireLane>(
    ring: &mut Ring,
    x: &mut [L],
    during: &str,
    chunks: impl Fn(usize) -> (usize, usize),
    apply: impl Fn(&mut L, L),
) -> Result<()> {
    let n = ring.world;
    let d = x.len();
    let (mut out, mut input) = (Vec::new(), Vec::new());
    for s in 0..n.saturating_sub(1) {
        let (send, recv) = chunks(s);
        out.clear();
        L::put(&x[chunk_range(d, n, send)], &mut out);
        let dst = chunk_range(d, n, recv);
        let want = dst.len() * L::BYTES;
        ring.send_recv(&out, &mut input, want, &format!("{during} step {s}"))?;
        let dst = &mut x[dst];
        check_len(input.len(), dst.len() * L::BYTES, ring, during)?;
        for (o, c) in dst.iter_mut().zip(input.chunks_exact(L::BYTES)) {
            apply(o, L::get(c));
        }
    }
    Ok(())
}

/// Ring reduce-scatter in place: afterwards this rank's chunk ([`chunk_range`] of its rank)
/// holds `combine` over every rank's values; other chunks hold partial results.
pub(crate) fn ring_reduce_scatter<L: WireLane>(
    ring: &mut Ring,
    x: &mut [L],
    combine: impl Fn(L, L) -> L,
) -> Result<()> {
    let (n, r) = (ring.world, ring.rank);
    // Step s sends chunk r−s−1 and receives chunk r−s−2 (mod n), so the last chunk received
    // and completed is r.
    ring_steps(
        ring,
        x,
        "ring reduce-scatter",
        |s| ((r + 2 * n - s - 1) % n, (r + 2 * n - s - 2) % n),
        |o, v| *o = combine(*o, v),
    )
}

/// Ring all-gather of chunks in place: each rank contributes its own chunk.
pub(crate) fn ring_all_gather_chunks<L: WireLane>(ring: &mut Ring, x: &mut [L]) -> Result<()> {
    let (n, r) = (ring.world, ring.rank);
    ring_steps(
        ring,
        x,
        "ring all-gather",
        |s| ((r + n - s) % n, (r + 2 * n - s - 1) % n),
        |o, v| *o = v,
    )
}

/// Dense ring all-reduce (reduce-scatter then all-gather) of lanes, in place.
pub(crate) fn ring_lanes<L: WireLane>(
    ring: &mut Ring,
    x: &mut [L],
    combine: impl Fn(L, L) -> L,
) -> Result<()> {
    ring_reduce_scatter(ring, x, combine)?;
    ring_all_gather_chunks(ring, x)
}

/// An `i32` whose integer order is the numeric order of finite floats, with −0.0 and +0.0
/// the same key (+0.0): min/max over keys is exact, order-free, and gives the same bits
/// whichever algorithm combined them.
#[inline]
pub(crate) fn order_key(x: f32) -> i32 {
    let b = if x == 0.0 { 0 } else { x.to_bits() };
    if (b as i32) < 0 {
        (b ^ 0x7fff_ffff) as i32
    } else {
        b as i32
    }
}

/// Inverse of [`order_key`].
#[inline]
pub(crate) fn from_order_key(k: i32) -> f32 {
    let b = k as u32;
    f32::from_bits(if k < 0 { b ^ 0x7fff_ffff } else { b })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_is_monotone_and_invertible() {
        let mut xs = vec![
            -3.4e38f32, -1.0, -1e-40, -0.0, 0.0, 1e-45, 1e-40, 0.5, 1.0, 2.0, 3.4e38,
        ];
        xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for w in xs.windows(2) {
            assert!(order_key(w[0]) <= order_key(w[1]), "{w:?}");
            if w[0] < w[1] {
                assert!(order_key(w[0]) < order_key(w[1]), "{w:?}");
            }
        }
        for x in xs {
            let y = from_order_key(order_key(x));
            assert_eq!(y, x);
            assert_eq!(y.to_bits(), if x == 0.0 { 0 } else { x.to_bits() });
        }
    }

    #[test]
    fn chunks_cover_the_range() {
        for (len, world) in [(0, 3), (1, 3), (10, 3), (7, 7), (5, 8)] {
            let mut next = 0;
            for r in 0..world {
                let c = chunk_range(len, world, r);
                assert_eq!(c.start, next);
                next = c.end;
            }
            assert_eq!(next, len);
        }
    }
}
