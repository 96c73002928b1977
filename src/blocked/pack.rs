//! Packing: the seam where an operand enters the GEMM.
//!
//! The driver never reads A or B itself. It asks the operand to write one block into a
//! packed buffer, in the exact order the microkernel reads it: [`PackA`] for the left
//! operand, [`PackB`] for the right one. [`StridedA`] and [`StridedB`] pack a strided
//! matrix view. A convolution can instead implement [`PackB`] on its input image and
//! write the packed panel straight from it (im2col fused into packing): no column matrix
//! in memory, only the `KC × NC` packed block.
//!
//! Both traits are safe: a wrong implementation gives wrong numbers, never undefined
//! behaviour (the driver hands them bounds-checked slices).

use std::ops::Range;

use super::transpose::{Strided, transpose};
use crate::element::Element;
use crate::gemm::MatRef;
use crate::simd;

/// The left operand A (`rows × depth`) of `C = alpha · A · B + beta · C`.
pub trait PackA<T> {
    /// Rows of A (= rows of C).
    fn rows(&self) -> usize;
    /// Columns of A (the summed dimension `k`).
    fn depth(&self) -> usize;
    /// Packs `A[rows, depth]` into `dst` as panels of `mr` rows.
    ///
    /// With `kc = depth.len()`, `h = rows.len()`, `dst.len()` is
    /// `h.div_ceil(mr) · mr · kc`. Panel `p` (rows `rows.start + p·mr ..`) occupies
    /// `dst[p·mr·kc .. (p+1)·mr·kc]`, column-major inside the panel:
    ///
    /// `dst[p·mr·kc + kk·mr + i] = A[rows.start + p·mr + i, depth.start + kk]`
    ///
    /// for `i < mr`, `kk < kc`. Rows at or past `rows.end` (the last, partial panel) must
    /// be written as **zero**: the kernel computes the whole panel and the padding must
    /// not turn into NaN or infinity through `0 · x`.
    fn pack_a(&self, mr: usize, rows: Range<usize>, depth: Range<usize>, dst: &mut [T]);

    /// The block `pack_a(mr, rows, depth, ..)` would write, if this operand already holds
    /// it packed ([`PrepackedA`](super::PrepackedA)): the driver then reads it in place.
    /// `None` (the default) makes the driver call [`PackA::pack_a`].
    fn packed(&self, mr: usize, rows: Range<usize>, depth: Range<usize>) -> Option<&[T]> {
        let _ = (mr, rows, depth);
        None
    }

    /// `A[rows, depth]` as it lies in memory, when its columns are contiguous (unit row
    /// stride) so that a kernel can read each panel's columns in place
    /// ([`Kernel::kernel_strided_a`](super::kernel::Kernel::kernel_strided_a)): the
    /// elements from `A[rows.start, depth.start]` on, and the distance between columns.
    /// `None` (the default) makes the driver pack.
    fn columns_in_place(&self, rows: Range<usize>, depth: Range<usize>) -> Option<(&[T], usize)> {
        let _ = (rows, depth);
        None
    }

    /// A's rows `rows` as they already lie in memory, when each is a contiguous run
    /// (unit column stride) wherever it starts, so that a kernel can read the panels in
    /// place by rows ([`Kernel::kernel_a_rows`](super::kernel::Kernel::kernel_a_rows)):
    /// returns `data` and writes `offsets` (`rows.len()` elements) so that
    ///
    /// `A[rows.start + i, depth.start + kk] = data[offsets[i] + kk]` for every
    /// `kk < depth.len()`.
    ///
    /// The driver checks that every run lies in `data` (else it packs). `None` (the
    /// default) makes the driver pack.
    fn rows_in_place(
        &self,
        rows: Range<usize>,
        depth: Range<usize>,
        offsets: &mut [usize],
    ) -> Option<&[T]> {
        let _ = (rows, depth, offsets);
        None
    }
}

