//! The transactional producer against the scripted fake cluster: the paths a real broker cannot
//! be made to take on demand (a lost EndTxn answer, an unexpected error code, a slow request at
//! the wrong moment). Real time with short timeouts; every test is bounded by the coordinator
//! deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, EndTxnResponse};

use super::{TransactionConfig, TransactionalProducer, TxnOutcome, TxnState};
use crate::client::fake_cluster::{Action, FakeCluster, RequestKind, ResponseKind};
use crate::client::producer::ProducerRecord;
use crate::client::{Client, ClientConfig, ClientError};

/// A one-node fake cluster at transactions version `txn_version`, with topic "t" of two
/// partitions.
pub(super) async fn fake_at(txn_version: i16) -> FakeCluster {
    let fake = FakeCluster::start(1).await;
    fake.set_transaction_version(txn_version);
    fake.add_topic("t", &[1, 1]);
    fake
}

async fn producer(fake: &FakeCluster) -> TransactionalProducer {
    producer_with(fake, "fake-txn", |_| {}).await
}

/// A transactional producer on `fake` with short timeouts, linger 0, and `tweak` applied.
pub(super) async fn producer_with(
    fake: &FakeCluster,
    transactional_id: &str,
    tweak: impl FnOnce(&mut TransactionConfig),
) -> TransactionalProducer {
    let mut config = ClientConfig::new(&fake.addr(1));
    config.connection.request_timeout_ms = 500;
    config.retry.deadline_ms = 2_000;
    let client = Client::connect(config).await.expect("connect to the fake");
    let mut txn = TransactionConfig::new(transactional_id);
    txn.coordinator_deadline_ms = 1_500;
    txn.producer.linger_ms = 0;
    tweak(&mut txn);
    TransactionalProducer::init(client, txn)
        .await
        .expect("init against the fake")
}

fn record(value: &str) -> ProducerRecord {
    ProducerRecord::new("t", value.to_owned()).with_partition(0)
}

async fn send(p: &TransactionalProducer, value: &str) {
    let delivery = p.send(record(value)).await.expect("send");
    delivery.await.expect("delivered");
}

/// A fake cluster at transactions version `txn_version`, and a producer against it with a
/// transaction open that holds one delivered record, "a".
async fn open_transaction(txn_version: i16) -> (FakeCluster, TransactionalProducer) {
    let fake = fake_at(txn_version).await;
    let p = producer(&fake).await;
    p.begin().await.unwrap();
    send(&p, "a").await;
    (fake, p)
}

/// Scripts every EndTxn with `script(attempt)`, `attempt` counting from 0; the returned
/// notification fires as each EndTxn reaches the fake (before its reply).
fn on_end_txn(
    fake: &FakeCluster,
    mut script: impl FnMut(u32) -> Option<Action> + Send + 'static,
) -> Arc<tokio::sync::Notify> {
    let seen = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&seen);
    let mut attempt = 0;
    fake.control(ApiKey::EndTxn, true, move |_, _| {
        notify.notify_one();
        attempt += 1;
        script(attempt - 1)
    });
    seen
}

/// An EndTxn answer carrying `code`.
fn end_txn_error(code: i16) -> Option<Action> {
    Some(Action::Respond(ResponseKind::EndTxn(
        EndTxnResponse::default().with_error_code(code),
    )))
}

/// A commit that went through, whether or not the producer heard the first answer.
fn assert_committed(outcome: TxnOutcome) {
    assert!(
        matches!(
            outcome,
            TxnOutcome::Committed | TxnOutcome::AlreadyCommitted
        ),
        "{outcome:?}"
    );
}

/// Drops every EndTxn answer (after applying the request) while `armed`.
fn lose_end_txn_answers(fake: &FakeCluster) -> Arc<AtomicBool> {
    let armed = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&armed);
    fake.control(ApiKey::EndTxn, true, move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Some(Action::DropResponse)
        } else {
            None
        }
    });
    armed
}

/// Finding 4: a commit whose answers were all lost, recovered through DescribeTransactions under
/// transactions version 2, must continue on the epoch the coordinator reports; with the old
/// epoch the next transaction is fenced.
#[tokio::test]
async fn commit_recovered_by_describe_takes_the_coordinators_epoch() {
    let (fake, p) = open_transaction(2).await;
    let armed = lose_end_txn_answers(&fake);
    assert_committed(p.commit().await.expect("commit"));
    armed.store(false, Ordering::SeqCst);
    let epoch = fake.txn("fake-txn").producer_epoch;
    assert_eq!(p.producer_id().await, (1000, epoch));
    // The next transaction works.
    p.begin().await.unwrap();
    send(&p, "b").await;
    assert_eq!(
        p.commit().await.expect("second commit"),
        TxnOutcome::Committed
    );
    assert_eq!(fake.txn("fake-txn").end_txns, vec![(0, true), (1, true)]);
}

