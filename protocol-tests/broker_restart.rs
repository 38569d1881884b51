//! A broker crash (SIGKILL) and restart in the middle of a transaction. Its own test binary:
//! cargo runs test binaries one after another, so no other test sees the broker go away.
//!
//! The producer must either complete the transaction or report an error that lets the
//! transaction be aborted; what it reports as committed must appear exactly once, and nothing
//! else may appear.

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::process::Command;

use exactly::client::admin::Isolation;
use exactly::client::producer::ProducerRecord;
use exactly::client::transaction::{TransactionConfig, TransactionalProducer, TxnOutcome};
use exactly::client::{Client, ClientConfig};

use common::{assert_own_broker, brokers, create_topic, repo_root, settle, unique_topic};

fn kafka(action: &str) {
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/kafka"))
        .arg(action)
        .status()
        .expect("scripts/kafka");
    assert!(status.success(), "scripts/kafka {action} failed");
}

async fn send_batch(
    producer: &TransactionalProducer,
    topic: &str,
    tag: &str,
    sent: &mut Vec<String>,
) -> Result<(), exactly::client::ClientError> {
    for i in 0..50 {
        let value = format!("{tag}-{i}");
        producer
            .send(ProducerRecord::new(topic, value.clone()).with_partition(i % 2))
            .await?;
        sent.push(value);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_transaction() {
    let addr = brokers();
    assert_own_broker("kills and restarts the broker");
    let mut config = ClientConfig::new(addr);
    config.retry.deadline_ms = 90_000;
    let client = Client::connect(config).await.unwrap();
    let topic = create_topic(&client, "restart", 2).await;
    let mut txn_config = TransactionConfig::new(unique_topic("restart"));
    txn_config.coordinator_deadline_ms = 90_000;
    txn_config.producer.delivery_timeout_ms = 90_000;
    let producer = TransactionalProducer::init(client.clone(), txn_config.clone())
        .await
        .unwrap();
    let mut committed: Vec<String> = Vec::new();

    producer.begin().await.unwrap();
    let mut sent = Vec::new();
    send_batch(&producer, &topic, "before", &mut sent)
        .await
        .unwrap();
    assert_eq!(producer.commit().await.unwrap(), TxnOutcome::Committed);
    committed.append(&mut sent);

    // The crash: a transaction is open, part of it written.
    producer.begin().await.unwrap();
    send_batch(&producer, &topic, "during-a", &mut sent)
        .await
        .unwrap();
    producer.flush().await.unwrap();
    tokio::task::spawn_blocking(|| {
        kafka("kill");
        kafka("up");
    })
    .await
    .unwrap();
    let outcome = async {
        send_batch(&producer, &topic, "during-b", &mut sent).await?;
        producer.commit().await
    }
    .await;
    let producer = match outcome {
        Ok(TxnOutcome::Committed) => {
            committed.append(&mut sent);
            producer
        }
        Ok(other) => panic!("unexpected outcome {other:?}"),
        Err(e) => {
            eprintln!("commit after the restart failed ({e}); aborting");
            sent.clear();
            match producer.abort().await {
                Ok(_) => producer,
                Err(abort_error) => {
                    eprintln!(
                        "abort failed too ({abort_error}); a new producer fences the old one"
                    );
                    TransactionalProducer::init(client.clone(), txn_config.clone())
                        .await
                        .unwrap()
                }
            }
        }
    };

    producer.begin().await.unwrap();
    send_batch(&producer, &topic, "after", &mut sent)
        .await
        .unwrap();
    assert_eq!(producer.commit().await.unwrap(), TxnOutcome::Committed);
    committed.append(&mut sent);
    settle(&client, &topic, 2).await;

    let mut seen = Vec::new();
    for p in 0..2 {
        for r in common::read_all(&client, &topic, p, Isolation::ReadCommitted).await {
            seen.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates after the restart");
    let want: BTreeSet<&String> = committed.iter().collect();
    assert_eq!(
        unique, want,
        "read_committed shows exactly what was reported committed"
    );
}
