//! The communicator: a background thread per rank owns the connections and runs operations
//! in submission order; callers block on [`Pending::wait`].

use crate::config::{Algo, Config};
use crate::error::{CollectiveError, Result};
use crate::innet::InnetPath;
use crate::net;
use crate::reduce::{Engine, OpInfo, Payload, ReduceOp};
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
    /// Operations per algorithm: innet, ring, allgather.
    pub by_algo: [u64; 3],
}

enum Request {
    Reduce {
        payload: Payload,
        op: ReduceOp,
        algo: Algo,
        raw: bool,
        reply: mpsc::Sender<Result<(Payload, OpInfo)>>,
    },
}

/// An operation in flight; [`Pending::wait`] blocks until it is done.
#[must_use = "an operation's result is only observed through wait()"]
pub struct Pending<T> {
    rx: mpsc::Receiver<Result<(Payload, OpInfo)>>,
    map: fn(Payload) -> Result<T>,
}

impl<T> Pending<T> {
    /// Blocks until the operation completes (or fails: never longer than the configured
    /// timeout per message exchanged).
    pub fn wait(self) -> Result<(T, OpInfo)> {
        let (p, info) = self.rx.recv().map_err(|_| CollectiveError::Closed)??;
        Ok(((self.map)(p)?, info))
    }
}

fn as_dense(p: Payload) -> Result<Vec<f32>> {
    match p {
        Payload::Dense(v) => Ok(v),
        Payload::Sparse(s) => Ok(s.to_dense()),
        Payload::Sums(..) => Err(CollectiveError::Innet("unexpected integer sums".into())),
    }
}

fn as_sums(p: Payload) -> Result<(Vec<i64>, FixedPoint)> {
    match p {
        Payload::Sums(s, fp) => Ok((s, fp)),
        _ => Err(CollectiveError::Innet("expected integer sums".into())),
    }
}

fn as_sparse(p: Payload) -> Result<SparseVec> {
    match p {
        Payload::Sparse(s) => Ok(s),
        Payload::Dense(v) => SparseVec::from_dense(&v, 1),
        Payload::Sums(..) => Err(CollectiveError::Innet("unexpected integer sums".into())),
    }
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
        let mut ring = net::connect(&cfg)?;
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
        };
        let stats = Arc::new(Mutex::new(Stats::default()));
        let st = stats.clone();
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name(format!("sketchreduce-comm-{}", cfg.rank))
            .spawn(move || {
                let mut poisoned: Option<CollectiveError> = None;
                for req in rx {
                    let Request::Reduce {
                        payload,
                        op,
                        algo,
                        raw,
                        reply,
                    } = req;
                    let res = match &poisoned {
                        Some(e) => Err(CollectiveError::Poisoned(e.to_string())),
                        None => engine.run(payload, op, algo, raw),
                    };
                    match &res {
                        Ok((_, info)) => {
                            let mut s = st.lock().unwrap();
                            s.operations += 1;
                            s.bytes_sent += info.bytes_sent;
                            s.bytes_recv += info.bytes_recv;
                            s.busy += info.elapsed;
                            let i = match info.algo {
                                Algo::Innet => 0,
                                Algo::Ring => 1,
                                _ => 2,
                            };
                            s.by_algo[i] += 1;
                        }
                        Err(e) if poisoned.is_none() => {
                            // Non-finite input is seen by every rank after the header
                            // exchange and leaves the ring consistent; anything else may have
                            // left some rank waiting or bytes in flight: abort the job.
                            if !matches!(e, CollectiveError::NonFinite { .. }) {
                                engine.ring.abort(&e.to_string());
                                poisoned = Some(e.clone());
                            }
                        }
                        Err(_) => {}
                    }
                    let _ = reply.send(res);
                }
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
        *self.stats.lock().unwrap()
    }

    fn submit<T>(
        &self,
        payload: Payload,
        op: ReduceOp,
        algo: Option<Algo>,
        map: fn(Payload) -> Result<T>,
    ) -> Pending<T> {
        self.submit_raw(payload, op, algo, false, map)
    }

    fn submit_raw<T>(
        &self,
        payload: Payload,
        op: ReduceOp,
        algo: Option<Algo>,
        raw: bool,
        map: fn(Payload) -> Result<T>,
    ) -> Pending<T> {
        let (reply, rx) = mpsc::channel();
        let req = Request::Reduce {
            payload,
            op,
            algo: algo.unwrap_or(self.cfg.algo),
            raw,
            reply,
        };
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(Request::Reduce { reply, .. })) = tx.send(req) {
                let _ = reply.send(Err(CollectiveError::Closed));
            }
        }
        Pending { rx, map }
    }

    /// Starts an all-reduce of a dense buffer with the configured algorithm.
    pub fn start(&self, buf: Vec<f32>, op: ReduceOp) -> Pending<Vec<f32>> {
        self.submit(Payload::Dense(buf), op, None, as_dense)
    }

    /// Starts an all-reduce of a dense buffer with a given algorithm (every rank must pass the
    /// same one).
    pub fn start_with(&self, buf: Vec<f32>, op: ReduceOp, algo: Algo) -> Pending<Vec<f32>> {
        self.submit(Payload::Dense(buf), op, Some(algo), as_dense)
    }

    /// Starts an all-reduce of a sparse vector. The result's support is the union of the
    /// ranks' supports (sparse algorithms) or the positions with a nonzero sum (ring, innet):
    /// both describe the same dense vector.
    pub fn start_sparse(
        &self,
        v: SparseVec,
        op: ReduceOp,
        algo: Option<Algo>,
    ) -> Pending<SparseVec> {
        self.submit(Payload::Sparse(v), op, algo, as_sparse)
    }

    /// Starts an all-reduce of a dense buffer that returns the exact integer sums (sign-extended
    /// lanes) and the agreed [`FixedPoint`] instead of floats — for benchmarks and checks
    /// against an integer reference. Sparse-path algorithms return zeros off the union.
    pub fn start_fixed(&self, buf: Vec<f32>, algo: Algo) -> Pending<(Vec<i64>, FixedPoint)> {
        self.submit_raw(
            Payload::Dense(buf),
            ReduceOp::Sum,
            Some(algo),
            true,
            as_sums,
        )
    }

    /// Blocking all-reduce in place with the configured algorithm.
    pub fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<OpInfo> {
        self.all_reduce_with(buf, op, self.cfg.algo)
    }

    /// Blocking all-reduce in place with a given algorithm.
    pub fn all_reduce_with(&self, buf: &mut [f32], op: ReduceOp, algo: Algo) -> Result<OpInfo> {
        let (out, info) = self.start_with(buf.to_vec(), op, algo).wait()?;
        buf.copy_from_slice(&out);
        Ok(info)
    }

    /// Blocking all-reduce of a sparse vector.
    pub fn all_reduce_sparse(&self, v: SparseVec, op: ReduceOp) -> Result<(SparseVec, OpInfo)> {
        self.start_sparse(v, op, None).wait()
    }

    /// Blocks until every rank got here (an all-reduce of an empty buffer).
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
