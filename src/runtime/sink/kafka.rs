//! The two-phase-commit Kafka sink: one [`TwoPhaseCommitSink`] per sink subtask.
//!
//! Why two phases: a Kafka transaction (KIP-98,
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging>)
//! makes a subtask's output between two checkpoint barriers atomic, but it may only be
//! committed once the checkpoint that covers those records is durable — otherwise a crash
//! would replay records whose output is already visible. So on barrier n the sink *prepares*
//! (flushes, does not commit) and the [`KafkaCommittable`] goes into the snapshot of checkpoint
//! n; when the checkpoint coordinator says n is complete, the sink commits. This is Flink's
//! `TwoPhaseCommittingSink` / `KafkaSink` design
//! (<https://nightlies.apache.org/flink/flink-docs-stable/docs/connectors/datastream/kafka/#kafka-sink>).
//!
//! Producers come from a **bounded pool** per subtask: transactional ids
//! `{prefix}-{subtask}-{slot}` with `slot < pool_size`. Each distinct transactional id costs
//! the broker memory until `transactional.id.expiration.ms`; one id per checkpoint (Flink's
//! older scheme) has exhausted brokers. The default pool of 2 is one checkpoint in flight plus
//! the transaction being written: after prepare, the next transaction opens on the other
//! producer at once, so writing never waits for a commit. A producer is reused after its
//! commit: the [`TransactionalProducer`] finishes its own prepared transaction and is Ready
//! again on the epoch the coordinator gave (KIP-890 bumps it on every EndTxn).
//!
//! Commits run off the caller's path: [`TwoPhaseCommitSink::commit_up_to`] hands them to
//! background tasks the sink owns (at most one per pool slot) and returns at once; their
//! results are collected by the next call (or [`TwoPhaseCommitSink::poll_commits`]). A commit
//! whose outcome is unknown is never followed by an abort: it is re-checked from the partition
//! logs with [`commit_prepared`] (the transaction's marker decides), and if that cannot tell
//! either, the sink fails with [`SinkTxnFailure::OutcomeUnknown`](super::SinkTxnFailure::OutcomeUnknown) — the job restarts and
//! recovery finishes the transaction from the checkpoint.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::client::producer::{ProducerConfig, ProducerRecord};
use crate::client::transaction::{
    commit_prepared, PreparedTxn, TransactionConfig, TransactionalProducer, TxnOutcome,
};
use crate::client::{Client, ClientError};
use crate::runtime::RuntimeError;

/// Settings of the two-phase-commit Kafka sink (the same for every subtask of a job).
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// The job's transactional-id prefix: ids are `{prefix}-{subtask}-{slot}`. Unique per job
    /// and stable across restarts: recovery finds the job's transactions by it, and two jobs
    /// sharing it fence each other.
    pub transactional_id_prefix: String,
    /// The broker aborts a transaction left open this long. Must exceed the checkpoint
    /// interval plus the checkpoint timeout (a transaction stays open until the checkpoint
    /// after it completes) and stay within the broker's `transaction.max.timeout.ms`; see
    /// [`check_transaction_timeout`](super::check_transaction_timeout).
    pub transaction_timeout_ms: i32,
    /// Producers (transactional ids) per subtask: checkpoints that may be pending at once + 1.
    /// At least 2.
    pub pool_size: u32,
    /// Settings of each producer.
    pub producer: ProducerConfig,
    /// How long one commit (EndTxn with retries, and a re-check from the logs when its answer
    /// is lost) may take; also the bound on waiting for a producer whose commit is under way.
    pub commit_deadline_ms: u64,
    /// See [`TransactionConfig::settle_window_ms`].
    pub settle_window_ms: u64,
}

impl KafkaSinkConfig {
    /// Settings with defaults for `transactional_id_prefix`.
    pub fn new(transactional_id_prefix: impl Into<String>) -> Self {
        Self {
            transactional_id_prefix: transactional_id_prefix.into(),
            transaction_timeout_ms: 300_000,
            pool_size: 2,
            producer: ProducerConfig::default(),
            commit_deadline_ms: 30_000,
            settle_window_ms: 100,
        }
    }

