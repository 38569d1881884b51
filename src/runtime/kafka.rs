//! The Kafka source and the two-phase-commit Kafka sink as connectors of the job graph: the
//! glue between [`super::source::kafka`] / [`super::sink`] and the task loops
//! ([`super::connector`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::connector::{
    BoxFuture, OutputRecord, SinkFactory, SinkRecovery, SinkWriter, SourceFactory, SourceReader,
    Target,
};
use super::fault;
use super::job::CheckpointConfig;
use super::metrics::{Counter, Histogram, Registry};
use super::sink::{
    check_transaction_timeout, recover, CloseMode, DeliveryGuarantee, KafkaCommittable,
    KafkaSinkConfig, OwnerMap, TwoPhaseCommitSink,
};
use super::source::{
    KafkaSourceConfig, KafkaSourceReader, SourcePoll, SourceRecord, SplitAssigner, SplitOffset,
    StaticAssigner,
};
use super::RuntimeError;
use crate::client::producer::{Producer, ProducerRecord};
use crate::client::transaction::commit_prepared;
use crate::client::Client;

/// The Kafka source of a job: `read_committed` reads of the configured topics, offsets in the
/// checkpoint, partitions spread over the source subtasks by the assigner.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    client: Client,
    config: KafkaSourceConfig,
    assigner: Arc<dyn SplitAssigner>,
}

impl KafkaSource {
    /// A source reading with `client` as `config` says, partitions assigned as Flink does.
    pub fn new(client: Client, config: KafkaSourceConfig) -> Self {
        Self {
            client,
            config,
            assigner: Arc::new(StaticAssigner),
        }
    }

    /// Assigns partitions with `assigner` instead.
    pub fn with_assigner(mut self, assigner: Arc<dyn SplitAssigner>) -> Self {
        self.assigner = assigner;
        self
    }
}

impl SourceFactory for KafkaSource {
    fn create(
        &self,
        subtask: usize,
        parallelism: usize,
        restored: Vec<SplitOffset>,
        stop_at: Option<Vec<SplitOffset>>,
    ) -> BoxFuture<'_, Result<Box<dyn SourceReader>, RuntimeError>> {
        Box::pin(async move {
            let mut config = self.config.clone();
            if stop_at.is_some() {
                config.stop_at = stop_at;
                config.discovery_interval_ms = None;
            }
            let reader = KafkaSourceReader::open(
                self.client.clone(),
                config,
                subtask,
                parallelism,
                &restored,
                self.assigner.clone(),
            )
            .await?;
            Ok(Box::new(reader) as Box<dyn SourceReader>)
        })
    }
}

impl SourceReader for KafkaSourceReader {
    fn poll<'a>(
        &'a mut self,
        out: &'a mut Vec<SourceRecord>,
    ) -> BoxFuture<'a, Result<SourcePoll, RuntimeError>> {
        Box::pin(KafkaSourceReader::poll(self, out))
    }
    fn split_count(&self) -> usize {
        self.splits().len()
    }
    fn positions(&self) -> Vec<SplitOffset> {
        KafkaSourceReader::positions(self)
    }
    fn checkpoint_complete(
        &mut self,
        positions: Vec<SplitOffset>,
    ) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            // Lag monitoring only: a failed commit is logged, never fails the job.
            if let Err(e) = self.commit_to_group(&positions).await {
                tracing::warn!(error = %e, "committing checkpointed offsets to the lag group failed");
            }
            Ok(())
        })
    }
}

/// Property under which the sink's owner map of transactional ids is kept in checkpoints.
pub const OWNER_MAP_PROPERTY: &str = "kafka_sink.owners";

/// The Kafka sink of a job: the main output to `topic`, dead letters to `dead_letter_topic`.
/// Exactly once (the default): two-phase commit, one transaction per subtask and checkpoint
/// from a bounded pool. At least once ([`KafkaSink::with_delivery_guarantee`]): one idempotent
/// producer per subtask, no transactions, flushed on barriers and at the end.
#[derive(Debug)]
pub struct KafkaSink {
    client: Client,
    config: KafkaSinkConfig,
    guarantee: DeliveryGuarantee,
    topic: String,
    dead_letter_topic: Option<String>,
    late_topic: Option<String>,
    owners: Mutex<Option<OwnerMap>>,
    metrics: Registry,
}

