//! The requests we speak, the version range we implement for each, and the request/response
//! header codec around them.
//!
//! Message schemas come from the `kafka-protocol` crate (generated from Kafka's JSON
//! definitions). We do not send whatever the newest schema is: each request type states the
//! versions this client implements ([`KafkaRequest::OURS`]), and the connection picks the highest
//! version inside both that range and the broker's ApiVersions answer
//! (<https://kafka.apache.org/protocol.html#api_versions>). This keeps us honest with brokers
//! that lag behind (Redpanda, older Kafka) and with features we have not built (topic ids in
//! Produce v13 / Fetch v13+ are capped out because we address partitions by topic name).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

pub use kafka_protocol::messages;

use super::ProtocolError;

/// An inclusive range of API versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// Lowest version.
    pub min: i16,
    /// Highest version.
    pub max: i16,
}

impl Versions {
    /// The highest version inside both ranges, if they overlap.
    pub fn highest_common(self, other: Versions) -> Option<i16> {
        let max = self.max.min(other.max);
        (max >= self.min.max(other.min)).then_some(max)
    }
}

/// A request this client sends, with the versions we implement.
pub trait KafkaRequest: Request + Send + Sync + 'static
where
    Self::Response: Send + 'static,
{
    /// Human-readable API name used in errors and traces.
    const NAME: &'static str;
    /// The versions this client implements (a subset of the schema's).
    const OURS: Versions;

    /// How long the broker asked the client to hold off (`throttle_time_ms`, KIP-219); 0 when
    /// it did not throttle. Every response we decode carries the field.
    fn throttle_time_ms(response: &Self::Response) -> i32;
}

macro_rules! ours {
    ($($ty:ident => $name:literal, $min:literal ..= $max:literal;)*) => {
        $(impl KafkaRequest for messages::$ty {
            const NAME: &'static str = $name;
            const OURS: Versions = Versions { min: $min, max: $max };
            fn throttle_time_ms(response: &Self::Response) -> i32 {
                response.throttle_time_ms
            }
        })*
    };
}

// Capped versions and why:
// - Produce <= 12, Fetch <= 12: v13 addresses topics by id only (KIP-516); we address by name.
// - Metadata >= 4: `allow_auto_topic_creation` exists from v4; we always send false.
// - AddPartitionsToTxn <= 3: v4+ are the broker-to-broker verification versions (KIP-890).
// - ApiVersions 3: flexible versions; a broker that does not know v3 answers with v0 and its
//   own list, which the connection handles.
ours! {
    ApiVersionsRequest => "ApiVersions", 0..=3;
    MetadataRequest => "Metadata", 4..=12;
    ProduceRequest => "Produce", 3..=12;
    FetchRequest => "Fetch", 4..=12;
    ListOffsetsRequest => "ListOffsets", 1..=9;
    CreateTopicsRequest => "CreateTopics", 2..=7;
    DeleteTopicsRequest => "DeleteTopics", 1..=5;
    DescribeConfigsRequest => "DescribeConfigs", 1..=4;
    InitProducerIdRequest => "InitProducerId", 0..=5;
    FindCoordinatorRequest => "FindCoordinator", 1..=6;
    AddPartitionsToTxnRequest => "AddPartitionsToTxn", 0..=3;
    AddOffsetsToTxnRequest => "AddOffsetsToTxn", 0..=4;
    TxnOffsetCommitRequest => "TxnOffsetCommit", 0..=4;
    EndTxnRequest => "EndTxn", 0..=5;
    DescribeTransactionsRequest => "DescribeTransactions", 0..=0;
    ListTransactionsRequest => "ListTransactions", 0..=1;
    OffsetFetchRequest => "OffsetFetch", 1..=8;
    OffsetCommitRequest => "OffsetCommit", 2..=9;
    CreatePartitionsRequest => "CreatePartitions", 0..=3;
}

// --- SASL (issue 10) ---
// Their responses carry no `throttle_time_ms`. SaslHandshake v1 only: v0 means the SASL exchange
// follows as raw bytes outside Kafka framing (pre-KIP-152), which we do not speak.
// SaslAuthenticate v1 adds `session_lifetime_ms` (KIP-368).
macro_rules! ours_unthrottled {
    ($($ty:ident => $name:literal, $min:literal ..= $max:literal;)*) => {
        $(impl KafkaRequest for messages::$ty {
            const NAME: &'static str = $name;
            const OURS: Versions = Versions { min: $min, max: $max };
            fn throttle_time_ms(_response: &Self::Response) -> i32 {
                0
            }
        })*
    };
}

ours_unthrottled! {
    SaslHandshakeRequest => "SaslHandshake", 1..=1;
    SaslAuthenticateRequest => "SaslAuthenticate", 0..=2;
}
// --- end SASL ---

fn schema_error<R: KafkaRequest>(version: i16, err: impl std::fmt::Display) -> ProtocolError
where
    R::Response: Send + 'static,
{
    ProtocolError::Schema {
        api: R::NAME,
        version,
        message: err.to_string(),
    }
}

