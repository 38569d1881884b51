//! The job graph, typed and built like Flink's DataStream API:
//!
//! ```text
//! source ─ deserialize/map/filter/flat_map ─ timestamps ─ key_by ─┬─ window(...).aggregate(..) ─ map/filter ─ sink
//!                                                                 └─ process(keyed function)  ─┘
//! ```
//!
//! The part before `key_by` runs in the source subtasks (chained, like Flink's operator chaining:
//! no channel between them); records then go through one all-to-all exchange, by key group, to
//! the keyed subtasks, which run the keyed operator, the stages after it and the sink writer.
//! Stages are plain `Fn` closures: per-subtask state belongs in keyed state, where checkpoints
//! see it.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::connector::{OutputRecord, SinkFactory, SourceFactory, Target};
use super::metrics::Registry;
use super::operator::{
    KeyedOperatorFactory, KeyedProcessFunction, OperatorFactory, ProcessOperator,
};
use super::source::{SourceRecord, WatermarkConfig};
use super::state::{StateKey, StateValue, DEFAULT_KEY_GROUPS};
use super::window::{window_operator, AggregateFunction, LateEncode, WindowResult, Windows};
use super::RuntimeError;
use crate::client::types::RecordHeader;

/// Header carrying the reason a record was dead-lettered.
pub const DEAD_LETTER_REASON_HEADER: &str = "exactly.error";

/// Checkpoint settings.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Whether the job checkpoints at all. `false`: no checkpoint store (nothing is read or
    /// written in `dir`), no barriers, no restore — a run always starts from the sources'
    /// starting positions, so after a failure the input is read again: at least once, with a
    /// sink that does not wait for checkpoints (e.g. [`KafkaSink`](super::kafka::KafkaSink) in
    /// [`DeliveryGuarantee::AtLeastOnce`](super::sink::DeliveryGuarantee::AtLeastOnce)). A
    /// bounded job then ends when its input is consumed, every window fired and the sink
    /// flushed. Flink's counterpart is a job without checkpointing enabled.
    pub enabled: bool,
    /// Where checkpoints are kept (a local directory).
    pub dir: PathBuf,
    /// Time between the start of one checkpoint and the trigger of the next; 0 disables periodic
    /// checkpoints (a bounded job still takes its final one).
    pub interval_ms: u64,
    /// Least time between the end of one checkpoint and the start of the next.
    pub min_pause_ms: u64,
    /// A checkpoint not complete after this long is abandoned (the next one covers its data).
    pub timeout_ms: u64,
    /// How many complete checkpoints to keep.
    pub retain: usize,
    /// After a restore, the first checkpoint comes this soon (at most `interval_ms`). The output
    /// a crash left uncommitted is re-produced from the replayed input within milliseconds;
    /// waiting a whole interval to commit it again made the time until the output caught up
    /// again ≈ restart + one interval (measured, benches/vs-flink live recovery: 1.04 s at a
    /// 1 s interval, of which ~80 ms restart and restore).
    pub first_after_restore_ms: u64,
}

impl CheckpointConfig {
    /// Defaults (1 s interval, 10 s timeout, keep 3, the first checkpoint after a restore after
    /// 100 ms) in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            enabled: true,
            dir: dir.into(),
            interval_ms: 1_000,
            min_pause_ms: 0,
            timeout_ms: 10_000,
            retain: 3,
            first_after_restore_ms: 100,
        }
    }
}

/// Job-wide settings.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// The job's name (logs, metrics, checkpoint fingerprint).
    pub name: String,
    /// Subtasks per stage.
    pub parallelism: usize,
    /// Key groups: the unit of keyed state and of rescaling; fixed for the life of the job's
    /// checkpoints. At least `parallelism`.
    pub key_groups: u16,
    /// Checkpoints.
    pub checkpoint: CheckpointConfig,
    /// Records per batch on the exchange between source and keyed subtasks.
    pub exchange_batch_records: usize,
    /// Batches buffered per channel of the exchange (backpressure beyond it).
    pub exchange_channel_batches: usize,
    /// Stop when every source reports its end (bounded sources), after a final checkpoint.
    pub bounded: bool,
    /// Metrics registry the job records into.
    pub metrics: Registry,
}

impl JobConfig {
    /// Defaults for a job named `name` with checkpoints in `checkpoint_dir`.
    pub fn new(name: impl Into<String>, checkpoint_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            parallelism: 1,
            key_groups: DEFAULT_KEY_GROUPS,
            checkpoint: CheckpointConfig::new(checkpoint_dir),
            exchange_batch_records: 512,
            exchange_channel_batches: 16,
            bounded: false,
            metrics: Registry::default(),
        }
    }

    /// Checks the settings, naming the key that is wrong.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.parallelism == 0 {
            return Err(RuntimeError::Config {
                key: "parallelism",
                reason: "must be at least 1".into(),
            });
        }
        if usize::from(self.key_groups) < self.parallelism {
            return Err(RuntimeError::Config {
                key: "key_groups",
                reason: format!(
                    "{} key groups cannot be spread over parallelism {}",
                    self.key_groups, self.parallelism
                ),
            });
        }
        if self.checkpoint.timeout_ms == 0 {
            return Err(RuntimeError::Config {
                key: "checkpoint_timeout_ms",
                reason: "must be above 0".into(),
            });
        }
        if self.exchange_batch_records == 0 || self.exchange_channel_batches == 0 {
            return Err(RuntimeError::Config {
                key: "exchange_batch_records",
                reason: "must be above 0".into(),
            });
        }
        Ok(())
    }
}

