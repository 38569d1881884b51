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
}
