//! The DDP helper on a tiny model (dense layers + a sparse embedding), ranks as threads:
//! gradients equal the exact fixed-point average of the per-rank gradients, which is within
//! the quantization step of the single-process gradient on the concatenated batch.
#![cfg(feature = "tch")]

use sketchreduce_collectives::*;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use tch::{nn, nn::Module, Device, Kind, Tensor};

const W: usize = 3;
const B: i64 = 5;

struct Model {
    emb: nn::Embedding,
    l1: nn::Linear,
    l2: nn::Linear,
    _unused: Tensor,
}

fn model(vs: &nn::VarStore) -> Model {
    let p = vs.root();
    let emb = nn::embedding(
        &p / "emb",
        50,
        4,
        nn::EmbeddingConfig {
            sparse: true,
            ..Default::default()
        },
    );
    let l1 = nn::linear(&p / "l1", 4 + 3, 6, Default::default());
    let l2 = nn::linear(&p / "l2", 6, 1, Default::default());
    let unused = p.var("unused", &[2], nn::Init::Const(0.0));
    // Deterministic values without the global RNG (threads share it).
    tch::no_grad(|| {
        for (i, mut t) in vs.trainable_variables().into_iter().enumerate() {
            let n = t.numel() as i64;
            let v = Tensor::arange(n, (Kind::Float, Device::Cpu)).view(t.size().as_slice());
            t.copy_(&((v * 0.37 + i as f64).sin() * 0.5));
        }
    });
    Model {
        emb,
        l1,
        l2,
        _unused: unused,
    }
}

fn batch(rank: usize) -> (Tensor, Tensor, Tensor) {
    let r = rank as i64;
    let ids = Tensor::from_slice(&[r, 7, 2 * r + 1, 40, 7]);
    let x =
        (Tensor::arange(B * 3, (Kind::Float, Device::Cpu)).view([B, 3]) * (0.1 + r as f64)).cos();
    let y = (Tensor::arange(B, (Kind::Float, Device::Cpu)) * (1.0 + r as f64)).sin();
    (ids, x, y)
}

fn loss(m: &Model, ids: &Tensor, x: &Tensor, y: &Tensor) -> Tensor {
    let h = Tensor::cat(&[m.emb.forward(ids), x.shallow_clone()], 1);
    let out = m.l2.forward(&m.l1.forward(&h).relu()).view([-1]);
    out.mse_loss(y, tch::Reduction::Mean)
}

/// Per-parameter gradients (dense form) in registration order.
fn grads(vs: &nn::VarStore) -> Vec<Option<Vec<f32>>> {
    vs.trainable_variables()
        .iter()
        .map(|t| {
            let g = t.grad();
            g.defined().then(|| {
                let d = if g.is_sparse() {
                    g.to_dense(None, false)
                } else {
                    g
                };
                Vec::<f32>::try_from(&d.contiguous().view(-1)).unwrap()
            })
        })
        .collect()
}

