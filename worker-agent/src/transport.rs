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
use std::mem::MaybeUninit;
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
}

/// Runs `ep` over `t` until `done(ep)` holds. Every wait is bounded by the endpoint's timer
/// (which includes its worker timeout), so this returns in bounded time whenever the endpoint
/// is a correct sans-I/O machine; as a last resort, a wait with no timer armed is capped at
/// `idle_limit` and reported as an error.
pub fn drive<E: Endpoint, T: Transport + ?Sized>(
    ep: &mut E,
    t: &mut T,
    idle_limit: Duration,
    mut done: impl FnMut(&mut E) -> bool,
) -> Result<(), AgentError> {
    let mut out = vec![0u8; 64 * 1024];
    let mut inb = vec![0u8; 64 * 1024];
    let mut idle_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
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
        if let Some(n) = t.recv(&mut inb, timeout)? {
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

/// Datagrams per `sendmmsg`/`recvmmsg`.
pub const BATCH: usize = 64;
const SLOT_BYTES: usize = 2048;

/// UDP transport: one socket, batched system calls.
pub struct UdpTransport {
    sock: UdpSocket,
    local: SocketAddr,
    control: SocketAddr,
    secret: Option<Arc<Secret>>,
    data_ip: std::net::IpAddr,
    data_port: u16,
    data_ports: u16,
    tx: Vec<u8>,
    tx_len: Vec<usize>,
    tx_dst: Vec<socket2::SockAddr>,
    rx: Vec<u8>,
    rx_len: Vec<usize>,
    rx_next: usize,
    rx_count: usize,
}

impl std::fmt::Debug for UdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpTransport")
            .field("local", &self.local)
            .field("control", &self.control)
            .field("data_port", &self.data_port)
            .field("data_ports", &self.data_ports)
            .finish_non_exhaustive()
    }
}

