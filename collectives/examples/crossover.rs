//! Measures where the dense ring beats the sparse all-gather (the `auto` crossover).
//! `cargo run --release -p sketchreduce-collectives --example crossover [workers] [log2 dim]`
//! Ranks are threads of this process on 127.0.0.1; prints one line per density.

use rand::{Rng, SeedableRng};
use sketchreduce_collectives::*;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let d: usize = 1 << args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20u32);
    let master = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let densities = [0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4];
    println!("workers {n}, dim {d}: median ms of 7 runs");
    println!(
        "{:>12} {:>18} {:>9} {:>13}",
        "density/rank", "aggregate (Σnnz/d)", "ring ms", "allgather ms"
    );
    let res: Vec<Vec<(f64, f64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|r| {
                s.spawn(move || {
                    let comm = Communicator::new(Config::new(r, n, master)).unwrap();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(r as u64);
                    densities
                        .iter()
                        .map(|&p| {
                            let g: Vec<f32> = (0..d)
                                .map(|_| {
                                    if rng.gen_bool(p) {
                                        rng.gen_range(-1.0..1.0)
                                    } else {
                                        0.0
                                    }
                                })
                                .collect();
                            let mut t = [Vec::new(), Vec::new()];
                            for _ in 0..7 {
                                for (k, a) in [Algo::Ring, Algo::AllGather].into_iter().enumerate()
                                {
                                    comm.barrier().unwrap();
                                    let mut b = g.clone();
                                    let t0 = Instant::now();
                                    comm.all_reduce_with(&mut b, ReduceOp::Sum, a).unwrap();
                                    t[k].push(t0.elapsed());
                                }
                            }
                            let med = |v: &mut Vec<Duration>| {
                                v.sort();
                                v[v.len() / 2].as_secs_f64() * 1e3
                            };
                            (med(&mut t[0]), med(&mut t[1]))
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (k, p) in densities.iter().enumerate() {
        let ring = res.iter().map(|r| r[k].0).fold(0.0, f64::max);
        let ag = res.iter().map(|r| r[k].1).fold(0.0, f64::max);
        println!(
            "{:>12.3} {:>18.3} {:>9.2} {:>13.2}",
            p,
            p * n as f64,
            ring,
            ag
        );
    }
}
