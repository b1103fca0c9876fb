//! Transports: thin I/O shells around the sans-I/O machines, and the blocking driver loop.
//!
//! - [`UdpTransport`]: one UDP socket, batched with `sendmmsg`/`recvmmsg`; slot `s` goes to
//!   `data_port + s % data_ports` of the switch (learnt from its control endpoint's `Info`).
//! - [`crate::quic::QuicTransport`]: QUIC datagrams for data, bidirectional streams for
//!   control.
//! - [`Lossy`]: a seeded loss injector around any transport (both directions), for loopback
//!   experiments.
//! - `rdma` (cargo feature): see [`crate::rdma`].

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sketchreduce_control::Secret;
use sketchreduce_wire::control::{Request, Response};

use crate::error::AgentError;
use crate::sim::SplitMix64;
use crate::Endpoint;

/// Timeout of control requests.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the blocking driver needs from a network.
pub trait Transport {
    /// Queues (or sends) one datagram for absolute slot `slot`.
    fn send(&mut self, slot: u32, datagram: &[u8]) -> Result<(), AgentError>;
    /// Sends everything queued.
    fn flush(&mut self) -> Result<(), AgentError> {
        Ok(())
    }
    /// Waits at most `timeout` for one datagram; `Ok(None)` on timeout.
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, AgentError>;
    /// One request to the switch's control endpoint (refusals are `Ok(Response::Error)`).
    fn control(&mut self, req: &Request) -> Result<Response, AgentError>;
    /// The local address results are sent to (what the job spec must name for this rank).
    fn local_addr(&self) -> SocketAddr;
    /// Short name ("udp", "quic", ...).
    fn name(&self) -> &'static str;
    /// Watches extra file descriptors while waiting for datagrams (see [`Interrupt`]);
    /// transports that cannot wait on them ignore this.
    fn set_interrupt(&mut self, _interrupt: Option<Interrupt>) {}
    /// Re-arms watched descriptors that [`Interrupt::check`] declared harmless (called at
    /// the start of each operation).
    fn rearm_interrupt(&mut self) {}
}

/// File descriptors outside the aggregation whose activity matters to it, e.g. the
/// collectives' TCP connections to neighbouring ranks: when one becomes readable or hangs
/// up, `check(i)` (for `fds[i]`) classifies it (see [`InterruptEvent`]); `None` means the
/// activity is harmless (a neighbour already sending the next operation's data) and the
/// descriptor is ignored until [`Transport::rearm_interrupt`].
pub struct Interrupt {
    /// Descriptors to watch.
    pub fds: Vec<std::os::fd::RawFd>,
    /// Classifies activity on `fds[i]`.
    pub check: Box<dyn FnMut(usize) -> Option<InterruptEvent> + Send>,
}

/// What activity on a watched descriptor means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterruptEvent {
    /// The worker of this rank closed its connection: it exited. That is only an error if
    /// the operation still needs its contribution, which the agent checks with PROBEs
    /// ([`crate::Endpoint::peer_gone`]); a rank that finished its last operation and left
    /// early is fine.
    Closed {
        /// The rank that left.
        rank: u8,
    },
    /// Another rank failed and says why: fail the operation at once.
    Abort(String),
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt").field("fds", &self.fds).finish()
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn send(&mut self, slot: u32, datagram: &[u8]) -> Result<(), AgentError> {
        (**self).send(slot, datagram)
    }
    fn flush(&mut self) -> Result<(), AgentError> {
        (**self).flush()
    }
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, AgentError> {
        (**self).recv(buf, timeout)
    }
    fn control(&mut self, req: &Request) -> Result<Response, AgentError> {
        (**self).control(req)
    }
    fn local_addr(&self) -> SocketAddr {
        (**self).local_addr()
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        (**self).set_interrupt(interrupt)
    }
    fn rearm_interrupt(&mut self) {
        (**self).rearm_interrupt()
    }
}

/// Runs `ep` over `t` until `done(ep)` holds. Every wait is bounded by the endpoint's timer
/// (which includes its worker timeout), so this returns in bounded time whenever the endpoint
/// is a correct sans-I/O machine; as a last resort, a wait with no timer armed is capped at
/// `idle_limit` and reported as an error.
pub fn drive<E: Endpoint, T: Transport + ?Sized>(
    ep: &mut E,
    t: &mut T,
    idle_limit: Duration,
    done: impl FnMut(&mut E) -> bool,
) -> Result<(), AgentError> {
    drive_with(ep, t, idle_limit, done, |_| {})
}

