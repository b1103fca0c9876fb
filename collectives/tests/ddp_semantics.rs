//! The DDP helper against PyTorch DDP's semantics (`find_unused_parameters=True`), ranks as
//! threads: parameters used by some ranks only, different initial parameters, layouts that
//! differ, a NaN gradient, and N ranks against one process on the concatenated batch.
#![cfg(feature = "tch")]

use rand::{Rng, SeedableRng};
use sketchreduce_collectives::*;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use tch::{nn, Device, Kind, Tensor};

fn on_ranks<T: Send>(n: usize, f: impl Fn(Arc<Communicator>) -> T + Sync) -> Vec<T> {
    let master = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|r| {
                let f = &f;
                s.spawn(move || {
                    let cfg = Config::new(r, n, master).with_timeout(Duration::from_secs(30));
                    f(Arc::new(Communicator::new(cfg).unwrap()))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn vals(t: &Tensor) -> Option<Vec<f32>> {
    t.defined().then(|| {
        let d = if t.is_sparse() {
            t.to_dense(None, false)
        } else {
            t.shallow_clone()
        };
        Vec::<f32>::try_from(&d.contiguous().view(-1)).unwrap()
    })
}

/// Rank 0 uses `a` and the embedding, rank 1 uses `b`; nobody uses `c`. Torch DDP gives
/// each parameter the average over ranks with zeros for the ranks that did not use it, on
/// every rank, and leaves `c` without a gradient. (Before the fixed layout, both ranks got
/// `a`'s and `b`'s gradients summed into one slot: `[15, 30, 45, 60]`.)
#[test]
fn parameters_used_by_some_ranks_average_like_torch_ddp() {
    for algo in [Algo::Ring, Algo::AllGather] {
        let out = on_ranks(2, |comm| {
            let r = comm.rank();
            let vs = nn::VarStore::new(Device::Cpu);
            let a = vs.root().var("a", &[4], nn::Init::Const(1.0));
            let b = vs.root().var("b", &[4], nn::Init::Const(1.0));
            let c = vs.root().var("c", &[4], nn::Init::Const(1.0));
            let emb = nn::embedding(
                vs.root() / "emb",
                6,
                2,
                nn::EmbeddingConfig {
                    sparse: true,
                    ..Default::default()
                },
            );
            let ddp = DistributedDataParallel::new(comm, &vs)
                .unwrap()
                .with_algo(algo);
            let x = Tensor::from_slice(&[10.0f32, 20.0, 30.0, 40.0]);
            let loss = if r == 0 {
                let e = tch::nn::Module::forward(&emb, &Tensor::from_slice(&[3i64, 3, 5]));
                (&a * &x).sum(Kind::Float) + e.sum(Kind::Float) * 4.0
            } else {
                (&b * &x * 2.0).sum(Kind::Float)
            };
            loss.backward();
            let report = ddp.sync_gradients().unwrap();
            let _ = &c;
            (
                vals(&a.grad()),
                vals(&b.grad()),
                c.grad().defined(),
                vals(&emb.ws.grad()),
                emb.ws.grad().is_sparse(),
                report,
            )
        });
        let mut emb_want = vec![0.0f32; 12];
        emb_want[6..8].copy_from_slice(&[4.0, 4.0]); // row 3 used twice: 2·4 / 2 ranks
        emb_want[10..12].copy_from_slice(&[2.0, 2.0]); // row 5 once: 4 / 2
        for (r, (a, b, c, e, e_sparse, report)) in out.into_iter().enumerate() {
            assert_eq!(a, Some(vec![5.0, 10.0, 15.0, 20.0]), "{algo} rank {r}: a");
            assert_eq!(b, Some(vec![10.0, 20.0, 30.0, 40.0]), "{algo} rank {r}: b");
            assert!(!c, "{algo} rank {r}: c is unused everywhere: no gradient");
            assert_eq!(e, Some(emb_want.clone()), "{algo} rank {r}: embedding");
            assert!(
                e_sparse,
                "{algo} rank {r}: the embedding gradient stays sparse"
            );
            assert_eq!(report.unused, vec!["c".to_string()]);
            let local: Vec<&str> = if r == 0 {
                vec!["b", "c"]
            } else {
                vec!["a", "c", "emb.weight"]
            };
            assert_eq!(report.without_grad, local, "{algo} rank {r}");
            assert_eq!((report.buckets, report.sparse_tensors), (1, 1));
        }
    }
}

/// `new` makes every rank's copy of the model rank 0's, bit for bit, parameters and buffers
/// of any dtype.
#[test]
fn different_initial_parameters_become_rank_0s() {
    let out = on_ranks(3, |comm| {
        let r = comm.rank() as f64;
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let w = p.var("w", &[2, 3], nn::Init::Const(0.1 + r));
        let d = p.var("d", &[2], nn::Init::Const(0.0));
        tch::no_grad(|| {
            // An f64 parameter.
            d.shallow_clone()
                .set_data(&Tensor::from_slice(&[1.0f64 / 3.0 + r, -r]));
        });
        let mut count = p.zeros_no_train("count", &[3]).to_kind(Kind::Int64);
        count = p.var_copy("steps", &(count + (7 + r as i64)));
        let _ = count.set_requires_grad(false);
        let before = vals(&w).unwrap();
        DistributedDataParallel::new(comm, &vs).unwrap();
        let mut all: Vec<(String, Vec<u8>)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, tensor_bytes(&t).unwrap()))
            .collect();
        all.sort();
        (before, all)
    });
    assert_ne!(out[1].0, out[0].0, "ranks started different");
    for (r, (_, all)) in out.iter().enumerate() {
        assert_eq!(all, &out[0].1, "rank {r} holds rank 0's variables");
    }
    let w0: Vec<f32> = out[0].1[3]
        .1
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(w0, vec![0.1f32; 6]);
}

/// Two ranks whose models differ: refused by `new` on every rank, naming the rank; and an
/// operation of another model interleaved with this one is refused by the per-operation
/// layout hash, with the communicator still usable.
#[test]
fn layout_mismatch_is_an_error_naming_the_rank() {
    let out = on_ranks(3, |comm| {
        let r = comm.rank();
        let vs = nn::VarStore::new(Device::Cpu);
        let shape: &[i64] = if r == 1 { &[3, 2] } else { &[2, 3] };
        let _w = vs.root().var("w", shape, nn::Init::Const(1.0));
        let e = DistributedDataParallel::new(comm.clone(), &vs)
            .err()
            .unwrap();

        // Same sizes, different names: model A on ranks 0 and 2 meets model B on rank 1.
        let (va, vb) = (
            nn::VarStore::new(Device::Cpu),
            nn::VarStore::new(Device::Cpu),
        );
        let a = va.root().var("a", &[4], nn::Init::Const(1.0));
        let b = vb.root().var("b", &[4], nn::Init::Const(1.0));
        let ddp_a = DistributedDataParallel::new(comm.clone(), &va).unwrap();
        let ddp_b = DistributedDataParallel::new(comm.clone(), &vb).unwrap();
        a.sum(Kind::Float).backward();
        b.sum(Kind::Float).backward();
        let mixed = if r == 1 {
            ddp_b.sync_gradients()
        } else {
            ddp_a.sync_gradients()
        };
        // Still usable: the same model everywhere works.
        let ok = ddp_a.sync_gradients().map(|_| vals(&a.grad()).unwrap());
        (e, mixed.err(), ok)
    });
    for (r, (e, mixed, ok)) in out.into_iter().enumerate() {
        assert!(
            matches!(&e, CollectiveError::LayoutMismatch { rank: 1, detail } if detail.contains("[3, 2]") && detail.contains("[2, 3]")),
            "rank {r}: {e}"
        );
        let mixed = mixed.expect("a layout difference is an error");
        assert!(
            matches!(mixed, CollectiveError::LayoutMismatch { rank: 1, .. }),
            "rank {r}: {mixed}"
        );
        assert_eq!(ok.unwrap(), vec![1.0; 4], "rank {r}");
    }
}

/// A NaN in one rank's gradient fails every rank at the same step, naming the rank, the
/// parameter and the element; gradients are left untouched and the next step works.
#[test]
fn non_finite_gradient_names_parameter_and_index() {
    let out = on_ranks(3, |comm| {
        let r = comm.rank();
        let vs = nn::VarStore::new(Device::Cpu);
        let l1 = nn::linear(vs.root() / "l1", 3, 4, Default::default());
        let emb = nn::embedding(
            vs.root() / "emb",
            10,
            3,
            nn::EmbeddingConfig {
                sparse: true,
                ..Default::default()
            },
        );
        let ddp = DistributedDataParallel::new(comm, &vs).unwrap();
        let step = |poison_dense: bool, poison_sparse: bool| {
            let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
            let h = tch::nn::Module::forward(&emb, &Tensor::from_slice(&[4i64, 7]));
            let loss = tch::nn::Module::forward(&l1, &x).sum(Kind::Float) + h.sum(Kind::Float);
            let loss = if poison_dense && r == 1 {
                let m = Tensor::zeros([4, 3], (Kind::Float, Device::Cpu));
                let _ = m.get(2).get(1).fill_(f64::NAN);
                loss + (&l1.ws * m).sum(Kind::Float)
            } else if poison_sparse && r == 2 {
                let m = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
                let _ = m.get(1).get(2).fill_(f64::INFINITY);
                loss + (h * m).sum(Kind::Float)
            } else {
                loss
            };
            loss.backward();
            let res = ddp.sync_gradients();
            let g = vals(&l1.ws.grad()).unwrap();
            for (_, mut v) in vs.variables() {
                v.zero_grad();
            }
            (res.err(), g)
        };
        (step(true, false), step(false, true), step(false, false))
    });
    for (r, ((e1, g1), (e2, _), (e3, g3))) in out.into_iter().enumerate() {
        assert_eq!(
            e1,
            Some(CollectiveError::NonFiniteGradient {
                rank: 1,
                param: "l1.weight".into(),
                index: vec![2, 1]
            }),
            "rank {r}"
        );
        if r != 1 {
            assert!(g1.iter().all(|v| v.is_finite()), "left untouched");
        }
        assert_eq!(
            e2,
            Some(CollectiveError::NonFiniteGradient {
                rank: 2,
                param: "emb.weight".into(),
                index: vec![7, 2]
            }),
            "rank {r}"
        );
        assert_eq!(e3, None, "rank {r}: the communicator is still usable");
        assert_eq!(g3, vec![2.0; 12]);
    }
}

// ---- DDP equivalence: N ranks with the helper vs one process on the concatenated batch ----

const IN: i64 = 5;
const HID: i64 = 8;
const B: usize = 4;

struct TwoHeads {
    l1: nn::Linear,
    head0: nn::Linear,
    head1: nn::Linear,
    never: Tensor,
}

/// `rank`-dependent initial values (the DDP ranks must end up with rank 0's).
fn two_heads(vs: &nn::VarStore, rank: usize) -> TwoHeads {
    let p = vs.root();
    let m = TwoHeads {
        l1: nn::linear(&p / "l1", IN, HID, Default::default()),
        head0: nn::linear(&p / "head0", HID, 1, Default::default()),
        head1: nn::linear(&p / "head1", HID, 1, Default::default()),
        never: p.var("never", &[3], nn::Init::Const(0.25)),
    };
    tch::no_grad(|| {
        for (i, mut t) in vs.trainable_variables().into_iter().enumerate() {
            let n = t.numel() as i64;
            let v = Tensor::arange(n, (Kind::Float, Device::Cpu)).view(t.size().as_slice());
            t.copy_(&((v * 0.71 + i as f64 * 1.3 + rank as f64 * 5.0).sin() * 0.4));
        }
    });
    m
}

/// Sum over the samples of squared errors; sample type 0 goes through head0, type 1 through
/// head1 (a head is not touched at all when no sample needs it, so its gradient is undefined).
fn sse(m: &TwoHeads, x: &Tensor, y: &Tensor, types: &[i64]) -> Tensor {
    let h = tch::nn::Module::forward(&m.l1, x).tanh();
    let mut total = Tensor::zeros([], (Kind::Float, Device::Cpu));
    for (t, head) in [(0i64, &m.head0), (1, &m.head1)] {
        let idx: Vec<i64> = (0..types.len() as i64)
            .filter(|&i| types[i as usize] == t)
            .collect();
        if idx.is_empty() {
            continue;
        }
        let idx = Tensor::from_slice(&idx);
        let out = tch::nn::Module::forward(head, &h.index_select(0, &idx)).view([-1]);
        total += (out - y.index_select(0, &idx)).square().sum(Kind::Float);
    }
    total
}

/// Rank `r`'s batch at `step`: rank 1 never sees type 1, so head1 is unused there.
fn eq_batch(r: usize, step: usize) -> (Tensor, Tensor, Vec<i64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000 * step as u64 + r as u64);
    let x: Vec<f32> = (0..B * IN as usize)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let types: Vec<i64> = (0..B)
        .map(|_| if r == 1 { 0 } else { rng.gen_range(0..2) })
        .collect();
    let y: Vec<f32> = (0..B)
        .map(|i| {
            let s: f32 = x[i * IN as usize..(i + 1) * IN as usize].iter().sum();
            if types[i] == 0 {
                s.sin()
            } else {
                -s
            }
        })
        .collect();
    (
        Tensor::from_slice(&x).view([B as i64, IN]),
        Tensor::from_slice(&y),
        types,
    )
}

fn sgd(vs: &nn::VarStore, lr: f64) {
    tch::no_grad(|| {
        for mut p in vs.trainable_variables() {
            let g = p.grad();
            if g.defined() {
                let _ = p.f_add_(&(&g * -lr));
                p.zero_grad();
            }
        }
    });
}

fn params(vs: &nn::VarStore) -> Vec<Vec<f32>> {
    vs.trainable_variables()
        .iter()
        .map(|t| vals(t).unwrap())
        .collect()
}

#[test]
fn ddp_matches_one_process_on_the_concatenated_batch_for_50_steps() {
    const W: usize = 3;
    const STEPS: usize = 50;
    const LR: f64 = 0.1;
    // One process, the concatenated batch, mean loss over all W·B samples.
    let vs = nn::VarStore::new(Device::Cpu);
    let m = two_heads(&vs, 0);
    let mut single = Vec::new();
    for step in 0..STEPS {
        let parts: Vec<_> = (0..W).map(|r| eq_batch(r, step)).collect();
        let x = Tensor::cat(
            &parts
                .iter()
                .map(|p| p.0.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        let y = Tensor::cat(
            &parts
                .iter()
                .map(|p| p.1.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        let types: Vec<i64> = parts.iter().flat_map(|p| p.2.clone()).collect();
        let loss = sse(&m, &x, &y, &types) / (W * B) as f64;
        loss.backward();
        single.push(loss.double_value(&[]));
        sgd(&vs, LR);
    }
    let single_params = params(&vs);
    assert!(!m.never.grad().defined());

    // W ranks, each on its own part, mean loss over its B samples, DDP average.
    let out = on_ranks(W, |comm| {
        let r = comm.rank();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = two_heads(&vs, r);
        let ddp = DistributedDataParallel::new(comm.clone(), &vs).unwrap();
        let mut losses = Vec::new();
        let mut head1_unused_here = 0;
        for step in 0..STEPS {
            let (x, y, types) = eq_batch(r, step);
            let loss = sse(&m, &x, &y, &types) / B as f64;
            loss.backward();
            let report = ddp.sync_gradients().unwrap();
            head1_unused_here += report.without_grad.iter().any(|n| n == "head1.weight") as usize;
            let mut l = [loss.double_value(&[]) as f32];
            comm.all_reduce(&mut l, ReduceOp::Avg).unwrap();
            losses.push(l[0] as f64);
            sgd(&vs, LR);
        }
        (
            losses,
            params(&vs),
            m.never.grad().defined(),
            head1_unused_here,
        )
    });
    for (r, (losses, p, never_grad, head1_unused)) in out.iter().enumerate() {
        assert!(
            !never_grad,
            "rank {r}: a parameter no rank uses gets no gradient"
        );
        if r == 1 {
            assert!(
                *head1_unused >= 1,
                "rank 1 never uses head1 before its first gradient"
            );
        }
        for (step, (a, b)) in losses.iter().zip(&single).enumerate() {
            // The rank-averaged loss is an f32 all-reduce of f32 losses: compare at f32
            // precision (a few ulps) plus the drift of exact-fixed-point gradients.
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                "rank {r} step {step}: {a} vs {b}"
            );
        }
        for (k, (a, b)) in p.iter().zip(&single_params).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                    "rank {r} param {k}: {x} vs {y}"
                );
            }
        }
        assert_eq!(p, &out[0].1, "rank {r}: identical parameters on every rank");
    }
    assert!(
        single[STEPS - 1] < single[0] * 0.8,
        "the model learns: {single:?}"
    );
}
