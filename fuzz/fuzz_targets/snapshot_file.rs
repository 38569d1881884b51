//! The snapshot-file decoder (`runtime::state::SnapshotFile`) and the restore of keyed state and
//! timers from its sections: arbitrary bytes must give a `CorruptCheckpoint` error or a verified
//! file, never a panic, an out-of-bounds read or an unbounded allocation.
//!
//! The header carries two crc32c checksums, which random mutations almost never satisfy; so
//! each input is tried twice: as is, and with both checksums recomputed, which lets the fuzzer
//! reach the section table and the rkyv validation of the sections behind them.
#![no_main]

use std::path::Path;

use exactly::runtime::state::snapshot::HEADER_BYTES;
use exactly::runtime::state::{KeyGroupRange, SnapshotFile, StateRef, StateTable, TimerQueue};
use libfuzzer_sys::fuzz_target;

fn exercise(file: &SnapshotFile) {
    let range = KeyGroupRange::new(0, 128);
    let mut numbers: StateTable<u64, (u64, i64)> = StateTable::new("n", range, 128);
    if numbers.restore(file).is_ok() {
        for kg in range.iter() {
            numbers.for_each_in_group(kg, |_, v| {
                if let StateRef::Archived(a) = v {
                    let _ = a.0.to_native();
                }
            });
            let _ = numbers.get(kg, &u64::from(kg));
            let _ = numbers.get_mut(kg, &1);
        }
    }
    let mut strings: StateTable<String, Vec<u8>> = StateTable::new("s", range, 128);
    if strings.restore(file).is_ok() {
        for kg in range.iter() {
            let _ = strings.get(kg, &"a".to_owned());
            strings.for_each_in_group(kg, |_, _| {});
        }
    }
    let mut timers: TimerQueue<u64, i64> = TimerQueue::new("t", range);
    if timers.restore(file).is_ok() {
        while timers.pop_due(i64::MAX).is_some() {}
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = SnapshotFile::from_bytes(Path::new("fuzz"), data) {
        exercise(&file);
    }
    if data.len() >= HEADER_BYTES {
        let mut fixed = data.to_vec();
        let body_crc = crc32c::crc32c(&fixed[HEADER_BYTES..]);
        fixed[44..48].copy_from_slice(&body_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&fixed[..48]);
        fixed[48..52].copy_from_slice(&header_crc.to_le_bytes());
        if let Ok(file) = SnapshotFile::from_bytes(Path::new("fuzz"), &fixed) {
            exercise(&file);
        }
    }
});
