//! Keyed operators: the user's keyed process function (state and timers per key) and the
//! interface every keyed operator offers the keyed subtask (process, watermark, snapshot,
//! restore — Flink's operator lifecycle hooks, named).

use super::connector::OutputRecord;
use super::metrics::Registry;
use super::shim::{KeyGroupRange, StateKey, StateTable, StateValue, TimerQueue};
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

/// One section of a keyed snapshot: a named piece of state of one key group.
#[derive(Debug, Clone)]
pub struct Section {
    /// Which state ("windows", "timers", ...).
    pub name: String,
    /// The key group.
    pub key_group: u16,
    /// The archived bytes.
    pub bytes: Vec<u8>,
}

/// A keyed operator instance, owned by one keyed subtask.
pub trait OpInstance<K, T, O>: Send {
    /// One record of key `key` (in key group `kg`) with event time `ts`.
    fn process(&mut self, kg: u16, key: K, value: T, ts: i64, out: &mut Vec<O>, side: &mut Vec<OutputRecord>);
    /// The watermark advanced to `watermark`: fire due timers.
    fn advance_watermark(&mut self, watermark: i64, out: &mut Vec<O>);
    /// Appends the state of key group `kg`.
    fn snapshot(&self, kg: u16, out: &mut Vec<Section>);
    /// Restores one section written by [`snapshot`](Self::snapshot).
    fn restore(&mut self, section: &Section) -> Result<(), RuntimeError>;
    /// Keys with state (for metrics).
    fn state_entries(&self) -> usize;
}

/// A keyed process function: the lowest-level keyed operator, like Flink's
/// `KeyedProcessFunction` — value state per key and event-time timers.
pub trait KeyedProcessFunction<K, T>: Send + 'static {
    /// The state kept per key.
    type State;
    /// What it emits.
    type Out: Send + 'static;
    /// One record.
    fn process(&mut self, key: &K, value: T, ctx: &mut ProcessContext<'_, K, Self::State, Self::Out>);
    /// A timer registered for `key` fired (the watermark passed `timestamp`).
    fn on_timer(&mut self, key: &K, timestamp: i64, ctx: &mut ProcessContext<'_, K, Self::State, Self::Out>);
}

/// What a keyed process function sees of its key.
pub struct ProcessContext<'a, K, S, O> {
    kg: u16,
    key: &'a K,
    timestamp: i64,
    watermark: i64,
    state: &'a mut StateTable<K, S>,
    timers: &'a mut TimerQueue<K, ()>,
    out: &'a mut Vec<O>,
}

impl<K: StateKey + Ord, S: StateValue, O> ProcessContext<'_, K, S, O> {
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
        self.state.get_or_insert_with(self.kg, self.key, init)
    }
    /// Removes the key's state, returning it.
    pub fn take_state(&mut self) -> Option<S> {
        self.state.remove(self.kg, self.key)
    }
    /// Calls `on_timer` for this key when the watermark reaches `timestamp`.
    pub fn register_timer(&mut self, timestamp: i64) {
        self.timers.register(self.kg, timestamp, self.key.clone(), ());
    }
    /// Emits a result.
    pub fn emit(&mut self, out: O) {
        self.out.push(out);
    }
}

pub(crate) struct ProcessOperator<K, P: KeyedProcessFunction<K, T>, T> {
    f: P,
    state: StateTable<K, P::State>,
    timers: TimerQueue<K, ()>,
    watermark: i64,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<K: StateKey + Ord, T, P: KeyedProcessFunction<K, T>> ProcessOperator<K, P, T>
where
    P::State: StateValue,
{
    pub(crate) fn new(f: P, ctx: KeyedOperatorFactory) -> Self {
        Self {
            f,
            state: StateTable::new("process", ctx.range, ctx.key_groups),
            timers: TimerQueue::new(),
            watermark: i64::MIN,
            _t: std::marker::PhantomData,
        }
    }
}

impl<K: StateKey + Ord, T: Send, P: KeyedProcessFunction<K, T>> OpInstance<K, T, P::Out> for ProcessOperator<K, P, T>
where
    P::State: StateValue,
{
    fn process(&mut self, kg: u16, key: K, value: T, ts: i64, out: &mut Vec<P::Out>, _side: &mut Vec<OutputRecord>) {
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

    fn snapshot(&self, kg: u16, out: &mut Vec<Section>) {
        out.push(Section { name: "process".into(), key_group: kg, bytes: self.state.snapshot_key_group(kg) });
        let timers = self.timers.snapshot_key_group(kg);
        out.push(Section {
            name: "process-timers".into(),
            key_group: kg,
            bytes: rkyv::to_bytes::<rkyv::rancor::Error>(&timers).expect("timers serialize").to_vec(),
        });
    }

    fn restore(&mut self, section: &Section) -> Result<(), RuntimeError> {
        match section.name.as_str() {
            "process" => self.state.restore_key_group(section.key_group, &section.bytes),
            "process-timers" => {
                let timers = super::window::decode_timers::<K, ()>(&section.bytes)?;
                for (ts, k, n) in timers {
                    self.timers.register(section.key_group, ts, k, n);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn state_entries(&self) -> usize {
        self.state.len()
    }
}
