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
use exactly::runtime::{JobConfig, RuntimeError};

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
    /// How many times a failed job restarts from its latest checkpoint before giving up.
    #[arg(long, default_value_t = 10)]
    restarts: u32,
    /// Delay before a restart (jittered: half to all of it).
    #[arg(long, default_value_t = 2_000)]
    restart_delay_ms: u64,
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
    let fraud_config = FraudConfig {
        window_ms: args.window_ms,
        threshold: args.threshold,
        out_of_orderness_ms: args.out_of_orderness_ms,
        idle_timeout_ms: args.idle_timeout_ms,
    };
    let make_job = || {
        let mut kafka_sink = KafkaSink::new(client.clone(), sink.clone(), args.output.clone())
            .with_metrics(metrics.clone());
        if let Some(dlq) = &args.dead_letter {
            kafka_sink = kafka_sink.with_dead_letter_topic(dlq.clone());
        }
        fraud::build(
            config.clone(),
            fraud_config,
            KafkaSource::new(client.clone(), source.clone()),
            kafka_sink,
        )
    };
    // SIGTERM / SIGINT: a final checkpoint, its commit, the open transactions aborted, exit 0.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("exactly: stopping: final checkpoint, commit, then exit");
        let _ = stop_tx.send(true);
    });
    // A failed job restarts from its latest checkpoint (like Flink's fixed-delay restart
    // strategy), a bounded number of times; a configuration error does not.
    let mut restarts = 0u32;
    let report = loop {
        let mut rx = stop_rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        match make_job().run_until(stop).await {
            Ok(report) => break report,
            Err(e) => {
                let config_error = matches!(e, RuntimeError::Config { .. });
                if config_error || restarts >= args.restarts || *stop_rx.borrow() {
                    return Err(e).context("the fraud job failed");
                }
                restarts += 1;
                let delay_ms = args.restart_delay_ms / 2
                    + rand::Rng::random_range(&mut rand::rng(), 0..=args.restart_delay_ms / 2);
                eprintln!(
                    "exactly: the job failed: {e}; restart {restarts} of {} from the latest checkpoint in {delay_ms} ms",
                    args.restarts
                );
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            }
        }
    };
    let mut line = serde_json::Map::new();
    line.insert("restarts".into(), serde_json::json!(restarts));
    line.insert(
        "restored_from".into(),
        serde_json::json!(report.restored_from),
    );
    line.insert(
        "recovered_committed".into(),
        serde_json::json!(report.recovery.committed),
    );
    line.insert(
        "recovered_already_committed".into(),
        serde_json::json!(report.recovery.already_committed),
    );
    line.insert(
        "lingering_aborted".into(),
        serde_json::json!(report.recovery.aborted_lingering),
    );
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
