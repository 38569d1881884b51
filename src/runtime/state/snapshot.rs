//! The snapshot file format: a checksummed header, 16-byte-aligned sections, a section table.
//!
//! Why a format of our own around rkyv: an rkyv archive is read in place without parsing
//! ([rkyv's zero-copy model](https://rkyv.org/zero-copy-deserialization.html)), which is what
//! makes the time to the first record after a restore independent of the state size. But an
//! archive carries no identity: bytes written by another rkyv version, with other format settings
//! (endianness, alignment, pointer width — rkyv's [format control](https://rkyv.org/format.html)),
//! for another schema, or damaged on disk would be misread. The header pins all of that, and a
//! crc32c of the body is written before and verified after reading (a paired check), so a file
//! is either exactly what was written or rejected with a reason — never loaded as garbage.
//!
//! # Layout (all integers little-endian)
//!
//! ```text
//! 0   magic "EXSNAP\r\n"            8 bytes (\r\n catches text-mode mangling, like PNG)
//! 8   format version                u16 (FORMAT_VERSION)
//! 10  rkyv major, minor             u8, u8 (0, 8)
//! 12  rkyv format settings          u32: bit 0 big-endian, bit 1 unaligned, bits 8..16 pointer bytes
//! 16  schema hash                   u64 (the caller's; see `type_fingerprint`)
//! 24  body length                   u64 (file length - 64)
//! 32  section table offset          u64 (16-aligned, table runs to the end of the file)
//! 40  section count                 u32
//! 44  crc32c of the body            u32 (bytes 64..end)
//! 48  crc32c of bytes 0..48         u32
//! 52  reserved, zero                12 bytes
//! 64  sections, each at a 16-aligned offset, zero padding between them
//! ..  section table: count × 64-byte entries
//!         name      40 bytes UTF-8, zero-padded (non-empty)
//!         key group u32 (0xFFFF_FFFF: not keyed)
//!         reserved  u32, zero
//!         offset    u64 (absolute, 16-aligned, >= 64)
//!         length    u64
//! ```
//!
//! Sections are 16-byte aligned in the file and the file is mapped at a page boundary, so every
//! archive is aligned in memory as rkyv requires.
//!
//! # Validated access, not `access_unchecked`
//!
//! After the crc32c matches, the archives could be read with `rkyv::access_unchecked` (O(1)),
//! or validated with rkyv's checker (`rkyv::access`), which walks every archived value. The
//! checksum already pages in the whole file, so validation adds CPU, not I/O. Measured on this
//! machine (see `benches/state.rs`, `restore_to_first_record`; 1e7 keys `u64 → {u64, i64, i64}`,
//! 400 MB of sections, warm page cache): crc32c of the file ≈ 40 ms, validating all 128
//! key-group sections ≈ 10 ms — validation costs a quarter of the checksum and keeps the
//! restore sound even for a file whose checksum was forged, so the state module always
//! validates (`mmap::Validated`) and reads with `access_unchecked` only afterwards.
//! (Figures are in the state branch's report; they are re-measurable with the bench.)

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rkyv::api::high::HighSerializer;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::Serialize;

use super::keygroup::StableHash;
use super::mmap::Backing;
use crate::runtime::RuntimeError;

/// The first eight bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"EXSNAP\r\n";
/// The version of this file layout; a reader rejects any other.
pub const FORMAT_VERSION: u16 = 1;
/// The rkyv format generation the archives are written with (0.8: the format is stable within
/// a minor version of rkyv 0.x).
pub const RKYV_VERSION: (u8, u8) = (0, 8);
/// The size of the fixed header.
pub const HEADER_BYTES: usize = 64;
/// The size of one section-table entry.
pub const SECTION_ENTRY_BYTES: usize = 64;
/// The longest section name, in bytes.
pub const SECTION_NAME_BYTES_MAX: usize = 40;
/// The alignment of every section (and of the section table) in the file.
pub const SECTION_ALIGN: usize = 16;
/// The most sections a file may declare (a bound checked before allocating the table).
pub const SECTIONS_MAX: usize = 1 << 20;

