//! The in-network path: the integer sum is computed by the switch, through the worker agent.
//!
//! The communicator hands the agent the *already agreed* [`FixedPoint`] (global exponent over
//! all ranks, world size, 32-bit lanes), so the integers the switch adds are exactly those the
//! ring and the all-gather add, and [`crate::finish`] makes identical floats of them.

use crate::error::Result;
use sketchreduce_codec::FixedPoint;

/// Something that sums fixed-point integers over all ranks through the switch.
pub trait InnetPath: Send {
    /// `tensor_id` is the operation number (the same on every rank).
    /// Quantizes `values` with `fp` (as [`FixedPoint::to_fixed`]), sums them over every rank
    /// of the job through the switch, and writes the exact (sign-extended) integer sums to
    /// `sums` (resized to `values.len()`). Blocking; fails within the configured timeout.
    fn all_reduce(
        &mut self,
        tensor_id: u64,
        fp: &FixedPoint,
        values: &[f32],
        sums: &mut Vec<i64>,
    ) -> Result<()>;

    /// Cumulative (bytes sent, bytes received) of this path (received: 0 when unknown).
    fn bytes(&self) -> (u64, u64);
}

use crate::config::{Config, Transport};
use crate::error::CollectiveError;
use crate::net::Ring;
use sketchreduce_agent::{transport, Agent, AgentConfig, AggConfig, UdpTransport};
use sketchreduce_wire::{JobSpec, WorkerSpec};

/// Slots each job takes in the switch pool; job `id` uses slots
/// `((id − 1) mod 32) · JOB_SLOTS ..` so up to 32 jobs share the default 4,096-slot pool.
pub const JOB_SLOTS: u32 = 128;
/// Lanes per packet used by the collectives' jobs (1 KiB of payload).
pub const JOB_LANES: u16 = 256;

/// The job every rank derives from the configuration and the exchanged UDP addresses.
pub fn job_spec(cfg: &Config, addrs: &[std::net::SocketAddr]) -> JobSpec {
    JobSpec {
        id: cfg.job_id,
        // Assigned by the switch when the first rank creates the job; the others join it.
        epoch: 0,
        lanes: JOB_LANES,
        slot_base: ((cfg.job_id as u32).saturating_sub(1) % 32) * JOB_SLOTS,
        slot_count: JOB_SLOTS,
        workers: addrs.iter().map(|&addr| WorkerSpec::at(addr)).collect(),
    }
}

/// The worker agent over UDP, as an [`InnetPath`].
pub struct AgentPath {
    agent: Agent<UdpTransport>,
}

impl AgentPath {
    /// Binds a UDP socket, exchanges addresses with every rank over the ring, registers the
    /// job with the switch (every rank registers the same spec) and connects the agent.
    pub(crate) fn connect(cfg: &Config, ring: &mut Ring) -> crate::Result<Self> {
        let switch = cfg
            .switch
            .ok_or_else(|| CollectiveError::Config("innet needs a switch address".into()))?;
        if cfg.transport != Transport::Udp {
            return Err(CollectiveError::Config(
                "the collectives' in-network path supports the udp transport only (use `sketchreduce bench allreduce --transport quic` for QUIC)".into(),
            ));
        }
        let ie = |e: sketchreduce_agent::AgentError| CollectiveError::Innet(e.to_string());
        let ip = if switch.ip().is_loopback() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from([0, 0, 0, 0])
        };
        let sock = transport::bind_udp(std::net::SocketAddr::new(ip, 0)).map_err(ie)?;
        let local = sock
            .local_addr()
            .map_err(|e| CollectiveError::Io(e.to_string()))?;
        let addrs: Vec<std::net::SocketAddr> = if cfg.world_size > 1 {
            let blobs = ring.all_gather(
                local.to_string().into_bytes(),
                "exchange of agent addresses",
            )?;
            blobs
                .iter()
                .map(|b| {
                    String::from_utf8_lossy(b).parse().map_err(|_| {
                        CollectiveError::Mismatch(format!(
                            "bad agent address {:?}",
                            String::from_utf8_lossy(b)
                        ))
                    })
                })
                .collect::<crate::Result<_>>()?
        } else {
            vec![local]
        };
        let job = job_spec(cfg, &addrs);
        let t = UdpTransport::new(sock, switch).map_err(ie)?;
        let acfg = AgentConfig {
            agg: AggConfig::with_timeout(cfg.timeout),
            ..AgentConfig::default()
        };
        let agent = Agent::new(t, &job, cfg.rank as u8, acfg).map_err(ie)?;
        Ok(AgentPath { agent })
    }
}

impl InnetPath for AgentPath {
    fn all_reduce(
        &mut self,
        tensor_id: u64,
        fp: &FixedPoint,
        values: &[f32],
        sums: &mut Vec<i64>,
    ) -> Result<()> {
        let r = self
            .agent
            .all_reduce(tensor_id, values)
            .map_err(|e| CollectiveError::Innet(e.to_string()))?;
        sums.clear();
        sums.resize(values.len(), 0);
        if let Some(f) = r.fixed {
            // The agent agrees on the exponent through the switch (MAX lanes); it must be the
            // one the communicator agreed on over TCP, or results would not be bit-identical.
            if f != *fp {
                return Err(CollectiveError::Innet(format!(
                    "switch-agreed fixed point (exponent {}, {} workers) differs from the communicator's (exponent {}, {} workers)",
                    f.exponent(),
                    f.workers(),
                    fp.exponent(),
                    fp.workers()
                )));
            }
        }
        for (&k, &s) in r.keys.iter().zip(&r.sums) {
            sums[k as usize] = s;
        }
        Ok(())
    }

    fn bytes(&self) -> (u64, u64) {
        (self.agent.stats().agg.bytes_sent, 0)
    }
}
