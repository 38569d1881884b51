//! How a transaction ended, read from the partition logs.
//!
//! A transactional id outlives its transactions: after one ends, the next one of the same id
//! may already be open, at the same producer epoch under transactions version 1 or a later one
//! under version 2 (KIP-890 bumps the epoch on every EndTxn). So the coordinator's *current*
//! state cannot say how an *earlier* transaction ended. The partition logs can: when a
//! transaction ends, the coordinator writes a control batch (the transaction marker, KIP-98,
//! <https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging>)
//! with the producer id and a COMMIT or ABORT record to every partition the transaction wrote
//! to, and only then lets the next transaction of that producer write there.
//!
//! Hence the rule this module applies, per partition: starting at the offset of a batch the
//! transaction wrote, the first control batch of the same producer id is that transaction's
//! marker. Its epoch is the transaction's (ended by EndTxn under version 1) or higher: one more
//! when EndTxn v5 ended it (version 2: the marker carries the epoch EndTxn bumped to) and when the
//! coordinator aborted it on timeout (it fences the epoch first; seen on Kafka 4.1.1: data at
//! epoch 0, ABORT marker at epoch 1). The rule does not depend on the exact epoch, only on the
//! order in the log; an epoch below the transaction's means the log is not what we think.
//!
//! The batch at the recorded offset must be the transaction's own (same producer id and epoch,
//! transactional): if it is not, the log was truncated, compacted or deleted and recreated, and
//! the log cannot tell ([`LogEvidence::Unknown`]) — we never take another transaction's marker
//! for ours.

use bytes::Bytes;
use tokio::time::Instant;

use crate::protocol::error_codes::codes;
use crate::protocol::messages::kstr;
use crate::protocol::messages::messages::fetch_request::{FetchPartition, FetchTopic};
use crate::protocol::messages::messages::{BrokerId, FetchRequest, TopicName};
use crate::protocol::record_batch::{decode_batches, BatchHeader, ControlRecordType};
use crate::protocol::ProtocolError;

use super::super::admin::Isolation;
use super::super::{Client, ClientError};

/// How a transaction ended, as its marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkerKind {
    /// A COMMIT marker.
    Commit,
    /// An ABORT marker.
    Abort,
}

/// What one partition's log says about a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogEvidence {
    /// The transaction's marker was found.
    Ended {
        /// Commit or abort.
        kind: MarkerKind,
        /// The marker's offset.
        offset: i64,
        /// The marker's producer epoch.
        epoch: i16,
    },
    /// The transaction's batch is in the log and no marker of it up to the high watermark: the
    /// transaction has not ended (or its markers are being written).
    Open {
        /// Where the search stopped (the high watermark): a later search resumes there.
        next_offset: i64,
    },
    /// The log cannot tell; the reason says why.
    Unknown {
        /// Why (batch gone, not ours, marker emptied by the cleaner, ...).
        reason: String,
    },
}

/// The transaction being looked for in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MarkerSearch {
    /// The transaction's producer id.
    pub producer_id: i64,
    /// The epoch its batches were written with.
    pub producer_epoch: i16,
    /// The base offset of one batch it wrote (its last, to search as little as possible).
    pub batch_offset: i64,
}

/// Where a search stands after the batches seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// No verdict yet; fetch on from this offset.
    Continue {
        /// The next offset to fetch.
        next_offset: i64,
    },
    /// The verdict.
    Done(LogEvidence),
}

