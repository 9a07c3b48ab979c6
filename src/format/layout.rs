//! Byte layout of the `.cnnrt` v1 container: constants, header and table entry codecs.
//! See the module doc of [`crate::format`] (and `docs/FORMAT.md`) for the specification.

/// First 8 bytes of every `.cnnrt` file. The high first byte catches 7-bit transfers,
/// the CR LF catches line-ending conversion (the PNG trick).
pub const MAGIC: [u8; 8] = *b"\x89CNNRT\r\n";
/// Format major version this crate reads and writes. Readers refuse other majors.
pub const VERSION_MAJOR: u16 = 1;
/// Format minor version this crate writes. Readers accept any minor of a known major.
pub const VERSION_MINOR: u16 = 0;

pub const HEADER_LEN: usize = 64;
pub const ENTRY_LEN: usize = 32;
/// Alignment of the WEIGHTS section and of every weight blob, from the start of the file.
pub const WEIGHT_ALIGN: usize = 64;
/// A table with more entries than this is refused before anything is allocated for it.
pub const MAX_SECTIONS: usize = 1024;

/// Header flags 0..=15 are *required*: a reader that does not know a set one must refuse
/// the file. Flags 16..=31 are *optional*: unknown ones are ignored. v1 defines none.
pub const HEADER_REQUIRED_FLAGS_MASK: u32 = 0x0000_FFFF;
/// Required header flags this reader understands (none in v1).
pub const HEADER_KNOWN_REQUIRED_FLAGS: u32 = 0;

/// Section entry flag: a reader that does not know this section's kind may skip it.
pub const SECTION_FLAG_OPTIONAL: u32 = 1;

pub const KIND_META: u32 = 1;
pub const KIND_GRAPH: u32 = 2;
pub const KIND_WEIGHT_INDEX: u32 = 3;
pub const KIND_WEIGHTS: u32 = 4;

/// WEIGHT_INDEX: bytes before the first entry (a u64 entry count).
pub const INDEX_HEADER_LEN: usize = 8;
/// WEIGHT_INDEX: bytes per entry.
pub const INDEX_ENTRY_LEN: usize = 24;
/// WEIGHT_INDEX dtype code for little-endian IEEE-754 binary32; the only v1 dtype.
pub const DTYPE_F32: u32 = 1;

pub fn kind_name(kind: u32) -> String {
    match kind {
        KIND_META => "META".into(),
        KIND_GRAPH => "GRAPH".into(),
        KIND_WEIGHT_INDEX => "WEIGHT_INDEX".into(),
        KIND_WEIGHTS => "WEIGHTS".into(),
        k => format!("kind {k:#x}"),
    }
}

/// Decoded fixed header (bytes 0..64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub major: u16,
    pub minor: u16,
    pub flags: u32,
    pub table_offset: u64,
    pub section_count: u32,
    pub reserved0: u32,
    pub file_length: u64,
    pub table_checksum: u64,
    pub reserved1: u64,
    pub header_checksum: u64,
}

/// One decoded section table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub length: u64,
    pub checksum: u64,
}

/// One decoded WEIGHT_INDEX entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Bytes from the start of the WEIGHTS section.
    pub offset: u64,
    /// Number of elements (not bytes).
    pub elements: u64,
    pub dtype: u32,
    pub flags: u32,
}

/// XXH3-64, seed 0 (`twox-hash`, which picks its AVX2 / SSE2 / NEON code at run time:
/// ResNet-18's 81 MB of weights hash in 10.4–11.0 ms instead of xxhash-rust's 12.4–14.1,
/// same values; one core reads about 12 GB/s from memory here, so about 7 ms is the
/// floor).
pub fn checksum(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

// Fixed-width little-endian reads from a slice whose length the caller has checked.
// They return 0 rather than panic if it was not, which the callers' length checks rule out.
pub fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .unwrap_or(0)
}
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

impl Header {
    /// Decodes bytes 0..64 (`b` must be at least [`HEADER_LEN`] long). The magic is
    /// checked by the caller.
    pub fn decode(b: &[u8]) -> Header {
        Header {
            major: u16_at(b, 8),
            minor: u16_at(b, 10),
            flags: u32_at(b, 12),
            table_offset: u64_at(b, 16),
            section_count: u32_at(b, 24),
            reserved0: u32_at(b, 28),
            file_length: u64_at(b, 32),
            table_checksum: u64_at(b, 40),
            reserved1: u64_at(b, 48),
            header_checksum: u64_at(b, 56),
        }
    }

    /// Encodes the header, computing `header_checksum` over bytes 0..56.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.minor.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.section_count.to_le_bytes());
        b[28..32].copy_from_slice(&self.reserved0.to_le_bytes());
        b[32..40].copy_from_slice(&self.file_length.to_le_bytes());
        b[40..48].copy_from_slice(&self.table_checksum.to_le_bytes());
        b[48..56].copy_from_slice(&self.reserved1.to_le_bytes());
        let sum = checksum(&b[..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }
}

impl Entry {
    pub fn decode(b: &[u8]) -> Entry {
        Entry {
            kind: u32_at(b, 0),
            flags: u32_at(b, 4),
            offset: u64_at(b, 8),
            length: u64_at(b, 16),
            checksum: u64_at(b, 24),
        }
    }

    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.length.to_le_bytes());
        b[24..32].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }
}

impl IndexEntry {
    pub fn decode(b: &[u8]) -> IndexEntry {
        IndexEntry {
            offset: u64_at(b, 0),
            elements: u64_at(b, 8),
            dtype: u32_at(b, 16),
            flags: u32_at(b, 20),
        }
    }

    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.elements.to_le_bytes());
        b[16..20].copy_from_slice(&self.dtype.to_le_bytes());
        b[20..24].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// Rounds `x` up to a multiple of `align` (a power of two); `None` on overflow.
pub fn align_up(x: usize, align: usize) -> Option<usize> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}
