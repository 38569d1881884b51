//! Sources of the operator runtime and the event time they carry.
//!
//! A source subtask reads its share of the input, hands records to the task loop, and tells
//! where it is ([`kafka::KafkaSourceReader::positions`]) so that a checkpoint can store it: the
//! source's offsets live in the checkpoint next to the state they produced, as in Flink
//! (<https://nightlies.apache.org/flink/flink-docs-stable/docs/connectors/datastream/kafka/>),
//! which is half of end-to-end exactly once (the sink's transactions are the other half).
//!
//! | module | what it does |
//! |---|---|
//! | [`kafka`] | the Kafka source: `read_committed` fetches of the splits a subtask owns, positions for checkpoints, bounded mode, partition discovery, lag-group commits |
//! | [`assigner`] | which subtask owns which partition, deterministically in every process |
//! | [`watermark`] | bounded-out-of-orderness watermarks per split, combined by minimum, idleness |
//!
//! The task loop polls a reader inside `tokio::select!` next to its control channel, which is
//! why [`kafka::KafkaSourceReader::poll`] is cancel safe. An in-memory source for benchmarks
//! and tests sits next to these.

pub mod assigner;
pub mod kafka;
pub mod watermark;

pub use assigner::{SplitAssigner, StaticAssigner};
pub use kafka::{
    KafkaSourceConfig, KafkaSourceReader, OffsetReset, SourcePoll, SourceRecord, SplitOffset,
    StartingOffsets,
};
pub use watermark::{WatermarkConfig, WatermarkGenerator, WatermarkStatus, MAX_WATERMARK};
