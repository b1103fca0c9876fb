//! Worker side of sketchreduce: windowed, reliable aggregation through the switch.
//!
//! Layers, innermost first:
//! - [`aggregation::Aggregation`]: sans-I/O slot windowing, retransmission, timeouts (the
//!   "Worker rules" of `docs/wire.md`).
//! - [`innet::InnetCore`]: sans-I/O in-network all-reduce of an `f32` tensor with the
//!   homomorphic codec (exponent/shape agreement, pipelined index + sketch, decode, recovery).
//! - [`transport`]: UDP (batched), QUIC ([`quic`]), a loss injector, RDMA (feature `rdma`),
//!   and [`transport::drive`], the blocking loop.
//! - [`agent::Agent`]: the blocking API, `all_reduce(tensor_id, &[f32]) -> Reduced`.
//! - [`sim`]: a deterministic simulated network for tests.

pub mod agent;
pub mod aggregation;
pub mod error;
pub mod innet;
pub mod quic;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod sim;
pub mod transport;

use std::time::Instant;

pub use agent::{Agent, AgentConfig};
pub use aggregation::{AggConfig, AggState, AggStats, Aggregation, Stream, Transmit};
pub use error::AgentError;
pub use innet::{
    Agreed, InnetConfig, InnetCore, InnetStats, ModeChoice, PayloadMode, Phases, Reduced,
    DEFAULT_UNION_RANK_FROM,
};
pub use quic::{QuicConfig, QuicTransport};
pub use transport::{
    bind_udp, drive, drive_with, local_ip_towards, path_mtu_towards, Interrupt, InterruptEvent,
    Lossy, Transport, UdpTransport,
};

/// A sans-I/O protocol endpoint: what the transports (and the simulated network) drive.
pub trait Endpoint {
    /// Feeds one received datagram.
    fn handle_datagram(&mut self, now: Instant, datagram: &[u8]);
    /// The next datagram to send (processing expired timers first), written into `buf`.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit>;
    /// The next instant a timer fires, if any.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Rank `rank`'s worker exited (seen outside the data path, e.g. its TCP connection to a
    /// neighbour closed). Endpoints that need its contributions check whether they still do.
    fn peer_gone(&mut self, _now: Instant, _rank: u8) {}
}

impl Endpoint for Aggregation {
    fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        Aggregation::handle_datagram(self, now, datagram)
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Aggregation::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Aggregation::poll_timeout(self)
    }
    fn peer_gone(&mut self, now: Instant, rank: u8) {
        Aggregation::peer_gone(self, now, rank)
    }
}
