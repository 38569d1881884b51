//! The runtime's two-phase-commit Kafka sink and its recovery against the real broker:
//! exactly-once visibility, the bounded pool of transactional ids, commit after a crash,
//! lingering transactions aborted at start (also of vanished subtasks), a committable whose id
//! moved on, a prepared transaction lost to fencing, and the transaction-timeout check.

use exactly::client::admin::{Admin, Isolation};
use exactly::client::producer::ProducerRecord;
use exactly::client::transaction::{
    describe_transaction, CoordinatorState, TransactionConfig, TransactionalProducer,
};
use exactly::client::Client;
use exactly::runtime::sink::{
    check_transaction_timeout, recover, CloseMode, KafkaCommittable, KafkaSinkConfig, OwnerMap,
    SinkTxnFailure, TwoPhaseCommitSink,
};
use exactly::runtime::RuntimeError;

use crate::common::{client, create_topic, lso_and_hw, read_all, settle, unique_topic};

fn config(prefix: &str) -> KafkaSinkConfig {
    let mut c = KafkaSinkConfig::new(prefix);
    c.producer.linger_ms = 1;
    c.commit_deadline_ms = 20_000;
    // Far beyond the tests' run time: a transaction that ends did not end by the timeout.
    c.transaction_timeout_ms = 600_000;
    c
}

async fn send_all(sink: &mut TwoPhaseCommitSink, topic: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        sink.send(ProducerRecord::new(topic, v.clone()).with_partition((i % 2) as i32))
            .await
            .expect("send");
    }
}

fn values(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

/// Every value visible to read_committed on both partitions, sorted.
async fn visible(client: &Client, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in 0..2 {
        out.extend(
            read_all(client, topic, p, Isolation::ReadCommitted)
                .await
                .into_iter()
                .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()),
        );
    }
    out.sort();
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// LSO equals the high watermark on both partitions, now (no waiting).
async fn assert_no_open_transaction(client: &Client, topic: &str, when: &str) {
    for p in 0..2 {
        let (lso, hw) = lso_and_hw(client, topic, p).await;
        assert_eq!(lso, hw, "{topic}/{p} {when}: LSO {lso} behind HW {hw}");
    }
}

async fn ongoing(client: &Client, id: &str) -> bool {
    describe_transaction(client, id).await.unwrap().state == CoordinatorState::Ongoing
}

/// send → prepare → commit_up_to over three checkpoints: nothing is visible before its
/// checkpoint completes, everything exactly once after, and no transaction is left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_become_visible_exactly_once_when_their_checkpoint_completes() {
    let client = client().await;
    let topic = create_topic(&client, "sink-2pc", 2).await;
    let cfg = config(&unique_topic("sink-2pc"));
    let mut sink = TwoPhaseCommitSink::open(client.clone(), cfg.clone(), 0)
        .await
        .unwrap();
    let mut want = Vec::new();
    for checkpoint in 1..=3u64 {
        let batch = values(&format!("c{checkpoint}"), 50);
        send_all(&mut sink, &topic, &batch).await;
        let committables = sink.prepare(checkpoint).await.unwrap();
        assert_eq!(committables.len(), 1, "{committables:?}");
        assert_eq!(committables[0].checkpoint_id, checkpoint);
        // Prepared, not committed: read_committed readers see only earlier checkpoints.
        assert_eq!(visible(&client, &topic).await, sorted(want.clone()));
        assert_eq!(sink.commit_up_to(checkpoint).unwrap(), 1);
        sink.wait_for_commits().await.unwrap();
        // EndTxn is answered once the commit is decided; the markers follow.
        settle(&client, &topic, 2).await;
        want.extend(batch);
    }
    // A checkpoint without output gives no committable.
    assert!(sink.prepare(4).await.unwrap().is_empty());
    let metrics = sink.metrics();
    assert_eq!(metrics.commits, 3);
    assert_eq!(metrics.records_sent, 150);
    assert_eq!(metrics.commit_latency_us.len(), 3);
    eprintln!(
        "commit latency (µs, from commit_up_to to EndTxn answered): {:?}",
        metrics.commit_latency_us
    );
    let report = sink.close(CloseMode::Graceful).await.unwrap();
    assert!(report.left_prepared.is_empty() && !report.aborted_open);
    settle(&client, &topic, 2).await;
    assert_eq!(visible(&client, &topic).await, sorted(want));
    assert_no_open_transaction(&client, &topic, "after the last commit").await;
}

