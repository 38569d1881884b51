//! Kafka's error codes as data: one table holding each code's name, whether Kafka itself calls
//! it retriable, our classification for producers and transactions, and which cached routing
//! information it invalidates.
//!
//! Why a table: retry and transaction decisions are made in several places (producer, fetcher,
//! transaction coordinator calls, admin). Scattered `match` arms drift apart; one table read by
//! every caller does not. The codes, names and Kafka's `retriable` flag were generated from
//! `org.apache.kafka.common.protocol.Errors` of kafka-clients 4.1.1
//! (<https://kafka.apache.org/protocol.html#protocol_error_codes>). The [`Class`] column is ours,
//! following the transactional producer's rules (KIP-98, KIP-360, KIP-890):
//!
//! - [`Class::Retriable`]: try again after a (jittered) backoff; nothing was applied.
//! - [`Class::Abortable`]: this transaction (or this batch) cannot succeed, but the producer
//!   can abort and go on.
//! - [`Class::Fatal`]: the producer must stop (fenced, not authorized, misconfigured).
//! - [`Class::UnknownOutcome`]: the request may or may not have taken effect. Only idempotent
//!   operations may be retried; a transaction in this state is never blindly aborted.

/// How a caller should react to an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Class {
    /// Code 0: no error.
    None,
    /// Back off and retry; the request had no effect.
    Retriable,
    /// Abort the current transaction (or fail the batch); the producer stays usable.
    Abortable,
    /// Stop: the producer (or client) cannot continue.
    Fatal,
    /// The request may have been applied. Re-check instead of assuming either outcome.
    UnknownOutcome,
}

/// Which cached routing information an error invalidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refresh {
    /// Nothing to refresh.
    No,
    /// Partition leadership changed or is unknown: refresh cluster metadata.
    Metadata,
    /// The group or transaction coordinator moved: look it up again (FindCoordinator).
    Coordinator,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    /// The wire code.
    pub code: i16,
    /// Kafka's name for it, e.g. `NOT_LEADER_OR_FOLLOWER`.
    pub name: &'static str,
    /// Whether Kafka's own client treats it as retriable (`RetriableException`).
    pub kafka_retriable: bool,
    /// Our classification.
    pub class: Class,
    /// What it invalidates.
    pub refresh: Refresh,
}

impl ErrorCode {
    /// Whether this is code 0.
    pub fn is_ok(&self) -> bool {
        self.code == 0
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.code)
    }
}

/// Looks a code up. Codes the table does not know (a newer broker) are classified as
/// [`Class::Abortable`] with the name `UNKNOWN_CODE`: never retried forever, never fatal by guess.
pub fn lookup(code: i16) -> ErrorCode {
    let index = i32::from(code) + 1;
    match usize::try_from(index).ok().and_then(|i| TABLE.get(i)) {
        Some(row) if row.code == code => *row,
        _ => TABLE
            .iter()
            .find(|row| row.code == code)
            .copied()
            .unwrap_or(ErrorCode {
                code,
                name: "UNKNOWN_CODE",
                kafka_retriable: false,
                class: Class::Abortable,
                refresh: Refresh::No,
            }),
    }
}

/// Convenient names for codes the client branches on.
#[allow(missing_docs)]
pub mod codes {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const CONCURRENT_TRANSACTIONS: i16 = 51;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const PRODUCER_FENCED: i16 = 90;
    pub const TRANSACTION_ABORTABLE: i16 = 120;
}

