//! Synthetic workers over real UDP sockets, and a UDP echo baseline.
//!
//! [`run_aggregation`] drives a running switch with N worker threads, each with its own socket,
//! using a SwitchML-style window: every worker keeps `window` slots in flight, reuses a slot as
//! soon as its RESULT arrives (self-clocked), retransmits on timeout, and checks every result
//! exactly. [`run_echo`] runs the same clients against a plain batched UDP echo server (same
//! packet size, sockets, window, batching and checking), as the baseline of
//! `sketchreduce bench switch`. A seeded loss injector in the workers' send and receive paths
//! exercises the switch's answers to retransmissions.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sketchreduce_wire::packet::{HEADER_LEN, LANE_BYTES};
use sketchreduce_wire::{Header, JobSpec, Kind, Packet, WorkerSpec};

use crate::mmsg::{self, RecvBatch, SendBatch};
use crate::server::SwitchHandle;

/// Parameters of a synthetic workload.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Job id.
    pub job: u16,
    /// Number of workers (threads, one socket each).
    pub workers: usize,
    /// Lanes per packet.
    pub lanes: u16,
    /// First slot of the job.
    pub slot_base: u32,
    /// Slots in flight per worker (the job's slot count).
    pub window: u32,
    /// Rounds per slot.
    pub rounds: u32,
    /// Datagrams per sendmmsg/recvmmsg.
    pub batch: usize,
    /// Resend every outstanding slot after this long without progress.
    pub retransmit: Duration,
    /// Injected loss, in packets per million, applied independently to each worker's sends
    /// and receives.
    pub loss_ppm: u32,
    /// Seed of the loss injector.
    pub seed: u64,
    /// Give up after this long.
    pub deadline: Duration,
    /// Socket buffer size of the worker sockets.
    pub socket_buffer: usize,
    /// Leave the job registered after the run (to read its counters).
    pub keep_job: bool,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            job: 1,
            workers: 4,
            lanes: 64,
            slot_base: 0,
            window: 128,
            rounds: 100,
            batch: mmsg::DEFAULT_BATCH,
            retransmit: Duration::from_millis(100),
            loss_ppm: 0,
            seed: 1,
            deadline: Duration::from_secs(60),
            socket_buffer: 4 << 20,
            keep_job: false,
        }
    }
}

/// What a workload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// From the start barrier to the last worker's last result.
    pub elapsed: Duration,
    /// Datagrams the workers sent (excluding injected losses).
    pub sent: u64,
    /// Datagrams the workers received (excluding injected losses).
    pub received: u64,
    /// Results accepted (one per worker, slot and round when complete).
    pub results: u64,
    /// Results that matched the expected values exactly.
    pub exact_results: u64,
    /// Results with a wrong value.
    pub mismatches: u64,
    /// Replies for a round the worker was no longer waiting for (duplicates).
    pub stale_replies: u64,
    /// Packets resent after a timeout.
    pub retransmits: u64,
    /// Packets dropped by the loss injector (both directions).
    pub injected_losses: u64,
    /// Whether every worker finished every round before the deadline.
    pub completed: bool,
}

impl WorkloadStats {
    /// Every expected result arrived and was exact.
    pub fn exact(&self, cfg: &WorkloadConfig) -> bool {
        let want = cfg.workers as u64 * cfg.window as u64 * cfg.rounds as u64;
        self.completed && self.mismatches == 0 && self.exact_results == want
    }

    fn add(&mut self, o: &WorkloadStats) {
        self.sent += o.sent;
        self.received += o.received;
        self.results += o.results;
        self.exact_results += o.exact_results;
        self.mismatches += o.mismatches;
        self.stale_replies += o.stale_replies;
        self.retransmits += o.retransmits;
        self.injected_losses += o.injected_losses;
    }
}

/// Synthetic lane values: `a(k) + rank·B + lane·C` (wrapping), chosen so that the sum over
/// ranks has a closed form the checker evaluates with one add per lane.
const B: u32 = 0x0101_0101;
const C: u32 = 0x9E37_79B9;

