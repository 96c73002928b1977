//! Runtime instruction-set selection for the crate's own loops.
//!
//! The crate is compiled for the baseline target (x86-64: SSE2), so it runs on every CPU.
//! Hot loops are written once as plain, `#[inline(always)]` generic code whose inner
//! loops have fixed widths; [`dispatch!`](crate::dispatch) instantiates them inside
//! `#[target_feature]` wrappers, where LLVM vectorizes them for AVX-512 or AVX2+FMA, and
//! picks the best wrapper the CPU supports, detected once.
//!
//! `CONVGEMM_ISA=avx512|avx2|scalar` forces a path (a path the CPU lacks falls back to
//! the best it has), so the tests exercise every kernel on one machine. The same choice
//! picks the GEMM microkernel (`crate::blocked`); on the scalar path the GEMM is
//! matrixmultiply's, which does its own detection.

use std::sync::OnceLock;

pub(crate) mod masked;

/// An instruction-set level for the crate's vectorized loops.
///
/// Nominally `pub` (in this private module, so unnameable outside the crate) because the
/// blocked GEMM's per-type dispatch, a hidden supertrait of [`Element`](crate::Element),
/// takes it as an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline code (SSE2 on x86-64; whatever the target has elsewhere).
    Scalar,
    /// AVX2 and FMA (x86-64 only).
    Avx2,
    /// AVX-512F (x86-64 only).
    Avx512,
}

/// The best path this CPU supports, ignoring `CONVGEMM_ISA`.
pub(crate) fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// The path in use: the best the CPU supports, or the `CONVGEMM_ISA` choice if lower.
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        let forced = match std::env::var("CONVGEMM_ISA").as_deref() {
            Ok("avx512") => Isa::Avx512,
            Ok("avx2") => Isa::Avx2,
            Ok("scalar") => Isa::Scalar,
            _ => best,
        };
        forced.min(best)
    })
}

/// Parses a path name as `CONVGEMM_ISA` spells it, clamped to what the CPU supports.
pub(crate) fn isa_from_name(name: &str) -> Option<Isa> {
    let wanted = match name {
        "avx512" => Isa::Avx512,
        "avx2" => Isa::Avx2,
        "scalar" => Isa::Scalar,
        _ => return None,
    };
    Some(wanted.min(detect()))
}

/// The path name the crate's own loops use on this machine (for reports): `"avx512"`,
/// `"avx2"` or `"scalar"`.
pub fn isa_name() -> &'static str {
    match isa() {
        Isa::Avx512 => "avx512",
        Isa::Avx2 => "avx2",
        Isa::Scalar => "scalar",
    }
}

/// `a · b + c`, fused into one FMA instruction when `FMA` is true (the AVX2 and AVX-512
/// paths, whose CPUs have it), as a separate multiply and add otherwise (the baseline
/// path, where `mul_add` would be a slow library call).
#[inline(always)]
pub(crate) fn madd<T: crate::Element, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Accumulators of [`sum`]: four AVX-512 vectors of f32, so four independent chains of
/// adds hide the adds' latency (one chain ran at a quarter of the load rate).
const SUM_LANES: usize = 64;

crate::dispatch! {
    /// The sum of `v` in a fixed order: element `i` goes to accumulator `i % 64` (in
    /// order), then the 64 accumulators are added pairwise (`j + 32` into `j`, then
    /// `j + 16`, ...). A plain left-to-right sum is one long chain of dependent adds (4 cycles each);
    /// this one vectorizes and is at least as accurate. The order depends only on the
    /// length, never on the thread count or the path.
    pub(crate) fn sum<T: Element>(v: &[T]) -> T = sum_body;
}

#[inline(always)]
fn sum_body<T: crate::Element, const FMA: bool>(v: &[T]) -> T {
    let mut lanes = [T::ZERO; SUM_LANES];
    let mut blocks = v.chunks_exact(SUM_LANES);
    for block in &mut blocks {
        for (acc, &x) in lanes.iter_mut().zip(block) {
            *acc += x;
        }
    }
    for (acc, &x) in lanes.iter_mut().zip(blocks.remainder()) {
        *acc += x;
    }
    let mut width = SUM_LANES;
    while width > 1 {
        width /= 2;
        for j in 0..width {
            let upper = lanes[j + width];
            lanes[j] += upper;
        }
    }
    lanes[0]
}

crate::dispatch! {
    /// `dst[i] += src[i]` for every `i` (equal lengths), vectorized for the CPU's path.
    pub(crate) fn add_assign<T: Element>(dst: &mut [T], src: &[T]) = add_assign_body;
}

