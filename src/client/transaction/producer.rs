//! The transactional producer's state machine: begin → send/send_offsets → commit, abort or
//! prepare, over the idempotent [`Producer`].
//!
//! Concurrency: the state lives behind a `std` mutex that is never held across an await, so
//! [`TransactionalProducer::state`] and [`TransactionalProducer::metrics`] answer at once, even
//! during a commit. The operations that wait on the coordinator or on a flush (commit, abort,
//! prepare, flush, send_offsets) run one at a time under a separate async lock, which `send`
//! does not take.
//!
//! This module holds the producer, its setup (`init`, `recover`), the read-only accessors and
//! the path into a transaction: `begin`, `send` (with AddPartitionsToTxn under transactions
//! version 1), `send_offsets` and `flush`. Ending a transaction (`commit`, `abort`, `prepare`,
//! EndTxn and its outcome) is in `producer_ending.rs`, a child module so that both share
//! the producer's private state without widening its visibility.

#[path = "producer_ending.rs"]
mod ending;

use tokio::sync::{Mutex, Notify};
use tracing::{debug, info, info_span, Instrument};

use crate::protocol::error_codes::codes;
use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::{
    add_partitions_to_txn_request::AddPartitionsToTxnTopic,
    txn_offset_commit_request::TxnOffsetCommitRequestPartition,
    txn_offset_commit_request::TxnOffsetCommitRequestTopic, AddOffsetsToTxnRequest,
    AddPartitionsToTxnRequest, GroupId, InitProducerIdRequest, ProducerId, TopicName,
    TransactionalId, TxnOffsetCommitRequest,
};

use super::coordinator::{check_timeout, transaction_version, Coordinator};
use super::settle::Settle;
use super::state::Inner;
use super::{GroupMetadata, PreparedTxn, TransactionConfig, TxnMetrics, TxnOutcome, TxnState};
use crate::client::producer::{DeliveryFuture, Producer, ProducerRecord};
use crate::client::{Client, ClientError};

/// The transactional producer. See the module docs.
///
/// Lifecycle: `init` → Ready → `begin` → InTransaction → `send`/`send_offsets` → `commit` or
/// `abort` → Ready, or `prepare` → Prepared → `commit`/`abort` (by this producer, which then
/// returns to Ready on the epoch the coordinator gives and can be reused) or
/// [`commit_prepared`](super::commit_prepared)/[`abort_prepared`](super::abort_prepared) from a
/// stored [`PreparedTxn`] after a restart ([`TransactionalProducer::recover`] does that, then
/// `init`, in the safe order). A two-phase-commit sink keeps a pool of producers, one
/// transactional id each: one holds the prepared transaction of a checkpoint while the next
/// transaction runs on another.
pub struct TransactionalProducer {
    client: Client,
    config: TransactionConfig,
    producer: Producer,
    coordinator: Coordinator,
    transaction_version: i16,
    /// The EndTxn semantics in effect, recorded in [`PreparedTxn`]: 2 when EndTxn is sent at v5+,
    /// whose answer carries a bumped epoch (KIP-890). A broker applies that per request version,
    /// even where the `transaction.version` feature is still 1, so v5 is sent only when the
    /// feature is 2 (equal to `transaction_version`).
    end_txn_version: i16,
    /// Never held across an await.
    inner: std::sync::Mutex<Inner>,
    /// One waiting operation (commit, abort, prepare, flush, send_offsets) at a time.
    op: Mutex<()>,
    /// One AddPartitionsToTxn at a time (transactions v1), so that a partition is added once.
    adding: Mutex<()>,
    /// Signalled when `sends_in_flight` drops to zero.
    sends_idle: Notify,
    /// Waits out the previous transaction's markers before the next one's first write.
    settle: Settle,
}

impl std::fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalProducer")
            .field("transactional_id", &self.config.transactional_id)
            .finish_non_exhaustive()
    }
}

/// Counts a send as in flight until its record is queued (or it gave up or was dropped).
struct InFlightSend<'a>(&'a TransactionalProducer);

