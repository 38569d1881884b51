//! The library's partition reader against the real broker: where "the end" is under each
//! isolation while a transaction is open, and start positions.

use exactly::client::fetcher::{FetchConfig, Fetcher};
use exactly::client::producer::ProducerRecord;
use exactly::client::reader::PartitionReader;
use exactly::client::transaction::{TransactionConfig, TransactionalProducer};
use exactly::client::types::{Isolation, OffsetSpec, Record, TopicPartition};
use exactly::client::Client;

use crate::common::{client, create_topic, settle, unique_topic};

fn fetcher(client: &Client, isolation: Isolation) -> Fetcher {
    Fetcher::new(
        client.clone(),
        FetchConfig {
            isolation,
            max_wait_ms: 50,
            ..FetchConfig::default()
        },
    )
}

fn values(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect()
}

async fn send(producer: &TransactionalProducer, topic: &str, values: &[&str]) {
    for v in values {
        let record = ProducerRecord::new(topic, v.to_string()).with_partition(0);
        producer.send(record).await.expect("send");
    }
    producer.flush().await.expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_to_the_lso_or_the_high_watermark() {
    let client = client().await;
    let topic = create_topic(&client, "reader", 1).await;
    let tp = TopicPartition::new(topic.as_str(), 0);
    let producer =
        TransactionalProducer::init(client.clone(), TransactionConfig::new(unique_topic("r")))
            .await
            .expect("init");
    // Offsets 0..=2 committed (marker at 3), then 4..=5 in a transaction left open.
    producer.begin().await.expect("begin");
    send(&producer, &topic, &["c0", "c1", "c2"]).await;
    producer.commit().await.expect("commit");
    settle(&client, &topic, 1).await;
    producer.begin().await.expect("begin");
    send(&producer, &topic, &["o4", "o5"]).await;

    let committed = fetcher(&client, Isolation::ReadCommitted);
    let uncommitted = fetcher(&client, Isolation::ReadUncommitted);

    let mut reader = PartitionReader::new(committed.clone(), tp.clone(), OffsetSpec::Earliest)
        .await
        .expect("reader");
    assert!(!reader.at_end(), "the end is unknown before a fetch");
    assert_eq!(
        values(&reader.read_to_end().await.expect("read")),
        ["c0", "c1", "c2"]
    );
    assert!(reader.at_end());
    assert_eq!(reader.position(), 4, "read_committed stops at the LSO");

    let mut dirty = PartitionReader::new(uncommitted.clone(), tp.clone(), OffsetSpec::Offset(1))
        .await
        .expect("reader");
    assert_eq!(
        values(&dirty.read_to_end().await.expect("read")),
        ["c1", "c2", "o4", "o5"]
    );
    assert_eq!(
        dirty.position(),
        6,
        "read_uncommitted stops at the high watermark"
    );

    // Latest means the end each isolation sees.
    let latest = PartitionReader::new(committed.clone(), tp.clone(), OffsetSpec::Latest)
        .await
        .expect("reader");
    assert_eq!(latest.position(), 4);
    let latest = PartitionReader::new(uncommitted, tp.clone(), OffsetSpec::Latest)
        .await
        .expect("reader");
    assert_eq!(latest.position(), 6);

    // Once the transaction is aborted the committed reader moves past it and finds nothing.
    producer.abort().await.expect("abort");
    settle(&client, &topic, 1).await;
    assert!(reader.read_to_end().await.expect("read").is_empty());
    assert_eq!(reader.position(), 7, "past the abort marker at 6");
    assert!(reader.at_end());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_several_partitions_per_request() {
    use exactly::client::producer::{Producer, ProducerConfig};
    let client = client().await;
    let a = create_topic(&client, "multi-a", 3).await;
    let b = create_topic(&client, "multi-b", 1).await;
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .expect("producer");
    let mut deliveries = Vec::new();
    for (topic, partitions) in [(&a, 3), (&b, 1)] {
        for p in 0..partitions {
            for i in 0..5 {
                let record = ProducerRecord::new(topic.as_str(), format!("{topic}-{p}-{i}"))
                    .with_partition(p);
                deliveries.push(producer.send(record).await.expect("send"));
            }
        }
    }
    producer.flush().await.expect("flush");
    for d in deliveries {
        d.await.expect("delivered");
    }

    let fetcher = fetcher(&client, Isolation::ReadCommitted);
    let wanted = vec![
        (TopicPartition::new(a.as_str(), 0), 0),
        (TopicPartition::new(b.as_str(), 0), 2),
        (TopicPartition::new(a.as_str(), 2), 1),
        (TopicPartition::new(a.as_str(), 1), 0),
        // Listed twice, and a partition that does not exist.
        (TopicPartition::new(a.as_str(), 0), 3),
        (TopicPartition::new(a.as_str(), 9), 0),
    ];
    let results = fetcher.fetch_partitions(&wanted).await;
    assert_eq!(results.len(), wanted.len());
    for ((tp, offset), result) in wanted.iter().zip(&results) {
        if tp.partition == 9 {
            let err = result.as_ref().expect_err("partition 9 does not exist");
            assert!(err.to_string().contains(&a), "{err}");
            continue;
        }
        let fetched = result.as_ref().expect("fetched");
        let want: Vec<String> = (*offset..5)
            .map(|i| format!("{}-{}-{i}", tp.topic, tp.partition))
            .collect();
        assert_eq!(values(&fetched.records), want, "{tp} from {offset}");
        assert_eq!(fetched.next_offset, 5, "{tp}");
        assert_eq!(fetched.high_watermark, 5, "{tp}");
    }
}
