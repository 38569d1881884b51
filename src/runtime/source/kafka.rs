//! The Kafka source: one [`KafkaSourceReader`] per source subtask, its partitions (*splits*)
//! chosen by a [`SplitAssigner`], its offsets kept in the checkpoint.
//!
//! Why it looks like this (Flink's `KafkaSource`, FLIP-27,
//! <https://nightlies.apache.org/flink/flink-docs-stable/docs/connectors/datastream/kafka/>):
//!
//! - **Offsets live in the checkpoint, not in a consumer group.** A checkpoint stores
//!   [`positions`](KafkaSourceReader::positions) — per split, the offset after the last record
//!   handed out before the barrier — together with the state those records produced; restoring
//!   both is what makes the job's effect exactly once. A group commit would be a second,
//!   unsynchronised copy. [`commit_to_group`](KafkaSourceReader::commit_to_group) publishes the
//!   checkpointed offsets to a group for lag monitoring only; they are never read back.
//! - **`read_committed` by default** (KIP-98,
//!   <https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging>):
//!   upstream jobs write through transactions, and records of aborted ones must never count.
//! - **No group membership.** Each subtask takes the splits the assigner gives it, the same
//!   answer in every process; restored offsets are those of *all* splits of the job (whatever
//!   parallelism wrote them) and each reader takes its own, which is how rescaling works.
//! - **One fetch for all splits** ([`Fetcher::fetch_partitions`], one request per leader),
//!   running in the background while the buffer runs low (`prefetch_records_low`), so that
//!   reading overlaps processing; the buffer holds at most that many records plus one fetch
//!   response. [`poll`](KafkaSourceReader::poll) hands out at most `records_per_poll_max`
//!   records, round-robin over the splits, and never waits for a fetch while records are
//!   buffered.
//! - **Cancel safe `poll`**, so a task can `select!` between it and its control channel
//!   (barriers): the fetch task belongs to the reader, not to the `poll` future; its results
//!   change the reader's state only in synchronous steps, and records reach the caller's
//!   vector only in the synchronous last step.
//! - **Bounded mode** for backfills: the end offsets (last stable offsets under
//!   `read_committed`) are taken at open, and [`SourcePoll::End`] comes once every split reached
//!   them, however much is written meanwhile.
//! - **Partition discovery** on an interval; new partitions start at the earliest offset, as
//!   Flink's do (all their records were written after the job last looked).
//! - **Offset out of range is never silent**: an error naming the partition, the position and
//!   the log's range, or, when configured, a logged reset to the log start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::client::admin::Admin;
use crate::client::fetcher::{FetchConfig, FetchedPartition, Fetcher};
use crate::client::types::{Isolation, OffsetSpec, Record, TopicPartition};
use crate::client::{Client, ClientError};
use crate::runtime::RuntimeError;

use super::assigner::SplitAssigner;

/// Where a split without a restored offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartingOffsets {
    /// The log start.
    #[default]
    Earliest,
    /// The end of the log at open (the last stable offset under `read_committed`): only records
    /// written afterwards.
    Latest,
}

/// What to do when a split's position is outside its partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// Stop with [`RuntimeError::SourceOffsetOutOfRange`].
    #[default]
    Fail,
    /// Continue from the log start, with a warning saying how many offsets were skipped.
    Earliest,
}

/// Settings of a Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// The topics read. Each must exist at open.
    pub topics: Vec<String>,
    /// Where splits without a restored offset start.
    pub starting: StartingOffsets,
    /// Fetch settings; `read_committed` by default. `max_wait_ms` is how long a poll that finds
    /// nothing buffered may wait for new data; `max_bytes` bounds the buffer.
    pub fetch: FetchConfig,
    /// How often to look for new partitions (`None`: never). Not with `bounded`.
    pub discovery_interval_ms: Option<u64>,
    /// Read up to the end offsets taken at open, then report [`SourcePoll::End`].
    pub bounded: bool,
    /// A consumer group to publish checkpointed offsets to, for lag monitoring only.
    pub lag_group: Option<String>,
    /// Most records one [`poll`](KafkaSourceReader::poll) hands out.
    pub records_per_poll_max: usize,
    /// What to do when a position is outside the log.
    pub offset_out_of_range: OffsetReset,
    /// A fetch of the next records starts in the background while fewer than this many are
    /// buffered, so that reading overlaps processing; 0 fetches only when the buffer is empty.
    /// The buffer holds at most this many records plus one fetch response
    /// (`fetch.max_bytes`).
    pub prefetch_records_low: usize,
    /// Bounded at these positions instead of the end of the log at open: a split reads up to
    /// its offset here (a split not listed reads nothing). The runtime uses it to replay up to a
    /// checkpoint's positions. Implies bounded mode.
    pub stop_at: Option<Vec<SplitOffset>>,
}