/// Ten checkpoints use only the pool's two transactional ids per subtask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_checkpoints_reuse_the_pool_of_two_ids() {
    let client = client().await;
    let topic = create_topic(&client, "sink-pool", 2).await;
    let prefix = unique_topic("sink-pool");
    let cfg = config(&prefix);
    let mut sink = TwoPhaseCommitSink::open(client.clone(), cfg.clone(), 3)
        .await
        .unwrap();
    for checkpoint in 1..=10u64 {
        send_all(&mut sink, &topic, &values(&format!("c{checkpoint}"), 5)).await;
        let committables = sink.prepare(checkpoint).await.unwrap();
        // The previous checkpoint's commit may still run: at most it and this one are pending.
        assert!((1..=2).contains(&committables.len()), "{committables:?}");
        sink.commit_up_to(checkpoint).unwrap();
    }
    sink.wait_for_commits().await.unwrap();
    let metrics = sink.metrics();
    assert_eq!(metrics.commits, 10);
    let mut latencies = metrics.commit_latency_us.clone();
    latencies.sort_unstable();
    eprintln!(
        "commit latency over 10 checkpoints (µs, commit_up_to → EndTxn answered): min {} median {} max {}",
        latencies[0], latencies[5], latencies[9]
    );
    sink.close(CloseMode::Graceful).await.unwrap();
    let listed = Admin::new(client.clone())
        .list_transactions(&[], |id| id.starts_with(&prefix))
        .await
        .unwrap();
    let ids: Vec<&str> = listed.iter().map(|t| t.transactional_id.as_str()).collect();
    assert_eq!(ids, [format!("{prefix}-3-0"), format!("{prefix}-3-1")]);
    settle(&client, &topic, 2).await;
    assert_eq!(visible(&client, &topic).await.len(), 50);
}

/// A crash after prepare (the checkpoint completed, its commit never ran): recovery commits
/// the checkpoint's committable; a second recovery finds it already committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_commits_what_a_crash_left_prepared_exactly_once() {
    let client = client().await;
    let topic = create_topic(&client, "sink-crash", 2).await;
    let cfg = config(&unique_topic("sink-crash"));
    let mut sink = TwoPhaseCommitSink::open(client.clone(), cfg.clone(), 0)
        .await
        .unwrap();
    let batch = values("a", 20);
    send_all(&mut sink, &topic, &batch).await;
    let snapshot = sink.prepare(1).await.unwrap();
    drop(sink); // the crash: no commit, no close

    let owners = OwnerMap::new(&cfg, 1);
    let report = recover(&client, &cfg, &snapshot, &owners, 1).await.unwrap();
    assert_eq!(
        (report.committed, report.already_committed),
        (1, 0),
        "{report:?}"
    );
    assert!(report.lingering_aborted.is_empty(), "{report:?}");
    let again = recover(&client, &cfg, &snapshot, &owners, 1).await.unwrap();
    assert_eq!(
        (again.committed, again.already_committed),
        (0, 1),
        "{again:?}"
    );
    settle(&client, &topic, 2).await;
    assert_eq!(visible(&client, &topic).await, sorted(batch.clone()));

    // The restarted subtask writes on: still exactly once.
    let mut sink = TwoPhaseCommitSink::open(client.clone(), cfg.clone(), 0)
        .await
        .unwrap();
    let more = values("b", 10);
    send_all(&mut sink, &topic, &more).await;
    sink.prepare(2).await.unwrap();
    sink.commit_up_to(2).unwrap();
    sink.wait_for_commits().await.unwrap();
    sink.close(CloseMode::Graceful).await.unwrap();
    settle(&client, &topic, 2).await;
    assert_eq!(
        visible(&client, &topic).await,
        sorted([batch, more].concat())
    );
}