    /// The largest pool this sink accepts: ids cost broker memory, and more than a few
    /// pending checkpoints means commits are not keeping up.
    pub const POOL_SIZE_MAX: u32 = 16;

    /// Rejects impossible settings, naming the key.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |key, reason: String| Err(RuntimeError::Config { key, reason });
        if self.transactional_id_prefix.is_empty() {
            return bad(
                "transactional_id_prefix",
                "must not be empty: it identifies the job's transactions".into(),
            );
        }
        if self.transaction_timeout_ms <= 0 {
            return bad(
                "transaction_timeout_ms",
                format!("must be positive, got {}", self.transaction_timeout_ms),
            );
        }
        if !(2..=Self::POOL_SIZE_MAX).contains(&self.pool_size) {
            return bad(
                "pool_size",
                format!(
                    "must be 2..={} (one producer holds the prepared transaction while the next \
                     writes), got {}",
                    Self::POOL_SIZE_MAX,
                    self.pool_size
                ),
            );
        }
        if self.commit_deadline_ms == 0 {
            return bad("commit_deadline_ms", "must be positive, got 0".into());
        }
        Ok(())
    }

    /// The transactional id of `subtask`'s producer `slot`.
    pub fn transactional_id(&self, subtask: u32, slot: u32) -> String {
        transactional_id(&self.transactional_id_prefix, subtask, slot)
    }

    /// The client's settings for the producer with `transactional_id`.
    pub fn transaction_config(&self, transactional_id: String) -> TransactionConfig {
        TransactionConfig {
            transactional_id,
            transaction_timeout_ms: self.transaction_timeout_ms,
            producer: self.producer.clone(),
            coordinator_deadline_ms: self.commit_deadline_ms,
            concurrent_txn_backoff_ms: 20,
            settle_window_ms: self.settle_window_ms,
        }
    }
}

/// `{prefix}-{subtask}-{slot}`.
pub(super) fn transactional_id(prefix: &str, subtask: u32, slot: u32) -> String {
    format!("{prefix}-{subtask}-{slot}")
}

/// The (subtask, slot) of a transactional id of exactly the shape `{prefix}-<subtask>-<slot>`
/// (canonical decimal numbers), or `None`: prefix `a` does not claim `ab-0-0` or `a-b-0-0`.
pub fn parse_transactional_id(prefix: &str, id: &str) -> Option<(u32, u32)> {
    let rest = id.strip_prefix(prefix)?.strip_prefix('-')?;
    let (subtask, slot) = rest.split_once('-')?;
    let number = |s: &str| -> Option<u32> {
        let canonical = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        canonical.then(|| s.parse().ok()).flatten()
    };
    Some((number(subtask)?, number(slot)?))
}

/// A prepared transaction of one sink subtask, as it goes into that subtask's snapshot of
/// checkpoint `checkpoint_id` (serde for JSON, rkyv for the runtime's snapshots).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct KafkaCommittable {
    /// The checkpoint whose barrier ended the transaction.
    pub checkpoint_id: u64,
    /// The sink subtask that wrote it.
    pub subtask: u32,
    /// The pool slot (producer) that wrote it.
    pub slot: u32,
    /// Everything needed to commit it from another process: transactional id, producer id,
    /// epoch, transactions version and where its records are.
    pub prepared: PreparedTxn,
}

/// Where a sink subtask is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkState {
    /// No transaction open; the next `send` opens one on a free producer.
    Idle,
    /// A transaction is open on producer `slot`.
    Writing {
        /// The pool slot.
        slot: u32,
    },
    /// A call failed; only `close` is allowed. The job restarts from its last checkpoint.
    Failed {
        /// What failed.
        reason: String,
    },
}