const NO_KEY_GROUP: u32 = u32::MAX;

/// The serializer every state type is written with.
pub type StateSerializer<'a> = HighSerializer<AlignedVec<16>, ArenaHandle<'a>, rancor::Error>;

/// A 64-bit fingerprint of a type's name, for the header's schema hash: the same type name gives
/// the same value in every process (via [`StableHash`]).
///
/// `std::any::type_name` is not guaranteed stable across compiler versions, so a toolchain change
/// may change the fingerprint: a snapshot is then rejected as written by another schema (safe),
/// never misread. Callers combine the fingerprints of all their state types into one schema hash.
pub fn type_fingerprint<T: ?Sized>() -> u64 {
    std::any::type_name::<T>().stable_hash()
}

/// rkyv's format settings in this build, as recorded in the header: bit 0 big-endian, bit 1
/// unaligned primitives, bits 8..16 the size of an archived `usize` (pointer width).
pub fn rkyv_settings() -> u32 {
    static SETTINGS: OnceLock<u32> = OnceLock::new();
    *SETTINGS.get_or_init(|| {
        let probe = rkyv::to_bytes::<rancor::Error>(&0x0102_0304u32).map(|b| b.to_vec());
        let big_endian = matches!(probe.as_deref(), Ok([1, 2, 3, 4]));
        let unaligned = std::mem::align_of::<rkyv::Archived<u32>>() == 1;
        let pointer_bytes = std::mem::size_of::<rkyv::primitive::ArchivedUsize>() as u32;
        u32::from(big_endian) | (u32::from(unaligned) << 1) | (pointer_bytes << 8)
    })
}

fn describe_settings(settings: u32) -> String {
    format!(
        "{}-endian, {}, {}-bit pointers",
        if settings & 1 != 0 { "big" } else { "little" },
        if settings & 2 != 0 {
            "unaligned"
        } else {
            "aligned"
        },
        ((settings >> 8) & 0xff) * 8
    )
}

fn write_error(what: &str, reason: impl fmt::Display) -> RuntimeError {
    RuntimeError::SnapshotWrite {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

struct SectionEntry {
    name: String,
    key_group: Option<u16>,
    offset: u64,
    len: u64,
}

/// Builds one snapshot file in memory: sections are appended (rkyv archives serialized straight
/// into the buffer, or raw bytes), then [`SnapshotWriter::finish`] appends the section table and
/// fills in the header and checksums.
///
/// After an error from an `add_*` method the writer is poisoned: later calls fail too.
pub struct SnapshotWriter {
    buf: AlignedVec<16>,
    sections: Vec<SectionEntry>,
    schema_hash: u64,
    poisoned: bool,
}

impl fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("bytes", &self.buf.len())
            .field("sections", &self.sections.len())
            .finish()
    }
}

impl SnapshotWriter {
    /// A writer for a file whose state has schema hash `schema_hash`.
    pub fn new(schema_hash: u64) -> Self {
        Self::with_capacity(schema_hash, 0)
    }

    /// Like [`SnapshotWriter::new`], reserving `bytes` of buffer.
    pub fn with_capacity(schema_hash: u64, bytes: usize) -> Self {
        let mut buf = AlignedVec::with_capacity(bytes.max(HEADER_BYTES));
        buf.extend_from_slice(&[0u8; HEADER_BYTES]);
        SnapshotWriter {
            buf,
            sections: Vec::new(),
            schema_hash,
            poisoned: false,
        }
    }

