//! The in-network path: the integer sum is computed by the switch, through the worker agent.
//!
//! The communicator hands the agent the *already agreed* [`FixedPoint`] (global exponent over
//! all ranks, world size, 32-bit lanes), so the integers the switch adds are exactly those the
//! ring and the all-gather add, and [`crate::finish`] makes identical floats of them.

use crate::error::Result;
use crate::reduce::{finish, OpPhases, Payload, ReduceOp};
use crate::sparse::SparseVec;
use sketchreduce_agent::{Agreed, Reduced};
use sketchreduce_codec::FixedPoint;

/// One rank's contribution to an in-network all-reduce, in sparse form, with the parameters
/// every rank agreed on in the collectives' metadata round.
#[derive(Debug, Clone, Copy)]
pub struct InnetRequest<'a> {
    /// Stable key of the tensor (the same on every rank): the in-network path sizes its
    /// sketch from the previous union of the same key.
    pub key: u64,
    /// Length of the flattened tensor.
    pub dim: usize,
    /// This rank's values.
    pub input: InnetInput<'a>,
    /// The agreed fixed point and nonzero counts.
    pub agreed: Agreed,
}

/// This rank's values for an in-network all-reduce.
#[derive(Debug, Clone, Copy)]
pub enum InnetInput<'a> {
    /// Every value (the path extracts nonzeros itself, or sends dense lanes).
    Dense(&'a [f32]),
    /// Increasing positions of the nonzeros and their values.
    Sparse {
        /// Positions.
        indices: &'a [u32],
        /// Values.
        values: &'a [f32],
    },
}

/// Something that sums fixed-point integers over all ranks through the switch.
pub trait InnetPath: Send {
    /// Quantizes the request's values with its agreed fixed point, sums them over every rank
    /// of the job through the switch, and returns the exact integer sums. Blocking; fails
    /// within the configured timeout.
    fn all_reduce(&mut self, req: InnetRequest<'_>) -> Result<Reduced>;

    /// Cumulative (bytes sent, bytes received) of this path (received: 0 when unknown).
    fn bytes(&self) -> (u64, u64);

    /// Called while the communicator is idle, at least every [`KEEPALIVE`]: keeps the job's
    /// registration on the switch alive (its lease is renewed by traffic).
    fn keepalive(&mut self) {}

    /// Takes back a result the caller has converted (its buffers may be reused).
    fn recycle(&mut self, _r: Reduced) {}

    /// Called once when the communicator shuts down, after every rank's last operation (or
    /// a short wait for them): releases the job's registration if this rank made it.
    fn shutdown(&mut self) {}
}

/// Lease of the jobs the collectives register on the switch: how long the switch keeps a job
/// that shows no traffic (a crashed job's slots come back after this).
pub const JOB_LEASE: std::time::Duration = std::time::Duration::from_secs(60);
/// Interval of keepalive PROBEs while a communicator is idle (well inside [`JOB_LEASE`]).
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs the in-network arm of an all-reduce: flattens `payload` to its nonzeros, sums them
/// through `path`, and converts the exact sums with [`finish`] like every other algorithm.
/// `nnz_sum`/`max_nnz` come from the metadata round (Σ and max over ranks).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    path: &mut dyn InnetPath,
    key: u64,
    fp: FixedPoint,
    payload: Payload,
    op: ReduceOp,
    world: usize,
    raw: bool,
    nnz_sum: u64,
    max_nnz: u64,
) -> Result<(Payload, OpPhases)> {
    let agreed = Agreed {
        fixed: fp,
        nnz_sum,
        max_nnz,
    };
    let phases = |r: &Reduced, scan: std::time::Duration, t_conv: std::time::Instant| OpPhases {
        scan: scan + r.phases.scan,
        encode: r.phases.encode,
        aggregate: r.phases.aggregate,
        decode: r.phases.decode,
        recovery: r.phases.recovery,
        convert: t_conv.elapsed(),
        innet_mode: Some(r.mode.name()),
        ..Default::default()
    };
    let t_scan = std::time::Instant::now();
    match payload {
        Payload::Dense(mut v) => {
            let r = path.all_reduce(InnetRequest {
                key,
                dim: v.len(),
                input: InnetInput::Dense(&v),
                agreed,
            })?;
            let scan = std::time::Duration::ZERO;
            let t_conv = std::time::Instant::now();
            if raw {
                let mut sums = vec![0i64; v.len()];
                r.for_each_sum(|k, s| sums[k] = s);
                return Ok((Payload::Sums(sums, fp), phases(&r, scan, t_conv)));
            }
            if r.mode == sketchreduce_agent::PayloadMode::Dense && fp.bits() <= 32 {
                // Every position: one vectorised conversion, then the average.
                fp.dequantize_narrow(&r.lanes, &mut v);
                if op == ReduceOp::Avg {
                    let w = world as f32;
                    v.iter_mut().for_each(|x| *x /= w);
                }
            } else {
                if r.mode != sketchreduce_agent::PayloadMode::Dense {
                    // Positions outside the result's candidates are zero (a value of this
                    // rank there quantized to 0).
                    v.fill(0.0);
                }
                r.for_each_sum(|k, s| v[k] = finish(&fp, s, op, world));
            }
            let p = phases(&r, scan, t_conv);
            path.recycle(r);
            Ok((Payload::Dense(v), p))
        }
        Payload::Sparse(s) => {
            let dim = s.len * s.block;
            let mut indices = Vec::with_capacity(s.values.len());
            let mut values = Vec::with_capacity(s.values.len());
            for (row, vals) in s.indices.iter().zip(s.values.chunks(s.block.max(1))) {
                for (j, &x) in vals.iter().enumerate() {
                    if x != 0.0 {
                        indices.push((*row as usize * s.block + j) as u32);
                        values.push(x);
                    }
                }
            }
            let scan = t_scan.elapsed();
            let r = path.all_reduce(InnetRequest {
                key,
                dim,
                input: InnetInput::Sparse {
                    indices: &indices,
                    values: &values,
                },
                agreed,
            })?;
            let t_conv = std::time::Instant::now();
            // Straight to rows: a dense intermediate of the whole table cost ~30 ms per step
            // for train_ncf's 8.9M-value user embedding.
            let mut pairs = Vec::with_capacity(r.nonzeros());
            // A zero sum converts to +0.0, what the rows are filled with anyway.
            r.for_each_sum(|k, x| {
                if x != 0 {
                    pairs.push((k, finish(&fp, x, op, world)))
                }
            });
            let out = Payload::Sparse(SparseVec::from_pairs(s.len, s.block, pairs)?);
            Ok((out, phases(&r, scan, t_conv)))
        }
        Payload::Sums(..) => Err(crate::error::CollectiveError::Input(
            "integer sums are an output, not an input".into(),
        )),
    }
}

