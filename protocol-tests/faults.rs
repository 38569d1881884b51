//! Network faults injected for real, between the client and the real broker, with the
//! [`FaultProxy`]: a lost Produce acknowledgement, a lost EndTxn(commit) answer, a batch that
//! times out inside a transaction. Each test checks that its fault really fired, then checks
//! what a reader sees (exactly once, in order) and what the client sent afterwards (never an
//! abort after a commit that may have applied).
//!
//! Every wait is bounded: short client timeouts and coordinator deadlines (a few seconds), and a
//! `tokio::time::timeout` around each test body.
//!
//! The helpers at the top carry the setup and the checks the tests share, so that each test
//! reads as its scenario: which fault, on which request, and what must hold afterwards.

use std::future::Future;
use std::time::Duration;

use exactly::client::admin::{Admin, Isolation};
use exactly::client::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use exactly::client::transaction::{
    describe_transaction, TransactionConfig, TransactionalProducer, TxnOutcome,
};
use exactly::client::{Client, ClientConfig, ClientError};
use kafka_protocol::messages::{ApiKey, EndTxnRequest, InitProducerIdRequest, ProduceRequest};

use crate::common::{brokers, client, create_topic, init_logging, read_all, settle, unique_topic};
use crate::fault_proxy::{Fault, FaultProxy, Rule, SeenRequest};

/// Upper bound on any one test's run time.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The client's per-request timeout through the proxy: short, so that a swallowed answer is
/// noticed quickly.
const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// How long coordinator calls keep retrying in these tests.
const COORDINATOR_DEADLINE_MS: u64 = 4_000;

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test did not finish within its time bound")
}

/// A client that knows only the proxy.
async fn proxied_client(proxy: &FaultProxy) -> Client {
    init_logging();
    let mut config = ClientConfig::new(&proxy.bootstrap());
    config.connection.request_timeout_ms = REQUEST_TIMEOUT_MS;
    config.connection.connect_timeout_ms = 5_000;
    config.retry.deadline_ms = 10_000;
    Client::connect(config).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect through the proxy {}: {e}",
            proxy.bootstrap()
        )
    })
}

fn txn_config(prefix: &str) -> TransactionConfig {
    let mut config = TransactionConfig::new(unique_topic(prefix));
    config.coordinator_deadline_ms = COORDINATOR_DEADLINE_MS;
    config.producer.request_timeout_ms = REQUEST_TIMEOUT_MS as i32;
    config
}

/// `count` distinct record values in send order: `{prefix}00000`, `{prefix}00001`, …
fn numbered(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:05}")).collect()
}

/// What a test through the proxy starts from: a client straight to the broker (to create the
/// topic and to read back what was written), a fresh one-partition topic, and a proxy in front
/// of the broker for the client under test.
struct Setup {
    direct: Client,
    topic: String,
    proxy: FaultProxy,
}

impl Setup {
    async fn new(prefix: &str) -> Self {
        Self::with_topic_config(prefix, &[]).await
    }

    /// As `new`, but the topic rejects records older than an hour (INVALID_TIMESTAMP): see
    /// [`send_too_old_record`].
    async fn rejecting_old_records(prefix: &str) -> Self {
        Self::with_topic_config(prefix, &[("message.timestamp.before.max.ms", "3600000")]).await
    }

    async fn with_topic_config(prefix: &str, topic_config: &[(&str, &str)]) -> Self {
        let direct = client().await;
        let topic = unique_topic(prefix);
        Admin::new(direct.clone())
            .create_topic(&topic, 1, topic_config)
            .await
            .expect("create topic");
        let proxy = FaultProxy::start(brokers()).await;
        Self {
            direct,
            topic,
            proxy,
        }
    }

    /// A transactional producer through the proxy.
    async fn transactional(&self, config: TransactionConfig) -> TransactionalProducer {
        TransactionalProducer::init(proxied_client(&self.proxy).await, config)
            .await
            .expect("init through the proxy")
    }

    /// An idempotent producer through the proxy.
    async fn idempotent(&self, config: ProducerConfig) -> Producer {
        Producer::new(proxied_client(&self.proxy).await, config)
            .await
            .expect("idempotent producer through the proxy")
    }

    /// A record for partition 0 of the topic.
    fn record(&self, value: &str) -> ProducerRecord {
        ProducerRecord::new(self.topic.as_str(), value.to_owned()).with_partition(0)
    }

    /// A transactional producer through the proxy, with a transaction open holding `values`
    /// (sent, not flushed).
    async fn open_transaction<S: AsRef<str>>(
        &self,
        config: TransactionConfig,
        values: impl IntoIterator<Item = S>,
    ) -> TransactionalProducer {
        let producer = self.transactional(config).await;
        self.begin_and_send(&producer, values).await;
        producer
    }

