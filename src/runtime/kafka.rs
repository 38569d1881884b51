//! The Kafka source and the two-phase-commit Kafka sink as connectors of the job graph: the
//! glue between [`super::source::kafka`] / [`super::sink`] and the task loops
//! ([`super::connector`]).

use std::sync::Arc;

use super::connector::{BoxFuture, SourceFactory, SourceReader};
use super::source::{KafkaSourceConfig, KafkaSourceReader, SourcePoll, SourceRecord, SplitAssigner, SplitOffset, StaticAssigner};
use super::RuntimeError;
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
        Self { client, config, assigner: Arc::new(StaticAssigner) }
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
    ) -> BoxFuture<'_, Result<Box<dyn SourceReader>, RuntimeError>> {
        Box::pin(async move {
            let reader = KafkaSourceReader::open(
                self.client.clone(),
                self.config.clone(),
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
    fn poll<'a>(&'a mut self, out: &'a mut Vec<SourceRecord>) -> BoxFuture<'a, Result<SourcePoll, RuntimeError>> {
        Box::pin(KafkaSourceReader::poll(self, out))
    }
    fn split_count(&self) -> usize {
        self.splits().len()
    }
    fn positions(&self) -> Vec<SplitOffset> {
        KafkaSourceReader::positions(self)
    }
    fn checkpoint_complete(&mut self, positions: Vec<SplitOffset>) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move {
            // Lag monitoring only: a failed commit is logged, never fails the job.
            if let Err(e) = self.commit_to_group(&positions).await {
                tracing::warn!(error = %e, "committing checkpointed offsets to the lag group failed");
            }
            Ok(())
        })
    }
}
