//! The transactional producer: atomic writes across partitions, fencing, and two-phase commit
//! of *prepared* transactions from a stored identity.
//!
//! Protocol (KIP-98, <https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging>):
//! FindCoordinator(transaction) → InitProducerId(transactional id) fences older instances and
//! aborts their open transaction → per transaction: AddPartitionsToTxn before a partition's
//! first produce (transactions version 1), Produce with the transactional id, optionally
//! AddOffsetsToTxn + TxnOffsetCommit (KIP-447) → EndTxn(commit or abort).
//!
//! With transactions version 2 (KIP-890, finalized by default on Kafka 4.x) the broker adds
//! partitions implicitly on the first transactional produce, and every EndTxn bumps the
//! producer epoch; the new epoch comes back in the EndTxn response and the producer starts its
//! sequences over.
//!
//! Rules this module keeps:
//! - error codes are classified by the one table in [`crate::protocol::error_codes`];
//! - a commit whose answer never came is **never** followed by an abort: the producer re-sends
//!   EndTxn(commit) (idempotent on the coordinator) until its deadline, and if the outcome is
//!   still unknown it says so ([`ClientError::CommitOutcomeUnknown`]) and refuses to abort;
//! - a prepared transaction ([`PreparedTxn`]) can be committed or aborted by a new process with
//!   [`commit_prepared`]/[`abort_prepared`], which send EndTxn with the stored id and epoch and
//!   never call InitProducerId (which would abort it). Flink does the same by reflection.

mod marker;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::connection::backoff::{Backoff, BackoffConfig};
use crate::connection::{Connection, ConnectionError};
use crate::protocol::error_codes::{self, codes, Class, Refresh};
use crate::protocol::messages::messages::{
    add_partitions_to_txn_request::AddPartitionsToTxnTopic,
    txn_offset_commit_request::TxnOffsetCommitRequestPartition,
    txn_offset_commit_request::TxnOffsetCommitRequestTopic, AddOffsetsToTxnRequest,
    AddPartitionsToTxnRequest, DescribeTransactionsRequest, EndTxnRequest, FindCoordinatorRequest,
    GroupId, InitProducerIdRequest, ProduceRequest, ProducerId, TopicName, TransactionalId,
    TxnOffsetCommitRequest,
};
use crate::protocol::messages::{kstr, KafkaRequest};

use super::admin::{Admin, ConfigResource};
use super::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use super::{Client, ClientError};

/// Transactional producer settings.
#[derive(Debug, Clone)]
pub struct TransactionConfig {
    /// The transactional id: one per logical writer (e.g. per sink subtask), stable across
    /// restarts so that a restarted writer fences its previous incarnation.
    pub transactional_id: String,
    /// How long the coordinator lets a transaction stay open before aborting it. Must be larger
    /// than the checkpoint interval plus checkpoint duration when used by a 2PC sink.
    pub transaction_timeout_ms: i32,
    /// Settings of the underlying idempotent producer.
    pub producer: ProducerConfig,
    /// How long coordinator calls (InitProducerId, EndTxn, ...) keep retrying.
    pub coordinator_deadline_ms: u64,
    /// Backoff after CONCURRENT_TRANSACTIONS (the previous transaction is still completing).
    pub concurrent_txn_backoff_ms: u64,
}

impl TransactionConfig {
    /// Settings with defaults for `transactional_id`.
    pub fn new(transactional_id: impl Into<String>) -> Self {
        Self {
            transactional_id: transactional_id.into(),
            transaction_timeout_ms: 60_000,
            producer: ProducerConfig::default(),
            coordinator_deadline_ms: 30_000,
            concurrent_txn_backoff_ms: 20,
        }
    }
}

/// Where the transactional producer is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxnState {
    /// `init` has not succeeded yet.
    Uninitialized,
    /// No transaction open.
    Ready,
    /// A transaction is open.
    InTransaction,
    /// EndTxn(commit) is under way.
    Committing,
    /// EndTxn(abort) is under way.
    Aborting,
    /// The transaction was flushed and handed out as a [`PreparedTxn`]; it must be committed or
    /// aborted (here or by another process) before the next one.
    Prepared,
    /// The current transaction failed; only `abort` is allowed.
    AbortableError,
    /// The producer cannot continue (fenced, not authorized, commit outcome unknown).
    FatalError,
}

impl TxnState {
    fn name(self) -> &'static str {
        match self {
            Self::Uninitialized => "uninitialized",
            Self::Ready => "ready",
            Self::InTransaction => "in-transaction",
            Self::Committing => "committing",
            Self::Aborting => "aborting",
            Self::Prepared => "prepared",
            Self::AbortableError => "abortable-error",
            Self::FatalError => "fatal-error",
        }
    }
}

