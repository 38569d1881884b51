//! Response decoding as the connection does it: correlation id, then the Fetch and Metadata
//! schemas (kafka-protocol) with the trailing-bytes check, then the batches inside a Fetch.
#![no_main]

use bytes::Bytes;
use exactly::protocol::messages::messages::{FetchRequest, MetadataRequest};
use exactly::protocol::messages::{decode_response, peek_correlation_id};
use exactly::protocol::record_batch::decode_batches;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else { return };
    // Small inputs keep the fuzzer fast. Array counts beyond the input are rejected before
    // allocating by the patched kafka-protocol (vendor/kafka-protocol/PATCHED.md).
    if data.len() > 4096 {
        return;
    }
    let frame = Bytes::copy_from_slice(data);
    let _ = peek_correlation_id(&frame);
    let version = i16::from(selector % 13);
    if selector & 0x80 == 0 {
        if let Ok(response) = decode_response::<FetchRequest>(frame, version.max(4)) {
            for topic in response.responses {
                for partition in topic.partitions {
                    if let Some(records) = partition.records {
                        for batch in decode_batches(records, 1 << 20) {
                            if batch.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
    } else {
        let _ = decode_response::<MetadataRequest>(frame, version.max(4));
    }
});