impl KafkaSink {
    /// A sink writing to `topic` with `config`.
    pub fn new(client: Client, config: KafkaSinkConfig, topic: impl Into<String>) -> Self {
        Self {
            client,
            config,
            guarantee: DeliveryGuarantee::ExactlyOnce,
            topic: topic.into(),
            dead_letter_topic: None,
            late_topic: None,
            owners: Mutex::new(None),
            metrics: Registry::default(),
        }
    }

    /// Sends dead letters (malformed input) to `topic`, in the same transactions as the output.
    /// Without it they are counted and logged, not written.
    pub fn with_dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Sends records later than the allowed lateness (a window's late-data output) to `topic`;
    /// without it they go to the dead-letter topic.
    pub fn with_late_topic(mut self, topic: impl Into<String>) -> Self {
        self.late_topic = Some(topic.into());
        self
    }

    /// Delivers as `guarantee` says. [`DeliveryGuarantee::AtLeastOnce`] uses only
    /// `config.producer` (no transactional ids, nothing to recover at start) and works with or
    /// without checkpoints; [`DeliveryGuarantee::ExactlyOnce`] needs them.
    pub fn with_delivery_guarantee(mut self, guarantee: DeliveryGuarantee) -> Self {
        self.guarantee = guarantee;
        self
    }

    /// Records commit latencies and recovery counts into `metrics`.
    pub fn with_metrics(mut self, metrics: Registry) -> Self {
        self.metrics = metrics;
        self
    }
}

fn committables_of(value: serde_json::Value) -> Result<Vec<KafkaCommittable>, RuntimeError> {
    serde_json::from_value(value).map_err(|e| RuntimeError::CorruptCheckpoint {
        path: "kafka sink committables".into(),
        reason: e.to_string(),
    })
}

impl SinkFactory for KafkaSink {
    fn recover<'a>(
        &'a self,
        committables: Vec<serde_json::Value>,
        properties: &'a BTreeMap<String, String>,
        parallelism: usize,
    ) -> BoxFuture<'a, Result<SinkRecovery, RuntimeError>> {
        Box::pin(async move {
            if self.guarantee == DeliveryGuarantee::AtLeastOnce {
                // No transactions: nothing prepared to finish, nothing lingering.
                return Ok(SinkRecovery::default());
            }
            let mut all = Vec::new();
            for c in committables {
                all.extend(committables_of(c)?);
            }
            let owners = match properties.get(OWNER_MAP_PROPERTY) {
                Some(json) => serde_json::from_str::<OwnerMap>(json).map_err(|e| {
                    RuntimeError::CorruptCheckpoint {
                        path: OWNER_MAP_PROPERTY.into(),
                        reason: e.to_string(),
                    }
                })?,
                None => OwnerMap::new(&self.config, parallelism as u32),
            };
            if fault::armed(fault::RESTORE) {
                // Make "recovery started finishing the prepared transactions" certain: finish
                // the first one alone, then die.
                if let Some(first) = all.iter().find(|c| !c.prepared.empty) {
                    let _ = commit_prepared(
                        &self.client,
                        &first.prepared,
                        self.config.commit_deadline_ms,
                    )
                    .await;
                }
                fault::point(fault::RESTORE);
            }
            let report = recover(
                &self.client,
                &self.config,
                &all,
                &owners,
                parallelism as u32,
            )
            .await?;
            self.metrics
                .counter(
                    "lingering_transactions_aborted_total",
                    "Lingering transactions aborted at start",
                )
                .add(report.lingering_aborted.len() as u64);
            if !report.lingering_aborted.is_empty() {
                tracing::info!(ids = ?report.lingering_aborted, "aborted lingering transactions of this job");
            }
            *self.owners.lock().expect("owners lock") = Some(report.owners.clone());
            Ok(SinkRecovery {
                committed: report.committed,
                already_committed: report.already_committed,
                aborted_lingering: report.lingering_aborted.len() as u64,
            })
        })
    }

    fn validate<'a>(
        &'a self,
        checkpoint: &'a CheckpointConfig,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            if self.guarantee == DeliveryGuarantee::AtLeastOnce {
                return Ok(());
            }
            if !checkpoint.enabled {
                return Err(RuntimeError::Config {
                    key: "delivery_guarantee",
                    reason: "exactly-once needs checkpoints: the output becomes visible when a \
                             checkpoint completes (use at-least-once without checkpoints)"
                        .into(),
                });
            }
            self.config.validate()?;
            check_transaction_timeout(
                &self.client,
                &self.config,
                checkpoint.interval_ms,
                checkpoint.timeout_ms,
            )
            .await
        })
    }

    fn properties(&self, parallelism: usize) -> BTreeMap<String, String> {
        if self.guarantee == DeliveryGuarantee::AtLeastOnce {
            return BTreeMap::new();
        }
        let owners = self
            .owners
            .lock()
            .expect("owners lock")
            .clone()
            .unwrap_or_else(|| OwnerMap::new(&self.config, parallelism as u32));
        BTreeMap::from([(
            OWNER_MAP_PROPERTY.to_string(),
            serde_json::to_string(&owners).expect("owner map"),
        )])
    }

    fn create(
        &self,
        subtask: usize,
        _parallelism: usize,
        _restored: Option<u64>,
    ) -> BoxFuture<'_, Result<Box<dyn SinkWriter>, RuntimeError>> {
        Box::pin(async move {
            let routes = Routes {
                topic: self.topic.clone(),
                dead_letter_topic: self.dead_letter_topic.clone(),
                late_topic: self.late_topic.clone(),
                dropped_dead_letters: self.metrics.counter(
                    "dead_letters_unwritten_total",
                    "Dead letters counted but not written (no dead-letter topic configured)",
                ),
            };
            if self.guarantee == DeliveryGuarantee::AtLeastOnce {
                let producer = Producer::new(self.client.clone(), self.config.producer.clone())
                    .await
                    .map_err(RuntimeError::Client)?;
                return Ok(Box::new(AtLeastOnceWriter {
                    producer: Some(producer),
                    routes,
                }) as Box<dyn SinkWriter>);
            }
            let sink =
                TwoPhaseCommitSink::open(self.client.clone(), self.config.clone(), subtask as u32)
                    .await?;
            Ok(Box::new(KafkaSinkWriter {
                sink: Some(sink),
                routes,
                commit_latency_ms: self.metrics.histogram(
                    "commit_latency_ms",
                    "Checkpoint complete to EndTxn answered",
                ),
                latencies_seen: 0,
            }) as Box<dyn SinkWriter>)
        })
    }
}

