//! The aggregation state machine against the switch's state machine through a simulated,
//! lossy, reordering, duplicating network: exact results every time.

use std::time::Duration;

use sketchreduce_agent::sim::{agent_addr, SimConfig, SimNet, SplitMix64};
use sketchreduce_agent::{AgentError, AggConfig, AggState, Aggregation, Stream};
use sketchreduce_switch::SwitchCore;
use sketchreduce_wire::{JobSpec, Op, WorkerSpec};

fn job(n: usize, lanes: u16, slots: u32) -> JobSpec {
    JobSpec {
        id: 3,
        epoch: 0xfeed,
        lanes,
        slot_base: 8,
        slot_count: slots,
        workers: (0..n).map(|i| WorkerSpec::at(agent_addr(i))).collect(),
    }
}

fn expected(inputs: &[Vec<Vec<u32>>], ops: &[Op]) -> Vec<Vec<u32>> {
    let mut out = inputs[0].clone();
    for w in &inputs[1..] {
        for (s, op) in ops.iter().enumerate() {
            for (o, v) in out[s].iter_mut().zip(&w[s]) {
                *o = op.apply(*o, *v);
            }
        }
    }
    out
}

/// Runs `ops_count` consecutive operations of three streams (ADD, OR, MAX) on `n` agents.
fn run_case(n: usize, loss: f64, dup: f64, seed: u64, ops_count: usize) {
    let spec = job(n, 32, 16);
    let mut core = SwitchCore::new(64);
    core.create(spec.clone()).unwrap();
    let cfg = SimConfig {
        loss,
        duplicate: dup,
        seed,
        ..Default::default()
    };
    let mut net = SimNet::new(cfg, n, |from, d: &[u8], emit: &mut dyn FnMut(_, &[u8])| {
        core.handle(from, d, emit)
    });
    let mut agents: Vec<Aggregation> = (0..n)
        .map(|r| {
            let mut c = AggConfig::with_timeout(Duration::from_secs(30));
            c.window = 8;
            Aggregation::new(&spec, r as u8, c).unwrap()
        })
        .collect();
    let mut rng = SplitMix64(seed ^ 0xabc);
    let ops = [Op::Add, Op::Or, Op::Max];
    for op_i in 0..ops_count {
        // Stream lengths vary per operation (same on every worker), exercising padding.
        let lens = [
            (rng.next_u64() % 300) as usize,
            (rng.next_u64() % 100) as usize + 1,
            (rng.next_u64() % 40) as usize,
        ];
        let inputs: Vec<Vec<Vec<u32>>> = (0..n)
            .map(|_| {
                lens.iter()
                    .map(|&l| (0..l).map(|_| rng.next_u64() as u32).collect())
                    .collect()
            })
            .collect();
        let want = expected(&inputs, &ops);
        for (a, inp) in agents.iter_mut().zip(&inputs) {
            let streams = ops
                .iter()
                .zip(inp)
                .map(|(op, w)| Stream::new(*op, w.clone()))
                .collect();
            a.start(streams).unwrap();
        }
        let ok = net.run(&mut agents, |ag| ag.iter().all(|a| a.is_done()));
        assert!(
            ok,
            "operation {op_i} did not finish (loss {loss}, seed {seed})"
        );
        for (r, a) in agents.iter_mut().enumerate() {
            assert_eq!(a.state(), AggState::Idle, "rank {r}: {:?}", a.error());
            let got: Vec<Vec<u32>> = a.take_streams().into_iter().map(|s| s.words).collect();
            assert_eq!(got, want, "rank {r} op {op_i} loss {loss} seed {seed}");
        }
    }
    if net.stats().lost > 0 {
        let rtx: u64 = agents.iter().map(|a| a.stats().retransmissions).sum();
        assert!(rtx > 0, "packets lost but no retransmission");
    }
}

#[test]
fn exact_without_loss() {
    for n in [1, 2, 5] {
        run_case(n, 0.0, 0.0, n as u64, 4);
    }
}

#[test]
fn exact_under_loss_duplication_reordering() {
    for (i, loss) in [0.01, 0.05, 0.10].into_iter().enumerate() {
        for seed in 0..4u64 {
            run_case(4, loss, 0.05, seed * 31 + i as u64, 5);
        }
    }
    run_case(8, 0.10, 0.10, 99, 3);
}

#[test]
fn dead_worker_is_named_within_the_timeout() {
    let n = 4;
    let spec = job(n, 32, 16);
    let mut core = SwitchCore::new(64);
    core.create(spec.clone()).unwrap();
    let mut net = SimNet::new(
        SimConfig {
            loss: 0.02,
            seed: 7,
            ..Default::default()
        },
        n,
        |from, d: &[u8], emit: &mut dyn FnMut(_, &[u8])| core.handle(from, d, emit),
    );
    let timeout = Duration::from_secs(2);
    let mut agents: Vec<Aggregation> = (0..n)
        .map(|r| Aggregation::new(&spec, r as u8, AggConfig::with_timeout(timeout)).unwrap())
        .collect();
    // One good operation first, then rank 2 dies.
    for a in agents.iter_mut() {
        a.start(vec![Stream::new(Op::Add, vec![1; 500])]).unwrap();
    }
    assert!(net.run(&mut agents, |ag| ag.iter().all(|a| a.is_done())));
    net.kill(2);
    let t0 = net.now();
    for (r, a) in agents.iter_mut().enumerate() {
        if r != 2 {
            a.start(vec![Stream::new(Op::Add, vec![1; 500])]).unwrap();
        }
    }
    let ok = net.run(&mut agents, |ag| {
        ag.iter()
            .enumerate()
            .all(|(r, a)| r == 2 || a.error().is_some())
    });
    assert!(ok);
    let elapsed = net.now() - t0;
    assert!(
        elapsed <= timeout + Duration::from_millis(200),
        "{elapsed:?}"
    );
    for (r, a) in agents.iter().enumerate() {
        if r == 2 {
            continue;
        }
        match a.error() {
            Some(AgentError::SlotTimeout {
                job, missing, slot, ..
            }) => {
                assert_eq!(*job, 3);
                assert!(*slot >= 8 && *slot < 24);
                assert_eq!(
                    missing.as_deref(),
                    Some(&[2u8][..]),
                    "rank {r}: {:?}",
                    a.error()
                );
                let msg = a.error().unwrap().to_string();
                assert!(
                    msg.contains("job 3") && msg.contains("round") && msg.contains("[2]"),
                    "{msg}"
                );
            }
            other => panic!("rank {r}: unexpected {other:?}"),
        }
    }
}

#[test]
fn unreachable_switch_is_reported() {
    let spec = job(2, 32, 4);
    // A switch that never answers.
    let mut net = SimNet::new(
        SimConfig::default(),
        2,
        |_f, _d: &[u8], _e: &mut dyn FnMut(_, &[u8])| {},
    );
    let timeout = Duration::from_millis(500);
    let mut agents: Vec<Aggregation> = (0..2)
        .map(|r| Aggregation::new(&spec, r as u8, AggConfig::with_timeout(timeout)).unwrap())
        .collect();
    for a in agents.iter_mut() {
        a.start(vec![Stream::new(Op::Or, vec![1; 10])]).unwrap();
    }
    assert!(net.run(&mut agents, |ag| ag.iter().all(|a| a.error().is_some())));
    let msg = agents[0].error().unwrap().to_string();
    assert!(msg.contains("unreachable"), "{msg}");
    assert!(net.now() - net.epoch() <= timeout + Duration::from_millis(150));
}