#[inline(always)]
fn add_assign_body<T: crate::Element, const FMA: bool>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Defines `$name` as a safe function that runs the `#[inline(always)]` generic
/// `$body::<T, FMA>` compiled for the selected [`Isa`] (`FMA` is true on the AVX2 and
/// AVX-512 paths).
///
/// ```ignore
/// dispatch! {
///     /// docs
///     pub(crate) fn axpy<T: Element>(a: T, x: &[T], y: &mut [T]) = axpy_body;
/// }
/// ```
#[macro_export]
#[doc(hidden)]
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$t:ident : Element>($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;) => {
        $(#[$m])*
        #[inline]
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$t: $crate::Element>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                fn avx512<$t: $crate::Element>($($arg: $ty),*) $(-> $ret)? { $body::<$t, true>($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2<$t: $crate::Element>($($arg: $ty),*) $(-> $ret)? { $body::<$t, true>($($arg),*) }
                match $crate::simd::isa() {
                    // SAFETY: `isa()` returns Avx512 only when the CPU reports avx512f.
                    $crate::simd::Isa::Avx512 => return unsafe { avx512::<$t>($($arg),*) },
                    // SAFETY: `isa()` returns Avx2 only when the CPU reports avx2 and fma.
                    $crate::simd::Isa::Avx2 => return unsafe { avx2::<$t>($($arg),*) },
                    $crate::simd::Isa::Scalar => {}
                }
            }
            $body::<$t, false>($($arg),*)
        }
    };
}

/// [`copy_exact`] of the same `len` elements for many rows: for every `i <
/// offsets.len()`, `dst[i·dst_step ..][..len] = src[offsets[i] ..][..len]`. The moves'
/// widths are chosen once for all the rows, so the loop over the rows is a plain run of
/// fixed-width moves (row by row, `copy_exact` re-chose them for every row: on LeNet's
/// second layer, whose runs are 8 pixels, that packing was 23% of the forward).
#[inline(always)]
pub(crate) fn copy_exact_rows<T: Copy>(
    dst: &mut [T],
    dst_step: usize,
    src: &[T],
    offsets: &[usize],
    len: usize,
) {
    #[inline(always)]
    fn rows<T: Copy, const W: usize>(
        dst: &mut [T],
        dst_step: usize,
        src: &[T],
        offsets: &[usize],
        at: usize,
    ) {
        for (i, &offset) in offsets.iter().enumerate() {
            let to: &mut [T; W] = (&mut dst[i * dst_step + at..][..W]).try_into().unwrap();
            *to = src[offset + at..][..W].try_into().unwrap();
        }
    }
    /// Widths `W` at 0 and, when `len > W`, at `len − W` (overlapping).
    #[inline(always)]
    fn pair<T: Copy, const W: usize>(
        dst: &mut [T],
        dst_step: usize,
        src: &[T],
        offsets: &[usize],
        len: usize,
    ) {
        rows::<T, W>(dst, dst_step, src, offsets, 0);
        if len > W {
            rows::<T, W>(dst, dst_step, src, offsets, len - W);
        }
    }
    if len >= COPY_CHUNK {
        let mut at = 0;
        while at + COPY_CHUNK < len {
            rows::<T, COPY_CHUNK>(dst, dst_step, src, offsets, at);
            at += COPY_CHUNK;
        }
        rows::<T, COPY_CHUNK>(dst, dst_step, src, offsets, len - COPY_CHUNK);
    } else if len >= COPY_CHUNK / 2 {
        pair::<T, { COPY_CHUNK / 2 }>(dst, dst_step, src, offsets, len);
    } else if len >= COPY_CHUNK / 4 {
        pair::<T, { COPY_CHUNK / 4 }>(dst, dst_step, src, offsets, len);
    } else if len >= 2 {
        pair::<T, 2>(dst, dst_step, src, offsets, len);
    } else if len == 1 {
        rows::<T, 1>(dst, dst_step, src, offsets, 0);
    }
}

/// Elements per move of [`copy_exact`]: one 64-byte vector of `f32`.
const COPY_CHUNK: usize = 16;

