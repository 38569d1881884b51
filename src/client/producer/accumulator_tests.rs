//! The accumulator's rules, without a socket or a clock: each test passes `now` explicitly.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

use super::*;
use crate::protocol::error_codes::codes;
use crate::protocol::record_batch::decode_batches;

const LEADER: i32 = 1;

struct Fixture {
    acc: Accumulator,
    buffer: Arc<Semaphore>,
    t0: Instant,
}

fn fixture(config: ProducerConfig, transactional: bool) -> Fixture {
    Fixture {
        buffer: Arc::new(Semaphore::new(config.buffer_bytes_max)),
        acc: Accumulator::new(config, transactional, 42, 3),
        t0: Instant::now(),
    }
}

fn config() -> ProducerConfig {
    ProducerConfig {
        linger_ms: 10,
        batch_bytes_max: 200,
        retry_backoff_ms: 100,
        retry_backoff_max_ms: 100,
        delivery_timeout_ms: 60_000,
        ..ProducerConfig::default()
    }
}

fn tp(partition: i32) -> TopicPartition {
    ("t".to_owned(), partition)
}

impl Fixture {
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn append(&mut self, partition: i32, value: &str, ms: u64) -> oneshot::Receiver<Delivery> {
        let size = 25 + value.len();
        let permits = Arc::clone(&self.buffer)
            .try_acquire_many_owned(size as u32)
            .unwrap();
        let now = self.at(ms);
        self.acc
            .append(
                tp(partition),
                1_000,
                None,
                Some(value.as_bytes()),
                &[],
                size,
                permits,
                now,
            )
            .expect("append")
            .0
    }

    fn drain(&mut self, ms: u64) -> Vec<Batch> {
        let now = self.at(ms);
        let mut drained = self.acc.drain(now, |_| Some(LEADER));
        drained.by_leader.remove(&LEADER).unwrap_or_default()
    }

    fn answer(&mut self, batch: Batch, error_code: i16, base_offset: i64, ms: u64) {
        let now = self.at(ms);
        self.acc.finish(
            batch,
            Outcome::Answer {
                error_code,
                base_offset,
                message: None,
            },
            now,
        );
    }
}

/// The values and base sequence encoded in a batch.
fn contents(batch: &Batch) -> (i32, Vec<String>) {
    let decoded = decode_batches(batch.data.clone(), usize::MAX)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(decoded.header.base_sequence, batch.base_sequence);
    assert_eq!(
        (decoded.header.producer_id, decoded.header.producer_epoch),
        (42, 3)
    );
    let values = decoded
        .records()
        .map(|r| String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap())
        .collect();
    (decoded.header.base_sequence, values)
}

fn offset(rx: &mut oneshot::Receiver<Delivery>) -> Option<i64> {
    rx.try_recv().ok().map(|d| d.expect("delivered").offset)
}

#[test]
fn a_batch_closes_at_linger_end_or_when_full() {
    let mut f = fixture(config(), false);
    f.append(0, "a", 0);
    let drained = f.acc.drain(f.at(5), |_| Some(LEADER));
    assert!(drained.by_leader.is_empty(), "still lingering");
    assert_eq!(drained.wake_at, Some(f.at(10)), "drain again at linger end");
    let batches = f.drain(10);
    assert_eq!(batches.len(), 1);
    assert_eq!(contents(&batches[0]), (0, vec!["a".to_owned()]));

    // 200-byte batches (61 bytes of header): a third 40-byte record does not fit.
    let mut f = fixture(config(), false);
    for i in 0..2 {
        f.append(0, &format!("{i:040}"), 0);
    }
    let (_, closed) = f
        .acc
        .append(
            tp(0),
            1,
            None,
            Some(&[b'x'; 40]),
            &[],
            65,
            Arc::clone(&f.buffer).try_acquire_many_owned(65).unwrap(),
            f.at(0),
        )
        .unwrap();
    assert!(closed, "the full batch was closed before the record");
    let batches = f.drain(0);
    assert_eq!(batches.len(), 1, "the full batch goes out before linger");
    assert_eq!(contents(&batches[0]).1.len(), 2);
}

#[test]
fn one_batch_in_flight_until_the_first_acknowledgement() {
    let mut f = fixture(
        ProducerConfig {
            linger_ms: 0,
            ..config()
        },
        false,
    );
    let mut rx = Vec::new();
    for i in 0..3 {
        rx.push(f.append(0, &format!("{i}"), 0));
        f.acc.request_flush();
        let _ = f.acc.drain(f.at(0), |_| None); // close it; no leader known yet
    }
    let drained = f.acc.drain(f.at(0), |_| None);
    assert_eq!(drained.need_metadata, vec!["t".to_owned()]);
    let mut first = f.drain(0);
    assert_eq!(first.len(), 1, "no acknowledgement yet: one at a time");
    assert!(f.drain(0).is_empty());
    f.answer(first.remove(0), codes::NONE, 100, 1);
    assert_eq!(offset(&mut rx[0]), Some(100));
    let rest = f.drain(1);
    let sequences: Vec<i32> = rest.iter().map(|b| b.base_sequence).collect();
    assert_eq!(
        sequences,
        vec![1, 2],
        "then up to the in-flight limit, in order"
    );
}