impl MarkerSearch {
    /// Looks at fetched batches, in offset order, starting with the one holding `from` (the
    /// offset that was fetched). `control` gives a control batch's type; it is only called for
    /// control batches of our producer (those of other producers may be anything, even empty).
    /// Pure: the unit tests drive it with headers.
    pub(crate) fn step<I, C>(&self, from: i64, batches: I) -> Result<Step, ProtocolError>
    where
        I: IntoIterator<Item = Result<(BatchHeader, C), ProtocolError>>,
        C: FnOnce() -> Result<Option<ControlRecordType>, ProtocolError>,
    {
        let mut next_offset = from;
        // The fetch at the transaction's batch must start with that very batch.
        let mut check_first = from == self.batch_offset;
        for batch in batches {
            let (header, control) = batch?;
            // A fetch starts with the batch holding `from`, which may begin earlier.
            if header.last_offset() < from {
                continue;
            }
            next_offset = next_offset.max(header.last_offset().saturating_add(1));
            if check_first {
                check_first = false;
                if let Some(reason) = self.not_ours(&header) {
                    return Ok(Step::Done(LogEvidence::Unknown { reason }));
                }
                continue;
            }
            if header.producer_id != self.producer_id {
                continue;
            }
            if !header.is_control {
                // More data of our producer before any marker: only our own transaction's
                // (a batch whose offset we did not learn). A later transaction's data cannot
                // come before our marker.
                if header.is_transactional && header.producer_epoch == self.producer_epoch {
                    continue;
                }
                return Ok(Step::Done(LogEvidence::Unknown {
                    reason: format!(
                        "a batch of producer {} epoch {} at offset {} precedes any marker",
                        header.producer_id, header.producer_epoch, header.base_offset
                    ),
                }));
            }
            if header.producer_epoch < self.producer_epoch {
                return Ok(Step::Done(LogEvidence::Unknown {
                    reason: format!(
                        "the marker at offset {} has epoch {}, older than the transaction's {}",
                        header.base_offset, header.producer_epoch, self.producer_epoch
                    ),
                }));
            }
            let kind = match control() {
                Ok(Some(ControlRecordType::Commit)) => MarkerKind::Commit,
                Ok(Some(ControlRecordType::Abort)) => MarkerKind::Abort,
                Ok(other) => {
                    return Ok(Step::Done(LogEvidence::Unknown {
                        reason: format!(
                        "the control batch at offset {} is not a transaction marker ({other:?})",
                        header.base_offset
                    ),
                    }))
                }
                // The log cleaner keeps a marker's batch but may empty it (KIP-98): the batch
                // is ours, its verdict is gone.
                Err(e) => {
                    return Ok(Step::Done(LogEvidence::Unknown {
                        reason: format!(
                            "the marker at offset {} cannot be read ({e})",
                            header.base_offset
                        ),
                    }))
                }
            };
            return Ok(Step::Done(LogEvidence::Ended {
                kind,
                offset: header.base_offset,
                epoch: header.producer_epoch,
            }));
        }
        Ok(Step::Continue { next_offset })
    }

    fn not_ours(&self, header: &BatchHeader) -> Option<String> {
        if header.base_offset > self.batch_offset {
            return Some(format!(
                "the batch at offset {} is gone (the log goes on at {}): compacted, truncated or \
                 recreated",
                self.batch_offset, header.base_offset
            ));
        }
        let ours = header.base_offset == self.batch_offset
            && header.producer_id == self.producer_id
            && header.producer_epoch == self.producer_epoch
            && header.is_transactional
            && !header.is_control;
        (!ours).then(|| {
            format!(
                "offset {} holds a batch of producer {} epoch {} at base offset {}, not this \
                 transaction's (producer {} epoch {}): the log was truncated, compacted or recreated",
                self.batch_offset,
                header.producer_id,
                header.producer_epoch,
                header.base_offset,
                self.producer_id,
                self.producer_epoch
            )
        })
    }
}

