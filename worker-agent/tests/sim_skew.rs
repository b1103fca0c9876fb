//! Loss recovery on bandwidth-limited links (the simulated network's FIFO links at 1 Gbit/s):
//! a worker that starts late must not make the others retransmit spuriously (the switch would
//! drop those copies as `duplicate`), and real loss must be recovered quickly and exactly.

use std::time::Duration;

use sketchreduce_agent::sim::{agent_addr, SimConfig, SimNet, SplitMix64};
use sketchreduce_agent::{AggConfig, AggState, Aggregation, Stream};
use sketchreduce_switch::{total_drops, SwitchCore};
use sketchreduce_wire::{DropReason, JobSpec, Op, WorkerSpec};

const GBIT: f64 = 125e6;

fn job(n: usize) -> JobSpec {
    JobSpec {
        id: 9,
        epoch: 0x5eed,
        lanes: 256,
        slot_base: 0,
        slot_count: 128,
        workers: (0..n).map(|i| WorkerSpec::at(agent_addr(i))).collect(),
    }
}

struct Outcome {
    /// Virtual time of all operations.
    elapsed: Duration,
    /// DATA packets the switch accepted.
    data_in: u64,
    /// Copies the switch dropped as duplicates.
    duplicates: u64,
    /// Retransmissions by all workers.
    retransmissions: u64,
    /// PROBEs sent by all workers.
    probes: u64,
}

/// `ops` all-reduces of one ADD stream of `words` per worker; worker `late` starts each
/// operation `skew` after the others.
fn run(n: usize, words: usize, ops: usize, late: usize, skew: Duration, loss: f64) -> Outcome {
    run_cfg(
        n,
        words,
        ops,
        late,
        skew,
        loss,
        500,
        128,
        Duration::from_micros(10),
    )
}

#[allow(clippy::too_many_arguments)]
fn run_cfg(
    n: usize,
    words: usize,
    ops: usize,
    late: usize,
    skew: Duration,
    loss: f64,
    reorder_us: u64,
    window: u32,
    latency: Duration,
) -> Outcome {
    let mut spec = job(n);
    spec.slot_count = window;
    let mut core = SwitchCore::new(1024);
    core.create(spec.clone()).unwrap();
    let core = std::cell::RefCell::new(core);
    let cfg = SimConfig {
        loss,
        rate: Some(GBIT),
        latency,
        seed: 42,
        ..Default::default()
    };
    let mut net = SimNet::new(cfg, n, |from, d: &[u8], emit: &mut dyn FnMut(_, &[u8])| {
        core.borrow_mut().handle(from, d, emit)
    });
    let mut agents: Vec<Aggregation> = (0..n)
        .map(|r| {
            let c = AggConfig {
                window,
                reorder_window: Duration::from_micros(reorder_us),
                ..Default::default()
            };
            Aggregation::new(&spec, r as u8, c).unwrap()
        })
        .collect();
    let mut rng = SplitMix64(7);
    let t0 = net.now();
    for op in 0..ops {
        let inputs: Vec<Vec<u32>> = (0..n)
            .map(|_| (0..words).map(|_| rng.next_u64() as u32 >> 4).collect())
            .collect();
        let mut want = vec![0u32; words];
        for v in &inputs {
            for (w, x) in want.iter_mut().zip(v) {
                *w = w.wrapping_add(*x);
            }
        }
        for (r, a) in agents.iter_mut().enumerate() {
            if r != late {
                a.start(vec![Stream::new(Op::Add, inputs[r].clone())])
                    .unwrap();
            }
        }
        net.run_for(&mut agents, skew);
        agents[late]
            .start(vec![Stream::new(Op::Add, inputs[late].clone())])
            .unwrap();
        assert!(
            net.run(&mut agents, |ag| ag.iter().all(|a| a.is_done())),
            "op {op} did not finish"
        );
        for (r, a) in agents.iter_mut().enumerate() {
            assert_eq!(a.state(), AggState::Idle, "rank {r}: {:?}", a.error());
            assert_eq!(a.take_streams()[0].words, want, "rank {r} op {op}");
        }
    }
    let c = core.borrow().counters();
    Outcome {
        elapsed: net.now() - t0,
        data_in: c.jobs.iter().map(|(_, j)| j.data_in).sum(),
        duplicates: total_drops(&c)[DropReason::Duplicate as usize],
        retransmissions: agents.iter().map(|a| a.stats().retransmissions).sum(),
        probes: agents.iter().map(|a| a.stats().probes).sum(),
    }
}

