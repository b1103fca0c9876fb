//! Shared plumbing of the example programs: the launcher that spawns the switch and one worker
//! process per rank on loopback (re-executing the current binary with `RANK`/`WORLD_SIZE`/
//! `MASTER_ADDR`/`MASTER_PORT` set), per-rank summaries, and the comparison table.

pub mod plot;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sketchreduce_collectives::{Algo, Communicator, Config, DEFAULT_TIMEOUT};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options every training example shares.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Spawn the switch and this many worker processes on loopback. Ignored when RANK and
    /// WORLD_SIZE are set (then this process is one rank of a job started elsewhere).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// All-reduce algorithm: innet | ring | allgather | auto.
    #[arg(long, default_value = "auto")]
    pub algo: String,
    /// Run every algorithm with the same seed and print a comparison table.
    #[arg(long)]
    pub compare: bool,
    /// Training iterations.
    #[arg(long, default_value_t = 60)]
    pub iters: usize,
    /// Seed of the model initialisation and of the synthetic data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Use an external switch (control endpoint host:port, e.g. from `sketchreduce switch`)
    /// instead of spawning one in-process.
    #[arg(long)]
    pub switch: Option<String>,
    /// Gradient bucket size in MB (DDP-style).
    #[arg(long, default_value_t = 25.0)]
    pub bucket_mb: f64,
    /// Per-operation timeout in seconds (a peer silent this long fails the job; dead peers
    /// whose connection closes fail it at once). Default: torch.distributed's 30 minutes.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT.as_secs_f64())]
    pub timeout: f64,
    /// Evaluate the held-out metric every this many iterations (and before the first and
    /// after the last).
    #[arg(long, default_value_t = 10)]
    pub eval_every: usize,
    /// Directory for the loss/metric CSV and PNG curve of each run (rank 0 writes them).
    #[arg(long, default_value = "out")]
    pub out_dir: std::path::PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What each rank prints (one JSON line on stdout prefixed by `SUMMARY `).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Requested algorithm.
    pub algo: String,
    /// Rank.
    pub rank: usize,
    /// World size.
    pub world: usize,
    /// Iterations.
    pub iters: usize,
    /// Mean forward+backward+update time per iteration, ms.
    pub compute_ms: f64,
    /// Mean gradient synchronisation time per iteration, ms.
    pub comm_ms: f64,
    /// Mean wall time per iteration, ms.
    pub iter_ms: f64,
    /// Bytes this rank sent per iteration (TCP frames, or UDP datagrams to the switch).
    pub bytes_per_iter: f64,
    /// Global (all-reduced) loss of the first and last iteration.
    pub first_loss: f64,
    /// See `first_loss`.
    pub final_loss: f64,
    /// FNV-1a over the bits of every parameter after training.
    pub param_hash: String,
    /// How many gradient all-reduces each algorithm ran (auto resolves per tensor); the
    /// reductions of the logged loss are not counted.
    pub ops_by_algo: Vec<(String, u64)>,
    /// Name of the held-out metric (e.g. "AUC", "MSE").
    pub metric: String,
    /// Held-out metric before training (rank 0 evaluates; `None` on the other ranks).
    pub first_metric: Option<f64>,
    /// Held-out metric after training.
    pub final_metric: Option<f64>,
}

/// Per-iteration measurements of one rank.
#[derive(Debug, Default)]
pub struct Meter {
    compute: Duration,
    comm: Duration,
    total: Duration,
    bytes: u64,
    iters: usize,
    /// Gradient operations per algorithm: innet, ring, allgather.
    ops: [u64; 3],
    /// First loss.
    pub first_loss: Option<f64>,
    /// Last loss.
    pub last_loss: f64,
    /// (iteration, loss, held-out metric if evaluated) per iteration.
    pub curve: Vec<(usize, f64, Option<f64>)>,
}

impl Meter {
    /// Records one iteration.
    pub fn record(
        &mut self,
        compute: Duration,
        comm: Duration,
        total: Duration,
        report: &sketchreduce_collectives::DdpReport,
        loss: f64,
    ) {
        self.compute += compute;
        self.comm += comm;
        self.total += total;
        self.bytes += report.bytes_sent;
        for a in &report.algos {
            self.ops[match a {
                Algo::Innet => 0,
                Algo::Ring => 1,
                _ => 2,
            }] += 1;
        }
        self.curve.push((self.iters, loss, None));
        self.iters += 1;
        self.first_loss.get_or_insert(loss);
        self.last_loss = loss;
    }

