//! Padded planes: the input stored with its zero padding, so that im2col is pure copies.
//!
//! [`PaddedLayout`] stores each input channel as a `(H + 2·pad_h) × (W + 2·pad_w)` plane
//! whose border is zero, and for `stride_w > 1` splits its columns into `stride_w` phases
//! (column `iw'` of the padded plane lives in phase `iw' % stride_w`, at index
//! `iw' / stride_w`). In that layout the column-matrix element of row `(c, r, s)` and
//! output pixel `(p, q)` sits at
//!
//! ```text
//! tap_offset(c, r, s) + pixel_offset(p, q)
//! tap_offset   = c·channel_len + phase(s)·phase_len + r·dil_h·row_len + (s·dil_w) / stride_w
//! pixel_offset = p·stride_h·row_len + q                 phase(s) = (s·dil_w) % stride_w
//! ```
//!
//! always in bounds, never padding-dependent. The pixels of one output row are
//! consecutive, so a B panel row (`nr` pixels) is one or a few contiguous runs whose
//! source offsets are the same for every row `(c, r, s)` of the panel, up to the tap
//! offset. [`PaddedIm2colB`] packs the GEMM's B panels that way: the runs are computed
//! once per panel, the tap offsets once per call, and each row of a run is a few
//! fixed-width vector moves, with no padding logic in the inner loop. (The unpadded [`Im2colB`](super::Im2colB) clamps
//! every run against the image border instead, and copies each row twice.)
//! [`PaddedIm2colTB`] packs the transposed matrix `colᵀ` for the weight gradient from
//! the same layout: there a panel row is one pixel across taps, and each run of pixels
//! is a block transpose of the taps' contiguous sources.
//!
//! Copying an image into this layout is one pass over it, against `R·S` reads of every
//! element by the packing; it is used when the padding is moderate (see
//! [`PaddedLayout::new`]). The forward that reads its rows in place stores stride-1 planes
//! with rows that share their padding ([`PaddedLayout::with_shared_row_padding`]): a
//! row's right padding is the next row's left padding.

use std::ops::Range;

use super::compact;
use crate::blocked::PackB;
use crate::blocked::transpose::{Listed, transpose};
use crate::element::Element;
use crate::shape::ConvGeometry;
use crate::simd;

/// Elements per vector add of [`add_exact`].
const CHUNK: usize = 16;

/// Where the padded planes of one image keep each element; see the module doc.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PaddedLayout {
    /// Column phases: `stride_w` (1 when `stride_w = 1`, and for
    /// [`PaddedLayout::unphased`]). `min(modulus, W + 2·pad_w)` of them are stored, each
    /// `row_phases · rows_per_phase` rows.
    modulus: usize,
    /// Row phases: 1 (rows in order), or `stride_h` for [`PaddedLayout::with_row_phases`]:
    /// padded row `ih'` is stored as row `ih' / stride_h` of row phase `ih' % stride_h`.
    row_phases: usize,
    /// Rows of each row phase: `ceil((H + 2·pad_h) / row_phases)` (rows past the padded
    /// plane are zero).
    rows_per_phase: usize,
    /// Elements per row of a phase: `ceil((W + 2·pad_w) / stride_w)`, or
    /// `max(W + pad_w, Q)` with [`PaddedLayout::with_shared_row_padding`].
    pub row_len: usize,
    /// `row_phases · rows_per_phase · row_len`: one column phase.
    phase_len: usize,
    /// Column phases stored: `min(stride_w, W + 2·pad_w)`.
    phases: usize,
    /// Elements per channel: `phases · phase_len`, plus `W + 2·pad_w − row_len` zeros
    /// with [`PaddedLayout::with_shared_row_padding`].
    pub channel_len: usize,
}

impl PaddedLayout {
    /// The layout for `geo` (rows in order), or `None` when the padded planes would be
    /// much larger than the image and its output together (huge padding: the caller then
    /// lowers from the unpadded planes) or not addressable.
    pub(crate) fn new(geo: &ConvGeometry) -> Option<PaddedLayout> {
        Self::build(geo, 1, false, geo.w.stride)
    }

    /// As [`PaddedLayout::new`], but with the columns in order whatever the stride (no
    /// column phases): output pixel `q` is then `q·stride_w` past its tap offsets
    /// ([`PaddedLayout::column_step`]). For kernels that read each pixel's input by a
    /// scalar broadcast, which need no contiguous runs: the copy is then a plain one,
    /// where splitting phases shuffles every row.
    pub(crate) fn unphased(geo: &ConvGeometry) -> Option<PaddedLayout> {
        Self::build(geo, 1, false, 1)
    }

    /// As [`PaddedLayout::new`], with the rows split into `stride_h` phases as well as
    /// the columns into `stride_w`: then output pixel `(p, q)` is at `p·row_len + q` past
    /// every tap offset, so the pixels of a whole plane, `row_len − Q` junk columns per
    /// row included, form one flat vector per tap.
    pub(crate) fn with_row_phases(geo: &ConvGeometry) -> Option<PaddedLayout> {
        Self::build(geo, geo.h.stride, false, geo.w.stride)
    }

    /// For a stride-1 layer: rows in order, each stored row `L = max(W + pad_w, Q)` long
    /// (its left padding, the image row, and only the right padding that `L` leaves
    /// room for), with `W + 2·pad_w − L` zeros after each channel's last row. The rest of
    /// a row's right padding is the next row's left padding, zero as well: a tap read of
    /// `Q + (S − 1)·dil_w = W + 2·pad_w` elements from a row's start ends at most
    /// `pad_w` elements into the next row. Output pixel `(p, q)` is at `p·row_len + q`
    /// past every tap offset, as with [`PaddedLayout::with_row_phases`], with up to
    /// `pad_w` fewer junk columns per row.
    pub(crate) fn with_shared_row_padding(geo: &ConvGeometry) -> Option<PaddedLayout> {
        if geo.h.stride != 1 || geo.w.stride != 1 {
            return None;
        }
        Self::build(geo, 1, true, geo.w.stride)
    }

    /// `modulus`: column phases, `stride_w` (or 1: columns in order).
    fn build(
        geo: &ConvGeometry,
        row_phases: usize,
        shared: bool,
        modulus: usize,
    ) -> Option<PaddedLayout> {
        let rows = geo.h.input.checked_add(geo.h.padding.checked_mul(2)?)?;
        let cols = geo.w.input.checked_add(geo.w.padding.checked_mul(2)?)?;
        let phases = modulus.min(cols);
        // Stored columns per row: without the right padding when rows share it, but
        // at least Q (a row's outputs must not reach the next row's).
        let stored = if shared {
            (geo.w.input + geo.w.padding).max(geo.w.output)
        } else {
            cols
        };
        let row_len = stored.div_ceil(modulus);
        let rows_per_phase = rows.div_ceil(row_phases);
        // row_phases · rows_per_phase < rows + stride_h.
        let phase_len = row_phases
            .checked_mul(rows_per_phase)?
            .checked_mul(row_len)?;
        // phases · row_len < cols + stride_w, so channel_len < (rows + stride_h) ·
        // (cols + stride_w) (shared: one row of `W + pad_w` elements fewer, `pad_w` more).
        let trailing = cols - stored;
        let channel_len = phase_len.checked_mul(phases)?.checked_add(trailing)?;
        // The padded copy of an image stays within 4× the image and its output together,
        // plus 4096 elements. (A per-channel allowance of 1024 elements let 317 channels
        // of a 1 × 1 input, padded to 15 × 33, take 1.25 MB per image in f64, 500× the
        // input: found by conv_never_panics' allocation guard.)
        let image = geo.in_channels.saturating_mul(geo.in_plane);
        let output = geo.out_channels.saturating_mul(geo.out_plane);
        let limit = image
            .saturating_add(output)
            .saturating_mul(4)
            .saturating_add(4096);
        let total = channel_len.checked_mul(geo.in_channels)?;
        let addressable = total
            .checked_mul(size_of::<f64>())
            .is_some_and(|bytes| bytes <= isize::MAX as usize);
        (total <= limit && addressable).then_some(PaddedLayout {
            phases,
            modulus,
            row_phases,
            rows_per_phase,
            row_len,
            phase_len,
            channel_len,
        })
    }

