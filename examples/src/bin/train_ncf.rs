//! NCF-style recommendation model (user and item embeddings + MLP) trained data-parallel on a
//! synthetic, Zipf-distributed interaction stream generated on the fly (fixed seed), so the
//! embedding gradients are very sparse (sparse COO tensors).
//!
//! The default shape is MovieLens-20M's, the data set of the standard NCF training benchmark
//! (MLPerf Training's NCF): 138,493 users and 26,744 items, 64-wide embeddings, i.e. 10.6 M
//! embedding parameters (42 MB of gradient per step if all-reduced dense) against 512
//! interactions per rank and step.
//!
//! `train_ncf --workers 4 --compare` spawns the switch and 4 worker processes for each
//! algorithm and prints a comparison table, including whether the final parameters are
//! bit-identical across algorithms (they are: every algorithm computes the same exact
//! fixed-point sums). With RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set it runs as one rank.

use anyhow::Result;
use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use sketchreduce_collectives::DistributedDataParallel;
use sketchreduce_examples::{
    auc, param_hash, progress, sgd_step, start_with, train_step, Adam, Common, Extras, GlooPeer,
    Meter, Role,
};
use tch::{nn, nn::Module, Device, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Train an NCF model on synthetic Zipf interactions with sketchreduce all-reduce")]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Users (rows of the user embedding table).
    #[arg(long, default_value_t = 138_493)]
    users: u64,
    /// Items (rows of the item embedding table).
    #[arg(long, default_value_t = 26_744)]
    items: u64,
    /// Embedding width.
    #[arg(long, default_value_t = 64)]
    dim: i64,
    /// Interactions per worker per iteration.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Zipf exponent of user and item popularity.
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Optimizer: adam (lazy row-wise Adam for the sparse embedding gradients, see
    /// `sketchreduce_examples::Adam`) | sgd.
    #[arg(long, default_value = "adam")]
    optim: String,
    /// Learning rate (a good SGD value is much higher, e.g. 0.5, and learns far slower).
    #[arg(long, default_value_t = 0.02)]
    lr: f64,
    /// Held-out interactions (same distribution, a seed no training batch uses) for the AUC.
    #[arg(long, default_value_t = 4096)]
    eval_size: usize,
}

struct Ncf {
    users: nn::Embedding,
    items: nn::Embedding,
    mlp: nn::Sequential,
}

impl Ncf {
    fn new(p: &nn::Path, a: &Args) -> Ncf {
        let ec = nn::EmbeddingConfig {
            sparse: true,
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.1,
            },
            ..Default::default()
        };
        Ncf {
            users: nn::embedding(p / "user", a.users as i64, a.dim, ec),
            items: nn::embedding(p / "item", a.items as i64, a.dim, ec),
            mlp: nn::seq()
                .add(nn::linear(p / "fc1", 2 * a.dim, 64, Default::default()))
                .add_fn(|x| x.relu())
                .add(nn::linear(p / "fc2", 64, 32, Default::default()))
                .add_fn(|x| x.relu())
                .add(nn::linear(p / "out", 32, 1, Default::default())),
        }
    }

    fn forward(&self, u: &Tensor, i: &Tensor) -> Tensor {
        let h = Tensor::cat(&[self.users.forward(u), self.items.forward(i)], 1);
        self.mlp.forward(&h).view([-1])
    }
}

/// Hidden "taste" group of a user or item: the label is 1 when they match.
fn group(x: u64, salt: u64) -> u64 {
    (x.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 4
}

/// Batch `iter` of `rank`: Zipf users and items, label = groups match.
fn batch(a: &Args, rank: usize, iter: usize) -> (Tensor, Tensor, Tensor) {
    interactions(
        a,
        a.common.seed ^ ((rank as u64) << 32) ^ (iter as u64).wrapping_mul(0x1000_0001),
        a.batch,
    )
}

/// The held-out set: drawn like a batch, from a seed outside every (rank, iteration) seed.
fn held_out(a: &Args) -> (Tensor, Tensor, Vec<f32>) {
    let (u, i, y) = interactions(
        a,
        a.common.seed ^ 0x5EED_0000_0000_0001 ^ (1 << 63),
        a.eval_size,
    );
    let y = Vec::<f32>::try_from(&y).unwrap_or_default();
    (u, i, y)
}

/// `n` interactions from `seed`: Zipf users and items, label = groups match.
fn interactions(a: &Args, seed: u64, n: usize) -> (Tensor, Tensor, Tensor) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let zu = Zipf::new(a.users, a.zipf).expect("checked in main");
    let zi = Zipf::new(a.items, a.zipf).expect("checked in main");
    let mut us = Vec::with_capacity(n);
    let mut is = Vec::with_capacity(n);
    let mut ys = Vec::with_capacity(n);
    for _ in 0..n {
        let u = zu.sample(&mut rng) as u64 - 1;
        // Half the time pick an item of the user's group (a positive), else any item.
        let mut i = zi.sample(&mut rng) as u64 - 1;
        if rng.gen_bool(0.5) {
            for _ in 0..16 {
                if group(i, 7) == group(u, 3) {
                    break;
                }
                i = zi.sample(&mut rng) as u64 - 1;
            }
        }
        us.push(u as i64);
        is.push(i as i64);
        ys.push((group(i, 7) == group(u, 3)) as i32 as f32);
    }
    (
        Tensor::from_slice(&us),
        Tensor::from_slice(&is),
        Tensor::from_slice(&ys),
    )
}

