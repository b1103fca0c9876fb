//! `sketchreduce bench allreduce`: an in-process switch (switch-emu) and N worker
//! *processes* on loopback run K all-reduces of synthetic sparse gradients (the codec bench's
//! generator); every worker checks every result against the exact reference (the fixed-point
//! values of all workers' gradients summed in i64) and prints one JSON line; the parent
//! aggregates them into one line.
//!
//! Workers are this same binary re-invoked as `bench allreduce --role worker --rank i ...`;
//! they print `{"addr": ...}` once their socket is bound, read the job spec (one JSON line) from
//! stdin, run, and print their result line. Another algorithm (e.g. `ring`/`allgather` from the
//! collectives crate) plugs in as one more arm in [`make_worker`] implementing
//! [`BenchWorker`].
//!
//! With `--rank-from-env` the process is instead *one rank* of a job started by a launcher
//! (see [`crate::allreduce_rank`]), which is how `benches/netbench/run` uses it.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sketchreduce_agent::{
    bind_udp, Agent, AgentConfig, AggConfig, InnetConfig, Lossy, QuicConfig, QuicTransport,
    Transport, UdpTransport,
};
use sketchreduce_codec::synth::{generate, Pattern, SynthSpec};
use sketchreduce_codec::{max_exponent, FixedPoint, IndexChoice, LaneWidth};
use sketchreduce_switch::{spawn_switch, total_drops, QuicSettings, SwitchConfig};
use sketchreduce_wire::{DropReason, JobSpec, WorkerSpec};

/// Aggregation algorithm.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// In-network: exponent MAX, index OR + sketch ADD through the switch, local decode.
    Innet,
    /// Dense ring all-reduce over TCP between workers (sketchreduce-collectives).
    Ring,
    /// Sparse all-gather of (index, value) pairs over TCP (sketchreduce-collectives).
    Allgather,
    /// Chosen per operation by the cost model (sketchreduce-collectives' `Algo::Auto`).
    Auto,
}

impl Algo {
    /// Name on the command line and in `SKETCHREDUCE_ALGO`.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Innet => "innet",
            Algo::Ring => "ring",
            Algo::Allgather => "allgather",
            Algo::Auto => "auto",
        }
    }
}

/// Data path to the switch.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// Batched UDP (sendmmsg/recvmmsg).
    Udp,
    /// QUIC datagrams + a control stream, TLS pinned by fingerprint.
    Quic,
}

impl TransportKind {
    fn name(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Quic => "quic",
        }
    }
}

/// Process role (internal).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Spawns the switch and the workers, aggregates.
    Parent,
    /// One worker process.
    Worker,
}

/// Defaults of the options that only the parent mode honours (the `Communicator` of the
/// `--rank-from-env` mode picks its own).
pub struct ParentDefaults {
    /// `--lanes`.
    pub lanes: u16,
    /// `--window`.
    pub window: u32,
    /// `--index`.
    pub index: &'static str,
}

/// See [`ParentDefaults`].
pub const DEFAULTS: ParentDefaults = ParentDefaults {
    lanes: 256,
    window: 128,
    index: "auto",
};

/// Arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Run as one rank of a job started by a launcher: RANK, WORLD_SIZE, MASTER_ADDR,
    /// MASTER_PORT and SKETCHREDUCE_* from the environment, the real Communicator, an external
    /// switch (SKETCHREDUCE_SWITCH or --switch); prints one JSON line for this rank.
    #[arg(long)]
    pub rank_from_env: bool,
    /// Switch control endpoint (`IP:PORT`) for --rank-from-env; overrides SKETCHREDUCE_SWITCH.
    #[arg(long)]
    pub switch: Option<SocketAddr>,
    /// Untimed all-reduces before the timed ones (--rank-from-env).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// With --rank-from-env: run fewer timed all-reduces (at least 1) when --iters of them
    /// would take longer than this many seconds, judged from the warm-up (0: always --iters).
    #[arg(long, default_value_t = 0.0)]
    pub time_budget_s: f64,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Gradient dimension.
    #[arg(long, default_value_t = 1_000_000)]
    pub dim: usize,
    /// Nonzero density per worker.
    #[arg(long, default_value_t = 0.01)]
    pub density: f64,
    /// Fraction of each worker's support shared by all workers.
    #[arg(long, default_value_t = 0.5)]
    pub overlap: f64,
    /// Sparsity pattern: random or rows:W.
    #[arg(long, default_value = "random")]
    pub pattern: String,
    /// Aggregation algorithm [default: innet; with --rank-from-env: SKETCHREDUCE_ALGO, then
    /// innet].
    #[arg(long, value_enum)]
    pub algo: Option<Algo>,
    /// Transport.
    #[arg(long, value_enum, default_value_t = TransportKind::Udp)]
    pub transport: TransportKind,
    /// With --transport quic: every worker presents its own client certificate and the switch
    /// accepts only those (as `sketchreduce switch --quic-client-fingerprints`).
    #[arg(long)]
    pub quic_client_certs: bool,
    /// Injected loss probability per datagram, in each direction (seeded, inside the agents).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// All-reduces per run.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Seed of gradients and loss.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Index layout of the sketch codec: auto (fewest bytes), bitmap (fastest decode), bloom.
    #[arg(long, default_value = DEFAULTS.index)]
    pub index: String,
    /// Lanes per packet.
    #[arg(long, default_value_t = DEFAULTS.lanes)]
    pub lanes: u16,
    /// Slots in flight per worker.
    #[arg(long, default_value_t = DEFAULTS.window)]
    pub window: u32,
    /// A chunk without a result for this long fails the run (milliseconds).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Print one JSON line (always on with --rank-from-env).
    #[arg(long)]
    pub json: bool,

    // Internal: worker processes.
    #[arg(long, value_enum, default_value_t = Role::Parent, hide = true)]
    pub role: Role,
    #[arg(long, default_value_t = 0, hide = true)]
    pub rank: usize,
    #[arg(long, hide = true)]
    pub switch_control: Option<SocketAddr>,
    #[arg(long, hide = true)]
    pub switch_quic: Option<SocketAddr>,
    #[arg(long, hide = true)]
    pub fingerprint: Option<String>,
    /// Directory of the worker's QUIC client identity (internal).
    #[arg(long, hide = true)]
    pub quic_identity: Option<std::path::PathBuf>,
    /// Local IP address a worker binds (internal; namespaces use their own).
    #[arg(long, default_value = "127.0.0.1", hide = true)]
    pub bind: std::net::IpAddr,
}

impl Args {
    /// The algorithm of the parent mode (`--algo`, default innet).
    fn algo(&self) -> Algo {
        self.algo.unwrap_or(Algo::Innet)
    }
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rank_from_env || (1..=32).contains(&args.workers),
        "--workers must be 1..=32"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.density),
        "--density must be in [0, 1]"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.overlap),
        "--overlap must be in [0, 1]"
    );
    anyhow::ensure!((0.0..1.0).contains(&args.loss), "--loss must be in [0, 1)");
    anyhow::ensure!(
        !args.quic_client_certs || args.transport == TransportKind::Quic,
        "--quic-client-certs needs --transport quic"
    );
    anyhow::ensure!(args.iters >= 1, "--iters must be >= 1");
    anyhow::ensure!(args.dim as u64 <= u32::MAX as u64, "--dim must fit in u32");
    anyhow::ensure!(
        ["auto", "bitmap", "bloom"].contains(&args.index.as_str()),
        "--index must be auto, bitmap or bloom"
    );
    args.pattern
        .parse::<Pattern>()
        .map_err(|e| anyhow::anyhow!(e))?;
    if args.rank_from_env {
        return crate::allreduce_rank::run(&args);
    }
    match args.role {
        Role::Parent => parent(args),
        Role::Worker => worker(args),
    }
}

// ---------------------------------------------------------------- parent

struct Proc {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn read_json_line(p: &mut Proc, what: &str) -> anyhow::Result<Value> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = p.out.read_line(&mut line)?;
        if n == 0 {
            let status = p.child.wait().ok();
            bail!("worker exited before sending {what} (status {status:?})");
        }
        if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
            return Ok(v);
        }
    }
}