    /// Where padded row `row` is stored: its row index within a column phase.
    #[inline]
    fn stored_row(&self, row: usize) -> usize {
        ((row % self.row_phases) * self.rows_per_phase).saturating_add(row / self.row_phases)
    }

    /// Output pixels `q` and `q + 1` of a row are this far apart past any tap offset: 1
    /// with column phases, `stride_w` without ([`PaddedLayout::unphased`]).
    pub(crate) fn column_step(&self, geo: &ConvGeometry) -> usize {
        geo.w.stride / self.modulus
    }

    /// Elements of one padded row of a channel, over all its column phases.
    pub(crate) fn padded_row_len(&self) -> usize {
        self.phases * self.row_len
    }

    /// Whether the padded planes of `geo` are its input planes as they are: no padding,
    /// and neither column nor row phases ([`padded_input`] then copies nothing). LeNet's
    /// valid convolutions, say.
    pub(crate) fn is_identity(&self, geo: &ConvGeometry) -> bool {
        self.modulus == 1
            && self.row_phases == 1
            && geo.h.padding == 0
            && geo.w.padding == 0
            && self.row_len == geo.w.input
            && self.channel_len == geo.in_plane
    }

    /// Elements of the padded copy of `channels` channels, 0 where the layout is the
    /// identity: what a caller of [`padded_input`] allocates.
    pub(crate) fn copy_len(&self, geo: &ConvGeometry, channels: usize) -> usize {
        if self.is_identity(geo) {
            0
        } else {
            self.buffer_len(channels)
        }
    }

    /// Elements of the padded copy of `channels` channels.
    pub(crate) fn buffer_len(&self, channels: usize) -> usize {
        self.channel_len * channels
    }

    /// Offset of column-matrix row `(c, r, s)`'s pixel `(0, 0)`, relative to channel 0.
    #[inline]
    pub(crate) fn tap_offset(&self, geo: &ConvGeometry, c: usize, r: usize, s: usize) -> usize {
        let shift = s * geo.w.dilation;
        c * self.channel_len
            + (shift % self.modulus) * self.phase_len
            + self.stored_row(r * geo.h.dilation) * self.row_len
            + shift / self.modulus
    }

    /// Output rows `p` and `p + 1` are this far apart past any tap offset. Saturating:
    /// with a single output row (a huge stride) no step is ever taken, and `p·step` for a
    /// real row `p` is an offset inside the planes.
    #[inline]
    fn output_row_step(&self, geo: &ConvGeometry) -> usize {
        (geo.h.stride / self.row_phases).saturating_mul(self.row_len)
    }

    /// Offset of output pixel `pix = p·Q + q` relative to its row's tap offset.
    #[inline]
    fn pixel_offset(&self, geo: &ConvGeometry, pix: usize) -> usize {
        let (p, q) = (pix / geo.w.output, pix % geo.w.output);
        p * self.output_row_step(geo) + q
    }
}

impl PaddedLayout {
    /// The elements of phase `phase`'s rows that hold image columns: `lo..hi`, element
    /// `i` holding image column `first + (i − lo)·modulus` (the rest is padding).
    fn interior_columns(&self, geo: &ConvGeometry, phase: usize) -> (usize, usize, usize) {
        let (w, pw, m) = (geo.w.input, geo.w.padding, self.modulus);
        // Element i holds padded column i·m + phase, image column i·m + phase − pw.
        let lo = pw.saturating_sub(phase).div_ceil(m).min(self.row_len);
        let hi = (w + pw)
            .saturating_sub(phase)
            .div_ceil(m)
            .clamp(lo, self.row_len);
        // `first` is clamped for phases without image columns (lo == hi; with a huge
        // stride, lo·m + phase may not even be representable).
        let first = (lo.saturating_mul(m).saturating_add(phase))
            .saturating_sub(pw)
            .min(w);
        (lo, hi, first)
    }
}

crate::dispatch! {
    /// Copies the dense `H × W` planes of `dense` (whole channels) into `out` in `layout`,
    /// writing every element of `out` (`layout.buffer_len(channels)` long): the padding
    /// becomes zero.
    pub(crate) fn pad_planes<T: Element>(
        geo: &ConvGeometry,
        layout: &PaddedLayout,
        dense: &[T],
        out: &mut [T],
    ) = pad_planes_body;
}

