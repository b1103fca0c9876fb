//! `sketchreduce bench switch`: push rounds through an in-process switch-emu over loopback UDP
//! with N synthetic windowed workers, verify every result, and compare the packet rate with a
//! batched UDP echo server driven by the same clients (same packet size, sockets, window and
//! batching).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sketchreduce_switch::bench::{run_aggregation, run_echo, WorkloadConfig};
use sketchreduce_switch::{spawn_switch, total_drops, SwitchConfig};
use sketchreduce_wire::DropReason;

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Synthetic workers (threads, one UDP socket each).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Lanes per packet (32, 64, 128 or 256).
    #[arg(long, default_value_t = 64)]
    pub lanes: u16,
    /// Slots in flight per worker (the job's window).
    #[arg(long, default_value_t = 256)]
    pub slots: u32,
    /// Rounds per slot.
    #[arg(long, default_value_t = 160)]
    pub rounds: u32,
    /// Switch data threads (= data ports); the echo server uses as many.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Datagrams per sendmmsg/recvmmsg.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Alternating switch/echo trials; the best rate of each is compared (the box is shared,
    /// so the best of a few runs is the least noisy estimate of what each can do).
    #[arg(long, default_value_t = 9)]
    pub trials: u32,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!((1..=32).contains(&args.workers), "--workers must be 1..=32");
    anyhow::ensure!(
        args.slots > 0 && args.rounds > 0,
        "--slots and --rounds must be > 0"
    );
    let ip: IpAddr = [127, 0, 0, 1].into();
    let cfg = WorkloadConfig {
        workers: args.workers,
        lanes: args.lanes,
        window: args.slots,
        rounds: args.rounds,
        batch: args.batch,
        retransmit: Duration::from_millis(200),
        deadline: Duration::from_secs(120),
        ..Default::default()
    };
    let socket_buffer = 16 << 20;

    // The switch.
    let mut sw_cfg = SwitchConfig::loopback(args.threads, args.slots);
    sw_cfg.batch = args.batch;
    sw_cfg.socket_buffer = socket_buffer;
    let sw = spawn_switch(sw_cfg).context("starting the switch")?;
    let trials = args.trials.max(1);
    let (mut packets_in, mut results_out, mut exact, mut completed) = (0u64, 0u64, true, true);
    let (mut checked, mut mismatches, mut retransmits) = (0u64, 0u64, 0u64);
    let (mut best, mut best_echo) = ((0.0f64, 0.0f64), (0.0f64, 0.0f64));
    let (mut echo_exact, mut echo_packets, mut echo_retransmits) = (true, 0u64, 0u64);
    for _ in 0..trials {
        let before = sw.counters();
        let agg = run_aggregation(&sw, &cfg).context("running the workers")?;
        let after = sw.counters();
        let pin = after.packets_in - before.packets_in;
        packets_in += pin;
        results_out += after.packets_out - before.packets_out;
        exact &= agg.exact(&cfg);
        completed &= agg.completed;
        checked += agg.exact_results;
        mismatches += agg.mismatches;
        retransmits += agg.retransmits;
        let secs = agg.elapsed.as_secs_f64().max(1e-9);
        if pin as f64 / secs > best.0 {
            best = (pin as f64 / secs, secs);
        }
        // The echo baseline, same clients.
        let (echo, echoed) =
            run_echo(ip, args.threads, socket_buffer, &cfg).context("echo baseline")?;
        let esecs = echo.elapsed.as_secs_f64().max(1e-9);
        echo_exact &= echo.exact(&cfg);
        echo_packets += echoed;
        echo_retransmits += echo.retransmits;
        if echoed as f64 / esecs > best_echo.0 {
            best_echo = (echoed as f64 / esecs, esecs);
        }
    }
    let counters = sw.shutdown();
    let (mpps, secs) = (best.0 / 1e6, best.1);
    // Lane payload aggregated per second: every DATA packet's lanes enter the sum once.
    let goodput_gbps = best.0 * args.lanes as f64 * 32.0 / 1e9;
    let (echo_mpps, echo_secs) = (best_echo.0 / 1e6, best_echo.1);
    let echoed = echo_packets;
    let ratio = if echo_mpps > 0.0 {
        mpps / echo_mpps
    } else {
        0.0
    };

    let drops = total_drops(&counters);
    let drops_obj: serde_json::Map<String, serde_json::Value> = DropReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), json!(drops[*r as usize])))
        .collect();
    let status = if exact && echo_exact {
        "ok"
    } else if !completed {
        "incomplete"
    } else {
        "mismatch"
    };
    let out = json!({
        "bench": "switch",
        "status": status,
        "exact": exact,
        "workers": args.workers,
        "lanes": args.lanes,
        "slots": args.slots,
        "rounds": args.rounds,
        "threads": args.threads,
        "batch": args.batch,
        "packet_bytes": 32 + 4 * args.lanes as usize,
        "packets_in": packets_in,
        "results_out": results_out,
        "trials": trials,
        "results_checked": checked,
        "mismatches": mismatches,
        "retransmits": retransmits,
        "best_elapsed_s": round3(secs),
        "mpps": round3(mpps),
        "goodput_gbps": round3(goodput_gbps),
        "echo_packets": echoed,
        "echo_exact": echo_exact,
        "echo_retransmits": echo_retransmits,
        "echo_best_elapsed_s": round3(echo_secs),
        "echo_mpps": round3(echo_mpps),
        "ratio_vs_echo": round3(ratio),
        "drops": drops_obj,
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "switch: {packets_in} packets in, {results_out} results out over {trials} trials; \
             best {mpps:.3} Mpps ({secs:.3} s), {goodput_gbps:.3} Gb/s of lanes; exact: {exact}; \
             retransmits: {retransmits}"
        );
        println!(
            "echo:   {echoed} packets; best {echo_mpps:.3} Mpps ({echo_secs:.3} s); \
             ratio switch/echo: {ratio:.3}"
        );
        let nz: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| drops[**r as usize] > 0)
            .map(|r| format!("{}={}", r.name(), drops[*r as usize]))
            .collect();
        println!(
            "drops: {}",
            if nz.is_empty() {
                "none".into()
            } else {
                nz.join(", ")
            }
        );
        println!("status: {status}");
    }
    if status != "ok" {
        anyhow::bail!("switch bench: {status}");
    }
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
