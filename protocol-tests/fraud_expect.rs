//! The fraud job's independent oracle, for the end-to-end job tests (`job_crash.rs`).
//!
//! Why a separate module: exactly-once is judged by comparing what the job wrote with what it
//! *should* have written, so "what it should have written" must not come from the job's code.
//! This module generates the input deterministically (seeded), computes the expected alerts
//! from it in plain Rust (a map from (user, window) to a count — no runtime, no watermarks, no
//! state backend), reads the job's output with `read_committed`, and compares both as
//! multisets, naming every missing, duplicated and unexpected alert. It also checks that the
//! job left no transaction open: the last stable offset equals the high watermark on every
//! output partition, and no transactional id of the job's prefix is in an open state
//! (ListTransactions, KIP-664:
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-664%3A+Provide+tooling+to+detect+and+abort+hanging+transactions>).
//!
//! The job's contract (issue 8): input `{"user_id","amount","card","ts"}` keyed by the user id
//! in decimal; tumbling event-time windows aligned to the epoch
//! (`window_start = ts - ts.rem_euclid(window_ms)`); one alert `{"user_id","window_start",
//! "window_end","count"}` keyed by the user id for each (user, window) whose count exceeds the
//! threshold. The generator keeps event-time disorder below the job's out-of-orderness, so no
//! record is late and the expected alerts are a pure function of the input.

#![allow(dead_code)] // each test binary that includes this module uses a different part of it

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use exactly::client::admin::Isolation;
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::Client;
use exactly::protocol::messages::messages::ListTransactionsRequest;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One card transaction: the job's input record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardTxn {
    /// The card holder; the record key (decimal).
    pub user_id: u64,
    /// Amount, two decimals.
    pub amount: f64,
    /// Card number (a few per user).
    pub card: String,
    /// Event time, ms since the epoch.
    pub ts: i64,
}

impl CardTxn {
    /// The record key: the user id in decimal, as the job expects it.
    pub fn key(&self) -> String {
        self.user_id.to_string()
    }

    /// The record value (JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a CardTxn always serializes")
    }
}

/// One alert: the job's output record. Ordered, so that multisets of alerts sort and diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Alert {
    /// The user.
    pub user_id: u64,
    /// Window start, ms since the epoch (inclusive).
    pub window_start: i64,
    /// Window end, ms since the epoch (exclusive).
    pub window_end: i64,
    /// Transactions of the user in the window.
    pub count: u64,
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "user {} window [{}, {}) count {}",
            self.user_id, self.window_start, self.window_end, self.count
        )
    }
}

/// The job's window parameters (the `run` flags of the same names).
#[derive(Debug, Clone, Copy)]
pub struct FraudParams {
    /// `--window-ms`.
    pub window_ms: i64,
    /// `--threshold`: an alert when the count is strictly above it.
    pub threshold: u64,
    /// `--out-of-orderness-ms`.
    pub out_of_orderness_ms: i64,
}

