//! The connection layer's error type.

use crate::protocol::error_codes::ErrorCode;
use crate::protocol::messages::Versions;
use crate::protocol::ProtocolError;

/// Errors talking to one broker. Cloneable so that one cause can fail every in-flight request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionError {
    /// An I/O operation on the socket failed.
    #[error("{addr}: {op} failed: {message}")]
    Io {
        /// Broker address.
        addr: String,
        /// What we were doing (`connect`, `read`, `write`).
        op: &'static str,
        /// The I/O error kind.
        kind: std::io::ErrorKind,
        /// The I/O error's text.
        message: String,
    },
    /// Connecting (TCP plus ApiVersions) took too long.
    #[error("{addr}: no connection within {timeout_ms} ms")]
    ConnectTimeout {
        /// Broker address.
        addr: String,
        /// The limit.
        timeout_ms: u64,
    },
    /// The connection is closed or was poisoned; in-flight requests failed with this.
    #[error("{addr}: connection closed: {cause}")]
    Closed {
        /// Broker address.
        addr: String,
        /// Why it closed.
        cause: String,
    },
    /// No response within the request timeout. The request may still take effect.
    #[error("{addr}: {api} got no response within {timeout_ms} ms")]
    Timeout {
        /// Broker address.
        addr: String,
        /// The API called.
        api: &'static str,
        /// The limit.
        timeout_ms: u64,
    },
    /// Bytes from the broker could not be decoded; the connection is poisoned.
    #[error("protocol error: {source}")]
    Protocol {
        /// The codec error.
        #[from]
        source: ProtocolError,
    },
    /// The broker and this client share no version of an API.
    #[error("{addr}: no common version of {api}: we implement {}..={}, the broker {}", ours.min, ours.max, broker.map(|b| format!("{}..={}", b.min, b.max)).unwrap_or_else(|| "does not support it".into()))]
    UnsupportedVersion {
        /// Broker address.
        addr: String,
        /// The API.
        api: &'static str,
        /// Versions we implement.
        ours: Versions,
        /// Versions the broker supports, if any.
        broker: Option<Versions>,
    },
    /// The broker answered a connection-level request with an error code.
    #[error("{addr}: {api} failed: {code}")]
    Broker {
        /// Broker address.
        addr: String,
        /// The API.
        api: &'static str,
        /// The error code.
        code: ErrorCode,
    },
    // --- TLS and SASL (issue 10): all fatal, never retried as disconnects (`is_security`). ---
    /// A security setting cannot be used: a PEM file missing or malformed, SASL settings absent.
    #[error("invalid security configuration `{key}`: {message}")]
    SecurityConfig {
        /// The configuration key at fault (`ssl.ca.location`, ...).
        key: &'static str,
        /// What is wrong and what to change.
        message: String,
    },
    /// The broker's certificate does not chain to a trusted CA.
    #[error("{addr}: the broker's TLS certificate is not trusted ({message}): set ssl.ca.location to the CA that signed the broker's certificate")]
    CertificateNotTrusted {
        /// Broker address.
        addr: String,
        /// rustls' reason.
        message: String,
    },
    /// The broker's certificate is not valid for the host name we connected to.
    #[error("{addr}: the broker's TLS certificate is not valid for {server_name:?} ({message}): connect with a host name the certificate names, or fix the broker's certificate")]
    HostnameMismatch {
        /// Broker address.
        addr: String,
        /// The name checked (the host part of the address).
        server_name: String,
        /// rustls' reason.
        message: String,
    },
    /// The TLS handshake failed for another reason (protocol versions, our certificate refused, ...).
    #[error("{addr}: TLS handshake failed: {message}")]
    Tls {
        /// Broker address.
        addr: String,
        /// rustls' reason.
        message: String,
    },
    /// We spoke plaintext and the broker answered like a TLS listener.
    #[error("{addr}: the broker requires TLS ({evidence}): set security.protocol=SSL or SASL_SSL")]
    TlsRequired {
        /// Broker address.
        addr: String,
        /// What gave it away.
        evidence: String,
    },
    /// We started TLS and the broker did not answer like a TLS listener.
    #[error("{addr}: the broker does not speak TLS on this port ({evidence}): it may be a plaintext listener: set security.protocol=PLAINTEXT or SASL_PLAINTEXT, or use the broker's TLS port")]
    NotTls {
        /// Broker address.
        addr: String,
        /// What happened.
        evidence: String,
    },
    /// The broker rejected our credentials (SaslAuthenticate's error and message, KIP-152).
    #[error(
        "{addr}: SASL {mechanism} authentication failed: {message}: {}",
        auth_hint(mechanism)
    )]
    AuthenticationFailed {
        /// Broker address.
        addr: String,
        /// The mechanism (`PLAIN`, `SCRAM-SHA-256`, ...).
        mechanism: &'static str,
        /// The broker's error message (never contains our secret).
        message: String,
    },
    /// The broker does not enable the configured mechanism on this listener.
    #[error("{addr}: the broker does not enable SASL mechanism {mechanism} on this listener; it enables: {}: set sasl.mechanism to one of them", if enabled.is_empty() { "none".to_owned() } else { enabled.join(", ") })]
    UnsupportedMechanism {
        /// Broker address.
        addr: String,
        /// What we asked for.
        mechanism: &'static str,
        /// The mechanisms the broker listed in its SaslHandshake answer.
        enabled: Vec<String>,
    },
    /// SCRAM: the broker could not prove that it knows the password (wrong server signature,
    /// a nonce that does not extend ours, a malformed message). Rejected: it may be an impostor.
    #[error("{addr}: SASL {mechanism}: the broker failed to authenticate itself: {reason}")]
    ServerAuthenticationFailed {
        /// Broker address.
        addr: String,
        /// The mechanism.
        mechanism: &'static str,
        /// What did not verify.
        reason: String,
    },
    /// We did not authenticate and the listener requires SASL: it closed the connection after
    /// ApiVersions, and a SaslHandshake on a new connection was answered with its mechanisms.
    #[error("{addr}: the broker requires SASL authentication on this listener (it closed the connection at the first request after ApiVersions; it enables {}): set security.protocol=SASL_PLAINTEXT or SASL_SSL and sasl.mechanism to one of those, with sasl.username and sasl.password", if enabled.is_empty() { "no mechanism it names".to_owned() } else { enabled.join(", ") })]
    SaslRequired {
        /// Broker address.
        addr: String,
        /// The mechanisms the listener enables.
        enabled: Vec<String>,
    },
    /// We authenticate with SASL and the listener does not use it (SaslHandshake answered
    /// ILLEGAL_SASL_STATE, as a Kafka listener without SASL does).
    #[error("{addr}: this listener does not use SASL (SaslHandshake answered {code}): set security.protocol=PLAINTEXT or SSL, or use the broker's SASL port")]
    SaslNotEnabled {
        /// Broker address.
        addr: String,
        /// The error code.
        code: ErrorCode,
    },
    /// OAUTHBEARER: the token command failed.
    #[error("sasl.oauthbearer.token.command {command:?} failed: {message}")]
    TokenCommand {
        /// The command.
        command: String,
        /// Exit status or I/O error (stderr is not included: it may hold secrets).
        message: String,
    },
    // --- end TLS and SASL ---
}

