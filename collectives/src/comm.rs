//! The communicator: a background thread per rank owns the connections and runs operations
//! in submission order; callers block on [`Pending::wait`].

use crate::buf::DenseBuf;
use crate::config::{Algo, Config};
use crate::error::{CollectiveError, Result};
use crate::innet::InnetPath;
use crate::reduce::{Collective, Engine, OpInfo, OpRequest, OpResult, Output, Payload, ReduceOp};
use crate::sparse::SparseVec;
use sketchreduce_codec::FixedPoint;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Cumulative counters of a communicator.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Operations completed.
    pub operations: u64,
    /// Bytes sent to peers (and the switch).
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_recv: u64,
    /// Total wall time inside operations (on the communicator thread).
    pub busy: Duration,
    /// All-reduces per algorithm: innet, ring, allgather.
    pub by_algo: [u64; 3],
    /// Operations per collective: all-reduce, reduce-scatter, broadcast, all-gather.
    pub by_collective: [u64; 4],
}

struct Request {
    req: OpRequest,
    reply: mpsc::Sender<Result<OpResult>>,
}

/// An operation in flight; [`Pending::wait`] blocks until it is done.
#[must_use = "an operation's result is only observed through wait()"]
pub struct Pending<T> {
    rx: mpsc::Receiver<Result<OpResult>>,
    map: fn(Output) -> Result<T>,
}

impl<T> Pending<T> {
    /// Blocks until the operation completes (or fails: never longer than the configured
    /// timeout per message exchanged).
    pub fn wait(self) -> Result<(T, OpInfo)> {
        let (t, info, _) = self.wait_used()?;
        Ok((t, info))
    }

    /// [`Self::wait`], plus the OR over ranks of the operation's "used" bits.
    pub(crate) fn wait_used(self) -> Result<(T, OpInfo, Vec<u8>)> {
        let r = self.rx.recv().map_err(|_| CollectiveError::Closed)??;
        Ok(((self.map)(r.out)?, r.info, r.used))
    }
}

fn unexpected(what: &str) -> CollectiveError {
    CollectiveError::Innet(format!("unexpected result kind ({what})"))
}

pub(crate) fn as_dense(o: Output) -> Result<Vec<f32>> {
    match o {
        Output::Reduced(Payload::Dense(v)) => Ok(v.into_vec()),
        Output::Reduced(Payload::Sparse(s)) => Ok(s.to_dense()),
        _ => Err(unexpected("expected floats")),
    }
}

fn as_sums(o: Output) -> Result<(Vec<i64>, FixedPoint)> {
    match o {
        Output::Reduced(Payload::Sums(s, fp)) => Ok((s, fp)),
        _ => Err(unexpected("expected integer sums")),
    }
}

pub(crate) fn as_sparse(o: Output) -> Result<SparseVec> {
    match o {
        Output::Reduced(Payload::Sparse(s)) => Ok(s),
        Output::Reduced(Payload::Dense(v)) => SparseVec::from_dense(&v, 1),
        _ => Err(unexpected("expected a sparse vector")),
    }
}

pub(crate) fn as_bytes(o: Output) -> Result<Vec<u8>> {
    match o {
        Output::Bytes(b) => Ok(b),
        _ => Err(unexpected("expected bytes")),
    }
}

