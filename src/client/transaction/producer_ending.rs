//! The transactional producer's ending path: closing a transaction to new records, then
//! `commit`, `abort` or `prepare`, the EndTxn call and what its outcome does to the producer
//! (next epoch, metrics, error state), and the epoch bump after an abort with failed batches
//! (KIP-360). The begin/send/offsets path is in the parent module.
//!
//! Ending a transaction first *closes* it: from then on `send` is refused (the record would
//! otherwise land in the next transaction), and sends that passed their state check earlier
//! are waited for until their records are queued; only then are the records flushed and EndTxn
//! sent, so EndTxn comes after every batch appended before it. Under transactions version 2
//! (KIP-890) EndTxn's answer carries the epoch for the next transaction.

use tokio::time::Instant;
use tracing::{debug, info_span, Instrument};

use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::{InitProducerIdRequest, ProducerId, TransactionalId};

use super::super::prepared::end_txn;
use super::super::state::Inner;
use super::super::{PreparedPartition, PreparedTxn, TxnOutcome, TxnState};
use super::TransactionalProducer;
use crate::client::ClientError;

impl TransactionalProducer {
    /// Closes the open transaction to new records (see the module docs), waits for sends
    /// already past their check, and returns the state then.
    async fn close(
        &self,
        operation: &'static str,
        allowed: &[TxnState],
        closing: &'static str,
    ) -> Result<TxnState, ClientError> {
        {
            let mut inner = self.lock();
            inner.expect(operation, allowed)?;
            if matches!(
                inner.state,
                TxnState::InTransaction | TxnState::AbortableError
            ) {
                inner.closing = Some(closing);
            }
        }
        self.wait_for_sends().await;
        let inner = self.lock();
        // A send that failed while we waited may have made the transaction abortable.
        inner.expect(operation, allowed)?;
        Ok(inner.state)
    }

