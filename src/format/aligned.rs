//! A heap byte buffer whose start is 64-byte aligned, so weight blobs at 64-byte aligned
//! file offsets are 64-byte aligned `&[f32]` in memory, as they are in a mapping.

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

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        let all: &mut [u8] = bytemuck::cast_slice_mut(&mut self.blocks);
        &mut all[..self.len]
    }
}