/// `dst = src` (equal lengths) with fixed-width moves, never touching anything outside
/// either slice: whole [`COPY_CHUNK`]s and a last chunk that overlaps the one before it, or
/// two overlapping halves, quarters, ... for short runs. Fixed widths compile to vector
/// moves; a variable-length `copy_from_slice` would be a `memcpy` call per run.
#[inline(always)]
pub(crate) fn copy_exact<T: Copy>(dst: &mut [T], src: &[T]) {
    #[inline(always)]
    fn chunk<T: Copy, const W: usize>(dst: &mut [T], src: &[T], at: usize) {
        let to: &mut [T; W] = (&mut dst[at..at + W]).try_into().unwrap();
        *to = src[at..at + W].try_into().unwrap();
    }
    #[inline(always)]
    fn pair<T: Copy, const W: usize>(dst: &mut [T], src: &[T]) {
        let len = dst.len();
        chunk::<T, W>(dst, src, 0);
        chunk::<T, W>(dst, src, len - W);
    }
    let len = dst.len();
    assert_eq!(len, src.len());
    if len >= COPY_CHUNK {
        let mut at = 0;
        while at + COPY_CHUNK < len {
            chunk::<T, COPY_CHUNK>(dst, src, at);
            at += COPY_CHUNK;
        }
        chunk::<T, COPY_CHUNK>(dst, src, len - COPY_CHUNK);
    } else if len >= COPY_CHUNK / 2 {
        pair::<T, { COPY_CHUNK / 2 }>(dst, src);
    } else if len >= COPY_CHUNK / 4 {
        pair::<T, { COPY_CHUNK / 4 }>(dst, src);
    } else if len >= 2 {
        pair::<T, 2>(dst, src);
    } else if len == 1 {
        dst[0] = src[0];
    }
}

/// `dst.fill(value)` with fixed-width stores, as [`copy_exact`] copies: for the short
/// runs of padding around a plane, where `fill` would be a `memset` call per run.
#[inline(always)]
pub(crate) fn fill_exact<T: Copy>(dst: &mut [T], value: T) {
    #[inline(always)]
    fn chunk<T: Copy, const W: usize>(dst: &mut [T], value: T, at: usize) {
        let to: &mut [T; W] = (&mut dst[at..at + W]).try_into().unwrap();
        *to = [value; W];
    }
    #[inline(always)]
    fn pair<T: Copy, const W: usize>(dst: &mut [T], value: T) {
        let len = dst.len();
        chunk::<T, W>(dst, value, 0);
        chunk::<T, W>(dst, value, len - W);
    }
    let len = dst.len();
    if len >= COPY_CHUNK {
        let mut at = 0;
        while at + COPY_CHUNK < len {
            chunk::<T, COPY_CHUNK>(dst, value, at);
            at += COPY_CHUNK;
        }
        chunk::<T, COPY_CHUNK>(dst, value, len - COPY_CHUNK);
    } else if len >= COPY_CHUNK / 2 {
        pair::<T, { COPY_CHUNK / 2 }>(dst, value);
    } else if len >= COPY_CHUNK / 4 {
        pair::<T, { COPY_CHUNK / 4 }>(dst, value);
    } else if len >= 2 {
        pair::<T, 2>(dst, value);
    } else if len == 1 {
        dst[0] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::{copy_exact, copy_exact_rows, fill_exact};

    /// Every length from 0 to past two chunks: exactly the slice is filled.
    #[test]
    fn fills_exactly_the_run() {
        for len in 0..40 {
            for start in [0, 3] {
                let mut buf = vec![u32::MAX; start + len + 5];
                fill_exact(&mut buf[start..start + len], 7);
                assert!(buf[..start].iter().all(|&v| v == u32::MAX), "len {len}");
                assert!(buf[start..start + len].iter().all(|&v| v == 7), "len {len}");
                assert!(
                    buf[start + len..].iter().all(|&v| v == u32::MAX),
                    "len {len}"
                );
            }
        }
    }

    /// Every length from 0 to past two chunks, rows at scattered offsets: each row gets
    /// exactly its `len` source elements, and nothing outside them is touched.
    #[test]
    fn copies_exactly_the_runs() {
        let src: Vec<u32> = (0..400).collect();
        let offsets = [3, 150, 17, 299];
        for len in 0..40 {
            let step = len + 5;
            let mut dst = vec![u32::MAX; offsets.len() * step];
            copy_exact_rows(&mut dst, step, &src, &offsets, len);
            let mut one_by_one = vec![u32::MAX; offsets.len() * step];
            for (i, &offset) in offsets.iter().enumerate() {
                copy_exact(&mut one_by_one[i * step..][..len], &src[offset..][..len]);
                let row = &dst[i * step..][..step];
                assert_eq!(&row[..len], &src[offset..][..len], "len {len} row {i}");
                assert!(
                    row[len..].iter().all(|&v| v == u32::MAX),
                    "len {len} row {i}"
                );
            }
            assert_eq!(dst, one_by_one, "len {len}");
        }
    }
}