impl Default for FraudParams {
    fn default() -> Self {
        Self {
            window_ms: 60_000,
            threshold: 10,
            out_of_orderness_ms: 5_000,
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// RNG seed: the same spec always gives the same records.
    pub seed: u64,
    /// Number of records.
    pub records: usize,
    /// Distinct users (ids `USER_ID_BASE + 0 .. USER_ID_BASE + users`).
    pub users: u64,
    /// How many of them are "hot" (well above the threshold in every window).
    pub hot_users: u64,
    /// Share of the records that come from hot users (0..1).
    pub hot_share: f64,
    /// Event time of the first record (ms since the epoch).
    pub start_ms: i64,
    /// Event time spanned by all records: the base time advances `span_ms / records` per record.
    pub span_ms: i64,
    /// Each record's event time is its base time minus up to this much (out of order, late
    /// by at most this much relative to any earlier record). Must stay below the job's
    /// out-of-orderness so that nothing is late.
    pub jitter_ms: i64,
}

/// User ids start here, so that ids are not small numbers a bug could confuse with indexes.
pub const USER_ID_BASE: u64 = 100_000;

impl InputSpec {
    /// A spec of `records` records over 10 windows of `params`, 2,000 users of which 40 hot
    /// ones send a fifth of the records, starting at a fixed past instant (2026-01-01T00:00:17.345Z:
    /// not window-aligned, so the first and last windows are partial), jitter 2 s.
    pub fn standard(seed: u64, records: usize, params: &FraudParams) -> Self {
        Self {
            seed,
            records,
            users: 2_000,
            hot_users: 40,
            hot_share: 0.2,
            start_ms: 1_767_225_617_345,
            span_ms: 10 * params.window_ms,
            jitter_ms: 2_000,
        }
    }
}

/// Generates the records of `spec`, in production order.
pub fn generate(spec: &InputSpec) -> Vec<CardTxn> {
    assert!(spec.users > spec.hot_users && spec.hot_users > 0 && spec.records > 0);
    assert!(spec.jitter_ms >= 0 && spec.span_ms > 0);
    let mut rng = StdRng::seed_from_u64(spec.seed);
    // Hot users spread over the id range (every k-th user), so they land on every partition.
    let stride = spec.users / spec.hot_users;
    let hot: Vec<u64> = (0..spec.hot_users)
        .map(|i| USER_ID_BASE + i * stride)
        .collect();
    let mut out = Vec::with_capacity(spec.records);
    for i in 0..spec.records {
        let user_id = if rng.random_bool(spec.hot_share) {
            hot[rng.random_range(0..hot.len())]
        } else {
            USER_ID_BASE + rng.random_range(0..spec.users)
        };
        let base = spec.start_ms + (i as i128 * spec.span_ms as i128 / spec.records as i128) as i64;
        let ts = base - rng.random_range(0..=spec.jitter_ms);
        let cents: u64 = rng.random_range(100..500_000);
        let card = format!("4000-{:06}-{}", user_id % 1_000_000, rng.random_range(0..3));
        out.push(CardTxn {
            user_id,
            amount: cents as f64 / 100.0,
            card,
            ts,
        });
    }
    out
}

/// The largest amount by which a record's event time is behind the highest event time of the
/// records before it (in production order). Every partition sees a subsequence of that order,
/// so if this stays below the job's out-of-orderness, no partition's watermark ever passes a
/// record that is still to come: no record is late.
pub fn max_disorder_ms(inputs: &[CardTxn]) -> i64 {
    let mut max_seen = i64::MIN;
    let mut worst = 0;
    for r in inputs {
        if max_seen != i64::MIN {
            worst = worst.max(max_seen - r.ts);
        }
        max_seen = max_seen.max(r.ts);
    }
    worst
}

/// The start of the tumbling window holding `ts` (aligned to the epoch, like Flink's).
pub fn window_start(ts: i64, window_ms: i64) -> i64 {
    ts - ts.rem_euclid(window_ms)
}

/// The alerts the job must emit for `inputs`, sorted. Independent of the job's code: a count
/// per (user, window), kept when above the threshold. Assumes no record is late (see
/// [`max_disorder_ms`]); in bounded mode the final watermark fires every window.
pub fn expected_alerts(inputs: &[CardTxn], params: &FraudParams) -> Vec<Alert> {
    let mut counts: BTreeMap<(u64, i64), u64> = BTreeMap::new();
    for r in inputs {
        *counts
            .entry((r.user_id, window_start(r.ts, params.window_ms)))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(_, count)| *count > params.threshold)
        .map(|((user_id, start), count)| Alert {
            user_id,
            window_start: start,
            window_end: start + params.window_ms,
            count,
        })
        .collect()
}

/// A record of the output topic that is not a well-formed alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Where it is.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// What is wrong.
    pub reason: String,
}

/// Parses one output record (key and value) as an alert; the key must be the user id in
/// decimal.
pub fn parse_alert(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Alert, String> {
    let value = value.ok_or("null value")?;
    let alert: Alert = serde_json::from_slice(value).map_err(|e| {
        format!(
            "value {:?} is not an alert: {e}",
            String::from_utf8_lossy(value)
        )
    })?;
    let want = alert.user_id.to_string();
    match key {
        Some(k) if k == want.as_bytes() => Ok(alert),
        Some(k) => Err(format!(
            "key {:?} is not the user id {want} of {alert}",
            String::from_utf8_lossy(k)
        )),
        None => Err(format!("null key (want {want}) for {alert}")),
    }
}

/// The difference between the expected alerts and the output, as multisets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Expected alerts absent from the output (with how many copies are missing).
    pub missing: Vec<(Alert, usize)>,
    /// Expected alerts present more often than expected (with the number of extra copies).
    pub duplicated: Vec<(Alert, usize)>,
    /// Output alerts that were not expected at all (with how many copies).
    pub unexpected: Vec<(Alert, usize)>,
    /// Output records that are not alerts.
    pub malformed: Vec<Malformed>,
    /// Sizes, for the report.
    pub expected_total: usize,
    /// Output alerts read.
    pub actual_total: usize,
}

fn multiset(alerts: &[Alert]) -> BTreeMap<Alert, usize> {
    let mut m = BTreeMap::new();
    for a in alerts {
        *m.entry(*a).or_default() += 1;
    }
    m
}

/// Compares `actual` with `expected` as multisets.
pub fn compare(expected: &[Alert], actual: &[Alert], malformed: Vec<Malformed>) -> Comparison {
    let want = multiset(expected);
    let got = multiset(actual);
    let mut c = Comparison {
        malformed,
        expected_total: expected.len(),
        actual_total: actual.len(),
        ..Comparison::default()
    };
    for (alert, &w) in &want {
        let g = got.get(alert).copied().unwrap_or(0);
        if g < w {
            c.missing.push((*alert, w - g));
        } else if g > w {
            c.duplicated.push((*alert, g - w));
        }
    }
    for (alert, &g) in &got {
        if !want.contains_key(alert) {
            c.unexpected.push((*alert, g));
        }
    }
    c
}

impl Comparison {
    /// Whether the output is exactly the expected alerts.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.malformed.is_empty()
    }

