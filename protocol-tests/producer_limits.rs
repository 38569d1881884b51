//! The producer against the topic's own size limit (`max.message.bytes`), which the client does
//! not know in advance (issue 6, finding 8): a batch the broker refuses as MESSAGE_TOO_LARGE is
//! split and retried, as the Java client does; a record too large on its own fails alone.

use exactly::client::admin::{Admin, Isolation};
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::ClientError;

use crate::common::{client, read_all, unique_topic};

/// A topic whose batches may hold at most `max_message_bytes`.
async fn small_topic(client: &exactly::client::Client, max_message_bytes: usize) -> String {
    let topic = unique_topic("small-batches");
    Admin::new(client.clone())
        .create_topic(
            &topic,
            1,
            &[("max.message.bytes", &max_message_bytes.to_string())],
        )
        .await
        .expect("create topic");
    topic
}

/// Big batches, sent together (a long linger), so that the first batch exceeds the topic limit.
fn config() -> ProducerConfig {
    ProducerConfig {
        linger_ms: 200,
        batch_bytes_max: 256 * 1024,
        ..ProducerConfig::default()
    }
}

fn values(records: &[exactly::protocol::record_batch::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.as_deref().unwrap().to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_batch_over_the_topic_limit_is_split_and_every_record_written_once_in_order() {
    let client = client().await;
    let topic = small_topic(&client, 2_000).await;
    let producer = Producer::new(client.clone(), config()).await.unwrap();
    let sent: Vec<String> = (0..40)
        .map(|i| format!("{i:03}-{}", "x".repeat(300)))
        .collect();
    let mut deliveries = Vec::new();
    for value in &sent {
        let record = ProducerRecord::new(topic.clone(), value.clone()).with_partition(0);
        deliveries.push(producer.send(record).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let meta = delivery.await.expect("every record delivered");
        assert_eq!(meta.offset, i as i64, "in order, each once");
    }
    assert_eq!(producer.error(), None, "the producer goes on");
    let written = read_all(&client, &topic, 0, Isolation::ReadUncommitted).await;
    assert_eq!(values(&written), sent);
}

#[tokio::test]
async fn a_record_over_the_topic_limit_fails_alone_and_the_others_are_written_in_order() {
    let client = client().await;
    let topic = small_topic(&client, 2_000).await;
    let producer = Producer::new(client.clone(), config()).await.unwrap();
    let values_sent = [
        "a".to_owned(),
        "b".to_owned(),
        "x".repeat(5_000),
        "c".to_owned(),
    ];
    let mut deliveries = Vec::new();
    for value in &values_sent {
        let record = ProducerRecord::new(topic.clone(), value.clone()).with_partition(0);
        deliveries.push(producer.send(record).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    let mut results = Vec::new();
    for delivery in deliveries {
        results.push(delivery.await);
    }
    let error = results[2].clone().expect_err("the oversize record fails");
    match &error {
        ClientError::Broker {
            api: "Produce",
            code,
            partition: Some(0),
            ..
        } if code.name == "MESSAGE_TOO_LARGE" => {}
        other => panic!("expected MESSAGE_TOO_LARGE for the record, got {other:?}"),
    }
    assert!(
        error.to_string().contains("MESSAGE_TOO_LARGE"),
        "a clear message: {error}"
    );
    let offsets: Vec<i64> = [0, 1, 3]
        .iter()
        .map(|&i| results[i].clone().expect("delivered").offset)
        .collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    assert_eq!(producer.error(), None, "the producer goes on");
    // Later records continue the partition's sequence without a gap.
    let after = producer
        .send(ProducerRecord::new(topic.clone(), "d").with_partition(0))
        .await
        .unwrap();
    producer.flush().await.expect("flush");
    assert_eq!(after.await.expect("delivered").offset, 3);
    let written = read_all(&client, &topic, 0, Isolation::ReadUncommitted).await;
    assert_eq!(values(&written), ["a", "b", "c", "d"]);
}

/// The oversize record's batch is refused while the batches behind it are already in flight
/// (one record per batch, five batches in flight): the broker refuses those as out of order, and
/// they are sent again one sequence lower, in order, once each.
#[tokio::test]
async fn batches_in_flight_behind_an_oversize_record_are_resent_without_a_gap() {
    let client = client().await;
    let topic = small_topic(&client, 2_000).await;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger_ms: 0,
            batch_bytes_max: 100,
            ..config()
        },
    )
    .await
    .unwrap();
    let first = producer
        .send(ProducerRecord::new(topic.clone(), "first").with_partition(0))
        .await
        .unwrap();
    assert_eq!(first.await.expect("delivered").offset, 0);
    let mut values_sent = vec!["x".repeat(5_000)];
    values_sent.extend((0..20).map(|i| format!("after-{i:02}")));
    let mut deliveries = Vec::new();
    for value in &values_sent {
        let record = ProducerRecord::new(topic.clone(), value.clone()).with_partition(0);
        deliveries.push(producer.send(record).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    let mut deliveries = deliveries.into_iter();
    let error = deliveries.next().unwrap().await.expect_err("oversize");
    assert!(error.to_string().contains("MESSAGE_TOO_LARGE"), "{error}");
    for (i, delivery) in deliveries.enumerate() {
        assert_eq!(delivery.await.expect("delivered").offset, i as i64 + 1);
    }
    let written = read_all(&client, &topic, 0, Isolation::ReadUncommitted).await;
    let mut expected = vec!["first".to_owned()];
    expected.extend(values_sent[1..].iter().cloned());
    assert_eq!(values(&written), expected);
}