/// Encodes a result as (key, value).
pub(crate) type Encoder<O> = Arc<dyn Fn(&O) -> (Option<Bytes>, Bytes) + Send + Sync>;

/// A chained stage: takes one input, emits any number of outputs, may emit side records.
pub(crate) type Chain<A, B> =
    Arc<dyn Fn(A, &mut dyn FnMut(B), &mut Vec<OutputRecord>) + Send + Sync>;

/// The stream before `key_by`: runs in the source subtasks.
pub struct Stream<T> {
    pub(crate) config: JobConfig,
    pub(crate) source: Arc<dyn SourceFactory>,
    pub(crate) chain: Chain<SourceRecord, T>,
}

/// Starts a job.
pub fn job(config: JobConfig, source: impl SourceFactory) -> Stream<SourceRecord> {
    Stream {
        config,
        source: Arc::new(source),
        chain: Arc::new(|r, emit, _side| emit(r)),
    }
}

impl Stream<SourceRecord> {
    /// Decodes raw records; a record `f` rejects goes to the dead-letter output with the reason
    /// in the [`DEAD_LETTER_REASON_HEADER`] header — never dropped silently.
    pub fn deserialize<U: 'static>(
        self,
        f: impl Fn(&SourceRecord) -> Result<U, String> + Send + Sync + 'static,
    ) -> Stream<U> {
        let prev = self.chain;
        Stream {
            config: self.config,
            source: self.source,
            chain: Arc::new(move |a, emit, side| {
                let mut dead = Vec::new();
                prev(
                    a,
                    &mut |r: SourceRecord| match f(&r) {
                        Ok(u) => emit(u),
                        Err(reason) => {
                            let mut headers = r.record.headers.clone();
                            headers.push(RecordHeader {
                                key: DEAD_LETTER_REASON_HEADER.into(),
                                value: Some(Bytes::from(reason)),
                            });
                            dead.push(OutputRecord {
                                target: Target::DeadLetter,
                                key: r.record.key.clone(),
                                value: r.record.value.clone(),
                                headers,
                            });
                        }
                    },
                    side,
                );
                side.append(&mut dead);
            }),
        }
    }
}

impl<T: 'static> Stream<T> {
    /// Transforms each record.
    pub fn map<U: 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<U> {
        let prev = self.chain;
        Stream {
            config: self.config,
            source: self.source,
            chain: Arc::new(move |a, emit, side| prev(a, &mut |t| emit(f(t)), side)),
        }
    }

    /// Keeps the records `f` accepts.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T> {
        let prev = self.chain;
        Stream {
            config: self.config,
            source: self.source,
            chain: Arc::new(move |a, emit, side| {
                prev(
                    a,
                    &mut |t| {
                        if f(&t) {
                            emit(t)
                        }
                    },
                    side,
                )
            }),
        }
    }

    /// Zero or more outputs per record.
    pub fn flat_map<U: 'static>(
        self,
        f: impl Fn(T, &mut dyn FnMut(U)) + Send + Sync + 'static,
    ) -> Stream<U> {
        let prev = self.chain;
        Stream {
            config: self.config,
            source: self.source,
            chain: Arc::new(move |a, emit, side| prev(a, &mut |t| f(t, emit), side)),
        }
    }

    /// Event time of each record and the watermark strategy (per source split, combined by
    /// minimum).
    pub fn timestamps(
        self,
        f: impl Fn(&T) -> i64 + Send + Sync + 'static,
        strategy: WatermarkConfig,
    ) -> Timestamped<T> {
        Timestamped {
            stream: self,
            timestamp: Arc::new(f),
            strategy,
        }
    }
}

/// A stream with event time.
pub struct Timestamped<T> {
    pub(crate) stream: Stream<T>,
    pub(crate) timestamp: Arc<dyn Fn(&T) -> i64 + Send + Sync>,
    pub(crate) strategy: WatermarkConfig,
}

impl<T: Send + 'static> Timestamped<T> {
    /// Partitions by key: every record of a key reaches the same keyed subtask, through the key
    /// group of the key's stable hash.
    pub fn key_by<K: StateKey + Ord + Send + 'static>(
        self,
        f: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> KeyedStream<K, T> {
        KeyedStream {
            input: self,
            key: Arc::new(f),
        }
    }
}