/// A transaction of the job that no checkpoint knows (open, with records, never prepared) is
/// aborted by recovery — LSO equals HW right after it, with a 10-minute transaction timeout —
/// while a transaction of another prefix that starts the same way is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_aborts_lingering_transactions_of_the_job_only() {
    let client = client().await;
    let topic = create_topic(&client, "sink-linger", 2).await;
    let prefix = unique_topic("sink-linger");
    let cfg = config(&prefix);
    // Subtask 1's producer of the crashed run: records acknowledged, never prepared.
    let crashed = open_transaction(&client, &cfg.transactional_id(1, 0), &topic).await;
    // Another job whose prefix extends ours ("{prefix}b-0-0" is not "{prefix}-<s>-<k>").
    let foreign_id = format!("{prefix}b-0-0");
    let other_topic = create_topic(&client, "sink-linger-other", 2).await;
    let foreign = open_transaction(&client, &foreign_id, &other_topic).await;
    assert!(ongoing(&client, &cfg.transactional_id(1, 0)).await);

    // Restored from a checkpoint that knows nothing of checkpoint 1.
    let report = recover(&client, &cfg, &[], &OwnerMap::new(&cfg, 2), 2)
        .await
        .unwrap();
    assert_eq!(report.lingering_aborted, [cfg.transactional_id(1, 0)]);
    assert!(
        ongoing(&client, &foreign_id).await,
        "another job's transaction was touched"
    );
    assert_no_open_transaction(&client, &topic, "right after recovery").await;
    foreign.abort().await.unwrap();
    drop(crashed);
    settle(&client, &topic, 2).await;
    assert!(visible(&client, &topic).await.is_empty());
}

/// A transaction left open under `id` with records on both partitions of `topic`.
async fn open_transaction(client: &Client, id: &str, topic: &str) -> TransactionalProducer {
    let mut txn = TransactionConfig::new(id);
    txn.transaction_timeout_ms = 600_000;
    let producer = TransactionalProducer::init(client.clone(), txn)
        .await
        .unwrap();
    producer.begin().await.unwrap();
    for p in 0..2 {
        producer
            .send(ProducerRecord::new(topic, "foreign").with_partition(p))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    producer
}

/// After a downscale from 3 to 2, the vanished subtask 2's open transaction is aborted and its
/// ids go to subtask 0; an open transaction of a crashed upscale (subtask 5, unknown to the
/// checkpoint's owner map) is aborted too. LSO equals HW right after recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_aborts_transactions_of_vanished_subtasks() {
    let client = client().await;
    let topic = create_topic(&client, "sink-rescale", 2).await;
    let prefix = unique_topic("sink-rescale");
    let cfg = config(&prefix);
    for subtask in [2, 5] {
        let mut sink = TwoPhaseCommitSink::open(client.clone(), cfg.clone(), subtask)
            .await
            .unwrap();
        send_all(&mut sink, &topic, &values(&format!("s{subtask}"), 6)).await;
        sink.prepare(1).await.unwrap();
        drop(sink);
    }
    let (lso, hw) = lso_and_hw(&client, &topic, 0).await;
    assert!(lso < hw, "the transactions are open: LSO {lso}, HW {hw}");

    let report = recover(&client, &cfg, &[], &OwnerMap::new(&cfg, 3), 2)
        .await
        .unwrap();
    assert_eq!(
        report.lingering_aborted,
        [cfg.transactional_id(2, 0), cfg.transactional_id(5, 0)]
    );
    assert_no_open_transaction(&client, &topic, "right after recovery").await;
    assert_eq!(report.owners.parallelism(), 2);
    assert_eq!(
        report.owners.owned_by(0),
        [
            cfg.transactional_id(0, 0),
            cfg.transactional_id(0, 1),
            cfg.transactional_id(2, 0),
            cfg.transactional_id(2, 1)
        ]
    );
    assert!(visible(&client, &topic).await.is_empty());
}