/// The right operand B (`depth × cols`) of `C = alpha · A · B + beta · C`.
///
/// This is where im2col fuses into the GEMM: B is the column matrix of a convolution,
/// row `(c, r, s)` and column `(p, q)` holding `x[c, p·stride + r·dilation - pad,
/// q·stride + s·dilation - pad]` (zero outside the image); an implementation on the image
/// computes each packed element from that formula instead of reading a stored matrix.
pub trait PackB<T> {
    /// Rows of B (the summed dimension `k`).
    fn depth(&self) -> usize;
    /// Columns of B (= columns of C).
    fn cols(&self) -> usize;
    /// Packs `B[depth, cols]` into `dst` as panels of `nr` columns.
    ///
    /// With `kc = depth.len()`, `w = cols.len()`, `dst.len()` is
    /// `w.div_ceil(nr) · nr · kc`. Panel `p` (columns `cols.start + p·nr ..`) occupies
    /// `dst[p·nr·kc .. (p+1)·nr·kc]`, row-major inside the panel:
    ///
    /// `dst[p·nr·kc + kk·nr + j] = B[depth.start + kk, cols.start + p·nr + j]`
    ///
    /// for `j < nr`, `kk < kc`. Columns at or past `cols.end` (the last, partial panel)
    /// must be written as **zero** (see [`PackA::pack_a`]). `dst` holds stale data on
    /// entry: every element must be written.
    fn pack_b(&self, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [T]);

    /// B's rows `depth` as they already lie in memory, if they do: returns `data` and
    /// writes `offsets` (`depth.len()` elements) so that
    ///
    /// `B[depth.start + kk, j] = data[offsets[kk] + j]` for every `j < cols()`.
    ///
    /// The driver then reads full panels in place ([`Kernel::kernel_rows`]) and packs
    /// only the last, partial one; it checks that every row's `cols()` elements lie in
    /// `data` (else it packs as usual). `None` (the default) packs everything. Worth it
    /// where the rows are scattered enough that reading them unpacked costs no L1
    /// conflicts (not a matrix with a power-of-two row stride).
    ///
    /// [`Kernel::kernel_rows`]: super::Kernel::kernel_rows
    fn rows_in_place(&self, depth: Range<usize>, offsets: &mut [usize]) -> Option<&[T]> {
        let _ = (depth, offsets);
        None
    }

    /// Where columns `col .. col + width` of the rows [`PackB::rows_in_place`] returned
    /// lie: `Some(o)` if `B[p, col + j] = data[offsets[p] + o + j]` for every `j < width`
    /// (one contiguous run per row), `None` if they are not contiguous there (the driver
    /// then packs that panel). The default, `Some(col)`, is a matrix whose columns are
    /// contiguous everywhere; an operand that skips memory between column runs (the
    /// forward's output rows over padded input rows) maps its columns here.
    fn column_in_place(&self, col: usize, width: usize) -> Option<usize> {
        let _ = width;
        Some(col)
    }

    /// The block `pack_b(nr, depth, cols, ..)` would write, if this operand already holds
    /// it packed ([`PrepackedB`](super::PrepackedB)): the driver then reads it in place.
    /// `None` (the default) makes the driver call [`PackB::pack_b`].
    fn packed(&self, nr: usize, depth: Range<usize>, cols: Range<usize>) -> Option<&[T]> {
        let _ = (nr, depth, cols);
        None
    }
}

/// A strided matrix as the A operand.
#[derive(Clone, Copy)]
pub(crate) struct StridedA<'a, T>(pub(crate) MatRef<'a, T>);

/// A strided matrix as the B operand.
#[derive(Clone, Copy)]
pub(crate) struct StridedB<'a, T>(pub(crate) MatRef<'a, T>);

impl<T: Element> PackA<T> for StridedA<'_, T> {
    fn rows(&self) -> usize {
        self.0.rows
    }
    fn depth(&self) -> usize {
        self.0.cols
    }
    fn pack_a(&self, mr: usize, rows: Range<usize>, depth: Range<usize>, dst: &mut [T]) {
        // A panel of A is the transpose of a panel of Aᵀ viewed as B: same layout rule.
        let at = StridedB(self.0.t());
        at.pack_b(mr, depth, rows, dst);
    }

    fn columns_in_place(&self, rows: Range<usize>, depth: Range<usize>) -> Option<(&[T], usize)> {
        let m = &self.0;
        (m.row_stride == 1 && rows.end <= m.rows && depth.end <= m.cols)
            .then(|| {
                let start = rows.start + depth.start * m.col_stride;
                m.data.get(start..).map(|data| (data, m.col_stride))
            })
            .flatten()
    }
}

