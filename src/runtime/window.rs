//! Event-time windows: tumbling and sliding windows aligned to the epoch (like Flink's
//! `TumblingEventTimeWindows` / `SlidingEventTimeWindows` with offset 0) and session windows
//! (Flink's `EventTimeSessionWindows.withGap`), aggregated incrementally in keyed state, fired by
//! event-time timers when the watermark passes the window's end, with allowed lateness and a
//! late-data output.
//!
//! See <https://nightlies.apache.org/flink/flink-docs-stable/docs/dev/datastream/operators/windows/>.
//!
//! # Firing and lateness (Flink's `EventTimeTrigger` with allowed lateness)
//!
//! A window `[start, end)` fires when the watermark reaches `end - 1` (its last millisecond). Its
//! state is kept until the watermark reaches `end - 1 + allowed lateness` (the *cleanup time*):
//! until then a late record still updates it and the window fires again at once with the
//! updated result. A record whose windows are all past their cleanup time is *late*: it is
//! counted (`late_records_total`) and, if the job has a late-data output, written there as a
//! [`Target::Late`] record — never silently dropped (without an output it is logged at debug,
//! rate-limited). As in Flink, a record is late only if it is itself past the lateness
//! (`ts + lateness <= watermark`): a record between sliding windows shorter than their slide
//! belongs to no window and is not late.
//!
//! The watermark is not part of a snapshot (as in Flink): a restored operator starts at the
//! lowest watermark until its inputs send one, so a window that had fired within its lateness
//! registers its fire timer again when a record updates it, and fires at that next watermark.
//!
//! # Hot path
//!
//! The tumbling/sliding operator's `process` is the fraud job's inner loop: one state lookup per
//! window of the record, and with no lateness the fire timer is registered only when the
//! window's state is created (a window has state exactly until its timer fires), not once per
//! record.
//!
//! # State
//!
//! Tumbling and sliding windows keep one accumulator per `(key, window start)` in a
//! [`StateTable`] and two timers per window in a [`TimerQueue`] (namespace: the window start):
//! at `end - 1` (fire) and at the cleanup time (free the state; the same timer when the lateness
//! is 0). Session windows keep, per key, the key's sessions as a `Vec<(start, end, acc)>`
//! ([`SessionState`]) sorted by start, and the same two timers per session with its start as the
//! namespace. Both are keyed state and timers per key group, so snapshots, restore and
//! rescaling work alike for every window kind.
//!
//! # Session windows
//!
//! Each record opens the window `[ts, ts + gap)`; windows of a key that intersect (Flink's
//! `TimeWindow.intersects`: touching counts) are merged, their accumulators combined with
//! [`AggregateFunction::merge`], and the timers of the windows merged away deleted. A merged
//! session ends at its last record's time plus the gap and fires when the watermark passes that.

use std::sync::Arc;

use bytes::Bytes;

use super::connector::{OutputRecord, Target};
use super::metrics::Counter;
use super::operator::{KeyedOperatorFactory, OpInstance};
use super::state::{
    type_fingerprint, SnapshotFile, SnapshotWriter, StateKey, StateTable, StateValue, TimerQueue,
};
use super::RuntimeError;

/// How records are assigned to windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Windows {
    /// Consecutive windows of `size_ms`, aligned to the epoch.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms`, aligned to the epoch.
    Sliding {
        /// Window length.
        size_ms: i64,
        /// Distance between window starts.
        slide_ms: i64,
    },
    /// Session windows: per key, records less than `gap_ms` apart (a record opens
    /// `[ts, ts + gap_ms)`; intersecting or touching windows merge).
    Session {
        /// The gap of inactivity that ends a session.
        gap_ms: i64,
    },
}

impl Windows {
    /// Tumbling windows of `size_ms`.
    ///
    /// # Panics
    ///
    /// If `size_ms` is not positive.
    pub fn tumbling(size_ms: i64) -> Self {
        let w = Windows::Tumbling { size_ms };
        w.check();
        w
    }

    /// Sliding windows of `size_ms` starting every `slide_ms`.
    ///
    /// # Panics
    ///
    /// If `size_ms` or `slide_ms` is not positive.
    pub fn sliding(size_ms: i64, slide_ms: i64) -> Self {
        let w = Windows::Sliding { size_ms, slide_ms };
        w.check();
        w
    }