#[inline(always)]
fn pad_planes_body<T: Element, const FMA: bool>(
    geo: &ConvGeometry,
    layout: &PaddedLayout,
    dense: &[T],
    out: &mut [T],
) {
    let (h, w) = (geo.h.input, geo.w.input);
    let ph = geo.h.padding;
    let channels = dense.len() / geo.in_plane;
    for (plane, dst) in dense
        .chunks_exact(geo.in_plane)
        .zip(out[..layout.buffer_len(channels)].chunks_exact_mut(layout.channel_len))
    {
        // The zeros after the last row of a layout with shared row padding.
        let (dst, trailing) = dst.split_at_mut(layout.phases * layout.phase_len);
        trailing.fill(T::ZERO);
        if pad_both_phases(geo, layout, plane, dst) {
            continue;
        }
        for (phase, phase_dst) in dst.chunks_exact_mut(layout.phase_len).enumerate() {
            let (lo, hi, first) = layout.interior_columns(geo, phase);
            for (stored, to) in phase_dst.chunks_exact_mut(layout.row_len).enumerate() {
                // The padded row stored here (past the plane when rows_per_phase rounds up).
                let row = (stored % layout.rows_per_phase) * layout.row_phases
                    + stored / layout.rows_per_phase;
                let Some(ih) = row.checked_sub(ph).filter(|&ih| ih < h) else {
                    to.fill(T::ZERO);
                    continue;
                };
                let src = &plane[ih * w..][..w];
                let (left, rest) = to.split_at_mut(lo);
                let (mid, right) = rest.split_at_mut(hi - lo);
                left.fill(T::ZERO);
                right.fill(T::ZERO);
                prefetch_ahead(src);
                match layout.modulus {
                    1 => simd::copy_exact(mid, &src[first..][..mid.len()]),
                    2 => copy_every_other(mid, &src[first..]),
                    m => {
                        for (d, s) in mid.iter_mut().zip(src[first..].iter().step_by(m)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// How far ahead of the row it copies [`pad_planes`] asks for the source: 4 KiB, about
/// the next page, where the hardware's stream prefetcher (which stays within a page)
/// would start over. The copy reads the image from memory and is most of what the
/// forward spends outside its kernel (resnet_3x3_s2: 11%). Paired `benches/ab.sh`
/// medians over 6 rounds, 1 thread, Intel host (`fma_peak` 175), against no prefetch:
/// forward resnet_3x3_s2 1.034 (1.01–1.04), resnet_3x3_56 1.019, dilated_3x3 1.017,
/// resnet_3x3_28 1.004; weight gradient resnet_3x3_56 1.021, input delta 1.015. 2 and
/// 8 KiB ahead measured the same as 4 (0.99–1.01).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const COPY_AHEAD_BYTES: usize = 4096;

/// Starts fetching the image row [`COPY_AHEAD_BYTES`] past `row` (its length).
#[inline(always)]
fn prefetch_ahead<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let ahead = row.as_ptr().cast::<i8>().wrapping_add(COPY_AHEAD_BYTES);
        for offset in (0..size_of_val(row)).step_by(64) {
            // SAFETY: SSE is part of x86-64; a prefetch only hints at an address (past
            // the image at its end: never dereferenced) and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// The planes of `dense` (whole channels) in `layout`: `dense` itself where the layout is
/// the identity ([`PaddedLayout::is_identity`]), else its [`pad_planes`] copy in the first
/// [`PaddedLayout::buffer_len`] elements of `buffer` (at least
/// [`PaddedLayout::copy_len`] long). On lenet_c2 (no padding), where the copy had been
/// 4% of the forward's profile, paired `benches/ab.sh` medians over 8 rounds, 1 thread:
/// forward 1.06 (1.02–1.16), weight gradient 1.04 (1.02–1.07), resnet_3x3_28 control
/// 0.99–1.00.
pub(crate) fn padded_input<'a, T: Element>(
    geo: &ConvGeometry,
    layout: &PaddedLayout,
    dense: &'a [T],
    buffer: &'a mut [T],
) -> &'a [T] {
    if layout.is_identity(geo) {
        return dense;
    }
    let planes = &mut buffer[..layout.buffer_len(dense.len() / geo.in_plane)];
    pad_planes(geo, layout, dense, planes);
    planes
}

/// Stride 2 with both column phases stored: fills one channel's phases `dst` (both,
/// `2·phase_len`) from its dense plane in a single pass over each image row, which
/// [`deinterleave`]s into the row of both phases (the even image columns go to one phase,
/// the odd ones to the other). Phase by phase, each row was read twice and copied in
/// short strided pieces. resnet_3x3_s2's copy (128 × 56 × 56, f32, the image L3-resident)
/// took 142 µs per image that way and 117 µs this way, now bound by memory traffic;
/// paired `benches/ab.sh` medians over 5–6 rounds, 1 thread: its forward 1.03 (twice),
/// weight gradient 1.03, against a control cell's 0.99–1.04. Returns false, leaving `dst`
/// alone, for any other layout.
#[inline(always)]
fn pad_both_phases<T: Element>(
    geo: &ConvGeometry,
    layout: &PaddedLayout,
    plane: &[T],
    dst: &mut [T],
) -> bool {
    if layout.modulus != 2 || layout.phases != 2 {
        return false;
    }
    let (h, w, ph) = (geo.h.input, geo.w.input, geo.h.padding);
    let interior = [0, 1].map(|phase| layout.interior_columns(geo, phase));
    // The phase that holds image column 0 gets the even columns.
    let even = if interior[0].2 == 0 { 0 } else { 1 };
    let (lo_even, hi_even, _) = interior[even];
    let (lo_odd, hi_odd, first_odd) = interior[1 - even];
    if interior[even].2 != 0
        || hi_even - lo_even != w.div_ceil(2)
        || hi_odd - lo_odd != w / 2
        || (w > 1 && first_odd != 1)
    {
        return false;
    }
    let (phase0, phase1) = dst.split_at_mut(layout.phase_len);
    let rows = phase0
        .chunks_exact_mut(layout.row_len)
        .zip(phase1.chunks_exact_mut(layout.row_len));
    for (stored, (row0, row1)) in rows.enumerate() {
        let (to_even, to_odd) = if even == 0 {
            (row0, row1)
        } else {
            (row1, row0)
        };
        let row =
            (stored % layout.rows_per_phase) * layout.row_phases + stored / layout.rows_per_phase;
        let Some(ih) = row.checked_sub(ph).filter(|&ih| ih < h) else {
            to_even.fill(T::ZERO);
            to_odd.fill(T::ZERO);
            continue;
        };
        let (left, rest) = to_even.split_at_mut(lo_even);
        let (even_mid, right) = rest.split_at_mut(hi_even - lo_even);
        left.fill(T::ZERO);
        right.fill(T::ZERO);
        let (left, rest) = to_odd.split_at_mut(lo_odd);
        let (odd_mid, right) = rest.split_at_mut(hi_odd - lo_odd);
        left.fill(T::ZERO);
        right.fill(T::ZERO);
        deinterleave(&plane[ih * w..][..w], even_mid, odd_mid);
    }
    true
}

/// `even[i] = src[2·i]`, `odd[i] = src[2·i + 1]` (`even` holds `⌈n/2⌉` elements, `odd`
/// `⌊n/2⌋`, for `n = src.len()`), in blocks of 32 source elements, which compile to
/// vector loads and a shuffle per output vector. A partial last block is redone as the
/// even-aligned block that ends at (or one before) the end of `src`; a row shorter than a
/// block is copied one by one.
#[inline(always)]
fn deinterleave<T: Copy>(src: &[T], even: &mut [T], odd: &mut [T]) {
    const BLOCK: usize = 32;
    #[inline(always)]
    fn block<T: Copy>(src: &[T], even: &mut [T], odd: &mut [T], at: usize) {
        let s: &[T; BLOCK] = src[at..at + BLOCK].try_into().expect("a block");
        let e: &mut [T; BLOCK / 2] = (&mut even[at / 2..][..BLOCK / 2])
            .try_into()
            .expect("half a block");
        *e = std::array::from_fn(|i| s[2 * i]);
        let o: &mut [T; BLOCK / 2] = (&mut odd[at / 2..][..BLOCK / 2])
            .try_into()
            .expect("half a block");
        *o = std::array::from_fn(|i| s[2 * i + 1]);
    }
    let n = src.len();
    debug_assert!(even.len() == n.div_ceil(2) && odd.len() == n / 2);
    if n < BLOCK {
        for (i, &v) in src.iter().enumerate() {
            if i % 2 == 0 {
                even[i / 2] = v;
            } else {
                odd[i / 2] = v;
            }
        }
        return;
    }
    let mut at = 0;
    while at + BLOCK <= n {
        block(src, even, odd, at);
        at += BLOCK;
    }
    if at < n {
        // The last even start whose block fits; an odd `n` leaves its last (even)
        // element past that block.
        block(src, even, odd, (n - BLOCK) & !1);
        if n % 2 == 1 {
            even[n / 2] = src[n - 1];
        }
    }
}

/// `dst[i] = src[2·i]` for every `i` in `dst` (`src` at least `2·dst.len() − 1` long),
/// in blocks of 16 read from 32 consecutive elements, which compile to vector loads and
/// one shuffle each (the stride-2 layers' copy into column phases was a scalar loop). A
/// partial last block is redone as the block that ends at `dst`'s end, where `src` holds
/// its 32 elements; otherwise it is copied one by one.
#[inline(always)]
fn copy_every_other<T: Copy>(dst: &mut [T], src: &[T]) {
    const BLOCK: usize = 16;
    #[inline(always)]
    fn block<T: Copy>(dst: &mut [T], src: &[T], at: usize) -> bool {
        let Some(s) = src.get(2 * at..2 * at + 2 * BLOCK) else {
            return false;
        };
        let s: &[T; 2 * BLOCK] = s.try_into().expect("32 elements");
        let d: &mut [T; BLOCK] = (&mut dst[at..at + BLOCK]).try_into().expect("16 elements");
        *d = std::array::from_fn(|i| s[2 * i]);
        true
    }
    let len = dst.len();
    let mut at = 0;
    while at + BLOCK <= len && block(dst, src, at) {
        at += BLOCK;
    }
    if at < len && len >= BLOCK && block(dst, src, len - BLOCK) {
        return;
    }
    for (i, v) in dst.iter_mut().enumerate().skip(at) {
        *v = src[2 * i];
    }
}

/// The inverse of [`pad_planes`]: overwrites the dense `H × W` planes of `dense` (whole
/// channels) with the image part of the padded planes `planes` (the padding is dropped).
pub(crate) fn unpad_planes<T: Element>(
    geo: &ConvGeometry,
    layout: &PaddedLayout,
    planes: &[T],
    dense: &mut [T],
) {
    let (h, w) = (geo.h.input, geo.w.input);
    let ph = geo.h.padding;
    let channels = dense.len() / geo.in_plane;
    for (plane, src) in dense
        .chunks_exact_mut(geo.in_plane)
        .zip(planes[..layout.buffer_len(channels)].chunks_exact(layout.channel_len))
    {
        for (phase, phase_src) in src.chunks_exact(layout.phase_len).enumerate() {
            let (lo, hi, first) = layout.interior_columns(geo, phase);
            for (ih, to) in plane.chunks_exact_mut(w).enumerate().take(h) {
                let from = &phase_src[layout.stored_row(ih + ph) * layout.row_len..][lo..hi];
                if layout.modulus == 1 {
                    to[first..][..from.len()].copy_from_slice(from);
                } else {
                    for (d, s) in to[first..].iter_mut().step_by(layout.modulus).zip(from) {
                        *d = *s;
                    }
                }
            }
        }
    }
}

crate::dispatch! {
    /// col2im into padded planes: adds row `(c, r, s)` of the column tile `col`
    /// (`channels·R·S × len`, output pixels `pix0 .. pix0 + len`) to the padded planes
    /// `planes` of those channels at its tap offset, run by run (the pixels of one
    /// output row are consecutive there too). No clamping: the padding absorbs the
    /// out-of-image taps, and [`unpad_planes`] drops it at the end. Each element
    /// receives the rows in ascending order, the same sums as the dense `col2im`.
    pub(crate) fn col2im_padded<T: Element>(geo: &ConvGeometry, layout: &PaddedLayout, col: &[T], pix0: usize, len: usize, planes: &mut [T]) = col2im_padded_body;
}

#[inline(always)]
fn col2im_padded_body<T: Element, const FMA: bool>(
    geo: &ConvGeometry,
    layout: &PaddedLayout,
    col: &[T],
    pix0: usize,
    len: usize,
    planes: &mut [T],
) {
    if len == 0 {
        return;
    }
    let out_w = geo.w.output;
    let rows = planes.len() / layout.channel_len * geo.taps;
    let row_step = layout.output_row_step(geo);
    let (p0, q0) = (pix0 / out_w, pix0 % out_w);
    let mut taps = TapSteps::new(geo, layout, 0, 0);
    for src_row in col[..rows * len].chunks_exact(len) {
        let tap = taps.next();
        // Runs: the tile's pixels split at output-row boundaries.
        let (mut at, mut q, mut p) = (0, q0, p0);
        while at < len {
            let run = (out_w - q).min(len - at);
            // p is a real output row: p·row_step + q lies inside the planes.
            let pixel = tap + p * row_step + q;
            add_exact(&mut planes[pixel..][..run], &src_row[at..][..run]);
            at += run;
            q = 0;
            p += 1;
        }
    }
}

/// The column matrix of one group as the blocked GEMM's B operand, packed from padded
/// planes ([`PaddedLayout`]): see the module doc.
pub(crate) struct PaddedIm2colB<'a, T> {
    pub geo: &'a ConvGeometry,
    pub layout: &'a PaddedLayout,
    /// The whole padded image.
    pub planes: &'a [T],
    /// First channel of the group.
    pub channel0: usize,
    /// Channels of the group.
    pub channels: usize,
    /// First output pixel of column 0.
    pub pix0: usize,
    /// Columns (output pixels).
    pub len: usize,
}

impl<'a, T> PaddedIm2colB<'a, T> {
    /// Group `g`'s column matrix over the whole output plane.
    pub(crate) fn group(
        geo: &'a ConvGeometry,
        layout: &'a PaddedLayout,
        planes: &'a [T],
        g: usize,
    ) -> Self {
        let cg = geo.channels_per_group;
        PaddedIm2colB {
            geo,
            layout,
            planes,
            channel0: g * cg,
            channels: cg,
            pix0: 0,
            len: geo.out_plane,
        }
    }
}

impl<T: Element> PackB<T> for PaddedIm2colB<'_, T> {
    fn depth(&self) -> usize {
        self.channels * self.geo.taps
    }

    fn cols(&self) -> usize {
        self.len
    }

    /// The rows' tap offsets are computed once per call (stepped, no divisions); then
    /// panel by panel, run by run (the panel's pixels split at output-row boundaries),
    /// the run is copied from every row's tap offset with fixed-width moves, and the
    /// columns past `cols.end` are zeroed.
    fn pack_b(&self, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [T]) {
        pack_padded(self, nr, depth, cols, dst);
    }
}

crate::dispatch! {
    /// [`PaddedIm2colB::pack_b`], compiled for the CPU's vector width (the run copies are
    /// vector moves).
    fn pack_padded<T: Element>(b: &PaddedIm2colB<'_, T>, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [T]) = pack_padded_body;
}

#[inline(always)]
fn pack_padded_body<T: Element, const FMA: bool>(
    this: &PaddedIm2colB<'_, T>,
    nr: usize,
    depth: Range<usize>,
    cols: Range<usize>,
    dst: &mut [T],
) {
    let (geo, layout) = (this.geo, this.layout);
    let kc = depth.len();
    assert_eq!(
        dst.len(),
        cols.len().div_ceil(nr) * nr * kc,
        "pack_b: wrong destination length"
    );
    // The rows' tap offsets, TAP_BLOCK rows at a time: the same for every panel.
    let mut taps = TapSteps::new(geo, layout, this.channel0, depth.start);
    let mut tap_block = [0usize; TAP_BLOCK];
    for kk0 in (0..kc).step_by(TAP_BLOCK) {
        let rows = TAP_BLOCK.min(kc - kk0);
        for t in &mut tap_block[..rows] {
            *t = taps.next();
        }
        let tap_block = &tap_block[..rows];
        for (p, j0) in cols.clone().step_by(nr).enumerate() {
            let width = nr.min(cols.end - j0);
            let panel = &mut dst[p * nr * kc..][..nr * kc];
            // Halves of the panel with permutes where the CPU has them ([`compact`]) and
            // the block has rows enough to pay for the lane map, the rest run by run.
            let lanes = 64 / size_of::<T>();
            let mut at = 0;
            while at < width {
                let end = if nr.is_multiple_of(lanes) {
                    width.min(at + lanes)
                } else {
                    width
                };
                // Pixel offsets stepped from the first: one division per half.
                let first = this.pix0 + j0 + at;
                let (row_step, out_w) = (layout.output_row_step(geo), geo.w.output);
                let (mut p, mut q) = (first / out_w, first % out_w);
                let offsets = (at..end).map(|_| {
                    let offset = p * row_step + q;
                    q += 1;
                    if q == out_w {
                        (p, q) = (p + 1, 0);
                    }
                    offset
                });
                let packed = nr.is_multiple_of(lanes)
                    && rows >= compact::MIN_ROWS
                    && compact::HalfPanel::new(offsets, lanes).is_some_and(|half| {
                        let rows = &mut panel[kk0 * nr..];
                        compact::pack_half(this.planes, tap_block, &half, rows, nr, at)
                    });
                if !packed {
                    copy_runs(this, tap_block, &mut panel[kk0 * nr..], nr, j0, at..end);
                }
                at = end;
            }
            if width < nr {
                for kk in kk0..kk0 + rows {
                    panel[kk * nr + width..(kk + 1) * nr].fill(T::ZERO);
                }
            }
        }
    }
}

/// Packs columns `at` of a panel starting at pixel `j0` (past `this.pix0`) for the
/// rows whose tap offsets are `taps`, into `rows` (row `kk` at `kk·nr`): the pixels split
/// at output-row boundaries into runs, each copied for every row.
#[inline(always)]
fn copy_runs<T: Element>(
    this: &PaddedIm2colB<'_, T>,
    taps: &[usize],
    rows: &mut [T],
    nr: usize,
    j0: usize,
    cols: Range<usize>,
) {
    let (geo, layout) = (this.geo, this.layout);
    let out_w = geo.w.output;
    let mut at = cols.start;
    while at < cols.end {
        let pix = this.pix0 + j0 + at;
        let len = (out_w - pix % out_w).min(cols.end - at);
        let pixel = layout.pixel_offset(geo, pix);
        simd::copy_exact_rows(&mut rows[at..], nr, &this.planes[pixel..], taps, len);
        at += len;
    }
}

/// The column matrix of one group, for a GEMM that reads its B rows in place
/// ([`PackB::rows_in_place`]): with planes in [`PaddedLayout::with_row_phases`], output
/// pixel `(p, q)` of tap row `(c, r, s)` is at `tap_offset(c, r, s) + p·row_len + q`, so
/// within one output row every tap row is one contiguous run of the planes. Columns come
/// in two forms ([`WideIm2colB::row_cols`]):
/// - output pixels (`Q` per row): a panel inside one output row is read in place
///   ([`PackB::column_in_place`]), one that crosses a row end is packed (a run per row
///   it touches); the GEMM can write `y` directly;
/// - *wide* columns (`row_len` per row, `f = p·row_len + q`): every panel is read in
///   place, and the columns with `q ≥ Q` are junk (they read real memory but belong to
///   no output pixel; the caller drops them).
pub(crate) struct WideIm2colB<'a, T> {
    pub geo: &'a ConvGeometry,
    /// A row-phased layout ([`PaddedLayout::with_row_phases`]).
    pub layout: &'a PaddedLayout,
    /// The whole padded image.
    pub planes: &'a [T],
    /// First channel of the group.
    pub channel0: usize,
    /// Channels of the group.
    pub channels: usize,
    /// Columns per output row: `Q` (output pixels only), or the layout's `row_len` (with
    /// the junk columns between output rows: every panel lies in place, and the caller
    /// drops the junk).
    pub row_cols: usize,
    /// First column.
    pub col0: usize,
    /// Columns.
    pub len: usize,
}

impl<T> WideIm2colB<'_, T> {
    /// Offset of column `c` (counted from column 0 of the plane) from its tap row's pixel
    /// `(0, 0)`.
    #[inline]
    fn column_offset(&self, c: usize) -> usize {
        c / self.row_cols * self.layout.row_len + c % self.row_cols
    }
}

impl<T: Element> PackB<T> for WideIm2colB<'_, T> {
    fn depth(&self) -> usize {
        self.channels * self.geo.taps
    }

    fn cols(&self) -> usize {
        self.len
    }

    /// Each row as its runs within output rows, one copy per run (the driver asks only
    /// for the panels that cross a row end and the last, partial one).
    fn pack_b(&self, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [T]) {
        let kc = depth.len();
        assert_eq!(
            dst.len(),
            cols.len().div_ceil(nr) * nr * kc,
            "pack_b: wrong destination length"
        );
        for (panel, j0) in dst.chunks_exact_mut(nr * kc).zip(cols.clone().step_by(nr)) {
            let width = nr.min(cols.end - j0);
            let mut taps = TapSteps::new(self.geo, self.layout, self.channel0, depth.start);
            for row in panel.chunks_exact_mut(nr) {
                let tap = taps.next();
                let mut at = 0;
                while at < width {
                    let c = self.col0 + j0 + at;
                    let run = (self.row_cols - c % self.row_cols).min(width - at);
                    let from = tap + self.column_offset(c);
                    row[at..at + run].copy_from_slice(&self.planes[from..][..run]);
                    at += run;
                }
                row[width..].fill(T::ZERO);
            }
        }
    }

    fn rows_in_place(&self, depth: Range<usize>, offsets: &mut [usize]) -> Option<&[T]> {
        let mut taps = TapSteps::new(self.geo, self.layout, self.channel0, depth.start);
        for o in &mut offsets[..depth.len()] {
            *o = taps.next();
        }
        Some(self.planes)
    }

    fn column_in_place(&self, col: usize, width: usize) -> Option<usize> {
        let c = self.col0 + col;
        let contiguous =
            self.row_cols == self.layout.row_len || c % self.row_cols + width <= self.row_cols;
        contiguous.then(|| self.column_offset(c))
    }
}

/// Rows of the B packer's tap-offset table (a stack array; deeper blocks are packed in
/// several passes over the panels). 256 covers every `KC` of the blocked GEMM in one
/// pass; the unit tests use 5 so that their small layers take several.
const TAP_BLOCK: usize = if cfg!(test) { 5 } else { 256 };

/// The tap offsets of consecutive column-matrix rows `(c, r, s)`, stepped without
/// divisions (a division per row cost as much as the row's copy).
pub(super) struct TapSteps {
    /// Offset of the current channel's `(r, s) = (0, 0)` tap.
    channel_base: usize,
    channel_len: usize,
    /// The current row's `(r, s)` and its offset within the channel, split as
    /// `r_off + phase·phase_len + col` (`r_off`: the stored row of padded row `r·dil_h`,
    /// times `row_len`, which lies in row phase `r_phase`).
    r: usize,
    s: usize,
    r_off: usize,
    r_phase: usize,
    phase: usize,
    col: usize,
    /// Kernel extent and per-step increments.
    r_count: usize,
    s_count: usize,
    /// One `r` step: `r_off` grows by `r_step`, `r_phase` by `dil_h % row_phases`; a
    /// row-phase carry then moves `r_off` back by `r_carry`.
    r_step: usize,
    r_phase_step: usize,
    r_carry: usize,
    row_phases: usize,
    phase_len: usize,
    modulus: usize,
    /// `dil_w / stride_w` and `dil_w % stride_w`: one `s` step's column and phase moves.
    col_step: usize,
    phase_step: usize,
}

impl TapSteps {
    /// Stepping from row `row` of the column matrix of channels `channel0..`.
    pub(super) fn new(
        geo: &ConvGeometry,
        layout: &PaddedLayout,
        channel0: usize,
        row: usize,
    ) -> Self {
        let (r, s) = ((row % geo.taps) / geo.w.kernel, row % geo.w.kernel);
        let shift = s * geo.w.dilation;
        TapSteps {
            channel_base: (channel0 + row / geo.taps) * layout.channel_len,
            channel_len: layout.channel_len,
            r,
            s,
            r_off: layout.stored_row(r * geo.h.dilation) * layout.row_len,
            r_phase: r * geo.h.dilation % layout.row_phases,
            phase: shift % layout.modulus,
            col: shift / layout.modulus,
            r_count: geo.h.kernel,
            s_count: geo.w.kernel,
            // Saturating: only stepped with (and then exact for) R > 1.
            r_step: layout
                .stored_row(geo.h.dilation)
                .saturating_mul(layout.row_len),
            r_phase_step: geo.h.dilation % layout.row_phases,
            r_carry: (layout.row_phases * layout.rows_per_phase - 1) * layout.row_len,
            row_phases: layout.row_phases,
            phase_len: layout.phase_len,
            modulus: layout.modulus,
            col_step: geo.w.dilation / layout.modulus,
            phase_step: geo.w.dilation % layout.modulus,
        }
    }

    /// The current row's tap offset (`PaddedLayout::tap_offset`); moves to the next row.
    #[inline(always)]
    pub(super) fn next(&mut self) -> usize {
        let offset = self.channel_base + self.r_off + self.phase * self.phase_len + self.col;
        self.s += 1;
        if self.s < self.s_count {
            self.col += self.col_step;
            self.phase += self.phase_step;
            if self.phase >= self.modulus {
                self.phase -= self.modulus;
                self.col += 1;
            }
        } else {
            (self.s, self.phase, self.col) = (0, 0, 0);
            self.r += 1;
            if self.r == self.r_count {
                (self.r, self.r_off, self.r_phase) = (0, 0, 0);
                self.channel_base += self.channel_len;
            } else {
                self.r_off += self.r_step;
                self.r_phase += self.r_phase_step;
                if self.r_phase >= self.row_phases {
                    // Past the last row phase: back to phase 0, one stored row further.
                    self.r_phase -= self.row_phases;
                    self.r_off -= self.r_carry;
                }
            }
        }
        offset
    }
}

/// The transposed column matrix of one group's channels, `colᵀ` (`pixels × C·R·S`), as
/// the blocked GEMM's B operand, packed from padded planes: the weight gradient's
/// `dW = dy · colᵀ` with no column matrix in memory.
///
/// A B panel row is one pixel across `nr` taps. Within one output row the pixels are
/// consecutive in every tap's source, so each run of pixels of a panel is a block
/// transpose of `nr` contiguous source columns, one per tap
/// ([`transpose`] with [`Listed`] tap offsets).
pub(crate) struct PaddedIm2colTB<'a, T> {
    pub geo: &'a ConvGeometry,
    pub layout: &'a PaddedLayout,
    /// The padded planes of this operand's channels.
    pub planes: &'a [T],
    /// Channels in `planes` (the column matrix has `channels · R·S` rows).
    pub channels: usize,
}

/// Most taps a panel may have on the transposing path (the kernels' `NR` are at most 32);
/// wider panels go element by element.
const MAX_PANEL: usize = 64;

impl<T: Element> PackB<T> for PaddedIm2colTB<'_, T> {
    fn depth(&self) -> usize {
        self.geo.out_plane
    }

    fn cols(&self) -> usize {
        self.channels * self.geo.taps
    }

    fn pack_b(&self, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [T]) {
        let (geo, layout) = (self.geo, self.layout);
        let kc = depth.len();
        assert_eq!(
            dst.len(),
            cols.len().div_ceil(nr) * nr * kc,
            "pack_b: wrong destination length"
        );
        let out_w = geo.w.output;
        let tap_offset = |row: usize| {
            let (c, tap) = (row / geo.taps, row % geo.taps);
            layout.tap_offset(geo, c, tap / geo.w.kernel, tap % geo.w.kernel)
        };
        let isa = simd::isa();
        let mut offsets = [0usize; MAX_PANEL];
        for (panel, j0) in dst.chunks_exact_mut(nr * kc).zip(cols.clone().step_by(nr)) {
            let width = nr.min(cols.end - j0);
            if width > MAX_PANEL {
                for (kk, row) in panel.chunks_exact_mut(nr).enumerate() {
                    let pixel = layout.pixel_offset(geo, depth.start + kk);
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = if j < width {
                            self.planes[tap_offset(j0 + j) + pixel]
                        } else {
                            T::ZERO
                        };
                    }
                }
                continue;
            }
            for (j, o) in offsets[..width].iter_mut().enumerate() {
                *o = tap_offset(j0 + j);
            }
            // Runs of pixels within one output row: consecutive in every tap's source.
            let mut kk = 0;
            while kk < kc {
                let pix = depth.start + kk;
                let len = (out_w - pix % out_w).min(kc - kk);
                let src = &self.planes[layout.pixel_offset(geo, pix)..];
                let rows = &mut panel[kk * nr..];
                transpose(isa, src, Listed(&offsets[..width]), len, width, rows, nr);
                kk += len;
            }
            if width < nr {
                for row in panel.chunks_exact_mut(nr) {
                    row[width..].fill(T::ZERO);
                }
            }
        }
    }
}

