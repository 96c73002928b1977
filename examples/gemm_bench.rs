//! Single-threaded GEMM throughput: convgemm's blocked GEMM per kernel path against
//! matrixmultiply, on square 1024 and the GEMM shapes of the conv benchmark layers.
//!
//! Timing is per-thread CPU time (`CLOCK_THREAD_CPUTIME_ID`), median of the repetitions,
//! so other work on a shared machine inflates the numbers less than wall-clock would.
//!
//! ```text
//! cargo run --release --example gemm_bench [reps] [shape filter]
//! ```
//!
//! The optional filter keeps the shapes whose name contains it (`gemm_bench 50 square`
//! runs only square 1024: one shape to profile with `perf record`).

use convgemm::{__blocked_testing::gemm_strided, Element};

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

#[cfg(target_os = "linux")]
unsafe extern "C" {
    fn clock_gettime(clock: i32, t: *mut Timespec) -> i32;
}

/// Seconds of CPU time this thread has used.
#[cfg(target_os = "linux")]
fn thread_cpu_seconds() -> f64 {
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec; clock 3 exists on Linux.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0);
    t.sec as f64 + t.nsec as f64 * 1e-9
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_seconds() -> f64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

fn median(t: &mut [f64]) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// matrixmultiply's GEMM for `T`.
trait Mm: Element {
    #[allow(clippy::too_many_arguments)]
    fn mm(
        m: usize,
        k: usize,
        n: usize,
        a: &[Self],
        sa: [usize; 2],
        b: &[Self],
        sb: [usize; 2],
        c: &mut [Self],
    );
}

macro_rules! impl_mm {
    ($t:ty, $f:path) => {
        impl Mm for $t {
            fn mm(
                m: usize,
                k: usize,
                n: usize,
                a: &[$t],
                sa: [usize; 2],
                b: &[$t],
                sb: [usize; 2],
                c: &mut [$t],
            ) {
                assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
                // SAFETY: the views are dense m×k, k×n (in either orientation), m×n row-major
                // inside the slices checked above; c is a unique borrow.
                unsafe {
                    $f(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        sa[0] as isize,
                        sa[1] as isize,
                        b.as_ptr(),
                        sb[0] as isize,
                        sb[1] as isize,
                        0.0,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                }
            }
        }
    };
}
impl_mm!(f32, matrixmultiply::sgemm);
impl_mm!(f64, matrixmultiply::dgemm);

fn bench<T: Mm>(reps: usize, filter: &str) {
    let shapes: &[(&str, usize, usize, usize, bool)] = &[
        ("square 1024", 1024, 1024, 1024, false),
        ("192x256x512 (L2)", 192, 256, 512, false),
        ("64x576x3136", 64, 576, 3136, false),
        ("64x576x455", 64, 576, 455, false),
        ("128x1152x784", 128, 1152, 784, false),
        ("128x1152x784 Bt", 128, 1152, 784, true),
        ("576x64x3136", 576, 64, 3136, false),
        ("256x2304x196", 256, 2304, 196, false),
        ("64x3136x576", 64, 3136, 576, false),
    ];
    println!(
        "\n{} (GFLOP/s, 1 thread, thread CPU time, median of {reps})",
        std::any::type_name::<T>()
    );
    println!("| shape (MxKxN)    | blocked avx512 | blocked avx2 | matrixmultiply | best/mm |");
    println!("|---|---:|---:|---:|---:|");
    for &(name, m, k, n, b_transposed) in shapes.iter().filter(|s| s.0.contains(filter)) {
        let a: Vec<T> = (0..m * k)
            .map(|i| T::from_f64(((i * 7) % 13) as f64 / 13.0 - 0.5))
            .collect();
        let b: Vec<T> = (0..k * n)
            .map(|i| T::from_f64(((i * 5) % 11) as f64 / 11.0 - 0.5))
            .collect();
        let mut c = vec![T::ZERO; m * n];
        let sa = [k, 1];
        let sb = if b_transposed { [1, k] } else { [n, 1] };
        let flops = 2.0 * (m * k * n) as f64;
        // The three contenders run in turn within each repetition, so a burst of load
        // on the shared machine hits all of them alike.
        let paths = ["avx512", "avx2"];
        let mut times = vec![Vec::new(); paths.len() + 1];
        let mut ran = [""; 2];
        for rep in 0..=reps {
            for (p, path) in paths.iter().enumerate() {
                let t0 = thread_cpu_seconds();
                ran[p] = gemm_strided(
                    path,
                    m,
                    k,
                    n,
                    T::ONE,
                    &a,
                    sa,
                    &b,
                    sb,
                    T::ZERO,
                    &mut c,
                    [n, 1],
                );
                if rep > 0 {
                    times[p].push(thread_cpu_seconds() - t0);
                }
            }
            let t0 = thread_cpu_seconds();
            T::mm(m, k, n, &a, sa, &b, sb, &mut c);
            if rep > 0 {
                times[paths.len()].push(thread_cpu_seconds() - t0);
            }
        }
        let gflops: Vec<f64> = times.iter_mut().map(|t| flops / median(t) * 1e-9).collect();
        let ours: Vec<String> = (0..paths.len())
            .map(|p| {
                if ran[p] == paths[p] {
                    format!("{:.1}", gflops[p])
                } else {
                    "n/a".into()
                }
            })
            .collect();
        let mm = gflops[paths.len()];
        let best = gflops[..paths.len()]
            .iter()
            .zip(&ran)
            .zip(paths)
            .filter(|((_, r), p)| *r == p)
            .map(|((g, _), _)| *g)
            .fold(0.0, f64::max);
        println!(
            "| {name:<16} | {:>14} | {:>12} | {mm:>14.1} | {:>6.2}x |",
            ours[0],
            ours[1],
            best / mm
        );
    }
}

fn main() {
    let reps = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    println!("ISA default: {}", convgemm::isa_name());
    let filter = std::env::args().nth(2).unwrap_or_default();
    bench::<f32>(reps, &filter);
    bench::<f64>(reps, &filter);
}
