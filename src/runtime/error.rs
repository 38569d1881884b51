//! The runtime layer's error type.

use std::path::PathBuf;

use crate::client::ClientError;

/// Errors from the operator runtime: state, checkpoints, sources, sinks and the job graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A client call failed (the layer below).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "fsync", "rename", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A snapshot or checkpoint file is corrupt, truncated or half-written.
    #[error("corrupt checkpoint file {path}: {reason}")]
    CorruptCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting is missing, malformed or impossible.
    #[error("invalid configuration {key}: {reason}")]
    Config {
        /// The setting.
        key: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A checkpoint did not complete (timeout, failed subtask, shutdown).
    #[error("checkpoint {checkpoint_id} failed: {reason}")]
    CheckpointFailed {
        /// The checkpoint.
        checkpoint_id: u64,
        /// Why.
        reason: String,
    },
    /// A task of the job stopped with an error or panicked.
    #[error("task {task} failed: {reason}")]
    TaskFailed {
        /// The task ("source 0", "keyed 1", ...).
        task: String,
        /// Why.
        reason: String,
    },
    // Helpers: add the variants your module needs below this line, in your own block with a
    // comment naming the module; the integrator merges the blocks.

    // --- source (src/runtime/source) ---
    /// A Kafka source's position is outside its partition's log: the records there were
    /// deleted (retention, `DeleteRecords`) or the topic was re-created. Reading on would skip
    /// or replay records, so the source stops unless told to reset
    /// (`KafkaSourceConfig::offset_out_of_range`).
    #[error(
        "{topic}/{partition}: source position {offset} is outside the log, which holds offsets \
         {log_start_offset}..{log_end_offset} (records deleted by retention, or the topic was \
         re-created); set KafkaSourceConfig::offset_out_of_range to OffsetReset::Earliest to \
         continue from the log start instead"
    )]
    SourceOffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The position the source tried to read at.
        offset: i64,
        /// The partition's log start offset now.
        log_start_offset: i64,
        /// The end of the partition's log now (under the source's isolation).
        log_end_offset: i64,
    },
    // --- sink (src/runtime/sink): the two-phase-commit Kafka sink and its recovery ---
    /// A transaction of the two-phase-commit sink could not be finished, and a restart alone
    /// does not fix it: the message says what happened and what the operator can do.
    #[error("sink transaction {transactional_id:?}{}: {} ({reason}). {}", checkpoint_label(.checkpoint_id), .failure.what(), .failure.advice())]
    SinkTransaction {
        /// What kind of failure.
        failure: crate::runtime::sink::SinkTxnFailure,
        /// The checkpoint the transaction belongs to (none for a lingering one).
        checkpoint_id: Option<u64>,
        /// The transactional id.
        transactional_id: String,
        /// What the client reported.
        reason: String,
    },
    /// No producer of a sink subtask's pool is free for the next transaction.
    #[error("sink subtask {subtask}: no free producer in its pool of {pool_size}: {reason}")]
    SinkPoolExhausted {
        /// The sink subtask.
        subtask: u32,
        /// The pool size (`KafkaSinkConfig::pool_size`).
        pool_size: u32,
        /// Which checkpoints hold the producers, and what to do.
        reason: String,
    },
    /// A sink call that its lifecycle state does not allow.
    #[error("sink subtask {subtask}: cannot {operation}: {reason}")]
    SinkInvalidCall {
        /// The sink subtask.
        subtask: u32,
        /// The call.
        operation: &'static str,
        /// Why not.
        reason: String,
    },
    // --- end sink ---
    // --- state (src/runtime/state): snapshot files and the checkpoint store ---
    /// State could not be written to a snapshot (serialization failed, a limit was exceeded).
    #[error("cannot snapshot {what}: {reason}")]
    SnapshotWrite {
        /// The section or file being written.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

/// " of checkpoint n", or nothing (sink errors).
fn checkpoint_label(checkpoint_id: &Option<u64>) -> String {
    checkpoint_id.map_or_else(String::new, |n| format!(" of checkpoint {n}"))
}
