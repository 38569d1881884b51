//! The `exactly` command line: jobs and the everyday Kafka tools (topics, produce, consume).
//!
//! This is the only place `anyhow` is used: errors from the library are typed, and here they
//! become messages for a person, with a non-zero exit status.

mod cards;
mod config;
mod consume;
mod demo;
mod gen;
mod produce;
mod prometheus;
mod run;
mod security;
mod topics;
mod txn;
mod verify;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use exactly::client::types::{SecurityConfig, SecurityProtocol};
use exactly::client::{Client, ClientConfig};

/// End-to-end exactly-once stream processing on Kafka.
#[derive(Debug, Parser)]
#[command(name = "exactly", version, about)]
struct Cli {
    /// Bootstrap brokers, comma-separated host:port pairs [env: EXACTLY_BROKERS]
    /// [default: 127.0.0.1:9092].
    // The environment is read by hand, not by clap: `exactly run` must tell a flag from a
    // variable (its configuration errors say where a value came from).
    #[arg(long, global = true, value_name = "HOST:PORT,...")]
    brokers: Option<String>,

    /// Log format on stderr: `text` for people, `json` (one object a line) for log pipelines.
    /// The level comes from EXACTLY_LOG (e.g. `info`, `exactly=debug`; default `warn`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// How long to keep retrying to reach the brokers, in ms.
    #[arg(long, global = true, default_value_t = 15_000)]
    connect_deadline_ms: u64,

    /// TLS and SASL: `-X key=value` and the named flags (see `security.rs`).
    #[command(flatten)]
    security: security::SecurityArgs,

    #[command(subcommand)]
    command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, delete and list topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Produce records: one line of input is one record.
    Produce(produce::ProduceArgs),
    /// Consume records and print them.
    Consume(consume::ConsumeArgs),
    /// Transactions: list, abort lingering ones; prepare, commit or abort from a stored
    /// identity; describe.
    #[command(subcommand)]
    Txn(txn::TxnCommand),
    /// Run the card-fraud job (exactly once, from Kafka to Kafka).
    Run(Box<run::RunArgs>),
    /// Write synthetic card transactions (deterministic for a seed and start time).
    Gen(gen::GenArgs),
    /// Check the fraud job's output against its input (exit 1 on any discrepancy).
    Verify(verify::VerifyArgs),
    /// The quick start: starts a local Kafka if none runs, generates card transactions, runs
    /// the fraud job while killing it with SIGKILL and restarting it, then verifies the alerts.
    Demo(demo::DemoArgs),
}

/// Logs through `tracing` on stderr, at the level of `EXACTLY_LOG` (an `EnvFilter` directive;
/// `warn` when unset; a malformed one is reported and `warn` used).
fn init_logs(format: LogFormat) {
    let filter = match std::env::var("EXACTLY_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new("warn"),
        Ok(directives) => match tracing_subscriber::EnvFilter::try_new(&directives) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("exactly: ignoring EXACTLY_LOG={directives:?} ({e}); logging at warn");
                tracing_subscriber::EnvFilter::new("warn")
            }
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// When `main` started (wall clock): the start of `exactly run`'s startup figure
/// (`process_start_to_first_record_ms`). Taken first thing in `main`; what comes before it
/// (exec, the static binary's loader) is not counted — as the JVM's start time, which the Flink
/// peer uses, does not count the `java` launcher before the VM is created.
pub(crate) static PROCESS_START: std::sync::OnceLock<std::time::SystemTime> =
    std::sync::OnceLock::new();

fn main() -> std::process::ExitCode {
    PROCESS_START.get_or_init(std::time::SystemTime::now);
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Connects to `brokers` with `security`, retrying for `connect_deadline_ms`.
pub(crate) async fn connect(
    brokers: &str,
    connect_deadline_ms: u64,
    security: &SecurityConfig,
) -> anyhow::Result<Client> {
    let mut config = ClientConfig::new(brokers);
    config.retry.deadline_ms = connect_deadline_ms;
    config.connection.security = security.clone();
    let protocol = security.protocol;
    Client::connect(config).await.with_context(|| {
        if protocol == SecurityProtocol::Plaintext {
            format!("cannot reach Kafka at {brokers} (set --brokers or EXACTLY_BROKERS)")
        } else {
            format!("cannot connect to Kafka at {brokers} with security.protocol={protocol}")
        }
    })
}

/// The process environment, as far as it is UTF-8.
pub(crate) fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Run(args) = cli.command {
        // `run` takes its brokers from its layered configuration (file, environment, flag).
        return run::run(cli.brokers, cli.connect_deadline_ms, &cli.security, *args).await;
    }
    let security = security::resolve(None, &environment(), &cli.security)?;
    let brokers = cli
        .brokers
        .or_else(|| std::env::var("EXACTLY_BROKERS").ok())
        .unwrap_or_else(|| "127.0.0.1:9092".to_string());
    // The demo connects by itself: it may have to start the broker first.
    if let Command::Demo(args) = cli.command {
        if security.any_given {
            anyhow::bail!(
                "the demo runs against the local plaintext broker it starts; the security \
                 settings (flags, -X or EXACTLY_* variables) are for the other subcommands"
            );
        }
        return demo::run(&brokers, cli.connect_deadline_ms, args).await;
    }
    let client = connect(&brokers, cli.connect_deadline_ms, &security.config).await?;
    match cli.command {
        Command::Topics(cmd) => topics::run(client, cmd).await,
        Command::Produce(args) => produce::run(client, args).await,
        Command::Consume(args) => consume::run(client, args).await,
        Command::Demo(_) | Command::Run(_) => unreachable!("handled above"),
        Command::Txn(cmd) => txn::run(client, cmd).await,
        Command::Gen(args) => gen::run(client, args).await,
        Command::Verify(args) => verify::run(client, args).await,
    }
}