/// Fetch sizes for the search: the marker usually follows within a few batches.
const FETCH_PARTITION_BYTES: i32 = 1024 * 1024;
const DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Reads `topic`/`partition` (read_uncommitted, so that the markers and the open transaction's
/// batches are visible) from `start` up to the high watermark, looking for the transaction's
/// marker. `start` is the transaction's batch offset, or where an earlier search that found the
/// transaction open stopped. An offset no longer in the log, or a topic that no longer exists, is
/// [`LogEvidence::Unknown`]; so is a search that does not finish before `deadline`. Other
/// failures (no leader, disconnects past the client's retries) are errors.
///
/// # Cancel safety
/// Cancel safe: fetching has no side effects.
pub(crate) async fn find_marker(
    client: &Client,
    topic: &str,
    partition: i32,
    search: MarkerSearch,
    start: i64,
    deadline: Instant,
) -> Result<LogEvidence, ClientError> {
    let mut offset = start;
    loop {
        let fetched = tokio::time::timeout_at(
            deadline,
            client.with_retries(topic, || fetch_raw(client, topic, partition, offset)),
        )
        .await;
        let fetched = match fetched {
            Err(_) => {
                return Ok(LogEvidence::Unknown {
                    reason: format!(
                        "the search did not reach a marker before the deadline (at offset {offset})"
                    ),
                })
            }
            Ok(Err(ClientError::OffsetOutOfRange { .. })) => {
                return Ok(LogEvidence::Unknown {
                    reason: format!(
                        "offset {offset} is no longer in the log (retention or deletion)"
                    ),
                })
            }
            Ok(Err(ClientError::UnknownTopic { .. } | ClientError::UnknownPartition { .. })) => {
                return Ok(LogEvidence::Unknown {
                    reason: "the partition no longer exists".into(),
                })
            }
            Ok(Err(ClientError::Broker { code, .. }))
                if code.code == codes::UNKNOWN_TOPIC_OR_PARTITION =>
            {
                return Ok(LogEvidence::Unknown {
                    reason: "the partition no longer exists".into(),
                })
            }
            Ok(result) => result?,
        };
        let batches = decode_batches(fetched.records, DECOMPRESSED_BYTES_MAX).map(|b| {
            b.map(|batch| {
                let header = batch.header;
                (header, move || batch.control_type())
            })
        });
        let step = search
            .step(offset, batches)
            .map_err(|source| ClientError::CorruptData {
                topic: topic.to_owned(),
                partition,
                offset,
                source,
            })?;
        match step {
            Step::Done(evidence) => return Ok(evidence),
            Step::Continue { next_offset } if next_offset >= fetched.high_watermark => {
                if offset == search.batch_offset && next_offset == offset {
                    // Nothing at all at our offset: the log was truncated below it.
                    return Ok(LogEvidence::Unknown {
                        reason: format!(
                            "offset {offset} is at or past the high watermark {}: the log was \
                             truncated or recreated",
                            fetched.high_watermark
                        ),
                    });
                }
                return Ok(LogEvidence::Open { next_offset });
            }
            Step::Continue { next_offset } if next_offset == offset => {
                // No whole batch came back below the high watermark (one larger than the fetch
                // size would still be sent whole, KIP-74): do not spin.
                return Ok(LogEvidence::Unknown {
                    reason: format!("no batch could be read at offset {offset}"),
                });
            }
            Step::Continue { next_offset } => offset = next_offset,
        }
    }
}

struct RawPartition {
    records: Bytes,
    high_watermark: i64,
}

async fn fetch_raw(
    client: &Client,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<RawPartition, ClientError> {
    let leader = client.leader(topic, partition).await?;
    let conn = client.broker(leader).await?;
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_PARTITION_BYTES)
        .with_isolation_level(Isolation::ReadUncommitted.wire())
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(kstr(topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(FETCH_PARTITION_BYTES)])]);
    let response = conn.request(&request).await?;
    if response.error_code != 0 {
        return Err(ClientError::broker("Fetch", response.error_code).at(topic, Some(partition)));
    }
    let data = response
        .responses
        .into_iter()
        .flat_map(|t| t.partitions.into_iter())
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| {
            ClientError::broker("Fetch", codes::UNKNOWN_TOPIC_OR_PARTITION)
                .at(topic, Some(partition))
        })?;
    match data.error_code {
        0 => Ok(RawPartition {
            records: data.records.unwrap_or_default(),
            high_watermark: data.high_watermark,
        }),
        codes::OFFSET_OUT_OF_RANGE => Err(ClientError::OffsetOutOfRange {
            topic: topic.to_owned(),
            partition,
            offset,
        }),
        code => Err(ClientError::broker("Fetch", code).at(topic, Some(partition))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: i64 = 7;
    const EPOCH: i16 = 3;

    fn search() -> MarkerSearch {
        MarkerSearch {
            producer_id: PID,
            producer_epoch: EPOCH,
            batch_offset: 10,
        }
    }

    fn data(base: i64, count: i32, pid: i64, epoch: i16) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            last_offset_delta: count - 1,
            producer_id: pid,
            producer_epoch: epoch,
            is_transactional: pid >= 0,
            record_count: count,
            ..BatchHeader::default()
        }
    }

    fn marker(base: i64, pid: i64, epoch: i16) -> BatchHeader {
        BatchHeader {
            is_control: true,
            ..data(base, 1, pid, epoch)
        }
    }

    type Control = Box<dyn FnOnce() -> Result<Option<ControlRecordType>, ProtocolError>>;

    fn batch(
        header: BatchHeader,
        kind: Option<ControlRecordType>,
    ) -> Result<(BatchHeader, Control), ProtocolError> {
        let control: Control = Box::new(move || Ok(kind));
        Ok((header, control))
    }

    fn unreadable(header: BatchHeader) -> Result<(BatchHeader, Control), ProtocolError> {
        let control: Control = Box::new(|| {
            Err(ProtocolError::CorruptBatch {
                position: 0,
                what: "control batch without a record".into(),
            })
        });
        Ok((header, control))
    }

    fn reason(step: Step) -> String {
        match step {
            Step::Done(LogEvidence::Unknown { reason }) => reason,
            other => panic!("expected Unknown, got {other:?}"),
        }
    }

    #[test]
    fn the_first_marker_of_our_producer_after_our_batch_decides() {
        let commit = Some(ControlRecordType::Commit);
        let abort = Some(ControlRecordType::Abort);
        let batches = vec![
            batch(data(10, 5, PID, EPOCH), None),
            // Other producers' data and markers (even an abort) do not count.
            batch(data(15, 2, 9, 0), None),
            batch(marker(17, 9, 0), abort),
            // More of our own transaction's data, then our marker (version 2: bumped epoch).
            batch(data(18, 1, PID, EPOCH), None),
            batch(marker(19, PID, EPOCH + 1), commit),
            // The next transaction's abort must never be taken for ours.
            batch(data(20, 1, PID, EPOCH + 1), None),
            batch(marker(21, PID, EPOCH + 2), abort),
        ];
        assert_eq!(
            search().step(10, batches).unwrap(),
            Step::Done(LogEvidence::Ended {
                kind: MarkerKind::Commit,
                offset: 19,
                epoch: EPOCH + 1
            })
        );
    }

    #[test]
    fn no_marker_yet_continues_past_the_last_batch_seen() {
        let batches = vec![
            batch(data(10, 5, PID, EPOCH), None),
            batch(data(15, 2, -1, -1), None),
        ];
        assert_eq!(
            search().step(10, batches).unwrap(),
            Step::Continue { next_offset: 17 }
        );
        // A later fetch (not at our batch) skips a batch starting before the fetch offset.
        let batches = vec![
            batch(data(15, 5, 9, 0), None),
            batch(marker(20, PID, EPOCH), Some(ControlRecordType::Abort)),
        ];
        assert_eq!(
            search().step(17, batches).unwrap(),
            Step::Done(LogEvidence::Ended {
                kind: MarkerKind::Abort,
                offset: 20,
                epoch: EPOCH
            })
        );
    }

    #[test]
    fn a_batch_at_our_offset_that_is_not_ours_means_unknown() {
        // Recreated topic: offset 10 holds another producer's batch.
        let r = reason(
            search()
                .step(10, vec![batch(data(10, 1, 9, 0), None)])
                .unwrap(),
        );
        assert!(
            r.contains("not this transaction's (producer 7 epoch 3)"),
            "{r}"
        );
        // Same producer, other epoch (an earlier or later transaction).
        let r = reason(
            search()
                .step(10, vec![batch(data(8, 5, PID, EPOCH - 1), None)])
                .unwrap(),
        );
        assert!(r.contains("producer 7 epoch 2 at base offset 8"), "{r}");
        // Compacted away: the fetch starts at a later batch.
        let r = reason(
            search()
                .step(10, vec![batch(data(12, 1, PID, EPOCH), None)])
                .unwrap(),
        );
        assert!(r.contains("the batch at offset 10 is gone"), "{r}");
    }

    #[test]
    fn inconsistent_or_unreadable_markers_mean_unknown() {
        let ours = || batch(data(10, 1, PID, EPOCH), None);
        // A marker older than our epoch.
        let r = reason(
            search()
                .step(
                    10,
                    vec![
                        ours(),
                        batch(marker(11, PID, EPOCH - 1), Some(ControlRecordType::Commit)),
                    ],
                )
                .unwrap(),
        );
        assert!(r.contains("older than the transaction's 3"), "{r}");
        // Data of a later epoch before any marker.
        let r = reason(
            search()
                .step(10, vec![ours(), batch(data(11, 1, PID, EPOCH + 1), None)])
                .unwrap(),
        );
        assert!(r.contains("precedes any marker"), "{r}");
        // A marker emptied by the log cleaner.
        let r = reason(
            search()
                .step(10, vec![ours(), unreadable(marker(11, PID, EPOCH + 1))])
                .unwrap(),
        );
        assert!(r.contains("the marker at offset 11 cannot be read"), "{r}");
        // Another producer's unreadable control batch is not even looked at.
        assert_eq!(
            search()
                .step(10, vec![ours(), unreadable(marker(11, 9, 0))])
                .unwrap(),
            Step::Continue { next_offset: 12 }
        );
    }

    #[test]
    fn a_decoding_error_is_an_error() {
        let batches: Vec<Result<(BatchHeader, Control), ProtocolError>> =
            vec![Err(ProtocolError::CrcMismatch {
                stored: 1,
                computed: 2,
            })];
        assert!(matches!(
            search().step(10, batches),
            Err(ProtocolError::CrcMismatch { .. })
        ));
    }
}
