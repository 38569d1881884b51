//! The client layer's error type.

use crate::connection::ConnectionError;
use crate::protocol::error_codes::{Class, ErrorCode};
use crate::protocol::ProtocolError;

/// Errors from the cluster client, admin, producer and fetcher.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// A connection-level failure (the layer below).
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The broker answered with an error code.
    #[error("{api}{}: {code}{}", location(topic.as_deref(), *partition), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Broker {
        /// The API called.
        api: &'static str,
        /// The error code and its classification.
        code: ErrorCode,
        /// The topic, if the error is about one.
        topic: Option<String>,
        /// The partition, if the error is about one.
        partition: Option<i32>,
        /// The broker's error message, if it sent one.
        message: Option<String>,
    },
    /// No bootstrap broker could be reached.
    #[error("no broker reachable at {bootstrap}: {last_error}")]
    NoBrokers {
        /// The bootstrap list tried.
        bootstrap: String,
        /// The last failure seen.
        last_error: Box<ConnectionError>,
    },
    /// The topic does not exist.
    #[error("unknown topic {topic:?}")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The partition does not exist.
    #[error("topic {topic:?} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// How many partitions the topic has.
        partitions: i32,
    },
    /// A retried operation did not succeed before its deadline.
    #[error("{what} did not succeed within {deadline_ms} ms ({attempts} attempts): {last}")]
    RetriesExhausted {
        /// The operation.
        what: &'static str,
        /// How many attempts were made.
        attempts: u32,
        /// The deadline.
        deadline_ms: u64,
        /// The last error seen.
        last: Box<ClientError>,
    },
    /// Fetch asked for an offset outside the log.
    #[error("offset {offset} is out of range for {topic}/{partition}")]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset asked for.
        offset: i64,
    },
    /// Fetched data could not be decoded.
    #[error("corrupt data in {topic}/{partition} near offset {offset}: {source}")]
    CorruptData {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The fetch offset.
        offset: i64,
        /// The decoding error.
        source: ProtocolError,
    },
    /// One batch at the fetch position decompresses to more than the fetcher's budget for a
    /// whole fetch response, so the fetch cannot make progress.
    #[error("{topic}/{partition} at offset {offset}: the batch there decompresses to more than the {limit_bytes} bytes a fetch response may decompress to (FetchConfig::response_decompressed_bytes_max)")]
    ResponseDecompressedTooLarge {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The fetch offset.
        offset: i64,
        /// The configured limit.
        limit_bytes: usize,
    },
    /// A request could not be encoded (e.g. a record is malformed).
    #[error(transparent)]
    Encode(#[from] ProtocolError),
    /// A record is larger than the producer accepts.
    #[error("record of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    RecordTooLarge {
        /// The record's encoded size.
        size_bytes: usize,
        /// The producer's `request_bytes_max`.
        limit_bytes: usize,
    },
    /// A record was not acknowledged within the delivery timeout; it may or may not be written.
    #[error("record for {topic}/{partition} not acknowledged within {timeout_ms} ms")]
    DeliveryTimeout {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The limit.
        timeout_ms: u64,
    },
    /// The producer stopped accepting work, for the reason given.
    #[error("producer is closed: {reason}")]
    ProducerClosed {
        /// Why.
        reason: String,
    },
    /// Another producer with the same transactional id took over (or the broker aborted this
    /// producer's transaction on timeout and bumped its epoch). This producer cannot continue.
    #[error("transactional id {transactional_id:?} (producer {producer_id}, epoch {producer_epoch}) was fenced: {code}")]
    Fenced {
        /// The transactional id.
        transactional_id: String,
        /// Our producer id.
        producer_id: i64,
        /// Our epoch.
        producer_epoch: i16,
        /// The error code the broker gave.
        code: ErrorCode,
    },
    /// The operation is not allowed in the transactional producer's current state.
    #[error("cannot {operation} in transaction state {state}")]
    InvalidTxnState {
        /// What was attempted.
        operation: &'static str,
        /// The state the producer is in.
        state: &'static str,
    },
    /// The current transaction failed and must be aborted; the producer stays usable.
    #[error("transaction must be aborted: {cause}")]
    TxnAbortable {
        /// Why.
        cause: Box<ClientError>,
    },
    /// The producer hit a fatal error earlier and refuses further work.
    #[error("transactional producer stopped after a fatal error: {cause}")]
    TxnFatal {
        /// The fatal error.
        cause: Box<ClientError>,
    },
    /// A commit was sent but its outcome could not be learned. The transaction was NOT aborted.
    #[error("outcome of committing transaction {transactional_id:?} is unknown (last error: {cause}); re-check before retrying")]
    CommitOutcomeUnknown {
        /// The transactional id.
        transactional_id: String,
        /// The last error seen.
        cause: Box<ClientError>,
    },
    /// A prepared transaction can no longer be committed: the broker aborted it (usually because
    /// it outlived `transaction.timeout.ms`) or a newer producer fenced it.
    #[error("prepared transaction {transactional_id:?} (producer {producer_id}, epoch {producer_epoch}) cannot be {action}: {reason}")]
    PreparedTxnLost {
        /// `committed` or `aborted`: what was asked.
        action: &'static str,
        /// The transactional id.
        transactional_id: String,
        /// The stored producer id.
        producer_id: i64,
        /// The stored epoch.
        producer_epoch: i16,
        /// What the coordinator said (error code and transaction state).
        reason: String,
    },
    /// How a prepared transaction ended cannot be learned: the coordinator has moved on to a
    /// later transaction of the same id and the partition logs no longer show the transaction's
    /// marker (deleted, truncated or compacted), or the search did not finish in time. This
    /// call did not end it, unless `reason` says that an EndTxn it sent may have applied.
    #[error("outcome of prepared transaction {transactional_id:?} (producer {producer_id}, epoch {producer_epoch}) is unknown; it could not be {action}: {reason}")]
    PreparedTxnOutcomeUnknown {
        /// `committed` or `aborted`: what was asked.
        action: &'static str,
        /// The transactional id.
        transactional_id: String,
        /// The stored producer id.
        producer_id: i64,
        /// The stored epoch.
        producer_epoch: i16,
        /// What the logs and the coordinator said.
        reason: String,
    },
    /// A request that may have taken effect (an attempt timed out) was retried, and a later
    /// attempt failed for another reason: whether it took effect is unknown.
    #[error("{what} may have taken effect (an attempt failed with: {maybe_applied}); the last attempt failed with: {last}")]
    OutcomeUnknown {
        /// The operation.
        what: &'static str,
        /// The attempt that may have taken effect.
        maybe_applied: Box<ClientError>,
        /// The last error seen.
        last: Box<ClientError>,
    },
    /// The transaction timeout is larger than the broker allows.
    #[error("transaction timeout {timeout_ms} ms exceeds the broker's transaction.max.timeout.ms ({broker_max_ms} ms)")]
    TransactionTimeoutTooLarge {
        /// What was configured.
        timeout_ms: i32,
        /// The broker's limit.
        broker_max_ms: i64,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration {field}: {message}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn location(topic: Option<&str>, partition: Option<i32>) -> String {
    match (topic, partition) {
        (Some(t), Some(p)) => format!(" {t}/{p}"),
        (Some(t), None) => format!(" {t}"),
        _ => String::new(),
    }
}

impl ClientError {
    /// A broker error about one API (and optionally a topic/partition).
    pub fn broker(api: &'static str, code: i16) -> Self {
        Self::Broker {
            api,
            code: crate::protocol::error_codes::lookup(code),
            topic: None,
            partition: None,
            message: None,
        }
    }

    /// Adds a topic and partition to a broker error.
    pub fn at(mut self, t: &str, p: Option<i32>) -> Self {
        if let Self::Broker {
            topic, partition, ..
        } = &mut self
        {
            *topic = Some(t.to_owned());
            *partition = p;
        }
        self
    }

    /// How a caller should react, per the error-code table. Disconnects are retriable;
    /// timeouts leave the outcome unknown.
    pub fn class(&self) -> Class {
        match self {
            Self::Broker { code, .. } => code.class,
            Self::Connection(ConnectionError::Timeout { .. }) => Class::UnknownOutcome,
            // TLS and SASL failures (issue 10): the same settings fail the same way again; never
            // retried as disconnects.
            Self::Connection(e) if e.is_security() => Class::Fatal,
            Self::Connection(e) if e.is_disconnect() => Class::Retriable,
            Self::NoBrokers { .. } => Class::Retriable,
            Self::DeliveryTimeout { .. } => Class::UnknownOutcome,
            Self::PreparedTxnOutcomeUnknown { .. } => Class::UnknownOutcome,
            Self::OutcomeUnknown { .. } => Class::UnknownOutcome,
            Self::RetriesExhausted { last, .. } => match last.class() {
                Class::Retriable => Class::Abortable,
                other => other,
            },
            // No wildcard: a new variant must be given its class here, on purpose.
            // Framing lost, no common version, an ApiVersions refusal: retrying cannot help.
            Self::Connection(_) => Class::Fatal,
            // The caller named something that does not exist, or asked for an impossible offset.
            Self::UnknownTopic { .. }
            | Self::UnknownPartition { .. }
            | Self::OffsetOutOfRange { .. } => Class::Fatal,
            // Bytes that cannot be trusted or built: the same bytes fail the same way again.
            Self::CorruptData { .. }
            | Self::ResponseDecompressedTooLarge { .. }
            | Self::Encode(_)
            | Self::RecordTooLarge { .. } => Class::Fatal,
            // The producer or transaction can no longer be used as it is.
            Self::ProducerClosed { .. }
            | Self::Fenced { .. }
            | Self::InvalidTxnState { .. }
            | Self::TxnFatal { .. } => Class::Fatal,
            Self::TxnAbortable { .. } => Class::Abortable,
            // Already the verdict on a transaction's outcome or a configuration: nothing to retry.
            Self::CommitOutcomeUnknown { .. } => Class::UnknownOutcome,
            Self::PreparedTxnLost { .. }
            | Self::TransactionTimeoutTooLarge { .. }
            | Self::Config { .. } => Class::Fatal,
        }
    }

    /// Whether retrying the same request may succeed and is safe.
    pub fn is_retriable(&self) -> bool {
        self.class() == Class::Retriable
    }
}