impl KafkaSourceConfig {
    /// Reads `topics` from the earliest offset, unbounded, `read_committed`, no discovery, no
    /// lag group, at most 1,000 records per poll, prefetching below 2,000 buffered records,
    /// failing on an offset out of range.
    ///
    /// Fetches ask for at most 1 MiB per partition (the Java consumer's
    /// `max.partition.fetch.bytes`, which Flink's Kafka source inherits) instead of the fetcher's
    /// 4 MiB: the buffer holds one response plus the prefetch, so 4 MiB per partition made the
    /// job's peak RSS grow with the partition count (measured, 4 partitions, 1 M records: 100 MiB
    /// at 4 MiB, 31–42 MiB at 1 MiB) for no throughput a 2-core machine could see, and the first
    /// fetch (decoded whole before the first record is handed out) cost 30–100 ms of startup.
    pub fn new(topics: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            topics: topics.into_iter().map(Into::into).collect(),
            starting: StartingOffsets::Earliest,
            fetch: FetchConfig {
                partition_max_bytes: 1024 * 1024,
                ..FetchConfig::default()
            },
            discovery_interval_ms: None,
            bounded: false,
            lag_group: None,
            records_per_poll_max: 1_000,
            offset_out_of_range: OffsetReset::Fail,
            prefetch_records_low: 2_000,
            stop_at: None,
        }
    }

    /// Whether reading ends (at the end of the log at open, or at `stop_at`).
    fn is_bounded(&self) -> bool {
        self.bounded || self.stop_at.is_some()
    }

    /// Rejects impossible settings, naming the setting.
    fn validate(&self, subtask: usize, parallelism: usize) -> Result<(), RuntimeError> {
        let invalid = |key: &'static str, reason: String| Err(RuntimeError::Config { key, reason });
        if self.topics.is_empty() {
            return invalid("topics", "a source needs at least one topic".into());
        }
        if self.topics.iter().any(|t| t.is_empty()) {
            return invalid("topics", "a topic name is empty".into());
        }
        if self.records_per_poll_max == 0 {
            return invalid("records_per_poll_max", "must be at least 1".into());
        }
        if self.discovery_interval_ms == Some(0) {
            return invalid("discovery_interval_ms", "must be above 0 (or None)".into());
        }
        if self.is_bounded() && self.discovery_interval_ms.is_some() {
            return invalid(
                "discovery_interval_ms",
                "partition discovery and bounded mode exclude each other: a bounded read ends \
                 at the offsets taken at open"
                    .into(),
            );
        }
        if self.fetch.max_wait_ms < 0 {
            return invalid("fetch.max_wait_ms", "must not be negative".into());
        }
        if parallelism == 0 {
            return invalid("parallelism", "must be at least 1".into());
        }
        if subtask >= parallelism {
            return invalid(
                "subtask",
                format!("subtask {subtask} does not exist at parallelism {parallelism}"),
            );
        }
        Ok(())
    }
}

/// The position of one split in a checkpoint: the offset of the next record to read.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct SplitOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset after the last record handed out (the next one to read).
    pub next_offset: i64,
}

/// One record handed out by a [`KafkaSourceReader`].
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// The split's index in its reader (stable for the reader's lifetime; discovered splits get
    /// the next indices): the split argument of
    /// [`WatermarkGenerator::on_record`](super::watermark::WatermarkGenerator::on_record).
    pub split: usize,
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The record: offset, timestamp, key, value, headers.
    pub record: Record,
}

/// What one [`poll`](KafkaSourceReader::poll) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePoll {
    /// Records were appended to the caller's vector.
    Records,
    /// Nothing new for now (a fetch found no records); call again.
    Idle,
    /// Bounded mode: every split has reached its end offset. Nothing more will come.
    End,
}

