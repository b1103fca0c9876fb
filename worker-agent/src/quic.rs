//! QUIC transport: each QUIC datagram is one wire packet; control requests go over a
//! bidirectional stream (see `sketchreduce_quic`). The switch's certificate is pinned by
//! fingerprint; the worker presents its own certificate when [`QuicConfig::identity`] is set
//! (needed when the switch runs with an allow-list of client certificates). A small tokio
//! runtime (one worker thread) drives the connection in the background; the agent's API stays
//! blocking.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use sketchreduce_control::Secret;
use sketchreduce_wire::control::{Request, Response};

use crate::error::AgentError;
use crate::transport::{env_secret, Transport, CONTROL_TIMEOUT};

pub use sketchreduce_quic::Identity;

/// How a worker connects to the switch's QUIC endpoint.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// The switch's QUIC endpoint.
    pub server: SocketAddr,
    /// SHA-256 of the switch's certificate (64 hex digits), as the switch prints it.
    pub fingerprint: String,
    /// Client certificate to present (e.g. from `sketchreduce_quic::load_or_create_identity`);
    /// `None`: none. A switch with an allow-list refuses workers whose certificate it does not
    /// list; that surfaces as a connection error at the first control request or datagram,
    /// since a TLS 1.3 client completes its side of the handshake before the server checks
    /// the client certificate.
    pub identity: Option<Identity>,
}

/// A QUIC connection to the switch.
pub struct QuicTransport {
    rt: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    local: SocketAddr,
    secret: Option<Arc<Secret>>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("local", &self.local)
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

fn terr(what: &str) -> impl Fn(std::fmt::Arguments<'_>) -> AgentError + '_ {
    move |a| AgentError::Transport(format!("QUIC {what}: {a}"))
}

impl QuicTransport {
    /// Connects from the bound `sock` (whose address the job spec names for this rank) to the
    /// switch's QUIC endpoint `server`, accepting only the certificate with SHA-256
    /// `fingerprint`, presenting no client certificate.
    pub fn connect(
        sock: UdpSocket,
        server: SocketAddr,
        fingerprint: &str,
    ) -> Result<Self, AgentError> {
        Self::connect_with(
            sock,
            &QuicConfig {
                server,
                fingerprint: fingerprint.to_string(),
                identity: None,
            },
        )
    }

    /// Connects from the bound `sock` (whose address the job spec names for this rank) as
    /// `cfg` says.
    pub fn connect_with(sock: UdpSocket, cfg: &QuicConfig) -> Result<Self, AgentError> {
        let server = cfg.server;
        let local = sock.local_addr()?;
        let secret = env_secret()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| terr("runtime")(format_args!("{e}")))?;
        let client = match &cfg.identity {
            Some(id) => sketchreduce_quic::client_config_with_identity(&cfg.fingerprint, id),
            None => sketchreduce_quic::client_config(&cfg.fingerprint),
        }
        .map_err(|e| terr("client config")(format_args!("{e}")))?;
        let endpoint = {
            let _g = rt.enter();
            let mut ep = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                sock,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(|e| terr("endpoint")(format_args!("{e}")))?;
            ep.set_default_client_config(client);
            ep
        };
        let connecting = {
            let _g = rt.enter();
            endpoint
                .connect(server, sketchreduce_quic::SERVER_NAME)
                .map_err(|e| terr("connect")(format_args!("{server}: {e}")))?
        };
        let conn = rt
            .block_on(async { tokio::time::timeout(CONTROL_TIMEOUT, connecting).await })
            .map_err(|_| terr("handshake")(format_args!("{server}: timed out")))?
            .map_err(|e| terr("handshake")(format_args!("{server}: {e}")))?;
        Ok(QuicTransport {
            rt,
            endpoint,
            conn,
            local,
            secret,
        })
    }

    /// Largest datagram the connection accepts now.
    pub fn max_datagram(&self) -> Option<usize> {
        self.conn.max_datagram_size()
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"done");
        let ep = self.endpoint.clone();
        let _ = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), ep.wait_idle()).await
        });
    }
}

impl Transport for QuicTransport {
    fn send(&mut self, _slot: u32, datagram: &[u8]) -> Result<(), AgentError> {
        match self
            .conn
            .send_datagram(bytes::Bytes::copy_from_slice(datagram))
        {
            Ok(()) => Ok(()),
            Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                Err(terr("connection lost")(format_args!("{e}")))
            }
            Err(e) => Err(terr("send datagram")(format_args!("{e}"))),
        }
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, AgentError> {
        let conn = &self.conn;
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, conn.read_datagram()).await });
        match r {
            Err(_) => Ok(None),
            Ok(Ok(b)) => {
                let n = b.len().min(buf.len());
                buf[..n].copy_from_slice(&b[..n]);
                Ok(Some(n))
            }
            Ok(Err(e)) => Err(terr("connection lost")(format_args!("{e}"))),
        }
    }

    fn control(&mut self, req: &Request) -> Result<Response, AgentError> {
        let conn = &self.conn;
        let secret = self.secret.clone();
        self.rt
            .block_on(async {
                tokio::time::timeout(
                    CONTROL_TIMEOUT,
                    sketchreduce_quic::control_call(conn, secret, req),
                )
                .await
            })
            .map_err(|_| terr("control")(format_args!("timed out")))?
            .map_err(|e| match (&e, conn.close_reason()) {
                // A stream error only says "connection lost"; the connection's close reason
                // says why (e.g. the switch refused this worker's client certificate).
                (sketchreduce_quic::QuicError::Connection(_), _) | (_, None) => {
                    terr("control")(format_args!("{e}"))
                }
                (_, Some(why)) => terr("control")(format_args!("{e}: {why}")),
            })
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn name(&self) -> &'static str {
        "quic"
    }
}
