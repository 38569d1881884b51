//! The transactional producer under transactions version 1 (explicit AddPartitionsToTxn, KIP-98)
//! against the real broker: the test downgrades the broker's `transaction.version` feature to 1,
//! and restores 2 when it ends (even on failure). Its own test binary, because it changes the
//! shared broker: cargo runs test binaries one after another.

#[path = "back_to_back.rs"]
mod back_to_back;
#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use exactly::client::admin::Isolation;
use exactly::client::producer::ProducerRecord;
use exactly::client::transaction::{
    abort_prepared, commit_prepared, describe_transaction, CoordinatorState, TransactionConfig,
    TransactionalProducer, TxnOutcome,
};
use exactly::client::ClientError;

use common::{
    assert_own_broker, brokers, client, create_topic, kafka_tool, read_all, settle, unique_topic,
};

fn set_transaction_version(level: u8) {
    let action = if level >= 2 { "upgrade" } else { "downgrade" };
    kafka_tool(
        &[
            "features",
            "--bootstrap-server",
            brokers(),
            action,
            "--feature",
            &format!("transaction.version={level}"),
        ],
        None,
    );
}

/// Puts the broker back to transactions version 2 however the test ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        set_transaction_version(2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_version_1() {
    brokers();
    assert_own_broker("changes the broker's transaction.version feature");
    tokio::task::spawn_blocking(|| set_transaction_version(1))
        .await
        .unwrap();
    let _restore = Restore;

    let client = client().await;
    let topic = create_topic(&client, "tv1", 2).await;
    let producer =
        TransactionalProducer::init(client.clone(), TransactionConfig::new(unique_topic("tv1")))
            .await
            .unwrap();
    assert_eq!(
        producer.transaction_version(),
        1,
        "the broker reports transaction.version 1"
    );

    // Atomic commit over two partitions (each added with AddPartitionsToTxn), then an abort.
    producer.begin().await.unwrap();
    for i in 0..20 {
        producer
            .send(ProducerRecord::new(topic.as_str(), format!("c-{i}")).with_partition(i % 2))
            .await
            .unwrap();
    }
    assert_eq!(producer.commit().await.unwrap(), TxnOutcome::Committed);
    producer.begin().await.unwrap();
    for i in 0..20 {
        producer
            .send(ProducerRecord::new(topic.as_str(), format!("a-{i}")).with_partition(i % 2))
            .await
            .unwrap();
    }
    assert_eq!(producer.abort().await.unwrap(), TxnOutcome::Aborted);

    // Prepare, then commit from the stored identity (twice: the second says so).
    producer.begin().await.unwrap();
    for i in 0..10 {
        producer
            .send(ProducerRecord::new(topic.as_str(), format!("p-{i}")).with_partition(0))
            .await
            .unwrap();
    }
    let prepared = producer.prepare().await.unwrap();
    assert_eq!(
        commit_prepared(&client, &prepared, 30_000).await.unwrap(),
        TxnOutcome::Committed
    );
    assert_eq!(
        commit_prepared(&client, &prepared, 30_000).await.unwrap(),
        TxnOutcome::AlreadyCommitted
    );
    settle(&client, &topic, 2).await;

    let mut seen = Vec::new();
    for p in 0..2 {
        for r in read_all(&client, &topic, p, Isolation::ReadCommitted).await {
            seen.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    seen.sort();
    let mut want: Vec<String> = (0..20)
        .map(|i| format!("c-{i}"))
        .chain((0..10).map(|i| format!("p-{i}")))
        .collect();
    want.sort();
    assert_eq!(
        seen, want,
        "committed records exactly once, aborted ones never"
    );

    // The id moves on at the same epoch (version 1 does not bump it): A committed, B prepared
    // by the same producer. Finishing A's identity again must say AlreadyCommitted from A's
    // marker, and must not commit B (the coordinator's (producer id, epoch, Ongoing) is B's).
    let moved = create_topic(&client, "tv1-moved-on", 1).await;
    let producer = TransactionalProducer::init(
        client.clone(),
        TransactionConfig::new(unique_topic("tv1-moved-on")),
    )
    .await
    .unwrap();
    producer.begin().await.unwrap();
    for i in 0..5 {
        producer
            .send(ProducerRecord::new(moved.as_str(), format!("a-{i}")).with_partition(0))
            .await
            .unwrap();
    }
    let prepared_a = producer.prepare().await.unwrap();
    assert_eq!(producer.commit().await.unwrap(), TxnOutcome::Committed);
    producer.begin().await.unwrap();
    for i in 0..5 {
        producer
            .send(ProducerRecord::new(moved.as_str(), format!("b-{i}")).with_partition(0))
            .await
            .unwrap();
    }
    let prepared_b = producer.prepare().await.unwrap();
    assert_eq!(
        (prepared_b.producer_id, prepared_b.producer_epoch),
        (prepared_a.producer_id, prepared_a.producer_epoch),
        "version 1 keeps the epoch between transactions"
    );
    let open = describe_transaction(&client, &prepared_a.transactional_id)
        .await
        .unwrap();
    assert_eq!(open.state, CoordinatorState::Ongoing);
    assert_eq!(
        commit_prepared(&client, &prepared_a, 30_000).await.unwrap(),
        TxnOutcome::AlreadyCommitted
    );
    let err = abort_prepared(&client, &prepared_a, 30_000)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot be aborted: it was already committed"),
        "{err}"
    );
    assert_eq!(
        describe_transaction(&client, &prepared_a.transactional_id)
            .await
            .unwrap(),
        open,
        "B is still open"
    );
    let moved_values = |records: Vec<exactly::protocol::record_batch::Record>| {
        let mut v: Vec<String> = records
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect();
        v.sort();
        v
    };
    let a: Vec<String> = (0..5).map(|i| format!("a-{i}")).collect();
    assert_eq!(
        moved_values(read_all(&client, &moved, 0, Isolation::ReadCommitted).await),
        a,
        "B's records are invisible: B was not committed"
    );
    assert_eq!(
        commit_prepared(&client, &prepared_b, 30_000).await.unwrap(),
        TxnOutcome::Committed
    );
    settle(&client, &moved, 1).await;
    let mut ab: Vec<String> = a
        .into_iter()
        .chain((0..5).map(|i| format!("b-{i}")))
        .collect();
    ab.sort();
    assert_eq!(
        moved_values(read_all(&client, &moved, 0, Isolation::ReadCommitted).await),
        ab
    );

    // Fencing works the same way.
    let id = unique_topic("tv1-fence");
    let first = TransactionalProducer::init(client.clone(), TransactionConfig::new(&id))
        .await
        .unwrap();
    first.begin().await.unwrap();
    first
        .send(ProducerRecord::new(topic.as_str(), "zombie").with_partition(0))
        .await
        .unwrap();
    first.flush().await.unwrap();
    let _second = TransactionalProducer::init(client.clone(), TransactionConfig::new(&id))
        .await
        .unwrap();
    let err = first.commit().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Fenced { .. }),
        "expected fencing, got {err}"
    );

    // Back-to-back transactions: the first AddPartitionsToTxn / AddOffsetsToTxn of each waits
    // for the previous transaction's markers.
    back_to_back::back_to_back_transactions(&client, "tv1-settle").await;
}
