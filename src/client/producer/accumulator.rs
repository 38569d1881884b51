//! The producer's buffer: records in, per-partition batches out. No I/O and no clock of its own
//! (the caller passes `now`), so every rule here is unit-tested without a socket.
//!
//! What it decides, per partition (KIP-98 idempotence,
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging>):
//! - one open batch, closed when the next record would pass `batch_bytes_max`, after
//!   `linger_ms`, or on flush; closing assigns the batch its sequence, kept through every retry;
//! - which closed batches may go out now ([`Accumulator::drain`]): in sequence order, at most
//!   `in_flight_per_partition_max` at once, one at a time until the partition's first
//!   acknowledgement and while a retried batch is outstanding;
//! - what an answer means ([`Accumulator::finish`]): acknowledged, retried in sequence order after
//!   a jittered backoff, split (MESSAGE_TOO_LARGE, see below), or fatal for the producer.
//!
//! MESSAGE_TOO_LARGE (the topic's `max.message.bytes` is below our batch) splits the batch in
//! two halves by record count and puts both back in its place, as the Java client's
//! `RecordAccumulator.splitAndReenqueue` does. The halves keep the batch's sequence range (the
//! first half starts at its base sequence, the second right after), so later batches keep theirs
//! and the broker, which wrote nothing, sees no gap. Halving (rather than re-batching at
//! `batch_bytes_max`, which loops forever when the topic limit is below it, KAFKA-8350) always
//! progresses. A single record too large fails alone: the idempotent producer moves the
//! sequences of the partition's later batches down by one and goes on (Java's
//! `adjustSequencesDueToFailedBatch`); a transactional producer stops, because its transaction
//! must not commit without that record (the transaction layer aborts and bumps the epoch).
//!
//! Memory: the caller holds `buffer_bytes_max` permits; each batch carries its records' permits
//! until it is acknowledged or failed.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::protocol::error_codes::{codes, Class};
use crate::protocol::record_batch::{
    decode_batches, rewrite_producer_fields, BatchProducerFields, RecordBatchBuilder, RecordHeader,
};

use super::{ProducerConfig, RecordMetadata};
use crate::client::ClientError;

/// A topic and partition.
pub(super) type TopicPartition = (String, i32);

/// What a record's sender eventually learns.
pub(super) type Delivery = Result<RecordMetadata, ClientError>;

struct Waiter {
    tx: oneshot::Sender<Delivery>,
    timestamp_ms: i64,
}

impl Waiter {
    fn fail(self, error: &ClientError) {
        let _ = self.tx.send(Err(error.clone()));
    }
}

struct OpenBatch {
    builder: RecordBatchBuilder,
    waiters: Vec<Waiter>,
    permits: Option<OwnedSemaphorePermit>,
    created: Instant,
}

/// A closed batch: encoded once, with its sequence, and kept until acknowledged or failed.
pub(super) struct Batch {
    pub(super) tp: TopicPartition,
    /// The encoded record batch (its header carries `base_sequence`).
    pub(super) data: Bytes,
    pub(super) base_sequence: i32,
    waiters: Vec<Waiter>,
    /// Its records' share of `buffer_bytes_max`, released when the batch is dropped.
    _permits: Option<OwnedSemaphorePermit>,
    created: Instant,
    attempts: u32,
    retry_at: Option<Instant>,
}

impl Batch {
    fn record_count(&self) -> i32 {
        self.waiters.len() as i32
    }

    fn fail(self, error: &ClientError) -> usize {
        let count = self.waiters.len();
        for w in self.waiters {
            w.fail(error);
        }
        count
    }
}

#[derive(Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    /// Closed batches waiting to be sent, in sequence order.
    queue: VecDeque<Batch>,
    in_flight: usize,
    next_sequence: i32,
    /// A batch was put back for retry: one batch in flight until it is acknowledged.
    retrying: bool,
    /// The sequence the broker expects next: one past the last acknowledged record.
    next_acked_sequence: i32,
    /// Whether a batch of this producer epoch was acknowledged on this partition. Until then one
    /// batch at a time: a broker that has no state for a producer accepts *any* first sequence,
    /// so a later batch overtaking a failed first one would be written first (and the first one
    /// never). Seen right after topic creation, when the first batch gets NOT_LEADER.
    acked_any: bool,
    /// Records given up on without a gap (MESSAGE_TOO_LARGE, single record): in-flight batches
    /// sent before that carry sequences this much too high and are re-stamped when they return.
    /// Each entry: (first sequence after the failed record, how many were failed).
    shifts: Vec<(i32, i32)>,
}

