//! Opening and validating a `.cnnrt` file. All validation happens once, in [`validate`];
//! after that [`ModelFile`]'s accessors cannot fail.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::layout::*;
use super::metadata::Metadata;
use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::graph::{Graph, WeightId};
use crate::limits;

/// Where the bytes of an open model live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// Map the file read-only and private (`memmap2`, `MAP_PRIVATE` + `PROT_READ`). Weights
    /// are views into the page cache: nothing is copied and processes share one copy.
    ///
    /// **Contract**: while the model is open, the file must not be truncated or rewritten
    /// in place. Truncation makes later reads of the lost pages raise `SIGBUS` and kill the
    /// process; an in-place rewrite changes weight values under the running model. Replace
    /// model files atomically (write a new file, then `rename` it over the old one, as
    /// [`super::write_model`] does): the open mapping keeps the old inode alive.
    #[default]
    Mmap,
    /// Read the whole file into private memory (an anonymous mapping, with transparent
    /// huge pages requested where the OS has them). Costs the file's size in private
    /// memory and the read time, but nothing done to the file after `open` returns can
    /// affect the model. Use it where the contract above cannot be guaranteed (files on
    /// network or removable drives, files other tools may rewrite in place), or for
    /// speed on models with large weights: 2 MiB pages spare the TLB misses of
    /// streaming weights 4 KiB page by 4 KiB page (ResNet-18 on an AVX-512 Xeon, one
    /// thread: layer4's 3×3 convolutions, 16.8 MiB of weights each, 2.40 → 1.92–2.06 ms,
    /// the model 5–8% faster; open 0.3–1.3 ms → 31–71 ms, once 649 ms while the kernel
    /// compacted memory for huge pages). Page-cache pages of a mapped file stay 4 KiB on
    /// common Linux configurations, whatever `madvise` asks.
    Copy,
}

/// How [`ModelFile::open`] reads and checks a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    pub storage: Storage,
    /// Check the WEIGHTS section's xxh3 checksum at open (default `true`). This reads every
    /// weight byte once. Turning it off makes opening a mapped model cost only the
    /// metadata and graph (weights are paged in lazily on first use), at the price of not
    /// detecting bit rot in weight values. Structure (offsets, lengths, alignment, shapes)
    /// is validated either way, so a damaged weight can give wrong numbers but never an
    /// out-of-bounds read.
    pub verify_weight_checksum: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            storage: Storage::Mmap,
            verify_weight_checksum: true,
        }
    }
}

enum Backing {
    Mapped(memmap2::Mmap),
    /// A private copy of the file ([`Storage::Copy`]).
    Private(memmap2::Mmap),
    Heap(AlignedBuf),
}

/// An open, validated `.cnnrt` file. `Send + Sync`: share it between threads by reference
/// or `Arc`.
pub struct ModelFile {
    backing: Backing,
    path: PathBuf,
    version: (u16, u16),
    graph: Graph,
    meta: Metadata,
    /// Per weight id: (byte offset from the start of the file, element count).
    weights: Vec<(usize, usize)>,
}

/// What [`validate`] extracts from valid bytes.
pub(crate) struct Validated {
    pub version: (u16, u16),
    pub graph: Graph,
    pub meta: Metadata,
    pub weights: Vec<(usize, usize)>,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ModelFile>();
};

fn format_err(path: &Path, reason: String) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason,
    }
}