    /// Begins a transaction and sends `values` in it (not flushed).
    async fn begin_and_send<S: AsRef<str>>(
        &self,
        producer: &TransactionalProducer,
        values: impl IntoIterator<Item = S>,
    ) {
        producer.begin().await.unwrap();
        for value in values {
            producer.send(self.record(value.as_ref())).await.unwrap();
        }
    }

    /// Sends `values` with the idempotent producer, returning their acknowledgements.
    async fn send_each(&self, producer: &Producer, values: &[String]) -> Vec<DeliveryFuture> {
        let mut acks = Vec::new();
        for value in values {
            acks.push(producer.send(self.record(value)).await.expect("send"));
        }
        acks
    }

    /// The values a `read_committed` reader sees, in order.
    async fn committed_values(&self) -> Vec<String> {
        settle(&self.direct, &self.topic, 1).await;
        self.values(Isolation::ReadCommitted).await
    }

    /// Every value in the partition, in order.
    async fn uncommitted_values(&self) -> Vec<String> {
        self.values(Isolation::ReadUncommitted).await
    }

    async fn values(&self, isolation: Isolation) -> Vec<String> {
        read_all(&self.direct, &self.topic, 0, isolation)
            .await
            .into_iter()
            .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect()
    }

    /// After a fault: the next transaction (`value` alone) must commit.
    async fn assert_next_transaction_commits(
        &self,
        producer: &TransactionalProducer,
        value: &str,
        after: &str,
    ) {
        self.begin_and_send(producer, [value]).await;
        let next = producer.commit().await;
        assert!(
            matches!(next, Ok(TxnOutcome::Committed)),
            "the transaction after {after} failed: {next:?}"
        );
    }

    /// After a commit the broker applied but the client may not have heard of (`result`): the
    /// first EndTxn(commit) did apply, the commit is reported as done or its outcome as unknown
    /// (`what` describes it), `abort` is refused, and no EndTxn(abort) was ever sent.
    async fn assert_applied_commit_kept(
        &self,
        producer: &TransactionalProducer,
        result: &Result<TxnOutcome, ClientError>,
        what: &str,
    ) {
        assert_first_end_txn_applied(&self.proxy);
        assert_committed_or_unknown(result, what);
        self.assert_abort_refused(producer).await;
    }

    /// After a commit that may have applied: `abort` is refused, and no EndTxn(abort) went
    /// through the proxy at any time.
    async fn assert_abort_refused(&self, producer: &TransactionalProducer) {
        let abort = producer.abort().await;
        assert!(
            abort.is_err(),
            "abort after a commit that may have applied was accepted: {abort:?}"
        );
        assert_no_abort_sent(&self.proxy);
    }
}

/// Waits for every acknowledgement; `what` names the records in the failure message.
async fn assert_acknowledged(acks: Vec<DeliveryFuture>, what: &str) {
    for ack in acks {
        ack.await
            .unwrap_or_else(|e| panic!("{what} not acknowledged: {e}"));
    }
}

/// Sends, in the open transaction, a record older than a [`Setup::rejecting_old_records`]
/// topic accepts: the broker rejects its batch (INVALID_TIMESTAMP).
async fn send_too_old_record(producer: &TransactionalProducer, setup: &Setup) -> DeliveryFuture {
    let mut old = setup.record("rejected");
    old.timestamp_ms = Some(1_000);
    producer.send(old).await.unwrap()
}

/// A commit the broker applied was reported as committed.
fn assert_committed(result: &Result<TxnOutcome, ClientError>, what: &str) {
    assert!(
        matches!(
            result,
            Ok(TxnOutcome::Committed | TxnOutcome::AlreadyCommitted)
        ),
        "{what} was reported as {result:?}"
    );
}

/// A commit that may have applied was reported as committed, or its outcome as unknown.
fn assert_committed_or_unknown(result: &Result<TxnOutcome, ClientError>, what: &str) {
    assert!(
        matches!(
            result,
            Ok(TxnOutcome::Committed | TxnOutcome::AlreadyCommitted)
                | Err(ClientError::CommitOutcomeUnknown { .. })
                | Err(ClientError::OutcomeUnknown { .. })
        ),
        "{what} must be re-checked or reported as unknown, got {result:?}"
    );
}

/// The base sequence of each record batch in a Produce request, in request order.
fn base_sequences(request: &SeenRequest) -> Vec<i32> {
    // Record batch v2: baseOffset(8) batchLength(4) partitionLeaderEpoch(4) magic(1) crc(4)
    // attributes(2) lastOffsetDelta(4) baseTimestamp(8) maxTimestamp(8) producerId(8)
    // producerEpoch(2), then baseSequence(4) at byte 53.
    const BASE_SEQUENCE_AT: usize = 53;
    let produce = request
        .decode::<ProduceRequest>()
        .expect("a decodable Produce request");
    produce
        .topic_data
        .iter()
        .flat_map(|t| t.partition_data.iter())
        .filter_map(|p| p.records.as_ref())
        .filter(|r| r.len() >= BASE_SEQUENCE_AT + 4)
        .map(|r| {
            i32::from_be_bytes(
                r[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4]
                    .try_into()
                    .unwrap(),
            )
        })
        .collect()
}