    /// Whether the output is a part of the expected alerts, without duplicates: what
    /// `read_committed` must show at any moment while the job still runs (a committed alert is
    /// final; only missing ones are allowed).
    pub fn is_prefix_safe(&self) -> bool {
        self.duplicated.is_empty() && self.unexpected.is_empty() && self.malformed.is_empty()
    }

    /// Missing copies in total.
    pub fn missing_count(&self) -> usize {
        self.missing.iter().map(|(_, n)| n).sum()
    }

    /// Extra copies of expected alerts in total.
    pub fn duplicate_count(&self) -> usize {
        self.duplicated.iter().map(|(_, n)| n).sum()
    }

    /// Unexpected copies in total.
    pub fn unexpected_count(&self) -> usize {
        self.unexpected.iter().map(|(_, n)| n).sum()
    }

    /// A readable account: totals, then up to 20 of each kind of difference. An unexpected
    /// alert whose (user, window) is expected with another count says so.
    pub fn report(&self) -> String {
        const SHOWN: usize = 20;
        let mut s = format!(
            "expected {} alerts, read {}: missing {}, duplicated {}, unexpected {}, malformed {}",
            self.expected_total,
            self.actual_total,
            self.missing_count(),
            self.duplicate_count(),
            self.unexpected_count(),
            self.malformed.len()
        );
        let expected_counts: BTreeMap<(u64, i64), u64> = self
            .missing
            .iter()
            .map(|(a, _)| ((a.user_id, a.window_start), a.count))
            .collect();
        let mut section =
            |title: &str, items: &[(Alert, usize)], note: &dyn Fn(&Alert) -> String| {
                if items.is_empty() {
                    return;
                }
                let _ = write!(s, "\n  {title}:");
                for (alert, n) in items.iter().take(SHOWN) {
                    let _ = write!(s, "\n    {alert} (x{n}){}", note(alert));
                }
                if items.len() > SHOWN {
                    let _ = write!(s, "\n    ... and {} more", items.len() - SHOWN);
                }
            };
        let none = |_: &Alert| String::new();
        section("missing", &self.missing, &none);
        section("duplicated (extra copies)", &self.duplicated, &none);
        section("unexpected", &self.unexpected, &|a: &Alert| {
            expected_counts
                .get(&(a.user_id, a.window_start))
                .map_or_else(String::new, |c| {
                    format!(" — expected count {c} for this window")
                })
        });
        if !self.malformed.is_empty() {
            let _ = write!(s, "\n  malformed:");
            for m in self.malformed.iter().take(SHOWN) {
                let _ = write!(
                    s,
                    "\n    partition {} offset {}: {}",
                    m.partition, m.offset, m.reason
                );
            }
        }
        s
    }
}

/// Creates a topic whose records are never deleted by time: the generated event times (and
/// alerts stamped with them) lie in the past, and the default `retention.ms` would delete them
/// within minutes.
pub async fn create_kept_topic(client: &Client, prefix: &str, partitions: i32) -> String {
    let name = crate::common::unique_topic(prefix);
    exactly::client::admin::Admin::new(client.clone())
        .create_topic(&name, partitions, &[("retention.ms", "-1")])
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
    name
}

