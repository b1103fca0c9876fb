//! A dense MLP regression (dense gradients only): shows `auto` falling back to the dense ring
//! for every bucket. Same launcher and flags as `train_ncf` (`--workers`, `--algo`,
//! `--compare`).

use anyhow::Result;
use clap::Parser;
use sketchreduce_collectives::DistributedDataParallel;
use sketchreduce_examples::{
    param_hash, progress, sgd_step, start, train_step, Common, Meter, Role,
};
use tch::{nn, nn::Module, Device, Kind, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Train a dense MLP with sketchreduce all-reduce (auto → ring)")]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Input features.
    #[arg(long, default_value_t = 64)]
    features: i64,
    /// Hidden width.
    #[arg(long, default_value_t = 256)]
    hidden: i64,
    /// Samples per worker per iteration.
    #[arg(long, default_value_t = 128)]
    batch: i64,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let (comm, algo) = match start(&a.common, "train_mlp")? {
        Role::Done => return Ok(()),
        Role::Worker(c, algo) => (c, algo),
    };
    tch::set_num_threads(1);
    tch::manual_seed(a.common.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root();
    let net = nn::seq()
        .add(nn::linear(
            &p / "l1",
            a.features,
            a.hidden,
            Default::default(),
        ))
        .add_fn(|x| x.tanh())
        .add(nn::linear(
            &p / "l2",
            a.hidden,
            a.hidden,
            Default::default(),
        ))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&p / "l3", a.hidden, 1, Default::default()));
    // Teacher: a fixed random linear map (same on every rank), data per rank and iteration.
    let teacher = Tensor::randn([a.features, 1], (Kind::Float, Device::Cpu));
    let ddp = DistributedDataParallel::new(comm.clone(), &vs)?
        .with_bucket_bytes((a.common.bucket_mb * (1 << 20) as f64) as usize);
    let pb = progress(a.common.iters, algo.name());
    let mut meter = Meter::default();
    for it in 0..a.common.iters {
        let step = train_step(
            &comm,
            &ddp,
            &mut meter,
            it,
            || {
                tch::manual_seed((a.common.seed as i64) ^ ((comm.rank() as i64) << 20) ^ it as i64);
                let x = Tensor::randn([a.batch, a.features], (Kind::Float, Device::Cpu));
                let y = x.matmul(&teacher).sin();
                net.forward(&x).mse_loss(&y, tch::Reduction::Mean)
            },
            || sgd_step(&vs, a.lr),
        )?;
        let (report, l) = (step.report, [step.loss]);
        if it == 0 && comm.rank() == 0 {
            eprintln!("[rank 0] bucket algorithms chosen: {:?}", report.algos);
        }
        pb.set_message(format!("loss {:.4}", l[0]));
        pb.inc(1);
    }
    pb.finish_and_clear();
    println!(
        "SUMMARY {}",
        serde_json::to_string(&meter.summary(algo, &comm, param_hash(&vs)))?
    );
    Ok(())
}
