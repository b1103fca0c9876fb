//! Errors of the collectives. Every failure that involves another process names the rank(s)
//! concerned and what was being waited for, so a stuck job never fails silently.

use std::time::Duration;
use thiserror::Error;

/// Result alias of this crate.
pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;

/// Why a collective operation failed.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CollectiveError {
    /// A configuration value is invalid or missing (bad env var, rank ≥ world size, …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Rank 0 refused this job's configuration, or saw a peer whose config differs.
    #[error("configuration mismatch: {0}")]
    ConfigMismatch(String),
    /// A greeting of the rendezvous or of a ring link was not authenticated (a missing or
    /// different job secret, a replayed greeting), or a peer's secret setting differs.
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
    /// Not every rank showed up at the rendezvous in time.
    #[error("rendezvous at {master} timed out after {timeout:?}: {detail}")]
    RendezvousTimeout {
        /// `MASTER_ADDR:MASTER_PORT`.
        master: String,
        /// The rendezvous timeout.
        timeout: Duration,
        /// Which ranks are missing, or what could not be reached.
        detail: String,
    },
    /// A peer sent nothing within the timeout (dead, stalled or partitioned).
    #[error("rank {rank}: no data from rank {peer} within {timeout:?} during {during} (dead or stalled peer?)")]
    PeerTimeout {
        /// This rank.
        rank: usize,
        /// The peer that did not answer.
        peer: usize,
        /// The per-operation timeout.
        timeout: Duration,
        /// The operation (e.g. "ring reduce-scatter step 2").
        during: String,
    },
    /// A peer closed its connection or the connection broke.
    #[error("rank {rank}: connection to rank {peer} lost during {during}: {reason}")]
    PeerLost {
        /// This rank.
        rank: usize,
        /// The peer whose connection broke.
        peer: usize,
        /// The operation.
        during: String,
        /// The I/O error.
        reason: String,
    },
    /// Another rank failed and told this one why before closing its connections.
    #[error("rank {rank}: rank {peer} aborted the operation: {reason}")]
    Aborted {
        /// This rank.
        rank: usize,
        /// The rank that sent the abort (the upstream neighbour).
        peer: usize,
        /// Its error (which may itself be a forwarded abort naming the first failure).
        reason: String,
    },
    /// The ranks disagree about an operation (different tensor lengths, or one rank's
    /// input is not finite). Every rank gets this error, not just the faulty one.
    #[error("ranks disagree: {0}")]
    Mismatch(String),
    /// Some rank's input holds NaN or ±Inf. Every rank gets this error and the communicator
    /// stays usable (nothing was exchanged but the headers).
    #[error("rank {rank}'s input has a non-finite value (NaN or ±Inf) at element {position}")]
    NonFinite {
        /// The rank with the bad value.
        rank: usize,
        /// Element index in the dense form of its input (for a sparse vector of blocks:
        /// `block index · block + offset`).
        position: u64,
    },
    /// [`CollectiveError::NonFinite`] inside a data-parallel gradient bucket, located: the
    /// parameter and the element of its gradient. The communicator stays usable.
    #[error("rank {rank}'s gradient of `{param}` is not finite (NaN or ±Inf) at index {index:?}")]
    NonFiniteGradient {
        /// The rank with the bad value.
        rank: usize,
        /// The parameter's name in the `VarStore`.
        param: String,
        /// The element's coordinates in the gradient (row-major shape of the parameter).
        index: Vec<i64>,
    },
    /// The ranks' layouts differ (DDP parameters: names, shapes, dtypes; a tensor's shape and
    /// dtype): every rank gets this error, naming the first rank that differs from rank 0.
    /// The communicator stays usable.
    #[error("rank {rank}'s layout differs from rank 0's: {detail}")]
    LayoutMismatch {
        /// The first rank whose layout differs from rank 0's.
        rank: usize,
        /// What differs.
        detail: String,
    },
    /// A rank could not take part in an operation (its input is invalid) and said so in the
    /// header exchange: every rank gets this error and the communicator stays usable.
    #[error("rank {rank} cannot take part in the operation: {reason}")]
    Refused {
        /// The rank that refused.
        rank: usize,
        /// Its reason.
        reason: String,
    },
    /// Input that cannot be reduced (NaN/Inf, index out of range, unsorted indices, …).
    #[error("invalid input: {0}")]
    Input(String),
    /// The fixed-point codec refused the operation.
    #[error("codec: {0}")]
    Codec(String),
    /// The in-network path (worker agent / switch) failed.
    #[error("in-network all-reduce: {0}")]
    Innet(String),
    /// A previous error left the connections in an unknown state; create a new communicator.
    #[error("communicator is unusable after an earlier error: {0}")]
    Poisoned(String),
    /// The communicator's background thread is gone.
    #[error("communicator was shut down")]
    Closed,
    /// Local I/O problem (binding a port, …).
    #[error("I/O: {0}")]
    Io(String),
    /// tch/libtorch error (feature `tch`).
    #[error("tch: {0}")]
    Tch(String),
}

impl From<sketchreduce_codec::CodecError> for CollectiveError {
    fn from(e: sketchreduce_codec::CodecError) -> Self {
        CollectiveError::Codec(e.to_string())
    }
}