/// Writes `inputs` to `topic` with the idempotent producer, keyed by user id (the producer's
/// murmur2 partitioner), timestamped with the event time; fails on any error.
pub async fn write_input(client: &Client, topic: &str, inputs: &[CardTxn]) {
    write_input_paced(client, topic, inputs, Duration::ZERO).await;
}

/// [`write_input`], spread evenly over `over` (in slices every 100 ms, each acknowledged
/// before the next): the input keeps arriving while a job runs, crashes and restarts, so that
/// kills land while it is processing. Production order is kept, so no record gets late.
pub async fn write_input_paced(client: &Client, topic: &str, inputs: &[CardTxn], over: Duration) {
    const TICK_MS: u64 = 100;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger_ms: 20,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("idempotent producer for {topic}: {e}"));
    let ticks = (over.as_millis() as u64 / TICK_MS).max(1) as usize;
    // Acknowledgements are awaited per slice (at most 10,000 records) so that the pending
    // futures stay bounded.
    let slice = inputs.len().div_ceil(ticks).clamp(1, 10_000);
    let start = tokio::time::Instant::now();
    for (i, chunk) in inputs.chunks(slice).enumerate() {
        if !over.is_zero() {
            tokio::time::sleep_until(start + Duration::from_millis(i as u64 * TICK_MS)).await;
        }
        let mut pending = Vec::with_capacity(chunk.len());
        for r in chunk {
            let mut record = ProducerRecord::new(topic, r.to_json()).with_key(r.key());
            record.timestamp_ms = Some(r.ts);
            pending.push(
                producer
                    .send(record)
                    .await
                    .unwrap_or_else(|e| panic!("send input to {topic}: {e}")),
            );
        }
        producer
            .flush()
            .await
            .unwrap_or_else(|e| panic!("flush input to {topic}: {e}"));
        for d in pending {
            d.await.unwrap_or_else(|e| panic!("input to {topic}: {e}"));
        }
    }
}

/// The alerts of `topic` under `read_committed` (up to each partition's last stable offset),
/// and the records that are not alerts.
pub async fn read_alerts(client: &Client, topic: &str) -> (Vec<Alert>, Vec<Malformed>) {
    let partitions = partition_count(client, topic).await;
    let mut alerts = Vec::new();
    let mut malformed = Vec::new();
    for p in 0..partitions {
        for r in crate::common::read_all(client, topic, p, Isolation::ReadCommitted).await {
            match parse_alert(r.key.as_deref(), r.value.as_deref()) {
                Ok(a) => alerts.push(a),
                Err(reason) => malformed.push(Malformed {
                    partition: p,
                    offset: r.offset,
                    reason,
                }),
            }
        }
    }
    (alerts, malformed)
}

/// Reads `topic` (`read_committed`) and compares it with `expected`.
pub async fn compare_output(client: &Client, topic: &str, expected: &[Alert]) -> Comparison {
    let (alerts, malformed) = read_alerts(client, topic).await;
    compare(expected, &alerts, malformed)
}

/// The number of partitions of `topic`.
pub async fn partition_count(client: &Client, topic: &str) -> i32 {
    client
        .refresh_metadata(&[topic.to_owned()])
        .await
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    client
        .topic(topic)
        .await
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"))
        .partitions
        .len() as i32
}

/// One transactional id as ListTransactions reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTxn {
    /// The transactional id.
    pub transactional_id: String,
    /// Its current producer id.
    pub producer_id: i64,
    /// The coordinator's state name (`Ongoing`, `CompleteCommit`, ...).
    pub state: String,
}

impl ListedTxn {
    /// Whether the transaction is not finished: open, or its end decided but its markers not
    /// yet written.
    pub fn is_open(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "Empty" | "CompleteCommit" | "CompleteAbort" | "Dead"
        )
    }
}

/// The transactional ids whose name starts with `prefix` followed by `-` (the job names them
/// `PREFIX-<subtask>-<slot>`), with their states. Asks one broker: the test broker is a single
/// node, coordinator of every transactional id (on a cluster, every broker must be asked).
pub async fn list_transactions(client: &Client, prefix: &str) -> Vec<ListedTxn> {
    let response = client
        .request_any(&ListTransactionsRequest::default())
        .await
        .unwrap_or_else(|e| panic!("ListTransactions: {e}"));
    assert_eq!(
        response.error_code, 0,
        "ListTransactions failed with error code {}",
        response.error_code
    );
    let head = format!("{prefix}-");
    let mut out: Vec<ListedTxn> = response
        .transaction_states
        .into_iter()
        .filter(|t| t.transactional_id.0.starts_with(head.as_str()))
        .map(|t| ListedTxn {
            transactional_id: t.transactional_id.0.to_string(),
            producer_id: t.producer_id.0,
            state: t.transaction_state.to_string(),
        })
        .collect();
    out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
    out
}