impl ModelFile {
    /// Opens and validates a model file (see the module doc for what validation
    /// guarantees). Every problem with the file's content is an [`Error::Format`]; failing
    /// to open or read it is an [`Error::Io`].
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<ModelFile> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < HEADER_LEN as u64 {
            return Err(format_err(
                path,
                format!("file is {len} bytes, shorter than the {HEADER_LEN}-byte header (truncated or not a cnnrt model)"),
            ));
        }
        let len_usize = usize::try_from(len).map_err(|_| {
            format_err(
                path,
                format!("file length {len} does not fit this platform's address space"),
            )
        })?;
        let backing = match opts.storage {
            Storage::Mmap => {
                // SAFETY: memmap2 requires that the mapped file is not modified or truncated
                // while mapped, which Rust cannot enforce. That is the documented contract of
                // `Storage::Mmap` (replace model files atomically by rename; use
                // `Storage::Copy` where that cannot be guaranteed). The mapping is private and
                // read-only, so this process never writes through it.
                let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) }
                    .map_err(|e| Error::io(path, e))?;
                Backing::Mapped(map)
            }
            Storage::Copy => Backing::Private(read_into_private_pages(&mut file, path, len_usize)?),
        };
        ModelFile::from_backing(backing, path.to_path_buf(), opts.verify_weight_checksum)
    }

    /// Validates an in-memory model, copying it into a 64-byte aligned buffer first.
    /// Errors name the path `<memory>`. Verifies every checksum.
    pub fn from_bytes(bytes: &[u8]) -> Result<ModelFile> {
        let path = PathBuf::from("<memory>");
        let buf = AlignedBuf::from_slice(bytes).ok_or_else(|| {
            Error::Limit(format!(
                "cannot allocate {} bytes to copy the model",
                bytes.len()
            ))
        })?;
        ModelFile::from_backing(Backing::Heap(buf), path, true)
    }

    fn from_backing(backing: Backing, path: PathBuf, verify_weights: bool) -> Result<ModelFile> {
        let bytes: &[u8] = match &backing {
            Backing::Mapped(m) | Backing::Private(m) => m,
            Backing::Heap(b) => b.as_bytes(),
        };
        // Mappings are page aligned and `AlignedBuf` is 64-byte aligned; `weight` relies on it.
        if !(bytes.as_ptr() as usize).is_multiple_of(WEIGHT_ALIGN) {
            return Err(format_err(
                &path,
                "internal: model buffer is not 64-byte aligned".into(),
            ));
        }
        let v = validate(bytes, &path, verify_weights)?;
        Ok(ModelFile {
            backing,
            path,
            version: v.version,
            graph: v.graph,
            meta: v.meta,
            weights: v.weights,
        })
    }

    /// The validated graph: every shape is consistent and within [`crate::limits`].
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// Weight `id`'s data: exactly `graph().weights[id].stored_elements()` elements, 64-byte aligned.
    ///
    /// # Panics
    /// If `id >= graph().weights.len()` (a caller bug; every id the graph uses is in range).
    pub fn weight(&self, id: WeightId) -> &[f32] {
        let (start, n) = self.weights[id];
        // In bounds and aligned by validation: start % 64 == 0, start + 4n <= len, and the
        // buffer itself starts 64-byte aligned (checked in `validate`).
        bytemuck::cast_slice(&self.bytes()[start..start + n * 4])
    }

    /// Every weight, indexed by weight id.
    pub fn weights(&self) -> Vec<&[f32]> {
        (0..self.weights.len()).map(|i| self.weight(i)).collect()
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mapped(m) | Backing::Private(m) => m,
            Backing::Heap(b) => b.as_bytes(),
        }
    }

    /// Whether the bytes are a memory map of the file (`Storage::Mmap`) rather than a copy.
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }

    /// Bytes of the model that the OS now maps with huge pages (Linux, read from
    /// `/proc/self/smaps`: `FilePmdMapped` of the file mapping, `AnonHugePages` of the
    /// private copy); `None` where that cannot be read or the model is on the heap.
    /// Counts the pages touched so far, so ask after a run. Weights streamed from 4 KiB
    /// pages read slower (docs/KERNELS.md, "Huge pages"); whether a mapped file gets
    /// huge pages depends on how the page cache holds it, not on this process.
    pub fn huge_page_bytes(&self) -> Option<u64> {
        let m: &[u8] = match &self.backing {
            Backing::Mapped(m) | Backing::Private(m) => m,
            Backing::Heap(_) => return None,
        };
        let lo = m.as_ptr() as usize;
        huge_pages_in(lo, lo + m.len())
    }

    /// The path it was opened from (`<memory>` for [`ModelFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's format version `(major, minor)`.
    pub fn version(&self) -> (u16, u16) {
        self.version
    }
}

/// Huge-page bytes of the mappings that overlap `lo..hi`, summed from `/proc/self/smaps`.
#[cfg(target_os = "linux")]
fn huge_pages_in(lo: usize, hi: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let (mut total, mut inside) = (0u64, false);
    for line in smaps.lines() {
        // A mapping's header starts with its address range, `start-end`, in hex.
        let first = line.split(' ').next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a < hi && lo < b;
                continue;
            }
        }
        if !inside {
            continue;
        }
        for key in ["FilePmdMapped:", "AnonHugePages:"] {
            if let Some(v) = line.strip_prefix(key) {
                let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
                total += kb * 1024;
            }
        }
    }
    Some(total)
}

#[cfg(not(target_os = "linux"))]
fn huge_pages_in(_lo: usize, _hi: usize) -> Option<u64> {
    None
}

