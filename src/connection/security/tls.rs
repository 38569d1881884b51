//! TLS with rustls (no OpenSSL: the static musl binary stays static).
//!
//! The rustls client configuration is built once per client from [`TlsConfig`]
//! ([`super::SecurityConfig::prepare`]): the CA file (`ssl.ca.location`) or else the system trust
//! store (read by `rustls-native-certs` from the usual files, `SSL_CERT_FILE` / `SSL_CERT_DIR`
//! honoured — no root list compiled into the binary, and an administrator's company CA in the
//! system store is trusted as by every other tool), and for mutual TLS the client certificate and
//! key. The server name checked is the host part of the broker address; an IP address matches
//! an IP SAN.
//!
//! Handshake failures are turned into errors that say what to change: an untrusted CA
//! ([`ConnectionError::CertificateNotTrusted`]), a host name the certificate does not name
//! ([`ConnectionError::HostnameMismatch`]), a listener that does not speak TLS
//! ([`ConnectionError::NotTls`]).

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tracing::warn;

use super::TlsConfig;
use crate::connection::ConnectionError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(key: &'static str, message: impl Into<String>) -> ConnectionError {
    ConnectionError::SecurityConfig {
        key,
        message: message.into(),
    }
}

/// Builds the rustls client configuration: reads and parses the PEM files.
pub(crate) fn client_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, ConnectionError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("security.protocol", e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if !tls.verify_certificates {
        Arc::new(AcceptAnyCertificate(provider()))
    } else {
        let roots = Arc::new(root_store(tls)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| config_error("ssl.ca.location", e.to_string()))?;
        if tls.verify_hostname {
            webpki
        } else {
            Arc::new(SkipHostname(webpki))
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&tls.certificate_location, &tls.key_location) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| pem_error("ssl.certificate.location", cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error("ssl.certificate.location", cert, e))?;
            if chain.is_empty() {
                return Err(config_error(
                    "ssl.certificate.location",
                    format!("{}: no CERTIFICATE in the file", cert.display()),
                ));
            }
            let key_der = private_key(key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                config_error(
                    "ssl.key.location",
                    format!(
                        "{}: {e} (does the key belong to the certificate?)",
                        key.display()
                    ),
                )
            })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(_), None) => Err(config_error(
            "ssl.key.location",
            "ssl.certificate.location is set: mutual TLS needs the key too",
        )),
        (None, Some(_)) => Err(config_error(
            "ssl.certificate.location",
            "ssl.key.location is set: mutual TLS needs the certificate too",
        )),
    }
}

fn pem_error(
    key: &'static str,
    path: &std::path::Path,
    e: rustls::pki_types::pem::Error,
) -> ConnectionError {
    config_error(key, format!("{}: {e}", path.display()))
}

/// The private key of `ssl.key.location`, read once. rustls reads unencrypted keys only; when
/// none parses, an encrypted key (PKCS#8 `ENCRYPTED PRIVATE KEY` or OpenSSL's legacy
/// `Proc-Type: 4,ENCRYPTED`) is named as such, because "no key found" would not tell the user
/// that the passphrase is the problem.
fn private_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, ConnectionError> {
    use rustls::pki_types::pem::Error;
    const KEY: &str = "ssl.key.location";
    let pem = std::fs::read(path).map_err(|e| pem_error(KEY, path, Error::Io(e)))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let text = String::from_utf8_lossy(&pem);
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || text.contains("Proc-Type: 4,ENCRYPTED")
        {
            return config_error(
                KEY,
                format!(
                    "{}: the private key is encrypted with a passphrase, and encrypted keys are \
                     not supported: decrypt it (e.g. `openssl pkey -in {} -out client-key.pem`), \
                     keep the result readable only by the job's user, and set ssl.key.location \
                     to it",
                    path.display(),
                    path.display()
                ),
            );
        }
        match e {
            Error::NoItemsFound => config_error(
                KEY,
                format!(
                    "{}: no private key in the file (expected a PEM `PRIVATE KEY`, \
                     `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)",
                    path.display()
                ),
            ),
            other => pem_error(KEY, path, other),
        }
    })
}

fn root_store(tls: &TlsConfig) -> Result<RootCertStore, ConnectionError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_location {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| pem_error("ssl.ca.location", path, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error("ssl.ca.location", path, e))?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    config_error("ssl.ca.location", format!("{}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(config_error(
                    "ssl.ca.location",
                    format!("{}: no CERTIFICATE in the file", path.display()),
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(config_error(
                    "ssl.ca.location",
                    format!(
                        "no CA certificates found in the system trust store{}: set ssl.ca.location to a PEM file of the CA that signed the broker's certificate",
                        if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) }
                    ),
                ));
            }
        }
    }
    Ok(roots)
}

