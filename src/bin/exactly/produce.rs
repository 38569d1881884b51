//! `exactly produce TOPIC`: one input line is one record.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::Client;
use exactly::protocol::compression::Compression;

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
    let producer = Producer::new(client, config)
        .await
        .context("cannot start the producer")?;
    let input: Box<dyn BufRead + Send> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    // Lines are read on a blocking thread and handed over through a bounded channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1024);
    let reader = tokio::task::spawn_blocking(move || {
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
    let mut deliveries = Vec::new();
    let mut count = 0u64;
    while let Some(line) = rx.recv().await {
        let line = line.context("cannot read input")?;
        let line = Bytes::from(line);
        let (key, value) = match args
            .key_separator
            .and_then(|sep| line.iter().position(|b| *b == sep))
        {
            Some(at) => (Some(line.slice(..at)), line.slice(at + 1..)),
            None => (None, line),
        };
        let record = ProducerRecord {
            topic: args.topic.clone(),
            partition: args.partition,
            key,
            value: Some(value),
            ..ProducerRecord::default()
        };
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
    reader.await.context("input reader failed")?;
    producer.flush().await.context("flush failed")?;
    for d in deliveries {
        d.await.context("record not delivered")?;
    }
    eprintln!("produced {count} records to {}", args.topic);
    Ok(())
}
