//! Measures where the dense ring beats the sparse paths (the `auto` crossovers, see
//! `sketchreduce_collectives::auto_crossover`).
//!
//! `cargo run --release -p sketchreduce-collectives --example crossover [workers] [log2 dim] [block] [innet]`
//!
//! * `block = 1` (default): flat sparse vectors (plain dense buffers with zeros, as a dense
//!   bucket would be);
//! * `block = 32`: row-sparse vectors (`SparseVec` with 32-wide rows, as an embedding
//!   gradient is), passed on the sparse path without densifying;
//! * `innet`: also time the in-network path through an in-process software switch.
//!
//! Ranks are threads of this process on 127.0.0.1; prints one line per density (per-rank
//! fraction of nonzero blocks) with the median of 7 runs, the slowest rank counting.

use rand::{Rng, SeedableRng};
use sketchreduce_collectives::*;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let d: usize = 1 << args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20u32);
    let block: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    let with_innet = args.get(4).is_some_and(|s| s == "innet");
    let master = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let switch = with_innet.then(|| {
        sketchreduce_switch::spawn_switch(sketchreduce_switch::SwitchConfig::loopback(1, 4096))
            .unwrap()
    });
    let control = switch.as_ref().map(|s| s.control_addr());
    let densities = [
        0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0,
    ];
    let mut algos = vec![Algo::Ring, Algo::AllGather];
    if with_innet {
        algos.push(Algo::Innet);
    }
    let rows = d / block;
    println!(
        "workers {n}, dim {d} = {rows} blocks of {block} ({}): median ms of 7 runs",
        if block == 1 { "flat" } else { "row-sparse" }
    );
    print!("{:>12} {:>18}", "density/rank", "aggregate (Σnnz/d)");
    for a in &algos {
        print!(" {:>12}", format!("{a} ms"));
    }
    println!();
    let algos = &algos;
    let res: Vec<Vec<Vec<f64>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|r| {
                s.spawn(move || {
                    let mut cfg = Config::new(r, n, master);
                    if let Some(c) = control {
                        cfg = cfg.with_switch(c);
                    }
                    let comm = Communicator::new(cfg).unwrap();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(r as u64);
                    densities
                        .iter()
                        .map(|&p| {
                            let mut g = vec![0.0f32; d];
                            for b in g.chunks_exact_mut(block) {
                                if rng.gen_bool(p) {
                                    b.iter_mut().for_each(|x| *x = rng.gen_range(-1.0..1.0));
                                }
                            }
                            let sv = SparseVec::from_dense(&g, block).unwrap();
                            let mut t = vec![Vec::new(); algos.len()];
                            for _ in 0..7 {
                                for (k, &a) in algos.iter().enumerate() {
                                    comm.barrier().unwrap();
                                    let t0 = Instant::now();
                                    if block == 1 {
                                        let mut b = g.clone();
                                        comm.all_reduce_with(&mut b, ReduceOp::Sum, a).unwrap();
                                    } else {
                                        comm.start_sparse(sv.clone(), ReduceOp::Sum, Some(a))
                                            .wait()
                                            .unwrap();
                                    }
                                    t[k].push(t0.elapsed());
                                }
                            }
                            t.iter_mut()
                                .map(|v: &mut Vec<Duration>| {
                                    v.sort();
                                    v[v.len() / 2].as_secs_f64() * 1e3
                                })
                                .collect()
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (k, p) in densities.iter().enumerate() {
        print!("{:>12.3} {:>18.3}", p, p * n as f64);
        for a in 0..algos.len() {
            let ms = res.iter().map(|r| r[k][a]).fold(0.0, f64::max);
            print!(" {ms:>12.2}");
        }
        println!();
    }
}
