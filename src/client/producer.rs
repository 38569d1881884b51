//! The idempotent producer: batching, ordered pipelining, retries without duplicates.
//!
//! Idempotence (KIP-98) gives each producer an id and epoch (InitProducerId) and numbers the
//! records of each partition with a sequence. The broker remembers the last five batches per
//! producer and partition, so a retried batch is written once, and a batch that arrives with a
//! gap in the sequence is rejected (OUT_OF_ORDER_SEQUENCE_NUMBER) instead of being reordered.
//! That is what allows up to five batches of one partition in flight at once
//! (`in_flight_per_partition_max`).
//!
//! How this producer keeps its side of the deal:
//! - records are appended to one open batch per partition, closed when full
//!   (`batch_bytes_max`), after `linger_ms`, or on flush; a closed batch gets its sequence at
//!   once and keeps it (and its bytes) through every retry;
//! - one sender task drains batches and enqueues produce requests in sequence order on the
//!   leader's connection, which writes them in that order;
//! - a retriable failure puts the batch back in sequence order and the partition goes to one
//!   batch in flight until the retried batch is acknowledged; later batches rejected as out of
//!   order meanwhile are retried too;
//! - a failure that leaves a gap in the sequence (a batch given up on) stops the producer with
//!   that error: continuing would need an epoch bump (KIP-360) — see the issue tracker.
//!
//! Memory is bounded: records wait in `send` while `buffer_bytes_max` bytes are already queued.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::protocol::compression::Compression;
use crate::protocol::error_codes::{codes, Class};
use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use crate::protocol::messages::messages::{
    InitProducerIdRequest, ProduceRequest, ProducerId, TopicName, TransactionalId,
};
use crate::protocol::record_batch::{BatchProducerFields, RecordBatchBuilder, RecordHeader};

use super::partitioner::{partition_for_key, RoundRobin};
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
    rx: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
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

type TopicPartition = (String, i32);

struct Waiter {
    tx: oneshot::Sender<Result<RecordMetadata, ClientError>>,
    timestamp_ms: i64,
}

struct OpenBatch {
    builder: RecordBatchBuilder,
    waiters: Vec<Waiter>,
    permits: Option<OwnedSemaphorePermit>,
    created: Instant,
}

struct Batch {
    tp: TopicPartition,
    data: Bytes,
    base_sequence: i32,
    waiters: Vec<Waiter>,
    _permits: Option<OwnedSemaphorePermit>,
    created: Instant,
    attempts: u32,
    retry_at: Option<Instant>,
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
}

struct State {
    partitions: HashMap<TopicPartition, PartitionQueue>,
    producer_id: i64,
    producer_epoch: i16,
    outstanding_records: usize,
    flush_requested: bool,
    fatal: Option<ClientError>,
    /// Per partition, the base offset of the last batch acknowledged since the last
    /// [`Producer::take_batch_offsets`]: where a transaction's marker is searched for later.
    batch_offsets: HashMap<TopicPartition, i64>,
}

struct Inner {
    client: Client,
    config: ProducerConfig,
    transactional_id: Option<String>,
    state: Mutex<State>,
    /// Wakes the sender task.
    wake: Notify,
    /// Signalled whenever the number of outstanding records drops to zero.
    idle: Notify,
    buffer: Arc<Semaphore>,
    round_robin: RoundRobin,
}

/// The idempotent producer. Cheap to clone; clones share batches and the sender task.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    _sender: Arc<SenderHandle>,
}

struct SenderHandle(tokio::task::JoinHandle<()>);