/// Which topic each [`Target`] goes to.
struct Routes {
    topic: String,
    dead_letter_topic: Option<String>,
    late_topic: Option<String>,
    dropped_dead_letters: Arc<Counter>,
}

impl Routes {
    /// The record for `r`, or `None` for a dead letter without a dead-letter topic (counted).
    fn record(&self, r: OutputRecord) -> Option<ProducerRecord> {
        let topic = match r.target {
            Target::Main => self.topic.clone(),
            Target::Late if self.late_topic.is_some() => self.late_topic.clone().expect("checked"),
            Target::DeadLetter | Target::Late => match &self.dead_letter_topic {
                Some(t) => t.clone(),
                None => {
                    self.dropped_dead_letters.add(1);
                    tracing::warn!(
                        "a dead letter was not written: no dead-letter topic is configured"
                    );
                    return None;
                }
            },
        };
        Some(ProducerRecord {
            topic,
            key: r.key,
            value: r.value,
            headers: r.headers,
            ..ProducerRecord::default()
        })
    }
}

struct KafkaSinkWriter {
    sink: Option<TwoPhaseCommitSink>,
    routes: Routes,
    commit_latency_ms: Arc<Histogram>,
    latencies_seen: usize,
}

impl KafkaSinkWriter {
    fn sink(&mut self) -> &mut TwoPhaseCommitSink {
        self.sink.as_mut().expect("sink used after close")
    }

