//! The pure wire codec: bytes in, values out, no I/O and no clocks.
//!
//! Everything that reads bytes from the network or disk lives here so that it can be fuzzed in
//! isolation (`fuzz/`). The layer above ([`crate::connection`]) only moves frames around.
//!
//! - [`frame`]: the 4-byte length prefix every Kafka request and response carries
//!   (<https://kafka.apache.org/protocol.html#protocol_common>), with the size limit checked
//!   before any allocation.
//! - [`record_batch`]: the v2 record-batch format (magic 2, crc32c; KIP-98) that Produce writes
//!   and Fetch returns (<https://kafka.apache.org/documentation/#recordbatch>).
//! - [`compression`]: gzip, snappy (xerial framing), lz4 (frame format, KIP-57) and zstd (KIP-110).
//! - [`error_codes`]: Kafka's error-code table plus our classification for retries and transactions.
//! - [`messages`]: the request/response schemas we speak (from the `kafka-protocol` crate), the
//!   version ranges we implement, and request/response header handling.

pub mod compression;
pub mod error;
pub mod error_codes;
pub mod frame;
pub mod messages;
pub mod record_batch;
pub mod varint;

pub use error::ProtocolError;
