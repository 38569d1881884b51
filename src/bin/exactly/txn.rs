//! `exactly txn ...`: two-phase commit from the command line.
//!
//! `prepare` writes standard input as one transaction, flushes it, and stores the prepared
//! transaction's identity and the offsets of its last batches (JSON) in a file without
//! committing; `commit` and `abort` finish it from that file in any later process, without
//! InitProducerId (which would abort it). After the transactional id has moved on, they read
//! the transaction's outcome from its marker in those partitions: `AlreadyCommitted`,
//! `AlreadyAborted`, an error when it ended the other way, or an error saying the outcome is
//! unknown (nothing done) when the logs no longer hold it.
//!
//! `list` and `abort-lingering` are the operator's view of hanging transactions (KIP-664,
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-664%3A+Provide+tooling+to+detect+and+abort+hanging+transactions>):
//! an ongoing transaction whose producer is gone holds every `read_committed` reader of its
//! partitions at the last stable offset until the broker's transaction timeout.
//! `abort-lingering` fences such transactions with InitProducerId under their own id — the
//! coordinator then aborts them — and is a dry run unless `--execute` is given. A transaction
//! whose commit was decided in the meantime is not aborted: the coordinator answers
//! InitProducerId only once that commit is complete, and then merely bumps the epoch.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::bail;
use anyhow::Context as _;
use bytes::Bytes;
use clap::{Subcommand, ValueEnum};
use exactly::client::admin::Admin;
use exactly::client::producer::ProducerRecord;
use exactly::client::transaction::{
    abort_prepared, commit_prepared, describe_transaction, CoordinatorState, PreparedTxn,
    TransactionConfig, TransactionalProducer, TxnDescription,
};
use exactly::client::Client;

use crate::verify::Format;

