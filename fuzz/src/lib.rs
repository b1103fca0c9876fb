//! Structure-aware mutation fuzzing of everything sketchreduce parses from the outside, and of
//! the switch's state machine, on stable Rust (no cargo-fuzz, no sanitizer runtime).
//!
//! Each [`Harness`] turns a byte string into calls of a public API and asserts properties that
//! must hold for *every* input (beyond "does not panic"): a parser agrees with an independent
//! statement of the format, a greeting or control frame that passes authentication is one that
//! was really sealed with the secret, the switch matches a reference model and keeps its
//! invariants. The [`fuzz`] loop mutates a corpus that starts from valid inputs and keeps the
//! inputs that produce an outcome not seen before (a cheap stand-in for coverage feedback).
//!
//! The same harnesses run in two ways: `cargo run --release -p sketchreduce-fuzz -- all
//! --iters 10000000` (the long run, see `docs/security.md`), and for a few seconds each from
//! `cargo test -p sketchreduce-fuzz` (CI).

pub mod control;
pub mod greeting;
pub mod mutate;
pub mod packet;
pub mod switch;

use mutate::{Mutator, Rng};
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// One fuzz target.
pub trait Harness {
    /// Valid (or interesting) inputs the corpus starts from.
    fn seeds(&mut self) -> Vec<Vec<u8>>;
    /// Byte strings worth inserting into inputs (keywords, separators, magic numbers).
    fn dictionary(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// Longest input worth generating.
    fn max_len(&self) -> usize {
        4096
    }
    /// Runs one input, panicking when a property fails. Returns a signature of what the input
    /// did (which branch, which error): inputs with a new signature join the corpus.
    fn run(&mut self, input: &[u8]) -> u64;
}

/// The targets, by name.
pub const TARGETS: [&str; 4] = ["packet", "control", "greeting", "switch"];

/// A fresh harness for target `name`.
pub fn harness(name: &str) -> Option<Box<dyn Harness>> {
    Some(match name {
        "packet" => Box::new(packet::PacketHarness),
        "control" => Box::new(control::ControlHarness::new()),
        "greeting" => Box::new(greeting::GreetingHarness::new()),
        "switch" => Box::new(switch::SwitchHarness),
        _ => return None,
    })
}

/// What a fuzz run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Inputs run (seeds included).
    pub inputs: u64,
    /// Corpus size at the end.
    pub corpus: usize,
    /// Distinct outcome signatures seen.
    pub outcomes: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// An input that broke a property.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The input.
    pub input: Vec<u8>,
    /// The panic message.
    pub message: String,
    /// Inputs run before it.
    pub after: u64,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "after {} inputs: {}\ninput ({} bytes): {}",
            self.after,
            self.message,
            self.input.len(),
            hex(&self.input)
        )
    }
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Most inputs kept in the corpus.
const MAX_CORPUS: usize = 8192;

fn run_one(h: &mut dyn Harness, input: &[u8], after: u64) -> Result<u64, Failure> {
    catch_unwind(AssertUnwindSafe(|| h.run(input))).map_err(|p| Failure {
        input: input.to_vec(),
        message: p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into()),
        after,
    })
}

/// Runs `iters` inputs through `h`: its seeds, then mutations of the corpus (deterministic
/// for a given `seed`). Stops at the first input that breaks a property.
pub fn fuzz(h: &mut dyn Harness, iters: u64, seed: u64) -> Result<Report, Failure> {
    fuzz_with_progress(h, iters, seed, &mut |_| {})
}

/// Inputs between two calls of a progress callback.
pub const PROGRESS_EVERY: u64 = 1 << 20;

/// [`fuzz`], calling `progress` every [`PROGRESS_EVERY`] inputs.
pub fn fuzz_with_progress(
    h: &mut dyn Harness,
    iters: u64,
    seed: u64,
    progress: &mut dyn FnMut(&Report),
) -> Result<Report, Failure> {
    let t0 = Instant::now();
    let mut rng = Rng::new(seed);
    let mutator = Mutator::new(h.dictionary(), h.max_len());
    let mut corpus: Vec<Vec<u8>> = h.seeds();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut seen = HashSet::new();
    let mut n = 0u64;
    for s in corpus.clone() {
        seen.insert(run_one(h, &s, n)?);
        n += 1;
    }
    let mut input = Vec::new();
    while n < iters {
        let base = &corpus[rng.below(corpus.len())];
        input.clear();
        input.extend_from_slice(base);
        let other = &corpus[rng.below(corpus.len())];
        mutator.mutate(&mut rng, &mut input, other);
        let sig = run_one(h, &input, n)?;
        n += 1;
        if n.is_multiple_of(PROGRESS_EVERY) {
            progress(&Report {
                inputs: n,
                corpus: corpus.len(),
                outcomes: seen.len(),
                elapsed: t0.elapsed(),
            });
        }
        if seen.insert(sig) {
            if corpus.len() < MAX_CORPUS {
                corpus.push(input.clone());
            } else {
                let i = rng.below(corpus.len());
                corpus[i] = input.clone();
            }
        }
    }
    Ok(Report {
        inputs: n,
        corpus: corpus.len(),
        outcomes: seen.len(),
        elapsed: t0.elapsed(),
    })
}

/// Mixes `v` into the signature `h` (FNV-1a style).
pub fn sig(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x0100_0000_01b3)
}

/// A signature of an enum value's variant (the name its `Debug` form starts with).
pub fn variant(v: &dyn std::fmt::Debug) -> u64 {
    format!("{v:?}")
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
        .fold(0xcbf2_9ce4_8422_2325, |h, c| sig(h, c as u64))
}
