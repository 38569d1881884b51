//! The transactional producer's state machine: begin → send/send_offsets → commit, abort or
//! prepare, over the idempotent [`Producer`].

use std::collections::HashSet;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::protocol::error_codes::{codes, Class};
use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::{
    add_partitions_to_txn_request::AddPartitionsToTxnTopic,
    txn_offset_commit_request::TxnOffsetCommitRequestPartition,
    txn_offset_commit_request::TxnOffsetCommitRequestTopic, AddOffsetsToTxnRequest,
    AddPartitionsToTxnRequest, EndTxnRequest, GroupId, InitProducerIdRequest, ProducerId,
    TopicName, TransactionalId, TxnOffsetCommitRequest,
};

use super::coordinator::{check_timeout, transaction_version, Coordinator};
use super::prepared::end_txn;
use super::settle::Settle;
use super::{GroupMetadata, PreparedTxn, TransactionConfig, TxnMetrics, TxnOutcome, TxnState};
use crate::client::producer::{DeliveryFuture, Producer, ProducerRecord};
use crate::client::{Client, ClientError};

struct Inner {
    state: TxnState,
    error: Option<ClientError>,
    producer_id: i64,
    producer_epoch: i16,
    partitions: HashSet<(String, i32)>,
    /// Offsets were added (AddOffsetsToTxn) in the current transaction.
    offsets_added: bool,
    metrics: TxnMetrics,
    /// Waits out the previous transaction's markers before the next one's first write.
    settle: Settle,
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
                    settle: Settle::new(config.settle_window_ms),
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
        let inner = self.inner.lock().await;
        TxnMetrics {
            settle_probes: inner.settle.probes,
            settle_waits: inner.settle.waits,
            ..inner.metrics.clone()
        }
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
            inner.settle.before_write(&self.coordinator).await;
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
        inner.settle.before_write(&self.coordinator).await;
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
    /// [`TransactionalProducer::abort`], or from another process with [`commit_prepared`](super::commit_prepared) /
    /// [`abort_prepared`](super::abort_prepared).
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
                inner.settle.ended();
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