    /// Records the held-out metric after `iters_done` iterations (0: before training).
    pub fn record_metric(&mut self, iters_done: usize, value: f64) {
        match self.curve.iter_mut().find(|c| c.0 + 1 == iters_done) {
            Some(c) => c.2 = Some(value),
            None => self.curve.insert(0, (0, f64::NAN, Some(value))),
        }
    }

    /// First and last recorded held-out metric.
    fn metric_ends(&self) -> (Option<f64>, Option<f64>) {
        let m: Vec<f64> = self.curve.iter().filter_map(|c| c.2).collect();
        (m.first().copied(), m.last().copied())
    }

    /// Writes `{out_dir}/{name}_{algo}.csv` (iteration, loss, metric) and the PNG curve next
    /// to it; returns the PNG's path. The x axis counts iterations done: the loss of
    /// iteration i is at i + 1 (measured on the batch before the update), a metric at k was
    /// evaluated after k updates.
    pub fn write_curves(
        &self,
        out_dir: &std::path::Path,
        name: &str,
        algo: Algo,
        metric: &str,
    ) -> Result<std::path::PathBuf> {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let base = out_dir.join(format!("{name}_{}", algo.name()));
        let mut csv = format!("iteration,loss,held_out_{}\n", metric.to_lowercase());
        let mut loss_pts = Vec::new();
        let mut metric_pts = Vec::new();
        for &(it, loss, m) in &self.curve {
            let done = if loss.is_nan() { 0 } else { it + 1 };
            csv.push_str(&format!(
                "{done},{},{}\n",
                if loss.is_nan() {
                    String::new()
                } else {
                    loss.to_string()
                },
                m.map(|v| v.to_string()).unwrap_or_default()
            ));
            if !loss.is_nan() {
                loss_pts.push((done as f64, loss));
            }
            if let Some(v) = m {
                metric_pts.push((done as f64, v));
            }
        }
        std::fs::write(base.with_extension("csv"), csv)?;
        let png = base.with_extension("png");
        let loss_title = format!("{name} ({}): training loss", algo.name());
        let metric_title = format!("held-out {metric}");
        plot::write_chart(
            &png,
            "iterations",
            &[
                plot::Panel {
                    title: &loss_title,
                    points: &loss_pts,
                    color: [200, 40, 40],
                },
                plot::Panel {
                    title: &metric_title,
                    points: &metric_pts,
                    color: [30, 90, 200],
                },
            ],
        )?;
        Ok(png)
    }

    /// The summary line of this rank.
    pub fn summary(
        &self,
        algo: Algo,
        comm: &Communicator,
        param_hash: u64,
        metric: &str,
    ) -> Summary {
        let n = self.iters.max(1) as f64;
        let (first_metric, final_metric) = self.metric_ends();
        Summary {
            algo: algo.name().into(),
            rank: comm.rank(),
            world: comm.world_size(),
            iters: self.iters,
            compute_ms: self.compute.as_secs_f64() * 1e3 / n,
            comm_ms: self.comm.as_secs_f64() * 1e3 / n,
            iter_ms: self.total.as_secs_f64() * 1e3 / n,
            bytes_per_iter: self.bytes as f64 / n,
            first_loss: self.first_loss.unwrap_or(f64::NAN),
            final_loss: self.last_loss,
            param_hash: format!("{param_hash:016x}"),
            ops_by_algo: vec![
                ("innet".into(), self.ops[0]),
                ("ring".into(), self.ops[1]),
                ("allgather".into(), self.ops[2]),
            ],
            metric: metric.into(),
            first_metric,
            final_metric,
        }
    }
}

/// Area under the ROC curve of `scores` for binary `labels` (1 = positive): the probability
/// that a random positive scores above a random negative, ties counting one half. NaN when
/// one class is missing.
pub fn auc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over runs of equal scores.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] > 0.5 {
                rank_sum_pos += avg;
            }
        }
        i = j + 1;
    }
    let p = labels.iter().filter(|&&y| y > 0.5).count() as f64;
    let n = labels.len() as f64 - p;
    (rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n)
}

