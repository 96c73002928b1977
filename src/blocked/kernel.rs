//! The microkernel contract ([`Kernel`]), the portable kernel, and the macro that writes
//! the SIMD kernels.
//!
//! A kernel owns one `MR × NR` tile of C in registers and runs the innermost loop of the
//! GEMM: for `k` steps it multiplies one column of a packed A panel (`MR` values) by one
//! row of a packed B panel (`NR` values) into the tile, then writes the tile back once.
//! Everything else (blocking, packing, edge tiles, strided C) is the driver's, written
//! once against this trait.

/// One register-blocked microkernel and the block sizes the driver uses with it.
///
/// Block sizes are per kernel because they follow from its tile shape and element size;
/// each implementation gives the cache reasoning next to its constants.
pub trait Kernel<T> {
    /// Rows of the C tile (and of a packed A panel).
    const MR: usize;
    /// Columns of the C tile (and of a packed B panel).
    const NR: usize;
    /// Depth of one packed block: the `k` range a packed A panel (`MR × KC`) and B panel
    /// (`KC × NR`) cover. The driver splits `k` into equal blocks of at most `KC`.
    const KC: usize;
    /// Deepest `k` the driver takes in one block when B's rows are read in place
    /// ([`PackB::rows_in_place`]): no B micro-panel is packed to fit in L1 then, so a
    /// product this shallow runs as one block, loading and storing each C tile once;
    /// deeper ones keep `KC` blocks. `KC` unless the kernel says otherwise. The sums then
    /// run in other blocks than with B packed, so the bits may differ from the same
    /// product on a packed B; for one kind of operand they still depend only on the shape.
    ///
    /// [`PackB::rows_in_place`]: super::pack::PackB::rows_in_place
    const KC_IN_PLACE: usize = Self::KC;
    /// Rows of C per packed A block (`MC × KC`); a multiple of `MR`.
    const MC: usize;
    /// Columns of C per packed B block (`KC × NC`); a multiple of `NR`.
    const NC: usize;

    /// Computes, for the `MR × NR` tile at `c` (row `i` at `c + i·rsc`, unit column
    /// stride), with `acc[i][j] = Σ_{p < k} a[p·MR + i] · b[p·NR + j]` summed in
    /// ascending `p` (FMA kernels: `acc = fma(a, b, acc)`, starting from 0):
    ///
    /// - `beta == 0`: `c = alpha · acc`, and `c` is **not read** (it may hold NaN);
    /// - otherwise: `c = alpha · acc + beta · c` (FMA kernels: `fma(alpha, acc, beta·c)`;
    ///   `beta == 1` gives the same bits without the multiply).
    ///
    /// The arithmetic of one element depends only on its own A row, B column and C value,
    /// never on where it sits in the tile: that is what makes the GEMM's results
    /// independent of how the caller splits M and N.
    ///
    /// # Safety
    /// - `a` is valid for reads of `k·MR` elements, `b` of `k·NR` elements;
    /// - `c + i·rsc + j` for `i < MR`, `j < NR` are valid for writes (and for reads unless
    ///   `beta == 0`), distinct, and do not overlap `a` or `b`;
    /// - the CPU supports the instructions of the kernel (the driver selects a kernel only
    ///   after [`simd::isa`](crate::simd::isa) reported its ISA).
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(k: usize, alpha: T, a: *const T, b: *const T, beta: T, c: *mut T, rsc: isize);

