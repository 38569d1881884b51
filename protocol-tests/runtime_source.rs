//! The runtime's Kafka source against the real broker: exactly the committed records, once,
//! across readers, restores, rescaling, cancelled polls, bounded reads, discovered partitions;
//! the lag group's offsets; offsets out of range.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use exactly::client::admin::Admin;
use exactly::client::fetcher::FetchConfig;
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::transaction::{TransactionConfig, TransactionalProducer};
use exactly::client::Client;
use exactly::runtime::source::{
    KafkaSourceConfig, KafkaSourceReader, OffsetReset, SourcePoll, SourceRecord, SplitOffset,
    StaticAssigner,
};
use exactly::runtime::RuntimeError;

use crate::common::{brokers, client, create_topic, kafka_tool, lso_and_hw, settle, unique_topic};

/// Every test here ends within this (a hung broker fails it instead of hanging the run).
const TEST_BOUND: Duration = Duration::from_secs(120);

/// Source settings for tests: short fetch waits, small polls (so reads stop mid-partition).
fn config(topic: &str) -> KafkaSourceConfig {
    KafkaSourceConfig {
        fetch: FetchConfig {
            max_wait_ms: 50,
            ..FetchConfig::default()
        },
        records_per_poll_max: 7,
        ..KafkaSourceConfig::new([topic])
    }
}

async fn open(
    client: &Client,
    config: KafkaSourceConfig,
    subtask: usize,
    parallelism: usize,
    restored: &[SplitOffset],
) -> KafkaSourceReader {
    KafkaSourceReader::open(
        client.clone(),
        config,
        subtask,
        parallelism,
        restored,
        Arc::new(StaticAssigner),
    )
    .await
    .unwrap_or_else(|e| panic!("open source subtask {subtask}/{parallelism}: {e}"))
}

fn value(r: &SourceRecord) -> String {
    String::from_utf8(r.record.value.clone().unwrap().to_vec()).unwrap()
}

/// Writes `rounds` rounds in which two transactional producers each write `per_partition`
/// records to every partition, interleaved in the logs, one committing and the other aborting
/// (which one alternates). Returns the committed values, sorted.
async fn write_interleaved(
    client: &Client,
    topic: &str,
    partitions: i32,
    rounds: usize,
    per_partition: usize,
    tag: &str,
) -> Vec<String> {
    let mut producers = Vec::new();
    for n in 0..2 {
        let id = unique_topic(&format!("src-{tag}-{n}"));
        producers.push(
            TransactionalProducer::init(client.clone(), TransactionConfig::new(id))
                .await
                .unwrap(),
        );
    }
    let mut committed = Vec::new();
    for round in 0..rounds {
        for p in &producers {
            p.begin().await.unwrap();
        }
        for i in 0..per_partition {
            for partition in 0..partitions {
                for (n, p) in producers.iter().enumerate() {
                    let v = format!("{tag}-r{round}-p{n}-{partition}-{i}");
                    let record = ProducerRecord::new(topic, v).with_partition(partition);
                    p.send(record).await.unwrap();
                }
            }
            // Flush each step so the two producers' batches alternate in the log.
            for p in &producers {
                p.flush().await.unwrap();
            }
        }
        let committer = round % 2;
        for (n, p) in producers.iter().enumerate() {
            if n == committer {
                p.commit().await.unwrap();
                for partition in 0..partitions {
                    for i in 0..per_partition {
                        committed.push(format!("{tag}-r{round}-p{n}-{partition}-{i}"));
                    }
                }
            } else {
                p.abort().await.unwrap();
            }
        }
    }
    settle(client, topic, partitions).await;
    committed.sort();
    committed
}

/// The last stable offset of every partition of `topic`.
async fn ends(client: &Client, topic: &str, partitions: i32) -> BTreeMap<(String, i32), i64> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        out.insert((topic.to_owned(), p), lso_and_hw(client, topic, p).await.0);
    }
    out
}

fn at_ends(reader: &KafkaSourceReader, ends: &BTreeMap<(String, i32), i64>) -> bool {
    reader
        .positions()
        .iter()
        .all(|s| s.next_offset >= ends[&(s.topic.clone(), s.partition)])
}

/// Polls `reader` until its positions reach `ends`, collecting the values.
async fn drain(reader: &mut KafkaSourceReader, ends: &BTreeMap<(String, i32), i64>) -> Vec<String> {
    let mut out = Vec::new();
    while !at_ends(reader, ends) {
        let mut batch = Vec::new();
        reader.poll(&mut batch).await.expect("poll");
        check_order(&batch);
        out.extend(batch.iter().map(value));
    }
    out
}