/// Where one producer of the pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotState {
    /// Ready for the next transaction.
    Free,
    /// Its transaction is open.
    Writing,
    /// Its transaction is prepared for checkpoint `checkpoint_id`, whose completion has not
    /// been announced yet.
    Prepared {
        /// The checkpoint.
        checkpoint_id: u64,
    },
    /// Its commit runs in the background.
    Committing {
        /// The checkpoint.
        checkpoint_id: u64,
    },
    /// Its producer failed; the sink has failed.
    Broken,
}

/// How [`TwoPhaseCommitSink::close`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Waits (bounded by `commit_deadline_ms`) for commits under way, then aborts the open
    /// transaction. For SIGTERM after a final checkpoint, or when the job stops.
    Graceful,
    /// Aborts the open transaction without waiting for commits under way (their tasks are
    /// cancelled; recovery finishes them from the checkpoint). For a job that failed.
    Immediate,
}

/// What [`TwoPhaseCommitSink::close`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseReport {
    /// The open transaction was aborted (it had records or offsets).
    pub aborted_open: bool,
    /// Prepared transactions left for recovery (their checkpoint was not announced complete,
    /// or their commit was cut short): the next `recover` commits those whose checkpoint is
    /// restored and aborts the others.
    pub left_prepared: Vec<KafkaCommittable>,
}

/// Counters of one sink subtask (read with [`TwoPhaseCommitSink::metrics`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkMetrics {
    /// Records handed to producers.
    pub records_sent: u64,
    /// Non-empty transactions prepared.
    pub prepared: u64,
    /// Checkpoints without output (no committable).
    pub empty_checkpoints: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Commit latencies, in µs, most recent [`COMMIT_LATENCY_SAMPLES_MAX`]: from
    /// `commit_up_to` (the checkpoint-complete notice) to the EndTxn answer.
    pub commit_latency_us: Vec<u64>,
    /// Commits running now.
    pub commits_in_flight: usize,
    /// Prepared transactions not yet known committed.
    pub pending: usize,
}

/// How many commit latency samples [`SinkMetrics::commit_latency_us`] keeps.
pub const COMMIT_LATENCY_SAMPLES_MAX: usize = 1024;

/// A commit task's result.
struct CommitDone {
    slot: usize,
    checkpoint_id: u64,
    result: Result<TxnOutcome, ClientError>,
    /// The producer re-initialized after a commit whose answer was lost (the old one stopped).
    replacement: Option<TransactionalProducer>,
    latency_us: u64,
}

struct Slot {
    producer: Arc<TransactionalProducer>,
    state: SlotState,
}

/// The two-phase-commit Kafka sink of one sink subtask. See the module docs.
///
/// Call order, from the subtask's task: `open` (after the job's [`recover`](super::recover))
/// → `send`* → on barrier n `prepare(n)` (store the returned committables in the snapshot) →
/// when checkpoint n is complete `commit_up_to(n)` → … → `close`.
///
/// Dropping it without `close` (a crash, or a task cancelled) cancels commits under way and
/// leaves the open transaction to the broker's timeout or the next [`recover`](super::recover),
/// which also finishes the cancelled commits from the checkpoint.
pub struct TwoPhaseCommitSink {
    client: Client,
    config: KafkaSinkConfig,
    subtask: u32,
    slots: Vec<Slot>,
    /// The slot with the open transaction.
    current: Option<usize>,
    /// Records sent in the open transaction.
    current_records: u64,
    failed: Option<String>,
    /// Prepared transactions not yet known committed, oldest first.
    pending: Vec<KafkaCommittable>,
    commits: JoinSet<CommitDone>,
    last_prepared: Option<u64>,
    latencies: VecDeque<u64>,
    metrics: SinkMetrics,
}

impl std::fmt::Debug for TwoPhaseCommitSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoPhaseCommitSink")
            .field("subtask", &self.subtask)
            .field("state", &self.state())
            .field("slots", &self.slot_states())
            .finish_non_exhaustive()
    }
}

