//! `exactly run`: the card-fraud job on the runtime, from a Kafka topic to a Kafka topic,
//! exactly once (checkpoints in `--checkpoint-dir`, two-phase-commit sink). Restarting it with
//! the same checkpoint directory and prefix resumes from the latest complete checkpoint.
//!
//! `--delivery-guarantee at-least-once` runs it without checkpoints and with an idempotent,
//! non-transactional producer (Flink's `DeliveryGuarantee.AT_LEAST_ONCE` without
//! checkpointing): what exactly-once costs is the difference between the two.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use exactly::client::Client;
use exactly::jobs::fraud::{self, FraudConfig};
use exactly::runtime::kafka::{KafkaSink, KafkaSource};
use exactly::runtime::metrics::{Metric, Registry};
use exactly::runtime::sink::{DeliveryGuarantee, KafkaSinkConfig};
use exactly::runtime::source::KafkaSourceConfig;
use exactly::runtime::{JobConfig, RuntimeError};

use crate::config::{self, RunSettings};
use crate::prometheus;

/// Flags of `exactly run`. The configuration keys are text here and typed by
/// [`config::merge`], which also reads the `--config` file and `EXACTLY_<KEY>` variables and
/// says which of them a rejected value came from.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// A TOML file of configuration keys (snake_case, e.g. `checkpoint_dir = "/var/lib/x"`);
    /// `EXACTLY_<KEY>` variables override it, flags override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Topic of card transactions (JSON: user_id, amount, card, ts). Required.
    #[arg(long, value_name = "TOPIC")]
    input: Option<String>,
    /// Topic the alerts go to. Required.
    #[arg(long, value_name = "TOPIC")]
    output: Option<String>,
    /// Topic for input records that are not card transactions (reason in a header).
    #[arg(long, value_name = "TOPIC")]
    dead_letter: Option<String>,
    /// Directory of the checkpoints. Required.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<String>,
    /// Checkpoint interval [default: 1000].
    #[arg(long, value_name = "MS")]
    checkpoint_interval_ms: Option<String>,
    /// A checkpoint not complete after this long is abandoned [default: 10000].
    #[arg(long, value_name = "MS")]
    checkpoint_timeout_ms: Option<String>,
    /// Prefix of the sink's transactional ids (`<prefix>-<subtask>-<slot>`): one per job
    /// [default: exactly-fraud].
    #[arg(long, value_name = "PREFIX")]
    transactional_id_prefix: Option<String>,
    /// Subtasks per stage [default: 1].
    #[arg(long, value_name = "N")]
    parallelism: Option<String>,
    /// Window length [default: 60000].
    #[arg(long, value_name = "MS")]
    window_ms: Option<String>,
    /// Alert when a user has more transactions than this in a window [default: 10].
    #[arg(long, value_name = "N")]
    threshold: Option<String>,
    /// How far event time may go backwards within a partition [default: 5000].
    #[arg(long, value_name = "MS")]
    out_of_orderness_ms: Option<String>,
    /// A partition without records for this long is left out of the watermark [default: 30000].
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<String>,
    /// The sink's transaction timeout, above interval + checkpoint timeout [default: 60000].
    #[arg(long, value_name = "MS")]
    transaction_timeout_ms: Option<String>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port, printed).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// How many times a failed job restarts from its latest checkpoint before giving up
    /// [default: 10].
    #[arg(long, value_name = "N")]
    restarts: Option<String>,
    /// Delay before a restart (jittered: half to all of it) [default: 2000].
    #[arg(long, value_name = "MS")]
    restart_delay_ms: Option<String>,
    /// Stop once the input offsets current at start are consumed: fire every window, take a
    /// final checkpoint, commit, exit 0.
    #[arg(long)]
    bounded: bool,
    /// `exactly-once` (checkpoints, transactions) or `at-least-once` (no checkpoints, an
    /// idempotent producer, flushed at the end; a restart reads the input again from the start)
    /// [default: exactly-once].
    #[arg(long, value_name = "GUARANTEE")]
    delivery_guarantee: Option<String>,
}

