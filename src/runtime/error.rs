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
