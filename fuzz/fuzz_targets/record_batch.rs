//! The record-batch decoder over arbitrary bytes (as a Fetch response's records): every batch,
//! every record, control markers. Must never panic or allocate past the decompression limit.
#![no_main]

use bytes::Bytes;
use exactly::protocol::record_batch::decode_batches;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for batch in decode_batches(Bytes::copy_from_slice(data), 1 << 20) {
        let Ok(batch) = batch else { return };
        let _ = batch.control_type();
        for record in batch.records() {
            if record.is_err() {
                break;
            }
        }
    }
});