/// The open transactions of the job's prefix.
pub async fn open_transactions(client: &Client, prefix: &str) -> Vec<ListedTxn> {
    list_transactions(client, prefix)
        .await
        .into_iter()
        .filter(ListedTxn::is_open)
        .collect()
}

/// What the job left open, after waiting (at most 30 s in all) for transactions whose end is
/// already decided: transactional ids of `prefix` in an open state (`Ongoing`, `Prepare*`),
/// and partitions of `topics` whose last stable offset is behind the high watermark (a
/// transaction still open there). Empty when nothing is open. EndTxn returns once the
/// coordinator has decided, and the markers that move the LSO are written just after, so a
/// committed transaction may need a moment; an `Ongoing` one never finishes by itself (but by
/// the broker's timeout), so it is reported at once.
pub async fn left_open(client: &Client, prefix: &str, topics: &[&str]) -> Vec<String> {
    left_open_within(client, prefix, topics, 30_000).await
}

/// [`left_open`], waiting at most `wait_ms` for decided transactions to finish.
pub async fn left_open_within(
    client: &Client,
    prefix: &str,
    topics: &[&str],
    wait_ms: u64,
) -> Vec<String> {
    let mut waited_ms = 0u64;
    loop {
        let open = open_transactions(client, prefix).await;
        if open.iter().any(|t| t.state == "Ongoing") || (!open.is_empty() && waited_ms >= wait_ms) {
            return open
                .iter()
                .map(|t| {
                    format!(
                        "transaction {} is {} (producer {})",
                        t.transactional_id, t.state, t.producer_id
                    )
                })
                .collect();
        }
        if open.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited_ms += 50;
    }
    let mut problems = Vec::new();
    for topic in topics {
        let partitions = partition_count(client, topic).await;
        for p in 0..partitions {
            loop {
                let (lso, hw) = crate::common::lso_and_hw(client, topic, p).await;
                if lso == hw {
                    break;
                }
                if waited_ms >= wait_ms {
                    problems.push(format!(
                        "{topic}/{p}: last stable offset {lso} behind the high watermark {hw}"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                waited_ms += 50;
            }
        }
    }
    problems
}

/// Asserts that the job left nothing open (see [`left_open`]): no transactional id of `prefix`
/// open, and the last stable offset equals the high watermark on every partition of `topics`.
pub async fn assert_nothing_open(client: &Client, prefix: &str, topics: &[&str]) {
    let problems = left_open(client, prefix, topics).await;
    assert!(
        problems.is_empty(),
        "transactions left open (prefix {prefix}):\n  {}\ntransactions of the prefix: {:?}",
        problems.join("\n  "),
        list_transactions(client, prefix).await
    );
}

/// The distinct window starts of `alerts`: a quick way to state how many windows alert.
pub fn windows_of(alerts: &[Alert]) -> BTreeSet<i64> {
    alerts.iter().map(|a| a.window_start).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(user_id: u64, ts: i64) -> CardTxn {
        CardTxn {
            user_id,
            amount: 1.0,
            card: "c".into(),
            ts,
        }
    }

    fn alert(user_id: u64, window_start: i64, count: u64) -> Alert {
        Alert {
            user_id,
            window_start,
            window_end: window_start + 60_000,
            count,
        }
    }

    #[test]
    fn oracle_window_alignment_includes_negative_times() {
        assert_eq!(window_start(0, 60_000), 0);
        assert_eq!(window_start(59_999, 60_000), 0);
        assert_eq!(window_start(60_000, 60_000), 60_000);
        assert_eq!(window_start(-1, 60_000), -60_000);
    }

    /// A hand-made input: user 1 has 11 records in window [0, 60000) (alert), 10 in the next
    /// (no alert: the threshold is strict); user 2 has 12 spread over a window boundary (none);
    /// user 3 has 25 in window [120000, 180000).
    #[test]
    fn oracle_expected_alerts_of_a_tiny_input() {
        let mut inputs = Vec::new();
        inputs.extend((0..11).map(|i| txn(1, i * 5_000)));
        inputs.extend((0..10).map(|i| txn(1, 60_000 + i * 1_000)));
        inputs.extend((0..12).map(|i| txn(2, 54_000 + i * 1_000)));
        inputs.extend((0..25).map(|i| txn(3, 179_999 - i)));
        let params = FraudParams::default();
        assert_eq!(
            expected_alerts(&inputs, &params),
            vec![alert(1, 0, 11), alert(3, 120_000, 25)]
        );
    }

    #[test]
    fn oracle_comparison_catches_duplicate_missing_and_unexpected() {
        let expected = vec![alert(1, 0, 11), alert(2, 0, 12), alert(3, 60_000, 13)];
        assert!(compare(&expected, &expected, vec![]).is_exact());
        // Order does not matter.
        let mut shuffled = expected.clone();
        shuffled.reverse();
        assert!(compare(&expected, &shuffled, vec![]).is_exact());

        // An injected duplicate, a missing alert (user 2) and an unexpected one (user 3 with a
        // wrong count, user 9 out of nowhere).
        let actual = vec![
            alert(1, 0, 11),
            alert(1, 0, 11),
            alert(3, 60_000, 14),
            alert(9, 0, 11),
        ];
        let c = compare(&expected, &actual, vec![]);
        assert!(!c.is_exact());
        assert!(!c.is_prefix_safe());
        assert_eq!(c.duplicated, vec![(alert(1, 0, 11), 1)]);
        assert_eq!(
            c.missing,
            vec![(alert(2, 0, 12), 1), (alert(3, 60_000, 13), 1)]
        );
        assert_eq!(
            c.unexpected,
            vec![(alert(3, 60_000, 14), 1), (alert(9, 0, 11), 1)]
        );
        let report = c.report();
        assert!(
            report.contains("missing 2, duplicated 1, unexpected 2"),
            "{report}"
        );
        assert!(
            report.contains("user 3 window [60000, 120000) count 14 (x1) — expected count 13"),
            "{report}"
        );
        assert!(
            report.contains("user 2 window [0, 60000) count 12"),
            "{report}"
        );

        // Missing alone is safe while the job runs, not at the end.
        let partial = compare(&expected, &expected[..1], vec![]);
        assert!(partial.is_prefix_safe() && !partial.is_exact());
        assert_eq!(partial.missing_count(), 2);

        // A record that is not an alert is reported.
        let bad = Malformed {
            partition: 0,
            offset: 7,
            reason: "x".into(),
        };
        let c = compare(&expected, &expected, vec![bad]);
        assert!(!c.is_exact() && c.report().contains("partition 0 offset 7: x"));
    }

    #[test]
    fn oracle_parses_alerts_and_checks_the_key() {
        let v = br#"{"user_id":5,"window_start":0,"window_end":60000,"count":11}"#;
        assert_eq!(parse_alert(Some(b"5"), Some(v)), Ok(alert(5, 0, 11)));
        assert!(parse_alert(Some(b"6"), Some(v))
            .unwrap_err()
            .contains("is not the user id 5"));
        assert!(parse_alert(None, Some(v)).unwrap_err().contains("null key"));
        assert!(parse_alert(Some(b"5"), Some(b"{}"))
            .unwrap_err()
            .contains("is not an alert"));
    }

    #[test]
    fn generator_is_deterministic_hot_and_never_late() {
        let params = FraudParams::default();
        let spec = InputSpec::standard(7, 50_000, &params);
        let a = generate(&spec);
        assert_eq!(a, generate(&spec));
        assert_ne!(
            a,
            generate(&InputSpec {
                seed: 8,
                ..spec.clone()
            })
        );
        assert!(max_disorder_ms(&a) <= spec.jitter_ms);
        assert!(max_disorder_ms(&a) < params.out_of_orderness_ms);
        let alerts = expected_alerts(&a, &params);
        // Every hot user alerts in every full window (10 full or partial windows: 11 starts).
        let windows = windows_of(&alerts);
        assert!(windows.len() >= 10, "{windows:?}");
        let alerting_users: BTreeSet<u64> = alerts.iter().map(|a| a.user_id).collect();
        assert!(alerting_users.len() >= spec.hot_users as usize);
        assert!(
            alerting_users.len() < spec.users as usize / 4,
            "a minority alerts"
        );
        // The records parse back.
        let back: CardTxn = serde_json::from_str(&a[0].to_json()).unwrap();
        assert_eq!(back, a[0]);
    }
}