#[test]
fn a_late_worker_causes_no_spurious_retransmissions() {
    // 4 workers, 1 MiB each per operation, one worker 20 ms late (encoding, decoding).
    let o = run(4, 1 << 18, 4, 3, Duration::from_millis(20), 0.0);
    assert_eq!(
        o.retransmissions, 0,
        "no loss, yet {} resends",
        o.retransmissions
    );
    assert_eq!(o.duplicates, 0);
    assert!(o.data_in > 0);
}

#[test]
fn loss_is_recovered_exactly_and_quickly() {
    let clean = run(4, 1 << 18, 4, 3, Duration::from_millis(2), 0.0);
    let lossy = run(4, 1 << 18, 4, 3, Duration::from_millis(2), 0.01);
    assert!(lossy.retransmissions > 0);
    // Loss costs a few reorder windows and round trips, not a stall per lost packet: the
    // operations take at most 1.5x the loss-free virtual time (deterministic: simulated time).
    assert!(
        lossy.elapsed.as_secs_f64() <= 1.5 * clean.elapsed.as_secs_f64(),
        "clean {:?}, 1% loss {:?}",
        clean.elapsed,
        lossy.elapsed
    );
    // Duplicates only where a loss forced a resend from every worker of the slot.
    assert!(
        lossy.duplicates <= 4 * lossy.retransmissions,
        "{} duplicates for {} resends",
        lossy.duplicates,
        lossy.retransmissions
    );
}

#[test]
fn small_operations_never_stall_on_crossed_losses() {
    // Operations of ~100 chunks, all in flight at once. With several losses per operation,
    // worker A's lost DATA can sit in one slot while B's sits in another: each worker's probe
    // of its own oldest slot says "waiting for the others". Backing off every other timer on
    // that answer left both losses undiscovered until the diagnostic probe at half the worker
    // timeout (5 s); every expired slot must be probed instead.
    let clean = run(4, 100 * 256, 40, 3, Duration::ZERO, 0.0);
    let lossy = run(4, 100 * 256, 40, 3, Duration::ZERO, 0.03);
    assert!(lossy.retransmissions > 0);
    let per_op = lossy.elapsed.as_secs_f64() / 40.0;
    assert!(
        per_op <= 0.05,
        "{:.1} ms per operation under 3 % loss (loss-free {:.2} ms)",
        per_op * 1e3,
        clean.elapsed.as_secs_f64() / 40.0 * 1e3
    );
}

#[test]
fn a_slow_switch_is_not_flooded_with_probes() {
    // A switch 20 ms away each way (bmv2 forwards a few thousand packets per second, so a
    // window's round trip takes that long): the first timers fire long before any RESULT, and
    // each expired slot is probed. The STATUS round trips then teach the RTO the path, so the
    // probes stop: far fewer than one per chunk over the operations, and no resends.
    let chunks = 8 * 64;
    let o = run_cfg(
        4,
        chunks * 256,
        8,
        3,
        Duration::ZERO,
        0.0,
        500,
        64,
        Duration::from_millis(20),
    );
    assert_eq!(o.retransmissions, 0);
    let per_chunk = o.probes as f64 / (4 * 8 * chunks) as f64;
    assert!(
        per_chunk < 0.2,
        "{} probes for {} chunks",
        o.probes,
        4 * 8 * chunks
    );
}