/// [`drive`], calling `prepare(ep)` before every round of transmissions (e.g. to produce the
/// next chunks of a lazily filled stream just before they are sent).
pub fn drive_with<E: Endpoint, T: Transport + ?Sized>(
    ep: &mut E,
    t: &mut T,
    idle_limit: Duration,
    mut done: impl FnMut(&mut E) -> bool,
    mut prepare: impl FnMut(&mut E),
) -> Result<(), AgentError> {
    let mut out = vec![0u8; 64 * 1024];
    let mut inb = vec![0u8; 64 * 1024];
    let mut idle_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        prepare(ep);
        while let Some(tx) = ep.poll_transmit(now, &mut out) {
            t.send(tx.slot, &out[..tx.len])?;
        }
        t.flush()?;
        if done(ep) {
            return Ok(());
        }
        let timeout = match ep.poll_timeout() {
            Some(at) => {
                idle_since = None;
                at.saturating_duration_since(Instant::now())
            }
            None => {
                let since = *idle_since.get_or_insert(now);
                if now.duration_since(since) > idle_limit {
                    return Err(AgentError::Transport(format!(
                        "no progress and no timer for {idle_limit:?}"
                    )));
                }
                Duration::from_millis(10)
            }
        };
        let got = match t.recv(&mut inb, timeout) {
            Err(AgentError::PeerClosed { rank }) => {
                ep.peer_gone(Instant::now(), rank);
                continue;
            }
            other => other?,
        };
        if let Some(n) = got {
            let now = Instant::now();
            ep.handle_datagram(now, &inb[..n]);
            // Drain what is already there before transmitting again.
            for _ in 0..256 {
                match t.recv(&mut inb, Duration::ZERO)? {
                    Some(n) => ep.handle_datagram(now, &inb[..n]),
                    None => break,
                }
            }
        }
    }
}

/// The control secret from the environment, if any.
pub(crate) fn env_secret() -> Result<Option<Arc<Secret>>, AgentError> {
    Secret::from_env()
        .map(|s| s.map(Arc::new))
        .map_err(|e| AgentError::Config(e.to_string()))
}

/// Receive buffers per `recvmmsg` (each may hold many datagrams coalesced by GRO).
pub const BATCH: usize = 32;
/// Bytes of one receive buffer: the largest GRO-coalesced read the kernel delivers.
const RX_BUF: usize = 64 * 1024;
/// Largest GSO send: the kernel limit on one UDP super-datagram (64 KiB minus headers).
const GSO_BYTES: usize = 65_000;
/// Bytes queued before `send` flushes on its own.
const TX_LIMIT: usize = 1 << 20;

/// Consecutive queued datagrams with one destination and one length: sent as one GSO
/// `sendmsg` (the kernel cuts it into datagrams late, or not at all until the receiver's GRO).
#[derive(Debug, Clone, Copy)]
struct TxGroup {
    dst: SocketAddr,
    start: usize,
    seg: usize,
    count: usize,
}

/// UDP transport: one socket; sends batched with UDP GSO and receives with UDP GRO where the
/// kernel offers them (quinn-udp), so a window of datagrams costs a few system calls and a
/// few trips through the network stack instead of one per datagram.
pub struct UdpTransport {
    sock: UdpSocket,
    state: quinn_udp::UdpSocketState,
    local: SocketAddr,
    control: SocketAddr,
    secret: Option<Arc<Secret>>,
    data_ip: std::net::IpAddr,
    data_port: u16,
    data_ports: u16,
    tx: Vec<u8>,
    groups: Vec<TxGroup>,
    rx: Vec<Vec<u8>>,
    meta: Vec<quinn_udp::RecvMeta>,
    /// Datagrams received but not yet handed out: (buffer, offset, length).
    ready: std::collections::VecDeque<(usize, usize, usize)>,
    interrupt: Option<Interrupt>,
    /// Per interrupt descriptor: still watched in this operation.
    armed: Vec<bool>,
    /// Datagrams dropped because they did not come from the switch's data ports.
    foreign: u64,
}

impl std::fmt::Debug for UdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpTransport")
            .field("local", &self.local)
            .field("control", &self.control)
            .field("data_port", &self.data_port)
            .field("data_ports", &self.data_ports)
            .field("gso_segments", &self.state.max_gso_segments())
            .finish_non_exhaustive()
    }
}