impl RunArgs {
    /// The configuration flags given, as `(key, value)`.
    fn flags(&self) -> Vec<(&'static str, String)> {
        [
            ("input", &self.input),
            ("output", &self.output),
            ("dead_letter", &self.dead_letter),
            ("checkpoint_dir", &self.checkpoint_dir),
            ("checkpoint_interval_ms", &self.checkpoint_interval_ms),
            ("checkpoint_timeout_ms", &self.checkpoint_timeout_ms),
            ("transactional_id_prefix", &self.transactional_id_prefix),
            ("parallelism", &self.parallelism),
            ("window_ms", &self.window_ms),
            ("threshold", &self.threshold),
            ("out_of_orderness_ms", &self.out_of_orderness_ms),
            ("idle_timeout_ms", &self.idle_timeout_ms),
            ("transaction_timeout_ms", &self.transaction_timeout_ms),
            ("metrics_addr", &self.metrics_addr),
            ("restarts", &self.restarts),
            ("restart_delay_ms", &self.restart_delay_ms),
            ("delivery_guarantee", &self.delivery_guarantee),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

/// Merges the configuration (defaults, `--config` file, environment, flags; `brokers` is the
/// global `--brokers` flag if given), connects, and runs the job.
pub(crate) async fn run(
    brokers_flag: Option<String>,
    connect_deadline_ms: u64,
    security_args: &crate::security::SecurityArgs,
    args: RunArgs,
) -> anyhow::Result<()> {
    let text = match &args.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?,
        ),
        None => None,
    };
    let path = args.config.as_ref().map(|p| p.display().to_string());
    let file = match (&path, &text) {
        (Some(path), Some(text)) => Some(config::ConfigFile { path, text }),
        _ => None,
    };
    let env = crate::environment();
    let mut flags = args.flags();
    if let Some(brokers) = brokers_flag {
        flags.push(("brokers", brokers));
    }
    // The [kafka] table of the same file, the environment and the global flags (TLS, SASL).
    // The job's own keys are reported first when both are wrong.
    let security = crate::security::resolve(file.as_ref(), &env, security_args);
    let settings = config::merge(file, &env, &flags)?;
    let security = security?.config;
    // `security` prints its secrets as `***`.
    tracing::info!(?settings, ?security, "configuration");
    let client = crate::connect(&settings.brokers, connect_deadline_ms, &security).await?;
    run_job(client, settings, args.bounded).await
}

async fn run_job(client: Client, args: RunSettings, bounded: bool) -> anyhow::Result<()> {
    check_topics(&client, &args).await?;
    let metrics = Registry::default();
    let metrics_server = match &args.metrics_addr {
        Some(addr) => {
            let (local, task) = prometheus::serve(addr, metrics.clone())
                .await
                .with_context(|| format!("cannot serve metrics on {addr} (metrics_addr)"))?;
            eprintln!("exactly: metrics at http://{local}/metrics");
            Some(task)
        }
        None => None,
    };
    let mut config = JobConfig::new("fraud", &args.checkpoint_dir);
    // At least once: no checkpoints at all (Flink's at-least-once sink without checkpointing);
    // the sink flushes at the end of a bounded run.
    config.checkpoint.enabled = args.delivery_guarantee == DeliveryGuarantee::ExactlyOnce;
    config.parallelism = args.parallelism;
    config.bounded = bounded;
    config.checkpoint.interval_ms = args.checkpoint_interval_ms;
    config.checkpoint.timeout_ms = args.checkpoint_timeout_ms;
    config.metrics = metrics.clone();
    let mut source = KafkaSourceConfig::new([args.input.clone()]);
    source.bounded = bounded;
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
            .with_delivery_guarantee(args.delivery_guarantee)
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
    let stopping = match args.delivery_guarantee {
        DeliveryGuarantee::AtLeastOnce => "exactly: stopping: the sink flushes, then exit",
        _ => "exactly: stopping: final checkpoint, commit, then exit",
    };
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
        eprintln!("{stopping}");
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
                let from = match args.delivery_guarantee {
                    DeliveryGuarantee::AtLeastOnce => "the start of the input (no checkpoints)",
                    _ => "the latest checkpoint",
                };
                eprintln!(
                    "exactly: the job failed: {e}; restart {restarts} of {} from {from} in {delay_ms} ms",
                    args.restarts
                );
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            }
        }
    };
    let ended = std::time::SystemTime::now();
    let mut line = serde_json::Map::new();
    // The figures the Flink comparison reads (benches/vs-flink): startup from the process
    // start (see `PROCESS_START`) to the first record read, and the whole run.
    let since_start_ms = |t: std::time::SystemTime| {
        let start = *crate::PROCESS_START.get_or_init(std::time::SystemTime::now);
        t.duration_since(start).map_or(0, |d| d.as_millis() as u64)
    };
    let first_record_ms = metrics
        .gauge("first_record_time_unix_ms", "")
        .get()
        .try_into()
        .ok()
        .filter(|ms: &u64| *ms > 0)
        .map(|ms| since_start_ms(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)));
    line.insert(
        "delivery_guarantee".into(),
        serde_json::json!(args.delivery_guarantee.as_str()),
    );
    line.insert("parallelism".into(), serde_json::json!(args.parallelism));
    line.insert(
        "records_in".into(),
        serde_json::json!(metrics.counter("records_in_total", "").get()),
    );
    line.insert(
        "alerts".into(),
        serde_json::json!(metrics.counter("records_out_total", "").get()),
    );
    line.insert(
        "process_start_to_first_record_ms".into(),
        serde_json::json!(first_record_ms),
    );
    line.insert(
        "process_start_to_end_ms".into(),
        serde_json::json!(since_start_ms(ended)),
    );
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
    if let Some(task) = metrics_server {
        task.abort();
    }
    Ok(())
}