/// A matrix whose rows are contiguous (unit column stride) as the A operand, read in
/// place by rows ([`PackA::rows_in_place`], the kernel broadcasting from `MR` row runs)
/// wherever the driver packs B, else packed as [`StridedA`] packs it: the weights of a
/// forward that packs no weights of its own (a single image, grouped layers), which
/// would otherwise be block-transposed into panels on every call. On the Zen 3 host
/// (AVX2) that transpose was 12.6% of batch1_3x3_14's forward (`perf record`); read in
/// place, `benches/ab.sh` over 16 rounds: 1.10 at 1 thread, 1.13 at 2 (best medians
/// 77.6 → 81.2 and 98.1 → 111.3 GFLOP/s, on a host whose speed drifted ±30%).
#[derive(Clone, Copy)]
pub(crate) struct RowsA<'a, T>(pub(crate) MatRef<'a, T>);

impl<T: Element> PackA<T> for RowsA<'_, T> {
    fn rows(&self) -> usize {
        self.0.rows
    }
    fn depth(&self) -> usize {
        self.0.cols
    }
    fn pack_a(&self, mr: usize, rows: Range<usize>, depth: Range<usize>, dst: &mut [T]) {
        StridedA(self.0).pack_a(mr, rows, depth, dst)
    }

    fn rows_in_place(
        &self,
        rows: Range<usize>,
        depth: Range<usize>,
        offsets: &mut [usize],
    ) -> Option<&[T]> {
        let m = &self.0;
        let fits = m.col_stride == 1
            && rows.end <= m.rows
            && depth.end <= m.cols
            && offsets.len() == rows.len();
        fits.then(|| {
            // Row r starts at r·row_stride, inside `data` (a valid view); the driver
            // checks every run's end.
            for (offset, r) in offsets.iter_mut().zip(rows) {
                *offset = r * m.row_stride + depth.start;
            }
            m.data
        })
    }
}

impl<T: Element> PackB<T> for StridedB<'_, T> {
    fn depth(&self) -> usize {
        self.0.rows
    }
    fn cols(&self) -> usize {
        self.0.cols
    }
    fn pack_b(&self, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [T]) {
        let kc = depth.len();
        let panels = cols.len().div_ceil(nr);
        assert_eq!(
            dst.len(),
            panels * nr * kc,
            "pack_b: wrong destination length"
        );
        let m = &self.0;
        if m.col_stride == 1 {
            // Rows of B are contiguous: walk them once each, in order (one read stream),
            // dealing each row's nr-wide pieces out to the panels.
            deal_rows_simd(m, nr, depth.start, cols, dst);
            return;
        }
        for (p, panel) in dst.chunks_exact_mut(nr * kc).enumerate() {
            let j0 = cols.start + p * nr;
            let w = nr.min(cols.end - j0);
            if m.row_stride == 1 && simd::isa() != simd::Isa::Scalar {
                // Columns are contiguous (transposed B, or a row-major A seen as Aᵀ):
                // transpose blocks of them in registers, then zero the padding columns.
                let first = j0 * m.col_stride + depth.start;
                let src = &m.data[first..];
                transpose(simd::isa(), src, Strided(m.col_stride), kc, w, panel, nr);
                if w < nr {
                    for row in panel.chunks_exact_mut(nr) {
                        row[w..].fill(T::ZERO);
                    }
                }
            } else if m.row_stride == 1 && w == nr {
                // Same, element by element: read the nr columns side by side, write each
                // packed row once.
                match nr {
                    4 => gather_cols::<T, 4>(m, depth.start, j0, kc, panel),
                    6 => gather_cols::<T, 6>(m, depth.start, j0, kc, panel),
                    8 => gather_cols::<T, 8>(m, depth.start, j0, kc, panel),
                    16 => gather_cols::<T, 16>(m, depth.start, j0, kc, panel),
                    32 => gather_cols::<T, 32>(m, depth.start, j0, kc, panel),
                    _ => gather_any(m, nr, depth.start, j0, w, panel),
                }
            } else {
                gather_any(m, nr, depth.start, j0, w, panel);
            }
        }
    }
}

