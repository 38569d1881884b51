//! Reading a compacted topic after the log cleaner has run over transactional writes (finding 2
//! of issue 6).
//!
//! The cleaner removes superseded records, aborted data and, once `delete.retention.ms` has
//! passed, the transaction markers whose data is gone. It keeps a batch emptied of its records
//! when the batch holds a producer's last sequence or last epoch, so that the producer state
//! (idempotence, fencing) survives a reload of the log: such a batch may be a data batch or a
//! control batch whose marker record was removed. A reader must skip these empty batches and
//! still move its position past them. Before the fix, an empty control batch made every fetch of
//! the partition fail with "control batch without a record".

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use exactly::client::admin::{Admin, Isolation};
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::transaction::{TransactionConfig, TransactionalProducer};
use exactly::client::Client;
use exactly::protocol::messages::kstr;
use exactly::protocol::messages::messages::fetch_request::{FetchPartition, FetchTopic};
use exactly::protocol::messages::messages::{BrokerId, FetchRequest, TopicName};
use exactly::protocol::record_batch::{decode_batches, BatchHeader};

use crate::common::{client, read_all, unique_topic};

const KEYS: usize = 4;
/// How long the writers keep going while waiting for the cleaner to have left both kinds of
/// empty batch. With `log.cleaner.backoff.ms=500` (scripts/kafka) it takes a few seconds.
const CLEANER_WAIT_MS: u64 = 90_000;

fn key(k: usize) -> String {
    format!("key-{k}")
}

/// Every batch header of the partition, read with raw Fetch requests (read_uncommitted) so that
/// the wait does not depend on the fetcher under test. One Fetch returns data from one log
/// segment only, so this walks the log batch by batch up to the high watermark.
async fn batch_headers(client: &Client, topic: &str) -> Vec<BatchHeader> {
    let leader = client.leader(topic, 0).await.expect("leader");
    let conn = client
        .broker(leader)
        .await
        .expect("connection to the leader");
    let mut headers = Vec::new();
    let mut offset = 0;
    loop {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(8 << 20)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(kstr(topic)))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(8 << 20)])]);
        let response = conn.request(&request).await.expect("raw fetch");
        let data = &response.responses[0].partitions[0];
        assert_eq!(data.error_code, 0, "raw fetch of {topic} at {offset}");
        let before = offset;
        for batch in decode_batches(data.records.clone().unwrap_or_default(), 64 << 20) {
            let batch = batch.expect("batch header");
            offset = batch.header.last_offset() + 1;
            headers.push(batch.header);
        }
        if offset >= data.high_watermark {
            return headers;
        }
        assert!(
            offset > before,
            "raw fetch of {topic} at {offset} made no progress"
        );
    }
}

/// The latest value of each key among `records`, in offset order.
fn latest(records: &[exactly::protocol::record_batch::Record]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut last_offset = -1;
    for r in records {
        assert!(
            r.offset > last_offset,
            "offsets go backwards at {}",
            r.offset
        );
        last_offset = r.offset;
        let k = String::from_utf8(r.key.clone().expect("keyed").to_vec()).unwrap();
        let v = String::from_utf8(r.value.clone().expect("value").to_vec()).unwrap();
        out.insert(k, v);
    }
    out
}