/// A flushed, not yet committed transaction: everything needed to commit or abort it from
/// another process. Serialize it (JSON via serde, or with the runtime's snapshots) before
/// acknowledging a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedTxn {
    /// The transactional id.
    pub transactional_id: String,
    /// The producer id the transaction was written with.
    pub producer_id: i64,
    /// The producer epoch the transaction was written with.
    pub producer_epoch: i16,
    /// The EndTxn semantics the transaction was written under (KIP-890): 2 when the coordinator
    /// bumps the epoch on EndTxn (EndTxn v5+), 1 when it does not. Used to recognise a retry of our
    /// own EndTxn after the epoch moved on.
    pub transaction_version: i16,
    /// Nothing was written in it (no records, no offsets): the coordinator never saw it, so
    /// committing or aborting it is a no-op.
    #[serde(default)]
    pub empty: bool,
}

/// What ending a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// This call committed it.
    Committed,
    /// It had already been committed (a retry, or a second `commit_prepared`).
    AlreadyCommitted,
    /// This call aborted it.
    Aborted,
    /// It had already been aborted.
    AlreadyAborted,
}

/// Counters for the transactional producer (read them with [`TransactionalProducer::metrics`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxnMetrics {
    /// Transactions committed.
    pub commits: u64,
    /// Transactions aborted.
    pub aborts: u64,
    /// Coordinator requests retried.
    pub retries: u64,
    /// Commit latencies (EndTxn round trips including retries), in µs, most recent 1024.
    pub commit_latency_us: Vec<u64>,
}

struct Inner {
    state: TxnState,
    error: Option<ClientError>,
    producer_id: i64,
    producer_epoch: i16,
    partitions: HashSet<(String, i32)>,
    /// Offsets were added (AddOffsetsToTxn) in the current transaction.
    offsets_added: bool,
    metrics: TxnMetrics,
}

/// The transactional producer. See the module docs.
pub struct TransactionalProducer {
    client: Client,
    config: TransactionConfig,
    producer: Producer,
    coordinator: Coordinator,
    transaction_version: i16,
    /// The EndTxn semantics in effect, recorded in [`PreparedTxn`]: 2 when EndTxn is sent at v5+,
    /// whose answer carries a bumped epoch (KIP-890). A broker applies that per request version,
    /// even where the `transaction.version` feature is still 1.
    end_txn_version: i16,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalProducer")
            .field("transactional_id", &self.config.transactional_id)
            .finish_non_exhaustive()
    }
}

