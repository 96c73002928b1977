//! Steady-state calls allocate no scratch memory: column tiles, padded and phase-split
//! planes and weight-gradient partials come from per-thread buffers that are reused
//! across calls. Only a little bookkeeping (task lists, tap offsets) is allocated per
//! call.
//!
//! A counting global allocator measures the bytes allocated by a warm call. The layers
//! are chosen so each pass's scratch is hundreds of KiB; the bound (16 KiB) is far below
//! that and far above the bookkeeping, so a regression to per-call buffers fails here.
//!
//! The GEMM-lowered passes are checked on the AVX2 / AVX-512 paths, where the crate's own
//! blocked GEMM takes its packed panels from the same per-thread buffers. On the baseline
//! path the GEMM is matrixmultiply's, whose `sgemm`/`dgemm` allocate their packing
//! buffers (about 1 MiB) inside every call; there only the direct (depthwise) passes are
//! held to the bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use convgemm::{Conv2d, Conv2dSpec};

struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BOUND: usize = 16 << 10;

fn spec(batch: usize, c: usize, hw: usize, k: usize, stride: usize, groups: usize) -> Conv2dSpec {
    Conv2dSpec {
        batch,
        in_channels: c,
        in_h: hw,
        in_w: hw,
        out_channels: k,
        kernel: [3, 3],
        stride: [stride, stride],
        padding: [1, 1],
        groups,
        ..Default::default()
    }
}

#[test]
fn warm_calls_allocate_no_scratch() {
    let own_gemm = convgemm::isa_name() != "scalar";
    let cases = [
        ("depthwise", spec(4, 32, 40, 32, 1, 32), true),
        ("depthwise, multiplier 2", spec(4, 16, 40, 32, 1, 16), true),
        ("depthwise, strided", spec(3, 16, 41, 16, 2, 16), true),
        ("images", spec(4, 32, 40, 32, 1, 1), own_gemm),
        ("single image", spec(1, 64, 30, 64, 1, 1), own_gemm),
        // Two images batched, the third split across both threads (forward and the
        // input delta's transposed forward), one after the other in every call.
        ("leftover image", spec(3, 64, 28, 64, 1, 1), own_gemm),
        ("strided", spec(4, 16, 41, 16, 2, 1), own_gemm),
        ("grouped", spec(3, 32, 30, 32, 1, 4), own_gemm),
        // 27 taps: the forward by register tiles (`conv::direct_forward`), batched and
        // one image split by filter blocks.
        ("short reduction", spec(4, 3, 40, 32, 1, 1), own_gemm),
        (
            "short reduction, single image",
            spec(1, 3, 40, 32, 1, 1),
            own_gemm,
        ),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (name, s, checked) in cases {
        if !checked {
            continue;
        }
        let conv = Conv2d::new(s).unwrap();
        let [n, c, h, w] = conv.input_dims();
        let [_, k, p, q] = conv.output_dims();
        let x = vec![0.5f32; n * c * h * w];
        let wt = vec![0.25f32; conv.weight_dims().iter().product()];
        let b = vec![0.1f32; k];
        let dy = vec![1.0f32; n * k * p * q];
        let mut y = vec![0.0f32; dy.len()];
        let mut dx = vec![0.0f32; x.len()];
        let mut dw = vec![0.0f32; wt.len()];
        let mut db = vec![0.0f32; k];
        pool.install(|| {
            let mut run = |pass: usize| match pass {
                0 => conv.forward(&x, &wt, Some(&b), &mut y).unwrap(),
                1 => conv.backward_data(&dy, &wt, &mut dx).unwrap(),
                2 => conv
                    .backward_weights(&x, &dy, &mut dw, Some(&mut db))
                    .unwrap(),
                // The accumulating forms (their delta chunk, the wide form's transpose).
                3 => conv.backward_data_accumulate(&dy, &wt, &mut dx).unwrap(),
                _ => conv
                    .backward_weights_accumulate(&x, &dy, &mut dw, Some(&mut db))
                    .unwrap(),
            };
            for pass in 0..5 {
                // Warm up every thread's buffers (several calls: rayon may run a task on
                // either thread).
                for _ in 0..4 {
                    run(pass);
                }
                // A thread that ran no task during the warm-up allocates its buffers on
                // its first task, once; an allocation per call would show in every call.
                // So of CALLS warm calls, at most one per pool thread may exceed BOUND.
                const CALLS: usize = 8;
                let mut over = Vec::new();
                for _ in 0..CALLS {
                    let before = BYTES.load(Ordering::Relaxed);
                    run(pass);
                    let bytes = BYTES.load(Ordering::Relaxed) - before;
                    if bytes > BOUND {
                        over.push(bytes);
                    }
                }
                assert!(
                    over.len() <= pool.current_num_threads(),
                    "{name}, pass {pass}: {} of {CALLS} warm calls allocated more than \
                     {BOUND} bytes: {over:?}",
                    over.len()
                );
            }
        });
        assert!(
            y.iter().any(|v| *v != 0.0)
                && dx.iter().any(|v| *v != 0.0)
                && dw.iter().any(|v| *v != 0.0)
        );
    }
}