use crate::config::{Config, Transport};
use crate::error::CollectiveError;
use crate::net::Ring;
use sketchreduce_agent::{transport, Agent, AgentConfig, AggConfig, UdpTransport};
use sketchreduce_wire::{JobSpec, WorkerSpec};

/// Slots each job takes in the switch pool; job `id` uses slots
/// `((id − 1) mod 32) · JOB_SLOTS ..` so up to 32 jobs share the default 4,096-slot pool.
pub const JOB_SLOTS: u32 = 128;
/// Longest text form of a socket address and path MTU exchanged over the ring (an IPv6
/// address with scope and port takes at most 64 bytes).
const MAX_ADDR_TEXT: usize = 80;
/// Longest registration message rank 0 sends over the ring (`OK …` or `ERR reason`, cut).
const MAX_REGISTRATION_NOTE: usize = 4096;

/// Lanes per packet when nothing better is known: a 1 KiB payload, which fits every
/// Ethernet MTU and QUIC datagram. The collectives use the largest lane count that fits the
/// smallest path MTU of all ranks and the switch (360 lanes on a 1500-byte MTU).
pub const JOB_LANES: u16 = 256;

/// The job every rank derives from the configuration, the exchanged UDP addresses and the
/// lane count rank 0 chose.
pub fn job_spec(cfg: &Config, addrs: &[std::net::SocketAddr], lanes: u16) -> JobSpec {
    JobSpec {
        id: cfg.job_id,
        // Assigned by the switch when rank 0 creates the job.
        epoch: 0,
        lanes,
        slot_base: ((cfg.job_id as u32).saturating_sub(1) % 32) * JOB_SLOTS,
        slot_count: JOB_SLOTS,
        workers: addrs.iter().map(|&addr| WorkerSpec::at(addr)).collect(),
    }
}

