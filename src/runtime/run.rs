//! Running a job: restore from the latest complete checkpoint, recover the sink, start the
//! subtasks, and coordinate checkpoints until the job ends or fails.
//!
//! The checkpoint coordinator triggers checkpoint n at the sources on an interval (at most one
//! in flight, a minimum pause between, a timeout after which it is abandoned and the next one
//! covers its data); checkpoint n is complete when every subtask's snapshot and then the
//! metadata file are durable; only then are the keyed subtasks told to commit their sinks'
//! transactions of n (the second phase).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::sleep_until;

use super::connector::{
    BoxFuture, MemorySink, SinkFactory, SinkRecovery, SinkWriter, SourceFactory,
};
use super::fault;
use super::job::{Chain, Encoder, Job, JobConfig, KeyedOutput};
use super::operator::KeyedOperatorFactory;
use super::operator::OperatorFactory;
use super::source::{SourceRecord, SplitOffset, WatermarkConfig};
use super::state::{
    type_fingerprint, CheckpointFile, CheckpointMetadata, CheckpointStore, KeyGroupRange,
    LatestCheckpoint, LocalDirStore, RestoredCheckpoint, StableHash, StateKey,
};
use super::task::{Event, Inputs, KeyedCmd, KeyedTask, SourceCmd, SourceTask};
use super::RuntimeError;

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct JobReport {
    /// The checkpoint the run started from.
    pub restored_from: Option<u64>,
    /// Newer checkpoints that could not be used, with the reason (path and what is wrong).
    pub rejected: Vec<String>,
    /// The damaged checkpoint whose output was already committed and whose positions the run
    /// replayed up to, without output, before going on (see [`Job::run`]).
    pub replayed_to: Option<u64>,
    /// What sink recovery did at start.
    pub recovery: SinkRecovery,
    /// Checkpoints completed by this run.
    pub checkpoints: u64,
    /// The last complete checkpoint.
    pub last_checkpoint: Option<u64>,
}

/// Metadata property holding the sources' positions (JSON list of [`SplitOffset`]).
pub const POSITIONS_PROPERTY: &str = "sources.positions";
/// Metadata property holding the sink's committables (JSON list, one per sink subtask).
pub const COMMITTABLES_PROPERTY: &str = "sink.committables";

/// What a checkpoint's metadata carries besides its state files.
struct Progress {
    positions: Vec<SplitOffset>,
    committables: Vec<serde_json::Value>,
}

fn progress(meta: &CheckpointMetadata, path: &std::path::Path) -> Result<Progress, RuntimeError> {
    let corrupt = |what: &str, e: serde_json::Error| RuntimeError::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: format!("{what} in the metadata: {e}"),
    };
    let positions = match meta.properties.get(POSITIONS_PROPERTY) {
        Some(p) => serde_json::from_str(p).map_err(|e| corrupt(POSITIONS_PROPERTY, e))?,
        None => Vec::new(),
    };
    let committables = match meta.properties.get(COMMITTABLES_PROPERTY) {
        Some(c) => serde_json::from_str(c).map_err(|e| corrupt(COMMITTABLES_PROPERTY, e))?,
        None => Vec::new(),
    };
    Ok(Progress {
        positions,
        committables,
    })
}

/// Everything of a job that its subtasks are made from (cheap clones of shared parts).
struct Parts<K, T, O> {
    config: JobConfig,
    source: Arc<dyn SourceFactory>,
    chain: Chain<SourceRecord, T>,
    timestamp: Arc<dyn Fn(&T) -> i64 + Send + Sync>,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
    strategy: WatermarkConfig,
    operator: OperatorFactory<K, T, O>,
    out_chain: Chain<O, O>,
    encode: Encoder<O>,
    store: Arc<dyn CheckpointStore>,
    schema_hash: u64,
}

/// One execution of the job's subtasks from a starting point.
struct Start<'a> {
    restored: Option<&'a RestoredCheckpoint>,
    positions: Vec<SplitOffset>,
    next_id: u64,
    stop_at: Option<Vec<SplitOffset>>,
    sink: Arc<dyn SinkFactory>,
}

/// The sink of a replay whose output is already committed: writes nothing, keeps the real
/// sink's checkpoint properties (the owner map).
struct Replay(Arc<dyn SinkFactory>);

