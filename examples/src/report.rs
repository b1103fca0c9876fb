//! The comparison table the launcher prints: one row per run, the bit-identity verdict, the
//! speedups, which resource bounded the run, and where each algorithm's communication time
//! went (per operation and phase).

use crate::launch::{Extras, Launched, RunResult};
use crate::phases::PHASES;
use crate::testbed::rate_bps;
use crate::{Common, Summary};

fn mean(sums: &[Summary], f: fn(&Summary) -> f64) -> f64 {
    sums.iter().map(f).sum::<f64>() / sums.len().max(1) as f64
}

fn fmt_metric(m: Option<f64>) -> String {
    m.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

/// Mean per-iteration time of a run (over ranks).
fn iter_ms(r: &RunResult) -> f64 {
    mean(&r.summaries, |s| s.iter_ms)
}

/// Prints the per-run table, the bit-identity verdict, the speedups, the bounding resource
/// and the per-phase breakdown.
pub fn print_report(title: &str, common: &Common, extras: &Extras, l: &Launched) {
    let rate = l.netns_rate.as_deref().and_then(rate_bps);
    println!();
    match &l.netns_rate {
        Some(r) => println!(
            "== {title}: {} workers, {} iterations, seed {}; every rank in its own network namespace, links {r} (tbf), the switch in its own namespace ==",
            common.workers, common.iters, common.seed
        ),
        None => println!(
            "== {title}: {} workers, {} iterations, seed {}; loopback, in-process switch ==",
            common.workers, common.iters, common.seed
        ),
    }
    let metric = l
        .runs
        .iter()
        .find_map(|r| r.summaries.first().map(|s| s.metric.clone()))
        .unwrap_or_default();
    let w = l
        .runs
        .iter()
        .map(|r| r.name.len())
        .chain([9])
        .max()
        .unwrap_or(9);
    let ring = l.runs.iter().find(|r| r.name == "ring").map(iter_ms);
    println!(
        "{:<w$} {:>9} {:>7} {:>10} {:>9} {:>13}{} {:>9} {:>9} {:>9} {:>9} {:>7}  {:<16} grad ops (innet/ring/allgather)",
        "algo",
        "iter ms",
        "vs ring",
        "compute ms",
        "comm ms",
        "KB sent/iter",
        if rate.is_some() { format!(" {:>8}", "link ms") } else { String::new() },
        "loss[0]",
        "loss[end]",
        format!("{metric}[0]"),
        format!("{metric}[end]"),
        "wall s",
        "param hash",
    );
    let mut hashes = Vec::new();
    for r in &l.runs {
        let sums = &r.summaries;
        let Some(s0) = sums.first() else { continue };
        let ranks_agree = sums.iter().all(|s| s.param_hash == s0.param_hash);
        let ops: Vec<String> = s0.ops_by_algo.iter().map(|(_, c)| c.to_string()).collect();
        let bytes = mean(sums, |s| s.bytes_per_iter);
        let it = iter_ms(r);
        println!(
            "{:<w$} {:>9.1} {:>7} {:>10.1} {:>9.1} {:>13.1}{} {:>9.5} {:>9.5} {:>9} {:>9} {:>7.1}  {:<16} {}{}",
            r.name,
            it,
            ring.map_or("-".into(), |g| format!("{:.2}x", g / it)),
            mean(sums, |s| s.compute_ms),
            mean(sums, |s| s.comm_ms),
            bytes / 1024.0,
            rate.map_or(String::new(), |b| format!(" {:>8.1}", bytes * 8.0 / b * 1e3)),
            s0.first_loss,
            s0.final_loss,
            fmt_metric(s0.first_metric),
            fmt_metric(s0.final_metric),
            r.wall.as_secs_f64(),
            s0.param_hash,
            if r.gloo { "-".into() } else { ops.join("/") },
            if ranks_agree {
                ""
            } else {
                "  (RANKS DISAGREE!)"
            }
        );
        if !r.gloo {
            hashes.push(s0.param_hash.clone());
        }
    }
    for (name, e) in &l.failed {
        println!("{name:<w$} failed: {e}");
    }
    if hashes.len() > 1 {
        let same = hashes.iter().all(|h| *h == hashes[0]);
        println!(
            "final parameters bit-identical across algorithms: {}",
            if same { "YES" } else { "NO" }
        );
    }
    speedups(l);
    println!(
        "({metric}: held-out metric of rank 0's model before and after training; curves and CSV in {}/)",
        common.out_dir.display()
    );
    if rate.is_some() {
        println!("(link ms: the bytes a rank sends per iteration at the link rate: a floor under its comm time)");
    }
    if let Some(g) = l.runs.iter().find(|r| r.gloo).and(extras.gloo.as_ref()) {
        println!("({}: {})", g.label, g.note);
    }
    bound(l, rate);
    breakdown(l, extras);
}

/// innet's per-iteration speedup over the other rows.
fn speedups(l: &Launched) {
    let Some(innet) = l.runs.iter().find(|r| r.name == "innet") else {
        return;
    };
    let t = iter_ms(innet);
    let vs: Vec<String> = l
        .runs
        .iter()
        .filter(|r| r.name != "innet")
        .map(|r| format!("{:.2}x vs {}", iter_ms(r) / t, r.name))
        .collect();
    if !vs.is_empty() {
        println!(
            "innet per-iteration speedup: {} (>1: innet is faster)",
            vs.join(", ")
        );
    }
}

/// Which resource bounded the run, said plainly.
fn bound(l: &Launched, rate: Option<f64>) {
    let cpu = match l.cpu_busy {
        Some(b) => format!(
            "CPU busy {:.0}% of {} cores during the runs",
            b * 100.0,
            l.cores
        ),
        None => format!("{} cores", l.cores),
    };
    let load = match l.load {
        (Some(a), Some(b)) => format!(", 1-min load {a:.1} -> {b:.1}"),
        _ => String::new(),
    };
    match (rate, &l.netns_rate) {
        (Some(bps), Some(r)) => {
            let shares: Vec<String> = l
                .runs
                .iter()
                .map(|run| {
                    let bytes = mean(&run.summaries, |s| s.bytes_per_iter);
                    let comm = mean(&run.summaries, |s| s.comm_ms);
                    let link = bytes * 8.0 / bps * 1e3;
                    let share = link / comm.max(1e-9);
                    format!(
                        "{} {:.0}% ({})",
                        run.name,
                        100.0 * share,
                        if share >= 0.6 {
                            "network-bound"
                        } else if share <= 0.25 {
                            "CPU/latency-bound"
                        } else {
                            "network and CPU"
                        }
                    )
                })
                .collect();
            println!(
                "bound: links shaped to {r}; share of each row's comm time its bytes alone need at that rate: {}. ({cpu}{load}; the rest of a row's comm time is CPU and round trips, see below.)",
                shares.join(", ")
            );
        }
        _ => println!(
            "bound: loopback: the {} CPU cores bound this run ({} ranks and the switch share them; {cpu}{load}), not the network; run as root (scripts/demo) for the 1 Gbit/s shaped testbed.",
            l.cores,
            l.runs.first().map_or(0, |r| r.summaries.len()),
        ),
    }
}

/// Per run, per gradient operation: mean ms per iteration in each phase, and what
/// `sync_gradients` spent outside the operations.
fn breakdown(l: &Launched, extras: &Extras) {
    let runs: Vec<&RunResult> = l
        .runs
        .iter()
        .filter(|r| r.summaries.iter().any(|s| !s.phases.is_empty()))
        .collect();
    if runs.is_empty() {
        return;
    }
    println!("where the comm time went (ms per iteration, mean over ranks; phases as the library reports them per operation):");
    let lw = extras
        .op_labels
        .iter()
        .map(|s| s.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    print!("{:<10} {:<lw$} {:<10}", "run", "op", "ran as");
    for p in PHASES {
        print!(" {:>9}", p);
    }
    println!(" {:>8}", "sum");
    for r in runs {
        let n = r.summaries.len().max(1) as f64;
        let ops = r
            .summaries
            .iter()
            .map(|s| s.phases.len())
            .max()
            .unwrap_or(0);
        let mut total = 0.0;
        for k in 0..ops {
            let mut ms = [0.0f64; 7];
            for s in &r.summaries {
                if let Some(o) = s.phases.get(k) {
                    for (a, v) in ms.iter_mut().zip(o.ms) {
                        *a += v / n;
                    }
                }
            }
            let label = extras
                .op_labels
                .get(k)
                .cloned()
                .unwrap_or_else(|| format!("op {k}"));
            let algo = r.summaries[0]
                .phases
                .get(k)
                .map_or("-".into(), |o| o.algo.clone());
            print!(
                "{:<10} {:<lw$} {:<10}",
                if k == 0 { r.name.as_str() } else { "" },
                label,
                algo
            );
            for v in ms {
                print!(" {v:>9.2}");
            }
            let sum: f64 = ms.iter().sum();
            total += sum;
            println!(" {sum:>8.2}");
        }
        let comm = mean(&r.summaries, |s| s.comm_ms);
        println!(
            "{:<10} {:<lw$} operations {total:.1} of comm {comm:.1} ms; {:.1} ms outside them (packing, unpacking, waiting for the communicator thread)",
            "",
            "",
            comm - total
        );
    }
}
