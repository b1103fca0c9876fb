//! The switch's QUIC endpoint: each QUIC datagram is one wire packet, fed to the slot's shard
//! with `from = connection.remote_address()` (the source the bad_source check compares);
//! emitted packets go back as QUIC datagrams to the connection with that remote address, or out
//! of the UDP data socket for addresses not connected by QUIC. Each bidirectional stream is one
//! control connection of protocol v2 (the client speaks first with a `ClientHello`, then the
//! TCP exchange), sharing the TCP endpoint's connection places and deadlines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sketchreduce_control::{ConnLimit, ServerConfig, ServerSession};
use sketchreduce_wire::control::{encode_frame, frame_len, ClientHello, PROTOCOL};

use crate::server::{EmuPlane, QuicSettings, Shared, SwitchError};

/// Canonical form of a peer address (IPv4-mapped IPv6 → IPv4), so QUIC peers match the
/// addresses in job specs.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The QUIC connections by remote address, and the count of failed handshakes.
#[derive(Default)]
pub(crate) struct QuicPeers {
    count: AtomicUsize,
    map: RwLock<HashMap<SocketAddr, quinn::Connection>>,
    handshake_failures: AtomicU64,
}

impl QuicPeers {
    /// Handshakes that failed (see `SwitchHandle::quic_handshake_failures`).
    pub(crate) fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// Whether any QUIC connection is up (lets the UDP path skip the map lookup).
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Sends `data` as a datagram on the connection from `dst`, if there is one.
    pub(crate) fn try_send(&self, dst: SocketAddr, data: &[u8]) -> bool {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        match map.get(&dst) {
            Some(c) => {
                if let Err(e) = c.send_datagram(bytes::Bytes::copy_from_slice(data)) {
                    tracing::debug!(%dst, error = %e, "QUIC datagram not sent");
                }
                true
            }
            None => false,
        }
    }

    fn insert(&self, addr: SocketAddr, c: quinn::Connection) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = map.insert(addr, c) {
            old.close(0u32.into(), b"replaced by a new connection");
        }
        self.count.store(map.len(), Ordering::Relaxed);
    }

    fn remove(&self, addr: SocketAddr, id: usize) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.get(&addr).is_some_and(|c| c.stable_id() == id) {
            map.remove(&addr);
        }
        self.count.store(map.len(), Ordering::Relaxed);
    }
}

pub(crate) struct Started {
    pub(crate) addr: SocketAddr,
    pub(crate) fingerprint: String,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) thread: JoinHandle<()>,
}

/// What a QUIC connection task needs.
struct Ctx {
    shared: Arc<Shared>,
    plane: Arc<EmuPlane>,
    limit: ConnLimit,
    cfg: ServerConfig,
}

/// Binds the QUIC endpoint and starts its runtime thread.
pub(crate) fn start(
    q: &QuicSettings,
    shared: Arc<Shared>,
    plane: Arc<EmuPlane>,
    limit: ConnLimit,
    cfg: ServerConfig,
) -> Result<Started, SwitchError> {
    let ctx = Arc::new(Ctx {
        shared,
        plane,
        limit,
        cfg,
    });
    let id = sketchreduce_quic::load_or_create_identity(&q.cert_dir)?;
    let fingerprint = sketchreduce_quic::fingerprint(&id.cert_der);
    let cfg = match &q.client_allow {
        Some(allowed) => sketchreduce_quic::server_config_with_clients(&id, allowed)?,
        None => sketchreduce_quic::server_config(&id)?,
    };
    let client_certs = q.client_allow.as_ref().map(|a| a.fingerprints().len());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| SwitchError::Io {
            what: "tokio runtime".into(),
            source,
        })?;
    let endpoint = {
        let _g = rt.enter();
        quinn::Endpoint::server(cfg, q.listen).map_err(|source| SwitchError::Io {
            what: format!("bind QUIC {}", q.listen),
            source,
        })?
    };
    let addr = endpoint.local_addr().map_err(|source| SwitchError::Io {
        what: "QUIC local_addr".into(),
        source,
    })?;
    tracing::info!(%addr, %fingerprint, ?client_certs, "QUIC endpoint listening");
    let ep = endpoint.clone();
    let thread = std::thread::Builder::new()
        .name("switch-quic".into())
        .spawn(move || {
            rt.block_on(async move {
                while let Some(incoming) = ep.accept().await {
                    let ctx = ctx.clone();
                    let remote = canonical(incoming.remote_address());
                    tokio::spawn(async move {
                        match incoming.await {
                            Ok(conn) => serve(conn, ctx).await,
                            Err(e) => {
                                ctx.shared
                                    .peers
                                    .handshake_failures
                                    .fetch_add(1, Ordering::Relaxed);
                                // With client certificates required, a failed handshake is
                                // most likely a worker missing from the allow-list: say so
                                // where an operator looks.
                                if client_certs.is_some() {
                                    tracing::info!(%remote, error = %e, "QUIC handshake failed");
                                } else {
                                    tracing::debug!(%remote, error = %e, "QUIC handshake failed");
                                }
                            }
                        }
                    });
                }
                ep.wait_idle().await;
            })
        })
        .map_err(|source| SwitchError::Io {
            what: "spawn QUIC thread".into(),
            source,
        })?;
    Ok(Started {
        addr,
        fingerprint,
        endpoint,
        thread,
    })
}

