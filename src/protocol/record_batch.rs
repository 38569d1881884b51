//! The v2 record batch (magic 2), which Produce writes and Fetch returns
//! (<https://kafka.apache.org/documentation/#recordbatch>, introduced with KIP-98 for
//! idempotence and transactions).
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32 |
//! attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records...
//! ```
//!
//! The CRC (crc32c) covers everything from `attributes` to the end, so the broker-assigned
//! `baseOffset` and `partitionLeaderEpoch` can change without re-checksumming.
//!
//! Encoding writes records straight into one buffer ([`RecordBatchBuilder`]). Decoding
//! ([`decode_batches`]) slices keys and values out of the fetched bytes without copying when the
//! batch is not compressed. Every length is checked against the bytes actually present: a corrupt
//! or hostile batch is an error, never a panic or a large allocation. A fetch response may end
//! with a partial batch (the broker cuts at `max_bytes`); that ends iteration without an error.

use bytes::{BufMut, Bytes, BytesMut};

use super::compression::{compress, decompress, Compression};
use super::varint::{get_varint, get_varlong, put_varint, put_varlong, varint_len, varlong_len};
use super::ProtocolError;

/// Bytes before the records: the fixed header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// `batchLength` counts the bytes after itself: the header from offset 12 on, plus records.
const LENGTH_OFFSET_BYTES: usize = 12;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const PRODUCER_ID_OFFSET: usize = 43;
/// The smallest possible record: one byte each for length, attributes, timestamp delta, offset
/// delta, key length, value length and header count.
const RECORD_BYTES_MIN: usize = 7;

/// How the batch's timestamps were set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// Set by the producer.
    #[default]
    CreateTime,
    /// Set by the broker on append.
    LogAppendTime,
}

/// A record header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordHeader {
    /// Header key (UTF-8).
    pub key: String,
    /// Header value, possibly null.
    pub value: Option<Bytes>,
}

/// One record, with its absolute offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Offset in the partition.
    pub offset: i64,
    /// Timestamp in ms since the epoch.
    pub timestamp: i64,
    /// Key, possibly null.
    pub key: Option<Bytes>,
    /// Value, possibly null.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<RecordHeader>,
}

/// The fixed fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Leader epoch of the broker that appended it.
    pub partition_leader_epoch: i32,
    /// Always 2 here.
    pub magic: i8,
    /// The stored crc32c.
    pub crc: u32,
    /// Compression codec.
    pub compression: Compression,
    /// Timestamp type.
    pub timestamp_type: TimestampType,
    /// Part of a transaction.
    pub is_transactional: bool,
    /// A control batch (transaction marker).
    pub is_control: bool,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Producer id (-1 for non-idempotent producers).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence of the first record.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: i32,
}

impl BatchHeader {
    /// Offset of the last record (also for batches whose records were compacted away).
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }
}

/// The producer fields a batch is stamped with when it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchProducerFields {
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence of the first record.
    pub base_sequence: i32,
    /// Whether the batch belongs to a transaction.
    pub is_transactional: bool,
}

