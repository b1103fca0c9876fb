//! The switch process: UDP data threads (one per data port, batched I/O), the control endpoint
//! (control protocol v2 over TCP, through `sketchreduce-control`), the optional QUIC endpoint,
//! periodic counter logs and the lease sweeper. [`spawn_switch`] starts it all in-process and
//! returns a [`SwitchHandle`].

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sketchreduce_control::{
    check_bind, Backend, BackendError, BackendInfo, ConnLimit, ControlPlane, PlaneConfig,
    PlaneError, Secret, ServerConfig, TcpServer,
};
use sketchreduce_wire::control::DEFAULT_MAX_JOBS;
use sketchreduce_wire::{Counters, DropReason, JobSpec, DATA_PORT_COUNT, MAX_LANES};
use thiserror::Error;

use crate::core::{total_drops, CoreError, ShardedCore};
use crate::mmsg::{self, RecvBatch, SendBatch};
use crate::quic_server::{self, QuicPeers};

/// Errors starting or driving the switch.
#[derive(Debug, Error)]
pub enum SwitchError {
    /// A socket could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The register pool cannot be built (too large, bad lane count).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A static job was refused.
    #[error("job {job}: {source}")]
    Job {
        /// Job id.
        job: u16,
        /// Why.
        source: PlaneError,
    },
    /// QUIC setup failed.
    #[error(transparent)]
    Quic(#[from] sketchreduce_quic::QuicError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SwitchError {
    let what = what.into();
    move |source| SwitchError::Io { what, source }
}

/// QUIC endpoint settings.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// Where the self-signed certificate and key live (created on first use).
    pub cert_dir: PathBuf,
    /// Client certificates the endpoint accepts, by fingerprint. `None`: clients are not
    /// authenticated by TLS (only the switch is); `Some`: a client without an allowed
    /// certificate fails the handshake.
    pub client_allow: Option<sketchreduce_quic::ClientAllowList>,
}

/// How to run a switch.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// First data port (`ip:base`); the switch binds `base..base + threads`. Port 0 picks a
    /// free consecutive range.
    pub listen: SocketAddr,
    /// Data threads = data ports (1..=16); slots are sharded by `slot % threads`.
    pub threads: usize,
    /// Slots in the pool.
    pub slots: u32,
    /// Lanes per register set: the largest lane count a job may use (one of `LANE_CHOICES`).
    /// `slots × 2 × max_lanes × 4` bytes must stay ≤ 1 GiB.
    pub max_lanes: u16,
    /// Most jobs at once.
    pub max_jobs: usize,
    /// Control endpoint (TCP). `None`: `127.0.0.1`, port `base + 16` (port 0 if the data port
    /// was 0). A non-loopback address needs `secret`.
    pub control: Option<SocketAddr>,
    /// Shared secret of the control endpoint; `None`: auth off (loopback only).
    pub secret: Option<Arc<Secret>>,
    /// QUIC endpoint, if any.
    pub quic: Option<QuicSettings>,
    /// Jobs configured at start, with their epochs (no lease; not replaceable through the
    /// control endpoint).
    pub jobs: Vec<JobSpec>,
    /// Datagrams per recvmmsg/sendmmsg.
    pub batch: usize,
    /// SO_RCVBUF / SO_SNDBUF of the data sockets, bytes.
    pub socket_buffer: usize,
    /// Period of the counters log (info level); `None`: only at shutdown.
    pub stats_interval: Option<Duration>,
    /// Control endpoint timing (deadlines, sweep period); its `secret` is replaced by
    /// `secret` above.
    pub control_timing: ServerConfig,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], sketchreduce_wire::DEFAULT_DATA_PORT)),
            threads: 1,
            slots: 4096,
            max_lanes: MAX_LANES,
            max_jobs: DEFAULT_MAX_JOBS,
            control: None,
            secret: None,
            quic: None,
            jobs: Vec::new(),
            batch: mmsg::DEFAULT_BATCH,
            socket_buffer: 8 << 20,
            stats_interval: Some(Duration::from_secs(10)),
            control_timing: ServerConfig::default(),
        }
    }
}

impl SwitchConfig {
    /// A switch on 127.0.0.1 with ephemeral ports (for tests and benches).
    pub fn loopback(threads: usize, slots: u32) -> Self {
        SwitchConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads,
            slots,
            stats_interval: None,
            ..Default::default()
        }
    }
}

