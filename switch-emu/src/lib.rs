//! Software switch emulating sketchreduce's P4 aggregation pipeline (`docs/wire.md`).
//!
//! - [`core`]: the sans-I/O state machine ([`SwitchCore`], one per shard; [`ShardedCore`]).
//! - [`server`]: the process: batched UDP data threads, TCP control, QUIC endpoint
//!   ([`spawn_switch`] → [`SwitchHandle`]).
//! - [`mmsg`]: `recvmmsg`/`sendmmsg` batches.
//! - [`bench`]: synthetic windowed workers and the UDP echo baseline (`sketchreduce bench switch`).

pub mod bench;
pub mod core;
pub mod mmsg;
pub mod quic_server;
pub mod server;

pub use crate::core::{
    merge_counters, total_drops, CoreStats, RegisterError, Registered, ShardedCore, SwitchCore,
    MAX_LANES, MAX_PACKET,
};
pub use crate::server::{spawn_switch, QuicSettings, SwitchConfig, SwitchError, SwitchHandle};