async fn write_txn(producer: &TransactionalProducer, topic: &str, tag: &str, commit: bool) {
    producer.begin().await.expect("begin");
    for k in 0..KEYS {
        let record = ProducerRecord::new(topic, format!("{tag}-{k}"))
            .with_key(key(k))
            .with_partition(0);
        producer.send(record).await.expect("send");
    }
    if commit {
        producer.commit().await.expect("commit");
    } else {
        producer.abort().await.expect("abort");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_cleaned_transactional_log() {
    let client = client().await;
    let topic = unique_topic("compacted");
    Admin::new(client.clone())
        .create_topic(
            &topic,
            1,
            &[
                ("cleanup.policy", "compact"),
                // Roll segments quickly: the cleaner never touches the active segment.
                ("segment.ms", "100"),
                ("min.cleanable.dirty.ratio", "0.01"),
                ("min.compaction.lag.ms", "0"),
                ("max.compaction.lag.ms", "100"),
                // Markers and tombstones may go on the cleaner's next pass.
                ("delete.retention.ms", "0"),
            ],
        )
        .await
        .expect("create compacted topic");

    // An idempotent producer writes each key once; its last batch, emptied by the cleaner once
    // the keys are overwritten, is kept for its sequence numbers: an empty data batch.
    let idempotent = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .expect("idempotent producer");
    let mut deliveries = Vec::new();
    for k in 0..KEYS {
        let record = ProducerRecord::new(topic.as_str(), format!("idempotent-{k}"))
            .with_key(key(k))
            .with_partition(0);
        deliveries.push(idempotent.send(record).await.expect("send"));
    }
    idempotent.flush().await.expect("flush");
    for d in deliveries {
        d.await.expect("delivered");
    }

    // Producer A commits once and aborts once, then stops: its abort marker stays as its last
    // word (it carries A's latest epoch) and becomes an empty control batch once removable.
    let a = TransactionalProducer::init(client.clone(), TransactionConfig::new(unique_topic("a")))
        .await
        .expect("init A");
    write_txn(&a, &topic, "a-committed", true).await;
    write_txn(&a, &topic, "a-aborted", false).await;

    // Producer B overwrites every key, committing and sometimes aborting, until the cleaner has
    // left both kinds of empty batch.
    let b = TransactionalProducer::init(client.clone(), TransactionConfig::new(unique_topic("b")))
        .await
        .expect("init B");
    let started = Instant::now();
    let mut round = 0u32;
    loop {
        round += 1;
        write_txn(&b, &topic, &format!("b-{round}-committed"), true).await;
        if round % 3 == 0 {
            write_txn(&b, &topic, &format!("b-{round}-aborted"), false).await;
        }
        if round % 10 == 0 {
            let headers = batch_headers(&client, &topic).await;
            let empty_control = headers.iter().any(|h| h.is_control && h.record_count == 0);
            let empty_data = headers.iter().any(|h| !h.is_control && h.record_count == 0);
            if empty_control && empty_data {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_millis(CLEANER_WAIT_MS),
                "after {round} rounds the cleaner has not left an empty control batch \
                 ({empty_control}) and an empty data batch ({empty_data}) in {topic}: \
                 {headers:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The last word on every key: a committed transaction, then an aborted one on top of it
    // (not yet cleaned, so read_uncommitted sees it and read_committed must filter it).
    write_txn(&b, &topic, "b-final-committed", true).await;
    write_txn(&b, &topic, "b-final-aborted", false).await;
    crate::common::settle(&client, &topic, 1).await;

    let committed = read_all(&client, &topic, 0, Isolation::ReadCommitted).await;
    let want: BTreeMap<String, String> = (0..KEYS)
        .map(|k| (key(k), format!("b-final-committed-{k}")))
        .collect();
    assert_eq!(latest(&committed), want, "read_committed, latest per key");
    assert!(
        committed.iter().all(
            |r| !String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                .contains("aborted")
        ),
        "read_committed returned aborted records"
    );

    let uncommitted = read_all(&client, &topic, 0, Isolation::ReadUncommitted).await;
    // The cleaner may already have removed the final aborted records (aborted data is removable
    // as soon as its marker is written), so read_uncommitted shows either them or, under them,
    // the final committed ones; never anything older.
    let latest_uncommitted = latest(&uncommitted);
    assert_eq!(
        latest_uncommitted.len(),
        KEYS,
        "read_uncommitted, one value per key"
    );
    for k in 0..KEYS {
        let value = &latest_uncommitted[&key(k)];
        assert!(
            *value == format!("b-final-aborted-{k}") || *value == format!("b-final-committed-{k}"),
            "read_uncommitted, latest for key {k}: {value}"
        );
    }
}
