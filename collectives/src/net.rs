//! TCP plumbing shared by the rendezvous and the ring: bounded length-prefixed frames, and the
//! ring of connections between workers (each rank sends to `rank + 1` and receives from
//! `rank − 1`, modulo the world size). The rendezvous that builds the ring is in
//! `rendezvous.rs`.
//!
//! Frames are an 8-byte little-endian length followed by the payload. Every frame read says
//! how long it may be: a greeting a few KiB, a ring step the size that step's operation
//! expects, so a peer's length prefix never decides on its own how much this rank allocates.
//! Ring reads and writes have the configured per-call timeout; greetings have a whole-frame
//! deadline. Every I/O error is mapped to an error naming the peer.

use crate::error::{CollectiveError, Result};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Longest abort reason accepted (and sent; longer ones are cut).
pub(crate) const MAX_ABORT_REASON: usize = 1024;
/// Once a frame is longer than the buffer's capacity, the buffer grows by at most this much
/// per read, so memory follows the bytes that actually arrive rather than the announced
/// length.
const GROW: usize = 16 << 20;

pub(crate) fn write_frame(s: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = (payload.len() as u64).to_le_bytes();
    if payload.len() <= INLINE_WRITE {
        // One segment for small frames (the sockets are TCP_NODELAY): header exchanges are
        // latency-bound, and an abort's reason arrives with its mark.
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&len);
        frame.extend_from_slice(payload);
        return s.write_all(&frame);
    }
    s.write_all(&len)?;
    s.write_all(payload)
}

/// Frames up to this size are written before reading in [`Ring::send_recv`] instead of from
/// a writer thread: far below any socket buffer, so the write cannot block on a peer that is
/// itself writing.
const INLINE_WRITE: usize = 16 * 1024;

/// Length prefix announcing an abort: the next frame is the reason.
const ABORT_MARK: u64 = u64::MAX;
const ABORT_TAG: &str = "sketchreduce-abort:";

/// Fills `buf` from `s`; with a deadline, the whole read must finish by it (a peer trickling
/// bytes cannot extend it), without one each read waits up to the socket's timeout.
fn read_full(s: &mut TcpStream, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "frame not complete by its deadline",
                ));
            }
            s.set_read_timeout(Some(left))?;
        }
        match s.read(&mut buf[off..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads a length prefix and `len ≤ max` payload bytes into `buf`.
fn read_body(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Option<Instant>,
) -> io::Result<u64> {
    let mut len = [0u8; 8];
    read_full(s, &mut len, deadline)?;
    let len = u64::from_le_bytes(len);
    if len == ABORT_MARK {
        return Ok(len);
    }
    if len > max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes announced where at most {max} are expected"),
        ));
    }
    let len = len as usize;
    buf.clear();
    while buf.len() < len {
        let at = buf.len();
        let end = len.min(at + GROW.max(buf.capacity() - at));
        buf.resize(end, 0);
        read_full(s, &mut buf[at..end], deadline)?;
    }
    Ok(len as u64)
}

fn read_frame_inner(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Option<Instant>,
) -> io::Result<()> {
    if read_body(s, buf, max, deadline)? != ABORT_MARK {
        return Ok(());
    }
    // The reason is an ordinary frame: another abort mark there is malformed (no recursion).
    if read_body(s, buf, MAX_ABORT_REASON, deadline)? == ABORT_MARK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "abort without a reason",
        ));
    }
    Err(io::Error::other(format!(
        "{ABORT_TAG}{}",
        String::from_utf8_lossy(buf)
    )))
}

/// Reads one frame of at most `max` bytes (each read waits up to the socket's timeout).
pub(crate) fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>, max: usize) -> io::Result<()> {
    read_frame_inner(s, buf, max, None)
}

/// Reads one frame of at most `max` bytes, all of it by `deadline`.
pub(crate) fn read_frame_by(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
) -> io::Result<()> {
    read_frame_inner(s, buf, max, Some(deadline))
}

/// The frame a rank sends around the ring when its communicator is dropped.
pub(crate) fn bye_frame(rank: usize) -> Vec<u8> {
    format!("{BYE_TAG}{rank}").into_bytes()
}