#[derive(Debug)]
struct Split {
    topic: Arc<str>,
    tp: TopicPartition,
    /// The offset the next fetch starts at: past every batch fetched so far, including aborted
    /// batches and control markers that yielded no record.
    fetch_offset: i64,
    /// Fetched records not yet handed out, in offset order.
    buffer: VecDeque<Record>,
    /// Bounded mode: where this split ends.
    end_offset: Option<i64>,
    /// The end of the log (last stable offset under `read_committed`, high watermark
    /// otherwise) as the latest fetch reported it.
    log_end_seen: Option<i64>,
}

impl Split {
    fn new(tp: TopicPartition, start: i64, end_offset: Option<i64>) -> Self {
        Self {
            topic: Arc::from(tp.topic.as_str()),
            tp,
            fetch_offset: start,
            buffer: VecDeque::new(),
            end_offset,
            log_end_seen: None,
        }
    }

    /// The offset after the last record handed out: the first buffered record's, or, with
    /// nothing buffered, the next fetch offset (which is past anything skipped).
    fn position(&self) -> i64 {
        self.buffer.front().map_or(self.fetch_offset, |r| r.offset)
    }

    /// Bounded mode: every record before the end has been handed out.
    fn finished(&self) -> bool {
        self.buffer.is_empty() && self.end_offset.is_some_and(|end| self.fetch_offset >= end)
    }

    /// Takes in what a fetch at `self.fetch_offset` with `isolation` returned.
    fn apply(&mut self, fetched: FetchedPartition, isolation: Isolation) {
        self.log_end_seen =
            Some(isolation.end_offset(fetched.high_watermark, fetched.last_stable_offset));
        let mut next = fetched.next_offset;
        let mut records = fetched.records;
        if let Some(end) = self.end_offset {
            // The log grew past the end taken at open: what is beyond belongs to a later run.
            records.retain(|r| r.offset < end);
            next = next.min(end);
        }
        self.fetch_offset = self.fetch_offset.max(next);
        self.buffer.extend(records);
    }
}

/// Reads the splits one source subtask owns. See the module docs.
#[derive(Debug)]
pub struct KafkaSourceReader {
    client: Client,
    fetcher: Fetcher,
    config: KafkaSourceConfig,
    ownership: Ownership,
    splits: Vec<Split>,
    /// The index of each split in `splits`.
    split_indices: HashMap<TopicPartition, usize>,
    /// Where the next round-robin hand-out starts.
    cursor: usize,
    /// When partition discovery is next due.
    next_discovery: Option<Instant>,
    /// The fetch running in the background (at most one); dropped, and so aborted, with the
    /// reader.
    in_flight: JoinSet<FetchResults>,
    /// The partition discovery running in the background (at most one): the new partitions
    /// this subtask owns, with their earliest offsets.
    discovery: JoinSet<Result<Vec<(TopicPartition, i64)>, RuntimeError>>,
}

/// What one background fetch returns: per split asked for, the offset asked at and the answer.
type FetchResults = Vec<((TopicPartition, i64), Result<FetchedPartition, ClientError>)>;