impl SinkFactory for Replay {
    fn recover<'a>(
        &'a self,
        _committables: Vec<serde_json::Value>,
        _properties: &'a BTreeMap<String, String>,
        _parallelism: usize,
    ) -> BoxFuture<'a, Result<SinkRecovery, RuntimeError>> {
        Box::pin(async { Ok(SinkRecovery::default()) })
    }
    fn properties(&self, parallelism: usize) -> BTreeMap<String, String> {
        self.0.properties(parallelism)
    }
    fn create(
        &self,
        subtask: usize,
        parallelism: usize,
        restored: Option<u64>,
    ) -> BoxFuture<'_, Result<Box<dyn SinkWriter>, RuntimeError>> {
        Box::pin(async move {
            MemorySink::discarding()
                .create(subtask, parallelism, restored)
                .await
        })
    }
}

impl<K, T, O> Job<K, T, O>
where
    K: StateKey + Ord + Send + 'static,
    T: Send + 'static,
    O: Send + 'static,
{
    /// Runs the job: until the sources end (bounded), or forever, or until a task fails.
    ///
    /// At start it restores the newest complete checkpoint whose files verify, finishes the
    /// transactions that checkpoint prepared and aborts the job's lingering ones (the sink's
    /// recovery). When a newer checkpoint is damaged but its metadata is intact, its output may
    /// already be committed: the run then finishes that checkpoint's transactions too, replays
    /// the input from the older checkpoint up to the damaged one's positions *without output*
    /// (rebuilding the state it had), checkpoints that, and goes on — so the output stays exactly
    /// once for deterministic jobs even when the newest checkpoint is lost.
    ///
    /// # Cancel safety
    /// Dropping the future stops the tasks where they are, like a crash; the next run recovers
    /// from the latest checkpoint.
    pub async fn run(self) -> Result<JobReport, RuntimeError> {
        self.run_until(std::future::pending()).await
    }

    /// Runs the job like [`run`](Self::run) until `stop` resolves, then stops cleanly: takes a
    /// final checkpoint (windows stay open in it; the next run resumes from it), commits it,
    /// aborts the sinks' open transactions, and returns. This is what SIGTERM should do: no
    /// transaction is left for the broker's timeout, nothing is replayed at the next start.
    ///
    /// # Cancel safety
    /// As [`run`](Self::run).
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<JobReport, RuntimeError> {
        let mut stop: Option<StopSignal> = Some(Box::pin(stop));
        let config = self.config().clone();
        config.validate()?;
        let p = config.parallelism;
        let Job {
            output,
            sink,
            encode,
            ..
        } = self;
        sink.validate(&config.checkpoint).await?;
        let KeyedOutput {
            keyed,
            operator,
            chain: out_chain,
        } = output;
        let probe = operator(KeyedOperatorFactory {
            range: KeyGroupRange::for_subtask(0, 1, config.key_groups),
            key_groups: config.key_groups,
            subtask: 0,
            metrics: Default::default(),
        });
        let schema_hash =
            config.name.stable_hash() ^ probe.state_fingerprint() ^ type_fingerprint::<(K, T, O)>();
        drop(probe);
        let store: Arc<dyn CheckpointStore> = if config.checkpoint.enabled {
            let (dir, retain) = (config.checkpoint.dir.clone(), config.checkpoint.retain);
            Arc::new(
                tokio::task::spawn_blocking(move || LocalDirStore::new(dir, retain))
                    .await
                    .expect("store task")?,
            )
        } else {
            // Nothing to restore, nothing ever stored: the rest of the start (restore, sink
            // recovery) finds no checkpoint and starts from the sources' starting positions.
            Arc::new(NoCheckpoints)
        };
        let parts = Parts {
            config: config.clone(),
            source: keyed.input.stream.source,
            chain: keyed.input.stream.chain,
            timestamp: keyed.input.timestamp,
            key: keyed.key,
            strategy: keyed.input.strategy,
            operator,
            out_chain,
            encode,
            store: store.clone(),
            schema_hash,
        };
        let mut report = JobReport::default();
        let latest = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.latest_complete(schema_hash))
                .await
                .expect("restore task")?
        };
        for r in &latest.rejected {
            let line = format!(
                "checkpoint {} at {}: {}",
                r.checkpoint_id,
                r.path.display(),
                r.reason
            );
            if !r.incomplete {
                eprintln!("exactly: corrupt checkpoint, not used: {line}");
                tracing::warn!("corrupt checkpoint, not used: {line}");
            }
            report.rejected.push(line);
        }
        let mut restored = latest.restored;
        report.restored_from = restored.as_ref().map(|r| r.metadata.checkpoint_id);
        let base = match &restored {
            Some(r) => progress(&r.metadata, &store_path(&config, r.metadata.checkpoint_id))?,
            None => Progress {
                positions: Vec::new(),
                committables: Vec::new(),
            },
        };
        // A damaged newer checkpoint with readable metadata: its output may be committed.
        let damaged = {
            let store = store.clone();
            let newer: Vec<u64> = latest
                .rejected
                .iter()
                .filter(|r| !r.incomplete)
                .map(|r| r.checkpoint_id)
                .collect();
            tokio::task::spawn_blocking(move || {
                newer
                    .into_iter()
                    .find_map(|id| store.read_metadata(id, schema_hash).ok())
            })
            .await
            .expect("metadata task")
        };
        let properties = restored
            .as_ref()
            .map(|r| r.metadata.properties.clone())
            .unwrap_or_default();
        let mut next_id = restored
            .as_ref()
            .map_or(1, |r| r.metadata.checkpoint_id + 1);
        match damaged {
            Some(meta) => {
                let id = meta.checkpoint_id;
                let target = progress(&meta, &store_path(&config, id))?;
                let mut committables = base.committables;
                committables.extend(target.committables);
                report.recovery = sink.recover(committables, &meta.properties, p).await?;
                tracing::warn!(
                    checkpoint = id,
                    "replaying up to the positions of damaged checkpoint {id} without output"
                );
                let start = Start {
                    restored: restored.as_ref(),
                    positions: base.positions,
                    next_id: next_id.max(id + 1),
                    stop_at: Some(target.positions),
                    sink: Arc::new(Replay(sink.clone())),
                };
                let replay = parts
                    .execute(start, &mut JobReport::default(), None)
                    .await?;
                report.replayed_to = Some(id);
                let latest = {
                    let store = store.clone();
                    tokio::task::spawn_blocking(move || store.latest_complete(schema_hash))
                        .await
                        .expect("restore task")?
                };
                restored = latest.restored;
                if restored.as_ref().map(|r| r.metadata.checkpoint_id) != replay {
                    return Err(RuntimeError::CheckpointFailed {
                        checkpoint_id: replay.unwrap_or(id),
                        reason: "the checkpoint taken after the replay cannot be read back".into(),
                    });
                }
                next_id = replay.map_or(next_id, |r| r + 1);
            }
            None => {
                report.recovery = sink.recover(base.committables, &properties, p).await?;
            }
        }
        let positions = match &restored {
            Some(r) => {
                progress(&r.metadata, &store_path(&config, r.metadata.checkpoint_id))?.positions
            }
            None => Vec::new(),
        };
        let start = Start {
            restored: restored.as_ref(),
            positions,
            next_id,
            stop_at: None,
            sink,
        };
        parts.execute(start, &mut report, stop.take()).await?;
        Ok(report)
    }
}

