//! Key groups: the unit in which keyed state is partitioned, snapshotted and (later) rescaled.
//!
//! Why key groups: a key is not routed straight to a subtask (`hash % parallelism`), because then
//! every change of parallelism would move almost every key and force a full reshuffle of the state.
//! Instead, like Flink, keys hash into a fixed number of **key groups** (the "max parallelism",
//! [`DEFAULT_KEY_GROUPS`] = 128) and each subtask owns a *contiguous range* of them. State is stored
//! and snapshotted per key group, so a restore at another parallelism only reassigns whole key
//! groups (whole snapshot sections) — see Flink's
//! [key groups](https://nightlies.apache.org/flink/flink-docs-stable/docs/ops/production_ready/#set-an-explicit-max-parallelism)
//! and `KeyGroupRangeAssignment` in flink-runtime.
//!
//! The hash must be the same in every process, platform and Rust version (a key written in one
//! run is looked up in the next), so it is not std's `Hash` (whose output is not stable across
//! Rust versions, and `RandomState` is seeded per process) but [`StableHash`], defined here.

/// The default number of key groups (Flink's default max parallelism is 128 too).
pub const DEFAULT_KEY_GROUPS: u16 = 128;

/// A 64-bit hash that is the same in every process, platform and Rust version.
///
/// It decides which key group (and so which subtask and which snapshot section) a key belongs
/// to, and orders entries in archived snapshot sections; changing it for a type makes existing
/// checkpoints unreadable, so implementations are fixed by this module's tests.
pub trait StableHash {
    /// The hash of `self`.
    fn stable_hash(&self) -> u64;
}

/// MurmurHash3's 64-bit finaliser (`fmix64`): every input bit affects every output bit.
#[inline]
pub(crate) const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const MUL: u64 = 0x87c3_7b91_1142_53d5;

/// Hash of a byte string: 8 bytes at a time (little-endian), a multiply-rotate step each, the
/// length mixed in, `fmix64` at the end. Simple, fast, and fixed forever by the tests below.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = SEED ^ (bytes.len() as u64).wrapping_mul(MUL);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word).wrapping_mul(MUL))
            .rotate_left(31)
            .wrapping_mul(SEED);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(word).wrapping_mul(MUL))
            .rotate_left(31)
            .wrapping_mul(SEED);
    }
    fmix64(h)
}

impl StableHash for u64 {
    #[inline]
    fn stable_hash(&self) -> u64 {
        fmix64(*self ^ SEED)
    }
}

impl StableHash for i64 {
    #[inline]
    fn stable_hash(&self) -> u64 {
        (*self as u64).stable_hash()
    }
}

impl StableHash for u32 {
    #[inline]
    fn stable_hash(&self) -> u64 {
        u64::from(*self).stable_hash()
    }
}

impl StableHash for i32 {
    #[inline]
    fn stable_hash(&self) -> u64 {
        // Sign-extended, so that -1i32 and -1i64 hash alike.
        i64::from(*self).stable_hash()
    }
}

impl StableHash for [u8] {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self)
    }
}

impl StableHash for Vec<u8> {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self)
    }
}

impl StableHash for str {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self.as_bytes())
    }
}

impl StableHash for String {
    fn stable_hash(&self) -> u64 {
        hash_bytes(self.as_bytes())
    }
}

impl<T: StableHash + ?Sized> StableHash for &T {
    fn stable_hash(&self) -> u64 {
        (**self).stable_hash()
    }
}

impl<A: StableHash, B: StableHash> StableHash for (A, B) {
    fn stable_hash(&self) -> u64 {
        // Order matters: (a, b) and (b, a) hash differently.
        let a = self.0.stable_hash();
        let b = self.1.stable_hash();
        fmix64(a.rotate_left(29).wrapping_mul(MUL) ^ b)
    }
}

/// The key group of a key with stable hash `hash`, among `key_groups` (> 0).
///
/// The hash is mixed again first (like Flink's `murmurHash(key.hashCode()) % maxParallelism`), so
/// that a weak [`StableHash`] implementation still spreads keys over the groups.
///
/// # Panics
///
/// If `key_groups` is 0.
#[inline]
pub fn key_group_of(hash: u64, key_groups: u16) -> u16 {
    assert!(key_groups > 0, "key_groups must be positive");
    (fmix64(hash) % u64::from(key_groups)) as u16
}

/// A contiguous range of key groups, **half-open**: `start..end` (`end` excluded; empty when
/// `start == end`, which happens when the parallelism exceeds the number of key groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyGroupRange {
    /// The first key group in the range.
    pub start: u16,
    /// One past the last key group in the range.
    pub end: u16,
}

impl KeyGroupRange {
    /// The range `start..end`.
    ///
    /// # Panics
    ///
    /// If `start > end`.
    pub fn new(start: u16, end: u16) -> Self {
        assert!(start <= end, "key group range {start}..{end} is reversed");
        KeyGroupRange { start, end }
    }

    /// The key groups of subtask `subtask` of `parallelism`, out of `key_groups`; like Flink's
    /// `KeyGroupRangeAssignment.computeKeyGroupRangeForOperatorIndex`: subtask `i` gets
    /// `ceil(i·G/P) .. ceil((i+1)·G/P)`, so ranges are contiguous, disjoint, cover every group
    /// and differ in size by at most one.
    ///
    /// # Panics
    ///
    /// If `parallelism` is 0, `subtask >= parallelism` or `key_groups` is 0.
    pub fn for_subtask(subtask: u32, parallelism: u32, key_groups: u16) -> Self {
        assert!(
            parallelism > 0 && subtask < parallelism && key_groups > 0,
            "subtask {subtask} of parallelism {parallelism} with {key_groups} key groups"
        );
        let groups = u64::from(key_groups);
        let (i, p) = (u64::from(subtask), u64::from(parallelism));
        let start = (i * groups).div_ceil(p);
        let end = ((i + 1) * groups).div_ceil(p);
        // Both are <= key_groups, so they fit in u16.
        KeyGroupRange {
            start: start as u16,
            end: end as u16,
        }
    }

