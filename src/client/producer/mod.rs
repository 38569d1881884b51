//! The idempotent producer: batching, ordered pipelining, retries without duplicates.
//!
//! Idempotence (KIP-98) gives each producer an id and epoch (InitProducerId) and numbers the
//! records of each partition with a sequence. The broker remembers the last five batches per
//! producer and partition, so a retried batch is written once, and a batch that arrives with a
//! gap in the sequence is rejected (OUT_OF_ORDER_SEQUENCE_NUMBER) instead of being reordered.
//! That is what allows up to five batches of one partition in flight at once
//! (`in_flight_per_partition_max`).
//!
//! The producer is in two parts, as franz-go's `producer.go` and `sink.go` are:
//! - `accumulator`: pure state — records into per-partition batches, sequencing, linger and
//!   size limits, what may be sent now, and what each answer means (retry in sequence order,
//!   split on MESSAGE_TOO_LARGE, or stop). Unit-tested without a socket.
//! - `sender`: the I/O — a dispatcher that drains the accumulator, and one task per broker that
//!   connects and writes produce requests in order, so a slow or dead broker holds up only the
//!   partitions it leads.
//!
//! A failure that leaves a gap in a partition's sequence (a batch given up on) stops the
//! producer with that error: continuing would need an epoch bump (KIP-360); the transactional
//! producer does that between transactions.
//!
//! Memory is bounded: records wait in `send` while `buffer_bytes_max` bytes are already queued.

mod accumulator;
mod sender;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::time::Instant;

use crate::protocol::compression::Compression;
use crate::protocol::messages::messages::{InitProducerIdRequest, ProducerId};
use crate::protocol::record_batch::RecordHeader;

use accumulator::{Accumulator, Delivery};
use sender::AbortOnDrop;

use super::partitioner::{partition_for_key, RoundRobin};
use super::retry::{retry, Deadline, RetryAfter};
use super::{Client, ClientError};

/// Producer settings. Every limit has its unit in the name.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch may wait for more records before it is sent.
    pub linger_ms: u64,
    /// Uncompressed size at which a batch is closed.
    pub batch_bytes_max: usize,
    /// Largest produce request (and so the largest single record).
    pub request_bytes_max: usize,
    /// Bytes of records buffered before `send` waits.
    pub buffer_bytes_max: usize,
    /// Compression codec for batches.
    pub compression: Compression,
    /// Batches of one partition in flight at once (1..=5, the broker's idempotence window).
    pub in_flight_per_partition_max: usize,
    /// How long a record may take from `send` to acknowledgement, retries included.
    pub delivery_timeout_ms: u64,
    /// How long the broker may take to replicate a produce request (`acks=all`).
    pub request_timeout_ms: i32,
    /// Base delay before a retry (grows exponentially, with jitter).
    pub retry_backoff_ms: u64,
    /// Largest delay before a retry.
    pub retry_backoff_max_ms: u64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger_ms: 5,
            batch_bytes_max: 256 * 1024,
            request_bytes_max: 4 * 1024 * 1024,
            buffer_bytes_max: 64 * 1024 * 1024,
            compression: Compression::None,
            in_flight_per_partition_max: 5,
            delivery_timeout_ms: 120_000,
            request_timeout_ms: 30_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 1_000,
        }
    }
}

impl ProducerConfig {
    fn validate(&self) -> Result<(), ClientError> {
        let bad = |field, message: String| Err(ClientError::Config { field, message });
        if !(1..=5).contains(&self.in_flight_per_partition_max) {
            return bad(
                "in_flight_per_partition_max",
                format!(
                    "must be 1..=5 for idempotence, got {}",
                    self.in_flight_per_partition_max
                ),
            );
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max > self.request_bytes_max {
            return bad(
                "batch_bytes_max",
                format!(
                    "must be 1..={} (request_bytes_max), got {}",
                    self.request_bytes_max, self.batch_bytes_max
                ),
            );
        }
        if self.buffer_bytes_max < self.request_bytes_max {
            return bad(
                "buffer_bytes_max",
                format!(
                    "must be at least request_bytes_max ({}), got {}",
                    self.request_bytes_max, self.buffer_bytes_max
                ),
            );
        }
        Ok(())
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; chosen by key (murmur2) or round-robin when `None`.
    pub partition: Option<i32>,
    /// Key (may be null).
    pub key: Option<Bytes>,
    /// Value (may be null, a tombstone).
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<RecordHeader>,
    /// Create time in ms since the epoch; now when `None`.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value only.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the partition.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    fn size_estimate_bytes(&self) -> usize {
        // Record framing (length, attributes, deltas, lengths) is at most ~25 bytes.
        25 + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|h| 10 + h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
    }
}

/// Where a record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset (-1 if the broker reported the batch as a duplicate without its offset).
    pub offset: i64,
    /// The record's timestamp.
    pub timestamp_ms: i64,
}

/// Resolves when the record is acknowledged (or has failed).
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Delivery>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(ClientError::ProducerClosed {
                    reason: "producer dropped".into(),
                })
            })
        })
    }
}

/// What the producer's handles and its tasks share.
struct Inner {
    client: Client,
    config: ProducerConfig,
    transactional_id: Option<String>,
    state: Mutex<Accumulator>,
    /// Wakes the sender task.
    wake: Notify,
    /// Signalled whenever the number of outstanding records drops to zero.
    idle: Notify,
    buffer: Arc<Semaphore>,
    round_robin: RoundRobin,
}