fn auth_hint(mechanism: &str) -> &'static str {
    match mechanism {
        "OAUTHBEARER" => "check the token (sasl.oauthbearer.token or sasl.oauthbearer.token.command)",
        m if m.starts_with("SCRAM") => "check sasl.username and sasl.password (and that the broker has SCRAM credentials for this user and mechanism)",
        _ => "check sasl.username and sasl.password",
    }
}

impl ConnectionError {
    pub(crate) fn io(addr: &str, op: &'static str, e: &std::io::Error) -> Self {
        Self::Io {
            addr: addr.to_owned(),
            op,
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// Whether the request certainly did not reach the broker, or the connection died: a new
    /// connection may succeed. Timeouts are not included: their outcome is unknown.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            Self::Io { .. } | Self::ConnectTimeout { .. } | Self::Closed { .. }
        )
    }

    /// Whether this is a TLS or SASL failure: a configuration or credential problem that the
    /// same settings will meet again, so it is fatal and never retried as a disconnect.
    pub fn is_security(&self) -> bool {
        matches!(
            self,
            Self::SecurityConfig { .. }
                | Self::CertificateNotTrusted { .. }
                | Self::HostnameMismatch { .. }
                | Self::Tls { .. }
                | Self::TlsRequired { .. }
                | Self::NotTls { .. }
                | Self::AuthenticationFailed { .. }
                | Self::UnsupportedMechanism { .. }
                | Self::ServerAuthenticationFailed { .. }
                | Self::TokenCommand { .. }
                | Self::SaslRequired { .. }
                | Self::SaslNotEnabled { .. }
        )
    }
}