#[test]
fn a_retriable_error_resends_in_sequence_order_after_a_backoff() {
    let mut f = fixture(
        ProducerConfig {
            linger_ms: 0,
            ..config()
        },
        false,
    );
    let _first = f.append(0, "a", 0);
    let first = f.drain(0).remove(0);
    f.answer(first, codes::NONE, 0, 0);
    let mut rx = [f.append(0, "b", 0), f.append(0, "c", 0)];
    f.acc.request_flush();
    // "b" and "c" were appended together: one batch. Add a second batch behind it.
    let mut in_flight = f.drain(0);
    rx[1] = f.append(0, "d", 0);
    in_flight.extend(f.drain(0));
    assert_eq!(in_flight.len(), 2);
    let mut in_flight = in_flight.into_iter();
    let (b, d) = (in_flight.next().unwrap(), in_flight.next().unwrap());
    f.answer(b, codes::NOT_LEADER_OR_FOLLOWER, -1, 0);
    // "d" overtook nothing: the broker rejects it as out of order, and it is retried too.
    f.answer(d, codes::OUT_OF_ORDER_SEQUENCE_NUMBER, -1, 0);
    assert!(f.acc.fatal().is_none());
    assert!(f.drain(0).is_empty(), "backing off");
    let retried = f.drain(1_000);
    assert_eq!(retried.len(), 1, "one batch at a time while retrying");
    assert_eq!(
        contents(&retried[0]),
        (1, vec!["b".to_owned(), "c".to_owned()])
    );
    for batch in retried {
        f.answer(batch, codes::NONE, 1, 1_000);
    }
    let next = f.drain(2_000);
    assert_eq!(contents(&next[0]), (3, vec!["d".to_owned()]));
}

#[test]
fn a_fatal_error_fails_the_batch_and_everything_queued() {
    let mut f = fixture(
        ProducerConfig {
            linger_ms: 0,
            ..config()
        },
        false,
    );
    let mut sent = f.append(0, "a", 0);
    let batch = f.drain(0).remove(0);
    let mut queued = f.append(1, "b", 0);
    f.answer(batch, codes::INVALID_PRODUCER_EPOCH, -1, 0);
    let error = f.acc.fatal().expect("stopped");
    assert_eq!(sent.try_recv().unwrap().unwrap_err(), error);
    assert_eq!(queued.try_recv().unwrap().unwrap_err(), error);
    assert_eq!(f.acc.outstanding_records(), 0);
    assert!(f
        .acc
        .append(
            tp(0),
            0,
            None,
            None,
            &[],
            25,
            Arc::clone(&f.buffer).try_acquire_many_owned(25).unwrap(),
            f.at(0)
        )
        .is_err());
}

#[test]
fn an_undelivered_batch_times_out_and_stops_the_producer() {
    let mut f = fixture(
        ProducerConfig {
            linger_ms: 0,
            delivery_timeout_ms: 500,
            ..config()
        },
        false,
    );
    let mut rx = f.append(0, "a", 0);
    let batch = f.drain(0).remove(0);
    f.acc.finish(
        batch,
        Outcome::Failed(ClientError::ProducerClosed {
            reason: "test".into(),
        }),
        f.at(0),
    );
    assert!(f.drain(600).is_empty());
    let error = rx.try_recv().unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::DeliveryTimeout {
                timeout_ms: 500,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(f.acc.fatal(), Some(error));
}

/// Appends `values` as one batch and drains it.
fn one_batch(
    f: &mut Fixture,
    values: &[&str],
    ms: u64,
) -> (Batch, Vec<oneshot::Receiver<Delivery>>) {
    let rx = values.iter().map(|v| f.append(0, v, ms)).collect();
    f.acc.request_flush();
    let mut batches = f.drain(ms);
    f.acc.flush_done();
    assert_eq!(batches.len(), 1);
    (batches.remove(0), rx)
}

#[test]
fn message_too_large_splits_the_batch_in_halves_that_keep_its_sequences() {
    let mut f = fixture(config(), false);
    let (batch, mut rx) = one_batch(&mut f, &["a", "b", "c", "d", "e"], 0);
    f.answer(batch, codes::MESSAGE_TOO_LARGE, -1, 0);
    assert!(f.acc.fatal().is_none(), "not fatal: split and retried");
    let first = f.drain(1_000);
    assert_eq!(first.len(), 1, "one half at a time");
    assert_eq!(
        contents(&first[0]),
        (0, vec!["a".to_owned(), "b".to_owned()])
    );
    for batch in first {
        f.answer(batch, codes::NONE, 0, 1_000);
    }
    let second = f.drain(2_000);
    assert_eq!(
        contents(&second[0]),
        (2, vec!["c".to_owned(), "d".to_owned(), "e".to_owned()])
    );
    for batch in second {
        f.answer(batch, codes::NONE, 2, 2_000);
    }
    let offsets: Vec<_> = rx.iter_mut().map(offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4].map(Some));
    assert_eq!(f.acc.outstanding_records(), 0);
}