impl Drop for SenderHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        let mut backoff = crate::connection::backoff::Backoff::new(client.config().retry);
        let response = loop {
            let response = client.request_any(&request).await?;
            match response.error_code {
                0 => break response,
                code => {
                    let error = ClientError::broker("InitProducerId", code);
                    if !(error.is_retriable() && backoff.wait().await) {
                        return Err(error);
                    }
                }
            }
        };
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
            config,
            transactional_id,
            state: Mutex::new(State {
                partitions: HashMap::new(),
                producer_id,
                producer_epoch,
                outstanding_records: 0,
                flush_requested: false,
                fatal: None,
                batch_offsets: HashMap::new(),
            }),
            wake: Notify::new(),
            idle: Notify::new(),
            round_robin: RoundRobin::default(),
        });
        let sender = tokio::spawn(sender_loop(Arc::clone(&inner)));
        Self {
            inner,
            _sender: Arc::new(SenderHandle(sender)),
        }
    }

    /// The producer id and epoch in use.
    pub fn producer_id(&self) -> (i64, i16) {
        let state = self.inner.lock();
        (state.producer_id, state.producer_epoch)
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
        if let Some(e) = inner.lock().fatal.clone() {
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
        let (tx, rx) = oneshot::channel();
        let mut state = inner.lock();
        if let Some(e) = state.fatal.clone() {
            return Err(e);
        }
        let tp = (record.topic.clone(), partition);
        let (producer_id, producer_epoch) = (state.producer_id, state.producer_epoch);
        let pq = state.partitions.entry(tp.clone()).or_default();
        let full = pq.open.as_ref().is_some_and(|open| {
            open.builder.estimated_size_bytes() + size > inner.config.batch_bytes_max
                && !open.waiters.is_empty()
        });
        if full {
            close_open_batch(
                inner.transactional_id.is_some(),
                &tp,
                pq,
                producer_id,
                producer_epoch,
            )?;
            inner.wake.notify_one();
        }
        let open = pq.open.get_or_insert_with(|| OpenBatch {
            builder: RecordBatchBuilder::new(inner.config.compression),
            waiters: Vec::new(),
            permits: None,
            created: Instant::now(),
        });
        open.builder.append(
            timestamp_ms,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        )?;
        open.waiters.push(Waiter { tx, timestamp_ms });
        match &mut open.permits {
            Some(p) => p.merge(permits),
            None => open.permits = Some(permits),
        }
        state.outstanding_records += 1;
        if inner.config.linger_ms == 0 {
            inner.wake.notify_one();
        }
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
                let mut state = self.inner.lock();
                if state.outstanding_records == 0 {
                    state.flush_requested = false;
                    return state.fatal.clone().map_or(Ok(()), Err);
                }
                state.flush_requested = true;
            }
            self.inner.wake.notify_one();
            idle.await;
        }
    }

    /// Per partition, the base offset of the last batch acknowledged since the previous call
    /// (a batch acknowledged as a duplicate has no known offset and is left out).
    pub(crate) fn take_batch_offsets(&self) -> HashMap<TopicPartition, i64> {
        std::mem::take(&mut self.inner.lock().batch_offsets)
    }

    /// The error that stopped the producer, if any.
    pub fn error(&self) -> Option<ClientError> {
        self.inner.lock().fatal.clone()
    }

    /// Starts over with a new producer id and epoch: clears a stopped producer's error and
    /// restarts every partition's sequence at 0. Only valid when nothing is outstanding (after
    /// [`Producer::flush`]); used by transactions after an epoch bump (KIP-360, KIP-890).
    pub(crate) fn reset_producer_id(&self, producer_id: i64, producer_epoch: i16) {
        let mut state = self.inner.lock();
        state
            .partitions
            .retain(|_, pq| pq.in_flight > 0 || pq.open.is_some() || !pq.queue.is_empty());
        for pq in state.partitions.values_mut() {
            pq.next_sequence = 0;
            pq.next_acked_sequence = 0;
            pq.acked_any = false;
            pq.retrying = false;
        }
        state.fatal = None;
        state.producer_id = producer_id;
        state.producer_epoch = producer_epoch;
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn set_fatal(&mut self, error: ClientError) {
        if self.fatal.is_none() {
            warn!(%error, "producer stopped");
            self.fatal = Some(error.clone());
        }
        // Fail what has not been sent; in-flight batches fail as their responses arrive.
        let mut failed = 0;
        for pq in self.partitions.values_mut() {
            if let Some(open) = pq.open.take() {
                failed += open.waiters.len();
                for w in open.waiters {
                    let _ = w.tx.send(Err(error.clone()));
                }
            }
            for batch in pq.queue.drain(..) {
                failed += batch.waiters.len();
                for w in batch.waiters {
                    let _ = w.tx.send(Err(error.clone()));
                }
            }
        }
        self.outstanding_records -= failed;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

/// What one pass of the sender decided.
struct Drained {
    by_leader: HashMap<i32, Vec<Batch>>,
    need_metadata: Vec<String>,
    wake_at: Option<Instant>,
}

fn drain(inner: &Inner, state: &mut State, now: Instant) -> Drained {
    let config = &inner.config;
    let mut out = Drained {
        by_leader: HashMap::new(),
        need_metadata: Vec::new(),
        wake_at: None,
    };
    let earliest = |t: Instant, out: &mut Drained| {
        out.wake_at = Some(out.wake_at.map_or(t, |w| w.min(t)));
    };
    let (pid, epoch, flush) = (
        state.producer_id,
        state.producer_epoch,
        state.flush_requested,
    );
    let mut expired: Option<ClientError> = None;
    for (tp, pq) in state.partitions.iter_mut() {
        if let Some(open) = &pq.open {
            let linger_end = open.created + Duration::from_millis(config.linger_ms);
            if flush || linger_end <= now {
                if let Err(e) =
                    close_open_batch(inner.transactional_id.is_some(), tp, pq, pid, epoch)
                {
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
            let Some(leader) = inner.client.cached_leader(&tp.0, tp.1) else {
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
        // A batch given up on leaves a gap in its partition's sequence: stop (see module docs).
        state.set_fatal(e);
    }
    out
}

async fn sender_loop(inner: Arc<Inner>) {
    loop {
        let wake = inner.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let drained = {
            let mut state = inner.lock();
            drain(&inner, &mut state, Instant::now())
        };
        let mut topics = drained.need_metadata;
        topics.sort();
        topics.dedup();
        if !topics.is_empty() {
            if let Err(e) = inner.client.refresh_metadata(&topics).await {
                debug!(error = %e, "metadata refresh failed; will retry");
                tokio::time::sleep(Duration::from_millis(inner.config.retry_backoff_ms)).await;
            }
        }
        let sent_any = !drained.by_leader.is_empty();
        for (leader, batches) in drained.by_leader {
            send_to_leader(&inner, leader, batches).await;
        }
        if sent_any || !topics.is_empty() {
            continue; // there may be more to drain right away
        }
        match drained.wake_at {
            Some(at) => {
                tokio::select! {
                    _ = &mut wake => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => wake.await,
        }
    }
}

/// Groups batches into produce requests of at most `request_bytes_max` and enqueues them, in
/// order, on the leader's connection. Responses are handled by spawned tasks.
async fn send_to_leader(inner: &Arc<Inner>, leader: i32, batches: Vec<Batch>) {
    let conn = match inner.client.broker(leader).await {
        Ok(conn) => conn,
        Err(e) => {
            let mut state = inner.lock();
            for batch in batches {
                if let Some(pq) = state.partitions.get_mut(&batch.tp) {
                    pq.in_flight = pq.in_flight.saturating_sub(1);
                }
                requeue(inner, &mut state, batch, &e);
            }
            return;
        }
    };
    let request_batches = group_into_requests(batches, inner.config.request_bytes_max, |b| {
        (&b.tp, b.data.len())
    });
    for batches in request_batches {
        let request = produce_request(inner, &batches);
        match conn.enqueue(&request).await {
            Ok(response) => {
                let inner = Arc::clone(inner);
                tokio::spawn(async move {
                    let result = response.await.map_err(ClientError::from);
                    handle_response(&inner, batches, result);
                });
            }
            Err(e) => handle_response(inner, batches, Err(e.into())),
        }
    }
}

/// Splits batches into produce requests. A request carries at most one batch per partition (the
/// broker rejects more from an idempotent producer), so the k-th batch of every partition goes
/// into the k-th request or later; sending the requests in order then keeps each partition's
/// batches in sequence order. A request is also cut at `request_bytes_max` (a single batch larger
/// than that still gets a request of its own).
fn group_into_requests<B, K: Eq + std::hash::Hash + Clone>(
    batches: Vec<B>,
    request_bytes_max: usize,
    key_and_size: impl Fn(&B) -> (&K, usize),
) -> Vec<Vec<B>> {
    let mut requests: Vec<(Vec<B>, usize)> = Vec::new();
    let mut next_round: HashMap<K, usize> = HashMap::new();
    for batch in batches {
        let (key, size) = key_and_size(&batch);
        let key = key.clone();
        let mut index = next_round.get(&key).copied().unwrap_or(0);
        while let Some((members, bytes)) = requests.get(index) {
            let fits = members.is_empty() || bytes + size <= request_bytes_max;
            if fits && !members.iter().any(|b| key_and_size(b).0 == &key) {
                break;
            }
            index += 1;
        }
        if index == requests.len() {
            requests.push((Vec::new(), 0));
        }
        next_round.insert(key, index + 1);
        let (members, bytes) = &mut requests[index];
        *bytes += size;
        members.push(batch);
    }
    requests.into_iter().map(|(b, _)| b).collect()
}

fn produce_request(inner: &Inner, batches: &[Batch]) -> ProduceRequest {
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for batch in batches {
        let data = PartitionProduceData::default()
            .with_index(batch.tp.1)
            .with_records(Some(batch.data.clone()));
        match topics.iter_mut().find(|t| t.name.0.as_str() == batch.tp.0) {
            Some(topic) => topic.partition_data.push(data),
            None => topics.push(
                TopicProduceData::default()
                    .with_name(TopicName(kstr(batch.tp.0.clone())))
                    .with_partition_data(vec![data]),
            ),
        }
    }
    ProduceRequest::default()
        .with_transactional_id(
            inner
                .transactional_id
                .as_ref()
                .map(|id| TransactionalId(kstr(id.clone()))),
        )
        .with_acks(-1)
        .with_timeout_ms(inner.config.request_timeout_ms)
        .with_topic_data(topics)
}

fn handle_response(
    inner: &Inner,
    batches: Vec<Batch>,
    result: Result<crate::protocol::messages::messages::ProduceResponse, ClientError>,
) {
    let mut state = inner.lock();
    for batch in batches {
        if let Some(pq) = state.partitions.get_mut(&batch.tp) {
            pq.in_flight = pq.in_flight.saturating_sub(1);
        }
        let response = match &result {
            Err(e) => {
                requeue(inner, &mut state, batch, e);
                continue;
            }
            Ok(response) => response
                .responses
                .iter()
                .filter(|t| t.name.0.as_str() == batch.tp.0)
                .flat_map(|t| t.partition_responses.iter())
                .find(|p| p.index == batch.tp.1),
        };
        let Some(p) = response else {
            let e = ClientError::broker("Produce", codes::UNKNOWN_TOPIC_OR_PARTITION)
                .at(&batch.tp.0, Some(batch.tp.1));
            requeue(inner, &mut state, batch, &e);
            continue;
        };
        let error = ClientError::Broker {
            api: "Produce",
            code: crate::protocol::error_codes::lookup(p.error_code),
            topic: Some(batch.tp.0.clone()),
            partition: Some(batch.tp.1),
            message: p.error_message.as_ref().map(|m| m.to_string()),
        };
        match p.error_code {
            codes::NONE => complete(&mut state, batch, p.base_offset),
            codes::DUPLICATE_SEQUENCE_NUMBER => complete(&mut state, batch, -1),
            codes::OUT_OF_ORDER_SEQUENCE_NUMBER
                if state
                    .partitions
                    .get(&batch.tp)
                    .is_some_and(|pq| pq.next_acked_sequence != batch.base_sequence) =>
            {
                // An earlier batch of this partition is not acknowledged yet (in flight, or
                // being retried): this one must follow it, so it is retried too.
                requeue(inner, &mut state, batch, &error);
            }
            code => {
                inner.client.invalidate(&batch.tp.0, code);
                match error.class() {
                    Class::Retriable | Class::UnknownOutcome => {
                        requeue(inner, &mut state, batch, &error)
                    }
                    _ => {
                        let count = batch.waiters.len();
                        for w in batch.waiters {
                            let _ = w.tx.send(Err(error.clone()));
                        }
                        state.outstanding_records -= count;
                        // The partition's sequence now has a gap: stop (see module docs).
                        state.set_fatal(error);
                    }
                }
            }
        }
    }
    if state.outstanding_records == 0 {
        inner.idle.notify_waiters();
    }
    drop(state);
    inner.wake.notify_one();
}

fn complete(state: &mut State, batch: Batch, base_offset: i64) {
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
    state.outstanding_records -= count;
    if base_offset >= 0 {
        let last = state
            .batch_offsets
            .entry(batch.tp.clone())
            .or_insert(base_offset);
        *last = (*last).max(base_offset);
    }
    if let Some(pq) = state.partitions.get_mut(&batch.tp) {
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

/// Puts a batch back in sequence order for a retry after a backoff.
fn requeue(inner: &Inner, state: &mut State, mut batch: Batch, error: &ClientError) {
    if let ClientError::Broker { code, .. } = error {
        inner.client.invalidate(&batch.tp.0, code.code);
    } else {
        inner
            .client
            .invalidate(&batch.tp.0, codes::NOT_LEADER_OR_FOLLOWER);
    }
    if state.fatal.is_some() {
        let e = state.fatal.clone().unwrap_or_else(|| error.clone());
        let count = batch.waiters.len();
        for w in batch.waiters {
            let _ = w.tx.send(Err(e.clone()));
        }
        state.outstanding_records -= count;
        return;
    }
    batch.attempts += 1;
    let exp = batch.attempts.min(10);
    let ceiling = inner
        .config
        .retry_backoff_ms
        .saturating_mul(1 << exp)
        .min(inner.config.retry_backoff_max_ms)
        .max(1);
    let delay = rand::random_range(ceiling / 2..=ceiling);
    batch.retry_at = Some(Instant::now() + Duration::from_millis(delay));
    debug!(topic = %batch.tp.0, partition = batch.tp.1, sequence = batch.base_sequence, attempts = batch.attempts, %error, "retrying batch");
    let pq = state.partitions.entry(batch.tp.clone()).or_default();
    pq.retrying = true;
    let at = pq
        .queue
        .partition_point(|b| seq_before(b.base_sequence, batch.base_sequence));
    pq.queue.insert(at, batch);
}

/// Sequence order, allowing for the wrap at i32::MAX.
fn seq_before(a: i32, b: i32) -> bool {
    let diff = b.wrapping_sub(a) & i32::MAX;
    diff != 0 && diff < (1 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(batches: &[(&'static str, usize)], max: usize) -> Vec<Vec<(&'static str, usize)>> {
        group_into_requests(batches.to_vec(), max, |b| (&b.0, b.1))
    }

    #[test]
    fn one_batch_per_partition_per_request_in_order() {
        let got = group(
            &[("p0", 10), ("p1", 10), ("p0", 10), ("p0", 10), ("p1", 10)],
            1000,
        );
        assert_eq!(
            got,
            vec![
                vec![("p0", 10), ("p1", 10)],
                vec![("p0", 10), ("p1", 10)],
                vec![("p0", 10)]
            ]
        );
    }

    #[test]
    fn requests_are_cut_at_the_size_limit_without_reordering_a_partition() {
        let got = group(&[("p0", 60), ("p1", 60), ("p2", 30), ("p1", 10)], 100);
        // p1's first batch does not fit request 0, so its second batch must go after it.
        assert_eq!(
            got,
            vec![
                vec![("p0", 60), ("p2", 30)],
                vec![("p1", 60)],
                vec![("p1", 10)]
            ]
        );
        // A batch over the limit still gets a request of its own.
        assert_eq!(group(&[("p0", 500)], 100), vec![vec![("p0", 500)]]);
    }

    #[test]
    fn sequences_compare_across_the_wrap() {
        assert!(seq_before(5, 6));
        assert!(!seq_before(6, 5));
        assert!(
            seq_before(i32::MAX - 1, 3),
            "3 follows i32::MAX - 1 after the wrap"
        );
        assert!(!seq_before(7, 7));
    }
}
