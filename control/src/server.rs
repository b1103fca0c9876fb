//! The TCP control endpoint: an accept thread and at most [`MAX_CONNECTIONS`] connection
//! threads (more connections are closed at once), each with per-frame, idle and lifetime
//! deadlines. The same accept thread runs the lease sweeper and an optional periodic tick.
//!
//! Connection places are a [`ConnLimit`] the QUIC endpoint shares, so TCP connections and
//! QUIC control streams together never exceed the limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sketchreduce_wire::control::{
    frame_len, FRAME_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTION_TIME,
};

use crate::auth::Secret;
use crate::plane::{Backend, ControlPlane};
use crate::session::ServerSession;

/// Stack of a connection thread: a session needs little (serde_json's recursion is bounded
/// at 128 levels).
const CONN_STACK: usize = 256 << 10;
/// How often a blocked connection thread looks at the shutdown flag.
const POLL_SLICE: Duration = Duration::from_millis(200);

/// A counting semaphore of connection places, shared by the TCP and QUIC endpoints.
#[derive(Debug, Clone)]
pub struct ConnLimit {
    used: Arc<AtomicUsize>,
    max: usize,
}

/// One taken place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnPlace(Arc<AtomicUsize>);

impl Drop for ConnPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnLimit {
    /// `max` places.
    pub fn new(max: usize) -> Self {
        ConnLimit {
            used: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Takes a place, or `None` when all are taken.
    pub fn try_acquire(&self) -> Option<ConnPlace> {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            if cur >= self.max {
                return None;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(ConnPlace(self.used.clone())),
                Err(now) => cur = now,
            }
        }
    }

    /// The protocol's limit, [`MAX_CONNECTIONS`] places.
    pub fn protocol_default() -> Self {
        Self::new(MAX_CONNECTIONS)
    }

    /// Places in use.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Timing and limits of a control endpoint (the protocol's constants by default; tests
/// shorten them).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The shared secret; `None`: auth off (only allowed on loopback; the caller checks).
    pub secret: Option<Arc<Secret>>,
    /// Per-frame deadline.
    pub frame_timeout: Duration,
    /// Idle deadline between frames.
    pub idle_timeout: Duration,
    /// Lifetime of a connection.
    pub max_connection_time: Duration,
    /// How often the accept thread sweeps leases (and calls the tick).
    pub sweep_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            secret: None,
            frame_timeout: FRAME_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connection_time: MAX_CONNECTION_TIME,
            sweep_interval: Duration::from_millis(500),
        }
    }
}

/// Whether binding a control endpoint at `addr` with or without a secret is allowed: auth off
/// only on loopback.
pub fn check_bind(addr: SocketAddr, has_secret: bool) -> Result<(), String> {
    if has_secret || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "control endpoint {addr} is not a loopback address: a secret is required (--secret-file, SKETCHREDUCE_SECRET_FILE or SKETCHREDUCE_SECRET)"
        ))
    }
}

/// Something the accept thread calls every `sweep_interval` (e.g. a periodic counters log).
pub type Tick = Box<dyn FnMut() + Send>;

