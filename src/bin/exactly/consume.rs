//! `exactly consume TOPIC`: print records as JSON lines or raw values.

use std::io::Write;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use exactly::client::fetcher::{FetchConfig, Fetcher};
use exactly::client::reader::PartitionReader;
use exactly::client::types::{Isolation, OffsetSpec, Record, TopicPartition};
use exactly::client::Client;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// One JSON object per record: partition, offset, timestamp, key, value, headers.
    Json,
    /// The raw value bytes, one record per line.
    Value,
}

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Where to start: beginning, end, or an offset.
    #[arg(long, default_value = "beginning")]
    from: String,
    /// read_committed (default) or read_uncommitted.
    #[arg(long, default_value = "read_committed")]
    isolation: Isolation,
    /// Stop after this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<i32>,
    /// Stop once every partition is read up to its end (high watermark, or last stable offset
    /// under read_committed) instead of waiting for more.
    #[arg(long)]
    exit_at_end: bool,
}

pub(crate) async fn run(client: Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let info = client
        .topic(&args.topic)
        .await
        .with_context(|| format!("cannot read topic {}", args.topic))?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) if (0..info.partitions.len() as i32).contains(&p) => vec![p],
        Some(p) => bail!(
            "topic {} has {} partitions; there is no partition {p}",
            args.topic,
            info.partitions.len()
        ),
        None => (0..info.partitions.len() as i32).collect(),
    };
    let start =
        match args.from.as_str() {
            "beginning" => OffsetSpec::Earliest,
            "end" => OffsetSpec::Latest,
            n => OffsetSpec::Offset(n.parse::<i64>().with_context(|| {
                format!("--from must be beginning, end or an offset, got {n:?}")
            })?),
        };
    let fetcher = Fetcher::new(
        client,
        FetchConfig {
            isolation: args.isolation,
            max_wait_ms: 200,
            ..FetchConfig::default()
        },
    );
    let mut readers = Vec::new();
    for &p in &partitions {
        let partition = TopicPartition::new(args.topic.as_str(), p);
        readers.push(PartitionReader::new(fetcher.clone(), partition, start).await?);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    loop {
        let mut all_at_end = true;
        for reader in &mut readers {
            for record in &reader.poll().await? {
                if printed >= limit {
                    break;
                }
                print_record(&mut out, args.format, reader.partition().partition, record)?;
                printed += 1;
            }
            all_at_end &= reader.at_end();
        }
        out.flush()?;
        if printed >= limit || (args.exit_at_end && all_at_end) {
            return Ok(());
        }
    }
}

fn print_record(
    out: &mut impl Write,
    format: Format,
    partition: i32,
    record: &Record,
) -> anyhow::Result<()> {
    match format {
        Format::Value => {
            out.write_all(record.value.as_deref().unwrap_or_default())?;
            out.write_all(b"\n")?;
        }
        Format::Json => {
            let bytes = |b: &Option<bytes::Bytes>| match b {
                None => serde_json::Value::Null,
                Some(b) => match std::str::from_utf8(b) {
                    Ok(s) => serde_json::Value::String(s.to_owned()),
                    Err(_) => serde_json::json!({ "base64": base64(b) }),
                },
            };
            let headers: Vec<serde_json::Value> = record
                .headers
                .iter()
                .map(|h| serde_json::json!({ "key": h.key, "value": bytes(&h.value) }))
                .collect();
            let line = serde_json::json!({
                "partition": partition,
                "offset": record.offset,
                "timestamp": record.timestamp,
                "key": bytes(&record.key),
                "value": bytes(&record.value),
                "headers": headers,
            });
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// Standard base64 with padding, for keys and values that are not UTF-8.
fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(&[0xff, 0xfe]), "//4=");
    }
}
