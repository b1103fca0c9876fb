//! `sketchreduce p4 control`: control protocol v2 for a bmv2 switch.
//!
//! The same [`ControlPlane`] and TCP endpoint as the software switch (job registry, epochs,
//! leases, HMAC authentication), over a [`Backend`] that applies jobs to a running
//! `simple_switch` through its CLI ([`Bmv2Switch`]). Workers cannot tell the two switches
//! apart: `SKETCHREDUCE_SWITCH` may name either.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sketchreduce_control::{
    check_bind, Backend, BackendError, BackendInfo, ConnLimit, ControlPlane, PlaneConfig, Secret,
    ServerConfig, TcpServer,
};
use sketchreduce_wire::{Counters, JobSpec, DATA_PORT_COUNT, DEFAULT_DATA_PORT};
use thiserror::Error;

use crate::portmap::PortMap;
use crate::runtime::Runtime;
use crate::switch::{Bmv2Error, Bmv2Switch};
use crate::MAX_JOBS;

/// How often `p4 control` sweeps leases: every sweep reads all counters through one CLI run
/// (a Python process), so less often than the software switch (leases are 60 s by default).
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A bmv2 switch as a control-plane [`Backend`].
pub struct Bmv2Backend<R: Runtime> {
    sw: Mutex<Bmv2Switch<R>>,
    info: BackendInfo,
}

impl<R: Runtime> std::fmt::Debug for Bmv2Backend<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bmv2Backend")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Bmv2Backend<R> {
    /// Wraps a connected switch. Info: the data port range the parser accepts, the program's
    /// pool and its one lane count as `max_lanes` (a job must use exactly that many).
    pub fn new(sw: Bmv2Switch<R>) -> Self {
        let p = sw.program();
        Bmv2Backend {
            info: BackendInfo {
                data_port: DEFAULT_DATA_PORT,
                data_ports: DATA_PORT_COUNT,
                slots: p.pool_slots,
                max_lanes: p.lanes,
            },
            sw: Mutex::new(sw),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bmv2Switch<R>> {
        self.sw.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn backend_error(e: Bmv2Error) -> BackendError {
    match e {
        Bmv2Error::Invalid(_)
        | Bmv2Error::Place(_)
        | Bmv2Error::Overlap { .. }
        | Bmv2Error::Full
        | Bmv2Error::UnknownJob(_) => BackendError::Invalid(e.to_string()),
        Bmv2Error::Cli(_) | Bmv2Error::Program(_) => BackendError::Failed(e.to_string()),
    }
}

impl<R: Runtime> Backend for Bmv2Backend<R> {
    fn info(&self) -> BackendInfo {
        self.info
    }

    fn create(&self, spec: &JobSpec) -> Result<(), BackendError> {
        let t = Instant::now();
        let r = self.lock().install(spec).map_err(backend_error);
        match &r {
            Ok(()) => tracing::info!(
                job = spec.id,
                epoch = spec.epoch,
                workers = spec.workers.len(),
                ms = t.elapsed().as_millis() as u64,
                "job installed on bmv2"
            ),
            Err(e) => tracing::warn!(job = spec.id, error = %e, "job not installed on bmv2"),
        }
        r
    }

    fn unregister(&self, id: u16) -> Result<(), BackendError> {
        let r = self.lock().remove(id).map_err(backend_error);
        match &r {
            Ok(()) => tracing::info!(job = id, "job removed from bmv2"),
            Err(e) => tracing::warn!(job = id, error = %e, "removing a job from bmv2 failed"),
        }
        r
    }

    fn counters(&self) -> Result<Counters, BackendError> {
        self.lock().counters().map_err(backend_error)
    }
}

/// Why the control plane could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The switch could not be taken over.
    #[error("bmv2: {0}")]
    Switch(#[from] Bmv2Error),
    /// Binding without a secret on a non-loopback address, or a static job refused.
    #[error("{0}")]
    Config(String),
    /// The listener could not be opened.
    #[error("control endpoint {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// How to run the bmv2 control plane.
pub struct ControlOptions<R: Runtime> {
    /// How to reach the switch's CLI.
    pub runtime: R,
    /// The hosts on the switch's ports.
    pub ports: PortMap,
    /// The control endpoint.
    pub listen: SocketAddr,
    /// The shared secret (required unless `listen` is a loopback address).
    pub secret: Option<Secret>,
    /// Static jobs (explicit epochs, no lease), installed at start.
    pub jobs: Vec<JobSpec>,
    /// Endpoint timing (the protocol's constants by default).
    pub server: ServerConfig,
}

/// A running bmv2 control plane: stops serving when dropped.
pub struct Running<R: Runtime + 'static> {
    /// The registry (also for in-process use).
    pub plane: Arc<ControlPlane<Bmv2Backend<R>>>,
    server: TcpServer,
}

impl<R: Runtime + 'static> std::fmt::Debug for Running<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.server.local_addr())
            .finish_non_exhaustive()
    }
}

impl<R: Runtime + 'static> Running<R> {
    /// The bound control endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

/// Takes over the switch (state reset, L2 entries from the port map), installs the static
/// jobs and serves control protocol v2 on `opts.listen` (leases swept by the endpoint).
pub fn start<R: Runtime + 'static>(opts: ControlOptions<R>) -> Result<Running<R>, StartError> {
    check_bind(opts.listen, opts.secret.is_some()).map_err(StartError::Config)?;
    let sw = Bmv2Switch::connect(opts.runtime, opts.ports)?;
    let p = sw.program();
    tracing::info!(
        lanes = p.lanes,
        slots = p.pool_slots,
        "bmv2 switch taken over (state reset)"
    );
    let backend = Bmv2Backend::new(sw);
    let plane = Arc::new(ControlPlane::new(
        backend,
        PlaneConfig {
            max_jobs: MAX_JOBS,
            auth: opts.secret.is_some(),
        },
    ));
    let now = Instant::now();
    for j in opts.jobs {
        let id = j.id;
        plane
            .add_static(j, now)
            .map_err(|e| StartError::Config(format!("static job {id}: {e}")))?;
    }
    let listener = TcpListener::bind(opts.listen).map_err(|source| StartError::Io {
        addr: opts.listen,
        source,
    })?;
    let mut cfg = opts.server;
    cfg.secret = opts.secret.map(Arc::new);
    let server = TcpServer::spawn(
        listener,
        plane.clone(),
        ConnLimit::protocol_default(),
        cfg,
        None,
    )
    .map_err(|source| StartError::Io {
        addr: opts.listen,
        source,
    })?;
    Ok(Running { plane, server })
}
