//! Heap buffers whose start is 64-byte aligned: bytes of a model file read into memory
//! (weight blobs at 64-byte aligned file offsets are then 64-byte aligned `&[f32]`, as in
//! a mapping), and the f32 buffers a session owns.

/// A byte buffer whose start is 64-byte aligned.
pub(crate) struct AlignedBuf {
    /// Zeroed memory from the allocator, up to 64 bytes more than `len`; the buffer is
    /// `len` bytes of it from `start`, the first 64-byte aligned address. (A type aligned
    /// to 64 would make the allocator write the zeros itself: see `try_zeroed`.)
    units: Vec<u128>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes, or `None` if the allocation fails (so a huge size
    /// gives an error rather than an abort).
    ///
    /// Asked of the allocator as zeroed memory of an alignment it gives by itself
    /// (`calloc`): a large buffer then comes as fresh pages that the OS zeroes when they
    /// are first touched, and pages never touched (a workspace planned for a larger batch
    /// than the runs use) cost no memory. Zeroed memory of 64-byte alignment is
    /// allocated and then written with zeros by Rust's system allocator, which made
    /// creating a ResNet-18 session (3.3 MB of workspace and scratch) take 1.7–3.2 ms in
    /// a fresh process, its page faults nearly all of it.
    pub(crate) fn try_zeroed(len: usize) -> Option<AlignedBuf> {
        let units: Vec<u128> =
            bytemuck::allocation::try_zeroed_vec(len.checked_add(64)?.div_ceil(16)).ok()?;
        let start = (units.as_ptr() as *const u8).align_offset(64);
        // An allocation aligned to at least 8 bytes is at most 56 bytes from a line.
        (start <= 64).then_some(AlignedBuf { units, start, len })
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<AlignedBuf> {
        let mut b = AlignedBuf::try_zeroed(bytes.len())?;
        b.as_bytes_mut().copy_from_slice(bytes);
        Some(b)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.units);
        &all[self.start..self.start + self.len]
    }

    pub(crate) fn as_bytes_mut(&mut self) -> &mut [u8] {
        let all: &mut [u8] = bytemuck::cast_slice_mut(&mut self.units);
        &mut all[self.start..self.start + self.len]
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
