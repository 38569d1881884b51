//! Sinks: the two-phase-commit Kafka sink ([`TwoPhaseCommitSink`]), its job-start recovery
//! ([`recover`]), and the [`IdempotentSink`] trait for systems without transactions.
//!
//! # The two-phase-commit protocol, step by step
//!
//! Kafka transactions (KIP-98,
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging>)
//! make a sink subtask's output between two checkpoint barriers atomic; the checkpoint decides
//! when it becomes visible. It is Flink's design (`TwoPhaseCommittingSink`, `KafkaSink`,
//! <https://nightlies.apache.org/flink/flink-docs-stable/docs/connectors/datastream/kafka/#fault-tolerance>),
//! with a bounded pool of transactional ids and commit-after-crash from stored identities.
//!
//! 1. **Write.** Records of epoch n (after barrier n−1) go into transaction T(n) of producer
//!    `{prefix}-{subtask}-{slot}` ([`TwoPhaseCommitSink::send`]); `read_committed` readers do
//!    not see them.
//! 2. **Barrier n → prepare.** [`TwoPhaseCommitSink::prepare`] flushes T(n) (every record
//!    acknowledged) without committing, records it pending, opens T(n+1) on another producer
//!    of the pool, and returns the pending [`KafkaCommittable`]s (T(n) and any older one not
//!    yet committed).
//! 3. **Snapshot.** The committables go into the subtask's snapshot of checkpoint n, with the
//!    source offsets after the records of epoch n.
//! 4. **Checkpoint complete.** When every snapshot of n is durable, the coordinator announces
//!    it; [`TwoPhaseCommitSink::commit_up_to`] commits T(n) (and older pending ones) in the
//!    background; the producer is then free for reuse.
//!
//! # What a crash at each point leaves, and what [`recover`] does
//!
//! | crash | restored checkpoint | left on the broker | recovery |
//! |---|---|---|---|
//! | while writing T(n) | n−1 | T(n) open | aborts it (lingering: listed, fenced) |
//! | after prepare, before the snapshot is durable | n−1 | T(n) open, prepared | aborts it (checkpoint n never completed) |
//! | after checkpoint n completed, before its commit | n | T(n) prepared | commits it from the committable |
//! | in the middle of the commit (EndTxn sent) | n | T(n) committing or committed | commits it: already committed is success (the marker in the log decides) |
//! | after the commit, while writing T(n+1) on the same id | n or n+1 | T(n) committed, T(n+1) open | T(n): AlreadyCommitted, never mistaken for T(n+1); T(n+1) aborted |
//! | during recovery itself | the same | partly finished | the same recovery again: idempotent |
//!
//! A transaction whose outcome cannot be learned is never aborted: recovery stops with
//! [`RuntimeError::SinkTransaction`] ([`SinkTxnFailure::OutcomeUnknown`]) before fencing
//! anything, and the operator restarts from the same checkpoint. Ids of subtasks that vanished
//! in a downscale are found by ListTransactions and kept in the [`OwnerMap`]; ids of a crashed
//! upscale by ListTransactions.
//!
//! KIP-890 (<https://cwiki.apache.org/confluence/display/KAFKA/KIP-890%3A+Transactions+Server-Side+Defense>)
//! bumps the epoch on every EndTxn under transactions version 2; the committable records the
//! version, so finishing it stays correct across the bump. KIP-939
//! (<https://cwiki.apache.org/confluence/display/KAFKA/KIP-939%3A+Support+Participation+in+2PC>)
//! would let a restarted producer keep its prepared transaction; it is not in released Kafka,
//! and this module does not use it yet (see [`recover`]).
//!
//! Layout: `kafka` holds the sink and its committable, `recovery` the job-start recovery, the
//! owner map and the transaction-timeout check, `idempotent` the trait and a file sink.

mod idempotent;
mod kafka;
mod recovery;

pub use idempotent::{FileSink, IdempotentSink, RecordPosition};
pub use kafka::{
    parse_transactional_id, CloseMode, CloseReport, KafkaCommittable, KafkaSinkConfig, SinkMetrics,
    SinkState, SlotState, TwoPhaseCommitSink, COMMIT_LATENCY_SAMPLES_MAX,
};
pub use recovery::{
    check_transaction_timeout, recover, validate_transaction_timeout, OwnerMap, RecoveryReport,
};

use crate::client::ClientError;
use crate::protocol::error_codes::codes;
use crate::runtime::RuntimeError;

/// What a Kafka sink promises about its output, as Flink's `DeliveryGuarantee` of its
/// `KafkaSink`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryGuarantee {
    /// Each result exactly once for `read_committed` readers: two-phase commit with the
    /// checkpoints (the module docs above). Needs checkpoints.
    #[default]
    ExactlyOnce,
    /// Each result at least once: an idempotent producer (`acks=all`, no transactions), records
    /// visible as soon as they are acknowledged; flushed on a checkpoint's barrier if the job
    /// checkpoints and at the end of the run. A restart from an earlier point writes the
    /// results since then again.
    AtLeastOnce,
}