    /// The bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no section has been added yet.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    fn begin(&mut self, name: &str) -> Result<u64, RuntimeError> {
        if self.poisoned {
            return Err(write_error(name, "an earlier section failed"));
        }
        if name.is_empty() || name.len() > SECTION_NAME_BYTES_MAX || name.contains('\0') {
            return Err(write_error(
                name,
                format!("a section name must be 1..={SECTION_NAME_BYTES_MAX} bytes without NUL"),
            ));
        }
        let pad = self.buf.len().next_multiple_of(SECTION_ALIGN) - self.buf.len();
        self.buf.extend_from_slice(&[0u8; SECTION_ALIGN][..pad]);
        Ok(self.buf.len() as u64)
    }

    fn end(&mut self, name: &str, key_group: Option<u16>, offset: u64) {
        self.sections.push(SectionEntry {
            name: name.to_owned(),
            key_group,
            offset,
            len: self.buf.len() as u64 - offset,
        });
    }

    /// Appends a section holding `bytes` verbatim (for example an archived section copied from
    /// an earlier snapshot: an rkyv archive is position-independent).
    pub fn add_bytes(
        &mut self,
        name: &str,
        key_group: Option<u16>,
        bytes: &[u8],
    ) -> Result<(), RuntimeError> {
        let offset = self.begin(name)?;
        self.buf.extend_from_slice(bytes);
        self.end(name, key_group, offset);
        Ok(())
    }

    /// Appends a section holding the rkyv archive of `value`, serialized in place.
    ///
    /// rkyv 0.8 is configured with 32-bit relative pointers here, so one section must stay below
    /// 2 GiB (a larger one fails with [`RuntimeError::SnapshotWrite`]).
    pub fn add_archived<T>(
        &mut self,
        name: &str,
        key_group: Option<u16>,
        value: &T,
    ) -> Result<(), RuntimeError>
    where
        T: for<'a> Serialize<StateSerializer<'a>>,
    {
        let offset = self.begin(name)?;
        let buf = std::mem::take(&mut self.buf);
        match rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, buf) {
            Ok(buf) => {
                self.buf = buf;
                self.end(name, key_group, offset);
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(write_error(name, e))
            }
        }
    }

    /// Appends the section table, fills in the header and returns the file's bytes.
    pub fn finish(mut self) -> Result<AlignedVec<16>, RuntimeError> {
        if self.poisoned {
            return Err(write_error("snapshot", "an earlier section failed"));
        }
        let pad = self.buf.len().next_multiple_of(SECTION_ALIGN) - self.buf.len();
        self.buf.extend_from_slice(&[0u8; SECTION_ALIGN][..pad]);
        let table_offset = self.buf.len() as u64;
        for section in &self.sections {
            let mut entry = [0u8; SECTION_ENTRY_BYTES];
            entry[..section.name.len()].copy_from_slice(section.name.as_bytes());
            let kg = section.key_group.map_or(NO_KEY_GROUP, u32::from);
            entry[40..44].copy_from_slice(&kg.to_le_bytes());
            entry[48..56].copy_from_slice(&section.offset.to_le_bytes());
            entry[56..64].copy_from_slice(&section.len.to_le_bytes());
            self.buf.extend_from_slice(&entry);
        }
        let body_len = (self.buf.len() - HEADER_BYTES) as u64;
        let body_crc = crc32c::crc32c(&self.buf[HEADER_BYTES..]);
        let header = encode_header(&Header {
            format_version: FORMAT_VERSION,
            rkyv_version: RKYV_VERSION,
            settings: rkyv_settings(),
            schema_hash: self.schema_hash,
            body_len,
            table_offset,
            section_count: self.sections.len() as u32,
            body_crc,
        });
        self.buf[..HEADER_BYTES].copy_from_slice(&header);
        Ok(self.buf)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    format_version: u16,
    rkyv_version: (u8, u8),
    settings: u32,
    schema_hash: u64,
    body_len: u64,
    table_offset: u64,
    section_count: u32,
    body_crc: u32,
}