/// Cuts the connection after the first EndTxn the broker applied (error code 0), instead of
/// delivering that answer; answers before it (CONCURRENT_TRANSACTIONS, say) go through.
fn cut_first_applied_end_txn() -> Rule {
    Rule::new(ApiKey::EndTxn, Fault::CutAfterResponse)
        .when_answer(|r| {
            r.decode_response::<EndTxnRequest>()
                .is_some_and(|a| a.error_code == 0)
        })
        .times(1)
}

/// Asserts that no EndTxn(abort) went through the proxy.
fn assert_no_abort_sent(proxy: &FaultProxy) {
    let ends: Vec<EndTxnRequest> = proxy.decoded();
    assert!(
        ends.iter().all(|e| e.committed),
        "an EndTxn(abort) was sent after a commit that may have applied: {ends:?}"
    );
}

/// The answer the broker gave to the first EndTxn: it must have applied the commit (the proxy
/// only kept the answer from the client).
fn assert_first_end_txn_applied(proxy: &FaultProxy) {
    let first = proxy
        .requests_of(ApiKey::EndTxn)
        .into_iter()
        .next()
        .expect("an EndTxn went through the proxy");
    let answer = first
        .decode_response::<EndTxnRequest>()
        .expect("the broker answered the first EndTxn");
    assert_eq!(
        answer.error_code, 0,
        "the broker did not apply the first EndTxn(commit): {answer:?}"
    );
}

/// The proxy itself: a client that bootstraps from it is pointed back at it by the rewritten
/// Metadata (partition leaders) and FindCoordinator (transaction coordinator) answers, so no
/// request bypasses the faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_stands_in_for_every_advertised_broker() {
    bounded(async {
        let setup = Setup::new("faults-proxy").await;
        let proxy = &setup.proxy;
        let producer = setup
            .open_transaction(txn_config("faults-proxy"), ["x"])
            .await;
        let seen = proxy.add_rule(Rule::new(ApiKey::EndTxn, Fault::Nothing));
        producer.commit().await.expect("commit through the proxy");
        assert_eq!(
            proxy.fired(seen),
            1,
            "EndTxn bypassed the proxy (advertised addresses not rewritten)"
        );
        assert!(
            !proxy.requests_of(ApiKey::Produce).is_empty(),
            "Produce bypassed the proxy (Metadata not rewritten)"
        );
        assert!(!proxy.requests_of(ApiKey::InitProducerId).is_empty());
    })
    .await
}

/// Dropping the proxy closes its listeners and the connections through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_stops_when_dropped() {
    use tokio::io::AsyncReadExt;
    bounded(async {
        let proxy = FaultProxy::start(brokers()).await;
        let bootstrap = proxy.bootstrap();
        let mut raw = tokio::net::TcpStream::connect(&bootstrap)
            .await
            .expect("connect to the proxy");
        for _ in 0..100 {
            if proxy.connections() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            proxy.connections(),
            1,
            "the proxy did not accept the connection"
        );
        drop(proxy);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
            .await
            .expect("a connection through the dropped proxy stays open");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a connection through the dropped proxy still delivers data: {read:?}"
        );
        // Aborted tasks close their sockets when next polled: allow a moment, boundedly.
        let mut closed = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&bootstrap).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            closed,
            "the proxy still accepts connections after being dropped"
        );
    })
    .await
}