/// Polls `reader` `polls` times (stopping early at the ends), collecting the values.
async fn take(reader: &mut KafkaSourceReader, polls: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..polls {
        let mut batch = Vec::new();
        reader.poll(&mut batch).await.expect("poll");
        out.extend(batch.iter().map(value));
    }
    out
}

/// Records of one split come in offset order within a batch.
fn check_order(batch: &[SourceRecord]) {
    let mut last: BTreeMap<usize, i64> = BTreeMap::new();
    for r in batch {
        if let Some(prev) = last.insert(r.split, r.record.offset) {
            assert!(
                prev < r.record.offset,
                "split {} went from {prev} to {}",
                r.split,
                r.record.offset
            );
        }
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn bounded<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(TEST_BOUND, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_readers_deliver_exactly_the_committed_records_once() {
    bounded(async {
        let client = client().await;
        let topic = create_topic(&client, "src-exact", 3).await;
        let expected = write_interleaved(&client, &topic, 3, 6, 4, "x").await;
        let ends = ends(&client, &topic, 3).await;
        let mut all = Vec::new();
        let mut owned = Vec::new();
        for subtask in 0..2 {
            let mut reader = open(&client, config(&topic), subtask, 2, &[]).await;
            owned.extend(reader.splits());
            all.extend(drain(&mut reader, &ends).await);
            // Nothing more comes: a further poll finds nothing.
            let mut more = Vec::new();
            assert_eq!(reader.poll(&mut more).await.unwrap(), SourcePoll::Idle);
            assert!(more.is_empty(), "{more:?}");
        }
        owned.sort();
        owned.dedup();
        assert_eq!(
            owned.len(),
            3,
            "every partition read by exactly one reader: {owned:?}"
        );
        assert_eq!(sorted(all), expected);
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_positions_resumes_exactly_after() {
    bounded(async {
        let client = client().await;
        let topic = create_topic(&client, "src-resume", 2).await;
        let mut expected = write_interleaved(&client, &topic, 2, 4, 5, "a").await;
        // First run: a few polls, then a "checkpoint" and a crash.
        let mut reader = open(&client, config(&topic), 0, 1, &[]).await;
        let mut seen = take(&mut reader, 3).await;
        let checkpoint = reader.positions();
        // Records handed out after the checkpoint are lost with the crash (the state that saw
        // them is not in the checkpoint): the restored run must deliver them again.
        let _after_checkpoint = take(&mut reader, 2).await;
        drop(reader);
        assert!(!seen.is_empty());
        assert!(
            seen.len() < expected.len(),
            "the first run must stop part way"
        );

        expected.extend(write_interleaved(&client, &topic, 2, 2, 3, "b").await);
        expected.sort();
        let ends = ends(&client, &topic, 2).await;
        let mut reader = open(&client, config(&topic), 0, 1, &checkpoint).await;
        assert_eq!(reader.positions(), checkpoint, "restored positions");
        seen.extend(drain(&mut reader, &ends).await);
        assert_eq!(sorted(seen), expected);
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescale_from_two_readers_to_three_continues_exactly() {
    bounded(async {
        let client = client().await;
        let topic = create_topic(&client, "src-rescale", 5).await;
        let mut expected = write_interleaved(&client, &topic, 5, 3, 4, "a").await;
        let mut seen = Vec::new();
        let mut checkpoint = Vec::new();
        for subtask in 0..2 {
            let mut reader = open(&client, config(&topic), subtask, 2, &[]).await;
            seen.extend(take(&mut reader, 4).await);
            checkpoint.extend(reader.positions());
        }
        assert_eq!(checkpoint.len(), 5, "{checkpoint:?}");
        expected.extend(write_interleaved(&client, &topic, 5, 2, 2, "b").await);
        expected.sort();
        let ends = ends(&client, &topic, 5).await;
        let mut owned = Vec::new();
        for subtask in 0..3 {
            let mut reader = open(&client, config(&topic), subtask, 3, &checkpoint).await;
            // Each new reader starts its splits where the checkpoint says.
            for p in reader.positions() {
                assert!(checkpoint.contains(&p), "{p:?} not from the checkpoint");
            }
            owned.extend(reader.splits());
            seen.extend(drain(&mut reader, &ends).await);
        }
        assert_eq!(owned.len(), 5, "{owned:?}");
        assert_eq!(sorted(seen), expected);
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_cancelled_at_random_moments_lose_and_duplicate_nothing() {
    use rand::{Rng, SeedableRng};
    bounded(async {
        let client = client().await;
        let topic = create_topic(&client, "src-cancel", 3).await;
        let expected = write_interleaved(&client, &topic, 3, 20, 5, "c").await;
        let ends = ends(&client, &topic, 3).await;
        // Small polls, and discovery due at almost every poll: cancellations land in metadata
        // refreshes and offset lookups as well as in fetches and between them.
        let config = |topic: &str| KafkaSourceConfig {
            records_per_poll_max: 3,
            discovery_interval_ms: Some(2),
            ..config(topic)
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = Vec::new();
        let (mut cancelled, mut completed) = (0, 0);
        let mut checkpoints = 0;
        for subtask in 0..2 {
            let mut reader = open(&client, config(&topic), subtask, 2, &[]).await;
            while !at_ends(&reader, &ends) {
                // 0 cancels at the first await; up to 4 ms lands anywhere in a fetch.
                let wait = match rng.random_range(0..3) {
                    0 => Duration::ZERO,
                    _ => Duration::from_micros(rng.random_range(0..4_000)),
                };
                let mut batch = Vec::new();
                match tokio::time::timeout(wait, reader.poll(&mut batch)).await {
                    Ok(result) => {
                        result.expect("poll");
                        completed += 1;
                    }
                    Err(_) => cancelled += 1,
                }
                // A cancelled poll never leaves records behind in the caller's vector.
                seen.extend(batch.iter().map(value));
                // Now and then, "restore" from the current positions into a fresh reader: what
                // the positions say must agree with what was handed out.
                if rng.random_range(0..20) == 0 {
                    let positions = reader.positions();
                    reader = open(&client, config(&topic), subtask, 2, &positions).await;
                    checkpoints += 1;
                }
            }
        }
        eprintln!("{cancelled} cancelled polls, {completed} completed, {checkpoints} reopenings");
        assert!(cancelled > 0, "some polls must have been cancelled");
        assert_eq!(sorted(seen), expected);
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_read_stops_at_the_ends_taken_at_open_while_writes_go_on() {
    bounded(async {
        let client = client().await;
        let topic = create_topic(&client, "src-bounded", 3).await;
        let expected = write_interleaved(&client, &topic, 3, 4, 4, "a").await;
        let ends_at_open = ends(&client, &topic, 3).await;
        let bounded_config = KafkaSourceConfig {
            bounded: true,
            ..config(&topic)
        };
        let mut readers = Vec::new();
        for subtask in 0..2 {
            readers.push(open(&client, bounded_config.clone(), subtask, 2, &[]).await);
        }
        // A producer keeps writing (transactions and plain records) until the readers are done.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (first_round, wrote_once) = tokio::sync::oneshot::channel();
        let writer = {
            let (client, topic, stop) = (client.clone(), topic.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let producer = Producer::new(client, ProducerConfig::default())
                    .await
                    .unwrap();
                let mut first_round = Some(first_round);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for partition in 0..3 {
                        let record = ProducerRecord::new(topic.as_str(), format!("late-{n}"))
                            .with_partition(partition);
                        producer.send(record).await.unwrap();
                    }
                    producer.flush().await.unwrap();
                    if let Some(tx) = first_round.take() {
                        let _ = tx.send(());
                    }
                    n += 1;
                }
                n
            })
        };
        // The log has grown past the ends before the readers start.
        wrote_once.await.unwrap();
        let mut seen = Vec::new();
        for reader in &mut readers {
            loop {
                let mut batch = Vec::new();
                match reader.poll(&mut batch).await.expect("poll") {
                    SourcePoll::End => break,
                    SourcePoll::Records | SourcePoll::Idle => {
                        seen.extend(batch.iter().map(value));
                    }
                }
            }
            // End stays End.
            let mut batch = Vec::new();
            assert_eq!(reader.poll(&mut batch).await.unwrap(), SourcePoll::End);
            assert!(batch.is_empty());
            // It stopped exactly at the ends taken at open.
            let end_offsets = reader.end_offsets().unwrap();
            assert_eq!(reader.positions(), end_offsets);
            for s in end_offsets {
                assert_eq!(s.next_offset, ends_at_open[&(s.topic.clone(), s.partition)]);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.await.unwrap();
        let later = ends(&client, &topic, 3).await;
        assert!(
            later.iter().all(|(k, v)| *v > ends_at_open[k]),
            "the log grew past the ends"
        );
        assert_eq!(sorted(seen), expected);
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_picks_up_partitions_added_later() {
    bounded(async {
        let client = client().await;
        let topic = create_topic(&client, "src-discover", 2).await;
        let producer = Producer::new(client.clone(), ProducerConfig::default())
            .await
            .unwrap();
        let write = |partitions: std::ops::Range<i32>, tag: &'static str| {
            let producer = &producer;
            let topic = topic.clone();
            async move {
                let mut values = Vec::new();
                for partition in partitions {
                    for i in 0..5 {
                        let v = format!("{tag}-{partition}-{i}");
                        let record = ProducerRecord::new(topic.as_str(), v.clone())
                            .with_partition(partition);
                        producer.send(record).await.unwrap();
                        values.push(v);
                    }
                }
                producer.flush().await.unwrap();
                values
            }
        };
        let mut expected = write(0..2, "before").await;
        let discovering = KafkaSourceConfig {
            discovery_interval_ms: Some(100),
            ..config(&topic)
        };
        let mut readers = Vec::new();
        for subtask in 0..2 {
            readers.push(open(&client, discovering.clone(), subtask, 2, &[]).await);
        }
        let ends_before = ends(&client, &topic, 2).await;
        let mut seen = Vec::new();
        for reader in &mut readers {
            seen.extend(drain(reader, &ends_before).await);
        }
        Admin::new(client.clone())
            .create_partitions(&topic, 5)
            .await
            .unwrap();
        expected.extend(write(0..5, "after").await);
        expected.sort();
        let ends_after = ends(&client, &topic, 5).await;
        // Poll until every partition is someone's split and everything is read.
        loop {
            for reader in &mut readers {
                let mut batch = Vec::new();
                reader.poll(&mut batch).await.expect("poll");
                seen.extend(batch.iter().map(value));
            }
            let mut owned: Vec<_> = readers.iter().flat_map(|r| r.positions()).collect();
            owned.sort();
            if owned.len() == 5
                && owned
                    .iter()
                    .all(|s| s.next_offset >= ends_after[&(s.topic.clone(), s.partition)])
            {
                break;
            }
        }
        let mut owned: Vec<_> = readers.iter().flat_map(|r| r.splits()).collect();
        owned.sort();
        owned.dedup();
        assert_eq!(
            owned.len(),
            5,
            "each partition read by exactly one reader: {owned:?}"
        );
        assert_eq!(sorted(seen), expected);
    })
    .await
    .expect("test bound");
}

/// The committed offset per partition of `topic` for `group`, from Kafka's consumer-group tool
/// (`--describe`: GROUP TOPIC PARTITION CURRENT-OFFSET ...).
async fn tool_group_offsets(group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let group = group.to_owned();
    let text = tokio::task::spawn_blocking(move || {
        kafka_tool(
            &[
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                "--bootstrap-server",
                brokers(),
                "--describe",
                "--group",
                &group,
            ],
            None,
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8(text).unwrap();
    text.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(topic))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let partition = cols[2].parse().unwrap_or_else(|_| panic!("{l}"));
            let offset = cols[3].parse().unwrap_or_else(|_| panic!("{l}"));
            (partition, offset)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointed_offsets_committed_to_the_lag_group_show_in_kafkas_tool() {
    bounded(async {
        let client = client().await;
        let topic = create_topic(&client, "src-lag", 2).await;
        write_interleaved(&client, &topic, 2, 2, 5, "l").await;
        let group = unique_topic("src-lag-group");
        let with_group = KafkaSourceConfig {
            lag_group: Some(group.clone()),
            ..config(&topic)
        };
        let mut reader = open(&client, with_group, 0, 1, &[]).await;
        take(&mut reader, 2).await;
        let lag: i64 = reader.lag().iter().map(|(_, behind)| behind.unwrap()).sum();
        assert!(lag > 0, "{:?}", reader.lag());
        let checkpoint = reader.positions();
        reader.commit_to_group(&checkpoint).await.unwrap();
        let expected: BTreeMap<i32, i64> = checkpoint
            .iter()
            .map(|s| (s.partition, s.next_offset))
            .collect();
        assert_eq!(tool_group_offsets(&group, &topic).await, expected);
        // A later checkpoint moves them on.
        let ends = ends(&client, &topic, 2).await;
        drain(&mut reader, &ends).await;
        assert!(
            reader.lag().iter().all(|(_, behind)| *behind == Some(0)),
            "{:?}",
            reader.lag()
        );
        let checkpoint = reader.positions();
        reader.commit_to_group(&checkpoint).await.unwrap();
        let expected: BTreeMap<i32, i64> = ends.iter().map(|((_, p), o)| (*p, *o)).collect();
        assert_eq!(tool_group_offsets(&group, &topic).await, expected);
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_outside_the_log_is_an_error_or_an_announced_reset() {
    bounded(async {
        let client = client().await;
        let topic = create_topic(&client, "src-range", 1).await;
        let expected = write_interleaved(&client, &topic, 1, 2, 5, "r").await;
        let end = ends(&client, &topic, 1).await;
        let log_end = lso_and_hw(&client, &topic, 0).await.1;
        // A checkpoint from a topic that has since been re-created: far beyond the log end.
        let restored = [SplitOffset {
            topic: topic.clone(),
            partition: 0,
            next_offset: 1_000,
        }];
        let mut reader = open(&client, config(&topic), 0, 1, &restored).await;
        let mut batch = Vec::new();
        match reader.poll(&mut batch).await {
            Err(RuntimeError::SourceOffsetOutOfRange {
                topic: t,
                partition: 0,
                offset: 1_000,
                log_start_offset: 0,
                log_end_offset,
            }) => {
                assert_eq!(t, topic);
                assert_eq!(log_end_offset, log_end);
            }
            other => panic!("expected an offset-out-of-range error, got {other:?}"),
        }
        assert!(batch.is_empty());
        assert_eq!(reader.positions(), restored, "an error moves nothing");

        let resetting = KafkaSourceConfig {
            offset_out_of_range: OffsetReset::Earliest,
            ..config(&topic)
        };
        let mut reader = open(&client, resetting, 0, 1, &restored).await;
        // The first poll meets the out-of-range position and moves it to the log start.
        let mut seen = take(&mut reader, 1).await;
        assert!(
            reader.positions()[0].next_offset < 1_000,
            "reset to the log start"
        );
        seen.extend(drain(&mut reader, &end).await);
        assert_eq!(sorted(seen), expected);
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_records_come_back_without_waiting_for_the_fetch_in_flight() {
    bounded(async {
        let client = client().await;
        let topic = create_topic(&client, "src-prompt", 1).await;
        let expected = write_interleaved(&client, &topic, 1, 2, 25, "p").await;
        // The broker holds a fetch that finds no new data for 10 s.
        let slow = KafkaSourceConfig {
            fetch: FetchConfig {
                max_wait_ms: 10_000,
                ..FetchConfig::default()
            },
            records_per_poll_max: 5,
            ..KafkaSourceConfig::new([topic.as_str()])
        };
        let mut reader = open(&client, slow, 0, 1, &[]).await;
        let mut seen = Vec::new();
        let mut batch = Vec::new();
        assert_eq!(reader.poll(&mut batch).await.unwrap(), SourcePoll::Records);
        seen.extend(batch.iter().map(value));
        // Every record is buffered now and the next fetch (past the end) sits at the broker:
        // each poll must hand out buffered records on its very first step, without awaiting
        // anything — a zero timeout lets nothing else through.
        while seen.len() < expected.len() {
            let mut batch = Vec::new();
            let polled = tokio::time::timeout(Duration::ZERO, reader.poll(&mut batch)).await;
            assert_eq!(
                polled.map(Result::unwrap),
                Ok(SourcePoll::Records),
                "poll waited although records were buffered ({} of {} handed out)",
                seen.len(),
                expected.len()
            );
            seen.extend(batch.iter().map(value));
        }
        assert_eq!(sorted(seen), expected);
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_created_after_the_checkpoint_starts_at_the_earliest_offset() {
    bounded(async {
        let client = client().await;
        let topic = create_topic(&client, "src-grown", 2).await;
        let mut expected = write_interleaved(&client, &topic, 2, 2, 4, "a").await;
        let mut reader = open(&client, config(&topic), 0, 1, &[]).await;
        let ends_before = ends(&client, &topic, 2).await;
        let mut seen = drain(&mut reader, &ends_before).await;
        let checkpoint = reader.positions();
        drop(reader);
        // While the job is down the topic grows a partition and records arrive everywhere.
        Admin::new(client.clone())
            .create_partitions(&topic, 3)
            .await
            .unwrap();
        expected.extend(write_interleaved(&client, &topic, 3, 2, 3, "b").await);
        expected.sort();
        // Even with `Latest` for fresh starts, the new partition is read from its start: the
        // checkpoint knows the topic, so the partition is newer than the checkpoint.
        let latest = KafkaSourceConfig {
            starting: exactly::runtime::source::StartingOffsets::Latest,
            ..config(&topic)
        };
        let mut reader = open(&client, latest, 0, 1, &checkpoint).await;
        assert_eq!(reader.splits().len(), 3);
        let ends_after = ends(&client, &topic, 3).await;
        seen.extend(drain(&mut reader, &ends_after).await);
        assert_eq!(sorted(seen), expected);
    })
    .await
    .expect("test bound");
}
