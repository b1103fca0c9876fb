//! Ranks as threads of one process on 127.0.0.1: exactness of ring and all-gather against the
//! single-process reference (dense and sparse, 2..8 workers), config mismatch, dead peers.

use rand::{Rng, SeedableRng};
use sketchreduce_collectives::*;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

fn free_master() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Runs `f(comm)` on `n` ranks (threads), returning each rank's result.
fn on_ranks<T: Send + 'static>(
    n: usize,
    tweak: impl Fn(Config) -> Config + Sync,
    f: impl Fn(Communicator) -> T + Sync,
) -> Vec<Result<T>> {
    let master = free_master();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|r| {
                let (tweak, f) = (&tweak, &f);
                s.spawn(move || {
                    let mut c = Config::new(r, n, master).with_timeout(Duration::from_secs(10));
                    c.rendezvous_timeout = Duration::from_secs(10);
                    Communicator::new(tweak(c)).map(f)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Sparse-ish gradient with a wide spread of magnitudes and both signs.
fn grad(seed: u64, d: usize, density: f64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..d)
        .map(|_| {
            if rng.gen_bool(density) {
                let m: f32 = rng.gen_range(-1.0..1.0);
                m * 2f32.powi(rng.gen_range(-20..4))
            } else {
                0.0
            }
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn dense_exact_all_algorithms_2_to_8_workers() {
    for n in [2usize, 3, 4, 5, 8] {
        for (d, density) in [
            (1000usize, 1.0),
            (4099, 0.05),
            (17, 0.5),
            (0, 0.0),
            (1, 1.0),
        ] {
            let inputs: Vec<Vec<f32>> = (0..n)
                .map(|r| grad(r as u64 * 31 + d as u64, d, density))
                .collect();
            for lane in [LaneWidth::W32, LaneWidth::W64] {
                for op in [ReduceOp::Sum, ReduceOp::Avg] {
                    let want = reference_all_reduce(&inputs, lane, op).unwrap();
                    let inputs = &inputs;
                    let out = on_ranks(
                        n,
                        |c| c.with_lane(lane),
                        |comm| {
                            let r = comm.rank();
                            [Algo::Ring, Algo::AllGather, Algo::Auto].map(|a| {
                                let mut b = inputs[r].clone();
                                comm.all_reduce_with(&mut b, op, a).unwrap();
                                b
                            })
                        },
                    );
                    for (r, o) in out.into_iter().enumerate() {
                        for (a, got) in o.unwrap().iter().enumerate() {
                            assert_eq!(
                                bits(got),
                                bits(&want),
                                "n={n} d={d} lane={lane:?} op={op:?} algo#{a} rank {r}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn sparse_blocks_exact_and_union_support() {
    for n in [2usize, 4, 7] {
        let (rows, width) = (500usize, 8usize);
        let inputs: Vec<SparseVec> = (0..n)
            .map(|r| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(100 + r as u64);
                let mut dense = vec![0.0f32; rows * width];
                for _ in 0..40 {
                    let row = (rng.gen_range(0.0f64..1.0).powi(3) * rows as f64) as usize;
                    for c in 0..width {
                        dense[row * width + c] = rng.gen_range(-3.0..3.0);
                    }
                }
                SparseVec::from_dense(&dense, width).unwrap()
            })
            .collect();
        let dense_inputs: Vec<Vec<f32>> = inputs.iter().map(|s| s.to_dense()).collect();
        let want = reference_all_reduce(&dense_inputs, LaneWidth::W32, ReduceOp::Avg).unwrap();
        let mut union: Vec<u64> = inputs.iter().flat_map(|s| s.indices.clone()).collect();
        union.sort();
        union.dedup();
        let inputs = &inputs;
        let out = on_ranks(
            n,
            |c| Config {
                crossover: 1.0,
                ..c
            }, // aggregate density up to 0.56 here
            |comm| {
                let r = comm.rank();
                [Algo::AllGather, Algo::Ring, Algo::Auto].map(|a| {
                    comm.start_sparse(inputs[r].clone(), ReduceOp::Avg, Some(a))
                        .wait()
                        .unwrap()
                })
            },
        );
        for o in out {
            let o = o.unwrap();
            for (k, (s, info)) in o.iter().enumerate() {
                assert_eq!(bits(&s.to_dense()), bits(&want), "n={n} algo#{k}");
                if k == 0 {
                    assert_eq!(s.indices, union, "all-gather keeps the union support");
                    assert_eq!(info.algo, Algo::AllGather);
                }
            }
            assert_eq!(
                o[2].1.algo,
                Algo::AllGather,
                "sparse input → auto picks all-gather"
            );
        }
    }
}

#[test]
fn auto_picks_ring_for_dense_tensors() {
    let out = on_ranks(
        3,
        |c| c.with_algo(Algo::Auto),
        |comm| {
            let mut d = vec![1.0f32; 1000];
            let dense = comm.all_reduce(&mut d, ReduceOp::Sum).unwrap();
            let mut s = grad(comm.rank() as u64, 1000, 0.01);
            let sparse = comm.all_reduce(&mut s, ReduceOp::Sum).unwrap();
            (dense.algo, sparse.algo, d[0])
        },
    );
    for o in out {
        assert_eq!(o.unwrap(), (Algo::Ring, Algo::AllGather, 3.0));
    }
}

#[test]
fn non_blocking_operations_complete_in_order() {
    let out = on_ranks(
        4,
        |c| c,
        |comm| {
            let r = comm.rank() as f32;
            let ps: Vec<_> = (0..8)
                .map(|i| comm.start(vec![r + i as f32; 100 + i], ReduceOp::Sum))
                .collect();
            ps.into_iter()
                .map(|p| p.wait().unwrap().0[0])
                .collect::<Vec<_>>()
        },
    );
    for o in out {
        let o = o.unwrap();
        for (i, v) in o.iter().enumerate() {
            assert_eq!(*v, 6.0 + 4.0 * i as f32);
        }
    }
}

#[test]
fn non_finite_input_is_reported_on_every_rank_and_comm_survives() {
    let out = on_ranks(
        3,
        |c| c,
        |comm| {
            let mut b = vec![1.0f32; 10];
            if comm.rank() == 1 {
                b[7] = f32::NAN;
            }
            let e = comm.all_reduce(&mut b, ReduceOp::Sum).unwrap_err();
            let mut ok = vec![1.0f32; 10];
            comm.all_reduce(&mut ok, ReduceOp::Sum).unwrap();
            (e, ok[0])
        },
    );
    for o in out {
        let (e, v) = o.unwrap();
        assert_eq!(
            e,
            CollectiveError::NonFinite {
                rank: 1,
                position: 7
            }
        );
        assert_eq!(v, 3.0);
    }
}

/// Asserts every rank failed with a config mismatch whose message contains all of `needles`.
fn assert_all_mismatch(out: Vec<Result<()>>, needles: &[&str]) {
    for (r, o) in out.into_iter().enumerate() {
        let e = o.unwrap_err();
        assert!(
            matches!(e, CollectiveError::ConfigMismatch(_)),
            "rank {r}: {e}"
        );
        let msg = e.to_string();
        assert!(needles.iter().all(|n| msg.contains(n)), "rank {r}: {msg}");
    }
}

#[test]
fn a_rank_arriving_after_a_mismatch_still_hears_about_it() {
    // Rank 2 (mismatched) checks in first; rank 1 only after rank 0 has seen the problem. It
    // must get the mismatch, not a timeout on a closed rendezvous port.
    let out = on_ranks(
        3,
        |c| match c.rank {
            2 => c.with_algo(Algo::AllGather),
            1 => {
                std::thread::sleep(Duration::from_millis(700));
                c
            }
            _ => c,
        },
        |_| (),
    );
    assert_all_mismatch(out, &["rank 2"]);
}

#[test]
fn config_mismatch_is_refused_clearly() {
    let out = on_ranks(
        3,
        |c| {
            if c.rank == 2 {
                c.with_algo(Algo::AllGather)
            } else {
                c
            }
        },
        |_| (),
    );
    assert_all_mismatch(out, &["rank 2", "algo=allgather", "algo=ring"]);
    let out = on_ranks(
        2,
        |c| {
            if c.rank == 1 {
                Config { world_size: 3, ..c }
            } else {
                c
            }
        },
        |_| (),
    );
    let e = out[0].as_ref().err().unwrap().to_string();
    assert!(e.contains("WORLD_SIZE=3") && e.contains("with 2"), "{e}");
}

#[test]
fn missing_rank_times_out_at_rendezvous() {
    let master = free_master();
    let t = Instant::now();
    let mut c = Config::new(0, 2, master);
    c.rendezvous_timeout = Duration::from_millis(500);
    let e = Communicator::new(c).err().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(e, CollectiveError::RendezvousTimeout { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("ranks [1] never arrived"), "{e}");
}

#[test]
fn dead_peer_fails_fast_with_a_named_rank() {
    // Rank 2 joins, then exits without taking part: the others fail promptly, naming it.
    let t = Instant::now();
    let out = on_ranks(
        3,
        |c| c,
        |comm| {
            if comm.rank() == 2 {
                drop(comm);
                return None;
            }
            let mut b = vec![1.0f32; 100_000];
            Some(comm.all_reduce(&mut b, ReduceOp::Sum).unwrap_err())
        },
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    for o in out.into_iter().take(2) {
        let e = o.unwrap().unwrap().to_string();
        assert!(e.contains("rank 2"), "{e}");
    }
}

#[test]
fn stalled_peer_times_out() {
    // Rank 1 stays connected but never calls all_reduce: rank 0 fails after the timeout.
    let t = Instant::now();
    let out = on_ranks(
        2,
        |c| c.with_timeout(Duration::from_millis(700)),
        |comm| {
            if comm.rank() == 1 {
                std::thread::sleep(Duration::from_millis(2000));
                return None;
            }
            let mut b = vec![1.0f32; 10];
            Some(comm.all_reduce(&mut b, ReduceOp::Sum).unwrap_err())
        },
    );
    let e = out[0].as_ref().unwrap().as_ref().unwrap();
    assert!(
        matches!(e, CollectiveError::PeerTimeout { peer: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("no data from rank 1"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn innet_through_switch_matches_ring_and_reference() {
    use sketchreduce_switch::{spawn_switch, SwitchConfig};
    let sw = spawn_switch(SwitchConfig::loopback(1, 4096)).unwrap();
    let control = sw.control_addr();
    // Auto picks the sketch for these small unions; union-rank is forced in the last two.
    let cases = [
        (1u16, 2usize, InnetMode::Auto),
        (2, 4, InnetMode::Auto),
        (3, 8, InnetMode::Auto),
        (4, 4, InnetMode::UnionRank),
        (5, 8, InnetMode::UnionRank),
    ];
    for (job, n, mode) in cases {
        let d = 20_000;
        let inputs: Vec<Vec<f32>> = (0..n).map(|r| grad(7 * r as u64 + 1, d, 0.02)).collect();
        let dense: Vec<Vec<f32>> = (0..n).map(|r| grad(50 + r as u64, 3000, 1.0)).collect();
        // Default precision (auto): these inputs span 24 bits, so the values go wide.
        let want = reference_all_reduce_with(&inputs, Precision::Auto, ReduceOp::Avg).unwrap();
        let want_dense = reference_all_reduce_with(&dense, Precision::Auto, ReduceOp::Sum).unwrap();
        let (inputs, dense) = (&inputs, &dense);
        let out = on_ranks(
            n,
            |c| {
                let mut c = Config {
                    job_id: job,
                    crossover: 1.0,
                    auto_innet: true,
                    ..c.with_switch(control).with_algo(Algo::Innet)
                };
                c.codec.innet_mode = mode;
                c
            },
            |comm| {
                let r = comm.rank();
                let mut a = inputs[r].clone();
                let info = comm.all_reduce(&mut a, ReduceOp::Avg).unwrap();
                let mut b = dense[r].clone();
                comm.all_reduce(&mut b, ReduceOp::Sum).unwrap();
                let (s, _) = comm
                    .all_reduce_sparse(SparseVec::from_dense(&inputs[r], 4).unwrap(), ReduceOp::Avg)
                    .unwrap();
                let mut auto = inputs[r].clone();
                let ai = comm
                    .all_reduce_with(&mut auto, ReduceOp::Avg, Algo::Auto)
                    .unwrap();
                (a, info, b, s.to_dense(), auto, ai.algo)
            },
        );
        let mut auto_algos = Vec::new();
        for (r, o) in out.into_iter().enumerate() {
            let (a, info, b, s, auto, auto_algo) = o.unwrap();
            auto_algos.push(auto_algo);
            assert_eq!(info.algo, Algo::Innet);
            assert!(info.bytes_sent > 0);
            let want_mode = match mode {
                InnetMode::UnionRank => "union-rank",
                _ => "sketch",
            };
            assert_eq!(info.phases.innet_mode, Some(want_mode), "n={n} rank {r}");
            assert_eq!(
                bits(&a),
                bits(&want),
                "n={n} rank {r} sparse-ish dense input"
            );
            assert_eq!(bits(&b), bits(&want_dense), "n={n} rank {r} dense input");
            assert_eq!(bits(&s), bits(&want), "n={n} rank {r} sparse input");
            assert_eq!(bits(&auto), bits(&want));
        }
        // The cost model prices the switch too; whatever it picks, every rank picks the same
        // (it only reads agreed inputs and rank 0's link measurement).
        assert!(
            auto_algos.iter().all(|&a| a == auto_algos[0]),
            "{auto_algos:?}"
        );
    }
}

#[test]
fn fixed_sums_are_exact_integers() {
    let d = 3000;
    let inputs: Vec<Vec<f32>> = (0..3).map(|r| grad(r as u64 + 9, d, 0.1)).collect();
    let inputs = &inputs;
    let out = on_ranks(
        3,
        |c| c,
        |comm| {
            [Algo::Ring, Algo::AllGather].map(|a| {
                comm.start_fixed(inputs[comm.rank()].clone(), a)
                    .wait()
                    .unwrap()
                    .0
            })
        },
    );
    let e = inputs
        .iter()
        .map(|v| sketchreduce_codec::max_exponent(v).unwrap())
        .max()
        .unwrap();
    let fp = sketchreduce_codec::FixedPoint::new(e, 3, LaneWidth::W32).unwrap();
    let want: Vec<i64> = (0..d)
        .map(|i| inputs.iter().map(|v| fp.to_fixed(v[i])).sum())
        .collect();
    for o in out {
        for ((sums, f), _) in o.unwrap().into_iter().zip(0..) {
            assert_eq!(f, fp);
            assert_eq!(sums, want);
        }
    }
}

#[test]
fn min_max_exact_on_ring_and_allgather_dense_and_sparse() {
    for n in [2usize, 3, 5] {
        let d = 1500;
        // Mixed signs, zeros and −0.0 (which counts as +0.0), some positions zero on some ranks.
        let inputs: Vec<Vec<f32>> = (0..n)
            .map(|r| {
                let mut v = grad(r as u64 + 77, d, 0.3);
                v[r] = -0.0;
                v
            })
            .collect();
        for op in [ReduceOp::Min, ReduceOp::Max] {
            let want = reference_all_reduce(&inputs, LaneWidth::W32, op).unwrap();
            // Independent check of the reference: plain float min/max over ranks.
            for i in 0..d {
                let m = inputs.iter().map(|v| v[i]).fold(
                    if op == ReduceOp::Min {
                        f32::INFINITY
                    } else {
                        f32::NEG_INFINITY
                    },
                    |a, b| {
                        if op == ReduceOp::Min {
                            a.min(b)
                        } else {
                            a.max(b)
                        }
                    },
                );
                assert_eq!(want[i], m, "reference at {i}");
                assert_eq!(
                    want[i].to_bits() >> 31 == 1,
                    want[i] < 0.0,
                    "no −0.0 at {i}"
                );
            }
            let inputs = &inputs;
            let out = on_ranks(
                n,
                |c| c,
                |comm| {
                    let r = comm.rank();
                    let dense = [Algo::Ring, Algo::AllGather, Algo::Auto].map(|a| {
                        let mut b = inputs[r].clone();
                        comm.all_reduce_with(&mut b, op, a).unwrap();
                        b
                    });
                    let sparse = [Algo::Ring, Algo::AllGather].map(|a| {
                        let s = SparseVec::from_dense(&inputs[r], 5).unwrap();
                        comm.start_sparse(s, op, Some(a))
                            .wait()
                            .unwrap()
                            .0
                            .to_dense()
                    });
                    (dense, sparse)
                },
            );
            for (r, o) in out.into_iter().enumerate() {
                let (dense, sparse) = o.unwrap();
                for (k, got) in dense.iter().chain(sparse.iter()).enumerate() {
                    assert_eq!(bits(got), bits(&want), "n={n} {op:?} variant {k} rank {r}");
                }
            }
        }
    }
}

#[test]
fn reduce_scatter_equals_the_all_reduce_slice() {
    let n = 3;
    let d = 1001; // not a multiple of 3: chunks of 333/334
    let inputs: Vec<Vec<f32>> = (0..n).map(|r| grad(r as u64 + 5, d, 0.8)).collect();
    let inputs = &inputs;
    for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Min, ReduceOp::Max] {
        let want = reference_all_reduce_with(inputs, Precision::Auto, op).unwrap();
        let out = on_ranks(
            n,
            |c| c,
            |comm| comm.reduce_scatter(&inputs[comm.rank()], op).unwrap(),
        );
        for (r, o) in out.into_iter().enumerate() {
            let (chunk, info) = o.unwrap();
            assert_eq!(info.collective, Collective::ReduceScatter);
            assert_eq!(
                bits(&chunk),
                bits(&want[chunk_range(d, n, r)]),
                "{op:?} rank {r}"
            );
        }
    }
}

#[test]
fn broadcast_and_all_gather_are_exact_bytes() {
    let out = on_ranks(
        4,
        |c| c,
        |comm| {
            let r = comm.rank();
            // Broadcast from rank 2; the other ranks pass buffers of the same length.
            let mut b: Vec<u8> = (0..1000u32).map(|i| (i * 7 + r as u32) as u8).collect();
            let info = comm.broadcast(&mut b, 2).unwrap();
            // All-gather of different lengths, then of equal-length floats.
            let blobs = comm.all_gather_bytes(vec![r as u8; r * 3]).unwrap();
            let floats = comm.all_gather(&[r as f32, f32::NAN, -0.0]).unwrap();
            // Floats of different lengths are refused on every rank, naming the rank.
            let bad = comm
                .all_gather(&vec![1.0; 2 + (r == 3) as usize])
                .unwrap_err();
            let still = comm.all_gather_bytes(vec![9]).unwrap();
            (b, info, blobs, floats, bad, still)
        },
    );
    let want: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 2) as u8).collect();
    for (r, o) in out.into_iter().enumerate() {
        let (b, info, blobs, floats, bad, still) = o.unwrap();
        assert_eq!(b, want, "rank {r}");
        assert_eq!(info.collective, Collective::Broadcast);
        assert_eq!(
            blobs,
            (0..4).map(|k| vec![k as u8; k * 3]).collect::<Vec<_>>()
        );
        for (k, f) in floats.iter().enumerate() {
            assert_eq!(f[0], k as f32);
            assert!(f[1].is_nan());
            assert_eq!(
                f[2].to_bits(),
                (-0.0f32).to_bits(),
                "bytes are exact: −0.0 stays"
            );
        }
        assert!(
            matches!(&bad, CollectiveError::Mismatch(m) if m.contains("rank 3")),
            "rank {r}: {bad}"
        );
        assert_eq!(still, vec![vec![9]; 4], "still usable after the refusal");
    }
}

#[test]
fn broadcast_from_a_rank_that_does_not_exist_is_refused_everywhere() {
    let out = on_ranks(
        2,
        |c| c,
        |comm| {
            let e = comm.broadcast(&mut [1, 2, 3], 5).unwrap_err();
            let mut ok = [comm.rank() as u8];
            comm.broadcast(&mut ok, 1).unwrap();
            (e, ok[0])
        },
    );
    for o in out {
        let (e, v) = o.unwrap();
        assert!(e.to_string().contains("source rank 5"), "{e}");
        assert_eq!(v, 1);
    }
}

#[test]
fn master_port_taken_by_another_program_fails_every_rank_quickly() {
    // Something else listens on MASTER_PORT (and never answers): rank 0 cannot listen, and
    // the others must not wait for the whole rendezvous window (here 60 s).
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let master = squatter.local_addr().unwrap();
    let t = Instant::now();
    let out: Vec<Result<Communicator>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|r| {
                s.spawn(move || {
                    Communicator::new(
                        Config::new(r, 3, master).with_rendezvous_timeout(Duration::from_secs(60)),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    let e0 = out[0].as_ref().err().unwrap().to_string();
    assert!(e0.contains("cannot listen on MASTER"), "{e0}");
    for o in &out[1..] {
        let e = o.as_ref().err().unwrap().to_string();
        assert!(e.contains("another program"), "{e}");
    }
    drop(squatter);
}

#[test]
fn min_max_through_innet_is_refused_on_every_rank() {
    use sketchreduce_switch::{spawn_switch, SwitchConfig};
    let sw = spawn_switch(SwitchConfig::loopback(1, 4096)).unwrap();
    let control = sw.control_addr();
    let out = on_ranks(
        2,
        |c| Config {
            job_id: 9,
            ..c.with_switch(control).with_algo(Algo::Innet)
        },
        |comm| {
            let mut b = vec![comm.rank() as f32 + 1.0; 50];
            let e = comm.all_reduce(&mut b, ReduceOp::Max).unwrap_err();
            // Auto never picks innet for Max; Sum still goes through the switch.
            let i = comm
                .all_reduce_with(&mut b, ReduceOp::Max, Algo::Auto)
                .unwrap();
            let mut s = vec![1.0f32; 50];
            let k = comm.all_reduce_keyed(&mut s, ReduceOp::Sum, 42).unwrap();
            (e, i.algo, b[0], k.algo, s[0])
        },
    );
    for o in out {
        let (e, auto_algo, max, k_algo, sum) = o.unwrap();
        assert!(e.to_string().contains("in-network"), "{e}");
        assert_ne!(auto_algo, Algo::Innet);
        assert_eq!(max, 2.0);
        assert_eq!((k_algo, sum), (Algo::Innet, 2.0));
    }
}