/// FNV-1a over the bit patterns of every trainable variable, in registration order.
pub fn param_hash(vs: &tch::nn::VarStore) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in vs.trainable_variables() {
        let v: Vec<f32> = Vec::try_from(&t.contiguous().view(-1)).unwrap_or_default();
        for x in v {
            for b in x.to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}

/// Plain SGD step `p ← p + (−lr)·g` with the same arithmetic for dense and sparse gradients
/// (so rows whose averaged gradient is 0 are unchanged whichever way they are represented),
/// then clears the gradients.
pub fn sgd_step(vs: &tch::nn::VarStore, lr: f64) {
    tch::no_grad(|| {
        for mut p in vs.trainable_variables() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            if g.is_sparse() {
                let g = g.coalesce();
                let rows = g.indices().get(0);
                let delta = g.values() * (-lr);
                let _ = p.index_add_(0, &rows, &delta);
            } else {
                let delta = &g * (-lr);
                let _ = p.f_add_(&delta);
            }
            p.zero_grad();
        }
    });
}

/// Adam (Kingma & Ba) with *lazy* row-wise updates for sparse gradients, like
/// `torch.optim.SparseAdam`: only the rows present in a sparse gradient have their moments and
/// values updated, with the bias correction of the global step.
///
/// Rows whose averaged gradient is entirely zero are dropped before the update. The sparse
/// all-reduce returns the *union* of the ranks' rows (all-gather) or only the rows with a
/// nonzero sum (ring, innet): both describe the same dense gradient, and dropping the zero
/// rows makes the update — hence the parameters — bit-identical whichever algorithm ran.
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator term.
    pub eps: f64,
    step: i32,
    state: Vec<Option<(tch::Tensor, tch::Tensor)>>,
}

impl Adam {
    /// Adam with the usual defaults (β = 0.9, 0.999; ε = 1e-8).
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            state: Vec::new(),
        }
    }

    /// One update of every trainable variable of `vs` that has a gradient, then clears the
    /// gradients.
    pub fn step(&mut self, vs: &tch::nn::VarStore) {
        self.step += 1;
        let (b1, b2, eps, lr) = (self.beta1, self.beta2, self.eps, self.lr);
        let bc1 = 1.0 - b1.powi(self.step);
        let bc2 = 1.0 - b2.powi(self.step);
        let vars = vs.trainable_variables();
        if self.state.len() < vars.len() {
            self.state.resize_with(vars.len(), || None);
        }
        tch::no_grad(|| {
            for (k, mut p) in vars.into_iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let (m, v) = self.state[k].get_or_insert_with(|| (p.zeros_like(), p.zeros_like()));
                if g.is_sparse() {
                    let g = g.coalesce();
                    let vals = g.values();
                    let nz = vals.ne(0.0).flatten(1, -1).any_dim(1, false);
                    let keep = nz.nonzero().view(-1);
                    let rows = g.indices().get(0).index_select(0, &keep);
                    let g = vals.index_select(0, &keep);
                    let m_r = m.index_select(0, &rows) * b1 + &g * (1.0 - b1);
                    let v_r = v.index_select(0, &rows) * b2 + g.square() * (1.0 - b2);
                    let upd = (&m_r / bc1) / ((&v_r / bc2).sqrt() + eps) * (-lr);
                    let _ = m.index_copy_(0, &rows, &m_r);
                    let _ = v.index_copy_(0, &rows, &v_r);
                    let _ = p.index_add_(0, &rows, &upd);
                } else {
                    let _ = m
                        .f_mul_scalar_(b1)
                        .and_then(|mut m| m.f_add_(&(&g * (1.0 - b1))));
                    let _ = v
                        .f_mul_scalar_(b2)
                        .and_then(|mut v| v.f_add_(&(g.square() * (1.0 - b2))));
                    let upd = (&*m / bc1) / ((&*v / bc2).sqrt() + eps) * (-lr);
                    let _ = p.f_add_(&upd);
                }
                p.zero_grad();
            }
        });
    }
}

/// How this process runs.
pub enum Role {
    /// One rank of a job (RANK/WORLD_SIZE set): the communicator and the algorithm.
    Worker(Arc<Communicator>, Algo),
    /// The launcher already ran the job(s) and printed the results.
    Done,
}

