//! im2col and col2im: the lowering that turns a convolution into a GEMM.
//!
//! For one image and one group, the column matrix `col` has `(C/groups)·R·S` rows, one per
//! (channel `c`, kernel tap `r`, `s`), and one column per output pixel `(p, q)`:
//!
//! ```text
//! col[(c·R + r)·S + s][p·Q + q] = x[c][p·stride_h + r·dil_h − pad_h][q·stride_w + s·dil_w − pad_w]
//! ```
//!
//! (zero where the index falls into the padding). The passes build it one *pixel tile* at
//! a time: output pixels `pix0 .. pix0 + len` in row-major `(p, q)` order, so the column
//! buffer stays bounded whatever the image size.
//!
//! `col2im` is the adjoint: it scatter-adds a column tile back into the input planes,
//! summing the overlapping windows. Both walk each row as contiguous runs of one output
//! row: padding is filled by ranges, stride-1 runs are slice copies / vector adds, and
//! there are no per-element bounds checks in the inner loop.
//!
//! With the crate's blocked GEMM the column matrix is never stored: the forward and the
//! weight gradient pack the GEMM's panels straight from the image ([`Im2colB`], and the
//! zero-padded layout of [`padded`]), and only the input delta (and the matrixmultiply
//! path) still builds column tiles.

mod compact;
mod padded;
mod wide_weights;

use std::ops::Range;

pub(crate) use padded::{
    PaddedIm2colB, PaddedIm2colTB, PaddedLayout, WideIm2colB, col2im_padded, pad_planes,
    padded_input, unpad_planes,
};
pub(crate) use wide_weights::{WideDyT, WideTapsA};

use crate::blocked::PackB;
use crate::element::Element;
use crate::shape::ConvGeometry;

/// One contiguous run of a column-matrix row: output pixels of a single output row `oh`,
/// columns `ow0..ow1`, stored at `dst_offset..` within the tile row.
struct Run {
    oh: usize,
    ow0: usize,
    ow1: usize,
    dst_offset: usize,
}

/// Splits the pixel tile `pix0..pix0 + len` into runs that each lie in one output row.
#[inline]
fn runs(out_w: usize, pix0: usize, len: usize) -> impl Iterator<Item = Run> {
    let end = pix0 + len;
    let mut pix = pix0;
    std::iter::from_fn(move || {
        if pix >= end {
            return None;
        }
        let oh = pix / out_w;
        let ow0 = pix % out_w;
        let ow1 = out_w.min(ow0 + (end - pix));
        let run = Run {
            oh,
            ow0,
            ow1,
            dst_offset: pix - pix0,
        };
        pix += ow1 - ow0;
        Some(run)
    })
}

/// How the input planes im2col reads (and col2im writes) are stored.
///
/// `Dense` is the caller's layout: each channel an `H × W` plane. For strided layers a
/// window run steps `stride_w` apart in such a row, a slow gather. `Phased` stores each
/// channel as sub-planes of the columns `iw ≡ phase (mod stride_w)`: there the same run
/// is contiguous, so im2col copies and col2im adds whole slices. Splitting an image once
/// costs one pass over it; every tap of every window then reads contiguously. Only the
/// `min(stride_w, W)` phases that hold a column are stored, so a channel takes fewer than
/// `2·H·W` elements whatever the stride.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlaneLayout {
    /// Column `iw` lives in phase `iw % modulus`: 1 (dense) or `stride_w`.
    modulus: usize,
    /// Stored phases per channel: `min(modulus, W)`.
    phases: usize,
    /// Stored row length: `W` (dense) or `ceil(W / stride_w)`.
    row_len: usize,
    /// Elements per channel: `phases · H · row_len`.
    pub channel_len: usize,
}

impl PlaneLayout {
    /// The caller's `H × W` planes.
    pub(crate) fn dense(geo: &ConvGeometry) -> PlaneLayout {
        PlaneLayout {
            modulus: 1,
            phases: 1,
            row_len: geo.w.input,
            channel_len: geo.in_plane,
        }
    }

    /// The layout im2col should read: phased for layers whose windows step more than one
    /// column and overlap (`stride_w > 1` and more than one tap), dense otherwise.
    pub(crate) fn for_lowering(geo: &ConvGeometry) -> PlaneLayout {
        if geo.w.stride > 1 && geo.taps > 1 {
            let modulus = geo.w.stride;
            let phases = modulus.min(geo.w.input);
            let row_len = geo.w.input.div_ceil(modulus);
            // phases · row_len < 2·W, and H·W fits (validated x size): no overflow.
            PlaneLayout {
                modulus,
                phases,
                row_len,
                channel_len: phases * geo.h.input * row_len,
            }
        } else {
            PlaneLayout::dense(geo)
        }
    }