/// (a) A Produce answer lost with the connection (the broker appended the batch) while several
/// batches of the partition are in flight: the producer retries, the broker recognises the
/// retried sequence numbers, and a reader sees every record exactly once, in send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_retried_after_a_lost_answer_writes_once_in_order() {
    bounded(async {
        let setup = Setup::new("faults-produce").await;
        let proxy = &setup.proxy;
        let producer = setup
            .idempotent(ProducerConfig {
                linger_ms: 0,
                // Small batches, so that several are in flight when the answer is lost.
                batch_bytes_max: 256,
                delivery_timeout_ms: 30_000,
                ..ProducerConfig::default()
            })
            .await;
        let expected = numbered("v", 400);
        // A first acknowledged batch lets the producer pipeline (up to 5 batches in flight).
        let acks = setup.send_each(&producer, &expected[..10]).await;
        assert_acknowledged(acks, "first records").await;
        let rule = proxy.add_rule(Rule::new(ApiKey::Produce, Fault::CutAfterResponse).nth(3));
        let acks = setup.send_each(&producer, &expected[10..]).await;
        producer.flush().await.expect("flush after the lost answer");
        assert_acknowledged(acks, "records").await;
        assert_eq!(proxy.fired(rule), 1, "the Produce answer was not cut");

        // The cut request was applied by the broker, and its batches were sent again.
        let produces = proxy.requests_of(ApiKey::Produce);
        let cut = produces
            .iter()
            .position(|r| r.fault == Some(Fault::CutAfterResponse))
            .expect("the cut Produce request is in the log");
        let answer = produces[cut]
            .decode_response::<ProduceRequest>()
            .expect("the broker answered the cut request");
        let codes: Vec<i16> = answer
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
            .collect();
        assert!(
            codes.iter().all(|c| *c == 0),
            "the broker did not append the cut request: {codes:?}"
        );
        // Requests recorded after it on its connection were in flight with it (the cut closed
        // that connection): the retry has to put several batches back in order.
        let in_flight_with_it = produces[cut + 1..]
            .iter()
            .filter(|r| r.connection == produces[cut].connection)
            .count();
        assert!(
            in_flight_with_it > 0,
            "no other Produce was in flight when the answer was cut"
        );
        let cut_sequences = base_sequences(&produces[cut]);
        let resent: Vec<i32> = produces[cut + 1..].iter().flat_map(base_sequences).collect();
        assert!(
            cut_sequences.iter().all(|s| resent.contains(s)),
            "the batches of the cut request {cut_sequences:?} were not sent again (later: {resent:?})"
        );

        assert_eq!(
            setup.uncommitted_values().await,
            expected,
            "records duplicated, lost or reordered"
        );
    })
    .await
}

/// (b) The EndTxn(commit) answer never reaches the producer (the broker applied the commit; every
/// answer to EndTxn is cut, retries included): the producer must find out that the commit
/// happened (DescribeTransactions) or say the outcome is unknown — and never abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_commit_answer_is_never_followed_by_an_abort() {
    bounded(async {
        let setup = Setup::new("faults-commit").await;
        let proxy = &setup.proxy;
        let expected = numbered("c", 10);
        let producer = setup
            .open_transaction(txn_config("faults-commit"), &expected)
            .await;
        producer.flush().await.unwrap();

        let rule = proxy.add_rule(Rule::new(ApiKey::EndTxn, Fault::CutAfterResponse));
        let result = producer.commit().await;
        proxy.disable(rule);
        assert!(proxy.fired(rule) >= 1, "no EndTxn answer was cut");
        // Whatever it said, the producer must not abort now.
        setup
            .assert_applied_commit_kept(&producer, &result, "a commit the broker applied")
            .await;
        assert_eq!(setup.committed_values().await, expected);
    })
    .await
}

/// (b, one answer lost) Only the first EndTxn(commit) answer is lost with its connection; the
/// producer's retry reaches the coordinator, which already committed (and, under transactions
/// version 2, bumped the epoch). The retry must be recognised as the same commit: success, no
/// abort, records once, and the producer goes on to commit the next transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_commit_after_one_lost_answer_succeeds() {
    bounded(async {
        let setup = Setup::new("faults-commit-once").await;
        let proxy = &setup.proxy;
        let producer = setup
            .open_transaction(txn_config("faults-once"), ["first"])
            .await;
        let rule = proxy.add_rule(cut_first_applied_end_txn());
        let result = producer.commit().await;
        assert_eq!(proxy.fired(rule), 1, "the EndTxn answer was not cut");
        assert_first_end_txn_applied(proxy);
        assert!(
            proxy.requests_of(ApiKey::EndTxn).len() >= 2,
            "the commit was not retried"
        );
        assert_committed(&result, "a commit the broker applied, retried once,");

        setup
            .assert_next_transaction_commits(&producer, "second", "a retried commit")
            .await;
        assert_no_abort_sent(proxy);
        assert_eq!(setup.committed_values().await, ["first", "second"]);
    })
    .await
}

