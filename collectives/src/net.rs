//! TCP plumbing: the rendezvous on rank 0, and the ring of connections between workers
//! (each rank sends to `rank + 1` and receives from `rank − 1`, modulo the world size).
//!
//! Frames are an 8-byte little-endian length followed by the payload. Every read and write
//! has the configured timeout, and every I/O error is mapped to an error naming the peer.

use crate::config::Config;
use crate::error::{CollectiveError, Result};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const MAGIC: &str = "SKR1";
/// How long a rank waits for rank 0 to acknowledge its hello.
const ACK_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest frame accepted from the network (guards against garbage length prefixes).
const MAX_FRAME: u64 = 1 << 36;

pub(crate) fn write_frame(s: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    s.write_all(&(payload.len() as u64).to_le_bytes())?;
    s.write_all(payload)?;
    Ok(())
}

/// Frames up to this size are written before reading in [`Ring::send_recv`] instead of from
/// a writer thread: far below any socket buffer, so the write cannot block on a peer that is
/// itself writing.
const INLINE_WRITE: usize = 16 * 1024;

/// Length prefix announcing an abort: the next frame is the reason.
const ABORT_MARK: u64 = u64::MAX;
const ABORT_TAG: &str = "sketchreduce-abort:";

pub(crate) fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len == ABORT_MARK {
        read_frame(s, buf)?;
        return Err(io::Error::other(format!(
            "{ABORT_TAG}{}",
            String::from_utf8_lossy(buf)
        )));
    }
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes announced: not a sketchreduce peer?"),
        ));
    }
    buf.clear();
    buf.resize(len as usize, 0);
    s.read_exact(buf)?;
    Ok(())
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

/// What a ring connection said while this rank was busy elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peeked {
    /// The peer closed it (its process exited) or it broke.
    Closed,
    /// The peer sent an abort with this reason.
    Abort(String),
}

/// Looks, without consuming anything, at what a ring connection has to say while this rank
/// is busy elsewhere; `None` if it is ordinary data (a neighbour already in the next
/// operation) or nothing.
pub(crate) fn peek_abort(fd: std::os::fd::RawFd) -> Option<Peeked> {
    let mut buf = [0u8; 4096];
    // SAFETY: `buf` is a valid writable buffer of its length; MSG_PEEK leaves the data queued.
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
    if b.len() >= 8 && u64::from_le_bytes(b[..8].try_into().ok()?) == ABORT_MARK {
        let reason = b
            .get(16..)
            .map(|r| {
                let len = b
                    .get(8..16)
                    .and_then(|l| l.try_into().ok())
                    .map_or(0, |l: [u8; 8]| u64::from_le_bytes(l) as usize);
                String::from_utf8_lossy(&r[..len.min(r.len())]).into_owned()
            })
            .unwrap_or_default();
        return Some(Peeked::Abort(reason));
    }
    // A neighbour that left (its communicator dropped) sent a BYE: it contributes nothing
    // more, like a closed connection.
    if b.len() > 8 && parse_bye(&b[8..]).is_some() {
        return Some(Peeked::Closed);
    }
    None
}

fn map_io(
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
    next: Option<TcpStream>,
    prev: Option<TcpStream>,
    pub timeout: Duration,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
}

