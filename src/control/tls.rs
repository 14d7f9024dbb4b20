//! The TLS connector for a `wss://` server link, built from the
//! `ServerTrust` that config decided.
//!
//! `Roots` verifies the server certificate against the bundled web roots
//! plus an optional `tls_ca`. `AnyCertificate` (`tls_insecure = true`)
//! skips verification, which is what stock Candy always does; it exists
//! for lab setups and says so loudly in the log.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;
use tracing::warn;

use super::TlsError;
use crate::config::ServerTrust;

pub fn connector(trust: &ServerTrust) -> Result<TlsConnector, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match trust {
        ServerTrust::AnyCertificate => {
            warn!("tls_insecure = true: the server certificate is NOT verified");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth()
        }
        ServerTrust::Roots { extra_ca } => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(path) = extra_ca {
                add_pem_roots(&mut roots, path)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Adds every certificate of the PEM file `path` (`tls_ca`); a file with
/// none is an error, not an empty addition.
fn add_pem_roots(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    let read_err = |source| TlsError::ReadCa {
        path: path.to_owned(),
        source,
    };
    let pem = std::fs::read(path).map_err(read_err)?;
    let mut found = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.map_err(read_err)?)
            .map_err(|source| TlsError::AddCa {
                path: path.to_owned(),
                source,
            })?;
        found += 1;
    }
    if found == 0 {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Verifies signatures (so the handshake is still a real TLS handshake) but
/// accepts any certificate chain and name.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_error(content: Option<&str>) -> String {
        let path = std::env::temp_dir().join(format!("ringlink-tls-ca-{}", std::process::id()));
        if let Some(text) = content {
            std::fs::write(&path, text).unwrap();
        }
        let trust = ServerTrust::Roots {
            extra_ca: Some(path.clone()),
        };
        let result = connector(&trust);
        let _ = std::fs::remove_file(&path);
        match result {
            Err(e) => e.to_string(),
            Ok(_) => panic!("connector accepted tls_ca content {content:?}"),
        }
    }

    #[test]
    fn every_trust_builds_a_connector() {
        connector(&ServerTrust::Roots { extra_ca: None }).unwrap();
        connector(&ServerTrust::AnyCertificate).unwrap();
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error_naming_it() {
        for content in [None, Some("no certificate here\n")] {
            let e = ca_error(content);
            assert!(e.contains("tls_ca") && e.contains("ringlink-tls-ca"), "{e}");
        }
    }
}