    /// Session windows closing after `gap_ms` without a record of the key.
    ///
    /// # Panics
    ///
    /// If `gap_ms` is not positive.
    pub fn session(gap_ms: i64) -> Self {
        let w = Windows::Session { gap_ms };
        w.check();
        w
    }

    /// Panics on a length that is not positive (the variants' fields are public, so operators
    /// check again when they are created).
    pub(crate) fn check(self) {
        let ok = match self {
            Windows::Tumbling { size_ms } => size_ms > 0,
            Windows::Sliding { size_ms, slide_ms } => size_ms > 0 && slide_ms > 0,
            Windows::Session { gap_ms } => gap_ms > 0,
        };
        assert!(ok, "window lengths must be positive: {self:?}");
    }

    /// The window length of tumbling and sliding windows; the gap of session windows.
    fn size_ms(self) -> i64 {
        match self {
            Windows::Tumbling { size_ms } | Windows::Sliding { size_ms, .. } => size_ms,
            Windows::Session { gap_ms } => gap_ms,
        }
    }

    /// Calls `f` with the start of every window containing `ts`, latest first (a session window
    /// is the record's own `[ts, ts + gap)` before merging).
    pub(crate) fn for_each_start(self, ts: i64, mut f: impl FnMut(i64)) {
        match self {
            Windows::Tumbling { size_ms } => f(ts - ts.rem_euclid(size_ms)),
            Windows::Sliding { size_ms, slide_ms } => {
                let mut start = ts - ts.rem_euclid(slide_ms);
                while start > ts - size_ms {
                    f(start);
                    start -= slide_ms;
                }
            }
            Windows::Session { .. } => f(ts),
        }
    }
}

/// A window: `[start, end)` in event time (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// First millisecond in it.
    pub start: i64,
    /// First millisecond after it.
    pub end: i64,
}

/// The result of one window of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult<K, R> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
    /// The aggregate.
    pub result: R,
}

/// An incremental aggregate (like Flink's `AggregateFunction`).
pub trait AggregateFunction<T>: Send + Sync + 'static {
    /// The accumulator kept in keyed state.
    type Acc: StateValue + Clone + Send + 'static;
    /// The result.
    type Out: Send + 'static;
    /// A fresh accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds one record.
    fn add(&self, acc: &mut Self::Acc, value: &T);
    /// Combines `other` into `acc` when two session windows merge. Contract: the result of the
    /// merged accumulator is the result of one accumulator to which the records of both were
    /// added — in any order, so merging must be associative and commutative as far as
    /// [`result`](Self::result) can tell, and merging a fresh accumulator changes nothing.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    /// The result of a window.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
}

/// Counts records.
#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl<T> AggregateFunction<T> for Count {
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _value: &T) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Encodes a late record for the late-data output as (key, value).
pub type LateEncode<T> = Arc<dyn Fn(&T) -> (Option<Bytes>, Bytes) + Send + Sync>;

/// The sessions of one key: `(start, end, accumulator)`, sorted by start, pairwise neither
/// intersecting nor touching.
pub type SessionState<Acc> = Vec<(i64, i64, Acc)>;

/// What happens to records later than the allowed lateness: counted, and written to the
/// late-data output if there is one, else logged (rate-limited).
struct LateRecords<T> {
    counter: Arc<Counter>,
    encode: Option<LateEncode<T>>,
    /// Late records of this operator (for the rate limit of the log).
    seen: u64,
}

impl<T> LateRecords<T> {
    fn new(ctx: &KeyedOperatorFactory, encode: Option<LateEncode<T>>) -> Self {
        Self {
            counter: ctx.metrics.counter(
                "late_records_total",
                "Records later than the allowed lateness",
            ),
            encode,
            seen: 0,
        }
    }

    #[cold]
    fn late(&mut self, value: &T, ts: i64, watermark: i64, side: &mut Vec<OutputRecord>) {
        self.counter.add(1);
        self.seen += 1;
        match &self.encode {
            Some(encode) => {
                let (key, value) = encode(value);
                side.push(OutputRecord { target: Target::Late, key, value: Some(value), headers: Vec::new() });
            }
            // The 1st, 2nd, 4th, 8th, ... late record: a bounded log however late the input is.
            None if self.seen.is_power_of_two() => tracing::debug!(
                ts,
                watermark,
                late_records = self.seen,
                "record later than the allowed lateness: counted in late_records_total (the job has no late-data output)"
            ),
            None => {}
        }
    }
}