impl Drop for InFlightSend<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.sends_in_flight -= 1;
        if inner.sends_in_flight == 0 {
            self.0.sends_idle.notify_waiters();
        }
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
            // EndTxn v5 (epoch bump) only where the cluster enabled transactions version 2,
            // as the Java client does: a broker would apply it per request even at version 1.
            let end_txn_version = transaction_version;
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
                inner: std::sync::Mutex::new(Inner::new(pid, epoch)),
                op: Mutex::new(()),
                adding: Mutex::new(()),
                sends_idle: Notify::new(),
                settle: Settle::new(config.settle_window_ms),
                config,
            })
        }
        .instrument(span)
        .await
    }

    /// Restart recovery for a two-phase-commit sink: finishes the transaction prepared before
    /// the restart (stored in the last completed checkpoint) with
    /// [`commit_prepared`](super::commit_prepared), and only then calls [`Self::init`] —
    /// InitProducerId would abort a transaction still open under this transactional id. Errors
    /// from the commit (lost, outcome unknown) are returned without calling `init`.
    ///
    /// # Cancel safety
    /// Not cancel safe: the commit may have been sent; calling again is safe.
    pub async fn recover(
        client: Client,
        config: TransactionConfig,
        prepared: Option<&PreparedTxn>,
    ) -> Result<(Self, Option<TxnOutcome>), ClientError> {
        let outcome = match prepared {
            Some(p) if p.transactional_id != config.transactional_id => {
                return Err(ClientError::Config {
                    field: "transactional_id",
                    message: format!(
                        "the prepared transaction belongs to {:?}, not {:?}",
                        p.transactional_id, config.transactional_id
                    ),
                })
            }
            Some(p) => {
                Some(super::commit_prepared(&client, p, config.coordinator_deadline_ms).await?)
            }
            None => None,
        };
        Ok((Self::init(client, config).await?, outcome))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state. Never waits (also not during a commit); `async` for compatibility.
    pub async fn state(&self) -> TxnState {
        self.lock().state
    }

    /// The producer id and epoch in use. Never waits.
    pub async fn producer_id(&self) -> (i64, i16) {
        let inner = self.lock();
        (inner.producer_id, inner.producer_epoch)
    }

    /// The transaction this producer prepared and still holds (state Prepared), if any.
    pub fn prepared(&self) -> Option<PreparedTxn> {
        self.lock().prepared.clone()
    }

    /// The transactions protocol version in use (1, or 2 with KIP-890).
    pub fn transaction_version(&self) -> i16 {
        self.transaction_version
    }

    /// Counters and commit latencies so far. Never waits.
    pub async fn metrics(&self) -> TxnMetrics {
        let (settle_probes, settle_waits) = self.settle.counts();
        TxnMetrics {
            settle_probes,
            settle_waits,
            ..self.lock().metrics.clone()
        }
    }

    /// Opens a transaction.
    #[tracing::instrument(level = "debug", name = "txn.begin", skip_all, fields(transactional_id = %self.config.transactional_id))]
    pub async fn begin(&self) -> Result<(), ClientError> {
        let mut inner = self.lock();
        inner.expect("begin", &[TxnState::Ready])?;
        inner.state = TxnState::InTransaction;
        inner.partitions.clear();
        inner.offsets_added = false;
        inner.closing = None;
        // Offsets acknowledged before this transaction are not its own.
        self.producer.take_batch_offsets();
        debug!(transactional_id = %self.config.transactional_id, "transaction begun");
        Ok(())
    }

    /// The open transaction's producer id and epoch, if records may still join it.
    fn open_check(&self, operation: &'static str) -> Result<(i64, i16), ClientError> {
        let inner = self.lock();
        inner.expect(operation, &[TxnState::InTransaction])?;
        if let Some(state) = inner.closing {
            return Err(ClientError::InvalidTxnState { operation, state });
        }
        Ok((inner.producer_id, inner.producer_epoch))
    }

    /// Sends a record inside the open transaction. Under transactions version 1 the partition is
    /// added to the transaction (AddPartitionsToTxn) before its first record. Refused once
    /// `commit`, `prepare` or `abort` has begun; a send that passed that check before is waited
    /// for, and its record is part of the transaction being ended.
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped, the record was not queued (its partition may have been added).
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let (pid, epoch) = {
            let mut inner = self.lock();
            inner.expect("send", &[TxnState::InTransaction])?;
            if let Some(state) = inner.closing {
                return Err(ClientError::InvalidTxnState {
                    operation: "send",
                    state,
                });
            }
            inner.sends_in_flight += 1;
            (inner.producer_id, inner.producer_epoch)
        };
        let _in_flight = InFlightSend(self);
        let partition = match record.partition {
            Some(p) => p,
            None => self.producer.partition_for(&record).await?,
        };
        let tp = (record.topic.clone(), partition);
        self.settle.before_write(&self.coordinator).await;
        if self.transaction_version < 2 {
            self.add_partition(&tp, pid, epoch).await?;
        }
        let delivery = self.producer.send(record.with_partition(partition)).await?;
        // Under transactions v2 the first produce adds the partition on the broker: record it
        // only once a record is queued, so that a send that failed here leaves no partition
        // behind (an EndTxn for a transaction the coordinator never saw is refused).
        self.lock().partitions.insert(tp);
        Ok(delivery)
    }

    async fn add_partition(
        &self,
        tp: &(String, i32),
        pid: i64,
        epoch: i16,
    ) -> Result<(), ClientError> {
        if self.lock().partitions.contains(tp) {
            return Ok(());
        }
        let _adding = self.adding.lock().await;
        if self.lock().partitions.contains(tp) {
            return Ok(());
        }
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(kstr(
                self.config.transactional_id.clone(),
            )))
            .with_v3_and_below_producer_id(ProducerId(pid))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(kstr(tp.0.clone())))
                .with_partitions(vec![tp.1])]);
        let result = self
            .coordinator
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
            .await;
        match result {
            Ok(_) => {
                self.lock().partitions.insert(tp.clone());
                Ok(())
            }
            Err(e) => {
                let e = self.classify(e, pid, epoch);
                Err(self.lock().fail(e))
            }
        }
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
        let _op = self.op.lock().await;
        let (pid, epoch) = self.open_check("send_offsets")?;
        self.settle.before_write(&self.coordinator).await;
        let txn_id = TransactionalId(kstr(self.config.transactional_id.clone()));
        let add = AddOffsetsToTxnRequest::default()
            .with_transactional_id(txn_id.clone())
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_group_id(GroupId(kstr(group.group_id.clone())));
        if let Err(e) = self
            .coordinator
            .call(&add, "AddOffsetsToTxn", |r| r.error_code)
            .await
        {
            let e = self.classify(e, pid, epoch);
            return Err(self.lock().fail(e));
        }
        self.lock().offsets_added = true;
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
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
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
            let e = self.classify(e, pid, epoch);
            return Err(self.lock().fail(e));
        }
        Ok(())
    }

    /// Waits until every record sent so far is acknowledged (or failed). A failed record makes
    /// the transaction abortable (or the producer fatal, when fenced).
    ///
    /// # Cancel safety
    /// Cancel safe: flushing only waits.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let _op = self.op.lock().await;
        self.lock().expect("flush", &[TxnState::InTransaction])?;
        if let Err(e) = self.producer.flush().await {
            return Err(self.fail_flush(e));
        }
        Ok(())
    }

    /// A record failed during flush: fenced is fatal, anything else makes the transaction
    /// abortable. Records the failure and returns it.
    fn fail_flush(&self, e: ClientError) -> ClientError {
        let mut inner = self.lock();
        let e = match self.classify(e, inner.producer_id, inner.producer_epoch) {
            fenced @ ClientError::Fenced { .. } => fenced,
            other => ClientError::TxnAbortable {
                cause: Box::new(other),
            },
        };
        inner.fail(e)
    }

    /// Maps an error to the producer's view: fencing becomes [`ClientError::Fenced`].
    fn classify(&self, e: ClientError, producer_id: i64, producer_epoch: i16) -> ClientError {
        match e {
            ClientError::Broker { code, .. }
                if code.code == codes::PRODUCER_FENCED
                    || code.code == codes::INVALID_PRODUCER_EPOCH =>
            {
                ClientError::Fenced {
                    transactional_id: self.config.transactional_id.clone(),
                    producer_id,
                    producer_epoch,
                    code,
                }
            }
            other => other,
        }
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
}