#[test]
fn a_single_record_too_large_fails_alone_and_later_sequences_move_down() {
    let mut f = fixture(config(), false);
    let (first, _) = one_batch(&mut f, &["a"], 0);
    f.answer(first, codes::NONE, 0, 0);
    // Three batches in flight at once: sequences 1 (too large), 2 and 3; one more queued (4).
    let (big, mut big_rx) = one_batch(&mut f, &["big"], 0);
    let (b, mut b_rx) = one_batch(&mut f, &["b"], 0);
    let (c, _) = one_batch(&mut f, &["c"], 0);
    assert_eq!(
        [big.base_sequence, b.base_sequence, c.base_sequence],
        [1, 2, 3]
    );
    let _d = f.append(0, "d", 0);
    f.acc.request_flush();
    let d = f.drain(0);
    assert_eq!(d[0].base_sequence, 4);
    f.answer(big, codes::MESSAGE_TOO_LARGE, -1, 0);
    let error = big_rx[0].try_recv().unwrap().unwrap_err();
    assert!(error.to_string().contains("MESSAGE_TOO_LARGE"), "{error}");
    // The broker wrote nothing, so it rejects the batches behind as out of order.
    f.answer(b, codes::OUT_OF_ORDER_SEQUENCE_NUMBER, -1, 0);
    f.answer(c, codes::OUT_OF_ORDER_SEQUENCE_NUMBER, -1, 0);
    for batch in d {
        f.answer(batch, codes::OUT_OF_ORDER_SEQUENCE_NUMBER, -1, 0);
    }
    assert!(f.acc.fatal().is_none(), "the producer goes on");
    let mut sequences = Vec::new();
    for round in 1..=3u64 {
        let batches = f.drain(round * 1_000);
        assert_eq!(batches.len(), 1, "one at a time while retrying");
        for batch in batches {
            sequences.push(contents(&batch));
            let offset = i64::from(batch.base_sequence);
            f.answer(batch, codes::NONE, offset, round * 1_000);
        }
    }
    assert_eq!(
        sequences,
        vec![
            (1, vec!["b".to_owned()]),
            (2, vec!["c".to_owned()]),
            (3, vec!["d".to_owned()])
        ],
        "re-stamped one lower, in order"
    );
    assert_eq!(offset(&mut b_rx[0]), Some(1));
    let (e, _) = one_batch(&mut f, &["e"], 5_000);
    assert_eq!(e.base_sequence, 4, "new batches continue without a gap");
}

#[test]
fn a_transactional_record_too_large_stops_the_producer() {
    let mut f = fixture(config(), true);
    let (big, mut rx) = one_batch(&mut f, &["big"], 0);
    f.answer(big, codes::MESSAGE_TOO_LARGE, -1, 0);
    let error = rx[0].try_recv().unwrap().unwrap_err();
    assert_eq!(
        f.acc.fatal(),
        Some(error),
        "its transaction must not commit without it"
    );
}

#[test]
fn two_oversize_records_in_flight_at_once_move_the_queue_down_by_two() {
    let config = ProducerConfig {
        in_flight_per_partition_max: 2,
        ..config()
    };
    let mut f = fixture(config, false);
    let (first, _) = one_batch(&mut f, &["a"], 0);
    f.answer(first, codes::NONE, 0, 0);
    let (big1, _) = one_batch(&mut f, &["big1"], 0);
    let (big2, _) = one_batch(&mut f, &["big2"], 0);
    // Two more, never sent: they wait behind the two in flight.
    let _c = f.append(0, "c", 0);
    f.acc.request_flush();
    assert!(f.drain(0).is_empty(), "two in flight");
    let _d = f.append(0, "d", 0);
    assert!(f.drain(0).is_empty(), "two in flight");
    f.answer(big1, codes::MESSAGE_TOO_LARGE, -1, 0);
    f.answer(big2, codes::MESSAGE_TOO_LARGE, -1, 0);
    assert!(f.acc.fatal().is_none());
    let mut sent = Vec::new();
    for round in 1..=3u64 {
        for batch in f.drain(round * 1_000) {
            sent.push(contents(&batch));
            f.answer(batch, codes::NONE, 0, round * 1_000);
        }
    }
    let expected = vec![(1, vec!["c".to_owned()]), (2, vec!["d".to_owned()])];
    assert_eq!(sent, expected, "sequences 1.. without gaps, in order");
}
