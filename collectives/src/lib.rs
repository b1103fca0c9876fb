//! Drop-in all-reduce for data-parallel training: exact fixed-point sums through the switch
//! (`innet`), or over TCP between workers (`ring`, `allgather`), chosen per tensor (`auto`).
//!
//! ```no_run
//! use sketchreduce_collectives::{Communicator, Config, ReduceOp};
//! // RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT as with torch.distributed.
//! let comm = Communicator::new(Config::from_env()?)?;
//! let mut grad = vec![0.5f32; 1000];
//! comm.all_reduce(&mut grad, ReduceOp::Avg)?;
//! // Non-blocking: start, do other work, wait.
//! let pending = comm.start(vec![1.0f32; 1000], ReduceOp::Sum);
//! let (sum, info) = pending.wait()?;
//! # Ok::<(), sketchreduce_collectives::CollectiveError>(())
//! ```
//!
//! # Exactness (sums)
//! Every operation first agrees on the global max exponent and converts values with the same
//! [`sketchreduce_codec::FixedPoint`] for `world_size` workers; the integer sums are exact
//! (wrapping lanes) whatever the algorithm, and [`finish`] converts them back the same way.
//! Results are therefore bit-identical across `innet`, `ring` and `allgather`
//! ([`reference_all_reduce`] computes them in one process).
//!
//! # Collectives
//! [`Communicator::all_reduce`] (Sum, Avg, Min, Max), [`Communicator::reduce_scatter`],
//! [`Communicator::broadcast`] and [`Communicator::all_gather`] (raw bytes, exact for any
//! dtype), and their tensor forms with the `tch` feature, plus the DDP helper `DistributedDataParallel` (feature `tch`).
//!
//! # Failures
//! Every operation starts with a header exchange, so ranks that disagree (shapes, layouts,
//! collective), a non-finite input, or a rank whose input is invalid make *every* rank fail
//! at the same operation with an error naming the rank ([`CollectiveError::Mismatch`],
//! [`CollectiveError::LayoutMismatch`], [`CollectiveError::NonFinite`],
//! [`CollectiveError::Refused`]); the communicator stays usable after those. A rank that dies
//! makes the others fail with [`CollectiveError::PeerLost`] (connection closed) or
//! [`CollectiveError::PeerTimeout`] (after [`Config::timeout`], 30 min by default); a rank
//! started with a different job configuration is refused at the rendezvous with
//! [`CollectiveError::ConfigMismatch`]. After those the communicator is poisoned.

mod buf;
mod comm;
mod config;
pub mod cost;
#[cfg(feature = "tch")]
mod ddp;
mod error;
pub mod greeting;
pub mod innet;
mod lanes;
mod meta;
mod net;
mod ops;
mod reduce;
mod rendezvous;
mod sparse;
#[cfg(feature = "tch")]
pub mod tensor;

pub use buf::DenseBuf;
pub use comm::{Communicator, Pending, Stats};
pub use config::{
    auto_crossover, parse_timeout_secs, Algo, CodecPolicy, Config, InnetMode, Precision, Transport,
    AUTO_CROSSOVER, AUTO_CROSSOVER_ROWS, AUTO_ROW_BLOCK, DEFAULT_RENDEZVOUS_TIMEOUT,
    DEFAULT_TIMEOUT, MAX_TIMEOUT, MAX_WORLD_SIZE,
};
#[cfg(feature = "tch")]
pub use ddp::{broadcast_variables, DdpReport, DistributedDataParallel, DEFAULT_BUCKET_BYTES};
pub use error::{CollectiveError, Result};
pub use lanes::chunk_range;
pub use reduce::{
    agreed_fixed_point, finish, fixed_point_for, median_exponent, reference_all_reduce,
    reference_all_reduce_with, Collective, OpInfo, OpPhases, Payload, ReduceOp, AUTO_TYPICAL_BITS,
};
pub use rendezvous::{GREETING_DEADLINE, MAX_PENDING};
pub use sketchreduce_codec::LaneWidth;
pub use sketchreduce_control::Secret;
pub use sparse::SparseVec;
#[cfg(feature = "tch")]
pub use tensor::{tensor_bytes, PendingTensor};
