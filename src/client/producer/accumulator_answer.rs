//! What a produce answer means for a batch the accumulator handed out
//! ([`Accumulator::finish`]): acknowledged (records completed, the partition's acknowledged
//! sequence advanced), retried in sequence order after a jittered backoff, split on
//! MESSAGE_TOO_LARGE, or fatal for the producer. Appending, closing and draining batches are in
//! the parent module; this child module shares its private state.
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

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::protocol::error_codes::{codes, Class};
use crate::protocol::record_batch::{
    decode_batches, rewrite_producer_fields, BatchProducerFields, RecordBatchBuilder,
};

use super::{seq_before, Accumulator, Batch, Outcome, TopicPartition};
use crate::client::producer::RecordMetadata;
use crate::client::ClientError;

impl Accumulator {
    /// Takes back a batch [`Self::drain`] handed out, with what became of it. Returns the error
    /// code by which the topic's cached leadership should be checked (`Client::invalidate`).
    pub(in crate::client::producer) fn finish(
        &mut self,
        batch: Batch,
        outcome: Outcome,
        now: Instant,
    ) -> Option<i16> {
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
