//! The in-network all-reduce (codec + aggregation) against the switch's state machine through
//! the simulated network: exact integer sums under loss, duplication and reordering, the
//! stall-recovery path, and the parameter-mismatch refusal.

mod common;
use common::reference;
use std::time::Duration;

use sketchreduce_agent::sim::{agent_addr, SimConfig, SimNet};
use sketchreduce_agent::{AgentError, AggConfig, InnetConfig, InnetCore, Reduced};
use sketchreduce_codec::synth::{generate, Pattern, SynthSpec};
use sketchreduce_codec::FixedPoint;
use sketchreduce_switch::SwitchCore;
use sketchreduce_wire::{JobSpec, WorkerSpec};

fn job(n: usize) -> JobSpec {
    JobSpec {
        id: 11,
        epoch: 77,
        lanes: 64,
        slot_base: 0,
        slot_count: 32,
        workers: (0..n).map(|i| WorkerSpec::at(agent_addr(i))).collect(),
    }
}

fn check(r: &Reduced, want: &[i64], f: &FixedPoint) {
    let mut got = vec![0i64; want.len()];
    r.to_dense_sums(&mut got).unwrap();
    assert!(got == want, "integer sums differ");
    let dense = r.dense();
    for (i, (&d, &w)) in dense.iter().zip(want).enumerate() {
        assert_eq!(d, f.to_float(w), "float at {i}");
    }
}

fn run(n: usize, loss: f64, seed: u64, iters: usize, cfg: InnetConfig) -> Vec<u64> {
    let spec = job(n);
    let mut core = SwitchCore::new(64);
    core.create(spec.clone()).unwrap();
    let mut net = SimNet::new(
        SimConfig {
            loss,
            duplicate: 0.02,
            seed,
            ..Default::default()
        },
        n,
        |from, d: &[u8], emit: &mut dyn FnMut(_, &[u8])| core.handle(from, d, emit),
    );
    let mut agents: Vec<InnetCore> = (0..n)
        .map(|r| {
            let mut a = AggConfig::with_timeout(Duration::from_secs(30));
            a.window = 16;
            InnetCore::new(&spec, r as u8, a, cfg.clone()).unwrap()
        })
        .collect();
    for it in 0..iters {
        let grads = generate(&SynthSpec {
            dim: 20_000 + it * 7,
            workers: n,
            density: 0.02,
            overlap: 0.3,
            pattern: Pattern::Random,
            seed: seed * 100 + it as u64,
        })
        .unwrap();
        let (f, want) = reference(&grads);
        for (a, g) in agents.iter_mut().zip(&grads) {
            a.start(5, g).unwrap();
        }
        let mut results: Vec<Option<Result<Reduced, AgentError>>> = vec![None; n];
        let ok = net.run(&mut agents, |ag| {
            for (i, a) in ag.iter_mut().enumerate() {
                if let Some(r) = a.poll_complete() {
                    results[i] = Some(r);
                }
            }
            results.iter().all(|r| r.is_some())
        });
        assert!(ok, "iteration {it} did not finish");
        let results: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
        if results.iter().any(|r| r.is_err()) {
            panic!("loss {loss} seed {seed} iteration {it}: {results:#?}");
        }
        for r in results {
            let r = r.unwrap();
            check(&r, &want, &f);
        }
    }
    agents.iter().map(|a| a.stats().decode_retries).collect()
}

#[test]
fn exact_across_loss_rates() {
    for (i, loss) in [0.0, 0.01, 0.05, 0.10].into_iter().enumerate() {
        run(4, loss, 1 + i as u64, 3, InnetConfig::default());
    }
    run(2, 0.05, 9, 2, InnetConfig::default());
}

#[test]
fn stalled_decode_recovers_exactly() {
    // A sketch far too small: every decode stalls and must be recovered by union-rank.
    let cfg = InnetConfig {
        cells: Some(50),
        ..Default::default()
    };
    let retries = run(3, 0.03, 4, 2, cfg);
    assert!(retries.iter().all(|&r| r == 2), "{retries:?}");
}

/// Runs one all-reduce on `n` default-configured agents over a loss-free simulated network,
/// giving rank `r` the tensor `input(r)`; returns every rank's outcome and the simulated time
/// it took.
fn run_once(
    n: usize,
    input: impl Fn(usize) -> Vec<f32>,
) -> (Vec<Result<Reduced, AgentError>>, Duration) {
    let spec = job(n);
    let mut core = SwitchCore::new(64);
    core.create(spec.clone()).unwrap();
    let mut net = SimNet::new(
        SimConfig::default(),
        n,
        |from, d: &[u8], emit: &mut dyn FnMut(_, &[u8])| core.handle(from, d, emit),
    );
    let mut agents: Vec<InnetCore> = (0..n)
        .map(|r| {
            InnetCore::new(&spec, r as u8, AggConfig::default(), InnetConfig::default()).unwrap()
        })
        .collect();
    for (r, a) in agents.iter_mut().enumerate() {
        a.start(1, &input(r)).unwrap();
    }
    let mut results: Vec<Option<Result<Reduced, AgentError>>> = vec![None; n];
    assert!(net.run(&mut agents, |ag| {
        for (i, a) in ag.iter_mut().enumerate() {
            if let Some(r) = a.poll_complete() {
                results[i] = Some(r);
            }
        }
        results.iter().all(|r| r.is_some())
    }));
    let took = net.now() - net.epoch();
    (results.into_iter().map(Option::unwrap).collect(), took)
}

#[test]
fn mismatched_shapes_are_refused() {
    let (results, _) = run_once(3, |r| vec![0.5; if r == 1 { 999 } else { 1000 }]);
    for r in results {
        match r {
            Err(AgentError::Mismatch { job: 11, detail }) => assert!(detail.contains("disagree")),
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }
}

#[test]
fn non_finite_input_fails_everyone_fast() {
    let (results, took) = run_once(2, |r| {
        if r == 0 {
            vec![1.0, f32::NAN, 0.0]
        } else {
            vec![1.0, 2.0, 0.0]
        }
    });
    for r in results {
        assert!(matches!(r, Err(AgentError::Codec(m)) if m.contains("NaN")));
    }
    assert!(took < Duration::from_millis(50));
}
