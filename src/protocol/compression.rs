//! Batch compression, byte-compatible with Kafka's Java client
//! (<https://kafka.apache.org/documentation/#recordbatch>: attributes bits 0-2).
//!
//! - gzip: RFC 1952 streams.
//! - snappy: the **xerial** framing the Java client writes (`\x82SNAPPY\0`, two version ints,
//!   then length-prefixed raw snappy blocks); a bare raw snappy block is accepted too, as
//!   librdkafka writes it.
//! - lz4: the LZ4 **frame** format with a correct header checksum (KIP-57), independent blocks.
//! - zstd: standard zstd frames (KIP-110).
//!
//! Decompression never produces more than `decompressed_bytes_max` bytes: a decompression
//! bomb or a corrupt length is an error, not an allocation.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};

use super::ProtocolError;

/// A batch compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// gzip (id 1).
    Gzip,
    /// snappy (id 2).
    Snappy,
    /// lz4 (id 3).
    Lz4,
    /// zstd (id 4).
    Zstd,
}

impl Compression {
    /// The codec's id in the batch attributes.
    pub fn id(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }

    /// The codec for an attributes id.
    pub fn from_id(id: u8) -> Result<Self, ProtocolError> {
        Ok(match id {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            _ => return Err(ProtocolError::UnknownCompression { id }),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "snappy" => Ok(Self::Snappy),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd),
            other => Err(format!(
                "unknown compression {other:?} (none, gzip, snappy, lz4 or zstd)"
            )),
        }
    }
}

const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

fn error(codec: Compression, direction: &'static str, e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Compression {
        codec: codec.name(),
        direction,
        message: e.to_string(),
    }
}

/// Compresses `input` with `codec`, appending to `out`.
pub fn compress(codec: Compression, input: &[u8], out: &mut BytesMut) -> Result<(), ProtocolError> {
    let err = |e: std::io::Error| error(codec, "compression", e);
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out.writer(), flate2::Compression::fast());
            enc.write_all(input).map_err(err)?;
            enc.finish().map_err(err)?;
        }
        Compression::Snappy => {
            out.extend_from_slice(&XERIAL_MAGIC);
            out.put_i32(1); // version
            out.put_i32(1); // minimum compatible version
            let mut encoder = snap::raw::Encoder::new();
            for block in input.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|e| error(codec, "compression", e))?;
                out.put_i32(compressed.len() as i32);
                out.extend_from_slice(&compressed);
            }
        }
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out.writer());
            enc.write_all(input).map_err(err)?;
            enc.finish().map_err(|e| error(codec, "compression", e))?;
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out.writer(), 3).map_err(err)?;
            enc.write_all(input).map_err(err)?;
            enc.finish().map_err(err)?;
        }
    }
    Ok(())
}

/// Decompresses `input`, producing at most `decompressed_bytes_max` bytes.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    decompressed_bytes_max: usize,
) -> Result<Bytes, ProtocolError> {
    match codec {
        Compression::None => {
            if input.len() > decompressed_bytes_max {
                return Err(ProtocolError::DecompressedTooLarge {
                    limit: decompressed_bytes_max,
                });
            }
            Ok(Bytes::copy_from_slice(input))
        }
        Compression::Gzip => read_limited(
            codec,
            flate2::read::GzDecoder::new(input),
            decompressed_bytes_max,
        ),
        Compression::Lz4 => read_limited(
            codec,
            lz4_flex::frame::FrameDecoder::new(input),
            decompressed_bytes_max,
        ),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| error(codec, "decompression", e))?;
            read_limited(codec, decoder, decompressed_bytes_max)
        }
        Compression::Snappy => snappy_decompress(input, decompressed_bytes_max),
    }
}

fn read_limited(
    codec: Compression,
    reader: impl Read,
    limit: usize,
) -> Result<Bytes, ProtocolError> {
    let mut out = Vec::new();
    let read = reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| error(codec, "decompression", e))?;
    if read > limit {
        return Err(ProtocolError::DecompressedTooLarge { limit });
    }
    Ok(Bytes::from(out))
}

fn snappy_decompress(input: &[u8], limit: usize) -> Result<Bytes, ProtocolError> {
    let codec = Compression::Snappy;
    let mut decoder = snap::raw::Decoder::new();
    let mut raw_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), ProtocolError> {
        let len = snap::raw::decompress_len(block).map_err(|e| error(codec, "decompression", e))?;
        if out.len().saturating_add(len) > limit {
            return Err(ProtocolError::DecompressedTooLarge { limit });
        }
        let start = out.len();
        out.resize(start + len, 0);
        decoder
            .decompress(block, &mut out[start..])
            .map_err(|e| error(codec, "decompression", e))?;
        Ok(())
    };
    let mut out = Vec::new();
    if !input.starts_with(&XERIAL_MAGIC) {
        raw_block(input, &mut out)?;
        return Ok(Bytes::from(out));
    }
    let mut rest = input
        .get(16..)
        .ok_or_else(|| error(codec, "decompression", "truncated xerial header"))?;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| error(codec, "decompression", "truncated xerial block length"))?;
        let len = usize::try_from(i32::from_be_bytes(*len))
            .map_err(|_| error(codec, "decompression", "negative xerial block length"))?;
        let block = tail
            .get(..len)
            .ok_or_else(|| error(codec, "decompression", "xerial block runs past the end"))?;
        raw_block(block, &mut out)?;
        rest = &tail[len..];
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn round_trip_every_codec_across_blocks() {
        let input: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in ALL {
            let mut out = BytesMut::new();
            compress(codec, &input, &mut out).unwrap();
            assert_eq!(
                decompress(codec, &out, input.len()).unwrap(),
                input,
                "{codec}"
            );
            let err = decompress(codec, &out, input.len() - 1).unwrap_err();
            assert_eq!(
                err,
                ProtocolError::DecompressedTooLarge {
                    limit: input.len() - 1
                },
                "{codec}"
            );
        }
    }

    #[test]
    fn snappy_accepts_a_bare_raw_block() {
        let raw = snap::raw::Encoder::new()
            .compress_vec(b"hello hello hello")
            .unwrap();
        assert_eq!(
            &decompress(Compression::Snappy, &raw, 100).unwrap()[..],
            b"hello hello hello"
        );
    }

    #[test]
    fn names_and_ids() {
        for codec in ALL {
            assert_eq!(Compression::from_id(codec.id()).unwrap(), codec);
            assert_eq!(codec.to_string().parse::<Compression>().unwrap(), codec);
        }
        assert_eq!(
            Compression::from_id(5).unwrap_err().to_string(),
            "unknown compression codec id 5"
        );
        assert!("brotli"
            .parse::<Compression>()
            .unwrap_err()
            .contains("unknown compression"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn garbage_never_panics(data: Vec<u8>) {
            for codec in ALL {
                let _ = decompress(codec, &data, 1 << 16);
            }
        }
    }
}