/// What the data threads and the QUIC endpoint share.
pub(crate) struct Shared {
    pub(crate) core: ShardedCore,
    pub(crate) socks: Vec<UdpSocket>,
    pub(crate) peers: QuicPeers,
    pub(crate) shutdown: AtomicBool,
    pub(crate) data_port: u16,
}

/// The emulator as a control-plane [`Backend`]: jobs and counters of its [`ShardedCore`].
pub struct EmuBackend(Arc<Shared>);

impl std::fmt::Debug for EmuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EmuBackend").field(&self.0.core).finish()
    }
}

impl Backend for EmuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            data_port: self.0.data_port,
            data_ports: self.0.socks.len() as u16,
            slots: self.0.core.pool_slots(),
            max_lanes: self.0.core.max_lanes(),
        }
    }

    fn create(&self, spec: &JobSpec) -> Result<(), BackendError> {
        self.0
            .core
            .create(spec.clone())
            .map_err(|e| BackendError::Invalid(e.to_string()))
    }

    fn unregister(&self, id: u16) -> Result<(), BackendError> {
        self.0
            .core
            .unregister(id)
            .map(|_| ())
            .map_err(|e| BackendError::Invalid(e.to_string()))
    }

    fn counters(&self) -> Result<Counters, BackendError> {
        Ok(self.0.core.counters())
    }
}

/// The emulator's control plane.
pub type EmuPlane = ControlPlane<EmuBackend>;

/// A running in-process switch. Dropping it shuts it down (as [`SwitchHandle::shutdown`]).
pub struct SwitchHandle {
    shared: Arc<Shared>,
    plane: Arc<EmuPlane>,
    data_addr: SocketAddr,
    control: Option<TcpServer>,
    control_addr: SocketAddr,
    quic_addr: Option<SocketAddr>,
    fingerprint: Option<String>,
    quic_endpoint: Option<quinn::Endpoint>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SwitchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchHandle")
            .field("data_addr", &self.data_addr)
            .field("data_ports", &self.shared.socks.len())
            .field("control_addr", &self.control_addr)
            .field("quic_addr", &self.quic_addr)
            .finish_non_exhaustive()
    }
}

impl SwitchHandle {
    /// The first data port's address (slot `s` goes to port `+ s % data_ports()`).
    pub fn local_data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// Number of consecutive data ports (= data threads).
    pub fn data_ports(&self) -> u16 {
        self.shared.socks.len() as u16
    }

    /// The address a worker sends slot `slot` to.
    pub fn data_addr_for_slot(&self, slot: u32) -> SocketAddr {
        let mut a = self.data_addr;
        a.set_port(a.port() + (slot % self.data_ports() as u32) as u16);
        a
    }

    /// The TCP control endpoint.
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// The QUIC endpoint, if enabled.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }

    /// SHA-256 fingerprint (lowercase hex) of the QUIC certificate, if QUIC is enabled.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// QUIC handshakes that failed so far, for any reason: a client certificate refused (or
    /// missing) when [`QuicSettings::client_allow`] is set, a client that refused the switch's
    /// certificate, a timeout.
    pub fn quic_handshake_failures(&self) -> u64 {
        self.shared.peers.handshake_failures()
    }

    /// Slots in the pool.
    pub fn slots(&self) -> u32 {
        self.shared.core.pool_slots()
    }

    /// The sharded state machine (e.g. to inspect registers in tests).
    pub fn core(&self) -> &ShardedCore {
        &self.shared.core
    }

    /// The control plane (job registry), as the control endpoint uses it.
    pub fn plane(&self) -> &EmuPlane {
        &self.plane
    }

    /// Creates a job in-process (as a `create` request would, but without a lease) and returns
    /// its spec with the new epoch.
    pub fn create(&self, mut spec: JobSpec) -> Result<JobSpec, PlaneError> {
        spec.epoch = self
            .plane
            .create(spec.clone(), false, None, Instant::now())?;
        Ok(spec)
    }

    /// Unregisters a job in-process (it must still have `epoch`).
    pub fn unregister(&self, job: u16, epoch: u32) -> Result<(), PlaneError> {
        self.plane.unregister(job, epoch)
    }

    /// Current counters.
    pub fn counters(&self) -> Counters {
        self.shared.core.counters()
    }

