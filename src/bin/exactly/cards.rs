//! Synthetic card transactions (`exactly gen`) and a plain, independent reading of them and of
//! the alerts (`exactly verify`).
//!
//! Why a module of its own: the generator must be a pure function of its settings (same seed
//! and start, same records) so that a run can be reproduced and checked, and `verify` must
//! recompute the expected alerts *without* the job's code — otherwise a bug in the job's
//! parsing or windowing would be repeated by its own check. Everything here is plain grouping
//! over `serde_json` values; nothing calls `exactly::jobs` or `exactly::runtime`. No I/O.
//!
//! Event time and lateness follow the job's contract (issue 8): tumbling windows aligned to
//! the epoch, `[start, start + window_ms)`; a partition's watermark is its highest event time
//! minus the out-of-orderness minus 1 ms (Flink's bounded out-of-orderness), the job's
//! watermark the minimum over partitions; a record is late when its window's last millisecond
//! is at or before the watermark.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The job's default out-of-orderness; the generator's jitter stays strictly inside it.
pub(crate) const OUT_OF_ORDERNESS_DEFAULT_MS: i64 = 5_000;
/// Largest amount by which an on-time record's event time is behind the steady clock.
pub(crate) const JITTER_MAX_MS: i64 = 4_000;
/// How far behind the steady clock a late record's event time is (then up to one window more).
pub(crate) const LATE_BEHIND_MS: i64 = 600_000;
/// The window the generator sizes its skew for (the job's default).
pub(crate) const WINDOW_DEFAULT_MS: i64 = 60_000;
/// Share of records that go to the hot users.
const HOT_SHARE: f64 = 0.3;
/// Records per window a hot user gets at least (2.5 times the default threshold of 10).
const HOT_PER_WINDOW: f64 = 25.0;
/// Mean records per window of a user by default (well under the default threshold).
const MEAN_PER_USER_WINDOW: u64 = 5;
/// Windows the records span at least by default.
const DEFAULT_WINDOWS: u64 = 5;

/// SplitMix64: tiny, fast, and — unlike a library's `StdRng` — fixed forever, so a seed gives the
/// same records in every version of the program.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)` (`n > 0`; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What the generator makes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GenConfig {
    /// Records in all.
    pub count: u64,
    /// Distinct users (ids 1..=users).
    pub users: u64,
    /// Seed of the random choices.
    pub seed: u64,
    /// Event time of the first record, epoch ms.
    pub start_ms: i64,
    /// How fast event time advances, in records per second of event time.
    pub events_per_second: f64,
    /// Share of records made late (event time far behind).
    pub late_fraction: f64,
    /// Share of records written malformed.
    pub malformed_fraction: f64,
}

impl GenConfig {
    /// The default event-time rate for `count` records of `users` users: at least
    /// [`DEFAULT_WINDOWS`] windows, and on average [`MEAN_PER_USER_WINDOW`] records per user and
    /// window at most, so that only the hot users cross the threshold.
    pub(crate) fn default_events_per_second(count: u64, users: u64) -> f64 {
        let per_window = (count / DEFAULT_WINDOWS)
            .min(users.saturating_mul(MEAN_PER_USER_WINDOW))
            .max(1);
        per_window as f64 * 1_000.0 / WINDOW_DEFAULT_MS as f64
    }