/// Binds a UDP socket for an agent (large buffers). Bind it before the job spec is built:
/// its address is what the spec must name.
pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, AgentError> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(16 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&addr.into())
        .map_err(|e| AgentError::Transport(format!("bind UDP {addr}: {e}")))?;
    Ok(s.into())
}

/// The local IP address the kernel would use to reach `dst` (a UDP `connect` picks the
/// route without sending anything). An agent binds to it so that the address it registers is
/// the one its datagrams really come from (binding `0.0.0.0` would register an address the
/// switch cannot send results to).
pub fn local_ip_towards(dst: SocketAddr) -> Result<std::net::IpAddr, AgentError> {
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let probe = UdpSocket::bind(any)?;
    probe
        .connect(dst)
        .map_err(|e| AgentError::Transport(format!("no route to the switch {dst}: {e}")))?;
    Ok(probe.local_addr()?.ip())
}

/// The MTU of the route to `dst` as the kernel knows it (`IP_MTU` of a connected UDP socket):
/// what sizes an agent's packets. Falls back to 1500 where the kernel cannot tell.
pub fn path_mtu_towards(dst: SocketAddr) -> usize {
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let probe = match UdpSocket::bind(any).and_then(|s| s.connect(dst).map(|_| s)) {
        Ok(s) => s,
        Err(_) => return 1500,
    };
    let (level, name) = match dst {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd, an int-sized out buffer and its length.
    let r = unsafe {
        libc::getsockopt(
            probe.as_raw_fd(),
            level,
            name,
            &mut mtu as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r == 0 && mtu >= 576 {
        mtu as usize
    } else {
        1500
    }
}

/// What woke [`wait_fd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The main descriptor is ready (or the wait timed out / was interrupted by a signal).
    Main(bool),
    /// Extra descriptor `i` is readable or hung up.
    Extra(usize),
}

/// Waits until `fd` is ready for `events`, one of `extra` is readable or hung up, or
/// `timeout` passes.
fn wait_fd(
    fd: i32,
    events: libc::c_short,
    extra: &[i32],
    timeout: Duration,
) -> Result<Wake, AgentError> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    let mut pfds: Vec<libc::pollfd> = std::iter::once(fd)
        .chain(extra.iter().copied())
        .map(|fd| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    for p in pfds.iter_mut().skip(1) {
        p.events = libc::POLLIN;
    }
    // SAFETY: `pfds` is a valid array of pollfds, the timespec is valid, no signal mask.
    let p = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if p < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(AgentError::Transport(format!("ppoll: {e}")));
        }
        return Ok(Wake::Main(false));
    }
    match pfds.iter().skip(1).position(|p| p.revents != 0) {
        Some(i) => Ok(Wake::Extra(i)),
        None => Ok(Wake::Main(pfds[0].revents != 0)),
    }
}

impl UdpTransport {
    /// Wraps a bound socket and asks the switch's control endpoint for its data ports. The
    /// control secret comes from the environment (`SKETCHREDUCE_SECRET_FILE` or
    /// `SKETCHREDUCE_SECRET`).
    pub fn new(sock: UdpSocket, control: SocketAddr) -> Result<Self, AgentError> {
        let secret = env_secret()?;
        let (data_port, data_ports) = match sketchreduce_control::client::call(
            control,
            secret.clone(),
            &Request::Info {},
            CONTROL_TIMEOUT,
        ) {
            Ok(Response::Info(i)) => (i.data_port, i.data_ports.max(1)),
            Ok(other) => {
                return Err(AgentError::Refused(format!(
                    "unexpected answer to Info from {control}: {other:?}"
                )))
            }
            Err(e) => {
                return Err(AgentError::Transport(format!(
                    "switch control endpoint {control}: {e}"
                )))
            }
        };
        let mut t = Self::with_ports(sock, control, control.ip(), data_port, data_ports)?;
        t.secret = secret;
        Ok(t)
    }

