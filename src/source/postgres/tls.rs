//! TLS for Postgres connections, with libpq's `sslmode` meanings, through rustls.
//!
//! Postgres negotiates TLS inside its own protocol: the client sends an SSLRequest on
//! the plain socket, the server answers one byte (`S` or `N`), and on `S` the TLS
//! handshake starts on the same socket. What is checked depends on the mode:
//! `verify-full` checks the chain against `sslrootcert` and that the certificate
//! names `host`; `verify-ca` checks only the chain; `require` and `prefer` encrypt
//! without checking (unless `require` has a root certificate, then as `verify-ca`,
//! as libpq does). Fallbacks to plain text (`prefer`, `allow`) live in
//! [`super::wire::Conn::connect`].
//!
//! Every error names the mode, so a refused connection says which setting to look at.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{PostgresDsn, RootCert, SslMode};

/// A connection's socket, encrypted or not.
#[derive(Debug)]
pub enum Socket {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encrypt only (`prefer`, `allow`, `require` without a root certificate).
    Nothing,
    /// The chain must lead to a trusted CA.
    Chain,
    /// The chain, and the certificate must name the host.
    ChainAndName,
}

/// Why the TLS session could not be set up.
#[derive(Debug)]
pub enum Failure {
    /// Settings, certificates or the server's certificate: worded for the user, naming
    /// the setting. Retrying will not help.
    Refused(String),
    /// The connection broke during the handshake.
    Io(io::Error),
}

/// A handshake error, worded for the user when rustls refused something.
fn failure(dsn: &PostgresDsn, e: io::Error) -> Failure {
    let mode = dsn.tls.mode.name();
    let root = match &dsn.tls.root_cert {
        Some(RootCert::File(p)) => format!("sslrootcert {}", p.display()),
        Some(RootCert::System) => "the system's trust store".to_string(),
        None => "sslrootcert".to_string(),
    };
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return Failure::Io(e);
    };
    Failure::Refused(match tls {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "sslmode={mode}: certificate name does not match host \"{}\" ({tls})",
            dsn.host
        ),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("sslmode={mode}: the server's certificate is not signed by a CA in {root}")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => format!("sslmode={mode}: the server's certificate has expired ({tls})"),
        other => format!("sslmode={mode}: TLS handshake failed: {other}"),
    })
}

/// Runs the TLS handshake on `tcp` (after the server accepted the SSLRequest).
pub async fn handshake(dsn: &PostgresDsn, tcp: TcpStream) -> Result<Socket, Failure> {
    let config = client_config(dsn).map_err(Failure::Refused)?;
    let name = ServerName::try_from(dsn.host.clone()).map_err(|_| {
        Failure::Refused(format!(
            "sslmode={}: host \"{}\" is not a valid server name",
            dsn.tls.mode.name(),
            dsn.host
        ))
    })?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| failure(dsn, e))?;
    Ok(Socket::Tls(Box::new(tls)))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(dsn: &PostgresDsn) -> Result<ClientConfig, String> {
    let tls = &dsn.tls;
    let mode = tls.mode.name();
    let check = match (tls.mode, &tls.root_cert) {
        (SslMode::VerifyFull, _) => Check::ChainAndName,
        (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Check::Chain,
        _ => Check::Nothing,
    };
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = if check == Check::Nothing {
        Arc::new(Unchecked(provider.clone()))
    } else {
        let roots = match &tls.root_cert {
            Some(root) => roots(root).map_err(|e| format!("sslmode={mode}: {e}"))?,
            None => {
                return Err(format!(
                    "sslmode={mode}: no sslrootcert to verify the server with"
                ));
            }
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("sslmode={mode}: sslrootcert: {e}"))?;
        if check == Check::Chain {
            Arc::new(ChainOnly(webpki))
        } else {
            webpki
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("sslmode={mode}: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &tls.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let (chain, key_der) = crate::pem::chain_and_key(cert, key, "sslcert", "sslkey")?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
    }
}

/// The trusted CAs.
fn roots(root: &RootCert) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {}: no usable CA certificate in the file",
                    path.display()
                ));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err("sslrootcert=system: the system's trust store has no certificates".into());
            }
        }
    }
    Ok(store)
}

/// `verify-ca`: the chain must be trusted; the name on the certificate is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name last, after the chain: a name error means the chain held.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root certificate: any certificate, but the handshake's
/// signatures are still checked (the session is encrypted to whoever holds the key).
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