fn encode_header(h: &Header) -> [u8; HEADER_BYTES] {
    let mut out = [0u8; HEADER_BYTES];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&h.format_version.to_le_bytes());
    out[10] = h.rkyv_version.0;
    out[11] = h.rkyv_version.1;
    out[12..16].copy_from_slice(&h.settings.to_le_bytes());
    out[16..24].copy_from_slice(&h.schema_hash.to_le_bytes());
    out[24..32].copy_from_slice(&h.body_len.to_le_bytes());
    out[32..40].copy_from_slice(&h.table_offset.to_le_bytes());
    out[40..44].copy_from_slice(&h.section_count.to_le_bytes());
    out[44..48].copy_from_slice(&h.body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[..48]);
    out[48..52].copy_from_slice(&header_crc.to_le_bytes());
    out
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Decodes and checks the header of a file of `file_len` bytes; `bytes` holds at least the header.
fn decode_header(bytes: &[u8], file_len: u64) -> Result<Header, String> {
    if file_len < HEADER_BYTES as u64 || bytes.len() < HEADER_BYTES {
        return Err(format!(
            "truncated: {file_len} bytes, shorter than the {HEADER_BYTES}-byte header"
        ));
    }
    if bytes[0..8] != MAGIC {
        return Err(format!(
            "not a snapshot file: magic {:02x?}, expected {:02x?}",
            &bytes[0..8],
            MAGIC
        ));
    }
    let header_crc = le_u32(bytes, 48);
    let actual = crc32c::crc32c(&bytes[..48]);
    if header_crc != actual {
        return Err(format!(
            "header checksum mismatch: stored {header_crc:#010x}, computed {actual:#010x} (damaged header)"
        ));
    }
    let h = Header {
        format_version: le_u16(bytes, 8),
        rkyv_version: (bytes[10], bytes[11]),
        settings: le_u32(bytes, 12),
        schema_hash: le_u64(bytes, 16),
        body_len: le_u64(bytes, 24),
        table_offset: le_u64(bytes, 32),
        section_count: le_u32(bytes, 40),
        body_crc: le_u32(bytes, 44),
    };
    if h.format_version != FORMAT_VERSION {
        return Err(format!(
            "format version {} is not supported (this build reads version {FORMAT_VERSION})",
            h.format_version
        ));
    }
    if h.rkyv_version != RKYV_VERSION {
        return Err(format!(
            "written with rkyv {}.{}, this build uses rkyv {}.{}",
            h.rkyv_version.0, h.rkyv_version.1, RKYV_VERSION.0, RKYV_VERSION.1
        ));
    }
    if h.settings != rkyv_settings() {
        return Err(format!(
            "written with rkyv settings {}, this build uses {}",
            describe_settings(h.settings),
            describe_settings(rkyv_settings())
        ));
    }
    if bytes[52..64].iter().any(|&b| b != 0) {
        return Err("reserved header bytes are not zero".to_owned());
    }
    let expected_len = (HEADER_BYTES as u64).checked_add(h.body_len);
    if expected_len != Some(file_len) {
        return Err(format!(
            "length {file_len} bytes, the header says {} (truncated or appended to)",
            expected_len.map_or_else(|| "an impossible length".to_owned(), |l| l.to_string())
        ));
    }
    Ok(h)
}

/// The schema hash and body crc32c of a finished snapshot file held in `bytes`, after checking
/// its header (not its body checksum).
pub(crate) fn header_summary(bytes: &[u8]) -> Result<(u64, u32), String> {
    let h = decode_header(bytes, bytes.len() as u64)?;
    Ok((h.schema_hash, h.body_crc))
}

/// One section of an open snapshot file: a cheap handle (an `Arc` of the file's bytes plus a
/// range), which keeps the file mapped while it lives.
#[derive(Clone)]
pub struct MappedSection {
    file: Arc<FileData>,
    offset: usize,
    len: usize,
}

/// The bytes of an open file and its path (for error messages).
#[derive(Debug)]
struct FileData {
    path: PathBuf,
    backing: Backing,
}

impl fmt::Debug for MappedSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedSection")
            .field("path", &self.file.path)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl MappedSection {
    /// The section's bytes (16-byte aligned in memory).
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.file.backing.bytes()[self.offset..self.offset + self.len]
    }

    /// The path of the file the section is in.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// A [`RuntimeError::CorruptCheckpoint`] naming this section's file.
    pub fn corrupt(&self, reason: impl Into<String>) -> RuntimeError {
        corrupt(&self.file.path, reason)
    }

    /// The section's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the section is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One entry of a file's section table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionInfo {
    /// The section's name.
    pub name: String,
    /// The key group it belongs to, if it is keyed state.
    pub key_group: Option<u16>,
    /// Its offset in the file.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// An open, verified snapshot file: header, lengths, checksums and section table checked.
