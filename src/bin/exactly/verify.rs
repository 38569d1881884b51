//! `exactly verify`: checks the fraud job's output against its input, independently of the
//! job's code.
//!
//! It reads the input, the alerts and the dead letters with `read_committed` to their end (the
//! last stable offset), recomputes the expected alerts by plain grouping
//! ([`crate::cards`]), and reports missing, duplicated, unexpected and miscounted alerts,
//! malformed input records not dead-lettered exactly once, possibly late records (which make
//! some windows' alerts legitimately depend on processing order), and open transactions
//! (a partition whose last stable offset is behind its high watermark: `read_committed`
//! readers are stuck there). Any discrepancy gives a non-zero exit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use exactly::client::admin::Admin;
use exactly::client::fetcher::{FetchConfig, Fetcher};
use exactly::client::reader::PartitionReader;
use exactly::client::types::{Isolation, OffsetSpec, Record, TopicPartition};
use exactly::client::Client;
use serde_json::{json, Value};

use crate::cards::{
    compare, parse_alert, parse_txn, Comparison, Observed, PartitionClock, WindowCounts,
    OUT_OF_ORDERNESS_DEFAULT_MS,
};

/// Output format of `verify` and `txn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// For people.
    Text,
    /// One JSON object, for machines.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The job's input topic (card transactions).
    #[arg(long)]
    input: String,
    /// The job's output topic (alerts).
    #[arg(long)]
    output: String,
    /// The job's dead-letter topic: each malformed input record must be there exactly once.
    #[arg(long)]
    dead_letter: Option<String>,
    /// The job's window length.
    #[arg(long, default_value_t = 60_000)]
    window_ms: i64,
    /// The job's threshold (alert when a window holds more records than this).
    #[arg(long, default_value_t = 10)]
    threshold: u64,
    /// The job's out-of-orderness (decides which records may have been late).
    #[arg(long, default_value_t = OUT_OF_ORDERNESS_DEFAULT_MS)]
    out_of_orderness_ms: i64,
    /// Accept the absence of alerts for windows that end after the input's final watermark
    /// (a job still running, not started with --bounded, has not fired them yet).
    #[arg(long)]
    allow_open_windows: bool,
    /// How many examples to show of each discrepancy.
    #[arg(long, default_value_t = 5)]
    examples: usize,
    /// How long an open transaction may take to finish before it is reported (markers are
    /// written just after a commit returns).
    #[arg(long, default_value_t = 2_000)]
    settle_ms: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// A partition whose last stable offset is behind its high watermark.
struct OpenPartition {
    topic: String,
    partition: i32,
    last_stable_offset: i64,
    high_watermark: i64,
}