/// How one partition's part of a produce request ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The broker answered for the partition.
    Answer {
        /// Kafka error code (0 = written).
        error_code: i16,
        /// Offset of the batch's first record.
        base_offset: i64,
        /// The broker's error message, if any.
        message: Option<String>,
    },
    /// The request failed as a whole (connection lost, timeout, no connection).
    Failed(ClientError),
}

/// What one pass of [`Accumulator::drain`] decided.
pub(super) struct Drained {
    /// Batches to send, by leader, each partition's in sequence order.
    pub(super) by_leader: HashMap<i32, Vec<Batch>>,
    /// Topics whose leader is unknown.
    pub(super) need_metadata: Vec<String>,
    /// When to drain again if nothing else happens (linger end, retry backoff).
    pub(super) wake_at: Option<Instant>,
}

/// Every partition's batches and the producer's identity; see the module docs.
pub(super) struct Accumulator {
    config: ProducerConfig,
    transactional: bool,
    partitions: HashMap<TopicPartition, PartitionQueue>,
    producer_id: i64,
    producer_epoch: i16,
    outstanding_records: usize,
    flush_requested: bool,
    fatal: Option<ClientError>,
    /// Per partition, the base offset of the last batch acknowledged since the last
    /// [`Accumulator::take_batch_offsets`]: where a transaction's marker is searched for later.
    batch_offsets: HashMap<TopicPartition, i64>,
}