    /// Checks the settings; the message names the flag.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.users == 0 {
            return Err("--users must be at least 1".into());
        }
        if !(self.events_per_second.is_finite() && self.events_per_second > 0.0) {
            return Err(format!(
                "--events-per-second must be above 0, got {}",
                self.events_per_second
            ));
        }
        for (name, f) in [
            ("--late-fraction", self.late_fraction),
            ("--malformed-fraction", self.malformed_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("{name} must be between 0 and 1, got {f}"));
            }
        }
        if self.late_count() + self.malformed_count() > self.count {
            return Err(
                "--late-fraction and --malformed-fraction together must not exceed 1".into(),
            );
        }
        Ok(())
    }

    /// Exactly how many records are malformed.
    pub(crate) fn malformed_count(&self) -> u64 {
        (self.count as f64 * self.malformed_fraction).round() as u64
    }

    /// Exactly how many records are late.
    pub(crate) fn late_count(&self) -> u64 {
        (self.count as f64 * self.late_fraction).round() as u64
    }

    /// Users that get [`HOT_SHARE`] of the records (ids 1..=hot): enough for each to have about
    /// [`HOT_PER_WINDOW`] records per default window, at most a tenth of the users.
    pub(crate) fn hot_users(&self) -> u64 {
        let per_window = self.events_per_second * WINDOW_DEFAULT_MS as f64 / 1_000.0;
        let wanted = (HOT_SHARE * per_window / HOT_PER_WINDOW).floor() as u64;
        wanted.clamp(1, (self.users / 10).max(1))
    }
}

/// What kind of record the generator wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A card transaction inside the out-of-orderness.
    OnTime,
    /// A card transaction far behind in event time.
    Late,
    /// Not a card transaction.
    Malformed,
}

/// One generated record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GenRecord {
    /// The user id as a decimal string.
    pub key: String,
    /// The JSON (or not) value.
    pub value: String,
    /// Event time, also the Kafka timestamp.
    pub ts: i64,
    /// The user (also for malformed records: the one the key names).
    pub user_id: u64,
    /// What it is.
    pub kind: Kind,
}

/// The records of a [`GenConfig`], in order. A pure function of the config.
#[derive(Debug, Clone)]
pub(crate) struct Generator {
    config: GenConfig,
    rng: SplitMix64,
    hot: u64,
    /// Records that are late or malformed (`late + malformed`), spread evenly.
    special: u64,
    malformed: u64,
    next: u64,
}

/// Whether slot `i` of `n` is one of `k` evenly spread picks (exactly `k` of the `n` are).
fn picked(i: u64, k: u64, n: u64) -> bool {
    let (i, k, n) = (u128::from(i), u128::from(k), u128::from(n));
    n > 0 && (i + 1) * k / n > i * k / n
}

impl Generator {
    pub(crate) fn new(config: GenConfig) -> Self {
        let malformed = config.malformed_count();
        let special = malformed + config.late_count();
        Self {
            rng: SplitMix64::new(config.seed),
            hot: config.hot_users(),
            special,
            malformed,
            next: 0,
            config,
        }
    }

    fn card_of(&self, user: u64) -> String {
        let n = SplitMix64::new(self.config.seed ^ user.wrapping_mul(0x2545_F491_4F6C_DD1D))
            .next_u64()
            % 1_000_000_000_000_000;
        format!("4{n:015}")
    }

