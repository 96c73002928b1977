//! Helpers shared by the fuzz targets: a byte reader for the fixed input layouts, a
//! seeded generator for the data, the crate's tolerance rule, fixed rayon pools and an
//! allocation guard.
//!
//! Everything here is deterministic: a crash input replays the same way on any machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::Unstructured;
use convgemm::Element;

/// Reads the fixed byte layouts of the targets: one byte per field, 0 once the input is
/// exhausted (so every prefix of a seed is itself a valid input).
pub struct Bytes<'a>(pub Unstructured<'a>);

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes(Unstructured::new(data))
    }
    pub fn u8(&mut self) -> u8 {
        self.0.arbitrary::<u8>().unwrap_or(0)
    }
    /// A little-endian `u64` from the next 8 bytes (missing bytes read as 0).
    pub fn u64(&mut self) -> u64 {
        let mut v = 0u64;
        for i in 0..8 {
            v |= (self.u8() as u64) << (8 * i);
        }
        v
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether `CONVGEMM_FUZZ_DEBUG` is set: the targets then print each decoded input
/// (useful to check seeds and to read a crash input).
pub fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("CONVGEMM_FUZZ_DEBUG").is_some())
}

/// SplitMix64, the same generator as the crate's tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n >= 1`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// How the data of a comparison run is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMode {
    /// Uniform in [-1, 1).
    Uniform,
    /// Integers in -3..=3: every sum of the targets' sizes is exact, even in f32, so the
    /// fast passes must match the reference bit for bit.
    SmallInts,
    /// Uniform mantissa times 2^e, e in -20..=20: sums with cancellation across very
    /// different magnitudes, where only the Σ|terms| form of the tolerance holds.
    WideMagnitudes,
    /// 3 of 4 values exactly zero, the rest uniform.
    Sparse,
}

impl DataMode {
    pub fn from_bits(bits: u8) -> DataMode {
        match bits & 3 {
            0 => DataMode::Uniform,
            1 => DataMode::SmallInts,
            2 => DataMode::WideMagnitudes,
            _ => DataMode::Sparse,
        }
    }
}

/// `len` values of mode `mode`, as `f64` (convert with [`convert`]).
pub fn draw(rng: &mut Rng, mode: DataMode, len: usize) -> Vec<f64> {
    (0..len)
        .map(|_| match mode {
            DataMode::Uniform => rng.unit(),
            DataMode::SmallInts => rng.below(7) as f64 - 3.0,
            DataMode::WideMagnitudes => {
                let e = rng.below(41) as i32 - 20;
                rng.unit() * 2f64.powi(e)
            }
            DataMode::Sparse => {
                if rng.below(4) == 0 {
                    rng.unit()
                } else {
                    0.0
                }
            }
        })
        .collect()
}

/// `v` rounded to `T` (exact for every value [`draw`] makes in f64; round to nearest in
/// f32).
pub fn convert<T: Element>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// Element-wise absolute values.
pub fn abs<T: Element>(v: &[T]) -> Vec<T> {
    v.iter().map(|x| x.abs()).collect()
}

/// The crate's tolerance rule (`tests/common/mod.rs`, README "Testing"):
/// `|fast − ref| ≤ (L + 1)·ε·Σ|terms|` for every element, where `magnitude` holds Σ|terms|
/// (the reference run on absolute values) and `L` is the reduction length. A NaN in
/// `fast` (for example an output element never written) fails it.
pub fn assert_within<T: Element>(
    what: &str,
    fast: &[T],
    reference: &[T],
    magnitude: &[T],
    reduction_len: usize,
) {
    assert_eq!(fast.len(), reference.len(), "{what}: length");
    assert_eq!(fast.len(), magnitude.len(), "{what}: length");
    let eps = T::EPSILON.to_f64();
    for (i, ((f, r), m)) in fast.iter().zip(reference).zip(magnitude).enumerate() {
        let tol = (reduction_len as f64 + 1.0) * eps * m.to_f64();
        let err = (f.to_f64() - r.to_f64()).abs();
        assert!(
            err <= tol,
            "{what}: element {i}: fast {f} vs reference {r}: error {err:e} > tolerance {tol:e} (L = {reduction_len})"
        );
    }
}