/// (b, no re-check possible) As above, and DescribeTransactions is cut too: the producer cannot
/// learn the outcome, so it must report `CommitOutcomeUnknown` and refuse to abort. A new
/// producer with the same transactional id (InitProducerId) must not abort the commit either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commit_outcome_is_reported_honestly() {
    bounded(async {
        let setup = Setup::new("faults-unknown").await;
        let proxy = &setup.proxy;
        let config = txn_config("faults-unknown");
        let expected = numbered("u", 10);
        let producer = setup.open_transaction(config.clone(), &expected).await;
        producer.flush().await.unwrap();

        let end = proxy.add_rule(Rule::new(ApiKey::EndTxn, Fault::CutAfterResponse));
        let describe = proxy.add_rule(Rule::new(
            ApiKey::DescribeTransactions,
            Fault::CutBeforeForward,
        ));
        let result = producer.commit().await;
        proxy.disable(end);
        proxy.disable(describe);
        assert!(proxy.fired(end) >= 1, "no EndTxn answer was cut");
        assert!(
            proxy.fired(describe) >= 1,
            "the producer never tried to re-check the outcome (DescribeTransactions)"
        );
        assert_first_end_txn_applied(proxy);
        assert!(
            matches!(result, Err(ClientError::CommitOutcomeUnknown { .. })),
            "with no answer and no re-check the outcome is unknown, got {result:?}"
        );
        setup.assert_abort_refused(&producer).await;

        // The application's recovery: a new instance (InitProducerId) — it must not undo the
        // commit.
        let again = TransactionalProducer::init(setup.direct.clone(), config)
            .await
            .expect("a new producer for the same transactional id");
        drop(again);
        assert_eq!(setup.committed_values().await, expected);
    })
    .await
}

/// Checks the KIP-360 recovery from a failed batch (`what`: how it failed): the failure made
/// the transaction abortable (`flushed`) and its record unacknowledged (`ack`); `abort` succeeds
/// with the same producer id and a higher epoch, obtained with an InitProducerId that carried
/// the current producer id and epoch; then the next transaction commits and only its records
/// are visible.
async fn assert_abortable_then_recovered(
    setup: &Setup,
    producer: &TransactionalProducer,
    (flushed, ack): (Result<(), ClientError>, DeliveryFuture),
    (pid, epoch_before): (i64, i16),
    what: &str,
) {
    assert!(
        matches!(flushed, Err(ClientError::TxnAbortable { .. })),
        "a {what} batch must make the transaction abortable, got {flushed:?}"
    );
    assert!(ack.await.is_err(), "the {what} record was acknowledged");
    producer
        .abort()
        .await
        .unwrap_or_else(|e| panic!("abort after the {what} batch: {e}"));

    let (pid_after, epoch_after) = producer.producer_id().await;
    assert_eq!(pid_after, pid, "KIP-360 keeps the producer id");
    assert!(
        epoch_after > epoch_before,
        "the epoch was not bumped ({epoch_before} → {epoch_after})"
    );
    let inits: Vec<InitProducerIdRequest> = setup.proxy.decoded();
    assert!(inits.len() >= 2, "no epoch bump was requested: {inits:?}");
    let bump = inits.last().unwrap();
    assert_eq!(
        (bump.producer_id.0, bump.producer_epoch >= epoch_before),
        (pid, true),
        "the epoch bump must send the current producer id and epoch (KIP-360): {inits:?}"
    );

    let expected = numbered("b", 5);
    setup.begin_and_send(producer, &expected).await;
    let outcome = producer
        .commit()
        .await
        .expect("the next transaction commits");
    assert_eq!(outcome, TxnOutcome::Committed);
    assert_eq!(setup.committed_values().await, expected);
}

/// (c) KIP-360 after an abortable error: the broker rejects a batch (INVALID_TIMESTAMP: the
/// record is older than the topic's `message.timestamp.before.max.ms`), which leaves a gap in
/// the partition's sequence; `abort` bumps the epoch with InitProducerId carrying the current
/// producer id and epoch (seen by the proxy), and the next transaction commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_batch_is_recovered_by_an_epoch_bump() {
    bounded(async {
        let setup = Setup::rejecting_old_records("faults-bump-rejected").await;
        let producer = setup.transactional(txn_config("faults-bump")).await;
        let ids = producer.producer_id().await;

        producer.begin().await.unwrap();
        let ack = send_too_old_record(&producer, &setup).await;
        let flushed = producer.flush().await;
        assert_abortable_then_recovered(&setup, &producer, (flushed, ack), ids, "rejected").await;
    })
    .await
}

/// (c) KIP-360 after a timed-out batch: every Produce answer is lost (the broker appended the
/// records; the connection stays usable for other requests), the batch passes its delivery
/// timeout, the transaction becomes abortable, `abort` bumps the epoch, the next transaction
/// commits, and the lost batch stays invisible (aborted).
///
/// Fails on 9a74ceb: a batch that expires in the producer's queue stops the producer without
/// waking `flush`, which then waits forever (`drain` → `set_fatal` never notifies `idle`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_batch_is_recovered_by_an_epoch_bump() {
    bounded(async {
        let setup = Setup::new("faults-bump-timeout").await;
        let proxy = &setup.proxy;
        let mut config = txn_config("faults-bump");
        config.producer.delivery_timeout_ms = 5_000;
        config.producer.retry_backoff_ms = 50;
        config.producer.retry_backoff_max_ms = 200;
        let producer = setup.transactional(config).await;
        let ids = producer.producer_id().await;

        producer.begin().await.unwrap();
        let lost = proxy.add_rule(Rule::new(ApiKey::Produce, Fault::DropResponse));
        let ack = producer.send(setup.record("lost")).await.unwrap();
        let flushed = tokio::time::timeout(Duration::from_secs(30), producer.flush())
            .await
            .expect("flush never returned after the batch's delivery timeout");
        proxy.disable(lost);
        assert!(proxy.fired(lost) >= 1, "no Produce answer was lost");
        assert_abortable_then_recovered(&setup, &producer, (flushed, ack), ids, "timed-out").await;
    })
    .await
}

