//! The protocol layer's error type.

/// Errors from decoding or encoding bytes. Every variant names what was wrong with the input, so a
/// corrupt frame or batch can be reported without guessing.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame's length prefix is larger than the configured maximum (checked before allocating).
    #[error("frame of {actual} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The configured maximum (`frame_bytes_max`).
        limit: usize,
        /// The length announced by the prefix.
        actual: usize,
    },
    /// A frame's length prefix is negative or too small to hold a header.
    #[error("invalid frame length {length}")]
    InvalidFrameLength {
        /// The length announced by the prefix.
        length: i32,
    },
    /// A kafka-protocol schema failed to encode or decode.
    #[error("{api} v{version}: {message}")]
    Schema {
        /// The API (e.g. `Fetch`) whose message failed.
        api: &'static str,
        /// The API version used.
        version: i16,
        /// The codec's description of the failure.
        message: String,
    },
    /// A decoded response did not consume its whole frame.
    #[error("{api} v{version}: {left} bytes left over after decoding the response")]
    TrailingBytes {
        /// The API whose response had trailing bytes.
        api: &'static str,
        /// The API version used.
        version: i16,
        /// How many bytes were left.
        left: usize,
    },
    /// A record batch or record is malformed. `what` says which field and why.
    #[error("corrupt record batch at byte {position}: {what}")]
    CorruptBatch {
        /// Byte offset within the input where the problem was found.
        position: usize,
        /// Which field was wrong, and how.
        what: String,
    },
    /// The stored CRC does not match the batch contents.
    #[error("record batch crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC carried by the batch.
        stored: u32,
        /// CRC computed over the bytes received.
        computed: u32,
    },
    /// A batch uses a message format other than v2 (magic 2).
    #[error("unsupported record batch magic {magic} (only v2 is supported)")]
    UnsupportedMagic {
        /// The magic byte found.
        magic: i8,
    },
    /// Compression or decompression failed.
    #[error("{codec} {direction} failed: {message}")]
    Compression {
        /// `gzip`, `snappy`, `lz4` or `zstd`.
        codec: &'static str,
        /// `compression` or `decompression`.
        direction: &'static str,
        /// The codec's description.
        message: String,
    },
    /// Decompressed data would exceed the limit (a decompression bomb or a corrupt batch).
    #[error("decompressed batch exceeds the limit of {limit} bytes")]
    DecompressedTooLarge {
        /// The configured maximum.
        limit: usize,
    },
    /// Decompressing the next batch would exceed what is left of the decompression budget of
    /// the whole record set (see `BatchIter::with_decompressed_budget`).
    #[error("decompressing the batch at offset {base_offset} would exceed the {remaining} bytes left of the decompression budget")]
    DecompressedBudgetExceeded {
        /// Offset of the batch that did not fit.
        base_offset: i64,
        /// Bytes of the budget left before that batch.
        remaining: usize,
    },
    /// The compression codec id in the batch attributes is not one Kafka defines.
    #[error("unknown compression codec id {id}")]
    UnknownCompression {
        /// The 3-bit codec id.
        id: u8,
    },
}
