//! Shared plumbing of the example programs: the launcher that spawns the switch and one worker
//! process per rank (re-executing the current binary with `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/
//! `MASTER_PORT` set) on loopback or in a shaped network-namespace testbed, per-rank summaries,
//! and the comparison table.

mod launch;
pub mod phases;
pub mod plot;
mod report;
pub mod testbed;

pub use launch::{launch, start, start_with, Extras, GlooPeer, Launched, Role, RunResult};
pub use report::print_report;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sketchreduce_collectives::{Algo, Communicator, DEFAULT_TIMEOUT};
use std::time::{Duration, Instant};

/// Options every training example shares.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Spawn the switch and this many worker processes (on loopback, or with --netns in
    /// network namespaces). Ignored when RANK and WORLD_SIZE are set (then this process is one
    /// rank of a job started elsewhere).
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
    /// Run every rank in its own network namespace, linked to a bridge in a switch namespace
    /// by tbf-shaped links (`benches/netbench/netns.sh`), and the switch (`sketchreduce
    /// switch`, authenticated control endpoint on the bridge) in the switch namespace.
    /// Needs root; the testbed is torn down on exit, on errors and on Ctrl-C.
    #[arg(long)]
    pub netns: bool,
    /// With --netns: rate of every link, both directions (tc units).
    #[arg(long, default_value = "1gbit")]
    pub netns_rate: String,
    /// With --netns: namespace name prefix (1-8 lowercase letters/digits; pick another one to
    /// run next to a testbed that is in use).
    #[arg(long, default_value = "skdemo")]
    pub netns_prefix: String,
    /// With --netns: first three octets of the testbed's /24 (ranks at .1.., the bridge at .254).
    #[arg(long, default_value = "10.233.7")]
    pub netns_subnet: String,
    /// With --netns: the testbed script [default: benches/netbench/netns.sh of this source tree].
    #[arg(long)]
    pub netns_script: Option<std::path::PathBuf>,
    /// With --netns: the `sketchreduce` binary that runs the switch [default: next to this
    /// program].
    #[arg(long)]
    pub switch_bin: Option<std::path::PathBuf>,
    /// Also run the example's torch.distributed (gloo) peer with this Python (one with the
    /// full torch, e.g. .venv-gloo/bin/python) and add its row to the comparison.
    #[arg(long)]
    pub gloo_python: Option<std::path::PathBuf>,
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
    /// Per-phase times of each gradient operation of a step, in `sync_gradients` order
    /// (empty when the phases were not recorded, e.g. the gloo peer).
    #[serde(default)]
    pub phases: Vec<phases::OpBreakdown>,
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
    /// Per-phase times of each gradient operation of a step.
    pub phases: phases::StepPhases,
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
            phases: self.phases.breakdown(),
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
    let log = phases::global();
    let n0 = log.map_or(0, |l| l.len());
    let report = ddp
        .sync_gradients()
        .map_err(|e| anyhow::anyhow!("iteration {it}: {e}"))?;
    let t2 = Instant::now();
    if let Some(l) = log {
        meter.phases.add(&l.since(n0));
    }
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