/// The window operator for `windows`: one instance for one keyed subtask.
///
/// # Panics
///
/// If a window length is not positive.
pub(crate) fn window_operator<K, T, A>(
    agg: Arc<A>,
    windows: Windows,
    lateness_ms: i64,
    late: Option<LateEncode<T>>,
    ctx: KeyedOperatorFactory,
) -> Box<dyn OpInstance<K, T, WindowResult<K, A::Out>>>
where
    K: StateKey + Ord + Send + 'static,
    T: Send + 'static,
    A: AggregateFunction<T>,
    (K, i64): StateKey,
{
    match windows {
        Windows::Session { gap_ms } => {
            Box::new(SessionOperator::new(agg, gap_ms, lateness_ms, late, ctx))
        }
        _ => Box::new(WindowOperator::new(agg, windows, lateness_ms, late, ctx)),
    }
}

/// The operator of tumbling and sliding windows.
pub(crate) struct WindowOperator<K: StateKey, T, A: AggregateFunction<T>>
where
    (K, i64): StateKey,
{
    agg: Arc<A>,
    windows: Windows,
    lateness_ms: i64,
    state: StateTable<(K, i64), A::Acc>,
    /// Timers at `window end - 1` (fire) and `window end - 1 + lateness` (clean up), with the
    /// window start as namespace.
    timers: TimerQueue<K, i64>,
    watermark: i64,
    late: LateRecords<T>,
    _t: std::marker::PhantomData<fn(&T)>,
}

impl<K: StateKey + Ord + Send + 'static, T, A: AggregateFunction<T>> WindowOperator<K, T, A>
where
    (K, i64): StateKey,
{
    /// # Panics
    ///
    /// If `windows` are session windows (see [`SessionOperator`]) or have a length that is not
    /// positive.
    pub(crate) fn new(
        agg: Arc<A>,
        windows: Windows,
        lateness_ms: i64,
        late: Option<LateEncode<T>>,
        ctx: KeyedOperatorFactory,
    ) -> Self {
        windows.check();
        assert!(
            !matches!(windows, Windows::Session { .. }),
            "session windows have their own operator"
        );
        Self {
            agg,
            windows,
            lateness_ms: lateness_ms.max(0),
            state: StateTable::new("windows", ctx.range, ctx.key_groups),
            timers: TimerQueue::new("window-timers", ctx.range),
            watermark: i64::MIN,
            late: LateRecords::new(&ctx, late),
            _t: std::marker::PhantomData,
        }
    }
}

impl<K: StateKey + Ord + Send + 'static, T: Send, A: AggregateFunction<T>>
    OpInstance<K, T, WindowResult<K, A::Out>> for WindowOperator<K, T, A>
