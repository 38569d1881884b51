//! # exactly
//!
//! End-to-end exactly-once stream processing on Kafka, in pure Rust.
//!
//! The crate is built in layers; each calls only the ones below it:
//!
//! | layer | what it does |
//! |---|---|
//! | `protocol` | pure codec: frames, record batches, compression, error-code table (no I/O) |
//! | `connection` | one TCP connection: framing, correlation ids, pipelining, version negotiation |
//! | [`client`] | cluster metadata, admin, idempotent producer, fetcher (and transactions) |
//! | [`runtime`] | operators, state, checkpoints, sources and sinks |
//! | [`jobs`] | jobs built on the runtime (card fraud detection) |
//!
//! The `exactly` binary (in `src/bin/exactly/`) sits on top. `protocol` and `connection` are
//! private: [`client`] re-exports the types its API mentions ([`client::types`]). The
//! `internals` feature makes them public for the fuzz targets, the benchmarks and the broker
//! tests.
//!
//! A transaction prepared in one process and committed in another (two-phase commit):
//!
//! ```no_run
//! use exactly::client::producer::ProducerRecord;
//! use exactly::client::transaction::{commit_prepared, TransactionConfig, TransactionalProducer};
//! use exactly::client::{Client, ClientConfig, ClientError};
//!
//! # async fn example() -> Result<(), ClientError> {
//! let client = Client::connect(ClientConfig::new("127.0.0.1:9092")).await?;
//! let producer = TransactionalProducer::init(client.clone(), TransactionConfig::new("sink-0")).await?;
//! producer.begin().await?;
//! producer.send(ProducerRecord::new("orders", "hello")).await?;
//! let prepared = producer.prepare().await?; // serializable: store it with the checkpoint
//! // ... later, in this process or a new one:
//! commit_prepared(&client, &prepared, 30_000).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
// `unsafe` lives in one module (`runtime::state::mmap`, memory-mapped snapshots), which allows it.
#![deny(unsafe_code)]
// Without `internals`, the codec's and the connection's `pub` items are crate-visible only; the
// lint is meaningful where they are public.
#![cfg_attr(feature = "internals", warn(unreachable_pub))]
#![cfg_attr(not(feature = "internals"), allow(dead_code))]

pub mod client;
#[cfg(feature = "internals")]
pub mod connection;
#[cfg(not(feature = "internals"))]
mod connection;
pub mod jobs;
#[cfg(feature = "internals")]
pub mod protocol;
#[cfg(not(feature = "internals"))]
mod protocol;
pub mod runtime;
