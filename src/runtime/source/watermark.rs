//! Event-time watermarks of one source subtask: bounded out-of-orderness per split, combined by
//! minimum, with idle splits left out.
//!
//! A watermark `w` says "no record with an event time at or before `w` is still to come"; event
//! time windows fire when it passes their end. Like Flink's `WatermarkStrategy
//! .forBoundedOutOfOrderness(..).withIdleness(..)` applied per Kafka partition
//! (<https://nightlies.apache.org/flink/flink-docs-stable/docs/dev/datastream/event-time/generating_watermarks/>,
//! "Watermark Strategies and the Kafka Connector"):
//!
//! - each split (partition) tracks the highest event time seen; its watermark is
//!   `max − out_of_orderness_ms − 1` (Flink's `BoundedOutOfOrdernessWatermarks`: a record
//!   exactly `out_of_orderness_ms` late is still on time);
//! - the subtask's watermark is the minimum over its splits: partitions are read at different
//!   speeds, so a watermark taken over the merged stream would declare a slow partition's
//!   records late;
//! - a split without records for `idle_timeout_ms` is *idle* and left out of the minimum, so one
//!   quiet partition does not stop event time for the whole job; it counts again as soon as it
//!   has a record. When every split is idle (or the subtask has none) the subtask itself is
//!   idle ([`WatermarkStatus::Idle`]) and downstream operators leave this input out of their own
//!   minimum;
//! - the watermark never goes back: a split that returns from idleness with older event times
//!   cannot lower it (its records may then be late, which the window operator counts).
//!
//! Time is passed in as plain numbers (`now_ms` to [`WatermarkGenerator::on_idle_check`]), so
//! tests run without a clock. Idleness follows Flink's `IdlenessTimer`: a split is idle once
//! two idle checks `idle_timeout_ms` apart saw no record from it in between.

/// The watermark of the end of a bounded input: every event time is before it, so every window
/// fires.
pub const MAX_WATERMARK: i64 = i64::MAX;

/// Watermark settings of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkConfig {
    /// How far behind the highest event time seen a record may still arrive without being late.
    pub out_of_orderness_ms: i64,
    /// After how long without records a split is idle (`None`: never).
    pub idle_timeout_ms: Option<i64>,
}

impl Default for WatermarkConfig {
    /// The fraud job's defaults: 5 s out of orderness, 30 s idle timeout.
    fn default() -> Self {
        Self {
            out_of_orderness_ms: 5_000,
            idle_timeout_ms: Some(30_000),
        }
    }
}

/// What a subtask's watermark is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkStatus {
    /// No watermark yet: some active split has had no record so far.
    Pending,
    /// Every record still to come (from splits that are not idle) has an event time after this.
    Watermark(i64),
    /// Every split is idle (or there are none): leave this input out of the minimum downstream.
    Idle,
}

#[derive(Debug, Clone, Copy, Default)]
struct SplitState {
    /// Highest event time seen.
    max_event_ms: Option<i64>,
    /// A record arrived since the last idle check.
    active_since_check: bool,
    /// When the split was last seen active by an idle check (the idle timer's start).
    last_active_ms: Option<i64>,
    idle: bool,
}

/// The watermark generator of one source subtask, over its splits `0..split_count` (the split
/// indices of [`SourceRecord::split`](super::kafka::SourceRecord::split)).
#[derive(Debug, Clone)]
pub struct WatermarkGenerator {
    config: WatermarkConfig,
    splits: Vec<SplitState>,
    /// The highest watermark reported so far (the floor of every later one).
    emitted: Option<i64>,
    ended: bool,
}

impl WatermarkGenerator {
    /// A generator for `split_count` splits, none seen yet.
    pub fn new(config: WatermarkConfig, split_count: usize) -> Self {
        Self {
            config,
            splits: vec![SplitState::default(); split_count],
            emitted: None,
            ended: false,
        }
    }

    /// How many splits it tracks.
    pub fn split_count(&self) -> usize {
        self.splits.len()
    }

    /// Tracks splits up to `split_count` (new ones, e.g. discovered partitions, start with no
    /// record seen and hold the watermark back until they have records or become idle).
    pub fn ensure_splits(&mut self, split_count: usize) {
        if split_count > self.splits.len() {
            self.splits.resize(split_count, SplitState::default());
        }
    }