/// The host part of `host:port` / `[v6]:port`, as the TLS server name.
pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, ConnectionError> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| ConnectionError::Tls {
        addr: addr.to_owned(),
        message: format!("{host:?} is not a valid TLS server name: {e}"),
    })
}

/// Runs the TLS handshake on `tcp`, mapping failures to errors that say what to change.
///
/// # Cancel safety
/// Cancel safe: dropping the future drops the half-made connection.
pub(crate) async fn handshake(
    addr: &str,
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    tls: &TlsConfig,
) -> Result<TlsStream, ConnectionError> {
    if !tls.verify_certificates {
        warn!(
            addr,
            "TLS certificate verification is OFF (enable.ssl.certificate.verification=false): the connection is encrypted but anyone in the middle can read it; for tests only"
        );
    }
    let name = server_name(addr)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = connector
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| handshake_error(addr, &name, &e))?;
    Ok(Box::new(stream))
}

fn handshake_error(addr: &str, name: &ServerName<'_>, e: &io::Error) -> ConnectionError {
    let addr = addr.to_owned();
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        // Not a TLS-level error: the broker closed or reset the connection instead of answering
        // our ClientHello, which is what a plaintext Kafka listener does (the hello's first
        // bytes read as a frame size above its limit).
        let evidence = match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                "it closed the connection in answer to the TLS ClientHello".to_owned()
            }
            io::ErrorKind::ConnectionReset => {
                "it reset the connection in answer to the TLS ClientHello".to_owned()
            }
            _ => {
                return ConnectionError::Tls {
                    addr,
                    message: e.to_string(),
                }
            }
        };
        return ConnectionError::NotTls { addr, evidence };
    };
    let message = tls.to_string();
    match tls {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => ConnectionError::HostnameMismatch {
            addr,
            server_name: name.to_str().into_owned(),
            message,
        },
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => ConnectionError::CertificateNotTrusted { addr, message },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            ConnectionError::NotTls {
                addr,
                evidence: format!("its answer to the ClientHello is not TLS: {message}"),
            }
        }
        _ => ConnectionError::Tls { addr, message },
    }
}

/// A TLS stream over TCP (boxed: rustls' state is large); the connection's reader and writer
/// tasks take its halves (`tokio::io::split`), as they take a TCP stream's.
pub(crate) type TlsStream = Box<tokio_rustls::client::TlsStream<TcpStream>>;

/// A read or write error on a connection: when it carries a TLS error (with TLS 1.3 the broker's
/// refusal of our client certificate arrives as an alert at the first read after the
/// handshake), a fatal [`ConnectionError::Tls`] that says what to change; otherwise the I/O
/// error (a disconnect).
pub(crate) fn socket_error(addr: &str, op: &'static str, e: &io::Error) -> ConnectionError {
    use rustls::AlertDescription as A;
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return ConnectionError::io(addr, op, e);
    };
    let message = match tls {
        rustls::Error::AlertReceived(
            alert @ (A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied),
        ) => format!(
            "the broker refused our client certificate (alert {alert:?}): set ssl.certificate.location and ssl.key.location to a certificate and key signed by a CA the broker trusts"
        ),
        other => format!("{op}: {other}"),
    };
    ConnectionError::Tls {
        addr: addr.to_owned(),
        message,
    }
}

/// Whether the first bytes a plaintext connection received look like a TLS record header
/// (content type handshake 0x16 or alert 0x15, version 0x03 0x00..=0x04): a TLS listener
/// answering our plaintext request. As a Kafka frame size these bytes would be 350+ MB.
pub(crate) fn looks_like_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, 0x00..=0x04, ..])
}

/// Whether `addr` speaks TLS: a ClientHello on a fresh connection gets a TLS answer (any: a
/// completed handshake, or a TLS-level refusal). Used when a plaintext connection was closed
/// before ApiVersions was answered, which is what a Kafka TLS listener does to a plaintext
/// client — so that the user is told to turn TLS on instead of waiting out the retries.
///
/// # Cancel safety
/// Cancel safe: the probe connection is dropped.
pub(crate) async fn answers_tls(addr: &str) -> bool {
    let Ok(name) = server_name(addr) else {
        return false;
    };
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
        .with_no_client_auth();
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name.clone(), tcp)
        .await
    {
        Ok(_) => true,
        Err(e) => {
            !matches!(
                handshake_error(addr, &name, &e),
                ConnectionError::NotTls { .. }
            ) && e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
        }
    }
}

/// `enable.ssl.certificate.verification=false`: accepts any certificate (signatures on the
/// handshake are still checked, so the session is at least with the holder of that key).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

/// `ssl.endpoint.identification.algorithm=none`: the chain is verified, the host name is not.
#[derive(Debug)]
struct SkipHostname(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for SkipHostname {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