/// (d) Finding 4: a commit recovered through DescribeTransactions under transactions version 2
/// (every EndTxn answer lost; the re-check says CompleteCommit at the bumped epoch) must leave the
/// producer on the epoch the coordinator reports, so that the next transaction commits.
///
/// Fails on 9a74ceb (the producer kept the old epoch: (pid, 0) where the coordinator reports
/// (pid, 1), and the next transaction was fenced); fixed by the `txn` branch (ddb8e4e, merged
/// here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_recovered_by_describe_keeps_the_producer_usable() {
    bounded(async {
        let setup = Setup::new("faults-finding4").await;
        let proxy = &setup.proxy;
        let config = txn_config("faults-finding4");
        let producer = setup.transactional(config.clone()).await;
        assert_eq!(
            producer.transaction_version(),
            2,
            "finding 4 is about transactions version 2; the broker runs version 1"
        );

        setup.begin_and_send(&producer, ["first"]).await;
        let rule = proxy.add_rule(Rule::new(ApiKey::EndTxn, Fault::CutAfterResponse));
        let outcome = producer.commit().await;
        proxy.disable(rule);
        assert!(proxy.fired(rule) >= 1, "no EndTxn answer was cut");
        assert_first_end_txn_applied(proxy);
        assert!(
            !proxy.requests_of(ApiKey::DescribeTransactions).is_empty(),
            "the commit was not re-checked with DescribeTransactions"
        );
        assert_eq!(
            outcome.expect("the re-check finds the commit"),
            TxnOutcome::AlreadyCommitted
        );
        let described = describe_transaction(&setup.direct, &config.transactional_id)
            .await
            .unwrap();
        assert_eq!(
            producer.producer_id().await,
            (described.producer_id, described.producer_epoch),
            "after a commit recovered through DescribeTransactions the producer must use the \
             epoch the coordinator reports (finding 4)"
        );

        setup
            .assert_next_transaction_commits(&producer, "second", "a recovered commit (finding 4)")
            .await;
        assert_no_abort_sent(proxy);
        assert_eq!(setup.committed_values().await, ["first", "second"]);
    })
    .await
}

/// A connection that stalls (the broker appended a batch, then no answer ever comes back on that
/// connection) must be given up once a request on it timed out: the producer reconnects, resends,
/// the broker deduplicates, and every record is acknowledged once. The Java client closes a
/// connection on a request timeout for this reason.
///
/// Fails on 9a74ceb: a request timeout leaves the connection in use (it is not poisoned), so
/// every retry and every metadata request goes to the stalled connection and times out again
/// until the delivery timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connection_is_given_up_after_a_timeout() {
    bounded(async {
        let setup = Setup::new("faults-stall").await;
        let proxy = &setup.proxy;
        let producer = setup
            .idempotent(ProducerConfig {
                delivery_timeout_ms: 15_000,
                ..ProducerConfig::default()
            })
            .await;
        let (first, second) = (numbered("a", 10), numbered("b", 10));
        let acks = setup.send_each(&producer, &first).await;
        producer.flush().await.expect("first records flushed");
        assert_acknowledged(acks, "first records").await;
        let connections_before = proxy.connections();
        let stall = proxy.add_rule(Rule::new(ApiKey::Produce, Fault::Stall).nth(1));
        let acks = setup.send_each(&producer, &second).await;
        let flushed = tokio::time::timeout(Duration::from_secs(30), producer.flush())
            .await
            .expect("flush never returned");
        assert_eq!(proxy.fired(stall), 1, "no connection was stalled");
        flushed.expect("the producer recovers from a stalled connection");
        assert_acknowledged(acks, "records").await;
        assert!(
            proxy.connections() > connections_before,
            "the producer never opened a new connection"
        );
        assert_eq!(
            setup.uncommitted_values().await,
            [first, second].concat(),
            "records duplicated, lost or reordered"
        );
    })
    .await
}