where
    (K, i64): StateKey,
{
    fn process(
        &mut self,
        kg: u16,
        key: K,
        value: T,
        ts: i64,
        out: &mut Vec<WindowResult<K, A::Out>>,
        side: &mut Vec<OutputRecord>,
    ) {
        let size = self.windows.size_ms();
        let (wm, lateness, agg) = (self.watermark, self.lateness_ms, &self.agg);
        let (state, timers) = (&mut self.state, &mut self.timers);
        let mut placed = false;
        self.windows.for_each_start(ts, |start| {
            let max_ts = start.saturating_add(size - 1);
            let cleanup = max_ts.saturating_add(lateness);
            if cleanup <= wm {
                return; // this window is gone
            }
            placed = true;
            let mut fresh = false;
            let acc = state.get_or_insert_with(kg, (key.clone(), start), || {
                fresh = true;
                agg.create()
            });
            agg.add(acc, &value);
            if max_ts <= wm {
                // Late but within the allowed lateness: the window fires again at once.
                out.push(WindowResult {
                    key: key.clone(),
                    window: Window {
                        start,
                        end: start + size,
                    },
                    result: agg.result(acc),
                });
            } else if fresh || lateness > 0 {
                // With no lateness a window has state exactly until its timer fires, so the
                // timer of a window with state is registered: one registration per window, not
                // per record. With lateness, the fire timer may have fired before a restore
                // that reset the watermark: register it again (deduplicated), as Flink does.
                timers.register(kg, max_ts, key.clone(), start);
            }
            if fresh && lateness > 0 {
                timers.register(kg, cleanup, key.clone(), start);
            }
        });
        // Late as Flink has it: in no window that is still kept, and itself past the lateness
        // (a record that falls between sliding windows shorter than their slide is in none).
        if !placed && ts.saturating_add(lateness) <= wm {
            self.late.late(&value, ts, wm, side);
        }
    }

    fn advance_watermark(&mut self, watermark: i64, out: &mut Vec<WindowResult<K, A::Out>>) {
        self.watermark = watermark;
        let size = self.windows.size_ms();
        while let Some((kg, ts, key, start)) = self.timers.pop_due(watermark) {
            let max_ts = start.saturating_add(size - 1);
            let k = (key, start);
            if ts == max_ts {
                let acc = if self.lateness_ms == 0 {
                    self.state.remove(kg, &k)
                } else {
                    self.state.get(kg, &k).map(|a| a.to_owned())
                };
                if let Some(acc) = acc {
                    out.push(WindowResult {
                        key: k.0,
                        window: Window {
                            start,
                            end: start + size,
                        },
                        result: self.agg.result(&acc),
                    });
                }
            } else {
                self.state.remove(kg, &k);
            }
        }
    }

    fn snapshot(&self, out: &mut SnapshotWriter) -> Result<(), RuntimeError> {
        self.state.snapshot(out)?;
        self.timers.snapshot(out)
    }

    fn restore(&mut self, file: &SnapshotFile) -> Result<(), RuntimeError> {
        self.state.restore(file)?;
        self.timers.restore(file)?;
        Ok(())
    }

    fn state_entries(&self) -> usize {
        self.state.len()
    }

    fn state_fingerprint(&self) -> u64 {
        type_fingerprint::<((K, i64), A::Acc, Windows)>()
    }
}

/// The operator of session windows (see the module docs).
pub(crate) struct SessionOperator<K: StateKey, T, A: AggregateFunction<T>> {
    agg: Arc<A>,
    gap_ms: i64,
    lateness_ms: i64,
    state: StateTable<K, SessionState<A::Acc>>,
    /// Timers at `session end - 1` (fire) and `session end - 1 + lateness` (clean up), with
    /// the session's start as namespace.
    timers: TimerQueue<K, i64>,
    watermark: i64,
    late: LateRecords<T>,
    _t: std::marker::PhantomData<fn(&T)>,
}

impl<K: StateKey + Ord + Send + 'static, T, A: AggregateFunction<T>> SessionOperator<K, T, A> {
    /// # Panics
    ///
    /// If `gap_ms` is not positive.
    pub(crate) fn new(
        agg: Arc<A>,
        gap_ms: i64,
        lateness_ms: i64,
        late: Option<LateEncode<T>>,
        ctx: KeyedOperatorFactory,
    ) -> Self {
        Windows::Session { gap_ms }.check();
        Self {
            agg,
            gap_ms,
            lateness_ms: lateness_ms.max(0),
            state: StateTable::new("sessions", ctx.range, ctx.key_groups),
            timers: TimerQueue::new("session-timers", ctx.range),
            watermark: i64::MIN,
            late: LateRecords::new(&ctx, late),
            _t: std::marker::PhantomData,
        }
    }
}

/// The sessions of `sessions` that intersect or touch `[start, end)`: a range, as they are
/// sorted and disjoint.
fn intersecting<A>(sessions: &[(i64, i64, A)], start: i64, end: i64) -> std::ops::Range<usize> {
    let lo = sessions.partition_point(|s| s.1 < start);
    let hi = sessions.partition_point(|s| s.0 <= end);
    lo..hi.max(lo)
}