impl TransactionalProducer {
    /// Finds the transaction coordinator, checks the timeout against the broker's
    /// `transaction.max.timeout.ms`, and calls InitProducerId: this fences any older producer
    /// with the same transactional id and aborts its open transaction.
    ///
    /// # Cancel safety
    /// Cancel safe in effect: a later `init` fences whatever this one obtained.
    pub async fn init(client: Client, config: TransactionConfig) -> Result<Self, ClientError> {
        let span = info_span!("txn.init", transactional_id = %config.transactional_id);
        async move {
            if config.transaction_timeout_ms <= 0 {
                return Err(ClientError::Config {
                    field: "transaction_timeout_ms",
                    message: format!("must be positive, got {}", config.transaction_timeout_ms),
                });
            }
            let coordinator = Coordinator::new(
                client.clone(),
                config.transactional_id.clone(),
                config.coordinator_deadline_ms,
                config.concurrent_txn_backoff_ms,
            );
            let (node_id, conn) = coordinator.connection().await?;
            check_timeout(&client, node_id, config.transaction_timeout_ms).await?;
            let transaction_version = transaction_version(&conn);
            let end_txn_version = if conn.version_of::<EndTxnRequest>().unwrap_or(0) >= 5 {
                2
            } else {
                1
            };
            let request = InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(kstr(config.transactional_id.clone()))))
                .with_transaction_timeout_ms(config.transaction_timeout_ms)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            let (response, _) = coordinator
                .call(&request, "InitProducerId", |r| r.error_code)
                .await?;
            let (pid, epoch) = (response.producer_id.0, response.producer_epoch);
            info!(
                producer_id = pid,
                epoch, transaction_version, "transactional producer initialized"
            );
            let producer = Producer::with_producer_id(
                client.clone(),
                config.producer.clone(),
                Some(config.transactional_id.clone()),
                pid,
                epoch,
            );
            Ok(Self {
                client,
                producer,
                coordinator,
                transaction_version,
                end_txn_version,
                inner: Mutex::new(Inner {
                    state: TxnState::Ready,
                    error: None,
                    producer_id: pid,
                    producer_epoch: epoch,
                    partitions: HashSet::new(),
                    offsets_added: false,
                    metrics: TxnMetrics::default(),
                }),
                config,
            })
        }
        .instrument(span)
        .await
    }

    /// The current state.
    pub async fn state(&self) -> TxnState {
        self.inner.lock().await.state
    }

    /// The producer id and epoch in use.
    pub async fn producer_id(&self) -> (i64, i16) {
        let inner = self.inner.lock().await;
        (inner.producer_id, inner.producer_epoch)
    }

    /// The transactions protocol version in use (1, or 2 with KIP-890).
    pub fn transaction_version(&self) -> i16 {
        self.transaction_version
    }

    /// Counters and commit latencies so far.
    pub async fn metrics(&self) -> TxnMetrics {
        self.inner.lock().await.metrics.clone()
    }

    /// Opens a transaction.
    #[tracing::instrument(level = "debug", name = "txn.begin", skip_all, fields(transactional_id = %self.config.transactional_id))]
    pub async fn begin(&self) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        inner.expect("begin", &[TxnState::Ready])?;
        inner.state = TxnState::InTransaction;
        inner.partitions.clear();
        inner.offsets_added = false;
        debug!(transactional_id = %self.config.transactional_id, "transaction begun");
        Ok(())
    }

    /// Sends a record inside the open transaction. Under transactions version 1 the partition is
    /// added to the transaction (AddPartitionsToTxn) before its first record.
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped, the record was not queued (its partition may have been added).
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let mut inner = self.inner.lock().await;
        inner.expect("send", &[TxnState::InTransaction])?;
        let partition = match record.partition {
            Some(p) => p,
            None => self.producer.partition_for(&record).await?,
        };
        let tp = (record.topic.clone(), partition);
        if !inner.partitions.contains(&tp) {
            if self.transaction_version < 2 {
                let result = self.add_partition(&inner, &tp).await;
                if let Err(e) = result {
                    return Err(inner.fail(e));
                }
            }
            inner.partitions.insert(tp);
        }
        drop(inner);
        self.producer.send(record.with_partition(partition)).await
    }

    async fn add_partition(&self, inner: &Inner, tp: &(String, i32)) -> Result<(), ClientError> {
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(kstr(
                self.config.transactional_id.clone(),
            )))
            .with_v3_and_below_producer_id(ProducerId(inner.producer_id))
            .with_v3_and_below_producer_epoch(inner.producer_epoch)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(kstr(tp.0.clone())))
                .with_partitions(vec![tp.1])]);
        self.coordinator
            .call(&request, "AddPartitionsToTxn", |r| {
                if r.error_code != 0 {
                    return r.error_code;
                }
                r.results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|t| t.results_by_partition.iter())
                    .map(|p| p.partition_error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(0)
            })
            .await
            .map(|_| ())
            .map_err(|e| self.classify(e, inner))
    }

    /// Adds consumer offsets to the transaction (AddOffsetsToTxn + TxnOffsetCommit, KIP-447):
    /// they are committed if and only if the transaction is.
    ///
    /// # Cancel safety
    /// Not cancel safe: the offsets may or may not have been added.
    #[tracing::instrument(level = "debug", name = "txn.send_offsets", skip_all, fields(transactional_id = %self.config.transactional_id, group = %group.group_id))]
    pub async fn send_offsets(
        &self,
        group: &GroupMetadata,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        inner.expect("send_offsets", &[TxnState::InTransaction])?;
        let txn_id = TransactionalId(kstr(self.config.transactional_id.clone()));
        let add = AddOffsetsToTxnRequest::default()
            .with_transactional_id(txn_id.clone())
            .with_producer_id(ProducerId(inner.producer_id))
            .with_producer_epoch(inner.producer_epoch)
            .with_group_id(GroupId(kstr(group.group_id.clone())));
        if let Err(e) = self
            .coordinator
            .call(&add, "AddOffsetsToTxn", |r| r.error_code)
            .await
        {
            let e = self.classify(e, &inner);
            return Err(inner.fail(e));
        }
        inner.offsets_added = true;
        let mut topics: Vec<TxnOffsetCommitRequestTopic> = Vec::new();
        for (topic, partition, offset) in offsets {
            let p = TxnOffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1);
            match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(
                    TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(kstr(topic.clone())))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let commit = TxnOffsetCommitRequest::default()
            .with_transactional_id(txn_id)
            .with_group_id(GroupId(kstr(group.group_id.clone())))
            .with_producer_id(ProducerId(inner.producer_id))
            .with_producer_epoch(inner.producer_epoch)
            .with_generation_id(group.generation_id)
            .with_member_id(kstr(group.member_id.clone()))
            .with_group_instance_id(group.group_instance_id.clone().map(kstr))
            .with_topics(topics);
        // TxnOffsetCommit goes to the group coordinator.
        let group_coordinator = Coordinator::group(
            self.client.clone(),
            group.group_id.clone(),
            self.config.coordinator_deadline_ms,
        );
        let result = group_coordinator
            .call(&commit, "TxnOffsetCommit", |r| {
                r.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| p.error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(0)
            })
            .await;
        if let Err(e) = result {
            let e = self.classify(e, &inner);
            return Err(inner.fail(e));
        }
        Ok(())
    }

    /// Flushes every record, then commits (EndTxn). Retriable coordinator errors are retried; a
    /// commit whose outcome stays unknown is reported as such and the producer stops (it is
    /// never aborted).
    ///
    /// # Cancel safety
    /// Not cancel safe: the commit may have been sent. Call `commit` again to finish it.
    pub async fn commit(&self) -> Result<TxnOutcome, ClientError> {
        let span = info_span!("txn.commit", transactional_id = %self.config.transactional_id);
        async {
            let mut inner = self.inner.lock().await;
            inner.expect(
                "commit",
                &[
                    TxnState::InTransaction,
                    TxnState::Committing,
                    TxnState::Prepared,
                ],
            )?;
            if inner.state == TxnState::InTransaction {
                if let Err(e) = self.producer.flush().await {
                    let e = self.flush_error(e, &inner);
                    return Err(inner.fail(e));
                }
            }
            inner.state = TxnState::Committing;
            self.end(&mut inner, true).await
        }
        .instrument(span)
        .await
    }

    /// Aborts the open transaction. Records already sent are discarded by `read_committed`
    /// readers. Refused after a commit whose outcome is unknown.
    ///
    /// # Cancel safety
    /// Not cancel safe: the abort may have been sent. Call `abort` again to finish it.
    pub async fn abort(&self) -> Result<TxnOutcome, ClientError> {
        let span = info_span!("txn.abort", transactional_id = %self.config.transactional_id);
        async {
            let mut inner = self.inner.lock().await;
            inner.expect(
                "abort",
                &[
                    TxnState::InTransaction,
                    TxnState::AbortableError,
                    TxnState::Aborting,
                    TxnState::Prepared,
                ],
            )?;
            // Let in-flight batches finish (or fail) first: the abort must come after them.
            let flushed = self.producer.flush().await;
            inner.state = TxnState::Aborting;
            let outcome = self.end(&mut inner, false).await?;
            if flushed.is_err() || self.producer.error().is_some() {
                // Failed batches left gaps in sequences; start over with a bumped epoch (KIP-360).
                self.bump_epoch(&mut inner).await?;
            }
            Ok(outcome)
        }
        .instrument(span)
        .await
    }

    /// Flushes every record and returns the transaction's identity without committing it.
    /// Commit or abort it later with [`TransactionalProducer::commit`] /
    /// [`TransactionalProducer::abort`], or from another process with [`commit_prepared`] /
    /// [`abort_prepared`].
    ///
    /// # Cancel safety
    /// Cancel safe: flushing only waits.
    pub async fn prepare(&self) -> Result<PreparedTxn, ClientError> {
        let mut inner = self.inner.lock().await;
        inner.expect("prepare", &[TxnState::InTransaction])?;
        if let Err(e) = self.producer.flush().await {
            let e = self.flush_error(e, &inner);
            return Err(inner.fail(e));
        }
        inner.state = TxnState::Prepared;
        Ok(PreparedTxn {
            transactional_id: self.config.transactional_id.clone(),
            producer_id: inner.producer_id,
            producer_epoch: inner.producer_epoch,
            transaction_version: self.end_txn_version,
            empty: inner.partitions.is_empty() && !inner.offsets_added,
        })
    }

    /// Sends EndTxn and moves to Ready (or to an error state).
    async fn end(&self, inner: &mut Inner, commit: bool) -> Result<TxnOutcome, ClientError> {
        let started = Instant::now();
        let prepared = PreparedTxn {
            transactional_id: self.config.transactional_id.clone(),
            producer_id: inner.producer_id,
            producer_epoch: inner.producer_epoch,
            transaction_version: self.end_txn_version,
            empty: inner.partitions.is_empty() && !inner.offsets_added,
        };
        // An empty transaction never reached the coordinator (which would answer
        // INVALID_TXN_STATE): there is nothing to end. A checkpoint without data is common.
        let result = if prepared.empty {
            Ok((
                if commit {
                    TxnOutcome::Committed
                } else {
                    TxnOutcome::Aborted
                },
                None,
            ))
        } else {
            end_txn(&self.coordinator, &prepared, commit, false).await
        };
        inner.metrics.retries += u64::from(self.coordinator.take_retries());
        match result {
            Ok((outcome, next)) => {
                if commit {
                    inner.metrics.commits += 1;
                    if inner.metrics.commit_latency_us.len() >= 1024 {
                        inner.metrics.commit_latency_us.remove(0);
                    }
                    inner
                        .metrics
                        .commit_latency_us
                        .push(started.elapsed().as_micros() as u64);
                } else {
                    inner.metrics.aborts += 1;
                }
                if let Some((pid, epoch)) = next {
                    if (pid, epoch) != (inner.producer_id, inner.producer_epoch) {
                        inner.producer_id = pid;
                        inner.producer_epoch = epoch;
                        self.producer.reset_producer_id(pid, epoch);
                    }
                }
                inner.state = TxnState::Ready;
                inner.error = None;
                inner.partitions.clear();
                inner.offsets_added = false;
                debug!(?outcome, "transaction ended");
                Ok(outcome)
            }
            Err(e) => {
                let e = match e {
                    ClientError::PreparedTxnLost { .. }
                    | ClientError::CommitOutcomeUnknown { .. } => e,
                    other => self.classify(other, inner),
                };
                Err(inner.fail(e))
            }
        }
    }

    /// After an abort with failed batches: InitProducerId with the current id and epoch bumps
    /// the epoch without losing the producer id (KIP-360).
    async fn bump_epoch(&self, inner: &mut Inner) -> Result<(), ClientError> {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(kstr(
                self.config.transactional_id.clone(),
            ))))
            .with_transaction_timeout_ms(self.config.transaction_timeout_ms)
            .with_producer_id(ProducerId(inner.producer_id))
            .with_producer_epoch(inner.producer_epoch);
        match self
            .coordinator
            .call(&request, "InitProducerId", |r| r.error_code)
            .await
        {
            Ok((response, _)) => {
                inner.producer_id = response.producer_id.0;
                inner.producer_epoch = response.producer_epoch;
                self.producer
                    .reset_producer_id(inner.producer_id, inner.producer_epoch);
                Ok(())
            }
            Err(e) => {
                let e = self.classify(e, inner);
                Err(inner.fail(e))
            }
        }
    }

    /// Waits until every record sent so far is acknowledged (or failed). A failed record makes
    /// the transaction abortable (or the producer fatal, when fenced).
    ///
    /// # Cancel safety
    /// Cancel safe: flushing only waits.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        inner.expect("flush", &[TxnState::InTransaction])?;
        if let Err(e) = self.producer.flush().await {
            let e = self.flush_error(e, &inner);
            return Err(inner.fail(e));
        }
        Ok(())
    }

    /// A record failed during flush: fenced is fatal, anything else makes the transaction
    /// abortable.
    fn flush_error(&self, e: ClientError, inner: &Inner) -> ClientError {
        match self.classify(e, inner) {
            fenced @ ClientError::Fenced { .. } => fenced,
            other => ClientError::TxnAbortable {
                cause: Box::new(other),
            },
        }
    }

    /// Maps an error to the producer's view: fencing becomes [`ClientError::Fenced`].
    fn classify(&self, e: ClientError, inner: &Inner) -> ClientError {
        match e {
            ClientError::Broker { code, .. }
                if code.code == codes::PRODUCER_FENCED
                    || code.code == codes::INVALID_PRODUCER_EPOCH =>
            {
                ClientError::Fenced {
                    transactional_id: self.config.transactional_id.clone(),
                    producer_id: inner.producer_id,
                    producer_epoch: inner.producer_epoch,
                    code,
                }
            }
            other => other,
        }
    }
}