    /// Whether shutdown has begun.
    pub fn is_shut_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Relaxed)
    }

    /// Stops every thread, waits for them, logs and returns the final counters.
    pub fn shutdown(mut self) -> Counters {
        self.stop()
    }

    fn stop(&mut self) -> Counters {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        if let Some(mut c) = self.control.take() {
            c.shutdown();
        }
        if let Some(ep) = self.quic_endpoint.take() {
            ep.close(0u32.into(), b"switch shutting down");
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let c = self.shared.core.counters();
        log_counters(&c, "final counters");
        c
    }
}

impl Drop for SwitchHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

/// Logs a counters snapshot at info level.
pub fn log_counters(c: &Counters, msg: &str) {
    let drops = total_drops(c);
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| drops[**r as usize] > 0)
        .map(|r| format!("{}={}", r.name(), drops[*r as usize]))
        .collect();
    tracing::info!(
        packets_in = c.packets_in,
        packets_out = c.packets_out,
        drops = %drops.join(","),
        jobs = c.jobs.len(),
        "{msg}"
    );
    for (id, j) in &c.jobs {
        tracing::info!(
            job = id,
            data_in = j.data_in,
            completions = j.completions,
            results_multicast = j.results_multicast,
            results_unicast = j.results_unicast,
            probes = j.probes,
            "job counters"
        );
    }
}

