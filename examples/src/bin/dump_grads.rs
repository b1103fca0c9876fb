//! Dumps real per-worker gradients of two models as `.npy` files, to measure the codec on
//! them (`sketchreduce bench codec --npy ...`).
//!
//! - **ncf**: an NCF-like recommender (user and item embedding tables + MLP) on Zipf
//!   interactions, as in `train_ncf`; the embedding gradients are row-sparse, the MLP's dense.
//! - **lstm**: a word-level LSTM language model (embedding, one LSTM layer, output layer with a
//!   sampled softmax over the batch's targets plus shared Zipf negatives, as is usual for large
//!   vocabularies) on a synthetic Zipf/Markov token stream; input and output embeddings get
//!   row-sparse gradients, the LSTM dense ones.
//!
//! Each model is trained for `--steps` steps (Adam, one process), then each of `--workers`
//! workers computes the gradient of one mini-batch of its own data at those parameters; the
//! whole-model gradient (parameters in name order, flattened, f32) is written to
//! `OUT/{model}_w{rank}.npy`.
//!
//! `cargo run --release -p sketchreduce-examples --bin dump_grads -- --out /tmp/grads`

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use tch::{nn, nn::Module, nn::OptimizerConfig, nn::RNN, Device, Kind, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Dump per-worker gradients of an NCF-like model and an LSTM LM as .npy")]
struct Args {
    /// Output directory.
    #[arg(long, default_value = "grads")]
    out: PathBuf,
    /// Workers (one mini-batch of different data each).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Training steps before the gradients are taken.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Models to dump: ncf, lstm or both.
    #[arg(long, default_value = "ncf,lstm", value_delimiter = ',')]
    models: Vec<String>,
    /// NCF users.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// NCF items.
    #[arg(long, default_value_t = 20_000)]
    items: u64,
    /// NCF embedding width.
    #[arg(long, default_value_t = 32)]
    ncf_dim: i64,
    /// NCF interactions per mini-batch.
    #[arg(long, default_value_t = 1024)]
    ncf_batch: usize,
    /// LSTM vocabulary.
    #[arg(long, default_value_t = 30_000)]
    vocab: i64,
    /// LSTM embedding and hidden width.
    #[arg(long, default_value_t = 200)]
    hidden: i64,
    /// LSTM sequences per mini-batch.
    #[arg(long, default_value_t = 20)]
    lstm_batch: i64,
    /// LSTM sequence length.
    #[arg(long, default_value_t = 35)]
    bptt: i64,
    /// Shared negatives of the sampled softmax.
    #[arg(long, default_value_t = 1024)]
    negatives: i64,
}

/// Flattens every gradient (parameters sorted by name; missing gradients are zeros, sparse
/// ones densified) into one f32 vector.
fn flat_grads(vs: &nn::VarStore) -> Result<Vec<f32>> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (_, v) in vars {
        let g = v.grad();
        let g = if !g.defined() {
            v.zeros_like()
        } else if g.is_sparse() {
            g.to_dense(None, false)
        } else {
            g
        };
        let g = g.to_kind(Kind::Float).flatten(0, -1).contiguous();
        out.extend(Vec::<f32>::try_from(&g)?);
    }
    Ok(out)
}

fn write(args: &Args, name: &str, rank: usize, g: &[f32]) -> Result<()> {
    let path = args.out.join(format!("{name}_w{rank}.npy"));
    std::fs::write(&path, sketchreduce_codec::npy::to_npy_bytes(g))
        .with_context(|| format!("writing {}", path.display()))?;
    let nnz = g.iter().filter(|v| **v != 0.0).count();
    println!(
        "{} dim {} nnz {} ({:.2}%)",
        path.display(),
        g.len(),
        nnz,
        100.0 * nnz as f64 / g.len().max(1) as f64
    );
    Ok(())
}

struct Ncf {
    users: nn::Embedding,
    items: nn::Embedding,
    mlp: nn::Sequential,
}

impl Ncf {
    fn new(p: &nn::Path, a: &Args) -> Ncf {
        let ec = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.1,
            },
            ..Default::default()
        };
        let d = a.ncf_dim;
        Ncf {
            users: nn::embedding(p / "user", a.users as i64, d, ec),
            items: nn::embedding(p / "item", a.items as i64, d, ec),
            mlp: nn::seq()
                .add(nn::linear(p / "fc1", 2 * d, 128, Default::default()))
                .add_fn(|x| x.relu())
                .add(nn::linear(p / "fc2", 128, 64, Default::default()))
                .add_fn(|x| x.relu())
                .add(nn::linear(p / "out", 64, 1, Default::default())),
        }
    }

    fn loss(&self, (u, i, y): &(Tensor, Tensor, Tensor)) -> Tensor {
        let h = Tensor::cat(&[self.users.forward(u), self.items.forward(i)], 1);
        self.mlp
            .forward(&h)
            .view([-1])
            .binary_cross_entropy_with_logits::<Tensor>(y, None, None, tch::Reduction::Mean)
    }
}

