//! Producer behaviour against the scripted fake cluster ([`crate::client::fake_cluster`]): what
//! a single real broker cannot show, such as partitions led by different brokers, one of which
//! never answers.

use std::time::Duration;

use crate::client::fake_cluster::FakeCluster;
use crate::client::producer::{Producer, ProducerConfig, ProducerRecord};
use crate::client::{Client, ClientConfig};
use crate::connection::ConnectionConfig;

async fn client(cluster: &FakeCluster, connect_timeout_ms: u64) -> Client {
    let mut config = ClientConfig::new(&cluster.addr(1));
    config.connection = ConnectionConfig {
        connect_timeout_ms,
        ..ConnectionConfig::default()
    };
    Client::connect(config)
        .await
        .expect("connect to the fake cluster")
}

fn producer(client: Client) -> Producer {
    let config = ProducerConfig {
        linger_ms: 0,
        ..ProducerConfig::default()
    };
    Producer::with_producer_id(client, config, None, 7, 0)
}

/// Pins the basic contract: records to partitions on different brokers are acknowledged with
/// consecutive offsets, and each partition's batches carry consecutive sequences from 0.
#[tokio::test]
async fn partitions_on_two_brokers_get_ordered_offsets_and_sequences() {
    let cluster = FakeCluster::start(2).await;
    cluster.add_topic("t", &[1, 2]);
    let producer = producer(client(&cluster, 10_000).await);
    let mut deliveries = Vec::new();
    for i in 0..20 {
        let record = ProducerRecord::new("t", format!("{i}")).with_partition(i % 2);
        deliveries.push((i % 2, producer.send(record).await.expect("send")));
    }
    producer.flush().await.expect("flush");
    let mut next = [0i64; 2];
    for (partition, delivery) in deliveries {
        let meta = delivery.await.expect("delivered");
        assert_eq!(meta.partition, partition);
        assert_eq!(meta.offset, next[partition as usize]);
        next[partition as usize] += 1;
    }
    for (node, partition) in [(1, 0), (2, 1)] {
        let mut expected_sequence = 0;
        for (n, _, _, sequence, count) in cluster
            .produced()
            .into_iter()
            .filter(|(_, _, p, _, _)| *p == partition)
        {
            assert_eq!(n, node, "partition {partition} goes to its leader");
            assert_eq!(sequence, expected_sequence, "partition {partition}");
            expected_sequence += count;
        }
        assert_eq!(expected_sequence, 10);
    }
}
