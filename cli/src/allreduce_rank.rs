//! `sketchreduce bench allreduce --rank-from-env`: this process is *one rank* of an all-reduce
//! benchmark run through the real [`Communicator`], started by a launcher once per rank (on
//! one host, in network namespaces, or on many hosts), like the ranks of nccl-tests.
//!
//! The job comes from the torch.distributed-style environment ([`Config::from_env`]: `RANK`,
//! `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, `SKETCHREDUCE_ALGO`, `SKETCHREDUCE_SWITCH`, …);
//! `--algo` and `--switch` override the two variables. Every rank generates the gradients of
//! *all* ranks with the codec's synthetic generator (same seed, same gradients as the parent
//! mode's first iteration), keeps its own, and computes the exact reference itself, so it can
//! check its result bit for bit without talking to anyone.
//!
//! Per timed iteration: barrier, `Communicator::all_reduce` (timed), barrier, check. The
//! second barrier keeps a rank that finished early from checking (CPU work) while slower ranks
//! are still inside the operation. Rank 0 also reads the switch's counters before and after
//! the timed iterations. Output: one JSON line on stdout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sketchreduce_codec::synth::{generate, Pattern, SynthSpec};
use sketchreduce_codec::FixedPoint;
use sketchreduce_collectives::{Communicator, Config, OpInfo, OpPhases, ReduceOp};
use sketchreduce_switch::total_drops;
use sketchreduce_wire::control::{Request, Response};
use sketchreduce_wire::{Counters, DropReason};

use crate::allreduce_bench::{Args, TransportKind};

/// How long rank 0 waits for the switch's control endpoint when reading counters.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one rank and prints its JSON line. Any failure (bad configuration, rendezvous, a
/// failed all-reduce) still prints a line (with `status` and `error`) before the error is
/// returned, so a launcher always gets one line per rank.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let result = reject_parent_only_options(args)
        .and_then(|_| config(args))
        .and_then(|cfg| run_inner(args, cfg));
    match result {
        Ok(v) => {
            println!("{v}");
            Ok(())
        }
        Err(e) => {
            let rank = std::env::var("RANK")
                .ok()
                .and_then(|r| r.parse::<u64>().ok());
            println!(
                "{}",
                json!({"rank": rank, "status": "error", "exact": false, "error": format!("{e:#}")})
            );
            Err(e)
        }
    }
}

/// The options of the parent mode that the [`Communicator`] decides by itself.
fn reject_parent_only_options(args: &Args) -> anyhow::Result<()> {
    if args.loss > 0.0 {
        bail!("--loss injects loss inside the agents of the parent mode; with --rank-from-env drop packets in the network (benches/netbench/netns.sh --loss)");
    }
    if args.transport != TransportKind::Udp {
        bail!(
            "--transport: the Communicator's in-network path is UDP only (SKETCHREDUCE_TRANSPORT)"
        );
    }
    let d = crate::allreduce_bench::DEFAULTS;
    if args.lanes != d.lanes || args.window != d.window || args.index != d.index {
        bail!("--lanes, --window and --index are chosen by the Communicator; they only apply to the parent mode");
    }
    Ok(())
}

/// [`Config::from_env`] with `--algo` / `--switch` / `--timeout-ms` layered on top.
fn config(args: &Args) -> anyhow::Result<Config> {
    config_from(args, |k| std::env::var(k).ok())
}

/// [`config`] over an arbitrary environment: a flag wins over its variable; without either,
/// the algorithm is `innet` (this bench's default, not the library's) and the per-message
/// timeout is `--timeout-ms`.
fn config_from(args: &Args, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
    let algo = match args.algo {
        Some(a) => Some(a.name().to_string()),
        None if env("SKETCHREDUCE_ALGO").is_none() => Some("innet".to_string()),
        None => None,
    };
    let switch = args.switch.map(|s| s.to_string());
    let timeout = env("SKETCHREDUCE_TIMEOUT_SECS")
        .is_none()
        .then(|| (args.timeout_ms as f64 / 1000.0).to_string());
    let get = |k: &str| -> Option<String> {
        let over = match k {
            "SKETCHREDUCE_ALGO" => algo.clone(),
            "SKETCHREDUCE_SWITCH" => switch.clone(),
            "SKETCHREDUCE_TIMEOUT_SECS" => timeout.clone(),
            _ => None,
        };
        over.or_else(|| env(k))
    };
    Config::from_lookup(get).context("job configuration from the environment")
}

