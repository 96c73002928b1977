//! AVX2 + FMA microkernels (f32: 6 × 16, f64: 6 × 8), 12 accumulators in ymm registers.
//!
//! Tile shapes: the classic Haswell tile. 16 ymm registers hold 12 accumulators, the two
//! vectors of the B row and the broadcast A value. Zen 4 issues two 256-bit FMAs per cycle
//! with a 4-cycle latency: 8 in flight are needed, 12 are there.
//!
//! Block sizes (L1d 32 KiB, L2 1 MiB per core):
//! - `KC = 256`: the B micro-panel `KC × NR` is 16 KiB (f32) / 16 KiB (f64), half of L1,
//!   leaving room for the A micro-panel (6 KiB / 12 KiB) it meets.
//! - `MC`: the A block `MC × KC` in L2 across all B micro-panels: f32 `192 × 256 × 4` =
//!   192 KiB (a multiple of MR = 6).
//! - `NC`: the B block `KC × NC` in half of L2 across the A blocks (f32 512, f64 256).

use std::arch::x86_64::*;

use super::kernel::{Kernel, simd_kernel, simd_kernel_methods};

/// The AVX2 + FMA kernels.
pub struct Avx2;

simd_kernel!(
    kernel_f32,
    f32,
    "avx2,fma",
    8,
    mr = 6,
    nv = 2,
    zero = _mm256_setzero_ps,
    splat = _mm256_set1_ps,
    load = _mm256_loadu_ps,
    store = _mm256_storeu_ps,
    fma = _mm256_fmadd_ps,
    mul = _mm256_mul_ps
);

simd_kernel!(
    kernel_f64,
    f64,
    "avx2,fma",
    4,
    mr = 6,
    nv = 2,
    zero = _mm256_setzero_pd,
    splat = _mm256_set1_pd,
    load = _mm256_loadu_pd,
    store = _mm256_storeu_pd,
    fma = _mm256_fmadd_pd,
    mul = _mm256_mul_pd
);

impl Kernel<f32> for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;
    /// B micro-panel `256 × 16 × 4 B` = 16 KiB (half of L1).
    const KC: usize = 256;
    /// A block `192 × 256 × 4 B` = 192 KiB (L2).
    const MC: usize = 192;
    /// B block `256 × 512 × 4 B` = 512 KiB (half of L2).
    const NC: usize = 512;

    simd_kernel_methods!(f32, kernel_f32, 8, "AVX2");
}

impl Kernel<f64> for Avx2 {
    const MR: usize = 6;
    const NR: usize = 8;
    /// B micro-panel `256 × 8 × 8 B` = 16 KiB (half of L1).
    const KC: usize = 256;
    /// A block `96 × 256 × 8 B` = 192 KiB (L2).
    const MC: usize = 96;
    /// B block `256 × 256 × 8 B` = 512 KiB (half of L2).
    const NC: usize = 256;

    simd_kernel_methods!(f64, kernel_f64, 4, "AVX2");
}