/// Encodes one request frame (size prefix, header, body) at the end of `buf`.
pub fn encode_request<R: KafkaRequest>(
    buf: &mut BytesMut,
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> Result<(), ProtocolError>
where
    R::Response: Send + 'static,
{
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let header_version = R::header_version(version);
    let start = buf.len();
    buf.put_i32(0); // patched below, once the size is known
    header
        .encode(buf, header_version)
        .map_err(|e| schema_error::<R>(version, e))?;
    request
        .encode(buf, version)
        .map_err(|e| schema_error::<R>(version, e))?;
    let body_len = buf.len() - start - 4;
    let size = i32::try_from(body_len).map_err(|_| ProtocolError::FrameTooLarge {
        limit: i32::MAX as usize,
        actual: body_len,
    })?;
    buf[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Reads the correlation id at the front of a response frame (without the size prefix).
pub fn peek_correlation_id(frame: &[u8]) -> Result<i32, ProtocolError> {
    let bytes: [u8; 4] = frame.get(..4).and_then(|b| b.try_into().ok()).ok_or(
        ProtocolError::InvalidFrameLength {
            length: frame.len() as i32,
        },
    )?;
    Ok(i32::from_be_bytes(bytes))
}

/// Decodes a response frame (without the size prefix) for request type `R` at `version`,
/// checking that the response consumes the frame exactly.
pub fn decode_response<R: KafkaRequest>(
    mut frame: Bytes,
    version: i16,
) -> Result<R::Response, ProtocolError>
where
    R::Response: Send + 'static,
{
    let header_version = <R::Response as HeaderVersion>::header_version(version);
    ResponseHeader::decode(&mut frame, header_version)
        .map_err(|e| schema_error::<R>(version, e))?;
    let response = <R::Response as Decodable>::decode(&mut frame, version)
        .map_err(|e| schema_error::<R>(version, e))?;
    if !frame.is_empty() {
        return Err(ProtocolError::TrailingBytes {
            api: R::NAME,
            version,
            left: frame.len(),
        });
    }
    Ok(response)
}

/// Builds a Kafka string (`StrBytes`) from anything string-like.
pub fn kstr(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use messages::{ApiVersionsRequest, MetadataRequest};

    #[test]
    fn highest_common_version() {
        let ours = Versions { min: 4, max: 12 };
        assert_eq!(ours.highest_common(Versions { min: 0, max: 13 }), Some(12));
        assert_eq!(ours.highest_common(Versions { min: 0, max: 9 }), Some(9));
        assert_eq!(ours.highest_common(Versions { min: 0, max: 3 }), None);
    }

    #[test]
    fn request_frame_has_size_prefix_and_header() {
        let mut buf = BytesMut::new();
        encode_request(&mut buf, &ApiVersionsRequest::default(), 0, 7, "x").unwrap();
        let size = i32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(size, buf.len() - 4);
        assert_eq!(&buf[4..6], &18i16.to_be_bytes()); // api key
        assert_eq!(&buf[6..8], &0i16.to_be_bytes()); // version
        assert_eq!(&buf[8..12], &7i32.to_be_bytes()); // correlation id
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        // A Metadata v4 response header (correlation id) followed by an empty body is too short;
        // a valid body plus an extra byte must be rejected with TrailingBytes.
        let response = messages::MetadataResponse::default();
        let mut buf = BytesMut::new();
        buf.put_i32(1);
        response.encode(&mut buf, 4).unwrap();
        buf.put_u8(0xff);
        let err = decode_response::<MetadataRequest>(buf.freeze(), 4).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::TrailingBytes {
                api: "Metadata",
                version: 4,
                left: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "Metadata v4: 1 bytes left over after decoding the response"
        );
    }

    /// The `response` fuzz target's reproducer: a Metadata v7 response whose broker array claims
    /// 76 million entries in a 12-byte frame. kafka-protocol 0.18 reserved the whole array before
    /// decoding an element (gigabytes: the process aborted); the patched copy in
    /// vendor/kafka-protocol rejects a count larger than the bytes left.
    #[test]
    fn array_count_beyond_the_frame_is_an_error_not_an_allocation() {
        let input =
            include_bytes!("../../fuzz/regressions/response-kafka-protocol-array-prealloc.bin");
        // The first byte is the fuzz target's selector: Metadata (high bit), version 137 % 13 = 7.
        let (&selector, frame) = input.split_first().unwrap();
        assert_eq!((selector & 0x80, selector % 13), (0x80, 7));
        let err = decode_response::<MetadataRequest>(Bytes::copy_from_slice(frame), 7).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::Schema {
                api: "Metadata",
                version: 7,
                message: "Array length 76089918 exceeds the 0 bytes remaining".to_owned(),
            }
        );
        assert_eq!(
            err.to_string(),
            "Metadata v7: Array length 76089918 exceeds the 0 bytes remaining"
        );
    }

    /// The same for a flexible version (compact array, varint count): Metadata v12 whose broker
    /// array claims u32::MAX - 1 entries.
    #[test]
    fn compact_array_count_beyond_the_frame_is_an_error() {
        let mut buf = BytesMut::new();
        buf.put_i32(1); // correlation id
        buf.put_u8(0); // header tagged fields
        buf.put_i32(0); // throttle_time_ms
        buf.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // brokers: count + 1 = u32::MAX
        buf.put_slice(&[0; 8]);
        let err = decode_response::<MetadataRequest>(buf.freeze(), 12).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Metadata v12: CompactArray length 4294967294 exceeds the 8 bytes remaining"
        );
    }
}