fn store_path(config: &JobConfig, id: u64) -> std::path::PathBuf {
    config.checkpoint.dir.join(format!("chk-{id:020}"))
}

impl<K, T, O> Parts<K, T, O>
where
    K: StateKey + Ord + Send + 'static,
    T: Send + 'static,
    O: Send + 'static,
{
    /// Starts the subtasks from `start` and coordinates checkpoints until the job ends; returns
    /// the last complete checkpoint.
    async fn execute(
        &self,
        start: Start<'_>,
        report: &mut JobReport,
        stop: Option<StopSignal>,
    ) -> Result<Option<u64>, RuntimeError> {
        let config = &self.config;
        let p = config.parallelism;
        let replay = start.stop_at.is_some();
        let (events_tx, events_rx) = mpsc::channel::<Event>(4 * p + 16);
        let mut to_keyed: Vec<Vec<mpsc::Sender<_>>> = (0..p).map(|_| Vec::new()).collect();
        let mut keyed_inputs: Vec<Vec<mpsc::Receiver<_>>> = (0..p).map(|_| Vec::new()).collect();
        for src in to_keyed.iter_mut() {
            for input in keyed_inputs.iter_mut() {
                let (tx, rx) = mpsc::channel(config.exchange_channel_batches);
                src.push(tx);
                input.push(rx);
            }
        }
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut source_cmds = Vec::new();
        for (i, outputs) in to_keyed.into_iter().enumerate() {
            let reader = self
                .source
                .create(i, p, start.positions.clone(), start.stop_at.clone())
                .await?;
            let (tx, rx) = mpsc::channel(8);
            source_cmds.push(tx);
            let task = SourceTask {
                subtask: i,
                reader,
                chain: self.chain.clone(),
                timestamp: self.timestamp.clone(),
                key: self.key.clone(),
                strategy: self.strategy,
                key_groups: config.key_groups,
                final_watermark: !replay,
                checkpoints: config.checkpoint.enabled,
                outputs,
                cmds: rx,
                events: events_tx.clone(),
                metrics: config.metrics.clone(),
            };
            let events = events_tx.clone();
            tasks.spawn(async move {
                if let Err(error) = task.run().await {
                    let _ = events
                        .send(Event::Failed {
                            task: format!("source {i}"),
                            error,
                        })
                        .await;
                }
            });
        }
        let mut keyed_cmds = Vec::new();
        for (j, inputs) in keyed_inputs.into_iter().enumerate() {
            let range = KeyGroupRange::for_subtask(j as u32, p as u32, config.key_groups);
            let mut op = (self.operator)(KeyedOperatorFactory {
                range,
                key_groups: config.key_groups,
                subtask: j,
                metrics: config.metrics.clone(),
            });
            if let Some(r) = start.restored {
                // Every keyed file may hold key groups of this subtask (after a rescale).
                for (name, file) in &r.files {
                    if name.starts_with("keyed-") {
                        op.restore(file)?;
                    }
                }
            }
            let writer = start
                .sink
                .create(j, p, start.restored.map(|r| r.metadata.checkpoint_id))
                .await?;
            let (tx, rx) = mpsc::channel(8);
            keyed_cmds.push(tx);
            let task = KeyedTask {
                checkpoints: config.checkpoint.enabled,
                subtask: j,
                op,
                chain: self.out_chain.clone(),
                encode: self.encode.clone(),
                sink: writer,
                inputs: Inputs::new(inputs),
                cmds: rx,
                events: events_tx.clone(),
                store: self.store.clone(),
                schema_hash: self.schema_hash,
                checkpoint_dir: config.checkpoint.dir.clone(),
                metrics: config.metrics.clone(),
            };
            let events = events_tx.clone();
            tasks.spawn(async move {
                if let Err(error) = task.run().await {
                    let _ = events
                        .send(Event::Failed {
                            task: format!("keyed {j}"),
                            error,
                        })
                        .await;
                }
            });
        }
        drop(events_tx);
        let coordinator = Coordinator {
            config: config.clone(),
            bounded: config.bounded || replay,
            store: self.store.clone(),
            schema_hash: self.schema_hash,
            next_id: start.next_id,
            source_cmds,
            keyed_cmds,
            events: events_rx,
            properties: start.sink.properties(p),
        };
        let result = coordinator.run(report, stop).await;
        if result.is_err() {
            tasks.abort_all();
        }
        while tasks.join_next().await.is_some() {}
        result.map(|()| report.last_checkpoint)
    }
}