    /// [`Kernel::kernel`] with the B panel read in place instead of packed: row `p` of the
    /// panel is the `NR` elements at `b + offsets[p]` (not `b + p·NR`). For a B operand
    /// whose rows already lie in memory with unit column stride, such as the taps of a
    /// padded image: the rows need no packing. The arithmetic is `kernel`'s, bit for bit.
    ///
    /// # Safety
    /// As [`Kernel::kernel`], except that `b` need not hold a packed panel: instead
    /// `offsets` is valid for reads of `k` elements and `b + offsets[p] + j` is valid for
    /// reads for every `p < k`, `j < NR`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel_rows(
        k: usize,
        alpha: T,
        a: *const T,
        b: *const T,
        offsets: *const usize,
        beta: T,
        c: *mut T,
        rsc: isize,
    );

    /// Columns [`Kernel::kernel_narrow`] computes (`NR` when the kernel has no narrow form).
    const NR_NARROW: usize = Self::NR;

    /// [`Kernel::kernel`] for only the first `NR_NARROW` columns of the tile (B panels are
    /// still `NR` wide), with the same arithmetic per element: the driver runs it on a last
    /// panel with at most `NR_NARROW` valid columns, where the full kernel would spend
    /// most of its work on zero padding. Same contract as `kernel`, except that only
    /// columns `j < NR_NARROW` of C are written (and read).
    ///
    /// # Safety
    /// As [`Kernel::kernel`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel_narrow(
        k: usize,
        alpha: T,
        a: *const T,
        b: *const T,
        beta: T,
        c: *mut T,
        rsc: isize,
    ) {
        // SAFETY: forwarded; the full kernel writes a superset of the narrow columns.
        unsafe { Self::kernel(k, alpha, a, b, beta, c, rsc) }
    }

    /// Columns [`Kernel::kernel_thin`] handles: 0 when the kernel has no thin form.
    const NR_THIN: usize = 0;

    /// The product of up to two A panels (`h ≤ 2·MR` rows) with the first `w ≤ NR_THIN`
    /// columns of a B panel, with each element's arithmetic exactly [`Kernel::kernel`]'s,
    /// written straight to C (any strides, only the `h × w` valid elements). For the
    /// last, partial panel of a row of tiles with only a few valid columns, where even
    /// [`Kernel::kernel_narrow`] spends most lanes on zero padding: this form puts the
    /// rows of A in the vector lanes and broadcasts the few B values instead (a 196-pixel
    /// plane ends in a 4-column panel).
    ///
    /// Column `p` of A panel `q` is the `MR` elements at `a + q·a_steps[0] +
    /// p·a_steps[1]`: `[k·MR, MR]` for consecutive packed panels, `[MR, column stride]`
    /// for an A read in place ([`Kernel::kernel_strided_a`]).
    ///
    /// # Safety
    /// - `a + q·a_steps[0] + p·a_steps[1] + i` is valid for reads for `q < h.div_ceil(MR)`,
    ///   `p < k`, `i < MR`; `b` for reads of `k·NR` elements;
    /// - `c + i·rsc + j·csc` for `i < h`, `j < w` are valid for writes (and for reads
    ///   unless `beta == 0`), distinct, and do not overlap `a` or `b`;
    /// - `1 ≤ h ≤ 2·MR`, `1 ≤ w ≤ NR_THIN`; the CPU has the kernel's features.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel_thin(
        k: usize,
        alpha: T,
        a: *const T,
        a_steps: [usize; 2],
        b: *const T,
        beta: T,
        c: *mut T,
        strides: [isize; 2],
        h: usize,
        w: usize,
    ) {
        let _ = (k, alpha, a, a_steps, b, beta, c, strides, h, w);
        unreachable!("kernel_thin called on a kernel whose NR_THIN is 0");
    }

    /// Whether the kernel has [`Kernel::kernel_strided_a`].
    const A_IN_PLACE: bool = false;

    /// [`Kernel::kernel`] (or with `narrow`, [`Kernel::kernel_narrow`]) with the A panel
    /// read in place instead of packed: column `p` of the panel is the `MR` elements at
    /// `a + p·a_step` (not `a + p·MR`). For an A whose columns lie in memory with unit row
    /// stride, such as `Wᵀ` in the input delta: the panels need no packing. The
    /// arithmetic is `kernel`'s, bit for bit.
    ///
    /// # Safety
    /// As [`Kernel::kernel`], except that `a` need not hold a packed panel: instead
    /// `a + p·a_step + i` is valid for reads for every `p < k`, `i < MR`. Only called
    /// when [`Kernel::A_IN_PLACE`] is true.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel_strided_a(
        k: usize,
        alpha: T,
        a: *const T,
        a_step: usize,
        b: *const T,
        beta: T,
        c: *mut T,
        rsc: isize,
        narrow: bool,
    ) {
        let _ = (k, alpha, a, a_step, b, beta, c, rsc, narrow);
        unreachable!("kernel_strided_a called on a kernel without A_IN_PLACE");
    }

    /// Output pixels per tile of [`Kernel::kernel_pixels`]: 0 when the kernel has none.
    const PIXEL_MR: usize = 0;

    /// The shorter tile [`Kernel::kernel_pixels`] also computes, for output rows that
    /// are not a multiple of [`Kernel::PIXEL_MR`]: 0 when the kernel has none.
    const PIXEL_MR_SHORT: usize = 0;

    /// A convolution tile in the transposed orientation: `pixels` (`PIXEL_MR` or
    /// `PIXEL_MR_SHORT`) consecutive output pixels (rows) × `NR` output channels (columns), summed over the whole reduction
    /// `channels × taps` in registers and stored once, row-major (`tile + i·NR + j`), for
    /// the caller to write into the NCHW output. The pixels' inputs are read in place from
    /// padded planes and broadcast, and the filters come as a packed panel, so every
    /// vector load is a contiguous row of weights:
    ///
    /// `tile[i][j] = Σ_c Σ_t x[c·channel_len + taps[t] + i·pixel_step] · b[(c·channel_taps + t)·NR + j]`,
    /// `t < tap_count`, summed in ascending `(c, t)` by FMA from 0. `pixel_step` is 1
    /// (consecutive pixels' inputs adjacent: stride 1, or planes split into column
    /// phases) or 2 (stride 2 on planes in column order); the kernel is compiled for each,
    /// the offsets constant. `channel_taps ≥ tap_count` is the panel's taps per channel:
    /// a caller that skips the taps of a tile that fall in padding rows (zeros) passes the
    /// run of taps it keeps, `b` advanced to the first, and the panel's full count here.
    ///
    /// A tile at a left or right padded edge passes `edges`, `tap_count` pairs
    /// `[lead, trail]` (each at most `pixels`): tap `t` is left out of the sums of the
    /// first `lead` and the last `trail` pixels, whose inputs for it are padding (zeros),
    /// and those inputs are not read. Elsewhere `edges` is null and every pixel takes
    /// every tap.
    ///
    /// Before the loop it prefetches, for writing, the `NR` runs of `pixels` elements at
    /// `y + j·y_stride` (where the caller will store the tile; never dereferenced here).
    ///
    /// # Safety
    /// - `pixels` is `PIXEL_MR` or `PIXEL_MR_SHORT`, and not 0;
    /// - `pixel_step` is 1 or 2, and `x + c·channel_len + taps[t] + i·pixel_step` readable
    ///   for `c < channels`, `t < tap_count`, `i < pixels` (when `edges` is not null,
    ///   for the `i` not left out of tap `t`); `x` itself need not be (it may point
    ///   before the planes, the addresses are computed wrapping); `taps` readable for
    ///   `tap_count` elements;
    /// - `edges` null, or readable for `tap_count` pairs, each element at most `pixels`;
    /// - `tap_count ≤ channel_taps`; `b + (c·channel_taps + t)·NR + j` readable for
    ///   `c < channels`, `t < tap_count`, `j < NR`; `tile` writable for `pixels·NR`,
    ///   not overlapping;
    /// - the CPU has the kernel's features; only called when `PIXEL_MR > 0`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel_pixels(
        pixels: usize,
        channels: usize,
        channel_len: usize,
        taps: *const usize,
        tap_count: usize,
        channel_taps: usize,
        edges: *const [u8; 2],
        x: *const T,
        pixel_step: usize,
        b: *const T,
        tile: *mut T,
        y: *const T,
        y_stride: usize,
    ) {
        let _ = (
            pixels,
            channels,
            channel_len,
            taps,
            tap_count,
            channel_taps,
            edges,
            x,
            pixel_step,
            b,
            tile,
            y,
            y_stride,
        );
        unreachable!("kernel_pixels called on a kernel whose PIXEL_MR is 0");
    }

    /// [`Kernel::kernel`] (or with `narrow`, [`Kernel::kernel_narrow`]) with the A panel
    /// read in place by rows: element `(i, p)` of the panel is `a[a_rows[i] + p]` (not
    /// `a[p·MR + i]`). For an A whose rows lie in memory with unit column stride at
    /// scattered offsets, such as the taps of a padded image in the weight gradient
    /// (`dWᵀ = col · dyᵀ`, a tap row of `col` being a run of the image): the panels
    /// need no packing. The arithmetic is `kernel`'s, bit for bit.
    ///
    /// # Safety
    /// As [`Kernel::kernel`], except that `a` need not hold a packed panel: instead
    /// `a_rows` is valid for reads of `MR` elements and `a + a_rows[i] + p` is valid for
    /// reads for every `i < MR`, `p < k`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel_a_rows(
        k: usize,
        alpha: T,
        a: *const T,
        a_rows: *const usize,
        b: *const T,
        beta: T,
        c: *mut T,
        rsc: isize,
        narrow: bool,
    );
}