    /// Wraps a bound socket with known data ports (no control round trip).
    pub fn with_ports(
        sock: UdpSocket,
        control: SocketAddr,
        data_ip: std::net::IpAddr,
        data_port: u16,
        data_ports: u16,
    ) -> Result<Self, AgentError> {
        let local = sock.local_addr()?;
        let state = quinn_udp::UdpSocketState::new((&sock).into())?;
        let secret = env_secret()?;
        Ok(UdpTransport {
            sock,
            state,
            local,
            control,
            secret,
            data_ip,
            data_port,
            data_ports: data_ports.max(1),
            tx: Vec::with_capacity(TX_LIMIT + GSO_BYTES),
            groups: Vec::new(),
            rx: (0..BATCH).map(|_| vec![0u8; RX_BUF]).collect(),
            meta: vec![quinn_udp::RecvMeta::default(); BATCH],
            ready: std::collections::VecDeque::new(),
            interrupt: None,
            armed: Vec::new(),
            foreign: 0,
        })
    }

    /// Where datagrams for `slot` go.
    pub fn data_addr(&self, slot: u32) -> SocketAddr {
        let port = self.data_port + (slot % self.data_ports as u32) as u16;
        SocketAddr::new(self.data_ip, port)
    }

    fn interrupt_fds(&self) -> Vec<i32> {
        self.interrupt.as_ref().map_or_else(Vec::new, |i| {
            i.fds
                .iter()
                .zip(&self.armed)
                .filter(|(_, a)| **a)
                .map(|(fd, _)| *fd)
                .collect()
        })
    }

    /// Activity on interrupt descriptor `fd`: fail, or stop watching it for this operation.
    fn on_interrupt(&mut self, fd: i32) -> Result<(), AgentError> {
        let Some(int) = self.interrupt.as_mut() else {
            return Ok(());
        };
        let Some(i) = int.fds.iter().position(|&f| f == fd) else {
            return Ok(());
        };
        let ev = (int.check)(i);
        if !matches!(ev, Some(InterruptEvent::Abort(_))) {
            // A closed connection stays readable: look at it once per operation.
            self.armed[i] = false;
        }
        match ev {
            Some(InterruptEvent::Abort(reason)) => {
                Err(AgentError::Interrupted { watch: i, reason })
            }
            Some(InterruptEvent::Closed { rank }) => Err(AgentError::PeerClosed { rank }),
            None => Ok(()),
        }
    }

    /// Datagrams dropped so far because they did not come from the switch's data ports.
    pub fn foreign_datagrams(&self) -> u64 {
        self.foreign
    }

    /// Datagrams the kernel accepts per GSO send (1 without GSO).
    pub fn gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn send_group(&mut self, g: TxGroup) -> Result<(), AgentError> {
        let contents = &self.tx[g.start..g.start + g.seg * g.count];
        let t = quinn_udp::Transmit {
            destination: g.dst,
            ecn: None,
            contents,
            segment_size: (g.count > 1).then_some(g.seg),
            src_ip: None,
        };
        loop {
            match self.state.try_send((&self.sock).into(), &t) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A full send buffer: wait for room rather than lose a whole GSO batch.
                    let wake = wait_fd(
                        self.sock.as_raw_fd(),
                        libc::POLLOUT,
                        &[],
                        Duration::from_millis(50),
                    )?;
                    if wake == Wake::Main(false) {
                        tracing::trace!("send buffer stayed full; dropping a batch");
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    return Err(AgentError::Transport(format!(
                        "datagrams of {} bytes to {} exceed the path MTU: use fewer lanes per packet (or a larger MTU)",
                        g.seg, g.dst
                    )));
                }
                // An ICMP error from an earlier datagram, or a local firewall drop: loss,
                // which retransmission recovers.
                Err(e) => {
                    tracing::trace!(error = %e, "datagrams not sent");
                    return Ok(());
                }
            }
        }
    }

    fn recv_batch(&mut self, timeout: Duration) -> Result<(), AgentError> {
        let mut waited = false;
        loop {
            let mut bufs: Vec<io::IoSliceMut<'_>> =
                self.rx.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
            match self
                .state
                .recv((&self.sock).into(), &mut bufs, &mut self.meta)
            {
                Ok(n) => {
                    for (i, m) in self.meta.iter().take(n).enumerate() {
                        // Only the switch's data ports answer a worker: anything else is
                        // off-path (a forged RESULT must not even reach the state machine).
                        let port = m.addr.port();
                        if m.addr.ip() != self.data_ip
                            || port < self.data_port
                            || port - self.data_port >= self.data_ports
                        {
                            self.foreign += 1;
                            tracing::trace!(from = %m.addr, "datagram not from the switch dropped");
                            continue;
                        }
                        let stride = m.stride.max(1);
                        let mut off = 0;
                        while off < m.len {
                            let len = stride.min(m.len - off);
                            self.ready.push_back((i, off, len));
                            off += stride;
                        }
                    }
                    return Ok(());
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    // ICMP port unreachable from an earlier send: not fatal.
                    io::ErrorKind::ConnectionRefused => continue,
                    io::ErrorKind::WouldBlock => {}
                    _ => return Err(AgentError::Transport(format!("recvmmsg: {e}"))),
                },
            }
            if waited || timeout.is_zero() {
                return Ok(());
            }
            let active: Vec<i32> = self.interrupt_fds();
            if let Wake::Extra(i) = wait_fd(self.sock.as_raw_fd(), libc::POLLIN, &active, timeout)?
            {
                self.on_interrupt(active[i])?;
                continue;
            }
            waited = true;
        }
    }
}