    async fn wait_for_sends(&self) {
        loop {
            let idle = self.sends_idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.lock().sends_in_flight == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Flushes every record, then commits (EndTxn). Retriable coordinator errors are retried; a
    /// commit whose outcome stays unknown is reported as such and the producer stops (it is
    /// never aborted). In state Prepared it commits the prepared transaction. Either way the
    /// producer ends in Ready, on the epoch the coordinator gave, ready for the next `begin`.
    ///
    /// # Cancel safety
    /// Not cancel safe: the commit may have been sent. Call `commit` again to finish it; sends
    /// stay refused until then.
    pub async fn commit(&self) -> Result<TxnOutcome, ClientError> {
        let span = info_span!("txn.commit", transactional_id = %self.config.transactional_id);
        async {
            let _op = self.op.lock().await;
            let allowed = [
                TxnState::InTransaction,
                TxnState::Committing,
                TxnState::Prepared,
            ];
            let state = self.close("commit", &allowed, "committing").await?;
            if state == TxnState::InTransaction {
                if let Err(e) = self.producer.flush().await {
                    return Err(self.fail_flush(e));
                }
            }
            self.lock().state = TxnState::Committing;
            self.end(true).await
        }
        .instrument(span)
        .await
    }

    /// Aborts the open (or prepared) transaction. Records already sent are discarded by
    /// `read_committed` readers. Refused after a commit whose outcome is unknown.
    ///
    /// # Cancel safety
    /// Not cancel safe: the abort may have been sent. Call `abort` again to finish it.
    pub async fn abort(&self) -> Result<TxnOutcome, ClientError> {
        let span = info_span!("txn.abort", transactional_id = %self.config.transactional_id);
        async {
            let _op = self.op.lock().await;
            let allowed = [
                TxnState::InTransaction,
                TxnState::AbortableError,
                TxnState::Aborting,
                TxnState::Prepared,
            ];
            self.close("abort", &allowed, "aborting").await?;
            // Let in-flight batches finish (or fail) first: the abort must come after them.
            let flushed = self.producer.flush().await;
            self.lock().state = TxnState::Aborting;
            let outcome = self.end(false).await?;
            if flushed.is_err() || self.producer.error().is_some() {
                // Failed batches left gaps in sequences; start over with a bumped epoch (KIP-360).
                self.bump_epoch().await?;
            }
            Ok(outcome)
        }
        .instrument(span)
        .await
    }

    /// Flushes every record and returns the transaction's identity without committing it. The
    /// producer holds it (state Prepared) until it is committed or aborted here
    /// ([`TransactionalProducer::commit`] / [`TransactionalProducer::abort`]), or from another
    /// process with [`commit_prepared`](crate::client::transaction::commit_prepared) /
    /// [`abort_prepared`](crate::client::transaction::abort_prepared).
    ///
    /// # Cancel safety
    /// Cancel safe: flushing only waits. Sends stay refused until `prepare`, `commit` or
    /// `abort` is called again.
    pub async fn prepare(&self) -> Result<PreparedTxn, ClientError> {
        let _op = self.op.lock().await;
        self.close("prepare", &[TxnState::InTransaction], "preparing")
            .await?;
        if let Err(e) = self.producer.flush().await {
            return Err(self.fail_flush(e));
        }
        let mut inner = self.lock();
        let mut prepared = self.identity(&inner);
        // Where its marker will be looked for once the transactional id has moved on.
        prepared.partitions = self
            .producer
            .take_batch_offsets()
            .into_iter()
            .map(
                |((topic, partition), last_batch_offset)| PreparedPartition {
                    topic,
                    partition,
                    last_batch_offset,
                },
            )
            .collect();
        prepared
            .partitions
            .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        inner.state = TxnState::Prepared;
        inner.closing = None;
        inner.prepared = Some(prepared.clone());
        Ok(prepared)
    }

    fn identity(&self, inner: &Inner) -> PreparedTxn {
        PreparedTxn {
            transactional_id: self.config.transactional_id.clone(),
            producer_id: inner.producer_id,
            producer_epoch: inner.producer_epoch,
            transaction_version: self.end_txn_version,
            empty: inner.partitions.is_empty() && !inner.offsets_added,
            partitions: Vec::new(),
        }
    }

    /// Sends EndTxn and moves to Ready (or to an error state).
    async fn end(&self, commit: bool) -> Result<TxnOutcome, ClientError> {
        let started = Instant::now();
        let prepared = self.identity(&self.lock());
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
        let mut inner = self.lock();
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
                if !prepared.empty {
                    self.settle.ended();
                }
                inner.error = None;
                inner.partitions.clear();
                inner.offsets_added = false;
                inner.closing = None;
                inner.prepared = None;
                debug!(?outcome, "transaction ended");
                Ok(outcome)
            }
            Err(e) => {
                let e = match e {
                    ClientError::PreparedTxnLost { .. }
                    | ClientError::CommitOutcomeUnknown { .. } => e,
                    other => self.classify(other, prepared.producer_id, prepared.producer_epoch),
                };
                Err(inner.fail(e))
            }
        }
    }

    /// After an abort with failed batches: InitProducerId with the current id and epoch bumps
    /// the epoch without losing the producer id (KIP-360).
    async fn bump_epoch(&self) -> Result<(), ClientError> {
        let (pid, epoch) = {
            let inner = self.lock();
            (inner.producer_id, inner.producer_epoch)
        };
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(kstr(
                self.config.transactional_id.clone(),
            ))))
            .with_transaction_timeout_ms(self.config.transaction_timeout_ms)
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch);
        match self
            .coordinator
            .call(&request, "InitProducerId", |r| r.error_code)
            .await
        {
            Ok((response, _)) => {
                let mut inner = self.lock();
                inner.producer_id = response.producer_id.0;
                inner.producer_epoch = response.producer_epoch;
                self.producer
                    .reset_producer_id(inner.producer_id, inner.producer_epoch);
                Ok(())
            }
            Err(e) => {
                let e = self.classify(e, pid, epoch);
                Err(self.lock().fail(e))
            }
        }
    }
}