impl Inner {
    fn expect(&self, operation: &'static str, allowed: &[TxnState]) -> Result<(), ClientError> {
        if let (TxnState::FatalError, Some(e)) = (self.state, &self.error) {
            return Err(ClientError::TxnFatal {
                cause: Box::new(e.clone()),
            });
        }
        if allowed.contains(&self.state) {
            return Ok(());
        }
        if let (TxnState::AbortableError, Some(e)) = (self.state, &self.error) {
            return Err(ClientError::TxnAbortable {
                cause: Box::new(e.clone()),
            });
        }
        Err(ClientError::InvalidTxnState {
            operation,
            state: self.state.name(),
        })
    }

    /// Records an error and moves to the state its class calls for; returns the error.
    fn fail(&mut self, e: ClientError) -> ClientError {
        let fatal = matches!(
            e,
            ClientError::Fenced { .. }
                | ClientError::CommitOutcomeUnknown { .. }
                | ClientError::PreparedTxnLost { .. }
                | ClientError::TxnFatal { .. }
        ) || e.class() == Class::Fatal
            && !matches!(e, ClientError::TxnAbortable { .. });
        self.state = if fatal {
            TxnState::FatalError
        } else {
            TxnState::AbortableError
        };
        warn!(error = %e, state = self.state.name(), "transaction failed");
        self.error = Some(e.clone());
        e
    }
}

