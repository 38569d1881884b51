//! The `exactly` command line: jobs and the everyday Kafka tools (topics, produce, consume).
//!
//! This is the only place `anyhow` is used: errors from the library are typed, and here they
//! become messages for a person, with a non-zero exit status.

mod cards;
mod consume;
mod demo;
mod gen;
mod produce;
mod run;
mod topics;
mod txn;
mod verify;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use exactly::client::{Client, ClientConfig};

/// End-to-end exactly-once stream processing on Kafka.
#[derive(Debug, Parser)]
#[command(name = "exactly", version, about)]
struct Cli {
    /// Bootstrap brokers, comma-separated host:port pairs.
    #[arg(
        long,
        global = true,
        env = "EXACTLY_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,

    /// How long to keep retrying to reach the brokers, in ms.
    #[arg(long, global = true, default_value_t = 15_000)]
    connect_deadline_ms: u64,

    #[command(subcommand)]
    command: Command,
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
    Run(run::RunArgs),
    /// Write synthetic card transactions (deterministic for a seed and start time).
    Gen(gen::GenArgs),
    /// Check the fraud job's output against its input (exit 1 on any discrepancy).
    Verify(verify::VerifyArgs),
    /// The quick-start job: writes records and reads them back exactly once.
    Demo(demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EXACTLY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = ClientConfig::new(&cli.brokers);
    config.retry.deadline_ms = cli.connect_deadline_ms;
    let client = Client::connect(config).await.with_context(|| {
        format!(
            "cannot reach Kafka at {} (set --brokers or EXACTLY_BROKERS)",
            cli.brokers
        )
    })?;
    match cli.command {
        Command::Topics(cmd) => topics::run(client, cmd).await,
        Command::Produce(args) => produce::run(client, args).await,
        Command::Consume(args) => consume::run(client, args).await,
        Command::Demo(args) => demo::run(client, args).await,
        Command::Run(args) => run::run(client, args).await,
        Command::Txn(cmd) => txn::run(client, cmd).await,
        Command::Gen(args) => gen::run(client, args).await,
        Command::Verify(args) => verify::run(client, args).await,
    }
}
