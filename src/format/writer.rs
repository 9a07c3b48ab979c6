//! Writing `.cnnrt` files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::*;
use super::metadata::Metadata;
use super::reader::{check_graph, validate};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::limits;

/// Serializes a model to the bytes of a `.cnnrt` v1 file.
///
/// `weights[i]` is the data of `graph.weights[i]` and must have exactly its `numel()`
/// elements. The graph must already have gone through [`Graph::infer_shapes`] (stored
/// shapes are checked against inferred ones). Before returning, the bytes are run through
/// the reader's validation, so a file this writes is one the reader accepts.
pub fn model_to_bytes(graph: &Graph, weights: &[&[f32]], meta: &Metadata) -> Result<Vec<u8>> {
    if weights.len() != graph.weights.len() {
        return Err(Error::Graph(format!(
            "writer: {} weight buffers given for a graph with {} weights",
            weights.len(),
            graph.weights.len()
        )));
    }
    for (i, (w, info)) in weights.iter().zip(&graph.weights).enumerate() {
        if Some(w.len()) != info.stored_elements() {
            return Err(Error::Graph(format!(
                "writer: weight {i} ('{}') has {} elements, its shape {:?} in layout {:?} needs {:?}",
                info.name,
                w.len(),
                info.shape,
                info.layout,
                info.stored_elements()
            )));
        }
    }
    meta.validate()
        .map_err(|r| Error::Other(format!("writer: {r}")))?;
    check_graph(graph).map_err(|r| Error::Graph(format!("writer: {r}")))?;

    let meta_json = serde_json::to_vec(meta)
        .map_err(|e| Error::Other(format!("writer: metadata JSON: {e}")))?;
    let graph_json =
        serde_json::to_vec(graph).map_err(|e| Error::Other(format!("writer: graph JSON: {e}")))?;
    for (what, json) in [("metadata", &meta_json), ("graph", &graph_json)] {
        if json.len() > limits::MAX_JSON_SECTION_BYTES {
            return Err(Error::Limit(format!(
                "{what} JSON is {} bytes (at most {})",
                json.len(),
                limits::MAX_JSON_SECTION_BYTES
            )));
        }
    }

    let overflow = || Error::Limit("model too large for this platform's address space".into());

    // Blob offsets within WEIGHTS.
    let mut index = Vec::with_capacity(INDEX_HEADER_LEN + weights.len() * INDEX_ENTRY_LEN);
    index.extend_from_slice(&(weights.len() as u64).to_le_bytes());
    let mut blob_offsets = Vec::with_capacity(weights.len());
    let mut weights_len = 0usize;
    for w in weights {
        let off = align_up(weights_len, WEIGHT_ALIGN).ok_or_else(overflow)?;
        blob_offsets.push(off);
        let e = IndexEntry {
            offset: off as u64,
            elements: w.len() as u64,
            dtype: DTYPE_F32,
            flags: 0,
        };
        index.extend_from_slice(&e.encode());
        weights_len = w
            .len()
            .checked_mul(4)
            .and_then(|b| b.checked_add(off))
            .ok_or_else(overflow)?;
    }

    // File layout: header | table | META | GRAPH | WEIGHT_INDEX | WEIGHTS.
    let kinds = [KIND_META, KIND_GRAPH, KIND_WEIGHT_INDEX, KIND_WEIGHTS];
    let table_start = HEADER_LEN;
    let table_end = table_start + kinds.len() * ENTRY_LEN;
    let meta_start = table_end;
    let graph_start = align_up(meta_start + meta_json.len(), 8).ok_or_else(overflow)?;
    let index_start = align_up(graph_start + graph_json.len(), 8).ok_or_else(overflow)?;
    let weights_start = align_up(index_start + index.len(), WEIGHT_ALIGN).ok_or_else(overflow)?;
    let file_len = weights_start
        .checked_add(weights_len)
        .ok_or_else(overflow)?;

    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(file_len).map_err(|_| {
        Error::Limit(format!(
            "cannot allocate {file_len} bytes for the model file"
        ))
    })?;
    out.resize(table_end, 0);
    out.extend_from_slice(&meta_json);
    out.resize(graph_start, 0);
    out.extend_from_slice(&graph_json);
    out.resize(index_start, 0);
    out.extend_from_slice(&index);
    out.resize(weights_start, 0);
    for (w, &off) in weights.iter().zip(&blob_offsets) {
        out.resize(weights_start + off, 0);
        out.extend_from_slice(bytemuck::cast_slice(w));
    }
    debug_assert_eq!(out.len(), file_len);

    let ranges = [
        (meta_start, meta_json.len()),
        (graph_start, graph_json.len()),
        (index_start, index.len()),
        (weights_start, weights_len),
    ];
    for (i, (&kind, &(off, len))) in kinds.iter().zip(&ranges).enumerate() {
        let e = Entry {
            kind,
            flags: 0,
            offset: off as u64,
            length: len as u64,
            checksum: checksum(&out[off..off + len]),
        };
        out[table_start + i * ENTRY_LEN..table_start + (i + 1) * ENTRY_LEN]
            .copy_from_slice(&e.encode());
    }
    let header = Header {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
        flags: 0,
        table_offset: table_start as u64,
        section_count: kinds.len() as u32,
        reserved0: 0,
        file_length: file_len as u64,
        table_checksum: checksum(&out[table_start..table_end]),
        reserved1: 0,
        header_checksum: 0, // computed by encode
    };
    out[..HEADER_LEN].copy_from_slice(&header.encode());

    self_check(&out)?;
    Ok(out)
}

/// Runs the reader's validation on the writer's output (borrowed, no copy). Catches what
/// the JSON round trip loses, e.g. a non-finite float in the graph, which JSON writes as
/// `null` and cannot read back.
fn self_check(bytes: &[u8]) -> Result<()> {
    // Validation checks offsets, not the buffer's address, so the Vec need not be aligned.
    validate(bytes, Path::new("<writer output>"), true).map(|_| ()).map_err(|e| {
        Error::Other(format!(
            "writer: the produced file fails the reader's validation (a NaN or infinite value in the graph's attributes?): {e}"
        ))
    })
}

/// Writes a model to `path` atomically: the bytes go to a temporary file in the same
/// directory, which is flushed to disk and then renamed over `path`. A process that has
/// the old file mapped keeps reading the old inode, which is what makes
/// [`super::Storage::Mmap`] safe against model updates.
pub fn write_model(path: &Path, graph: &Graph, weights: &[&[f32]], meta: &Metadata) -> Result<()> {
    let bytes = model_to_bytes(graph, weights, meta)?;
    write_atomic(path, &bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::Other(format!("{}: not a file path", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable; best effort (not possible on every platform).
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
