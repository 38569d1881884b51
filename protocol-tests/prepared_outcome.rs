//! Finishing a prepared transaction after its transactional id has moved on (issue 6, finding
//! 1): the outcome comes from the partition logs (the transaction's marker), never from the
//! coordinator's state for a *later* transaction of the same id, and the later transaction is
//! never touched.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use exactly::client::admin::{Admin, Isolation};
use exactly::client::producer::ProducerRecord;
use exactly::client::transaction::{
    abort_prepared, commit_prepared, describe_transaction, CoordinatorState, TransactionConfig,
    TransactionalProducer, TxnOutcome,
};
use exactly::client::{Client, ClientError};

use crate::common::{
    brokers, client, create_topic, exactly_bin, read_all, settle, unique_topic,
    wait_for_timeout_abort,
};

async fn visible(client: &Client, topic: &str) -> Vec<String> {
    let mut out: Vec<String> = read_all(client, topic, 0, Isolation::ReadCommitted)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect();
    out.sort();
    out
}

fn lines(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

/// `exactly txn prepare` (exits after writing the prepared file).
fn cli_prepare(topic: &str, transactional_id: &str, lines: &[String], file: &Path) {
    let mut child = Command::new(exactly_bin())
        .args([
            "--brokers",
            brokers(),
            "txn",
            "prepare",
            topic,
            "--transactional-id",
            transactional_id,
        ])
        .arg("--out")
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exactly txn prepare");
    {
        let mut stdin = child.stdin.take().unwrap();
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "txn prepare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cli(action: &str, file: &Path) -> (bool, String, String) {
    let out = Command::new(exactly_bin())
        .args(["--brokers", brokers(), "txn", action])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn send(producer: &TransactionalProducer, topic: &str, values: &[String]) {
    for v in values {
        producer
            .send(ProducerRecord::new(topic, v.clone()).with_partition(0))
            .await
            .expect("send");
    }
}

/// The reproduction, through the CLI: prepare A, commit A, prepare B with the same id
/// (InitProducerId bumps the epoch; B is Ongoing), then commit A's file again. It must say
/// AlreadyCommitted (it used to fail with PRODUCER_FENCED although A's records are visible),
/// aborting it must be refused, and B must stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_after_the_id_moved_on_reports_already_committed() {
    let client = client().await;
    let topic = create_topic(&client, "moved-on", 1).await;
    let id = unique_topic("moved-on");
    let dir = std::env::temp_dir();
    let (a_file, b_file) = (
        dir.join(format!("{id}-a.json")),
        dir.join(format!("{id}-b.json")),
    );
    let (a, b) = (lines("a", 5), lines("b", 3));
    let (t, i, l, f) = (topic.clone(), id.clone(), a.clone(), a_file.clone());
    tokio::task::spawn_blocking(move || cli_prepare(&t, &i, &l, &f))
        .await
        .unwrap();
    // The file records where A's last batch is: topic/0, within A's five records.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&a_file).unwrap()).unwrap();
    let partitions = json["partitions"].as_array().expect("partitions recorded");
    assert_eq!(partitions.len(), 1, "{json}");
    assert_eq!(partitions[0]["topic"], topic.as_str(), "{json}");
    assert_eq!(partitions[0]["partition"], 0, "{json}");
    assert!(
        (0..5).contains(&partitions[0]["last_batch_offset"].as_i64().unwrap()),
        "{json}"
    );
    let (ok, stdout, stderr) = cli("commit", &a_file);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "Committed");
    let (t, i, l, f) = (topic.clone(), id.clone(), b.clone(), b_file.clone());
    tokio::task::spawn_blocking(move || cli_prepare(&t, &i, &l, &f))
        .await
        .unwrap();
    let open = describe_transaction(&client, &id).await.unwrap();
    assert_eq!(open.state, CoordinatorState::Ongoing, "B is open");

    let (ok, stdout, stderr) = cli("commit", &a_file);
    assert!(ok, "committing A again must succeed: {stderr}");
    assert_eq!(stdout, "AlreadyCommitted");
    let (ok, _, stderr) = cli("abort", &a_file);
    assert!(!ok, "aborting a committed transaction must fail");
    assert!(
        stderr.contains("cannot be aborted: it was already committed"),
        "{stderr}"
    );
    // B was not touched: still open at its epoch, its records invisible.
    assert_eq!(describe_transaction(&client, &id).await.unwrap(), open);
    assert_eq!(visible(&client, &topic).await, a);

    let (ok, stdout, stderr) = cli("commit", &b_file);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "Committed");
    settle(&client, &topic, 1).await;
    let mut want = [a, b].concat();
    want.sort();
    assert_eq!(visible(&client, &topic).await, want);
}

