//! The producer's I/O: one dispatcher and one task per broker, as franz-go's `sink.go` has one
//! drainer per broker.
//!
//! Why one task per broker: connecting to a leader can take up to the connect timeout times the
//! retry deadline (a dead or hung broker), and enqueueing on a connection waits for its in-flight
//! slots. With a single sender loop that waits inline, one such broker stalls every partition
//! (issue 6, finding 7). Here the dispatcher only drains the `Accumulator` and hands each
//! leader's batches to that leader's task; a slow broker holds up only the partitions it leads.
//! Metadata refreshes run in a task of their own for the same reason.
//!
//! Order: the dispatcher hands a partition's batches to its leader's task in sequence order over
//! a FIFO channel, and the task enqueues them in that order on the connection, which writes them
//! in that order. (After a leader change a batch may reach the new leader before an earlier one
//! reached the old: the broker answers OUT_OF_ORDER_SEQUENCE_NUMBER and the accumulator retries
//! it after the earlier one.) The channels are unbounded in type but bounded in fact: a batch is
//! counted in flight from the moment it is drained, so a broker's channel never holds more than
//! `in_flight_per_partition_max` batches per partition it leads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::client::ClientError;
use crate::protocol::error_codes::codes;
use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use crate::protocol::messages::messages::{
    ProduceRequest, ProduceResponse, TopicName, TransactionalId,
};

use super::accumulator::{Batch, Outcome};
use super::Inner;

/// Aborts a task when dropped: the producer's tasks end with it.
pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One broker's task and the channel that feeds it.
struct BrokerSink {
    batches: mpsc::UnboundedSender<Vec<Batch>>,
    _task: AbortOnDrop,
}

impl BrokerSink {
    fn spawn(inner: &Arc<Inner>, leader: i32) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(broker_loop(Arc::clone(inner), leader, rx));
        Self {
            batches: tx,
            _task: AbortOnDrop(task),
        }
    }
}

/// Drains the accumulator whenever woken (a record closed a batch, an answer arrived, a flush)
/// or when a linger or backoff ends, and hands batches to their leaders' tasks.
pub(super) async fn dispatch(inner: Arc<Inner>) {
    let mut sinks: HashMap<i32, BrokerSink> = HashMap::new();
    let mut refresh: Option<AbortOnDrop> = None;
    loop {
        let wake = inner.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let (drained, idle) = {
            let mut acc = inner.lock();
            let drained = acc.drain(Instant::now(), |(topic, partition)| {
                inner.client.cached_leader(topic, *partition)
            });
            (drained, acc.outstanding_records() == 0)
        };
        if idle {
            // Draining may have given up on expired batches (delivery timeout) and failed their
            // records: whoever waits in `flush` must hear that nothing is outstanding any more.
            inner.idle.notify_waiters();
        }
        if !drained.need_metadata.is_empty() && refresh.as_ref().is_none_or(|r| r.0.is_finished()) {
            let task = tokio::spawn(refresh_metadata(Arc::clone(&inner), drained.need_metadata));
            refresh = Some(AbortOnDrop(task));
        }
        for (leader, batches) in drained.by_leader {
            let sink = sinks
                .entry(leader)
                .or_insert_with(|| BrokerSink::spawn(&inner, leader));
            if let Err(mpsc::error::SendError(batches)) = sink.batches.send(batches) {
                // The task ended (it only does on a panic): give the batches back to retry.
                sinks.remove(&leader);
                let error = ClientError::ProducerClosed {
                    reason: format!("sender task for broker {leader} stopped"),
                };
                finish_all(&inner, batches, &error);
            }
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

/// Reloads metadata for `topics`, then wakes the dispatcher (after a jittered pause on failure,
/// so that a cluster without the topic is not asked in a tight loop).
async fn refresh_metadata(inner: Arc<Inner>, topics: Vec<String>) {
    if let Err(e) = inner.client.refresh_metadata(&topics).await {
        let ms = inner.config.retry_backoff_ms.max(1);
        let pause = rand::random_range(ms / 2..=ms);
        debug!(error = %e, pause_ms = pause, "metadata refresh failed; will retry");
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    inner.wake.notify_one();
}

/// One broker's task: connects (with the client's backoff and deadline), groups batches into
/// produce requests and enqueues them in order; answers are handled by spawned tasks.
async fn broker_loop(inner: Arc<Inner>, leader: i32, mut rx: mpsc::UnboundedReceiver<Vec<Batch>>) {
    while let Some(mut batches) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            batches.extend(more);
        }
        let conn = match inner.client.broker(leader).await {
            Ok(conn) => conn,
            Err(e) => {
                debug!(leader, error = %e, "cannot reach leader; batches go back for retry");
                finish_all(&inner, batches, &e);
                continue;
            }
        };
        let requests = group_into_requests(batches, inner.config.request_bytes_max, |b| {
            (&b.tp, b.data.len())
        });
        for batches in requests {
            let request = produce_request(&inner, &batches);
            match conn.enqueue(&request).await {
                Ok(response) => {
                    let inner = Arc::clone(&inner);
                    tokio::spawn(async move {
                        let result = response.await.map_err(ClientError::from);
                        handle_response(&inner, batches, result);
                    });
                }
                Err(e) => handle_response(&inner, batches, Err(e.into())),
            }
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

/// Gives every batch back to the accumulator with the same failure.
fn finish_all(inner: &Inner, batches: Vec<Batch>, error: &ClientError) {
    let outcomes = batches
        .into_iter()
        .map(|b| (b, Outcome::Failed(error.clone())));
    finish(inner, outcomes);
}

fn handle_response(
    inner: &Inner,
    batches: Vec<Batch>,
    result: Result<ProduceResponse, ClientError>,
) {
    let outcomes = batches.into_iter().map(|batch| {
        let outcome = match &result {
            Err(e) => Outcome::Failed(e.clone()),
            Ok(response) => {
                let answer = response
                    .responses
                    .iter()
                    .filter(|t| t.name.0.as_str() == batch.tp.0)
                    .flat_map(|t| t.partition_responses.iter())
                    .find(|p| p.index == batch.tp.1);
                match answer {
                    Some(p) => Outcome::Answer {
                        error_code: p.error_code,
                        base_offset: p.base_offset,
                        message: p.error_message.as_ref().map(|m| m.to_string()),
                    },
                    // The broker left our partition out: treat it as unknown to that broker.
                    None => Outcome::Answer {
                        error_code: codes::UNKNOWN_TOPIC_OR_PARTITION,
                        base_offset: -1,
                        message: None,
                    },
                }
            }
        };
        (batch, outcome)
    });
    finish(inner, outcomes);
}

fn finish(inner: &Inner, outcomes: impl Iterator<Item = (Batch, Outcome)>) {
    let now = Instant::now();
    let mut stale: Vec<(String, i16)> = Vec::new();
    let idle = {
        let mut acc = inner.lock();
        for (batch, outcome) in outcomes {
            let topic = batch.tp.0.clone();
            if let Some(code) = acc.finish(batch, outcome, now) {
                stale.push((topic, code));
            }
        }
        acc.outstanding_records() == 0
    };
    for (topic, code) in stale {
        inner.client.invalidate(&topic, code);
    }
    if idle {
        inner.idle.notify_waiters();
    }
    inner.wake.notify_one();
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
}