    pub(crate) fn is_dense(&self) -> bool {
        self.modulus == 1
    }

    /// Offset of input element `(ih, iw)` within one channel.
    #[inline]
    fn offset(&self, geo: &ConvGeometry, ih: usize, iw: usize) -> usize {
        (iw % self.modulus) * geo.h.input * self.row_len + ih * self.row_len + iw / self.modulus
    }
}

/// Copies `c_count` dense planes into `layout` (a no-op copy for the dense layout).
pub(crate) fn split_phases<T: Element>(
    geo: &ConvGeometry,
    layout: &PlaneLayout,
    dense: &[T],
    out: &mut [T],
) {
    let (h, w) = (geo.h.input, geo.w.input);
    for (plane, dst) in dense
        .chunks_exact(geo.in_plane)
        .zip(out.chunks_exact_mut(layout.channel_len))
    {
        for phase in 0..layout.phases {
            for ih in 0..h {
                let row = &plane[ih * w + phase..(ih + 1) * w];
                let to = &mut dst[layout.offset(geo, ih, phase)..][..layout.row_len];
                for (d, s) in to.iter_mut().zip(row.iter().step_by(layout.modulus)) {
                    *d = *s;
                }
            }
        }
    }
}

/// The inverse of [`split_phases`]: writes every element of `c_count` dense planes.
pub(crate) fn merge_phases<T: Element>(
    geo: &ConvGeometry,
    layout: &PlaneLayout,
    phased: &[T],
    dense: &mut [T],
) {
    let (h, w) = (geo.h.input, geo.w.input);
    for (src, plane) in phased
        .chunks_exact(layout.channel_len)
        .zip(dense.chunks_exact_mut(geo.in_plane))
    {
        for phase in 0..layout.phases {
            for ih in 0..h {
                let from = &src[layout.offset(geo, ih, phase)..][..layout.row_len];
                let row = &mut plane[ih * w + phase..(ih + 1) * w];
                for (d, s) in row.iter_mut().step_by(layout.modulus).zip(from) {
                    *d = *s;
                }
            }
        }
    }
}

/// Fills the column tile for output pixels `pix0 .. pix0 + len`.
///
/// - `planes`: `c_count` input channels in `layout` (one group's channels, or a channel
///   block of it);
/// - `col`: `(c_count·R·S) × len`, row-major, fully overwritten.
pub(crate) fn im2col<T: Element>(
    geo: &ConvGeometry,
    layout: &PlaneLayout,
    planes: &[T],
    pix0: usize,
    len: usize,
    col: &mut [T],
) {
    let rows = planes.len() / layout.channel_len * geo.taps;
    for (row, dst) in col[..rows * len].chunks_exact_mut(len).enumerate() {
        fill_row(geo, layout, planes, row, pix0, dst);
    }
}

/// Fills `dst` with row `row` (= `(c·R + r)·S + s`) of the column matrix of `planes`, for
/// output pixels `pix0 .. pix0 + dst.len()`.
#[inline]
pub(crate) fn fill_row<T: Element>(
    geo: &ConvGeometry,
    layout: &PlaneLayout,
    planes: &[T],
    row: usize,
    pix0: usize,
    dst: &mut [T],
) {
    let (c, tap) = (row / geo.taps, row % geo.taps);
    let (r, s) = (tap / geo.w.kernel, tap % geo.w.kernel);
    let plane = &planes[c * layout.channel_len..][..layout.channel_len];
    let step = geo.w.stride / layout.modulus;
    let (oh_lo, oh_hi) = geo.h.valid_outputs(r);
    let (ow_lo, ow_hi) = geo.w.valid_outputs(s);
    for run in runs(geo.w.output, pix0, dst.len()) {
        let seg = &mut dst[run.dst_offset..][..run.ow1 - run.ow0];
        if run.oh < oh_lo || run.oh >= oh_hi {
            seg.fill(T::ZERO);
            continue;
        }
        let a = ow_lo.clamp(run.ow0, run.ow1);
        let b = ow_hi.clamp(a, run.ow1);
        let (head, rest) = seg.split_at_mut(a - run.ow0);
        let (mid, tail) = rest.split_at_mut(b - a);
        head.fill(T::ZERO);
        tail.fill(T::ZERO);
        if mid.is_empty() {
            continue;
        }
        let ih = geo.h.input_index(run.oh, r);
        let iw0 = geo.w.input_index(a, s);
        gather(mid, &plane[layout.offset(geo, ih, iw0)..], step);
    }
}

