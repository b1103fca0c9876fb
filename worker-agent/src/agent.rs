//! The blocking, connected agent: an [`InnetCore`] driven over a [`Transport`].
//!
//! ```no_run
//! # use sketchreduce_agent::*;
//! # fn main() -> Result<(), AgentError> {
//! # let job: sketchreduce_wire::JobSpec = unimplemented!();
//! let sock = transport::bind_udp("127.0.0.1:0".parse().unwrap())?;
//! // ... put sock.local_addr() into the job spec as this rank's address ...
//! let control = "127.0.0.1:39440".parse().unwrap();
//! let t = transport::UdpTransport::new(sock, control)?;
//! let mut agent = Agent::new(t, &job, 0, AgentConfig::default())?;
//! let grad = vec![0.0f32; 1000];
//! let reduced = agent.all_reduce(7, &grad)?; // exact sums on every worker
//! let dense: Vec<f32> = reduced.dense();
//! # Ok(()) }
//! ```

use std::time::Duration;

use sketchreduce_wire::control::{Request, Response, DEFAULT_LEASE_MS};
use sketchreduce_wire::{ErrorKind, JobSpec};

use crate::aggregation::AggConfig;
use crate::error::AgentError;
use crate::innet::{Agreed, InnetConfig, InnetCore, InnetStats, Reduced};
use crate::transport::{drive_with, Transport};

/// Everything an [`Agent`] needs besides the transport and the job.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Window and timers.
    pub agg: AggConfig,
    /// Codec settings (identical on every worker; checked at every all-reduce).
    pub innet: InnetConfig,
    /// Create the job at the switch on construction, or join it if another worker created it
    /// (the spec must then match, epoch aside); the switch's epoch is used either way. Without
    /// it, the spec's epoch is used as given.
    pub register: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            agg: AggConfig::default(),
            innet: InnetConfig::default(),
            register: true,
        }
    }
}

/// A worker connected to the switch for one job.
pub struct Agent<T: Transport> {
    core: InnetCore,
    transport: T,
    job: JobSpec,
    rank: u8,
}