async fn serve(conn: quinn::Connection, ctx: Arc<Ctx>) {
    let sh = &ctx.shared;
    let addr = canonical(conn.remote_address());
    let id = conn.stable_id();
    tracing::info!(%addr, "QUIC connection");
    sh.peers.insert(addr, conn.clone());
    loop {
        tokio::select! {
            d = conn.read_datagram() => match d {
                Ok(bytes) => {
                    let shard = sh.core.shard_of(&bytes);
                    let sock = &sh.socks[shard];
                    let mut emit = |dst: SocketAddr, out: &[u8]| {
                        if !sh.peers.try_send(dst, out) {
                            if let Err(e) = sock.send_to(out, dst) {
                                tracing::debug!(%dst, error = %e, "UDP send");
                            }
                        }
                    };
                    sh.core.handle(addr, &bytes, &mut emit);
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "QUIC connection closed");
                    break;
                }
            },
            s = conn.accept_bi() => match s {
                Ok((mut send, mut recv)) => {
                    let Some(place) = ctx.limit.try_acquire() else {
                        tracing::debug!(%addr, "control connection limit reached; QUIC stream refused");
                        let _ = send.reset(1u32.into());
                        let _ = recv.stop(1u32.into());
                        continue;
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let _place = place;
                        if let Err(e) = control_stream(&ctx, send, recv).await {
                            tracing::debug!(%addr, error = %e, "QUIC control stream ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "QUIC connection closed");
                    break;
                }
            },
        }
    }
    sh.peers.remove(addr, id);
}

/// Why a QUIC control stream ended early.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("{0} deadline passed")]
    Deadline(&'static str),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Frame(#[from] sketchreduce_wire::control::FrameError),
    #[error("first frame is not a client hello")]
    Hello,
}

/// Reads one frame: the first byte by `idle`, the rest within the frame timeout after it.
/// `Ok(None)`: the client finished the stream between frames.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    idle: Instant,
    frame_timeout: Duration,
    body: &mut Vec<u8>,
) -> Result<Option<()>, StreamEnd> {
    let mut prefix = [0u8; 4];
    let first = tokio::time::timeout_at(idle.into(), recv.read_exact(&mut prefix[..1]))
        .await
        .map_err(|_| StreamEnd::Deadline("idle"))?;
    match first {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let deadline = tokio::time::Instant::now() + frame_timeout;
    tokio::time::timeout_at(deadline, recv.read_exact(&mut prefix[1..]))
        .await
        .map_err(|_| StreamEnd::Deadline("frame"))??;
    let n = frame_len(prefix)?;
    body.resize(n, 0);
    tokio::time::timeout_at(deadline, recv.read_exact(body))
        .await
        .map_err(|_| StreamEnd::Deadline("frame"))??;
    Ok(Some(()))
}

async fn write_frame(
    send: &mut quinn::SendStream,
    json: &str,
    timeout: Duration,
) -> Result<(), StreamEnd> {
    let mut out = Vec::with_capacity(4 + json.len());
    encode_frame(json, &mut out)?;
    tokio::time::timeout(timeout, send.write_all(&out))
        .await
        .map_err(|_| StreamEnd::Deadline("write"))??;
    Ok(())
}

/// One control connection on a QUIC stream: client hello, server hello, then request and
/// response frames as over TCP, with the same deadlines.
async fn control_stream(
    ctx: &Ctx,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), StreamEnd> {
    let cfg = &ctx.cfg;
    let end_of_life = Instant::now() + cfg.max_connection_time;
    let mut body = Vec::new();
    let first = (Instant::now() + cfg.frame_timeout).min(end_of_life);
    if read_frame(&mut recv, first, cfg.frame_timeout, &mut body)
        .await?
        .is_none()
    {
        return Ok(());
    }
    let mut session = ServerSession::new(cfg.secret.clone());
    write_frame(&mut send, &session.hello(), cfg.frame_timeout).await?;
    match serde_json::from_slice::<ClientHello>(&body) {
        Ok(h) if h.hello == PROTOCOL => {}
        _ => {
            // Not a client hello (e.g. a v1 client's request): answer it as the bad request
            // it is (seq 0, bad_request) after the hello, and end the stream.
            let reply = session.handle(&body, |req| ctx.plane.handle(req, Instant::now()));
            write_frame(&mut send, &reply.frame, cfg.frame_timeout).await?;
            let _ = send.finish();
            return Err(StreamEnd::Hello);
        }
    }
    loop {
        let idle = (Instant::now() + cfg.idle_timeout).min(end_of_life);
        if read_frame(&mut recv, idle, cfg.frame_timeout, &mut body)
            .await?
            .is_none()
        {
            break;
        }
        let reply = session.handle(&body, |req| ctx.plane.handle(req, Instant::now()));
        write_frame(&mut send, &reply.frame, cfg.frame_timeout).await?;
        if reply.close {
            break;
        }
    }
    let _ = send.finish();
    Ok(())
}
