//! Certificate verifiers. There is no CA: every certificate is self-signed and identified by
//! the SHA-256 of its end-entity DER. A worker accepts exactly the switch's certificate
//! ([`PinnedServer`]); a switch with an allow-list accepts exactly the listed client
//! certificates ([`AllowedClients`]). Both also check the peer's handshake signature with the
//! key of that certificate (`signature_methods!`), which is what proves the peer holds the key
//! and did not just replay a certificate it saw.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::allow::ClientAllowList;

fn digest(cert: &CertificateDer<'_>) -> [u8; 32] {
    crate::fingerprint_bytes(cert.as_ref())
}

/// The refusal of a certificate that is not the pinned / an allowed one.
fn not_accepted() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
}

/// The handshake-signature checks, the same in both verifier traits (one definition, so the
/// server and client checks cannot drift apart): TLS 1.3 only (QUIC requires it), with the
/// provider's algorithms in the verifier's `algorithms` field.
macro_rules! signature_methods {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls13RequiredForQuic,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Accepts exactly one server certificate, identified by its SHA-256.
#[derive(Debug)]
pub(crate) struct PinnedServer {
    pinned: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServer {
    pub(crate) fn new(pinned: [u8; 32], provider: &CryptoProvider) -> Self {
        PinnedServer {
            pinned,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if digest(end_entity) == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(not_accepted())
        }
    }

    signature_methods!();
}

/// Requires a client certificate and accepts it only if its SHA-256 is in the allow-list.
#[derive(Debug)]
pub(crate) struct AllowedClients {
    allowed: ClientAllowList,
    algorithms: WebPkiSupportedAlgorithms,
}

impl AllowedClients {
    pub(crate) fn new(allowed: ClientAllowList, provider: &CryptoProvider) -> Self {
        AllowedClients {
            allowed,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AllowedClients {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA to hint at: clients present their one self-signed certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.allowed.contains(&digest(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            // The fingerprint lets an operator add a legitimate worker they forgot.
            tracing::warn!(
                fingerprint = %crate::fingerprint(end_entity.as_ref()),
                "QUIC client certificate not in the allow-list; handshake refused"
            );
            Err(not_accepted())
        }
    }

    signature_methods!();
}