fn group(x: u64, salt: u64) -> u64 {
    (x.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 4
}

fn ncf_batch(a: &Args, stream: u64) -> Result<(Tensor, Tensor, Tensor)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ stream.wrapping_mul(0x9e37_79b9));
    let zu = Zipf::new(a.users, 1.1)?;
    let zi = Zipf::new(a.items, 1.1)?;
    let (mut us, mut is, mut ys) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.ncf_batch {
        let u = zu.sample(&mut rng) as u64 - 1;
        let i = zi.sample(&mut rng) as u64 - 1;
        us.push(u as i64);
        is.push(i as i64);
        ys.push((group(i, 7) == group(u, 3)) as i32 as f32);
    }
    Ok((
        Tensor::from_slice(&us),
        Tensor::from_slice(&is),
        Tensor::from_slice(&ys),
    ))
}

fn dump_ncf(a: &Args) -> Result<()> {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Ncf::new(&vs.root(), a);
    let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
    for s in 0..a.steps {
        let b = ncf_batch(a, 1000 + s as u64)?;
        opt.backward_step(&model.loss(&b));
    }
    for w in 0..a.workers {
        opt.zero_grad();
        let b = ncf_batch(a, w as u64)?;
        model.loss(&b).backward();
        write(a, "ncf", w, &flat_grads(&vs)?)?;
    }
    Ok(())
}

struct Lm {
    emb: nn::Embedding,
    lstm: nn::LSTM,
    out_w: Tensor,
    out_b: Tensor,
}

impl Lm {
    fn new(p: &nn::Path, a: &Args) -> Lm {
        Lm {
            emb: nn::embedding(p / "emb", a.vocab, a.hidden, Default::default()),
            lstm: nn::lstm(p / "lstm", a.hidden, a.hidden, Default::default()),
            out_w: p.randn("out_w", &[a.vocab, a.hidden], 0.0, 0.05),
            out_b: p.zeros("out_b", &[a.vocab]),
        }
    }

    /// Sampled softmax: logits over the batch's targets and the shared negatives only, so the
    /// output layer's gradient touches those rows alone.
    fn loss(&self, x: &Tensor, y: &Tensor, negatives: &Tensor) -> Tensor {
        let (h, _) = self.lstm.seq(&self.emb.forward(x));
        let h = h.reshape([-1, h.size()[2]]);
        let y = y.reshape([-1]);
        let cand = Tensor::cat(&[y.shallow_clone(), negatives.shallow_clone()], 0);
        let (cand, inverse, _) = cand.unique_dim(0, true, true, false);
        let w = self.out_w.index_select(0, &cand);
        let b = self.out_b.index_select(0, &cand);
        let logits = h.matmul(&w.tr()) + b;
        let target = inverse.narrow(0, 0, y.size()[0]);
        logits.cross_entropy_for_logits(&target)
    }
}

/// A Zipf token stream with Markov structure (each token prefers a few successors).
fn lm_batch(a: &Args, stream: u64) -> Result<(Tensor, Tensor)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ stream.wrapping_mul(0x85eb_ca6b));
    let z = Zipf::new(a.vocab as u64, 1.05)?;
    let n = (a.lstm_batch * (a.bptt + 1)) as usize;
    let mut toks = Vec::with_capacity(n);
    let mut prev = z.sample(&mut rng) as i64 - 1;
    for _ in 0..n {
        let t = if rng.gen_bool(0.5) {
            (prev.wrapping_mul(31) + rng.gen_range(0..4)) % a.vocab
        } else {
            z.sample(&mut rng) as i64 - 1
        };
        toks.push(t);
        prev = t;
    }
    let t = Tensor::from_slice(&toks).view([a.lstm_batch, a.bptt + 1]);
    Ok((t.narrow(1, 0, a.bptt), t.narrow(1, 1, a.bptt)))
}

fn negatives(a: &Args, stream: u64) -> Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ stream ^ 0xfeed);
    let z = Zipf::new(a.vocab as u64, 1.0)?;
    let v: Vec<i64> = (0..a.negatives)
        .map(|_| z.sample(&mut rng) as i64 - 1)
        .collect();
    Ok(Tensor::from_slice(&v))
}

fn dump_lstm(a: &Args) -> Result<()> {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Lm::new(&vs.root(), a);
    let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
    for s in 0..a.steps {
        let (x, y) = lm_batch(a, 1000 + s as u64)?;
        opt.backward_step(&model.loss(&x, &y, &negatives(a, s as u64)?));
    }
    // The negatives are shared by all workers of a step (one seed per step), as a
    // data-parallel job would do to keep the output layer's union small.
    let neg = negatives(a, a.steps as u64)?;
    for w in 0..a.workers {
        opt.zero_grad();
        let (x, y) = lm_batch(a, w as u64)?;
        model.loss(&x, &y, &neg).backward();
        write(a, "lstm", w, &flat_grads(&vs)?)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    tch::set_num_threads(1);
    tch::manual_seed(a.seed as i64);
    for m in &a.models {
        match m.as_str() {
            "ncf" => dump_ncf(&a)?,
            "lstm" => dump_lstm(&a)?,
            other => anyhow::bail!("unknown model {other:?} (ncf, lstm)"),
        }
    }
    Ok(())
}
