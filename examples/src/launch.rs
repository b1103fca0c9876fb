//! The launcher of the examples: one process per rank (this binary again, with `RANK`/
//! `WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT` set), once per algorithm, on loopback with an
//! in-process switch, or with `--netns` in the shaped namespace testbed ([`crate::testbed`])
//! with `sketchreduce switch` in the switch namespace; optionally the example's gloo peer
//! ([`GlooPeer`]) in the same places; then every rank's `SUMMARY` line.

use crate::testbed::{Testbed, TestbedConfig};
use crate::{phases, print_report, Common, Summary};
use anyhow::{bail, Context, Result};
use sketchreduce_collectives::{Algo, Communicator, Config};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How this process runs.
pub enum Role {
    /// One rank of a job (RANK/WORLD_SIZE set): the communicator and the algorithm.
    Worker(Arc<Communicator>, Algo),
    /// The launcher already ran the job(s) and printed the results.
    Done,
}

/// The torch.distributed (gloo) version of an example: the same training step in Python, one
/// process per rank, started with `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` and
/// `GLOO_SOCKET_IFNAME`, printing a `SUMMARY` line like this crate's ranks.
#[derive(Debug, Clone)]
pub struct GlooPeer {
    /// The script.
    pub script: PathBuf,
    /// Its arguments besides `--iters`, `--seed` and `--eval-every` (which the launcher passes
    /// from [`Common`]): model shape, batch, learning rate...
    pub args: Vec<String>,
    /// Name of its row in the table.
    pub label: String,
    /// What its row measures, for the table's footnote.
    pub note: String,
}

/// What an example adds to the launcher.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Its gloo peer (run when `--gloo-python` is given).
    pub gloo: Option<GlooPeer>,
    /// Names of the gradient operations of one step, in `sync_gradients` order, for the
    /// per-phase breakdown.
    pub op_labels: Vec<String>,
}

/// One row of the comparison: every rank's summary.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Algorithm name, or the gloo peer's label.
    pub name: String,
    /// Whether this is the gloo peer.
    pub gloo: bool,
    /// Per rank, in rank order.
    pub summaries: Vec<Summary>,
    /// Wall time of the run (process start to exit).
    pub wall: Duration,
}

/// Everything the launcher ran, and where.
#[derive(Debug, Clone)]
pub struct Launched {
    /// Rows, in run order.
    pub runs: Vec<RunResult>,
    /// `Some(rate)` when the ranks ran in the shaped testbed.
    pub netns_rate: Option<String>,
    /// A run that failed without failing the launcher (the gloo peer), with its error.
    pub failed: Vec<(String, String)>,
    /// Fraction of the machine's CPU time that was busy during the runs (all processes,
    /// other users included), from /proc/stat.
    pub cpu_busy: Option<f64>,
    /// CPU cores of the machine.
    pub cores: usize,
    /// 1-minute load average at the start and the end.
    pub load: (Option<f64>, Option<f64>),
}

/// Entry point of every example: a worker when `RANK` is set, else the launcher.
pub fn start(common: &Common, title: &str) -> Result<Role> {
    start_with(common, title, &Extras::default())
}