impl Transport for UdpTransport {
    fn send(&mut self, slot: u32, datagram: &[u8]) -> Result<(), AgentError> {
        let dst = self.data_addr(slot);
        let len = datagram.len();
        let max_segs = self.state.max_gso_segments().max(1);
        let joins = self.groups.last().is_some_and(|g| {
            g.dst == dst && g.seg == len && g.count < max_segs && (g.count + 1) * len <= GSO_BYTES
        });
        if joins {
            if let Some(g) = self.groups.last_mut() {
                g.count += 1;
            }
        } else {
            self.groups.push(TxGroup {
                dst,
                start: self.tx.len(),
                seg: len,
                count: 1,
            });
        }
        self.tx.extend_from_slice(datagram);
        if self.tx.len() >= TX_LIMIT {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), AgentError> {
        let groups = std::mem::take(&mut self.groups);
        let mut res = Ok(());
        for g in &groups {
            res = self.send_group(*g);
            if res.is_err() {
                break;
            }
        }
        self.groups = groups;
        self.groups.clear();
        self.tx.clear();
        res
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, AgentError> {
        if self.ready.is_empty() {
            self.recv_batch(timeout)?;
        }
        let Some((i, off, len)) = self.ready.pop_front() else {
            return Ok(None);
        };
        let n = len.min(buf.len());
        buf[..n].copy_from_slice(&self.rx[i][off..off + n]);
        Ok(Some(n))
    }

    fn control(&mut self, req: &Request) -> Result<Response, AgentError> {
        sketchreduce_control::client::call(self.control, self.secret.clone(), req, CONTROL_TIMEOUT)
            .map_err(|e| {
                AgentError::Transport(format!("switch control endpoint {}: {e}", self.control))
            })
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn name(&self) -> &'static str {
        "udp"
    }

    fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.armed = vec![true; interrupt.as_ref().map_or(0, |i| i.fds.len())];
        self.interrupt = interrupt;
    }

    fn rearm_interrupt(&mut self) {
        self.armed.iter_mut().for_each(|a| *a = true);
    }
}

/// Seeded loss injector around a transport: drops each sent and each received datagram with
/// probability `loss` (control requests are never dropped).
#[derive(Debug)]
pub struct Lossy<T> {
    inner: T,
    loss: f64,
    rng: SplitMix64,
    /// Datagrams dropped on send.
    pub dropped_out: u64,
    /// Datagrams dropped on receive.
    pub dropped_in: u64,
}

impl<T> Lossy<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, loss: f64, seed: u64) -> Self {
        Lossy {
            inner,
            loss,
            rng: SplitMix64(seed),
            dropped_out: 0,
            dropped_in: 0,
        }
    }
}

impl<T: Transport> Transport for Lossy<T> {
    fn send(&mut self, slot: u32, datagram: &[u8]) -> Result<(), AgentError> {
        if self.rng.next_f64() < self.loss {
            self.dropped_out += 1;
            return Ok(());
        }
        self.inner.send(slot, datagram)
    }
    fn flush(&mut self) -> Result<(), AgentError> {
        self.inner.flush()
    }
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inner.recv(buf, left)? {
                Some(n) => {
                    if self.rng.next_f64() < self.loss {
                        self.dropped_in += 1;
                        continue;
                    }
                    return Ok(Some(n));
                }
                None => return Ok(None),
            }
        }
    }
    fn control(&mut self, req: &Request) -> Result<Response, AgentError> {
        self.inner.control(req)
    }
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.inner.set_interrupt(interrupt)
    }
    fn rearm_interrupt(&mut self) {
        self.inner.rearm_interrupt()
    }
}