fn parent(args: Args) -> anyhow::Result<()> {
    let quic = args.transport == TransportKind::Quic;
    let mut cfg = SwitchConfig::loopback(2, 4096);
    // One client identity per rank (kept across runs, like the switch's), all allowed.
    let client_dirs: Vec<std::path::PathBuf> = if args.quic_client_certs {
        (0..args.workers)
            .map(|r| std::env::temp_dir().join(format!("sketchreduce-bench-quic-client-{r}")))
            .collect()
    } else {
        Vec::new()
    };
    let client_allow = if client_dirs.is_empty() {
        None
    } else {
        let fps = client_dirs
            .iter()
            .map(|d| {
                sketchreduce_quic::load_or_create_identity(d)
                    .map(|id| sketchreduce_quic::fingerprint_bytes(&id.cert_der))
            })
            .collect::<Result<Vec<_>, _>>()
            .context("worker QUIC identities")?;
        Some(sketchreduce_quic::ClientAllowList::new(fps)?)
    };
    if quic {
        cfg.quic = Some(QuicSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert_dir: std::env::temp_dir().join("sketchreduce-bench-quic"),
            client_allow,
        });
    }
    let sw = spawn_switch(cfg).context("starting the switch")?;
    let exe = std::env::current_exe().context("current_exe")?;
    let mut procs = Vec::new();
    for rank in 0..args.workers {
        let mut c = Command::new(&exe);
        c.args(["bench", "allreduce", "--role", "worker"])
            .args(["--rank", &rank.to_string()])
            .args(["--workers", &args.workers.to_string()])
            .args(["--dim", &args.dim.to_string()])
            .args(["--density", &args.density.to_string()])
            .args(["--overlap", &args.overlap.to_string()])
            .args(["--pattern", &args.pattern])
            .args(["--algo", args.algo().name()])
            .args(["--transport", args.transport.name()])
            .args(["--loss", &args.loss.to_string()])
            .args(["--iters", &args.iters.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--lanes", &args.lanes.to_string()])
            .args(["--index", &args.index])
            .args(["--window", &args.window.to_string()])
            .args(["--timeout-ms", &args.timeout_ms.to_string()])
            .args(["--switch-control", &sw.control_addr().to_string()]);
        if quic {
            let qa = sw.quic_addr().context("switch has no QUIC endpoint")?;
            c.args(["--switch-quic", &qa.to_string()]);
            c.args(["--fingerprint", sw.fingerprint().unwrap_or_default()]);
            if let Some(d) = client_dirs.get(rank) {
                c.arg("--quic-identity").arg(d);
            }
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().context("spawning a worker")?;
        let out = BufReader::new(child.stdout.take().context("worker stdout")?);
        procs.push(Proc { child, out });
    }
    let mut workers = Vec::new();
    for p in procs.iter_mut() {
        let v = read_json_line(p, "its address")?;
        let addr: SocketAddr = v["addr"]
            .as_str()
            .context("worker address")?
            .parse()
            .context("worker address")?;
        workers.push(WorkerSpec::at(addr));
    }
    let window = args.window.max(2);
    let job = JobSpec {
        id: 1,
        epoch: 0,
        lanes: args.lanes,
        slot_base: 0,
        slot_count: window,
        workers,
    };
    let job = sw.create(job).context("creating the job")?;
    let spec_line = serde_json::to_string(&job)?;
    for p in procs.iter_mut() {
        let stdin = p.child.stdin.as_mut().context("worker stdin")?;
        writeln!(stdin, "{spec_line}")?;
        stdin.flush()?;
    }
    let mut results = Vec::new();
    for (rank, p) in procs.iter_mut().enumerate() {
        results.push(read_json_line(p, "its result").unwrap_or_else(|e| {
            json!({"rank": rank, "status": "worker_exited", "exact": false, "error": format!("{e:#}")})
        }));
    }
    for p in procs.iter_mut() {
        let _ = p.child.wait();
    }
    let counters = sw.shutdown();
    report(&args, &results, &counters)
}

fn report(
    args: &Args,
    results: &[Value],
    counters: &sketchreduce_wire::Counters,
) -> anyhow::Result<()> {
    let n = results.len();
    let errors: Vec<&Value> = results.iter().filter(|r| r["status"] != "ok").collect();
    let exact = errors.is_empty() && results.iter().all(|r| r["exact"] == true);
    let status = match errors.first() {
        None if exact => "ok".to_string(),
        None => "inexact".to_string(),
        Some(e) => e["status"].as_str().unwrap_or("error").to_string(),
    };
    // Per iteration, the all-reduce takes as long as its slowest worker.
    let mut per_iter: Vec<f64> = Vec::new();
    for r in results {
        if let Some(ts) = r["times_ms"].as_array() {
            for (i, t) in ts.iter().enumerate() {
                let t = t.as_f64().unwrap_or(0.0);
                if per_iter.len() <= i {
                    per_iter.push(t);
                } else {
                    per_iter[i] = per_iter[i].max(t);
                }
            }
        }
    }
    let mean_ms = if per_iter.is_empty() {
        0.0
    } else {
        per_iter.iter().sum::<f64>() / per_iter.len() as f64
    };
    let mut sorted = per_iter.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let p99_ms = if sorted.is_empty() {
        0.0
    } else {
        sorted[((sorted.len() as f64 * 0.99).ceil() as usize).clamp(1, sorted.len()) - 1]
    };
    let sum = |k: &str| {
        results
            .iter()
            .map(|r| r[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let iters_done = per_iter.len().max(1) as u64;
    let bytes_sent_per_worker = sum("bytes_sent") / (n as u64).max(1) / iters_done;
    let packets_per_worker = sum("packets_sent") / (n as u64).max(1) / iters_done;
    let retransmissions = sum("retransmissions");
    let decode_retries = results
        .iter()
        .map(|r| r["decode_retries"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let drops = total_drops(counters);
    let drops_obj: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .map(|d| (d.name().to_string(), json!(drops[*d as usize])))
        .collect();
    let dense_bytes = args.dim as u64 * 4;
    let first_error = errors
        .first()
        .map(|e| e["error"].clone())
        .unwrap_or(Value::Null);
    let out = json!({
        "status": status,
        "exact": exact,
        "algo": args.algo().name(),
        "index": args.index,
        "transport": args.transport.name(),
        "workers": args.workers,
        "dim": args.dim,
        "density": args.density,
        "overlap": args.overlap,
        "loss": args.loss,
        "iters": args.iters,
        "mean_ms": (mean_ms * 1000.0).round() / 1000.0,
        "p99_ms": (p99_ms * 1000.0).round() / 1000.0,
        "bytes_sent_per_worker": bytes_sent_per_worker,
        "packets_sent_per_worker": packets_per_worker,
        "dense_bytes": dense_bytes,
        "compression": if bytes_sent_per_worker > 0 { (dense_bytes as f64 / bytes_sent_per_worker as f64 * 100.0).round() / 100.0 } else { 0.0 },
        "retransmissions": retransmissions,
        "decode_retries": decode_retries,
        "union_nnz": results.first().map(|r| r["union_nnz"].clone()).unwrap_or(Value::Null),
        "cells": results.first().map(|r| r["cells"].clone()).unwrap_or(Value::Null),
        "switch_packets_in": counters.packets_in,
        "switch_packets_out": counters.packets_out,
        "switch_drops": drops_obj,
        "error": first_error,
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "all-reduce {} over {} with {} workers, dim {}, density {}, loss {}: status {}, exact {}",
            args.algo().name(),
            args.transport.name(),
            args.workers,
            args.dim,
            args.density,
            args.loss,
            out["status"],
            exact
        );
        println!(
            "  mean {mean_ms:.2} ms, p99 {p99_ms:.2} ms, {bytes_sent_per_worker} B/worker/all-reduce ({}x less than dense), {retransmissions} retransmissions, {decode_retries} decode retries",
            out["compression"]
        );
        if !first_error.is_null() {
            println!("  error: {first_error}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- worker

/// Counters a bench worker reports (cumulative).
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerCounters {
    /// Data bytes sent (aggregation headers + lanes).
    pub bytes_sent: u64,
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Decode recoveries.
    pub decode_retries: u64,
}

/// One algorithm as seen by the bench worker: exact integer sums of the all-reduce.
pub trait BenchWorker {
    /// All-reduces `grad`; returns (dense exact integer sums, union nonzeros, sketch cells).
    fn all_reduce(&mut self, tensor_id: u64, grad: &[f32]) -> anyhow::Result<(Vec<i64>, u64, u64)>;
    /// A cheap synchronisation point before a timed all-reduce.
    fn barrier(&mut self) -> anyhow::Result<()>;
    /// Counters so far.
    fn counters(&self) -> WorkerCounters;
}

struct InnetWorker<T: Transport> {
    agent: Agent<T>,
}

impl<T: Transport> BenchWorker for InnetWorker<T> {
    fn all_reduce(&mut self, tensor_id: u64, grad: &[f32]) -> anyhow::Result<(Vec<i64>, u64, u64)> {
        let r = self.agent.all_reduce(tensor_id, grad)?;
        let mut sums = vec![0i64; grad.len()];
        r.to_dense_sums(&mut sums)?;
        Ok((sums, r.nonzeros() as u64, r.cells as u64))
    }
    fn barrier(&mut self) -> anyhow::Result<()> {
        self.agent.all_reduce(u64::MAX, &[0.0])?;
        Ok(())
    }
    fn counters(&self) -> WorkerCounters {
        let s = self.agent.stats();
        WorkerCounters {
            bytes_sent: s.agg.bytes_sent,
            packets_sent: s.agg.packets_sent,
            retransmissions: s.agg.retransmissions,
            decode_retries: s.decode_retries,
        }
    }
}

/// Ring / all-gather from the collectives crate: TCP between the workers (the rendezvous on
/// rank 0 listens on the TCP port with the number of rank 0's UDP port); the switch is unused.
struct CollectiveWorker {
    comm: sketchreduce_collectives::Communicator,
    algo: sketchreduce_collectives::Algo,
}

impl BenchWorker for CollectiveWorker {
    fn all_reduce(
        &mut self,
        _tensor_id: u64,
        grad: &[f32],
    ) -> anyhow::Result<(Vec<i64>, u64, u64)> {
        let ((sums, _), _) = self.comm.start_fixed(grad.to_vec(), self.algo).wait()?;
        let nnz = sums.iter().filter(|&&q| q != 0).count() as u64;
        Ok((sums, nnz, 0))
    }
    fn barrier(&mut self) -> anyhow::Result<()> {
        Ok(self.comm.barrier()?)
    }
    fn counters(&self) -> WorkerCounters {
        WorkerCounters {
            bytes_sent: self.comm.stats().bytes_sent,
            ..Default::default()
        }
    }
}

fn make_worker(
    args: &Args,
    transport: Box<dyn Transport>,
    job: &JobSpec,
) -> anyhow::Result<Box<dyn BenchWorker>> {
    match args.algo() {
        Algo::Innet => {
            let mut agg = AggConfig::with_timeout(Duration::from_millis(args.timeout_ms));
            agg.window = args.window;
            let index = match args.index.as_str() {
                "auto" => IndexChoice::Auto,
                "bitmap" => IndexChoice::Bitmap,
                "bloom" => IndexChoice::Bloom,
                other => bail!("--index {other}: want auto, bitmap or bloom"),
            };
            let cfg = AgentConfig {
                agg,
                innet: InnetConfig {
                    index,
                    ..Default::default()
                },
                register: true,
            };
            let agent = Agent::new(transport, job, args.rank as u8, cfg)?;
            Ok(Box::new(InnetWorker { agent }))
        }
        algo @ (Algo::Ring | Algo::Allgather | Algo::Auto) => {
            use sketchreduce_collectives as sc;
            let master = job.workers[0].addr;
            let mut cfg = sc::Config::new(args.rank, job.workers.len(), master)
                .with_timeout(Duration::from_millis(args.timeout_ms.max(1000)));
            cfg.algo = cfg_algo(algo);
            let comm = sc::Communicator::new(cfg)?;
            Ok(Box::new(CollectiveWorker {
                comm,
                algo: cfg_algo(algo),
            }))
        }
    }
}

fn cfg_algo(a: Algo) -> sketchreduce_collectives::Algo {
    match a {
        Algo::Ring => sketchreduce_collectives::Algo::Ring,
        Algo::Allgather => sketchreduce_collectives::Algo::AllGather,
        Algo::Innet => sketchreduce_collectives::Algo::Innet,
        Algo::Auto => sketchreduce_collectives::Algo::Auto,
    }
}

fn reference(grads: &[Vec<f32>]) -> anyhow::Result<Vec<i64>> {
    let mut e = 0;
    for g in grads {
        e = e.max(max_exponent(g)?);
    }
    let f = FixedPoint::new(e, grads.len() as u32, LaneWidth::W32)?;
    let mut sums = vec![0i64; grads[0].len()];
    for g in grads {
        for (s, &v) in sums.iter_mut().zip(g) {
            if v != 0.0 {
                *s += f.to_fixed(v);
            }
        }
    }
    Ok(sums)
}

fn worker(args: Args) -> anyhow::Result<()> {
    let sock = bind_udp(SocketAddr::new(args.bind, 0))?;
    println!("{}", json!({"addr": sock.local_addr()?.to_string()}));
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let job: JobSpec = serde_json::from_str(line.trim()).context("job spec from the parent")?;
    let out = match worker_run(&args, sock, &job) {
        Ok(v) => v,
        Err(e) => {
            let name = e
                .downcast_ref::<sketchreduce_agent::AgentError>()
                .map(|a| a.name())
                .unwrap_or("error");
            json!({"rank": args.rank, "status": name, "exact": false, "error": format!("{e:#}")})
        }
    };
    println!("{out}");
    std::io::stdout().flush()?;
    Ok(())
}

fn worker_run(args: &Args, sock: std::net::UdpSocket, job: &JobSpec) -> anyhow::Result<Value> {
    let control = args.switch_control.context("--switch-control")?;
    let base: Box<dyn Transport> = match args.transport {
        TransportKind::Udp => Box::new(UdpTransport::new(sock, control)?),
        TransportKind::Quic => {
            let identity = match &args.quic_identity {
                Some(d) => {
                    Some(sketchreduce_quic::load_or_create_identity(d).context("--quic-identity")?)
                }
                None => None,
            };
            Box::new(QuicTransport::connect_with(
                sock,
                &QuicConfig {
                    server: args.switch_quic.context("--switch-quic")?,
                    fingerprint: args.fingerprint.clone().context("--fingerprint")?,
                    identity,
                },
            )?)
        }
    };
    let transport: Box<dyn Transport> = if args.loss > 0.0 {
        Box::new(Lossy::new(
            base,
            args.loss,
            args.seed ^ (args.rank as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
        ))
    } else {
        base
    };
    let mut w = make_worker(args, transport, job)?;
    let pattern: Pattern = args
        .pattern
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let mut times = Vec::new();
    let mut exact = true;
    let mut union_nnz = 0;
    let mut cells = 0;
    let mut sent = WorkerCounters::default();
    for it in 0..args.iters {
        let grads = generate(&SynthSpec {
            dim: args.dim,
            workers: args.workers,
            density: args.density,
            overlap: args.overlap,
            pattern,
            seed: args.seed.wrapping_mul(1000).wrapping_add(it as u64),
        })?;
        let want = reference(&grads)?;
        let mine = &grads[args.rank];
        w.barrier()?;
        let before = w.counters();
        let t0 = Instant::now();
        let (sums, u, c) = w.all_reduce(0, mine)?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        let after = w.counters();
        sent.bytes_sent += after.bytes_sent - before.bytes_sent;
        sent.packets_sent += after.packets_sent - before.packets_sent;
        sent.retransmissions += after.retransmissions - before.retransmissions;
        sent.decode_retries += after.decode_retries - before.decode_retries;
        union_nnz = u;
        cells = c;
        if sums != want {
            exact = false;
            let bad = sums.iter().zip(&want).filter(|(a, b)| a != b).count();
            tracing::error!(
                rank = args.rank,
                iteration = it,
                positions = bad,
                "result differs from the reference"
            );
        }
    }
    Ok(json!({
        "rank": args.rank,
        "status": if exact { "ok" } else { "inexact" },
        "exact": exact,
        "times_ms": times,
        "bytes_sent": sent.bytes_sent,
        "packets_sent": sent.packets_sent,
        "retransmissions": sent.retransmissions,
        "decode_retries": sent.decode_retries,
        "union_nnz": union_nnz,
        "cells": cells,
    }))
}
