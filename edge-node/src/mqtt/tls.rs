//! TLS to the broker (`mqtts://`, docs/design.md § MQTT ingest): a rustls client
//! configuration on the ring provider (the one quinn already brings), built once when the
//! configuration is read so that a missing or malformed file stops `edge-node run` with
//! its name, not the connection loop later.
//!
//! The broker is verified against `mqtt.ca_file` (PEM, one or more certificates) or,
//! without one, the system's trusted roots; its name is the broker URL's host (a DNS name
//! or an IP address, which the certificate must hold as a subject alternative name).
//! `mqtt.cert_file` and `mqtt.key_file` (PEM) add a client certificate, for brokers that
//! authenticate their clients by certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What `[mqtt]` names for TLS, paths resolved.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// The CA certificates the broker's chain must end in; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The client certificate chain and its private key.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The client configuration for `files`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>> {
    let roots = match &files.ca_file {
        Some(path) => roots_from(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider offers no protocol version")?
        .with_root_certificates(roots);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = certificates(cert_file, "mqtt.cert_file")?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .with_context(|| format!("`mqtt.key_file` {}: no private key read", key_file.display()))?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!("`mqtt.cert_file` and `mqtt.key_file` ({}) do not match", key_file.display())
            })?
        }
    };
    Ok(Arc::new(config))
}

/// The certificates of a PEM file; at least one.
fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("`{setting}` {}: not readable", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("`{setting}` {}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("`{setting}` {}: no certificate in it (PEM, -----BEGIN CERTIFICATE-----)", path.display());
    }
    Ok(certs)
}

fn roots_from(path: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path, "mqtt.ca_file")? {
        roots.add(cert).with_context(|| format!("`mqtt.ca_file` {}: a certificate is not a CA", path.display()))?;
    }
    Ok(roots)
}

/// The system's trusted roots (`SSL_CERT_FILE`, `SSL_CERT_DIR` or the platform's store).
fn system_roots() -> Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        bail!(
            "mqtts:// without `mqtt.ca_file` needs the system's trusted roots, and none were found ({}); \
             name the broker's CA in `mqtt.ca_file`",
            if errors.is_empty() { "no certificate store".to_string() } else { errors.join("; ") }
        );
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn files_that_hold_no_certificate_or_key_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.pem", "");
        let garbage = write(dir.path(), "garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        let missing = dir.path().join("missing.pem");
        for (files, wanted) in [
            (TlsFiles { ca_file: Some(empty.clone()), client: None }, "no certificate in it"),
            (TlsFiles { ca_file: Some(garbage.clone()), client: None }, "not PEM certificates"),
            (TlsFiles { ca_file: Some(missing.clone()), client: None }, "not readable"),
        ] {
            let error = format!("{:#}", client_config(&files).unwrap_err());
            assert!(error.contains(wanted) && error.contains("mqtt.ca_file"), "{error}");
        }
    }

    #[test]
    fn a_ca_and_a_client_certificate_make_a_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["gw-7".to_string()])
            .unwrap()
            .signed_by(&client_key, &rcgen::Issuer::new(ca_params, &ca_key))
            .unwrap();
        let ca_file = write(dir.path(), "ca.pem", &ca.pem());
        let cert_file = write(dir.path(), "client.pem", &client.pem());
        let key_file = write(dir.path(), "client.key", &client_key.serialize_pem());
        let files = TlsFiles { ca_file: Some(ca_file), client: Some((cert_file.clone(), key_file)) };
        client_config(&files).expect("a configuration");
        // A key that is not the certificate's.
        let other = write(dir.path(), "other.key", &rcgen::KeyPair::generate().unwrap().serialize_pem());
        let files = TlsFiles { client: Some((cert_file, other)), ..files };
        let error = format!("{:#}", client_config(&files).unwrap_err());
        assert!(error.contains("do not match"), "{error}");
    }
}
