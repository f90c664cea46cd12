//! TLS for outbound SMTP: the two client configurations (verifying against the
//! webpki roots, or accepting any certificate as opportunistic STARTTLS must,
//! RFC 7435) and the handshake itself. Both configurations are built once per
//! process: building the root store costs more than a handshake, and a shared
//! config also shares the TLS session cache, so reconnects resume sessions.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::transport::within;
use super::{Phase, SessionError};

/// Runs the TLS client handshake on `tcp` under the `tls` timeout.
pub async fn handshake(
    tcp: TcpStream,
    host: &str,
    verify: bool,
    after: Duration,
) -> Result<TlsStream<TcpStream>, SessionError> {
    let config = client_config(verify)?;
    let server_name =
        ServerName::try_from(host.to_string()).map_err(|error| SessionError::Tls {
            phase: Phase::Tls,
            message: format!("invalid server name {host:?}: {error}"),
        })?;
    let connect = TlsConnector::from(config).connect(server_name, tcp);
    within(Phase::Tls, after, connect)
        .await
        .map_err(|error| match error {
            // The handshake reports certificate and protocol failures as io errors
            // wrapping a rustls error; surface them as TLS failures.
            SessionError::Io { source, .. } => SessionError::Tls {
                phase: Phase::Tls,
                message: source.to_string(),
            },
            other => other,
        })
}

fn client_config(verify: bool) -> Result<Arc<ClientConfig>, SessionError> {
    static VERIFYING: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    static ANY_CERTIFICATE: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    let config = if verify {
        VERIFYING.get_or_init(|| build_config(true))
    } else {
        ANY_CERTIFICATE.get_or_init(|| build_config(false))
    };
    config.clone().map_err(|message| SessionError::Tls {
        phase: Phase::Tls,
        message,
    })
}

/// Always the aws-lc-rs provider, named explicitly: a second provider in the
/// build would make rustls' process default ambiguous.
fn build_config(verify: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS configuration: {error}"))?;
    let config = if verify {
        let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Accepts any certificate but still checks the handshake signatures, so the
/// session is at least bound to the key in the presented certificate.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
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
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
