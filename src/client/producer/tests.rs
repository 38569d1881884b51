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

/// Finding 7: a leader that accepts connections but never answers must not hold up partitions
/// led by a healthy broker. Partition 1's leader is silent; partition 0's record, sent after
/// partition 1's, is acknowledged while partition 1's is still pending. The connect timeout is
/// far beyond the test's bound, so a sender that waits for the silent broker fails the test.
#[tokio::test]
async fn a_silent_leader_does_not_stall_partitions_on_other_brokers() {
    let cluster = FakeCluster::start(2).await;
    cluster.add_topic("t", &[1, 2]);
    cluster.silence(2);
    let producer = producer(client(&cluster, 120_000).await);
    let mut stuck = producer
        .send(ProducerRecord::new("t", "to the silent leader").with_partition(1))
        .await
        .expect("send");
    // Wait until the sender is connecting to the silent broker.
    for _ in 0..1000 {
        if cluster.accepted(2) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cluster.accepted(2) > 0, "the producer connects to broker 2");
    let healthy = producer
        .send(ProducerRecord::new("t", "to the healthy leader").with_partition(0))
        .await
        .expect("send");
    let meta = tokio::time::timeout(Duration::from_secs(20), healthy)
        .await
        .expect("partition 0 is not held up by partition 1's silent leader")
        .expect("delivered");
    assert_eq!((meta.partition, meta.offset), (0, 0));
    assert!(
        tokio::time::timeout(Duration::ZERO, &mut stuck)
            .await
            .is_err(),
        "partition 1's record is still pending"
    );
}

/// A retriable answer (NOT_LEADER_OR_FOLLOWER) sends the batch again, after a metadata refresh,
/// with the same sequence; its records are acknowledged once.
#[tokio::test]
async fn a_batch_refused_by_a_stale_leader_is_resent_with_its_sequence() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{ApiKey, ProduceResponse};

    use crate::client::fake_cluster::{Action, RequestKind, ResponseKind};
    use crate::protocol::error_codes::codes;

    let cluster = FakeCluster::start(1).await;
    cluster.add_topic("t", &[1]);
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&refused);
    cluster.control(ApiKey::Produce, true, move |seen, _| {
        if counter.fetch_add(1, Ordering::SeqCst) > 0 {
            return None;
        }
        let RequestKind::Produce(produce) = &seen.body else {
            return None;
        };
        let topic = &produce.topic_data[0];
        let answer =
            ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_index(topic.partition_data[0].index)
                    .with_error_code(codes::NOT_LEADER_OR_FOLLOWER)])]);
        Some(Action::Respond(ResponseKind::Produce(answer)))
    });
    let producer = producer(client(&cluster, 10_000).await);
    let mut deliveries = Vec::new();
    for i in 0..3 {
        let record = ProducerRecord::new("t", format!("{i}")).with_partition(0);
        deliveries.push(producer.send(record).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    for (i, delivery) in deliveries.into_iter().enumerate() {
        assert_eq!(delivery.await.expect("delivered").offset, i as i64);
    }
    assert!(
        refused.load(Ordering::SeqCst) >= 2,
        "refused once, then resent"
    );
    let sequences: Vec<i32> = cluster.produced().iter().map(|p| p.3).collect();
    assert_eq!(sequences.first(), Some(&0), "resent with its sequence");
    assert_eq!(producer.error(), None);
}