/// Checkpoint 1's transaction A was committed; then B (checkpoint 2, never completed) was
/// prepared on the other producer and C (checkpoint 3) on A's producer — its id moved on. A
/// restore of checkpoint 1 finds A already committed, commits neither B nor C (both aborted as
/// lingering): only A is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committable_whose_id_moved_on_is_already_committed_and_the_later_one_is_not() {
    let client = client().await;
    let topic = create_topic(&client, "sink-moved", 2).await;
    let cfg = config(&unique_topic("sink-moved"));
    let mut sink = TwoPhaseCommitSink::open(client.clone(), cfg.clone(), 0)
        .await
        .unwrap();
    let a = values("a", 8);
    send_all(&mut sink, &topic, &a).await;
    let checkpoint_1: Vec<KafkaCommittable> = sink.prepare(1).await.unwrap();
    sink.commit_up_to(1).unwrap();
    sink.wait_for_commits().await.unwrap();
    send_all(&mut sink, &topic, &values("b", 8)).await;
    let b = sink.prepare(2).await.unwrap();
    send_all(&mut sink, &topic, &values("c", 8)).await;
    let c = sink.prepare(3).await.unwrap();
    assert_eq!(checkpoint_1[0].slot, 0);
    assert_eq!((b.last().unwrap().slot, c.last().unwrap().slot), (1, 0));
    assert_eq!(
        c.last().unwrap().prepared.transactional_id,
        checkpoint_1[0].prepared.transactional_id,
        "C runs on A's transactional id"
    );
    drop(sink);

    let report = recover(&client, &cfg, &checkpoint_1, &OwnerMap::new(&cfg, 1), 1)
        .await
        .unwrap();
    assert_eq!(
        (report.committed, report.already_committed),
        (0, 1),
        "{report:?}"
    );
    assert_eq!(
        report.lingering_aborted,
        [cfg.transactional_id(0, 0), cfg.transactional_id(0, 1)]
    );
    assert_no_open_transaction(&client, &topic, "right after recovery").await;
    assert_eq!(visible(&client, &topic).await, sorted(a));
}

/// A prepared transaction that another producer of the same id aborted (a zombie, or a job
/// sharing the prefix) cannot be committed: recovery says so, classified, and does not loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_transaction_aborted_by_another_producer_is_reported_lost() {
    let client = client().await;
    let topic = create_topic(&client, "sink-lost", 2).await;
    let cfg = config(&unique_topic("sink-lost"));
    let mut sink = TwoPhaseCommitSink::open(client.clone(), cfg.clone(), 0)
        .await
        .unwrap();
    send_all(&mut sink, &topic, &values("x", 4)).await;
    let snapshot = sink.prepare(1).await.unwrap();
    drop(sink);
    // The other producer: InitProducerId aborts the prepared transaction.
    TransactionalProducer::init(
        client.clone(),
        cfg.transaction_config(cfg.transactional_id(0, 0)),
    )
    .await
    .unwrap();
    let err = recover(&client, &cfg, &snapshot, &OwnerMap::new(&cfg, 1), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::SinkTransaction {
                failure: SinkTxnFailure::Lost,
                checkpoint_id: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("its records are lost"), "{text}");
    assert!(text.contains("transaction_timeout_ms"), "{text}");
}

/// The transaction timeout must exceed checkpoint interval + timeout and fit the broker's
/// `transaction.max.timeout.ms` (900000 ms by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transaction_timeout_check_names_the_numbers() {
    let client = client().await;
    let mut cfg = config("sink-timeout");
    cfg.transaction_timeout_ms = 60_000;
    let err = check_transaction_timeout(&client, &cfg, 50_000, 10_000)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        RuntimeError::Config {
            key: "transaction_timeout_ms",
            ..
        }
    ));
    assert!(
        err.to_string().contains(
            "60000 ms must exceed the checkpoint interval (50000 ms) plus the checkpoint \
             timeout (10000 ms) = 60000 ms"
        ),
        "{err}"
    );
    cfg.transaction_timeout_ms = 1_000_000;
    let err = check_transaction_timeout(&client, &cfg, 1_000, 10_000)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        RuntimeError::Config {
            key: "transaction_timeout_ms",
            ..
        }
    ));
    assert!(
        err.to_string()
            .contains("1000000 ms is above the broker's transaction.max.timeout.ms (900000 ms)"),
        "{err}"
    );
    cfg.transaction_timeout_ms = 120_000;
    check_transaction_timeout(&client, &cfg, 1_000, 10_000)
        .await
        .unwrap();
}