/// Not a network fault, found while writing these tests: with `linger_ms > 0`, a record sent
/// while the producer's sender task is idle must still go out after `linger_ms`, without a
/// `flush`.
///
/// Fails on 9a74ceb: `send` wakes the sender only when `linger_ms == 0`; an idle sender waits
/// for a wake-up with no deadline, so the record waits until someone calls `flush`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_record_is_sent_without_flush() {
    bounded(async {
        let direct = client().await;
        let topic = create_topic(&direct, "faults-linger", 1).await;
        let producer = Producer::new(
            direct.clone(),
            ProducerConfig {
                linger_ms: 5,
                ..ProducerConfig::default()
            },
        )
        .await
        .expect("idempotent producer");
        // Let the sender task go idle first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ack = producer
            .send(ProducerRecord::new(topic.as_str(), "lingered").with_partition(0))
            .await
            .expect("send");
        let acked = tokio::time::timeout(Duration::from_secs(20), ack)
            .await
            .expect("a lingering record was never sent (no flush was called)");
        acked.expect("the record is acknowledged");
    })
    .await
}

/// Finding 5: the broker applied EndTxn(commit) but the answer carries an error code the client
/// does not know (the proxy edits the answer). The outcome is unknown to the client, so it must
/// re-check or report `CommitOutcomeUnknown` — and never abort afterwards.
///
/// Fails on 9a74ceb: an unknown code is classified abortable, so `commit` returns it as a plain
/// broker error, the transaction becomes abortable, and `abort` sends EndTxn(abort) after a
/// commit that applied. Fixed by the `txn` branch (ddb8e4e, merged here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_answered_with_an_unknown_code_is_never_aborted() {
    bounded(async {
        let setup = Setup::new("faults-unknown-code").await;
        let proxy = &setup.proxy;
        let producer = setup
            .open_transaction(txn_config("faults-code"), ["kept"])
            .await;
        let rule = proxy.add_rule(Rule::new(
            ApiKey::EndTxn,
            Fault::edit_response::<EndTxnRequest>(|r| r.error_code = 9_999),
        ));
        let result = producer.commit().await;
        proxy.disable(rule);
        assert!(proxy.fired(rule) >= 1, "no EndTxn answer was edited");
        setup
            .assert_applied_commit_kept(
                &producer,
                &result,
                "a commit answered with an unknown code",
            )
            .await;
        assert_eq!(setup.committed_values().await, ["kept"]);
    })
    .await
}

/// Finding 5, second part: the first EndTxn(commit) times out (the broker applied it; its answer
/// is lost) and the retry is answered with an abortable error (the proxy edits the answer). The
/// first attempt may have applied, so the outcome stays unknown: re-check or report
/// `CommitOutcomeUnknown`, never abort.
///
/// Fails on 9a74ceb: the last error wins, the transaction becomes abortable, and `abort` sends
/// EndTxn(abort). Fixed by the `txn` branch (ddb8e4e, merged here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_timed_out_then_refused_is_never_aborted() {
    bounded(async {
        let setup = Setup::new("faults-timeout-then-error").await;
        let proxy = &setup.proxy;
        let producer = setup
            .open_transaction(txn_config("faults-then"), ["kept"])
            .await;
        let lost = proxy.add_rule(Rule::new(ApiKey::EndTxn, Fault::DropResponse).nth(1));
        // TRANSACTION_ABORTABLE (120) on every later EndTxn.
        let refused = proxy.add_rule(Rule::new(
            ApiKey::EndTxn,
            Fault::edit_response::<EndTxnRequest>(|r| r.error_code = 120),
        ));
        let result = producer.commit().await;
        proxy.disable(lost);
        proxy.disable(refused);
        assert_eq!(proxy.fired(lost), 1, "the first EndTxn answer was not lost");
        assert!(
            proxy.fired(refused) >= 1,
            "the retry was not answered with an error"
        );
        setup
            .assert_applied_commit_kept(&producer, &result, "a commit that may have applied")
            .await;
        assert_eq!(setup.committed_values().await, ["kept"]);
    })
    .await
}

/// A transactional Produce answer lost with its connection (the broker appended the batch): the
/// retry is deduplicated, the commit succeeds, and a `read_committed` reader sees every record
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_produce_retried_after_a_lost_answer_commits_once() {
    bounded(async {
        let setup = Setup::new("faults-txn-produce").await;
        let mut config = txn_config("faults-txn-produce");
        config.producer.linger_ms = 0;
        config.producer.batch_bytes_max = 256;
        let producer = setup.transactional(config).await;
        let cut = setup
            .proxy
            .add_rule(Rule::new(ApiKey::Produce, Fault::CutAfterResponse).nth(2));
        let expected = numbered("t", 200);
        setup.begin_and_send(&producer, &expected).await;
        let outcome = producer
            .commit()
            .await
            .expect("commit after the lost answer");
        assert_eq!(outcome, TxnOutcome::Committed);
        assert_eq!(setup.proxy.fired(cut), 1, "the Produce answer was not cut");
        assert_eq!(setup.committed_values().await, expected);
    })
    .await
}

