//! Every response schema the client decodes, at every version it speaks (`KafkaRequest::OURS`),
//! through `decode_response` as the connection calls it. The `response` target goes deeper into
//! Fetch and Metadata (the batches inside a Fetch); this one covers the other schemas, where a
//! hostile count or length must be a decode error, never a large allocation or a panic.
#![no_main]

use bytes::Bytes;
use exactly::protocol::messages::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiVersionsRequest, CreateTopicsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, DescribeTransactionsRequest, EndTxnRequest,
    FetchRequest, FindCoordinatorRequest, InitProducerIdRequest, ListOffsetsRequest,
    ListTransactionsRequest, MetadataRequest, OffsetFetchRequest, ProduceRequest,
    TxnOffsetCommitRequest,
};
use exactly::protocol::messages::{decode_response, KafkaRequest};
use libfuzzer_sys::fuzz_target;

fn decode<R: KafkaRequest>(version_selector: u8, frame: Bytes)
where
    R::Response: Send + 'static,
{
    // Version inside the range we implement.
    let span = (R::OURS.max - R::OURS.min + 1) as u8;
    let version = R::OURS.min + i16::from(version_selector % span);
    let _ = decode_response::<R>(frame, version);
}

fuzz_target!(|data: &[u8]| {
    let [api, version, data @ ..] = data else { return };
    // Small inputs keep the fuzzer fast; lengths beyond the input are what it should try.
    if data.len() > 4096 {
        return;
    }
    let frame = Bytes::copy_from_slice(data);
    let v = *version;
    match api % 17 {
        0 => decode::<ApiVersionsRequest>(v, frame),
        1 => decode::<MetadataRequest>(v, frame),
        2 => decode::<ProduceRequest>(v, frame),
        3 => decode::<FetchRequest>(v, frame),
        4 => decode::<ListOffsetsRequest>(v, frame),
        5 => decode::<CreateTopicsRequest>(v, frame),
        6 => decode::<DeleteTopicsRequest>(v, frame),
        7 => decode::<DescribeConfigsRequest>(v, frame),
        8 => decode::<InitProducerIdRequest>(v, frame),
        9 => decode::<FindCoordinatorRequest>(v, frame),
        10 => decode::<AddPartitionsToTxnRequest>(v, frame),
        11 => decode::<AddOffsetsToTxnRequest>(v, frame),
        12 => decode::<TxnOffsetCommitRequest>(v, frame),
        13 => decode::<EndTxnRequest>(v, frame),
        14 => decode::<DescribeTransactionsRequest>(v, frame),
        15 => decode::<ListTransactionsRequest>(v, frame),
        _ => decode::<OffsetFetchRequest>(v, frame),
    }
});
