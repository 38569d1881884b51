//! Keyed operators: the user's keyed process function (state and timers per key) and the
//! interface every keyed operator offers the keyed subtask (process, watermark, snapshot,
//! restore — Flink's operator lifecycle hooks, named).

use super::connector::OutputRecord;
use super::metrics::Registry;
use super::state::{
    type_fingerprint, KeyGroupRange, SnapshotFile, SnapshotWriter, StateKey, StateTable,
    StateValue, TimerQueue,
};
use super::RuntimeError;

/// What a keyed subtask tells the operator it creates.
#[derive(Debug, Clone)]
pub struct KeyedOperatorFactory {
    /// The key groups of this subtask.
    pub range: KeyGroupRange,
    /// Key groups of the job.
    pub key_groups: u16,
    /// This subtask.
    pub subtask: usize,
    /// Metrics.
    pub metrics: Registry,
}

/// A keyed operator instance, owned by one keyed subtask.
pub trait OpInstance<K, T, O>: Send {
    /// One record of key `key` (in key group `kg`) with event time `ts`.
    fn process(
        &mut self,
        kg: u16,
        key: K,
        value: T,
        ts: i64,
        out: &mut Vec<O>,
        side: &mut Vec<OutputRecord>,
    );
    /// The watermark advanced to `watermark`: fire due timers.
    fn advance_watermark(&mut self, watermark: i64, out: &mut Vec<O>);
    /// Writes the state of its key groups (sections per state and key group).
    fn snapshot(&self, out: &mut SnapshotWriter) -> Result<(), RuntimeError>;
    /// Restores the sections of its key groups found in `file` (a snapshot written by any
    /// subtask, at any parallelism: this is how key groups move when the job is rescaled).
    fn restore(&mut self, file: &SnapshotFile) -> Result<(), RuntimeError>;
    /// Keys with state (for metrics).
    fn state_entries(&self) -> usize;
    /// A fingerprint of the state's types: a checkpoint written with other state types is not
    /// restored.
    fn state_fingerprint(&self) -> u64;
}

/// A keyed process function: the lowest-level keyed operator, like Flink's
/// `KeyedProcessFunction` — value state per key and event-time timers.
pub trait KeyedProcessFunction<K, T>: Send + 'static {
    /// The state kept per key.
    type State;
    /// What it emits.
    type Out: Send + 'static;
    /// One record.
    fn process(
        &mut self,
        key: &K,
        value: T,
        ctx: &mut ProcessContext<'_, K, Self::State, Self::Out>,
    ) where
        K: StateKey,
        Self::State: StateValue;
    /// A timer registered for `key` fired (the watermark passed `timestamp`).
    fn on_timer(
        &mut self,
        key: &K,
        timestamp: i64,
        ctx: &mut ProcessContext<'_, K, Self::State, Self::Out>,
    ) where
        K: StateKey,
        Self::State: StateValue;
}

/// What a keyed process function sees of its key.
pub struct ProcessContext<'a, K: StateKey, S: StateValue, O> {
    kg: u16,
    key: &'a K,
    timestamp: i64,
    watermark: i64,
    state: &'a mut StateTable<K, S>,
    timers: &'a mut TimerQueue<K, ()>,
    out: &'a mut Vec<O>,
}

impl<K: StateKey + Ord + Send + 'static, S: StateValue, O> ProcessContext<'_, K, S, O> {
    /// The record's event time (or the timer's time in `on_timer`).
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }
    /// The current watermark.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }
    /// The key's state, created by `init` if absent.
    pub fn state_or_insert_with(&mut self, init: impl FnOnce() -> S) -> &mut S {
        self.state
            .get_or_insert_with(self.kg, self.key.clone(), init)
    }
    /// Removes the key's state, returning it.
    pub fn take_state(&mut self) -> Option<S> {
        self.state.remove(self.kg, self.key)
    }
    /// Calls `on_timer` for this key when the watermark reaches `timestamp`.
    pub fn register_timer(&mut self, timestamp: i64) {
        self.timers
            .register(self.kg, timestamp, self.key.clone(), ());
    }
    /// Emits a result.
    pub fn emit(&mut self, out: O) {
        self.out.push(out);
    }
}

pub(crate) struct ProcessOperator<K: StateKey, P: KeyedProcessFunction<K, T>, T>
where
    P::State: StateValue,
{
    f: P,
    state: StateTable<K, P::State>,
    timers: TimerQueue<K, ()>,
    watermark: i64,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<K: StateKey + Ord + Send + 'static, T, P: KeyedProcessFunction<K, T>> ProcessOperator<K, P, T>
where
    P::State: StateValue + Send + 'static,
{
    pub(crate) fn new(f: P, ctx: KeyedOperatorFactory) -> Self {
        Self {
            f,
            state: StateTable::new("process", ctx.range, ctx.key_groups),
            timers: TimerQueue::new("process-timers", ctx.range),
            watermark: i64::MIN,
            _t: std::marker::PhantomData,
        }
    }
}

impl<K: StateKey + Ord + Send + 'static, T: Send, P: KeyedProcessFunction<K, T>>
    OpInstance<K, T, P::Out> for ProcessOperator<K, P, T>
where
    P::State: StateValue + Send + 'static,
{
    fn process(
        &mut self,
        kg: u16,
        key: K,
        value: T,
        ts: i64,
        out: &mut Vec<P::Out>,
        _side: &mut Vec<OutputRecord>,
    ) {
        let mut ctx = ProcessContext {
            kg,
            key: &key,
            timestamp: ts,
            watermark: self.watermark,
            state: &mut self.state,
            timers: &mut self.timers,
            out,
        };
        self.f.process(&key, value, &mut ctx);
    }

    fn advance_watermark(&mut self, watermark: i64, out: &mut Vec<P::Out>) {
        self.watermark = watermark;
        while let Some((kg, ts, key, ())) = self.timers.pop_due(watermark) {
            let mut ctx = ProcessContext {
                kg,
                key: &key,
                timestamp: ts,
                watermark,
                state: &mut self.state,
                timers: &mut self.timers,
                out,
            };
            self.f.on_timer(&key, ts, &mut ctx);
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
        type_fingerprint::<(K, P::State)>()
    }
}