/// The worker agent over UDP, as an [`InnetPath`].
pub struct AgentPath {
    agent: Agent<UdpTransport>,
    /// Rank at the other end of each watched ring connection.
    peers: Vec<usize>,
    rank: usize,
    /// Set on the rank that registered the job (rank 0).
    owner: Option<Owner>,
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
        // Bind to the address the switch sees: it sends results to the registered address.
        let ip = transport::local_ip_towards(switch).map_err(ie)?;
        let sock = transport::bind_udp(std::net::SocketAddr::new(ip, 0)).map_err(ie)?;
        let local = sock
            .local_addr()
            .map_err(|e| CollectiveError::Io(e.to_string()))?;
        // Every rank's address and path MTU towards the switch: the packets must fit the
        // smallest.
        let mtu = transport::path_mtu_towards(switch);
        let mine = format!("{local} {mtu}");
        let blobs = if cfg.world_size > 1 {
            ring.all_gather(
                mine.into_bytes(),
                |_| MAX_ADDR_TEXT,
                "exchange of agent addresses",
            )?
        } else {
            vec![mine.into_bytes()]
        };
        let mut addrs = Vec::with_capacity(blobs.len());
        let mut min_mtu = usize::MAX;
        for b in &blobs {
            let text = String::from_utf8_lossy(b);
            let bad = || CollectiveError::Mismatch(format!("bad agent address {text:?}"));
            let (a, m) = text.split_once(' ').ok_or_else(bad)?;
            addrs.push(a.parse::<std::net::SocketAddr>().map_err(|_| bad())?);
            min_mtu = min_mtu.min(m.parse::<usize>().map_err(|_| bad())?);
        }
        // Rank 0 registers the job (replacing a stale registration of the same id, e.g. of a
        // crashed earlier run: a fresh epoch makes its leftover packets harmless) and tells
        // every rank the epoch and the data ports; only rank 0 talks to the control plane.
        let secret = cfg.job_secret()?.map(std::sync::Arc::new);
        let mut owner = None;
        let mine = if cfg.rank == 0 {
            match register(switch, secret.clone(), cfg, &addrs, min_mtu) {
                Ok((epoch, port, ports, lanes)) => {
                    owner = Some(Owner {
                        control: switch,
                        secret,
                        job: cfg.job_id,
                        epoch,
                    });
                    format!("OK {epoch} {port} {ports} {lanes}")
                }
                Err(e) => {
                    let mut m = format!("ERR {e}");
                    let mut cut = m.len().min(MAX_REGISTRATION_NOTE);
                    while !m.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    m.truncate(cut);
                    m
                }
            }
        } else {
            String::new()
        };
        let reply = if cfg.world_size > 1 {
            let blobs = ring.all_gather(
                mine.into_bytes(),
                |r| if r == 0 { MAX_REGISTRATION_NOTE } else { 0 },
                "job registration",
            )?;
            String::from_utf8_lossy(&blobs[0]).into_owned()
        } else {
            mine
        };
        let (epoch, data_port, data_ports, lanes) = parse_registration(&reply)?;
        let mut job = job_spec(cfg, &addrs, lanes);
        job.epoch = epoch;
        let t = UdpTransport::with_ports(sock, switch, switch.ip(), data_port, data_ports)
            .map_err(ie)?;
        let acfg = AgentConfig {
            agg: AggConfig::with_timeout(cfg.timeout),
            register: false,
            innet: sketchreduce_agent::InnetConfig {
                mode: cfg.codec.innet_mode,
                ..Default::default()
            },
        };
        let mut agent = Agent::new(t, &job, cfg.rank as u8, acfg).map_err(ie)?;
        // A neighbour that dies or aborts while this rank waits on the switch ends the
        // operation at once, naming it, instead of after the worker timeout.
        let watched = ring.watch_fds();
        let peers: Vec<usize> = watched.iter().map(|w| w.1).collect();
        let fds: Vec<std::os::fd::RawFd> = watched.iter().map(|w| w.0).collect();
        let (check_fds, check_peers) = (fds.clone(), peers.clone());
        sketchreduce_agent::Transport::set_interrupt(
            agent.transport_mut(),
            Some(sketchreduce_agent::Interrupt {
                fds,
                check: Box::new(move |i| {
                    let (fd, peer) = (*check_fds.get(i)?, *check_peers.get(i)?);
                    match crate::net::peek_abort(fd)? {
                        crate::net::Peeked::Closed => {
                            Some(sketchreduce_agent::InterruptEvent::Closed { rank: peer as u8 })
                        }
                        crate::net::Peeked::Abort(r) => {
                            Some(sketchreduce_agent::InterruptEvent::Abort(r))
                        }
                    }
                }),
            }),
        );
        Ok(AgentPath {
            agent,
            peers,
            rank: cfg.rank,
            owner,
        })
    }
}

/// What rank 0 needs to release the job it registered.
struct Owner {
    control: std::net::SocketAddr,
    secret: Option<std::sync::Arc<sketchreduce_control::Secret>>,
    job: u16,
    epoch: u32,
}

