//! What the runtime needs from a source and a sink, as object-safe traits, and the in-memory
//! source and sink (tests and the pipeline benchmark run the job without a broker).
//!
//! The Kafka source ([`super::source`]) and the two-phase-commit Kafka sink ([`super::sink`])
//! implement these; so can any other system with replayable input (source) or transactions /
//! idempotent writes (sink). Futures are boxed: one allocation per *batch*, never per record.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::sink::{IdempotentSink, RecordPosition};
use super::source::{SourcePoll, SourceRecord, SplitOffset};
use super::RuntimeError;
use crate::client::types::{Record, RecordHeader};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One source subtask's reader.
pub trait SourceReader: Send + 'static {
    /// Appends the next records to `out`.
    ///
    /// # Cancel safety
    /// Implementations must be cancel safe: the task polls it in a `select!` with checkpoint
    /// triggers, and a dropped poll must lose and duplicate nothing.
    fn poll<'a>(
        &'a mut self,
        out: &'a mut Vec<SourceRecord>,
    ) -> BoxFuture<'a, Result<SourcePoll, RuntimeError>>;
    /// How many splits this reader reads (split indexes in [`SourceRecord`] are below it).
    fn split_count(&self) -> usize;
    /// The position after the last record handed out, per split.
    fn positions(&self) -> Vec<SplitOffset>;
    /// A checkpoint holding `positions` is complete (e.g. commit them to a group for lag
    /// monitoring). The default does nothing.
    fn checkpoint_complete(
        &mut self,
        _positions: Vec<SplitOffset>,
    ) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Creates the source's subtask readers.
pub trait SourceFactory: Send + Sync + 'static {
    /// The reader of `subtask` of `parallelism`, starting at the restored positions (of every
    /// split of the job, whatever parallelism wrote them; each reader takes its own). With
    /// `stop_at`, the reader is bounded at those positions (a split not listed reads nothing):
    /// the runtime replays up to a checkpoint's positions with it.
    fn create(
        &self,
        subtask: usize,
        parallelism: usize,
        restored: Vec<SplitOffset>,
        stop_at: Option<Vec<SplitOffset>>,
    ) -> BoxFuture<'_, Result<Box<dyn SourceReader>, RuntimeError>>;
}

/// Which output of the job a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The job's output.
    Main,
    /// Input that could not be read (malformed); the reason is in a header.
    DeadLetter,
    /// Records later than the allowed lateness.
    Late,
}

/// One record for a sink.
#[derive(Debug, Clone)]
pub struct OutputRecord {
    /// Which output.
    pub target: Target,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<RecordHeader>,
}

/// One sink subtask's writer, driven by the keyed subtask it is chained to.
pub trait SinkWriter: Send + 'static {
    /// Writes (drains) `records` into the current transaction / epoch.
    fn write<'a>(
        &'a mut self,
        records: &'a mut Vec<OutputRecord>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// The barrier of checkpoint `checkpoint_id` passed: make what was written durable but
    /// invisible (prepare) and return what must be stored with the checkpoint to finish it (a
    /// JSON document: it is kept in the checkpoint's metadata, small and readable).
    fn prepare(
        &mut self,
        checkpoint_id: u64,
    ) -> BoxFuture<'_, Result<serde_json::Value, RuntimeError>>;
    /// Checkpoint `checkpoint_id` is complete: make everything prepared up to it visible.
    /// Should not wait for the commits; their errors surface in a later call.
    fn commit_up_to(&mut self, checkpoint_id: u64) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Waits for commits handed out so far (the end of a bounded job).
    fn flush_commits(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Stops: aborts what is open and not prepared.
    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), RuntimeError>>;
    /// Whether [`write`](Self::write) can take records now. A two-phase-commit sink with a
    /// bounded pool of transactions cannot after a barrier while every transaction of its pool
    /// waits for a checkpoint to complete; the subtask then stops reading its inputs until the
    /// completion notice (backpressure) instead of failing.
    fn writable(&self) -> bool {
        true
    }
}

/// What recovery of a sink did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkRecovery {
    /// Prepared transactions this recovery committed.
    pub committed: u64,
    /// Prepared transactions that were already committed.
    pub already_committed: u64,
    /// Lingering transactions aborted.
    pub aborted_lingering: u64,
}