/// `dst[i] += src[i]` (equal lengths) with fixed-width vector adds: whole [`CHUNK`]s,
/// then a half, a quarter and single elements for the rest (adds, unlike copies, cannot
/// overlap).
#[inline(always)]
fn add_exact<T: Element>(dst: &mut [T], src: &[T]) {
    #[inline(always)]
    fn add<T: Element, const W: usize>(dst: &mut [T], src: &[T], at: usize) -> usize {
        let to: &mut [T; W] = (&mut dst[at..at + W]).try_into().unwrap();
        let from: &[T; W] = src[at..at + W].try_into().unwrap();
        for (d, s) in to.iter_mut().zip(from) {
            *d += *s;
        }
        at + W
    }
    let len = dst.len();
    assert_eq!(len, src.len());
    // Whole chunks as one flat loop, which LLVM vectorizes contiguously. (A loop over
    // fixed-size chunks was vectorized across chunks instead, with gathers and scatters:
    // col2im ran 1.6× slower on runs of hundreds of elements.)
    let mut at = len / CHUNK * CHUNK;
    for (d, s) in dst[..at].iter_mut().zip(&src[..at]) {
        *d += *s;
    }
    if at + CHUNK / 2 <= len {
        at = add::<T, { CHUNK / 2 }>(dst, src, at);
    }
    if at + CHUNK / 4 <= len {
        at = add::<T, { CHUNK / 4 }>(dst, src, at);
    }
    while at < len {
        at = add::<T, 1>(dst, src, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Conv2dSpec;

    /// A small deterministic generator (xorshift64).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// A random small layer (valid, moderate padding) with `groups` groups, its padded
    /// layout, an input image of distinct values and that image in the layout.
    struct Case {
        spec: Conv2dSpec,
        geo: ConvGeometry,
        layout: PaddedLayout,
        x: Vec<f64>,
        planes: Vec<f64>,
    }

    fn random_case(rng: &mut Rng, groups: usize) -> Option<Case> {
        let spec = Conv2dSpec {
            batch: 2,
            in_channels: groups * (1 + rng.below(3)),
            in_h: 1 + rng.below(9),
            in_w: 1 + rng.below(12),
            out_channels: groups,
            kernel: [1 + rng.below(4), 1 + rng.below(4)],
            stride: [1 + rng.below(3), 1 + rng.below(3)],
            padding: [rng.below(3), rng.below(4)],
            dilation: [1 + rng.below(2), 1 + rng.below(2)],
            groups,
        };
        let geo = ConvGeometry::new(&spec).ok()?;
        // Each layout: rows in order (the packers'), split into row phases, and (stride
        // 1) with shared row padding (the wide forward's).
        let layout = match rng.below(3) {
            0 => PaddedLayout::new(&geo),
            1 => PaddedLayout::with_row_phases(&geo),
            _ => PaddedLayout::with_shared_row_padding(&geo).or_else(|| PaddedLayout::new(&geo)),
        }
        .expect("moderate padding");
        let x: Vec<f64> = (0..geo.in_channels * geo.in_plane)
            .map(|i| 1.0 + i as f64)
            .collect();
        let mut planes = vec![f64::NAN; layout.buffer_len(geo.in_channels)];
        pad_planes(&geo, &layout, &x, &mut planes);
        Some(Case {
            spec,
            geo,
            layout,
            x,
            planes,
        })
    }

    /// Runs `check` on 300 random valid cases drawn from `seed`, each with 1 to
    /// `max_groups` groups (`case.spec.groups`); `check` may draw more from the generator.
    fn each_case(seed: u64, max_groups: usize, mut check: impl FnMut(&mut Rng, Case)) {
        let mut rng = Rng(seed);
        let mut checked = 0;
        while checked < 300 {
            let groups = 1 + rng.below(max_groups);
            if let Some(case) = random_case(&mut rng, groups) {
                check(&mut rng, case);
                checked += 1;
            }
        }
    }

    /// Column-matrix element `(row, pix)` of group channels `c0..`, straight from the
    /// definition (zero in the padding).
    fn column(geo: &ConvGeometry, x: &[f64], c0: usize, row: usize, pix: usize) -> f64 {
        input_index(geo, c0, row, pix).map_or(0.0, |i| x[i])
    }

    /// Index in the dense input of column-matrix element `(row, pix)` of group channels
    /// `c0..`, or `None` where it is padding.
    fn input_index(geo: &ConvGeometry, c0: usize, row: usize, pix: usize) -> Option<usize> {
        let (c, tap) = (c0 + row / geo.taps, row % geo.taps);
        let (r, s) = (tap / geo.w.kernel, tap % geo.w.kernel);
        let (oh, ow) = (pix / geo.w.output, pix % geo.w.output);
        let ih = (oh * geo.h.stride + r * geo.h.dilation).checked_sub(geo.h.padding)?;
        let iw = (ow * geo.w.stride + s * geo.w.dilation).checked_sub(geo.w.padding)?;
        (ih < geo.h.input && iw < geo.w.input).then_some(c * geo.in_plane + ih * geo.w.input + iw)
    }

    /// Packs `depth × cols` of `b` in `nr`-wide panels into a NaN-filled buffer and checks
    /// every element: `want(row, col)` inside `cols`, zero in the padding columns.
    fn check_packed<T: Element>(
        b: &impl PackB<T>,
        nr: usize,
        depth: Range<usize>,
        cols: Range<usize>,
        want: impl Fn(usize, usize) -> f64,
        what: &str,
    ) {
        let (kc, panels) = (depth.len(), cols.len().div_ceil(nr));
        let mut dst = vec![T::from_f64(f64::NAN); panels * nr * kc];
        b.pack_b(nr, depth.clone(), cols.clone(), &mut dst);
        for p in 0..panels {
            for kk in 0..kc {
                for j in 0..nr {
                    let col = cols.start + p * nr + j;
                    let expected = if col < cols.end {
                        want(depth.start + kk, col)
                    } else {
                        0.0
                    };
                    let got = dst[(p * kc + kk) * nr + j].to_f64();
                    assert_eq!(
                        got, expected,
                        "{what} nr {nr} rows {depth:?} cols {cols:?} panel {p} row {kk} col {j}"
                    );
                }
            }
        }
    }

    /// Every packed element, over random geometries, groups, panel widths (including
    /// one wider than 64, a panel row of many runs) and sub-blocks, equals the
    /// column-matrix element it stands for; padding columns are zero; stale data in the
    /// destination (NaN) never survives.
    #[test]
    fn packs_the_column_matrix() {
        each_case(
            0x9e37_79b9_7f4a_7c15,
            2,
            |rng,
             Case {
                 spec,
                 geo,
                 layout,
                 x,
                 planes,
             }| {
                let cg = geo.channels_per_group;
                let g = rng.below(spec.groups);
                let pix0 = rng.below(geo.out_plane);
                let len = 1 + rng.below(geo.out_plane - pix0);
                let b = PaddedIm2colB {
                    geo: &geo,
                    layout: &layout,
                    planes: &planes,
                    channel0: g * cg,
                    channels: cg,
                    pix0,
                    len,
                };
                let depth = PackB::<f64>::depth(&b);
                let nr = [1, 4, 8, 16, 32, 67][rng.below(6)];
                let d0 = rng.below(depth);
                let d1 = d0 + 1 + rng.below(depth - d0);
                let j0 = rng.below(len);
                let j1 = j0 + 1 + rng.below(len - j0);
                let want = |row: usize, col: usize| column(&geo, &x, g * cg, row, pix0 + col);
                let what = format!("{spec:?} pix0 {pix0}");
                check_packed(&b, nr, d0..d1, j0..j1, want, &what);
                // The same in f32 (the values are small integers, exact in both): the
                // AVX-512 permute packing has a kernel per type.
                let planes32: Vec<f32> = planes.iter().map(|&v| v as f32).collect();
                let b32 = PaddedIm2colB {
                    geo: &geo,
                    layout: &layout,
                    planes: &planes32,
                    channel0: g * cg,
                    channels: cg,
                    pix0,
                    len,
                };
                check_packed(&b32, nr, d0..d1, j0..j1, want, &what);
            },
        );
    }

    /// The transposed packer, likewise: every packed element is the column-matrix
    /// element (tap row, pixel) it stands for, over random geometries, panel widths
    /// (including one past `MAX_PANEL`) and sub-blocks, on the paths this CPU has.
    #[test]
    fn packs_the_transposed_column_matrix() {
        each_case(
            0x2545_f491_4f6c_dd1d,
            1,
            |rng,
             Case {
                 spec,
                 geo,
                 layout,
                 x,
                 planes,
             }| {
                let b = PaddedIm2colTB {
                    geo: &geo,
                    layout: &layout,
                    planes: &planes,
                    channels: geo.in_channels,
                };
                let (pixels, taps) = (PackB::<f64>::depth(&b), PackB::<f64>::cols(&b));
                let nr = [1, 4, 8, 16, 32, MAX_PANEL + 3][rng.below(6)];
                let d0 = rng.below(pixels);
                let d1 = d0 + 1 + rng.below(pixels - d0);
                let j0 = rng.below(taps);
                let j1 = j0 + 1 + rng.below(taps - j0);
                let want = |pixel: usize, tap: usize| column(&geo, &x, 0, tap, pixel);
                check_packed(&b, nr, d0..d1, j0..j1, want, &format!("{spec:?}"));
            },
        );
    }

    /// Every stored element of padded planes is the image element it stands for, or zero
    /// in the padding (and in the rows a row phase rounds up to), on stride-2 layers with
    /// rows long enough for [`deinterleave`]'s vector blocks and its redone last block
    /// (even and odd widths), and on other strides for comparison.
    #[test]
    fn pad_planes_stores_the_padded_image() {
        let mut rng = Rng(0x3c6e_f372_fe94_f82b);
        for _ in 0..200 {
            let spec = Conv2dSpec {
                batch: 1,
                in_channels: 1 + rng.below(3),
                in_h: 1 + rng.below(7),
                in_w: 1 + rng.below(80),
                out_channels: 1,
                kernel: [1 + rng.below(3), 1 + rng.below(4)],
                stride: [1 + rng.below(2), [2, 2, 1, 3][rng.below(4)]],
                padding: [rng.below(3), rng.below(4)],
                dilation: [1, 1 + rng.below(2)],
                groups: 1,
            };
            let Ok(geo) = ConvGeometry::new(&spec) else {
                continue;
            };
            let layouts = [PaddedLayout::new(&geo), PaddedLayout::with_row_phases(&geo)];
            for layout in layouts.into_iter().flatten() {
                let x: Vec<f64> = (0..geo.in_channels * geo.in_plane)
                    .map(|i| 1.0 + i as f64)
                    .collect();
                let mut planes = vec![f64::NAN; layout.buffer_len(geo.in_channels)];
                pad_planes(&geo, &layout, &x, &mut planes);
                let (m, rows) = (layout.modulus, layout.row_phases * layout.rows_per_phase);
                for (i, &got) in planes.iter().enumerate() {
                    let (c, at) = (i / layout.channel_len, i % layout.channel_len);
                    let (phase, at) = (at / layout.phase_len, at % layout.phase_len);
                    let (stored, e) = (at / layout.row_len, at % layout.row_len);
                    assert!(stored < rows);
                    let row = (stored % layout.rows_per_phase) * layout.row_phases
                        + stored / layout.rows_per_phase;
                    let ih = row.checked_sub(geo.h.padding).filter(|&r| r < geo.h.input);
                    let iw = (e * m + phase)
                        .checked_sub(geo.w.padding)
                        .filter(|&q| q < geo.w.input);
                    let want = match (ih, iw) {
                        (Some(ih), Some(iw)) => x[c * geo.in_plane + ih * geo.w.input + iw],
                        _ => 0.0,
                    };
                    assert_eq!(got, want, "{geo:?} {layout:?} element {i}");
                }
            }
        }
    }

    /// Dropping the padding of padded planes gives back the image, exactly.
    #[test]
    fn unpad_inverts_pad() {
        each_case(
            0x6a09_e667_f3bc_c908,
            1,
            |_,
             Case {
                 x,
                 geo,
                 layout,
                 planes,
                 ..
             }| {
                let mut back = vec![f64::NAN; x.len()];
                unpad_planes(&geo, &layout, &planes, &mut back);
                assert_eq!(back, x, "{geo:?}");
            },
        );
    }

    /// col2im into padded planes, then unpadded, adds every element of a column tile to
    /// the input pixel it stands for (padding taps are dropped), rows in ascending order:
    /// the definition's sums, bit for bit.
    #[test]
    fn col2im_padded_scatters_the_column_matrix() {
        each_case(
            0xbb67_ae85_84ca_a73b,
            1,
            |rng,
             Case {
                 spec,
                 geo,
                 layout,
                 x,
                 ..
             }| {
                let rows = geo.col_rows;
                let pix0 = rng.below(geo.out_plane);
                let len = 1 + rng.below(geo.out_plane - pix0);
                // Not integers: the sums round, so equal bits mean the same order of additions.
                let col: Vec<f64> = (0..rows * len)
                    .map(|_| rng.below(1 << 20) as f64 * 1e-3 - 0.3)
                    .collect();
                let mut want = vec![0.0; x.len()];
                for row in 0..rows {
                    for j in 0..len {
                        if let Some(i) = input_index(&geo, 0, row, pix0 + j) {
                            want[i] += col[row * len + j];
                        }
                    }
                }
                let mut planes = vec![0.0; layout.buffer_len(geo.in_channels)];
                col2im_padded(&geo, &layout, &col, pix0, len, &mut planes);
                let mut got = vec![f64::NAN; x.len()];
                unpad_planes(&geo, &layout, &planes, &mut got);
                assert_eq!(got, want, "{spec:?} pixels {pix0}+{len}");
            },
        );
    }

    /// Huge padding has no padded layout (the caller lowers from the image itself).
    #[test]
    fn huge_padding_is_refused() {
        let spec = Conv2dSpec {
            batch: 2,
            in_channels: 1,
            in_h: 4,
            in_w: 4,
            out_channels: 1,
            kernel: [3, 3],
            stride: [50, 50],
            padding: [100, 100],
            dilation: [1, 1],
            groups: 1,
        };
        let geo = ConvGeometry::new(&spec).unwrap();
        assert!(PaddedLayout::new(&geo).is_none());
        let spec = Conv2dSpec {
            padding: [2, 2],
            ..spec
        };
        assert!(PaddedLayout::new(&ConvGeometry::new(&spec).unwrap()).is_some());
    }

    /// Without padding, a layout that splits neither columns nor rows into phases keeps
    /// the input planes as they are: `padded_input` hands back the input itself and
    /// nothing is allocated for a copy. Padding, or phases, make a real copy.
    #[test]
    fn identity_layouts_read_the_input_in_place() {
        let valid = Conv2dSpec {
            batch: 2,
            in_channels: 3,
            in_h: 6,
            in_w: 7,
            out_channels: 2,
            kernel: [3, 2],
            ..Default::default()
        };
        let x: Vec<f32> = (0..3 * 6 * 7).map(|i| i as f32).collect();
        let mut buffer = vec![0.0f32; 1024];
        let with = |padding, stride| Conv2dSpec {
            padding,
            stride,
            ..valid
        };
        // Identity or not for PaddedLayout::new, ::with_row_phases, ::unphased.
        for (spec, want) in [
            (valid, [true, true, true]),
            (with([0, 1], [1, 1]), [false; 3]),
            (with([1, 0], [1, 1]), [false; 3]),
            (with([0, 0], [1, 2]), [false, false, true]),
            (with([0, 0], [2, 1]), [true, false, true]),
        ] {
            let geo = ConvGeometry::new(&spec).unwrap();
            let layouts = [
                PaddedLayout::new(&geo),
                PaddedLayout::with_row_phases(&geo),
                PaddedLayout::unphased(&geo),
            ];
            for (layout, want) in layouts.into_iter().zip(want) {
                let layout = layout.unwrap();
                assert_eq!(layout.is_identity(&geo), want, "{spec:?}");
                assert_eq!(layout.copy_len(&geo, 3) == 0, want, "{spec:?}");
                let planes = padded_input(&geo, &layout, &x, &mut buffer);
                assert_eq!(std::ptr::eq(planes.as_ptr(), x.as_ptr()), want, "{spec:?}");
                assert_eq!(planes.len(), layout.buffer_len(3));
                if want {
                    assert_eq!(planes, &x[..]);
                }
            }
        }
    }
}