/// Bit-for-bit equality (NaN patterns included).
pub fn assert_bits_equal<T: Element>(what: &str, a: &[T], b: &[T]) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.to_f64().to_bits() == y.to_f64().to_bits(),
            "{what}: element {i}: {x} vs {y} differ in their bits"
        );
    }
}

/// Threads of the global pool the targets run the passes in: fixed, so that a run
/// behaves the same on any machine (and the allocation bound does not scale with it).
pub const POOL_THREADS: usize = 2;

/// Once per process, at the start of every target: makes the global rayon pool
/// [`POOL_THREADS`] wide, and wraps the panic hook (libfuzzer-sys's, which aborts) so that
/// a panic inside a guarded call first lifts the allocation limit: the panic message and
/// backtrace must not trip the guard.
pub fn init() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(POOL_THREADS)
            .build_global();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            LIMIT.store(usize::MAX, Ordering::Relaxed);
            previous(info);
        }));
    });
}

/// A one-thread pool, for the "bit-identical whatever the pool" check.
pub fn single_thread_pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("one-thread pool")
    })
}

// ---------------------------------------------------------------------------------------
// Allocation guard.
//
// libFuzzer's -malloc_limit_mb needs the sanitizer's malloc hooks, which a `-s none`
// build does not have (the "Failed to find function __sanitizer_install_malloc_and_free_hooks"
// warning), and it would only see the C allocator anyway. So the targets install this
// global allocator: it counts the bytes Rust code holds, and while a guarded call runs
// (see [`guarded`]) it aborts the process, before allocating, on any request that would
// take the call's live bytes over its limit. libFuzzer reports the abort as a crash
// ("deadly signal") and saves the input.

/// The allocator of the fuzz targets: [`System`] plus the accounting above.
pub struct GuardedAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Live-byte limit while a guarded call runs; `usize::MAX` otherwise.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

fn over_limit() -> ! {
    // No allocation here: a static message and abort.
    const MSG: &[u8] =
        b"\n==convgemm-fuzz== allocation over the guarded call's limit (see fuzz/README.md)\n";
    use std::io::Write;
    let _ = std::io::stderr().write_all(MSG);
    std::process::abort();
}

unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        let live = LIVE.fetch_add(size, Ordering::Relaxed).saturating_add(size);
        if live > LIMIT.load(Ordering::Relaxed) {
            over_limit();
        }
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        let live = LIVE.fetch_add(size, Ordering::Relaxed).saturating_add(size);
        if live > LIMIT.load(Ordering::Relaxed) {
            over_limit();
        }
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old {
            let grow = new_size - old;
            let live = LIVE.fetch_add(grow, Ordering::Relaxed).saturating_add(grow);
            if live > LIMIT.load(Ordering::Relaxed) {
                over_limit();
            }
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` with at most `extra_bytes` more live heap bytes than before the call (across
/// all threads: the rayon workers allocate through the same allocator). Returns `f`'s
/// result and the peak extra bytes it held.
///
/// An allocation over the limit aborts the process before it happens, so a 100 GB request
/// never reaches the system allocator. The targets are single-threaded between calls, so
/// the accounting sees only the guarded call (the pool's idle workers allocate nothing).
pub fn guarded<R>(extra_bytes: usize, f: impl FnOnce() -> R) -> (R, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    LIMIT.store(before.saturating_add(extra_bytes), Ordering::Relaxed);
    let r = f();
    LIMIT.store(usize::MAX, Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    (r, peak)
}

/// The scratch memory a convolution call may hold on top of its buffers, as documented on
/// `Conv2d`: per worker one column tile of at most 1 MiB or 16 weight-sized rows
/// (whichever is larger), up to 8 weight-sized partial sums, and for a single image one
/// output-sized set of blocks; plus 64 KiB for small bookkeeping (tile lists, error
/// messages). `buffers` are the byte sizes of the buffers passed to the call.
pub fn conv_scratch_limit(buffers: &[usize]) -> usize {
    let largest = buffers.iter().copied().max().unwrap_or(0);
    let total: usize = buffers.iter().sum();
    let per_task = (1usize << 20).max(largest.saturating_mul(16)) + 4096;
    (POOL_THREADS + 1)
        .saturating_mul(per_task)
        .saturating_add(total.saturating_mul(10))
        .saturating_add(64 << 10)
}
