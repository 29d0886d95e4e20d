//! TLS client configuration for libpq's `sslmode`s, on rustls with the ring provider
//! (no process-wide crypto state).
//!
//! - `require` without `sslrootcert`: encryption only; any certificate is accepted
//!   (the handshake signatures are still checked), as libpq's `require`.
//! - `verify-ca` (or `require` with `sslrootcert`): the chain must verify against
//!   `sslrootcert`; the host name is not checked.
//! - `verify-full`: the chain must verify and the certificate must name the host.
//!
//! `sslcert` / `sslkey` give a client certificate. libpq's default file locations
//! (`~/.postgresql/root.crt`...) are not searched: name the files explicitly.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::conninfo::{ConnInfo, SslMode};
use super::PgError;

/// How strictly the server certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Any certificate (libpq `require` without a root certificate).
    Nothing,
    /// The chain against `sslrootcert`, not the host name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// The verification level for a mode, given whether `sslrootcert` is set.
pub(crate) fn verify_level(mode: SslMode, has_root: bool) -> Verify {
    match mode {
        SslMode::VerifyFull => Verify::Full,
        SslMode::VerifyCa => Verify::Chain,
        // libpq: "require" with a root certificate behaves like "verify-ca";
        // "allow" and "prefer" never verify.
        SslMode::Require if has_root => Verify::Chain,
        _ => Verify::Nothing,
    }
}

/// Builds the rustls client configuration for this connection string and mode.
pub(crate) fn client_config(info: &ConnInfo, mode: SslMode) -> Result<Arc<ClientConfig>, PgError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let root = info.resolve("sslrootcert").filter(|r| r != "system");
    if info.resolve("sslrootcert").as_deref() == Some("system") {
        return Err(PgError::Tls(
            "sslrootcert=system is not supported by pgbk; name a PEM file".to_string(),
        ));
    }
    let level = verify_level(mode, root.is_some());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match level {
        Verify::Nothing => Arc::new(AcceptAnyCert {
            provider: provider.clone(),
        }),
        Verify::Chain | Verify::Full => {
            let path = root.ok_or_else(|| {
                PgError::Tls(format!(
                    "sslmode={mode} needs a root certificate: set sslrootcert (or PGSSLROOTCERT)"
                ))
            })?;
            let mut roots = RootCertStore::empty();
            let iter = CertificateDer::pem_file_iter(&path).map_err(|e| {
                PgError::Tls(format!(
                    "could not read root certificate file \"{path}\": {e}"
                ))
            })?;
            for cert in iter {
                let cert = cert.map_err(|e| {
                    PgError::Tls(format!(
                        "could not read root certificate file \"{path}\": {e}"
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    PgError::Tls(format!("invalid root certificate in \"{path}\": {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(PgError::Tls(format!(
                    "no certificates found in root certificate file \"{path}\""
                )));
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| PgError::Tls(e.to_string()))?;
            if level == Verify::Full {
                webpki
            } else {
                Arc::new(ChainOnly { inner: webpki })
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (info.resolve("sslcert"), info.resolve("sslkey")) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(&cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    PgError::Tls(format!("could not read certificate file \"{cert}\": {e}"))
                })?;
            let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| {
                PgError::Tls(format!("could not read private key file \"{key}\": {e}"))
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| PgError::Tls(format!("invalid client certificate: {e}")))?
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(PgError::Tls(
                "sslcert and sslkey must be given together".to_string(),
            ))
        }
        (None, None) => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// The name sent as SNI and checked by `verify-full`.
pub(crate) fn server_name(
    host: &str,
    fallback_ip: std::net::IpAddr,
    level: Verify,
) -> Result<ServerName<'static>, PgError> {
    match ServerName::try_from(host.to_string()) {
        Ok(n) => Ok(n),
        Err(_) if level != Verify::Full => Ok(ServerName::IpAddress(fallback_ip.into())),
        Err(_) => Err(PgError::Tls(format!(
            "host \"{host}\" is not a valid name for sslmode=verify-full"
        ))),
    }
}

/// Accepts any server certificate, but still checks the handshake signatures.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies the chain but not the host name (libpq `verify-ca`).
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_libpq() {
        assert_eq!(verify_level(SslMode::Require, false), Verify::Nothing);
        assert_eq!(verify_level(SslMode::Prefer, false), Verify::Nothing);
        assert_eq!(verify_level(SslMode::Prefer, true), Verify::Nothing);
        assert_eq!(verify_level(SslMode::Require, true), Verify::Chain);
        assert_eq!(verify_level(SslMode::VerifyCa, true), Verify::Chain);
        assert_eq!(verify_level(SslMode::VerifyFull, true), Verify::Full);
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let info = ConnInfo::parse("sslmode=verify-full")
            .unwrap()
            .with_env([("X", "y")]);
        let e = client_config(&info, SslMode::VerifyFull)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslrootcert"), "{e}");
        let info = ConnInfo::parse("sslmode=require")
            .unwrap()
            .with_env([("X", "y")]);
        assert!(client_config(&info, SslMode::Require).is_ok());
        let info = ConnInfo::parse("sslmode=verify-ca sslrootcert=/nonexistent/root.crt")
            .unwrap()
            .with_env([("X", "y")]);
        let e = client_config(&info, SslMode::VerifyCa)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/root.crt"), "{e}");
    }
}