/// The column matrix of one group's input planes over output pixels `pix0 .. pix0 + len`,
/// as the B operand of the blocked GEMM: its panels are packed straight from the image
/// (im2col fused into packing), so no column matrix exists in memory.
pub(crate) struct Im2colB<'a, T> {
    pub geo: &'a ConvGeometry,
    pub layout: &'a PlaneLayout,
    /// The group's channels, in `layout`.
    pub planes: &'a [T],
    pub pix0: usize,
    pub len: usize,
}

impl<T: Element> PackB<T> for Im2colB<'_, T> {
    fn depth(&self) -> usize {
        self.planes.len() / self.layout.channel_len * self.geo.taps
    }

    fn cols(&self) -> usize {
        self.len
    }

    /// Each B row is built in short chunks on the stack (one im2col row segment) and dealt
    /// out to the `nr`-wide panels, padding the last panel with zeros.
    fn pack_b(&self, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [T]) {
        const CHUNK: usize = 256;
        let kc = depth.len();
        let panels = cols.len().div_ceil(nr);
        assert_eq!(
            dst.len(),
            panels * nr * kc,
            "pack_b: wrong destination length"
        );
        let mut buf = [T::ZERO; CHUNK];
        for (kk, row) in depth.enumerate() {
            let mut j = cols.start;
            while j < cols.end {
                let w = CHUNK.min(cols.end - j);
                fill_row(
                    self.geo,
                    self.layout,
                    self.planes,
                    row,
                    self.pix0 + j,
                    &mut buf[..w],
                );
                // Deal buf[0..w] (columns j..j + w) out to the panels.
                let mut done = 0;
                while done < w {
                    let col = j + done - cols.start;
                    let (p, at) = (col / nr, col % nr);
                    let n = (nr - at).min(w - done);
                    dst[(p * kc + kk) * nr + at..][..n].copy_from_slice(&buf[done..done + n]);
                    done += n;
                }
                j += w;
            }
            let tail = cols.len() % nr;
            if tail != 0 {
                dst[((panels - 1) * kc + kk) * nr + tail..][..nr - tail].fill(T::ZERO);
            }
        }
    }
}

crate::dispatch! {
    /// Scatter-adds the column tile of output pixels `pix0 .. pix0 + len` into the input
    /// planes (the adjoint of [`im2col`]), compiled for the CPU's vector width.
    ///
    /// - `col`: `(c_count·R·S) × len`, row-major;
    /// - `planes`: `c_count` channels in `layout`, accumulated into (the caller zeroes them
    ///   once).
    pub(crate) fn col2im<T: Element>(geo: &ConvGeometry, layout: &PlaneLayout, col: &[T], pix0: usize, len: usize, planes: &mut [T]) = col2im_body;
}

#[inline(always)]
fn col2im_body<T: Element, const FMA: bool>(
    geo: &ConvGeometry,
    layout: &PlaneLayout,
    col: &[T],
    pix0: usize,
    len: usize,
    planes: &mut [T],
) {
    let out_w = geo.w.output;
    let step = geo.w.stride / layout.modulus;
    for (c, plane) in planes.chunks_exact_mut(layout.channel_len).enumerate() {
        for r in 0..geo.h.kernel {
            let (oh_lo, oh_hi) = geo.h.valid_outputs(r);
            for s in 0..geo.w.kernel {
                let (ow_lo, ow_hi) = geo.w.valid_outputs(s);
                let row_index = (c * geo.h.kernel + r) * geo.w.kernel + s;
                let src_row = &col[row_index * len..][..len];
                for run in runs(out_w, pix0, len) {
                    if run.oh < oh_lo || run.oh >= oh_hi {
                        continue;
                    }
                    let a = ow_lo.clamp(run.ow0, run.ow1);
                    let b = ow_hi.clamp(a, run.ow1);
                    if a == b {
                        continue;
                    }
                    let ih = geo.h.input_index(run.oh, r);
                    let iw0 = geo.w.input_index(a, s);
                    let src = &src_row[run.dst_offset + (a - run.ow0)..][..b - a];
                    scatter_add(&mut plane[layout.offset(geo, ih, iw0)..], src, step);
                }
            }
        }
    }
}

/// `dst[j] = src[j·stride]` for every `j` in `dst`.
#[inline]
fn gather<T: Element>(dst: &mut [T], src: &[T], stride: usize) {
    if stride == 1 {
        dst.copy_from_slice(&src[..dst.len()]);
    } else {
        for (d, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
            *d = *s;
        }
    }
}

/// `dst[j·stride] += src[j]` for every `j` in `src`.
#[inline]
fn scatter_add<T: Element>(dst: &mut [T], src: &[T], stride: usize) {
    if stride == 1 {
        for (d, s) in dst[..src.len()].iter_mut().zip(src) {
            *d += *s;
        }
    } else {
        for (d, s) in dst.iter_mut().step_by(stride).zip(src) {
            *d += *s;
        }
    }
}