/// Consumer-group metadata sent with offsets (KIP-447 fencing of zombie consumers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// The consumer group.
    pub group_id: String,
    /// The group generation (-1 when not using group membership).
    pub generation_id: i32,
    /// The member id ("" when not using group membership).
    pub member_id: String,
    /// The static member id, if any.
    pub group_instance_id: Option<String>,
}

impl GroupMetadata {
    /// Metadata for a group whose offsets are managed without group membership (as a
    /// checkpointing runtime does).
    pub fn standalone(group_id: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
        }
    }
}

/// Commits a prepared transaction from any process, without InitProducerId. Committing one
/// that is already committed is safe and reported as [`TxnOutcome::AlreadyCommitted`]; one that
/// the broker aborted (timeout) or that a newer producer fenced is
/// [`ClientError::PreparedTxnLost`], never success.
///
/// # Cancel safety
/// Not cancel safe: the commit may have been sent; calling again is safe.
pub async fn commit_prepared(
    client: &Client,
    prepared: &PreparedTxn,
    deadline_ms: u64,
) -> Result<TxnOutcome, ClientError> {
    finish_prepared(client, prepared, true, deadline_ms)
        .instrument(
            info_span!("txn.commit_prepared", transactional_id = %prepared.transactional_id),
        )
        .await
}

/// Aborts a prepared transaction from any process, without InitProducerId.
///
/// # Cancel safety
/// Not cancel safe: the abort may have been sent; calling again is safe.
pub async fn abort_prepared(
    client: &Client,
    prepared: &PreparedTxn,
    deadline_ms: u64,
) -> Result<TxnOutcome, ClientError> {
    finish_prepared(client, prepared, false, deadline_ms)
        .instrument(info_span!("txn.abort_prepared", transactional_id = %prepared.transactional_id))
        .await
}

