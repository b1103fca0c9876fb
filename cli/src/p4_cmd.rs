//! `sketchreduce p4 …`: generation of the P4 program's generated part and of the bmv2
//! (`simple_switch_CLI`) configuration for a job file. See `p4/README.md`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sketchreduce_p4gen::{
    generate_config, generate_headers, ConfigOptions, DEFAULT_LANES, GENERATED_FILE, POOL_SLOTS,
};
use sketchreduce_wire::{JobFile, LANE_CHOICES};

/// P4 subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum P4Command {
    /// Regenerate the generated part of the P4 program (`sketchreduce_gen.p4`).
    Gen {
        /// Lanes per packet the program is compiled for (32, 64, 128 or 256). Packets with
        /// another lane count are dropped as `bad_lanes`. The committed file uses 64.
        #[arg(long, default_value_t = DEFAULT_LANES)]
        lanes: u16,
        /// Directory to write `sketchreduce_gen.p4` into (default: the repository's `p4/`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the simple_switch_CLI commands configuring a fresh bmv2 switch for a job file.
    Config {
        /// Job file (the same JSON switch-emu reads; every worker needs `mac` and `port`).
        #[arg(long)]
        jobs: PathBuf,
        /// Lanes per packet the loaded program was generated for.
        #[arg(long, default_value_t = DEFAULT_LANES)]
        lanes: u16,
    },
}

/// Runs the subcommand.
pub fn run(cmd: P4Command) -> anyhow::Result<()> {
    match cmd {
        P4Command::Gen { lanes, out } => gen(lanes, out),
        P4Command::Config { jobs, lanes } => config(&jobs, lanes),
    }
}

fn check_lanes(lanes: u16) -> anyhow::Result<()> {
    if !LANE_CHOICES.contains(&lanes) {
        bail!("--lanes {lanes}: the P4 program supports {LANE_CHOICES:?}");
    }
    Ok(())
}

/// `p4/` of the current directory if it holds the program, else the repository's `p4/` as
/// seen when this binary was built.
fn default_p4_dir() -> anyhow::Result<PathBuf> {
    let local = PathBuf::from("p4");
    if local.join(sketchreduce_p4gen::PROGRAM_FILE).is_file() {
        return Ok(local);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("p4");
    if repo.join(sketchreduce_p4gen::PROGRAM_FILE).is_file() {
        return Ok(repo);
    }
    bail!("cannot find the p4/ directory (run from the repository root or pass --out DIR)")
}

fn gen(lanes: u16, out: Option<PathBuf>) -> anyhow::Result<()> {
    check_lanes(lanes)?;
    let dir = match out {
        Some(d) => d,
        None => default_p4_dir()?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(GENERATED_FILE);
    let text = generate_headers(lanes);
    let unchanged = std::fs::read_to_string(&path).is_ok_and(|old| old == text);
    if !unchanged {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "{} {} ({lanes} lanes)",
        if unchanged { "unchanged" } else { "wrote" },
        path.display()
    );
    if lanes != DEFAULT_LANES {
        eprintln!(
            "note: the committed p4/{GENERATED_FILE} is generated for {DEFAULT_LANES} lanes; \
             pass --lanes {lanes} to `sketchreduce p4 config` as well"
        );
    }
    Ok(())
}

fn config(jobs: &Path, lanes: u16) -> anyhow::Result<()> {
    check_lanes(lanes)?;
    let file = JobFile::load(jobs)?;
    let text = generate_config(
        &file,
        &ConfigOptions {
            lanes,
            pool_slots: POOL_SLOTS,
        },
    )
    .with_context(|| format!("job file {}", jobs.display()))?;
    print!("{text}");
    Ok(())
}
