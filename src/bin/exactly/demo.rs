//! `exactly demo`: the quick-start job. Until the fraud-detection job lands, it is a produce and
//! read-back round trip that checks every record arrives exactly once.

use std::collections::BTreeSet;

use anyhow::{bail, Context as _};
use clap::Args;
use exactly::client::admin::Admin;
use exactly::client::fetcher::{FetchConfig, Fetcher};
use exactly::client::producer::{Producer, ProducerConfig, ProducerRecord};
use exactly::client::reader::PartitionReader;
use exactly::client::types::codes;
use exactly::client::types::{Isolation, OffsetSpec, TopicPartition};
use exactly::client::{Client, ClientError};

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Topic to use (created if missing).
    #[arg(long, default_value = "exactly-demo")]
    topic: String,
    /// Records to write.
    #[arg(long, default_value_t = 10_000)]
    records: u64,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

pub(crate) async fn run(client: Client, args: DemoArgs) -> anyhow::Result<()> {
    let admin = Admin::new(client.clone());
    match admin.create_topic(&args.topic, args.partitions, &[]).await {
        Ok(()) => {}
        Err(ClientError::Broker { code, .. }) if code.code == codes::TOPIC_ALREADY_EXISTS => {}
        Err(e) => return Err(e).context("cannot create the demo topic"),
    }
    let info = client.topic(&args.topic).await?;
    // Readers positioned at the end of each partition (read_committed) before this run writes.
    let fetcher = Fetcher::new(
        client.clone(),
        FetchConfig {
            isolation: Isolation::ReadCommitted,
            ..FetchConfig::default()
        },
    );
    let mut readers = Vec::new();
    for p in 0..info.partitions.len() as i32 {
        let partition = TopicPartition::new(args.topic.as_str(), p);
        readers.push(PartitionReader::new(fetcher.clone(), partition, OffsetSpec::Latest).await?);
    }
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
    let began = std::time::Instant::now();
    let mut deliveries = Vec::with_capacity(args.records as usize);
    for i in 0..args.records {
        let record = ProducerRecord::new(args.topic.clone(), format!("run-{run_id}-record-{i}"))
            .with_key(format!("user-{}", i % 100));
        deliveries.push(producer.send(record).await?);
    }
    producer.flush().await?;
    for d in deliveries {
        d.await.context("record not delivered")?;
    }
    let produce_s = began.elapsed().as_secs_f64();
    println!(
        "wrote {} records in {:.2}s ({:.0} records/s)",
        args.records,
        produce_s,
        args.records as f64 / produce_s
    );

    let prefix = format!("run-{run_id}-");
    let mut seen = BTreeSet::new();
    let mut duplicates = 0u64;
    for reader in &mut readers {
        for r in reader.read_to_end().await? {
            let value =
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
            if let Some(n) = value
                .strip_prefix(&prefix)
                .and_then(|s| s.strip_prefix("record-"))
            {
                if !seen.insert(n.parse::<u64>()?) {
                    duplicates += 1;
                }
            }
        }
    }
    println!(
        "read back {} distinct records, {} duplicates, {} missing",
        seen.len(),
        duplicates,
        args.records - seen.len() as u64
    );
    if duplicates > 0 || seen.len() as u64 != args.records {
        bail!("exactly-once check failed");
    }
    println!("ok: every record exactly once");
    Ok(())
}
