//! Transaction commit latency: begin → send N records to P partitions → commit, back to back, for
//! N ∈ {1, 100} and P ∈ {1, 10}: exactly, the Java client (kafka-clients of the broker's version,
//! `java/CommitLatency.java`) and librdkafka (rdkafka crate), on the same broker, in the same run.
//!
//! The peers take turns in rounds of `EXACTLY_BENCH_ROUND` transactions (the order rotating per
//! round), so that a disturbance of the shared machine hits all three alike; each first runs
//! `EXACTLY_BENCH_WARMUP` unrecorded transactions per shape. Every transaction's latency is
//! recorded; the summary gives p50/p99 per peer and the ratios exactly/Java, and the share of
//! transactions of 15 ms or more (the broker parks a produce that races the previous transaction's
//! markers for `add.partitions.to.txn.retry.backoff.ms`, 20 ms). The load average before and after
//! each shape is printed so that a disturbed run can be recognised.
//!
//! Environment: `EXACTLY_BENCH_TXNS` measured transactions per peer and shape (default 400),
//! `EXACTLY_BENCH_ROUND` (50), `EXACTLY_BENCH_WARMUP` (50), `EXACTLY_BENCH_PEERS` (a comma list of
//! `exactly,java,rdkafka`, default all three), `EXACTLY_BENCH_SETTLE_MS` (exactly's `settle_window_ms`;
//! 0 measures it without waiting out the previous transaction's markers), `EXACTLY_TEST_BROKERS`
//! (else `scripts/kafka up`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use exactly::client::admin::Admin;
use exactly::client::producer::{ProducerConfig, ProducerRecord};
use exactly::client::transaction::{TransactionConfig, TransactionalProducer};
use exactly::client::{Client, ClientConfig};
use exactly_bench::java::JavaPeer;
use exactly_bench::{brokers, topic};
use rdkafka::config::ClientConfig as RdConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

const SHAPES: [(usize, i32); 4] = [(1, 1), (1, 10), (100, 1), (100, 10)];
const PEERS: [&str; 3] = ["exactly", "java", "rdkafka"];
/// A transaction at least this long most likely waited out the broker's 20 ms produce backoff.
const SLOW: Duration = Duration::from_millis(15);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

struct Peers {
    rt: tokio::runtime::Runtime,
    topic: String,
    value: Bytes,
    exactly: Option<TransactionalProducer>,
    java: Option<JavaPeer>,
    rdkafka: Option<FutureProducer>,
    /// Java transactions that failed (excluded from the figures).
    java_failed: usize,
}

impl Peers {
    fn run(&mut self, peer: &str, n: usize, p: i32, count: usize) -> Vec<Duration> {
        let (topic, value) = (&self.topic, &self.value);
        match peer {
            "exactly" => {
                let ours = self.exactly.as_ref().expect("exactly");
                self.rt.block_on(async {
                    let mut v = Vec::with_capacity(count);
                    for _ in 0..count {
                        let start = Instant::now();
                        ours.begin().await.unwrap();
                        for i in 0..n {
                            let r = ProducerRecord {
                                topic: topic.clone(),
                                partition: Some((i as i32) % p),
                                value: Some(value.clone()),
                                ..ProducerRecord::default()
                            };
                            ours.send(r).await.unwrap();
                        }
                        ours.commit().await.unwrap();
                        v.push(start.elapsed());
                    }
                    v
                })
            }
            "java" => {
                let (v, failed) = self.java.as_mut().expect("java").run(n, p, count);
                self.java_failed += failed;
                v
            }
            "rdkafka" => {
                let theirs = self.rdkafka.as_ref().expect("rdkafka");
                let mut v = Vec::with_capacity(count);
                for _ in 0..count {
                    let start = Instant::now();
                    theirs.begin_transaction().unwrap();
                    for i in 0..n {
                        let r: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic)
                            .payload(&value[..])
                            .partition((i as i32) % p);
                        drop(theirs.send_result(r).map_err(|(e, _)| e).unwrap());
                    }
                    theirs.commit_transaction(Duration::from_secs(30)).unwrap();
                    v.push(start.elapsed());
                }
                v
            }
            other => panic!("unknown peer {other}"),
        }
    }
}