/// The portable kernel: plain Rust, a separate multiply and add (the baseline x86-64 has
/// no FMA; `mul_add` would be a library call). LLVM vectorizes the `NR` loop with SSE2.
pub struct Portable;

/// Tile of the portable kernel: 4 × 8 accumulators fit the 16 SSE registers for f32
/// (4 × 2 vectors) and nearly for f64 (4 × 4).
const P_MR: usize = 4;
const P_NR: usize = 8;

impl<T: crate::Element> Kernel<T> for Portable {
    const MR: usize = P_MR;
    const NR: usize = P_NR;
    /// Same cache reasoning as the SIMD kernels, scaled to the small tile: the
    /// B panel `KC × NR` (16 KiB for f32) stays in L1 while the A block streams.
    const KC: usize = 256;
    /// `MC × KC` in half of the 1 MiB L2.
    const MC: usize = 128;
    /// `KC × NC` (f32: 512 KiB) in the other half of L2.
    const NC: usize = 512;

    #[inline]
    unsafe fn kernel(k: usize, alpha: T, a: *const T, b: *const T, beta: T, c: *mut T, rsc: isize) {
        // SAFETY: the caller guarantees `a` holds k·MR elements, column p at a + p·MR,
        // and `b` k·NR elements: row p is at b + p·NR.
        let (column, row) = (
            |p: usize| unsafe { a.add(p * P_MR) },
            |p: usize| unsafe { b.add(p * P_NR) },
        );
        // SAFETY: forwarded (`c` as the caller guarantees).
        unsafe { portable_tile(k, alpha, |p, i| *column(p).add(i), row, beta, c, rsc) }
    }

