//! QUIC configuration shared by the sketchreduce switch (server) and the worker agent (client).
//!
//! Wire usage over QUIC (see `docs/wire.md`, "QUIC transport"):
//! - every QUIC **datagram** carries exactly one wire packet (aggregation header + lanes), with
//!   the same semantics as a UDP datagram to the data ports;
//! - every **bidirectional stream** is one control connection of protocol v2 (docs/wire.md):
//!   the client sends a client hello frame first (a QUIC stream is invisible to the server until
//!   the client sends on it), the server answers with its hello (nonce), then signed request and
//!   response frames follow as over TCP ([`control_call`] does one request per stream).
//!
//! Authentication is by certificate pinning: the switch generates a self-signed certificate on
//! first use ([`load_or_create_identity`]) and prints its [`fingerprint`]; workers accept
//! exactly that certificate ([`client_config`]). Optionally the switch also authenticates the
//! workers: each worker has its own self-signed identity ([`client_config_with_identity`]) and
//! the switch accepts only the fingerprints in a [`ClientAllowList`]
//! ([`server_config_with_clients`]). TLS 1.3 only, crypto by `ring`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use sketchreduce_control::{ClientSession, Secret, SessionError};
use sketchreduce_wire::control::{encode_frame, frame_len, FrameError, Request, Response};
use thiserror::Error;

mod allow;
#[cfg(test)]
mod loopback_tests;
mod verify;

pub use allow::{
    parse_fingerprint, AllowListError, ClientAllowList, FingerprintError, MAX_ALLOW_LIST_BYTES,
};

/// ALPN protocol id of sketchreduce over QUIC.
pub const ALPN: &[u8] = b"sketchreduce/1";
/// Server name a client passes to `Endpoint::connect` (the pinned verifier ignores it).
pub const SERVER_NAME: &str = "sketchreduce";
/// File names inside the certificate directory.
pub const CERT_FILE: &str = "cert.der";
/// Private key file (PKCS#8 DER, mode 0600).
pub const KEY_FILE: &str = "key.der";
/// Receive/send buffer for QUIC datagrams, per connection.
pub const DATAGRAM_BUFFER: usize = 8 << 20;

/// Errors in QUIC setup.
#[derive(Debug, Error)]
pub enum QuicError {
    /// Reading or writing the identity files.
    #[error("certificate directory {path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// TLS configuration rejected.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The rustls config is not usable for QUIC.
    #[error("QUIC crypto configuration: {0}")]
    NoInitialCipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A fingerprint that is not 64 hex digits.
    #[error("bad certificate fingerprint {0:?}: expected 64 hex digits (SHA-256)")]
    BadFingerprint(String),
    /// Connection-level failure (control helper).
    #[error("QUIC connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Stream write failure (control helper).
    #[error("QUIC stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Stream read failure (control helper).
    #[error("QUIC stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Stream already closed (control helper).
    #[error("QUIC stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    /// A control frame of a bad length.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Control protocol or authentication failure.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// A self-signed certificate and its private key (DER): the switch's, or a worker's client
/// identity.
#[derive(Clone)]
pub struct Identity {
    /// Self-signed X.509 certificate, DER.
    pub cert_der: Vec<u8>,
    /// PKCS#8 private key, DER.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &fingerprint(&self.cert_der))
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh self-signed certificate (names `sketchreduce`, `localhost`) and key, in memory.
    pub fn generate() -> Result<Self, QuicError> {
        let ck = rcgen::generate_simple_self_signed(vec![
            SERVER_NAME.to_string(),
            "localhost".to_string(),
        ])?;
        Ok(Identity {
            cert_der: ck.cert.der().to_vec(),
            key_der: ck.key_pair.serialize_der(),
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QuicError + '_ {
    move |source| QuicError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Loads `dir/cert.der` and `dir/key.der`, or generates a self-signed certificate (names
/// `sketchreduce`, `localhost`) and stores it there on first use.
pub fn load_or_create_identity(dir: &Path) -> Result<Identity, QuicError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        let cert_der = std::fs::read(&cert_path).map_err(io_err(&cert_path))?;
        let key_der = std::fs::read(&key_path).map_err(io_err(&key_path))?;
        return Ok(Identity { cert_der, key_der });
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let id = Identity::generate()?;
    write_private(&key_path, &id.key_der)?;
    std::fs::write(&cert_path, &id.cert_der).map_err(io_err(&cert_path))?;
    tracing::info!(dir = %dir.display(), fingerprint = %fingerprint(&id.cert_der), "generated QUIC certificate");
    Ok(id)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), QuicError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))
}

/// SHA-256 of a DER certificate: what [`ClientAllowList`] holds.
pub fn fingerprint_bytes(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in fingerprint_bytes(cert_der) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        .max_concurrent_bidi_streams(256u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("30 s is a valid timeout"),
        ));
    t
}

/// Server configuration: TLS 1.3 with the given identity, ALPN [`ALPN`], datagrams enabled
/// with [`DATAGRAM_BUFFER`]-byte buffers. Clients are not authenticated by TLS.
pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig, QuicError> {
    build_server_config(id, None)
}

/// As [`server_config`], but every client must present a certificate whose SHA-256 (of the
/// end-entity DER) is in `allowed`, with a valid handshake signature by that certificate's
/// key; other clients fail the handshake.
pub fn server_config_with_clients(
    id: &Identity,
    allowed: &ClientAllowList,
) -> Result<quinn::ServerConfig, QuicError> {
    build_server_config(id, Some(allowed))
}

fn build_server_config(
    id: &Identity,
    clients: Option<&ClientAllowList>,
) -> Result<quinn::ServerConfig, QuicError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(allowed) => builder.with_client_cert_verifier(Arc::new(verify::AllowedClients::new(
            allowed.clone(),
            &provider,
        ))),
    };
    let mut tls = builder.with_single_cert(
        vec![CertificateDer::from(id.cert_der.clone())],
        private_key(id),
    )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport()));
    Ok(cfg)
}

