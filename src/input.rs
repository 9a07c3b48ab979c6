//! Turning files into input tensors: `.npy` arrays as they are, images (PNG / JPEG)
//! resized and normalized with the preprocessing stored in the model.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{ChannelOrder, Metadata};
use crate::limits;
use npyz::WriterBuilder;

/// A batch ready to run: `data.len() == batch × per-sample size`.
#[derive(Clone, Debug)]
pub struct InputBatch {
    pub data: Vec<f32>,
    pub batch: usize,
    /// Where each sample came from, for printing.
    pub sources: Vec<PathBuf>,
}

/// Reads an `.npy` float32 array whose shape is `[N, sample...]` or `[sample...]`.
pub fn read_npy(path: &Path, sample_shape: &[usize]) -> Result<InputBatch> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (data, shape) =
        npy_from_bytes(&bytes).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let sample: usize = sample_shape.iter().product();
    let batch = if shape == sample_shape {
        1
    } else if shape.len() == sample_shape.len() + 1 && shape[1..] == *sample_shape {
        shape[0]
    } else {
        return Err(Error::Input(format!(
            "{}: array shape {shape:?} does not match the model input {sample_shape:?} (with or without a leading batch)",
            path.display()
        )));
    };
    debug_assert_eq!(data.len(), batch * sample);
    Ok(InputBatch {
        data,
        batch,
        sources: vec![path.to_path_buf()],
    })
}

/// Decodes a float32 `.npy` (C order) from memory, checking its size before allocating.
pub fn npy_from_bytes(bytes: &[u8]) -> std::result::Result<(Vec<f32>, Vec<usize>), String> {
    check_npy_header(bytes)?;
    let npy = npyz::NpyFile::new(bytes).map_err(|e| format!("not a readable .npy file: {e}"))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() != npyz::Order::C {
        return Err("Fortran-ordered arrays are not supported; save with C order".into());
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| {
            n <= limits::MAX_TENSOR_ELEMENTS && n.checked_mul(4).is_some_and(|b| b <= bytes.len())
        })
        .ok_or_else(|| format!("shape {shape:?} is larger than the file or the limit"))?;
    let dtype = npy.dtype();
    let data: Vec<f32> = match &dtype {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 4 => {
            npy.into_vec::<f32>()
                .map_err(|e| format!("cannot read float32 data: {e}"))?
        }
        other => return Err(format!("dtype {:?} is not float32", other.descr())),
    };
    if data.len() != n {
        return Err(format!(
            "array holds {} elements, its shape {shape:?} says {n}",
            data.len()
        ));
    }
    Ok((data, shape))
}

/// Longest `.npy` header accepted (numpy's own default `max_header_size`).
const MAX_NPY_HEADER: usize = 10_000;
/// Deepest bracket nesting accepted in a `.npy` header. A float32 array's header needs 2
/// (the dict and its shape tuple).
const MAX_NPY_HEADER_DEPTH: usize = 4;