    /// Whether `key_group` is in the range.
    #[inline]
    pub fn contains(&self, key_group: u16) -> bool {
        self.start <= key_group && key_group < self.end
    }

    /// The number of key groups in the range.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start)
    }

    /// Whether the range is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The key groups in the range, in order.
    pub fn iter(&self) -> std::ops::Range<u16> {
        self.start..self.end
    }
}

/// The subtask (of `parallelism`) that owns `key_group` (of `key_groups`): the inverse of
/// [`KeyGroupRange::for_subtask`], like Flink's `computeOperatorIndexForKeyGroup`
/// (`kg · P / G`).
///
/// # Panics
///
/// If `key_groups` is 0 or `key_group >= key_groups`.
#[inline]
pub fn subtask_for_key_group(key_group: u16, parallelism: u32, key_groups: u16) -> u32 {
    assert!(
        key_group < key_groups,
        "key group {key_group} out of {key_groups}"
    );
    (u64::from(key_group) * u64::from(parallelism) / u64::from(key_groups)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_key_group_belongs_to_exactly_one_subtask() {
        for key_groups in [1u16, 7, 128] {
            for parallelism in 1..=u32::from(key_groups) {
                let mut owner = vec![None; usize::from(key_groups)];
                let mut previous_end = 0;
                for subtask in 0..parallelism {
                    let range = KeyGroupRange::for_subtask(subtask, parallelism, key_groups);
                    assert_eq!(range.start, previous_end, "contiguous");
                    previous_end = range.end;
                    for kg in range.iter() {
                        assert_eq!(owner[usize::from(kg)], None, "kg {kg} owned twice");
                        owner[usize::from(kg)] = Some(subtask);
                        assert_eq!(subtask_for_key_group(kg, parallelism, key_groups), subtask);
                    }
                }
                assert_eq!(previous_end, key_groups);
                assert!(owner.iter().all(Option::is_some));
            }
        }
    }

    #[test]
    fn parallelism_above_key_groups_leaves_empty_ranges() {
        let empty = (0..5)
            .map(|s| KeyGroupRange::for_subtask(s, 5, 3))
            .filter(KeyGroupRange::is_empty)
            .count();
        assert_eq!(empty, 2);
    }

    /// Fixes the hash values forever: if one of these changes, existing checkpoints would be
    /// read with keys in the wrong key groups.
    #[test]
    fn hash_values_are_fixed() {
        let fixed = [
            0u64.stable_hash(),
            42u64.stable_hash(),
            (-1i64).stable_hash(),
            "".stable_hash(),
            "user-17".stable_hash(),
            (7u64, -3i64).stable_hash(),
        ];
        let expected = [
            fixed_value(0),
            fixed_value(1),
            fixed_value(2),
            fixed_value(3),
            fixed_value(4),
            fixed_value(5),
        ];
        assert_eq!(fixed, expected);
        assert_eq!(key_group_of(42u64.stable_hash(), 128), KG_OF_42);
    }

    // Recorded from the first implementation (see `hash_values_are_fixed`).
    const FIXED: [u64; 6] = [
        0x9ca0_66f1_a4ab_2eea,
        0x2d1c_8760_f804_7fc7,
        0x3cd6_17bb_bcc3_9640,
        0x9ca0_66f1_a4ab_2eea,
        0x8b29_3041_ade5_50df,
        0x9556_304e_f063_f0a6,
    ];
    const KG_OF_42: u16 = 76;

    fn fixed_value(i: usize) -> u64 {
        FIXED[i]
    }

    #[test]
    fn consistent_across_representations() {
        assert_eq!("abc".stable_hash(), String::from("abc").stable_hash());
        assert_eq!(b"abc"[..].stable_hash(), b"abc".to_vec().stable_hash());
        assert_eq!("abc".stable_hash(), b"abc"[..].stable_hash());
        assert_eq!((-5i32).stable_hash(), (-5i64).stable_hash());
        assert_eq!(5u32.stable_hash(), 5u64.stable_hash());
        assert_ne!((1u64, 2u64).stable_hash(), (2u64, 1u64).stable_hash());
    }

    #[test]
    fn key_groups_are_balanced() {
        let mut counts = [0u32; 128];
        for user in 0..128_000u64 {
            counts[usize::from(key_group_of(user.stable_hash(), 128))] += 1;
        }
        // 1000 expected per group; allow a generous spread.
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }

    proptest! {
        #[test]
        fn key_group_in_range(hash: u64, key_groups in 1u16..=u16::MAX) {
            prop_assert!(key_group_of(hash, key_groups) < key_groups);
        }

        #[test]
        fn subtask_range_contains_its_key_groups(kg_seed: u16, parallelism in 1u32..300, key_groups in 1u16..2000) {
            let kg = kg_seed % key_groups;
            let subtask = subtask_for_key_group(kg, parallelism, key_groups);
            prop_assert!(subtask < parallelism);
            prop_assert!(KeyGroupRange::for_subtask(subtask, parallelism, key_groups).contains(kg));
        }
    }
}