/// The rank of a BYE frame.
pub(crate) fn parse_bye(frame: &[u8]) -> Option<usize> {
    std::str::from_utf8(frame.strip_prefix(BYE_TAG.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

const BYE_TAG: &str = "sketchreduce-bye\t";
/// Longest BYE frame: the tag and a rank number.
const MAX_BYE_FRAME: usize = 64;

/// What a ring connection said while this rank was busy elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peeked {
    /// The peer closed it (its process exited) or it broke.
    Closed,
    /// The peer sent an abort with this reason.
    Abort(String),
}

/// Minimum TCP retransmission timeout of a ring connection, in µs (Linux ≥ 6.15,
/// `TCP_RTO_MIN_US`). The kernel default of 200 ms is made for the Internet: with 1 % loss on
/// the links, one lost segment of an operation header held the whole job for 200 ms. Like
/// the `rto_min` route option data centres set, 5 ms (rounded up to the kernel's tick).
const RING_RTO_MIN_US: libc::c_int = 5_000;
/// `TCP_RTO_MIN_US` from `linux/tcp.h` (not in the libc crate yet).
const TCP_RTO_MIN_US: libc::c_int = 45;

/// Sets a ring connection up for small, latency-bound frames: no Nagle delay, and a short
/// minimum retransmission timeout where the kernel supports one (older kernels keep their
/// default; that is logged, not an error).
pub(crate) fn tune_ring_socket(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    s.set_nodelay(true).ok();
    let v = RING_RTO_MIN_US;
    // SAFETY: a valid socket descriptor and a c_int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_RTO_MIN_US,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "TCP_RTO_MIN_US not supported: ring keeps the kernel's minimum RTO");
    }
}

/// Looks, without consuming anything, at what a ring connection has to say while this rank
/// is busy elsewhere; `None` if it is ordinary data (a neighbour already in the next
/// operation) or nothing.
pub(crate) fn peek_abort(fd: std::os::fd::RawFd) -> Option<Peeked> {
    // An abort is written in one piece, but TCP may deliver the mark before the reason: wait
    // briefly for the rest rather than report an abort without its reason.
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 16 + MAX_ABORT_REASON];
    loop {
        // SAFETY: `buf` is a valid writable buffer of its length; MSG_PEEK leaves the data
        // queued.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return Some(Peeked::Closed);
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                _ => Some(Peeked::Closed),
            };
        }
        let b = &buf[..n as usize];
        if b.len() >= 8 && b[..8] == ABORT_MARK.to_le_bytes() {
            let len = b
                .get(8..16)
                .and_then(|l| l.try_into().ok())
                .map(|l: [u8; 8]| (u64::from_le_bytes(l) as usize).min(MAX_ABORT_REASON));
            match len {
                Some(len) if b.len() >= 16 + len => {
                    let reason = String::from_utf8_lossy(&b[16..16 + len]).into_owned();
                    return Some(Peeked::Abort(reason));
                }
                _ if Instant::now() >= deadline => {
                    return Some(Peeked::Abort("(its reason did not arrive)".into()));
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
            }
        }
        // A neighbour that left (its communicator dropped) sent a BYE: it contributes nothing
        // more, like a closed connection.
        if b.len() > 8 && parse_bye(&b[8..]).is_some() {
            return Some(Peeked::Closed);
        }
        return None;
    }
}

pub(crate) fn map_io(
    e: io::Error,
    rank: usize,
    peer: usize,
    timeout: Duration,
    during: &str,
) -> CollectiveError {
    if let Some(reason) = e.to_string().strip_prefix(ABORT_TAG) {
        return CollectiveError::Aborted {
            rank,
            peer,
            reason: reason.to_string(),
        };
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CollectiveError::PeerTimeout {
            rank,
            peer,
            timeout,
            during: during.to_string(),
        },
        _ => CollectiveError::PeerLost {
            rank,
            peer,
            during: during.to_string(),
            reason: if e.kind() == io::ErrorKind::UnexpectedEof {
                "peer closed the connection (process exited?)".into()
            } else {
                e.to_string()
            },
        },
    }
}

/// The connections of one rank: to the next and from the previous rank of the ring.
pub(crate) struct Ring {
    pub rank: usize,
    pub world: usize,
    pub(crate) next: Option<TcpStream>,
    pub(crate) prev: Option<TcpStream>,
    pub timeout: Duration,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
}

impl Ring {
    /// A ring without connections yet (a world of one needs none).
    pub fn new(rank: usize, world: usize, timeout: Duration) -> Self {
        Ring {
            rank,
            world,
            next: None,
            prev: None,
            timeout,
            bytes_sent: 0,
            bytes_recv: 0,
        }
    }