async fn finish_prepared(
    client: &Client,
    prepared: &PreparedTxn,
    commit: bool,
    deadline_ms: u64,
) -> Result<TxnOutcome, ClientError> {
    let coordinator = Coordinator::new(
        client.clone(),
        prepared.transactional_id.clone(),
        deadline_ms,
        20,
    );
    if prepared.empty {
        return Ok(if commit {
            TxnOutcome::Committed
        } else {
            TxnOutcome::Aborted
        });
    }
    // Ask first: a second commit of the same prepared transaction must say so.
    end_txn(&coordinator, prepared, commit, true)
        .await
        .map(|(outcome, _)| outcome)
}

/// The state the coordinator holds for a transactional id (DescribeTransactions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnDescription {
    /// `Empty`, `Ongoing`, `PrepareCommit`, `CompleteCommit`, `PrepareAbort`, `CompleteAbort`, ...
    pub state: String,
    /// Current producer id.
    pub producer_id: i64,
    /// Current epoch.
    pub producer_epoch: i16,
    /// Partitions in the ongoing transaction.
    pub partitions: Vec<(String, i32)>,
}

/// Asks the coordinator what state a transactional id is in.
///
/// # Cancel safety
/// Cancel safe.
pub async fn describe_transaction(
    client: &Client,
    transactional_id: &str,
) -> Result<TxnDescription, ClientError> {
    let coordinator = Coordinator::new(client.clone(), transactional_id.to_owned(), 30_000, 20);
    describe(&coordinator).await
}

async fn describe(coordinator: &Coordinator) -> Result<TxnDescription, ClientError> {
    let request = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(kstr(coordinator.key.clone()))]);
    let (response, _) = coordinator
        .call(&request, "DescribeTransactions", |r| {
            r.transaction_states.first().map_or(0, |s| s.error_code)
        })
        .await?;
    let s = response
        .transaction_states
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::broker("DescribeTransactions", codes::INVALID_TXN_STATE))?;
    Ok(TxnDescription {
        state: s.transaction_state.to_string(),
        producer_id: s.producer_id.0,
        producer_epoch: s.producer_epoch,
        partitions: s
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.topic.0.to_string(), *p))
            })
            .collect(),
    })
}

/// EndTxn with the given identity, with retries; returns the outcome and the producer id and
/// epoch to use next (the response's, under transactions version 2). With `check_first`, asks
/// the coordinator first whether the transaction already ended (a second `commit_prepared`).
async fn end_txn(
    coordinator: &Coordinator,
    prepared: &PreparedTxn,
    commit: bool,
    check_first: bool,
) -> Result<(TxnOutcome, Option<(i64, i16)>), ClientError> {
    if check_first {
        // A transaction whose markers are still being written (PrepareCommit/PrepareAbort) is
        // waited for, so that a second commit right after the first is reported as such.
        let mut backoff = Backoff::new(coordinator.backoff_config());
        while let Ok(description) = describe(coordinator).await {
            if let Some(outcome) = already_ended(&description, prepared, commit)? {
                return Ok((outcome, None));
            }
            let ending = matches!(description.state.as_str(), "PrepareCommit" | "PrepareAbort")
                && description.producer_id == prepared.producer_id;
            if !(ending && backoff.wait().await) {
                break;
            }
        }
    }
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(kstr(prepared.transactional_id.clone())))
        .with_producer_id(ProducerId(prepared.producer_id))
        .with_producer_epoch(prepared.producer_epoch)
        .with_committed(commit);
    let done = if commit {
        TxnOutcome::Committed
    } else {
        TxnOutcome::Aborted
    };
    match coordinator.call(&request, "EndTxn", |r| r.error_code).await {
        Ok((response, version)) => {
            // Version 5 (transactions v2) returns the bumped epoch; older versions return none.
            let next = (version >= 5 && response.producer_id.0 >= 0)
                .then_some((response.producer_id.0, response.producer_epoch));
            Ok((done, next))
        }
        // From another process (check_first), fencing or a moved epoch needs a look at what the
        // coordinator did; in the producer itself it is simply fencing (mapped by the caller).
        Err(ClientError::Broker { code, .. })
            if check_first
                && (code.class == Class::Fatal || code.code == codes::INVALID_TXN_STATE) =>
        {
            // Fenced, the epoch moved on, or the state does not allow this: ask what happened.
            let description = describe(coordinator).await;
            if let Ok(d) = &description {
                if let Some(outcome) = already_ended(d, prepared, commit)? {
                    return Ok((outcome, None));
                }
            }
            let state = description.map_or_else(
                |e| format!("unknown ({e})"),
                |d| format!("{} at epoch {}", d.state, d.producer_epoch),
            );
            Err(lost(
                prepared,
                commit,
                format!("EndTxn answered {code}; coordinator state {state}"),
            ))
        }
        Err(ClientError::Broker { code, .. }) if commit && code.class != Class::UnknownOutcome => {
            Err(ClientError::broker("EndTxn", code.code))
        }
        Err(e) if commit => {
            // The deadline passed without a definite answer. Never abort: re-check with the
            // coordinator, and if it cannot say either, report the outcome as unknown.
            warn!(error = %e, "EndTxn(commit) outcome unknown; asking the coordinator");
            if let Ok(d) = describe(coordinator).await {
                if let Some(outcome) = already_ended(&d, prepared, true)? {
                    return Ok((outcome, None));
                }
            }
            Err(ClientError::CommitOutcomeUnknown {
                transactional_id: prepared.transactional_id.clone(),
                cause: Box::new(e),
            })
        }
        Err(e) => Err(e),
    }
}