#[derive(Debug, Subcommand)]
pub(crate) enum TxnCommand {
    /// Write standard input (one line, one record) as one transaction and prepare it: flushed,
    /// not committed. The prepared identity is written to --out.
    Prepare {
        /// Destination topic.
        topic: String,
        /// The transactional id.
        #[arg(long)]
        transactional_id: String,
        /// Where to store the prepared transaction (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Transaction timeout in ms (the broker aborts the transaction after it).
        #[arg(long, default_value_t = 60_000)]
        transaction_timeout_ms: i32,
        /// After preparing, wait until killed instead of exiting (for crash tests and demos).
        #[arg(long)]
        hold: bool,
    },
    /// Commit a prepared transaction stored in FILE.
    Commit {
        /// The file written by `txn prepare`.
        file: PathBuf,
    },
    /// Abort a prepared transaction stored in FILE.
    Abort {
        /// The file written by `txn prepare`.
        file: PathBuf,
    },
    /// Show the coordinator's state for a transactional id.
    Describe {
        /// The transactional id.
        transactional_id: String,
    },
    /// List the cluster's transactions (ListTransactions on every broker, DescribeTransactions
    /// for each: start time, timeout, partitions).
    List {
        /// Only transactional ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only transactions in this state (repeatable; default: all).
        #[arg(long = "state", value_enum)]
        states: Vec<StateArg>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Abort the ongoing transactions of a prefix that a crashed deployment left open (they
    /// hold read_committed readers at the last stable offset until the broker's timeout).
    /// A dry run unless --execute: says what it would abort. With --execute each is fenced
    /// with InitProducerId, which aborts it and bumps the id's epoch.
    ///
    /// Only for ids no live producer and no checkpoint will finish: a live producer with such
    /// an id is fenced (it fails), and a prepared transaction that a job's checkpoint would
    /// commit on restart is lost (the job's own restart already aborts the lingering
    /// transactions its checkpoint does not know).
    AbortLingering {
        /// Transactional ids starting with this (required: never the whole cluster).
        #[arg(long)]
        prefix: String,
        /// Only transactions open for at least this long.
        #[arg(long, default_value_t = 0)]
        older_than_ms: i64,
        /// Abort them (default: only say what would be aborted).
        #[arg(long)]
        execute: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

/// A coordinator state, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StateArg {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    PrepareEpochFence,
    Dead,
}

impl StateArg {
    fn state(self) -> CoordinatorState {
        match self {
            Self::Empty => CoordinatorState::Empty,
            Self::Ongoing => CoordinatorState::Ongoing,
            Self::PrepareCommit => CoordinatorState::PrepareCommit,
            Self::PrepareAbort => CoordinatorState::PrepareAbort,
            Self::CompleteCommit => CoordinatorState::CompleteCommit,
            Self::CompleteAbort => CoordinatorState::CompleteAbort,
            Self::PrepareEpochFence => CoordinatorState::PrepareEpochFence,
            Self::Dead => CoordinatorState::Dead,
        }
    }
}

/// One listed transaction with what DescribeTransactions adds.
struct Listed {
    transactional_id: String,
    coordinator: i32,
    /// The listed state and producer id (the description may fail for an expiring id).
    state: CoordinatorState,
    producer_id: i64,
    description: Option<TxnDescription>,
}

impl Listed {
    /// How long the open transaction has been open, in ms.
    fn age_ms(&self, now_ms: i64) -> Option<i64> {
        self.description
            .as_ref()
            .filter(|d| d.transaction_start_time_ms >= 0)
            .map(|d| now_ms - d.transaction_start_time_ms)
    }

    fn to_json(&self, now_ms: i64) -> serde_json::Value {
        let d = self.description.as_ref();
        serde_json::json!({
            "transactional_id": self.transactional_id,
            "state": self.state.as_str(),
            "producer_id": self.producer_id,
            "producer_epoch": d.map(|d| d.producer_epoch),
            "coordinator": self.coordinator,
            "start_time_ms": d.map(|d| d.transaction_start_time_ms).filter(|t| *t >= 0),
            "age_ms": self.age_ms(now_ms),
            "transaction_timeout_ms": d.map(|d| d.transaction_timeout_ms),
            "partitions": d.map(|d| d.partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>()).unwrap_or_default(),
        })
    }

    fn to_line(&self, now_ms: i64) -> String {
        let d = self.description.as_ref();
        let partitions = d
            .map(|d| {
                d.partitions
                    .iter()
                    .map(|(t, p)| format!("{t}/{p}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        format!(
            "{}\t{}\tproducer {} epoch {}\tcoordinator {}\topen {}\ttimeout {}\t{}",
            self.transactional_id,
            self.state,
            self.producer_id,
            d.map_or("?".into(), |d| d.producer_epoch.to_string()),
            self.coordinator,
            self.age_ms(now_ms)
                .map_or("-".into(), |a| format!("{:.1}s", a as f64 / 1e3)),
            d.map_or("?".into(), |d| format!("{}ms", d.transaction_timeout_ms)),
            if partitions.is_empty() {
                "-"
            } else {
                &partitions
            },
        )
    }
}

/// Lists the transactions in `states` whose id starts with `prefix`, each described.
async fn list(
    client: &Client,
    prefix: Option<&str>,
    states: &[CoordinatorState],
) -> anyhow::Result<Vec<Listed>> {
    let listed = Admin::new(client.clone())
        .list_transactions(states, |id| prefix.is_none_or(|p| id.starts_with(p)))
        .await
        .context("cannot list transactions (ListTransactions needs Kafka 3.0 or later)")?;
    let mut out = Vec::with_capacity(listed.len());
    for t in listed {
        // An id may expire or move on between the two calls: keep the listing, note no details.
        let description = describe_transaction(client, &t.transactional_id).await.ok();
        out.push(Listed {
            transactional_id: t.transactional_id,
            coordinator: t.coordinator,
            state: description.as_ref().map_or(t.state, |d| d.state.clone()),
            producer_id: description
                .as_ref()
                .map_or(t.producer_id, |d| d.producer_id),
            description,
        });
    }
    Ok(out)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const END_TXN_DEADLINE_MS: u64 = 30_000;

pub(crate) async fn run(client: Client, cmd: TxnCommand) -> anyhow::Result<()> {
    match cmd {
        TxnCommand::Prepare {
            topic,
            transactional_id,
            out,
            transaction_timeout_ms,
            hold,
        } => {
            let config = TransactionConfig {
                transaction_timeout_ms,
                ..TransactionConfig::new(transactional_id)
            };
            let producer = TransactionalProducer::init(client, config)
                .await
                .context("cannot initialize the transactional producer")?;
            producer.begin().await?;
            let mut count = 0u64;
            for line in std::io::stdin().lock().split(b'\n') {
                let line = line.context("cannot read standard input")?;
                producer
                    .send(ProducerRecord {
                        topic: topic.clone(),
                        value: Some(Bytes::from(line)),
                        ..ProducerRecord::default()
                    })
                    .await?;
                count += 1;
            }
            let prepared = producer.prepare().await.context("prepare failed")?;
            let json = serde_json::to_vec_pretty(&prepared)?;
            // Write then rename, so that a reader never sees half a file.
            let tmp = out.with_extension("tmp");
            std::fs::write(&tmp, &json)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "prepared {count} records (producer {}, epoch {}, {} partitions) in {}",
                prepared.producer_id,
                prepared.producer_epoch,
                prepared.partitions.len(),
                out.display()
            );
            if hold {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
            }
            Ok(())
        }
        TxnCommand::Commit { file } => {
            let prepared = read_prepared(&file)?;
            let outcome = commit_prepared(&client, &prepared, END_TXN_DEADLINE_MS)
                .await
                .context("commit failed")?;
            println!("{outcome:?}");
            Ok(())
        }
        TxnCommand::Abort { file } => {
            let prepared = read_prepared(&file)?;
            let outcome = abort_prepared(&client, &prepared, END_TXN_DEADLINE_MS)
                .await
                .context("abort failed")?;
            println!("{outcome:?}");
            Ok(())
        }
        TxnCommand::Describe { transactional_id } => {
            let d = describe_transaction(&client, &transactional_id).await?;
            println!(
                "{}",
                serde_json::json!({
                    "transactional_id": transactional_id,
                    "state": d.state,
                    "producer_id": d.producer_id,
                    "producer_epoch": d.producer_epoch,
                    "partitions": d.partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>(),
                    "transaction_start_time_ms": d.transaction_start_time_ms,
                    "transaction_timeout_ms": d.transaction_timeout_ms,
                })
            );
            Ok(())
        }
        TxnCommand::List {
            prefix,
            states,
            format,
        } => {
            let states: Vec<CoordinatorState> = states.into_iter().map(StateArg::state).collect();
            let listed = list(&client, prefix.as_deref(), &states).await?;
            let now = now_ms();
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({
                        "transactions": listed.iter().map(|t| t.to_json(now)).collect::<Vec<_>>(),
                    })
                ),
                Format::Text => {
                    for t in &listed {
                        println!("{}", t.to_line(now));
                    }
                    eprintln!("{} transactions", listed.len());
                }
            }
            Ok(())
        }
        TxnCommand::AbortLingering {
            prefix,
            older_than_ms,
            execute,
            format,
        } => abort_lingering(&client, &prefix, older_than_ms, execute, format).await,
    }
}

/// `txn abort-lingering`: the ongoing transactions of `prefix` open for at least
/// `older_than_ms`, fenced with InitProducerId when `execute`.
async fn abort_lingering(
    client: &Client,
    prefix: &str,
    older_than_ms: i64,
    execute: bool,
    format: Format,
) -> anyhow::Result<()> {
    if prefix.is_empty() {
        bail!("--prefix must not be empty: abort-lingering never acts on the whole cluster");
    }
    let now = now_ms();
    let candidates: Vec<Listed> = list(client, Some(prefix), &[CoordinatorState::Ongoing])
        .await?
        .into_iter()
        // Only what is still open, and old enough (an unknown start time only passes when no
        // minimum age is asked for).
        .filter(|t| t.state == CoordinatorState::Ongoing)
        .filter(|t| {
            t.age_ms(now)
                .map_or(older_than_ms <= 0, |age| age >= older_than_ms)
        })
        .collect();
    let mut results = Vec::new();
    let mut failures = 0usize;
    for t in &candidates {
        let mut line = t.to_json(now);
        if execute {
            // InitProducerId aborts the open transaction (and waits for the abort to finish:
            // the coordinator answers CONCURRENT_TRANSACTIONS until then, which is retried).
            // Keep the id's own timeout rather than imposing one.
            let timeout_ms = t
                .description
                .as_ref()
                .map(|d| d.transaction_timeout_ms)
                .filter(|ms| *ms > 0)
                .unwrap_or(60_000);
            let config = TransactionConfig {
                transaction_timeout_ms: timeout_ms,
                ..TransactionConfig::new(t.transactional_id.clone())
            };
            match TransactionalProducer::init(client.clone(), config).await {
                Ok(fenced) => {
                    let (pid, epoch) = fenced.producer_id().await;
                    line["result"] = serde_json::json!("aborted");
                    line["new_producer_epoch"] = serde_json::json!(epoch);
                    line["new_producer_id"] = serde_json::json!(pid);
                }
                Err(e) => {
                    failures += 1;
                    line["result"] = serde_json::json!("failed");
                    line["error"] = serde_json::json!(e.to_string());
                }
            }
        } else {
            line["result"] = serde_json::json!("would abort");
        }
        results.push(line);
    }
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({ "dry_run": !execute, "prefix": prefix, "transactions": results })
        ),
        Format::Text => {
            for (t, r) in candidates.iter().zip(&results) {
                let outcome = match r["result"].as_str() {
                    Some("failed") => format!("FAILED: {}", r["error"].as_str().unwrap_or("")),
                    Some("aborted") => format!("aborted (epoch now {})", r["new_producer_epoch"]),
                    _ => "would abort".to_owned(),
                };
                println!("{}\t{outcome}", t.to_line(now));
            }
            if execute {
                println!(
                    "{} ongoing transactions with prefix {prefix:?}: {} aborted, {failures} failed",
                    candidates.len(),
                    candidates.len() - failures
                );
            } else {
                println!(
                    "dry run: {} ongoing transactions with prefix {prefix:?} open for at least {older_than_ms} ms \
                     would be aborted; run again with --execute to abort them",
                    candidates.len()
                );
            }
        }
    }
    if failures > 0 {
        bail!("{failures} transactions could not be aborted");
    }
    Ok(())
}

fn read_prepared(file: &PathBuf) -> anyhow::Result<PreparedTxn> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a prepared transaction (JSON written by `exactly txn prepare`)",
            file.display()
        )
    })
}