/// Every producer holds a checkpoint not yet announced complete: `send` refuses at once
/// (instead of waiting for a notice that cannot arrive while it waits) and `is_writable` says
/// so; after `commit_up_to`, writing goes on. Nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_refuses_sends_until_a_checkpoint_completes() {
    let client = client().await;
    let topic = create_topic(&client, "sink-full", 2).await;
    let cfg = config(&unique_topic("sink-full"));
    let mut sink = TwoPhaseCommitSink::open(client.clone(), cfg.clone(), 0)
        .await
        .unwrap();
    let (a, b, c) = (values("a", 3), values("b", 3), values("c", 3));
    send_all(&mut sink, &topic, &a).await;
    sink.prepare(1).await.unwrap();
    send_all(&mut sink, &topic, &b).await;
    // Checkpoint 1 failed (never completed): both transactions stay pending.
    let pending = sink.prepare(2).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert!(!sink.is_writable());
    let err = sink
        .send(ProducerRecord::new(&topic, "refused").with_partition(0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::SinkPoolExhausted { pool_size: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("checkpoints 1, 2"), "{err}");
    // Checkpoint 2 completes: both commit, and the sink writes on.
    assert_eq!(sink.commit_up_to(2).unwrap(), 2);
    assert!(sink.is_writable());
    send_all(&mut sink, &topic, &c).await;
    sink.prepare(3).await.unwrap();
    sink.commit_up_to(3).unwrap();
    sink.wait_for_commits().await.unwrap();
    sink.close(CloseMode::Graceful).await.unwrap();
    settle(&client, &topic, 2).await;
    assert_eq!(visible(&client, &topic).await, sorted([a, b, c].concat()));
}

/// SIGTERM: `close` aborts the open transaction at once (not by the broker's timeout) and
/// leaves the prepared one of an unconfirmed checkpoint to recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_aborts_the_open_transaction() {
    let client = client().await;
    let topic = create_topic(&client, "sink-close", 2).await;
    let cfg = config(&unique_topic("sink-close"));
    let mut sink = TwoPhaseCommitSink::open(client.clone(), cfg.clone(), 0)
        .await
        .unwrap();
    send_all(&mut sink, &topic, &values("kept", 4)).await;
    let snapshot = sink.prepare(1).await.unwrap();
    send_all(&mut sink, &topic, &values("dropped", 4)).await;
    let report = sink.close(CloseMode::Graceful).await.unwrap();
    assert!(report.aborted_open);
    assert_eq!(report.left_prepared, snapshot);
    // Checkpoint 1 had completed: recovery commits it; nothing else was left open.
    let recovered = recover(&client, &cfg, &snapshot, &OwnerMap::new(&cfg, 1), 1)
        .await
        .unwrap();
    assert_eq!(recovered.committed, 1);
    assert!(recovered.lingering_aborted.is_empty(), "{recovered:?}");
    // EndTxn (close's abort, recovery's commit) is answered before its markers are written.
    settle(&client, &topic, 2).await;
    assert_eq!(visible(&client, &topic).await, sorted(values("kept", 4)));
}

/// ApiVersions as the broker sends it, beyond what the client implements: the KIP-939 check
/// reads InitProducerId's advertised maximum (v6 would be two-phase-commit support).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_advertises_its_own_init_producer_id_versions() {
    let client = client().await;
    let max = Admin::new(client)
        .advertised_max_version(22)
        .await
        .unwrap()
        .expect("InitProducerId is listed");
    eprintln!("the broker advertises InitProducerId up to v{max}");
    assert!(max >= 5, "Kafka 4.x offers at least v5, got {max}");
}