fn main() {
    let txns = env_usize("EXACTLY_BENCH_TXNS", 400);
    let round = env_usize("EXACTLY_BENCH_ROUND", 50).max(1);
    let warmup = env_usize("EXACTLY_BENCH_WARMUP", 50);
    let wanted = std::env::var("EXACTLY_BENCH_PEERS").unwrap_or_else(|_| PEERS.join(","));
    let peers: Vec<&str> = PEERS
        .iter()
        .copied()
        .filter(|p| wanted.split(',').any(|w| w.trim() == *p))
        .collect();
    assert!(
        !peers.is_empty(),
        "EXACTLY_BENCH_PEERS names none of {PEERS:?}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let brokers = brokers();
    let client = rt
        .block_on(Client::connect(ClientConfig::new(&brokers)))
        .expect("client");
    let topic = topic("commit");
    rt.block_on(Admin::new(client.clone()).create_topic(&topic, 10, &[]))
        .expect("topic");

    let settle_ms = std::env::var("EXACTLY_BENCH_SETTLE_MS").ok().map(|v| {
        v.parse::<u64>()
            .expect("EXACTLY_BENCH_SETTLE_MS: milliseconds")
    });
    let exactly = peers.contains(&"exactly").then(|| {
        let defaults = TransactionConfig::new(format!("{topic}-exactly"));
        rt.block_on(TransactionalProducer::init(
            client.clone(),
            TransactionConfig {
                producer: ProducerConfig {
                    linger_ms: 0,
                    ..ProducerConfig::default()
                },
                settle_window_ms: settle_ms.unwrap_or(defaults.settle_window_ms),
                ..defaults
            },
        ))
        .expect("exactly init")
    });
    let java = peers
        .contains(&"java")
        .then(|| JavaPeer::start(&brokers, &format!("{topic}-java"), &topic));
    let rdkafka = peers.contains(&"rdkafka").then(|| {
        let _guard = rt.enter();
        let p: FutureProducer = RdConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("transactional.id", format!("{topic}-rdkafka"))
            .set("linger.ms", "0")
            .set("acks", "all")
            .create()
            .expect("rdkafka producer");
        p.init_transactions(Duration::from_secs(30))
            .expect("rdkafka init");
        p
    });
    let mut all = Peers {
        rt,
        topic,
        value: Bytes::from(vec![b'z'; 100]),
        exactly,
        java,
        rdkafka,
        java_failed: 0,
    };

    let rounds = txns.div_ceil(round);
    let mut results: Vec<((usize, i32), Vec<Vec<Duration>>, String)> = Vec::new();
    for (n, p) in SHAPES {
        let load_before = load_average();
        let started = Instant::now();
        for peer in &peers {
            all.run(peer, n, p, warmup);
        }
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); peers.len()];
        for r in 0..rounds {
            for k in 0..peers.len() {
                let i = (r + k) % peers.len();
                let count = round.min(txns - samples[i].len());
                samples[i].extend(all.run(peers[i], n, p, count));
            }
        }
        let load = format!(
            "{load_before}→{} in {:.0}s",
            load_average(),
            started.elapsed().as_secs_f64()
        );
        eprintln!("n{n}_p{p} done (load average {load})");
        results.push(((n, p), samples, load));
    }

    if let Some(ms) = settle_ms {
        println!("\nexactly with settle_window_ms = {ms}");
    }
    println!("\ncommit latency, {txns} transactions per peer and shape (rounds of {round}, after {warmup} warm-up), ms");
    print!("{:<9}", "shape");
    for peer in &peers {
        print!(" {:>9} {:>9} {:>6}", format!("{peer} p50"), "p99", "≥15ms");
    }
    let java_at = peers.iter().position(|p| *p == "java");
    let exactly_at = peers.iter().position(|p| *p == "exactly");
    let ratios = java_at.is_some() && exactly_at.is_some();
    if ratios {
        print!(" {:>10} {:>10}", "ex/java 50", "ex/java 99");
    }
    println!("  load average");
    for ((n, p), mut samples, load) in results {
        print!("{:<9}", format!("n{n}_p{p}"));
        let mut pcts = Vec::new();
        for v in samples.iter_mut() {
            let slow = v.iter().filter(|d| **d >= SLOW).count() as f64 / v.len() as f64 * 100.0;
            let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
            print!(" {:>9.2} {:>9.2} {:>5.0}%", ms(p50), ms(p99), slow);
            pcts.push((p50, p99));
        }
        if let (Some(j), Some(e)) = (java_at, exactly_at) {
            print!(
                " {:>10.2} {:>10.2}",
                pcts[e].0.as_secs_f64() / pcts[j].0.as_secs_f64(),
                pcts[e].1.as_secs_f64() / pcts[j].1.as_secs_f64()
            );
        }
        println!("  {load}");
    }

    if all.java_failed > 0 {
        println!(
            "java: {} transactions failed (the Java client's error is on stderr; a new producer was initialized) and are not in the figures",
            all.java_failed
        );
    }

    // Client-side overhead: commit() of an already flushed transaction versus the EndTxn
    // request/response inside it (measured around the coordinator call).
    if let Some(ours) = all.exactly.as_ref() {
        let (topic, value) = (&all.topic, &all.value);
        let (mut commit_only, mut end_only) = all.rt.block_on(async {
            let mut commit_only = Vec::new();
            for i in 0..300 {
                ours.begin().await.unwrap();
                let r = ProducerRecord {
                    topic: topic.clone(),
                    partition: Some(i % 10),
                    value: Some(value.clone()),
                    ..ProducerRecord::default()
                };
                ours.send(r).await.unwrap();
                ours.flush().await.unwrap();
                let start = Instant::now();
                ours.commit().await.unwrap();
                commit_only.push(start.elapsed());
            }
            let m = ours.metrics().await;
            let end_only: Vec<Duration> = m
                .commit_latency_us
                .iter()
                .rev()
                .take(300)
                .map(|us| Duration::from_micros(*us))
                .collect();
            (commit_only, end_only)
        });
        let m = all.rt.block_on(ours.metrics());
        println!(
            "exactly waited for the previous transaction's markers before {} of {} first writes ({} DescribeTransactions probes)",
            m.settle_waits,
            m.commits + m.aborts,
            m.settle_probes
        );
        let (c50, e50, e99) = (
            percentile(&mut commit_only, 0.5),
            percentile(&mut end_only, 0.5),
            percentile(&mut end_only, 0.99),
        );
        println!(
            "exactly commit() of a flushed transaction: p50 {:.3} ms; its EndTxn call: p50 {:.3} ms, p99 {:.3} ms; client-side overhead {:.1}% of the EndTxn round trip",
            ms(c50),
            ms(e50),
            ms(e99),
            (c50.as_secs_f64() - e50.as_secs_f64()) / e50.as_secs_f64() * 100.0
        );
    }
}
