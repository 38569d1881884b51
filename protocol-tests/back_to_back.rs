//! Back-to-back transactions against the real broker, with the wait for the previous
//! transaction's markers forced on for every transaction (`settle_window_ms` far larger than the
//! run): each transaction's first write — a record, or the offsets — follows the previous EndTxn
//! answer at once, asks the coordinator (DescribeTransactions) and, when it finds PrepareCommit or
//! PrepareAbort, waits. Commits and aborts must land exactly as issued, in order, with the
//! offsets of committed transactions only. Shared by the `protocol` suite (transactions
//! version 2) and the `txn_version_1` binary (explicit AddPartitionsToTxn).

use exactly::client::admin::Isolation;
use exactly::client::producer::ProducerRecord;
use exactly::client::transaction::{
    GroupMetadata, TransactionConfig, TransactionalProducer, TxnOutcome,
};
use exactly::client::Client;

use crate::common::{create_topic, group_offset, read_all, settle, unique_topic};

const TRANSACTIONS: usize = 30;
const PARTITIONS: i32 = 3;
const RECORDS: usize = 4;

/// Runs the transactions and checks what readers see.
pub async fn back_to_back_transactions(client: &Client, label: &str) {
    let topic = create_topic(client, label, PARTITIONS).await;
    let group = unique_topic(&format!("{label}-group"));
    let producer = TransactionalProducer::init(
        client.clone(),
        TransactionConfig {
            settle_window_ms: 3_600_000,
            ..TransactionConfig::new(unique_topic(label))
        },
    )
    .await
    .unwrap();

    let mut committed: Vec<Vec<String>> = vec![Vec::new(); PARTITIONS as usize];
    let mut aborted = 0;
    let mut last_committed_offset = None;
    for t in 0..TRANSACTIONS {
        producer.begin().await.unwrap();
        // Every third transaction writes its offsets first: then AddOffsetsToTxn is the first
        // write that waits.
        let offsets_first = t % 3 == 1;
        if offsets_first {
            producer
                .send_offsets(
                    &GroupMetadata::standalone(&group),
                    &[(topic.clone(), 0, t as i64)],
                )
                .await
                .unwrap();
        }
        let mut values = Vec::new();
        for i in 0..RECORDS {
            let partition = ((t + i) % PARTITIONS as usize) as i32;
            let value = format!("t{t:02}-r{i}");
            producer
                .send(ProducerRecord::new(topic.as_str(), value.clone()).with_partition(partition))
                .await
                .unwrap();
            values.push((partition, value));
        }
        if t % 5 == 4 {
            assert_eq!(producer.abort().await.unwrap(), TxnOutcome::Aborted);
            aborted += values.len();
        } else {
            assert_eq!(producer.commit().await.unwrap(), TxnOutcome::Committed);
            for (p, v) in values {
                committed[p as usize].push(v);
            }
            if offsets_first {
                last_committed_offset = Some(t as i64);
            }
        }
    }

    let metrics = producer.metrics().await;
    assert!(
        metrics.settle_probes >= (TRANSACTIONS - 1) as u64,
        "every transaction after the first asked whether the previous one had ended: {metrics:?}"
    );
    settle(client, &topic, PARTITIONS).await;
    let mut total = 0;
    for p in 0..PARTITIONS {
        let seen: Vec<String> = read_all(client, &topic, p, Isolation::ReadCommitted)
            .await
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect();
        assert_eq!(
            seen, committed[p as usize],
            "partition {p}: committed records once each, in order; aborted ones never"
        );
        total += read_all(client, &topic, p, Isolation::ReadUncommitted)
            .await
            .len();
    }
    let written: usize = committed.iter().map(Vec::len).sum::<usize>() + aborted;
    assert_eq!(total, written, "every record was written once");

    let (offset, text) = group_offset(&group, &topic).await;
    let want = last_committed_offset
        .expect("some transaction committed offsets")
        .to_string();
    // GROUP TOPIC PARTITION CURRENT-OFFSET ...
    assert_eq!(
        offset.as_deref(),
        Some(want.as_str()),
        "the offsets of the last committed transaction that wrote any: {text}"
    );
}