fn run_ddp(bucket_bytes: usize, algo: Algo) -> Vec<(Vec<Option<Vec<f32>>>, DdpReport)> {
    let master = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..W)
            .map(|r| {
                s.spawn(move || {
                    let comm = Arc::new(
                        Communicator::new(
                            Config::new(r, W, master).with_timeout(Duration::from_secs(20)),
                        )
                        .unwrap(),
                    );
                    let vs = nn::VarStore::new(Device::Cpu);
                    let m = model(&vs);
                    let (ids, x, y) = batch(r);
                    loss(&m, &ids, &x, &y).backward();
                    let ddp = DistributedDataParallel::new(comm, &vs)
                        .unwrap()
                        .with_bucket_bytes(bucket_bytes)
                        .with_algo(algo);
                    let report = ddp.sync_gradients().unwrap();
                    (grads(&vs), report)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Per-rank local gradients, computed in this thread.
fn local_grads() -> Vec<Vec<Option<Vec<f32>>>> {
    (0..W)
        .map(|r| {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = model(&vs);
            let (ids, x, y) = batch(r);
            loss(&m, &ids, &x, &y).backward();
            grads(&vs)
        })
        .collect()
}

#[test]
fn ddp_equals_exact_fixed_point_average_and_concatenated_batch() {
    let local = local_grads();
    let nparams = local[0].len();
    // Expected, bucket by bucket. One big bucket: dense params in reverse order, one
    // exponent for all of them; the sparse embedding is its own operation.
    let dense_rev: Vec<usize> = (0..nparams)
        .rev()
        .filter(|&p| local[0][p].is_some() && p != 0)
        .collect();
    let concat = |p_list: &[usize], r: usize| -> Vec<f32> {
        p_list
            .iter()
            .flat_map(|&p| local[r][p].clone().unwrap())
            .collect()
    };
    let big = reference_all_reduce(
        &(0..W).map(|r| concat(&dense_rev, r)).collect::<Vec<_>>(),
        LaneWidth::W32,
        ReduceOp::Avg,
    )
    .unwrap();
    let emb = reference_all_reduce(
        &(0..W)
            .map(|r| local[r][0].clone().unwrap())
            .collect::<Vec<_>>(),
        LaneWidth::W32,
        ReduceOp::Avg,
    )
    .unwrap();

    for algo in [Algo::Ring, Algo::AllGather] {
        for (r, (g, report)) in run_ddp(DEFAULT_BUCKET_BYTES_FOR_TEST, algo)
            .into_iter()
            .enumerate()
        {
            assert_eq!(report.buckets, 1);
            assert_eq!(report.sparse_tensors, 1);
            assert_eq!(report.without_grad, vec!["unused".to_string()], "rank {r}");
            assert_eq!(report.unused, vec!["unused".to_string()], "rank {r}");
            assert!(
                g[nparams - 1].is_none(),
                "a parameter no rank used keeps no gradient"
            );
            let mut off = 0;
            for &p in &dense_rev {
                let got = g[p].as_ref().unwrap();
                assert_eq!(
                    bits(got),
                    bits(&big[off..off + got.len()]),
                    "{algo} rank {r} param {p}"
                );
                off += got.len();
            }
            assert_eq!(
                bits(g[0].as_ref().unwrap()),
                bits(&emb),
                "{algo} rank {r} embedding"
            );
        }
    }

    // One bucket per parameter: expected per parameter.
    for (r, (g, report)) in run_ddp(4, Algo::Ring).into_iter().enumerate() {
        // Every parameter keeps its slot, the unused one too (zeros from every rank).
        assert_eq!(report.buckets, dense_rev.len() + 1);
        for &p in &dense_rev {
            let want = reference_all_reduce(
                &(0..W)
                    .map(|k| local[k][p].clone().unwrap())
                    .collect::<Vec<_>>(),
                LaneWidth::W32,
                ReduceOp::Avg,
            )
            .unwrap();
            assert_eq!(
                bits(g[p].as_ref().unwrap()),
                bits(&want),
                "rank {r} param {p}"
            );
        }
    }

    // Single process on the concatenated batch: same up to the quantization step.
    let vs = nn::VarStore::new(Device::Cpu);
    let m = model(&vs);
    let parts: Vec<_> = (0..W).map(batch).collect();
    let ids = Tensor::cat(
        &parts
            .iter()
            .map(|p| p.0.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    let x = Tensor::cat(
        &parts
            .iter()
            .map(|p| p.1.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    let y = Tensor::cat(
        &parts
            .iter()
            .map(|p| p.2.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    loss(&m, &ids, &x, &y).backward();
    let full = grads(&vs);
    let mut off = 0;
    let emax = big.iter().fold(0f32, |a, b| a.max(b.abs()));
    for &p in &dense_rev {
        let want = full[p].as_ref().unwrap();
        for (k, w) in want.iter().enumerate() {
            let got = big[off + k];
            // |error| ≤ one quantization step of the shared scale (2^-27 · max, 3 workers)
            // plus f32 rounding of the two summation orders.
            assert!(
                (got - w).abs() <= emax * 2f32.powi(-24) + w.abs() * 1e-5,
                "param {p}[{k}]: {got} vs {w}"
            );
        }
        off += want.len();
    }
}

const DEFAULT_BUCKET_BYTES_FOR_TEST: usize = 25 << 20;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Runs `f` on 2 ranks (threads) and returns their results.
fn on_two_ranks<T: Send>(f: impl Fn(Communicator) -> T + Sync) -> Vec<T> {
    let master = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let f = &f;
                s.spawn(move || f(Communicator::new(Config::new(r, 2, master)).unwrap()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn sparse_tensor_all_reduce_keeps_coo() {
    let out = on_two_ranks(|comm| {
        let r = comm.rank();
        let idx = Tensor::from_slice(&[r as i64, 9]).view([1, 2]);
        let vals = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let t = Tensor::sparse_coo_tensor_indices_size(
            &idx,
            &vals,
            [10, 2],
            (Kind::Float, Device::Cpu),
            false,
        );
        let (o, info) = comm.all_reduce_tensor(&t, ReduceOp::Sum).unwrap();
        assert!(o.is_sparse());
        assert_eq!(info.algo, Algo::Ring, "default algo");
        let mut d = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        comm.all_reduce_tensor_(&mut d, ReduceOp::Avg).unwrap();
        let (o2, info2) = comm
            .start_tensor(&t, ReduceOp::Sum, Some(Algo::AllGather))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(info2.algo, Algo::AllGather);
        assert_eq!(o2.indices().size(), vec![1, 3]);
        (
            Vec::<f32>::try_from(&o.to_dense(None, false).view(-1)).unwrap(),
            Vec::<f32>::try_from(&d).unwrap(),
        )
    });
    for (o, d) in out {
        let mut want = vec![0.0f32; 20];
        want[0..2].copy_from_slice(&[1.0, 2.0]);
        want[2..4].copy_from_slice(&[1.0, 2.0]);
        want[18..20].copy_from_slice(&[6.0, 8.0]);
        assert_eq!(o, want);
        assert_eq!(d, vec![1.0, 2.0, 3.0]);
    }
}

#[test]
fn tensor_broadcast_all_gather_reduce_scatter() {
    let out = on_two_ranks(|comm| {
        let r = comm.rank();
        // Broadcast of f64 and i64 tensors from rank 1, exact.
        let mut d = Tensor::from_slice(&[0.1f64 + r as f64, 1.0 / 3.0]).view([2, 1]);
        comm.broadcast_tensor_(&mut d, 1).unwrap();
        let mut i = Tensor::from_slice(&[r as i64 * 1_000_000_007, -1]);
        comm.broadcast_tensor_(&mut i, 1).unwrap();
        // Shapes that differ are refused on both ranks, naming rank 1.
        let shape: &[i64] = if r == 0 { &[2, 2] } else { &[4] };
        let mut bad = Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        let e = comm.broadcast_tensor_(&mut bad, 0).unwrap_err();
        // All-gather of u8 tensors.
        let g = comm
            .all_gather_tensor(&Tensor::from_slice(&[r as u8, 200]))
            .unwrap();
        // Reduce-scatter along dim 0: [4, 3] → [2, 3].
        let x = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([4, 3]) * (r as f64 + 1.0);
        let (rs, _) = comm.reduce_scatter_tensor(&x, ReduceOp::Sum).unwrap();
        let odd = comm
            .reduce_scatter_tensor(
                &Tensor::ones([3], (Kind::Float, Device::Cpu)),
                ReduceOp::Sum,
            )
            .unwrap_err();
        (
            Vec::<f64>::try_from(&d.view(-1)).unwrap(),
            Vec::<i64>::try_from(&i).unwrap(),
            e,
            g.iter()
                .map(|t| Vec::<u8>::try_from(t).unwrap())
                .collect::<Vec<_>>(),
            rs.size(),
            Vec::<f32>::try_from(&rs.view(-1)).unwrap(),
            odd,
        )
    });
    for (r, (d, i, e, g, rs_size, rs, odd)) in out.into_iter().enumerate() {
        assert_eq!(d, vec![1.1, 1.0 / 3.0], "rank {r}");
        assert_eq!(i, vec![1_000_000_007, -1]);
        assert!(
            matches!(e, CollectiveError::LayoutMismatch { rank: 1, .. }),
            "rank {r}: {e}"
        );
        assert_eq!(g, vec![vec![0, 200], vec![1, 200]]);
        assert_eq!(rs_size, vec![2, 3]);
        let want: Vec<f32> = (0..6).map(|k| 3.0 * (6 * r + k) as f32).collect();
        assert_eq!(
            rs,
            want,
            "rank {r}: rows {}..{} of the sum",
            2 * r,
            2 * r + 2
        );
        assert!(odd.to_string().contains("divisible"), "{odd}");
    }
}
