//! The frame reader over arbitrary bytes fed in arbitrary chunk sizes: it must never panic,
//! never return a frame over the limit, and never reserve more than the limit.
#![no_main]

use bytes::BytesMut;
use exactly::protocol::frame::FrameDecoder;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = FrameDecoder::new(LIMIT);
    let mut buf = BytesMut::new();
    for part in data.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.len() <= LIMIT),
                Ok(None) => {
                    assert!(buf.capacity() <= LIMIT + 4 + data.len() + 64, "reserved past the limit");
                    break;
                }
                Err(_) => return,
            }
        }
    }
});