impl TwoPhaseCommitSink {
    /// Opens the pool of `subtask`: InitProducerId for each of its `pool_size` transactional
    /// ids, which fences older incarnations and aborts what they left open. Call it only after
    /// the job's [`recover`](super::recover) has finished the restored checkpoint's prepared
    /// transactions — InitProducerId would abort them.
    ///
    /// # Cancel safety
    /// Cancel safe in effect: a later `open` fences whatever this one obtained.
    pub async fn open(
        client: Client,
        config: KafkaSinkConfig,
        subtask: u32,
    ) -> Result<Self, RuntimeError> {
        config.validate()?;
        let mut slots = Vec::with_capacity(config.pool_size as usize);
        for slot in 0..config.pool_size {
            let id = config.transactional_id(subtask, slot);
            let producer =
                TransactionalProducer::init(client.clone(), config.transaction_config(id.clone()))
                    .await
                    .map_err(|e| super::classify(e, None, &id))?;
            slots.push(Slot {
                producer: Arc::new(producer),
                state: SlotState::Free,
            });
        }
        info!(
            subtask,
            pool_size = config.pool_size,
            prefix = %config.transactional_id_prefix,
            "two-phase-commit sink opened"
        );
        Ok(Self {
            client,
            config,
            subtask,
            slots,
            current: None,
            current_records: 0,
            failed: None,
            pending: Vec::new(),
            commits: JoinSet::new(),
            last_prepared: None,
            latencies: VecDeque::new(),
            metrics: SinkMetrics::default(),
        })
    }

    /// The sink subtask's index.
    pub fn subtask(&self) -> u32 {
        self.subtask
    }

    /// The lifecycle state.
    pub fn state(&self) -> SinkState {
        match (&self.failed, self.current) {
            (Some(reason), _) => SinkState::Failed {
                reason: reason.clone(),
            },
            (None, Some(slot)) => SinkState::Writing { slot: slot as u32 },
            (None, None) => SinkState::Idle,
        }
    }

    /// Each pool slot's state, by slot.
    pub fn slot_states(&self) -> Vec<SlotState> {
        self.slots.iter().map(|s| s.state).collect()
    }

    /// Whether `send` can go ahead without waiting: a transaction is open or a producer is
    /// free. When false, every producer holds a prepared transaction whose checkpoint has not
    /// been announced complete: the caller should wait for the coordinator's notice (and call
    /// `commit_up_to`) before sending more, instead of calling `send` (which would fail).
    pub fn is_writable(&self) -> bool {
        self.failed.is_none()
            && (self.current.is_some()
                || self
                    .slots
                    .iter()
                    .any(|s| matches!(s.state, SlotState::Free | SlotState::Committing { .. })))
    }

    /// Counters and commit latencies so far.
    pub fn metrics(&self) -> SinkMetrics {
        SinkMetrics {
            commit_latency_us: self.latencies.iter().copied().collect(),
            commits_in_flight: self.commits.len(),
            pending: self.pending.len(),
            ..self.metrics.clone()
        }
    }

    /// The prepared transactions not yet known committed, oldest first.
    pub fn pending(&self) -> &[KafkaCommittable] {
        &self.pending
    }

    /// Queues `record` in the open transaction, opening one on a free producer first if none
    /// is open. Does not wait for the broker (only for buffer space, and, for the first
    /// record of a transaction, briefly for the previous transaction's markers): delivery
    /// errors surface at the latest on `prepare`.
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped, the record was not queued.
    pub async fn send(&mut self, record: ProducerRecord) -> Result<(), RuntimeError> {
        self.check("send")?;
        let slot = self.writable_slot().await?;
        let sent = self.slots[slot].producer.send(record).await;
        match sent {
            // The delivery future is not kept: a failed record stops the producer, and the
            // flush in `prepare` reports it.
            Ok(_delivery) => {
                self.metrics.records_sent += 1;
                self.current_records += 1;
                Ok(())
            }
            Err(e) => Err(self.fail_slot(slot, None, e)),
        }
    }

