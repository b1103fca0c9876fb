//! The switch process: UDP data threads (one per data port, batched I/O), the TCP control
//! endpoint, the optional QUIC endpoint, periodic counter logs. [`spawn_switch`] starts it all
//! in-process and returns a [`SwitchHandle`].

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sketchreduce_wire::control::{read_frame, write_frame, ControlError};
use sketchreduce_wire::{
    ControlRequest, ControlResponse, Counters, DropReason, JobSpec, DATA_PORT_COUNT,
};
use thiserror::Error;

use crate::core::{total_drops, RegisterError, Registered, ShardedCore};
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
    /// A job was refused.
    #[error(transparent)]
    Register(#[from] RegisterError),
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
    /// Control endpoint (TCP). `None`: the listen IP, port `base + 16` (port 0 if the data
    /// port was 0).
    pub control: Option<SocketAddr>,
    /// QUIC endpoint, if any.
    pub quic: Option<QuicSettings>,
    /// Jobs registered at start.
    pub jobs: Vec<JobSpec>,
    /// Datagrams per recvmmsg/sendmmsg.
    pub batch: usize,
    /// SO_RCVBUF / SO_SNDBUF of the data sockets, bytes.
    pub socket_buffer: usize,
    /// Period of the counters log (info level); `None`: only at shutdown.
    pub stats_interval: Option<Duration>,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], sketchreduce_wire::DEFAULT_DATA_PORT)),
            threads: 1,
            slots: 4096,
            control: None,
            quic: None,
            jobs: Vec::new(),
            batch: mmsg::DEFAULT_BATCH,
            socket_buffer: 8 << 20,
            stats_interval: Some(Duration::from_secs(10)),
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

pub(crate) struct Shared {
    pub(crate) core: ShardedCore,
    pub(crate) socks: Vec<UdpSocket>,
    pub(crate) peers: QuicPeers,
    pub(crate) shutdown: AtomicBool,
    pub(crate) data_port: u16,
}

impl Shared {
    /// Answers one control request (TCP and QUIC alike).
    pub(crate) fn answer(&self, req: ControlRequest) -> ControlResponse {
        match req {
            ControlRequest::Info => ControlResponse::Info {
                data_port: self.data_port,
                data_ports: self.socks.len() as u16,
                slots: self.core.pool_slots(),
            },
            ControlRequest::Register(spec) => {
                let id = spec.id;
                match self.core.register(spec) {
                    Ok(Registered::New) => {
                        tracing::info!(job = id, "job registered");
                        ControlResponse::Ok
                    }
                    Ok(Registered::Existing) => ControlResponse::Ok,
                    Err(e) => {
                        tracing::warn!(job = id, error = %e, "job refused");
                        ControlResponse::Error(e.to_string())
                    }
                }
            }
            ControlRequest::Unregister { job } => match self.core.unregister(job) {
                Ok(_) => {
                    tracing::info!(job, "job unregistered");
                    ControlResponse::Ok
                }
                Err(e) => ControlResponse::Error(e.to_string()),
            },
            ControlRequest::Counters => ControlResponse::Counters(self.core.counters()),
        }
    }
}

/// A running in-process switch. Dropping it shuts it down (as [`SwitchHandle::shutdown`]).
pub struct SwitchHandle {
    shared: Arc<Shared>,
    data_addr: SocketAddr,
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

    /// Slots in the pool.
    pub fn slots(&self) -> u32 {
        self.shared.core.pool_slots()
    }

    /// The sharded state machine (e.g. to inspect registers in tests).
    pub fn core(&self) -> &ShardedCore {
        &self.shared.core
    }

    /// Registers a job directly (as the control endpoint would).
    pub fn register(&self, spec: JobSpec) -> Result<Registered, RegisterError> {
        self.shared.core.register(spec)
    }