    /// A record of `split` with event time `event_ms`. A split index beyond the tracked ones
    /// adds splits up to it.
    pub fn on_record(&mut self, split: usize, event_ms: i64) {
        self.ensure_splits(split + 1);
        let s = &mut self.splits[split];
        s.max_event_ms = Some(s.max_event_ms.map_or(event_ms, |m| m.max(event_ms)));
        s.active_since_check = true;
        s.idle = false;
    }

    /// Updates idleness at time `now_ms` (any monotonic clock in ms): a split with no record
    /// since the previous check and for at least `idle_timeout_ms` becomes idle. Call it
    /// periodically (e.g. on every poll, or on a timer when there is no data).
    pub fn on_idle_check(&mut self, now_ms: i64) {
        let Some(timeout_ms) = self.config.idle_timeout_ms else {
            return;
        };
        for s in &mut self.splits {
            if s.active_since_check || s.last_active_ms.is_none() {
                s.active_since_check = false;
                s.last_active_ms = Some(now_ms);
            } else if let Some(since) = s.last_active_ms {
                if now_ms.saturating_sub(since) >= timeout_ms {
                    s.idle = true;
                }
            }
        }
    }

    /// The input is exhausted (a bounded source reached its end): the watermark becomes
    /// [`MAX_WATERMARK`] and stays there.
    pub fn end_of_input(&mut self) {
        self.ended = true;
        self.emitted = Some(MAX_WATERMARK);
    }

    /// Whether split `split` is idle now.
    pub fn is_idle(&self, split: usize) -> bool {
        self.splits.get(split).is_some_and(|s| s.idle)
    }