pub struct SnapshotFile {
    file: Arc<FileData>,
    schema_hash: u64,
    body_crc: u32,
    sections: Vec<SectionInfo>,
}

impl fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotFile")
            .field("path", &self.file.path)
            .field("bytes", &self.file.backing.bytes().len())
            .field("sections", &self.sections.len())
            .finish()
    }
}

impl SnapshotFile {
    /// Memory-maps and verifies the file at `path` (any schema hash; see
    /// [`SnapshotFile::open_expecting`]). Everything wrong with the file's contents is
    /// [`RuntimeError::CorruptCheckpoint`] naming the path; a file that cannot be read at all is
    /// [`RuntimeError::Io`].
    pub fn open(path: &Path) -> Result<SnapshotFile, RuntimeError> {
        let io = |op, source| RuntimeError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(|e| io("open", e))?;
        let file_len = file.metadata().map_err(|e| io("stat", e))?.len();
        if file_len < HEADER_BYTES as u64 {
            // Too short to map usefully (and an empty file cannot be mapped): read it to report.
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(|e| io("read", e))?;
            return Err(corrupt(
                path,
                decode_header(&bytes, bytes.len() as u64).unwrap_err_or_truncated(),
            ));
        }
        let backing = Backing::map(&file).map_err(|e| io("mmap", e))?;
        Self::verify(path.to_owned(), backing)
    }

    /// Like [`SnapshotFile::open`], and rejects a file whose schema hash is not `schema_hash`.
    pub fn open_expecting(path: &Path, schema_hash: u64) -> Result<SnapshotFile, RuntimeError> {
        let file = Self::open(path)?;
        file.expect_schema(schema_hash)?;
        Ok(file)
    }

    /// Verifies a file held in memory; `path` is only used in error messages (tests, fuzzing).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<SnapshotFile, RuntimeError> {
        let mut owned = AlignedVec::<16>::with_capacity(bytes.len());
        owned.extend_from_slice(bytes);
        Self::verify(path.to_owned(), Backing::Owned(owned))
    }

    fn verify(path: PathBuf, backing: Backing) -> Result<SnapshotFile, RuntimeError> {
        let bytes = backing.bytes();
        let header = match decode_header(bytes, bytes.len() as u64) {
            Ok(h) => h,
            Err(reason) => return Err(corrupt(&path, reason)),
        };
        let actual = crc32c::crc32c(&bytes[HEADER_BYTES..]);
        if actual != header.body_crc {
            return Err(corrupt(
                &path,
                format!(
                    "body checksum mismatch: stored {:#010x}, computed {actual:#010x} (damaged or partly written)",
                    header.body_crc
                ),
            ));
        }
        let sections = match decode_table(bytes, &header) {
            Ok(s) => s,
            Err(reason) => return Err(corrupt(&path, reason)),
        };
        Ok(SnapshotFile {
            file: Arc::new(FileData { path, backing }),
            schema_hash: header.schema_hash,
            body_crc: header.body_crc,
            sections,
        })
    }

    /// Fails with [`RuntimeError::CorruptCheckpoint`] unless the file's schema hash is
    /// `schema_hash`.
    pub fn expect_schema(&self, schema_hash: u64) -> Result<(), RuntimeError> {
        if self.schema_hash == schema_hash {
            Ok(())
        } else {
            Err(corrupt(
                &self.file.path,
                format!(
                    "schema hash {:#018x}, expected {schema_hash:#018x}: written by a different job or state schema",
                    self.schema_hash
                ),
            ))
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The schema hash in the header.
    pub fn schema_hash(&self) -> u64 {
        self.schema_hash
    }

    /// The crc32c of the body, from the header (verified).
    pub fn body_crc32c(&self) -> u32 {
        self.body_crc
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.file.backing.bytes().len() as u64
    }

    /// Whether the file has no sections.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    /// The section table.
    pub fn sections(&self) -> &[SectionInfo] {
        &self.sections
    }

    /// The section named `name` for `key_group` (`None`: not keyed), if present.
    pub fn section(&self, name: &str, key_group: Option<u16>) -> Option<MappedSection> {
        self.sections
            .iter()
            .find(|s| s.name == name && s.key_group == key_group)
            .map(|s| self.mapped(s))
    }

    /// Every section named `name`, with its key group.
    pub fn sections_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (Option<u16>, MappedSection)> + 'a {
        self.sections
            .iter()
            .filter(move |s| s.name == name)
            .map(|s| (s.key_group, self.mapped(s)))
    }

    fn mapped(&self, s: &SectionInfo) -> MappedSection {
        // Bounds were checked against the file length by `decode_table`.
        MappedSection {
            file: Arc::clone(&self.file),
            offset: s.offset as usize,
            len: s.len as usize,
        }
    }

    /// A [`RuntimeError::CorruptCheckpoint`] for this file.
    pub fn corrupt(&self, reason: impl Into<String>) -> RuntimeError {
        corrupt(&self.file.path, reason)
    }
}

