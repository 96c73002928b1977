//! AVX-512F microkernels (f32: 8 × 32, f64: 8 × 16), 16 accumulators in zmm registers.
//!
//! Tile shapes: on Zen 4 one 512-bit FMA issues per cycle with a 4-cycle latency, so 16
//! independent accumulators hide the latency four times over and leave 16 of the 32 zmm
//! registers for the B row and spare; Zen 5 and the Intel cores (two 512-bit FMAs per
//! cycle, 4-cycle latency) need 8 in flight, still twice covered. The rows of the tile
//! (MR = 8) divide every channel count the conv layers use (64, 128, 256, 576), so M
//! needs no padding; NR = 2 vectors keeps the padding of pixel counts (N) small: 455 →
//! 480, 196 → 224, 784 → 800. Other tiles measured on the Intel host (BENCHMARKS.md):
//! 12 × 32, 14 × 32, 8 × 48 and 6 × 64 ran 3–8 % faster with panels held in L1 but no
//! faster in the GEMM; 4 × 64 (KC 128, to keep its B micro-panel at 32 KiB) ran square
//! 1024 at 0.79× matrixmultiply in the same `gemm_bench` run, where 8 × 32 runs 1.12×.
//!
//! Block sizes, first derived for Zen 4 (L1d 32 KiB, L2 1 MiB per core, L3 32 MiB
//! shared), kept for the 48 KiB L1d of Zen 5 and the Intel hosts (L2 1 and 2 MiB):
//! - `KC`: one k-step of the f32 kernel reads 8 + 32 values (160 B). With the B micro-panel
//!   (`KC × NR`) reused across the `MC / MR` A micro-panels of a block, `KC = 256` makes it
//!   32 KiB (f32, NR 32) / 32 KiB (f64, NR 16): L1-sized, and the first-touch misses it
//!   takes are streamed from L2 by the prefetcher (64 B/cycle, 8× what the kernel needs).
//!   Deeper KC halves how often each C tile is loaded and stored (once per KC block). With
//!   a 48 KiB L1d the panel leaves 16 KiB for the A micro-panel (`8 × 256 × 4` = 8 KiB)
//!   and the C tile's lines; KC 128 and 192 measured the same there (`gemm_bench`).
//! - `KC_IN_PLACE`: with B's rows read where they lie (the forward's and input delta's
//!   padded planes) no B micro-panel is packed to stay in L1: each A micro-panel reads
//!   the rows from L2 anyway, so a product up to 576 deep (`C·R·S` of the 64-channel
//!   3 × 3 and 1 × 9 layers) runs as one block, each C tile loaded and stored once.
//!   Zen 4, `benches/ab.sh` against the code before (3 rounds, paired medians, 1 / 2
//!   threads): audio_1x9 forward 1.11 / 1.09, input delta 1.07 / 1.15; dilated_3x3
//!   forward 1.02 / 1.05, input delta 1.03 / 1.04; batch1_3x3_14 (2304 deep: `KC`
//!   blocks) 0.996–1.006. Taking every in-place product in blocks of up to 576 (2304 in
//!   four) ran batch1_3x3_14's input delta 0.99; 1152 was no better than 576. f64
//!   dilated_3x3 forward 47.2 → 50.8 GFLOP/s (single runs). The AVX2 kernels keep 256:
//!   576 ran dilated_3x3 8% slower there.
//! - `MC`: the packed A block `MC × KC` stays in L2 for all `NC / NR` B micro-panels:
//!   f32 `192 × 256 × 4` = 192 KiB, a fifth of a 1 MiB L2.
//! - `NC`: the packed B block `KC × NC` stays in L2 across the `M / MC` A blocks:
//!   f32 `256 × 1024 × 4` = 1 MiB would fill a 1 MiB L2, so NC = 512 (512 KiB) leaves
//!   room for the A block and C lines. (With a single A block, the conv layers' usual
//!   case, the driver widens NC: no A block reuses the B block then.)

use std::arch::x86_64::*;

use super::kernel::{Kernel, pixel_kernel, simd_kernel, simd_kernel_methods, thin_kernel};

/// The AVX-512F kernels.
pub struct Avx512;