/// Checks what npyz does not before it parses the header: the header's declared length
/// (npyz allocates it before reading, up to 4 GiB for a version 2 header), and its bracket
/// nesting (npyz parses the header, a Python literal, with a backtracking parser whose time
/// doubles with every level: 20 nested `[` take minutes). Anything that is not a `.npy`
/// preamble is left for npyz to report.
fn check_npy_header(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.len() < 10 || !bytes.starts_with(b"\x93NUMPY") {
        return Ok(());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Ok(()),
    };
    if len > MAX_NPY_HEADER {
        return Err(format!(
            "the .npy header is {len} bytes (at most {MAX_NPY_HEADER})"
        ));
    }
    let header = bytes.get(start..start + len).ok_or_else(|| {
        format!(
            "the .npy header is {len} bytes but the file ends after {}",
            bytes.len() - start
        )
    })?;
    // Brackets inside strings count too: that can only over-count, and float32 headers
    // have none there.
    let (mut depth, mut max_depth) = (0usize, 0usize);
    for &c in header {
        match c {
            b'[' | b'(' | b'{' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            b']' | b')' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if max_depth > MAX_NPY_HEADER_DEPTH {
        return Err(format!(
            "the .npy header nests brackets {max_depth} deep (at most {MAX_NPY_HEADER_DEPTH}; a float32 array needs 2)"
        ));
    }
    Ok(())
}

/// Writes a float32 `.npy` file.
pub fn write_npy(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    let mut buf = Vec::new();
    {
        let shape64: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape64)
            .writer(&mut buf)
            .begin_nd()
            .map_err(|e| Error::Other(format!("npy: {e}")))?;
        w.extend(data.iter().copied())
            .map_err(|e| Error::Other(format!("npy: {e}")))?;
        w.finish().map_err(|e| Error::Other(format!("npy: {e}")))?;
    }
    std::fs::write(path, buf).map_err(|e| Error::io(path, e))
}

fn is_image(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// Decodes an image and converts it to the model's `C×H×W` input: resized (bilinear) to
/// H×W, scaled to [0, 1], channels in the stored order, then `(x - mean[c]) / std[c]`.
pub fn image_to_tensor(
    bytes: &[u8],
    sample_shape: &[usize],
    meta: &Metadata,
    out: &mut Vec<f32>,
) -> Result<()> {
    let [c, h, w] = *sample_shape else {
        return Err(Error::Input(format!(
            "images need a C×H×W model input; this model takes {sample_shape:?}"
        )));
    };
    if c != 1 && c != 3 {
        return Err(Error::Input(format!(
            "images need a 1- or 3-channel model input; this model takes {c} channels"
        )));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Input(format!("cannot read image: {e}")))?;
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(16384);
    lim.max_image_height = Some(16384);
    lim.max_alloc = Some(512 << 20);
    reader.limits(lim);
    let img = reader
        .decode()
        .map_err(|e| Error::Input(format!("cannot decode image: {e}")))?;
    let img = if img.width() as usize != w || img.height() as usize != h {
        img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle)
    } else {
        img
    };
    let stat = |v: &[f32], i: usize, default: f32| {
        if v.is_empty() {
            default
        } else if v.len() == 1 {
            v[0]
        } else {
            v.get(i).copied().unwrap_or(default)
        }
    };
    let start = out.len();
    out.resize(start + c * h * w, 0.0);
    let dst = &mut out[start..];
    if c == 1 {
        let g = img.to_luma8();
        let (m, s) = (stat(&meta.mean, 0, 0.0), stat(&meta.std, 0, 1.0));
        for (d, p) in dst.iter_mut().zip(g.pixels()) {
            *d = (p.0[0] as f32 / 255.0 - m) / s;
        }
    } else {
        let rgb = img.to_rgb8();
        let bgr = meta.channel_order == ChannelOrder::Bgr;
        for ch in 0..3 {
            let src_ch = if bgr { 2 - ch } else { ch };
            let (m, s) = (stat(&meta.mean, ch, 0.0), stat(&meta.std, ch, 1.0));
            for (i, p) in rgb.pixels().enumerate() {
                dst[ch * h * w + i] = (p.0[src_ch] as f32 / 255.0 - m) / s;
            }
        }
    }
    Ok(())
}

/// Reads INPUT as the CLI takes it: an `.npy` tensor, one image, or a folder of images
/// (sorted by name, each one sample of the batch).
pub fn load_input(path: &Path, sample_shape: &[usize], meta: &Metadata) -> Result<InputBatch> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Input(format!(
                "{}: no .png / .jpg images in this folder",
                path.display()
            )));
        }
        let mut data = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
            image_to_tensor(&bytes, sample_shape, meta, &mut data)
                .map_err(|e| Error::Input(format!("{}: {e}", f.display())))?;
        }
        return Ok(InputBatch {
            data,
            batch: files.len(),
            sources: files,
        });
    }
    if is_image(path) {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut data = Vec::new();
        image_to_tensor(&bytes, sample_shape, meta, &mut data)
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        return Ok(InputBatch {
            data,
            batch: 1,
            sources: vec![path.to_path_buf()],
        });
    }
    read_npy(path, sample_shape)
}