/// The gloo peer (`examples/python/train_ncf_gloo.py`, same model, batch, optimizer) and the
/// names of the gradient operations of one step: DDP's order is the sparse parameters in
/// reverse registration order, then the dense bucket(s).
fn extras(a: &Args) -> Extras {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/train_ncf_gloo.py");
    let mut args: Vec<String> = vec![
        "--users".into(),
        a.users.to_string(),
        "--items".into(),
        a.items.to_string(),
        "--dim".into(),
        a.dim.to_string(),
        "--batch".into(),
        a.batch.to_string(),
        "--zipf".into(),
        a.zipf.to_string(),
        "--lr".into(),
        a.lr.to_string(),
        "--optim".into(),
        a.optim.clone(),
        "--eval-size".into(),
        a.eval_size.to_string(),
    ];
    let bucket = (a.common.bucket_mb * (1 << 20) as f64) as u64;
    args.extend(["--bucket-bytes".into(), bucket.to_string()]);
    Extras {
        gloo: Some(GlooPeer {
            script,
            args,
            label: "gloo (torch DDP-style)".into(),
            note: format!(
                "torch.distributed gloo, the same model, batch and optimizer in PyTorch; as a DDP user has it by default, nn.Embedding(sparse=False): every gradient, the {}x{} and {}x{} embedding tables included, is all-reduced dense in DDP's {} MB buckets after backward (DDP would overlap them with backward: at most the backward time could hide), then {}; same data distribution, its own sampler, float32 sums: its parameters are not expected to match; bytes are eth0's tx counter (headers included), on loopback gloo's ring payload",
                a.users, a.dim, a.items, a.dim, a.common.bucket_mb,
                if a.optim == "adam" { "torch.optim.Adam over the dense gradients" } else { "torch.optim.SGD" }
            ),
        }),
        op_labels: vec![
            "item embedding".into(),
            "user embedding".into(),
            "MLP bucket".into(),
        ],
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    for (what, n) in [("--users", a.users), ("--items", a.items)] {
        Zipf::new(n, a.zipf)
            .map_err(|e| anyhow::anyhow!("{what} {n} with --zipf {}: {e}", a.zipf))?;
    }
    let (comm, algo) = match start_with(&a.common, "train_ncf", &extras(&a))? {
        Role::Done => return Ok(()),
        Role::Worker(c, algo) => (c, algo),
    };
    tch::set_num_threads(1);
    tch::manual_seed(a.common.seed as i64); // identical initial parameters on every rank
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Ncf::new(&vs.root(), &a);
    let ddp = DistributedDataParallel::new(comm.clone(), &vs)?
        .with_bucket_bytes((a.common.bucket_mb * (1 << 20) as f64) as usize);
    let mut adam = match a.optim.as_str() {
        "adam" => Some(Adam::new(a.lr)),
        "sgd" => None,
        o => anyhow::bail!("unknown --optim {o:?} (adam|sgd)"),
    };
    let pb = progress(a.common.iters, algo.name());
    let mut meter = Meter::default();
    // Rank 0 evaluates (every rank holds the same parameters).
    let eval_set = (comm.rank() == 0).then(|| held_out(&a));
    let evaluate = |meter: &mut Meter, done: usize| -> Option<f64> {
        let (u, i, y) = eval_set.as_ref()?;
        let scores = tch::no_grad(|| model.forward(u, i));
        let v = auc(&Vec::<f32>::try_from(&scores).ok()?, y);
        meter.record_metric(done, v);
        Some(v)
    };
    let auc0 = evaluate(&mut meter, 0);
    let mut last_auc = auc0;
    for it in 0..a.common.iters {
        let step = train_step(
            &comm,
            &ddp,
            &mut meter,
            it,
            || {
                let (u, i, y) = batch(&a, comm.rank(), it);
                model
                    .forward(&u, &i)
                    .binary_cross_entropy_with_logits::<Tensor>(
                        &y,
                        None,
                        None,
                        tch::Reduction::Mean,
                    )
            },
            || match adam.as_mut() {
                Some(opt) => opt.step(&vs),
                None => sgd_step(&vs, a.lr),
            },
        )?;
        let (report, l) = (&step.report, [step.loss]);
        if !report.unused.is_empty() && it == 0 && comm.rank() == 0 {
            eprintln!("parameters no rank used: {:?}", report.unused);
        }
        let done = it + 1;
        if done % a.common.eval_every.max(1) == 0 || done == a.common.iters {
            last_auc = evaluate(&mut meter, done).or(last_auc);
        }
        pb.set_message(format!(
            "loss {:.4} AUC {:.3} compute {:.1} ms comm {:.1} ms {:.0} KB",
            l[0],
            last_auc.unwrap_or(f64::NAN),
            step.compute.as_secs_f64() * 1e3,
            step.comm.as_secs_f64() * 1e3,
            report.bytes_sent as f64 / 1024.0
        ));
        pb.inc(1);
    }
    pb.finish_and_clear();
    if let (Some(a0), Some(a1)) = (auc0, last_auc) {
        let png = meter.write_curves(&a.common.out_dir, "train_ncf", algo, "AUC")?;
        eprintln!(
            "[{algo}] held-out AUC {a0:.4} -> {a1:.4} over {} iterations; curve {}",
            a.common.iters,
            png.display()
        );
    }
    let s = meter.summary(algo, &comm, param_hash(&vs), "AUC");
    println!("SUMMARY {}", serde_json::to_string(&s)?);
    Ok(())
}
