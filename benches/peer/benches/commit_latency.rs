//! Transaction commit latency: begin → send N records to P partitions → commit, for
//! N ∈ {1, 100} and P ∈ {1, 10}, exactly versus librdkafka on the same broker in the same run.
//!
//! Criterion measures each configuration; every iteration's latency is also recorded so that the
//! summary printed at the end can give p50 and p99 per client and their ratio. For exactly it
//! also prints the EndTxn part of the commit (from the producer's own latency record), which is
//! the round trip the client cannot avoid.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use exactly::client::admin::Admin;
use exactly::client::producer::{ProducerConfig, ProducerRecord};
use exactly::client::transaction::{TransactionConfig, TransactionalProducer};
use exactly::client::{Client, ClientConfig};
use exactly_bench::{brokers, topic};
use rdkafka::config::ClientConfig as RdConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

const SHAPES: [(usize, i32); 4] = [(1, 1), (1, 10), (100, 1), (100, 10)];

static SAMPLES: Mutex<Vec<(String, Vec<Duration>)>> = Mutex::new(Vec::new());

fn record(name: &str, d: Duration) {
    let mut samples = SAMPLES.lock().unwrap();
    match samples.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(d),
        None => samples.push((name.to_owned(), vec![d])),
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn commit_latency(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let brokers = brokers();
    let client = rt.block_on(Client::connect(ClientConfig::new(&brokers))).expect("client");
    let topic = topic("commit");
    rt.block_on(Admin::new(client.clone()).create_topic(&topic, 10, &[])).expect("topic");
    let value = Bytes::from(vec![b'z'; 100]);

    let ours = rt
        .block_on(TransactionalProducer::init(
            client.clone(),
            TransactionConfig {
                producer: ProducerConfig { linger_ms: 0, ..ProducerConfig::default() },
                ..TransactionConfig::new(format!("{topic}-exactly"))
            },
        ))
        .expect("exactly init");
    let theirs: FutureProducer = {
        let _guard = rt.enter();
        RdConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("transactional.id", format!("{topic}-rdkafka"))
            .set("linger.ms", "0")
            .set("acks", "all")
            .create()
            .expect("rdkafka producer")
    };
    theirs.init_transactions(Duration::from_secs(30)).expect("rdkafka init");

    let mut group = c.benchmark_group("commit_latency");
    group.sample_size(30).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    for (n, p) in SHAPES {
        let label = format!("n{n}_p{p}");
        let name = format!("exactly/{label}");
        group.bench_function(BenchmarkId::new("exactly", &label), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (ours, topic, value, name) = (&ours, &topic, &value, &name);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        ours.begin().await.unwrap();
                        for i in 0..n {
                            let r = ProducerRecord { topic: topic.clone(), partition: Some((i as i32) % p), value: Some(value.clone()), ..ProducerRecord::default() };
                            ours.send(r).await.unwrap();
                        }
                        ours.commit().await.unwrap();
                        let d = start.elapsed();
                        record(name, d);
                        total += d;
                    }
                    total
                }
            })
        });
        let name = format!("rdkafka/{label}");
        group.bench_function(BenchmarkId::new("rdkafka", &label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    theirs.begin_transaction().unwrap();
                    for i in 0..n {
                        let r: FutureRecord<'_, (), [u8]> = FutureRecord::to(&topic).payload(&value[..]).partition((i as i32) % p);
                        drop(theirs.send_result(r).map_err(|(e, _)| e).unwrap());
                    }
                    theirs.commit_transaction(Duration::from_secs(30)).unwrap();
                    let d = start.elapsed();
                    record(&name, d);
                    total += d;
                }
                total
            })
        });
    }
    group.finish();

    // Client-side overhead: commit() of an already flushed transaction versus the EndTxn
    // request/response inside it (measured around the coordinator call).
    let (commit_only, end_only) = rt.block_on(async {
        let mut commit_only = Vec::new();
        for i in 0..300 {
            ours.begin().await.unwrap();
            let r = ProducerRecord { topic: topic.clone(), partition: Some(i % 10), value: Some(value.clone()), ..ProducerRecord::default() };
            ours.send(r).await.unwrap();
            ours.flush().await.unwrap();
            let start = Instant::now();
            ours.commit().await.unwrap();
            commit_only.push(start.elapsed());
        }
        let m = ours.metrics().await;
        let end_only: Vec<Duration> = m.commit_latency_us.iter().rev().take(300).map(|us| Duration::from_micros(*us)).collect();
        (commit_only, end_only)
    });
    let end_txn = rt.block_on(ours.metrics()).commit_latency_us;
    let mut samples = SAMPLES.lock().unwrap();
    println!("\ncommit latency (all iterations, warm-up included)");
    println!("{:<10} {:>12} {:>12} {:>12} {:>12} {:>10}", "shape", "exactly p50", "exactly p99", "rdkafka p50", "rdkafka p99", "p50 ratio");
    for (n, p) in SHAPES {
        let label = format!("n{n}_p{p}");
        let mut get = |who: &str| samples.iter_mut().find(|(name, _)| *name == format!("{who}/{label}")).map(|(_, v)| std::mem::take(v)).unwrap_or_default();
        let (mut a, mut b) = (get("exactly"), get("rdkafka"));
        if a.is_empty() || b.is_empty() {
            continue;
        }
        let (a50, a99, b50, b99) = (percentile(&mut a, 0.5), percentile(&mut a, 0.99), percentile(&mut b, 0.5), percentile(&mut b, 0.99));
        println!(
            "{label:<10} {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>10.2}",
            a50.as_secs_f64() * 1e3, a99.as_secs_f64() * 1e3, b50.as_secs_f64() * 1e3, b99.as_secs_f64() * 1e3,
            a50.as_secs_f64() / b50.as_secs_f64()
        );
    }
    let mut end: Vec<Duration> = end_txn.iter().map(|us| Duration::from_micros(*us)).collect();
    let (mut c, mut e) = (commit_only, end_only);
    let (c50, e50) = (percentile(&mut c, 0.5), percentile(&mut e, 0.5));
    println!(
        "exactly commit() of a flushed transaction: p50 {:.3} ms; its EndTxn call: p50 {:.3} ms; client-side overhead {:.1}% of the EndTxn round trip",
        c50.as_secs_f64() * 1e3,
        e50.as_secs_f64() * 1e3,
        (c50.as_secs_f64() - e50.as_secs_f64()) / e50.as_secs_f64() * 100.0
    );
    if !end.is_empty() {
        println!("exactly EndTxn round trip (last {}): p50 {:.2} ms, p99 {:.2} ms", end.len(), percentile(&mut end, 0.5).as_secs_f64() * 1e3, percentile(&mut end, 0.99).as_secs_f64() * 1e3);
    }
}

criterion_group!(benches, commit_latency);
criterion_main!(benches);