impl Ring {
    pub fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }
    pub fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Sends `out` to the next rank while receiving one frame from the previous rank into
    /// `input` (concurrently, so large frames cannot deadlock on full socket buffers).
    pub fn send_recv(&mut self, out: &[u8], input: &mut Vec<u8>, during: &str) -> Result<()> {
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
            (w, read_frame(prev, input))
        } else {
            std::thread::scope(|sc| {
                let writer = sc.spawn(|| write_frame(next, out));
                let r = read_frame(prev, input);
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
            if read_frame(prev, &mut buf).is_err() {
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
            let _ = next.write_all(&ABORT_MARK.to_le_bytes());
            let _ = write_frame(next, reason.as_bytes());
        }
        for s in [self.next.take(), self.prev.take()].into_iter().flatten() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// All-gather of one byte blob per rank around the ring: `blobs[r]` is rank r's blob.
    /// Each rank sends `world − 1` blobs (forwarding what it received).
    pub fn all_gather(&mut self, mine: Vec<u8>, during: &str) -> Result<Vec<Vec<u8>>> {
        let n = self.world;
        let mut blobs: Vec<Vec<u8>> = vec![Vec::new(); n];
        blobs[self.rank] = mine;
        for s in 0..n.saturating_sub(1) {
            let send = (self.rank + n - s) % n;
            let recv = (self.rank + 2 * n - s - 1) % n;
            let mut input = std::mem::take(&mut blobs[recv]);
            let out = std::mem::take(&mut blobs[send]);
            let res = self.send_recv(&out, &mut input, &format!("{during} (step {s})"));
            blobs[send] = out;
            res?;
            blobs[recv] = input;
        }
        Ok(blobs)
    }
}

/// What rank 0 learned at the rendezvous.
struct Hello {
    rank: usize,
    world: usize,
    fingerprint: u64,
    data_addr: String,
    settings: String,
}

fn parse_hello(b: &[u8]) -> Option<Hello> {
    let s = std::str::from_utf8(b).ok()?;
    let mut it = s.splitn(6, '\t');
    if it.next()? != MAGIC {
        return None;
    }
    Some(Hello {
        rank: it.next()?.parse().ok()?,
        world: it.next()?.parse().ok()?,
        fingerprint: it.next()?.parse().ok()?,
        data_addr: it.next()?.to_string(),
        settings: it.next()?.to_string(),
    })
}

/// Human-readable difference between two `key=value ...` setting strings.
fn settings_diff(theirs: &str, ours: &str) -> String {
    let a: Vec<&str> = theirs.split(' ').collect();
    let b: Vec<&str> = ours.split(' ').collect();
    let d: Vec<String> = a
        .iter()
        .filter(|kv| !b.contains(kv))
        .map(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            let ours = b
                .iter()
                .find(|o| o.split('=').next() == Some(key))
                .copied()
                .unwrap_or("(missing)");
            format!("{kv} (rank 0 has {ours})")
        })
        .collect();
    if d.is_empty() {
        "settings differ".into()
    } else {
        d.join(", ")
    }
}

/// Runs the rendezvous and connects the ring. Rank 0 listens on `cfg.master`, collects every
/// rank's hello (rank, world size, config fingerprint, data address), refuses mismatches with
/// an error sent to everyone, and answers with the list of data addresses.
pub(crate) fn connect(cfg: &Config) -> Result<Ring> {
    cfg.validate()?;
    let (rank, world) = (cfg.rank, cfg.world_size);
    let mut ring = Ring {
        rank,
        world,
        next: None,
        prev: None,
        timeout: cfg.timeout,
        bytes_sent: 0,
        bytes_recv: 0,
    };
    if world == 1 {
        return Ok(ring);
    }
    let deadline = Instant::now() + cfg.rendezvous_timeout;
    let master = cfg.master.to_string();
    let io_err = |what: &str, e: io::Error| CollectiveError::Io(format!("{what}: {e}"));

    let (data, addrs) = if rank == 0 {
        let listener = TcpListener::bind(cfg.master)
            .map_err(|e| io_err(&format!("rank 0 cannot listen on MASTER {master}"), e))?;
        let data = TcpListener::bind((cfg.master.ip(), 0)).map_err(|e| io_err("data port", e))?;
        let my_addr = data.local_addr().map_err(|e| io_err("data port", e))?;
        let addrs = serve_rendezvous(cfg, listener, my_addr, deadline)?;
        (data, addrs)
    } else {
        let mut s = loop {
            match TcpStream::connect_timeout(&cfg.master, Duration::from_millis(500)) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(CollectiveError::RendezvousTimeout {
                        master,
                        timeout: cfg.rendezvous_timeout,
                        detail: format!("rank {rank} could not reach rank 0: {e}"),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        s.set_nodelay(true).ok();
        let ip = s
            .local_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let data = TcpListener::bind((ip, 0)).map_err(|e| io_err("data port", e))?;
        let my_addr = data.local_addr().map_err(|e| io_err("data port", e))?;
        let hello = format!(
            "{MAGIC}\t{rank}\t{world}\t{}\t{my_addr}\t{}",
            cfg.fingerprint(),
            cfg.shared_settings()
        );
        write_frame(&mut s, hello.as_bytes()).map_err(|e| io_err("rendezvous", e))?;
        // Rank 0 acknowledges a hello at once (WAIT): whatever is listening on MASTER_PORT
        // and stays silent is not rank 0 (the port was taken by another program and rank 0
        // failed to listen), so fail now instead of after the whole rendezvous window.
        let ack = ACK_TIMEOUT.min(cfg.rendezvous_timeout);
        s.set_read_timeout(Some(ack)).ok();
        let mut buf = Vec::new();
        read_frame(&mut s, &mut buf).map_err(|e| CollectiveError::RendezvousTimeout {
            master: master.clone(),
            timeout: cfg.rendezvous_timeout,
            detail: format!(
                "rank {rank} reached {master} but no sketchreduce rank 0 answered within {ack:?} ({e}): is MASTER_PORT used by another program (then rank 0 could not listen on it)?"
            ),
        })?;
        if buf == b"WAIT" {
            // Rank 0 answers once everyone is in (or refuses); allow the whole rendezvous
            // window plus a margin for rank 0's own deadline.
            s.set_read_timeout(Some(cfg.rendezvous_timeout + Duration::from_secs(5)))
                .ok();
            read_frame(&mut s, &mut buf).map_err(|e| CollectiveError::RendezvousTimeout {
                master: master.clone(),
                timeout: cfg.rendezvous_timeout,
                detail: format!("rank {rank} got no answer from rank 0: {e}"),
            })?;
        }
        let reply = String::from_utf8_lossy(&buf).to_string();
        let mut parts = reply.split('\t');
        match parts.next() {
            Some("OK") => {
                let addrs: Vec<String> = parts.map(String::from).collect();
                if addrs.len() != world {
                    return Err(CollectiveError::Mismatch(format!(
                        "rank 0 sent {} peer addresses for world size {world}",
                        addrs.len()
                    )));
                }
                (data, addrs)
            }
            Some("MISMATCH") => {
                return Err(CollectiveError::ConfigMismatch(
                    parts.collect::<Vec<_>>().join(" "),
                ))
            }
            Some("TIMEOUT") => {
                return Err(CollectiveError::RendezvousTimeout {
                    master,
                    timeout: cfg.rendezvous_timeout,
                    detail: parts.collect::<Vec<_>>().join(" "),
                })
            }
            _ => {
                return Err(CollectiveError::Mismatch(format!(
                    "unexpected rendezvous answer {reply:?}"
                )))
            }
        }
    };

    // Ring links: connect to the next rank, accept from the previous one.
    let next_rank = ring.next_rank();
    let next_addr: SocketAddr = addrs[next_rank].parse().map_err(|_| {
        CollectiveError::Mismatch(format!("bad peer address {:?}", addrs[next_rank]))
    })?;
    let mut next = TcpStream::connect_timeout(&next_addr, cfg.rendezvous_timeout).map_err(|e| {
        CollectiveError::PeerLost {
            rank,
            peer: next_rank,
            during: format!("connecting to {next_addr}"),
            reason: e.to_string(),
        }
    })?;
    write_frame(
        &mut next,
        format!("LINK\t{rank}\t{}", cfg.fingerprint()).as_bytes(),
    )
    .map_err(|e| io_err("ring link", e))?;
    data.set_nonblocking(true).ok();
    let prev_rank = ring.prev_rank();
    let mut prev = loop {
        match data.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(CollectiveError::RendezvousTimeout {
                        master,
                        timeout: cfg.rendezvous_timeout,
                        detail: format!("rank {prev_rank} never connected to rank {rank}"),
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("accepting ring link", e)),
        }
    };
    prev.set_nonblocking(false).ok();
    prev.set_read_timeout(Some(cfg.timeout)).ok();
    let mut buf = Vec::new();
    read_frame(&mut prev, &mut buf)
        .map_err(|e| map_io(e, rank, prev_rank, cfg.timeout, "ring link"))?;
    let expect = format!("LINK\t{prev_rank}\t{}", cfg.fingerprint());
    if buf != expect.as_bytes() {
        return Err(CollectiveError::Mismatch(format!(
            "rank {rank} expected a ring link from rank {prev_rank}, got {:?}",
            String::from_utf8_lossy(&buf)
        )));
    }
    for s in [&next, &prev] {
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(cfg.timeout)).ok();
        s.set_write_timeout(Some(cfg.timeout)).ok();
    }
    ring.next = Some(next);
    ring.prev = Some(prev);
    Ok(ring)
}

fn serve_rendezvous(
    cfg: &Config,
    listener: TcpListener,
    my_addr: SocketAddr,
    deadline: Instant,
) -> Result<Vec<String>> {
    let world = cfg.world_size;
    let mut addrs: Vec<Option<String>> = vec![None; world];
    addrs[0] = Some(my_addr.to_string());
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut problem: Option<String> = None;
    // Ranks that checked in, valid or not: after a problem, rank 0 keeps listening until every
    // rank has been told (MISMATCH at once), so no rank is left to time out on a closed port.
    let mut arrived = vec![false; world];
    arrived[0] = true;
    listener.set_nonblocking(true).ok();
    let ours = cfg.shared_settings();
    while arrived.iter().any(|a| !a) {
        match listener.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false).ok();
                // A real rank sends its hello right after connecting; keep this short so a
                // silent client cannot hold up the others' acknowledgements for long.
                s.set_read_timeout(Some(ACK_TIMEOUT / 2)).ok();
                let mut buf = Vec::new();
                if read_frame(&mut s, &mut buf).is_err() {
                    continue; // a port scanner or a dead client: ignore
                }
                let Some(h) = parse_hello(&buf) else {
                    tracing::warn!("rendezvous: ignoring non-sketchreduce client {peer}");
                    continue;
                };
                let mut found = None;
                if h.world != world {
                    found = Some(format!(
                        "rank {} was started with WORLD_SIZE={} but rank 0 with {world}",
                        h.rank, h.world
                    ));
                } else if h.rank == 0 || h.rank >= world {
                    found = Some(format!("a worker at {peer} claims invalid rank {}", h.rank));
                } else if addrs[h.rank].is_some() {
                    found = Some(format!(
                        "two workers claim rank {} (second one at {peer})",
                        h.rank
                    ));
                } else if h.fingerprint != cfg.fingerprint() {
                    found = Some(format!(
                        "rank {}'s job config differs from rank 0's: {}",
                        h.rank,
                        settings_diff(&h.settings, &ours)
                    ));
                } else if problem.is_none() {
                    addrs[h.rank] = Some(h.data_addr);
                }
                // The first problem is the one every rank hears about.
                if problem.is_none() {
                    problem = found;
                }
                if h.rank < world {
                    arrived[h.rank] = true;
                }
                conns.push(s);
                if let Some(p) = &problem {
                    let reply = format!("MISMATCH\t{p}");
                    for mut c in conns.drain(..) {
                        let _ = write_frame(&mut c, reply.as_bytes());
                    }
                } else if let Some(c) = conns.last_mut() {
                    let _ = write_frame(c, b"WAIT");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(CollectiveError::Io(format!("rendezvous accept: {e}"))),
        }
    }
    let reply;
    let result;
    if let Some(p) = problem {
        reply = format!("MISMATCH\t{p}");
        result = Err(CollectiveError::ConfigMismatch(p));
    } else if addrs.iter().any(|a| a.is_none()) {
        let missing: Vec<usize> = (0..world).filter(|&r| addrs[r].is_none()).collect();
        let detail = format!("ranks {missing:?} never arrived");
        reply = format!("TIMEOUT\t{detail}");
        result = Err(CollectiveError::RendezvousTimeout {
            master: cfg.master.to_string(),
            timeout: cfg.rendezvous_timeout,
            detail,
        });
    } else {
        let list: Vec<String> = addrs.into_iter().map(|a| a.unwrap_or_default()).collect();
        reply = format!("OK\t{}", list.join("\t"));
        result = Ok(list);
    }
    for mut c in conns {
        let _ = write_frame(&mut c, reply.as_bytes());
    }
    result
}
