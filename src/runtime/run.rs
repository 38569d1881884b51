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

use super::connector::SinkRecovery;
use super::source::SplitOffset;
use super::fault;
use super::job::Job;
use super::operator::{KeyedOperatorFactory, Section};
use super::shim::{CheckpointMetadata, KeyGroupRange, LocalDirStore, StateKey};
use super::task::{Event, Inputs, KeyedCmd, KeyedTask, SourceCmd, SourceTask};
use super::RuntimeError;

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct JobReport {
    /// The checkpoint the run started from.
    pub restored_from: Option<u64>,
    /// What sink recovery did at start.
    pub recovery: SinkRecovery,
    /// Checkpoints completed by this run.
    pub checkpoints: u64,
    /// The last complete checkpoint.
    pub last_checkpoint: Option<u64>,
}

const SOURCES_FILE: &str = "sources";

struct Restored {
    id: u64,
    positions: Vec<SplitOffset>,
    sections: Vec<Section>,
    committables: Vec<Vec<u8>>,
    properties: BTreeMap<String, String>,
}

fn restore(store: &LocalDirStore) -> Result<Option<Restored>, RuntimeError> {
    let Some((meta, dir)) = store.latest_complete()? else { return Ok(None) };
    let mut r = Restored {
        id: meta.checkpoint_id,
        positions: Vec::new(),
        sections: Vec::new(),
        committables: Vec::new(),
        properties: meta.properties.clone(),
    };
    for file in &meta.files {
        let bytes = store.read(&dir, file)?;
        if file == SOURCES_FILE {
            r.positions = serde_json::from_slice(&bytes).map_err(|e| RuntimeError::CorruptCheckpoint {
                path: dir.join(file),
                reason: e.to_string(),
            })?;
            continue;
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        let plain = rkyv::from_bytes::<Vec<(String, u16, Vec<u8>)>, rkyv::rancor::Error>(&aligned).map_err(|e| {
            RuntimeError::CorruptCheckpoint { path: dir.join(file), reason: e.to_string() }
        })?;
        for (name, key_group, bytes) in plain {
            if name == "sink" {
                r.committables.push(bytes);
            } else {
                r.sections.push(Section { name, key_group, bytes });
            }
        }
    }
    Ok(Some(r))
}

impl<K, T, O> Job<K, T, O>
where
    K: StateKey + Ord,
    T: Send + 'static,
    O: Send + 'static,
{
    /// Runs the job: until the sources end (bounded), or forever, or until a task fails.
    ///
    /// # Cancel safety
    /// Not cancel safe in the sense of leaving nothing behind: dropping the future stops the
    /// tasks where they are, like a crash; the next run recovers from the latest checkpoint.
    pub async fn run(self) -> Result<JobReport, RuntimeError> {
        let config = self.config().clone();
        config.validate()?;
        let p = config.parallelism;
        let store = Arc::new(LocalDirStore { dir: config.checkpoint.dir.clone(), retain: config.checkpoint.retain });
        let restored = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || restore(&store)).await.expect("restore task")?
        };
        let mut report = JobReport { restored_from: restored.as_ref().map(|r| r.id), ..JobReport::default() };
        let Job { output, sink, encode, .. } = self;
        sink.validate(&config.checkpoint).await?;
        let keyed = output.keyed;
        let source_stream = keyed.input.stream;

        // The second phase of what the restored checkpoint prepared, before anything new.
        let (positions, mut sections, next_id) = match restored {
            Some(r) => {
                report.recovery = sink.recover(r.committables, &r.properties, p).await?;
                (r.positions, r.sections, r.id + 1)
            }
            None => {
                report.recovery = sink.recover(Vec::new(), &BTreeMap::new(), p).await?;
                (Vec::new(), Vec::new(), 1)
            }
        };

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
        let mut tasks: JoinSet<Result<(), RuntimeError>> = JoinSet::new();
        let mut source_cmds = Vec::new();
        for (i, outputs) in to_keyed.into_iter().enumerate() {
            let reader = source_stream.source.create(i, p, positions.clone()).await?;
            let (tx, rx) = mpsc::channel(8);
            source_cmds.push(tx);
            let task = SourceTask {
                subtask: i,
                reader,
                chain: source_stream.chain.clone(),
                timestamp: keyed.input.timestamp.clone(),
                key: keyed.key.clone(),
                strategy: keyed.input.strategy,
                key_groups: config.key_groups,
                outputs,
                cmds: rx,
                events: events_tx.clone(),
                metrics: config.metrics.clone(),
            };
            let events = events_tx.clone();
            tasks.spawn(async move {
                let r = task.run().await;
                if let Err(error) = r {
                    let _ = events.send(Event::Failed { task: format!("source {i}"), error }).await;
                }
                Ok(())
            });
        }
        let mut keyed_cmds = Vec::new();
        for (j, inputs) in keyed_inputs.into_iter().enumerate() {
            let range = KeyGroupRange::for_subtask(j, p, config.key_groups);
            let mut op = (output.operator)(KeyedOperatorFactory {
                range,
                key_groups: config.key_groups,
                subtask: j,
                metrics: config.metrics.clone(),
            });
            let mine: Vec<Section>;
            (mine, sections) = sections.into_iter().partition(|s| range.contains(s.key_group));
            for s in &mine {
                op.restore(s)?;
            }
            let writer = sink.create(j, p).await?;
            let (tx, rx) = mpsc::channel(8);
            keyed_cmds.push(tx);
            let task = KeyedTask {
                subtask: j,
                range,
                op,
                chain: output.chain.clone(),
                encode: encode.clone(),
                sink: writer,
                inputs: Inputs::new(inputs),
                cmds: rx,
                events: events_tx.clone(),
                store: store.clone(),
                metrics: config.metrics.clone(),
            };
            let events = events_tx.clone();
            tasks.spawn(async move {
                let r = task.run().await;
                if let Err(error) = r {
                    let _ = events.send(Event::Failed { task: format!("keyed {j}"), error }).await;
                }
                Ok(())
            });
        }
        drop(events_tx);

        let coordinator = Coordinator {
            config: config.clone(),
            store,
            next_id,
            source_cmds,
            keyed_cmds,
            events: events_rx,
            properties: sink.properties(p),
        };
        let result = coordinator.run(&mut report).await;
        if result.is_err() {
            tasks.abort_all();
        }
        while tasks.join_next().await.is_some() {}
        result.map(|()| report)
    }
}

