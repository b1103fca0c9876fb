//! Errors of the worker agent.

use std::time::Duration;
use thiserror::Error;

/// Everything that can stop an aggregation or all-reduce. Every variant says what happened
/// and where; none is ever swallowed into a wrong result.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AgentError {
    /// A chunk got no result within the worker timeout.
    #[error("job {job}: slot {slot} round {round} (chunk {chunk}) got no result within {waited:?}: {detail}")]
    SlotTimeout {
        /// Job id.
        job: u16,
        /// Absolute slot index.
        slot: u32,
        /// Round this worker used on the slot.
        round: u32,
        /// Chunk index within the operation.
        chunk: u32,
        /// How long the chunk waited.
        waited: Duration,
        /// Ranks whose contribution the switch never saw, from its STATUS bitmap (`None` if no
        /// STATUS arrived or it could not be interpreted).
        missing: Option<Vec<u8>>,
        /// Human-readable diagnosis.
        detail: String,
    },
    /// Workers are out of step (different operation sequences or stream layouts).
    #[error("job {job}: slot {slot}: workers out of step: {detail}")]
    Desync {
        /// Job id.
        job: u16,
        /// Absolute slot index.
        slot: u32,
        /// What disagreed.
        detail: String,
    },
    /// Workers called with different shapes or parameters (detected at job/tensor start).
    #[error("job {job}: parameter mismatch across workers: {detail}")]
    Mismatch {
        /// Job id.
        job: u16,
        /// What differs.
        detail: String,
    },
    /// An operation is already running.
    #[error("an aggregation is already in flight")]
    Busy,
    /// Bad configuration (job spec, rank, sizes).
    #[error("configuration: {0}")]
    Config(String),
    /// The codec refused the input or the parameters (e.g. non-finite gradient values).
    #[error("codec: {0}")]
    Codec(String),
    /// Transport failure (socket, QUIC connection, control channel).
    #[error("transport: {0}")]
    Transport(String),
    /// The switch refused a control request.
    #[error("switch refused: {0}")]
    Refused(String),
    /// A watched descriptor outside the aggregation reported a failure (see
    /// [`crate::transport::Interrupt`]): e.g. another rank died during the operation.
    #[error("interrupted: {reason}")]
    Interrupted {
        /// Index of the descriptor in the interrupt's list.
        watch: usize,
        /// What the interrupt's check reported.
        reason: String,
    },
    /// The transport saw a rank's worker exit ([`crate::transport::InterruptEvent::Closed`]);
    /// the driver turns this into [`crate::Endpoint::peer_gone`], it never reaches callers.
    #[error("rank {rank} closed its connection")]
    PeerClosed {
        /// The rank.
        rank: u8,
    },
    /// A rank whose contribution an operation still needs has exited (its connections
    /// closed), so the operation cannot complete.
    #[error("job {job}: rank {rank} exited while this operation still needed its contribution ({detail})")]
    PeerGone {
        /// Job id.
        job: u16,
        /// The rank that exited.
        rank: u8,
        /// Where its contribution is missing.
        detail: String,
    },
    /// The switch answered a PROBE with a NACK: this job (at this epoch) is not registered
    /// there, so nothing sent under it can complete.
    #[error("job {job} (epoch {epoch:#010x}) is not registered on the switch: {detail}")]
    NotRegistered {
        /// Job id.
        job: u16,
        /// The epoch this worker used.
        epoch: u32,
        /// What the NACK said.
        detail: String,
    },
    /// No RDMA device is present (feature `rdma`).
    #[error("no RDMA device found (ibv_get_device_list returned 0 devices); load rxe or use --transport udp")]
    NoRdmaDevice,
}

impl AgentError {
    /// A short snake_case name for JSON reports.
    pub fn name(&self) -> &'static str {
        match self {
            AgentError::SlotTimeout { .. } => "worker_timeout",
            AgentError::Desync { .. } => "desync",
            AgentError::Mismatch { .. } => "mismatch",
            AgentError::Busy => "busy",
            AgentError::Config(_) => "config",
            AgentError::Codec(_) => "codec",
            AgentError::Transport(_) => "transport",
            AgentError::Refused(_) => "refused",
            AgentError::Interrupted { .. } => "interrupted",
            AgentError::PeerClosed { .. } => "peer_closed",
            AgentError::PeerGone { .. } => "peer_gone",
            AgentError::NotRegistered { .. } => "not_registered",
            AgentError::NoRdmaDevice => "no_rdma_device",
        }
    }
}

impl From<std::io::Error> for AgentError {
    fn from(e: std::io::Error) -> Self {
        AgentError::Transport(e.to_string())
    }
}