impl fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("bytes", &self.bytes().len())
            .field("mapped", &self.is_mapped())
            .field("nodes", &self.graph.nodes.len())
            .field("weights", &self.weights.len())
            .finish()
    }
}

/// The one validation routine, shared by the reader and the writer's self-check.
/// The whole file in an anonymous, read-only mapping (page aligned), backed by
/// transparent huge pages where the OS grants them ([`Storage::Copy`]).
fn read_into_private_pages(file: &mut File, path: &Path, len: usize) -> Result<memmap2::Mmap> {
    use std::io::Read;
    let mut map = memmap2::MmapMut::map_anon(len).map_err(|e| {
        Error::Limit(format!(
            "cannot allocate {len} bytes to copy {}: {e}",
            path.display()
        ))
    })?;
    // Before the pages are touched, so that the read faults them in as huge pages. Only
    // a hint: without THP (or on other systems) the pages are ordinary ones.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    file.read_exact(&mut map[..])
        .map_err(|e| Error::io(path, e))?;
    map.make_read_only().map_err(|e| Error::io(path, e))
}

pub(crate) fn validate(bytes: &[u8], path: &Path, verify_weights: bool) -> Result<Validated> {
    validate_inner(bytes, verify_weights).map_err(|reason| format_err(path, reason))
}

struct Section {
    index: usize,
    entry: Entry,
    start: usize,
    end: usize,
}

impl Section {
    fn name(&self) -> String {
        format!(
            "section table entry {} ({})",
            self.index,
            kind_name(self.entry.kind)
        )
    }
}