impl KafkaSourceReader {
    /// Opens the reader of source subtask `subtask` of `parallelism`: lists the topics'
    /// partitions, keeps those `assigner` gives this subtask, and starts each at its offset in
    /// `restored` (the offsets of all splits of the job from the checkpoint restored, whatever
    /// parallelism wrote them; empty on a fresh start). A split without a restored offset
    /// starts at `config.starting` — unless `restored` has offsets for other partitions of its
    /// topic: then the partition was created after that checkpoint and starts at the earliest
    /// offset, as a discovered one would. Bounded mode takes the end offsets now.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing has been read yet.
    pub async fn open(
        client: Client,
        config: KafkaSourceConfig,
        subtask: usize,
        parallelism: usize,
        restored: &[SplitOffset],
        assigner: Arc<dyn SplitAssigner>,
    ) -> Result<Self, RuntimeError> {
        config.validate(subtask, parallelism)?;
        let mut reader = Self {
            fetcher: Fetcher::new(client.clone(), config.fetch.clone()),
            client: client.clone(),
            next_discovery: config
                .discovery_interval_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms)),
            ownership: Ownership {
                client: client.clone(),
                topics: config.topics.clone(),
                assigner,
                subtask,
                parallelism,
            },
            config,
            splits: Vec::new(),
            split_indices: HashMap::new(),
            cursor: 0,
            in_flight: JoinSet::new(),
            discovery: JoinSet::new(),
        };
        let restored_offsets: HashMap<(&str, i32), i64> = restored
            .iter()
            .map(|s| ((s.topic.as_str(), s.partition), s.next_offset))
            .collect();
        let restored_topics: HashSet<&str> = restored.iter().map(|s| s.topic.as_str()).collect();
        let admin = Admin::new(reader.client.clone());
        let isolation = reader.config.fetch.isolation;
        for tp in reader.ownership.partitions().await? {
            let restored_offset = restored_offsets.get(&(tp.topic.as_str(), tp.partition));
            let start = match restored_offset {
                Some(offset) => *offset,
                None => {
                    let spec = if restored_topics.contains(tp.topic.as_str()) {
                        OffsetSpec::Earliest
                    } else {
                        match reader.config.starting {
                            StartingOffsets::Earliest => OffsetSpec::Earliest,
                            StartingOffsets::Latest => OffsetSpec::Latest,
                        }
                    };
                    admin
                        .list_offset(&tp.topic, tp.partition, spec, isolation)
                        .await?
                }
            };
            let end = if let Some(stop) = &reader.config.stop_at {
                let at = stop
                    .iter()
                    .find(|s| s.topic == tp.topic && s.partition == tp.partition)
                    .map_or(start, |s| s.next_offset);
                Some(at.max(start))
            } else if reader.config.bounded {
                let end = admin
                    .list_offset(&tp.topic, tp.partition, OffsetSpec::Latest, isolation)
                    .await?;
                Some(end)
            } else {
                None
            };
            debug!(split = %tp, start, ?end, restored = restored_offset.is_some(), "source split");
            reader.add_split(Split::new(tp, start, end));
        }
        info!(
            subtask,
            parallelism,
            splits = reader.splits.len(),
            bounded = reader.config.bounded,
            "Kafka source opened"
        );
        Ok(reader)
    }

    /// Appends up to `records_per_poll_max` records to `out`. Buffered records come back at
    /// once, without waiting for any fetch; with nothing buffered it waits for the fetch in
    /// flight (or starts one), which the broker holds at most `fetch.max_wait_ms` when there is
    /// no data, then returns [`SourcePoll::Idle`] if it brought nothing. Meanwhile it keeps one
    /// fetch of every split running in the background whenever fewer than
    /// `prefetch_records_low` records are buffered, so that reading overlaps processing, and,
    /// when discovery is due, a look for new partitions.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future at any await point loses and duplicates nothing. The
    /// fetch and the discovery run as tasks owned by the reader and survive a dropped `poll`;
    /// their results enter the reader's state only in synchronous steps after they completed;
    /// records reach `out` only in the last, synchronous step before returning.
    pub async fn poll(&mut self, out: &mut Vec<SourceRecord>) -> Result<SourcePoll, RuntimeError> {
        let mut waited = false;
        loop {
            // Background work that has completed: take it in, without waiting.
            if let Some(done) = self.discovery.try_join_next() {
                self.take_in_discovery(done)?;
            }
            if let Some(done) = self.in_flight.try_join_next() {
                self.take_in(done).await?;
            }
            self.start_discovery_if_due();
            if self.in_flight.is_empty()
                && self.buffered_records() < self.config.prefetch_records_low
            {
                self.start_fetch();
            }
            let max = self.config.records_per_poll_max;
            if hand_out(&mut self.splits, &mut self.cursor, max, out) > 0 {
                return Ok(SourcePoll::Records);
            }
            if self.config.is_bounded() && self.splits.iter().all(Split::finished) {
                return Ok(SourcePoll::End);
            }
            if waited {
                return Ok(SourcePoll::Idle);
            }
            // Nothing buffered: the one place that waits.
            if self.in_flight.is_empty() {
                self.start_fetch();
            }
            if let Some(done) = self.in_flight.join_next().await {
                self.take_in(done).await?;
            } else if let Some(done) = self.discovery.join_next().await {
                self.take_in_discovery(done)?;
            } else {
                self.wait_without_splits().await;
            }
            waited = true;
        }
    }

    /// How many fetched records wait to be handed out.
    fn buffered_records(&self) -> usize {
        self.splits.iter().map(|s| s.buffer.len()).sum()
    }

    /// Starts one fetch of every split that has not reached its end, as a task of the reader.
    /// Does nothing when there is no such split.
    fn start_fetch(&mut self) {
        let wanted: Vec<(TopicPartition, i64)> = self
            .splits
            .iter()
            .filter(|s| s.end_offset.is_none_or(|e| s.fetch_offset < e))
            .map(|s| (s.tp.clone(), s.fetch_offset))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let fetcher = self.fetcher.clone();
        self.in_flight.spawn(async move {
            let results = fetcher.fetch_partitions(&wanted).await;
            wanted.into_iter().zip(results).collect()
        });
    }

    /// No split to fetch (more subtasks than partitions): waits as a fetch would, or until
    /// discovery is due, so that the caller's loop does not spin.
    async fn wait_without_splits(&self) {
        let wait_ms = u64::try_from(self.config.fetch.max_wait_ms).unwrap_or(0);
        let mut wake = Instant::now() + Duration::from_millis(wait_ms);
        if let Some(due) = self.next_discovery {
            wake = wake.min(due);
        }
        tokio::time::sleep_until(wake).await;
    }

    /// Takes in a completed fetch: records into the buffers, positions moved. Results for a
    /// split whose fetch offset has moved since the fetch started are stale and dropped.
    async fn take_in(
        &mut self,
        done: Result<FetchResults, tokio::task::JoinError>,
    ) -> Result<(), RuntimeError> {
        let results = done.map_err(|e| RuntimeError::TaskFailed {
            task: format!("source {} fetch", self.ownership.subtask),
            reason: e.to_string(),
        })?;
        // Nothing awaits until every successful result is applied.
        let isolation = self.config.fetch.isolation;
        let mut out_of_range = Vec::new();
        let mut failure = None;
        for ((tp, offset), result) in results {
            let Some(index) = self.split_index(&tp) else {
                continue;
            };
            if self.splits[index].fetch_offset != offset {
                continue;
            }
            match result {
                Ok(fetched) => self.splits[index].apply(fetched, isolation),
                Err(ClientError::OffsetOutOfRange { .. }) => out_of_range.push((index, offset)),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
        for (index, offset) in out_of_range {
            self.out_of_range(index, offset).await?;
        }
        Ok(())
    }

    fn split_index(&self, tp: &TopicPartition) -> Option<usize> {
        self.split_indices.get(tp).copied()
    }

    /// Adds a split under the next index.
    fn add_split(&mut self, split: Split) {
        self.split_indices
            .insert(split.tp.clone(), self.splits.len());
        self.splits.push(split);
    }

    /// A fetch of split `index` at `offset` was refused as out of range: fail, or reset to the
    /// log start, per the configuration. Nothing changes before the lookups have completed.
    async fn out_of_range(&mut self, index: usize, offset: i64) -> Result<(), RuntimeError> {
        let tp = self.splits[index].tp.clone();
        let admin = Admin::new(self.client.clone());
        let isolation = self.config.fetch.isolation;
        let start = admin
            .list_offset(&tp.topic, tp.partition, OffsetSpec::Earliest, isolation)
            .await?;
        let end = admin
            .list_offset(
                &tp.topic,
                tp.partition,
                OffsetSpec::Latest,
                Isolation::ReadUncommitted,
            )
            .await?;
        if (start..=end).contains(&offset) {
            // In range again (a leader change moved the log end for a moment): just fetch again.
            debug!(split = %tp, offset, start, end, "offset out of range was transient");
            return Ok(());
        }
        match self.config.offset_out_of_range {
            OffsetReset::Fail => Err(RuntimeError::SourceOffsetOutOfRange {
                topic: tp.topic,
                partition: tp.partition,
                offset,
                log_start_offset: start,
                log_end_offset: end,
            }),
            OffsetReset::Earliest => {
                if offset < start {
                    warn!(split = %tp, offset, log_start_offset = start, skipped = start - offset,
                        "source position was deleted from the log; continuing at the log start, \
                         skipping the deleted offsets");
                } else {
                    warn!(split = %tp, offset, log_end_offset = end,
                        "source position is beyond the log end (topic re-created?); continuing \
                         at the log start, reading its records again");
                }
                self.splits[index].fetch_offset = start;
                Ok(())
            }
        }
    }

    /// Starts a look for new partitions in the background when discovery is due and none is
    /// running.
    fn start_discovery_if_due(&mut self) {
        let Some(due) = self.next_discovery else {
            return;
        };
        if !self.discovery.is_empty() || Instant::now() < due {
            return;
        }
        let known: HashSet<TopicPartition> = self.splits.iter().map(|s| s.tp.clone()).collect();
        let look = self
            .ownership
            .clone()
            .new_partitions(known, self.config.fetch.isolation);
        self.discovery.spawn(look);
    }

    /// Adds the partitions a completed discovery found (they start at the earliest offset) and
    /// schedules the next look.
    fn take_in_discovery(
        &mut self,
        done: Result<Result<Vec<(TopicPartition, i64)>, RuntimeError>, tokio::task::JoinError>,
    ) -> Result<(), RuntimeError> {
        let found = done.map_err(|e| RuntimeError::TaskFailed {
            task: format!("source {} partition discovery", self.ownership.subtask),
            reason: e.to_string(),
        })??;
        for (tp, start) in found {
            if self.split_index(&tp).is_some() {
                continue;
            }
            info!(subtask = self.ownership.subtask, split = %tp, start, "discovered a new partition");
            self.add_split(Split::new(tp, start, None));
        }
        if let Some(interval_ms) = self.config.discovery_interval_ms {
            self.next_discovery = Some(Instant::now() + Duration::from_millis(interval_ms));
        }
        Ok(())
    }

    /// Per split, the offset after the last record [`poll`](Self::poll) handed out: what a
    /// checkpoint taken now must store. In split index order.
    pub fn positions(&self) -> Vec<SplitOffset> {
        self.splits
            .iter()
            .map(|s| SplitOffset {
                topic: s.tp.topic.clone(),
                partition: s.tp.partition,
                next_offset: s.position(),
            })
            .collect()
    }

    /// The splits read, in split index order (the index of [`SourceRecord::split`]).
    pub fn splits(&self) -> Vec<TopicPartition> {
        self.splits.iter().map(|s| s.tp.clone()).collect()
    }

    /// Bounded mode: the end offset of every split, taken at open; `None` when unbounded.
    pub fn end_offsets(&self) -> Option<Vec<SplitOffset>> {
        self.config.is_bounded().then(|| {
            self.splits
                .iter()
                .map(|s| SplitOffset {
                    topic: s.tp.topic.clone(),
                    partition: s.tp.partition,
                    next_offset: s.end_offset.unwrap_or(s.fetch_offset),
                })
                .collect()
        })
    }

    /// Per split, in split index order, how many offsets its position is behind the end of
    /// the log as the latest fetch saw it (the last stable offset under `read_committed`; the
    /// count includes transaction markers and aborted records): the consumer lag, for metrics.
    /// `None` for a split not fetched yet.
    pub fn lag(&self) -> Vec<(TopicPartition, Option<i64>)> {
        self.splits
            .iter()
            .map(|s| {
                let behind = s.log_end_seen.map(|end| (end - s.position()).max(0));
                (s.tp.clone(), behind)
            })
            .collect()
    }

    /// Which subtask this reader is.
    pub fn subtask(&self) -> usize {
        self.ownership.subtask
    }

    /// Commits `offsets` (normally those of a completed checkpoint) to the configured
    /// `lag_group` as a simple group (generation -1, empty member id), so that Kafka's tools
    /// show the job's lag. For monitoring only: the source never reads them back. Does nothing
    /// without a `lag_group`.
    ///
    /// # Cancel safety
    /// Cancel safe in effect: a dropped commit may or may not have been applied, and the next
    /// one supersedes it.
    pub async fn commit_to_group(&self, offsets: &[SplitOffset]) -> Result<(), RuntimeError> {
        let Some(group) = &self.config.lag_group else {
            return Ok(());
        };
        let offsets: Vec<(TopicPartition, i64)> = offsets
            .iter()
            .map(|s| {
                (
                    TopicPartition::new(s.topic.clone(), s.partition),
                    s.next_offset,
                )
            })
            .collect();
        Admin::new(self.client.clone())
            .commit_group_offsets(group, &offsets)
            .await?;
        Ok(())
    }
}

/// Who reads what: the partitions of `topics` that `assigner` gives `subtask` of `parallelism`,
/// sorted, from freshly loaded metadata.
#[derive(Debug, Clone)]
struct Ownership {
    client: Client,
    topics: Vec<String>,
    assigner: Arc<dyn SplitAssigner>,
    subtask: usize,
    parallelism: usize,
}

impl Ownership {
    async fn partitions(&self) -> Result<Vec<TopicPartition>, RuntimeError> {
        self.client.refresh_metadata(&self.topics).await?;
        let mut owned = Vec::new();
        for topic in &self.topics {
            let info = self.client.topic(topic).await?;
            for p in &info.partitions {
                let tp = TopicPartition::new(topic.clone(), p.partition);
                let owner = self.assigner.owner(&tp, self.parallelism);
                if owner >= self.parallelism {
                    return Err(RuntimeError::Config {
                        key: "assigner",
                        reason: format!(
                            "{:?} gave {tp} to subtask {owner}, which does not exist at \
                             parallelism {}",
                            self.assigner, self.parallelism
                        ),
                    });
                }
                if owner == self.subtask {
                    owned.push(tp);
                }
            }
        }
        owned.sort();
        owned.dedup();
        Ok(owned)
    }

    /// The owned partitions not in `known`, each with its earliest offset (under `isolation`).
    async fn new_partitions(
        self,
        known: HashSet<TopicPartition>,
        isolation: Isolation,
    ) -> Result<Vec<(TopicPartition, i64)>, RuntimeError> {
        let admin = Admin::new(self.client.clone());
        let mut found = Vec::new();
        for tp in self.partitions().await? {
            if !known.contains(&tp) {
                let start = admin
                    .list_offset(&tp.topic, tp.partition, OffsetSpec::Earliest, isolation)
                    .await?;
                found.push((tp, start));
            }
        }
        Ok(found)
    }
}

/// Moves buffered records to `out`, round-robin over `splits` from `cursor` (which moves on by
/// one), at most `max` in all. Returns how many.
fn hand_out(
    splits: &mut [Split],
    cursor: &mut usize,
    max: usize,
    out: &mut Vec<SourceRecord>,
) -> usize {
    let count = splits.len();
    let non_empty = splits.iter().filter(|s| !s.buffer.is_empty()).count();
    if non_empty == 0 {
        return 0;
    }
    // An even share per split with records, so one busy split does not starve the others.
    let share = max.div_ceil(non_empty);
    let mut handed = 0;
    for i in 0..count {
        if handed >= max {
            break;
        }
        let index = (*cursor + i) % count;
        let split = &mut splits[index];
        let take = share.min(max - handed).min(split.buffer.len());
        out.extend(split.buffer.drain(..take).map(|record| SourceRecord {
            split: index,
            topic: Arc::clone(&split.topic),
            partition: split.tp.partition,
            record,
        }));
        handed += take;
    }
    *cursor = (*cursor + 1) % count;
    handed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64) -> Record {
        Record {
            offset,
            timestamp: offset * 10,
            key: None,
            value: Some(bytes::Bytes::from(offset.to_string())),
            headers: Vec::new(),
        }
    }

    impl Split {
        fn apply_rc(&mut self, fetched: FetchedPartition) {
            self.apply(fetched, Isolation::ReadCommitted);
        }
    }

    /// The reader and its `poll` future can move between threads (tokio::spawn).
    #[test]
    fn reader_and_poll_are_send() {
        fn is_send<T: Send>(_: &T) {}
        let _ = |reader: &'static mut KafkaSourceReader, out: &'static mut Vec<SourceRecord>| {
            is_send(&reader.poll(out));
            is_send(&*reader);
        };
    }

    fn fetched(offsets: &[i64], next_offset: i64) -> FetchedPartition {
        FetchedPartition {
            records: offsets.iter().copied().map(record).collect(),
            next_offset,
            high_watermark: next_offset,
            last_stable_offset: next_offset,
            log_start_offset: 0,
        }
    }

    #[test]
    fn position_is_the_first_buffered_record_or_past_what_was_skipped() {
        let mut s = Split::new(TopicPartition::new("t", 0), 10, None);
        assert_eq!(s.position(), 10);
        // Offsets 10..=12 were an aborted transaction and 13 its marker: nothing to hand out,
        // but the position moves past them.
        s.apply_rc(fetched(&[14, 15], 16));
        assert_eq!(s.position(), 14);
        s.buffer.pop_front();
        assert_eq!(s.position(), 15);
        s.buffer.pop_front();
        assert_eq!(s.position(), 16);
        s.apply_rc(fetched(&[], 20));
        assert_eq!(s.position(), 20);
    }

    #[test]
    fn bounded_split_stops_at_its_end() {
        let mut s = Split::new(TopicPartition::new("t", 0), 0, Some(3));
        assert!(!s.finished());
        s.apply_rc(fetched(&[0, 1, 2, 3, 4], 5));
        assert_eq!(s.buffer.len(), 3);
        assert_eq!(s.fetch_offset, 3);
        assert!(!s.finished(), "records still buffered");
        s.buffer.clear();
        assert!(s.finished());
        assert_eq!(s.position(), 3);
        assert!(Split::new(TopicPartition::new("t", 0), 7, Some(7)).finished());
    }

    #[test]
    fn hand_out_is_bounded_and_fair() {
        let mut a = Split::new(TopicPartition::new("t", 0), 0, None);
        a.apply_rc(fetched(&(0..10).collect::<Vec<_>>(), 10));
        let mut b = Split::new(TopicPartition::new("t", 1), 0, None);
        b.apply_rc(fetched(&[0, 1], 2));
        let mut splits = vec![a, b];
        let mut cursor = 0;
        let mut out = Vec::new();
        let positions = |splits: &[Split]| splits.iter().map(Split::position).collect::<Vec<_>>();
        assert_eq!(hand_out(&mut splits, &mut cursor, 4, &mut out), 4);
        let got: Vec<(usize, i64)> = out.iter().map(|r| (r.split, r.record.offset)).collect();
        assert_eq!(got, [(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert_eq!(positions(&splits), [2, 2]);
        out.clear();
        assert_eq!(hand_out(&mut splits, &mut cursor, 4, &mut out), 4);
        assert_eq!(
            out.iter().map(|r| r.record.offset).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        out.clear();
        assert_eq!(hand_out(&mut splits, &mut cursor, 4, &mut out), 4);
        out.clear();
        assert_eq!(hand_out(&mut splits, &mut cursor, 4, &mut out), 0);
        assert_eq!(positions(&splits), [10, 2]);
    }

    #[test]
    fn settings_are_checked_by_name() {
        let check = |config: KafkaSourceConfig, subtask, parallelism| match config
            .validate(subtask, parallelism)
        {
            Err(RuntimeError::Config { key, reason }) => format!("{key}: {reason}"),
            other => panic!("{other:?}"),
        };
        let ok = KafkaSourceConfig::new(["t"]);
        assert!(ok.validate(0, 1).is_ok());
        assert_eq!(
            check(KafkaSourceConfig::new(Vec::<String>::new()), 0, 1),
            "topics: a source needs at least one topic"
        );
        assert_eq!(
            check(ok.clone(), 2, 2),
            "subtask: subtask 2 does not exist at parallelism 2"
        );
        let bounded_discovery = KafkaSourceConfig {
            bounded: true,
            discovery_interval_ms: Some(1_000),
            ..ok.clone()
        };
        assert!(check(bounded_discovery, 0, 1)
            .starts_with("discovery_interval_ms: partition discovery and bounded mode"));
        let zero = KafkaSourceConfig {
            records_per_poll_max: 0,
            ..ok
        };
        assert_eq!(
            check(zero, 0, 1),
            "records_per_poll_max: must be at least 1"
        );
    }

    #[test]
    fn out_of_range_error_names_partition_and_offsets() {
        let e = RuntimeError::SourceOffsetOutOfRange {
            topic: "orders".into(),
            partition: 3,
            offset: 5,
            log_start_offset: 100,
            log_end_offset: 250,
        };
        assert_eq!(
            e.to_string(),
            "orders/3: source position 5 is outside the log, which holds offsets 100..250 \
             (records deleted by retention, or the topic was re-created); set \
             KafkaSourceConfig::offset_out_of_range to OffsetReset::Earliest to continue from \
             the log start instead"
        );
    }

    #[test]
    fn split_offsets_round_trip_through_rkyv_and_json() {
        let offsets = vec![
            SplitOffset {
                topic: "a".into(),
                partition: 0,
                next_offset: 42,
            },
            SplitOffset {
                topic: "b".into(),
                partition: 7,
                next_offset: -1,
            },
        ];
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&offsets).unwrap();
        let back: Vec<SplitOffset> =
            rkyv::from_bytes::<Vec<SplitOffset>, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, offsets);
        let json = serde_json::to_string(&offsets).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<SplitOffset>>(&json).unwrap(),
            offsets
        );
    }
}