    pub fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }
    pub fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Sends `out` to the next rank while receiving one frame of at most `max_in` bytes (what
    /// this step expects) from the previous rank into `input` (concurrently, so large frames
    /// cannot deadlock on full socket buffers).
    pub fn send_recv(
        &mut self,
        out: &[u8],
        input: &mut Vec<u8>,
        max_in: usize,
        during: &str,
    ) -> Result<()> {
        let (rank, timeout) = (self.rank, self.timeout);
        let (next_rank, prev_rank) = (self.next_rank(), self.prev_rank());
        let closed = || CollectiveError::PeerLost {
            rank,
            peer: prev_rank,
            during: during.to_string(),
            reason: "connections were closed after an earlier error".into(),
        };
        let next = self.next.as_mut().ok_or_else(closed)?;
        let prev = self.prev.as_mut().ok_or_else(closed)?;
        let (w, r) = if out.len() <= INLINE_WRITE {
            // A small frame fits the socket buffer: write it, then read (no writer thread,
            // whose start-up would dominate a header exchange).
            let w = write_frame(next, out);
            (w, read_frame(prev, input, max_in))
        } else {
            std::thread::scope(|sc| {
                let writer = sc.spawn(|| write_frame(next, out));
                let r = read_frame(prev, input, max_in);
                (writer.join().expect("ring writer panicked"), r)
            })
        };
        // A read failure is the more telling one (it names the dead upstream peer).
        r.map_err(|e| map_io(e, rank, prev_rank, timeout, during))?;
        w.map_err(|e| map_io(e, rank, next_rank, timeout, during))?;
        self.bytes_sent += 8 + out.len() as u64;
        self.bytes_recv += 8 + input.len() as u64;
        Ok(())
    }

    /// The raw descriptors of the live ring connections with the rank at the other end, so
    /// a wait elsewhere (the in-network path) can notice a neighbour dying or aborting.
    pub fn watch_fds(&self) -> Vec<(std::os::fd::RawFd, usize)> {
        use std::os::fd::AsRawFd;
        let mut v = Vec::new();
        if let Some(s) = &self.prev {
            v.push((s.as_raw_fd(), self.prev_rank()));
        }
        if let Some(s) = &self.next {
            v.push((s.as_raw_fd(), self.next_rank()));
        }
        v
    }

    /// Announces that this rank is leaving (its communicator was dropped) and waits at most
    /// `wait` until every rank has said the same: each rank sends its BYE to the next and
    /// forwards the others' around the ring. Returns whether every rank was heard from. A
    /// frame that is not a BYE (a neighbour still running operations) ends the wait.
    pub fn shutdown_barrier(&mut self, wait: Duration) -> bool {
        let (n, me) = (self.world, self.rank);
        let deadline = Instant::now() + wait;
        let next_rank = self.next_rank();
        let (Some(next), Some(prev)) = (self.next.as_mut(), self.prev.as_mut()) else {
            return false;
        };
        next.set_write_timeout(Some(wait)).ok();
        if write_frame(next, &bye_frame(me)).is_err() {
            return false;
        }
        let mut seen = vec![false; n];
        seen[me] = true;
        let mut buf = Vec::new();
        while seen.iter().any(|s| !s) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || prev.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            if read_frame(prev, &mut buf, MAX_BYE_FRAME).is_err() {
                return false;
            }
            let Some(r) = parse_bye(&buf).filter(|&r| r < n) else {
                return false;
            };
            if !seen[r] {
                seen[r] = true;
                if r != next_rank && write_frame(next, &buf).is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// After a failure: tells the next rank why (so the error propagates around the ring
    /// with its cause instead of as a bare timeout), then closes both connections.
    pub fn abort(&mut self, reason: &str) {
        if let Some(next) = self.next.as_mut() {
            next.set_write_timeout(Some(Duration::from_millis(500)))
                .ok();
            let mut cut = reason.len().min(MAX_ABORT_REASON);
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            // Mark, length and reason in one write, so they usually arrive together.
            let mut frame = Vec::with_capacity(16 + cut);
            frame.extend_from_slice(&ABORT_MARK.to_le_bytes());
            frame.extend_from_slice(&(cut as u64).to_le_bytes());
            frame.extend_from_slice(&reason.as_bytes()[..cut]);
            let _ = next.write_all(&frame);
        }
        for s in [self.next.take(), self.prev.take()].into_iter().flatten() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// All-gather of one byte blob per rank around the ring: `blobs[r]` is rank r's blob, at
    /// most `max_len(r)` bytes (what the operation expects of rank r; a longer one is refused
    /// before it is read). Each rank sends `world − 1` blobs (forwarding what it received).
    pub fn all_gather(
        &mut self,
        mine: Vec<u8>,
        max_len: impl Fn(usize) -> usize,
        during: &str,
    ) -> Result<Vec<Vec<u8>>> {
        let n = self.world;
        let mut blobs: Vec<Vec<u8>> = vec![Vec::new(); n];
        blobs[self.rank] = mine;
        for s in 0..n.saturating_sub(1) {
            let send = (self.rank + n - s) % n;
            let recv = (self.rank + 2 * n - s - 1) % n;
            let mut input = std::mem::take(&mut blobs[recv]);
            let out = std::mem::take(&mut blobs[send]);
            let res = self.send_recv(
                &out,
                &mut input,
                max_len(recv),
                &format!("{during} (step {s})"),
            );
            blobs[send] = out;
            res?;
            blobs[recv] = input;
        }
        Ok(blobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected pair on loopback.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// Rank 1 of 3 whose predecessor is the returned stream (the next rank's end is returned
    /// too, to keep it open).
    fn ring_with_peer() -> (Ring, TcpStream, TcpStream) {
        let (prev_peer, prev) = pair();
        let (next, next_peer) = pair();
        let mut ring = Ring::new(1, 3, Duration::from_secs(10));
        for s in [&next, &prev] {
            s.set_read_timeout(Some(ring.timeout)).unwrap();
            s.set_write_timeout(Some(ring.timeout)).unwrap();
        }
        ring.next = Some(next);
        ring.prev = Some(prev);
        (ring, prev_peer, next_peer)
    }

    #[test]
    fn a_ring_frame_longer_than_the_step_expects_is_refused_unread() {
        // A peer announcing 64 GiB where this step expects 1,000 bytes: refused from the
        // prefix (the code before allocated whatever was announced up to 64 GiB).
        let (mut ring, mut peer, _next) = ring_with_peer();
        peer.write_all(&(1u64 << 36).to_le_bytes()).unwrap();
        let mut input = Vec::new();
        let e = ring
            .send_recv(b"x", &mut input, 1000, "test step")
            .unwrap_err();
        assert!(
            matches!(&e, CollectiveError::PeerLost { peer: 0, reason, .. } if reason.contains("68719476736 bytes announced where at most 1000")),
            "{e}"
        );
        assert!(input.capacity() < 1 << 20);
    }

    #[test]
    fn a_chain_of_abort_marks_is_refused_without_recursion() {
        // Each abort mark used to start a nested read: 200,000 of them overflowed the stack.
        let (mut ring, mut peer, _next) = ring_with_peer();
        let w = std::thread::spawn(move || {
            let marks: Vec<u8> = (0..200_000)
                .flat_map(|_| ABORT_MARK.to_le_bytes())
                .collect();
            let _ = peer.write_all(&marks);
        });
        let mut input = Vec::new();
        let e = ring.send_recv(b"", &mut input, 0, "test step").unwrap_err();
        assert!(
            matches!(&e, CollectiveError::PeerLost { reason, .. } if reason.contains("abort without a reason")),
            "{e}"
        );
        drop(ring);
        w.join().unwrap();
    }

    #[test]
    fn an_abort_reason_is_bounded_and_still_reported() {
        let (mut ring, mut peer, _next) = ring_with_peer();
        peer.write_all(&ABORT_MARK.to_le_bytes()).unwrap();
        write_frame(&mut peer, b"rank 2 failed").unwrap();
        let mut input = Vec::new();
        let e = ring.send_recv(b"", &mut input, 0, "test step").unwrap_err();
        assert!(
            matches!(&e, CollectiveError::Aborted { peer: 0, reason, .. } if reason == "rank 2 failed"),
            "{e}"
        );
        let (mut ring, mut peer, _next) = ring_with_peer();
        peer.write_all(&ABORT_MARK.to_le_bytes()).unwrap();
        peer.write_all(&(1u64 << 40).to_le_bytes()).unwrap();
        let e = ring.send_recv(b"", &mut input, 0, "test step").unwrap_err();
        assert!(matches!(&e, CollectiveError::PeerLost { .. }), "{e}");
    }

    #[test]
    fn a_whole_frame_deadline_is_not_extended_by_trickling() {
        let (mut a, mut b) = pair();
        let w = std::thread::spawn(move || {
            let frame: Vec<u8> = [&5u64.to_le_bytes()[..], b"hello"].concat();
            for x in frame {
                if a.write_all(&[x]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut buf = Vec::new();
        let t = Instant::now();
        let e = read_frame_by(&mut b, &mut buf, 100, t + Duration::from_millis(350)).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{e}"
        );
        drop(b);
        w.join().unwrap();
    }
}