/// The EndTxn(abort) answer lost with its connection (the broker applied the abort): the retry
/// is recognised, the producer is ready again, the next transaction commits, and only its
/// records are visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_abort_answer_is_retried() {
    bounded(async {
        let setup = Setup::new("faults-abort").await;
        let proxy = &setup.proxy;
        let producer = setup
            .open_transaction(txn_config("faults-abort"), ["aborted"])
            .await;
        producer.flush().await.unwrap();
        let cut = proxy.add_rule(cut_first_applied_end_txn());
        let outcome = producer.abort().await;
        assert_eq!(proxy.fired(cut), 1, "the EndTxn(abort) answer was not cut");
        assert!(
            matches!(
                outcome,
                Ok(TxnOutcome::Aborted | TxnOutcome::AlreadyAborted)
            ),
            "an abort the broker applied, retried once, was reported as {outcome:?}"
        );
        setup
            .assert_next_transaction_commits(&producer, "kept", "a retried abort")
            .await;
        assert_eq!(setup.committed_values().await, ["kept"]);
    })
    .await
}

/// KIP-360 with a lost answer: the epoch bump's InitProducerId (current producer id and epoch)
/// is applied by the coordinator but its answer is lost with the connection. The retry carries
/// the same id and epoch; the coordinator must recognise it, and the producer must end up on a
/// working epoch: the next transaction commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_bump_with_a_lost_answer_recovers() {
    bounded(async {
        let setup = Setup::rejecting_old_records("faults-bump-lost").await;
        let proxy = &setup.proxy;
        let producer = setup.transactional(txn_config("faults-bump-lost")).await;
        let ids = producer.producer_id().await;
        producer.begin().await.unwrap();
        let ack = send_too_old_record(&producer, &setup).await;
        assert!(
            producer.flush().await.is_err(),
            "the old record was accepted"
        );
        assert!(ack.await.is_err(), "the old record was acknowledged");

        // Only the bump carries a producer id (the first InitProducerId, with -1, went before).
        // Its first attempts may be answered CONCURRENT_TRANSACTIONS while the abort's markers
        // are written: cut the first answer that says the bump was applied.
        let cut = proxy.add_rule(
            Rule::new(ApiKey::InitProducerId, Fault::CutAfterResponse)
                .when(|r| {
                    r.decode::<InitProducerIdRequest>()
                        .is_some_and(|r| r.producer_id.0 >= 0)
                })
                .when_answer(|r| {
                    r.decode_response::<InitProducerIdRequest>()
                        .is_some_and(|a| a.error_code == 0)
                })
                .times(1),
        );
        let aborted = producer.abort().await;
        assert_eq!(proxy.fired(cut), 1, "the epoch bump's answer was not cut");
        let bump = proxy
            .requests_of(ApiKey::InitProducerId)
            .into_iter()
            .find(|r| r.fault.is_some())
            .and_then(|r| r.decode_response::<InitProducerIdRequest>())
            .expect("the broker answered the cut bump");
        assert_eq!(
            bump.error_code, 0,
            "the broker did not apply the bump: {bump:?}"
        );
        aborted.expect("abort with a retried epoch bump");
        let (pid, epoch) = producer.producer_id().await;
        assert_eq!(pid, ids.0, "KIP-360 keeps the producer id");
        assert!(epoch > ids.1, "the epoch was not bumped");

        setup
            .assert_next_transaction_commits(&producer, "kept", "a retried epoch bump")
            .await;
        assert_eq!(setup.committed_values().await, ["kept"]);
    })
    .await
}

/// A slow coordinator: the first EndTxn(commit) is held by the proxy longer than the client's
/// request timeout, so the client gives up on it and retries while the broker has yet to apply
/// it. Both attempts reach the broker (in order); the commit succeeds once, nothing is aborted,
/// and the producer commits its next transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_slower_than_the_request_timeout_succeeds_once() {
    bounded(async {
        let setup = Setup::new("faults-slow-commit").await;
        let proxy = &setup.proxy;
        let producer = setup
            .open_transaction(txn_config("faults-slow"), ["first"])
            .await;
        let slow = proxy.add_rule(
            Rule::new(
                ApiKey::EndTxn,
                Fault::Delay(Duration::from_millis(REQUEST_TIMEOUT_MS + 1_000)),
            )
            .nth(1),
        );
        let result = producer.commit().await;
        assert_eq!(proxy.fired(slow), 1, "the EndTxn was not delayed");
        assert!(
            proxy.requests_of(ApiKey::EndTxn).len() >= 2,
            "the client did not retry the slow EndTxn"
        );
        assert_committed(&result, "a slow commit");
        setup
            .assert_next_transaction_commits(&producer, "second", "a slow commit")
            .await;
        assert_no_abort_sent(proxy);
        assert_eq!(setup.committed_values().await, ["first", "second"]);
    })
    .await
}