/// The topics the job reads and writes must exist before it starts: a missing one is a
/// configuration error (said once, naming the key), not a failure to restart from — the job
/// would otherwise fail in its sink and burn its restarts on it.
async fn check_topics(client: &Client, args: &RunSettings) -> anyhow::Result<()> {
    let topics = [
        ("input", Some(&args.input)),
        ("output", Some(&args.output)),
        ("dead_letter", args.dead_letter.as_ref()),
    ];
    for (key, topic) in topics {
        let Some(topic) = topic else { continue };
        match client.topic(topic).await {
            Ok(_) => {}
            Err(exactly::client::ClientError::UnknownTopic { .. }) => anyhow::bail!(
                "the {key} topic {topic:?} does not exist: create it first (e.g. `exactly topics \
                 create {topic} --partitions 4 --config retention.ms=-1`) or set `{key}` to an \
                 existing topic"
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot look up the {key} topic {topic:?}"))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use exactly::runtime::sink::DeliveryGuarantee;

    use crate::config::{merge, RunSettings};
    use crate::{Cli, Command};

    /// Every configuration key has its flag, and each flag reaches its key.
    #[test]
    fn every_key_has_a_flag() {
        let cli = Cli::try_parse_from([
            "exactly",
            "run",
            "--brokers",
            "k:1",
            "--input",
            "a",
            "--output",
            "b",
            "--dead-letter",
            "d",
            "--checkpoint-dir",
            "c",
            "--checkpoint-interval-ms",
            "2",
            "--checkpoint-timeout-ms",
            "3",
            "--transactional-id-prefix",
            "p",
            "--parallelism",
            "4",
            "--window-ms",
            "5",
            "--threshold",
            "6",
            "--out-of-orderness-ms",
            "7",
            "--idle-timeout-ms",
            "8",
            "--transaction-timeout-ms",
            "9",
            "--metrics-addr",
            "h:1",
            "--restarts",
            "11",
            "--restart-delay-ms",
            "12",
            "--delivery-guarantee",
            "at-least-once",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        let mut flags = args.flags();
        flags.push(("brokers", cli.brokers.unwrap()));
        assert_eq!(
            merge(None, &[], &flags).unwrap(),
            RunSettings {
                brokers: "k:1".into(),
                input: "a".into(),
                output: "b".into(),
                dead_letter: Some("d".into()),
                checkpoint_dir: "c".into(),
                checkpoint_interval_ms: 2,
                checkpoint_timeout_ms: 3,
                transactional_id_prefix: "p".into(),
                parallelism: 4,
                window_ms: 5,
                threshold: 6,
                out_of_orderness_ms: 7,
                idle_timeout_ms: 8,
                transaction_timeout_ms: 9,
                metrics_addr: Some("h:1".into()),
                restarts: 11,
                restart_delay_ms: 12,
                delivery_guarantee: DeliveryGuarantee::AtLeastOnce,
            }
        );
    }
}
