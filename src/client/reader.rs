//! Reading one partition in order, and knowing when it has been read to its end.
//!
//! "Read to the end" has one rule, and it depends on the isolation: under `read_committed` the
//! end is the last stable offset (LSO), the first offset of the oldest transaction still open,
//! because the broker returns nothing after it; under `read_uncommitted` it is the high
//! watermark (KIP-98,
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging>).
//! The end moves while producers write: a [`PartitionReader`] compares its position with the
//! end reported by its latest fetch, so "at the end" means "caught up with what the broker had
//! when it last answered". The CLI's `consume --exit-at-end`, the demo's read-back and the
//! protocol tests all read through it.

use super::admin::Admin;
use super::fetcher::Fetcher;
use super::types::{OffsetSpec, Record, TopicPartition};
use super::ClientError;

/// Reads one partition from a start position onwards, one fetch at a time.
#[derive(Debug, Clone)]
pub struct PartitionReader {
    fetcher: Fetcher,
    partition: TopicPartition,
    position: i64,
    /// The end of the log as the latest fetch reported it; unknown before the first fetch.
    end: Option<i64>,
}

impl PartitionReader {
    /// A reader of `partition` starting at `start`, resolved now (with ListOffsets, under the
    /// fetcher's isolation, unless it is an [`OffsetSpec::Offset`]).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing has been read yet.
    pub async fn new(
        fetcher: Fetcher,
        partition: TopicPartition,
        start: OffsetSpec,
    ) -> Result<Self, ClientError> {
        let position = Admin::new(fetcher.client().clone())
            .list_offset(
                &partition.topic,
                partition.partition,
                start,
                fetcher.config().isolation,
            )
            .await?;
        Ok(Self::at(fetcher, partition, position))
    }

    /// A reader of `partition` starting at `offset`.
    pub fn at(fetcher: Fetcher, partition: TopicPartition, offset: i64) -> Self {
        Self {
            fetcher,
            partition,
            position: offset,
            end: None,
        }
    }

    /// The partition read.
    pub fn partition(&self) -> &TopicPartition {
        &self.partition
    }

    /// The offset the next fetch starts at.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Whether the position has reached the end of the log (LSO under `read_committed`, high
    /// watermark otherwise) as the latest fetch reported it. False before the first fetch.
    pub fn at_end(&self) -> bool {
        self.end.is_some_and(|end| self.position >= end)
    }

    /// One fetch from the current position: the records it returned (possibly none) in offset
    /// order, aborted transactions and control markers removed. Moves the position past every
    /// batch returned and updates the end.
    ///
    /// # Cancel safety
    /// Cancel safe: the position changes only once the fetch has completed.
    pub async fn poll(&mut self) -> Result<Vec<Record>, ClientError> {
        let fetched = self
            .fetcher
            .fetch(
                &self.partition.topic,
                self.partition.partition,
                self.position,
            )
            .await?;
        self.position = self.position.max(fetched.next_offset);
        self.end = Some(
            self.fetcher
                .config()
                .isolation
                .end_offset(fetched.high_watermark, fetched.last_stable_offset),
        );
        Ok(fetched.records)
    }

    /// Fetches until [`at_end`](Self::at_end) and returns every record read, in offset order.
    /// Fetches at least once, so that the end is known. For logs that fit in memory (tests,
    /// tools, a read-back check); stream with [`poll`](Self::poll) otherwise.
    ///
    /// # Cancel safety
    /// Not cancel safe: the records of completed fetches are lost with the future, though the
    /// position has moved past them.
    pub async fn read_to_end(&mut self) -> Result<Vec<Record>, ClientError> {
        let mut records = Vec::new();
        loop {
            records.extend(self.poll().await?);
            if self.at_end() {
                return Ok(records);
            }
        }
    }
}
