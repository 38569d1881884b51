//! The subtasks: source subtasks (reader, chained stages, timestamps, watermarks, routing by key
//! group) and keyed subtasks (barrier alignment, keyed operator, chained stages, sink writer),
//! connected all-to-all by bounded channels.
//!
//! Barriers flow in-band with the records, so a checkpoint cuts every channel at one point
//! (Chandy–Lamport): a source emits barrier n right after the positions it records; a keyed
//! subtask stops reading an input once barrier n came through it (alignment), and when barrier
//! n came through all of them it snapshots its state and prepares its sink transaction — which
//! then hold exactly the records before the cut.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tokio::sync::mpsc::{Receiver, Sender};

use super::connector::{OutputRecord, SinkWriter, SourceReader, Target};
use super::fault;
use super::job::{Chain, Encoder};
use super::metrics::{Counter, Gauge, Registry};
use super::operator::OpInstance;
use super::source::{
    SourcePoll, SourceRecord, SplitOffset, WatermarkConfig, WatermarkGenerator, WatermarkStatus,
};
use super::state::{
    key_group_of, subtask_for_key_group, CheckpointFile, CheckpointStore, SnapshotWriter, StateKey,
};
use super::RuntimeError;

/// One record on its way to a keyed subtask.
pub(crate) struct KeyedRecord<K, T> {
    pub(crate) kg: u16,
    pub(crate) key: K,
    pub(crate) value: T,
    pub(crate) ts: i64,
}

/// What travels on a channel of the exchange.
pub(crate) enum Message<K, T> {
    Records(Vec<KeyedRecord<K, T>>),
    /// Side-output records (dead letters) for the sink of the receiving subtask.
    Side(Vec<OutputRecord>),
    Watermark(i64),
    /// Every split of the sending source subtask is idle: leave it out of the watermark.
    Idle,
    Barrier(u64),
}

/// Coordinator → source subtask.
pub(crate) enum SourceCmd {
    /// Checkpoint n; `last`: the job stops after it (a clean stop or the end of a bounded
    /// input), so the source reads nothing more — a restart resumes exactly at the barrier.
    Trigger {
        id: u64,
        last: bool,
    },
    Complete(Vec<SplitOffset>),
    /// A job without checkpoints stops: read nothing more, close the outputs (the keyed
    /// subtasks drain them, flush their sinks and finish).
    Stop,
}

/// Coordinator → keyed subtask.
pub(crate) enum KeyedCmd {
    Complete(u64),
    /// The final checkpoint is complete: wait for the commits, close, stop.
    Finish,
}

/// Subtask → coordinator.
pub(crate) enum Event {
    SourceAck {
        checkpoint: u64,
        positions: Vec<SplitOffset>,
    },
    KeyedAck {
        checkpoint: u64,
        subtask: usize,
        file: CheckpointFile,
        committables: serde_json::Value,
    },
    SourceEnded,
    KeyedDone,
    Failed {
        task: String,
        error: RuntimeError,
    },
}

/// Why a send failed: the receiving task is gone. A keyed subtask that failed reports its own
/// error; one that finished (the job is stopping) is no error of the source's.
const DOWNSTREAM_GONE: &str = "downstream task stopped";

/// The wall clock in Unix milliseconds.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn send<M>(tx: &Sender<M>, m: M, what: &str) -> Result<(), RuntimeError> {
    tx.send(m).await.map_err(|_| RuntimeError::TaskFailed {
        task: what.into(),
        reason: DOWNSTREAM_GONE.into(),
    })
}

pub(crate) struct SourceTask<K, T> {
    pub(crate) subtask: usize,
    pub(crate) reader: Box<dyn SourceReader>,
    pub(crate) chain: Chain<SourceRecord, T>,
    pub(crate) timestamp: Arc<dyn Fn(&T) -> i64 + Send + Sync>,
    pub(crate) key: Arc<dyn Fn(&T) -> K + Send + Sync>,
    pub(crate) strategy: WatermarkConfig,
    pub(crate) key_groups: u16,
    /// Send the final watermark at the end of the input (a bounded job); not when replaying up
    /// to a checkpoint's positions, which must leave the windows open as they were.
    pub(crate) final_watermark: bool,
    /// The job checkpoints. Without checkpoints the subtask ends at the end of its input (or
    /// on [`SourceCmd::Stop`]), closing its outputs: that, not a final barrier, tells the keyed
    /// subtasks that everything before it was sent.
    pub(crate) checkpoints: bool,
    pub(crate) outputs: Vec<Sender<Message<K, T>>>,
    pub(crate) cmds: Receiver<SourceCmd>,
    pub(crate) events: Sender<Event>,
    pub(crate) metrics: Registry,
}