/// The store of a job without checkpoints ([`CheckpointConfig::enabled`] false): holds
/// nothing, and refuses writes (no barrier is ever sent, so none should come).
///
/// [`CheckpointConfig::enabled`]: super::job::CheckpointConfig::enabled
#[derive(Debug)]
struct NoCheckpoints;

impl NoCheckpoints {
    fn refuse(what: &str) -> RuntimeError {
        RuntimeError::Config {
            key: "checkpoint.enabled",
            reason: format!("checkpoints are disabled, yet a checkpoint {what} was attempted"),
        }
    }
}

impl CheckpointStore for NoCheckpoints {
    fn put(&self, _id: u64, _name: &str, _bytes: &[u8]) -> Result<CheckpointFile, RuntimeError> {
        Err(Self::refuse("file"))
    }
    fn complete(&self, _metadata: &CheckpointMetadata) -> Result<(), RuntimeError> {
        Err(Self::refuse("metadata"))
    }
    fn latest_complete(&self, _hash: u64) -> Result<LatestCheckpoint, RuntimeError> {
        Ok(LatestCheckpoint::default())
    }
    fn list(&self) -> Result<Vec<u64>, RuntimeError> {
        Ok(Vec::new())
    }
    fn read_metadata(&self, _id: u64, _hash: u64) -> Result<CheckpointMetadata, RuntimeError> {
        Err(Self::refuse("read"))
    }
    fn delete(&self, _id: u64) -> Result<(), RuntimeError> {
        Ok(())
    }
}

