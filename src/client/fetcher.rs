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
//! - control batches never surface as records;
//! - a batch the log cleaner of a compacted topic emptied (kept only because it holds a
//!   producer's last sequence or epoch) has no records and, if it is a control batch, no marker:
//!   it is skipped, and the fetch position still moves past it.
//!
//! Hostile or broken data is bounded twice: each compressed batch may decompress to at most
//! [`FetchConfig::decompressed_bytes_max`], and all of one response's batches together to
//! [`FetchConfig::response_decompressed_bytes_max`].
//!
//! [`Fetcher::fetch`] reads one partition; [`Fetcher::fetch_partitions`] reads several with one
//! request per leader (<https://kafka.apache.org/protocol.html#The_Messages_Fetch>).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};

use bytes::Bytes;

use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::fetch_request::{FetchPartition, FetchTopic};
use crate::protocol::messages::messages::fetch_response::PartitionData;
use crate::protocol::messages::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use crate::protocol::record_batch::{
    decode_batches, BatchHeader, ControlRecordType, Record, RecordBatch,
};

use tokio::task::JoinSet;

use super::types::{Isolation, TopicPartition};
use super::{Client, ClientError};
use crate::protocol::error_codes::codes;
use crate::protocol::ProtocolError;

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
    /// Largest decompressed size of all compressed batches of one fetch response together: the
    /// per-batch limit alone lets a response of many batches just under it through. A fetch
    /// stops decoding before the batch that would go over it and returns what came before
    /// (the next fetch starts at that batch); when the first batch alone does not fit, the
    /// fetch fails with [`ClientError::ResponseDecompressedTooLarge`]. Keep it at least
    /// `decompressed_bytes_max` so that every batch the per-batch limit accepts can be read.
    pub response_decompressed_bytes_max: usize,
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
            response_decompressed_bytes_max: 256 * 1024 * 1024,
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

    /// The client fetched through.
    pub fn client(&self) -> &Client {
        &self.client
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

    /// Fetches several partitions, one Fetch request per leader (requests to different leaders
    /// run concurrently), and returns one result per entry of `wanted`, in its order.
    ///
    /// The compressed batches of one response share one decompression budget
    /// ([`FetchConfig::response_decompressed_bytes_max`]). A partition the budget left no room
    /// for, one whose part of the response is a retriable error (its leader moved, a
    /// disconnect), and one listed twice are fetched again on their own with
    /// [`fetch`](Self::fetch) and its retries, so every partition gets an answer.
    ///
    /// # Cancel safety
    /// Cancel safe: fetching has no side effects; dropping the future abandons its requests.
    pub async fn fetch_partitions(
        &self,
        wanted: &[(TopicPartition, i64)],
    ) -> Vec<Result<FetchedPartition, ClientError>> {
        let mut results: Vec<Option<Result<FetchedPartition, ClientError>>> =
            wanted.iter().map(|_| None).collect();
        let mut by_leader: BTreeMap<i32, Vec<(usize, TopicPartition, i64)>> = BTreeMap::new();
        let mut seen = HashSet::new();
        for (i, (tp, offset)) in wanted.iter().enumerate() {
            if !seen.insert(tp) {
                continue;
            }
            if let Ok(leader) = self.client.leader(&tp.topic, tp.partition).await {
                by_leader
                    .entry(leader)
                    .or_default()
                    .push((i, tp.clone(), *offset));
            }
        }
        let mut requests = JoinSet::new();
        for (leader, partitions) in by_leader {
            let this = self.clone();
            requests.spawn(async move { this.fetch_from(leader, partitions).await });
        }
        while let Some(answered) = requests.join_next().await {
            // A request task that failed leaves its partitions to the fallback below.
            for (i, result) in answered.unwrap_or_default() {
                results[i] = Some(result);
            }
        }
        let mut out = Vec::with_capacity(wanted.len());
        for ((tp, offset), result) in wanted.iter().zip(results) {
            out.push(match result {
                Some(result) => result,
                None => self.fetch(&tp.topic, tp.partition, *offset).await,
            });
        }
        out
    }

    /// One Fetch request to `leader` for `partitions` (index in the caller's list, partition,
    /// offset). Returns the results that are final; the others are left to the caller's
    /// fallback (see [`fetch_partitions`](Self::fetch_partitions)).
    async fn fetch_from(
        &self,
        leader: i32,
        partitions: Vec<(usize, TopicPartition, i64)>,
    ) -> Vec<(usize, Result<FetchedPartition, ClientError>)> {
        let Ok(conn) = self.client.fetch_broker(leader).await else {
            return Vec::new();
        };
        let wanted: Vec<(&TopicPartition, i64)> =
            partitions.iter().map(|(_, tp, o)| (tp, *o)).collect();
        let Ok(mut response) = conn.request(&fetch_request(&self.config, &wanted)).await else {
            return Vec::new();
        };
        if response.error_code != 0 {
            return Vec::new();
        }
        let budget_max = self.config.response_decompressed_bytes_max;
        let mut budget_bytes = budget_max;
        let mut out = Vec::new();
        for (i, tp, offset) in &partitions {
            let full_budget = budget_bytes == budget_max;
            let data = take_partition(&mut response, tp);
            match self.partition_result(tp, *offset, data, &mut budget_bytes) {
                Err(e) if e.is_retriable() => {}
                Err(ClientError::ResponseDecompressedTooLarge { .. }) if !full_budget => {}
                result => out.push((*i, result)),
            }
        }
        out
    }

    async fn fetch_once(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<FetchedPartition, ClientError> {
        let leader = self.client.leader(topic, partition).await?;
        let conn = self.client.fetch_broker(leader).await?;
        let tp = TopicPartition::new(topic, partition);
        let mut response = conn
            .request(&fetch_request(&self.config, &[(&tp, offset)]))
            .await?;
        if response.error_code != 0 {
            return Err(
                ClientError::broker("Fetch", response.error_code).at(topic, Some(partition))
            );
        }
        let mut budget_bytes = self.config.response_decompressed_bytes_max;
        let data = take_partition(&mut response, &tp);
        self.partition_result(&tp, offset, data, &mut budget_bytes)
    }

    /// Interprets one partition's part of a Fetch response fetched at `offset`; `budget_bytes`
    /// is what is left of the response's decompression budget.
    fn partition_result(
        &self,
        tp: &TopicPartition,
        offset: i64,
        data: Option<PartitionData>,
        budget_bytes: &mut usize,
    ) -> Result<FetchedPartition, ClientError> {
        let (topic, partition) = (tp.topic.as_str(), tp.partition);
        let data = data.ok_or_else(|| {
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
        let (records, next_offset) = decode_partition(
            data.records.unwrap_or_default(),
            offset,
            self.config.isolation,
            aborted,
            self.config.decompressed_bytes_max,
            budget_bytes,
        )
        .map_err(|source| {
            decode_error(
                topic,
                partition,
                offset,
                self.config.response_decompressed_bytes_max,
                source,
            )
        })?;
        Ok(FetchedPartition {
            records,
            next_offset,
            high_watermark: data.high_watermark,
            last_stable_offset: data.last_stable_offset,
            log_start_offset: data.log_start_offset,
        })
    }
}

/// A Fetch request for `wanted` (partition, offset), partitions grouped by topic. Sessions
/// (KIP-227) are not used: every request is a full one.
fn fetch_request(config: &FetchConfig, wanted: &[(&TopicPartition, i64)]) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (tp, offset) in wanted {
        let partition = FetchPartition::default()
            .with_partition(tp.partition)
            .with_current_leader_epoch(-1)
            .with_fetch_offset(*offset)
            .with_last_fetched_epoch(-1)
            .with_log_start_offset(-1)
            .with_partition_max_bytes(config.partition_max_bytes);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == tp.topic) {
            Some(topic) => topic.partitions.push(partition),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(kstr(&tp.topic)))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(config.max_wait_ms)
        .with_min_bytes(config.min_bytes)
        .with_max_bytes(config.max_bytes)
        .with_isolation_level(config.isolation.wire())
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

/// Takes `tp`'s part out of a Fetch response (`None` if the broker left it out).
fn take_partition(response: &mut FetchResponse, tp: &TopicPartition) -> Option<PartitionData> {
    response
        .responses
        .iter_mut()
        .filter(|t| t.topic.0.as_str() == tp.topic)
        .flat_map(|t| t.partitions.iter_mut())
        .find(|p| p.partition_index == tp.partition)
        .map(std::mem::take)
}

/// The client error for a record set of `topic`/`partition` fetched at `offset` that could not
/// be decoded.
fn decode_error(
    topic: &str,
    partition: i32,
    offset: i64,
    response_decompressed_bytes_max: usize,
    source: ProtocolError,
) -> ClientError {
    match source {
        ProtocolError::DecompressedBudgetExceeded { .. } => {
            ClientError::ResponseDecompressedTooLarge {
                topic: topic.to_owned(),
                partition,
                offset,
                limit_bytes: response_decompressed_bytes_max,
            }
        }
        source => ClientError::CorruptData {
            topic: topic.to_owned(),
            partition,
            offset,
            source,
        },
    }
}

/// Decodes one partition's record set from a Fetch response: the records at or after `offset`
/// that `isolation` lets through, and the offset to fetch next.
///
/// The next offset moves past every whole batch returned, kept or not: control batches, aborted
/// batches and batches the log cleaner emptied (a compacted topic keeps a batch without records
/// when it carries a producer's last sequence or epoch). Such an empty batch has no records to
/// return and, when it is a control batch, no marker to act on: it is skipped, as Kafka's Java
/// consumer does (`CompletedFetch`).
///
/// `budget_bytes` is what compressed batches may still decompress to in this fetch response; it
/// is reduced by what they did. Decoding stops before a batch that would exceed it, returning
/// the batches before (the next fetch starts at that batch), and fails with
/// [`ProtocolError::DecompressedBudgetExceeded`] only when it is the first batch.
fn decode_partition(
    data: Bytes,
    offset: i64,
    isolation: Isolation,
    aborted: Vec<(i64, i64)>,
    decompressed_bytes_max: usize,
    budget_bytes: &mut usize,
) -> Result<(Vec<Record>, i64), ProtocolError> {
    let mut filter = AbortedFilter::new(aborted);
    let mut records = Vec::new();
    let mut next_offset = offset;
    let mut batches =
        decode_batches(data, decompressed_bytes_max).with_decompressed_budget(*budget_bytes);
    let mut decoded_any = false;
    for batch in batches.by_ref() {
        let batch: RecordBatch = match batch {
            Ok(batch) => batch,
            Err(ProtocolError::DecompressedBudgetExceeded { .. }) if decoded_any => break,
            Err(e) => return Err(e),
        };
        decoded_any = true;
        let control = batch.control_type()?;
        let keep = match isolation {
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
    *budget_bytes = budget_bytes.saturating_sub(batches.decompressed_bytes());
    Ok((records, next_offset))
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

    use crate::protocol::compression::Compression;
    use crate::protocol::record_batch::{BatchProducerFields, RecordBatchBuilder};
    use bytes::BytesMut;

    /// Batches the log cleaner of Kafka 4.1.1 emptied, recorded by `protocol-tests/compacted.rs`
    /// (see fixtures/README.md): an idempotent producer's data batch (offsets 0..=3), a
    /// transactional producer's emptied abort marker (offset 13, producer 4), and a
    /// transactional data batch (offsets 129..=132, producer 5).
    const EMPTY_DATA: &[u8] = include_bytes!("../../fixtures/empty-data-batch.bin");
    const EMPTY_CONTROL: &[u8] = include_bytes!("../../fixtures/empty-control-batch.bin");
    const EMPTY_TXN_DATA: &[u8] =
        include_bytes!("../../fixtures/empty-transactional-data-batch.bin");

    /// A built batch of `values` at `base`, from producer `pid`; `marker` makes it a control
    /// batch holding that marker type (0 abort, 1 commit).
    fn batch(
        base: i64,
        pid: i64,
        transactional: bool,
        marker: Option<i16>,
        values: &[&str],
    ) -> Bytes {
        let mut b = RecordBatchBuilder::new(Compression::None);
        match marker {
            Some(kind) => {
                let mut key = 0i16.to_be_bytes().to_vec();
                key.extend_from_slice(&kind.to_be_bytes());
                b.append(0, Some(&key), Some(&[0, 0, 0, 0, 0, 0]), &[])
                    .unwrap();
            }
            None => {
                for v in values {
                    b.append(0, None, Some(v.as_bytes()), &[]).unwrap();
                }
            }
        }
        let fields = BatchProducerFields {
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: 0,
            is_transactional: transactional,
        };
        let mut data = BytesMut::from(&b.build(fields).unwrap()[..]);
        data[..8].copy_from_slice(&base.to_be_bytes()); // outside the CRC
        if marker.is_some() {
            data[22] |= 1 << 5; // the control bit of the attributes
            let crc = crc32c::crc32c(&data[21..]);
            data[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        data.freeze()
    }

    /// Decodes with a 1 MiB limit per batch and no limit per response.
    fn decode(
        data: Bytes,
        offset: i64,
        isolation: Isolation,
        aborted: Vec<(i64, i64)>,
    ) -> Result<(Vec<Record>, i64), ProtocolError> {
        let mut budget_bytes = usize::MAX;
        decode_partition(data, offset, isolation, aborted, 1 << 20, &mut budget_bytes)
    }

    fn values(records: &[Record]) -> Vec<(i64, String)> {
        records
            .iter()
            .map(|r| {
                let v = r.value.as_deref().unwrap_or_default();
                (r.offset, String::from_utf8_lossy(v).into_owned())
            })
            .collect()
    }

    fn cleaned_log() -> Bytes {
        let mut data = BytesMut::new();
        for part in [EMPTY_DATA, EMPTY_CONTROL, EMPTY_TXN_DATA] {
            data.extend_from_slice(part);
        }
        // Producer 9 aborts a transaction (135..=136, marker at 137), then commits 138.
        data.extend_from_slice(&batch(135, 9, true, None, &["aborted-1", "aborted-2"]));
        data.extend_from_slice(&batch(137, 9, true, Some(0), &[]));
        data.extend_from_slice(&batch(138, 9, true, None, &["committed"]));
        data.extend_from_slice(&batch(139, -1, false, None, &["plain"]));
        data.freeze()
    }

    #[test]
    fn empty_batches_left_by_the_cleaner_are_skipped() {
        // Only emptied batches: nothing to return, but the position moves past all of them.
        let mut only_empty = BytesMut::new();
        for part in [EMPTY_DATA, EMPTY_CONTROL, EMPTY_TXN_DATA] {
            only_empty.extend_from_slice(part);
        }
        for isolation in [Isolation::ReadCommitted, Isolation::ReadUncommitted] {
            let (records, next) =
                decode(only_empty.clone().freeze(), 0, isolation, vec![]).unwrap();
            assert!(records.is_empty(), "{isolation:?}");
            assert_eq!(next, 133, "{isolation:?}");
        }

        // Followed by live data, with an aborted transaction to filter.
        let (records, next) =
            decode(cleaned_log(), 0, Isolation::ReadCommitted, vec![(9, 135)]).unwrap();
        assert_eq!(
            values(&records),
            [(138, "committed".into()), (139, "plain".into())]
        );
        assert_eq!(next, 140);
        let (records, next) = decode(cleaned_log(), 0, Isolation::ReadUncommitted, vec![]).unwrap();
        assert_eq!(
            values(&records),
            [
                (135, "aborted-1".into()),
                (136, "aborted-2".into()),
                (138, "committed".into()),
                (139, "plain".into())
            ]
        );
        assert_eq!(next, 140);
    }

    #[test]
    fn an_emptied_control_batch_is_no_abort_marker() {
        // Producer 4's transaction from offset 10 is aborted; its data at 10..=12 is dropped. The
        // emptied control batch of producer 4 at 13 is not its abort marker (Java's
        // `containsAbortMarker` is false for it), so producer 4 stays aborting until a real one.
        let mut data = BytesMut::new();
        data.extend_from_slice(&batch(10, 4, true, None, &["a", "b", "c"]));
        data.extend_from_slice(EMPTY_CONTROL);
        data.extend_from_slice(&batch(14, 4, true, None, &["d"]));
        data.extend_from_slice(&batch(15, 4, true, Some(0), &[]));
        data.extend_from_slice(&batch(16, 4, true, None, &["e"]));
        let (records, next) =
            decode(data.freeze(), 10, Isolation::ReadCommitted, vec![(4, 10)]).unwrap();
        assert_eq!(values(&records), [(16, "e".into())]);
        assert_eq!(next, 17);
    }

    #[test]
    fn response_decompression_budget() {
        let value = "x".repeat(1000);
        let gzip_batch = |base: i64| {
            let mut b = RecordBatchBuilder::new(Compression::Gzip);
            b.append(0, None, Some(value.as_bytes()), &[]).unwrap();
            let fields = BatchProducerFields {
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                is_transactional: false,
            };
            let mut data = BytesMut::from(&b.build(fields).unwrap()[..]);
            data[..8].copy_from_slice(&base.to_be_bytes());
            data.freeze()
        };
        let mut data = BytesMut::new();
        for base in 0..3 {
            data.extend_from_slice(&gzip_batch(base));
        }
        let data = data.freeze();
        let one = decode_batches(gzip_batch(0), 1 << 20)
            .next()
            .unwrap()
            .unwrap()
            .records
            .len();
        assert!(one > 1000, "{one}");

        // Room for two and a half batches: two come back, the next fetch starts at the third.
        let mut budget = one * 5 / 2;
        let (records, next) = decode_partition(
            data.clone(),
            0,
            Isolation::ReadUncommitted,
            vec![],
            1 << 20,
            &mut budget,
        )
        .unwrap();
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(next, 2);
        assert_eq!(budget, one * 5 / 2 - 2 * one);

        // The rest of the budget carries over (to the next partition of the same response);
        // when not even the first batch fits, no progress is possible: a clear error.
        let err = decode_partition(
            data,
            0,
            Isolation::ReadUncommitted,
            vec![],
            1 << 20,
            &mut budget,
        )
        .unwrap_err();
        let remaining = one * 5 / 2 - 2 * one;
        assert_eq!(
            err,
            ProtocolError::DecompressedBudgetExceeded {
                base_offset: 0,
                remaining
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "decompressing the batch at offset 0 would exceed the {remaining} bytes left of \
                 the decompression budget"
            )
        );
        let err = decode_error("t", 3, 0, 1000, err);
        assert!(matches!(
            err,
            ClientError::ResponseDecompressedTooLarge {
                partition: 3,
                offset: 0,
                limit_bytes: 1000,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "t/3 at offset 0: the batch there decompresses to more than the 1000 bytes a fetch \
             response may decompress to (FetchConfig::response_decompressed_bytes_max)"
        );
    }

    #[test]
    fn one_request_groups_partitions_by_topic() {
        let (a0, b0, a2) = (
            TopicPartition::new("a", 0),
            TopicPartition::new("b", 0),
            TopicPartition::new("a", 2),
        );
        let request = fetch_request(&FetchConfig::default(), &[(&a0, 5), (&b0, 7), (&a2, 9)]);
        let got: Vec<(String, Vec<(i32, i64)>)> = request
            .topics
            .iter()
            .map(|t| {
                let partitions = t.partitions.iter();
                let partitions = partitions.map(|p| (p.partition, p.fetch_offset)).collect();
                (t.topic.0.to_string(), partitions)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), vec![(0, 5), (2, 9)]),
                ("b".to_owned(), vec![(0, 7)])
            ]
        );
        assert_eq!(request.isolation_level, 1);
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