/// A keyed stream.
pub struct KeyedStream<K, T> {
    pub(crate) input: Timestamped<T>,
    pub(crate) key: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<K: StateKey + Ord + Send + 'static, T: Send + 'static> KeyedStream<K, T> {
    /// Event-time windows.
    pub fn window(self, windows: Windows) -> WindowedStream<K, T> {
        WindowedStream {
            keyed: self,
            windows,
            allowed_lateness_ms: 0,
            late: None,
        }
    }

    /// A keyed process function (state and timers per key). `make` creates one per subtask.
    pub fn process<P>(
        self,
        make: impl Fn() -> P + Send + Sync + 'static,
    ) -> KeyedOutput<K, T, P::Out>
    where
        P: KeyedProcessFunction<K, T>,
        P::State: StateValue + Send + 'static,
    {
        let make = Arc::new(make);
        let factory: OperatorFactory<K, T, P::Out> = Arc::new(move |f: KeyedOperatorFactory| {
            Box::new(ProcessOperator::new(make(), f)) as Box<dyn OpInstance<K, T, P::Out>>
        });
        KeyedOutput {
            keyed: self,
            operator: factory,
            chain: Arc::new(|o, emit, _| emit(o)),
        }
    }
}

/// A windowed keyed stream.
pub struct WindowedStream<K, T> {
    keyed: KeyedStream<K, T>,
    windows: Windows,
    allowed_lateness_ms: i64,
    late: Option<LateEncode<T>>,
}

impl<K: StateKey + Ord + Send + 'static, T: Send + 'static> WindowedStream<K, T> {
    /// Records up to this late still update their window (which fires again); later ones go to
    /// the late-data output, counted.
    pub fn allowed_lateness_ms(mut self, ms: i64) -> Self {
        self.allowed_lateness_ms = ms;
        self
    }

    /// Writes records later than the allowed lateness to the sink's late-data output
    /// ([`Target::Late`]), encoded by `encode` as (key, value). Without it they are only counted
    /// (`late_records_total`) and logged at debug level, rate-limited.
    pub fn late_output(
        mut self,
        encode: impl Fn(&T) -> (Option<Bytes>, Bytes) + Send + Sync + 'static,
    ) -> Self {
        self.late = Some(Arc::new(encode));
        self
    }

    /// Aggregates each window incrementally; the result is emitted when the watermark passes the
    /// window's end.
    pub fn aggregate<A>(self, agg: A) -> KeyedOutput<K, T, WindowResult<K, A::Out>>
    where
        A: AggregateFunction<T>,
        (K, i64): StateKey,
    {
        let agg = Arc::new(agg);
        let windows = self.windows;
        let lateness = self.allowed_lateness_ms;
        let late = self.late;
        let factory: OperatorFactory<K, T, WindowResult<K, A::Out>> =
            Arc::new(move |f: KeyedOperatorFactory| {
                window_operator(agg.clone(), windows, lateness, late.clone(), f)
            });
        KeyedOutput {
            keyed: self.keyed,
            operator: factory,
            chain: Arc::new(|o, emit, _| emit(o)),
        }
    }
}

pub(crate) use super::operator::OpInstance;

/// The stream after the keyed operator: runs in the keyed subtasks, chained to the sink.
pub struct KeyedOutput<K, T, O> {
    pub(crate) keyed: KeyedStream<K, T>,
    pub(crate) operator: OperatorFactory<K, T, O>,
    pub(crate) chain: Chain<O, O>,
}

impl<K: StateKey + Ord + Send + 'static, T: Send + 'static, O: 'static> KeyedOutput<K, T, O> {
    /// Keeps the results `f` accepts.
    pub fn filter(self, f: impl Fn(&O) -> bool + Send + Sync + 'static) -> Self {
        let prev = self.chain;
        KeyedOutput {
            keyed: self.keyed,
            operator: self.operator,
            chain: Arc::new(move |a, emit, side| {
                prev(
                    a,
                    &mut |o| {
                        if f(&o) {
                            emit(o)
                        }
                    },
                    side,
                )
            }),
        }
    }

    /// Writes the results to `sink`, encoded by `encode` as (key, value).
    pub fn sink(
        self,
        sink: impl SinkFactory,
        encode: impl Fn(&O) -> (Option<Bytes>, Bytes) + Send + Sync + 'static,
    ) -> Job<K, T, O> {
        Job {
            output: self,
            sink: Arc::new(sink),
            encode: Arc::new(encode),
        }
    }
}

/// A complete job, ready to run (see [`Job::run`]).
pub struct Job<K, T, O> {
    pub(crate) output: KeyedOutput<K, T, O>,
    pub(crate) sink: Arc<dyn SinkFactory>,
    pub(crate) encode: Encoder<O>,
}

impl<K, T, O> Job<K, T, O> {
    /// The job's settings.
    pub fn config(&self) -> &JobConfig {
        &self.output.keyed.input.stream.config
    }
}
