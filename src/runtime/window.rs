//! Event-time windows: tumbling and sliding windows aligned to the epoch (like Flink's
//! `TumblingEventTimeWindows` / `SlidingEventTimeWindows` with offset 0), aggregated
//! incrementally per (key, window) in keyed state, fired by event-time timers when the watermark
//! passes the window's end, with allowed lateness and a counted late-data output.
//!
//! See <https://nightlies.apache.org/flink/flink-docs-stable/docs/dev/datastream/operators/windows/>.

use std::sync::Arc;

use super::connector::OutputRecord;
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
}

impl Windows {
    /// Tumbling windows of `size_ms`.
    pub fn tumbling(size_ms: i64) -> Self {
        Windows::Tumbling { size_ms }
    }

    fn size_ms(self) -> i64 {
        match self {
            Windows::Tumbling { size_ms } | Windows::Sliding { size_ms, .. } => size_ms,
        }
    }

    /// Calls `f` with the start of every window containing `ts`.
    fn for_each_start(self, ts: i64, mut f: impl FnMut(i64)) {
        match self {
            Windows::Tumbling { size_ms } => f(ts - ts.rem_euclid(size_ms)),
            Windows::Sliding { size_ms, slide_ms } => {
                let mut start = ts - ts.rem_euclid(slide_ms);
                while start > ts - size_ms {
                    f(start);
                    start -= slide_ms;
                }
            }
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
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

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
    late: Arc<Counter>,
    _t: std::marker::PhantomData<fn(&T)>,
}

impl<K: StateKey + Ord + Send + 'static, T, A: AggregateFunction<T>> WindowOperator<K, T, A>
where
    (K, i64): StateKey,
{
    pub(crate) fn new(
        agg: Arc<A>,
        windows: Windows,
        lateness_ms: i64,
        ctx: KeyedOperatorFactory,
    ) -> Self {
        Self {
            agg,
            windows,
            lateness_ms: lateness_ms.max(0),
            state: StateTable::new("windows", ctx.range, ctx.key_groups),
            timers: TimerQueue::new("window-timers", ctx.range),
            watermark: i64::MIN,
            late: ctx.metrics.counter(
                "late_records_total",
                "Records later than the allowed lateness",
            ),
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
        _side: &mut Vec<OutputRecord>,
    ) {
        let size = self.windows.size_ms();
        let (wm, lateness, agg) = (self.watermark, self.lateness_ms, &self.agg);
        let (state, timers) = (&mut self.state, &mut self.timers);
        let mut placed = false;
        self.windows.for_each_start(ts, |start| {
            let max_ts = start + size - 1;
            if max_ts.saturating_add(lateness) <= wm {
                return; // this window is gone
            }
            placed = true;
            let acc = state.get_or_insert_with(kg, (key.clone(), start), || agg.create());
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
            } else {
                timers.register(kg, max_ts, key.clone(), start);
            }
            if lateness > 0 {
                timers.register(kg, max_ts + lateness, key.clone(), start);
            }
        });
        if !placed {
            self.late.add(1);
        }
    }

    fn advance_watermark(&mut self, watermark: i64, out: &mut Vec<WindowResult<K, A::Out>>) {
        self.watermark = watermark;
        let size = self.windows.size_ms();
        while let Some((kg, ts, key, start)) = self.timers.pop_due(watermark) {
            let max_ts = start + size - 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_assignment_is_epoch_aligned() {
        let mut v = Vec::new();
        Windows::tumbling(60_000).for_each_start(61_000, |s| v.push(s));
        Windows::tumbling(60_000).for_each_start(-1, |s| v.push(s));
        assert_eq!(v, vec![60_000, -60_000]);
        let mut v = Vec::new();
        Windows::Sliding {
            size_ms: 10,
            slide_ms: 5,
        }
        .for_each_start(12, |s| v.push(s));
        assert_eq!(v, vec![10, 5]);
    }
}
