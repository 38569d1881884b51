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
//! - error codes are classified by the one table in `protocol::error_codes` (`src/protocol/error_codes.rs`); an
//!   answer to EndTxn(commit) outside the codes EndTxn is documented to return is read through
//!   `error_codes::end_txn_commit` as an unknown outcome;
//! - a commit whose answer never came (or came with an unexpected code, or a refusal after an
//!   attempt that timed out) is **never** followed by an abort: the producer re-sends
//!   EndTxn(commit) (idempotent on the coordinator) until its deadline, asks the coordinator
//!   (DescribeTransactions) and continues on the epoch it reports, and if the outcome is still
//!   unknown it says so ([`ClientError::CommitOutcomeUnknown`](crate::client::ClientError::CommitOutcomeUnknown))
//!   and refuses to abort;
//! - no record joins a transaction after its commit, prepare or abort began, and EndTxn is sent
//!   only after every record queued before it is acknowledged;
//! - a prepared transaction ([`PreparedTxn`]) can be committed or aborted by a new process with
//!   [`commit_prepared`]/[`abort_prepared`], which send EndTxn with the stored id and epoch and
//!   never call InitProducerId (which would abort it). Flink does the same by reflection. Once
//!   the transactional id has moved on, they learn how it ended from its marker in the
//!   partition logs and never act on the later transaction (see `prepared`).
//!
//! The two-phase-commit sink (the runtime's) keeps a pool of producers, one transactional id
//! each: at a checkpoint the current producer `prepare`s and holds its prepared transaction
//! while the next transaction opens on another producer of the pool; when the checkpoint
//! completes, the holder commits it itself (`commit`, or `abort` if the checkpoint failed) and
//! is back in Ready, on the epoch the coordinator gave, for reuse. After a restart,
//! [`TransactionalProducer::recover`] finishes the prepared transaction stored in the last
//! checkpoint and only then initializes.
//!
//! Layout: `producer` holds the [`TransactionalProducer`] state machine and `state` its state
//! record and transitions, `coordinator` the coordinator lookup and retried call loop
//! (DescribeTransactions, EndTxn, the broker-config check), `prepared` the EndTxn outcome logic
//! and [`commit_prepared`]/[`abort_prepared`], `settle` the wait of a transaction's first write
//! for the previous transaction's markers (a lost race costs 20 ms). `fake_tests` and
//! `prepared_fake_tests` drive the producer through the client's scripted fake cluster
//! (`client::fake_cluster`, tests only) on the paths a real broker cannot be made to take.

mod coordinator;
mod marker;
mod prepared;
mod producer;
mod settle;
mod state;

use serde::{Deserialize, Serialize};

use super::producer::ProducerConfig;

pub use coordinator::describe_transaction;
pub use prepared::{abort_prepared, commit_prepared};
pub use producer::TransactionalProducer;

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
    /// The first write of a transaction that starts within this long of the previous EndTxn
    /// answer first waits (best effort, at most 100 ms) until the coordinator has written the
    /// previous transaction's markers, instead of racing them and losing 20 ms to
    /// CONCURRENT_TRANSACTIONS (see `settle.rs`). 0 turns the wait off.
    pub settle_window_ms: u64,
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
            settle_window_ms: 100,
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
/// another process, and to learn later how it ended. Store it before acknowledging a
/// checkpoint: as JSON (serde; `exactly txn prepare --out`) or archived with rkyv (the
/// runtime's snapshots; `rkyv::to_bytes` / `rkyv::from_bytes`, validated on read).
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
pub struct PreparedTxn {
    /// The transactional id.
    pub transactional_id: String,
    /// The producer id the transaction was written with.
    pub producer_id: i64,
    /// The producer epoch the transaction was written with.
    pub producer_epoch: i16,
    /// The EndTxn semantics the transaction was written under (KIP-890): 2 when the coordinator
    /// bumps the epoch on EndTxn (EndTxn v5+), 1 when it does not. EndTxn for it is sent at that
    /// version; a retry of our own EndTxn is recognised after the epoch moved on.
    pub transaction_version: i16,
    /// Nothing was written in it (no records, no offsets): the coordinator never saw it, so
    /// committing or aborting it is a no-op.
    #[serde(default)]
    pub empty: bool,
    /// Where its records are: per partition, the base offset of the last batch it wrote. Its
    /// marker follows them in each of these logs, which is how [`commit_prepared`] learns the
    /// outcome once the transactional id has moved on (absent in files written before).
    #[serde(default)]
    pub partitions: Vec<PreparedPartition>,
}

