//! A 64-byte aligned run of f32 for the kernels' inputs, outputs, weights and scratch in
//! the examples and benches, as the session keeps its buffers (`AlignedFloats` in
//! src/aligned.rs). A large `Vec<f32>` from glibc starts 16 bytes past a cache line, so
//! every 64-byte load would touch two lines.

use std::ops::{Deref, DerefMut};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([f32; 16]);

pub struct Aligned {
    lines: Vec<Line>,
    len: usize,
}

impl Aligned {
    pub fn zeroed(len: usize) -> Aligned {
        Aligned {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    pub fn from_slice(v: &[f32]) -> Aligned {
        let mut a = Aligned::zeroed(v.len());
        a.copy_from_slice(v);
        a
    }
}

impl From<Vec<f32>> for Aligned {
    fn from(v: Vec<f32>) -> Aligned {
        Aligned::from_slice(&v)
    }
}

impl Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}
