//! Fetching records, with `read_committed` filtering of aborted transactions.
//!
//! Under `read_committed` the broker returns data only up to the last stable offset (LSO) and,
//! with it, the list of aborted transactions (producer id, first offset) overlapping the
//! returned range (KIP-98,
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging>).
//! The client must drop the data batches of those transactions itself. [`AbortedFilter`] does it
//! the way Kafka's Java consumer and franz-go do:
//!
//! - aborted transactions are ordered by first offset (we sort them: a broker may send them
//!   unsorted, as Redpanda has);
//! - before looking at a transactional data batch, every aborted transaction whose first
//!   offset is at or below the batch's last offset marks its producer id as *aborting*;
//! - a transactional data batch from an aborting producer is dropped;
//! - the ABORT control marker of that producer ends its aborting state (a transaction may have
//!   been aborted without any data batch, so the marker is what matters);
//! - control batches never surface as records.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use bytes::Bytes;

use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::fetch_request::{FetchPartition, FetchTopic};
use crate::protocol::messages::messages::{BrokerId, FetchRequest, TopicName};
use crate::protocol::record_batch::{
    decode_batches, BatchHeader, ControlRecordType, Record, RecordBatch,
};

use super::admin::Isolation;
use super::{Client, ClientError};
use crate::protocol::error_codes::codes;

/// Fetch settings.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Read isolation.
    pub isolation: Isolation,
    /// How long the broker may wait for `min_bytes` to accumulate.
    pub max_wait_ms: i32,
    /// How many bytes the broker should wait for.
    pub min_bytes: i32,
    /// Largest response the broker should send.
    pub max_bytes: i32,
    /// Largest amount of data per partition.
    pub partition_max_bytes: i32,
    /// Largest decompressed size of one batch (decompression-bomb guard).
    pub decompressed_bytes_max: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            isolation: Isolation::ReadCommitted,
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 50 * 1024 * 1024,
            partition_max_bytes: 4 * 1024 * 1024,
            decompressed_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// What one fetch of one partition returned.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    /// The records, in offset order, aborted ones and control markers removed.
    pub records: Vec<Record>,
    /// The offset to fetch next.
    pub next_offset: i64,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// The partition's last stable offset (-1 if the broker did not say).
    pub last_stable_offset: i64,
    /// The partition's log start offset.
    pub log_start_offset: i64,
}

/// Drops the batches of aborted transactions. See the module docs for the rules.
#[derive(Debug, Default)]
pub struct AbortedFilter {
    /// Aborted transactions not yet reached, smallest first offset first.
    pending: BinaryHeap<Reverse<(i64, i64)>>,
    /// Producers whose current transaction is aborted.
    aborting: HashSet<i64>,
}

impl AbortedFilter {
    /// A filter for one fetch response's aborted-transaction list, in any order.
    pub fn new(aborted: impl IntoIterator<Item = (i64, i64)>) -> Self {
        Self {
            pending: aborted
                .into_iter()
                .map(|(pid, first)| Reverse((first, pid)))
                .collect(),
            aborting: HashSet::new(),
        }
    }

    /// Whether the records of the batch with this header should be returned. Must be called for
    /// every batch, in offset order, control batches included.
    pub fn keep(&mut self, header: &BatchHeader, control: Option<ControlRecordType>) -> bool {
        if header.is_transactional || header.is_control {
            // Control batches count too: an aborted transaction may consist of its marker only.
            while let Some(Reverse((first, pid))) = self.pending.peek().copied() {
                if first > header.last_offset() {
                    break;
                }
                self.pending.pop();
                self.aborting.insert(pid);
            }
        }
        if header.is_control {
            if control == Some(ControlRecordType::Abort) {
                self.aborting.remove(&header.producer_id);
            }
            return false;
        }
        !header.is_transactional || !self.aborting.contains(&header.producer_id)
    }
}

/// Fetches records from partition leaders.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: Client,
    config: FetchConfig,
}

impl Fetcher {
    /// A fetcher over `client`.
    pub fn new(client: Client, config: FetchConfig) -> Self {
        Self { client, config }
    }