/// The exact answer, computed from every rank's gradient in this process.
struct Reference {
    /// `to_float` of the exact fixed-point sum: what every algorithm must return, bit for bit.
    bits: Vec<u32>,
    /// The float64 sum of the inputs, for the accuracy bound.
    f64_sum: Vec<f64>,
    /// Agreed conversion.
    fp: FixedPoint,
}

impl Reference {
    fn new(
        grads: &[Vec<f32>],
        precision: sketchreduce_collectives::Precision,
    ) -> anyhow::Result<Self> {
        // The communicator's own rule (largest exponent, ranks' median exponents, policy).
        let fp = sketchreduce_collectives::fixed_point_for(grads, precision)?;
        let d = grads[0].len();
        let mut sums = vec![0i64; d];
        let mut f64_sum = vec![0f64; d];
        for g in grads {
            for ((s, f), &v) in sums.iter_mut().zip(f64_sum.iter_mut()).zip(g) {
                *s += fp.to_fixed(v);
                *f += v as f64;
            }
        }
        let bits = sums.iter().map(|&s| fp.to_float(s).to_bits()).collect();
        Ok(Reference { bits, f64_sum, fp })
    }

    /// (positions differing from the fixed-point reference, positions outside the float64
    /// bound, largest |result − f64 sum|).
    ///
    /// Bound per position: each of the n inputs is rounded to a multiple of 2^-s (error
    /// ≤ 2^-s / 2), the exact integer sum is converted to f32 once (relative error ≤ 2^-24,
    /// absolute ≤ 2^-149 among subnormals): |r − Σ| ≤ n·2^-s/2·(1 + 2^-24) + |Σ|·2^-24 + 2^-149.
    fn check(&self, out: &[f32]) -> (usize, usize, f64) {
        let n = self.fp.workers() as f64;
        let q = (-(self.fp.shift() as f64)).exp2();
        let slack = n * q / 2.0 * (1.0 + f64::EPSILON.sqrt());
        let (mut wrong, mut outside, mut max_err) = (0, 0, 0f64);
        for ((&r, &want), &f) in out.iter().zip(&self.bits).zip(&self.f64_sum) {
            if r.to_bits() != want {
                wrong += 1;
            }
            let err = (r as f64 - f).abs();
            max_err = max_err.max(err);
            if err > slack + f.abs() * 2f64.powi(-24) + 2f64.powi(-149) {
                outside += 1;
            }
        }
        (wrong, outside, max_err)
    }
}

/// Every public field of [`OpInfo`], as JSON. The pattern is exhaustive on purpose: a new
/// field (e.g. a per-phase breakdown) fails to compile here until it is added to the output.
pub fn op_info_json(info: &OpInfo) -> Value {
    let OpInfo {
        collective,
        algo,
        bytes_sent,
        bytes_recv,
        elapsed,
        aggregate_density,
        exponent,
        phases,
        value_bits,
        error_bound,
    } = *info;
    let OpPhases {
        agree,
        scan,
        encode,
        aggregate,
        decode,
        recovery,
        convert,
        innet_mode,
    } = phases;
    json!({
        "collective": format!("{collective:?}"),
        "algo": algo.name(),
        "bytes_sent": bytes_sent,
        "bytes_recv": bytes_recv,
        "elapsed_ms": ms(elapsed),
        "aggregate_density": aggregate_density,
        "exponent": exponent,
        "phases_ms": {
            "agree": ms(agree),
            "scan": ms(scan),
            "encode": ms(encode),
            "aggregate": ms(aggregate),
            "decode": ms(decode),
            "recovery": ms(recovery),
            "convert": ms(convert),
        },
        "innet_mode": innet_mode,
        "value_bits": value_bits,
        "error_bound": error_bound,
    })
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The switch's counters now (through the control endpoint's public helper).
fn switch_counters(addr: SocketAddr) -> anyhow::Result<Counters> {
    let secret = sketchreduce_control::Secret::from_env()?.map(std::sync::Arc::new);
    match sketchreduce_control::client::call(addr, secret, &Request::Counters {}, CONTROL_TIMEOUT)?
    {
        Response::Counters(c) => Ok(c),
        Response::Error { kind, message } => {
            bail!("switch refused the counters request: {kind:?}: {message}")
        }
        other => bail!("unexpected answer to a counters request: {other:?}"),
    }
}