struct Pending {
    id: u64,
    started: Instant,
    created_ms: u64,
    source_acks: usize,
    positions: Vec<SplitOffset>,
    files: Vec<CheckpointFile>,
    committables: Vec<(usize, serde_json::Value)>,
}

/// Resolves when the job should stop cleanly.
type StopSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

struct Coordinator {
    config: JobConfig,
    /// Stop after the final checkpoint once every source has ended.
    bounded: bool,
    store: Arc<dyn CheckpointStore>,
    schema_hash: u64,
    next_id: u64,
    source_cmds: Vec<mpsc::Sender<SourceCmd>>,
    keyed_cmds: Vec<mpsc::Sender<KeyedCmd>>,
    events: mpsc::Receiver<Event>,
    properties: BTreeMap<String, String>,
}

impl Coordinator {
    async fn run(
        mut self,
        report: &mut JobReport,
        stop: Option<StopSignal>,
    ) -> Result<(), RuntimeError> {
        let p = self.config.parallelism;
        let cc = self.config.checkpoint.clone();
        let metrics = self.config.metrics.clone();
        let durations = metrics.histogram("checkpoint_duration_ms", "Trigger to durable metadata");
        let sizes = metrics.histogram(
            "checkpoint_size_bytes",
            "Bytes of keyed snapshots per checkpoint",
        );
        let completed = metrics.counter("checkpoints_completed_total", "Checkpoints completed");
        let abandoned = metrics.counter(
            "checkpoints_abandoned_total",
            "Checkpoints abandoned (timeout)",
        );
        // Without checkpoints the coordinator only watches: it triggers nothing, the sources
        // end by themselves (bounded) or on the stop signal, and the keyed subtasks finish once
        // their inputs are drained.
        let periodic = cc.enabled && cc.interval_ms > 0;
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        // A job that restored (or replayed) a checkpoint takes its first one sooner: see
        // `CheckpointConfig::first_after_restore_ms`.
        let first_ms = if self.next_id > 1 {
            cc.interval_ms.min(cc.first_after_restore_ms)
        } else {
            cc.interval_ms
        };
        let mut next_trigger = if periodic {
            Instant::now() + Duration::from_millis(first_ms)
        } else {
            far
        };
        let mut pending: Option<Pending> = None;
        let mut ended = 0usize;
        let mut final_wanted = false;
        let mut final_id: Option<u64> = None;
        let mut done = 0usize;
        // Not a field: `complete(&self)` is awaited, and the stop future need not be Sync.
        let mut stop = stop;
        loop {
            let may_trigger =
                cc.enabled && pending.is_none() && final_id.is_none() && (periodic || final_wanted);
            let timeout_at = pending
                .as_ref()
                .map(|c| c.started + Duration::from_millis(cc.timeout_ms));
            let stop_armed = stop.is_some() && !final_wanted;
            tokio::select! {
                _ = async { stop.as_mut().expect("armed").await }, if stop_armed => {
                    stop = None;
                    final_wanted = true;
                    if !cc.enabled {
                        tracing::info!("stopping: no checkpoints, so the sinks flush and the job ends");
                        for c in &self.source_cmds {
                            let _ = c.send(SourceCmd::Stop).await;
                        }
                        continue;
                    }
                    tracing::info!("stopping: taking a final checkpoint");
                    if pending.is_none() {
                        next_trigger = Instant::now();
                    }
                }
                _ = sleep_until(next_trigger.into()), if may_trigger => {
                    let id = self.next_id;
                    self.next_id += 1;
                    if final_wanted {
                        final_id = Some(id);
                    }
                    let created_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    pending = Some(Pending { id, started: Instant::now(), created_ms, source_acks: 0, positions: Vec::new(), files: Vec::new(), committables: Vec::new() });
                    for c in &self.source_cmds {
                        let _ = c.send(SourceCmd::Trigger { id, last: final_wanted }).await;
                    }
                }
                _ = sleep_until(timeout_at.unwrap_or(far).into()), if timeout_at.is_some() => {
                    let c = pending.take().expect("pending");
                    tracing::warn!(checkpoint = c.id, timeout_ms = cc.timeout_ms, "checkpoint abandoned: not complete in time");
                    abandoned.add(1);
                    if final_id == Some(c.id) {
                        final_id = None;
                    }
                    next_trigger = Instant::now() + Duration::from_millis(cc.min_pause_ms);
                }
                ev = self.events.recv() => {
                    let Some(ev) = ev else {
                        return Err(RuntimeError::TaskFailed { task: "coordinator".into(), reason: "every task stopped".into() });
                    };
                    match ev {
                        Event::Failed { task, error } => {
                            return Err(RuntimeError::TaskFailed { task, reason: error.to_string() });
                        }
                        Event::SourceEnded => {
                            ended += 1;
                            if ended == p && self.bounded && cc.enabled {
                                final_wanted = true;
                                next_trigger = Instant::now();
                            }
                        }
                        Event::KeyedDone => {
                            done += 1;
                            if done == p {
                                return Ok(());
                            }
                        }
                        Event::SourceAck { checkpoint, positions, .. } => {
                            if let Some(c) = pending.as_mut().filter(|c| c.id == checkpoint) {
                                c.source_acks += 1;
                                c.positions.extend(positions);
                            }
                        }
                        Event::KeyedAck { checkpoint, subtask, file, committables } => {
                            if let Some(c) = pending.as_mut().filter(|c| c.id == checkpoint) {
                                c.files.push(file);
                                c.committables.push((subtask, committables));
                            }
                        }
                    }
                    let complete = pending.as_ref().is_some_and(|c| c.source_acks == p && c.files.len() == p);
                    if complete {
                        let c = pending.take().expect("pending");
                        self.complete(&c).await?;
                        durations.observe(c.started.elapsed().as_secs_f64() * 1e3);
                        sizes.observe(c.files.iter().map(|f| f.bytes).sum::<u64>() as f64);
                        completed.add(1);
                        report.checkpoints += 1;
                        report.last_checkpoint = Some(c.id);
                        fault::point(fault::AFTER_COMPLETE);
                        for k in &self.keyed_cmds {
                            let _ = k.send(KeyedCmd::Complete(c.id)).await;
                        }
                        for s in &self.source_cmds {
                            let _ = s.send(SourceCmd::Complete(c.positions.clone())).await;
                        }
                        if final_id == Some(c.id) {
                            for k in &self.keyed_cmds {
                                let _ = k.send(KeyedCmd::Finish).await;
                            }
                        }
                        next_trigger = (c.started + Duration::from_millis(cc.interval_ms))
                            .max(Instant::now() + Duration::from_millis(cc.min_pause_ms));
                        if final_wanted && final_id.is_none() {
                            next_trigger = Instant::now();
                        }
                    }
                }
            }
        }
    }

    /// Writes the metadata (positions, committables, the sink's properties, the files): from
    /// here on the checkpoint is the one a restart uses.
    async fn complete(&self, c: &Pending) -> Result<(), RuntimeError> {
        let store = self.store.clone();
        let mut files = c.files.clone();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut committables = c.committables.clone();
        committables.sort_by_key(|(s, _)| *s);
        let committables: Vec<serde_json::Value> =
            committables.into_iter().map(|(_, v)| v).collect();
        let mut properties = self.properties.clone();
        properties.insert(
            POSITIONS_PROPERTY.into(),
            serde_json::to_string(&c.positions).expect("positions"),
        );
        properties.insert(
            COMMITTABLES_PROPERTY.into(),
            serde_json::to_string(&committables).expect("committables"),
        );
        let meta = CheckpointMetadata {
            checkpoint_id: c.id,
            created_ms: c.created_ms,
            job_schema_hash: self.schema_hash,
            parallelism: self.config.parallelism as u32,
            key_groups: self.config.key_groups,
            files,
            properties,
        };
        tokio::task::spawn_blocking(move || store.complete(&meta))
            .await
            .expect("checkpoint write task")
    }
}
