//! The in-network all-reduce (codec + aggregation) against the switch's state machine through
//! the simulated network: exact integer sums under loss, duplication and reordering, the
//! stall-recovery path, and the parameter-mismatch refusal.

mod common;
use common::reference;
use std::net::SocketAddr;
use std::time::Duration;

use sketchreduce_agent::sim::{agent_addr, SimConfig, SimNet};
use sketchreduce_agent::{
    AgentError, AggConfig, Agreed, InnetConfig, InnetCore, ModeChoice, PayloadMode, Reduced,
};
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

/// The switch side of a [`SimNet`]: handles a datagram from an address, emitting replies.
trait Switch: FnMut(SocketAddr, &[u8], &mut dyn FnMut(SocketAddr, &[u8])) {}
impl<F: FnMut(SocketAddr, &[u8], &mut dyn FnMut(SocketAddr, &[u8]))> Switch for F {}

/// A simulated network around a switch core that holds `spec` (`spec.workers` agents).
fn switched_net(cfg: SimConfig, spec: &JobSpec) -> SimNet<impl Switch> {
    let mut core = SwitchCore::new(64);
    core.create(spec.clone()).unwrap();
    SimNet::new(
        cfg,
        spec.workers.len(),
        move |from, d: &[u8], emit: &mut dyn FnMut(_, &[u8])| core.handle(from, d, emit),
    )
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

/// How the test hands each worker its input.
#[derive(Debug, Clone, Copy, PartialEq)]
enum How {
    /// `start` with the dense tensor.
    Dense,
    /// `start_sparse` with its nonzeros.
    Sparse,
    /// `start_agreed` with the reference's fixed point and counts (no agreement round).
    Agreed,
    /// `start_agreed_dense`: the same, from the dense tensor.
    AgreedDense,
    /// `start_agreed` with a wide (62-bit) fixed point: two lanes per value or cell.
    AgreedWide,
    /// `start_agreed_dense` with a wide fixed point.
    AgreedDenseWide,
}

impl How {
    fn wide(self) -> bool {
        matches!(self, How::AgreedWide | How::AgreedDenseWide)
    }
}

fn run(n: usize, loss: f64, seed: u64, iters: usize, cfg: InnetConfig) -> Vec<u64> {
    run_with(
        n,
        loss,
        seed,
        iters,
        cfg,
        How::Dense,
        0.02,
        PayloadMode::Sketch,
    )
}

#[allow(clippy::too_many_arguments)]
fn run_with(
    n: usize,
    loss: f64,
    seed: u64,
    iters: usize,
    cfg: InnetConfig,
    how: How,
    density: f64,
    want_mode: PayloadMode,
) -> Vec<u64> {
    let spec = job(n);
    let mut net = switched_net(
        SimConfig {
            loss,
            duplicate: 0.02,
            seed,
            ..Default::default()
        },
        &spec,
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
            density,
            overlap: 0.3,
            pattern: Pattern::Random,
            seed: seed * 100 + it as u64,
        })
        .unwrap();
        let (f, want) = if how.wide() {
            // Independent reference for a 64 − ceil(log2 n)-bit value: i64 sums.
            let e = grads
                .iter()
                .map(|g| sketchreduce_codec::max_exponent(g).unwrap())
                .max()
                .unwrap();
            let bits = 64 - (n as u32).next_power_of_two().trailing_zeros();
            let f = FixedPoint::with_bits(e, n as u32, bits).unwrap();
            let mut sums = vec![0i64; grads[0].len()];
            for g in &grads {
                for (s, &v) in sums.iter_mut().zip(g) {
                    *s += f.to_fixed(v);
                }
            }
            (f, sums)
        } else {
            reference(&grads)
        };
        let nnz_sum: u64 = grads
            .iter()
            .map(|g| g.iter().filter(|v| **v != 0.0).count() as u64)
            .sum();
        let max_nnz = grads
            .iter()
            .map(|g| g.iter().filter(|v| **v != 0.0).count() as u64)
            .max()
            .unwrap_or(0);
        for (a, g) in agents.iter_mut().zip(&grads) {
            let (idx, vals): (Vec<u32>, Vec<f32>) = g
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != 0.0)
                .map(|(i, &v)| (i as u32, v))
                .unzip();
            match how {
                How::Dense => a.start(5, g).unwrap(),
                How::Sparse => a.start_sparse(5, g.len(), &idx, &vals).unwrap(),
                How::Agreed | How::AgreedWide => a
                    .start_agreed(
                        5,
                        g.len(),
                        &idx,
                        &vals,
                        Agreed {
                            fixed: f,
                            nnz_sum,
                            max_nnz,
                        },
                    )
                    .unwrap(),
                How::AgreedDense | How::AgreedDenseWide => a
                    .start_agreed_dense(
                        5,
                        g,
                        Agreed {
                            fixed: f,
                            nnz_sum,
                            max_nnz,
                        },
                    )
                    .unwrap(),
            }
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
            assert_eq!(r.mode, want_mode, "payload mode");
            if matches!(
                how,
                How::Agreed | How::AgreedDense | How::AgreedWide | How::AgreedDenseWide
            ) {
                assert_eq!(r.phases.agree, Duration::ZERO, "no agreement round");
            }
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
fn sparse_and_pre_agreed_inputs_are_exact() {
    for how in [How::Sparse, How::Agreed, How::AgreedDense] {
        run_with(
            3,
            0.02,
            21,
            2,
            InnetConfig::default(),
            how,
            0.02,
            PayloadMode::Sketch,
        );
    }
}

#[test]
fn wide_values_are_exact_through_32_bit_lanes() {
    // Sketch (low density) and dense lanes (high density), each value or cell split in two
    // 32-bit lanes, under loss: exact 62-bit sums.
    run_with(
        4,
        0.03,
        31,
        2,
        InnetConfig::default(),
        How::AgreedWide,
        0.02,
        PayloadMode::Sketch,
    );
    run_with(
        3,
        0.02,
        32,
        2,
        InnetConfig::default(),
        How::AgreedDenseWide,
        0.7,
        PayloadMode::Dense,
    );
    // A stalled wide sketch recovers with two lanes per candidate.
    let tiny = InnetConfig {
        cells: Some(50),
        ..Default::default()
    };
    run_with(
        3,
        0.0,
        33,
        1,
        tiny,
        How::AgreedWide,
        0.02,
        PayloadMode::Sketch,
    );
}

#[test]
fn dense_mode_when_the_sketch_would_be_larger() {
    // At 60 % density per worker the sketch (index + ~1.2 cells per union key) is larger than
    // one lane per element: auto picks dense lanes, exactly.
    run_with(
        3,
        0.02,
        5,
        2,
        InnetConfig::default(),
        How::Dense,
        0.6,
        PayloadMode::Dense,
    );
    // Forced either way, both are exact.
    let dense = InnetConfig {
        mode: ModeChoice::Dense,
        ..Default::default()
    };
    run_with(
        3,
        0.0,
        6,
        1,
        dense.clone(),
        How::Agreed,
        0.02,
        PayloadMode::Dense,
    );
    run_with(
        3,
        0.02,
        8,
        2,
        dense,
        How::AgreedDense,
        0.3,
        PayloadMode::Dense,
    );
    run_with(
        3,
        0.0,
        9,
        1,
        InnetConfig::default(),
        How::AgreedDense,
        0.6,
        PayloadMode::Dense,
    );
    let sketch = InnetConfig {
        mode: ModeChoice::Sketch,
        ..Default::default()
    };
    run_with(3, 0.0, 7, 1, sketch, How::Sparse, 0.6, PayloadMode::Sketch);
}

#[test]
fn union_rank_mode_is_exact() {
    // Index first, then one lane per candidate: exact under loss, for every kind of input and
    // for wide values; auto picks it for unions from `union_rank_from` keys on.
    let forced = InnetConfig {
        mode: ModeChoice::UnionRank,
        ..Default::default()
    };
    for (k, how) in [
        How::Dense,
        How::Sparse,
        How::Agreed,
        How::AgreedDense,
        How::AgreedWide,
    ]
    .into_iter()
    .enumerate()
    {
        let retries = run_with(
            3,
            0.03,
            40 + k as u64,
            2,
            forced.clone(),
            how,
            0.05,
            PayloadMode::UnionRank,
        );
        assert!(retries.iter().all(|&r| r == 0), "{how:?}: {retries:?}");
    }
    let auto_low = InnetConfig {
        union_rank_from: 100,
        ..Default::default()
    };
    run_with(
        4,
        0.01,
        47,
        2,
        auto_low,
        How::AgreedDense,
        0.02,
        PayloadMode::UnionRank,
    );
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
    let mut net = switched_net(SimConfig::default(), &spec);
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

/// A lazily filled dense operation whose caller forgets `fill_dense` fails loudly when its
/// first unfilled chunk is due, instead of sending zeros.
#[test]
fn lazy_dense_without_fill_fails_loudly() {
    let n = 2;
    let spec = job(n);
    let mut net = switched_net(SimConfig::default(), &spec);
    let mut agents: Vec<InnetCore> = (0..n)
        .map(|r| {
            let cfg = InnetConfig {
                mode: ModeChoice::Dense,
                ..Default::default()
            };
            InnetCore::new(&spec, r as u8, AggConfig::default(), cfg).unwrap()
        })
        .collect();
    let values = vec![0.25f32; 64 * 100];
    let f = FixedPoint::new(
        sketchreduce_codec::max_exponent(&values).unwrap(),
        n as u32,
        sketchreduce_codec::LaneWidth::W32,
    )
    .unwrap();
    for a in agents.iter_mut() {
        a.start_agreed_dense_lazy(
            1,
            &values,
            Agreed {
                fixed: f,
                nnz_sum: 2 * values.len() as u64,
                max_nnz: values.len() as u64,
            },
        )
        .unwrap();
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
    for r in results {
        match r.unwrap() {
            Err(AgentError::Config(m)) => assert!(m.contains("fill_dense"), "{m}"),
            other => panic!("expected a loud failure, got {other:?}"),
        }
    }
}

/// A worker fed the way `Agent::all_reduce_agreed_dense` feeds it: lazily quantized dense
/// lanes, `fill_dense` before the transmissions of each driver turn.
struct Lazy {
    core: InnetCore,
    values: Vec<f32>,
    in_turn: bool,
}

impl sketchreduce_agent::Endpoint for Lazy {
    fn handle_datagram(&mut self, now: std::time::Instant, d: &[u8]) {
        self.core.handle_datagram(now, d)
    }
    fn poll_transmit(
        &mut self,
        now: std::time::Instant,
        buf: &mut [u8],
    ) -> Option<sketchreduce_agent::Transmit> {
        // As the socket driver does: one fill per turn, then every due datagram.
        if !self.in_turn {
            self.core.fill_dense(&self.values);
            self.in_turn = true;
        }
        let t = self.core.poll_transmit(now, buf);
        self.in_turn = t.is_some();
        t
    }
    fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.core.poll_timeout()
    }
}

/// Lazily filled dense lanes stay exact when packets are lost and duplicated. Without
/// jitter, datagrams sent together arrive together, so a worker handles several results per
/// driver turn: one slot lagging after a loss while the others run ahead. (That once sent a
/// chunk that was never quantized: the fill followed the latest chunk started, which a
/// lagging slot's completion moves back, instead of the furthest one.)
#[test]
fn lazy_dense_is_exact_under_loss() {
    let n = 4;
    let spec = job(n);
    for (seed, loss) in [(1u64, 0.01), (2, 0.05), (3, 0.1)] {
        let mut net = switched_net(
            SimConfig {
                loss,
                duplicate: 0.02,
                jitter: Duration::ZERO,
                seed,
                ..Default::default()
            },
            &spec,
        );
        let mut agents: Vec<Lazy> = (0..n)
            .map(|r| {
                let mut a = AggConfig::with_timeout(Duration::from_secs(30));
                a.window = 4;
                let cfg = InnetConfig {
                    mode: ModeChoice::Dense,
                    ..Default::default()
                };
                Lazy {
                    core: InnetCore::new(&spec, r as u8, a, cfg).unwrap(),
                    values: Vec::new(),
                    in_turn: false,
                }
            })
            .collect();
        for it in 0..3 {
            let grads = generate(&SynthSpec {
                dim: 30_000 + it * 7,
                workers: n,
                density: 1.0,
                overlap: 0.0,
                pattern: Pattern::Random,
                seed: seed * 100 + it as u64,
            })
            .unwrap();
            let (f, want) = reference(&grads);
            for (a, g) in agents.iter_mut().zip(&grads) {
                a.values = g.clone();
                let agreed = Agreed {
                    fixed: f,
                    nnz_sum: (n * g.len()) as u64,
                    max_nnz: g.len() as u64,
                };
                a.core.start_agreed_dense_lazy(5, g, agreed).unwrap();
            }
            let mut results: Vec<Option<Result<Reduced, AgentError>>> = vec![None; n];
            assert!(net.run(&mut agents, |ag| {
                for (i, a) in ag.iter_mut().enumerate() {
                    if let Some(r) = a.core.poll_complete() {
                        results[i] = Some(r);
                    }
                }
                results.iter().all(|r| r.is_some())
            }));
            for r in results {
                let r = r.unwrap().unwrap();
                assert_eq!(r.mode, PayloadMode::Dense);
                check(&r, &want, &f);
            }
        }
    }
}