fn lost(prepared: &PreparedTxn, commit: bool, reason: String) -> ClientError {
    ClientError::PreparedTxnLost {
        action: if commit { "committed" } else { "aborted" },
        transactional_id: prepared.transactional_id.clone(),
        producer_id: prepared.producer_id,
        producer_epoch: prepared.producer_epoch,
        reason,
    }
}

/// Whether the coordinator's state shows that `prepared` already ended, and how. The epoch must
/// be ours (transactions v1) or one past ours (v2 bumps it on EndTxn), so that a transaction the
/// coordinator aborted on timeout (it bumps the epoch to fence) is never taken for ours.
fn already_ended(
    d: &TxnDescription,
    prepared: &PreparedTxn,
    commit: bool,
) -> Result<Option<TxnOutcome>, ClientError> {
    let ours = d.producer_id == prepared.producer_id
        && (d.producer_epoch == prepared.producer_epoch
            || (prepared.transaction_version >= 2
                && d.producer_epoch == prepared.producer_epoch.wrapping_add(1)));
    if !ours {
        return Ok(None);
    }
    match (d.state.as_str(), commit) {
        ("CompleteCommit", true) => Ok(Some(TxnOutcome::AlreadyCommitted)),
        ("CompleteAbort", false) => Ok(Some(TxnOutcome::AlreadyAborted)),
        ("CompleteCommit", false) => Err(lost(prepared, commit, "it was already committed".into())),
        ("CompleteAbort", true) => Err(lost(
            prepared,
            commit,
            format!("the coordinator aborted it (state {})", d.state),
        )),
        _ => Ok(None),
    }
}

fn transaction_version(conn: &Connection) -> i16 {
    let feature = conn.finalized_feature("transaction.version").unwrap_or(0);
    let end_txn = conn.version_of::<EndTxnRequest>().unwrap_or(0);
    let produce = conn.version_of::<ProduceRequest>().unwrap_or(0);
    if feature >= 2 && end_txn >= 5 && produce >= 12 {
        2
    } else {
        1
    }
}

async fn check_timeout(client: &Client, node_id: i32, timeout_ms: i32) -> Result<(), ClientError> {
    let configs = Admin::new(client.clone())
        .describe_configs(ConfigResource::Broker, &node_id.to_string())
        .await?;
    let max = configs
        .iter()
        .find(|c| c.name == "transaction.max.timeout.ms")
        .and_then(|c| c.value.as_deref())
        .and_then(|v| v.parse::<i64>().ok());
    match max {
        Some(max) if i64::from(timeout_ms) > max => Err(ClientError::TransactionTimeoutTooLarge {
            timeout_ms,
            broker_max_ms: max,
        }),
        _ => Ok(()),
    }
}

/// Finds and talks to a coordinator (transaction or group), retrying per the error table.
struct Coordinator {
    client: Client,
    key: String,
    key_type: i8,
    deadline_ms: u64,
    concurrent_backoff_ms: u64,
    cached: std::sync::Mutex<Option<(i32, Arc<Connection>)>>,
    retries: std::sync::atomic::AtomicU32,
}

