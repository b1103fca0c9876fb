//! Real QUIC handshakes over loopback between the server and client configurations of this
//! crate: which clients a server with an allow-list accepts, and that it checks the handshake
//! signature, not just the certificate (a client replaying an allowed certificate without its
//! key is refused).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use tokio::sync::mpsc;

use super::*;

/// What the server saw of one connection: the client certificate's fingerprint (empty if
/// none), or why the handshake failed.
type Outcome = Result<String, String>;

/// A server endpoint that reports every incoming connection's outcome.
fn server(
    id: &Identity,
    allowed: Option<&ClientAllowList>,
) -> (SocketAddr, mpsc::Receiver<Outcome>) {
    let cfg = match allowed {
        Some(a) => server_config_with_clients(id, a).unwrap(),
        None => server_config(id).unwrap(),
    };
    let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let outcome = match incoming.await {
                Ok(conn) => Ok(conn
                    .peer_identity()
                    .and_then(|p| p.downcast::<Vec<CertificateDer<'static>>>().ok())
                    .and_then(|certs| certs.first().map(|c| fingerprint(c.as_ref())))
                    .unwrap_or_default()),
                Err(e) => Err(e.to_string()),
            };
            if tx.send(outcome).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// Connects with `cfg`; returns the client's connection if its side of the handshake ended
/// (a TLS 1.3 client finishes before the server has checked the client certificate).
async fn connect(
    addr: SocketAddr,
    cfg: quinn::ClientConfig,
) -> (quinn::Endpoint, Option<quinn::Connection>) {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let conn = ep.connect(addr, SERVER_NAME).unwrap().await.ok();
    (ep, conn)
}

/// The client side of a refused handshake ends with an error, never with a usable connection.
async fn assert_client_refused(conn: Option<quinn::Connection>) {
    if let Some(c) = conn {
        let e = c.closed().await;
        assert!(
            !matches!(e, quinn::ConnectionError::LocallyClosed),
            "closed by the server, got {e}"
        );
        assert!(c.open_bi().await.is_err());
    }
}

fn allow(ids: &[&Identity]) -> ClientAllowList {
    ClientAllowList::new(ids.iter().map(|i| fingerprint_bytes(&i.cert_der))).unwrap()
}

#[tokio::test]
async fn allowed_client_certificate_is_accepted() {
    let sw = Identity::generate().unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (addr, mut seen) = server(&sw, Some(&allow(&[&a, &b])));
    let pin = fingerprint(&sw.cert_der);
    for id in [&a, &b] {
        let (_ep, conn) = connect(addr, client_config_with_identity(&pin, id).unwrap()).await;
        assert!(conn.is_some());
        assert_eq!(seen.recv().await.unwrap(), Ok(fingerprint(&id.cert_der)));
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let sw = Identity::generate().unwrap();
    let a = Identity::generate().unwrap();
    let (addr, mut seen) = server(&sw, Some(&allow(&[&a])));
    let (_ep, conn) = connect(addr, client_config(&fingerprint(&sw.cert_der)).unwrap()).await;
    let outcome = seen.recv().await.unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    assert_client_refused(conn).await;
}

#[tokio::test]
async fn unknown_client_certificate_is_refused() {
    let sw = Identity::generate().unwrap();
    let (a, stranger) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (addr, mut seen) = server(&sw, Some(&allow(&[&a])));
    let cfg = client_config_with_identity(&fingerprint(&sw.cert_der), &stranger).unwrap();
    let (_ep, conn) = connect(addr, cfg).await;
    let outcome = seen.recv().await.unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    assert_client_refused(conn).await;
    // The switch's own certificate is no client certificate either.
    let cfg = client_config_with_identity(&fingerprint(&sw.cert_der), &sw).unwrap();
    let (_ep, conn) = connect(addr, cfg).await;
    assert!(seen.recv().await.unwrap().is_err());
    assert_client_refused(conn).await;
}

/// Presents an allowed certificate but signs with another key, as a client that copied the
/// certificate (it is not secret) but not the private key would.
#[derive(Debug)]
struct StolenCert(Arc<CertifiedKey>);

impl ResolvesClientCert for StolenCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn allowed_certificate_without_its_key_is_refused() {
    let sw = Identity::generate().unwrap();
    let (victim, thief) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (addr, mut seen) = server(&sw, Some(&allow(&[&victim])));
    let provider = provider();
    let thief_key = provider
        .key_provider
        .load_private_key(private_key(&thief))
        .unwrap();
    let stolen = CertifiedKey::new(
        vec![CertificateDer::from(victim.cert_der.clone())],
        thief_key,
    );
    let verifier = verify::PinnedServer::new(fingerprint_bytes(&sw.cert_der), &provider);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(StolenCert(Arc::new(stolen))));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let (_ep, conn) = connect(addr, quinn::ClientConfig::new(Arc::new(crypto))).await;
    let outcome = seen.recv().await.unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    assert_client_refused(conn).await;
    // Control: the victim itself, with its key, gets in.
    let cfg = client_config_with_identity(&fingerprint(&sw.cert_der), &victim).unwrap();
    let (_ep, conn) = connect(addr, cfg).await;
    assert!(conn.is_some());
    assert_eq!(
        seen.recv().await.unwrap(),
        Ok(fingerprint(&victim.cert_der))
    );
}

#[tokio::test]
async fn server_without_allow_list_accepts_any_client() {
    let sw = Identity::generate().unwrap();
    let (addr, mut seen) = server(&sw, None);
    let pin = fingerprint(&sw.cert_der);
    let (_e0, c0) = connect(addr, client_config(&pin).unwrap()).await;
    assert!(c0.is_some());
    assert_eq!(seen.recv().await.unwrap(), Ok(String::new()));
    // A client that would present a certificate is not asked for one.
    let id = Identity::generate().unwrap();
    let (_e1, c1) = connect(addr, client_config_with_identity(&pin, &id).unwrap()).await;
    assert!(c1.is_some());
    assert_eq!(seen.recv().await.unwrap(), Ok(String::new()));
}