/// Binds a UDP socket for an agent (large buffers). Bind it before the job spec is built:
/// its address is what the spec must name.
pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, AgentError> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&addr.into())
        .map_err(|e| AgentError::Transport(format!("bind UDP {addr}: {e}")))?;
    Ok(s.into())
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
        Ok(Self::with_ports(
            sock,
            control,
            control.ip(),
            data_port,
            data_ports,
        ))
    }

    /// Wraps a bound socket with known data ports (no control round trip).
    pub fn with_ports(
        sock: UdpSocket,
        control: SocketAddr,
        data_ip: std::net::IpAddr,
        data_port: u16,
        data_ports: u16,
    ) -> Self {
        let local = sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let dummy: socket2::SockAddr = SocketAddr::from(([0, 0, 0, 0], 0)).into();
        let secret = env_secret().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the control secret");
            None
        });
        UdpTransport {
            sock,
            local,
            control,
            secret,
            data_ip,
            data_port,
            data_ports: data_ports.max(1),
            tx: vec![0; BATCH * SLOT_BYTES],
            tx_len: Vec::with_capacity(BATCH),
            tx_dst: vec![dummy; BATCH],
            rx: vec![0; BATCH * SLOT_BYTES],
            rx_len: vec![0; BATCH],
            rx_next: 0,
            rx_count: 0,
        }
    }

    /// Where datagrams for `slot` go.
    pub fn data_addr(&self, slot: u32) -> SocketAddr {
        let port = self.data_port + (slot % self.data_ports as u32) as u16;
        SocketAddr::new(self.data_ip, port)
    }

    fn send_batch(&mut self) -> Result<(), AgentError> {
        let n = self.tx_len.len();
        let mut sent = 0;
        while sent < n {
            let mut iov: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::uninit(); BATCH];
            let mut hdr: [MaybeUninit<libc::mmsghdr>; BATCH] = [MaybeUninit::uninit(); BATCH];
            let k = n - sent;
            for i in 0..k {
                let j = sent + i;
                iov[i].write(libc::iovec {
                    iov_base: self.tx[j * SLOT_BYTES..].as_mut_ptr().cast(),
                    iov_len: self.tx_len[j],
                });
                // SAFETY: zeroed msghdr is valid; pointers set below stay alive for the call.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = self.tx_dst[j].as_ptr() as *mut libc::c_void;
                m.msg_hdr.msg_namelen = self.tx_dst[j].len();
                m.msg_hdr.msg_iov = iov[i].as_mut_ptr();
                m.msg_hdr.msg_iovlen = 1;
                hdr[i].write(m);
            }
            // SAFETY: the first k entries of hdr are initialised and point into live buffers.
            let r = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    hdr.as_mut_ptr().cast(),
                    k as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // The first datagram of the batch was not sent: a full queue, an ICMP
                    // error from an earlier datagram, or a local firewall drop (EPERM from
                    // netfilter). All are loss, which retransmission recovers; skip it.
                    Some(
                        libc::EAGAIN
                        | libc::ECONNREFUSED
                        | libc::ENOBUFS
                        | libc::EPERM
                        | libc::EHOSTUNREACH
                        | libc::ENETUNREACH,
                    ) => {
                        tracing::trace!(error = %e, "datagram not sent");
                        sent += 1;
                        continue;
                    }
                    _ => return Err(AgentError::Transport(format!("sendmmsg: {e}"))),
                }
            }
            sent += (r as usize).max(1);
        }
        self.tx_len.clear();
        Ok(())
    }

    fn recv_batch(&mut self, timeout: Duration) -> Result<(), AgentError> {
        let fd = self.sock.as_raw_fd();
        let mut waited = false;
        loop {
            let mut iov: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::uninit(); BATCH];
            let mut hdr: [MaybeUninit<libc::mmsghdr>; BATCH] = [MaybeUninit::uninit(); BATCH];
            for i in 0..BATCH {
                iov[i].write(libc::iovec {
                    iov_base: self.rx[i * SLOT_BYTES..].as_mut_ptr().cast(),
                    iov_len: SLOT_BYTES,
                });
                // SAFETY: zeroed msghdr is valid (no name buffer: the source is not needed).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov[i].as_mut_ptr();
                m.msg_hdr.msg_iovlen = 1;
                hdr[i].write(m);
            }
            // SAFETY: all BATCH entries are initialised and point into self.rx.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    hdr.as_mut_ptr().cast(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r > 0 {
                for (len, h) in self.rx_len.iter_mut().zip(&hdr).take(r as usize) {
                    // SAFETY: initialised above; the kernel filled msg_len.
                    *len = unsafe { h.assume_init_ref().msg_len } as usize;
                }
                self.rx_next = 0;
                self.rx_count = r as usize;
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {}
                // ICMP port unreachable from an earlier send: not fatal.
                io::ErrorKind::ConnectionRefused => continue,
                _ => return Err(AgentError::Transport(format!("recvmmsg: {e}"))),
            }
            if waited || timeout.is_zero() {
                return Ok(());
            }
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, valid timespec, no signal mask.
            let p = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            if p < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(AgentError::Transport(format!("ppoll: {e}")));
                }
            }
            waited = true;
        }
    }
}

impl Transport for UdpTransport {
    fn send(&mut self, slot: u32, datagram: &[u8]) -> Result<(), AgentError> {
        if datagram.len() > SLOT_BYTES {
            return Err(AgentError::Transport(format!(
                "datagram of {} bytes exceeds {SLOT_BYTES}",
                datagram.len()
            )));
        }
        let j = self.tx_len.len();
        self.tx[j * SLOT_BYTES..j * SLOT_BYTES + datagram.len()].copy_from_slice(datagram);
        self.tx_dst[j] = self.data_addr(slot).into();
        self.tx_len.push(datagram.len());
        if self.tx_len.len() == BATCH {
            self.send_batch()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), AgentError> {
        if !self.tx_len.is_empty() {
            self.send_batch()?;
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, AgentError> {
        if self.rx_next == self.rx_count {
            self.recv_batch(timeout)?;
            if self.rx_next == self.rx_count {
                return Ok(None);
            }
        }
        let i = self.rx_next;
        self.rx_next += 1;
        let n = self.rx_len[i].min(buf.len()).min(SLOT_BYTES);
        buf[..n].copy_from_slice(&self.rx[i * SLOT_BYTES..i * SLOT_BYTES + n]);
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
}