    #[inline]
    unsafe fn kernel_a_rows(
        k: usize,
        alpha: T,
        a: *const T,
        a_rows: *const usize,
        b: *const T,
        beta: T,
        c: *mut T,
        rsc: isize,
        _narrow: bool,
    ) {
        // SAFETY: the caller guarantees `a_rows` holds MR offsets and element p of row i
        // at a + a_rows[i] + p for p < k; `b` holds k·NR elements.
        let starts: [*const T; P_MR] = std::array::from_fn(|i| unsafe { a.add(*a_rows.add(i)) });
        let row = |p: usize| unsafe { b.add(p * P_NR) };
        // SAFETY: forwarded (`c` as the caller guarantees).
        unsafe { portable_tile(k, alpha, |p, i| *starts[i].add(p), row, beta, c, rsc) }
    }

    #[inline]
    unsafe fn kernel_rows(
        k: usize,
        alpha: T,
        a: *const T,
        b: *const T,
        offsets: *const usize,
        beta: T,
        c: *mut T,
        rsc: isize,
    ) {
        // SAFETY: the caller guarantees `offsets` holds k elements and row p at
        // b + offsets[p] holds NR; `a` holds k·MR elements.
        let row = |p: usize| unsafe { b.add(*offsets.add(p)) };
        // SAFETY: forwarded.
        unsafe { portable_tile(k, alpha, |p, i| *a.add(p * P_MR + i), row, beta, c, rsc) }
    }
}