/// Entry point of every example: a worker when `RANK` is set, else the launcher.
pub fn start(common: &Common, title: &str) -> Result<Role> {
    if std::env::var_os("RANK").is_some() {
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
    let results = launch(common, &algos)?;
    print_report(title, common, &results);
    Ok(Role::Done)
}

/// Spawns the switch (unless `--switch`) and, for each algorithm, `--workers` processes of
/// this binary; returns every rank's summary per algorithm.
pub fn launch(common: &Common, algos: &[Algo]) -> Result<Vec<(Algo, Vec<Summary>, Duration)>> {
    sketchreduce_collectives::parse_timeout_secs("--timeout", &common.timeout.to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = common.workers;
    if n == 0 || n > 32 {
        bail!("--workers must be in 1..=32");
    }
    let needs_switch = algos.iter().any(|a| matches!(a, Algo::Innet | Algo::Auto));
    let mut _switch = None;
    let switch_addr = match (&common.switch, needs_switch) {
        (Some(s), _) => Some(s.clone()),
        (None, true) => {
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
        (None, false) => None,
    };
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = Vec::new();
    for (k, &algo) in algos.iter().enumerate() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let t0 = Instant::now();
        eprintln!("[launcher] {algo}: {n} workers, MASTER 127.0.0.1:{port}");
        let mut children = Vec::new();
        for r in 0..n {
            let mut c = Command::new(&exe);
            c.args(&args)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", n.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("SKETCHREDUCE_ALGO", algo.name())
                .env(
                    "SKETCHREDUCE_JOB",
                    (k + 1 + std::process::id() as usize % 8 * 4).to_string(),
                )
                .env("SKETCHREDUCE_TIMEOUT_SECS", common.timeout.to_string())
                .stdout(Stdio::piped());
            if let Some(s) = &switch_addr {
                c.env("SKETCHREDUCE_SWITCH", s);
            }
            if r != 0 || common.quiet {
                c.env("SKETCHREDUCE_QUIET", "1");
            }
            children.push(c.spawn().with_context(|| format!("spawning rank {r}"))?);
        }
        let mut sums = Vec::new();
        let mut failed = Vec::new();
        for (r, mut ch) in children.into_iter().enumerate() {
            let stdout = ch.stdout.take().unwrap();
            for line in BufReader::new(stdout).lines() {
                let line = line?;
                if let Some(j) = line.strip_prefix("SUMMARY ") {
                    sums.push(serde_json::from_str::<Summary>(j)?);
                } else {
                    println!("{line}");
                }
            }
            let st = ch.wait()?;
            if !st.success() {
                failed.push(format!("rank {r} exited with {st}"));
            }
        }
        if !failed.is_empty() {
            bail!("{algo} run failed: {}", failed.join("; "));
        }
        sums.sort_by_key(|s| s.rank);
        out.push((algo, sums, t0.elapsed()));
    }
    Ok(out)
}

/// Prints the per-algorithm table and the bit-identity verdict.
pub fn print_report(title: &str, common: &Common, results: &[(Algo, Vec<Summary>, Duration)]) {
    println!();
    println!(
        "== {title}: {} workers, {} iterations, seed {} ==",
        common.workers, common.iters, common.seed
    );
    let metric = results
        .iter()
        .find_map(|r| r.1.first().map(|s| s.metric.clone()))
        .unwrap_or_default();
    println!(
        "{:<10} {:>9} {:>10} {:>9} {:>13} {:>9} {:>9} {:>9} {:>9} {:>7}  {:<16} grad ops (innet/ring/allgather)",
        "algo",
        "iter ms",
        "compute ms",
        "comm ms",
        "KB sent/iter",
        "loss[0]",
        "loss[end]",
        format!("{metric}[0]"),
        format!("{metric}[end]"),
        "wall s",
        "param hash",
    );
    let mut hashes = Vec::new();
    for (algo, sums, wall) in results {
        let Some(s0) = sums.first() else { continue };
        let mean = |f: fn(&Summary) -> f64| sums.iter().map(f).sum::<f64>() / sums.len() as f64;
        let ranks_agree = sums.iter().all(|s| s.param_hash == s0.param_hash);
        let ops: Vec<String> = s0.ops_by_algo.iter().map(|(_, c)| c.to_string()).collect();
        println!(
            "{:<10} {:>9.1} {:>10.1} {:>9.1} {:>13.1} {:>9.5} {:>9.5} {:>9} {:>9} {:>7.1}  {:<16} {}{}",
            algo.name(),
            mean(|s| s.iter_ms),
            mean(|s| s.compute_ms),
            mean(|s| s.comm_ms),
            mean(|s| s.bytes_per_iter) / 1024.0,
            s0.first_loss,
            s0.final_loss,
            fmt_metric(s0.first_metric),
            fmt_metric(s0.final_metric),
            wall.as_secs_f64(),
            s0.param_hash,
            ops.join("/"),
            if ranks_agree {
                ""
            } else {
                "  (RANKS DISAGREE!)"
            }
        );
        hashes.push(s0.param_hash.clone());
    }
    if hashes.len() > 1 {
        let same = hashes.iter().all(|h| *h == hashes[0]);
        println!(
            "final parameters bit-identical across algorithms: {}",
            if same { "YES" } else { "NO" }
        );
    }
    println!("({metric}: held-out metric of rank 0's model before and after training; curves and CSV in {}/)", common.out_dir.display());
    println!("(loopback on this machine: the bottleneck is the CPU shared by all workers, not a network)");
}

fn fmt_metric(m: Option<f64>) -> String {
    m.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

/// A progress bar on stderr for rank 0 (hidden for other ranks and with --quiet).
pub fn progress(iters: usize, label: &str) -> indicatif::ProgressBar {
    if std::env::var_os("SKETCHREDUCE_QUIET").is_some() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(iters as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}

/// Timings and traffic of one data-parallel training iteration.
#[derive(Debug)]
pub struct Step {
    /// The global (rank-averaged) loss of this iteration's batches.
    pub loss: f32,
    /// Forward + backward + optimizer time.
    pub compute: Duration,
    /// Gradient synchronisation time.
    pub comm: Duration,
    /// The DDP helper's report for this iteration.
    pub report: sketchreduce_collectives::DdpReport,
}

/// One data-parallel iteration, shared by the training examples: `loss` (forward on this
/// rank's batch) → backward → [`DistributedDataParallel::sync_gradients`] → `update`
/// (optimizer step), then the rank-averaged loss for the log over the ring (not counted as
/// gradient communication), recorded into `meter`.
///
/// [`DistributedDataParallel::sync_gradients`]: sketchreduce_collectives::DistributedDataParallel::sync_gradients
pub fn train_step(
    comm: &Communicator,
    ddp: &sketchreduce_collectives::DistributedDataParallel,
    meter: &mut Meter,
    it: usize,
    loss: impl FnOnce() -> tch::Tensor,
    update: impl FnOnce(),
) -> Result<Step> {
    let t0 = Instant::now();
    let loss = loss();
    loss.backward();
    let t1 = Instant::now();
    let report = ddp
        .sync_gradients()
        .map_err(|e| anyhow::anyhow!("iteration {it}: {e}"))?;
    let t2 = Instant::now();
    update();
    let t3 = Instant::now();
    let mut l = [loss.double_value(&[]) as f32];
    comm.all_reduce_with(&mut l, sketchreduce_collectives::ReduceOp::Avg, Algo::Ring)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let compute = (t1 - t0) + (t3 - t2);
    meter.record(compute, t2 - t1, t3 - t0, &report, l[0] as f64);
    Ok(Step {
        loss: l[0],
        compute,
        comm: t2 - t1,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::auc;

    #[test]
    fn auc_against_hand_counts() {
        // Pairs (pos, neg): 0.9>0.1, 0.9>0.4, 0.3>0.1, 0.3<0.4 → 3 of 4.
        assert_eq!(auc(&[0.9, 0.3, 0.1, 0.4], &[1.0, 1.0, 0.0, 0.0]), 0.75);
        assert_eq!(auc(&[0.5, 0.5], &[1.0, 0.0]), 0.5, "a tie counts one half");
        assert_eq!(auc(&[0.1, 0.2, 0.3], &[0.0, 0.0, 1.0]), 1.0);
        assert!(auc(&[0.1, 0.2], &[1.0, 1.0]).is_nan());
    }
}