/// Column-contiguous B (`row_stride == 1`), a full panel of `NR` columns: `NR` source
/// streams read in step, one packed row written at a time.
#[inline]
fn gather_cols<T: Element, const NR: usize>(
    m: &MatRef<'_, T>,
    k0: usize,
    j0: usize,
    kc: usize,
    panel: &mut [T],
) {
    let panel = &mut panel[..kc * NR];
    let cols: [&[T]; NR] = std::array::from_fn(|j| &m.data[(j0 + j) * m.col_stride + k0..][..kc]);
    for (kk, row) in panel.chunks_exact_mut(NR).enumerate() {
        let row: &mut [T; NR] = row.try_into().expect("chunks of NR");
        for (v, col) in row.iter_mut().zip(&cols) {
            *v = col[kk];
        }
    }
}

/// Any strides, any panel width: element by element down each column, zero padding.
fn gather_any<T: Element>(
    m: &MatRef<'_, T>,
    nr: usize,
    k0: usize,
    j0: usize,
    w: usize,
    panel: &mut [T],
) {
    let kc = panel.len() / nr;
    for j in 0..w {
        let col = (j0 + j) * m.col_stride;
        for kk in 0..kc {
            panel[kk * nr + j] = m.data[(k0 + kk) * m.row_stride + col];
        }
    }
    if w < nr {
        for row in panel.chunks_exact_mut(nr) {
            row[w..].fill(T::ZERO);
        }
    }
}