/// The portable kernel's tile: A element `(i, p)` is `a_at(p, i)`, B row `p` at
/// `row(p)`.
///
/// # Safety
/// `a_at(p, i)` reads a valid element for `p < k`, `i < MR`, `row(p)` points at `NR`
/// readable elements for `p < k`; C as in [`Kernel::kernel`].
#[inline(always)]
unsafe fn portable_tile<T: crate::Element>(
    k: usize,
    alpha: T,
    a_at: impl Fn(usize, usize) -> T,
    row: impl Fn(usize) -> *const T,
    beta: T,
    c: *mut T,
    rsc: isize,
) {
    let mut acc = [[T::ZERO; P_NR]; P_MR];
    for p in 0..k {
        let ap: [T; P_MR] = std::array::from_fn(|i| a_at(p, i));
        // SAFETY: row p holds NR elements (the caller's guarantee).
        let bp = unsafe { std::slice::from_raw_parts(row(p), P_NR) };
        for i in 0..P_MR {
            for j in 0..P_NR {
                acc[i][j] += ap[i] * bp[j];
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate() {
        // SAFETY: the caller guarantees the MR rows of NR elements at
        // `c + i·rsc` are valid, distinct and not aliased by `a` or `b`.
        let row = unsafe { std::slice::from_raw_parts_mut(c.offset(i as isize * rsc), P_NR) };
        if beta == T::ZERO {
            for (cv, &av) in row.iter_mut().zip(acc_row) {
                *cv = alpha * av;
            }
        } else {
            for (cv, &av) in row.iter_mut().zip(acc_row) {
                *cv = alpha * av + beta * *cv;
            }
        }
    }
}

/// Writes a SIMD microkernel as a `#[target_feature]` function `$name::<NV>`.
///
/// The tile is `MR` rows × `NV` vectors of `$lanes` lanes, read from B panels `$nv`
/// vectors wide: `NV = $nv` is the kernel, a smaller `NV` its narrow form for the last,
/// partial panel of a row of tiles (the same arithmetic per element, fewer columns). Accumulators are a local
/// `[[vector; NV]; MR]` indexed only by constants after full unrolling, so LLVM keeps
/// every one in a register (checked with `objdump`, see the module doc of `blocked`).
/// Each step loads the `NV` vectors of the B row and broadcasts each A value (one
/// `vbroadcastss` per value; LLVM folds it into the FMA as an AVX-512 embedded broadcast
/// only in the one-vector narrow form, where each value feeds a single FMA).
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernel {
    (
        $name:ident, $t:ty, $feature:literal, $lanes:literal, mr = $mr:literal, nv = $nv:literal,
        zero = $zero:ident, splat = $splat:ident, load = $load:ident, store = $store:ident,
        fma = $fma:ident, mul = $mul:ident
    ) => {
        /// See [`Kernel::kernel`](crate::blocked::kernel::Kernel::kernel) for the contract.
        /// `IN_PLACE`: B rows at `b + offsets[p]` (`kernel_rows`); `A_STRIDED`: A columns
        /// `a_step` apart (`kernel_strided_a`), prefetched ahead; `A_ROWS`: A row `i` at
        /// `a + a_rows[i]`, its columns consecutive (`kernel_a_rows`).
        ///
        /// # Safety
        /// As `Kernel::kernel` (or the form the flags name), with `MR`/`NR` this kernel's,
        /// and the CPU must have the target features of this function.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name<
            const NV: usize,
            const IN_PLACE: bool,
            const A_STRIDED: bool,
            const A_ROWS: bool,
        >(
            k: usize,
            alpha: $t,
            a: *const $t,
            a_step: usize,
            a_rows: *const usize,
            b: *const $t,
            offsets: *const usize,
            beta: $t,
            c: *mut $t,
            rsc: isize,
        ) {
            const MR: usize = $mr;
            // The packed B rows are always the full panel width; a narrow instance
            // (`NV < $nv`) computes only the first `NV` vectors of the tile.
            const B_ROW: usize = $nv * $lanes;
            const L: usize = $lanes;
            // Start fetching the C tile now: it is touched only after the k loop, and
            // from the second k block on it has usually left L1.
            for i in 0..MR {
                let row = c.wrapping_offset(i as isize * rsc).cast::<i8>();
                _mm_prefetch::<_MM_HINT_T0>(row);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(NV * L * size_of::<$t>() - 1));
            }
            let mut acc = [[$zero(); NV]; MR];
            // A read in rows (`kernel_a_rows`): one pointer per row, indexed by `p` (one
            // register each).
            let row_starts: [*const $t; MR] = std::array::from_fn(|i| {
                if A_ROWS {
                    // SAFETY: `a_rows` holds MR offsets (`kernel_a_rows`' contract).
                    a.wrapping_add(unsafe { *a_rows.add(i) })
                } else {
                    a
                }
            });
            let (mut a, mut packed_row) = (a, b);
            for p in 0..k {
                let row = if IN_PLACE {
                    // SAFETY: `offsets` holds k elements (`kernel_rows`' contract).
                    unsafe { b.add(*offsets.add(p)) }
                } else {
                    packed_row
                };
                let mut bv = [$zero(); NV];
                for (v, bv) in bv.iter_mut().enumerate() {
                    // SAFETY: `row` points at B row p, NR ≥ NV·L readable elements (the
                    // packed panel's k·NR, or the in-place row the caller guarantees).
                    *bv = unsafe { $load(row.add(v * L)) };
                }
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    // SAFETY: `a` points at the current column of MR elements: inside the
                    // packed panel's k·MR elements, or column p of an A read in place
                    // (`kernel_strided_a`'s contract); with `A_ROWS`, element p of row i
                    // is readable (`kernel_a_rows`' contract).
                    let ai = if A_ROWS {
                        $splat(unsafe { *row_starts[i].add(p) })
                    } else {
                        $splat(unsafe { *a.add(i) })
                    };
                    for (acc, &bv) in acc_row.iter_mut().zip(&bv) {
                        *acc = $fma(ai, bv, *acc);
                    }
                }
                // A read in place (`kernel_strided_a`): its columns lie `a_step` apart,
                // one cache line each, and the hardware prefetcher does not follow them;
                // fetch the one 16 steps ahead. (Past the end the address is unused: a
                // prefetch never faults.) On the Intel host, batch1_3x3_14's input delta
                // (`Wᵀ` in place, 9216 B between columns), paired runs, 1 thread: median
                // ratio 1.10 and 1.15 over 8 and 10 rounds, best 96.2 → 107.3 GFLOP/s;
                // the same as packing `Wᵀ` instead (1.02). A packed panel is contiguous
                // (`A_STRIDED` false: the instance has no prefetch).
                if A_STRIDED {
                    _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(16 * a_step).cast::<i8>());
                }
                // Wrapping: after the last step these point past the operands, unused.
                a = a.wrapping_add(a_step);
                packed_row = packed_row.wrapping_add(B_ROW);
            }
            let alpha_v = $splat(alpha);
            for (i, acc_row) in acc.iter().enumerate() {
                // SAFETY: row i of the tile, valid per the caller.
                let row = unsafe { c.offset(i as isize * rsc) };
                for (v, &acc) in acc_row.iter().enumerate() {
                    // SAFETY: lanes v·L .. v·L + L of row i are inside the MR × NR tile
                    // the caller guarantees valid (and readable when beta != 0).
                    unsafe {
                        let p = row.add(v * L);
                        let out = if beta == 0.0 {
                            $mul(alpha_v, acc)
                        } else if beta == 1.0 {
                            $fma(alpha_v, acc, $load(p))
                        } else {
                            $fma(alpha_v, acc, $mul($splat(beta), $load(p)))
                        };
                        $store(p, out);
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(super) use simd_kernel;

/// Writes the thin form of a SIMD kernel ([`Kernel::kernel_thin`]) as a
/// `#[target_feature]` function `$name::<W, P>`: `P` A panels of `MR` rows (one vector
/// `$rows` of MR lanes each) times `W` broadcast B values per step, `P·W` accumulators,
/// each lane `fma(a_i, b_j, acc)` from zero in ascending `k` like the full kernel. The
/// accumulators go to a stack tile and the epilogue runs per element with the full
/// kernel's formulas (`mul_add` is the fused multiply-add the vectors use).
#[cfg(target_arch = "x86_64")]
macro_rules! thin_kernel {
    (
        $name:ident, $t:ty, $feature:literal, mr = $mr:literal, nr = $nr:literal,
        zero = $zero:ident, splat = $splat:ident, load = $load:ident,
        store = $store:ident, fma = $fma:ident
    ) => {
        /// See [`Kernel::kernel_thin`](crate::blocked::kernel::Kernel::kernel_thin).
        ///
        /// # Safety
        /// As `Kernel::kernel_thin`, with `h ≤ P·MR` and `w ≤ W`.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name<const W: usize, const P: usize>(
            k: usize,
            alpha: $t,
            a: *const $t,
            [panel_step, column_step]: [usize; 2],
            b: *const $t,
            beta: $t,
            c: *mut $t,
            [rsc, csc]: [isize; 2],
            h: usize,
            w: usize,
        ) {
            const MR: usize = $mr;
            const NR: usize = $nr;
            let mut acc = [[$zero(); W]; P];
            for p in 0..k {
                for (q, acc_q) in acc.iter_mut().enumerate() {
                    // SAFETY: column p of panel q < P is MR readable elements at
                    // a + q·panel_step + p·column_step (the caller guarantees that for
                    // h.div_ceil(MR) panels and the driver passes P = h.div_ceil(MR)).
                    let av = unsafe { $load(a.add(q * panel_step + p * column_step)) };
                    for (j, acc) in acc_q.iter_mut().enumerate() {
                        // SAFETY: B row p of the packed panel holds NR ≥ W elements.
                        let bj = $splat(unsafe { *b.add(p * NR + j) });
                        *acc = $fma(av, bj, *acc);
                    }
                }
            }
            let mut tile = [[[0.0 as $t; MR]; W]; P];
            for (acc_q, tile_q) in acc.iter().zip(tile.iter_mut()) {
                for (&acc, col) in acc_q.iter().zip(tile_q.iter_mut()) {
                    // SAFETY: `col` is MR elements, one vector.
                    unsafe { $store(col.as_mut_ptr(), acc) };
                }
            }
            for i in 0..h {
                for j in 0..w {
                    let acc = tile[i / MR][j][i % MR];
                    // SAFETY: i < h, j < w: an element of C the caller guarantees.
                    unsafe {
                        let out = c.offset(i as isize * rsc + j as isize * csc);
                        *out = if beta == 0.0 {
                            alpha * acc
                        } else if beta == 1.0 {
                            alpha.mul_add(acc, *out)
                        } else {
                            alpha.mul_add(acc, beta * *out)
                        };
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(super) use thin_kernel;

/// The `kernel` / `kernel_narrow` methods of a [`Kernel`] impl backed by a
/// [`simd_kernel!`] function `$f` (two vectors wide; the narrow form is one vector of
/// `$lanes` columns). `$isa` names the CPU feature the caller's contract guarantees.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernel_methods {
    ($t:ty, $f:ident, $lanes:literal, $isa:literal) => {
        #[inline(always)]
        unsafe fn kernel(
            k: usize,
            alpha: $t,
            a: *const $t,
            b: *const $t,
            beta: $t,
            c: *mut $t,
            rsc: isize,
        ) {
            // SAFETY: the caller upholds `Kernel::kernel`'s contract, which includes that
            // the CPU has the kernel's features; a packed panel's columns are MR apart.
            unsafe {
                $f::<2, false, false, false>(
                    k,
                    alpha,
                    a,
                    <Self as Kernel<$t>>::MR,
                    std::ptr::null(),
                    b,
                    std::ptr::null(),
                    beta,
                    c,
                    rsc,
                )
            }
        }

        #[inline(always)]
        unsafe fn kernel_rows(
            k: usize,
            alpha: $t,
            a: *const $t,
            b: *const $t,
            offsets: *const usize,
            beta: $t,
            c: *mut $t,
            rsc: isize,
        ) {
            // SAFETY: the caller upholds `Kernel::kernel_rows`' contract.
            unsafe {
                $f::<2, true, false, false>(
                    k,
                    alpha,
                    a,
                    <Self as Kernel<$t>>::MR,
                    std::ptr::null(),
                    b,
                    offsets,
                    beta,
                    c,
                    rsc,
                )
            }
        }

        #[doc = concat!("One ", $isa, " vector: ", stringify!($lanes), " columns.")]
        const NR_NARROW: usize = $lanes;

        #[inline(always)]
        unsafe fn kernel_narrow(
            k: usize,
            alpha: $t,
            a: *const $t,
            b: *const $t,
            beta: $t,
            c: *mut $t,
            rsc: isize,
        ) {
            // SAFETY: as `kernel`; the narrow instance touches only the first vector of
            // each row of the tile.
            unsafe {
                $f::<1, false, false, false>(
                    k,
                    alpha,
                    a,
                    <Self as Kernel<$t>>::MR,
                    std::ptr::null(),
                    b,
                    std::ptr::null(),
                    beta,
                    c,
                    rsc,
                )
            }
        }

        const A_IN_PLACE: bool = true;

        #[inline(always)]
        unsafe fn kernel_strided_a(
            k: usize,
            alpha: $t,
            a: *const $t,
            a_step: usize,
            b: *const $t,
            beta: $t,
            c: *mut $t,
            rsc: isize,
            narrow: bool,
        ) {
            // SAFETY: the caller upholds `Kernel::kernel_strided_a`'s contract.
            unsafe {
                let none = std::ptr::null();
                if narrow {
                    $f::<1, false, true, false>(k, alpha, a, a_step, none, b, none, beta, c, rsc)
                } else {
                    $f::<2, false, true, false>(k, alpha, a, a_step, none, b, none, beta, c, rsc)
                }
            }
        }

        #[inline(always)]
        unsafe fn kernel_a_rows(
            k: usize,
            alpha: $t,
            a: *const $t,
            a_rows: *const usize,
            b: *const $t,
            beta: $t,
            c: *mut $t,
            rsc: isize,
            narrow: bool,
        ) {
            // SAFETY: the caller upholds `Kernel::kernel_a_rows`' contract.
            unsafe {
                let none = std::ptr::null();
                if narrow {
                    $f::<1, false, false, true>(k, alpha, a, 1, a_rows, b, none, beta, c, rsc)
                } else {
                    $f::<2, false, false, true>(k, alpha, a, 1, a_rows, b, none, beta, c, rsc)
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(super) use simd_kernel_methods;

/// Writes the pixel-tile kernel ([`Kernel::kernel_pixels`]) as a `#[target_feature]`
/// function, generic over the pixel step (`STEP`, so that the broadcasts' offsets are
/// constants) and over whether the tile has padded edges (`EDGE`, so that the tiles
/// inside the image run the loop without a test) and over the tile's pixels (`MR`): `MR`
/// pixels × `$nv` vectors of `$lanes` output channels, `MR·$nv`
/// accumulators (f32 AVX-512: 14 × 2 = 28 zmm, plus the two weight vectors and one
/// broadcast: 31 of 32 registers). Each step loads the `$nv` weight vectors once and
/// broadcasts `MR` consecutive inputs of one tap row.
#[cfg(target_arch = "x86_64")]
macro_rules! pixel_kernel {
    (
        $name:ident, $t:ty, $feature:literal, $lanes:literal, nv = $nv:literal,
        zero = $zero:ident, splat = $splat:ident, load = $load:ident, store = $store:ident,
        fma = $fma:ident
    ) => {
        /// See [`Kernel::kernel_pixels`](crate::blocked::kernel::Kernel::kernel_pixels).
        ///
        /// # Safety
        /// As `Kernel::kernel_pixels`, with this kernel's tile, and the CPU must have the
        /// target features of this function.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name<const MR: usize, const STEP: usize, const EDGE: bool>(
            channels: usize,
            channel_len: usize,
            taps: *const usize,
            tap_count: usize,
            channel_taps: usize,
            edges: *const [u8; 2],
            x: *const $t,
            b: *const $t,
            tile: *mut $t,
            y: *const $t,
            y_stride: usize,
        ) {
            const L: usize = $lanes;
            const NR: usize = $nv * $lanes;
            // The output runs this tile goes to: fetched for writing now, while the
            // reduction runs (a throwaway probe, resnet_3x3_28/56 on one thread: +4–6 %).
            for j in 0..NR {
                let run = y.wrapping_add(j * y_stride).cast::<i8>();
                _mm_prefetch::<_MM_HINT_ET0>(run);
                _mm_prefetch::<_MM_HINT_ET0>(run.wrapping_add(MR * size_of::<$t>() - 1));
            }
            let mut acc = [[$zero(); $nv]; MR];
            // The panel rows of the taps skipped after this channel's (before the next's).
            let skipped = (channel_taps - tap_count) * NR;
            let (mut b, mut channel) = (b, x);
            for _ in 0..channels {
                for t in 0..tap_count {
                    // SAFETY: `taps` holds `tap_count` offsets and the MR inputs of tap
                    // `t` of this channel are readable (the caller's contract).
                    // (Wrapping: `channel` may lie before the planes when the caller
                    // reads an image with its padding left out; only inputs read are in.)
                    let a = channel.wrapping_add(unsafe { *taps.add(t) });
                    let mut bv = [$zero(); $nv];
                    for (v, bv) in bv.iter_mut().enumerate() {
                        // SAFETY: step (c, t) of the panel holds NR elements (at
                        // `(c·channel_taps + t)·NR`, the caller's contract).
                        *bv = unsafe { $load(b.add(v * L)) };
                    }
                    // Pixels `lead..MR − trail` take this tap: all of them inside the
                    // image, at an edge those whose input is not padding.
                    let [lead, trail] = if EDGE {
                        // SAFETY: `edges` holds `tap_count` pairs when EDGE (the wrapper
                        // passes EDGE only for a non-null `edges`).
                        unsafe { *edges.add(t) }
                    } else {
                        [0, 0]
                    };
                    if lead == 0 && trail == 0 {
                        for (i, acc_row) in acc.iter_mut().enumerate() {
                            // SAFETY: input i of this tap row is readable (see above).
                            let ai = $splat(unsafe { *a.wrapping_add(i * STEP) });
                            for (acc, &bv) in acc_row.iter_mut().zip(&bv) {
                                *acc = $fma(ai, bv, *acc);
                            }
                        }
                    } else {
                        let (lead, trail) = (usize::from(lead), usize::from(trail));
                        for (i, acc_row) in acc.iter_mut().enumerate() {
                            if i < lead || i + trail >= MR {
                                continue;
                            }
                            // SAFETY: input i of this tap row is readable: i is not
                            // left out of tap t (the caller's contract).
                            let ai = $splat(unsafe { *a.wrapping_add(i * STEP) });
                            for (acc, &bv) in acc_row.iter_mut().zip(&bv) {
                                *acc = $fma(ai, bv, *acc);
                            }
                        }
                    }
                    b = b.wrapping_add(NR);
                }
                b = b.wrapping_add(skipped);
                channel = channel.wrapping_add(channel_len);
            }
            for (i, acc_row) in acc.iter().enumerate() {
                for (v, &acc) in acc_row.iter().enumerate() {
                    // SAFETY: `tile` holds MR × NR elements.
                    unsafe { $store(tile.add(i * NR + v * L), acc) };
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(super) use pixel_kernel;
