//! The switch's QUIC endpoint: each QUIC datagram is one wire packet, fed to the slot's shard
//! with `from = connection.remote_address()`; emitted packets go back as QUIC datagrams to the
//! connection with that remote address, or out of the UDP data socket for addresses not
//! connected by QUIC. Control requests arrive one per bidirectional stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use sketchreduce_wire::control::write_frame;
use sketchreduce_wire::{ControlRequest, ControlResponse};

use crate::server::{QuicSettings, Shared, SwitchError};

/// Canonical form of a peer address (IPv4-mapped IPv6 → IPv4), so QUIC peers match the
/// addresses in job specs.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The QUIC connections by remote address.
#[derive(Default)]
pub(crate) struct QuicPeers {
    count: AtomicUsize,
    map: RwLock<HashMap<SocketAddr, quinn::Connection>>,
}

impl QuicPeers {
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

/// Binds the QUIC endpoint and starts its runtime thread.
pub(crate) fn start(q: &QuicSettings, shared: Arc<Shared>) -> Result<Started, SwitchError> {
    let id = sketchreduce_quic::load_or_create_identity(&q.cert_dir)?;
    let fingerprint = sketchreduce_quic::fingerprint(&id.cert_der);
    let cfg = sketchreduce_quic::server_config(&id)?;
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
    tracing::info!(%addr, %fingerprint, "QUIC endpoint listening");
    let ep = endpoint.clone();
    let thread = std::thread::Builder::new()
        .name("switch-quic".into())
        .spawn(move || {
            rt.block_on(async move {
                while let Some(incoming) = ep.accept().await {
                    let sh = shared.clone();
                    tokio::spawn(async move {
                        match incoming.await {
                            Ok(conn) => serve(conn, sh).await,
                            Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
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

async fn serve(conn: quinn::Connection, sh: Arc<Shared>) {
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
                Ok((send, recv)) => {
                    let sh = sh.clone();
                    tokio::spawn(async move {
                        if let Err(e) = control_stream(&sh, send, recv).await {
                            tracing::debug!(error = %e, "QUIC control stream");
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

async fn control_stream(
    sh: &Shared,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), sketchreduce_quic::QuicError> {
    let resp = match sketchreduce_quic::read_frame_async::<ControlRequest>(&mut recv).await {
        Ok(req) => sh.answer(req),
        Err(e) => ControlResponse::Error(e.to_string()),
    };
    let mut buf = Vec::new();
    write_frame(&mut buf, &resp)?;
    send.write_all(&buf).await?;
    send.finish()?;
    Ok(())
}
