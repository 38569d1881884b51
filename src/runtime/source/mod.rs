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
//! why [`kafka::KafkaSourceReader::poll`] is cancel safe. Room is left here for an in-memory
//! source (benchmarks, tests) with the same shape.
//!
//! A source task, in outline:
//!
//! ```no_run
//! use std::sync::Arc;
//! use exactly::client::{Client, ClientConfig};
//! use exactly::runtime::source::*;
//!
//! # async fn task(mut barriers: tokio::sync::mpsc::Receiver<u64>, restored: Vec<SplitOffset>)
//! #     -> Result<(), exactly::runtime::RuntimeError> {
//! let client = Client::connect(ClientConfig::new("localhost:9092")).await?;
//! let config = KafkaSourceConfig::new(["transactions"]);
//! let mut reader =
//!     KafkaSourceReader::open(client, config, 0, 2, &restored, Arc::new(StaticAssigner)).await?;
//! let mut watermarks = WatermarkGenerator::new(WatermarkConfig::default(), reader.splits().len());
//! let mut buf = Vec::new();
//! loop {
//!     tokio::select! {
//!         biased;
//!         Some(checkpoint_id) = barriers.recv() => {
//!             let offsets = reader.positions(); // goes into checkpoint `checkpoint_id`
//!             # let _ = (checkpoint_id, offsets);
//!             // ... then emit barrier `checkpoint_id` downstream
//!         }
//!         polled = reader.poll(&mut buf) => {
//!             if polled? == SourcePoll::End {
//!                 watermarks.end_of_input(); // MAX_WATERMARK: every window fires
//!                 break;
//!             }
//!             watermarks.ensure_splits(reader.splits().len());
//!             for r in buf.drain(..) {
//!                 let event_ms = r.record.timestamp; // or a field of the deserialized value
//!                 watermarks.on_record(r.split, event_ms);
//!                 // ... send downstream
//!             }
//!             # let now_ms = 0;
//!             watermarks.on_idle_check(now_ms);
//!             let _status = watermarks.current(); // send downstream when it moved
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod assigner;
pub mod kafka;
pub mod watermark;

pub use assigner::{SplitAssigner, StaticAssigner};
pub use kafka::{
    KafkaSourceConfig, KafkaSourceReader, OffsetReset, SourcePoll, SourceRecord, SplitOffset,
    StartingOffsets,
};
pub use watermark::{WatermarkConfig, WatermarkGenerator, WatermarkStatus, MAX_WATERMARK};