    /// The subtask's watermark now. Never lower than one it returned before.
    pub fn current(&mut self) -> WatermarkStatus {
        if self.ended {
            return WatermarkStatus::Watermark(MAX_WATERMARK);
        }
        let mut min: Option<i64> = None;
        let mut any_active = false;
        let mut pending = false;
        for s in self.splits.iter().filter(|s| !s.idle) {
            any_active = true;
            match s.max_event_ms {
                Some(max) => {
                    let w = max
                        .saturating_sub(self.config.out_of_orderness_ms)
                        .saturating_sub(1);
                    min = Some(min.map_or(w, |m| m.min(w)));
                }
                None => pending = true,
            }
        }
        if !any_active {
            return WatermarkStatus::Idle;
        }
        if !pending {
            if let Some(w) = min {
                self.emitted = Some(self.emitted.map_or(w, |e| e.max(w)));
            }
        }
        match self.emitted {
            Some(w) => WatermarkStatus::Watermark(w),
            None => WatermarkStatus::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn generator(splits: usize, idle_timeout_ms: Option<i64>) -> WatermarkGenerator {
        WatermarkGenerator::new(
            WatermarkConfig {
                out_of_orderness_ms: 100,
                idle_timeout_ms,
            },
            splits,
        )
    }

    #[test]
    fn bounded_out_of_orderness_is_max_minus_bound_minus_one() {
        let mut g = generator(1, None);
        assert_eq!(g.current(), WatermarkStatus::Pending);
        g.on_record(0, 1_000);
        assert_eq!(g.current(), WatermarkStatus::Watermark(899));
        // An older record does not lower the maximum.
        g.on_record(0, 950);
        assert_eq!(g.current(), WatermarkStatus::Watermark(899));
        g.on_record(0, 1_200);
        assert_eq!(g.current(), WatermarkStatus::Watermark(1_099));
    }

    #[test]
    fn minimum_over_splits_and_pending_until_every_split_has_a_record() {
        let mut g = generator(2, None);
        g.on_record(0, 5_000);
        // Split 1 has no record yet: no watermark may be given.
        assert_eq!(g.current(), WatermarkStatus::Pending);
        g.on_record(1, 2_000);
        assert_eq!(g.current(), WatermarkStatus::Watermark(1_899));
        g.on_record(1, 9_000);
        assert_eq!(g.current(), WatermarkStatus::Watermark(4_899));
    }

    #[test]
    fn idle_split_is_left_out_until_it_has_records_again() {
        let mut g = generator(2, Some(1_000));
        g.on_idle_check(0);
        g.on_record(0, 10_000);
        g.on_record(1, 3_000);
        assert_eq!(g.current(), WatermarkStatus::Watermark(2_899));
        // Only split 0 keeps getting records.
        g.on_idle_check(500);
        g.on_record(0, 11_000);
        g.on_idle_check(999);
        assert!(!g.is_idle(1), "not idle before the timeout");
        assert_eq!(g.current(), WatermarkStatus::Watermark(2_899));
        g.on_record(0, 12_000);
        g.on_idle_check(1_500);
        assert!(g.is_idle(1));
        assert!(!g.is_idle(0));
        assert_eq!(g.current(), WatermarkStatus::Watermark(11_899));
        // Split 1 is back with old event times: it counts again, but the watermark stays.
        g.on_record(1, 4_000);
        assert!(!g.is_idle(1));
        assert_eq!(g.current(), WatermarkStatus::Watermark(11_899));
        g.on_record(1, 20_000);
        assert_eq!(g.current(), WatermarkStatus::Watermark(11_899));
        g.on_record(0, 30_000);
        assert_eq!(g.current(), WatermarkStatus::Watermark(19_899));
    }

    #[test]
    fn all_splits_idle_makes_the_subtask_idle() {
        let mut g = generator(2, Some(100));
        g.on_record(0, 1_000);
        g.on_record(1, 1_000);
        g.on_idle_check(0);
        assert_eq!(g.current(), WatermarkStatus::Watermark(899));
        g.on_idle_check(50);
        g.on_idle_check(100);
        assert_eq!(g.current(), WatermarkStatus::Idle);
        g.on_record(1, 2_000);
        assert_eq!(g.current(), WatermarkStatus::Watermark(1_899));
        // A subtask with no split at all is idle from the start.
        assert_eq!(generator(0, Some(100)).current(), WatermarkStatus::Idle);
        assert_eq!(generator(0, None).current(), WatermarkStatus::Idle);
    }

    #[test]
    fn split_without_records_goes_idle_and_stops_holding_back() {
        let mut g = generator(2, Some(1_000));
        g.on_record(0, 5_000);
        g.on_idle_check(0);
        assert_eq!(g.current(), WatermarkStatus::Pending);
        g.on_record(0, 6_000);
        g.on_idle_check(1_000);
        assert_eq!(g.current(), WatermarkStatus::Watermark(5_899));
        // A discovered split joins, with no record: it holds back until idle or fed.
        g.ensure_splits(3);
        assert_eq!(g.current(), WatermarkStatus::Watermark(5_899));
        g.on_record(0, 8_000);
        assert_eq!(
            g.current(),
            WatermarkStatus::Watermark(5_899),
            "the new split holds the watermark"
        );
        g.on_record(2, 9_000);
        assert_eq!(g.current(), WatermarkStatus::Watermark(7_899));
    }

    #[test]
    fn end_of_input_is_the_max_watermark() {
        let mut g = generator(1, None);
        g.end_of_input();
        assert_eq!(g.current(), WatermarkStatus::Watermark(MAX_WATERMARK));
        g.on_record(0, 5);
        assert_eq!(g.current(), WatermarkStatus::Watermark(MAX_WATERMARK));
    }

    #[test]
    fn extreme_event_times_do_not_overflow() {
        let mut g = generator(1, None);
        g.on_record(0, i64::MIN);
        assert_eq!(g.current(), WatermarkStatus::Watermark(i64::MIN));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Record { split: usize, event_ms: i64 },
        IdleCheck { advance_ms: i64 },
        AddSplit,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0usize..4, -1_000i64..100_000).prop_map(|(split, event_ms)| Op::Record { split, event_ms }),
            3 => (0i64..3_000).prop_map(|advance_ms| Op::IdleCheck { advance_ms }),
            1 => Just(Op::AddSplit),
        ]
    }

    proptest! {
        #[test]
        fn never_decreases(
            splits in 0usize..4,
            ooo in 0i64..5_000,
            idle in proptest::option::of(1i64..5_000),
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut g = WatermarkGenerator::new(
                WatermarkConfig { out_of_orderness_ms: ooo, idle_timeout_ms: idle },
                splits,
            );
            let mut now = 0i64;
            let mut highest: Option<i64> = None;
            for op in ops {
                match op {
                    Op::Record { split, event_ms } => g.on_record(split, event_ms),
                    Op::IdleCheck { advance_ms } => {
                        now += advance_ms;
                        g.on_idle_check(now);
                    }
                    Op::AddSplit => { let n = g.split_count() + 1; g.ensure_splits(n); }
                }
                match g.current() {
                    WatermarkStatus::Watermark(w) => {
                        prop_assert!(highest.is_none_or(|h| w >= h), "{w} after {highest:?}");
                        highest = Some(w);
                    }
                    WatermarkStatus::Pending => {
                        prop_assert!(highest.is_none(), "pending after a watermark {highest:?}");
                    }
                    WatermarkStatus::Idle => {}
                }
            }
        }
    }
}