    fn malformed_value(&mut self, i: u64, user: u64, amount: &str, ts: i64) -> String {
        let tag = format!("malformed-{}-{i}", self.config.seed);
        match self.rng.below(5) {
            0 => format!("not json: card swipe {tag} for user {user}"),
            1 => format!(r#"{{"user_id":{user},"amount":{amount},"card":"{tag}","ts":"#),
            2 => format!(r#"{{"user_id":{user},"amount":{amount},"card":"{tag}"}}"#),
            3 => format!(r#"{{"user_id":"{user}","amount":{amount},"card":"{tag}","ts":{ts}}}"#),
            _ => {
                format!(r#"{{"user_id":{user},"amount":"{amount} EUR","card":"{tag}","ts":{ts}}}"#)
            }
        }
    }
}

impl Iterator for Generator {
    type Item = GenRecord;

    fn next(&mut self) -> Option<GenRecord> {
        let c = &self.config;
        let i = self.next;
        if i >= c.count {
            return None;
        }
        self.next += 1;
        let base = c.start_ms + (i as f64 * 1_000.0 / c.events_per_second).floor() as i64;
        let kind = if picked(i, self.special, c.count) {
            let k = u128::from(i) * u128::from(self.special) / u128::from(c.count);
            if picked(k as u64, self.malformed, self.special) {
                Kind::Malformed
            } else {
                Kind::Late
            }
        } else {
            Kind::OnTime
        };
        let user = if self.rng.next_f64() < HOT_SHARE {
            1 + self.rng.below(self.hot)
        } else {
            1 + self.rng.below(c.users)
        };
        let cents = 1 + self.rng.below(50_000);
        let amount = format!("{}", cents as f64 / 100.0);
        let jitter = self.rng.below(JITTER_MAX_MS as u64 + 1) as i64;
        let ts = match kind {
            Kind::Late => base - LATE_BEHIND_MS - self.rng.below(WINDOW_DEFAULT_MS as u64) as i64,
            _ => base - jitter,
        };
        let value = match kind {
            Kind::Malformed => self.malformed_value(i, user, &amount, ts),
            _ => format!(
                r#"{{"user_id":{user},"amount":{amount},"card":"{}","ts":{ts}}}"#,
                self.card_of(user)
            ),
        };
        Some(GenRecord {
            key: user.to_string(),
            value,
            ts,
            user_id: user,
            kind,
        })
    }
}

/// A card transaction as `verify` reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Txn {
    pub user_id: u64,
    pub ts: i64,
}

/// Reads one input value the way the job's contract defines a card transaction: a JSON object
/// with exactly `user_id` (unsigned integer), `amount` (number), `card` (string) and `ts`
/// (integer, epoch ms). Anything else is malformed, with the reason.
pub(crate) fn parse_txn(value: &[u8]) -> Result<Txn, String> {
    let v: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    for key in obj.keys() {
        if !["user_id", "amount", "card", "ts"].contains(&key.as_str()) {
            return Err(format!("unknown field {key:?}"));
        }
    }
    let field = |name: &str| {
        obj.get(name)
            .ok_or_else(|| format!("missing field {name:?}"))
    };
    let user_id = field("user_id")?
        .as_u64()
        .ok_or("user_id is not an unsigned integer")?;
    if !field("amount")?.is_number() {
        return Err("amount is not a number".into());
    }
    if !field("card")?.is_string() {
        return Err("card is not a string".into());
    }
    let ts = field("ts")?.as_i64().ok_or("ts is not an integer")?;
    Ok(Txn { user_id, ts })
}

/// One alert (the job's output JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Alert {
    pub user_id: u64,
    pub window_start: i64,
    pub window_end: i64,
    pub count: u64,
}

/// Reads one output value as an alert.
pub(crate) fn parse_alert(value: &[u8]) -> Result<Alert, String> {
    serde_json::from_slice(value).map_err(|e| format!("not an alert: {e}"))
}

/// The start of the tumbling window holding `ts` (aligned to the epoch).
pub(crate) fn window_start(ts: i64, window_ms: i64) -> i64 {
    ts - ts.rem_euclid(window_ms)
}

/// Per (user, window start): the count of on-time records (`lower`) and of all records
/// including possibly late ones (`upper`). A late record is dropped by the job, so the job's
/// count lies between the two.
#[derive(Debug, Default, Clone)]
pub(crate) struct WindowCounts {
    pub counts: HashMap<(u64, i64), (u64, u64)>,
}

impl WindowCounts {
    pub(crate) fn add(&mut self, user_id: u64, ts: i64, window_ms: i64, late: bool) {
        let c = self
            .counts
            .entry((user_id, window_start(ts, window_ms)))
            .or_insert((0, 0));
        if !late {
            c.0 += 1;
        }
        c.1 += 1;
    }
}

/// Decides lateness within one input partition, in offset order: a record is possibly late when
/// its window ended at or before the partition's watermark (its highest event time so far minus
/// the out-of-orderness minus 1). The job's watermark is the minimum over partitions, never
/// above this one — so every record the job finds late is found here (unless a partition was
/// left out of the watermark as idle while it still had records to deliver).
#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionClock {
    max_ts: Option<i64>,
}

impl PartitionClock {
    /// Whether the record at `ts` is possibly late; then takes `ts` into account.
    pub(crate) fn observe(&mut self, ts: i64, window_ms: i64, out_of_orderness_ms: i64) -> bool {
        let end = window_start(ts, window_ms).saturating_add(window_ms);
        let late = self
            .max_ts
            .is_some_and(|m| end - 1 <= m.saturating_sub(out_of_orderness_ms).saturating_sub(1));
        self.max_ts = Some(self.max_ts.map_or(ts, |m| m.max(ts)));
        late
    }

