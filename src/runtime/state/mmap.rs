//! The one place in the crate with `unsafe` code: memory-mapping a snapshot file and reading a
//! validated rkyv archive in place.
//!
//! Why `unsafe` here and nowhere else: zero-copy restore (the time to the first record after a
//! restart must not grow with the state size) needs the snapshot file's bytes in memory without
//! reading them, which is what `mmap(2)` does, and reading an archived value in place more than
//! once without re-validating it each time, which is what `rkyv::access_unchecked` does. Both are
//! wrapped here in two small safe types whose invariants are stated and upheld locally:
//!
//! - [`Backing`]: the bytes of a whole snapshot file, either a read-only private map of the file
//!   or an owned 16-byte-aligned buffer (used by tests and the fuzz target).
//! - [`Validated<T>`]: a section whose bytes passed rkyv's validator (`rkyv::access`, the
//!   bytecheck-based checker) for the archived type `T` once; after that [`Validated::get`]
//!   reads the root without validating again.
//!
//! Residual risk, documented rather than hidden: a memory map reflects later changes to the file.
//! Checkpoint files are written once under a temporary name, renamed, and never modified again by
//! this crate; if another process truncates or rewrites a mapped file, reads may see the new bytes
//! or fault (`SIGBUS`). That is the same contract every mmap-based store (LMDB, RocksDB's mmap
//! reads) has with its files.
#![allow(unsafe_code)]

use std::fs::File;
use std::marker::PhantomData;

use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::Portable;

use super::snapshot::MappedSection;

/// The bytes of one snapshot file.
#[derive(Debug)]
pub(crate) enum Backing {
    /// A read-only memory map of the file (page-aligned, so 16-byte-aligned sections stay
    /// aligned in memory).
    Map(memmap2::Mmap),
    /// An owned copy (tests, fuzzing, files too small to be worth mapping).
    Owned(AlignedVec<16>),
}

impl Backing {
    /// Maps `file` read-only.
    ///
    /// The file must not be empty (mapping zero bytes fails on Linux); the caller checks its
    /// length first.
    pub(crate) fn map(file: &File) -> std::io::Result<Backing> {
        // SAFETY: `Mmap::map` is unsafe because the mapped file may be changed by another
        // process while mapped, which would change bytes behind a `&[u8]`. Snapshot files are
        // immutable after their rename (see the module docs); the residual risk is documented
        // there. The map is read-only and private to this process.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(Backing::Map(map))
    }

    /// The whole file.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(map) => map,
            Backing::Owned(bytes) => bytes,
        }
    }
}

/// The rkyv validation error type used throughout the state module.
pub(crate) type CheckError = rancor::Error;

/// A section whose bytes hold a valid archived `T` at their root, checked once by rkyv's
/// validator; [`Validated::get`] then reads it in place in O(1).
pub(crate) struct Validated<T> {
    section: MappedSection,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Validated<T> {
    fn clone(&self) -> Self {
        Validated {
            section: self.section.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Validated<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validated")
            .field("section", &self.section)
            .finish()
    }
}

impl<T> Validated<T>
where
    T: Portable + for<'a> CheckBytes<HighValidator<'a, CheckError>>,
{
    /// Validates `section` as an archived `T` (bounds, alignment, pointers, and every nested
    /// value's `CheckBytes`); the error says what rkyv found wrong.
    pub(crate) fn new(section: MappedSection) -> Result<Self, CheckError> {
        rkyv::access::<T, CheckError>(section.bytes())?;
        Ok(Validated {
            section,
            _type: PhantomData,
        })
    }

    /// The archived root, without validating again.
    #[inline]
    pub(crate) fn get(&self) -> &T {
        // SAFETY: `new` validated these exact bytes as a `T` with `rkyv::access`, which is the
        // precondition of `access_unchecked`. The bytes cannot have changed since: they are
        // owned by an immutable `Backing` kept alive by the `Arc` inside `section` (for a map,
        // see the module docs' residual risk).
        unsafe { rkyv::access_unchecked::<T>(self.section.bytes()) }
    }

    /// The section the archive lives in (e.g. to copy it verbatim into a new snapshot).
    pub(crate) fn section(&self) -> &MappedSection {
        &self.section
    }
}