/// Binds `threads` UDP sockets on consecutive ports from `listen` (port 0: find a free range).
pub fn bind_data_ports(
    listen: SocketAddr,
    threads: usize,
    buf: usize,
) -> Result<Vec<UdpSocket>, SwitchError> {
    if listen.port() != 0 {
        if listen.port() as usize + threads > 65536 {
            return Err(SwitchError::Config(format!(
                "data ports from {listen} overflow"
            )));
        }
        return (0..threads)
            .map(|t| {
                let mut a = listen;
                a.set_port(listen.port() + t as u16);
                mmsg::bind_udp(a, buf).map_err(io(format!("bind UDP {a}")))
            })
            .collect();
    }
    let mut last = None;
    for _ in 0..64 {
        let first = mmsg::bind_udp(listen, buf).map_err(io(format!("bind UDP {listen}")))?;
        let base = first.local_addr().map_err(io("local_addr"))?;
        let mut socks = vec![first];
        for t in 1..threads {
            let mut a = base;
            let Some(p) = base.port().checked_add(t as u16) else {
                break;
            };
            a.set_port(p);
            match mmsg::bind_udp(a, buf) {
                Ok(s) => socks.push(s),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        if socks.len() == threads {
            return Ok(socks);
        }
    }
    Err(SwitchError::Io {
        what: format!("no {threads} consecutive free UDP ports on {}", listen.ip()),
        source: last.unwrap_or_else(|| std::io::Error::other("port range exhausted")),
    })
}

/// Starts a switch in this process: data threads, control endpoint, QUIC endpoint (if
/// configured); installs the static `cfg.jobs`.
pub fn spawn_switch(cfg: SwitchConfig) -> Result<SwitchHandle, SwitchError> {
    if cfg.threads == 0 || cfg.threads > DATA_PORT_COUNT as usize {
        return Err(SwitchError::Config(format!(
            "threads must be 1..={DATA_PORT_COUNT}, got {}",
            cfg.threads
        )));
    }
    if cfg.max_jobs == 0 || cfg.max_jobs > u16::MAX as usize {
        return Err(SwitchError::Config(format!(
            "max jobs must be 1..=65535, got {}",
            cfg.max_jobs
        )));
    }
    // Before binding or allocating anything: a bad size is a clear error, not an abort.
    let core = ShardedCore::new(cfg.slots, cfg.threads as u32, cfg.max_lanes)?;
    let socks = bind_data_ports(cfg.listen, cfg.threads, cfg.socket_buffer)?;
    let data_addr = socks[0].local_addr().map_err(io("local_addr"))?;
    for s in &socks {
        mmsg::set_recv_timeout(s, Some(Duration::from_millis(50))).map_err(io("SO_RCVTIMEO"))?;
        mmsg::report_ip_options(s).map_err(io("IP_RECVOPTS"))?;
        // Datagrams of one worker arrive coalesced (UDP GRO) when the kernel can: one read
        // per burst instead of one per datagram.
        let gro = mmsg::enable_gro(s);
        tracing::debug!(gro, "UDP GRO on the data socket");
    }
    let control_addr = cfg.control.unwrap_or_else(|| {
        let port = if cfg.listen.port() == 0 {
            0
        } else {
            data_addr.port().checked_add(DATA_PORT_COUNT).unwrap_or(0)
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    });
    check_bind(control_addr, cfg.secret.is_some()).map_err(SwitchError::Config)?;
    // QUIC control streams are a control endpoint too: off loopback they need the secret, or
    // TLS client certificates that admit only allowed workers.
    if let Some(q) = &cfg.quic {
        check_bind(q.listen, cfg.secret.is_some() || q.client_allow.is_some())
            .map_err(SwitchError::Config)?;
    }
    let listener =
        TcpListener::bind(control_addr).map_err(io(format!("bind TCP {control_addr}")))?;
    let control_addr = listener.local_addr().map_err(io("local_addr"))?;

    let shared = Arc::new(Shared {
        core,
        socks,
        peers: QuicPeers::default(),
        shutdown: AtomicBool::new(false),
        data_port: data_addr.port(),
    });
    let plane = Arc::new(ControlPlane::new(
        EmuBackend(shared.clone()),
        PlaneConfig {
            max_jobs: cfg.max_jobs,
            auth: cfg.secret.is_some(),
        },
    ));
    let now = Instant::now();
    for j in &cfg.jobs {
        plane
            .add_static(j.clone(), now)
            .map_err(|source| SwitchError::Job { job: j.id, source })?;
    }
    let mut handle = SwitchHandle {
        shared: shared.clone(),
        plane: plane.clone(),
        data_addr,
        control: None,
        control_addr,
        quic_addr: None,
        fingerprint: None,
        quic_endpoint: None,
        threads: Vec::new(),
    };
    for t in 0..cfg.threads {
        let sh = shared.clone();
        let batch = cfg.batch;
        let th = std::thread::Builder::new()
            .name(format!("switch-data-{t}"))
            .spawn(move || data_loop(&sh, t, batch))
            .map_err(io("spawn data thread"))?;
        handle.threads.push(th);
    }
    let limit = ConnLimit::protocol_default();
    let server_cfg = ServerConfig {
        secret: cfg.secret.clone(),
        ..cfg.control_timing.clone()
    };
    let tick: Option<sketchreduce_control::server::Tick> = cfg.stats_interval.map(|iv| {
        let sh = shared.clone();
        let mut last = Instant::now();
        Box::new(move || {
            if last.elapsed() >= iv {
                last = Instant::now();
                log_counters(&sh.core.counters(), "counters");
            }
        }) as sketchreduce_control::server::Tick
    });
    handle.control = Some(
        TcpServer::spawn(
            listener,
            plane.clone(),
            limit.clone(),
            server_cfg.clone(),
            tick,
        )
        .map_err(io("spawn control thread"))?,
    );
    if let Some(q) = &cfg.quic {
        let started = quic_server::start(q, shared.clone(), plane, limit, server_cfg)?;
        handle.quic_addr = Some(started.addr);
        handle.fingerprint = Some(started.fingerprint);
        handle.quic_endpoint = Some(started.endpoint);
        handle.threads.push(started.thread);
    }
    tracing::info!(
        data = %data_addr,
        data_ports = cfg.threads,
        slots = cfg.slots,
        max_lanes = cfg.max_lanes,
        control = %control_addr,
        auth = cfg.secret.is_some(),
        quic = ?handle.quic_addr,
        "switch started"
    );
    Ok(handle)
}

fn data_loop(sh: &Shared, t: usize, batch: usize) {
    let sock = &sh.socks[t];
    let mut rb = RecvBatch::new(batch);
    // One read may hold dozens of datagrams (GRO), each completion a RESULT per worker: room
    // for a whole read's worth of results, sent as one GSO message per worker.
    let mut sb = SendBatch::new(batch * 16);
    while !sh.shutdown.load(Ordering::Relaxed) {
        let n = match rb.recv(sock) {
            Ok(n) => n,
            Err(e) if mmsg::is_timeout(&e) => continue,
            Err(e) => {
                // E.g. ECONNREFUSED surfaced from an earlier ICMP error: not fatal.
                tracing::debug!(thread = t, error = %e, "recv");
                continue;
            }
        };
        let quic = sh.peers.active();
        for i in 0..n {
            let (from, d) = rb.get(i);
            if rb.has_ip_options(i) {
                sh.core.drop_ip_options(d);
                continue;
            }
            let mut emit = |dst: SocketAddr, out: &[u8]| {
                if quic && sh.peers.try_send(dst, out) {
                    return;
                }
                sb.push(sock, dst, out);
            };
            sh.core.handle(from, d, &mut emit);
        }
        sb.flush(sock);
    }
}
