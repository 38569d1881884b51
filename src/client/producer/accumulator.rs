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
//!   a jittered backoff, split (MESSAGE_TOO_LARGE), or fatal for the producer.
//!
//! This module appends, closes and drains batches; what an answer means (retries, the
//! MESSAGE_TOO_LARGE split, giving up on a record) is in `accumulator_answer.rs`, a child module
//! so that both share the partitions' private state without widening its visibility.
//!
//! Memory: the caller holds `buffer_bytes_max` permits; each batch carries its records' permits
//! until it is acknowledged or failed.

#[path = "accumulator_answer.rs"]
mod answer;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::warn;

use crate::protocol::record_batch::{BatchProducerFields, RecordBatchBuilder, RecordHeader};

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

/// Sequence order, allowing for the wrap at i32::MAX.
pub(super) fn seq_before(a: i32, b: i32) -> bool {
    let diff = b.wrapping_sub(a) & i32::MAX;
    diff != 0 && diff < (1 << 30)
}

#[cfg(test)]
#[path = "accumulator_tests.rs"]
mod tests;