simd_kernel!(
    kernel_f32,
    f32,
    "avx512f",
    16,
    mr = 8,
    nv = 2,
    zero = _mm512_setzero_ps,
    splat = _mm512_set1_ps,
    load = _mm512_loadu_ps,
    store = _mm512_storeu_ps,
    fma = _mm512_fmadd_ps,
    mul = _mm512_mul_ps
);

simd_kernel!(
    kernel_f64,
    f64,
    "avx512f",
    8,
    mr = 8,
    nv = 2,
    zero = _mm512_setzero_pd,
    splat = _mm512_set1_pd,
    load = _mm512_loadu_pd,
    store = _mm512_storeu_pd,
    fma = _mm512_fmadd_pd,
    mul = _mm512_mul_pd
);

// Thin forms: the 8 rows of an A panel are one ymm (f32) or zmm (f64) vector. Zen 4
// issues two 256-bit FMAs per cycle or one 512-bit, so for a panel with w ≤ 8 valid f32
// columns two A panels take 16 ymm FMAs per step where the narrow kernel takes 16 zmm
// ones; with w ≤ 4, 8 against 16. f64 gains only at w ≤ 4 (4 zmm FMAs per panel and
// step against the narrow kernel's 8).
thin_kernel!(
    thin_f32,
    f32,
    "avx512f",
    mr = 8,
    nr = 32,
    zero = _mm256_setzero_ps,
    splat = _mm256_set1_ps,
    load = _mm256_loadu_ps,
    store = _mm256_storeu_ps,
    fma = _mm256_fmadd_ps
);

thin_kernel!(
    thin_f64,
    f64,
    "avx512f",
    mr = 8,
    nr = 16,
    zero = _mm512_setzero_pd,
    splat = _mm512_set1_pd,
    load = _mm512_loadu_pd,
    store = _mm512_storeu_pd,
    fma = _mm512_fmadd_pd
);

// Pixel tiles ([`Kernel::kernel_pixels`]): 14 pixels × 2 vectors. 14 divides the output
// rows of the 3 × 3 ResNet layers (56, 28, 14) and the stem (112); 28 accumulators leave
// registers for the two weight vectors and the broadcast. Per step 14 broadcasts and 2
// aligned loads feed 28 FMAs (the GEMM's 8 × 32 step: 10 loads for 16). Rows that are
// not a multiple of 14 end in tiles of 8 pixels (16 accumulators), the same function
// compiled for `MR` 8: on dilated_3x3 (rows of 64) 8 tiles of 8 ran as fast as 4 of 14
// and one of 8.
pixel_kernel!(
    pixels_f32,
    f32,
    "avx512f",
    16,
    nv = 2,
    zero = _mm512_setzero_ps,
    splat = _mm512_set1_ps,
    load = _mm512_loadu_ps,
    store = _mm512_storeu_ps,
    fma = _mm512_fmadd_ps
);

pixel_kernel!(
    pixels_f64,
    f64,
    "avx512f",
    8,
    nv = 2,
    zero = _mm512_setzero_pd,
    splat = _mm512_set1_pd,
    load = _mm512_loadu_pd,
    store = _mm512_storeu_pd,
    fma = _mm512_fmadd_pd
);

