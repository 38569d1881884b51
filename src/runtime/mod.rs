//! The operator runtime: end-to-end exactly-once stream processing on the client.
//!
//! It is Flink's design — checkpoints by aligned barriers (Chandy–Lamport, see
//! <https://arxiv.org/abs/1506.08603>), keyed state partitioned into key groups, source offsets
//! kept in the checkpoint, and a two-phase-commit Kafka sink (KIP-98 transactions, prepared on
//! the barrier and committed when the checkpoint is complete) — in one process, on tokio tasks.
//!
//! | module | what it does |
//! |---|---|
//! | [`job`](mod@job) | the typed job graph: source, chained stages, `key_by`, windows or a keyed process function, sink |
//! | [`operator`], [`window`] | keyed operators: process functions with state and timers; tumbling, sliding and session windows |
//! | `task` (private) | source and keyed subtasks, the exchange by key group, barrier alignment |
//! | `run` (private) | restore, sink recovery, replay past a damaged checkpoint, the checkpoint coordinator |
//! | [`connector`], [`kafka`] | what a source and a sink must offer; in-memory ones; the Kafka source and sink as connectors |
//! | [`state`] | keyed state tables and timers per key group, rkyv snapshot files, the checkpoint store |
//! | [`source`] | the Kafka source (offsets in the checkpoint), watermarks |
//! | [`sink`] | the two-phase-commit Kafka sink, its recovery, the idempotent-sink trait |
//! | [`metrics`], [`fault`] | the metrics registry; fault points for crash tests |
//!
//! Everything here calls only [`crate::client`] below it.

pub mod connector;
mod error;
pub mod fault;
pub mod job;
pub mod kafka;
pub mod metrics;
pub mod operator;
mod run;
pub mod sink;
pub mod source;
pub mod state;
mod task;
pub mod window;

pub use error::RuntimeError;
pub use job::{job, CheckpointConfig, Job, JobConfig};
pub use run::{JobReport, COMMITTABLES_PROPERTY, POSITIONS_PROPERTY};
pub use source::WatermarkConfig;