/// Builds one batch, appending records straight into a buffer.
#[derive(Debug)]
pub struct RecordBatchBuilder {
    compression: Compression,
    records: BytesMut,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl RecordBatchBuilder {
    /// An empty batch.
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            records: BytesMut::new(),
            count: 0,
            base_timestamp: 0,
            max_timestamp: -1,
        }
    }

    /// Records appended so far.
    pub fn record_count(&self) -> i32 {
        self.count
    }

    /// The batch's size if built now, before compression.
    pub fn estimated_size_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.records.len()
    }

    /// Appends a record. The first record's timestamp becomes the batch's base timestamp.
    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RecordHeader],
    ) -> Result<(), ProtocolError> {
        let too_big = |what: &str| ProtocolError::CorruptBatch {
            position: self.records.len(),
            what: format!("{what} exceeds i32"),
        };
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        let timestamp_delta = timestamp.wrapping_sub(self.base_timestamp);
        let offset_delta = self.count;
        let len_of = |b: Option<&[u8]>| -> Result<i32, ProtocolError> {
            match b {
                None => Ok(-1),
                Some(b) => i32::try_from(b.len()).map_err(|_| too_big("field length")),
            }
        };
        let key_len = len_of(key)?;
        let value_len = len_of(value)?;
        let header_count = i32::try_from(headers.len()).map_err(|_| too_big("header count"))?;
        let mut body = 1 + varlong_len(timestamp_delta) + varint_len(offset_delta);
        body += varint_len(key_len) + key.map_or(0, <[u8]>::len);
        body += varint_len(value_len) + value.map_or(0, <[u8]>::len);
        body += varint_len(header_count);
        for h in headers {
            let k = i32::try_from(h.key.len()).map_err(|_| too_big("header key"))?;
            let v = len_of(h.value.as_deref())?;
            body += varint_len(k)
                + h.key.len()
                + varint_len(v)
                + h.value.as_ref().map_or(0, Bytes::len);
        }
        let body_len = i32::try_from(body).map_err(|_| too_big("record"))?;
        let buf = &mut self.records;
        buf.reserve(body + 5);
        put_varint(buf, body_len);
        buf.put_i8(0); // record attributes: unused
        put_varlong(buf, timestamp_delta);
        put_varint(buf, offset_delta);
        put_varint(buf, key_len);
        if let Some(key) = key {
            buf.extend_from_slice(key);
        }
        put_varint(buf, value_len);
        if let Some(value) = value {
            buf.extend_from_slice(value);
        }
        put_varint(buf, header_count);
        for h in headers {
            put_varint(buf, h.key.len() as i32);
            buf.extend_from_slice(h.key.as_bytes());
            match &h.value {
                None => put_varint(buf, -1),
                Some(v) => {
                    put_varint(buf, v.len() as i32);
                    buf.extend_from_slice(v);
                }
            }
        }
        self.count += 1;
        self.max_timestamp = self.max_timestamp.max(timestamp);
        Ok(())
    }

    /// Compresses the records if asked to, writes the header and the crc32c.
    pub fn build(self, fields: BatchProducerFields) -> Result<Bytes, ProtocolError> {
        let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + self.records.len());
        out.put_i64(0); // base offset: assigned by the broker
        out.put_i32(0); // batch length: patched below
        out.put_i32(-1); // partition leader epoch: set by the broker
        out.put_i8(2); // magic
        out.put_u32(0); // crc: patched below
        let mut attributes = i16::from(self.compression.id());
        if fields.is_transactional {
            attributes |= 1 << 4;
        }
        out.put_i16(attributes);
        out.put_i32(self.count.saturating_sub(1).max(0));
        out.put_i64(self.base_timestamp);
        out.put_i64(if self.count == 0 {
            self.base_timestamp
        } else {
            self.max_timestamp
        });
        out.put_i64(fields.producer_id);
        out.put_i16(fields.producer_epoch);
        out.put_i32(fields.base_sequence);
        out.put_i32(self.count);
        compress(self.compression, &self.records, &mut out)?;
        let length = out.len() - LENGTH_OFFSET_BYTES;
        let length = i32::try_from(length).map_err(|_| ProtocolError::CorruptBatch {
            position: 8,
            what: format!("batch of {length} bytes exceeds i32"),
        })?;
        out[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out.freeze())
    }
}

