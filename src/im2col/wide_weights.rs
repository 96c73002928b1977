//! The weight gradient's operands in *wide* columns, for a GEMM that reads the column
//! matrix in place: `dW_gᵀ (C·R·S × K/groups) = col_wide · dy_wideᵀ`.
//!
//! With the image in row-phased padded planes ([`PaddedLayout::with_row_phases`]), tap
//! row `(c, r, s)` of the column matrix is, for a whole plane, one run of the planes:
//! output pixel `(p, q)` sits at `tap_offset(c, r, s) + p·row_len + q`. Counting the
//! columns as *flat positions* `f = p·row_len + q` (the `row_len − Q` positions per row
//! with `q ≥ Q` are junk: they read real padding or image memory but belong to no output
//! pixel), every row of `col_wide` lies in memory as it is: [`WideTapsA`] hands those
//! runs to the GEMM ([`PackA::rows_in_place`]), which then packs no A at all. The
//! reduction runs over the flat positions, so the other operand, `dy_wideᵀ`
//! ([`WideDyT`], flat positions × filters), is zero at the junk positions, which cancels
//! them. It is the only operand packed: a block transpose of `dy`, each element of which
//! feeds `2·C·R·S` flops, against `2·K` for each element of `colᵀ` that the pixel-column
//! form ([`PaddedIm2colTB`](super::PaddedIm2colTB)) packs.
//!
//! Both operands span `depth = (P − 1)·row_len + Q` flat positions: the last row's junk
//! is left out, so every read lies inside the planes (the last position of the last tap
//! is the bottom-right element of the padded plane the window reaches).

use std::ops::Range;

use super::padded::{PaddedLayout, TapSteps};
use crate::blocked::transpose::{Strided, transpose};
use crate::blocked::{PackA, PackB};
use crate::element::Element;
use crate::shape::ConvGeometry;
use crate::simd;

/// Flat positions the wide operands span: `(P − 1)·row_len + Q` (0 for an empty plane).
pub(crate) fn wide_depth(geo: &ConvGeometry, layout: &PaddedLayout) -> usize {
    flat_depth(geo.h.output, geo.w.output, layout.row_len)
}

/// `(P − 1)·row_len + Q` flat positions for a `P × Q` plane (0 when empty).
fn flat_depth(out_h: usize, out_w: usize, row_len: usize) -> usize {
    if out_h == 0 || out_w == 0 {
        return 0;
    }
    (out_h - 1) * row_len + out_w
}

/// The column matrix of `channels` channels (`channels·R·S` rows) over the flat
/// positions of a plane, read from their padded planes in
/// [`PaddedLayout::with_row_phases`]: `A[(c, r, s), f] = planes[tap_offset(c, r, s) + f]`.
pub(crate) struct WideTapsA<'a, T> {
    pub geo: &'a ConvGeometry,
    /// A row-phased layout ([`PaddedLayout::with_row_phases`]).
    pub layout: &'a PaddedLayout,
    /// The padded planes of the channels, from the operand's first channel on.
    pub planes: &'a [T],
    /// Channels (rows: `channels · R·S`).
    pub channels: usize,
}

impl<T: Element> PackA<T> for WideTapsA<'_, T> {
    fn rows(&self) -> usize {
        self.channels * self.geo.taps
    }

    fn depth(&self) -> usize {
        wide_depth(self.geo, self.layout)
    }

    /// Panel by panel, each row's run copied into the panel's column-major order (the
    /// driver reads the rows in place instead; this serves a block it cannot).
    fn pack_a(&self, mr: usize, rows: Range<usize>, depth: Range<usize>, dst: &mut [T]) {
        let kc = depth.len();
        assert_eq!(
            dst.len(),
            rows.len().div_ceil(mr) * mr * kc,
            "pack_a: wrong destination length"
        );
        let mut taps = TapSteps::new(self.geo, self.layout, 0, rows.start);
        for (panel, i0) in dst.chunks_exact_mut(mr * kc).zip(rows.clone().step_by(mr)) {
            for i in 0..mr {
                if i0 + i < rows.end {
                    let run = &self.planes[taps.next() + depth.start..][..kc];
                    for (kk, &v) in run.iter().enumerate() {
                        panel[kk * mr + i] = v;
                    }
                } else {
                    for kk in 0..kc {
                        panel[kk * mr + i] = T::ZERO;
                    }
                }
            }
        }
    }

    fn rows_in_place(
        &self,
        rows: Range<usize>,
        depth: Range<usize>,
        offsets: &mut [usize],
    ) -> Option<&[T]> {
        let mut taps = TapSteps::new(self.geo, self.layout, 0, rows.start);
        for o in &mut offsets[..rows.len()] {
            *o = taps.next() + depth.start;
        }
        Some(self.planes)
    }
}

/// `dy_gᵀ` over the flat positions of a plane: `B[f, k] = dy[k, p, q]` for
/// `f = p·row_len + q` with `q < Q`, and zero at the junk positions (`q ≥ Q`).
pub(crate) struct WideDyT<'a, T> {
    /// The group's output gradient, `filters` planes of `P × Q`.
    pub dy: &'a [T],
    /// Filters of the group (columns).
    pub filters: usize,
    /// Output width `Q` and height `P`.
    pub out_w: usize,
    pub out_h: usize,
    /// Flat positions per output row (the layout's `row_len`, at least `Q`).
    pub row_len: usize,
}

impl<T: Element> PackB<T> for WideDyT<'_, T> {
    fn depth(&self) -> usize {
        flat_depth(self.out_h, self.out_w, self.row_len)
    }

    fn cols(&self) -> usize {
        self.filters
    }

    /// Panel by panel, output row by output row: the row's pixels in the block are a
    /// block transpose of `width` contiguous `dy` runs (one per filter); its junk
    /// positions are zero rows, and the columns past `cols.end` zero.
    fn pack_b(&self, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [T]) {
        let kc = depth.len();
        assert_eq!(
            dst.len(),
            cols.len().div_ceil(nr) * nr * kc,
            "pack_b: wrong destination length"
        );
        let plane = self.out_h * self.out_w;
        let isa = simd::isa();
        for (panel, j0) in dst.chunks_exact_mut(nr * kc).zip(cols.clone().step_by(nr)) {
            let width = nr.min(cols.end - j0);
            let mut kk = 0;
            while kk < kc {
                let f = depth.start + kk;
                let (p, q) = (f / self.row_len, f % self.row_len);
                let rows = &mut panel[kk * nr..];
                if q < self.out_w {
                    let len = (self.out_w - q).min(kc - kk);
                    let src = &self.dy[j0 * plane + p * self.out_w + q..];
                    transpose(isa, src, Strided(plane), len, width, rows, nr);
                    if width < nr {
                        for row in rows[..len * nr].chunks_exact_mut(nr) {
                            row[width..].fill(T::ZERO);
                        }
                    }
                    kk += len;
                } else {
                    let len = (self.row_len - q).min(kc - kk);
                    rows[..len * nr].fill(T::ZERO);
                    kk += len;
                }
            }
        }
    }
}