    /// Unregisters a job directly.
    pub fn unregister(&self, job: u16) -> Result<JobSpec, RegisterError> {
        self.shared.core.unregister(job)
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
/// configured); registers `cfg.jobs`.
pub fn spawn_switch(cfg: SwitchConfig) -> Result<SwitchHandle, SwitchError> {
    if cfg.threads == 0 || cfg.threads > DATA_PORT_COUNT as usize {
        return Err(SwitchError::Config(format!(
            "threads must be 1..={DATA_PORT_COUNT}, got {}",
            cfg.threads
        )));
    }
    if cfg.slots == 0 {
        return Err(SwitchError::Config(
            "the pool needs at least one slot".into(),
        ));
    }
    let core = ShardedCore::new(cfg.slots, cfg.threads as u32);
    for j in &cfg.jobs {
        core.register(j.clone())?;
    }
    let socks = bind_data_ports(cfg.listen, cfg.threads, cfg.socket_buffer)?;
    let data_addr = socks[0].local_addr().map_err(io("local_addr"))?;
    for s in &socks {
        mmsg::set_recv_timeout(s, Some(Duration::from_millis(50))).map_err(io("SO_RCVTIMEO"))?;
    }
    let control_addr = cfg.control.unwrap_or_else(|| {
        let port = if cfg.listen.port() == 0 {
            0
        } else {
            data_addr.port().checked_add(DATA_PORT_COUNT).unwrap_or(0)
        };
        SocketAddr::new(data_addr.ip(), port)
    });
    let listener =
        TcpListener::bind(control_addr).map_err(io(format!("bind TCP {control_addr}")))?;
    let control_addr = listener.local_addr().map_err(io("local_addr"))?;
    listener.set_nonblocking(true).map_err(io("nonblocking"))?;

    let shared = Arc::new(Shared {
        core,
        socks,
        peers: QuicPeers::default(),
        shutdown: AtomicBool::new(false),
        data_port: data_addr.port(),
    });
    let mut handle = SwitchHandle {
        shared: shared.clone(),
        data_addr,
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
    {
        let sh = shared.clone();
        let interval = cfg.stats_interval;
        let th = std::thread::Builder::new()
            .name("switch-control".into())
            .spawn(move || control_loop(&sh, listener, interval))
            .map_err(io("spawn control thread"))?;
        handle.threads.push(th);
    }
    if let Some(q) = &cfg.quic {
        let started = quic_server::start(q, shared.clone())?;
        handle.quic_addr = Some(started.addr);
        handle.fingerprint = Some(started.fingerprint);
        handle.quic_endpoint = Some(started.endpoint);
        handle.threads.push(started.thread);
    }
    tracing::info!(
        data = %data_addr,
        data_ports = cfg.threads,
        slots = cfg.slots,
        control = %control_addr,
        quic = ?handle.quic_addr,
        "switch started"
    );
    Ok(handle)
}

fn data_loop(sh: &Shared, t: usize, batch: usize) {
    let sock = &sh.socks[t];
    let mut rb = RecvBatch::new(batch);
    let mut sb = SendBatch::new(batch);
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

fn control_loop(sh: &Arc<Shared>, listener: TcpListener, interval: Option<Duration>) {
    let mut last_log = Instant::now();
    while !sh.shutdown.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                // One short-lived thread per connection (requests are tiny and rare); it is
                // not joined at shutdown, and ends at its client's EOF or a read timeout.
                let sh = sh.clone();
                let r = std::thread::Builder::new()
                    .name("switch-control-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve_control(&sh, stream) {
                            tracing::debug!(%peer, error = %e, "control connection ended");
                        }
                    });
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot spawn control connection thread");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control accept");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(iv) = interval {
            if last_log.elapsed() >= iv {
                last_log = Instant::now();
                log_counters(&sh.core.counters(), "counters");
            }
        }
    }
}

fn serve_control(sh: &Shared, mut s: TcpStream) -> Result<(), ControlError> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    loop {
        let req: ControlRequest = match read_frame(&mut s) {
            Ok(r) => r,
            Err(ControlError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(())
            }
            Err(e) => {
                let _ = write_frame(&mut s, &ControlResponse::Error(e.to_string()));
                return Err(e);
            }
        };
        write_frame(&mut s, &sh.answer(req))?;
        if sh.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}