impl Accumulator {
    pub(super) fn new(
        config: ProducerConfig,
        transactional: bool,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Self {
        Self {
            config,
            transactional,
            partitions: HashMap::new(),
            producer_id,
            producer_epoch,
            outstanding_records: 0,
            flush_requested: false,
            fatal: None,
            batch_offsets: HashMap::new(),
        }
    }

    /// Per partition, the base offset of the last batch acknowledged since the previous call
    /// (a batch acknowledged as a duplicate has no known offset and is left out).
    pub(super) fn take_batch_offsets(&mut self) -> HashMap<TopicPartition, i64> {
        std::mem::take(&mut self.batch_offsets)
    }

    pub(super) fn producer_id(&self) -> (i64, i16) {
        (self.producer_id, self.producer_epoch)
    }

    /// The error that stopped the producer, if any.
    pub(super) fn fatal(&self) -> Option<ClientError> {
        self.fatal.clone()
    }

    /// Records appended and not yet acknowledged or failed.
    pub(super) fn outstanding_records(&self) -> usize {
        self.outstanding_records
    }

    /// Asks the next drains to close open batches at once (until [`Self::flush_done`]).
    pub(super) fn request_flush(&mut self) {
        self.flush_requested = true;
    }

    pub(super) fn flush_done(&mut self) {
        self.flush_requested = false;
    }

    /// Appends a record to its partition's open batch, closing that batch first if the record
    /// would push it past `batch_bytes_max`. Returns the receiver of the record's delivery and
    /// whether a batch was closed (the sender should drain).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn append(
        &mut self,
        tp: TopicPartition,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader],
        size_bytes: usize,
        permits: OwnedSemaphorePermit,
        now: Instant,
    ) -> Result<(oneshot::Receiver<Delivery>, bool), ClientError> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        let (pid, epoch, transactional) =
            (self.producer_id, self.producer_epoch, self.transactional);
        let pq = self.partitions.entry(tp.clone()).or_default();
        let full = pq.open.as_ref().is_some_and(|open| {
            open.builder.estimated_size_bytes() + size_bytes > self.config.batch_bytes_max
                && !open.waiters.is_empty()
        });
        if full {
            close_open_batch(transactional, &tp, pq, pid, epoch)?;
        }
        let open = pq.open.get_or_insert_with(|| OpenBatch {
            builder: RecordBatchBuilder::new(self.config.compression),
            waiters: Vec::new(),
            permits: None,
            created: now,
        });
        open.builder.append(timestamp_ms, key, value, headers)?;
        let (tx, rx) = oneshot::channel();
        open.waiters.push(Waiter { tx, timestamp_ms });
        match &mut open.permits {
            Some(p) => p.merge(permits),
            None => open.permits = Some(permits),
        }
        self.outstanding_records += 1;
        Ok((rx, full))
    }

    /// Closes batches whose linger ended (all of them while a flush is requested) and takes
    /// every batch that may be sent now, grouped by the leader `leader_of` reports.
    pub(super) fn drain(
        &mut self,
        now: Instant,
        mut leader_of: impl FnMut(&TopicPartition) -> Option<i32>,
    ) -> Drained {
        let config = &self.config;
        let mut out = Drained {
            by_leader: HashMap::new(),
            need_metadata: Vec::new(),
            wake_at: None,
        };
        let earliest = |t: Instant, out: &mut Drained| {
            out.wake_at = Some(out.wake_at.map_or(t, |w| w.min(t)));
        };
        let (pid, epoch, flush) = (self.producer_id, self.producer_epoch, self.flush_requested);
        let mut expired: Option<ClientError> = None;
        for (tp, pq) in self.partitions.iter_mut() {
            if let Some(open) = &pq.open {
                let linger_end = open.created + Duration::from_millis(config.linger_ms);
                if flush || linger_end <= now {
                    if let Err(e) = close_open_batch(self.transactional, tp, pq, pid, epoch) {
                        expired = Some(e);
                    }
                } else {
                    earliest(linger_end, &mut out);
                }
            }
            if pq.retrying && pq.in_flight > 0 {
                continue; // wait for in-flight batches before resending in order
            }
            let limit = if pq.retrying || !pq.acked_any {
                1
            } else {
                config.in_flight_per_partition_max
            };
            while pq.in_flight < limit {
                let Some(batch) = pq.queue.front() else { break };
                if batch.created + Duration::from_millis(config.delivery_timeout_ms) <= now {
                    expired = Some(ClientError::DeliveryTimeout {
                        topic: tp.0.clone(),
                        partition: tp.1,
                        timeout_ms: config.delivery_timeout_ms,
                    });
                    break;
                }
                if let Some(at) = batch.retry_at.filter(|at| *at > now) {
                    earliest(at, &mut out);
                    break;
                }
                let Some(leader) = leader_of(tp) else {
                    out.need_metadata.push(tp.0.clone());
                    break;
                };
                let Some(batch) = pq.queue.pop_front() else {
                    break;
                };
                pq.in_flight += 1;
                out.by_leader.entry(leader).or_default().push(batch);
            }
        }
        if let Some(e) = expired {
            // A batch given up on leaves a gap in its partition's sequence: stop.
            self.set_fatal(e);
        }
        out.need_metadata.sort();
        out.need_metadata.dedup();
        out
    }

    /// Takes back a batch [`Self::drain`] handed out, with what became of it. Returns the error
    /// code by which the topic's cached leadership should be checked (`Client::invalidate`).
    pub(super) fn finish(&mut self, batch: Batch, outcome: Outcome, now: Instant) -> Option<i16> {
        let tp = batch.tp.clone();
        if let Some(pq) = self.partitions.get_mut(&tp) {
            pq.in_flight = pq.in_flight.saturating_sub(1);
        }
        let stale = self.settle(batch, outcome, now);
        if let Some(pq) = self.partitions.get_mut(&tp) {
            if pq.in_flight == 0 {
                pq.shifts.clear(); // every batch sent before a shift has come back
            }
        }
        stale
    }

    fn settle(&mut self, batch: Batch, outcome: Outcome, now: Instant) -> Option<i16> {
        let (error_code, base_offset, message) = match outcome {
            Outcome::Failed(error) => {
                self.requeue(batch, &error, now);
                return Some(codes::NOT_LEADER_OR_FOLLOWER);
            }
            Outcome::Answer {
                error_code,
                base_offset,
                message,
            } => (error_code, base_offset, message),
        };
        let error = ClientError::Broker {
            api: "Produce",
            code: crate::protocol::error_codes::lookup(error_code),
            topic: Some(batch.tp.0.clone()),
            partition: Some(batch.tp.1),
            message,
        };
        let next_acked = self
            .partitions
            .get(&batch.tp)
            .map_or(0, |pq| pq.next_acked_sequence);
        match error_code {
            codes::NONE => self.complete(batch, base_offset),
            codes::DUPLICATE_SEQUENCE_NUMBER => self.complete(batch, -1),
            // An earlier batch of this partition is not acknowledged yet (in flight, or being
            // retried): this one must follow it, so it is retried too.
            codes::OUT_OF_ORDER_SEQUENCE_NUMBER if next_acked != batch.base_sequence => {
                self.requeue(batch, &error, now)
            }
            codes::MESSAGE_TOO_LARGE if self.fatal.is_none() => self.too_large(batch, error, now),
            _ => match error.class() {
                Class::Retriable | Class::UnknownOutcome => self.requeue(batch, &error, now),
                _ => {
                    self.outstanding_records -= batch.fail(&error);
                    // The partition's sequence now has a gap: stop.
                    self.set_fatal(error);
                }
            },
        }
        (error_code != codes::NONE).then_some(error_code)
    }

    fn complete(&mut self, batch: Batch, base_offset: i64) {
        let (topic, partition) = batch.tp.clone();
        let count = batch.waiters.len();
        for (i, w) in batch.waiters.into_iter().enumerate() {
            let offset = if base_offset >= 0 {
                base_offset + i as i64
            } else {
                -1
            };
            let _ = w.tx.send(Ok(RecordMetadata {
                topic: topic.clone(),
                partition,
                offset,
                timestamp_ms: w.timestamp_ms,
            }));
        }
        self.outstanding_records -= count;
        if base_offset >= 0 {
            let last = self
                .batch_offsets
                .entry(batch.tp.clone())
                .or_insert(base_offset);
            *last = (*last).max(base_offset);
        }
        if let Some(pq) = self.partitions.get_mut(&batch.tp) {
            let next = batch.base_sequence.wrapping_add(count as i32) & i32::MAX;
            if seq_before(pq.next_acked_sequence, next) {
                pq.next_acked_sequence = next;
            }
            pq.acked_any = true;
            if pq.retrying && pq.queue.iter().all(|b| b.attempts == 0) {
                pq.retrying = false;
            }
        }
    }

    /// Puts a batch back in sequence order for a retry after a jittered exponential backoff.
    fn requeue(&mut self, batch: Batch, error: &ClientError, now: Instant) {
        let exp = (batch.attempts + 1).min(10);
        let ceiling = self
            .config
            .retry_backoff_ms
            .saturating_mul(1 << exp)
            .min(self.config.retry_backoff_max_ms)
            .max(1);
        let delay = Duration::from_millis(rand::random_range(ceiling / 2..=ceiling));
        self.requeue_after(batch, error, now + delay);
    }

    /// Puts a batch back in sequence order, to be sent again at `retry_at` or later.
    fn requeue_after(&mut self, mut batch: Batch, error: &ClientError, retry_at: Instant) {
        if let Some(fatal) = &self.fatal {
            self.outstanding_records -= batch.fail(fatal);
            return;
        }
        batch.attempts += 1;
        batch.retry_at = Some(retry_at);
        debug!(topic = %batch.tp.0, partition = batch.tp.1, sequence = batch.base_sequence, attempts = batch.attempts, %error, "retrying batch");
        let (pid, epoch) = (self.producer_id, self.producer_epoch);
        // Re-stamp a batch that was in flight while a record before it was given up on.
        let shift = self.shift_for(&batch.tp, batch.base_sequence);
        let pq = self.partitions.entry(batch.tp.clone()).or_default();
        if shift > 0 {
            let sequence = batch.base_sequence.wrapping_sub(shift) & i32::MAX;
            if let Err(e) = restamp(&mut batch, pid, epoch, sequence) {
                self.outstanding_records -= batch.fail(&e.clone().into());
                self.set_fatal(e.into());
                return;
            }
        }
        pq.retrying = true;
        let at = pq
            .queue
            .partition_point(|b| seq_before(b.base_sequence, batch.base_sequence));
        pq.queue.insert(at, batch);
    }

    /// How far down a batch sent with `sequence` must move: the records given up on before it
    /// while it was in flight.
    fn shift_for(&self, tp: &TopicPartition, sequence: i32) -> i32 {
        self.partitions.get(tp).map_or(0, |pq| {
            pq.shifts
                .iter()
                .filter(|(from, _)| !seq_before(sequence, *from))
                .map(|(_, by)| by)
                .sum()
        })
    }

    /// MESSAGE_TOO_LARGE: split a batch of several records in place; fail a single record.
    fn too_large(&mut self, batch: Batch, error: ClientError, now: Instant) {
        if batch.record_count() > 1 {
            match split(
                batch,
                self.config.compression,
                self.producer_id,
                self.producer_epoch,
            ) {
                Ok(halves) => {
                    // No backoff: nothing failed transiently, the halves are simply smaller.
                    for half in halves.into_iter().rev() {
                        self.requeue_after(half, &error, now);
                    }
                }
                Err(failed) => {
                    let (batch, e) = *failed;
                    self.outstanding_records -= batch.fail(&e);
                    self.set_fatal(e);
                }
            }
            return;
        }
        warn!(%error, "record too large for its topic; failing it");
        let tp = batch.tp.clone();
        // `from` numbers like the batches still in flight (sent before any pending shift);
        // `queued_from` like the queue, whose batches already had those shifts applied.
        let (from, by) = (
            batch.base_sequence.wrapping_add(1) & i32::MAX,
            batch.record_count(),
        );
        let queued_from = from.wrapping_sub(self.shift_for(&tp, batch.base_sequence)) & i32::MAX;
        self.outstanding_records -= batch.fail(&error);
        if self.transactional {
            // The transaction must not commit without this record.
            self.set_fatal(error);
            return;
        }
        // The broker wrote nothing: close the gap by moving every later sequence down.
        let (pid, epoch) = (self.producer_id, self.producer_epoch);
        let Some(pq) = self.partitions.get_mut(&tp) else {
            return;
        };
        pq.next_sequence = pq.next_sequence.wrapping_sub(by) & i32::MAX;
        let mut failed = None;
        for queued in pq.queue.iter_mut() {
            if !seq_before(queued.base_sequence, queued_from) {
                let sequence = queued.base_sequence.wrapping_sub(by) & i32::MAX;
                if let Err(e) = restamp(queued, pid, epoch, sequence) {
                    failed = Some(e);
                }
            }
        }
        if pq.in_flight > 0 {
            pq.shifts.push((from, by));
        }
        pq.retrying = true;
        if let Some(e) = failed {
            self.set_fatal(e.into());
        }
    }

    /// Stops the producer: fails every record not yet sent. In-flight batches fail as their
    /// answers arrive.
    pub(super) fn set_fatal(&mut self, error: ClientError) {
        if self.fatal.is_none() {
            warn!(%error, "producer stopped");
            self.fatal = Some(error.clone());
        }
        let mut failed = 0;
        for pq in self.partitions.values_mut() {
            if let Some(open) = pq.open.take() {
                failed += open.waiters.len();
                for w in open.waiters {
                    w.fail(&error);
                }
            }
            for batch in pq.queue.drain(..) {
                failed += batch.fail(&error);
            }
        }
        self.outstanding_records -= failed;
    }

    /// Starts over with a new producer id and epoch: clears the error and restarts every
    /// partition's sequence at 0. Only valid when nothing is outstanding.
    pub(super) fn reset_producer_id(&mut self, producer_id: i64, producer_epoch: i16) {
        self.partitions
            .retain(|_, pq| pq.in_flight > 0 || pq.open.is_some() || !pq.queue.is_empty());
        for pq in self.partitions.values_mut() {
            pq.next_sequence = 0;
            pq.next_acked_sequence = 0;
            pq.acked_any = false;
            pq.retrying = false;
            pq.shifts.clear();
        }
        self.fatal = None;
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
    }
}