/// The idempotent producer. Cheap to clone; clones share batches and the sender tasks, which
/// stop when the last clone is dropped.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    _sender: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (pid, epoch) = self.producer_id();
        f.debug_struct("Producer")
            .field("producer_id", &pid)
            .field("epoch", &epoch)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Creates an idempotent producer: gets a producer id (InitProducerId) and starts the
    /// sender task.
    ///
    /// # Cancel safety
    /// Cancel safe; a producer id obtained is simply not used.
    pub async fn new(client: Client, config: ProducerConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(-1)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        // Retriable codes (COORDINATOR_LOAD_IN_PROGRESS right after a broker start, ...) are
        // retried with backoff until the client's retry deadline.
        let policy = client.config().retry;
        let response = retry(&policy, Deadline::after_ms(policy.deadline_ms), |_| async {
            match client.request_any(&request).await {
                Ok(response) if response.error_code == 0 => ControlFlow::Break(Ok(response)),
                Ok(response) => {
                    let error = ClientError::broker("InitProducerId", response.error_code);
                    if error.is_retriable() {
                        ControlFlow::Continue(RetryAfter::error(error))
                    } else {
                        ControlFlow::Break(Err(error))
                    }
                }
                Err(e) => ControlFlow::Break(Err(e)),
            }
        })
        .await
        .unwrap_or_else(|exhausted| Err(exhausted.last))?;
        Ok(Self::with_producer_id(
            client,
            config,
            None,
            response.producer_id.0,
            response.producer_epoch,
        ))
    }

    /// A producer with an id and epoch obtained elsewhere (the transactional producer gets
    /// them from its coordinator).
    pub(crate) fn with_producer_id(
        client: Client,
        config: ProducerConfig,
        transactional_id: Option<String>,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Self {
        let inner = Arc::new(Inner {
            buffer: Arc::new(Semaphore::new(config.buffer_bytes_max)),
            client,
            state: Mutex::new(Accumulator::new(
                config.clone(),
                transactional_id.is_some(),
                producer_id,
                producer_epoch,
            )),
            wake: Notify::new(),
            idle: Notify::new(),
            round_robin: RoundRobin::default(),
            config,
            transactional_id,
        });
        let sender = tokio::spawn(sender::dispatch(Arc::clone(&inner)));
        Self {
            inner,
            _sender: Arc::new(AbortOnDrop(sender)),
        }
    }

    /// The producer id and epoch in use.
    pub fn producer_id(&self) -> (i64, i16) {
        self.inner.lock().producer_id()
    }

    /// The client this producer sends through.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Queues a record and returns a future for its acknowledgement. Waits while the buffer is
    /// full (backpressure).
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped before it returns, the record was not queued.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let inner = &self.inner;
        if let Some(e) = inner.lock().fatal() {
            return Err(e);
        }
        let size = record.size_estimate_bytes();
        if size > inner.config.request_bytes_max {
            return Err(ClientError::RecordTooLarge {
                size_bytes: size,
                limit_bytes: inner.config.request_bytes_max,
            });
        }
        let partition = self.partition_for(&record).await?;
        let permits = Arc::clone(&inner.buffer)
            .acquire_many_owned(size as u32)
            .await
            .map_err(|_| ClientError::ProducerClosed {
                reason: "buffer closed".into(),
            })?;
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let tp = (record.topic.clone(), partition);
        let (rx, closed) = inner.lock().append(
            tp,
            timestamp_ms,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
            size,
            permits,
            Instant::now(),
        )?;
        // Always wake the dispatcher: with `linger_ms > 0` it must learn of the new open batch
        // to arm its linger timer, or the record would wait for the next flush (`closed` only
        // says the batch is full already).
        let _ = closed;
        inner.wake.notify_one();
        Ok(DeliveryFuture { rx })
    }

    pub(crate) async fn partition_for(&self, record: &ProducerRecord) -> Result<i32, ClientError> {
        let info = self.inner.client.topic(&record.topic).await?;
        let count = info.partitions.len() as i32;
        match (record.partition, &record.key) {
            (Some(p), _) if (0..count).contains(&p) => Ok(p),
            (Some(p), _) => Err(ClientError::UnknownPartition {
                topic: record.topic.clone(),
                partition: p,
                partitions: count,
            }),
            (None, Some(key)) => Ok(partition_for_key(key, count)),
            (None, None) => Ok(self.inner.round_robin.next(count)),
        }
    }

    /// Sends every buffered record now and waits until all are acknowledged or failed.
    /// Returns the producer's fatal error if it has one.
    ///
    /// # Cancel safety
    /// Cancel safe: the records are still sent; only the waiting stops.
    pub async fn flush(&self) -> Result<(), ClientError> {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let mut acc = self.inner.lock();
                if acc.outstanding_records() == 0 {
                    acc.flush_done();
                    return acc.fatal().map_or(Ok(()), Err);
                }
                acc.request_flush();
            }
            self.inner.wake.notify_one();
            idle.await;
        }
    }

    /// Per partition, the base offset of the last batch acknowledged since the previous call
    /// (a batch acknowledged as a duplicate has no known offset and is left out).
    pub(crate) fn take_batch_offsets(&self) -> std::collections::HashMap<(String, i32), i64> {
        self.inner.lock().take_batch_offsets()
    }

    /// The error that stopped the producer, if any.
    pub fn error(&self) -> Option<ClientError> {
        self.inner.lock().fatal()
    }

    /// Starts over with a new producer id and epoch: clears a stopped producer's error and
    /// restarts every partition's sequence at 0. Only valid when nothing is outstanding (after
    /// [`Producer::flush`]); used by transactions after an epoch bump (KIP-360, KIP-890).
    pub(crate) fn reset_producer_id(&self, producer_id: i64, producer_epoch: i16) {
        self.inner
            .lock()
            .reset_producer_id(producer_id, producer_epoch);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Accumulator> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
