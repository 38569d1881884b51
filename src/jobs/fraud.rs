//! Card fraud detection: JSON card transactions in, key by user, one-minute tumbling
//! event-time windows (aligned to the epoch), an alert when a user has more than `threshold`
//! transactions in a window, alerts out through the sink — Flink's fraud-detection walkthrough
//! as a windowed count, exactly once end to end.
//!
//! Input records that are not a card transaction go to the dead-letter output with the reason,
//! never dropped.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::runtime::connector::{SinkFactory, SourceFactory};
use crate::runtime::window::{Count, WindowResult, Windows};
use crate::runtime::{job, Job, JobConfig, WatermarkConfig};

/// One card transaction (the input's JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardTxn {
    /// The card holder.
    pub user_id: u64,
    /// The amount.
    pub amount: f64,
    /// The card.
    pub card: String,
    /// Event time, epoch ms.
    pub ts: i64,
}

/// One alert (the output's JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Alert {
    /// The card holder.
    pub user_id: u64,
    /// The window's first millisecond.
    pub window_start: i64,
    /// The first millisecond after the window.
    pub window_end: i64,
    /// Transactions in the window.
    pub count: u64,
}

/// The job's own settings.
#[derive(Debug, Clone, Copy)]
pub struct FraudConfig {
    /// Window length.
    pub window_ms: i64,
    /// Alert when a window holds more transactions than this.
    pub threshold: u64,
    /// How far event time may go backwards within a partition.
    pub out_of_orderness_ms: i64,
    /// A partition without records for this long is left out of the watermark.
    pub idle_timeout_ms: u64,
}

impl Default for FraudConfig {
    fn default() -> Self {
        Self {
            window_ms: 60_000,
            threshold: 10,
            out_of_orderness_ms: 5_000,
            idle_timeout_ms: 30_000,
        }
    }
}

/// Parses one input value.
pub fn parse(value: Option<&[u8]>) -> Result<CardTxn, String> {
    let value = value.ok_or_else(|| "record has no value".to_string())?;
    serde_json::from_slice(value).map_err(|e| format!("not a card transaction: {e}"))
}

/// The alert of one window result.
pub fn alert(r: &WindowResult<u64, u64>) -> Alert {
    Alert {
        user_id: r.key,
        window_start: r.window.start,
        window_end: r.window.end,
        count: r.result,
    }
}

/// The job from `source` to `sink`.
pub fn build(
    config: JobConfig,
    fraud: FraudConfig,
    source: impl SourceFactory,
    sink: impl SinkFactory,
) -> Job<u64, CardTxn, WindowResult<u64, u64>> {
    let threshold = fraud.threshold;
    job(config, source)
        .deserialize(|r| parse(r.record.value.as_deref()))
        .timestamps(
            |t: &CardTxn| t.ts,
            WatermarkConfig {
                out_of_orderness_ms: fraud.out_of_orderness_ms,
                idle_timeout_ms: Some(fraud.idle_timeout_ms as i64),
            },
        )
        .key_by(|t: &CardTxn| t.user_id)
        .window(Windows::tumbling(fraud.window_ms))
        .aggregate(Count)
        .filter(move |r| r.result > threshold)
        .sink(sink, |r| {
            let a = alert(r);
            (
                Some(Bytes::from(a.user_id.to_string())),
                Bytes::from(serde_json::to_vec(&a).expect("alert serialize")),
            )
        })
}

#[cfg(test)]
mod tests;
