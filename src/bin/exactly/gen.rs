//! `exactly gen`: synthetic card transactions for the fraud job, written with the idempotent
//! producer (a retried batch is not written twice, so the input is exactly what was generated).
//!
//! The records come from [`crate::cards::Generator`], a pure function of the flags: the same
//! `--seed` and `--start-ms` give the same records, so a run can be reproduced and `verify`
//! can check it. The Kafka timestamp of a record is its event time; since event times may lie
//! in the past, a topic created here gets `retention.ms=-1` — with a finite retention Kafka
//! deletes records whose timestamp is older than it within minutes.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use exactly::client::admin::{Admin, ConfigResource};
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::types::codes;
use exactly::client::{Client, ClientError};

use crate::cards::{GenConfig, Generator, Kind, WindowCounts, WINDOW_DEFAULT_MS};

#[derive(Debug, Args)]
pub(crate) struct GenArgs {
    /// Topic to write (created with --partitions and retention.ms=-1 if missing).
    #[arg(long)]
    topic: String,
    /// Records to write.
    #[arg(long)]
    count: u64,
    /// Records per second of wall-clock time (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Distinct users (ids 1..=U); about 30% of the records go to a few hot users, who cross
    /// the default threshold (10 per 60 s window).
    #[arg(long)]
    users: u64,
    /// Seed of the random choices: the same seed and --start-ms give the same records.
    #[arg(long)]
    seed: u64,
    /// Event time of the first record, epoch ms (default: now).
    #[arg(long)]
    start_ms: Option<i64>,
    /// How fast event time advances, in records per second of event time (default: the
    /// records span at least 5 windows of 60 s, about 5 records per user and window).
    #[arg(long)]
    events_per_second: Option<f64>,
    /// Share of records made late: event time 10 to 11 minutes behind (default 0: none late,
    /// the jitter stays inside the job's default 5 s out-of-orderness).
    #[arg(long, default_value_t = 0.0)]
    late_fraction: f64,
    /// Share of records written malformed (not JSON, truncated, missing field, wrong types).
    #[arg(long, default_value_t = 0.0)]
    malformed_fraction: f64,
    /// Partitions of the topic when it is created here.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Deliveries awaited at once, so that memory stays bounded on long runs.
const DELIVERIES_MAX: usize = 10_000;

pub(crate) async fn run(client: Client, args: GenArgs) -> anyhow::Result<()> {
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!(
            "--rate must be 0 (as fast as possible) or more, got {}",
            args.rate
        );
    }
    let start_ms = match args.start_ms {
        Some(ms) => ms,
        None => i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis(),
        )?,
    };
    let config = GenConfig {
        count: args.count,
        users: args.users,
        seed: args.seed,
        start_ms,
        events_per_second: args
            .events_per_second
            .unwrap_or_else(|| GenConfig::default_events_per_second(args.count, args.users)),
        late_fraction: args.late_fraction,
        malformed_fraction: args.malformed_fraction,
    };
    config.validate().map_err(anyhow::Error::msg)?;
    ensure_topic(&client, &args.topic, args.partitions, start_ms).await?;

    let producer = Producer::new(client, ProducerConfig::default())
        .await
        .context("cannot start the producer")?;
    let mut progress = Progress::new(args.count);
    let began = Instant::now();
    let mut deliveries = Vec::with_capacity(DELIVERIES_MAX.min(args.count as usize));
    let mut counts = WindowCounts::default();
    let (mut malformed, mut late) = (0u64, 0u64);
    let (mut first_ts, mut last_ts) = (i64::MAX, i64::MIN);
    for (i, r) in Generator::new(config.clone()).enumerate() {
        match r.kind {
            Kind::OnTime => counts.add(r.user_id, r.ts, WINDOW_DEFAULT_MS, false),
            Kind::Late => late += 1,
            Kind::Malformed => malformed += 1,
        }
        first_ts = first_ts.min(r.ts);
        last_ts = last_ts.max(r.ts);
        if args.rate > 0.0 {
            // Keep to the rate: wait until this record's slot has come.
            let due = Duration::from_secs_f64(i as f64 / args.rate);
            if let Some(ahead) = due.checked_sub(began.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
        let record = ProducerRecord {
            topic: args.topic.clone(),
            key: Some(r.key.into()),
            value: Some(r.value.into()),
            timestamp_ms: Some(r.ts),
            ..ProducerRecord::default()
        };
        deliveries.push(
            producer
                .send(record)
                .await
                .with_context(|| format!("cannot send record {i}"))?,
        );
        if deliveries.len() >= DELIVERIES_MAX {
            for d in deliveries.drain(..) {
                d.await.context("record not delivered")?;
            }
        }
        progress.tick(i as u64 + 1, began);
    }
    producer.flush().await.context("flush failed")?;
    for d in deliveries {
        d.await.context("record not delivered")?;
    }
    progress.finish(args.count, began);
    let alerts = counts.counts.values().filter(|(n, _)| *n > 10).count();
    let windows = if args.count == 0 {
        0
    } else {
        (last_ts.div_euclid(WINDOW_DEFAULT_MS) - first_ts.div_euclid(WINDOW_DEFAULT_MS)) + 1
    };
    println!(
        "{}",
        serde_json::json!({
            "topic": args.topic,
            "records": args.count,
            "malformed": malformed,
            "late": late,
            "users": args.users,
            "hot_users": config.hot_users(),
            "seed": args.seed,
            "start_ms": start_ms,
            "events_per_second": config.events_per_second,
            "first_ts": (args.count > 0).then_some(first_ts),
            "last_ts": (args.count > 0).then_some(last_ts),
            "windows_60s": windows,
            "expected_alerts_threshold_10": alerts,
            "seconds": began.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// Creates the topic with `retention.ms=-1` if it is missing; warns when an existing topic's
/// retention would delete records this old.
async fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: i32,
    start_ms: i64,
) -> anyhow::Result<()> {
    let admin = Admin::new(client.clone());
    match admin
        .create_topic(topic, partitions, &[("retention.ms", "-1")])
        .await
    {
        Ok(()) => return Ok(()),
        Err(ClientError::Broker { code, .. }) if code.code == codes::TOPIC_ALREADY_EXISTS => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create topic {topic}")),
    }
    let configs = admin
        .describe_configs(ConfigResource::Topic, topic)
        .await
        .with_context(|| format!("cannot read the configuration of topic {topic}"))?;
    let retention_ms = configs
        .iter()
        .find(|c| c.name == "retention.ms")
        .and_then(|c| c.value.as_deref())
        .and_then(|v| v.parse::<i64>().ok());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    // Late records are up to 11 minutes behind the first event time.
    let oldest_ms = start_ms - crate::cards::LATE_BEHIND_MS - WINDOW_DEFAULT_MS;
    if let Some(r) = retention_ms.filter(|r| *r >= 0 && oldest_ms < now_ms - r) {
        eprintln!(
            "warning: topic {topic} has retention.ms={r}: Kafka will delete records with \
             event times this old within minutes (set retention.ms=-1)"
        );
    }
    Ok(())
}

/// A progress line on stderr, only when stderr is a terminal.
struct Progress {
    enabled: bool,
    total: u64,
    last: Option<Instant>,
}

impl Progress {
    fn new(total: u64) -> Self {
        Self {
            enabled: std::io::stderr().is_terminal(),
            total,
            last: None,
        }
    }

    fn tick(&mut self, done: u64, began: Instant) {
        if !self.enabled || self.last.is_some_and(|t| t.elapsed() < PROGRESS_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        self.draw(done, began);
    }

    fn draw(&self, done: u64, began: Instant) {
        let secs = began.elapsed().as_secs_f64().max(1e-3);
        let percent = if self.total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / self.total as f64
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\rgen: {done}/{} records ({percent:.0}%), {:.0} records/s   ",
            self.total,
            done as f64 / secs
        );
        let _ = err.flush();
    }

    fn finish(&self, done: u64, began: Instant) {
        if self.enabled {
            self.draw(done, began);
            eprintln!();
        }
    }
}
