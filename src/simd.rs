//! Instruction-set tiers, detected once at run time and capped on request.
//!
//! One portable binary carries every tier; kernels are `#[target_feature]` functions chosen
//! when a plan is made. The cap (`CNNRT_MAX_ISA=avx512|avx2|scalar`, or the API option)
//! lets one machine test every tier it has.

use std::fmt;
use std::str::FromStr;

/// A kernel tier, ordered from least to most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust; what runs on any CPU.
    Scalar,
    /// x86-64 AVX2 + FMA (256-bit).
    Avx2,
    /// x86-64 AVX-512 F + BW + VL (+ AVX2/FMA) (512-bit, 32 registers, masks).
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// The best tier this CPU supports, ignoring any cap.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                // Every AVX-512 CPU has it; the narrow im2col rows use `pdep`.
                && is_x86_feature_detected!("bmi2")
            {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Whether this CPU can run kernels of this tier.
    pub fn is_supported(self) -> bool {
        self <= Isa::detect()
    }

    /// Every tier this CPU supports, lowest first (what the property tests iterate).
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The cap from the `CNNRT_MAX_ISA` environment variable, if set and valid.
    pub fn env_cap() -> Option<Isa> {
        std::env::var("CNNRT_MAX_ISA")
            .ok()
            .and_then(|v| v.parse().ok())
    }

    /// The tier to plan with: the detected one, lowered by the env cap and by `cap`.
    pub fn select(cap: Option<Isa>) -> Isa {
        let mut isa = Isa::detect();
        for c in [Isa::env_cap(), cap].into_iter().flatten() {
            isa = isa.min(c);
        }
        isa
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" | "portable" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avx512" | "avx-512" => Ok(Isa::Avx512),
            other => Err(format!(
                "unknown ISA '{other}' (expected avx512, avx2 or scalar)"
            )),
        }
    }
}

/// Sets flush-to-zero and denormals-are-zero on the calling thread, so kernels never hit
/// the 100× slower denormal path. Called on every thread that runs kernels.
pub fn set_flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(deprecated)]
        // SAFETY: only sets the FTZ (bit 15) and DAZ (bit 6) bits of this thread's MXCSR,
        // which changes how denormals round, nothing else; SSE is baseline on x86-64.
        unsafe {
            use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
            _mm_setcsr(_mm_getcsr() | 0x8040);
        }
    }
}