/// The answers a coordinator gives to EndTxn(commit) that say what happened: NONE (committed)
/// or a refusal that proves this request did not commit — the codes EndTxn is documented to
/// return (`EndTxnResponse.json`; the Java client's `EndTxnHandler` handles exactly these).
/// For these codes the table's own class applies.
///
/// Any other code — one the table does not know (a newer broker), or one EndTxn has no business
/// returning, such as UNKNOWN_SERVER_ERROR — says nothing about whether the commit was applied,
/// so [`end_txn_commit`] classifies it as [`Class::UnknownOutcome`]: the transaction is re-checked
/// with the coordinator and never aborted on its strength.
pub static END_TXN_COMMIT_ANSWERS: &[i16] = &[
    0,   // NONE
    14,  // COORDINATOR_LOAD_IN_PROGRESS
    15,  // COORDINATOR_NOT_AVAILABLE
    16,  // NOT_COORDINATOR
    47,  // INVALID_PRODUCER_EPOCH
    48,  // INVALID_TXN_STATE
    49,  // INVALID_PRODUCER_ID_MAPPING
    51,  // CONCURRENT_TRANSACTIONS
    53,  // TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    90,  // PRODUCER_FENCED
    120, // TRANSACTION_ABORTABLE
];

/// Looks up a code answered to EndTxn(commit): the table's row, with the class
/// [`Class::UnknownOutcome`] for codes outside [`END_TXN_COMMIT_ANSWERS`].
pub fn end_txn_commit(code: i16) -> ErrorCode {
    let row = lookup(code);
    if END_TXN_COMMIT_ANSWERS.contains(&code) {
        row
    } else {
        ErrorCode {
            class: Class::UnknownOutcome,
            ..row
        }
    }
}

use Class::{Abortable, Fatal, None as None_, Retriable, UnknownOutcome};
use Refresh::{Coordinator, Metadata, No};

const fn row(
    code: i16,
    name: &'static str,
    kafka_retriable: bool,
    class: Class,
    refresh: Refresh,
) -> ErrorCode {
    ErrorCode {
        code,
        name,
        kafka_retriable,
        class,
        refresh,
    }
}

