//! Measures this CPU's single-core f32 FMA peak, the ceiling every GFLOP/s figure in
//! BENCHMARKS.md is compared against.
//!
//! `cargo run --release --example fma_peak`
//!
//! Twelve independent accumulators hide the FMA latency; the loop runs for AVX-512
//! (16 lanes) and AVX2 (8 lanes) when the CPU has them. On CPUs that execute 512-bit
//! operations in two 256-bit halves (AMD Zen 4), both give the same figure.

use std::time::Instant;

const ITERS: usize = 100_000_000;
const ACCUMULATORS: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_loop_avx512() -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); ACCUMULATORS];
    for _ in 0..ITERS {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop_avx2() -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); ACCUMULATORS];
    for _ in 0..ITERS {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut lanes = [0.0f32; 8];
    let sum = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v));
    // SAFETY: `lanes` holds exactly the 8 floats the unaligned store writes.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

fn report(name: &str, lanes: usize, run: impl Fn() -> f32) {
    let start = Instant::now();
    let checksum = run();
    let seconds = start.elapsed().as_secs_f64();
    let flops = (ITERS * ACCUMULATORS * lanes * 2) as f64;
    println!(
        "{name:<8} {:>7.1} GFLOP/s per core  (checksum {checksum:.3})",
        flops / seconds * 1e-9
    );
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU reports avx512f.
            report("avx512", 16, || unsafe { fma_loop_avx512() });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU reports avx2 and fma.
            report("avx2", 8, || unsafe { fma_loop_avx2() });
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("no x86-64 FMA probe for this architecture");
}
