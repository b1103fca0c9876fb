//! Batched UDP I/O: `recvmmsg`/`sendmmsg` on Linux (one syscall per batch), a plain loop of
//! `recv_from`/`send_to` elsewhere. Buffers are allocated once per batch object; receiving and
//! sending allocate nothing.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::core::MAX_PACKET;

/// Default number of datagrams per batch.
pub const DEFAULT_BATCH: usize = 64;
/// Bytes per datagram buffer (a little above the largest wire packet, 2048 lanes; longer
/// datagrams are reported as empty, hence malformed).
pub const BUF_LEN: usize = MAX_PACKET + 64;

/// Binds a UDP socket with large kernel buffers (`bytes` each way; tries the privileged
/// `SO_*BUFFORCE` first so root is not capped by `net.core.*mem_max`).
pub fn bind_udp(addr: SocketAddr, bytes: usize) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(false);
    }
    set_buffers(&s, bytes);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn set_buffers(s: &socket2::Socket, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let force = |opt: libc::c_int| {
            let v = bytes.min(i32::MAX as usize / 2) as libc::c_int;
            // SAFETY: plain setsockopt with an int option value on a valid fd.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &v as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            r == 0
        };
        // The *FORCE variants (root / CAP_NET_ADMIN) ignore net.core.{r,w}mem_max.
        if !force(libc::SO_RCVBUFFORCE) {
            let _ = s.set_recv_buffer_size(bytes);
        }
        if !force(libc::SO_SNDBUFFORCE) {
            let _ = s.set_send_buffer_size(bytes);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = s.set_recv_buffer_size(bytes);
        let _ = s.set_send_buffer_size(bytes);
    }
}

/// Asks the kernel to report, with each received datagram, the options of its IPv4 header
/// (`IP_RECVOPTS`): [`RecvBatch::has_ip_options`] then tells datagrams with options (IHL ≠ 5)
/// apart, which the switch drops as malformed (docs/wire.md). IPv4 sockets only; on other
/// sockets this does nothing and returns `Ok(false)`.
pub fn report_ip_options(sock: &UdpSocket) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if !sock.local_addr()?.is_ipv4() {
            return Ok(false);
        }
        let one: libc::c_int = 1;
        // SAFETY: plain setsockopt with an int option value on a valid fd.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVOPTS,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = sock;
        Ok(false)
    }
}

/// Sets large buffers on an existing socket.
pub fn set_socket_buffers(sock: &UdpSocket, bytes: usize) {
    let s = socket2::SockRef::from(sock);
    set_buffers(&s, bytes);
}

/// Sets the receive timeout (`None`: block forever).
pub fn set_recv_timeout(sock: &UdpSocket, t: Option<Duration>) -> io::Result<()> {
    sock.set_read_timeout(t)
}

/// Whether an error is a timeout / would-block.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(target_os = "linux")]
mod sys {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