impl<T: Transport> std::fmt::Debug for Agent<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("job", &self.job.id)
            .field("rank", &self.rank)
            .field("transport", &self.transport.name())
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Agent<T> {
    /// Connects worker `rank` of `job` over `transport` (creating or joining the job if
    /// asked). The job spec must name `transport.local_addr()` as this rank's address.
    pub fn new(
        mut transport: T,
        job: &JobSpec,
        rank: u8,
        cfg: AgentConfig,
    ) -> Result<Self, AgentError> {
        // Checks the spec before anything is registered.
        InnetCore::new(job, rank, cfg.agg, cfg.innet.clone())?;
        if let Some(w) = job.workers.get(rank as usize) {
            let local = transport.local_addr();
            if w.addr != local {
                tracing::warn!(spec = %w.addr, %local, rank, "job spec names another address for this rank; the switch drops its packets as bad_source");
            }
        }
        let job = if cfg.register {
            create_or_join(&mut transport, job)?
        } else {
            job.clone()
        };
        let core = InnetCore::new(&job, rank, cfg.agg, cfg.innet)?;
        Ok(Agent {
            core,
            transport,
            job,
            rank,
        })
    }

    /// All-reduces `values` (same `tensor_id` and length on every worker of the job) through
    /// the switch and returns the exact sum. Blocks; never longer than the configured worker
    /// timeout per stalled chunk.
    pub fn all_reduce(&mut self, tensor_id: u64, values: &[f32]) -> Result<Reduced, AgentError> {
        self.core.start(tensor_id, values)?;
        self.run()
    }

    /// [`Self::all_reduce`] of a sparse tensor of length `dim` (increasing positions).
    pub fn all_reduce_sparse(
        &mut self,
        tensor_id: u64,
        dim: usize,
        indices: &[u32],
        values: &[f32],
    ) -> Result<Reduced, AgentError> {
        self.core.start_sparse(tensor_id, dim, indices, values)?;
        self.run()
    }

    /// [`Self::all_reduce_sparse`] with parameters every worker already agreed on (see
    /// [`InnetCore::start_agreed`]): no agreement round through the switch.
    pub fn all_reduce_agreed(
        &mut self,
        tensor_id: u64,
        dim: usize,
        indices: &[u32],
        values: &[f32],
        agreed: Agreed,
    ) -> Result<Reduced, AgentError> {
        self.core
            .start_agreed(tensor_id, dim, indices, values, agreed)?;
        self.run()
    }

    /// [`Self::all_reduce_agreed`] of a dense tensor (see [`InnetCore::start_agreed_dense`]).
    pub fn all_reduce_agreed_dense(
        &mut self,
        tensor_id: u64,
        values: &[f32],
        agreed: Agreed,
    ) -> Result<Reduced, AgentError> {
        // Dense lanes are quantized chunk by chunk as the window advances, overlapping the
        // conversion with the transfer.
        self.core
            .start_agreed_dense_lazy(tensor_id, values, agreed)?;
        self.run_with(|c| c.fill_dense(values))
    }

    /// Gives a dense result's lane buffer back for reuse by the next operation.
    pub fn recycle(&mut self, r: Reduced) {
        self.core.recycle(r.lanes);
    }

    /// Sends one PROBE that renews the job's lease on the switch (call it while idle more
    /// often than the lease; the reply is ignored). Does nothing during an operation.
    pub fn keepalive(&mut self) -> Result<(), AgentError> {
        let mut buf = [0u8; sketchreduce_wire::packet::HEADER_LEN];
        if let Some(t) = self.core.keepalive_probe(&mut buf) {
            self.transport.send(t.slot, &buf[..t.len])?;
            self.transport.flush()?;
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Reduced, AgentError> {
        self.run_with(|_| {})
    }

    fn run_with(&mut self, prepare: impl FnMut(&mut InnetCore)) -> Result<Reduced, AgentError> {
        self.transport.rearm_interrupt();
        let mut result = self.core.poll_complete();
        if result.is_none() {
            drive_with(
                &mut self.core,
                &mut self.transport,
                Duration::from_secs(5),
                |c| {
                    if let Some(r) = c.poll_complete() {
                        result = Some(r);
                    }
                    result.is_some()
                },
                prepare,
            )?;
        }
        result.unwrap_or_else(|| Err(AgentError::Transport("driver stopped early".into())))
    }

    /// Counters.
    pub fn stats(&self) -> InnetStats {
        self.core.stats()
    }

    /// The job.
    pub fn job(&self) -> &JobSpec {
        &self.job
    }

    /// This worker's rank.
    pub fn rank(&self) -> u8 {
        self.rank
    }

    /// The transport (e.g. for its counters).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (e.g. to query the switch's counters).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }
}

/// Creates `job` at the switch (lease [`DEFAULT_LEASE_MS`]) or, if it exists, joins it and
/// checks that the registered spec is `job` (epoch aside; a nonzero epoch in `job` must match
/// too). Returns the spec with the switch's epoch.
fn create_or_join<T: Transport + ?Sized>(t: &mut T, job: &JobSpec) -> Result<JobSpec, AgentError> {
    let refused = |what: &str, kind: ErrorKind, message: String| {
        AgentError::Refused(format!("{what} job {}: {kind}: {message}", job.id))
    };
    let req = Request::Create {
        spec: job.clone(),
        replace: false,
        lease_ms: DEFAULT_LEASE_MS,
    };
    match t.control(&req)? {
        Response::Created { epoch } => {
            let mut j = job.clone();
            j.epoch = epoch;
            Ok(j)
        }
        Response::Error {
            kind: ErrorKind::Exists,
            ..
        } => match t.control(&Request::Join { job: job.id })? {
            Response::Joined(have) => {
                let mut want = job.clone();
                want.epoch = have.epoch;
                if want != have || (job.epoch != 0 && job.epoch != have.epoch) {
                    return Err(AgentError::Refused(format!(
                        "job {} is registered on the switch with another spec: {have:?}",
                        job.id
                    )));
                }
                Ok(have)
            }
            Response::Error { kind, message } => Err(refused("join", kind, message)),
            other => Err(AgentError::Refused(format!(
                "unexpected answer to join: {other:?}"
            ))),
        },
        Response::Error { kind, message } => Err(refused("create", kind, message)),
        other => Err(AgentError::Refused(format!(
            "unexpected answer to create: {other:?}"
        ))),
    }
}
