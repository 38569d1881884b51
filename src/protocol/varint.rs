//! Variable-length integers as the record format uses them: zigzag varints for signed values
//! (protobuf style), 1 to 5 bytes for i32 and 1 to 10 for i64
//! (<https://kafka.apache.org/documentation/#record>).
//!
//! Decoding is bounds-checked: a varint that runs past the input or past its maximum length is
//! an error, never a panic.

use bytes::BufMut;

use super::ProtocolError;

/// Appends a zigzag-encoded i32.
pub fn put_varint(buf: &mut impl BufMut, value: i32) {
    put_uvarint64(buf, u64::from(((value << 1) ^ (value >> 31)) as u32));
}

/// Appends a zigzag-encoded i64.
pub fn put_varlong(buf: &mut impl BufMut, value: i64) {
    put_uvarint64(buf, ((value << 1) ^ (value >> 63)) as u64);
}

fn put_uvarint64(buf: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// How many bytes [`put_varint`] writes for `value`.
pub fn varint_len(value: i32) -> usize {
    uvarint_len(u64::from(((value << 1) ^ (value >> 31)) as u32))
}

/// How many bytes [`put_varlong`] writes for `value`.
pub fn varlong_len(value: i64) -> usize {
    uvarint_len(((value << 1) ^ (value >> 63)) as u64)
}

fn uvarint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads an unsigned varint of at most `max_bytes` bytes from `input` at `*pos`.
fn get_uvarint(
    input: &[u8],
    pos: &mut usize,
    max_bytes: usize,
    what: &str,
) -> Result<u64, ProtocolError> {
    let mut value = 0u64;
    for i in 0..max_bytes {
        let byte = *input.get(*pos).ok_or_else(|| ProtocolError::CorruptBatch {
            position: *pos,
            what: format!("{what}: varint runs past the end of the input"),
        })?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ProtocolError::CorruptBatch {
        position: *pos,
        what: format!("{what}: varint longer than {max_bytes} bytes"),
    })
}

/// Reads a zigzag i32 at `*pos`, advancing it.
pub fn get_varint(input: &[u8], pos: &mut usize, what: &str) -> Result<i32, ProtocolError> {
    let start = *pos;
    let raw = get_uvarint(input, pos, 5, what)?;
    let raw = u32::try_from(raw).map_err(|_| ProtocolError::CorruptBatch {
        position: start,
        what: format!("{what}: varint does not fit in 32 bits"),
    })?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// Reads a zigzag i64 at `*pos`, advancing it.
pub fn get_varlong(input: &[u8], pos: &mut usize, what: &str) -> Result<i64, ProtocolError> {
    let raw = get_uvarint(input, pos, 10, what)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut buf = Vec::new();
        put_varint(&mut buf, 0);
        put_varint(&mut buf, -1);
        put_varint(&mut buf, 1);
        put_varint(&mut buf, 300);
        assert_eq!(buf, [0x00, 0x01, 0x02, 0xd8, 0x04]);
    }

    #[test]
    fn truncated_and_overlong_are_errors() {
        let mut pos = 0;
        let err = get_varint(&[0x80, 0x80], &mut pos, "key length").unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt record batch at byte 2: key length: varint runs past the end of the input"
        );
        let mut pos = 0;
        let err = get_varint(&[0xff; 6], &mut pos, "x").unwrap_err();
        assert!(matches!(err, ProtocolError::CorruptBatch { .. }), "{err}");
        let mut pos = 0;
        let err = get_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f], &mut pos, "x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt record batch at byte 0: x: varint does not fit in 32 bits"
        );
    }

    proptest! {
        #[test]
        fn varint_round_trip(v: i32) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            prop_assert_eq!(buf.len(), varint_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varint(&buf, &mut pos, "v").unwrap(), v);
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn varlong_round_trip(v: i64) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varlong(&buf, &mut pos, "v").unwrap(), v);
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(data: Vec<u8>) {
            let mut pos = 0;
            let _ = get_varint(&data, &mut pos, "v");
            let mut pos = 0;
            let _ = get_varlong(&data, &mut pos, "v");
        }
    }
}