    pub fn to_sockaddr(addr: &SocketAddr, st: &mut libc::sockaddr_storage) -> libc::socklen_t {
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                let sin = unsafe { &mut *(st as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                };
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
                let sin6 = unsafe { &mut *(st as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                sin6.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }

    pub fn from_sockaddr(st: &libc::sockaddr_storage) -> SocketAddr {
        match st.ss_family as libc::c_int {
            libc::AF_INET6 => {
                // SAFETY: family says this is a sockaddr_in6.
                let sin6 = unsafe { &*(st as *const _ as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                match ip.to_ipv4_mapped() {
                    Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, u16::from_be(sin6.sin6_port))),
                    None => SocketAddr::V6(SocketAddrV6::new(
                        ip,
                        u16::from_be(sin6.sin6_port),
                        sin6.sin6_flowinfo,
                        sin6.sin6_scope_id,
                    )),
                }
            }
            _ => {
                // SAFETY: AF_INET (or unset, read as zeros) fits a sockaddr_in.
                let sin = unsafe { &*(st as *const _ as *const libc::sockaddr_in) };
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                    u16::from_be(sin.sin_port),
                ))
            }
        }
    }
}

/// Control-message space per datagram, in u64 words (alignment of `cmsghdr`): enough for
/// `IP_OPTIONS` with the longest IPv4 options (40 bytes), `CMSG_SPACE(40)` = 56 bytes.
#[cfg(target_os = "linux")]
const CTRL_WORDS: usize = 8;

/// Receives up to `capacity` datagrams per call.
pub struct RecvBatch {
    bufs: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<SocketAddr>,
    ip_options: Vec<bool>,
    n: usize,
    #[cfg(target_os = "linux")]
    raw: RawRecv,
}

#[cfg(target_os = "linux")]
struct RawRecv {
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    names: Vec<libc::sockaddr_storage>,
    ctrl: Vec<u64>,
}

// SAFETY: the raw pointers inside are only ever pointing into the batch's own buffers and are
// rebuilt before each use.
#[cfg(target_os = "linux")]
unsafe impl Send for RawRecv {}

impl RecvBatch {
    /// A batch of `capacity` buffers of [`BUF_LEN`] bytes.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RecvBatch {
            bufs: vec![0; capacity * BUF_LEN],
            lens: vec![0; capacity],
            addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0)); capacity],
            ip_options: vec![false; capacity],
            n: 0,
            #[cfg(target_os = "linux")]
            raw: RawRecv {
                // SAFETY: zeroed iovec/mmsghdr/sockaddr_storage are valid (null pointers,
                // zero lengths) and are filled in before use.
                iov: vec![unsafe { std::mem::zeroed() }; capacity],
                hdrs: vec![unsafe { std::mem::zeroed() }; capacity],
                names: vec![unsafe { std::mem::zeroed() }; capacity],
                ctrl: vec![0; capacity * CTRL_WORDS],
            },
        }
    }

    /// Capacity in datagrams.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Receives at least one datagram (blocking according to the socket's timeout), and as
    /// many more as are queued, up to the capacity. Returns how many.
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let cap = self.capacity();
        let r = &mut self.raw;
        for i in 0..cap {
            r.iov[i] = libc::iovec {
                iov_base: self.bufs[i * BUF_LEN..].as_mut_ptr() as *mut libc::c_void,
                iov_len: BUF_LEN,
            };
            let h = &mut r.hdrs[i].msg_hdr;
            h.msg_name = &mut r.names[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut r.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = r.ctrl[i * CTRL_WORDS..].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = CTRL_WORDS * 8;
            h.msg_flags = 0;
            r.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by `self` that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                r.hdrs.as_mut_ptr(),
                cap as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.n = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            // A datagram larger than the buffer was truncated: present it as empty, which
            // every consumer rejects (malformed), instead of as a plausible prefix.
            let truncated = r.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = if truncated {
                0
            } else {
                (r.hdrs[i].msg_len as usize).min(BUF_LEN)
            };
            self.addrs[i] = sys::from_sockaddr(&r.names[i]);
            // IP_RECVOPTS is the only control message asked for: an options message (or a
            // truncated control area) means the IPv4 header had options.
            let h = &r.hdrs[i].msg_hdr;
            let mut opts = h.msg_flags & libc::MSG_CTRUNC != 0;
            // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_* walk within them.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    // Linux labels the message IP_RECVOPTS (ip_cmsg_recv_opts); accept
                    // IP_OPTIONS as well, as some systems use it.
                    if (*c).cmsg_level == libc::IPPROTO_IP
                        && matches!((*c).cmsg_type, libc::IP_RECVOPTS | libc::IP_OPTIONS)
                    {
                        opts = true;
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
            self.ip_options[i] = opts;
        }
        self.n = n;
        Ok(n)
    }

    /// Portable fallback: one `recv_from`, then non-blocking drains.
    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let (len, from) = sock.recv_from(&mut self.bufs[..BUF_LEN])?;
        self.lens[0] = len;
        self.addrs[0] = from;
        self.ip_options[0] = false;
        self.n = 1;
        Ok(1)
    }

    /// Whether datagram `i` of the last receive came with IPv4 header options (reported only
    /// on sockets set up with [`report_ip_options`]).
    #[inline]
    pub fn has_ip_options(&self, i: usize) -> bool {
        self.ip_options[i]
    }

    /// Datagrams in the last receive.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Datagram `i` of the last receive: (source, bytes).
    #[inline]
    pub fn get(&self, i: usize) -> (SocketAddr, &[u8]) {
        (
            self.addrs[i],
            &self.bufs[i * BUF_LEN..i * BUF_LEN + self.lens[i]],
        )
    }

    /// Datagram `i` of the last receive, mutable (for in-place echo).
    #[inline]
    pub fn get_mut(&mut self, i: usize) -> (SocketAddr, &mut [u8]) {
        (
            self.addrs[i],
            &mut self.bufs[i * BUF_LEN..i * BUF_LEN + self.lens[i]],
        )
    }
}

/// Queues up to `capacity` datagrams and sends them with one `sendmmsg`.
pub struct SendBatch {
    bufs: Vec<u8>,
    lens: Vec<usize>,
    dsts: Vec<SocketAddr>,
    order: Vec<u16>,
    n: usize,
    /// Send each flush's datagrams grouped by destination (stable within a destination), so
    /// that a receiver woken by the first of its datagrams finds the rest already queued:
    /// fewer wake-ups and bigger receive batches when a batch fans out to several peers.
    pub group_by_destination: bool,
    /// Datagrams the kernel refused (counted, not retried).
    pub errors: u64,
    #[cfg(target_os = "linux")]
    raw: RawSend,
}

#[cfg(target_os = "linux")]
struct RawSend {
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    names: Vec<libc::sockaddr_storage>,
}

// SAFETY: as for RawRecv.
#[cfg(target_os = "linux")]
unsafe impl Send for RawSend {}

