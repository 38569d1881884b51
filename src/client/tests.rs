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
