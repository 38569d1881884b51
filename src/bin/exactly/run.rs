//! `exactly run`: the card-fraud job on the runtime, from a Kafka topic to a Kafka topic,
//! exactly once (checkpoints in `--checkpoint-dir`, two-phase-commit sink). Restarting it with
//! the same checkpoint directory and prefix resumes from the latest complete checkpoint.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use exactly::client::Client;
use exactly::jobs::fraud::{self, FraudConfig};
use exactly::runtime::kafka::{KafkaSink, KafkaSource};
use exactly::runtime::metrics::{Metric, Registry};
use exactly::runtime::sink::KafkaSinkConfig;
use exactly::runtime::source::KafkaSourceConfig;
use exactly::runtime::JobConfig;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Topic of card transactions (JSON: user_id, amount, card, ts).
    #[arg(long)]
    input: String,
    /// Topic the alerts go to.
    #[arg(long)]
    output: String,
    /// Topic for input records that are not card transactions (reason in a header).
    #[arg(long)]
    dead_letter: Option<String>,
    /// Directory of the checkpoints.
    #[arg(long)]
    checkpoint_dir: PathBuf,
    /// Checkpoint interval.
    #[arg(long, default_value_t = 1_000)]
    checkpoint_interval_ms: u64,
    /// A checkpoint not complete after this long is abandoned.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_timeout_ms: u64,
    /// Prefix of the sink's transactional ids (`<prefix>-<subtask>-<slot>`): one per job.
    #[arg(long, default_value = "exactly-fraud")]
    transactional_id_prefix: String,
    /// Subtasks per stage.
    #[arg(long, default_value_t = 1)]
    parallelism: usize,
    /// Window length.
    #[arg(long, default_value_t = 60_000)]
    window_ms: i64,
    /// Alert when a user has more transactions than this in a window.
    #[arg(long, default_value_t = 10)]
    threshold: u64,
    /// How far event time may go backwards within a partition.
    #[arg(long, default_value_t = 5_000)]
    out_of_orderness_ms: i64,
    /// A partition without records for this long is left out of the watermark.
    #[arg(long, default_value_t = 30_000)]
    idle_timeout_ms: u64,
    /// The sink's transaction timeout (above interval + checkpoint timeout).
    #[arg(long, default_value_t = 60_000)]
    transaction_timeout_ms: i32,
    /// Stop once the input offsets current at start are consumed: fire every window, take a
    /// final checkpoint, commit, exit 0.
    #[arg(long)]
    bounded: bool,
}

pub(crate) async fn run(client: Client, args: RunArgs) -> anyhow::Result<()> {
    let metrics = Registry::default();
    let mut config = JobConfig::new("fraud", &args.checkpoint_dir);
    config.parallelism = args.parallelism;
    config.bounded = args.bounded;
    config.checkpoint.interval_ms = args.checkpoint_interval_ms;
    config.checkpoint.timeout_ms = args.checkpoint_timeout_ms;
    config.metrics = metrics.clone();
    let mut source = KafkaSourceConfig::new([args.input.clone()]);
    source.bounded = args.bounded;
    let mut sink = KafkaSinkConfig::new(args.transactional_id_prefix.clone());
    sink.transaction_timeout_ms = args.transaction_timeout_ms;
    let mut kafka_sink = KafkaSink::new(client.clone(), sink, args.output.clone()).with_metrics(metrics.clone());
    if let Some(dlq) = &args.dead_letter {
        kafka_sink = kafka_sink.with_dead_letter_topic(dlq.clone());
    }
    let fraud_config = FraudConfig {
        window_ms: args.window_ms,
        threshold: args.threshold,
        out_of_orderness_ms: args.out_of_orderness_ms,
        idle_timeout_ms: args.idle_timeout_ms,
    };
    let job = fraud::build(config, fraud_config, KafkaSource::new(client, source), kafka_sink);
    let report = job.run().await.context("the fraud job failed")?;
    let mut line = serde_json::Map::new();
    line.insert("restored_from".into(), serde_json::json!(report.restored_from));
    line.insert("recovered_committed".into(), serde_json::json!(report.recovery.committed));
    line.insert("recovered_already_committed".into(), serde_json::json!(report.recovery.already_committed));
    line.insert("lingering_aborted".into(), serde_json::json!(report.recovery.aborted_lingering));
    line.insert("checkpoints".into(), serde_json::json!(report.checkpoints));
    for (name, _, metric) in metrics.all() {
        match metric {
            Metric::Counter(c) => {
                line.insert(name, serde_json::json!(c.get()));
            }
            Metric::Gauge(g) => {
                line.insert(name, serde_json::json!(g.get()));
            }
            Metric::Histogram(h) => {
                for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
                    line.insert(format!("{name}_{label}"), serde_json::json!(h.quantile(q)));
                }
            }
        }
    }
    println!("{}", serde_json::Value::Object(line));
    Ok(())
}