/// Creates sink writers, and recovers what a previous run left.
pub trait SinkFactory: Send + Sync + 'static {
    /// Before any writer exists: finish what the restored checkpoint prepared (`committables`:
    /// what every subtask's [`SinkWriter::prepare`] returned) and clean up what it does not know.
    fn recover<'a>(
        &'a self,
        committables: Vec<serde_json::Value>,
        properties: &'a BTreeMap<String, String>,
        parallelism: usize,
    ) -> BoxFuture<'a, Result<SinkRecovery, RuntimeError>>;
    /// Checks the sink's settings against the job's checkpoint settings (e.g. a transaction
    /// timeout that outlasts a checkpoint), before anything runs.
    fn validate<'a>(
        &'a self,
        _checkpoint: &'a super::job::CheckpointConfig,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    /// Properties to keep in every checkpoint (e.g. the owner map of transactional ids).
    fn properties(&self, parallelism: usize) -> BTreeMap<String, String>;
    /// The writer of `subtask`.
    /// The writer of `subtask`; `restored` is the checkpoint the job restored from (what was
    /// written after it will be written again).
    fn create(
        &self,
        subtask: usize,
        parallelism: usize,
        restored: Option<u64>,
    ) -> BoxFuture<'_, Result<Box<dyn SinkWriter>, RuntimeError>>;
}

/// The topic name of the in-memory source's splits (partition i is split i).
pub const MEMORY_TOPIC: &str = "memory";

/// An in-memory source: `splits` fixed vectors of records, read in batches, bounded.
#[derive(Debug, Clone)]
pub struct MemorySource {
    splits: Arc<Vec<Vec<Record>>>,
    batch: usize,
}

impl MemorySource {
    /// A source over `splits` (split i is partition i of [`MEMORY_TOPIC`]), handing out `batch` records per poll.
    pub fn new(splits: Vec<Vec<Record>>, batch: usize) -> Self {
        Self {
            splits: Arc::new(splits),
            batch: batch.max(1),
        }
    }
}

struct MemoryReader {
    splits: Arc<Vec<Vec<Record>>>,
    /// (split, next, end)
    mine: Vec<(usize, usize, usize)>,
    batch: usize,
    next: usize,
}

impl SourceFactory for MemorySource {
    fn create(
        &self,
        subtask: usize,
        parallelism: usize,
        restored: Vec<SplitOffset>,
        stop_at: Option<Vec<SplitOffset>>,
    ) -> BoxFuture<'_, Result<Box<dyn SourceReader>, RuntimeError>> {
        let find = |list: &[SplitOffset], s: usize| {
            list.iter()
                .find(|p| p.topic == MEMORY_TOPIC && p.partition == s as i32)
                .map(|p| p.next_offset as usize)
        };
        let mine: Vec<(usize, usize, usize)> = (0..self.splits.len())
            .filter(|s| s % parallelism == subtask)
            .map(|s| {
                let at = find(&restored, s).unwrap_or(0);
                let end = match &stop_at {
                    Some(stop) => find(stop, s).unwrap_or(at).min(self.splits[s].len()),
                    None => self.splits[s].len(),
                };
                (s, at, end)
            })
            .collect();
        let reader = MemoryReader {
            splits: self.splits.clone(),
            mine,
            batch: self.batch,
            next: 0,
        };
        Box::pin(async move { Ok(Box::new(reader) as Box<dyn SourceReader>) })
    }
}

impl SourceReader for MemoryReader {
    fn poll<'a>(
        &'a mut self,
        out: &'a mut Vec<SourceRecord>,
    ) -> BoxFuture<'a, Result<SourcePoll, RuntimeError>> {
        // Synchronous, so trivially cancel safe: nothing happens before the future is polled.
        Box::pin(async move {
            for _ in 0..self.mine.len() {
                let i = self.next % self.mine.len();
                self.next += 1;
                let (s, at, stop) = self.mine[i];
                let split = &self.splits[s];
                if at < stop {
                    let end = (at + self.batch).min(stop);
                    let topic: Arc<str> = Arc::from(MEMORY_TOPIC);
                    out.extend(split[at..end].iter().map(|r| SourceRecord {
                        split: i,
                        topic: topic.clone(),
                        partition: s as i32,
                        record: r.clone(),
                    }));
                    self.mine[i].1 = end;
                    return Ok(SourcePoll::Records);
                }
            }
            Ok(SourcePoll::End)
        })
    }
    fn split_count(&self) -> usize {
        self.mine.len()
    }
    fn positions(&self) -> Vec<SplitOffset> {
        self.mine
            .iter()
            .map(|(s, at, _)| SplitOffset {
                topic: MEMORY_TOPIC.into(),
                partition: *s as i32,
                next_offset: *at as i64,
            })
            .collect()
    }
}

