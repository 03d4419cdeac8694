//! TLS for the QUIC transport: TLS 1.3 only, mutual authentication, node ids from keys.
//!
//! Each node presents a self-signed certificate made from its key pair. Trust does not
//! come from a CA: a peer is accepted iff the node id derived from its certificate's public
//! key (`blake3(SubjectPublicKeyInfo DER)`, first 16 bytes) is on the allow-list, and the
//! TLS handshake proves it holds the key. The check runs inside the handshake, so a peer
//! that is not allowed is refused before any application data moves. 0-RTT is disabled on
//! both sides (replayable data would be obeyed before the handshake completes).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use edgestore::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// ALPN protocol id of the sync protocol.
pub const ALPN: &[u8] = b"edgestore-sync/1";

/// The node ids allowed to connect, shared with the configuration that edits it.
pub type AllowList = Arc<RwLock<BTreeSet<NodeId>>>;

/// A node's TLS identity: its self-signed certificate and private key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The node id the certificate proves.
    pub node_id: NodeId,
    certificate: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

/// A TLS setup problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate could not be made from the key.
    #[error("making the node certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the TLS configuration (it offers no cipher suite QUIC's Initial
    /// packets can use).
    #[error("QUIC TLS configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

impl TlsIdentity {
    /// Makes the node's self-signed certificate from its key pair.
    pub fn new(key_pair: &rcgen::KeyPair) -> Result<TlsIdentity, TlsError> {
        let node_id = node_id_of_public_key(&rcgen::PublicKeyData::subject_public_key_info(key_pair));
        let params = rcgen::CertificateParams::new(vec![format!("{node_id}.edgestore")])?;
        let certificate = params.self_signed(key_pair)?.der().clone();
        let key = PrivatePkcs8KeyDer::from(key_pair.serialize_der());
        Ok(TlsIdentity { node_id, certificate, key })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The node id of a public key: the first 16 bytes of blake3 over its SPKI DER encoding.
pub fn node_id_of_public_key(spki_der: &[u8]) -> NodeId {
    NodeId::from_public_key(spki_der)
}

/// The node id a certificate proves.
pub fn node_id_of_certificate(certificate: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    // An unreadable certificate is `bad_certificate` to the peer (a typed rustls error
    // picks the TLS alert; see `refusal.rs`).
    let cert = webpki::EndEntityCert::try_from(certificate).map_err(|e| {
        tracing::debug!(error = %e, "unreadable peer certificate");
        rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
    })?;
    Ok(node_id_of_public_key(cert.subject_public_key_info().as_ref()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly the certificates whose node id is allowed; verifies handshake signatures
/// with the ring provider.
#[derive(Debug)]
struct AllowListVerifier {
    allowed: AllowList,
    provider: Arc<CryptoProvider>,
}

impl AllowListVerifier {
    fn check(&self, certificate: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let node_id = node_id_of_certificate(certificate)?;
        let allowed = self.allowed.read().map_err(|_| rustls::Error::General("allow-list lock poisoned".into()))?;
        if !allowed.contains(&node_id) {
            // Logged by the node once per backoff step, not here once per attempt. The
            // alert the peer gets is `access_denied`, which it reports as "not allowed".
            tracing::debug!(%node_id, "refusing a peer that is not on the allow-list");
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure));
        }
        Ok(())
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }

    fn verify13(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }
}

/// TLS 1.2 is never negotiated (the configs allow TLS 1.3 only); refuse if asked anyway.
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
}

impl ServerCertVerifier for AllowListVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for AllowListVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// The QUIC server crypto: TLS 1.3, client certificates required and checked, no 0-RTT.
pub fn server_crypto(
    identity: &TlsIdentity,
    allowed: AllowList,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AllowListVerifier { allowed, provider: provider.clone() });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.certificate.clone()], identity.key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    quinn::crypto::rustls::QuicServerConfig::try_from(config).map_err(TlsError::Quic)
}

/// The QUIC client crypto: TLS 1.3, the server's certificate checked against the allow-list,
/// our certificate presented, no 0-RTT.
pub fn client_crypto(
    identity: &TlsIdentity,
    allowed: AllowList,
) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AllowListVerifier { allowed, provider: provider.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.certificate.clone()], identity.key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(TlsError::Quic)
}

/// The node id of the peer of an established connection.
pub fn peer_node_id(connection: &quinn::Connection) -> Option<NodeId> {
    let identity = connection.peer_identity()?;
    let certificates = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_of_certificate(certificates.first()?).ok()
}