    /// The partition's watermark after every record seen (`None` before any).
    pub(crate) fn watermark(&self, out_of_orderness_ms: i64) -> Option<i64> {
        self.max_ts
            .map(|m| m.saturating_sub(out_of_orderness_ms).saturating_sub(1))
    }
}

/// An alert read from the output, with where it was.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Observed {
    pub alert: Alert,
    pub partition: i32,
    pub offset: i64,
}

/// The result of comparing the output with the expected alerts.
#[derive(Debug, Default)]
pub(crate) struct Comparison {
    /// Alerts the input determines exactly (no late record in their window).
    pub expected: u64,
    /// Windows whose alert depends on which possibly late records the job dropped.
    pub ambiguous: u64,
    /// Windows of the output that matched.
    pub matched: u64,
    /// Alerts that must be there and are not: (user, window start, window end, count min, max).
    pub missing: Vec<(Alert, u64)>,
    /// Alerts written more than once: the alert and every position it was found at.
    pub duplicated: Vec<(Alert, Vec<(i32, i64)>)>,
    /// Extra copies in all (a window written three times counts two).
    pub duplicate_copies: u64,
    /// Alerts for windows that should have none, or that are no window at all, with the reason.
    pub unexpected: Vec<(Observed, String)>,
    /// Alerts for the right window with the wrong count: the alert and the allowed range.
    pub mismatched: Vec<(Observed, u64, u64)>,
    /// Windows after the input's final watermark left out as not fired yet.
    pub open_windows_absent: u64,
}

#[cfg(test)]
impl Comparison {
    /// Whether output and expectation agree.
    pub(crate) fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.mismatched.is_empty()
    }
}