trait TruncatedReason {
    fn unwrap_err_or_truncated(self) -> String;
}

impl TruncatedReason for Result<Header, String> {
    fn unwrap_err_or_truncated(self) -> String {
        match self {
            Err(reason) => reason,
            Ok(_) => "truncated".to_owned(),
        }
    }
}

fn decode_table(bytes: &[u8], h: &Header) -> Result<Vec<SectionInfo>, String> {
    let file_len = bytes.len() as u64;
    let count = h.section_count as usize;
    if count > SECTIONS_MAX {
        return Err(format!(
            "{count} sections, more than the limit {SECTIONS_MAX}"
        ));
    }
    let table_len = (count * SECTION_ENTRY_BYTES) as u64;
    if h.table_offset < HEADER_BYTES as u64
        || h.table_offset % SECTION_ALIGN as u64 != 0
        || h.table_offset.checked_add(table_len) != Some(file_len)
    {
        return Err(format!(
            "section table at offset {} with {count} entries does not end the {file_len}-byte file on a {SECTION_ALIGN}-byte boundary",
            h.table_offset
        ));
    }
    let mut sections = Vec::with_capacity(count);
    for i in 0..count {
        let at = h.table_offset as usize + i * SECTION_ENTRY_BYTES;
        let entry = &bytes[at..at + SECTION_ENTRY_BYTES];
        let name_bytes = &entry[..SECTION_NAME_BYTES_MAX];
        let name_len = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(SECTION_NAME_BYTES_MAX);
        if name_len == 0 || name_bytes[name_len..].iter().any(|&b| b != 0) {
            return Err(format!("section {i}: malformed name"));
        }
        let name = std::str::from_utf8(&name_bytes[..name_len])
            .map_err(|_| format!("section {i}: name is not UTF-8"))?
            .to_owned();
        let kg = le_u32(entry, 40);
        let key_group = match kg {
            NO_KEY_GROUP => None,
            kg => Some(
                u16::try_from(kg)
                    .map_err(|_| format!("section {i} ({name}): key group {kg} out of range"))?,
            ),
        };
        if le_u32(entry, 44) != 0 {
            return Err(format!("section {i} ({name}): reserved bytes are not zero"));
        }
        let offset = le_u64(entry, 48);
        let len = le_u64(entry, 56);
        if offset < HEADER_BYTES as u64 || offset % SECTION_ALIGN as u64 != 0 {
            return Err(format!(
                "section {i} ({name}): offset {offset} is not {SECTION_ALIGN}-byte aligned after the header"
            ));
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > h.table_offset)
        {
            return Err(format!(
                "section {i} ({name}): {len} bytes at offset {offset} run past the section table at {}",
                h.table_offset
            ));
        }
        sections.push(SectionInfo {
            name,
            key_group,
            offset,
            len,
        });
    }
    Ok(sections)
}