impl DeliveryGuarantee {
    /// The spelling used in configuration: `exactly-once`, `at-least-once`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExactlyOnce => "exactly-once",
            Self::AtLeastOnce => "at-least-once",
        }
    }
}

impl std::fmt::Display for DeliveryGuarantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeliveryGuarantee {
    type Err = String;

    /// `exactly-once` or `at-least-once` (also with `_`, any case).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "exactly-once" => Ok(Self::ExactlyOnce),
            "at-least-once" => Ok(Self::AtLeastOnce),
            _ => Err(format!(
                "expected \"exactly-once\" or \"at-least-once\", got {s:?}"
            )),
        }
    }
}

/// INVALID_PRODUCER_ID_MAPPING: the coordinator no longer knows the transactional id.
const INVALID_PRODUCER_ID_MAPPING: i16 = 49;

/// Why a sink transaction could not be finished (see [`RuntimeError::SinkTransaction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkTxnFailure {
    /// It was aborted before it could be committed: its records are lost.
    Lost,
    /// Whether it committed cannot be learned now; nothing was aborted.
    OutcomeUnknown,
    /// Another producer with the same transactional id took over.
    Fenced,
    /// The coordinator no longer knows the transactional id.
    ProducerIdMapping,
}

impl SinkTxnFailure {
    /// What happened.
    pub fn what(self) -> &'static str {
        match self {
            Self::Lost => "was aborted before it could be committed, so its records are lost",
            Self::OutcomeUnknown => {
                "has an outcome that cannot be learned now; nothing was aborted"
            }
            Self::Fenced => "was fenced by another producer with the same transactional id",
            Self::ProducerIdMapping => {
                "is no longer known to the transaction coordinator (INVALID_PRODUCER_ID_MAPPING)"
            }
        }
    }

    /// Whether restarting the job (from the same checkpoint) can get past it: only for an
    /// unknown outcome, once the cluster answers again. The others need the operator first;
    /// a supervisor should stop rather than restart in a loop.
    pub fn restart_helps(self) -> bool {
        matches!(self, Self::OutcomeUnknown)
    }

    /// What the operator can do.
    pub fn advice(self) -> &'static str {
        match self {
            Self::Lost => {
                "Usually it outlived transaction_timeout_ms (keep it above the checkpoint \
                 interval plus timeout plus the time a restart takes) or another job with the \
                 same transactional_id_prefix fenced it. Exactly-once is broken for that \
                 checkpoint's output; restarting will not bring it back"
            }
            Self::OutcomeUnknown => {
                "Restart from the same checkpoint once the cluster is reachable: recovery \
                 finishes it. Do not change transactional_id_prefix or delete the checkpoint \
                 meanwhile"
            }
            Self::Fenced => {
                "Another instance of this job, or another job with the same \
                 transactional_id_prefix, is running: stop it (each job needs its own prefix), \
                 then restart from the last checkpoint"
            }
            Self::ProducerIdMapping => {
                "The transactional id expired (transactional.id.expiration.ms) or the \
                 checkpoint is older than that: its transaction cannot be finished. Restore a \
                 newer checkpoint, or accept the loss of that checkpoint's output"
            }
        }
    }
}

/// Classifies a client error about sink transaction `transactional_id`: the outcomes a
/// restart does not fix become [`RuntimeError::SinkTransaction`], the rest stays a client error.
pub(crate) fn classify(
    e: ClientError,
    checkpoint_id: Option<u64>,
    transactional_id: &str,
) -> RuntimeError {
    let failure = match &e {
        ClientError::TxnFatal { cause } => {
            return classify((**cause).clone(), checkpoint_id, transactional_id)
        }
        ClientError::PreparedTxnLost { .. } => Some(SinkTxnFailure::Lost),
        ClientError::PreparedTxnOutcomeUnknown { .. }
        | ClientError::CommitOutcomeUnknown { .. }
        | ClientError::OutcomeUnknown { .. } => Some(SinkTxnFailure::OutcomeUnknown),
        ClientError::Fenced { .. } => Some(SinkTxnFailure::Fenced),
        ClientError::Broker { code, .. }
            if code.code == codes::PRODUCER_FENCED
                || code.code == codes::INVALID_PRODUCER_EPOCH =>
        {
            Some(SinkTxnFailure::Fenced)
        }
        ClientError::Broker { code, .. } if code.code == INVALID_PRODUCER_ID_MAPPING => {
            Some(SinkTxnFailure::ProducerIdMapping)
        }
        _ => None,
    };
    match failure {
        Some(failure) => RuntimeError::SinkTransaction {
            failure,
            checkpoint_id,
            transactional_id: transactional_id.to_owned(),
            reason: e.to_string(),
        },
        None => RuntimeError::Client(e),
    }
}

#[cfg(test)]
mod tests;