    /// On the barrier of checkpoint `checkpoint_id`: flushes the open transaction and prepares
    /// it (no commit), records it pending under that checkpoint, opens the next transaction on
    /// a free producer (waiting, bounded by `commit_deadline_ms`, if the only candidates are
    /// still committing), and returns every pending committable — this one and older ones not
    /// yet known committed, as Flink does — for the subtask's snapshot. A checkpoint without
    /// output adds no committable.
    ///
    /// # Cancel safety
    /// Cancel safe in effect: if dropped during the flush, sends are refused until `prepare`
    /// is called again (it prepares the same transaction) or `close`; if dropped while waiting
    /// for a producer, the next `send` opens the transaction.
    pub async fn prepare(
        &mut self,
        checkpoint_id: u64,
    ) -> Result<Vec<KafkaCommittable>, RuntimeError> {
        self.check("prepare")?;
        if let Some(last) = self.last_prepared.filter(|last| checkpoint_id <= *last) {
            return Err(RuntimeError::SinkInvalidCall {
                subtask: self.subtask,
                operation: "prepare",
                reason: format!("checkpoint ids must increase: {checkpoint_id} after {last}"),
            });
        }
        self.harvest()?;
        if let Some(slot) = self.current {
            let producer = Arc::clone(&self.slots[slot].producer);
            let prepared = match producer.prepare().await {
                Ok(p) => p,
                Err(e) => return Err(self.fail_slot(slot, Some(checkpoint_id), e)),
            };
            self.current = None;
            if prepared.empty {
                // Nothing reached the coordinator: ending it is local (no round trip).
                if let Err(e) = producer.commit().await {
                    return Err(self.fail_slot(slot, Some(checkpoint_id), e));
                }
                self.slots[slot].state = SlotState::Free;
                self.metrics.empty_checkpoints += 1;
            } else {
                debug!(
                    subtask = self.subtask,
                    slot,
                    checkpoint_id,
                    transactional_id = %prepared.transactional_id,
                    "transaction prepared"
                );
                self.slots[slot].state = SlotState::Prepared { checkpoint_id };
                self.pending.push(KafkaCommittable {
                    checkpoint_id,
                    subtask: self.subtask,
                    slot: slot as u32,
                    prepared,
                });
                self.metrics.prepared += 1;
            }
        } else {
            self.metrics.empty_checkpoints += 1;
        }
        self.last_prepared = Some(checkpoint_id);
        // Open the next transaction now, so that writing does not wait for a commit. When
        // every other producer holds a checkpoint not yet announced complete, nothing can free
        // one before `commit_up_to`: leave it to the next `send` (see `is_writable`).
        if self.free_slot().is_some() || self.committing() > 0 {
            self.writable_slot().await?;
        }
        Ok(self.pending.clone())
    }

    /// Checkpoint `checkpoint_id` is complete (durable): commits every prepared transaction of
    /// it and of earlier checkpoints, in background tasks owned by the sink, and returns at
    /// once with how many commits it started. Their results are collected by the next call
    /// (or [`Self::poll_commits`] / [`Self::wait_for_commits`]); a failure fails the sink
    /// then. Never aborts: a commit whose outcome is unknown is re-checked from the logs.
    ///
    /// # Cancel safety
    /// Cancel safe (it does not wait).
    pub fn commit_up_to(&mut self, checkpoint_id: u64) -> Result<usize, RuntimeError> {
        self.check("commit")?;
        self.harvest()?;
        let requested_at = Instant::now();
        let mut started = 0;
        for committable in &self.pending {
            let slot = committable.slot as usize;
            let SlotState::Prepared { checkpoint_id: c } = self.slots[slot].state else {
                continue;
            };
            if c > checkpoint_id {
                continue;
            }
            self.slots[slot].state = SlotState::Committing { checkpoint_id: c };
            let producer = Arc::clone(&self.slots[slot].producer);
            let client = self.client.clone();
            let config = self
                .config
                .transaction_config(committable.prepared.transactional_id.clone());
            let committable = committable.clone();
            let deadline_ms = self.config.commit_deadline_ms;
            self.commits.spawn(async move {
                let (result, replacement) =
                    commit_task(client, &producer, config, &committable, deadline_ms).await;
                CommitDone {
                    slot,
                    checkpoint_id: committable.checkpoint_id,
                    result,
                    replacement,
                    latency_us: requested_at.elapsed().as_micros() as u64,
                }
            });
            started += 1;
        }
        Ok(started)
    }

