//! `exactly produce TOPIC`: one input line is one record.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::transaction::{TransactionConfig, TransactionalProducer};
use exactly::client::types::Compression;
use exactly::client::Client;

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// Destination topic.
    topic: String,
    /// Read lines from this file instead of standard input.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Split each line at the first occurrence of this character into key and value.
    #[arg(long, value_parser = parse_separator)]
    key_separator: Option<u8>,
    /// Send every record to this partition (default: by key, or round-robin).
    #[arg(long)]
    partition: Option<i32>,
    /// Compression codec: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// How long a batch waits for more records, in ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Write in transactions with this transactional id (exactly-once; read them with
    /// --isolation read_committed).
    #[arg(long)]
    transactional_id: Option<String>,
    /// Records per transaction (with --transactional-id).
    #[arg(long, default_value_t = 100, requires = "transactional_id")]
    txn_records: u64,
    /// Abort every K-th transaction instead of committing it (with --transactional-id).
    #[arg(long, requires = "transactional_id")]
    abort_every: Option<u64>,
}

fn parse_separator(s: &str) -> Result<u8, String> {
    match s.as_bytes() {
        [b] => Ok(*b),
        _ => Err(format!(
            "the key separator must be a single ASCII character, got {s:?}"
        )),
    }
}

pub(crate) async fn run(client: Client, args: ProduceArgs) -> anyhow::Result<()> {
    let config = ProducerConfig {
        compression: args.compression,
        linger_ms: args.linger_ms,
        ..ProducerConfig::default()
    };
    let mut rx = read_lines(&args)?;
    if let Some(id) = args.transactional_id.clone() {
        return run_transactional(client, &args, config, id, rx).await;
    }
    let producer = Producer::new(client, config)
        .await
        .context("cannot start the producer")?;
    let mut deliveries = Vec::new();
    let mut count = 0u64;
    while let Some(line) = rx.recv().await {
        let record = record_for(&args, line.context("cannot read input")?);
        deliveries.push(
            producer
                .send(record)
                .await
                .with_context(|| format!("cannot send record {count}"))?,
        );
        count += 1;
        // Check acknowledgements as we go so that memory stays bounded on long inputs.
        if deliveries.len() >= 10_000 {
            for d in deliveries.drain(..) {
                d.await.context("record not delivered")?;
            }
        }
    }
    producer.flush().await.context("flush failed")?;
    for d in deliveries {
        d.await.context("record not delivered")?;
    }
    eprintln!("produced {count} records to {}", args.topic);
    Ok(())
}

fn record_for(args: &ProduceArgs, line: Vec<u8>) -> ProducerRecord {
    let line = Bytes::from(line);
    let (key, value) = match args
        .key_separator
        .and_then(|sep| line.iter().position(|b| *b == sep))
    {
        Some(at) => (Some(line.slice(..at)), line.slice(at + 1..)),
        None => (None, line),
    };
    ProducerRecord {
        topic: args.topic.clone(),
        partition: args.partition,
        key,
        value: Some(value),
        ..ProducerRecord::default()
    }
}

/// Writes transactions of `--txn-records` lines, aborting every `--abort-every`-th, and prints
/// one JSON line per transaction saying which input lines it held and what became of it.
async fn run_transactional(
    client: Client,
    args: &ProduceArgs,
    config: ProducerConfig,
    transactional_id: String,
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
) -> anyhow::Result<()> {
    if args.txn_records == 0 {
        anyhow::bail!("--txn-records must be at least 1");
    }
    let txn_config = TransactionConfig {
        producer: config,
        ..TransactionConfig::new(transactional_id)
    };
    let producer = TransactionalProducer::init(client, txn_config)
        .await
        .context("cannot initialize the transactional producer")?;
    let mut line_no = 0u64;
    let mut txn = 0u64;
    let mut first_line: Option<u64> = None;
    loop {
        let line = match rx.recv().await {
            Some(line) => Some(line.context("cannot read input")?),
            None => None,
        };
        let at_end = line.is_none();
        if let Some(line) = line {
            if first_line.is_none() {
                producer.begin().await?;
                first_line = Some(line_no);
            }
            producer
                .send(record_for(args, line))
                .await
                .with_context(|| format!("cannot send line {line_no}"))?;
            line_no += 1;
        }
        if let Some(first) = first_line {
            if at_end || line_no - first >= args.txn_records {
                let abort = args
                    .abort_every
                    .is_some_and(|k| k > 0 && (txn + 1) % k == 0);
                let outcome = if abort {
                    producer.abort().await?
                } else {
                    producer.commit().await?
                };
                println!(
                    "{}",
                    serde_json::json!({
                        "transaction": txn,
                        "outcome": if abort { "aborted" } else { "committed" },
                        "first_line": first,
                        "last_line": line_no - 1,
                        "records": line_no - first,
                        "result": format!("{outcome:?}"),
                    })
                );
                txn += 1;
                first_line = None;
            }
        }
        if at_end {
            break;
        }
    }
    let m = producer.metrics().await;
    eprintln!(
        "{txn} transactions: {} committed, {} aborted ({line_no} lines)",
        m.commits, m.aborts
    );
    Ok(())
}

fn read_lines(
    args: &ProduceArgs,
) -> anyhow::Result<tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>> {
    let input: Box<dyn BufRead + Send> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    // Lines are read on a blocking thread and handed over through a bounded channel.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1024);
    tokio::task::spawn_blocking(move || {
        let mut input = input;
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Ok(rx)
}