/// Registers the job at the switch's control endpoint (replacing a stale one with the same
/// id), with the largest lane count that fits `mtu` and the switch; returns (epoch, first
/// data port, data ports, lanes).
fn register(
    control: std::net::SocketAddr,
    secret: Option<std::sync::Arc<sketchreduce_control::Secret>>,
    cfg: &Config,
    addrs: &[std::net::SocketAddr],
    mtu: usize,
) -> std::result::Result<(u32, u16, u16, u16), String> {
    let timeout = cfg.timeout.min(std::time::Duration::from_secs(10));
    let mut c = sketchreduce_control::Client::connect(control, secret, timeout)
        .map_err(|e| format!("switch control endpoint {control}: {e}"))?;
    let info = c
        .info()
        .map_err(|e| format!("switch control endpoint {control}: {e}"))?;
    let lanes = sketchreduce_wire::lanes_for_mtu(mtu, info.max_lanes).ok_or_else(|| {
        format!(
            "no lane count fits a {mtu}-byte path MTU and the switch's {} lanes",
            info.max_lanes
        )
    })?;
    let job = job_spec(cfg, addrs, lanes);
    let epoch = c
        .create(&job, true, JOB_LEASE.as_millis() as u64)
        .map_err(|e| format!("registering job {} at {control}: {e}", job.id))?;
    Ok((epoch, info.data_port, info.data_ports.max(1), lanes))
}

/// Parses rank 0's registration message (`OK epoch port ports lanes` or `ERR reason`).
fn parse_registration(msg: &str) -> crate::Result<(u32, u16, u16, u16)> {
    if let Some(reason) = msg.strip_prefix("ERR ") {
        return Err(CollectiveError::Innet(format!(
            "rank 0 could not register the job on the switch: {reason}"
        )));
    }
    let bad = || CollectiveError::Mismatch(format!("bad registration message {msg:?} from rank 0"));
    let mut it = msg.strip_prefix("OK ").ok_or_else(bad)?.split(' ');
    let mut next = || it.next().ok_or_else(bad);
    let epoch = next()?.parse().map_err(|_| bad())?;
    let port = next()?.parse().map_err(|_| bad())?;
    let ports = next()?.parse().map_err(|_| bad())?;
    let lanes = next()?.parse().map_err(|_| bad())?;
    Ok((epoch, port, ports, lanes))
}

impl InnetPath for AgentPath {
    fn all_reduce(&mut self, req: InnetRequest<'_>) -> Result<Reduced> {
        if req.dim > u32::MAX as usize {
            return Err(CollectiveError::Input(format!(
                "tensor of {} elements is too large for the in-network path",
                req.dim
            )));
        }
        let r = match req.input {
            InnetInput::Dense(values) => self
                .agent
                .all_reduce_agreed_dense(req.key, values, req.agreed),
            InnetInput::Sparse { indices, values } => self
                .agent
                .all_reduce_agreed(req.key, req.dim, indices, values, req.agreed),
        };
        r.map_err(|e| match e {
            sketchreduce_agent::AgentError::Interrupted { watch, reason } => {
                CollectiveError::Aborted {
                    rank: self.rank,
                    peer: self.peers.get(watch).copied().unwrap_or(usize::MAX),
                    reason,
                }
            }
            sketchreduce_agent::AgentError::PeerGone { rank, detail, .. } => {
                CollectiveError::PeerLost {
                    rank: self.rank,
                    peer: rank as usize,
                    during: "in-network all-reduce".into(),
                    reason: format!(
                        "rank {rank} exited while its contribution was missing: {detail}"
                    ),
                }
            }
            e => CollectiveError::Innet(e.to_string()),
        })
    }

    fn bytes(&self) -> (u64, u64) {
        (self.agent.stats().agg.bytes_sent, 0)
    }

    fn recycle(&mut self, r: Reduced) {
        self.agent.recycle(r);
    }

    fn keepalive(&mut self) {
        if let Err(e) = self.agent.keepalive() {
            tracing::debug!(error = %e, "keepalive probe not sent");
        }
    }

    fn shutdown(&mut self) {
        let Some(o) = self.owner.take() else {
            return;
        };
        let r = sketchreduce_control::Client::connect(
            o.control,
            o.secret,
            std::time::Duration::from_secs(2),
        )
        .and_then(|mut c| c.unregister(o.job, o.epoch));
        match r {
            Ok(()) => tracing::debug!(job = o.job, "job unregistered from the switch"),
            Err(e) => {
                tracing::warn!(job = o.job, error = %e, "could not unregister the job (its lease will expire)")
            }
        }
    }
}