fn validate_inner(bytes: &[u8], verify_weights: bool) -> Result<Validated, String> {
    if cfg!(target_endian = "big") {
        return Err(
            "cnnrt files are little-endian and this reader does not convert on big-endian hosts"
                .into(),
        );
    }
    let file_len = bytes.len();
    if file_len < HEADER_LEN {
        return Err(format!(
            "file is {file_len} bytes, shorter than the {HEADER_LEN}-byte header (truncated or not a cnnrt model)"
        ));
    }

    // ---- header ----
    if bytes[..8] != MAGIC {
        // An ONNX ModelProto starts with its ir_version, field 1 as a varint: byte 0x08.
        let hint = if bytes[0] == 0x08 {
            "; it may be an ONNX model: convert it first (`cnnrt convert MODEL.onnx -o MODEL.cnnrt`)"
        } else {
            ""
        };
        return Err(format!(
            "bad magic {:02x?}: not a cnnrt model (expected {:02x?}){hint}",
            &bytes[..8],
            MAGIC
        ));
    }
    let h = Header::decode(&bytes[..HEADER_LEN]);
    if h.major != VERSION_MAJOR {
        return Err(format!(
            "format version {}.{} is not supported: this reader understands major version {VERSION_MAJOR} \
             (convert the model again with this cnnrt, or upgrade cnnrt; a damaged header also shows this)",
            h.major, h.minor
        ));
    }
    let sum = checksum(&bytes[..56]);
    if sum != h.header_checksum {
        return Err(format!(
            "header checksum mismatch (stored {:#018x}, computed {sum:#018x}): the header is damaged",
            h.header_checksum
        ));
    }
    let unknown_required = h.flags & HEADER_REQUIRED_FLAGS_MASK & !HEADER_KNOWN_REQUIRED_FLAGS;
    if unknown_required != 0 {
        return Err(format!(
            "header sets required feature flags {unknown_required:#06x} this reader does not know: upgrade cnnrt"
        ));
    }
    if h.reserved0 != 0 || h.reserved1 != 0 {
        return Err("header reserved fields are not zero".into());
    }
    if h.file_length != file_len as u64 {
        return Err(format!(
            "header says the file is {} bytes but it is {file_len} bytes (truncated, or extra bytes appended)",
            h.file_length
        ));
    }

    // ---- section table ----
    let count = h.section_count as usize;
    if count > MAX_SECTIONS {
        return Err(format!(
            "section table declares {count} sections (at most {MAX_SECTIONS})"
        ));
    }
    let table_len = count * ENTRY_LEN; // <= 32 KiB, no overflow
    let table_start = usize::try_from(h.table_offset)
        .ok()
        .filter(|&o| o >= HEADER_LEN)
        .ok_or_else(|| {
            format!(
                "section table offset {} is inside the {HEADER_LEN}-byte header or beyond the file",
                h.table_offset
            )
        })?;
    let table_end = table_start
        .checked_add(table_len)
        .filter(|&e| e <= file_len)
        .ok_or_else(|| {
            format!(
                "section table extends past end of file: offset {table_start} + {count} entries × {ENTRY_LEN} bytes > file length {file_len}"
            )
        })?;
    let table = &bytes[table_start..table_end];
    let sum = checksum(table);
    if sum != h.table_checksum {
        return Err(format!(
            "section table checksum mismatch (stored {:#018x}, computed {sum:#018x}): the table is damaged",
            h.table_checksum
        ));
    }

    let mut sections: Vec<Section> = Vec::with_capacity(count);
    for (index, raw) in table.chunks_exact(ENTRY_LEN).enumerate() {
        let entry = Entry::decode(raw);
        let what = format!("section table entry {index} ({})", kind_name(entry.kind));
        if entry.flags & !SECTION_FLAG_OPTIONAL != 0 {
            return Err(format!(
                "{what} has unknown flag bits {:#010x}",
                entry.flags & !SECTION_FLAG_OPTIONAL
            ));
        }
        let known = matches!(
            entry.kind,
            KIND_META | KIND_GRAPH | KIND_WEIGHT_INDEX | KIND_WEIGHTS
        );
        if known && entry.flags & SECTION_FLAG_OPTIONAL != 0 {
            return Err(format!(
                "{what} is marked optional, but this kind is required"
            ));
        }
        if !known && entry.flags & SECTION_FLAG_OPTIONAL == 0 {
            return Err(format!(
                "{what} is a required section of a kind this reader does not know (written by a newer cnnrt? upgrade cnnrt)"
            ));
        }
        let end = entry
            .offset
            .checked_add(entry.length)
            .filter(|&e| e <= file_len as u64)
            .ok_or_else(|| {
                format!(
                "{what} extends past end of file: offset {} + length {} > file length {file_len}",
                entry.offset, entry.length
            )
            })?;
        // Both fit in usize now: end <= file_len.
        let (start, end) = (entry.offset as usize, end as usize);
        if start < HEADER_LEN {
            return Err(format!(
                "{what} overlaps the header: offset {start} < {HEADER_LEN}"
            ));
        }
        if sections.iter().any(|s| s.entry.kind == entry.kind) {
            return Err(format!(
                "{what}: duplicate section (kind appears twice in the table)"
            ));
        }
        sections.push(Section {
            index,
            entry,
            start,
            end,
        });
    }

    // Overlap: the table and all non-empty sections must be pairwise disjoint.
    let mut ranges: Vec<(usize, usize, String)> = sections
        .iter()
        .filter(|s| s.end > s.start)
        .map(|s| (s.start, s.end, s.name()))
        .collect();
    if table_end > table_start {
        ranges.push((table_start, table_end, "the section table".into()));
    }
    ranges.sort_by_key(|r| (r.0, r.1));
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!(
                "{} (bytes {}..{}) overlaps {} (bytes {}..{})",
                w[1].2, w[1].0, w[1].1, w[0].2, w[0].0, w[0].1
            ));
        }
    }

    let find = |kind: u32| -> Result<&Section, String> {
        sections
            .iter()
            .find(|s| s.entry.kind == kind)
            .ok_or_else(|| {
                format!(
                    "required section {} is missing from the section table",
                    kind_name(kind)
                )
            })
    };
    let meta_s = find(KIND_META)?;
    let graph_s = find(KIND_GRAPH)?;
    let index_s = find(KIND_WEIGHT_INDEX)?;
    let weights_s = find(KIND_WEIGHTS)?;

    if !weights_s.start.is_multiple_of(WEIGHT_ALIGN) {
        return Err(format!(
            "{} starts at offset {}, not a multiple of {WEIGHT_ALIGN}",
            weights_s.name(),
            weights_s.start
        ));
    }
    for s in [meta_s, graph_s] {
        if s.end - s.start > limits::MAX_JSON_SECTION_BYTES {
            return Err(format!(
                "{} is {} bytes, above the limit of {} bytes for JSON sections",
                s.name(),
                s.end - s.start,
                limits::MAX_JSON_SECTION_BYTES
            ));
        }
    }
    for s in &sections {
        if s.entry.kind == KIND_WEIGHTS && !verify_weights {
            continue;
        }
        let sum = checksum(&bytes[s.start..s.end]);
        if sum != s.entry.checksum {
            return Err(format!(
                "{} checksum mismatch (stored {:#018x}, computed {sum:#018x}): the section is damaged",
                s.name(),
                s.entry.checksum
            ));
        }
    }

    // ---- META ----
    let meta: Metadata = serde_json::from_slice(&bytes[meta_s.start..meta_s.end])
        .map_err(|e| format!("META section is not valid metadata JSON: {e}"))?;
    meta.validate()?;

    // ---- GRAPH ----
    let graph: Graph = serde_json::from_slice(&bytes[graph_s.start..graph_s.end])
        .map_err(|e| format!("GRAPH section is not valid graph JSON: {e}"))?;
    check_graph(&graph)?;

    // ---- WEIGHT_INDEX ----
    let weights = check_index(
        &bytes[index_s.start..index_s.end],
        &graph,
        weights_s.start,
        weights_s.end - weights_s.start,
    )?;

    Ok(Validated {
        version: (h.major, h.minor),
        graph,
        meta,
        weights,
    })
}