/// What the switch counted between two snapshots, for this job and in total.
fn counters_delta(before: &Counters, after: &Counters, job: u16) -> Value {
    let drops_b = total_drops(before);
    let drops_a = total_drops(after);
    let drops: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .map(|&r| {
            let i = r as usize;
            (
                r.name().to_string(),
                json!(drops_a[i].saturating_sub(drops_b[i])),
            )
        })
        .collect();
    let jc = |c: &Counters| c.jobs.iter().find(|(id, _)| *id == job).map(|(_, j)| *j);
    let (jb, ja) = (
        jc(before).unwrap_or_default(),
        jc(after).unwrap_or_default(),
    );
    json!({
        "packets_in": after.packets_in.saturating_sub(before.packets_in),
        "packets_out": after.packets_out.saturating_sub(before.packets_out),
        "data_in": ja.data_in.saturating_sub(jb.data_in),
        "completions": ja.completions.saturating_sub(jb.completions),
        "results_multicast": ja.results_multicast.saturating_sub(jb.results_multicast),
        "results_unicast": ja.results_unicast.saturating_sub(jb.results_unicast),
        "probes": ja.probes.saturating_sub(jb.probes),
        "drops": drops,
    })
}

/// How many timed iterations fit `--time-budget-s`, judged from the warm-up: every rank must
/// run the same number, so the ranks average their warm-up times with an all-reduce (whose
/// result is bit-identical everywhere) and each computes the same count from it. The ring
/// carries it so the switch's counters only see the benchmark.
fn timed_iterations(comm: &Communicator, args: &Args, warm_s: f64) -> anyhow::Result<usize> {
    if args.time_budget_s <= 0.0 || args.warmup == 0 {
        return Ok(args.iters);
    }
    let mut mean = [(warm_s / args.warmup as f64) as f32];
    comm.all_reduce_with(
        &mut mean,
        ReduceOp::Avg,
        sketchreduce_collectives::Algo::Ring,
    )?;
    let fit = (args.time_budget_s / mean[0].max(1e-6) as f64).floor() as usize;
    Ok(fit.clamp(1, args.iters.max(1)))
}