fn private_key(id: &Identity) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone()))
}

/// Client configuration: TLS 1.3, ALPN [`ALPN`], and a verifier that accepts exactly the
/// certificate whose SHA-256 (of the end-entity DER) is `pinned_fingerprint` (64 hex digits,
/// colons allowed), with a valid handshake signature by that certificate's key. Presents no
/// client certificate.
pub fn client_config(pinned_fingerprint: &str) -> Result<quinn::ClientConfig, QuicError> {
    build_client_config(pinned_fingerprint, None)
}

/// As [`client_config`], but presents `id` as the client certificate (for a switch that
/// requires one, see [`server_config_with_clients`]).
pub fn client_config_with_identity(
    pinned_fingerprint: &str,
    id: &Identity,
) -> Result<quinn::ClientConfig, QuicError> {
    build_client_config(pinned_fingerprint, Some(id))
}

fn build_client_config(
    pinned_fingerprint: &str,
    id: Option<&Identity>,
) -> Result<quinn::ClientConfig, QuicError> {
    let pinned = parse_fingerprint(pinned_fingerprint)
        .map_err(|_| QuicError::BadFingerprint(pinned_fingerprint.to_string()))?;
    let provider = provider();
    let verifier = verify::PinnedServer::new(pinned, &provider);
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut tls = match id {
        None => builder.with_no_client_auth(),
        Some(id) => builder.with_client_auth_cert(
            vec![CertificateDer::from(id.cert_der.clone())],
            private_key(id),
        )?,
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport()));
    Ok(cfg)
}

/// Sends one control request on a new bidirectional stream of `conn` (one control
/// connection: client hello, server hello, request, response) and returns the authenticated
/// answer (the QUIC equivalent of `sketchreduce_control::client::call`).
pub async fn control_call(
    conn: &quinn::Connection,
    secret: Option<Arc<Secret>>,
    req: &Request,
) -> Result<Response, QuicError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame_async(&mut send, &ClientSession::client_hello()).await?;
    let hello = read_frame_async(&mut recv).await?;
    let mut session = ClientSession::from_hello(&hello, secret)?;
    write_frame_async(&mut send, &session.request(req)).await?;
    let body = read_frame_async(&mut recv).await?;
    let resp = session.response(&body)?;
    send.finish()?;
    Ok(resp)
}

/// Writes one control frame to a QUIC stream.
pub async fn write_frame_async(send: &mut quinn::SendStream, json: &str) -> Result<(), QuicError> {
    let mut out = Vec::with_capacity(4 + json.len());
    encode_frame(json, &mut out)?;
    send.write_all(&out).await?;
    Ok(())
}

/// Reads one control frame body from a QUIC stream (at most `MAX_FRAME` bytes).
pub async fn read_frame_async(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, QuicError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let n = frame_len(len)?;
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format() {
        let fp = fingerprint(b"abc");
        assert_eq!(
            fp,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_fingerprint(&fp).unwrap()[0], 0xba);
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn identity_persists() {
        let dir = std::env::temp_dir().join(format!("sr-quic-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = load_or_create_identity(&dir).unwrap();
        let b = load_or_create_identity(&dir).unwrap();
        assert_eq!(a.cert_der, b.cert_der);
        assert_eq!(a.key_der, b.key_der);
        server_config(&a).unwrap();
        client_config(&fingerprint(&a.cert_der)).unwrap();
        let allowed = ClientAllowList::new([fingerprint_bytes(&a.cert_der)]).unwrap();
        server_config_with_clients(&a, &allowed).unwrap();
        client_config_with_identity(&fingerprint(&a.cert_der), &a).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
