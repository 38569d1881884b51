//! Produce and fetch round trips, compression, idempotent retries.

use std::collections::HashMap;

use bytes::Bytes;
use exactly::client::admin::Isolation;
use exactly::client::fetcher::{FetchConfig, Fetcher};
use exactly::client::partitioner::partition_for_key;
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::ClientError;
use exactly::protocol::compression::Compression;
use exactly::protocol::record_batch::RecordHeader;

use crate::common::{client, create_topic, read_all};

#[tokio::test]
async fn round_trip_every_codec() {
    let client = client().await;
    for codec in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let topic = create_topic(&client, &format!("codec-{codec}"), 1).await;
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                compression: codec,
                ..ProducerConfig::default()
            },
        )
        .await
        .expect("producer");
        let mut sent = Vec::new();
        let mut deliveries = Vec::new();
        for i in 0..500u32 {
            let record = ProducerRecord {
                topic: topic.clone(),
                partition: Some(0),
                key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
                value: (i % 7 != 0)
                    .then(|| Bytes::from(format!("value-{i}-{}", "x".repeat((i % 50) as usize)))),
                headers: vec![RecordHeader {
                    key: format!("h{i}"),
                    value: (i % 2 == 0).then(|| Bytes::from_static(b"hv")),
                }],
                timestamp_ms: Some(1_700_000_000_000 + i64::from(i)),
            };
            sent.push(record.clone());
            deliveries.push(producer.send(record).await.expect("send"));
        }
        producer.flush().await.expect("flush");
        for (i, d) in deliveries.into_iter().enumerate() {
            let meta = d.await.expect("delivered");
            assert_eq!(
                meta.offset, i as i64,
                "{codec}: offsets are assigned in send order"
            );
        }
        let got = read_all(&client, &topic, 0, Isolation::ReadUncommitted).await;
        assert_eq!(got.len(), sent.len(), "{codec}");
        for (i, (r, s)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(r.offset, i as i64, "{codec}");
            assert_eq!(r.key, s.key, "{codec} key of record {i}");
            assert_eq!(r.value, s.value, "{codec} value of record {i}");
            assert_eq!(r.headers, s.headers, "{codec} headers of record {i}");
            assert_eq!(
                r.timestamp,
                s.timestamp_ms.unwrap(),
                "{codec} timestamp of record {i}"
            );
        }
    }
}

#[tokio::test]
async fn keyed_records_go_to_the_java_clients_partition() {
    let client = client().await;
    let topic = create_topic(&client, "keyed", 5).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..50 {
        let key = format!("user-{i}");
        deliveries.push((
            key.clone(),
            producer
                .send(ProducerRecord::new(topic.clone(), "v").with_key(key))
                .await
                .unwrap(),
        ));
    }
    producer.flush().await.unwrap();
    for (key, d) in deliveries {
        assert_eq!(
            d.await.unwrap().partition,
            partition_for_key(key.as_bytes(), 5),
            "{key}"
        );
    }
}

/// Kills the producer's connections while batches are in flight. Retries must not duplicate or
/// lose or reorder anything: the broker deduplicates by producer id and sequence.
#[tokio::test]
async fn idempotent_retries_after_dropped_connections() {
    let client = client().await;
    let topic = create_topic(&client, "idempotent", 3).await;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger_ms: 1,
            batch_bytes_max: 4 * 1024,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let total = 30_000u32;
    let killer = {
        let client = client.clone();
        tokio::spawn(async move {
            for _ in 0..8 {
                tokio::time::sleep(std::time::Duration::from_millis(40)).await;
                client.kill_connections();
            }
        })
    };
    let mut deliveries = Vec::new();
    for i in 0..total {
        let record =
            ProducerRecord::new(topic.clone(), format!("{i:08}")).with_partition((i % 3) as i32);
        deliveries.push(producer.send(record).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    killer.await.unwrap();
    for d in deliveries {
        d.await.expect("every record acknowledged");
    }
    let mut per_partition: HashMap<i32, Vec<u32>> = HashMap::new();
    for p in 0..3 {
        for r in read_all(&client, &topic, p, Isolation::ReadUncommitted).await {
            let n: u32 = std::str::from_utf8(r.value.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            per_partition.entry(p).or_default().push(n);
        }
    }
    for p in 0..3 {
        let got = per_partition.remove(&p).unwrap_or_default();
        let want: Vec<u32> = (0..total).filter(|i| i % 3 == p as u32).collect();
        assert_eq!(
            got.len(),
            want.len(),
            "partition {p}: no duplicates, nothing lost"
        );
        assert_eq!(got, want, "partition {p}: in order");
    }
}

#[tokio::test]
async fn offset_out_of_range_is_a_clear_error() {
    let client = client().await;
    let topic = create_topic(&client, "oor", 1).await;
    let fetcher = Fetcher::new(client.clone(), FetchConfig::default());
    let err = fetcher.fetch(&topic, 0, 1_000).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::OffsetOutOfRange {
            topic: topic.clone(),
            partition: 0,
            offset: 1_000
        }
    );
    assert_eq!(
        err.to_string(),
        format!("offset 1000 is out of range for {topic}/0")
    );
}