/// A running TCP control endpoint.
#[derive(Debug)]
pub struct TcpServer {
    addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Starts serving `listener` for `plane`; connection places come from `limit`.
    pub fn spawn<B: Backend + 'static>(
        listener: TcpListener,
        plane: Arc<ControlPlane<B>>,
        limit: ConnLimit,
        cfg: ServerConfig,
        tick: Option<Tick>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let sd = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || accept_loop(listener, plane, limit, cfg, sd, tick))?;
        Ok(TcpServer {
            addr,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; connection threads end within [`POLL_SLICE`]-ish.
    pub fn shutdown(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn wait_readable(fd: i32, timeout: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) };
}

fn accept_loop<B: Backend + 'static>(
    listener: TcpListener,
    plane: Arc<ControlPlane<B>>,
    limit: ConnLimit,
    cfg: ServerConfig,
    shutdown: Arc<AtomicBool>,
    mut tick: Option<Tick>,
) {
    let mut next_sweep = Instant::now() + cfg.sweep_interval;
    let mut refused = 0u64;
    while !shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = now + cfg.sweep_interval;
            plane.sweep(now);
            if let Some(t) = tick.as_mut() {
                t();
            }
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                let Some(place) = limit.try_acquire() else {
                    // Full: closed at once (dropping the stream), counted, logged sparsely.
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(%peer, refused, "control connection limit reached; closing new connections");
                    }
                    continue;
                };
                let plane = plane.clone();
                let cfg = cfg.clone();
                let sd = shutdown.clone();
                let r = std::thread::Builder::new()
                    .name("control-conn".into())
                    .stack_size(CONN_STACK)
                    .spawn(move || {
                        let _place = place;
                        match serve_tcp(stream, &plane, &cfg, &sd) {
                            Ok(()) => tracing::debug!(%peer, "control connection closed"),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "control connection ended")
                            }
                        }
                    });
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot spawn a control connection thread");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = next_sweep.saturating_duration_since(Instant::now());
                wait_readable(listener.as_raw_fd(), left.min(POLL_SLICE));
            }
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "control accept");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnEnd {
    /// Socket error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A deadline passed.
    #[error("{0} deadline passed")]
    Deadline(&'static str),
    /// The peer closed in the middle of a frame.
    #[error("peer closed in the middle of a frame")]
    Truncated,
    /// A length prefix outside 1..=MAX_FRAME.
    #[error(transparent)]
    Frame(#[from] sketchreduce_wire::control::FrameError),
    /// The server is shutting down.
    #[error("server shutting down")]
    Shutdown,
}

/// Reads exactly `buf.len()` bytes before `deadline`. `Ok(false)`: clean EOF before the first
/// byte (only when `eof_ok`).
fn read_by(
    s: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    what: &'static str,
    eof_ok: bool,
    shutdown: &AtomicBool,
) -> Result<bool, ConnEnd> {
    let mut got = 0;
    while got < buf.len() {
        if shutdown.load(Ordering::Relaxed) {
            return Err(ConnEnd::Shutdown);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnEnd::Deadline(what));
        }
        s.set_read_timeout(Some(left.min(POLL_SLICE)))?;
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 && eof_ok => return Ok(false),
            Ok(0) => return Err(ConnEnd::Truncated),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn write_frame(s: &mut TcpStream, json: &str, timeout: Duration) -> Result<(), ConnEnd> {
    let mut out = Vec::with_capacity(4 + json.len());
    sketchreduce_wire::control::encode_frame(json, &mut out)?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&out)?;
    Ok(())
}

/// Serves one TCP control connection to its end.
pub fn serve_tcp<B: Backend>(
    mut s: TcpStream,
    plane: &ControlPlane<B>,
    cfg: &ServerConfig,
    shutdown: &AtomicBool,
) -> Result<(), ConnEnd> {
    s.set_nonblocking(false)?;
    let _ = s.set_nodelay(true);
    let started = Instant::now();
    let end_of_life = started + cfg.max_connection_time;
    let mut session = ServerSession::new(cfg.secret.clone());
    write_frame(&mut s, &session.hello(), cfg.frame_timeout)?;
    let mut body = Vec::new();
    loop {
        // Idle until the first byte of the next frame, then the whole frame within the frame
        // deadline (a slow sender cannot hold a place for long).
        let mut prefix = [0u8; 4];
        let idle = (Instant::now() + cfg.idle_timeout).min(end_of_life);
        if !read_by(&mut s, &mut prefix[..1], idle, "idle", true, shutdown)? {
            return Ok(());
        }
        let frame_deadline = (Instant::now() + cfg.frame_timeout).min(end_of_life);
        read_by(
            &mut s,
            &mut prefix[1..],
            frame_deadline,
            "frame",
            false,
            shutdown,
        )?;
        let n = frame_len(prefix)?;
        body.resize(n, 0);
        read_by(&mut s, &mut body, frame_deadline, "frame", false, shutdown)?;
        let reply = session.handle(&body, |req| plane.handle(req, Instant::now()));
        write_frame(&mut s, &reply.frame, cfg.frame_timeout)?;
        if reply.close {
            return Ok(());
        }
    }
}