/// The pixel-tile methods of [`Kernel`] for the AVX-512 kernels.
macro_rules! pixel_methods {
    ($t:ty, $f:ident) => {
        const PIXEL_MR: usize = 14;
        const PIXEL_MR_SHORT: usize = 8;

        #[inline(always)]
        unsafe fn kernel_pixels(
            pixels: usize,
            channels: usize,
            channel_len: usize,
            taps: *const usize,
            tap_count: usize,
            channel_taps: usize,
            edges: *const [u8; 2],
            x: *const $t,
            pixel_step: usize,
            b: *const $t,
            tile: *mut $t,
            y: *const $t,
            y_stride: usize,
        ) {
            // The kernel compiled for this step (offsets constant inside it).
            type Tile = unsafe fn(
                usize,
                usize,
                *const usize,
                usize,
                usize,
                *const [u8; 2],
                *const $t,
                *const $t,
                *mut $t,
                *const $t,
                usize,
            );
            let kernel: Tile = match (pixels == 14, pixel_step == 2, edges.is_null()) {
                (true, false, true) => $f::<14, 1, false>,
                (true, false, false) => $f::<14, 1, true>,
                (true, true, true) => $f::<14, 2, false>,
                (true, true, false) => $f::<14, 2, true>,
                (false, false, true) => $f::<8, 1, false>,
                (false, false, false) => $f::<8, 1, true>,
                (false, true, true) => $f::<8, 2, false>,
                (false, true, false) => $f::<8, 2, true>,
            };
            // SAFETY: the caller upholds `Kernel::kernel_pixels`' contract, which includes
            // that the CPU has AVX-512F, that `pixels` is 14 or 8 and `pixel_step` 1 or 2.
            unsafe {
                kernel(
                    channels,
                    channel_len,
                    taps,
                    tap_count,
                    channel_taps,
                    edges,
                    x,
                    b,
                    tile,
                    y,
                    y_stride,
                )
            }
        }
    };
}

impl Kernel<f32> for Avx512 {
    const MR: usize = 8;
    const NR: usize = 32;
    /// B micro-panel `256 × 32 × 4 B` = 32 KiB (L1); see the module doc.
    const KC: usize = 256;
    /// B rows read in place: see the module doc.
    const KC_IN_PLACE: usize = 576;
    /// A block `192 × 256 × 4 B` = 192 KiB (L2).
    const MC: usize = 192;
    /// B block `256 × 512 × 4 B` = 512 KiB (half of L2).
    const NC: usize = 512;

    simd_kernel_methods!(f32, kernel_f32, 16, "AVX-512");
    pixel_methods!(f32, pixels_f32);

    const NR_THIN: usize = 8;

    #[inline(always)]
    unsafe fn kernel_thin(
        k: usize,
        alpha: f32,
        a: *const f32,
        a_steps: [usize; 2],
        b: *const f32,
        beta: f32,
        c: *mut f32,
        strides: [isize; 2],
        h: usize,
        w: usize,
    ) {
        // SAFETY: the caller upholds `kernel_thin`'s contract (h ≤ 16, w ≤ 8); each
        // instance covers h.div_ceil(8) panels and at least w columns.
        unsafe {
            match (w <= 4, h <= 8) {
                (true, true) => thin_f32::<4, 1>(k, alpha, a, a_steps, b, beta, c, strides, h, w),
                (true, false) => thin_f32::<4, 2>(k, alpha, a, a_steps, b, beta, c, strides, h, w),
                (false, true) => thin_f32::<8, 1>(k, alpha, a, a_steps, b, beta, c, strides, h, w),
                (false, false) => thin_f32::<8, 2>(k, alpha, a, a_steps, b, beta, c, strides, h, w),
            }
        }
    }
}

impl Kernel<f64> for Avx512 {
    const MR: usize = 8;
    const NR: usize = 16;
    /// B micro-panel `256 × 16 × 8 B` = 32 KiB (L1).
    const KC: usize = 256;
    /// B rows read in place: see the module doc.
    const KC_IN_PLACE: usize = 576;
    /// A block `96 × 256 × 8 B` = 192 KiB (L2).
    const MC: usize = 96;
    /// B block `256 × 256 × 8 B` = 512 KiB (half of L2).
    const NC: usize = 256;

    simd_kernel_methods!(f64, kernel_f64, 8, "AVX-512");
    pixel_methods!(f64, pixels_f64);

    const NR_THIN: usize = 4;

    #[inline(always)]
    unsafe fn kernel_thin(
        k: usize,
        alpha: f64,
        a: *const f64,
        a_steps: [usize; 2],
        b: *const f64,
        beta: f64,
        c: *mut f64,
        strides: [isize; 2],
        h: usize,
        w: usize,
    ) {
        // SAFETY: as for f32 (h ≤ 16, w ≤ 4).
        unsafe {
            if h <= 8 {
                thin_f64::<4, 1>(k, alpha, a, a_steps, b, beta, c, strides, h, w)
            } else {
                thin_f64::<4, 2>(k, alpha, a, a_steps, b, beta, c, strides, h, w)
            }
        }
    }
}