/// The stored graph must pass shape inference and its stored shapes must be the inferred
/// ones (the kernels trust stored shapes).
pub(crate) fn check_graph(graph: &Graph) -> Result<(), String> {
    let mut g = graph.clone();
    g.infer_shapes()
        .map_err(|e| format!("stored graph fails validation: {e}"))?;
    for (i, (stored, inferred)) in graph.values.iter().zip(&g.values).enumerate() {
        if stored.shape != inferred.shape {
            return Err(format!(
                "value '{}' (id {i}) is stored with shape {:?} but the graph implies {:?}",
                stored.name, stored.shape, inferred.shape
            ));
        }
    }
    Ok(())
}

fn check_index(
    index: &[u8],
    graph: &Graph,
    weights_start: usize,
    weights_len: usize,
) -> Result<Vec<(usize, usize)>, String> {
    if index.len() < INDEX_HEADER_LEN {
        return Err(format!(
            "WEIGHT_INDEX section is {} bytes, shorter than its {INDEX_HEADER_LEN}-byte count",
            index.len()
        ));
    }
    let count = u64_at(index, 0);
    if count != graph.weights.len() as u64 {
        return Err(format!(
            "WEIGHT_INDEX has {count} entries but the graph declares {} weights",
            graph.weights.len()
        ));
    }
    // count == graph.weights.len(), so it fits usize and the product is small.
    let expect_len = count as usize * INDEX_ENTRY_LEN + INDEX_HEADER_LEN;
    if index.len() != expect_len {
        return Err(format!(
            "WEIGHT_INDEX section is {} bytes; {count} entries need exactly {expect_len}",
            index.len()
        ));
    }
    let mut out = Vec::with_capacity(graph.weights.len());
    for (id, (raw, info)) in index[INDEX_HEADER_LEN..]
        .chunks_exact(INDEX_ENTRY_LEN)
        .zip(&graph.weights)
        .enumerate()
    {
        let e = IndexEntry::decode(raw);
        let what = format!("weight {id} ('{}')", info.name);
        if e.dtype != DTYPE_F32 {
            return Err(format!(
                "{what} has dtype code {} (v1 supports only {DTYPE_F32} = f32)",
                e.dtype
            ));
        }
        if e.flags != 0 {
            return Err(format!("{what} has non-zero index flags {:#010x}", e.flags));
        }
        let expect = info.stored_elements().ok_or_else(|| {
            format!(
                "{what} has layout {:?}, which does not fit its shape {:?}",
                info.layout, info.shape
            )
        })?;
        if e.elements != expect as u64 {
            return Err(format!(
                "{what} has {} elements in the index but its shape {:?} needs {expect}",
                e.elements, info.shape
            ));
        }
        if !e.offset.is_multiple_of(WEIGHT_ALIGN as u64) {
            return Err(format!(
                "{what} starts at WEIGHTS offset {}, not a multiple of {WEIGHT_ALIGN}",
                e.offset
            ));
        }
        e.elements
            .checked_mul(4)
            .and_then(|b| b.checked_add(e.offset))
            .filter(|&end| end <= weights_len as u64)
            .ok_or_else(|| {
                format!(
                    "{what} extends past the WEIGHTS section: offset {} + {} elements × 4 bytes > section length {weights_len}",
                    e.offset, e.elements
                )
            })?;
        // offset <= weights_len fits usize; weights_start + offset <= file length.
        out.push((weights_start + e.offset as usize, expect));
    }
    Ok(out)
}