fn run_inner(args: &Args, cfg: Config) -> anyhow::Result<Value> {
    let (rank, world) = (cfg.rank, cfg.world_size);
    let pattern: Pattern = args
        .pattern
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let t_gen = Instant::now();
    let mut grads = generate(&SynthSpec {
        dim: args.dim,
        workers: world,
        density: args.density,
        overlap: args.overlap,
        pattern,
        // The parent mode's first iteration: both modes measure the same inputs.
        seed: args.seed.wrapping_mul(1000),
    })?;
    let reference = Reference::new(&grads, cfg.codec.precision)?;
    let mine = grads.swap_remove(rank);
    drop(grads);
    let gen_ms = ms(t_gen.elapsed());

    let t_setup = Instant::now();
    let switch = cfg.switch;
    let job_id = cfg.job_id;
    let requested = cfg.algo;
    let comm = Communicator::new(cfg).context("joining the job")?;
    let setup_ms = ms(t_setup.elapsed());

    let mut wrong_total = 0usize;
    let mut outside_total = 0usize;
    let mut max_err = 0f64;
    let mut check = |out: &[f32]| {
        let (w, o, e) = reference.check(out);
        wrong_total += w;
        outside_total += o;
        max_err = max_err.max(e);
    };
    let mut warm_s = 0.0;
    for _ in 0..args.warmup {
        let mut buf = mine.clone();
        comm.barrier()?;
        let t0 = Instant::now();
        comm.all_reduce(&mut buf, ReduceOp::Sum)?;
        warm_s += t0.elapsed().as_secs_f64();
        comm.barrier()?;
        check(&buf);
    }
    let iters = timed_iterations(&comm, args, warm_s)?;
    // Rank 0 speaks for the job at the switch.
    let watched = switch.filter(|_| rank == 0);
    let before = watched.map(switch_counters);
    let mut times = Vec::with_capacity(iters);
    let mut ops = Vec::with_capacity(iters);
    for _ in 0..iters {
        let mut buf = mine.clone();
        comm.barrier()?;
        let t0 = Instant::now();
        let info = comm.all_reduce(&mut buf, ReduceOp::Sum)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        comm.barrier()?;
        check(&buf);
        ops.push(info);
    }
    let switch_json = match (watched, before) {
        (Some(a), Some(Ok(b))) => match switch_counters(a) {
            Ok(after) => counters_delta(&b, &after, job_id),
            Err(e) => json!({"error": format!("{e:#}")}),
        },
        (_, Some(Err(e))) => json!({"error": format!("{e:#}")}),
        _ => Value::Null,
    };
    let stats = comm.stats();
    drop(comm);

    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let max = sorted.last().copied().unwrap_or(0.0);
    let k = ops.len().max(1) as u64;
    let bytes_sent = ops.iter().map(|o| o.bytes_sent).sum::<u64>() / k;
    let bytes_recv = ops.iter().map(|o| o.bytes_recv).sum::<u64>() / k;
    let resolved: Vec<&str> = ops.iter().map(|o| o.algo.name()).collect();
    let exact = wrong_total == 0 && outside_total == 0;
    let round3 = |x: f64| (x * 1e3).round() / 1e3;
    Ok(json!({
        "rank": rank,
        "world_size": world,
        "status": if exact { "ok" } else { "inexact" },
        "exact": exact,
        "mismatches": wrong_total,
        "outside_f64_bound": outside_total,
        "max_abs_err_f64": max_err,
        "algo": requested.name(),
        "algo_resolved": resolved.first().copied().unwrap_or(requested.name()),
        "algo_resolved_all_same": resolved.windows(2).all(|w| w[0] == w[1]),
        "dim": args.dim,
        "density": args.density,
        "overlap": args.overlap,
        "pattern": args.pattern,
        "seed": args.seed,
        "warmup": args.warmup,
        "iters": iters,
        "iters_requested": args.iters,
        "times_ms": times.iter().map(|&t| round3(t)).collect::<Vec<_>>(),
        "mean_ms": round3(mean),
        "p50_ms": round3(p50),
        "max_ms": round3(max),
        "bytes_sent": bytes_sent,
        "bytes_recv": bytes_recv,
        "ops": ops.iter().map(op_info_json).collect::<Vec<_>>(),
        "comm_operations": stats.operations,
        "gen_ms": gen_ms,
        "setup_ms": setup_ms,
        "switch": switch_json,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allreduce_bench::Algo;
    use clap::Parser;
    use sketchreduce_collectives::Algo as CAlgo;
    use sketchreduce_wire::JobCounters;
    use std::collections::HashMap;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["bench", "--rank-from-env"];
        v.extend_from_slice(extra);
        Cli::parse_from(v).args
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = [("RANK", "1"), ("WORLD_SIZE", "2")]
            .iter()
            .chain(pairs)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn flags_win_over_the_environment_and_innet_is_the_default() {
        let sw = [("SKETCHREDUCE_SWITCH", "10.0.0.254:39440")];
        let c = config_from(&args(&[]), env(&sw)).unwrap();
        assert_eq!((c.rank, c.world_size, c.algo), (1, 2, CAlgo::Innet));
        assert_eq!(c.timeout, Duration::from_secs(10));
        let ring = [sw[0], ("SKETCHREDUCE_ALGO", "ring")];
        assert_eq!(
            config_from(&args(&[]), env(&ring)).unwrap().algo,
            CAlgo::Ring
        );
        let a = args(&["--algo", "allgather", "--switch", "10.0.0.1:5"]);
        let c = config_from(&a, env(&ring)).unwrap();
        assert_eq!(c.algo, CAlgo::AllGather);
        assert_eq!(c.switch, Some("10.0.0.1:5".parse().unwrap()));
        assert_eq!(a.algo, Some(Algo::Allgather));
        // innet without any switch is a configuration error, not a hang.
        let e = config_from(&args(&[]), env(&[])).unwrap_err();
        assert!(format!("{e:#}").contains("switch"), "{e:#}");
    }

    #[test]
    fn parent_only_options_are_refused() {
        for extra in [
            &["--loss", "0.01"][..],
            &["--lanes", "64"],
            &["--window", "8"],
            &["--index", "bloom"],
            &["--transport", "quic"],
        ] {
            assert!(
                reject_parent_only_options(&args(extra)).is_err(),
                "{extra:?}"
            );
        }
        assert!(reject_parent_only_options(&args(&[])).is_ok());
    }

    #[test]
    fn check_finds_one_ulp_and_bound_violations() {
        let grads = vec![
            vec![1.0f32, -0.5, 0.0, 3.0e-3],
            vec![0.25f32, 0.5, 0.0, 1.0e-7],
        ];
        let r = Reference::new(&grads, sketchreduce_collectives::Precision::Narrow).unwrap();
        let mut out: Vec<f32> = r.bits.iter().map(|&b| f32::from_bits(b)).collect();
        assert_eq!(r.check(&out).0, 0);
        assert_eq!(r.check(&out).1, 0);
        // Independent float64 reference: 1.25, 0, 0, ~3.0001e-3.
        assert_eq!(out[0], 1.25);
        assert_eq!(out[1], 0.0);
        // One ulp off a correctly rounded 1.25 breaks both: the f64 bound is half an ulp here.
        out[0] = f32::from_bits(out[0].to_bits() + 1);
        assert_eq!(r.check(&out).0, 1);
        assert_eq!(r.check(&out).1, 1);
        out[0] = 1.25;
        out[3] += 1e-3;
        let (wrong, outside, err) = r.check(&out);
        assert_eq!((wrong, outside), (1, 1));
        assert!(err > 0.9e-3);
    }

    #[test]
    fn counters_delta_is_per_job_and_per_reason() {
        let job = |data_in, dup| JobCounters {
            data_in,
            drops: {
                let mut d = [0; DropReason::ALL.len()];
                d[DropReason::Duplicate as usize] = dup;
                d
            },
            ..Default::default()
        };
        let before = Counters {
            packets_in: 10,
            jobs: vec![(1, job(8, 1)), (2, job(100, 50))],
            ..Default::default()
        };
        let mut after = Counters {
            packets_in: 30,
            jobs: vec![(1, job(20, 3)), (2, job(100, 50))],
            ..Default::default()
        };
        after.drops[DropReason::UnknownJob as usize] = 4;
        let d = counters_delta(&before, &after, 1);
        assert_eq!(d["packets_in"], 20);
        assert_eq!(d["data_in"], 12);
        assert_eq!(d["drops"]["duplicate"], 2);
        assert_eq!(d["drops"]["unknown_job"], 4);
        assert_eq!(d["drops"]["stale"], 0);
    }
}