crate::dispatch! {
    /// Packs row-major B (`col_stride == 1`) into `nr`-wide panels with [`deal_rows`],
    /// compiled for the CPU's vector width (one or two vector moves per piece; the
    /// baseline build moved 16 bytes at a time).
    fn deal_rows_simd<T: Element>(m: &MatRef<'_, T>, nr: usize, k0: usize, cols: Range<usize>, dst: &mut [T]) = deal_rows_body;
}

#[inline(always)]
fn deal_rows_body<T: Element, const FMA: bool>(
    m: &MatRef<'_, T>,
    nr: usize,
    k0: usize,
    cols: Range<usize>,
    dst: &mut [T],
) {
    match nr {
        8 => deal_rows::<T, 8>(m, k0, cols, dst),
        16 => deal_rows::<T, 16>(m, k0, cols, dst),
        32 => deal_rows::<T, 32>(m, k0, cols, dst),
        _ => {
            let kc = dst.len() / cols.len().div_ceil(nr) / nr;
            for (p, panel) in dst.chunks_exact_mut(nr * kc).enumerate() {
                let j0 = cols.start + p * nr;
                copy_rows_dyn(m, nr, k0, j0, nr.min(cols.end - j0), panel);
            }
        }
    }
}

/// Row-major B, panel width a constant: full `NR`-wide pieces (fixed-size copies), then
/// the zero-padded tail piece of each row.
#[inline(always)]
fn deal_rows<T: Element, const NR: usize>(
    m: &MatRef<'_, T>,
    k0: usize,
    cols: Range<usize>,
    dst: &mut [T],
) {
    let w = cols.len();
    let kc = dst.len() / w.div_ceil(NR) / NR;
    let (full, rem) = (w / NR, w % NR);
    // Panels of whole cache-line pairs (the AVX-512 path: f32 `NR = 32`, f64 16) in one
    // sweep over the rows, each piece two full lines, unless their write streams land on
    // one L1 set: more panels than its 8 ways, `kc · NR` elements apart, a multiple of
    // 4 KiB. Zen 4, f32: the pointwise forward (resnet_1x1_14, 7 panels) ran 0.976 in
    // bands (paired); `gemm_bench` in bands: square 1024 (16 panels 32 KiB apart) +2%,
    // 64x576x455 (15 panels 24 KiB apart) +4.5%, 64x3136x576 (18 panels 30,976 B apart)
    // −3 to −5%. f64 (which took bands before) the same within the spread.
    const L1_WAYS: usize = 8;
    let aliased = w.div_ceil(NR) > L1_WAYS && (kc * NR * size_of::<T>()).is_multiple_of(4096);
    if NR * size_of::<T>() >= 128 && !aliased {
        deal_all_rows::<T, NR>(m, k0, cols, kc, dst);
        return;
    }
    // Bands of ROW_BAND rows, each dealt out panel by panel: the band's rows are read left
    // to right, ROW_BAND streams at once, each line once; each panel receives ROW_BAND
    // consecutive rows, one contiguous run, so one write stream at a time. (All panels in
    // one sweep over the rows, `deal_all_rows`, had 36 write streams on one L1 set where
    // `kc` put the panels a multiple of 4 KiB apart.) The bands replace strips of 32
    // columns down all `kc` rows (`kc` read streams at once, two lines each, the next
    // strip's lines evicted before use). On the Zen 3 host, 1 thread: that packing took
    // 2× matrixmultiply's; blocked / matrixmultiply on `gemm_bench` (full runs) went
    // 0.79–0.84 → 0.96–1.03 on 64x3136x576 and 0.74–0.83 → 0.97–1.10 on 64x576x3136; the
    // pointwise forward (resnet_1x1_14, this packing 13.8% of it) 1.034 at 1 thread and
    // 1.031 at 2, one process alternating the two forms call by call, 59 calls each.
    const ROW_BAND: usize = 8;
    for b0 in (0..kc).step_by(ROW_BAND) {
        let b1 = kc.min(b0 + ROW_BAND);
        for p in 0..full {
            for kk in b0..b1 {
                let src = &m.data[(k0 + kk) * m.row_stride + cols.start + p * NR..][..NR];
                let piece: &[T; NR] = src.try_into().expect("NR elements");
                let out: &mut [T; NR] = (&mut dst[(p * kc + kk) * NR..][..NR])
                    .try_into()
                    .expect("NR elements");
                *out = *piece;
            }
        }
    }
    if rem > 0 {
        for kk in 0..kc {
            let tail = &m.data[(k0 + kk) * m.row_stride + cols.start + full * NR..][..rem];
            let out = &mut dst[(full * kc + kk) * NR..][..NR];
            out[..rem].copy_from_slice(tail);
            out[rem..].fill(T::ZERO);
        }
    }
}

/// Row-major B into `NR`-wide panels in one sweep over its rows: each row's pieces go
/// out to every panel, then the zero-padded tail piece.
#[inline(always)]
fn deal_all_rows<T: Element, const NR: usize>(
    m: &MatRef<'_, T>,
    k0: usize,
    cols: Range<usize>,
    kc: usize,
    dst: &mut [T],
) {
    let w = cols.len();
    let (full, rem) = (w / NR, w % NR);
    for kk in 0..kc {
        let src = &m.data[(k0 + kk) * m.row_stride + cols.start..][..w];
        let (pieces, tail) = src.split_at(full * NR);
        for (p, piece) in pieces.chunks_exact(NR).enumerate() {
            let piece: &[T; NR] = piece.try_into().expect("chunks of NR");
            let out: &mut [T; NR] = (&mut dst[(p * kc + kk) * NR..][..NR])
                .try_into()
                .expect("NR elements");
            *out = *piece;
        }
        if rem > 0 {
            let out = &mut dst[(full * kc + kk) * NR..][..NR];
            out[..rem].copy_from_slice(tail);
            out[rem..].fill(T::ZERO);
        }
    }
}

fn copy_rows_dyn<T: Element>(
    m: &MatRef<'_, T>,
    nr: usize,
    k0: usize,
    j0: usize,
    w: usize,
    panel: &mut [T],
) {
    for (kk, row) in panel.chunks_exact_mut(nr).enumerate() {
        let src = &m.data[(k0 + kk) * m.row_stride + j0..];
        row[..w].copy_from_slice(&src[..w]);
        row[w..].fill(T::ZERO);
    }
}
