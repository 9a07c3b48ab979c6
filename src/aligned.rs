//! Heap buffers whose start is 64-byte aligned: bytes of a model file read into memory
//! (weight blobs at 64-byte aligned file offsets are then 64-byte aligned `&[f32]`, as in
//! a mapping), and the f32 buffers a session owns.

/// One 64-byte, 64-aligned block; a `Vec` of these is an aligned byte buffer.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Block([u8; 64]);

pub(crate) struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes, or `None` if the allocation fails (so a huge size
    /// gives an error rather than an abort).
    pub(crate) fn try_zeroed(len: usize) -> Option<AlignedBuf> {
        let n = len.div_ceil(64);
        let mut blocks: Vec<Block> = Vec::new();
        blocks.try_reserve_exact(n).ok()?;
        blocks.resize(n, Block([0; 64]));
        Some(AlignedBuf { blocks, len })
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<AlignedBuf> {
        let mut b = AlignedBuf::try_zeroed(bytes.len())?;
        b.as_bytes_mut().copy_from_slice(bytes);
        Some(b)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.blocks);
        &all[..self.len]
    }

    pub(crate) fn as_bytes_mut(&mut self) -> &mut [u8] {
        let all: &mut [u8] = bytemuck::cast_slice_mut(&mut self.blocks);
        &mut all[..self.len]
    }
}

/// A 64-byte aligned run of f32: a session's arena, scratch and the weights it
/// rearranged. Kernels' vector loads then never split a cache line, given offsets that
/// are multiples of 16 floats (the arena plan's and the scratch slots' are).
///
/// Measured: weights rearranged into a `Vec<f32>` (MobileNetV2's channels-last 1×1
/// layers, AVX-512, 1 thread) 5.80 ms, the same panels in place in the file 5.50; the
/// arena and scratch as `Vec<f32>` sat 16 bytes past a line, so every 64-byte load of an
/// activation touched two lines (see docs/KERNELS.md, "Aligned activations").
pub(crate) struct AlignedFloats(AlignedBuf);

impl AlignedFloats {
    /// `len` zeros, or `None` if the allocation fails.
    pub(crate) fn try_zeroed(len: usize) -> Option<AlignedFloats> {
        AlignedBuf::try_zeroed(len.checked_mul(4)?).map(AlignedFloats)
    }

    /// A copy of `w`, or `None` if the allocation fails.
    pub(crate) fn try_from_slice(w: &[f32]) -> Option<AlignedFloats> {
        let mut a = AlignedFloats::try_zeroed(w.len())?;
        a.copy_from_slice(w);
        Some(a)
    }
}

impl std::ops::Deref for AlignedFloats {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        bytemuck::cast_slice(self.0.as_bytes())
    }
}

impl std::ops::DerefMut for AlignedFloats {
    fn deref_mut(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(self.0.as_bytes_mut())
    }
}

impl AsRef<[f32]> for AlignedFloats {
    fn as_ref(&self) -> &[f32] {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::AlignedFloats;

    #[test]
    fn aligned_floats_start_on_a_line() {
        for len in [0, 1, 15, 16, 17, 1000, 100_003] {
            let mut a = AlignedFloats::try_zeroed(len).unwrap();
            assert_eq!(a.len(), len);
            assert_eq!(a.as_ptr() as usize % 64, 0, "len {len}");
            assert!(a.iter().all(|&v| v == 0.0));
            a.iter_mut().for_each(|v| *v = 1.0);
            let b = AlignedFloats::try_from_slice(&a).unwrap();
            assert_eq!(b.as_ptr() as usize % 64, 0, "len {len}");
            assert!(b.iter().all(|&v| v == 1.0));
        }
    }
}