pub(crate) fn as_gathered(o: Output) -> Result<Vec<Vec<u8>>> {
    match o {
        Output::Gathered(b) => Ok(b),
        _ => Err(unexpected("expected gathered bytes")),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One rank's handle on a job. Operations are executed in the order they are started, on a
/// background thread; every rank must start the same operations in the same order.
pub struct Communicator {
    cfg: Config,
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<Stats>>,
}

impl Communicator {
    /// Joins the job: rendezvous with every rank (blocking, up to
    /// [`Config::rendezvous_timeout`]), then connects the ring; with [`Config::switch`] set,
    /// also connects a worker agent to the switch (UDP) and registers the job there.
    pub fn new(cfg: Config) -> Result<Self> {
        Self::with_innet(cfg, None)
    }

    /// Like [`Self::new`] with a custom in-network path.
    pub fn with_innet(cfg: Config, innet: Option<Box<dyn InnetPath>>) -> Result<Self> {
        cfg.validate()?;
        let mut ring = crate::rendezvous::connect(&cfg)?;
        let innet = match (innet, cfg.switch) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => {
                Some(Box::new(crate::innet::AgentPath::connect(&cfg, &mut ring)?)
                    as Box<dyn InnetPath>)
            }
            (None, None) => None,
        };
        let mut engine = Engine {
            cfg: cfg.clone(),
            ring,
            innet,
            seq: 0,
            refused: false,
            link: Default::default(),
        };
        // What `auto` prices the algorithms on (a few small and one 1 MiB exchange).
        engine.link = crate::cost::LinkModel::probe(&mut engine.ring)?;
        tracing::debug!(
            rate = engine.link.rate,
            latency = engine.link.latency,
            "link measured"
        );
        let stats = Arc::new(Mutex::new(Stats::default()));
        let st = stats.clone();
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name(format!("sketchreduce-comm-{}", cfg.rank))
            .spawn(move || {
                let mut poisoned: Option<CollectiveError> = None;
                loop {
                    let Request { req, reply } = match rx.recv_timeout(crate::innet::KEEPALIVE) {
                        Ok(r) => r,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            // Idle: keep the job's registration on the switch alive.
                            if poisoned.is_none() {
                                engine.keepalive();
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    let res = match &poisoned {
                        Some(e) => Err(CollectiveError::Poisoned(e.to_string())),
                        None => engine.execute(req),
                    };
                    match &res {
                        Ok(r) => {
                            let info = &r.info;
                            let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                            s.operations += 1;
                            s.bytes_sent += info.bytes_sent;
                            s.bytes_recv += info.bytes_recv;
                            s.busy += info.elapsed;
                            s.by_collective[info.collective as usize] += 1;
                            if info.collective == Collective::AllReduce {
                                let i = match info.algo {
                                    Algo::Innet => 0,
                                    Algo::Ring => 1,
                                    _ => 2,
                                };
                                s.by_algo[i] += 1;
                            }
                        }
                        Err(e) if poisoned.is_none() => {
                            // A refusal every rank agreed on after the header exchange (non-
                            // finite input, shapes or layouts that differ, a rank that cannot
                            // take part) leaves the ring consistent; anything else may have
                            // left some rank waiting or bytes in flight: abort the job.
                            if !engine.refused {
                                engine.ring.abort(&e.to_string());
                                poisoned = Some(e.clone());
                            }
                        }
                        Err(_) => {}
                    }
                    let _ = reply.send(res);
                }
                // The communicator was dropped: wait briefly for the other ranks to finish
                // too, then release what this rank registered on the switch.
                engine.shutdown(poisoned.is_none());
            })
            .map_err(|e| CollectiveError::Io(format!("spawning communicator thread: {e}")))?;
        Ok(Communicator {
            cfg,
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// [`Self::new`] with [`Config::from_env`].
    pub fn from_env() -> Result<Self> {
        Self::new(Config::from_env()?)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.cfg.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.cfg.world_size
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Cumulative counters.
    pub fn stats(&self) -> Stats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an operation on the communicator thread.
    pub(crate) fn submit<T>(&self, req: OpRequest, map: fn(Output) -> Result<T>) -> Pending<T> {
        let (reply, rx) = mpsc::channel();
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(Request { reply, .. })) = tx.send(Request { req, reply }) {
                let _ = reply.send(Err(CollectiveError::Closed));
            }
        }
        Pending { rx, map }
    }

    fn reduce_req(
        &self,
        payload: Payload,
        op: ReduceOp,
        algo: Option<Algo>,
        key: Option<u64>,
    ) -> OpRequest {
        OpRequest {
            key,
            ..OpRequest::all_reduce(payload, op, algo.unwrap_or(self.cfg.algo))
        }
    }

    /// Starts an all-reduce of a dense buffer with the configured algorithm.
    pub fn start(&self, buf: Vec<f32>, op: ReduceOp) -> Pending<Vec<f32>> {
        self.submit(
            self.reduce_req(Payload::Dense(buf.into()), op, None, None),
            as_dense,
        )
    }

    /// Starts an all-reduce of a dense buffer with a given algorithm (every rank must pass the
    /// same one).
    pub fn start_with(&self, buf: Vec<f32>, op: ReduceOp, algo: Algo) -> Pending<Vec<f32>> {
        self.submit(
            self.reduce_req(Payload::Dense(buf.into()), op, Some(algo), None),
            as_dense,
        )
    }

    /// Starts an all-reduce of a dense buffer under a stable `key` that names the tensor
    /// across steps (every rank must pass the same key; a gradient bucket keeps its key from
    /// one step to the next). The in-network path sizes its sketch from the previous result
    /// of the same key; without a key, operations of the same shape share one history.
    /// `algo: None` uses the configured algorithm.
    pub fn start_keyed(
        &self,
        buf: Vec<f32>,
        op: ReduceOp,
        algo: Option<Algo>,
        key: u64,
    ) -> Pending<Vec<f32>> {
        self.submit(
            self.reduce_req(Payload::Dense(buf.into()), op, algo, Some(key)),
            as_dense,
        )
    }

    /// Starts an all-reduce of a sparse vector. The result's support is the union of the
    /// ranks' supports (sparse algorithms) or the positions with a nonzero result (ring,
    /// innet): both describe the same dense vector.
    pub fn start_sparse(
        &self,
        v: SparseVec,
        op: ReduceOp,
        algo: Option<Algo>,
    ) -> Pending<SparseVec> {
        self.submit(
            self.reduce_req(Payload::Sparse(v), op, algo, None),
            as_sparse,
        )
    }

    /// [`Self::start_sparse`] under a stable key (see [`Self::start_keyed`]).
    pub fn start_sparse_keyed(
        &self,
        v: SparseVec,
        op: ReduceOp,
        algo: Option<Algo>,
        key: u64,
    ) -> Pending<SparseVec> {
        self.submit(
            self.reduce_req(Payload::Sparse(v), op, algo, Some(key)),
            as_sparse,
        )
    }

    /// Starts an all-reduce of a dense buffer that returns the exact integer sums (sign-extended
    /// lanes) and the agreed [`FixedPoint`] instead of floats — for benchmarks and checks
    /// against an integer reference. Sparse-path algorithms return zeros off the union.
    pub fn start_fixed(&self, buf: Vec<f32>, algo: Algo) -> Pending<(Vec<i64>, FixedPoint)> {
        let mut req = self.reduce_req(Payload::Dense(buf.into()), ReduceOp::Sum, Some(algo), None);
        req.raw = true;
        self.submit(req, as_sums)
    }

    /// Blocking all-reduce in place with the configured algorithm. The operation works in
    /// `buf` itself (no copies); if it fails after data started moving, `buf` may hold a
    /// partial result (as with torch.distributed). Refusals every rank agrees on before any
    /// data moves (NaN, mismatched shapes) leave it untouched.
    pub fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<OpInfo> {
        self.all_reduce_with(buf, op, self.cfg.algo)
    }

    /// Blocking all-reduce in place with a given algorithm.
    pub fn all_reduce_with(&self, buf: &mut [f32], op: ReduceOp, algo: Algo) -> Result<OpInfo> {
        self.all_reduce_in_place(buf, op, Some(algo), None)
    }

    /// Runs an all-reduce on the communicator thread directly in `buf` (no copy in or out)
    /// and blocks until it is over.
    fn all_reduce_in_place(
        &self,
        buf: &mut [f32],
        op: ReduceOp,
        algo: Option<Algo>,
        key: Option<u64>,
    ) -> Result<OpInfo> {
        // SAFETY: `buf` stays exclusively borrowed by this call, which returns only after the
        // communicator thread replied, i.e. after it dropped every view of the buffer (the
        // reply's payload, a view too, is dropped before returning). If the thread is gone,
        // the request (and its view) is dropped unused.
        let view = unsafe { DenseBuf::borrow(buf) };
        let req = self.reduce_req(Payload::Dense(view), op, algo, key);
        let (_, info) = self.submit(req, |_| Ok(())).wait()?;
        Ok(info)
    }

    /// Blocking all-reduce in place under a stable key (see [`Self::start_keyed`]).
    pub fn all_reduce_keyed(&self, buf: &mut [f32], op: ReduceOp, key: u64) -> Result<OpInfo> {
        self.all_reduce_in_place(buf, op, None, Some(key))
    }

    /// Blocking all-reduce of a sparse vector.
    pub fn all_reduce_sparse(&self, v: SparseVec, op: ReduceOp) -> Result<(SparseVec, OpInfo)> {
        self.start_sparse(v, op, None).wait()
    }

    /// Starts a reduce-scatter: every rank passes a buffer of the same length, and rank r gets
    /// the reduction of its chunk [`crate::chunk_range`]`(len, world, r)` — bit-identical to
    /// that slice of an all-reduce of the same buffers. Runs on the ring.
    pub fn start_reduce_scatter(&self, buf: Vec<f32>, op: ReduceOp) -> Pending<Vec<f32>> {
        let req = OpRequest {
            collective: Collective::ReduceScatter,
            ..OpRequest::all_reduce(Payload::Dense(buf.into()), op, Algo::Ring)
        };
        self.submit(req, as_dense)
    }

    /// Blocking [`Self::start_reduce_scatter`]; returns this rank's chunk.
    pub fn reduce_scatter(&self, buf: &[f32], op: ReduceOp) -> Result<(Vec<f32>, OpInfo)> {
        self.start_reduce_scatter(buf.to_vec(), op).wait()
    }

    /// Starts a broadcast of raw bytes from rank `src`: every rank passes a buffer of the
    /// same length (only `src`'s content is used) and gets `src`'s bytes, exactly.
    pub fn start_broadcast(&self, buf: Vec<u8>, src: usize) -> Pending<Vec<u8>> {
        self.submit(OpRequest::bytes(Collective::Broadcast, buf, src), as_bytes)
    }

    /// Blocking broadcast in place from rank `src` (like `torch.distributed.broadcast`).
    pub fn broadcast(&self, buf: &mut [u8], src: usize) -> Result<OpInfo> {
        let (out, info) = self.start_broadcast(buf.to_vec(), src).wait()?;
        buf.copy_from_slice(&out);
        Ok(info)
    }

    /// Starts an all-gather of raw bytes: every rank gets every rank's bytes, in rank order.
    /// The lengths may differ between ranks (like `all_gather_object`).
    pub fn start_all_gather(&self, buf: Vec<u8>) -> Pending<Vec<Vec<u8>>> {
        self.submit(OpRequest::bytes(Collective::AllGather, buf, 0), as_gathered)
    }

    /// Blocking all-gather of raw bytes (lengths may differ between ranks).
    pub fn all_gather_bytes(&self, buf: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        self.start_all_gather(buf).wait().map(|(b, _)| b)
    }

    /// Blocking all-gather of `f32` buffers, exact: every rank must pass the same length (like
    /// `torch.distributed.all_gather`); `out[r]` is rank r's buffer.
    pub fn all_gather(&self, buf: &[f32]) -> Result<Vec<Vec<f32>>> {
        let req = OpRequest {
            equal_len: true,
            ..OpRequest::bytes(Collective::AllGather, f32_bytes(buf), 0)
        };
        let (blobs, _) = self.submit(req, as_gathered).wait()?;
        Ok(blobs
            .into_iter()
            .map(|b| {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            })
            .collect())
    }

    /// Blocks until every rank got here (an all-reduce of an empty buffer; fails after the
    /// per-operation timeout like any operation).
    pub fn barrier(&self) -> Result<()> {
        self.start_with(Vec::new(), ReduceOp::Sum, Algo::Ring)
            .wait()
            .map(|_| ())
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
