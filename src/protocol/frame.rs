//! Kafka's framing: every request and response is a 4-byte big-endian size followed by that
//! many bytes (<https://kafka.apache.org/protocol.html#protocol_common>).
//!
//! [`FrameDecoder`] follows the contract of tokio-util's `length_delimited`: "not enough bytes
//! yet" is `Ok(None)`, and an impossible length is an error *before* anything is allocated, so
//! a hostile or corrupt peer cannot make us reserve gigabytes.

use bytes::{Buf, Bytes, BytesMut};

use super::ProtocolError;

/// The smallest frame a response can be: it holds at least a correlation id.
pub const FRAME_BYTES_MIN: usize = 4;

/// Cuts frames out of a byte stream.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    frame_bytes_max: usize,
}

impl FrameDecoder {
    /// A decoder that rejects frames larger than `frame_bytes_max`.
    pub fn new(frame_bytes_max: usize) -> Self {
        Self { frame_bytes_max }
    }

    /// The next whole frame (without its size prefix), `Ok(None)` if `buf` does not hold one
    /// yet, or an error if the size prefix is impossible. On `Ok(None)` it reserves room for
    /// the rest of the frame (never more than the limit).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        let Some(prefix) = buf.get(..4) else {
            return Ok(None);
        };
        let length = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let size =
            usize::try_from(length).map_err(|_| ProtocolError::InvalidFrameLength { length })?;
        if size < FRAME_BYTES_MIN {
            return Err(ProtocolError::InvalidFrameLength { length });
        }
        if size > self.frame_bytes_max {
            return Err(ProtocolError::FrameTooLarge {
                limit: self.frame_bytes_max,
                actual: size,
            });
        }
        let total = 4 + size;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        Ok(Some(buf.split_to(size).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for body in bodies {
            out.extend_from_slice(&(body.len() as i32).to_be_bytes());
            out.extend_from_slice(body);
        }
        out
    }

    #[test]
    fn split_at_every_byte() {
        let stream = framed(&[b"abcd", b"0123456789", b"wxyz"]);
        for split in 0..=stream.len() {
            let mut decoder = FrameDecoder::new(1024);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                buf.extend_from_slice(part);
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(
                frames,
                vec![&b"abcd"[..], &b"0123456789"[..], &b"wxyz"[..]],
                "split at {split}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn limits_are_checked_before_allocating() {
        let mut decoder = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&(1i32 << 30).to_be_bytes()[..]);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::FrameTooLarge {
                limit: 16,
                actual: 1 << 30
            }
        );
        assert_eq!(
            err.to_string(),
            "frame of 1073741824 bytes exceeds the limit of 16 bytes"
        );
        assert!(
            buf.capacity() < 1024,
            "nothing was reserved for the oversized frame"
        );

        let mut buf = BytesMut::from(&(-5i32).to_be_bytes()[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap_err(),
            ProtocolError::InvalidFrameLength { length: -5 }
        );
        let mut buf = BytesMut::from(&2i32.to_be_bytes()[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap_err().to_string(),
            "invalid frame length 2"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_chunks_never_panic(data: Vec<u8>, chunk in 1usize..64) {
            let mut decoder = FrameDecoder::new(4096);
            let mut buf = BytesMut::new();
            'outer: for part in data.chunks(chunk) {
                buf.extend_from_slice(part);
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(frame)) => prop_assert!(frame.len() <= 4096),
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
        }
    }
}