impl<K: StateKey, T: Send + 'static> SourceTask<K, T> {
    pub(crate) async fn run(self) -> Result<(), RuntimeError> {
        match self.read().await {
            Err(RuntimeError::TaskFailed { reason, .. }) if reason == DOWNSTREAM_GONE => Ok(()),
            other => other,
        }
    }

    async fn read(mut self) -> Result<(), RuntimeError> {
        let name = format!("source {}", self.subtask);
        let parallelism = self.outputs.len();
        let records_in = self
            .metrics
            .counter("records_in_total", "Records read by the sources");
        let dead = self.metrics.counter(
            "dead_letter_records_total",
            "Records sent to the dead-letter output",
        );
        // Startup figure (process start → first record, as Flink's benchmark peer reports):
        // the first subtask to read a record sets it; the others see it set.
        let first_record = self.metrics.gauge(
            "first_record_time_unix_ms",
            "Wall-clock time (Unix ms) the job's first input record was read",
        );
        let mut wm = WatermarkGenerator::new(self.strategy, self.reader.split_count());
        let started = Instant::now();
        let mut sent_wm = i64::MIN;
        let mut sent_idle = false;
        let mut raw: Vec<SourceRecord> = Vec::new();
        let mut side: Vec<OutputRecord> = Vec::new();
        let mut batches: Vec<Vec<KeyedRecord<K, T>>> =
            (0..parallelism).map(|_| Vec::new()).collect();
        let mut ended = false;
        loop {
            tokio::select! {
                biased;
                cmd = self.cmds.recv() => match cmd {
                    None => return Ok(()),
                    Some(SourceCmd::Trigger { id: n, last }) => {
                        if last {
                            ended = true;
                        }
                        // Records of earlier polls are all sent (below): the barrier follows them.
                        let positions = self.reader.positions();
                        for o in &self.outputs {
                            send(o, Message::Barrier(n), &name).await?;
                        }
                        send(&self.events, Event::SourceAck { checkpoint: n, positions }, &name).await?;
                    }
                    Some(SourceCmd::Complete(positions)) => self.reader.checkpoint_complete(positions).await?,
                    Some(SourceCmd::Stop) => return Ok(()),
                },
                polled = self.reader.poll(&mut raw), if !ended => {
                    let polled = polled?;
                    if !raw.is_empty() && first_record.get() == 0 {
                        first_record.set(unix_ms());
                    }
                    records_in.add(raw.len() as u64);
                    let (chain, tsf, keyf, kgs) = (&self.chain, &self.timestamp, &self.key, self.key_groups);
                    for r in raw.drain(..) {
                        let split = r.split;
                        chain(r, &mut |t: T| {
                            let ts = tsf(&t);
                            wm.on_record(split, ts);
                            let key = keyf(&t);
                            let kg = key_group_of(key.stable_hash(), kgs);
                            let dest = subtask_for_key_group(kg, parallelism as u32, kgs) as usize;
                            batches[dest].push(KeyedRecord { kg, key, value: t, ts });
                        }, &mut side);
                    }
                    for (dest, b) in batches.iter_mut().enumerate() {
                        if !b.is_empty() {
                            send(&self.outputs[dest], Message::Records(std::mem::take(b)), &name).await?;
                        }
                    }
                    if !side.is_empty() {
                        dead.add(side.iter().filter(|r| r.target == Target::DeadLetter).count() as u64);
                        send(&self.outputs[self.subtask % parallelism], Message::Side(std::mem::take(&mut side)), &name).await?;
                    }
                    if polled == SourcePoll::End {
                        ended = true;
                        if self.final_watermark {
                            wm.end_of_input();
                            for o in &self.outputs {
                                send(o, Message::Watermark(i64::MAX), &name).await?;
                            }
                        }
                        send(&self.events, Event::SourceEnded, &name).await?;
                        if !self.checkpoints {
                            return Ok(());
                        }
                        continue;
                    }
                    wm.on_idle_check(started.elapsed().as_millis() as i64);
                    match wm.current() {
                        WatermarkStatus::Watermark(w) if w > sent_wm || sent_idle => {
                            sent_wm = w;
                            sent_idle = false;
                            for o in &self.outputs {
                                send(o, Message::Watermark(w), &name).await?;
                            }
                        }
                        WatermarkStatus::Idle if !sent_idle => {
                            sent_idle = true;
                            for o in &self.outputs {
                                send(o, Message::Idle, &name).await?;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The inputs of a keyed subtask, read round robin, with the ones blocked for barrier
/// alignment skipped.
pub(crate) struct Inputs<M> {
    rx: Vec<Receiver<M>>,
    blocked: Vec<bool>,
    closed: Vec<bool>,
    next: usize,
}

impl<M> Inputs<M> {
    pub(crate) fn new(rx: Vec<Receiver<M>>) -> Self {
        let n = rx.len();
        Self {
            rx,
            blocked: vec![false; n],
            closed: vec![false; n],
            next: 0,
        }
    }
    fn len(&self) -> usize {
        self.rx.len()
    }
    fn block(&mut self, i: usize) {
        self.blocked[i] = true;
    }
    fn unblock_all(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
    }
    /// The next message of an input that is not blocked; `None` once all are closed.
    ///
    /// # Cancel safety
    /// Cancel safe (`Receiver::poll_recv` is).
    async fn recv(&mut self) -> Option<(usize, M)> {
        poll_fn(|cx| {
            let n = self.rx.len();
            for k in 0..n {
                let i = (self.next + k) % n;
                if self.blocked[i] || self.closed[i] {
                    continue;
                }
                match self.rx[i].poll_recv(cx) {
                    Poll::Ready(Some(m)) => {
                        self.next = i + 1;
                        return Poll::Ready(Some((i, m)));
                    }
                    Poll::Ready(None) => self.closed[i] = true,
                    Poll::Pending => {}
                }
            }
            if self.closed.iter().all(|c| *c) {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

pub(crate) struct KeyedTask<K, T, O> {
    /// The job checkpoints. Without checkpoints the subtask finishes when every input is
    /// closed and drained: it flushes and closes its sink and reports done.
    pub(crate) checkpoints: bool,
    pub(crate) subtask: usize,
    pub(crate) op: Box<dyn OpInstance<K, T, O>>,
    pub(crate) chain: Chain<O, O>,
    pub(crate) encode: Encoder<O>,
    pub(crate) sink: Box<dyn SinkWriter>,
    pub(crate) inputs: Inputs<Message<K, T>>,
    pub(crate) cmds: Receiver<KeyedCmd>,
    pub(crate) events: Sender<Event>,
    pub(crate) store: Arc<dyn CheckpointStore>,
    pub(crate) schema_hash: u64,
    pub(crate) checkpoint_dir: std::path::PathBuf,
    pub(crate) metrics: Registry,
}

struct Emitter {
    out: Vec<OutputRecord>,
    records_out: Arc<Counter>,
    watermark_lag_ms: Arc<Gauge>,
}

impl<K: StateKey, T: Send + 'static, O: Send + 'static> KeyedTask<K, T, O> {
    pub(crate) async fn run(mut self) -> Result<(), RuntimeError> {
        let name = format!("keyed {}", self.subtask);
        let n_in = self.inputs.len();
        let mut wms = vec![i64::MIN; n_in];
        let mut idle = vec![false; n_in];
        let mut current = i64::MIN;
        let mut aligning: Option<(u64, usize)> = None;
        let mut results: Vec<O> = Vec::new();
        let mut em = Emitter {
            out: Vec::new(),
            records_out: self
                .metrics
                .counter("records_out_total", "Records written to the job's output"),
            watermark_lag_ms: self.metrics.gauge(
                "watermark_lag_ms",
                "Wall clock minus the event-time watermark of the keyed subtasks (most recent update)",
            ),
        };
        let keyed_records = self.metrics.counter(
            "keyed_records_total",
            "Records processed by the keyed operators",
        );
        let alignment_ms = self.metrics.histogram(
            "checkpoint_alignment_ms",
            "Time from the first to the last barrier of a checkpoint at a keyed subtask",
        );
        let mut align_started = Instant::now();
        loop {
            tokio::select! {
                biased;
                cmd = self.cmds.recv() => match cmd {
                    None => return Ok(()),
                    Some(KeyedCmd::Complete(n)) => {
                        self.sink.commit_up_to(n).await?;
                        if self.subtask == 0 && fault::armed(fault::MID_COMMIT) {
                            // Make "some committed, others not" certain: this one has committed.
                            self.sink.flush_commits().await?;
                            fault::point(fault::MID_COMMIT);
                        }
                    }
                    Some(KeyedCmd::Finish) => {
                        self.sink.flush_commits().await?;
                        self.sink.close().await?;
                        send(&self.events, Event::KeyedDone, &name).await?;
                        return Ok(());
                    }
                },
                m = self.inputs.recv(), if self.sink.writable() => match m {
                    None if self.checkpoints => return Ok(()),
                    None => {
                        // Every source subtask ended and everything it sent is processed.
                        self.sink.flush_commits().await?;
                        self.sink.close().await?;
                        send(&self.events, Event::KeyedDone, &name).await?;
                        return Ok(());
                    }
                    Some((_, Message::Records(batch))) => {
                        keyed_records.add(batch.len() as u64);
                        for r in batch {
                            self.op.process(r.kg, r.key, r.value, r.ts, &mut results, &mut em.out);
                        }
                        self.emit(&mut results, &mut em).await?;
                    }
                    Some((_, Message::Side(mut recs))) => self.sink.write(&mut recs).await?,
                    Some((i, Message::Watermark(w))) => {
                        wms[i] = wms[i].max(w);
                        idle[i] = false;
                        self.advance(&wms, &idle, &mut current, &mut results, &mut em).await?;
                    }
                    Some((i, Message::Idle)) => {
                        idle[i] = true;
                        self.advance(&wms, &idle, &mut current, &mut results, &mut em).await?;
                    }
                    Some((i, Message::Barrier(n))) => {
                        match aligning {
                            Some((m, _)) if n < m => continue, // a barrier of an abandoned checkpoint
                            Some((m, _)) if n == m => {}
                            _ => {
                                // First barrier of n (or n overtook an abandoned checkpoint).
                                self.inputs.unblock_all();
                                aligning = Some((n, 0));
                                align_started = Instant::now();
                            }
                        }
                        self.inputs.block(i);
                        let a = aligning.as_mut().expect("aligning");
                        a.1 += 1;
                        if a.1 == n_in {
                            aligning = None;
                            self.inputs.unblock_all();
                            alignment_ms.observe(align_started.elapsed().as_secs_f64() * 1e3);
                            self.checkpoint(n).await?;
                        }
                    }
                },
            }
        }
    }

    async fn advance(
        &mut self,
        wms: &[i64],
        idle: &[bool],
        current: &mut i64,
        results: &mut Vec<O>,
        em: &mut Emitter,
    ) -> Result<(), RuntimeError> {
        let combined = wms
            .iter()
            .zip(idle)
            .filter(|(_, i)| !**i)
            .map(|(w, _)| *w)
            .min();
        if let Some(w) = combined {
            if w > *current {
                *current = w;
                if w != i64::MAX {
                    em.watermark_lag_ms.set(unix_ms().saturating_sub(w));
                }
                self.op.advance_watermark(w, results);
                self.emit(results, em).await?;
            }
        }
        Ok(())
    }

    async fn emit(&mut self, results: &mut Vec<O>, em: &mut Emitter) -> Result<(), RuntimeError> {
        if results.is_empty() && em.out.is_empty() {
            return Ok(());
        }
        let (chain, encode) = (&self.chain, &self.encode);
        let mut main = 0u64;
        for o in results.drain(..) {
            let out = &mut em.out;
            let mut side = Vec::new();
            chain(
                o,
                &mut |o: O| {
                    let (key, value) = encode(&o);
                    out.push(OutputRecord {
                        target: Target::Main,
                        key,
                        value: Some(value),
                        headers: Vec::new(),
                    });
                    main += 1;
                },
                &mut side,
            );
            out.append(&mut side);
        }
        em.records_out.add(main);
        self.sink.write(&mut em.out).await
    }

    async fn checkpoint(&mut self, n: u64) -> Result<(), RuntimeError> {
        // The state is archived here, synchronously (the operator is not touched meanwhile);
        // writing and fsyncing happen off the task, so records keep flowing.
        let mut writer = SnapshotWriter::new(self.schema_hash);
        self.op.snapshot(&mut writer)?;
        let bytes = writer.finish()?;
        let committables = self.sink.prepare(n).await?;
        let file = format!("keyed-{}", self.subtask);
        let (store, events, subtask) = (self.store.clone(), self.events.clone(), self.subtask);
        let fault_dir = self.checkpoint_dir.join(format!("chk-{n:020}"));
        tokio::task::spawn_blocking(move || {
            if fault::armed(fault::SNAPSHOT_WRITE) {
                // "In the middle of writing a snapshot file": half of it on disk under a
                // temporary name, never renamed.
                let _ = std::fs::create_dir_all(&fault_dir);
                let _ = std::fs::write(
                    fault_dir.join(format!(".tmp-{file}-fault")),
                    &bytes[..bytes.len() / 2],
                );
                fault::point(fault::SNAPSHOT_WRITE);
            }
            let event = match store.put(n, &file, &bytes) {
                Ok(file) => Event::KeyedAck {
                    checkpoint: n,
                    subtask,
                    file,
                    committables,
                },
                Err(error) => Event::Failed {
                    task: format!("keyed {subtask}"),
                    error,
                },
            };
            let _ = events.blocking_send(event);
        });
        Ok(())
    }
}