    /// The settings in use.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Fetches `topic`/`partition` from `offset`, retrying leader changes and disconnects.
    /// OFFSET_OUT_OF_RANGE is reported as [`ClientError::OffsetOutOfRange`].
    ///
    /// # Cancel safety
    /// Cancel safe: fetching has no side effects.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<FetchedPartition, ClientError> {
        self.client
            .with_retries(topic, || self.fetch_once(topic, partition, offset))
            .await
    }

    async fn fetch_once(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<FetchedPartition, ClientError> {
        let leader = self.client.leader(topic, partition).await?;
        let conn = self.client.broker(leader).await?;
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(self.config.max_wait_ms)
            .with_min_bytes(self.config.min_bytes)
            .with_max_bytes(self.config.max_bytes)
            .with_isolation_level(self.config.isolation.wire())
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(kstr(topic)))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(self.config.partition_max_bytes)])]);
        let response = conn.request(&request).await?;
        if response.error_code != 0 {
            return Err(
                ClientError::broker("Fetch", response.error_code).at(topic, Some(partition))
            );
        }
        let data = response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions.into_iter())
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| {
                ClientError::broker("Fetch", codes::UNKNOWN_TOPIC_OR_PARTITION)
                    .at(topic, Some(partition))
            })?;
        match data.error_code {
            0 => {}
            codes::OFFSET_OUT_OF_RANGE => {
                return Err(ClientError::OffsetOutOfRange {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                })
            }
            code => return Err(ClientError::broker("Fetch", code).at(topic, Some(partition))),
        }
        let aborted = match self.config.isolation {
            Isolation::ReadCommitted => data
                .aborted_transactions
                .unwrap_or_default()
                .iter()
                .map(|a| (a.producer_id.0, a.first_offset))
                .collect(),
            Isolation::ReadUncommitted => Vec::new(),
        };
        let (records, next_offset) = self
            .decode(data.records.unwrap_or_default(), offset, aborted)
            .map_err(|source| ClientError::CorruptData {
                topic: topic.to_owned(),
                partition,
                offset,
                source,
            })?;
        Ok(FetchedPartition {
            records,
            next_offset,
            high_watermark: data.high_watermark,
            last_stable_offset: data.last_stable_offset,
            log_start_offset: data.log_start_offset,
        })
    }

    fn decode(
        &self,
        data: Bytes,
        offset: i64,
        aborted: Vec<(i64, i64)>,
    ) -> Result<(Vec<Record>, i64), crate::protocol::ProtocolError> {
        let mut filter = AbortedFilter::new(aborted);
        let mut records = Vec::new();
        let mut next_offset = offset;
        for batch in decode_batches(data, self.config.decompressed_bytes_max) {
            let batch: RecordBatch = batch?;
            let control = if batch.header.is_control {
                batch.control_type()?
            } else {
                None
            };
            let keep = match self.config.isolation {
                Isolation::ReadCommitted => filter.keep(&batch.header, control),
                Isolation::ReadUncommitted => !batch.header.is_control,
            };
            if keep {
                for record in batch.records() {
                    let record = record?;
                    // A compressed batch may start before the offset asked for.
                    if record.offset >= offset {
                        records.push(record);
                    }
                }
            }
            next_offset = next_offset.max(batch.header.last_offset() + 1);
        }
        Ok((records, next_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(base: i64, count: i32, pid: i64, transactional: bool, control: bool) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            last_offset_delta: count - 1,
            producer_id: pid,
            is_transactional: transactional,
            is_control: control,
            record_count: count,
            ..BatchHeader::default()
        }
    }

    #[test]
    fn drops_aborted_batches_and_control_markers() {
        // pid 1: data 0..2 aborted (marker at 5); pid 2: data 3..4 committed (marker at 6).
        let mut f = AbortedFilter::new([(1, 0)]);
        assert!(!f.keep(&header(0, 3, 1, true, false), None));
        assert!(f.keep(&header(3, 2, 2, true, false), None));
        assert!(!f.keep(&header(5, 1, 1, true, true), Some(ControlRecordType::Abort)));
        assert!(!f.keep(
            &header(6, 1, 2, true, true),
            Some(ControlRecordType::Commit)
        ));
        // pid 1's next transaction is committed and must show.
        assert!(f.keep(&header(7, 1, 1, true, false), None));
        assert!(f.keep(&header(8, 1, -1, false, false), None));
    }

    #[test]
    fn unsorted_aborted_list_and_abort_without_data() {
        // pid 3 aborted a transaction with no data before offset 10 (marker only at 4);
        // pid 1 aborted at 10. Listed out of order.
        let mut f = AbortedFilter::new([(1, 10), (3, 4)]);
        assert!(!f.keep(&header(4, 1, 3, true, true), Some(ControlRecordType::Abort)));
        assert!(
            f.keep(&header(5, 5, 1, true, false), None),
            "pid 1 before its aborted txn"
        );
        assert!(!f.keep(&header(10, 2, 1, true, false), None));
        assert!(
            f.keep(&header(12, 1, 3, true, false), None),
            "pid 3's later txn is not aborted"
        );
    }
}