/// The table, ordered by code starting at -1 so that `lookup` can index it directly.
#[rustfmt::skip]
pub static TABLE: &[ErrorCode] = &[
    row(-1, "UNKNOWN_SERVER_ERROR", false, Abortable, No),
    row(0, "NONE", false, None_, No),
    row(1, "OFFSET_OUT_OF_RANGE", false, Abortable, No),
    row(2, "CORRUPT_MESSAGE", true, Retriable, No),
    row(3, "UNKNOWN_TOPIC_OR_PARTITION", true, Retriable, Metadata),
    row(4, "INVALID_FETCH_SIZE", false, Abortable, No),
    row(5, "LEADER_NOT_AVAILABLE", true, Retriable, Metadata),
    row(6, "NOT_LEADER_OR_FOLLOWER", true, Retriable, Metadata),
    row(7, "REQUEST_TIMED_OUT", true, UnknownOutcome, No),
    row(8, "BROKER_NOT_AVAILABLE", false, Abortable, No),
    row(9, "REPLICA_NOT_AVAILABLE", true, Retriable, Metadata),
    row(10, "MESSAGE_TOO_LARGE", false, Abortable, No),
    row(11, "STALE_CONTROLLER_EPOCH", false, Abortable, No),
    row(12, "OFFSET_METADATA_TOO_LARGE", false, Abortable, No),
    row(13, "NETWORK_EXCEPTION", true, Retriable, No),
    row(14, "COORDINATOR_LOAD_IN_PROGRESS", true, Retriable, No),
    row(15, "COORDINATOR_NOT_AVAILABLE", true, Retriable, Coordinator),
    row(16, "NOT_COORDINATOR", true, Retriable, Coordinator),
    row(17, "INVALID_TOPIC_EXCEPTION", false, Abortable, No),
    row(18, "RECORD_LIST_TOO_LARGE", false, Abortable, No),
    row(19, "NOT_ENOUGH_REPLICAS", true, Retriable, Metadata),
    row(20, "NOT_ENOUGH_REPLICAS_AFTER_APPEND", true, Retriable, No),
    row(21, "INVALID_REQUIRED_ACKS", false, Fatal, No),
    row(22, "ILLEGAL_GENERATION", false, Abortable, No),
    row(23, "INCONSISTENT_GROUP_PROTOCOL", false, Abortable, No),
    row(24, "INVALID_GROUP_ID", false, Abortable, No),
    row(25, "UNKNOWN_MEMBER_ID", false, Abortable, No),
    row(26, "INVALID_SESSION_TIMEOUT", false, Abortable, No),
    row(27, "REBALANCE_IN_PROGRESS", false, Abortable, No),
    row(28, "INVALID_COMMIT_OFFSET_SIZE", false, Abortable, No),
    row(29, "TOPIC_AUTHORIZATION_FAILED", false, Abortable, No),
    row(30, "GROUP_AUTHORIZATION_FAILED", false, Abortable, No),
    row(31, "CLUSTER_AUTHORIZATION_FAILED", false, Fatal, No),
    row(32, "INVALID_TIMESTAMP", false, Abortable, No),
    row(33, "UNSUPPORTED_SASL_MECHANISM", false, Fatal, No),
    row(34, "ILLEGAL_SASL_STATE", false, Fatal, No),
    row(35, "UNSUPPORTED_VERSION", false, Fatal, No),
    row(36, "TOPIC_ALREADY_EXISTS", false, Abortable, No),
    row(37, "INVALID_PARTITIONS", false, Abortable, No),
    row(38, "INVALID_REPLICATION_FACTOR", false, Abortable, No),
    row(39, "INVALID_REPLICA_ASSIGNMENT", false, Abortable, No),
    row(40, "INVALID_CONFIG", false, Abortable, No),
    row(41, "NOT_CONTROLLER", true, Retriable, No),
    row(42, "INVALID_REQUEST", false, Fatal, No),
    row(43, "UNSUPPORTED_FOR_MESSAGE_FORMAT", false, Fatal, No),
    row(44, "POLICY_VIOLATION", false, Abortable, No),
    row(45, "OUT_OF_ORDER_SEQUENCE_NUMBER", false, Abortable, No),
    row(46, "DUPLICATE_SEQUENCE_NUMBER", false, Abortable, No),
    row(47, "INVALID_PRODUCER_EPOCH", false, Fatal, No),
    row(48, "INVALID_TXN_STATE", false, Fatal, No),
    row(49, "INVALID_PRODUCER_ID_MAPPING", false, Abortable, No),
    row(50, "INVALID_TRANSACTION_TIMEOUT", false, Fatal, No),
    row(51, "CONCURRENT_TRANSACTIONS", true, Retriable, No),
    row(52, "TRANSACTION_COORDINATOR_FENCED", false, Abortable, No),
    row(53, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", false, Fatal, No),
    row(54, "SECURITY_DISABLED", false, Abortable, No),
    row(55, "OPERATION_NOT_ATTEMPTED", false, Abortable, No),
    row(56, "KAFKA_STORAGE_ERROR", true, Retriable, Metadata),
    row(57, "LOG_DIR_NOT_FOUND", false, Abortable, No),
    row(58, "SASL_AUTHENTICATION_FAILED", false, Fatal, No),
    row(59, "UNKNOWN_PRODUCER_ID", false, Abortable, No),
    row(60, "REASSIGNMENT_IN_PROGRESS", false, Abortable, No),
    row(61, "DELEGATION_TOKEN_AUTH_DISABLED", false, Abortable, No),
    row(62, "DELEGATION_TOKEN_NOT_FOUND", false, Abortable, No),
    row(63, "DELEGATION_TOKEN_OWNER_MISMATCH", false, Abortable, No),
    row(64, "DELEGATION_TOKEN_REQUEST_NOT_ALLOWED", false, Abortable, No),
    row(65, "DELEGATION_TOKEN_AUTHORIZATION_FAILED", false, Abortable, No),
    row(66, "DELEGATION_TOKEN_EXPIRED", false, Abortable, No),
    row(67, "INVALID_PRINCIPAL_TYPE", false, Abortable, No),
    row(68, "NON_EMPTY_GROUP", false, Abortable, No),
    row(69, "GROUP_ID_NOT_FOUND", false, Abortable, No),
    row(70, "FETCH_SESSION_ID_NOT_FOUND", true, Retriable, No),
    row(71, "INVALID_FETCH_SESSION_EPOCH", true, Retriable, No),
    row(72, "LISTENER_NOT_FOUND", true, Retriable, No),
    row(73, "TOPIC_DELETION_DISABLED", false, Abortable, No),
    row(74, "FENCED_LEADER_EPOCH", true, Retriable, Metadata),
    row(75, "UNKNOWN_LEADER_EPOCH", true, Retriable, Metadata),
    row(76, "UNSUPPORTED_COMPRESSION_TYPE", false, Fatal, No),
    row(77, "STALE_BROKER_EPOCH", false, Abortable, No),
    row(78, "OFFSET_NOT_AVAILABLE", true, Retriable, Metadata),
    row(79, "MEMBER_ID_REQUIRED", false, Abortable, No),
    row(80, "PREFERRED_LEADER_NOT_AVAILABLE", true, Retriable, No),
    row(81, "GROUP_MAX_SIZE_REACHED", false, Abortable, No),
    row(82, "FENCED_INSTANCE_ID", false, Fatal, No),
    row(83, "ELIGIBLE_LEADERS_NOT_AVAILABLE", true, Retriable, No),
    row(84, "ELECTION_NOT_NEEDED", true, Retriable, No),
    row(85, "NO_REASSIGNMENT_IN_PROGRESS", false, Abortable, No),
    row(86, "GROUP_SUBSCRIBED_TO_TOPIC", false, Abortable, No),
    row(87, "INVALID_RECORD", false, Abortable, No),
    row(88, "UNSTABLE_OFFSET_COMMIT", true, Retriable, No),
    row(89, "THROTTLING_QUOTA_EXCEEDED", true, Retriable, No),
    row(90, "PRODUCER_FENCED", false, Fatal, No),
    row(91, "RESOURCE_NOT_FOUND", false, Abortable, No),
    row(92, "DUPLICATE_RESOURCE", false, Abortable, No),
    row(93, "UNACCEPTABLE_CREDENTIAL", false, Abortable, No),
    row(94, "INCONSISTENT_VOTER_SET", false, Fatal, No),
    row(95, "INVALID_UPDATE_VERSION", false, Abortable, No),
    row(96, "FEATURE_UPDATE_FAILED", false, Abortable, No),
    row(97, "PRINCIPAL_DESERIALIZATION_FAILURE", false, Abortable, No),
    row(98, "SNAPSHOT_NOT_FOUND", false, Abortable, No),
    row(99, "POSITION_OUT_OF_RANGE", false, Abortable, No),
    row(100, "UNKNOWN_TOPIC_ID", true, Retriable, Metadata),
    row(101, "DUPLICATE_BROKER_REGISTRATION", false, Abortable, No),
    row(102, "BROKER_ID_NOT_REGISTERED", false, Abortable, No),
    row(103, "INCONSISTENT_TOPIC_ID", true, Retriable, Metadata),
    row(104, "INCONSISTENT_CLUSTER_ID", false, Abortable, No),
    row(105, "TRANSACTIONAL_ID_NOT_FOUND", false, Fatal, No),
    row(106, "FETCH_SESSION_TOPIC_ID_ERROR", true, Retriable, No),
    row(107, "INELIGIBLE_REPLICA", false, Abortable, No),
    row(108, "NEW_LEADER_ELECTED", false, Abortable, No),
    row(109, "OFFSET_MOVED_TO_TIERED_STORAGE", false, Abortable, No),
    row(110, "FENCED_MEMBER_EPOCH", false, Abortable, No),
    row(111, "UNRELEASED_INSTANCE_ID", false, Abortable, No),
    row(112, "UNSUPPORTED_ASSIGNOR", false, Abortable, No),
    row(113, "STALE_MEMBER_EPOCH", false, Abortable, No),
    row(114, "MISMATCHED_ENDPOINT_TYPE", false, Abortable, No),
    row(115, "UNSUPPORTED_ENDPOINT_TYPE", false, Abortable, No),
    row(116, "UNKNOWN_CONTROLLER_ID", false, Abortable, No),
    row(117, "UNKNOWN_SUBSCRIPTION_ID", false, Abortable, No),
    row(118, "TELEMETRY_TOO_LARGE", false, Abortable, No),
    row(119, "INVALID_REGISTRATION", false, Abortable, No),
    row(120, "TRANSACTION_ABORTABLE", false, Abortable, No),
    row(121, "INVALID_RECORD_STATE", false, Abortable, No),
    row(122, "SHARE_SESSION_NOT_FOUND", true, Retriable, No),
    row(123, "INVALID_SHARE_SESSION_EPOCH", true, Retriable, No),
    row(124, "FENCED_STATE_EPOCH", false, Abortable, No),
    row(125, "INVALID_VOTER_KEY", false, Abortable, No),
    row(126, "DUPLICATE_VOTER", false, Abortable, No),
    row(127, "VOTER_NOT_FOUND", false, Abortable, No),
    row(128, "INVALID_REGULAR_EXPRESSION", false, Abortable, No),
    row(129, "REBOOTSTRAP_REQUIRED", false, Abortable, No),
    row(130, "STREAMS_INVALID_TOPOLOGY", false, Abortable, No),
    row(131, "STREAMS_INVALID_TOPOLOGY_EPOCH", false, Abortable, No),
    row(132, "STREAMS_TOPOLOGY_FENCED", false, Abortable, No),
    row(133, "SHARE_SESSION_LIMIT_REACHED", true, Retriable, No),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_dense_and_ordered() {
        for (i, row) in TABLE.iter().enumerate() {
            assert_eq!(
                i32::from(row.code),
                i as i32 - 1,
                "row {} out of order",
                row.name
            );
        }
    }

    #[test]
    fn transaction_classes() {
        assert_eq!(lookup(codes::PRODUCER_FENCED).class, Class::Fatal);
        assert_eq!(lookup(codes::INVALID_PRODUCER_EPOCH).class, Class::Fatal);
        assert_eq!(
            lookup(codes::CONCURRENT_TRANSACTIONS).class,
            Class::Retriable
        );
        assert_eq!(lookup(codes::NOT_COORDINATOR).refresh, Refresh::Coordinator);
        assert_eq!(
            lookup(codes::NOT_LEADER_OR_FOLLOWER).refresh,
            Refresh::Metadata
        );
        assert_eq!(
            lookup(codes::REQUEST_TIMED_OUT).class,
            Class::UnknownOutcome
        );
        assert_eq!(lookup(codes::TRANSACTION_ABORTABLE).class, Class::Abortable);
    }

    #[test]
    fn unexpected_end_txn_commit_answers_leave_the_outcome_unknown() {
        for code in [
            -1,
            9999,
            codes::UNKNOWN_PRODUCER_ID,
            codes::OFFSET_OUT_OF_RANGE,
        ] {
            assert_eq!(end_txn_commit(code).class, Class::UnknownOutcome, "{code}");
        }
        assert_eq!(end_txn_commit(-1).name, "UNKNOWN_SERVER_ERROR");
        assert_eq!(end_txn_commit(codes::PRODUCER_FENCED).class, Class::Fatal);
        assert_eq!(
            end_txn_commit(codes::CONCURRENT_TRANSACTIONS).class,
            Class::Retriable
        );
        assert_eq!(
            end_txn_commit(codes::TRANSACTION_ABORTABLE).class,
            Class::Abortable
        );
        // Every listed code is one the table knows.
        for code in END_TXN_COMMIT_ANSWERS {
            assert_ne!(lookup(*code).name, "UNKNOWN_CODE", "{code}");
        }
    }

    #[test]
    fn unknown_codes_are_abortable_not_fatal() {
        let row = lookup(9999);
        assert_eq!(row.name, "UNKNOWN_CODE");
        assert_eq!(row.class, Class::Abortable);
        assert_eq!(row.to_string(), "UNKNOWN_CODE (9999)");
    }
}
