//! Produce and `read_committed` fetch throughput: exactly versus librdkafka (rdkafka crate), on
//! the same broker, in the same run, with comparable settings (idempotence, acks=all, 5 ms
//! linger, 256 KiB batches, no compression, 100-byte values).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use exactly::client::admin::{Admin, Isolation};
use exactly::client::fetcher::{FetchConfig, Fetcher};
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::{Client, ClientConfig};
use exactly_bench::{brokers, topic};
use rdkafka::config::ClientConfig as RdConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Message, Offset, TopicPartitionList};

const RECORDS: usize = 50_000;
const VALUE_BYTES: usize = 100;
const PARTITIONS: i32 = 3;

fn rd_producer(brokers: &str, transactional_id: Option<&str>) -> FutureProducer {
    let mut config = RdConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "262144")
        .set("compression.type", "none")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    config.create().expect("rdkafka producer")
}

async fn exactly_produce(producer: &Producer, topic: &str, value: &Bytes) {
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let record = ProducerRecord {
            topic: topic.to_owned(),
            partition: Some((i % PARTITIONS as usize) as i32),
            value: Some(value.clone()),
            ..ProducerRecord::default()
        };
        deliveries.push(producer.send(record).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    for d in deliveries {
        d.await.expect("delivered");
    }
}

async fn rdkafka_produce(producer: &FutureProducer, topic: &str, value: &[u8]) {
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let record: FutureRecord<'_, (), [u8]> =
            FutureRecord::to(topic).payload(value).partition((i % PARTITIONS as usize) as i32);
        match producer.send_result(record) {
            Ok(d) => deliveries.push(d),
            Err((e, _)) => panic!("rdkafka enqueue failed: {e}"),
        }
    }
    for d in deliveries {
        d.await.expect("delivery canceled").expect("rdkafka delivered");
    }
}

fn produce(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let brokers = brokers();
    let client = rt.block_on(Client::connect(ClientConfig::new(&brokers))).expect("client");
    let topic = topic("produce");
    rt.block_on(Admin::new(client.clone()).create_topic(&topic, PARTITIONS, &[])).expect("topic");
    let ours = rt
        .block_on(Producer::new(
            client.clone(),
            ProducerConfig { linger_ms: 5, batch_bytes_max: 256 * 1024, ..ProducerConfig::default() },
        ))
        .expect("producer");
    let theirs = {
        let _guard = rt.enter();
        rd_producer(&brokers, None)
    };
    let value = Bytes::from(vec![b'x'; VALUE_BYTES]);
    let mut group = c.benchmark_group("produce");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    group.bench_function(BenchmarkId::new("exactly", RECORDS), |b| {
        b.to_async(&rt).iter(|| exactly_produce(&ours, &topic, &value))
    });
    group.bench_function(BenchmarkId::new("rdkafka", RECORDS), |b| {
        b.to_async(&rt).iter(|| rdkafka_produce(&theirs, &topic, &value))
    });
    group.finish();
}

/// Fills a one-partition topic with committed transactions (and one aborted one in every five)
/// written by librdkafka, so the fetch side has real transaction markers to filter.
fn fill_transactional(rt: &tokio::runtime::Runtime, brokers: &str, topic: &str) -> usize {
    let _guard = rt.enter();
    let producer = rd_producer(brokers, Some(&format!("{topic}-writer")));
    producer.init_transactions(Duration::from_secs(30)).expect("init_transactions");
    let value = vec![b'y'; VALUE_BYTES];
    let mut committed = 0;
    for t in 0..25 {
        producer.begin_transaction().expect("begin");
        let mut deliveries = Vec::new();
        for _ in 0..(RECORDS / 20) {
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(&value[..]).partition(0);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
        }
        rt.block_on(async {
            for d in deliveries {
                d.await.unwrap().unwrap();
            }
        });
        if t % 5 == 4 {
            producer.abort_transaction(Duration::from_secs(30)).expect("abort");
        } else {
            producer.commit_transaction(Duration::from_secs(30)).expect("commit");
            committed += RECORDS / 20;
        }
    }
    committed
}

async fn exactly_fetch_all(fetcher: &Fetcher, topic: &str, expected: usize) {
    let mut offset = 0;
    let mut count = 0;
    while count < expected {
        let fetched = fetcher.fetch(topic, 0, offset).await.expect("fetch");
        count += fetched.records.len();
        offset = fetched.next_offset;
    }
    assert_eq!(count, expected);
}

fn rdkafka_fetch_all(consumer: &BaseConsumer, topic: &str, expected: usize) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).expect("assign");
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count < expected {
        assert!(Instant::now() < deadline, "rdkafka read {count} of {expected}");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("rdkafka message");
            assert!(message.payload().is_some());
            count += 1;
        }
    }
}

fn fetch_read_committed(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let brokers = brokers();
    let client = rt.block_on(Client::connect(ClientConfig::new(&brokers))).expect("client");
    let topic = topic("fetch");
    rt.block_on(Admin::new(client.clone()).create_topic(&topic, 1, &[])).expect("topic");
    let committed = fill_transactional(&rt, &brokers, &topic);
    let fetcher = Fetcher::new(client, FetchConfig { isolation: Isolation::ReadCommitted, ..FetchConfig::default() });
    let consumer: BaseConsumer = RdConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{topic}-group"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        // Without this librdkafka waits up to its default 500 ms in a fetch at the end of the data.
        .set("fetch.wait.max.ms", "10")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "4194304")
        .create()
        .expect("rdkafka consumer");
    let mut group = c.benchmark_group("fetch_read_committed");
    group.throughput(Throughput::Elements(committed as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    group.bench_function(BenchmarkId::new("exactly", committed), |b| {
        b.to_async(&rt).iter(|| exactly_fetch_all(&fetcher, &topic, committed))
    });
    group.bench_function(BenchmarkId::new("rdkafka", committed), |b| b.iter(|| rdkafka_fetch_all(&consumer, &topic, committed)));
    group.finish();
}

criterion_group!(benches, produce, fetch_read_committed);
criterion_main!(benches);