impl Coordinator {
    fn new(
        client: Client,
        transactional_id: String,
        deadline_ms: u64,
        concurrent_backoff_ms: u64,
    ) -> Self {
        Self {
            client,
            key: transactional_id,
            key_type: 1,
            deadline_ms,
            concurrent_backoff_ms,
            cached: std::sync::Mutex::new(None),
            retries: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn group(client: Client, group_id: String, deadline_ms: u64) -> Self {
        Self {
            key_type: 0,
            ..Self::new(client, group_id, deadline_ms, 20)
        }
    }

    fn take_retries(&self) -> u32 {
        self.retries.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    async fn connection(&self) -> Result<(i32, Arc<Connection>), ClientError> {
        let cached = self
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((node, conn)) = cached {
            if conn.poisoned().is_none() {
                return Ok((node, conn));
            }
        }
        let mut backoff = Backoff::new(self.backoff_config());
        loop {
            match self.find().await {
                Ok(found) => {
                    *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(found.clone());
                    return Ok(found);
                }
                Err(e) if e.is_retriable() && backoff.wait().await => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn find(&self) -> Result<(i32, Arc<Connection>), ClientError> {
        let conn = self.client.any_broker().await?;
        let version = conn.version_of::<FindCoordinatorRequest>()?;
        let mut request = FindCoordinatorRequest::default().with_key_type(self.key_type);
        if version >= 4 {
            request = request.with_coordinator_keys(vec![kstr(self.key.clone())]);
        } else {
            request = request.with_key(kstr(self.key.clone()));
        }
        let response = conn.request(&request).await?;
        let (code, node) = if version >= 4 {
            let c = response.coordinators.first();
            (
                c.map_or(codes::NOT_COORDINATOR, |c| c.error_code),
                c.map_or(-1, |c| c.node_id.0),
            )
        } else {
            (response.error_code, response.node_id.0)
        };
        if code != 0 {
            return Err(ClientError::broker("FindCoordinator", code));
        }
        let conn = self.client.broker(node).await?;
        Ok((node, conn))
    }

    fn backoff_config(&self) -> BackoffConfig {
        BackoffConfig {
            backoff_initial_ms: 50,
            backoff_max_ms: 1_000,
            deadline_ms: self.deadline_ms,
        }
    }

    /// Sends `request` to the coordinator; `code` extracts the error code to classify.
    /// Retriable codes and disconnects are retried until the deadline (CONCURRENT_TRANSACTIONS
    /// with a short fixed backoff); timeouts are retried too, since every coordinator request
    /// we send is idempotent for the same producer id and epoch.
    async fn call<R: KafkaRequest>(
        &self,
        request: &R,
        api: &'static str,
        code: impl Fn(&R::Response) -> i16,
    ) -> Result<(R::Response, i16), ClientError>
    where
        R::Response: Send + 'static,
    {
        let mut backoff = Backoff::new(self.backoff_config());
        let mut last: Option<ClientError>;
        loop {
            let attempt = async {
                let (_, conn) = self.connection().await?;
                Ok::<_, ClientError>(conn.request_versioned(request).await?)
            }
            .await;
            let error = match attempt {
                Ok((version, response)) => match code(&response) {
                    0 => return Ok((response, version)),
                    c => ClientError::broker(api, c),
                },
                Err(e) => e,
            };
            let wait = match &error {
                ClientError::Broker { code, .. } => {
                    if code.refresh == Refresh::Coordinator {
                        self.forget();
                    }
                    match code.class {
                        Class::Retriable | Class::UnknownOutcome => {
                            Some(if code.code == codes::CONCURRENT_TRANSACTIONS {
                                Duration::from_millis(self.concurrent_backoff_ms)
                            } else {
                                Duration::ZERO
                            })
                        }
                        _ => None,
                    }
                }
                ClientError::Connection(ConnectionError::Timeout { .. }) => {
                    self.forget();
                    Some(Duration::ZERO)
                }
                e if e.is_retriable() => {
                    self.forget();
                    Some(Duration::ZERO)
                }
                _ => None,
            };
            last = Some(error);
            let Some(fixed) = wait else { break };
            if Instant::now() >= backoff.deadline() {
                break;
            }
            self.retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug!(api, error = %last.as_ref().map(ToString::to_string).unwrap_or_default(), "retrying coordinator request");
            if fixed > Duration::ZERO {
                tokio::time::sleep(fixed).await;
            } else if !backoff.wait().await {
                break;
            }
        }
        let last =
            last.unwrap_or_else(|| ClientError::broker(api, error_codes::codes::REQUEST_TIMED_OUT));
        Err(match last.class() {
            Class::Retriable => ClientError::RetriesExhausted {
                what: api,
                attempts: backoff.attempts(),
                deadline_ms: self.deadline_ms,
                last: Box::new(last),
            },
            _ => last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The producer's futures must be usable from multi-threaded runtimes.
    #[test]
    fn futures_are_send() {
        fn is_send<T: Send>(_: T) {}
        let _ = |p: &'static TransactionalProducer| {
            is_send(p.commit());
            is_send(p.send(ProducerRecord::default()));
        };
    }

    fn description(state: &str, epoch: i16) -> TxnDescription {
        TxnDescription {
            state: state.into(),
            producer_id: 7,
            producer_epoch: epoch,
            partitions: vec![],
        }
    }

    fn prepared(version: i16) -> PreparedTxn {
        PreparedTxn {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: 3,
            transaction_version: version,
            empty: false,
        }
    }

    #[test]
    fn already_ended_recognises_our_own_outcome_only() {
        // v2 bumps the epoch on EndTxn: one past ours is still ours.
        assert_eq!(
            already_ended(&description("CompleteCommit", 4), &prepared(2), true).unwrap(),
            Some(TxnOutcome::AlreadyCommitted)
        );
        assert_eq!(
            already_ended(&description("CompleteAbort", 3), &prepared(1), false).unwrap(),
            Some(TxnOutcome::AlreadyAborted)
        );
        // An abort by the coordinator (timeout) is never taken for a commit.
        let err = already_ended(&description("CompleteAbort", 4), &prepared(2), true).unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot be committed: the coordinator aborted it"),
            "{err}"
        );
        // Under v1 an epoch one past ours was bumped by someone else (timeout fencing): not ours.
        assert_eq!(
            already_ended(&description("CompleteCommit", 4), &prepared(1), true).unwrap(),
            None
        );
        assert_eq!(
            already_ended(&description("Ongoing", 3), &prepared(2), true).unwrap(),
            None
        );
    }
}