/// Rewrites a built batch's producer id, epoch and base sequence, and its CRC (used when a
/// producer's epoch is bumped and a batch must be sent again under the new one).
pub fn rewrite_producer_fields(
    batch: &mut BytesMut,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<(), ProtocolError> {
    if batch.len() < BATCH_HEADER_BYTES {
        return Err(ProtocolError::CorruptBatch {
            position: batch.len(),
            what: "batch shorter than its header".into(),
        });
    }
    batch[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_ID_OFFSET + 8..PRODUCER_ID_OFFSET + 10]
        .copy_from_slice(&producer_epoch.to_be_bytes());
    batch[PRODUCER_ID_OFFSET + 10..PRODUCER_ID_OFFSET + 14]
        .copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// A decoded batch: its header and its (decompressed) record bytes.
#[derive(Debug, Clone)]
pub struct RecordBatch {
    /// The fixed fields.
    pub header: BatchHeader,
    /// The records' bytes, decompressed; a slice of the input when not compressed.
    pub records: Bytes,
}

/// The kind of a control record (transaction marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRecordType {
    /// The transaction was aborted.
    Abort,
    /// The transaction was committed.
    Commit,
    /// Another control type (leader change, snapshot markers, ...).
    Other(i16),
}

impl RecordBatch {
    /// The records, with absolute offsets and timestamps.
    pub fn records(&self) -> RecordIter {
        RecordIter {
            batch: self.header,
            data: self.records.clone(),
            pos: 0,
            remaining: self.header.record_count,
            failed: false,
        }
    }

    /// For a control batch, the type of its (single) control record; `None` for a data batch and
    /// for a control batch without records.
    ///
    /// The log cleaner of a compacted topic removes a transaction marker once the transaction's
    /// data is gone and `delete.retention.ms` has passed, but keeps the batch, emptied, when it
    /// carries the producer's latest epoch (the producer state must survive a reload of the log).
    /// Such a batch is no marker: Kafka's Java consumer reads it as "no abort marker" and moves
    /// past it, and so do we.
    pub fn control_type(&self) -> Result<Option<ControlRecordType>, ProtocolError> {
        if !self.header.is_control {
            return Ok(None);
        }
        let Some(record) = self.records().next().transpose()? else {
            return Ok(None);
        };
        let key = record.key.unwrap_or_default();
        let Some(kind) = key.get(2..4) else {
            return Err(ProtocolError::CorruptBatch {
                position: 0,
                what: format!("control record key of {} bytes", key.len()),
            });
        };
        Ok(Some(match i16::from_be_bytes([kind[0], kind[1]]) {
            0 => ControlRecordType::Abort,
            1 => ControlRecordType::Commit,
            other => ControlRecordType::Other(other),
        }))
    }
}

/// Decodes the batches in `data` (a Fetch response's `records`), in order. No batch may
/// decompress to more than `decompressed_bytes_max` bytes; see
/// [`BatchIter::with_decompressed_budget`] for a limit on all of them together.
pub fn decode_batches(data: Bytes, decompressed_bytes_max: usize) -> BatchIter {
    BatchIter {
        data,
        pos: 0,
        decompressed_bytes_max,
        budget_bytes: usize::MAX,
        decompressed_bytes: 0,
        done: false,
    }
}

/// Iterator over the batches of a record set. See [`decode_batches`].
#[derive(Debug)]
pub struct BatchIter {
    data: Bytes,
    pos: usize,
    decompressed_bytes_max: usize,
    /// Decompressed bytes the remaining batches may produce together.
    budget_bytes: usize,
    /// Decompressed bytes produced so far.
    decompressed_bytes: usize,
    done: bool,
}

impl BatchIter {
    /// Limits the bytes all compressed batches together may decompress to (a per-batch limit
    /// alone lets a response of many small bombs through). A batch that would go over the budget
    /// ends iteration with [`ProtocolError::DecompressedBudgetExceeded`], before anything of it is
    /// returned; the batches before it are complete. Uncompressed batches are slices of `data`
    /// and do not count.
    pub fn with_decompressed_budget(mut self, budget_bytes: usize) -> Self {
        self.budget_bytes = budget_bytes;
        self
    }

    /// Bytes decompressed so far (to carry a budget over to the next record set).
    pub fn decompressed_bytes(&self) -> usize {
        self.decompressed_bytes
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchIter {
    fn decode_one(&mut self) -> Result<Option<RecordBatch>, ProtocolError> {
        let rest = &self.data[self.pos..];
        if rest.len() < LENGTH_OFFSET_BYTES + 5 {
            return Ok(None); // partial batch at the end of a fetch
        }
        let corrupt = |at: usize, what: String| ProtocolError::CorruptBatch {
            position: self.pos + at,
            what,
        };
        let length = be_i32(rest, 8);
        let body = usize::try_from(length)
            .ok()
            .filter(|l| *l >= BATCH_HEADER_BYTES - LENGTH_OFFSET_BYTES)
            .ok_or_else(|| {
                corrupt(
                    8,
                    format!("batch length {length} is smaller than a batch header"),
                )
            })?;
        let magic = rest[16] as i8;
        if magic != 2 {
            return Err(ProtocolError::UnsupportedMagic { magic });
        }
        let total = LENGTH_OFFSET_BYTES + body;
        if rest.len() < total {
            return Ok(None); // partial batch at the end of a fetch
        }
        let batch = &rest[..total];
        let stored = be_i32(batch, CRC_OFFSET) as u32;
        let computed = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
        // Under the fuzzing feature the CRC is not enforced, so the fuzzer can reach the record
        // decoding behind it; the CRC check itself is covered by unit tests.
        if stored != computed && !cfg!(feature = "fuzzing") {
            return Err(ProtocolError::CrcMismatch { stored, computed });
        }
        let attributes = be_i16(batch, ATTRIBUTES_OFFSET);
        let header = BatchHeader {
            base_offset: be_i64(batch, 0),
            partition_leader_epoch: be_i32(batch, 12),
            magic,
            crc: stored,
            compression: Compression::from_id((attributes & 0x7) as u8)?,
            timestamp_type: if attributes & (1 << 3) != 0 {
                TimestampType::LogAppendTime
            } else {
                TimestampType::CreateTime
            },
            is_transactional: attributes & (1 << 4) != 0,
            is_control: attributes & (1 << 5) != 0,
            last_offset_delta: be_i32(batch, 23),
            base_timestamp: be_i64(batch, 27),
            max_timestamp: be_i64(batch, 35),
            producer_id: be_i64(batch, PRODUCER_ID_OFFSET),
            producer_epoch: be_i16(batch, 51),
            base_sequence: be_i32(batch, 53),
            record_count: be_i32(batch, 57),
        };
        let start = self.pos + BATCH_HEADER_BYTES;
        let end = self.pos + total;
        let records = match header.compression {
            Compression::None => self.data.slice(start..end),
            codec => {
                let remaining = self.budget_bytes.saturating_sub(self.decompressed_bytes);
                if remaining < self.decompressed_bytes_max {
                    // The budget, not the batch limit, binds: say so when it is hit.
                    match decompress(codec, &self.data[start..end], remaining) {
                        Err(ProtocolError::DecompressedTooLarge { .. }) => {
                            return Err(ProtocolError::DecompressedBudgetExceeded {
                                base_offset: header.base_offset,
                                remaining,
                            })
                        }
                        other => other?,
                    }
                } else {
                    decompress(codec, &self.data[start..end], self.decompressed_bytes_max)?
                }
            }
        };
        let count = usize::try_from(header.record_count)
            .map_err(|_| corrupt(57, format!("negative record count {}", header.record_count)))?;
        if count > records.len() / RECORD_BYTES_MIN {
            return Err(corrupt(
                57,
                format!("record count {count} cannot fit in {} bytes", records.len()),
            ));
        }
        if header.compression != Compression::None {
            self.decompressed_bytes = self.decompressed_bytes.saturating_add(records.len());
        }
        self.pos += total;
        Ok(Some(RecordBatch { header, records }))
    }
}

impl Iterator for BatchIter {
    type Item = Result<RecordBatch, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.decode_one() {
            Ok(Some(batch)) => Some(Ok(batch)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Iterator over the records of one batch.
#[derive(Debug)]
pub struct RecordIter {
    batch: BatchHeader,
    data: Bytes,
    pos: usize,
    remaining: i32,
    failed: bool,
}

impl RecordIter {
    fn corrupt(&self, what: String) -> ProtocolError {
        ProtocolError::CorruptBatch {
            position: self.pos,
            what,
        }
    }

    fn bytes(&mut self, end: usize, what: &str) -> Result<Option<Bytes>, ProtocolError> {
        let len = get_varint(&self.data[..end], &mut self.pos, what)?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        let stop = self
            .pos
            .checked_add(len)
            .filter(|s| *s <= end)
            .ok_or_else(|| self.corrupt(format!("{what} of {len} bytes runs past the record")))?;
        let out = self.data.slice(self.pos..stop);
        self.pos = stop;
        Ok(Some(out))
    }

    fn decode_one(&mut self) -> Result<Record, ProtocolError> {
        let length = get_varint(&self.data, &mut self.pos, "record length")?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| self.pos.checked_add(l))
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| self.corrupt(format!("record length {length} runs past the batch")))?;
        if self.pos >= end {
            return Err(self.corrupt("empty record".into()));
        }
        self.pos += 1; // attributes
        let timestamp_delta = get_varlong(&self.data[..end], &mut self.pos, "timestamp delta")?;
        let offset_delta = get_varint(&self.data[..end], &mut self.pos, "offset delta")?;
        let key = self.bytes(end, "key")?;
        let value = self.bytes(end, "value")?;
        let header_count = get_varint(&self.data[..end], &mut self.pos, "header count")?;
        let header_count = usize::try_from(header_count)
            .ok()
            .filter(|n| *n <= (end - self.pos) / 2)
            .ok_or_else(|| {
                self.corrupt(format!(
                    "header count {header_count} cannot fit in the record"
                ))
            })?;
        let mut headers = Vec::with_capacity(header_count);
        for _ in 0..header_count {
            let key = self
                .bytes(end, "header key")?
                .ok_or_else(|| self.corrupt("null header key".into()))?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|_| self.corrupt("header key is not UTF-8".into()))?;
            let value = self.bytes(end, "header value")?;
            headers.push(RecordHeader { key, value });
        }
        if self.pos != end {
            return Err(self.corrupt(format!("{} bytes left over in the record", end - self.pos)));
        }
        let timestamp = match self.batch.timestamp_type {
            TimestampType::LogAppendTime => self.batch.max_timestamp,
            TimestampType::CreateTime => self.batch.base_timestamp.wrapping_add(timestamp_delta),
        };
        Ok(Record {
            offset: self.batch.base_offset.wrapping_add(i64::from(offset_delta)),
            timestamp,
            key,
            value,
            headers,
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.remaining <= 0 {
            if self.pos != self.data.len() {
                self.failed = true;
                return Some(Err(self.corrupt(format!(
                    "{} bytes after the last record",
                    self.data.len() - self.pos
                ))));
            }
            return None;
        }
        self.remaining -= 1;
        let result = self.decode_one();
        self.failed = result.is_err();
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields() -> BatchProducerFields {
        BatchProducerFields {
            producer_id: 42,
            producer_epoch: 3,
            base_sequence: 7,
            is_transactional: true,
        }
    }

    fn sample(codec: Compression) -> Bytes {
        let mut b = RecordBatchBuilder::new(codec);
        b.append(1000, Some(b"k1"), Some(b"v1"), &[]).unwrap();
        b.append(
            1005,
            None,
            None,
            &[RecordHeader {
                key: "h".into(),
                value: Some(Bytes::from_static(b"x")),
            }],
        )
        .unwrap();
        b.build(fields()).unwrap()
    }

    #[test]
    fn header_fields_round_trip() {
        let data = sample(Compression::None);
        let batches: Vec<_> = decode_batches(data, 1 << 20)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(batches.len(), 1);
        let h = batches[0].header;
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 3, 7)
        );
        assert!(h.is_transactional && !h.is_control);
        assert_eq!(
            (
                h.record_count,
                h.last_offset_delta,
                h.base_timestamp,
                h.max_timestamp
            ),
            (2, 1, 1000, 1005)
        );
        let records: Vec<_> = batches[0].records().collect::<Result<_, _>>().unwrap();
        assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(records[1].value, None);
        assert_eq!((records[1].offset, records[1].timestamp), (1, 1005));
        assert_eq!(records[1].headers[0].key, "h");
    }

    #[test]
    fn partial_trailing_batch_ends_cleanly() {
        let one = sample(Compression::None);
        let mut two = BytesMut::from(&one[..]);
        two.extend_from_slice(&one[..one.len() - 3]);
        let batches: Vec<_> = decode_batches(two.freeze(), 1 << 20).collect();
        assert_eq!(batches.len(), 1);
        assert!(batches[0].is_ok());
    }

    #[test]
    fn crc_mismatch_is_reported() {
        let mut data = BytesMut::from(&sample(Compression::None)[..]);
        let last = data.len() - 1;
        data[last] ^= 0xff;
        let err = decode_batches(data.freeze(), 1 << 20)
            .next()
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, ProtocolError::CrcMismatch { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("record batch crc mismatch: stored 0x"),
            "{err}"
        );
    }

    #[test]
    fn impossible_lengths_are_errors() {
        let mut data = BytesMut::from(&sample(Compression::None)[..]);
        data[8..12].copy_from_slice(&10i32.to_be_bytes());
        let err = decode_batches(data.freeze(), 1 << 20)
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt record batch at byte 8: batch length 10 is smaller than a batch header"
        );
        let mut data = BytesMut::from(&sample(Compression::None)[..]);
        data[16] = 1;
        let err = decode_batches(data.freeze(), 1 << 20)
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(err, ProtocolError::UnsupportedMagic { magic: 1 });
    }

    #[test]
    fn huge_record_count_is_rejected_before_allocating() {
        let mut data = BytesMut::from(&sample(Compression::None)[..]);
        data[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&data[ATTRIBUTES_OFFSET..]);
        data[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        let err = decode_batches(data.freeze(), 1 << 20)
            .next()
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("cannot fit"), "{err}");
    }

    #[test]
    fn rewrite_keeps_the_batch_valid() {
        let mut data = BytesMut::from(&sample(Compression::Lz4)[..]);
        rewrite_producer_fields(&mut data, 99, 4, 100).unwrap();
        let batch = decode_batches(data.freeze(), 1 << 20)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                batch.header.producer_id,
                batch.header.producer_epoch,
                batch.header.base_sequence
            ),
            (99, 4, 100)
        );
        assert_eq!(batch.records().count(), 2);
    }

    #[test]
    fn control_record_types() {
        for (kind, want) in [
            (0i16, ControlRecordType::Abort),
            (1, ControlRecordType::Commit),
            (5, ControlRecordType::Other(5)),
        ] {
            let mut b = RecordBatchBuilder::new(Compression::None);
            let mut key = Vec::new();
            key.extend_from_slice(&0i16.to_be_bytes());
            key.extend_from_slice(&kind.to_be_bytes());
            b.append(0, Some(&key), Some(&[0, 0, 0, 0, 0, 0]), &[])
                .unwrap();
            let mut data = BytesMut::from(&b.build(fields()).unwrap()[..]);
            // Set the control bit (5) and fix the CRC.
            data[ATTRIBUTES_OFFSET + 1] |= 1 << 5;
            let crc = crc32c::crc32c(&data[ATTRIBUTES_OFFSET..]);
            data[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
            let batch = decode_batches(data.freeze(), 1 << 20)
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(batch.control_type().unwrap(), Some(want));
        }
    }

    #[test]
    fn empty_batches_left_by_the_log_cleaner() {
        // Recorded from Kafka 4.1.1 after its log cleaner ran (fixtures/README.md).
        let cases: [(&[u8], bool, bool, i64, i64); 3] = [
            (
                include_bytes!("../../fixtures/empty-data-batch.bin"),
                false,
                false,
                0,
                3,
            ),
            (
                include_bytes!("../../fixtures/empty-control-batch.bin"),
                true,
                true,
                13,
                13,
            ),
            (
                include_bytes!("../../fixtures/empty-transactional-data-batch.bin"),
                false,
                true,
                129,
                132,
            ),
        ];
        for (bytes, control, transactional, base, last) in cases {
            let batches: Vec<_> = decode_batches(Bytes::from_static(bytes), 1 << 20)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(batches.len(), 1);
            let h = batches[0].header;
            assert_eq!((h.is_control, h.is_transactional), (control, transactional));
            assert_eq!(
                (h.base_offset, h.last_offset(), h.record_count),
                (base, last, 0)
            );
            assert_eq!(batches[0].records().count(), 0);
            assert_eq!(
                batches[0].control_type(),
                Ok(None),
                "an emptied marker is no marker"
            );
        }
    }

    /// Timestamp, key, value, headers.
    type ArbRecord = (
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    fn arb_record() -> impl Strategy<Value = ArbRecord> {
        (
            0i64..1_000_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
            proptest::collection::vec(
                (
                    "[a-z]{0,8}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
                ),
                0..3,
            ),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn round_trip(records in proptest::collection::vec(arb_record(), 0..30), codec in 0u8..5) {
            let codec = Compression::from_id(codec).unwrap();
            let mut b = RecordBatchBuilder::new(codec);
            for (ts, k, v, hs) in &records {
                let hs: Vec<RecordHeader> = hs.iter().map(|(k, v)| RecordHeader { key: k.clone(), value: v.clone().map(Bytes::from) }).collect();
                b.append(*ts, k.as_deref(), v.as_deref(), &hs).unwrap();
            }
            let data = b.build(fields()).unwrap();
            let batches: Vec<_> = decode_batches(data, 1 << 24).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(batches.len(), 1);
            let got: Vec<Record> = batches[0].records().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got.len(), records.len());
            for (i, (r, (ts, k, v, hs))) in got.iter().zip(&records).enumerate() {
                prop_assert_eq!(r.offset, i as i64);
                prop_assert_eq!(r.timestamp, *ts);
                prop_assert_eq!(r.key.as_deref(), k.as_deref());
                prop_assert_eq!(r.value.as_deref(), v.as_deref());
                prop_assert_eq!(r.headers.len(), hs.len());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data: Vec<u8>) {
            for batch in decode_batches(Bytes::from(data), 1 << 20) {
                match batch {
                    Ok(batch) => { for r in batch.records() { if r.is_err() { break; } } let _ = batch.control_type(); }
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn single_byte_corruption_never_panics(pos in 0usize..200, flip in 1u8..=255, codec in 0u8..5) {
            let data = sample(Compression::from_id(codec).unwrap());
            let mut data = BytesMut::from(&data[..]);
            let pos = pos % data.len();
            data[pos] ^= flip;
            let mut results = decode_batches(data.freeze(), 1 << 20);
            if let Some(Ok(batch)) = results.next() {
                // Only the broker-assigned fields are outside the CRC.
                prop_assert!(pos < CRC_OFFSET, "corruption at {} went unnoticed", pos);
                for r in batch.records() { prop_assert!(r.is_ok()); }
            }
        }
    }
}