/// Closes the partition's open batch: assigns its sequence and encodes it.
fn close_open_batch(
    transactional: bool,
    tp: &TopicPartition,
    pq: &mut PartitionQueue,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<(), ClientError> {
    let Some(open) = pq.open.take() else {
        return Ok(());
    };
    let count = open.waiters.len() as i32;
    let base_sequence = pq.next_sequence;
    let data = open.builder.build(BatchProducerFields {
        producer_id,
        producer_epoch,
        base_sequence,
        is_transactional: transactional,
    })?;
    // Sequences wrap at i32::MAX, as in the Java client.
    pq.next_sequence = pq.next_sequence.wrapping_add(count) & i32::MAX;
    pq.queue.push_back(Batch {
        tp: tp.clone(),
        data,
        base_sequence,
        waiters: open.waiters,
        _permits: open.permits,
        created: open.created,
        attempts: 0,
        retry_at: None,
    });
    Ok(())
}

/// Gives an encoded batch a new base sequence (and CRC).
fn restamp(
    batch: &mut Batch,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<(), crate::protocol::ProtocolError> {
    let mut data = BytesMut::from(&batch.data[..]);
    rewrite_producer_fields(&mut data, producer_id, producer_epoch, base_sequence)?;
    batch.data = data.freeze();
    batch.base_sequence = base_sequence;
    Ok(())
}

/// Splits a batch of two or more records into two by record count, re-encoding each from the
/// batch's own bytes (timestamps, keys, values and headers kept). The first half keeps the base
/// sequence; the second starts where the first ends.
fn split(
    mut batch: Batch,
    compression: crate::protocol::compression::Compression,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<[Batch; 2], Box<(Batch, ClientError)>> {
    let first_count = batch.waiters.len() / 2;
    let second_sequence = batch.base_sequence.wrapping_add(first_count as i32) & i32::MAX;
    let encoded = encode_halves(
        &batch,
        first_count,
        second_sequence,
        compression,
        producer_id,
        producer_epoch,
    );
    let (first, second) = match encoded {
        Ok(parts) => parts,
        Err(e) => return Err(Box::new((batch, e.into()))),
    };
    debug!(topic = %batch.tp.0, partition = batch.tp.1, sequence = batch.base_sequence, records = batch.waiters.len(), "MESSAGE_TOO_LARGE: splitting batch");
    let second_waiters = batch.waiters.split_off(first_count);
    let second_half = Batch {
        tp: batch.tp.clone(),
        data: second,
        base_sequence: second_sequence,
        waiters: second_waiters,
        // The permits stay with the first half, which goes out first.
        _permits: None,
        created: batch.created,
        attempts: batch.attempts,
        retry_at: None,
    };
    batch.data = first;
    Ok([batch, second_half])
}

fn encode_halves(
    batch: &Batch,
    first_count: usize,
    second_sequence: i32,
    compression: crate::protocol::compression::Compression,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<(Bytes, Bytes), crate::protocol::ProtocolError> {
    let decoded = decode_batches(batch.data.clone(), usize::MAX)
        .next()
        .ok_or_else(|| crate::protocol::ProtocolError::CorruptBatch {
            position: 0,
            what: "no batch in our own encoding".into(),
        })??;
    let mut builders = [
        RecordBatchBuilder::new(compression),
        RecordBatchBuilder::new(compression),
    ];
    for (i, record) in decoded.records().enumerate() {
        let record = record?;
        builders[usize::from(i >= first_count)].append(
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        )?;
    }
    let fields = |base_sequence| BatchProducerFields {
        producer_id,
        producer_epoch,
        base_sequence,
        is_transactional: decoded.header.is_transactional,
    };
    let [a, b] = builders;
    Ok((
        a.build(fields(batch.base_sequence))?,
        b.build(fields(second_sequence))?,
    ))
}

/// Sequence order, allowing for the wrap at i32::MAX.
pub(super) fn seq_before(a: i32, b: i32) -> bool {
    let diff = b.wrapping_sub(a) & i32::MAX;
    diff != 0 && diff < (1 << 30)
}

#[cfg(test)]
#[path = "accumulator_tests.rs"]
mod tests;