/// The same with one producer: it commits A and goes on to prepare B (the next epoch under
/// transactions version 2). A's identity, finished again, is AlreadyCommitted; B is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_producer_moved_on_to_the_next_transaction() {
    let client = client().await;
    let topic = create_topic(&client, "moved-on-same", 1).await;
    let id = unique_topic("moved-on-same");
    let producer = TransactionalProducer::init(client.clone(), TransactionConfig::new(&id))
        .await
        .unwrap();
    let (a, b) = (lines("a", 4), lines("b", 4));
    producer.begin().await.unwrap();
    send(&producer, &topic, &a).await;
    let prepared_a = producer.prepare().await.unwrap();
    assert_eq!(producer.commit().await.unwrap(), TxnOutcome::Committed);
    producer.begin().await.unwrap();
    send(&producer, &topic, &b).await;
    let prepared_b = producer.prepare().await.unwrap();
    let open = describe_transaction(&client, &id).await.unwrap();
    assert_eq!(open.state, CoordinatorState::Ongoing);

    assert_eq!(
        commit_prepared(&client, &prepared_a, 30_000).await.unwrap(),
        TxnOutcome::AlreadyCommitted
    );
    let err = abort_prepared(&client, &prepared_a, 30_000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::PreparedTxnLost { .. }),
        "expected PreparedTxnLost, got {err:?}"
    );
    assert!(
        err.to_string()
            .contains("cannot be aborted: it was already committed"),
        "{err}"
    );
    assert_eq!(describe_transaction(&client, &id).await.unwrap(), open);
    assert_eq!(visible(&client, &topic).await, a);

    assert_eq!(
        commit_prepared(&client, &prepared_b, 30_000).await.unwrap(),
        TxnOutcome::Committed
    );
    settle(&client, &topic, 1).await;
    let mut want = [a, b].concat();
    want.sort();
    assert_eq!(visible(&client, &topic).await, want);
}

/// A prepared transaction the broker aborted on timeout, after which the id went on (one
/// transaction committed, the next prepared): committing the old identity reports that it was
/// aborted, aborting it reports AlreadyAborted, and the open transaction is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_aborted_on_timeout_is_reported_aborted_after_the_id_moved_on() {
    let client = client().await;
    let topic = create_topic(&client, "timed-out-moved-on", 1).await;
    let id = unique_topic("timed-out-moved-on");
    let (a, c, b) = (lines("a", 3), lines("c", 3), lines("b", 3));
    let short = TransactionConfig {
        transaction_timeout_ms: 1_000,
        ..TransactionConfig::new(&id)
    };
    let first = TransactionalProducer::init(client.clone(), short)
        .await
        .unwrap();
    first.begin().await.unwrap();
    send(&first, &topic, &a).await;
    let prepared_a = first.prepare().await.unwrap();
    drop(first);
    // Wait (bounded) for the coordinator to abort it on timeout.
    wait_for_timeout_abort(&client, &id, "the broker did not abort A on timeout").await;

    let second = TransactionalProducer::init(client.clone(), TransactionConfig::new(&id))
        .await
        .unwrap();
    second.begin().await.unwrap();
    send(&second, &topic, &c).await;
    assert_eq!(second.commit().await.unwrap(), TxnOutcome::Committed);
    second.begin().await.unwrap();
    send(&second, &topic, &b).await;
    let _prepared_b = second.prepare().await.unwrap();
    let open = describe_transaction(&client, &id).await.unwrap();
    assert_eq!(open.state, CoordinatorState::Ongoing);

    let err = commit_prepared(&client, &prepared_a, 30_000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::PreparedTxnLost { .. }),
        "expected PreparedTxnLost, got {err:?}"
    );
    assert!(
        err.to_string()
            .contains("cannot be committed: it was aborted"),
        "{err}"
    );
    assert_eq!(
        abort_prepared(&client, &prepared_a, 30_000).await.unwrap(),
        TxnOutcome::AlreadyAborted
    );
    assert_eq!(describe_transaction(&client, &id).await.unwrap(), open);
    assert_eq!(visible(&client, &topic).await, c);

    assert_eq!(second.commit().await.unwrap(), TxnOutcome::Committed);
    settle(&client, &topic, 1).await;
    let mut want = [b, c].concat();
    want.sort();
    assert_eq!(visible(&client, &topic).await, want);
}

/// When the coordinator has moved on and the logs no longer hold the transaction (its topic was
/// deleted), the outcome is honestly unknown: a committed transaction is never called lost, and
/// the open transaction of the same id is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_the_logs_no_longer_hold_is_unknown() {
    let client = client().await;
    let gone = create_topic(&client, "outcome-gone", 1).await;
    let kept = create_topic(&client, "outcome-kept", 1).await;
    let id = unique_topic("outcome-gone");
    let producer = TransactionalProducer::init(client.clone(), TransactionConfig::new(&id))
        .await
        .unwrap();
    producer.begin().await.unwrap();
    send(&producer, &gone, &lines("a", 3)).await;
    let prepared_a = producer.prepare().await.unwrap();
    assert_eq!(
        prepared_a.partitions.len(),
        1,
        "the partition written is recorded: {prepared_a:?}"
    );
    assert_eq!(producer.commit().await.unwrap(), TxnOutcome::Committed);
    producer.begin().await.unwrap();
    send(&producer, &kept, &lines("b", 3)).await;
    producer.prepare().await.unwrap();
    let open = describe_transaction(&client, &id).await.unwrap();
    settle(&client, &gone, 1).await;
    Admin::new(client.clone())
        .delete_topics(&[gone.as_str()])
        .await
        .unwrap();

    for (commit, action) in [(true, "committed"), (false, "aborted")] {
        let result = if commit {
            commit_prepared(&client, &prepared_a, 30_000).await
        } else {
            abort_prepared(&client, &prepared_a, 30_000).await
        };
        let err = result.unwrap_err();
        assert!(
            matches!(err, ClientError::PreparedTxnOutcomeUnknown { .. }),
            "expected PreparedTxnOutcomeUnknown, got {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("is unknown; it could not be {action}: {gone}/0: "))
                && message.contains("the coordinator is in state Ongoing"),
            "{message}"
        );
    }
    assert_eq!(describe_transaction(&client, &id).await.unwrap(), open);
    assert!(visible(&client, &kept).await.is_empty(), "B is still open");
    assert_eq!(producer.commit().await.unwrap(), TxnOutcome::Committed);
    settle(&client, &kept, 1).await;
    assert_eq!(visible(&client, &kept).await, lines("b", 3));
}