#[inline]
fn a(k: u32) -> u32 {
    k.wrapping_mul(0x85EB_CA6B).rotate_left(13)
}

/// (first lane, step) of what a packet for chunk `k` must carry: a contribution of `rank`, or
/// the ADD of ranks `0..n` (`n` = 0 means "a contribution").
#[inline]
fn expected(k: u32, rank: u32, n: u32) -> (u32, u32) {
    if n == 0 {
        (a(k).wrapping_add(rank.wrapping_mul(B)), C)
    } else {
        let pairs = n * (n - 1) / 2;
        (
            n.wrapping_mul(a(k)).wrapping_add(B.wrapping_mul(pairs)),
            n.wrapping_mul(C),
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Replies are RESULTs: the ADD over all workers.
    Aggregate { workers: u32 },
    /// Replies are the packet itself.
    Echo,
}

struct WorkerCtx {
    rank: u8,
    /// The job's epoch (from the switch; any value for the echo server).
    epoch: u32,
    sock: UdpSocket,
    dst_base: SocketAddr,
    dst_ports: u16,
    mode: Mode,
    cfg: WorkloadConfig,
    start: Arc<Barrier>,
    abort: Arc<AtomicBool>,
}

fn build_data(
    cfg: &WorkloadConfig,
    rank: u8,
    epoch: u32,
    j: u32,
    round: u32,
    buf: &mut [u8],
) -> usize {
    let slot = cfg.slot_base + j;
    let k = round.wrapping_mul(cfg.window).wrapping_add(j);
    let h = Header {
        lanes: cfg.lanes,
        offset: k,
        ..Header::request(Kind::Data, cfg.job, epoch, rank, slot, round)
    };
    let len = h.packet_len();
    h.emit(buf);
    let (mut v, step) = expected(k, rank as u32, 0);
    for c in buf[HEADER_LEN..len].chunks_exact_mut(LANE_BYTES) {
        c.copy_from_slice(&v.to_be_bytes());
        v = v.wrapping_add(step);
    }
    len
}

fn check_lanes(bytes: &[u8], first: u32, step: u32) -> bool {
    let mut v = first;
    let mut ok = true;
    for c in bytes.chunks_exact(LANE_BYTES) {
        ok &= u32::from_be_bytes([c[0], c[1], c[2], c[3]]) == v;
        v = v.wrapping_add(step);
    }
    ok
}

fn worker(ctx: WorkerCtx) -> WorkloadStats {
    let cfg = &ctx.cfg;
    let mut st = WorkloadStats::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        cfg.seed ^ (ctx.rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let mut lose = |st: &mut WorkloadStats| {
        if cfg.loss_ppm > 0 && rng.gen_range(0..1_000_000) < cfg.loss_ppm {
            st.injected_losses += 1;
            true
        } else {
            false
        }
    };
    let window = cfg.window as usize;
    let mut rounds = vec![0u32; window];
    let mut remaining = if cfg.rounds == 0 { 0 } else { window };
    let mut rb = RecvBatch::new(cfg.batch);
    let mut sb = SendBatch::new(cfg.batch);
    let sock = &ctx.sock;
    let dst = |slot: u32| {
        let mut a = ctx.dst_base;
        a.set_port(a.port() + (slot % ctx.dst_ports as u32) as u16);
        a
    };
    let send = |sb: &mut SendBatch, st: &mut WorkloadStats, j: u32, round: u32, lost: bool| {
        if lost {
            return;
        }
        let buf = sb.slot(sock, dst(cfg.slot_base + j));
        let len = build_data(cfg, ctx.rank, ctx.epoch, j, round, buf);
        sb.commit(len);
        st.sent += 1;
    };
    ctx.start.wait();
    if remaining > 0 {
        for j in 0..window {
            let lost = lose(&mut st);
            send(&mut sb, &mut st, j as u32, 0, lost);
        }
        sb.flush(sock);
    }
    let started = Instant::now();
    let mut last_progress = Instant::now();
    while remaining > 0 {
        if ctx.abort.load(Ordering::Relaxed) || started.elapsed() > cfg.deadline {
            ctx.abort.store(true, Ordering::Relaxed);
            return st;
        }
        let n = match rb.recv(sock) {
            Ok(n) => n,
            Err(e) if mmsg::is_timeout(&e) => 0,
            Err(_) => 0,
        };
        for i in 0..n {
            if lose(&mut st) {
                continue;
            }
            st.received += 1;
            let (_, d) = rb.get(i);
            let Ok(p) = Packet::new_checked(d) else {
                st.mismatches += 1;
                continue;
            };
            let Ok(h) = Header::parse(&p) else {
                st.mismatches += 1;
                continue;
            };
            let want_kind = match ctx.mode {
                Mode::Aggregate { .. } => Kind::Result,
                Mode::Echo => Kind::Data,
            };
            let j = h.slot.wrapping_sub(cfg.slot_base) as usize;
            if h.kind != want_kind || h.job != cfg.job || j >= window {
                st.mismatches += 1;
                continue;
            }
            if h.round != rounds[j] || rounds[j] >= cfg.rounds {
                st.stale_replies += 1;
                continue;
            }
            let k = h.round.wrapping_mul(cfg.window).wrapping_add(j as u32);
            let (first, step) = match ctx.mode {
                Mode::Aggregate { workers } => expected(k, 0, workers),
                Mode::Echo => expected(k, ctx.rank as u32, 0),
            };
            st.results += 1;
            if h.offset == k && h.lanes == cfg.lanes && check_lanes(p.lane_bytes(), first, step) {
                st.exact_results += 1;
            } else {
                st.mismatches += 1;
            }
            rounds[j] += 1;
            last_progress = Instant::now();
            if rounds[j] == cfg.rounds {
                remaining -= 1;
            } else {
                let lost = lose(&mut st);
                send(&mut sb, &mut st, j as u32, rounds[j], lost);
            }
        }
        if last_progress.elapsed() >= cfg.retransmit {
            for (j, &round) in rounds.iter().enumerate() {
                if round < cfg.rounds {
                    st.retransmits += 1;
                    let lost = lose(&mut st);
                    send(&mut sb, &mut st, j as u32, round, lost);
                }
            }
            last_progress = Instant::now();
        }
        sb.flush(sock);
    }
    st.completed = true;
    st
}

fn run_workers(
    socks: Vec<UdpSocket>,
    epoch: u32,
    dst_base: SocketAddr,
    dst_ports: u16,
    mode: Mode,
    cfg: &WorkloadConfig,
) -> WorkloadStats {
    let start = Arc::new(Barrier::new(socks.len() + 1));
    let abort = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = socks
        .into_iter()
        .enumerate()
        .map(|(r, sock)| {
            let ctx = WorkerCtx {
                rank: r as u8,
                epoch,
                sock,
                dst_base,
                dst_ports,
                mode,
                cfg: cfg.clone(),
                start: start.clone(),
                abort: abort.clone(),
            };
            std::thread::Builder::new()
                .name(format!("bench-worker-{r}"))
                .spawn(move || worker(ctx))
                .expect("spawn worker thread")
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut total = WorkloadStats {
        completed: true,
        ..Default::default()
    };
    for h in handles {
        let s = h.join().unwrap_or_default();
        total.completed &= s.completed;
        total.add(&s);
    }
    total.elapsed = t0.elapsed();
    total
}

fn worker_sockets(ip: std::net::IpAddr, cfg: &WorkloadConfig) -> io::Result<Vec<UdpSocket>> {
    (0..cfg.workers)
        .map(|_| {
            let s = mmsg::bind_udp(SocketAddr::new(ip, 0), cfg.socket_buffer)?;
            s.set_read_timeout(Some(Duration::from_millis(5)))?;
            Ok(s)
        })
        .collect()
}

/// The job a workload creates for its workers' sockets (epoch 0: the switch assigns it).
pub fn job_spec(cfg: &WorkloadConfig, addrs: &[SocketAddr]) -> JobSpec {
    JobSpec {
        id: cfg.job,
        epoch: 0,
        lanes: cfg.lanes,
        slot_base: cfg.slot_base,
        slot_count: cfg.window,
        workers: addrs.iter().map(|a| WorkerSpec::at(*a)).collect(),
    }
}

/// Runs the workload against a running switch: binds the workers' sockets on the switch's IP
/// (127.0.0.1 if it listens on the unspecified address), creates the job, runs every round,
/// and unregisters the job (unless `keep_job`).
pub fn run_aggregation(sw: &SwitchHandle, cfg: &WorkloadConfig) -> io::Result<WorkloadStats> {
    let mut dst = sw.local_data_addr();
    if dst.ip().is_unspecified() {
        dst.set_ip([127, 0, 0, 1].into());
    }
    let socks = worker_sockets(dst.ip(), cfg)?;
    let addrs = socks
        .iter()
        .map(|s| s.local_addr())
        .collect::<io::Result<Vec<_>>>()?;
    let job = sw
        .create(job_spec(cfg, &addrs))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stats = run_workers(
        socks,
        job.epoch,
        dst,
        sw.data_ports(),
        Mode::Aggregate {
            workers: cfg.workers as u32,
        },
        cfg,
    );
    if !cfg.keep_job {
        let _ = sw.unregister(cfg.job, job.epoch);
    }
    Ok(stats)
}

/// A batched UDP echo server: `threads` sockets on consecutive ports, each answering every
/// datagram to its sender with `recvmmsg`/`sendmmsg`.
pub struct EchoServer {
    addr: SocketAddr,
    ports: u16,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Starts the echo server on `ip` with `threads` consecutive ports.
    pub fn start(
        ip: std::net::IpAddr,
        threads: usize,
        batch: usize,
        buf: usize,
    ) -> io::Result<Self> {
        let socks = crate::server::bind_data_ports(SocketAddr::new(ip, 0), threads, buf)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let addr = socks[0].local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for (t, sock) in socks.into_iter().enumerate() {
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            let stop = stop.clone();
            let echoed = echoed.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("echo-{t}"))
                    .spawn(move || {
                        let mut rb = RecvBatch::new(batch);
                        let mut sb = SendBatch::new(batch);
                        let mut count = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let n = match rb.recv(&sock) {
                                Ok(n) => n,
                                Err(_) => continue,
                            };
                            for i in 0..n {
                                let (from, d) = rb.get(i);
                                sb.push(&sock, from, d);
                            }
                            count += n as u64;
                            sb.flush(&sock);
                        }
                        echoed.fetch_add(count, Ordering::Relaxed);
                    })?,
            );
        }
        Ok(EchoServer {
            addr,
            ports: threads as u16,
            stop,
            echoed,
            threads: handles,
        })
    }

    /// First port's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and returns how many datagrams it echoed.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.echoed.load(Ordering::Relaxed)
    }
}

/// Runs the same clients as [`run_aggregation`] against a fresh [`EchoServer`] with `threads`
/// ports: each reply is the client's own packet. Returns the client stats and the number of
/// datagrams the server echoed.
pub fn run_echo(
    ip: std::net::IpAddr,
    threads: usize,
    server_buffer: usize,
    cfg: &WorkloadConfig,
) -> io::Result<(WorkloadStats, u64)> {
    let server = EchoServer::start(ip, threads, cfg.batch, server_buffer)?;
    let socks = worker_sockets(ip, cfg)?;
    let stats = run_workers(socks, 1, server.addr(), server.ports, Mode::Echo, cfg);
    let echoed = server.stop();
    Ok((stats, echoed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_form_matches_sum() {
        for n in 1..=32u32 {
            for k in [0u32, 1, 77, u32::MAX] {
                let (f, s) = expected(k, 0, n);
                for lane in [0u32, 5, 255] {
                    let mut sum = 0u32;
                    for r in 0..n {
                        let (f1, s1) = expected(k, r, 0);
                        sum = sum.wrapping_add(f1.wrapping_add(s1.wrapping_mul(lane)));
                    }
                    assert_eq!(sum, f.wrapping_add(s.wrapping_mul(lane)));
                }
            }
        }
    }
}
