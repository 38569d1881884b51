//! The shared vocabulary of reading and writing: which partition ([`TopicPartition`]), from
//! where ([`OffsetSpec`]), seeing what ([`Isolation`]), and what comes back ([`Record`]).
//!
//! The CLI, the demo, the tests and the runtime's sources all say these things; with one set of
//! types they say them the same way, and the rules attached to them (where a read under
//! `read_committed` ends, what "latest" means) live in one place. Isolation levels are those of
//! KIP-98
//! (<https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging>);
//! offset lookups are ListOffsets (<https://kafka.apache.org/protocol.html#The_Messages_ListOffsets>).

use std::fmt;

pub use crate::connection::backoff::BackoffConfig;
pub use crate::connection::{ConnectionConfig, ConnectionError};
// TLS and SASL settings (issue 10).
pub use crate::connection::{
    SaslConfig, SaslMechanism, Secret, SecurityConfig, SecurityConfigError, SecurityProtocol,
    TlsConfig, SECURITY_KEYS,
};
pub use crate::protocol::compression::Compression;
pub use crate::protocol::error_codes::{codes, Class, ErrorCode, Refresh};
pub use crate::protocol::record_batch::{Record, RecordHeader};
pub use crate::protocol::ProtocolError;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition, from 0.
    pub partition: i32,
}

impl TopicPartition {
    /// `topic`/`partition`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    /// `topic/partition`, as errors and logs print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A position in a partition: named by the broker (earliest, latest, by timestamp) or given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The end of the log as the reader's isolation sees it: the high watermark under
    /// `read_uncommitted`, the last stable offset under `read_committed`.
    Latest,
    /// The first offset whose timestamp is at or after this one (ms since the epoch).
    Timestamp(i64),
    /// This offset.
    Offset(i64),
}

/// How to find the offset an [`OffsetSpec`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetLookup {
    /// Given outright.
    Known(i64),
    /// Ask the partition leader with ListOffsets for this `timestamp` (-2 earliest, -1 latest).
    Ask {
        /// The ListOffsets `timestamp` field.
        timestamp: i64,
    },
}

impl OffsetSpec {
    pub(crate) fn lookup(self) -> OffsetLookup {
        match self {
            Self::Earliest => OffsetLookup::Ask { timestamp: -2 },
            Self::Latest => OffsetLookup::Ask { timestamp: -1 },
            Self::Timestamp(timestamp) => OffsetLookup::Ask { timestamp },
            Self::Offset(offset) => OffsetLookup::Known(offset),
        }
    }
}

/// Read isolation (KIP-98): whether a reader sees records of open and aborted transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Everything up to the high watermark, including aborted and open transactions.
    ReadUncommitted,
    /// Only committed data, up to the last stable offset.
    #[default]
    ReadCommitted,
}

impl Isolation {
    pub(crate) fn wire(self) -> i8 {
        match self {
            Self::ReadUncommitted => 0,
            Self::ReadCommitted => 1,
        }
    }

    /// Where the log ends for a reader with this isolation, given what a fetch reported: the
    /// last stable offset under `read_committed` (nothing after it can be returned until the
    /// open transactions before it end), the high watermark otherwise. A broker that does not
    /// report a last stable offset (-1) is read up to its high watermark.
    pub fn end_offset(self, high_watermark: i64, last_stable_offset: i64) -> i64 {
        match self {
            Self::ReadCommitted if last_stable_offset >= 0 => last_stable_offset,
            _ => high_watermark,
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read_committed" => Ok(Self::ReadCommitted),
            "read_uncommitted" => Ok(Self::ReadUncommitted),
            other => Err(format!(
                "unknown isolation level {other:?} (read_committed or read_uncommitted)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offset_follows_the_isolation() {
        assert_eq!(Isolation::ReadCommitted.end_offset(10, 7), 7);
        assert_eq!(Isolation::ReadCommitted.end_offset(10, -1), 10);
        assert_eq!(Isolation::ReadUncommitted.end_offset(10, 7), 10);
    }

    #[test]
    fn names() {
        assert_eq!(TopicPartition::new("orders", 3).to_string(), "orders/3");
        assert_eq!(
            "read_uncommitted".parse::<Isolation>(),
            Ok(Isolation::ReadUncommitted)
        );
        assert_eq!(
            "committed".parse::<Isolation>().unwrap_err(),
            "unknown isolation level \"committed\" (read_committed or read_uncommitted)"
        );
        assert_eq!(OffsetSpec::Offset(5).lookup(), OffsetLookup::Known(5));
        assert_eq!(
            OffsetSpec::Earliest.lookup(),
            OffsetLookup::Ask { timestamp: -2 }
        );
    }
}