/// An in-memory two-phase-commit sink: records become visible in [`MemorySink::committed`]
/// when the checkpoint after them completes, and a prepared epoch is finished by recovery from
/// the committable stored in the checkpoint — so it is exactly once across (in-process) crashes,
/// like the Kafka sink, and lets the runtime be tested without a broker.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    shared: Arc<Mutex<MemoryShared>>,
    /// Discard records instead of keeping them (benchmarks).
    pub discard: bool,
}

#[derive(Debug, Default)]
struct MemoryShared {
    committed: Vec<OutputRecord>,
    /// (subtask, checkpoint) epochs already committed: commit is idempotent.
    done: std::collections::BTreeSet<(usize, u64)>,
}

type MemoryRecord = (Option<Vec<u8>>, Option<Vec<u8>>, u8);

/// What a memory sink stores in a checkpoint for one prepared epoch.
#[derive(serde::Serialize, serde::Deserialize)]
struct MemoryCommittable {
    subtask: usize,
    checkpoint: u64,
    /// (key, value, target code)
    records: Vec<MemoryRecord>,
}

fn target_code(t: Target) -> u8 {
    match t {
        Target::Main => 0,
        Target::DeadLetter => 1,
        Target::Late => 2,
    }
}

fn target_of(c: u8) -> Target {
    match c {
        1 => Target::DeadLetter,
        2 => Target::Late,
        _ => Target::Main,
    }
}

impl MemorySink {
    /// A sink that commits nothing it is given (benchmarks, and replays whose output is
    /// already committed).
    pub fn discarding() -> Self {
        Self {
            discard: true,
            ..Self::default()
        }
    }

    /// The committed records so far.
    pub fn committed(&self) -> Vec<OutputRecord> {
        self.shared
            .lock()
            .expect("memory sink lock")
            .committed
            .clone()
    }

    fn commit(&self, subtask: usize, checkpoint: u64, records: Vec<OutputRecord>) -> bool {
        let mut s = self.shared.lock().expect("memory sink lock");
        if !s.done.insert((subtask, checkpoint)) {
            return false;
        }
        if !self.discard {
            s.committed.extend(records);
        }
        true
    }
}

struct MemoryWriter {
    sink: MemorySink,
    subtask: usize,
    open: Vec<OutputRecord>,
    prepared: Vec<(u64, Vec<OutputRecord>)>,
}

impl SinkFactory for MemorySink {
    fn recover<'a>(
        &'a self,
        committables: Vec<serde_json::Value>,
        _properties: &'a BTreeMap<String, String>,
        _parallelism: usize,
    ) -> BoxFuture<'a, Result<SinkRecovery, RuntimeError>> {
        Box::pin(async move {
            let mut report = SinkRecovery::default();
            for value in committables {
                let list: Vec<MemoryCommittable> =
                    serde_json::from_value(value).map_err(|e| RuntimeError::CorruptCheckpoint {
                        path: "memory sink committable".into(),
                        reason: e.to_string(),
                    })?;
                for c in list {
                    let records = c
                        .records
                        .into_iter()
                        .map(|(k, v, t)| OutputRecord {
                            target: target_of(t),
                            key: k.map(Bytes::from),
                            value: v.map(Bytes::from),
                            headers: Vec::new(),
                        })
                        .collect();
                    if self.commit(c.subtask, c.checkpoint, records) {
                        report.committed += 1;
                    } else {
                        report.already_committed += 1;
                    }
                }
            }
            Ok(report)
        })
    }
    fn properties(&self, _parallelism: usize) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    fn create(
        &self,
        subtask: usize,
        _parallelism: usize,
        _restored: Option<u64>,
    ) -> BoxFuture<'_, Result<Box<dyn SinkWriter>, RuntimeError>> {
        let w = MemoryWriter {
            sink: self.clone(),
            subtask,
            open: Vec::new(),
            prepared: Vec::new(),
        };
        Box::pin(async move { Ok(Box::new(w) as Box<dyn SinkWriter>) })
    }
}

