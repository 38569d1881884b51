//! Which source subtask reads which partition (split).
//!
//! Every subtask decides on its own, without talking to the others, so the rule must give the
//! same answer in every process and on every restart: that is what makes offsets restored from a
//! checkpoint (written at any parallelism) land on exactly one reader each. The default,
//! [`StaticAssigner`], is Flink's `KafkaSourceEnumerator.getSplitOwner`
//! (<https://nightlies.apache.org/flink/flink-docs-stable/docs/connectors/datastream/kafka/>):
//! a start index derived from the topic's hash, then the partitions round-robin from there, so
//! that the partitions of one topic spread evenly and different topics do not all start at
//! subtask 0. The hash is Java's `String.hashCode` — stable by definition (unlike std's
//! randomized `HashMap` hasher), and it gives the very assignment Flink gives, which helps when
//! comparing a job with its Flink twin.
//!
//! The trait is the seam for other policies (e.g. a fixed map, or one that balances by
//! partition load); whatever it is, it must be deterministic.

use crate::client::types::TopicPartition;

/// Decides the subtask that owns a split. Must be deterministic: the same answer for the same
/// arguments in every process, every run.
pub trait SplitAssigner: Send + Sync + std::fmt::Debug {
    /// The subtask (in `0..parallelism`) that reads `split`. `parallelism` is at least 1.
    fn owner(&self, split: &TopicPartition, parallelism: usize) -> usize;
}

/// The default assignment, Flink's: `(start(topic) + partition) % parallelism` with
/// `start(topic) = ((java_hash(topic) * 31) & 0x7FFFFFFF) % parallelism`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaticAssigner;

impl SplitAssigner for StaticAssigner {
    fn owner(&self, split: &TopicPartition, parallelism: usize) -> usize {
        let parallelism = parallelism.max(1) as u64;
        // Non-negative after the mask, so the casts below lose nothing.
        let start =
            (java_string_hash(&split.topic).wrapping_mul(31) & 0x7FFF_FFFF) as u64 % parallelism;
        // Partitions are never negative in metadata; treat a negative one as 0 rather than
        // panicking.
        let partition = u64::try_from(split.partition).unwrap_or(0);
        ((start + partition) % parallelism) as usize
    }
}

/// Java's `String.hashCode`: `s[0]*31^(n-1) + ... + s[n-1]` over the UTF-16 code units, with
/// `i32` wrap-around.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_java() {
        // Values from Java's "...".hashCode().
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("transactions"), 1_954_122_069);
        // A character outside the BMP counts as its two UTF-16 surrogates, as in Java.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
    }

    #[test]
    fn partitions_of_a_topic_round_robin_from_its_start() {
        let a = StaticAssigner;
        let topic = "transactions";
        let start = ((java_string_hash(topic).wrapping_mul(31) & 0x7FFF_FFFF) % 3) as usize;
        let owners: Vec<usize> = (0..6)
            .map(|p| a.owner(&TopicPartition::new(topic, p), 3))
            .collect();
        let expected: Vec<usize> = (0..6).map(|p| (start + p) % 3).collect();
        assert_eq!(owners, expected);
        // Every subtask gets two of the six.
        for s in 0..3 {
            assert_eq!(owners.iter().filter(|o| **o == s).count(), 2);
        }
        // Parallelism 1: everything on subtask 0.
        assert!((0..6).all(|p| a.owner(&TopicPartition::new(topic, p), 1) == 0));
    }
}
