//! TLS to the store: the rustls client configuration built from the `--store-*` TLS flags, and
//! the TCP(+TLS) connector the etcd channels dial through.
//!
//! Decision: we dial ourselves instead of using tonic's TLS settings, because tonic cannot skip
//! server certificate verification (`--store-skip-tls-verify`) and we want one code path for
//! all TLS modes. The crypto provider is always rustls' `ring`, passed explicitly, so the
//! process-level default provider never matters.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::StoreError;

/// The TLS material named by the store flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFlags {
    /// `--store-ca-file`: PEM bundle of trusted CAs (may hold several certificates). When
    /// absent, the system roots are used.
    pub ca_file: Option<String>,
    /// `--store-cert-file`: client certificate chain (PEM).
    pub cert_file: Option<String>,
    /// `--store-key`: client private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
    /// `--store-skip-tls-verify`: accept any server certificate (signatures are still checked).
    pub skip_verify: bool,
}

/// The ring provider, explicitly (never the process default).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration for `flags`, advertising ALPN `alpn` (etcd's gRPC
/// needs `h2`).
pub fn client_config(flags: &TlsFlags, alpn: &[&[u8]]) -> Result<ClientConfig, StoreError> {
    let cfg_err = |m: String| StoreError::Config(m);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg_err(format!("cannot set up TLS: {e}")))?;
    let builder = if flags.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoServerVerification {
                provider: provider(),
            }))
    } else {
        let mut roots = RootCertStore::empty();
        match &flags.ca_file {
            Some(path) => {
                let certs = read_certs(path, "--store-ca-file")?;
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        cfg_err(format!(
                            "invalid CA certificate in --store-ca-file {path}: {e}"
                        ))
                    })?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    // Unparsable system certificates are skipped, as Go's system pool does.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(cfg_err(
                        "no system CA certificates found; give --store-ca-file".into(),
                    ));
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&flags.cert_file, &flags.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "--store-cert-file")?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                cfg_err(format!(
                    "cannot read private key from --store-key {key}: {e}"
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| cfg_err(format!("invalid client certificate/key pair: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(cfg_err(
                "--store-cert-file and --store-key must be given together".into(),
            ));
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn read_certs(path: &str, flag: &str) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| StoreError::Config(format!("cannot read {flag} {path}: {e}")))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Config(format!("invalid PEM in {flag} {path}: {e}")))?;
    if certs.is_empty() {
        return Err(StoreError::Config(format!(
            "{flag} {path} holds no PEM certificate"
        )));
    }
    Ok(certs)
}

/// Accepts any server certificate but still verifies handshake signatures with the presented
/// key (so the peer must hold the key of the certificate it shows).
#[derive(Debug)]
struct NoServerVerification {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NoServerVerification {
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

/// A byte stream to the store, plain or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Dials one store endpoint: TCP to `host:port`, then TLS when configured. The URI tonic hands
/// us is ignored (it is always the same endpoint).
#[derive(Clone)]
pub(crate) struct Connector {
    /// `host:port` to dial.
    pub authority: String,
    /// Host name for SNI / certificate checks.
    pub host: String,
    /// TLS configuration for `https` endpoints.
    pub tls: Option<Arc<ClientConfig>>,
}

impl tower::Service<tonic::transport::Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::transport::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.authority).await?;
            tcp.set_nodelay(true)?;
            let Some(tls) = this.tls else {
                return Ok(TokioIo::new(Box::new(tcp) as Box<dyn Io>));
            };
            let name = ServerName::try_from(this.host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(Box::new(stream) as Box<dyn Io>))
        })
    }
}
