//! Where each gradient all-reduce's time went: a `tracing` layer that records the per-phase
//! times the collectives library emits for every all-reduce (the debug event "all-reduce
//! phases": agree, scan, encode, aggregate, decode, recovery, convert), so a training example
//! can account for its communication time per operation without the library exposing
//! [`OpInfo`](sketchreduce_collectives::OpInfo) through the DDP helper.
//!
//! [`install`] sets the global subscriber of a rank process: this layer (only the
//! collectives' debug events pass its filter, so the rest of the stack stays silent and
//! cheap), plus a stderr formatter when `RUST_LOG` is set.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The phases of one all-reduce, in the order the library reports them.
pub const PHASES: [&str; 7] = [
    "agree",
    "scan",
    "encode",
    "aggregate",
    "decode",
    "recovery",
    "convert",
];

/// Target and message of the library's per-operation event.
const TARGET: &str = "sketchreduce_collectives";
const MESSAGE: &str = "all-reduce phases";

/// One all-reduce as the library reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpPhases {
    /// The algorithm that ran (resolved from auto).
    pub algo: String,
    /// Microseconds per phase, indexed like [`PHASES`].
    pub us: [u64; 7],
}

/// The all-reduces recorded so far, in completion order (one communicator thread runs them
/// one after the other).
#[derive(Clone, Default)]
pub struct PhaseLog(Arc<Mutex<Vec<OpPhases>>>);

impl PhaseLog {
    /// Number of operations recorded.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The operations recorded from index `from` on.
    pub fn since(&self, from: usize) -> Vec<OpPhases> {
        let v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        v.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }
}

/// Collects the fields of one event.
#[derive(Default)]
struct Fields {
    is_phases: bool,
    op: OpPhases,
}

impl Visit for Fields {
    fn record_u64(&mut self, f: &Field, v: u64) {
        if let Some(name) = f.name().strip_suffix("_us") {
            if let Some(k) = PHASES.iter().position(|p| *p == name) {
                self.op.us[k] = v;
            }
        }
    }

    fn record_i64(&mut self, f: &Field, v: i64) {
        self.record_u64(f, v.max(0) as u64);
    }

    fn record_str(&mut self, f: &Field, v: &str) {
        match f.name() {
            "algo" => self.op.algo = v.to_string(),
            "message" => self.is_phases = v == MESSAGE,
            _ => {}
        }
    }

    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            self.is_phases = format!("{v:?}") == MESSAGE;
        }
    }
}

struct PhaseLayer(PhaseLog);

impl<S: tracing::Subscriber> Layer<S> for PhaseLayer {
    fn on_event(&self, e: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        e.record(&mut f);
        if f.is_phases {
            self.0
                 .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(f.op);
        }
    }
}

static GLOBAL: std::sync::OnceLock<PhaseLog> = std::sync::OnceLock::new();

/// The log [`install`] fills, if it was called and its subscriber became the global one.
pub fn global() -> Option<&'static PhaseLog> {
    GLOBAL.get()
}

/// Installs the global subscriber of this process (see the module docs); [`global`] then
/// returns the log it fills. Does nothing when a global subscriber is already set.
pub fn install() {
    let log = PhaseLog::default();
    let phases = PhaseLayer(log.clone()).with_filter(
        tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::DEBUG),
    );
    let fmt = std::env::var_os("RUST_LOG").map(|_| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(tracing_subscriber::EnvFilter::from_default_env())
    });
    if tracing_subscriber::registry()
        .with(phases)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = GLOBAL.set(log);
    }
}

/// Mean milliseconds per iteration of each gradient operation of a training step (the k-th
/// operation of every `sync_gradients`), per phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OpBreakdown {
    /// Algorithms the k-th operation resolved to (auto may change its mind), `/`-joined.
    pub algo: String,
    /// Mean ms per phase, indexed like [`PHASES`].
    pub ms: [f64; 7],
}

/// Accumulates, per operation index within a step, the phase times of every step.
#[derive(Debug, Default)]
pub struct StepPhases {
    ops: Vec<([u64; 7], Vec<String>)>,
    steps: usize,
}

impl StepPhases {
    /// Adds the operations of one step, in order.
    pub fn add(&mut self, ops: &[OpPhases]) {
        if self.ops.len() < ops.len() {
            self.ops.resize_with(ops.len(), Default::default);
        }
        for (acc, op) in self.ops.iter_mut().zip(ops) {
            for (a, u) in acc.0.iter_mut().zip(op.us) {
                *a += u;
            }
            if !acc.1.contains(&op.algo) {
                acc.1.push(op.algo.clone());
            }
        }
        self.steps += 1;
    }

    /// Mean per step of each operation.
    pub fn breakdown(&self) -> Vec<OpBreakdown> {
        let n = self.steps.max(1) as f64;
        self.ops
            .iter()
            .map(|(us, algos)| OpBreakdown {
                algo: algos.join("/"),
                ms: us.map(|u| u as f64 / 1e3 / n),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_phases_average_per_operation_index() {
        let op = |algo: &str, agree: u64, aggregate: u64| OpPhases {
            algo: algo.into(),
            us: [agree, 0, 0, aggregate, 0, 0, 0],
        };
        let mut s = StepPhases::default();
        s.add(&[op("innet", 1000, 3000), op("ring", 0, 500)]);
        s.add(&[op("allgather", 3000, 1000), op("ring", 0, 1500)]);
        let b = s.breakdown();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].algo, "innet/allgather");
        assert_eq!(b[0].ms[0], 2.0);
        assert_eq!(b[0].ms[3], 2.0);
        assert_eq!(b[1].algo, "ring");
        assert_eq!(b[1].ms[3], 1.0);
    }

    #[test]
    fn the_layer_records_the_library_event_and_nothing_else() {
        let log = PhaseLog::default();
        let layer = PhaseLayer(log.clone()).with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::DEBUG),
        );
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(sub, || {
            tracing::debug!(target: "sketchreduce_collectives::reduce", algo = "innet",
                agree_us = 5u64, aggregate_us = 7u64, "all-reduce phases");
            tracing::debug!(target: "sketchreduce_collectives::reduce", algo = "ring", "something else");
            tracing::debug!(target: "other_crate", algo = "ring", agree_us = 1u64, "all-reduce phases");
        });
        let ops = log.since(0);
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert_eq!(ops[0].algo, "innet");
        assert_eq!(ops[0].us[0], 5);
        assert_eq!(ops[0].us[3], 7);
    }
}