    /// Collects finished commits without waiting; returns how many are still running. The
    /// first failed commit fails the sink and is returned.
    ///
    /// # Cancel safety
    /// Cancel safe (it does not wait).
    pub fn poll_commits(&mut self) -> Result<usize, RuntimeError> {
        self.check("poll commits")?;
        self.harvest()?;
        Ok(self.commits.len())
    }

    /// Waits until every commit under way has finished (bounded by `commit_deadline_ms`
    /// beyond each commit's own deadline).
    ///
    /// # Cancel safety
    /// Cancel safe: the commits go on in the background.
    pub async fn wait_for_commits(&mut self) -> Result<(), RuntimeError> {
        self.check("wait for commits")?;
        while !self.commits.is_empty() {
            self.wait_one_commit().await?;
        }
        Ok(())
    }

    /// Ends the subtask's sink: waits for commits under way ([`CloseMode::Graceful`], bounded)
    /// and aborts the open transaction, so that nothing this subtask wrote after its last
    /// prepare lingers until the broker's timeout (SIGTERM). Prepared transactions are never
    /// aborted here: their checkpoint may be complete; recovery decides.
    ///
    /// # Cancel safety
    /// Not cancel safe: the abort may have been sent; the broker's timeout or the next
    /// recovery ends what is left.
    pub async fn close(mut self, how: CloseMode) -> Result<CloseReport, RuntimeError> {
        let mut first_error = None;
        if how == CloseMode::Graceful {
            while !self.commits.is_empty() {
                if let Err(e) = self.wait_one_commit().await {
                    warn!(subtask = self.subtask, error = %e, "a commit failed while closing");
                    let hung = matches!(e, RuntimeError::SinkPoolExhausted { .. });
                    first_error.get_or_insert(e);
                    if hung {
                        break;
                    }
                }
            }
        }
        self.commits.abort_all();
        let mut report = CloseReport::default();
        if let Some(slot) = self.current.take() {
            let producer = &self.slots[slot].producer;
            match producer.abort().await {
                Ok(outcome) => {
                    report.aborted_open =
                        self.current_records > 0 && outcome == TxnOutcome::Aborted;
                    debug!(
                        subtask = self.subtask,
                        slot,
                        ?outcome,
                        "open transaction aborted on close"
                    );
                }
                Err(e) => {
                    let id = self.config.transactional_id(self.subtask, slot as u32);
                    first_error.get_or_insert(super::classify(e, None, &id));
                }
            }
        }
        report.left_prepared = self.pending.clone();
        if !report.left_prepared.is_empty() {
            info!(
                subtask = self.subtask,
                left = report.left_prepared.len(),
                "sink closed with prepared transactions left for recovery"
            );
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn check(&self, operation: &'static str) -> Result<(), RuntimeError> {
        match &self.failed {
            Some(reason) => Err(RuntimeError::SinkInvalidCall {
                subtask: self.subtask,
                operation,
                reason: format!("the sink failed earlier: {reason}"),
            }),
            None => Ok(()),
        }
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.state == SlotState::Free)
    }

    fn committing(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Committing { .. }))
            .count()
    }

    /// The slot with the open transaction, opening one if needed.
    async fn writable_slot(&mut self) -> Result<usize, RuntimeError> {
        if let Some(slot) = self.current {
            return Ok(slot);
        }
        self.harvest()?;
        let slot = loop {
            if let Some(slot) = self.free_slot() {
                break slot;
            }
            if self.committing() == 0 {
                let held: Vec<String> = self
                    .slots
                    .iter()
                    .filter_map(|s| match s.state {
                        SlotState::Prepared { checkpoint_id } => Some(checkpoint_id.to_string()),
                        _ => None,
                    })
                    .collect();
                return Err(RuntimeError::SinkPoolExhausted {
                    subtask: self.subtask,
                    pool_size: self.config.pool_size,
                    reason: format!(
                        "every producer holds the prepared transaction of a checkpoint not yet \
                         announced complete (checkpoints {}); call commit_up_to when one \
                         completes before sending more (see is_writable), or raise pool_size \
                         above the number of checkpoints that can be pending at once",
                        held.join(", ")
                    ),
                });
            }
            self.wait_one_commit().await?;
        };
        let producer = &self.slots[slot].producer;
        if let Err(e) = producer.begin().await {
            return Err(self.fail_slot(slot, None, e));
        }
        self.slots[slot].state = SlotState::Writing;
        self.current = Some(slot);
        self.current_records = 0;
        Ok(slot)
    }

    /// Waits for one commit task, bounded.
    async fn wait_one_commit(&mut self) -> Result<(), RuntimeError> {
        // Each commit bounds itself by `commit_deadline_ms` (and as much again for the
        // re-check of a lost answer); this bound only guards against a task that hangs.
        let bound =
            std::time::Duration::from_millis(self.config.commit_deadline_ms.saturating_mul(3));
        match tokio::time::timeout(bound, self.commits.join_next()).await {
            Ok(Some(joined)) => self.finish(joined),
            Ok(None) => Ok(()),
            Err(_) => {
                let reason = format!("a commit did not finish within {} ms", bound.as_millis());
                self.failed = Some(reason.clone());
                Err(RuntimeError::SinkPoolExhausted {
                    subtask: self.subtask,
                    pool_size: self.config.pool_size,
                    reason,
                })
            }
        }
    }

    /// Collects every finished commit task.
    fn harvest(&mut self) -> Result<(), RuntimeError> {
        while let Some(joined) = self.commits.try_join_next() {
            self.finish(joined)?;
        }
        Ok(())
    }

    fn finish(
        &mut self,
        joined: Result<CommitDone, tokio::task::JoinError>,
    ) -> Result<(), RuntimeError> {
        let done = match joined {
            Ok(done) => done,
            Err(e) => {
                let reason = format!("a commit task stopped: {e}");
                self.failed = Some(reason.clone());
                return Err(RuntimeError::TaskFailed {
                    task: format!("sink {} commit", self.subtask),
                    reason,
                });
            }
        };
        match done.result {
            Ok(outcome) => {
                if let Some(producer) = done.replacement {
                    self.slots[done.slot].producer = Arc::new(producer);
                }
                self.slots[done.slot].state = SlotState::Free;
                self.pending.retain(|c| {
                    !(c.slot as usize == done.slot && c.checkpoint_id == done.checkpoint_id)
                });
                self.metrics.commits += 1;
                if self.latencies.len() >= COMMIT_LATENCY_SAMPLES_MAX {
                    self.latencies.pop_front();
                }
                self.latencies.push_back(done.latency_us);
                debug!(
                    subtask = self.subtask,
                    slot = done.slot,
                    checkpoint_id = done.checkpoint_id,
                    ?outcome,
                    latency_us = done.latency_us,
                    "transaction committed"
                );
                Ok(())
            }
            Err(e) => Err(self.fail_slot(done.slot, Some(done.checkpoint_id), e)),
        }
    }

    /// Marks the sink failed because of `slot`'s error, classified.
    fn fail_slot(
        &mut self,
        slot: usize,
        checkpoint_id: Option<u64>,
        e: ClientError,
    ) -> RuntimeError {
        let id = self.config.transactional_id(self.subtask, slot as u32);
        let error = super::classify(e, checkpoint_id, &id);
        warn!(subtask = self.subtask, slot, error = %error, "sink failed");
        // `current` stays: `close` aborts a failed open transaction (abortable) as well.
        self.slots[slot].state = SlotState::Broken;
        self.failed = Some(error.to_string());
        error
    }
}