    fn record_latencies(&mut self) {
        let Some(sink) = self.sink.as_ref() else {
            return;
        };
        let m = sink.metrics();
        // The sink keeps its most recent latencies; take the ones not seen yet.
        let total = m.commits as usize;
        let new = total
            .saturating_sub(self.latencies_seen)
            .min(m.commit_latency_us.len());
        for us in &m.commit_latency_us[m.commit_latency_us.len() - new..] {
            self.commit_latency_ms.observe(*us as f64 / 1e3);
        }
        self.latencies_seen = total;
    }
}

impl SinkWriter for KafkaSinkWriter {
    fn write<'a>(
        &'a mut self,
        records: &'a mut Vec<OutputRecord>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            for r in records.drain(..) {
                if let Some(record) = self.routes.record(r) {
                    self.sink().send(record).await?;
                }
            }
            Ok(())
        })
    }

    fn prepare(
        &mut self,
        checkpoint_id: u64,
    ) -> BoxFuture<'_, Result<serde_json::Value, RuntimeError>> {
        Box::pin(async move {
            self.sink().poll_commits()?;
            let committables = self.sink().prepare(checkpoint_id).await?;
            Ok(serde_json::to_value(&committables).expect("committables serialize"))
        })
    }

    fn commit_up_to(&mut self, checkpoint_id: u64) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.sink().poll_commits()?;
            self.record_latencies();
            self.sink().commit_up_to(checkpoint_id)?;
            Ok(())
        })
    }

    fn flush_commits(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.sink().wait_for_commits().await?;
            self.record_latencies();
            Ok(())
        })
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, Result<(), RuntimeError>> {
        Box::pin(async move {
            if let Some(sink) = self.sink.take() {
                sink.close(CloseMode::Graceful).await?;
            }
            Ok(())
        })
    }

    fn writable(&self) -> bool {
        self.sink
            .as_ref()
            .is_some_and(TwoPhaseCommitSink::is_writable)
    }
}

/// The at-least-once writer: one idempotent producer (`acks=all`, batched as the producer
/// batches), no transactions. The delivery futures are not kept: a record that fails stops the
/// producer, and the next flush reports it (the job then fails rather than lose it).
struct AtLeastOnceWriter {
    producer: Option<Producer>,
    routes: Routes,
}

impl AtLeastOnceWriter {
    fn producer(&self) -> &Producer {
        self.producer.as_ref().expect("writer used after close")
    }

    async fn flush(&self) -> Result<(), RuntimeError> {
        self.producer().flush().await.map_err(RuntimeError::Client)
    }
}

impl SinkWriter for AtLeastOnceWriter {
    fn write<'a>(
        &'a mut self,
        records: &'a mut Vec<OutputRecord>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            for r in records.drain(..) {
                if let Some(record) = self.routes.record(r) {
                    // Only waits for buffer space; the acknowledgement is checked on flush.
                    let _delivery = self
                        .producer()
                        .send(record)
                        .await
                        .map_err(RuntimeError::Client)?;
                }
            }
            Ok(())
        })
    }

    /// On a barrier (if the job checkpoints): everything before it acknowledged, as Flink's
    /// at-least-once sink flushes on checkpoints. Nothing to store.
    fn prepare(
        &mut self,
        _checkpoint_id: u64,
    ) -> BoxFuture<'_, Result<serde_json::Value, RuntimeError>> {
        Box::pin(async move {
            self.flush().await?;
            Ok(serde_json::Value::Null)
        })
    }

    fn commit_up_to(&mut self, _checkpoint_id: u64) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }

    fn flush_commits(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(self.flush())
    }

    /// Flushes (every record written acknowledged) and drops the producer.
    fn close(mut self: Box<Self>) -> BoxFuture<'static, Result<(), RuntimeError>> {
        Box::pin(async move {
            if let Some(producer) = self.producer.take() {
                producer.flush().await.map_err(RuntimeError::Client)?;
            }
            Ok(())
        })
    }
}