impl SinkWriter for MemoryWriter {
    fn write<'a>(
        &'a mut self,
        records: &'a mut Vec<OutputRecord>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        if self.sink.discard {
            records.clear();
        } else {
            self.open.append(records);
        }
        Box::pin(async { Ok(()) })
    }
    fn prepare(
        &mut self,
        checkpoint_id: u64,
    ) -> BoxFuture<'_, Result<serde_json::Value, RuntimeError>> {
        let open = std::mem::take(&mut self.open);
        self.prepared.push((checkpoint_id, open));
        // Every epoch not yet committed goes into the checkpoint, as the Kafka sink does.
        let list: Vec<MemoryCommittable> = self
            .prepared
            .iter()
            .map(|(id, recs)| MemoryCommittable {
                subtask: self.subtask,
                checkpoint: *id,
                records: recs
                    .iter()
                    .map(|r| {
                        (
                            r.key.as_ref().map(|b| b.to_vec()),
                            r.value.as_ref().map(|b| b.to_vec()),
                            target_code(r.target),
                        )
                    })
                    .collect(),
            })
            .collect();
        let value = serde_json::to_value(&list).expect("committable serialize");
        Box::pin(async move { Ok(value) })
    }
    fn commit_up_to(&mut self, checkpoint_id: u64) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.prepared)
            .into_iter()
            .partition(|(id, _)| *id <= checkpoint_id);
        self.prepared = later;
        for (id, recs) in ready {
            self.sink.commit(self.subtask, id, recs);
        }
        Box::pin(async { Ok(()) })
    }
    fn flush_commits(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A job sink over an [`IdempotentSink`] (a system without transactions): each subtask writes
/// the records of the epoch after checkpoint n at positions (n + 1, subtask, index); a replay
/// after a restore writes the same positions again, and the sink upserts them. Exactly once for
/// deterministic jobs at a fixed parallelism (see [`IdempotentSink`]).
pub struct IdempotentSinks<F, E> {
    make: F,
    encode: E,
}

impl<F, E> IdempotentSinks<F, E> {
    /// Sinks made by `make(subtask)`, records converted by `encode`.
    pub fn new(make: F, encode: E) -> Self {
        Self { make, encode }
    }
}

impl<S, F, E> SinkFactory for IdempotentSinks<F, E>
where
    S: IdempotentSink + 'static,
    F: Fn(usize) -> Result<S, RuntimeError> + Send + Sync + 'static,
    E: Fn(OutputRecord) -> S::Record + Clone + Send + Sync + 'static,
{
    fn recover<'a>(
        &'a self,
        _committables: Vec<serde_json::Value>,
        _properties: &'a BTreeMap<String, String>,
        _parallelism: usize,
    ) -> BoxFuture<'a, Result<SinkRecovery, RuntimeError>> {
        Box::pin(async { Ok(SinkRecovery::default()) })
    }
    fn properties(&self, _parallelism: usize) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    fn create(
        &self,
        subtask: usize,
        _parallelism: usize,
        restored: Option<u64>,
    ) -> BoxFuture<'_, Result<Box<dyn SinkWriter>, RuntimeError>> {
        Box::pin(async move {
            let mut sink = (self.make)(subtask)?;
            sink.restore(restored).await?;
            let epoch = restored.unwrap_or(0) + 1;
            Ok(Box::new(IdempotentWriter {
                sink,
                encode: self.encode.clone(),
                subtask: subtask as u32,
                epoch,
                index: 0,
            }) as Box<dyn SinkWriter>)
        })
    }
}

struct IdempotentWriter<S, E> {
    sink: S,
    encode: E,
    subtask: u32,
    epoch: u64,
    index: u64,
}

impl<S, E> SinkWriter for IdempotentWriter<S, E>
where
    S: IdempotentSink + 'static,
    E: Fn(OutputRecord) -> S::Record + Send + Sync + 'static,
{
    fn write<'a>(
        &'a mut self,
        records: &'a mut Vec<OutputRecord>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            for r in records.drain(..) {
                let position = RecordPosition {
                    checkpoint_id: self.epoch,
                    subtask: self.subtask,
                    index: self.index,
                };
                self.sink.write(position, (self.encode)(r)).await?;
                self.index += 1;
            }
            Ok(())
        })
    }
    fn prepare(
        &mut self,
        checkpoint_id: u64,
    ) -> BoxFuture<'_, Result<serde_json::Value, RuntimeError>> {
        Box::pin(async move {
            self.sink.checkpoint(checkpoint_id).await?;
            self.epoch = checkpoint_id + 1;
            self.index = 0;
            Ok(serde_json::Value::Null)
        })
    }
    fn commit_up_to(&mut self, checkpoint_id: u64) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move { self.sink.checkpoint_complete(checkpoint_id).await })
    }
    fn flush_commits(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
}