/// Commits `committable` with the producer that prepared it. A commit whose answer was lost is
/// re-checked from the partition logs ([`commit_prepared`]; never an abort); if that shows it
/// committed, the stopped producer is replaced by a fresh one for the same id.
async fn commit_task(
    client: Client,
    producer: &TransactionalProducer,
    config: TransactionConfig,
    committable: &KafkaCommittable,
    deadline_ms: u64,
) -> (
    Result<TxnOutcome, ClientError>,
    Option<TransactionalProducer>,
) {
    match producer.commit().await {
        Ok(outcome) => (Ok(outcome), None),
        Err(e @ ClientError::CommitOutcomeUnknown { .. }) => {
            warn!(
                transactional_id = %committable.prepared.transactional_id,
                checkpoint_id = committable.checkpoint_id,
                error = %e,
                "commit outcome unknown; reading it from the partition logs"
            );
            match commit_prepared(&client, &committable.prepared, deadline_ms).await {
                Ok(outcome) => match TransactionalProducer::init(client, config).await {
                    Ok(fresh) => (Ok(outcome), Some(fresh)),
                    Err(e) => (Err(e), None),
                },
                Err(e) => (Err(e), None),
            }
        }
        Err(e) => (Err(e), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_ids_of_exactly_the_job_shape() {
        assert_eq!(parse_transactional_id("a", "a-0-1"), Some((0, 1)));
        assert_eq!(parse_transactional_id("a", "a-12-0"), Some((12, 0)));
        assert_eq!(parse_transactional_id("job-x", "job-x-3-1"), Some((3, 1)));
        for other in [
            "ab-0-0",
            "a-b-0-0",
            "a-0",
            "a-0-0-0",
            "a-01-0",
            "a--0",
            "a-0-",
            "a-+1-0",
            "a",
            "b-0-0",
            "a-0-99999999999",
        ] {
            assert_eq!(parse_transactional_id("a", other), None, "{other}");
        }
        let config = KafkaSinkConfig::new("a");
        assert_eq!(config.transactional_id(2, 1), "a-2-1");
    }

    #[test]
    fn config_validation_names_the_key() {
        let mut c = KafkaSinkConfig::new("");
        let err = c.validate().unwrap_err();
        assert!(matches!(
            err,
            RuntimeError::Config {
                key: "transactional_id_prefix",
                ..
            }
        ));
        c.transactional_id_prefix = "j".into();
        c.pool_size = 1;
        let err = c.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration pool_size: must be 2..=16 (one producer holds the prepared \
             transaction while the next writes), got 1"
        );
        c.pool_size = 2;
        c.transaction_timeout_ms = 0;
        assert!(matches!(
            c.validate().unwrap_err(),
            RuntimeError::Config {
                key: "transaction_timeout_ms",
                ..
            }
        ));
        c.transaction_timeout_ms = 60_000;
        c.validate().unwrap();
    }

    #[test]
    fn committables_round_trip_through_rkyv_and_json() {
        let c = KafkaCommittable {
            checkpoint_id: 7,
            subtask: 1,
            slot: 0,
            prepared: PreparedTxn {
                transactional_id: "j-1-0".into(),
                producer_id: 42,
                producer_epoch: 3,
                transaction_version: 2,
                empty: false,
                partitions: vec![crate::client::transaction::PreparedPartition {
                    topic: "out".into(),
                    partition: 2,
                    last_batch_offset: 99,
                }],
            },
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&c).unwrap();
        assert_eq!(
            rkyv::from_bytes::<KafkaCommittable, rkyv::rancor::Error>(&bytes).unwrap(),
            c
        );
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<KafkaCommittable>(&json).unwrap(), c);
    }

    #[test]
    fn the_sink_is_send() {
        fn is_send<T: Send>() {}
        is_send::<TwoPhaseCommitSink>();
    }
}
