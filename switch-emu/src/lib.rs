//! Software switch emulating sketchreduce's P4 aggregation pipeline (`docs/wire.md`).
//!
//! - [`core`]: the sans-I/O state machine ([`SwitchCore`], one per shard; [`ShardedCore`]).
//! - [`server`]: the process: batched UDP data threads, the control endpoint (the shared
//!   `sketchreduce-control` plane over [`EmuBackend`]), QUIC endpoint ([`spawn_switch`] →
//!   [`SwitchHandle`]).
//! - [`mmsg`]: `recvmmsg`/`sendmmsg` batches, IPv4 options detection (`IP_RECVOPTS`).
//! - [`bench`]: synthetic windowed workers and the UDP echo baseline (`sketchreduce bench switch`).

pub mod bench;
pub mod core;
pub mod mmsg;
pub mod quic_server;
pub mod server;

pub use crate::core::{
    merge_counters, register_bytes, total_drops, CoreError, CoreStats, RegisterError, ShardedCore,
    SwitchCore, MAX_LANES, MAX_PACKET, MAX_REGISTER_BYTES,
};
pub use crate::server::{
    spawn_switch, EmuBackend, EmuPlane, QuicSettings, SwitchConfig, SwitchError, SwitchHandle,
};