pub(crate) async fn run(client: Client, args: VerifyArgs) -> anyhow::Result<()> {
    if args.window_ms <= 0 {
        bail!("--window-ms must be above 0, got {}", args.window_ms);
    }
    if args.out_of_orderness_ms < 0 {
        bail!(
            "--out-of-orderness-ms must not be negative, got {}",
            args.out_of_orderness_ms
        );
    }
    // Open transactions first: reading stops at the last stable offset, so what lies behind an
    // open transaction is not read (and the report says why).
    let mut checked = vec![args.output.clone()];
    checked.extend(args.dead_letter.clone());
    let open = open_transactions(&client, &checked, args.settle_ms).await?;

    // The input: expected window counts, malformed values, possibly late records.
    let mut counts = WindowCounts::default();
    let mut malformed: HashMap<Bytes, u64> = HashMap::new();
    let mut malformed_examples: Vec<Value> = Vec::new();
    let mut late: HashMap<Bytes, u64> = HashMap::new();
    let mut late_examples: Vec<Value> = Vec::new();
    let (mut input_records, mut malformed_count, mut late_count) = (0u64, 0u64, 0u64);
    let mut clocks: HashMap<i32, PartitionClock> = HashMap::new();
    read_topic(&client, &args.input, |partition, r| {
        input_records += 1;
        let value = r.value.clone().unwrap_or_default();
        match parse_txn(&value) {
            Ok(t) => {
                let is_late = clocks.entry(partition).or_default().observe(
                    t.ts,
                    args.window_ms,
                    args.out_of_orderness_ms,
                );
                counts.add(t.user_id, t.ts, args.window_ms, is_late);
                if is_late {
                    late_count += 1;
                    if late_examples.len() < args.examples {
                        late_examples.push(json!({
                            "partition": partition, "offset": r.offset, "user_id": t.user_id, "ts": t.ts,
                        }));
                    }
                    *late.entry(value).or_default() += 1;
                }
            }
            Err(reason) => {
                malformed_count += 1;
                if malformed_examples.len() < args.examples {
                    malformed_examples.push(json!({
                        "partition": partition, "offset": r.offset, "reason": reason,
                        "value": String::from_utf8_lossy(&value),
                    }));
                }
                *malformed.entry(value).or_default() += 1;
            }
        }
    })
    .await?;
    // The input's final watermark (minimum over partitions that had records).
    let final_watermark = clocks
        .values()
        .filter_map(|c| c.watermark(args.out_of_orderness_ms))
        .min();

    // The alerts.
    let mut observed = Vec::new();
    let mut unreadable: Vec<Value> = Vec::new();
    let mut unreadable_count = 0u64;
    let mut wrong_key: Vec<Value> = Vec::new();
    let mut wrong_key_count = 0u64;
    read_topic(&client, &args.output, |partition, r| {
        match r.value.as_deref().map(parse_alert) {
            Some(Ok(alert)) => {
                // Alerts are keyed by user id, so that one user's alerts stay in order.
                let key = alert.user_id.to_string();
                if r.key.as_deref() != Some(key.as_bytes()) {
                    wrong_key_count += 1;
                    if wrong_key.len() < args.examples {
                        wrong_key.push(json!({
                            "partition": partition, "offset": r.offset, "alert": alert,
                            "key": r.key.as_deref().map(String::from_utf8_lossy),
                        }));
                    }
                }
                observed.push(Observed {
                    alert,
                    partition,
                    offset: r.offset,
                });
            }
            other => {
                unreadable_count += 1;
                if unreadable.len() < args.examples {
                    let reason = match other {
                        Some(Err(e)) => e,
                        _ => "no value".to_owned(),
                    };
                    unreadable.push(json!({
                        "partition": partition, "offset": r.offset, "reason": reason,
                        "value": r.value.as_deref().map(String::from_utf8_lossy),
                    }));
                }
            }
        }
    })
    .await?;
    let alerts_read = observed.len() as u64;
    let open_from = args.allow_open_windows.then_some(final_watermark).flatten();
    let comparison = compare(&counts, observed, args.threshold, args.window_ms, open_from);

    let dead = match &args.dead_letter {
        Some(topic) => {
            Some(check_dead_letters(&client, topic, malformed, &late, args.examples).await?)
        }
        None => None,
    };

    // The verdict.
    let n = args.examples;
    let mut discrepancies = Vec::new();
    let c = &comparison;
    if !c.missing.is_empty() {
        discrepancies.push(format!("{} missing alerts", c.missing.len()));
    }
    if c.duplicate_copies > 0 {
        discrepancies.push(format!(
            "{} duplicated alerts ({} windows written more than once)",
            c.duplicate_copies,
            c.duplicated.len()
        ));
    }
    if !c.unexpected.is_empty() {
        discrepancies.push(format!("{} unexpected alerts", c.unexpected.len()));
    }
    if !c.mismatched.is_empty() {
        discrepancies.push(format!("{} alerts with a wrong count", c.mismatched.len()));
    }
    if unreadable_count > 0 {
        discrepancies.push(format!("{unreadable_count} unreadable output records"));
    }
    if wrong_key_count > 0 {
        discrepancies.push(format!(
            "{wrong_key_count} alerts not keyed by their user id"
        ));
    }
    if let Some(d) = &dead {
        discrepancies.extend(d.discrepancies());
    }
    if !open.is_empty() {
        discrepancies.push(format!(
            "open transactions on {} partitions (last stable offset behind the high watermark)",
            open.len()
        ));
    }
    let late_note = (late_count > 0).then_some(
        "possibly late records: their window may have closed before they arrived, and the job \
         drops records later than the watermark, so the alerts of those windows may \
         legitimately differ; they are checked against a range (without and with the late \
         records). With `gen --late-fraction 0` there are none.",
    );
    let report = json!({
        "ok": discrepancies.is_empty(),
        "discrepancies": discrepancies,
        "input": {
            "topic": args.input,
            "records": input_records,
            "malformed": malformed_count,
            "malformed_examples": malformed_examples,
            "late": late_count,
            "late_examples": late_examples,
            "final_watermark": final_watermark,
        },
        "output": {
            "topic": args.output,
            "alerts": alerts_read,
            "unreadable": unreadable_count,
            "unreadable_examples": unreadable,
            "wrong_key": wrong_key_count,
            "wrong_key_examples": wrong_key,
        },
        "expected_alerts": c.expected,
        "ambiguous_windows": c.ambiguous,
        "matched": c.matched,
        "open_windows_absent": c.open_windows_absent,
        "missing": {
            "count": c.missing.len(),
            "examples": c.missing.iter().take(n).map(|(a, max)| json!({
                "user_id": a.user_id, "window_start": a.window_start, "window_end": a.window_end,
                "count": a.count, "count_max": max,
            })).collect::<Vec<_>>(),
        },
        "duplicated": {
            "count": c.duplicate_copies,
            "windows": c.duplicated.len(),
            "examples": c.duplicated.iter().take(n).map(|(a, at)| json!({
                "alert": a,
                "at": at.iter().map(|(p, o)| format!("{}/{p}@{o}", args.output)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        },
        "unexpected": {
            "count": c.unexpected.len(),
            "examples": c.unexpected.iter().take(n).map(|(o, reason)| json!({
                "alert": o.alert, "at": format!("{}/{}@{}", args.output, o.partition, o.offset),
                "reason": reason,
            })).collect::<Vec<_>>(),
        },
        "mismatched": {
            "count": c.mismatched.len(),
            "examples": c.mismatched.iter().take(n).map(|(o, min, max)| json!({
                "alert": o.alert, "at": format!("{}/{}@{}", args.output, o.partition, o.offset),
                "count_min": min, "count_max": max,
            })).collect::<Vec<_>>(),
        },
        "dead_letter": dead.as_ref().map(DeadLetters::to_json),
        "open_transactions": open.iter().map(|o| json!({
            "topic": o.topic, "partition": o.partition,
            "last_stable_offset": o.last_stable_offset, "high_watermark": o.high_watermark,
        })).collect::<Vec<_>>(),
        "late_note": late_note,
    });
    match args.format {
        Format::Json => println!("{report}"),
        Format::Text => print_text(&report, &comparison, dead.as_ref(), &open, malformed_count),
    }
    if !discrepancies.is_empty() {
        bail!("verification failed: {}", discrepancies.join("; "));
    }
    Ok(())
}

/// Reads every partition of `topic` with read_committed from the beginning to the end (the last
/// stable offset), handing each record to `each` with its partition.
async fn read_topic(
    client: &Client,
    topic: &str,
    mut each: impl FnMut(i32, &Record),
) -> anyhow::Result<()> {
    let info = client
        .topic(topic)
        .await
        .with_context(|| format!("cannot read topic {topic}"))?;
    let fetcher = Fetcher::new(
        client.clone(),
        FetchConfig {
            isolation: Isolation::ReadCommitted,
            max_wait_ms: 100,
            ..FetchConfig::default()
        },
    );
    for p in 0..info.partitions.len() as i32 {
        let mut reader = PartitionReader::new(
            fetcher.clone(),
            TopicPartition::new(topic, p),
            OffsetSpec::Earliest,
        )
        .await
        .with_context(|| format!("cannot read {topic}/{p}"))?;
        loop {
            for r in reader
                .poll()
                .await
                .with_context(|| format!("cannot read {topic}/{p}"))?
            {
                each(p, &r);
            }
            if reader.at_end() {
                break;
            }
        }
    }
    Ok(())
}

/// The partitions of `topics` whose last stable offset stays behind the high watermark for
/// `settle_ms`.
async fn open_transactions(
    client: &Client,
    topics: &[String],
    settle_ms: u64,
) -> anyhow::Result<Vec<OpenPartition>> {
    let admin = Admin::new(client.clone());
    let deadline = Instant::now() + Duration::from_millis(settle_ms);
    let mut open = Vec::new();
    for topic in topics {
        let info = client
            .topic(topic)
            .await
            .with_context(|| format!("cannot read topic {topic}"))?;
        for p in 0..info.partitions.len() as i32 {
            loop {
                let lso = admin
                    .list_offset(topic, p, OffsetSpec::Latest, Isolation::ReadCommitted)
                    .await?;
                let hw = admin
                    .list_offset(topic, p, OffsetSpec::Latest, Isolation::ReadUncommitted)
                    .await?;
                if lso >= hw {
                    break;
                }
                if Instant::now() >= deadline {
                    open.push(OpenPartition {
                        topic: topic.clone(),
                        partition: p,
                        last_stable_offset: lso,
                        high_watermark: hw,
                    });
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(open)
}

/// The dead-letter topic compared with the malformed input, value by value (a multiset: the
/// same malformed value twice in the input must be there twice).
struct DeadLetters {
    topic: String,
    records: u64,
    matched: u64,
    /// Malformed input values not dead-lettered: value and how many copies are missing.
    missing: Vec<(Bytes, u64)>,
    missing_count: u64,
    /// Malformed input values dead-lettered more often than they were read.
    duplicated: Vec<(i32, i64, Bytes)>,
    /// Possibly late input records found in the dead letters (the job may route late data there).
    late: u64,
    /// Dead letters that are no malformed (or late) input record.
    unexpected: Vec<(i32, i64, Bytes, Option<String>)>,
    unexpected_count: u64,
    examples: usize,
}

impl DeadLetters {
    fn discrepancies(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.missing_count > 0 {
            out.push(format!(
                "{} malformed input records not in the dead-letter topic",
                self.missing_count
            ));
        }
        if !self.duplicated.is_empty() {
            out.push(format!(
                "{} malformed input records dead-lettered more than once",
                self.duplicated.len()
            ));
        }
        if self.unexpected_count > 0 {
            out.push(format!(
                "{} unexpected records in the dead-letter topic",
                self.unexpected_count
            ));
        }
        out
    }

    fn to_json(&self) -> Value {
        let n = self.examples;
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        json!({
            "topic": self.topic,
            "records": self.records,
            "matched_malformed": self.matched,
            "late": self.late,
            "missing": {
                "count": self.missing_count,
                "examples": self.missing.iter().take(n).map(|(v, k)| json!({"value": text(v), "copies": k})).collect::<Vec<_>>(),
            },
            "duplicated": {
                "count": self.duplicated.len(),
                "examples": self.duplicated.iter().take(n).map(|(p, o, v)| json!({
                    "at": format!("{}/{p}@{o}", self.topic), "value": text(v),
                })).collect::<Vec<_>>(),
            },
            "unexpected": {
                "count": self.unexpected_count,
                "examples": self.unexpected.iter().take(n).map(|(p, o, v, reason)| json!({
                    "at": format!("{}/{p}@{o}", self.topic), "value": text(v), "reason_header": reason,
                })).collect::<Vec<_>>(),
            },
        })
    }
}

async fn check_dead_letters(
    client: &Client,
    topic: &str,
    mut malformed: HashMap<Bytes, u64>,
    late: &HashMap<Bytes, u64>,
    examples: usize,
) -> anyhow::Result<DeadLetters> {
    let mut d = DeadLetters {
        topic: topic.to_owned(),
        records: 0,
        matched: 0,
        missing: Vec::new(),
        missing_count: 0,
        duplicated: Vec::new(),
        late: 0,
        unexpected: Vec::new(),
        unexpected_count: 0,
        examples,
    };
    let mut late_left = late.clone();
    let mut dead_lettered: HashMap<Bytes, u64> = HashMap::new();
    read_topic(client, topic, |partition, r| {
        d.records += 1;
        let value = r.value.clone().unwrap_or_default();
        if let Some(left) = malformed.get_mut(&value) {
            if *left > 0 {
                *left -= 1;
                d.matched += 1;
            } else {
                d.duplicated.push((partition, r.offset, value.clone()));
            }
            *dead_lettered.entry(value).or_default() += 1;
            return;
        }
        if let Some(left) = late_left.get_mut(&value).filter(|l| **l > 0) {
            *left -= 1;
            d.late += 1;
            return;
        }
        d.unexpected_count += 1;
        if d.unexpected.len() < examples {
            // The job names the reason in a header; show whichever header there is.
            let reason = r.headers.iter().find_map(|h| {
                h.value
                    .as_deref()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            d.unexpected.push((partition, r.offset, value, reason));
        }
    })
    .await?;
    let mut missing: Vec<(Bytes, u64)> = malformed
        .into_iter()
        .filter(|(_, left)| *left > 0)
        .collect();
    missing.sort();
    d.missing_count = missing.iter().map(|(_, k)| k).sum();
    d.missing = missing;
    Ok(d)
}

fn print_text(
    report: &Value,
    c: &Comparison,
    dead: Option<&DeadLetters>,
    open: &[OpenPartition],
    malformed: u64,
) {
    let input = &report["input"];
    println!(
        "input {}: {} records, {} malformed, {} possibly late",
        input["topic"].as_str().unwrap_or_default(),
        input["records"],
        input["malformed"],
        input["late"]
    );
    println!(
        "output {}: {} alerts read; expected {} (+{} windows that depend on late records), {} matched",
        report["output"]["topic"].as_str().unwrap_or_default(),
        report["output"]["alerts"],
        c.expected,
        c.ambiguous,
        c.matched
    );
    if c.open_windows_absent > 0 {
        println!(
            "  {} windows after the input's final watermark not fired yet (allowed by --allow-open-windows)",
            c.open_windows_absent
        );
    }
    let section = |name: &str, v: &Value| {
        let count = v["count"].as_u64().unwrap_or(0);
        println!("{name}: {count}");
        for e in v["examples"].as_array().into_iter().flatten() {
            println!("  {e}");
        }
    };
    section("missing", &report["missing"]);
    section("duplicated", &report["duplicated"]);
    section("unexpected", &report["unexpected"]);
    section("wrong count", &report["mismatched"]);
    if report["output"]["unreadable"].as_u64().unwrap_or(0) > 0 {
        println!(
            "unreadable output records: {}",
            report["output"]["unreadable"]
        );
        for e in report["output"]["unreadable_examples"]
            .as_array()
            .into_iter()
            .flatten()
        {
            println!("  {e}");
        }
    }
    if report["output"]["wrong_key"].as_u64().unwrap_or(0) > 0 {
        println!(
            "alerts not keyed by their user id: {}",
            report["output"]["wrong_key"]
        );
        for e in report["output"]["wrong_key_examples"]
            .as_array()
            .into_iter()
            .flatten()
        {
            println!("  {e}");
        }
    }
    match dead {
        Some(d) => {
            let j = d.to_json();
            println!(
                "dead letters {}: {} records, {} of {} malformed input records matched{}",
                d.topic,
                d.records,
                d.matched,
                malformed,
                if d.late > 0 {
                    format!(", {} late records", d.late)
                } else {
                    String::new()
                }
            );
            section("  not dead-lettered", &j["missing"]);
            section("  dead-lettered twice", &j["duplicated"]);
            section("  unexpected dead letters", &j["unexpected"]);
        }
        None if malformed > 0 => println!(
            "dead letters: not checked ({malformed} malformed input records; give --dead-letter)"
        ),
        None => {}
    }
    if open.is_empty() {
        println!("open transactions: none");
    } else {
        println!("open transactions (read_committed readers are stuck at the last stable offset; see `exactly txn list`):");
        for o in open {
            println!(
                "  {}/{}: last stable offset {} < high watermark {}",
                o.topic, o.partition, o.last_stable_offset, o.high_watermark
            );
        }
    }
    if let Some(note) = report["late_note"].as_str() {
        println!("note: {} {note}", input["late"]);
    }
    let discrepancies = report["discrepancies"].as_array().map_or(0, Vec::len);
    if discrepancies == 0 {
        println!("ok: every expected alert exactly once, nothing unexpected");
    } else {
        println!("FAILED: {discrepancies} kinds of discrepancy");
    }
}
