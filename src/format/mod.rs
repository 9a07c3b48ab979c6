//! The `.cnnrt` v1 file format: specification, writer, and validating mmap reader.
//!
//! `docs/FORMAT.md` is the same specification with more rationale; the two must agree.
//!
//! # Layout
//!
//! All integers are little-endian. Offsets are bytes from the start of the file.
//! `xxh3` is XXH3-64 with seed 0 (the reference algorithm of xxHash 0.8; cnnrt computes it with `twox_hash::XxHash3_64::oneshot`).
//!
//! ```text
//! +--------------------+ 0
//! | header (64 bytes)  |
//! +--------------------+ table_offset (the writer puts it at 64)
//! | section table      |  section_count entries × 32 bytes
//! +--------------------+
//! | META   (JSON)      |  any order, any gaps, no overlaps
//! | GRAPH  (JSON)      |
//! | WEIGHT_INDEX (bin) |
//! | WEIGHTS (f32 data) |  starts at a multiple of 64
//! +--------------------+ file_length
//! ```
//!
//! ## Header (64 bytes)
//!
//! | bytes  | type    | field          | rule |
//! |--------|---------|----------------|------|
//! | 0..8   | [u8; 8] | magic          | `89 43 4E 4E 52 54 0D 0A` (`b"\x89CNNRT\r\n"`) |
//! | 8..10  | u16     | major          | 1; any other value is refused |
//! | 10..12 | u16     | minor          | 0 written; any minor is accepted (minor bumps only add optional things) |
//! | 12..16 | u32     | flags          | bits 0–15 *required*: an unknown set bit is refused; bits 16–31 *optional*: ignored. v1 defines none; writers write 0 |
//! | 16..24 | u64     | table_offset   | ≥ 64; table must end inside the file |
//! | 24..28 | u32     | section_count  | ≤ 1024 |
//! | 28..32 | u32     | reserved       | must be 0 |
//! | 32..40 | u64     | file_length    | must equal the actual file length (catches truncation and appended bytes) |
//! | 40..48 | u64     | table_checksum | xxh3 of the section table's `section_count × 32` bytes |
//! | 48..56 | u64     | reserved       | must be 0 |
//! | 56..64 | u64     | header_checksum| xxh3 of bytes 0..56 |
//!
//! ## Section table entry (32 bytes)
//!
//! | bytes  | type | field    | rule |
//! |--------|------|----------|------|
//! | 0..4   | u32  | kind     | 1 META, 2 GRAPH, 3 WEIGHT_INDEX, 4 WEIGHTS; others unknown |
//! | 4..8   | u32  | flags    | bit 0 OPTIONAL; other bits must be 0. Known kinds must not be optional; unknown kinds must be (else: refused, "written by a newer cnnrt") and are then skipped |
//! | 8..16  | u64  | offset   | ≥ 64 |
//! | 16..24 | u64  | length   | `offset + length ≤ file_length` (checked arithmetic) |
//! | 24..32 | u64  | checksum | xxh3 of the section's bytes |
//!
//! Each kind appears at most once; the four known kinds exactly once. Non-empty sections
//! and the table must not overlap one another (or the header). Gaps between them are
//! allowed and ignored (the writer fills them with zeros).
//!
//! ## Sections
//!
//! * **META**: UTF-8 JSON of [`Metadata`] (≤ [`crate::limits::MAX_JSON_SECTION_BYTES`]).
//!   Missing fields take defaults; unknown fields are ignored.
//! * **GRAPH**: UTF-8 JSON of [`crate::graph::Graph`] as serde writes it (same size limit).
//!   Value shapes are stored already inferred.
//! * **WEIGHT_INDEX**: `u64 count`, then `count` entries of 24 bytes, entry `i` describing
//!   weight id `i`: `u64 offset` (bytes from the start of WEIGHTS, multiple of 64),
//!   `u64 elements`, `u32 dtype` (1 = f32 little-endian, the only v1 dtype), `u32 flags`
//!   (must be 0). The section is exactly `8 + 24 × count` bytes.
//! * **WEIGHTS**: raw weight data. The section starts at a multiple of 64 and every blob
//!   at a multiple of 64 from the section start, hence from the file start: in a mapping
//!   (page aligned) or an [`OpenOptions`]`{ storage: Copy }` buffer (64-byte aligned),
//!   each blob is a 64-byte aligned `&[f32]` with no copy. Blobs may share bytes (e.g.
//!   identical weights); the writer never does so. Bytes between blobs are ignored.
//!
//! # What validation guarantees
//!
//! [`ModelFile::open`] / [`ModelFile::from_bytes`] check everything once, and any failure is
//! [`crate::Error::Format`] naming the file and the problem; no file content can make them
//! panic, read out of bounds, or allocate more than a small multiple of the file's size
//! (JSON sections are bounded by the limit above; tables by the file length). In order:
//! header length, magic, major version, header checksum, required flags, reserved fields,
//! file length; table bounds and checksum; each entry's flags, kind, bounds, duplicates;
//! overlaps; presence of the four known sections; WEIGHTS alignment; JSON sizes; every
//! section's checksum (WEIGHTS skipped when [`OpenOptions::verify_weight_checksum`] is
//! false); META parse and [`Metadata::validate`]; GRAPH parse, then
//! [`crate::graph::Graph::infer_shapes`] on a clone (all ids, topological order, op
//! constraints, [`crate::limits`]) with every stored value shape equal to the inferred one;
//! WEIGHT_INDEX size, count = number of graph weights, dtype, flags, element count =
//! the weight's stored element count (`numel`, or the Winograd layouts' larger count), alignment, and `offset + 4 × elements ≤ WEIGHTS length`.
//!
//! Once open, a [`ModelFile`] is immutable and its accessors are infallible: every weight
//! id in the graph has an in-bounds, 64-byte aligned blob of exactly the element count its layout needs,
//! and every shape satisfies the limits, so kernels sized from the graph cannot index
//! outside the weights they are given.
//!
//! # Mapping contract (SIGBUS)
//!
//! With [`Storage::Mmap`] (the default) the weights are read straight from the page
//! cache. If another process truncates the file while it is mapped, touching a lost page
//! raises `SIGBUS`; if it rewrites the file in place, weight values change under the
//! running model (the graph and index were copied out at open, so shapes and bounds stay
//! valid, but outputs become garbage). Therefore: **replace model files atomically** —
//! write the new file beside the old one and `rename` it over (what [`write_model`]
//! does); the old mapping keeps the old inode alive until the model is dropped. Never
//! truncate, `cp` over, or edit a model file in place. Services that cannot guarantee
//! this (network file systems, files managed by other tools) use [`Storage::Copy`], which
//! reads the file into private memory at open (on huge pages where the OS grants them,
//! which also makes large-weight layers faster); nothing done to the file afterwards can
//! affect the open model.

pub mod layout;
mod metadata;
mod reader;
mod writer;

pub use layout::{MAGIC, VERSION_MAJOR, VERSION_MINOR};
pub use metadata::{ChannelOrder, CostRates, LayerNote, Metadata};
pub use reader::{ModelFile, OpenOptions, Storage};
pub use writer::{model_to_bytes, write_model};
