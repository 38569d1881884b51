//! Choosing a partition for a record.
//!
//! Keyed records use murmur2 exactly as Kafka's Java client does
//! (`Utils.toPositive(Utils.murmur2(key)) % partitions`), so that our producer and Java
//! producers send the same key to the same partition. Records without a key go round-robin.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's murmur2 hash (the Java client's `Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner picks for `key`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Round-robin for records without a key.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicU32,
}

impl RoundRobin {
    /// The next partition.
    pub fn next(&self, partitions: i32) -> i32 {
        (self.next.fetch_add(1, Ordering::Relaxed) % partitions.max(1) as u32) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by kafka-clients 4.1.1's `Utils.murmur2` and its partition for 7 partitions.
    #[test]
    fn matches_java_client() {
        let cases = [
            ("", 275646681, 2),
            ("a", -1563381124, 5),
            ("ab", 316155434, 0),
            ("abc", 479470107, 4),
            ("abcd", -1323649548, 5),
            ("user-42", 1459644460, 1),
            ("hello world!", -1076261558, 1),
        ];
        for (key, hash, partition) in cases {
            assert_eq!(murmur2(key.as_bytes()), hash, "hash of {key:?}");
            assert_eq!(
                partition_for_key(key.as_bytes(), 7),
                partition,
                "partition of {key:?}"
            );
        }
    }
}
