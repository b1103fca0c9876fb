//! sketchreduce's control plane, shared by the software switch (`switch-emu`) and the P4
//! switch's control program: control protocol v2 (`docs/wire.md`, "Control protocol") with
//! HMAC-SHA256 authentication, the job registry with epochs and leases, and a client.
//!
//! - [`auth`]: the shared [`Secret`], MACs, nonces, epochs (CSPRNG).
//! - [`session`]: sans-I/O [`ServerSession`] / [`ClientSession`]: frame bodies in, frame bodies
//!   out.
//! - [`plane`]: [`ControlPlane`] (registry, limits, leases, dispatch) over a [`Backend`], the
//!   small trait a data plane implements.
//! - [`server`]: the TCP endpoint (bounded connection threads, deadlines, lease sweeper).
//! - [`client`]: a blocking TCP [`Client`].
//!
//! The message types and protocol constants are in `sketchreduce_wire::control`.

pub mod auth;
pub mod client;
pub mod plane;
pub mod server;
pub mod session;

pub use auth::{Secret, SecretError};
pub use client::{Client, ClientError};
pub use plane::{
    Backend, BackendError, BackendInfo, ControlPlane, Origin, PlaneConfig, PlaneError,
};
pub use server::{check_bind, ConnLimit, ServerConfig, TcpServer};
pub use session::{ClientSession, Reply, ServerSession, SessionError};