impl SendBatch {
    /// A batch of `capacity` buffers.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u16::MAX as usize + 1);
        SendBatch {
            bufs: vec![0; capacity * BUF_LEN],
            lens: vec![0; capacity],
            dsts: vec![SocketAddr::from(([0, 0, 0, 0], 0)); capacity],
            order: (0..capacity.min(u16::MAX as usize + 1))
                .map(|i| i as u16)
                .collect(),
            n: 0,
            group_by_destination: true,
            errors: 0,
            #[cfg(target_os = "linux")]
            raw: RawSend {
                // SAFETY: as in RecvBatch::new.
                iov: vec![unsafe { std::mem::zeroed() }; capacity],
                hdrs: vec![unsafe { std::mem::zeroed() }; capacity],
                names: vec![unsafe { std::mem::zeroed() }; capacity],
            },
        }
    }

    /// Queued datagrams.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether the batch is full (flush before pushing more).
    pub fn is_full(&self) -> bool {
        self.n == self.lens.len()
    }

    /// Queues a copy of `data` for `dst`, flushing first through `sock` if the batch is full.
    /// `data` longer than [`BUF_LEN`] is truncated (never happens for wire packets).
    #[inline]
    pub fn push(&mut self, sock: &UdpSocket, dst: SocketAddr, data: &[u8]) {
        if self.is_full() {
            self.flush(sock);
        }
        let len = data.len().min(BUF_LEN);
        let i = self.n;
        self.bufs[i * BUF_LEN..i * BUF_LEN + len].copy_from_slice(&data[..len]);
        self.lens[i] = len;
        self.dsts[i] = dst;
        self.n += 1;
    }

    /// Reserves the next buffer for `dst` and returns it (length [`BUF_LEN`]) for the caller to
    /// fill; `commit(len)` must follow. Flushes first if full.
    #[inline]
    pub fn slot(&mut self, sock: &UdpSocket, dst: SocketAddr) -> &mut [u8] {
        if self.is_full() {
            self.flush(sock);
        }
        let i = self.n;
        self.dsts[i] = dst;
        &mut self.bufs[i * BUF_LEN..(i + 1) * BUF_LEN]
    }

    /// Commits the buffer returned by [`SendBatch::slot`] with `len` bytes.
    #[inline]
    pub fn commit(&mut self, len: usize) {
        self.lens[self.n] = len.min(BUF_LEN);
        self.n += 1;
    }

    /// Sends everything queued. Returns the number of datagrams the kernel accepted.
    #[cfg(target_os = "linux")]
    pub fn flush(&mut self, sock: &UdpSocket) -> usize {
        use std::os::fd::AsRawFd;
        let n = self.n;
        if n == 0 {
            return 0;
        }
        let order = &mut self.order[..n];
        for (k, o) in order.iter_mut().enumerate() {
            *o = k as u16;
        }
        if self.group_by_destination {
            let dsts = &self.dsts;
            order.sort_unstable_by_key(|&i| (dsts[i as usize], i));
        }
        let r = &mut self.raw;
        for (i, &src) in order.iter().enumerate() {
            let src = src as usize;
            r.iov[i] = libc::iovec {
                iov_base: self.bufs[src * BUF_LEN..].as_mut_ptr() as *mut libc::c_void,
                iov_len: self.lens[src],
            };
            let namelen = sys::to_sockaddr(&self.dsts[src], &mut r.names[i]);
            let h = &mut r.hdrs[i].msg_hdr;
            h.msg_name = &mut r.names[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = namelen;
            h.msg_iov = &mut r.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let fd = sock.as_raw_fd();
        let mut done = 0;
        let mut sent = 0;
        while done < n {
            // SAFETY: headers [done, n) point into buffers owned by `self`.
            let k = unsafe {
                libc::sendmmsg(
                    fd,
                    r.hdrs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if k < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() == io::ErrorKind::WouldBlock {
                    std::thread::yield_now();
                    continue;
                }
                // The first remaining datagram failed (e.g. unreachable address): skip it.
                self.errors += 1;
                done += 1;
            } else {
                done += k as usize;
                sent += k as usize;
            }
        }
        self.n = 0;
        sent
    }

    /// Portable fallback: one `send_to` per datagram.
    #[cfg(not(target_os = "linux"))]
    pub fn flush(&mut self, sock: &UdpSocket) -> usize {
        let mut sent = 0;
        for i in 0..self.n {
            match sock.send_to(
                &self.bufs[i * BUF_LEN..i * BUF_LEN + self.lens[i]],
                self.dsts[i],
            ) {
                Ok(_) => sent += 1,
                Err(_) => self.errors += 1,
            }
        }
        self.n = 0;
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_roundtrip() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let b = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut sb = SendBatch::new(4);
        for i in 0..10u8 {
            sb.push(&a, b.local_addr().unwrap(), &[i; 40]);
        }
        sb.flush(&a);
        let mut rb = RecvBatch::new(8);
        let mut got = Vec::new();
        while got.len() < 10 {
            let n = rb.recv(&b).unwrap();
            for i in 0..n {
                let (from, d) = rb.get(i);
                assert_eq!(from, a.local_addr().unwrap());
                assert_eq!(d.len(), 40);
                got.push(d[0]);
            }
        }
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
    }
}
