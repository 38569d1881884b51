//! `exactly txn ...`: two-phase commit from the command line.
//!
//! `prepare` writes standard input as one transaction, flushes it, and stores the prepared
//! transaction's identity and the offsets of its last batches (JSON) in a file without
//! committing; `commit` and `abort` finish it from that file in any later process, without
//! InitProducerId (which would abort it). After the transactional id has moved on, they read
//! the transaction's outcome from its marker in those partitions: `AlreadyCommitted`,
//! `AlreadyAborted`, an error when it ended the other way, or an error saying the outcome is
//! unknown (nothing done) when the logs no longer hold it.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Subcommand;
use exactly::client::producer::ProducerRecord;
use exactly::client::transaction::{
    abort_prepared, commit_prepared, describe_transaction, PreparedTxn, TransactionConfig,
    TransactionalProducer,
};
use exactly::client::Client;

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
                })
            );
            Ok(())
        }
    }
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