/// A [`RuntimeError::CorruptCheckpoint`].
pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::CorruptCheckpoint {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> AlignedVec<16> {
        let mut w = SnapshotWriter::new(0xfeed);
        w.add_archived("numbers", Some(3), &vec![1u64, 2, 3])
            .unwrap();
        w.add_bytes("raw", None, b"hello").unwrap();
        w.add_archived("names", Some(4), &vec!["a".to_owned(), "bc".to_owned()])
            .unwrap();
        w.finish().unwrap()
    }

    fn reason_of(result: Result<SnapshotFile, RuntimeError>) -> String {
        match result {
            Err(RuntimeError::CorruptCheckpoint { path, reason }) => {
                assert_eq!(path, Path::new("test.snap"));
                reason
            }
            other => panic!("expected CorruptCheckpoint, got {other:?}"),
        }
    }

    fn open(bytes: &[u8]) -> Result<SnapshotFile, RuntimeError> {
        SnapshotFile::from_bytes(Path::new("test.snap"), bytes)
    }

    /// Re-encodes a header after a field change, so that only the intended check fails.
    fn patch_header(bytes: &mut [u8], f: impl FnOnce(&mut Header)) {
        let mut h = decode_header(bytes, bytes.len() as u64).unwrap();
        f(&mut h);
        let header = encode_header(&h);
        bytes[..HEADER_BYTES].copy_from_slice(&header);
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let file = open(&bytes).unwrap();
        assert_eq!(file.schema_hash(), 0xfeed);
        assert_eq!(file.sections().len(), 3);
        let raw = file.section("raw", None).unwrap();
        assert_eq!(raw.bytes(), b"hello");
        for s in file.sections() {
            assert_eq!(s.offset % 16, 0);
        }
        let numbers = file.section("numbers", Some(3)).unwrap();
        let archived =
            rkyv::access::<rkyv::Archived<Vec<u64>>, rancor::Error>(numbers.bytes()).unwrap();
        assert_eq!(archived.as_slice(), &[1u64, 2, 3][..]);
        assert!(file.section("numbers", Some(4)).is_none());
        assert_eq!(file.sections_named("names").count(), 1);
        file.expect_schema(0xfeed).unwrap();
    }

    #[test]
    fn opens_from_disk() {
        let dir = std::env::temp_dir().join(format!("exactly-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.snap");
        std::fs::write(&path, sample()).unwrap();
        let file = SnapshotFile::open_expecting(&path, 0xfeed).unwrap();
        assert_eq!(file.section("raw", None).unwrap().bytes(), b"hello");
        std::fs::write(&path, b"").unwrap();
        match SnapshotFile::open(&path) {
            Err(RuntimeError::CorruptCheckpoint { reason, .. }) => {
                assert!(reason.contains("truncated: 0 bytes"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_file_is_rejected() {
        let bytes = sample();
        let reason = reason_of(open(&bytes[..bytes.len() - 1]));
        assert!(reason.contains("truncated or appended"), "{reason}");
        let reason = reason_of(open(&bytes[..10]));
        assert!(reason.starts_with("truncated: 10 bytes"), "{reason}");
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[i] ^= 0x40;
            let reason = reason_of(open(&damaged));
            assert!(
                reason.contains("checksum")
                    || reason.contains("magic")
                    || reason.contains("reserved"),
                "byte {i}: {reason}"
            );
        }
    }

    #[test]
    fn wrong_magic_version_settings_schema() {
        let mut bytes = sample().to_vec();
        bytes[0] = b'X';
        assert!(reason_of(open(&bytes)).starts_with("not a snapshot file"));

        let mut bytes = sample().to_vec();
        patch_header(&mut bytes, |h| h.format_version = 2);
        assert_eq!(
            reason_of(open(&bytes)),
            "format version 2 is not supported (this build reads version 1)"
        );

        let mut bytes = sample().to_vec();
        patch_header(&mut bytes, |h| h.rkyv_version = (0, 7));
        assert_eq!(
            reason_of(open(&bytes)),
            "written with rkyv 0.7, this build uses rkyv 0.8"
        );

        let mut bytes = sample().to_vec();
        patch_header(&mut bytes, |h| h.settings ^= 1);
        let reason = reason_of(open(&bytes));
        assert!(
            reason.starts_with("written with rkyv settings big-endian, aligned, 32-bit pointers"),
            "{reason}"
        );

        let file = open(&sample()).unwrap();
        match file.expect_schema(7) {
            Err(RuntimeError::CorruptCheckpoint { reason, .. }) => {
                assert!(reason.contains("written by a different job"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// Builds a file with a hand-made section table (checksums right), to reach the table checks.
    fn with_table(entries: &[(u64, u64)]) -> Vec<u8> {
        let mut w = SnapshotWriter::new(1);
        w.add_bytes("s", None, &[7u8; 32]).unwrap();
        let mut bytes = w.finish().unwrap().to_vec();
        let table_offset = bytes.len() - SECTION_ENTRY_BYTES;
        bytes.truncate(table_offset);
        for &(offset, len) in entries {
            let mut entry = [0u8; SECTION_ENTRY_BYTES];
            entry[0] = b's';
            entry[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
            entry[48..56].copy_from_slice(&offset.to_le_bytes());
            entry[56..64].copy_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&entry);
        }
        let body_len = (bytes.len() - HEADER_BYTES) as u64;
        let body_crc = crc32c::crc32c(&bytes[HEADER_BYTES..]);
        patch_header(&mut bytes[..], |h| {
            h.body_len = body_len;
            h.body_crc = body_crc;
            h.section_count = entries.len() as u32;
        });
        bytes
    }

    #[test]
    fn section_out_of_bounds_or_misaligned() {
        open(&with_table(&[(64, 32)])).unwrap();
        let reason = reason_of(open(&with_table(&[(64, 33)])));
        assert!(reason.contains("run past the section table"), "{reason}");
        let reason = reason_of(open(&with_table(&[(72, 8)])));
        assert!(reason.contains("not 16-byte aligned"), "{reason}");
        let reason = reason_of(open(&with_table(&[(64, u64::MAX)])));
        assert!(reason.contains("run past"), "{reason}");
        let reason = reason_of(open(&with_table(&[(0, 8)])));
        assert!(reason.contains("aligned after the header"), "{reason}");
    }

    #[test]
    fn bad_section_names_are_write_errors() {
        let mut w = SnapshotWriter::new(1);
        let long = "x".repeat(41);
        assert!(matches!(
            w.add_bytes(&long, None, b""),
            Err(RuntimeError::SnapshotWrite { .. })
        ));
        assert!(w.add_bytes("", None, b"").is_err());
        w.add_bytes(&"y".repeat(40), None, b"").unwrap();
    }

    proptest! {
        #[test]
        fn arbitrary_sections_round_trip(
            schema: u64,
            sections in proptest::collection::vec(
                ("[a-z]{1,40}", proptest::option::of(any::<u16>()), proptest::collection::vec(any::<u8>(), 0..100)),
                0..8,
            )
        ) {
            let mut w = SnapshotWriter::new(schema);
            for (name, kg, bytes) in &sections {
                w.add_bytes(name, *kg, bytes).unwrap();
            }
            let file_bytes = w.finish().unwrap();
            let file = open(&file_bytes).unwrap();
            prop_assert_eq!(file.schema_hash(), schema);
            prop_assert_eq!(file.sections().len(), sections.len());
            for (info, (name, kg, bytes)) in file.sections().iter().zip(&sections) {
                prop_assert_eq!(&info.name, name);
                prop_assert_eq!(info.key_group, *kg);
                let section = file.mapped(info);
                prop_assert_eq!(section.bytes(), &bytes[..]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = open(&bytes);
        }
    }
}