struct Pending {
    id: u64,
    started: Instant,
    source_acks: usize,
    positions: Vec<SplitOffset>,
    files: Vec<String>,
    bytes: u64,
}

struct Coordinator {
    config: super::job::JobConfig,
    store: Arc<LocalDirStore>,
    next_id: u64,
    source_cmds: Vec<mpsc::Sender<SourceCmd>>,
    keyed_cmds: Vec<mpsc::Sender<KeyedCmd>>,
    events: mpsc::Receiver<Event>,
    properties: BTreeMap<String, String>,
}

impl Coordinator {
    async fn run(mut self, report: &mut JobReport) -> Result<(), RuntimeError> {
        let p = self.config.parallelism;
        let cc = self.config.checkpoint.clone();
        let metrics = self.config.metrics.clone();
        let durations = metrics.histogram("checkpoint_duration_ms", "Trigger to durable metadata");
        let sizes = metrics.histogram("checkpoint_size_bytes", "Bytes of keyed snapshots per checkpoint");
        let completed = metrics.counter("checkpoints_completed_total", "Checkpoints completed");
        let abandoned = metrics.counter("checkpoints_abandoned_total", "Checkpoints abandoned (timeout)");
        let periodic = cc.interval_ms > 0;
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut next_trigger = if periodic { Instant::now() + Duration::from_millis(cc.interval_ms) } else { far };
        let mut pending: Option<Pending> = None;
        let mut ended = 0usize;
        let mut final_wanted = false;
        let mut final_id: Option<u64> = None;
        let mut done = 0usize;
        loop {
            let may_trigger = pending.is_none() && final_id.is_none() && (periodic || final_wanted);
            let timeout_at = pending.as_ref().map(|c| c.started + Duration::from_millis(cc.timeout_ms));
            tokio::select! {
                _ = sleep_until(next_trigger.into()), if may_trigger => {
                    let id = self.next_id;
                    self.next_id += 1;
                    if final_wanted {
                        final_id = Some(id);
                    }
                    pending = Some(Pending { id, started: Instant::now(), source_acks: 0, positions: Vec::new(), files: Vec::new(), bytes: 0 });
                    for c in &self.source_cmds {
                        let _ = c.send(SourceCmd::Trigger(id)).await;
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
                            if ended == p && self.config.bounded {
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
                        Event::KeyedAck { checkpoint, file, bytes, .. } => {
                            if let Some(c) = pending.as_mut().filter(|c| c.id == checkpoint) {
                                c.files.push(file);
                                c.bytes += bytes;
                            }
                        }
                    }
                    let complete = pending.as_ref().is_some_and(|c| c.source_acks == p && c.files.len() == p);
                    if complete {
                        let c = pending.take().expect("pending");
                        self.complete(&c).await?;
                        durations.observe(c.started.elapsed().as_secs_f64() * 1e3);
                        sizes.observe(c.bytes as f64);
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

    /// Writes the sources' positions and then the metadata: from here on the checkpoint is the
    /// one a restart uses.
    async fn complete(&self, c: &Pending) -> Result<(), RuntimeError> {
        let store = self.store.clone();
        let mut files = c.files.clone();
        files.sort();
        files.push(SOURCES_FILE.to_string());
        let meta = CheckpointMetadata {
            checkpoint_id: c.id,
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            parallelism: self.config.parallelism as u32,
            key_groups: self.config.key_groups,
            files,
            properties: self.properties.clone(),
        };
        let positions = serde_json::to_vec(&c.positions).expect("positions serialize");
        let id = c.id;
        tokio::task::spawn_blocking(move || {
            store.write(id, SOURCES_FILE, &positions)?;
            store.complete(&meta)
        })
        .await
        .expect("checkpoint write task")
    }
}