impl<K: StateKey + Ord + Send + 'static, T: Send, A: AggregateFunction<T>>
    OpInstance<K, T, WindowResult<K, A::Out>> for SessionOperator<K, T, A>
{
    fn process(
        &mut self,
        kg: u16,
        key: K,
        value: T,
        ts: i64,
        out: &mut Vec<WindowResult<K, A::Out>>,
        side: &mut Vec<OutputRecord>,
    ) {
        let (wm, lateness, agg) = (self.watermark, self.lateness_ms, &self.agg);
        let end = ts.saturating_add(self.gap_ms);
        let sessions = if (end - 1).saturating_add(lateness) <= wm {
            // The record's own window is past its cleanup time; it still counts if it joins a
            // session that is not (Flink merges first, then checks the merged window).
            match self.state.get_mut(kg, &key) {
                Some(s) if !intersecting(s, ts, end).is_empty() => s,
                _ => return self.late.late(&value, ts, wm, side),
            }
        } else {
            self.state.get_or_insert_with(kg, key.clone(), Vec::new)
        };
        let range = intersecting(sessions, ts, end);
        let (i, changed) = if range.is_empty() {
            let mut acc = agg.create();
            agg.add(&mut acc, &value);
            sessions.insert(range.start, (ts, end, acc));
            (range.start, true)
        } else if range.len() == 1
            && sessions[range.start].0 <= ts
            && end <= sessions[range.start].1
        {
            agg.add(&mut sessions[range.start].2, &value);
            (range.start, false)
        } else {
            // Merge the record and every session it touches into the first of them, and delete
            // the timers of the windows merged away (the result may keep the start of the first
            // one, with a later end: its timers are registered below).
            let i = range.start;
            let delete = |timers: &mut TimerQueue<K, i64>, (s, e): (i64, i64)| {
                timers.delete(kg, e - 1, key.clone(), s);
                if lateness > 0 {
                    timers.delete(kg, (e - 1).saturating_add(lateness), key.clone(), s);
                }
            };
            delete(&mut self.timers, (sessions[i].0, sessions[i].1));
            for j in (i + 1..range.end).rev() {
                let (s, e, acc) = sessions.remove(j);
                delete(&mut self.timers, (s, e));
                agg.merge(&mut sessions[i].2, acc);
                sessions[i].1 = sessions[i].1.max(e);
            }
            let first = &mut sessions[i];
            agg.add(&mut first.2, &value);
            first.0 = first.0.min(ts);
            first.1 = first.1.max(end);
            (i, true)
        };
        let (start, end) = (sessions[i].0, sessions[i].1);
        let max_ts = end - 1;
        if max_ts <= wm {
            // Late but within the allowed lateness: the session fires again at once.
            out.push(WindowResult {
                key: key.clone(),
                window: Window { start, end },
                result: agg.result(&sessions[i].2),
            });
        } else if changed || lateness > 0 {
            // See `WindowOperator::process` for why an unchanged window registers no timer
            // when there is no lateness.
            self.timers.register(kg, max_ts, key.clone(), start);
        }
        if changed && lateness > 0 {
            self.timers
                .register(kg, max_ts.saturating_add(lateness), key, start);
        }
    }

    fn advance_watermark(&mut self, watermark: i64, out: &mut Vec<WindowResult<K, A::Out>>) {
        self.watermark = watermark;
        while let Some((kg, ts, key, start)) = self.timers.pop_due(watermark) {
            let Some(sessions) = self.state.get_mut(kg, &key) else {
                continue;
            };
            let Ok(i) = sessions.binary_search_by_key(&start, |s| s.0) else {
                continue;
            };
            let end = sessions[i].1;
            if ts == end - 1 {
                out.push(WindowResult {
                    key: key.clone(),
                    window: Window { start, end },
                    result: self.agg.result(&sessions[i].2),
                });
                if self.lateness_ms == 0 {
                    sessions.remove(i);
                }
            } else if ts == (end - 1).saturating_add(self.lateness_ms) {
                sessions.remove(i);
            }
            if sessions.is_empty() {
                self.state.remove(kg, &key);
            }
        }
    }

    fn snapshot(&self, out: &mut SnapshotWriter) -> Result<(), RuntimeError> {
        self.state.snapshot(out)?;
        self.timers.snapshot(out)
    }

    fn restore(&mut self, file: &SnapshotFile) -> Result<(), RuntimeError> {
        self.state.restore(file)?;
        self.timers.restore(file)?;
        Ok(())
    }

    fn state_entries(&self) -> usize {
        self.state.len()
    }

    fn state_fingerprint(&self) -> u64 {
        type_fingerprint::<(K, SessionState<A::Acc>, Windows)>()
    }
}

#[cfg(test)]
mod tests;