/// Finding 5: EndTxn(commit) answered with an unexpected code may have committed; the producer
/// must not let the transaction be aborted afterwards.
#[tokio::test]
async fn unexpected_end_txn_code_leaves_the_commit_unknown_and_refuses_abort() {
    for code in [-1, 9999] {
        let (fake, p) = open_transaction(2).await;
        on_end_txn(&fake, move |_| end_txn_error(code));
        let err = p
            .commit()
            .await
            .expect_err("commit answered with an odd code");
        assert!(
            matches!(err, ClientError::CommitOutcomeUnknown { .. }),
            "code {code}: {err}"
        );
        let abort = p.abort().await.expect_err("abort after an unknown commit");
        assert!(matches!(abort, ClientError::TxnFatal { .. }), "{abort}");
        assert!(
            fake.txn("fake-txn").end_txns.is_empty(),
            "nothing was ended"
        );
    }
}

/// Finding 5: an EndTxn(commit) attempt that timed out may have been applied; a later attempt
/// failing with another (non-retriable) code must not make the commit look refused.
#[tokio::test]
async fn timed_out_commit_then_other_error_stays_maybe_applied() {
    let (fake, p) = open_transaction(2).await;
    // First attempt: applied, answer lost. Second: TRANSACTION_ABORTABLE.
    on_end_txn(&fake, |attempt| match attempt {
        0 => Some(Action::DropResponse),
        _ => end_txn_error(120),
    });
    // The coordinator shows the commit (one epoch later): it did commit.
    assert_committed(p.commit().await.expect("commit"));
    assert_eq!(fake.txn("fake-txn").end_txns, vec![(0, true)]);

    // Same, but the first attempt was not applied: the coordinator still shows the transaction
    // open, and nothing proves the commit did not happen: unknown, never aborted.
    let (fake, p) = open_transaction(2).await;
    on_end_txn(&fake, |attempt| match attempt {
        0 => Some(Action::DelayMs(5000)),
        _ => end_txn_error(120),
    });
    let err = p.commit().await.expect_err("commit");
    assert!(
        matches!(err, ClientError::CommitOutcomeUnknown { .. }),
        "{err}"
    );
    assert!(
        p.abort().await.is_err(),
        "abort after a maybe-applied commit"
    );
}

/// Finding 5: a send that failed locally (nothing appended) must not leave its partition in a
/// version-2 transaction: committing it must not send EndTxn for a transaction the coordinator
/// never saw.
#[tokio::test]
async fn locally_failed_send_leaves_no_partition_behind() {
    let fake = fake_at(2).await;
    let mut config = ClientConfig::new(&fake.addr(1));
    config.connection.request_timeout_ms = 500;
    let client = Client::connect(config).await.unwrap();
    let mut txn = TransactionConfig::new("fake-txn");
    txn.coordinator_deadline_ms = 1_500;
    txn.producer.request_bytes_max = 1024;
    txn.producer.batch_bytes_max = 1024;
    let p = TransactionalProducer::init(client, txn).await.unwrap();
    p.begin().await.unwrap();
    let err = p
        .send(ProducerRecord::new("t", vec![0u8; 4096]).with_partition(1))
        .await
        .expect_err("record too large");
    assert!(matches!(err, ClientError::RecordTooLarge { .. }), "{err}");
    assert_eq!(p.commit().await.expect("commit"), TxnOutcome::Committed);
    assert!(fake.requests_of(ApiKey::EndTxn).is_empty());
}

/// Finding 3: a send that passed the state check before `commit` began but had not yet queued
/// its record (here: waiting for the metadata of its topic) must end up in the committed
/// transaction, never in the next one.
#[tokio::test]
async fn send_racing_commit_never_lands_in_the_next_transaction() {
    for prepare_first in [false, true] {
        send_racing_end(prepare_first).await;
    }
}

/// One run of the race above, ending with `commit` or with `prepare` then `commit`.
async fn send_racing_end(prepare_first: bool) {
    let (fake, p) = open_transaction(2).await;
    let p = Arc::new(p);
    // Created now, so that the producer has not seen its metadata yet.
    fake.add_topic("slow", &[1, 1]);
    let slow_seen = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&slow_seen);
    fake.control(ApiKey::Metadata, true, move |seen, _| {
        let RequestKind::Metadata(m) = &seen.body else {
            return None;
        };
        let slow = m
            .topics
            .iter()
            .flatten()
            .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "slow"));
        if slow {
            notify.notify_one();
            Some(Action::DelayMs(250))
        } else {
            None
        }
    });
    let sender = Arc::clone(&p);
    let racing = tokio::spawn(async move {
        let delivery = sender
            .send(ProducerRecord::new("slow", "b").with_partition(0))
            .await?;
        delivery.await
    });
    slow_seen.notified().await;
    if prepare_first {
        let prepared = p.prepare().await.expect("prepare");
        assert_eq!(prepared.producer_epoch, 0);
        // Whatever the racing send did is decided by now: it is in the prepared transaction
        // (acknowledged) or was refused; nothing waits for the commit.
        let racing = racing.await.unwrap();
        assert!(
            racing.is_ok() || fake.batches().iter().all(|b| b.0 != "slow"),
            "{racing:?}"
        );
        assert_eq!(p.commit().await.expect("commit"), TxnOutcome::Committed);
        let batches = fake.batches();
        assert_eq!(fake.txn("fake-txn").state, "CompleteCommit");
        assert!(batches.iter().all(|b| b.2 == 0), "{batches:?}");
        return;
    }
    let committed = p.commit().await.expect("commit");
    assert_eq!(committed, TxnOutcome::Committed);
    let racing = racing.await.unwrap();
    let (txn, batches) = (fake.txn("fake-txn"), fake.batches());
    match racing {
        // Acknowledged: it must have been part of the committed transaction.
        Ok(_) => {
            assert_eq!(txn.state, "CompleteCommit", "batches {batches:?}");
            assert!(
                batches.iter().all(|b| b.2 == 0),
                "every batch written with the committed epoch: {batches:?}"
            );
        }
        // Or refused clearly, and then never written.
        Err(e) => {
            assert!(batches.iter().all(|b| b.0 != "slow"), "{e}");
        }
    }
}

