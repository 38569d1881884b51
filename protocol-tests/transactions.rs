//! The transactional producer against the real broker: atomicity, fencing, prepared
//! transactions finished by another process after a SIGKILL, the last stable offset.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use exactly::client::admin::Isolation;
use exactly::client::producer::ProducerRecord;
use exactly::client::transaction::{TransactionConfig, TransactionalProducer, TxnOutcome};
use exactly::client::{Client, ClientError};

use crate::common::read_all;
use crate::common::{
    brokers, client, create_topic, exactly_bin, group_offset, kafka_tool, lso_and_hw, settle,
    unique_topic, wait_for_timeout_abort,
};

async fn values(
    client: &Client,
    topic: &str,
    partitions: i32,
    isolation: Isolation,
) -> Vec<String> {
    let mut out = Vec::new();
    for p in 0..partitions {
        for r in read_all(client, topic, p, isolation).await {
            out.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    out.sort();
    out
}

async fn send_values(
    producer: &TransactionalProducer,
    targets: &[(&str, i32)],
    tag: &str,
    n: usize,
) {
    for (topic, partition) in targets {
        for i in 0..n {
            let record = ProducerRecord::new(*topic, format!("{tag}-{topic}-{partition}-{i}"))
                .with_partition(*partition);
            producer.send(record).await.expect("send");
        }
    }
}

fn java_read_committed(topic: &str, max: usize) -> Vec<String> {
    let out = kafka_tool(
        &[
            "console-consumer",
            "--bootstrap-server",
            brokers(),
            "--topic",
            topic,
            "--from-beginning",
            "--isolation-level",
            "read_committed",
            "--max-messages",
            &max.to_string(),
            "--timeout-ms",
            "5000",
        ],
        None,
    );
    let mut lines: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_across_topics_is_atomic() {
    let client = client().await;
    let a = create_topic(&client, "atomic-a", 2).await;
    let b = create_topic(&client, "atomic-b", 1).await;
    let targets = [(a.as_str(), 0), (a.as_str(), 1), (b.as_str(), 0)];
    let producer = TransactionalProducer::init(
        client.clone(),
        TransactionConfig::new(unique_topic("atomic")),
    )
    .await
    .unwrap();

    producer.begin().await.unwrap();
    send_values(&producer, &targets, "t1", 10).await;
    producer.flush().await.unwrap();
    // Written but not committed: invisible to read_committed readers, ours and Java's.
    let (lso, hw) = lso_and_hw(&client, &a, 0).await;
    assert!(
        lso < hw,
        "open transaction must hold back the LSO ({lso} < {hw})"
    );
    assert!(values(&client, &a, 2, Isolation::ReadCommitted)
        .await
        .is_empty());
    assert!(values(&client, &b, 1, Isolation::ReadCommitted)
        .await
        .is_empty());
    assert_eq!(
        values(&client, &a, 2, Isolation::ReadUncommitted)
            .await
            .len(),
        20
    );
    let a2 = a.clone();
    let java = tokio::task::spawn_blocking(move || java_read_committed(&a2, 20))
        .await
        .unwrap();
    assert!(
        java.is_empty(),
        "Java read_committed consumer saw uncommitted records: {java:?}"
    );

    assert_eq!(producer.commit().await.unwrap(), TxnOutcome::Committed);
    settle(&client, &a, 2).await;
    settle(&client, &b, 1).await;
    assert_eq!(
        values(&client, &a, 2, Isolation::ReadCommitted).await.len(),
        20
    );
    assert_eq!(
        values(&client, &b, 1, Isolation::ReadCommitted).await.len(),
        10
    );
    let a2 = a.clone();
    let java = tokio::task::spawn_blocking(move || java_read_committed(&a2, 20))
        .await
        .unwrap();
    assert_eq!(
        java,
        values(&client, &a, 2, Isolation::ReadCommitted).await,
        "Java sees exactly the committed records"
    );

    // An aborted transaction never appears; read_uncommitted shows it.
    producer.begin().await.unwrap();
    send_values(&producer, &targets, "t2", 10).await;
    assert_eq!(producer.abort().await.unwrap(), TxnOutcome::Aborted);
    settle(&client, &a, 2).await;
    let committed = values(&client, &a, 2, Isolation::ReadCommitted).await;
    assert_eq!(committed.len(), 20);
    assert!(committed.iter().all(|v| v.starts_with("t1-")));
    assert_eq!(
        values(&client, &a, 2, Isolation::ReadUncommitted)
            .await
            .len(),
        40
    );
    for p in 0..2 {
        let (lso, hw) = lso_and_hw(&client, &a, p).await;
        assert_eq!(lso, hw, "no hanging transaction on {a}/{p}");
    }
    let m = producer.metrics().await;
    assert_eq!((m.commits, m.aborts), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_producer_fences_the_first() {
    let client = client().await;
    let topic = create_topic(&client, "fence", 1).await;
    let id = unique_topic("fence");
    let first = TransactionalProducer::init(client.clone(), TransactionConfig::new(&id))
        .await
        .unwrap();
    first.begin().await.unwrap();
    send_values(&first, &[(topic.as_str(), 0)], "zombie", 5).await;
    first.flush().await.unwrap();

    let second = TransactionalProducer::init(client.clone(), TransactionConfig::new(&id))
        .await
        .unwrap();
    // The first producer's next send or its commit fails with a fencing error, and it stays dead.
    let result = async {
        first
            .send(ProducerRecord::new(topic.as_str(), "zombie-late").with_partition(0))
            .await?;
        first.commit().await
    }
    .await;
    let err = result.expect_err("the fenced producer must not commit");
    assert!(
        matches!(err, ClientError::Fenced { .. }),
        "expected a fencing error, got {err}"
    );
    assert!(err.to_string().contains("was fenced"), "{err}");
    let again = first.begin().await.unwrap_err();
    assert!(matches!(again, ClientError::TxnFatal { .. }), "{again}");

    second.begin().await.unwrap();
    send_values(&second, &[(topic.as_str(), 0)], "alive", 5).await;
    second.commit().await.unwrap();
    settle(&client, &topic, 1).await;
    let visible = values(&client, &topic, 1, Isolation::ReadCommitted).await;
    assert_eq!(visible.len(), 5);
    assert!(
        visible.iter().all(|v| v.starts_with("alive-")),
        "{visible:?}"
    );
}

/// Runs `exactly txn prepare --hold` on `lines`, waits for the prepared file, and SIGKILLs it.
fn prepare_and_kill(
    topic: &str,
    transactional_id: &str,
    lines: &[String],
    file: &std::path::Path,
    timeout_ms: u32,
) {
    use std::io::Write;
    let mut child = Command::new(exactly_bin())
        .args([
            "--brokers",
            brokers(),
            "txn",
            "prepare",
            topic,
            "--transactional-id",
            transactional_id,
            "--hold",
        ])
        .arg("--out")
        .arg(file)
        .args(["--transaction-timeout-ms", &timeout_ms.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exactly txn prepare");
    {
        let mut stdin = child.stdin.take().unwrap();
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let mut waited = 0;
    while !file.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("txn prepare exited early ({status}): {err}");
        }
        assert!(waited < 600, "no prepared file after 60 s");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    child.kill().expect("SIGKILL the preparing process");
    child.wait().unwrap();
}

fn txn_cli(action: &str, file: &std::path::Path) -> (bool, String, String) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transaction_committed_by_another_process_after_sigkill() {
    let client = client().await;
    let topic = create_topic(&client, "prepared-commit", 1).await;
    let id = unique_topic("prepared-commit");
    let lines: Vec<String> = (0..50).map(|i| format!("prepared-{i}")).collect();
    let file = std::env::temp_dir().join(format!("{id}.json"));
    let (t, i, l, f) = (topic.clone(), id.clone(), lines.clone(), file.clone());
    tokio::task::spawn_blocking(move || prepare_and_kill(&t, &i, &l, &f, 60_000))
        .await
        .unwrap();
    assert!(
        values(&client, &topic, 1, Isolation::ReadCommitted)
            .await
            .is_empty(),
        "nothing visible before the commit"
    );

    let (ok, stdout, stderr) = txn_cli("commit", &file);
    assert!(ok, "commit failed: {stderr}");
    assert_eq!(stdout, "Committed");
    settle(&client, &topic, 1).await;
    let mut want = lines.clone();
    want.sort();
    assert_eq!(
        values(&client, &topic, 1, Isolation::ReadCommitted).await,
        want,
        "every record exactly once"
    );
    // Committing again is safe and says so.
    let (ok, stdout, stderr) = txn_cli("commit", &file);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "AlreadyCommitted");
    assert_eq!(
        values(&client, &topic, 1, Isolation::ReadCommitted)
            .await
            .len(),
        50
    );
    // Aborting a committed transaction is an error, never a silent success.
    let (ok, _, stderr) = txn_cli("abort", &file);
    assert!(!ok);
    assert!(
        stderr.contains("cannot be aborted: it was already committed"),
        "{stderr}"
    );
    let (lso, hw) = lso_and_hw(&client, &topic, 0).await;
    assert_eq!(lso, hw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transaction_aborted_by_another_process_after_sigkill() {
    let client = client().await;
    let topic = create_topic(&client, "prepared-abort", 1).await;
    let id = unique_topic("prepared-abort");
    let lines: Vec<String> = (0..20).map(|i| format!("doomed-{i}")).collect();
    let file = std::env::temp_dir().join(format!("{id}.json"));
    let (t, i, l, f) = (topic.clone(), id.clone(), lines.clone(), file.clone());
    tokio::task::spawn_blocking(move || prepare_and_kill(&t, &i, &l, &f, 60_000))
        .await
        .unwrap();

    let (ok, stdout, stderr) = txn_cli("abort", &file);
    assert!(ok, "abort failed: {stderr}");
    assert_eq!(stdout, "Aborted");
    settle(&client, &topic, 1).await;
    assert!(values(&client, &topic, 1, Isolation::ReadCommitted)
        .await
        .is_empty());
    assert_eq!(
        values(&client, &topic, 1, Isolation::ReadUncommitted)
            .await
            .len(),
        20
    );
    let (ok, stdout, _) = txn_cli("abort", &file);
    assert!(ok);
    assert_eq!(stdout, "AlreadyAborted");
    let (ok, _, stderr) = txn_cli("commit", &file);
    assert!(!ok, "committing an aborted transaction must fail");
    assert!(stderr.contains("cannot be committed"), "{stderr}");
    let (lso, hw) = lso_and_hw(&client, &topic, 0).await;
    assert_eq!(lso, hw);
}

/// The broker aborts a prepared transaction that outlives its timeout; committing it later is a
/// distinct error, and the LSO is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transaction_that_timed_out_is_reported_lost() {
    let client = client().await;
    let topic = create_topic(&client, "prepared-timeout", 1).await;
    let id = unique_topic("prepared-timeout");
    let lines: Vec<String> = (0..5).map(|i| format!("late-{i}")).collect();
    let file = std::env::temp_dir().join(format!("{id}.json"));
    let (t, i, l, f) = (topic.clone(), id.clone(), lines, file.clone());
    tokio::task::spawn_blocking(move || prepare_and_kill(&t, &i, &l, &f, 1_000))
        .await
        .unwrap();
    let (lso, hw) = lso_and_hw(&client, &topic, 0).await;
    assert!(lso < hw, "the open transaction holds the LSO back");
    // Wait (bounded) for the coordinator to abort it on timeout.
    wait_for_timeout_abort(
        &client,
        &id,
        "the broker did not abort the timed-out transaction",
    )
    .await;
    let (ok, _, stderr) = txn_cli("commit", &file);
    assert!(
        !ok,
        "a transaction the broker aborted must not be reported committed"
    );
    assert!(stderr.contains("cannot be committed"), "{stderr}");
    assert!(values(&client, &topic, 1, Isolation::ReadCommitted)
        .await
        .is_empty());
    let mut released = false;
    for _ in 0..100 {
        let (lso, hw) = lso_and_hw(&client, &topic, 0).await;
        if lso == hw {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "LSO released after the broker's abort");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_above_broker_maximum_is_rejected_at_init() {
    let client = client().await;
    let config = TransactionConfig {
        transaction_timeout_ms: 3_600_000,
        ..TransactionConfig::new(unique_topic("too-long"))
    };
    let err = TransactionalProducer::init(client, config)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::TransactionTimeoutTooLarge {
            timeout_ms: 3_600_000,
            broker_max_ms: 900_000
        }
    );
    assert_eq!(err.to_string(), "transaction timeout 3600000 ms exceeds the broker's transaction.max.timeout.ms (900000 ms)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_transactions_report_what_was_committed() {
    let client = client().await;
    let topic = create_topic(&client, "cli-txn", 2).await;
    let input: String = (0..35).map(|i| format!("line-{i}\n")).collect();
    let mut child = Command::new(exactly_bin())
        .args([
            "--brokers",
            brokers(),
            "produce",
            &topic,
            "--transactional-id",
            &unique_topic("cli"),
            "--txn-records",
            "10",
            "--abort-every",
            "2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut committed = BTreeSet::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["outcome"] == "committed" {
            for n in v["first_line"].as_u64().unwrap()..=v["last_line"].as_u64().unwrap() {
                committed.insert(format!("line-{n}"));
            }
        }
    }
    assert_eq!(
        committed.len(),
        20,
        "transactions 0 and 2 are committed; 1 and 3 (the last 5 lines) aborted"
    );
    let got: BTreeSet<String> = values(&client, &topic, 2, Isolation::ReadCommitted)
        .await
        .into_iter()
        .collect();
    assert_eq!(
        got, committed,
        "a read_committed consumer sees exactly what the CLI reported committed"
    );
}

/// Consumer offsets sent inside a transaction (AddOffsetsToTxn + TxnOffsetCommit, KIP-447) are
/// committed with it; Kafka's own consumer-group tool reads them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_sent_in_a_transaction_commit_with_it() {
    use exactly::client::transaction::GroupMetadata;
    let client = client().await;
    let input = create_topic(&client, "offsets-in", 1).await;
    let output = create_topic(&client, "offsets-out", 1).await;
    let group = unique_topic("group");
    let producer = TransactionalProducer::init(
        client.clone(),
        TransactionConfig::new(unique_topic("offsets")),
    )
    .await
    .unwrap();

    // An aborted transaction's offsets are not committed...
    producer.begin().await.unwrap();
    send_values(&producer, &[(output.as_str(), 0)], "x", 1).await;
    producer
        .send_offsets(&GroupMetadata::standalone(&group), &[(input.clone(), 0, 7)])
        .await
        .unwrap();
    producer.abort().await.unwrap();
    // ...a committed one's are.
    producer.begin().await.unwrap();
    send_values(&producer, &[(output.as_str(), 0)], "y", 1).await;
    producer
        .send_offsets(
            &GroupMetadata::standalone(&group),
            &[(input.clone(), 0, 42)],
        )
        .await
        .unwrap();
    producer.commit().await.unwrap();
    settle(&client, &output, 1).await;

    let (offset, text) = group_offset(&group, &input).await;
    // GROUP TOPIC PARTITION CURRENT-OFFSET ...
    assert_eq!(offset.as_deref(), Some("42"), "committed offset: {text}");
}

/// A transaction with nothing in it (a checkpoint with no data) commits and aborts cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_transactions_commit_and_abort() {
    let client = client().await;
    let producer = TransactionalProducer::init(
        client.clone(),
        TransactionConfig::new(unique_topic("empty")),
    )
    .await
    .unwrap();
    producer.begin().await.unwrap();
    assert_eq!(producer.commit().await.unwrap(), TxnOutcome::Committed);
    producer.begin().await.unwrap();
    assert_eq!(producer.abort().await.unwrap(), TxnOutcome::Aborted);
    producer.begin().await.unwrap();
    let prepared = producer.prepare().await.unwrap();
    assert_eq!(
        exactly::client::transaction::commit_prepared(&client, &prepared, 30_000)
            .await
            .unwrap(),
        TxnOutcome::Committed
    );
}