/// Compares the alerts read with the counts of the input. `open_from`: windows whose last
/// millisecond is after this watermark may be absent (the job has not fired them yet).
pub(crate) fn compare(
    counts: &WindowCounts,
    observed: Vec<Observed>,
    threshold: u64,
    window_ms: i64,
    open_from: Option<i64>,
) -> Comparison {
    let mut out = Comparison::default();
    let mut by_window: HashMap<(u64, i64), Vec<Observed>> = HashMap::new();
    for o in observed {
        by_window
            .entry((o.alert.user_id, o.alert.window_start))
            .or_default()
            .push(o);
    }
    let mut windows: Vec<_> = by_window.into_iter().collect();
    windows.sort_by_key(|(k, _)| *k);
    for (key, copies) in &windows {
        let first = &copies[0];
        let a = first.alert;
        if copies.len() > 1 {
            out.duplicate_copies += copies.len() as u64 - 1;
            out.duplicated
                .push((a, copies.iter().map(|o| (o.partition, o.offset)).collect()));
        }
        if a.window_start.rem_euclid(window_ms) != 0 || a.window_end != a.window_start + window_ms {
            out.unexpected.push((
                first.clone(),
                format!("not a tumbling window of {window_ms} ms"),
            ));
            continue;
        }
        let (lower, upper) = counts.counts.get(key).copied().unwrap_or((0, 0));
        if upper <= threshold {
            out.unexpected.push((
                first.clone(),
                format!("the input has {upper} records of this user in this window, not more than {threshold}"),
            ));
        } else if a.count < lower.max(threshold + 1) || a.count > upper {
            out.mismatched
                .push((first.clone(), lower.max(threshold + 1), upper));
        } else {
            out.matched += 1;
        }
    }
    let seen: std::collections::HashSet<(u64, i64)> = windows.iter().map(|(k, _)| *k).collect();
    let mut expected: Vec<_> = counts
        .counts
        .iter()
        .filter(|(_, (_, upper))| *upper > threshold)
        .collect();
    expected.sort_by_key(|(k, _)| **k);
    for (&(user_id, start), &(lower, upper)) in expected {
        if lower == upper {
            out.expected += 1;
        } else {
            out.ambiguous += 1;
        }
        if lower <= threshold || seen.contains(&(user_id, start)) {
            continue;
        }
        let end = start + window_ms;
        if open_from.is_some_and(|wm| end - 1 > wm) {
            out.open_windows_absent += 1;
            continue;
        }
        out.missing.push((
            Alert {
                user_id,
                window_start: start,
                window_end: end,
                count: lower,
            },
            upper,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> GenConfig {
        GenConfig {
            count: 5_000,
            users: 100,
            seed,
            start_ms: 1_700_000_000_000,
            events_per_second: GenConfig::default_events_per_second(5_000, 100),
            late_fraction: 0.0,
            malformed_fraction: 0.0,
        }
    }

    #[test]
    fn same_seed_same_records_other_seed_other_records() {
        let a: Vec<_> = Generator::new(config(7)).collect();
        let b: Vec<_> = Generator::new(config(7)).collect();
        let c: Vec<_> = Generator::new(config(8)).collect();
        assert_eq!(a.len(), 5_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn default_records_are_valid_on_time_and_some_users_cross_the_threshold() {
        let cfg = config(1);
        let mut counts = WindowCounts::default();
        let mut clock = PartitionClock::default();
        for r in Generator::new(cfg.clone()) {
            assert_eq!(r.kind, Kind::OnTime);
            let t = parse_txn(r.value.as_bytes()).unwrap();
            assert_eq!(t.user_id.to_string(), r.key);
            assert_eq!(t.ts, r.ts);
            // One partition holding everything is the worst case for lateness.
            assert!(
                !clock.observe(t.ts, 60_000, OUT_OF_ORDERNESS_DEFAULT_MS),
                "{r:?} late"
            );
            counts.add(t.user_id, t.ts, 60_000, false);
        }
        let alerts = counts.counts.values().filter(|(l, _)| *l > 10).count();
        let quiet = counts.counts.values().filter(|(l, _)| *l <= 10).count();
        assert!(alerts >= 5, "{alerts} alerts");
        assert!(
            quiet > alerts,
            "most user windows stay quiet: {quiet} vs {alerts}"
        );
        let windows: std::collections::HashSet<i64> = counts.counts.keys().map(|k| k.1).collect();
        assert!(windows.len() >= 5, "{} windows", windows.len());
    }

    #[test]
    fn fractions_give_exact_counts_and_malformed_values_are_malformed_and_unique() {
        let cfg = GenConfig {
            late_fraction: 0.05,
            malformed_fraction: 0.1,
            ..config(3)
        };
        let records: Vec<_> = Generator::new(cfg).collect();
        let malformed: Vec<_> = records
            .iter()
            .filter(|r| r.kind == Kind::Malformed)
            .collect();
        let late = records.iter().filter(|r| r.kind == Kind::Late).count();
        assert_eq!(malformed.len(), 500);
        assert_eq!(late, 250);
        let unique: std::collections::HashSet<_> = malformed.iter().map(|r| &r.value).collect();
        assert_eq!(unique.len(), 500);
        for r in &malformed {
            assert!(parse_txn(r.value.as_bytes()).is_err(), "{}", r.value);
        }
        for r in records.iter().filter(|r| r.kind != Kind::Malformed) {
            parse_txn(r.value.as_bytes()).unwrap();
        }
    }

    #[test]
    fn parse_txn_names_the_problem() {
        assert!(parse_txn(b"{").unwrap_err().contains("not JSON"));
        assert!(parse_txn(br#"{"user_id":1,"amount":2,"card":"c"}"#)
            .unwrap_err()
            .contains("missing field \"ts\""));
        assert!(
            parse_txn(br#"{"user_id":"1","amount":2,"card":"c","ts":5}"#)
                .unwrap_err()
                .contains("user_id")
        );
        assert!(
            parse_txn(br#"{"user_id":1,"amount":2,"card":"c","ts":5,"x":1}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert_eq!(
            parse_txn(br#"{"user_id":1,"amount":2.5,"card":"c","ts":5}"#).unwrap(),
            Txn { user_id: 1, ts: 5 }
        );
    }

    #[test]
    fn lateness_follows_the_watermark_rule() {
        let mut clock = PartitionClock::default();
        assert!(!clock.observe(70_000, 60_000, 5_000));
        // Watermark 64_999: the window [0, 60_000) (last ms 59_999) is closed.
        assert!(clock.observe(59_999, 60_000, 5_000));
        // Exactly the out-of-orderness behind, in the open window: on time.
        assert!(!clock.observe(65_000, 60_000, 5_000));
        assert_eq!(clock.watermark(5_000), Some(64_999));
        // Window [60_000, 120_000) closes once the watermark reaches 119_999.
        assert!(!clock.observe(125_000, 60_000, 5_000));
        assert!(clock.observe(60_000, 60_000, 5_000));
    }

    fn obs(user_id: u64, start: i64, count: u64, offset: i64) -> Observed {
        Observed {
            alert: Alert {
                user_id,
                window_start: start,
                window_end: start + 60_000,
                count,
            },
            partition: 0,
            offset,
        }
    }

    #[test]
    fn compare_finds_missing_duplicated_unexpected_and_mismatched() {
        let mut counts = WindowCounts::default();
        for _ in 0..12 {
            counts.add(1, 1_000, 60_000, false);
            counts.add(2, 61_000, 60_000, false);
            counts.add(3, 1_000, 60_000, false);
        }
        for _ in 0..5 {
            counts.add(4, 1_000, 60_000, false);
        }
        let c = compare(
            &counts,
            vec![
                obs(1, 0, 12, 0),
                obs(1, 0, 12, 1),
                obs(3, 0, 11, 2),
                obs(4, 0, 5, 3),
                obs(5, 0, 11, 4),
            ],
            10,
            60_000,
            None,
        );
        assert_eq!(c.expected, 3);
        assert_eq!(c.matched, 1);
        assert_eq!(c.duplicated.len(), 1);
        assert_eq!(c.duplicate_copies, 1);
        assert_eq!(c.duplicated[0].1, vec![(0, 0), (0, 1)]);
        assert_eq!(c.missing.len(), 1);
        assert_eq!(c.missing[0].0.user_id, 2);
        assert_eq!(c.mismatched.len(), 1);
        assert_eq!(c.mismatched[0].0.alert.user_id, 3);
        let unexpected: Vec<u64> = c.unexpected.iter().map(|(o, _)| o.alert.user_id).collect();
        assert_eq!(unexpected, vec![4, 5]);
        assert!(!c.ok());
    }

    #[test]
    fn late_records_make_a_window_ambiguous_not_wrong() {
        let mut counts = WindowCounts::default();
        for _ in 0..10 {
            counts.add(1, 1_000, 60_000, false);
        }
        counts.add(1, 2_000, 60_000, true);
        // Absent (late record dropped) and present with 11 (not dropped) are both right.
        let absent = compare(&counts, vec![], 10, 60_000, None);
        assert!(absent.ok());
        assert_eq!(absent.ambiguous, 1);
        assert!(compare(&counts, vec![obs(1, 0, 11, 0)], 10, 60_000, None).ok());
        assert!(!compare(&counts, vec![obs(1, 0, 12, 0)], 10, 60_000, None).ok());
    }

    #[test]
    fn windows_after_the_watermark_may_be_absent_when_allowed() {
        let mut counts = WindowCounts::default();
        for _ in 0..11 {
            counts.add(1, 61_000, 60_000, false);
        }
        assert!(!compare(&counts, vec![], 10, 60_000, None).ok());
        let c = compare(&counts, vec![], 10, 60_000, Some(100_000));
        assert!(c.ok());
        assert_eq!(c.open_windows_absent, 1);
    }
}