/// The state lock is not held across EndTxn: `state()` and `metrics()` answer while a commit
/// waits for its coordinator, and a send in that window is refused at once, saying why.
#[tokio::test]
async fn state_metrics_and_send_do_not_wait_for_a_running_commit() {
    let (fake, p) = open_transaction(2).await;
    let p = Arc::new(p);
    let end_txn_seen = on_end_txn(&fake, |_| Some(Action::DelayMs(300)));
    let committer = Arc::clone(&p);
    let commit = tokio::spawn(async move { committer.commit().await });
    end_txn_seen.notified().await;
    // EndTxn is on its way: nothing below waits for it.
    assert_eq!(p.state().await, TxnState::Committing);
    assert_eq!(p.metrics().await.commits, 0);
    let refused = p
        .send(record("late"))
        .await
        .expect_err("send during commit");
    assert_eq!(
        refused.to_string(),
        "cannot send in transaction state committing"
    );
    assert_eq!(commit.await.unwrap().unwrap(), TxnOutcome::Committed);
    assert_eq!(p.state().await, TxnState::Ready);
    assert_eq!(p.metrics().await.commits, 1);
}

/// Transactions version 1: concurrent first sends to one partition add it to the transaction
/// once (AddPartitionsToTxn), and its records commit.
#[tokio::test]
async fn version_1_adds_a_partition_once_for_concurrent_sends() {
    let fake = fake_at(1).await;
    let p = producer(&fake).await;
    assert_eq!(p.transaction_version(), 1);
    p.begin().await.unwrap();
    let (a, b) = tokio::join!(p.send(record("a")), p.send(record("b")));
    let (a, b) = tokio::join!(a.unwrap(), b.unwrap());
    a.unwrap();
    b.unwrap();
    assert_eq!(p.commit().await.unwrap(), TxnOutcome::Committed);
    let adds = fake.requests_of(ApiKey::AddPartitionsToTxn).len();
    assert_eq!(adds, 1);
    let s = fake.txn("fake-txn");
    assert_eq!(s.end_txns, vec![(0, true)]);
    assert_eq!(s.state, "CompleteCommit");
}

/// Cancel safety of `commit`: dropped while EndTxn is on its way, the producer stays in
/// Committing (sends refused, no abort possible), and calling `commit` again finishes the same
/// transaction and continues on the new epoch.
#[tokio::test]
async fn commit_cancelled_during_end_txn_is_finished_by_calling_it_again() {
    let (fake, p) = open_transaction(2).await;
    let end_txn_seen = on_end_txn(&fake, |attempt| match attempt {
        0 => Some(Action::DelayMs(300)),
        _ => None,
    });
    // Drop the commit once its EndTxn has reached the coordinator (its answer is delayed).
    tokio::select! {
        result = p.commit() => panic!("the first commit was still waiting: {result:?}"),
        () = end_txn_seen.notified() => {}
    }
    assert_eq!(p.state().await, TxnState::Committing);
    assert!(p.send(record("late")).await.is_err());
    let abort = p
        .abort()
        .await
        .expect_err("no abort once EndTxn(commit) may be out");
    assert_eq!(
        abort.to_string(),
        "cannot abort in transaction state committing"
    );
    assert_committed(p.commit().await.expect("commit again"));
    assert_eq!(p.producer_id().await, (1000, 1));
    p.begin().await.unwrap();
    send(&p, "b").await;
    p.commit().await.expect("next transaction");
    assert_eq!(fake.txn("fake-txn").end_txns, vec![(0, true), (1, true)]);
    assert!(fake.batches().iter().all(|b| b.0 != "late"));
}

/// EndTxn answered CONCURRENT_TRANSACTIONS (the previous transaction's markers still being
/// written) is retried, after the configured short pause, until the coordinator takes it; the
/// commit then succeeds once.
#[tokio::test]
async fn end_txn_refused_as_concurrent_is_retried_until_taken() {
    let (fake, p) = open_transaction(2).await;
    on_end_txn(&fake, |attempt| match attempt {
        0..=2 => end_txn_error(crate::protocol::error_codes::codes::CONCURRENT_TRANSACTIONS),
        _ => None,
    });
    assert_eq!(p.commit().await.expect("commit"), TxnOutcome::Committed);
    assert_eq!(fake.txn("fake-txn").end_txns, vec![(0, true)]);
}
