//! Client behaviour against the scripted fake cluster ([`super::fake_cluster`]).

use std::time::Duration;

use super::fake_cluster::FakeCluster;
use super::{Client, ClientConfig};
use crate::connection::backoff::BackoffConfig;

/// An address on loopback where nothing listens: connecting is refused at once.
async fn refused_addr() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A bootstrap broker that is down must not cost a whole retry sequence before the next one is
/// tried. The retry deadline is far beyond the test's bound, so a client that keeps retrying the
/// first address fails the test.
#[tokio::test]
async fn a_dead_bootstrap_broker_does_not_hold_up_the_next() {
    let cluster = FakeCluster::start(1).await;
    cluster.add_topic("t", &[1]);
    let mut config = ClientConfig::new(&format!("{},{}", refused_addr().await, cluster.addr(1)));
    config.retry = BackoffConfig {
        deadline_ms: 600_000,
        ..BackoffConfig::default()
    };
    let client = tokio::time::timeout(Duration::from_secs(20), Client::connect(config))
        .await
        .expect("the second bootstrap broker is tried without waiting out the first")
        .expect("connected");
    assert_eq!(client.cached_leader("t", 0), Some(1));
}

// --- TLS and SASL (issue 10) ---

/// A listener that answers every connection with a TLS alert record, as a TLS listener does to
/// a plaintext client.
async fn tls_alerting_addr() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 64];
            let _ = socket.read(&mut buf).await;
            // Alert record: fatal (2), decode_error (50).
            let _ = socket
                .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32])
                .await;
        }
    });
    addr
}

/// A TLS or SASL failure is fatal: `Client::connect` reports it at once instead of retrying it
/// as a disconnect until the retry deadline (far beyond the test's bound here).
#[tokio::test]
async fn a_security_failure_is_reported_at_once_not_retried() {
    use crate::client::ClientError;
    use crate::connection::ConnectionError;
    use crate::protocol::error_codes::Class;
    let mut config = ClientConfig::new(&tls_alerting_addr().await);
    config.retry = BackoffConfig {
        deadline_ms: 600_000,
        ..BackoffConfig::default()
    };
    let err = tokio::time::timeout(Duration::from_secs(20), Client::connect(config))
        .await
        .expect("a security failure is not retried")
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Connection(ConnectionError::TlsRequired { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.class(), Class::Fatal);
    assert!(!err.is_retriable());
}

/// A TLS file that cannot be read is reported when the client is created, naming its key,
/// before any connection is tried.
#[tokio::test]
async fn a_missing_ca_file_is_reported_at_client_creation() {
    use crate::client::ClientError;
    use crate::connection::{ConnectionError, SecurityConfig};
    let mut config = ClientConfig::new(&refused_addr().await);
    config.connection.security = SecurityConfig::from_properties([
        ("security.protocol", "SSL"),
        ("ssl.ca.location", "/nonexistent/exactly-ca.pem"),
    ])
    .unwrap();
    let err = Client::connect(config).await.unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Connection(ConnectionError::SecurityConfig {
                key: "ssl.ca.location",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/nonexistent/exactly-ca.pem"),
        "{err}"
    );
}
