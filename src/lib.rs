//! # exactly
//!
//! End-to-end exactly-once stream processing on Kafka, in pure Rust.
//!
//! The crate is built in layers; each calls only the ones below it:
//!
//! | layer | what it does |
//! |---|---|
//! | [`protocol`] | pure codec: frames, record batches, compression, error-code table (no I/O) |
//! | [`connection`] | one TCP connection: framing, correlation ids, pipelining, version negotiation |
//! | [`client`] | cluster metadata, admin, idempotent producer, fetcher (and transactions) |
//! | [`runtime`] | operators, state, checkpoints, sources and sinks |
//!
//! The `exactly` binary (in `src/bin/exactly/`) sits on top.
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod client;
pub mod connection;
pub mod protocol;
pub mod runtime;