/// [`start`] with an example's [`Extras`].
pub fn start_with(common: &Common, title: &str, extras: &Extras) -> Result<Role> {
    if std::env::var_os("RANK").is_some() {
        phases::install();
        let mut cfg = Config::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
        if std::env::var_os("SKETCHREDUCE_ALGO").is_none() {
            cfg.algo = common.algo.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if std::env::var_os("SKETCHREDUCE_TIMEOUT_SECS").is_none() {
            cfg.timeout = sketchreduce_collectives::parse_timeout_secs(
                "--timeout",
                &common.timeout.to_string(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let algo = cfg.algo;
        let comm = Communicator::new(cfg).map_err(|e| anyhow::anyhow!("rank setup: {e}"))?;
        return Ok(Role::Worker(Arc::new(comm), algo));
    }
    let algos: Vec<Algo> = if common.compare {
        vec![Algo::Innet, Algo::Ring, Algo::AllGather, Algo::Auto]
    } else {
        vec![common.algo.parse().map_err(|e| anyhow::anyhow!("{e}"))?]
    };
    let gloo = common.gloo_python.as_ref().and(extras.gloo.as_ref());
    if common.gloo_python.is_some() && gloo.is_none() {
        bail!("this example has no gloo peer (--gloo-python)");
    }
    let launched = launch(common, &algos, gloo)?;
    print_report(title, common, extras, &launched);
    Ok(Role::Done)
}

/// Busy and total jiffies of all CPUs (/proc/stat).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// 1-minute load average.
fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Where the ranks run.
enum Place {
    Loopback,
    Netns(Box<Testbed>),
}

impl Place {
    fn master_addr(&self) -> String {
        match self {
            Place::Loopback => "127.0.0.1".into(),
            Place::Netns(tb) => tb.rank_ip(0),
        }
    }

    /// A free port for the k-th run's rendezvous.
    fn master_port(&self, k: usize) -> Result<u16> {
        Ok(match self {
            Place::Loopback => std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
            // Fresh namespaces: nothing else listens there.
            Place::Netns(_) => 29500 + k as u16,
        })
    }

    /// `program` as rank `r` of `n` (torch.distributed's environment), in its namespace if
    /// any; quiet unless rank 0 of a run with a progress bar.
    fn rank(&self, r: usize, n: usize, port: u16, program: &Path, quiet: bool) -> Command {
        let mut c = match self {
            Place::Loopback => Command::new(program),
            Place::Netns(tb) => tb.rank_command(r, program),
        };
        c.env("RANK", r.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", self.master_addr())
            .env("MASTER_PORT", port.to_string());
        if r != 0 || quiet {
            c.env("SKETCHREDUCE_QUIET", "1");
        }
        c
    }
}

/// Default path of a file of this source tree.
fn source_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Spawns the switch (unless `--switch`) and, for each algorithm, `--workers` processes of
/// this binary, then the gloo peer if given; returns every rank's summary per run.
pub fn launch(common: &Common, algos: &[Algo], gloo: Option<&GlooPeer>) -> Result<Launched> {
    sketchreduce_collectives::parse_timeout_secs("--timeout", &common.timeout.to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = common.workers;
    if n == 0 || n > 32 {
        bail!("--workers must be in 1..=32");
    }
    let exe = std::env::current_exe()?;
    let mut place = if common.netns {
        Place::Netns(Box::new(Testbed::up(TestbedConfig {
            script: common
                .netns_script
                .clone()
                .unwrap_or_else(|| source_path("../benches/netbench/netns.sh")),
            prefix: common.netns_prefix.clone(),
            subnet: common.netns_subnet.clone(),
            rate: common.netns_rate.clone(),
            ranks: n,
        })?))
    } else {
        Place::Loopback
    };
    let needs_switch = algos.iter().any(|a| matches!(a, Algo::Innet | Algo::Auto));
    let mut _switch = None;
    let switch_addr = match (&common.switch, needs_switch, &mut place) {
        (Some(s), _, _) => Some(s.clone()),
        (None, true, Place::Netns(tb)) => {
            let bin = common
                .switch_bin
                .clone()
                .unwrap_or_else(|| exe.parent().unwrap_or(Path::new(".")).join("sketchreduce"));
            std::fs::create_dir_all(&common.out_dir)
                .with_context(|| format!("creating {}", common.out_dir.display()))?;
            let log = common.out_dir.join("switch.log");
            let a = tb.start_switch(&bin, &log)?;
            eprintln!(
                "[launcher] switch {} in namespace {}-sw, control {a} (authenticated), log {}",
                bin.display(),
                tb.config().prefix,
                log.display()
            );
            Some(a)
        }
        (None, true, Place::Loopback) => {
            let h = sketchreduce_switch::spawn_switch(sketchreduce_switch::SwitchConfig::loopback(
                1, 4096,
            ))
            .map_err(|e| anyhow::anyhow!("starting the in-process switch: {e}"))?;
            let a = h.control_addr().to_string();
            eprintln!(
                "[launcher] switch (in-process) control {a}, data {}",
                h.local_data_addr()
            );
            _switch = Some(h);
            Some(a)
        }
        (None, false, _) => None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cpu0 = cpu_jiffies();
    let load0 = load1();
    let mut runs = Vec::new();
    for (k, &algo) in algos.iter().enumerate() {
        let port = place.master_port(k)?;
        eprintln!(
            "[launcher] {algo}: {n} workers, MASTER {}:{port}",
            place.master_addr()
        );
        let cmds = (0..n)
            .map(|r| {
                let mut c = place.rank(r, n, port, &exe, common.quiet);
                c.args(&args)
                    .env("SKETCHREDUCE_ALGO", algo.name())
                    .env(
                        "SKETCHREDUCE_JOB",
                        (k + 1 + std::process::id() as usize % 8 * 4).to_string(),
                    )
                    .env("SKETCHREDUCE_TIMEOUT_SECS", common.timeout.to_string());
                if let Some(s) = &switch_addr {
                    c.env("SKETCHREDUCE_SWITCH", s);
                }
                if let Place::Netns(tb) = &place {
                    c.env("SKETCHREDUCE_SECRET_FILE", tb.secret_file());
                }
                c
            })
            .collect();
        let (summaries, wall) = run_ranks(cmds).with_context(|| format!("{algo} run"))?;
        runs.push(RunResult {
            name: algo.name().into(),
            gloo: false,
            summaries,
            wall,
        });
    }
    let mut failed = Vec::new();
    if let (Some(peer), Some(py)) = (gloo, &common.gloo_python) {
        let port = place.master_port(algos.len())?;
        eprintln!(
            "[launcher] {}: {n} workers ({}), MASTER {}:{port}",
            peer.label,
            py.display(),
            place.master_addr()
        );
        let cmds = (0..n)
            .map(|r| {
                let mut c = place.rank(r, n, port, py, common.quiet);
                c.arg(&peer.script)
                    .args(&peer.args)
                    .args(["--iters", &common.iters.to_string()])
                    .args(["--seed", &common.seed.to_string()])
                    .args(["--eval-every", &common.eval_every.to_string()])
                    .env(
                        "GLOO_SOCKET_IFNAME",
                        match place {
                            Place::Loopback => "lo",
                            Place::Netns(_) => "eth0",
                        },
                    )
                    .env("OMP_NUM_THREADS", "1")
                    // c10d warns that a namespace has no hostname for its address: noise.
                    .env("TORCH_CPP_LOG_LEVEL", "ERROR");
                c
            })
            .collect();
        match run_ranks(cmds) {
            Ok((summaries, wall)) => runs.push(RunResult {
                name: peer.label.clone(),
                gloo: true,
                summaries,
                wall,
            }),
            // The gloo row is a comparison, not the job: report it and keep the rest.
            Err(e) => {
                eprintln!("[launcher] {} failed: {e:#}", peer.label);
                failed.push((peer.label.clone(), format!("{e:#}")));
            }
        }
    }
    let cpu_busy = match (cpu0, cpu_jiffies()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) as f64 / (t1 - t0) as f64),
        _ => None,
    };
    let netns_rate = match &place {
        Place::Netns(tb) => Some(tb.config().rate.clone()),
        Place::Loopback => None,
    };
    drop(place); // tears the testbed down (also on every early return above)
    Ok(Launched {
        runs,
        netns_rate,
        failed,
        cpu_busy,
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
        load: (load0, load1()),
    })
}

/// Starts one process per rank, forwards what they print (rank 0's progress goes to stderr),
/// and collects their `SUMMARY` lines; fails when a rank fails or prints none.
fn run_ranks(cmds: Vec<Command>) -> Result<(Vec<Summary>, Duration)> {
    let t0 = Instant::now();
    let n = cmds.len();
    let mut children = Vec::new();
    for (r, mut c) in cmds.into_iter().enumerate() {
        c.stdin(Stdio::null()).stdout(Stdio::piped());
        children.push(c.spawn().with_context(|| format!("spawning rank {r}"))?);
    }
    let mut sums = Vec::new();
    let mut failed = Vec::new();
    for (r, mut ch) in children.into_iter().enumerate() {
        if let Some(stdout) = ch.stdout.take() {
            for line in BufReader::new(stdout).lines() {
                let line = line?;
                if let Some(j) = line.strip_prefix("SUMMARY ") {
                    sums.push(
                        serde_json::from_str::<Summary>(j)
                            .with_context(|| format!("rank {r}'s summary"))?,
                    );
                } else {
                    println!("{line}");
                }
            }
        }
        let st = ch.wait()?;
        if !st.success() {
            failed.push(format!("rank {r} exited with {st}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    if sums.len() != n {
        bail!("{} of {n} ranks printed a summary", sums.len());
    }
    sums.sort_by_key(|s| s.rank);
    Ok((sums, t0.elapsed()))
}