/// Where a prepared transaction wrote in one partition (see [`PreparedTxn::partitions`]).
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
pub struct PreparedPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The base offset of the last batch the transaction wrote there.
    pub last_batch_offset: i64,
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
    /// DescribeTransactions probes sent before a transaction's first write, to wait out the
    /// previous transaction's markers (`settle_window_ms`).
    pub settle_probes: u64,
    /// First writes that found the previous transaction's markers still being written, and
    /// waited for them.
    pub settle_waits: u64,
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

/// The state the coordinator holds for a transactional id (DescribeTransactions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnDescription {
    /// The coordinator's state for the transactional id.
    pub state: CoordinatorState,
    /// Current producer id.
    pub producer_id: i64,
    /// Current epoch.
    pub producer_epoch: i16,
    /// Partitions in the ongoing transaction.
    pub partitions: Vec<(String, i32)>,
    /// When the ongoing transaction started (epoch ms); -1 when none is open.
    pub transaction_start_time_ms: i64,
    /// The transaction timeout the producer asked for (the coordinator aborts after it).
    pub transaction_timeout_ms: i32,
}

/// A transactional id's state on its coordinator, as DescribeTransactions reports it (the
/// broker's `TransactionState`; KIP-664). Typed, so that decisions match variants rather than
/// string literals; a state this client does not know (a newer broker) is kept as
/// [`CoordinatorState::Other`] and matches no decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoordinatorState {
    /// No transaction since the last InitProducerId.
    Empty,
    /// A transaction is open.
    Ongoing,
    /// Commit decided and logged; markers being written.
    PrepareCommit,
    /// Abort decided and logged; markers being written.
    PrepareAbort,
    /// The last transaction committed.
    CompleteCommit,
    /// The last transaction aborted.
    CompleteAbort,
    /// The coordinator is fencing the producer (abort with an epoch bump).
    PrepareEpochFence,
    /// The transactional id expired.
    Dead,
    /// A state name this client does not know.
    Other(String),
}

impl CoordinatorState {
    const NAMED: [(&'static str, CoordinatorState); 8] = [
        ("Empty", Self::Empty),
        ("Ongoing", Self::Ongoing),
        ("PrepareCommit", Self::PrepareCommit),
        ("PrepareAbort", Self::PrepareAbort),
        ("CompleteCommit", Self::CompleteCommit),
        ("CompleteAbort", Self::CompleteAbort),
        ("PrepareEpochFence", Self::PrepareEpochFence),
        ("Dead", Self::Dead),
    ];

    /// Parses the broker's state name.
    pub fn parse(name: &str) -> Self {
        Self::NAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(|| Self::Other(name.to_owned()), |(_, s)| s.clone())
    }

    /// The broker's name for the state.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(name) => name,
            known => Self::NAMED
                .iter()
                .find(|(_, s)| s == known)
                .map_or("", |(n, _)| n),
        }
    }

    /// Whether the coordinator is writing the markers of a decided commit or abort.
    pub fn is_ending(&self) -> bool {
        matches!(self, Self::PrepareCommit | Self::PrepareAbort)
    }
}

impl std::fmt::Display for CoordinatorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for CoordinatorState {
    fn from(name: &str) -> Self {
        Self::parse(name)
    }
}

/// Serialized as the broker's state name (as the CLI prints it).
impl Serialize for CoordinatorState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod fake_tests;
#[cfg(test)]
mod prepared_fake_tests;

#[cfg(test)]
mod tests {
    use super::CoordinatorState;

    #[test]
    fn coordinator_states_round_trip_and_unknown_names_are_kept() {
        for (name, state) in CoordinatorState::NAMED {
            assert_eq!(CoordinatorState::parse(name), state);
            assert_eq!(state.as_str(), name);
        }
        let newer = CoordinatorState::parse("PrepareSomethingNew");
        assert_eq!(newer, CoordinatorState::Other("PrepareSomethingNew".into()));
        assert_eq!(newer.to_string(), "PrepareSomethingNew");
        assert!(!newer.is_ending());
        assert!(CoordinatorState::PrepareAbort.is_ending());
        assert_eq!(
            serde_json::to_string(&CoordinatorState::CompleteCommit).unwrap(),
            "\"CompleteCommit\""
        );
    }
}
