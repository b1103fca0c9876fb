//! Messages on the switch's TCP control endpoint.
//!
//! Framing: each message is a 4-byte big-endian length followed by that many bytes of
//! `bincode` 2 (standard configuration) encoding a [`ControlRequest`] or [`ControlResponse`].

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use thiserror::Error;

use crate::job::JobSpec;

/// Largest control frame accepted, so a bad length prefix cannot make us allocate gigabytes.
pub const MAX_FRAME: usize = 1 << 20;

/// Why the switch dropped a packet. The P4 program has one counter index per reason, in this
/// order (`reason as u32`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter or longer than the header announces, or a bad version/kind/op/set.
    Malformed = 0,
    /// No job with that id.
    UnknownJob = 1,
    /// Token does not match the job's.
    BadToken = 2,
    /// Rank not below the job's worker count.
    BadRank = 3,
    /// Slot outside the job's range.
    BadSlot = 4,
    /// Lane count differs from the job's.
    BadLanes = 5,
    /// A RESULT or STATUS sent to the switch.
    BadKind = 6,
    /// Retransmission of a contribution the slot already holds, before completion.
    Duplicate = 7,
    /// A contribution to a round the slot set has finished with, or an older one.
    Stale = 8,
}

impl DropReason {
    /// All reasons in counter-index order.
    pub const ALL: [DropReason; 9] = [
        DropReason::Malformed,
        DropReason::UnknownJob,
        DropReason::BadToken,
        DropReason::BadRank,
        DropReason::BadSlot,
        DropReason::BadLanes,
        DropReason::BadKind,
        DropReason::Duplicate,
        DropReason::Stale,
    ];

    /// A snake_case name for logs, JSON and P4 comments.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownJob => "unknown_job",
            DropReason::BadToken => "bad_token",
            DropReason::BadRank => "bad_rank",
            DropReason::BadSlot => "bad_slot",
            DropReason::BadLanes => "bad_lanes",
            DropReason::BadKind => "bad_kind",
            DropReason::Duplicate => "duplicate",
            DropReason::Stale => "stale",
        }
    }
}

/// Per-job counters.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
pub struct JobCounters {
    /// DATA packets accepted into a slot.
    pub data_in: u64,
    /// Slot sets completed (each multicast once).
    pub completions: u64,
    /// RESULT datagrams sent by multicast (completions × workers).
    pub results_multicast: u64,
    /// RESULT datagrams unicast in answer to a retransmission after completion.
    pub results_unicast: u64,
    /// PROBE packets answered.
    pub probes: u64,
    /// Drops attributed to this job, indexed by `DropReason as usize`.
    pub drops: [u64; 9],
}

/// A snapshot of the switch's counters.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
pub struct Counters {
    /// Datagrams received.
    pub packets_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Drops not attributable to a registered job, indexed by `DropReason as usize`.
    pub drops: [u64; 9],
    /// Per registered job: (job id, counters).
    pub jobs: Vec<(u16, JobCounters)>,
}

/// A request to the control endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum ControlRequest {
    /// Describe the switch (ports, pool size).
    Info,
    /// Register a job (refused if its id exists with another spec or its slots overlap).
    /// Registering an identical spec again succeeds, so every worker may register.
    Register(JobSpec),
    /// Remove a job and free its slots.
    Unregister {
        /// Job id.
        job: u16,
    },
    /// Read the counters.
    Counters,
}

/// The switch's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum ControlResponse {
    /// Done.
    Ok,
    /// Answer to [`ControlRequest::Info`].
    Info {
        /// First UDP data port.
        data_port: u16,
        /// Number of consecutive data ports; slot `s` goes to `data_port + s % data_ports`.
        data_ports: u16,
        /// Slots in the pool.
        slots: u32,
    },
    /// Answer to [`ControlRequest::Counters`].
    Counters(Counters),
    /// The request was refused.
    Error(String),
}

/// Errors on the control channel.
#[derive(Debug, Error)]
pub enum ControlError {
    /// Socket error.
    #[error("control channel I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Frame larger than [`MAX_FRAME`].
    #[error("control frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Undecodable frame.
    #[error("bad control frame: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// Unencodable message (should not happen).
    #[error("cannot encode control message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// Writes one framed message.
pub fn write_frame<W: Write, M: bincode::Encode>(w: &mut W, msg: &M) -> Result<(), ControlError> {
    let body = bincode::encode_to_vec(msg, bincode::config::standard())?;
    if body.len() > MAX_FRAME {
        return Err(ControlError::TooLarge(body.len()));
    }
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()?;
    Ok(())
}

/// Reads one framed message.
pub fn read_frame<R: Read, M: bincode::Decode<()>>(r: &mut R) -> Result<M, ControlError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ControlError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let (msg, _) = bincode::decode_from_slice(&body, bincode::config::standard())?;
    Ok(msg)
}

/// Sends one request over a fresh TCP connection and returns the answer.
pub fn call(
    addr: std::net::SocketAddr,
    req: &ControlRequest,
    timeout: std::time::Duration,
) -> Result<ControlResponse, ControlError> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write_frame(&mut s, req)?;
    read_frame(&mut s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip() {
        let req = ControlRequest::Unregister { job: 3 };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let back: ControlRequest = read_frame(&mut &buf[..]).unwrap();
        assert_eq!(back, req);
        let resp = ControlResponse::Counters(Counters {
            packets_in: 5,
            jobs: vec![(3, JobCounters::default())],
            ..Default::default()
        });
        let mut buf = Vec::new();
        write_frame(&mut buf, &resp).unwrap();
        let back: ControlResponse = read_frame(&mut &buf[..]).unwrap();
        assert_eq!(back, resp);
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut buf = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
        buf.extend_from_slice(&[0; 8]);
        let r: Result<ControlRequest, _> = read_frame(&mut &buf[..]);
        assert!(matches!(r, Err(ControlError::TooLarge(_))));
    }

    #[test]
    fn reason_indices_are_dense() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
