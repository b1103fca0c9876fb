//! `sketchreduce-fuzz <target|all> --iters N --seed S`: the long fuzz run (see the library's
//! documentation and docs/security.md). Exits 1 at the first input that breaks a property,
//! after writing it to `--artifacts` (hex, one file per failure).

use anyhow::{bail, Context};
use clap::Parser;
use sketchreduce_fuzz::{fuzz_with_progress, harness, hex, Report, TARGETS};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Structure-aware mutation fuzzing of sketchreduce's parsers and switch")]
struct Args {
    /// Target: packet, control, greeting, switch, or all.
    target: String,
    /// Inputs to run per target.
    #[arg(long, default_value_t = 10_000_000)]
    iters: u64,
    /// Random seed (runs are deterministic per seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for failing inputs.
    #[arg(long, default_value = "target/fuzz-artifacts")]
    artifacts: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let targets: Vec<&str> = if args.target == "all" {
        TARGETS.to_vec()
    } else if TARGETS.contains(&args.target.as_str()) {
        vec![args.target.as_str()]
    } else {
        bail!(
            "unknown target {:?} (one of {TARGETS:?} or all)",
            args.target
        );
    };
    // Property failures are reported below with their input; keep the default hook quiet.
    std::panic::set_hook(Box::new(|_| {}));
    for t in targets {
        let mut h = harness(t).context("target")?;
        let mut progress = |r: &Report| {
            eprintln!(
                "{t}: {} inputs, {:.0} s, {} outcomes",
                r.inputs,
                r.elapsed.as_secs_f64(),
                r.outcomes
            )
        };
        match fuzz_with_progress(h.as_mut(), args.iters, args.seed, &mut progress) {
            Ok(r) => println!(
                "{t}: {} inputs in {:.1} s ({:.0}/s), {} outcomes, corpus {}, no failure",
                r.inputs,
                r.elapsed.as_secs_f64(),
                r.inputs as f64 / r.elapsed.as_secs_f64().max(1e-9),
                r.outcomes,
                r.corpus
            ),
            Err(f) => {
                std::fs::create_dir_all(&args.artifacts)?;
                let path = args
                    .artifacts
                    .join(format!("{t}-seed{}-{}.hex", args.seed, f.after));
                std::fs::write(&path, hex(&f.input))?;
                eprintln!("{t}: FAILED {f}\nwritten to {}", path.display());
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
