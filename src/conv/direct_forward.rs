//! Forward of layers with a short reduction (`C·R·S` at most [`MAX_TAPS`], stride 1,
//! ungrouped, not pointwise) by register tiles read straight from the padded planes: no
//! column matrix, no packed B panels, the bias in the accumulators from the start.
//!
//! Lowered to the GEMM, such a layer (LeNet's first, 1 × 5 × 5 filters, 20 of them) is a
//! product with a tiny depth: on the AVX2 host its profile was 62% microkernel, 23%
//! packing the B panels (each packed element then feeds only `K·25` multiply-adds), 8%
//! the bias pass over `y`, and the 20 filters filled 24 tile rows (`MR` = 6). Here a tile
//! is [`KB`] filters × up to [`MAX_VECTORS`] vectors of consecutive output pixels of one
//! output row; per tap it loads the pixels' inputs (one unaligned load per vector, at the
//! tap's fixed offset in the padded planes) and broadcasts the [`KB`] filters' weights
//! from a panel packed once per call (`[K/KB][C·R·S][KB]`): 9 accumulators and per 9
//! multiply-adds 3 loads and 3 broadcasts (the GEMM microkernel: 12, with 2 and 6). A
//! row's last vector is masked (lanes past `Q` neither read nor written).
//!
//! Each output is `bias + Σ_{c, r, s} w · x` summed in that order in one accumulator
//! lane, whichever task computes it: images are tasks, and with fewer images than
//! threads each image's filter blocks are split among tasks too. Results do not depend on
//! the thread count or on how a batch is split.

use crate::activation::{Activation, apply_in_place};
use crate::element::Element;
use crate::im2col::{PaddedLayout, padded_input};
use crate::parallel::*;
use crate::scratch::{Slot, take, take_from};
use crate::shape::ConvGeometry;
#[cfg(target_arch = "x86_64")]
use crate::simd::masked::column_mask;
use crate::simd::{Isa, isa};

/// Filters per tile: each input load feeds `KB` accumulators (see [`MAX_VECTORS`]).
pub(crate) const KB: usize = 3;

/// Vectors of output pixels per tile, at most: `KB × 3` = 9 accumulators, with the 3
/// loaded vectors and a broadcast weight 13 of the 16 AVX2 registers. (With 4 filters,
/// 12 sums, all 16: LLVM spilled a sum and shuffled the others with 13 moves per tap,
/// and LeNet's first layer ran 0.85× the GEMM path instead of 1.45×.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const MAX_VECTORS: usize = 3;

/// Most taps (`C·R·S`) this path takes. Past a few dozen the GEMM's packing is a small
/// part of its time and its deeper register tile wins.
pub(crate) const MAX_TAPS: usize = 32;

/// The padded layout this path reads, where it takes the layer: an AVX2 or AVX-512 CPU,
/// stride 1, one group, at most [`MAX_TAPS`] taps, not pointwise (a 1 × 1 kernel without
/// padding: that GEMM reads its planes in place already), moderate padding
/// ([`PaddedLayout::new`]).
pub(crate) fn layout(geo: &ConvGeometry) -> Option<PaddedLayout> {
    let suits = cfg!(target_arch = "x86_64")
        && isa() != Isa::Scalar
        && geo.groups == 1
        && geo.h.stride == 1
        && geo.w.stride == 1
        && geo.col_rows <= MAX_TAPS
        && !geo.is_pointwise();
    if suits { PaddedLayout::new(geo) } else { None }
}

/// Elements of the weight panel a call packs: `⌈K/KB⌉ · C·R·S · KB`.
fn packed_len(geo: &ConvGeometry) -> usize {
    geo.out_channels.div_ceil(KB) * geo.col_rows * KB
}

/// The scratch of a call, in elements: (per task, the padded copy of one image; per call,
/// the packed weights).
pub(crate) fn scratch_lens(geo: &ConvGeometry, layout: &PaddedLayout) -> (usize, usize) {
    (layout.copy_len(geo, geo.in_channels), packed_len(geo))
}

/// `y = f(conv(x, w) + bias)` for a layer [`layout`] accepted, `layout` its result.
pub(crate) fn forward<T: Element>(
    geo: &ConvGeometry,
    layout: &PaddedLayout,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    let taps = geo.col_rows;
    let blocks = geo.out_channels.div_ceil(KB);
    // `[block][tap][KB]`, zeros for the filters past K (their sums are never stored).
    let mut packed = take_from::<T>(Slot::Weights, packed_len(geo));
    for (b, panel) in packed.chunks_exact_mut(taps * KB).enumerate() {
        for (t, weights) in panel.chunks_exact_mut(KB).enumerate() {
            for (i, v) in weights.iter_mut().enumerate() {
                let k = b * KB + i;
                *v = if k < geo.out_channels {
                    w[k * taps + t]
                } else {
                    T::ZERO
                };
            }
        }
    }
    let mut offsets = [0usize; MAX_TAPS];
    let mut t = 0;
    for c in 0..geo.in_channels {
        for r in 0..geo.h.kernel {
            for s in 0..geo.w.kernel {
                offsets[t] = layout.tap_offset(geo, c, r, s);
                t += 1;
            }
        }
    }
    let tile = Tiles {
        geo,
        layout,
        offsets: &offsets[..taps],
        max_offset: offsets[..taps].iter().copied().max().unwrap_or(0),
        packed: &packed,
        bias,
        act,
    };
    // With fewer images than threads, each image's filter blocks are split among tasks
    // (whole blocks, so each output's tile is the same).
    let threads = threads();
    let blocks_per_task = if geo.batch >= threads {
        blocks
    } else {
        blocks.div_ceil(threads.div_ceil(geo.batch)).max(1)
    };
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = geo.out_channels * geo.out_plane;
    let copy_len = layout.copy_len(geo, geo.in_channels);
    y.par_chunks_exact_mut(y_image)
        .zip(x.par_chunks_exact(x_image))
        .for_each_init(
            || take::<T>(copy_len),
            |buffer, (y_n, x_n)| {
                let planes = padded_input(geo, layout, x_n, buffer);
                y_n.par_chunks_mut(blocks_per_task * KB * geo.out_plane)
                    .enumerate()
                    .for_each(|(task, y_task)| {
                        tile.rows(planes, task * blocks_per_task, y_task);
                    });
            },
        );
}

/// What every tile of a call shares.
struct Tiles<'a, T> {
    geo: &'a ConvGeometry,
    layout: &'a PaddedLayout,
    /// Offset of tap `(c, r, s)` (in `W`'s order) in the padded planes.
    offsets: &'a [usize],
    max_offset: usize,
    packed: &'a [T],
    bias: Option<&'a [T]>,
    act: Activation,
}

impl<T: Element> Tiles<'_, T> {
    /// All output rows of the filters of `y` (whole planes, the first in filter block
    /// `block0`): by bands of [`BAND_ROWS`] output rows, and in each band every filter
    /// block, so the input rows a band reads stay in L1 across the blocks.
    fn rows(&self, planes: &[T], block0: usize, y: &mut [T]) {
        let geo = self.geo;
        let (p_count, q) = (geo.h.output, geo.w.output);
        let filters = y.len() / geo.out_plane;
        let taps = geo.col_rows;
        for p0 in (0..p_count).step_by(BAND_ROWS) {
            let rows = BAND_ROWS.min(p_count - p0);
            for first in (0..filters).step_by(KB) {
                let count = KB.min(filters - first);
                let block = block0 + first / KB;
                let k0 = block * KB;
                let bias: [T; KB] = std::array::from_fn(|i| match self.bias {
                    Some(b) if i < count => b[k0 + i],
                    _ => T::ZERO,
                });
                let out_at: [usize; KB] =
                    std::array::from_fn(|i| (first + i.min(count - 1)) * geo.out_plane + p0 * q);
                let tiles = DirectTiles {
                    x_at: p0 * self.layout.row_len,
                    row_len: self.layout.row_len,
                    rows,
                    q,
                    offsets: self.offsets,
                    max_offset: self.max_offset,
                    weights: &self.packed[block * taps * KB..][..taps * KB],
                    bias: &bias,
                    out_at,
                    filters: count,
                };
                T::direct_tiles(&tiles, planes, y);
                for &at in &out_at[..count] {
                    apply_in_place(self.act, &mut y[at..][..rows * q]);
                }
            }
        }
    }
}

/// Output rows per band of [`Tiles::rows`]: 8 rows of a 3-channel 224-wide image with a
/// 3 × 3 kernel read 28 KB.
const BAND_ROWS: usize = 8;

/// `rows` output rows of up to [`KB`] filters: for output row `p < rows`, pixel `j < q`,
/// filter `i < filters`, `out[out_at[i] + p·q + j] = bias[i] + Σ_t weights[t·KB + i] ·
/// planes[x_at + p·row_len + offsets[t] + j]` (the sum in tap order, from `bias[i]`),
/// by tiles of up to [`MAX_VECTORS`] vectors of pixels.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct DirectTiles<'a, T> {
    x_at: usize,
    row_len: usize,
    rows: usize,
    q: usize,
    offsets: &'a [usize],
    /// The largest of `offsets`.
    max_offset: usize,
    /// `offsets.len() × KB`.
    weights: &'a [T],
    bias: &'a [T; KB],
    out_at: [usize; KB],
    filters: usize,
}

/// The tile kernels of one element type (a hidden supertrait of
/// [`Element`](crate::Element), so the generic forward can name it).
pub trait DirectKernel: Sized {
    /// Computes `tiles` from `planes` into `out`. Panics (a bug in the caller) if a read
    /// or a write would leave its slice; does nothing on the baseline path, which
    /// [`layout`] never selects.
    fn direct_tiles(tiles: &DirectTiles<'_, Self>, planes: &[Self], out: &mut [Self]);
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl<T: Element> DirectTiles<'_, T> {
    /// The bounds the kernels rely on: every read of a pixel `j < q` of a row `p < rows`
    /// inside `planes`, every write inside `out`.
    fn check(&self, planes: &[T], out: &[T]) {
        let last_row = self.rows.saturating_sub(1);
        assert!(
            self.rows >= 1
                && self.q >= 1
                && (1..=KB).contains(&self.filters)
                && self.weights.len() == self.offsets.len() * KB
                && self.offsets.iter().all(|&o| o <= self.max_offset)
                && self.x_at + last_row * self.row_len + self.max_offset + self.q <= planes.len()
                && self.out_at[..self.filters]
                    .iter()
                    .all(|&at| at + self.rows * self.q <= out.len()),
            "direct forward tiles out of bounds"
        );
    }
}

/// The kernels for one element type and instruction set: `$lanes` lanes per vector,
/// `$mask` turning a [`column_mask`] into the load/store mask. `$name` runs a
/// [`DirectTiles`]; `$tile` is one tile of `V` vectors.
macro_rules! direct_kernel {
    ($t:ty, $feature:literal, $lanes:literal, $name:ident, $tile:ident, mask = $mask:path,
     set1 = $set1:path, loadu = $loadu:path, maskload = $maskload:path,
     storeu = $storeu:path, maskstore = $maskstore:path, fma = $fma:path) => {
        /// One tile: `V` vectors of pixels at `x` (tap `t` at `x + offsets[t]`) for the
        /// first `filters` of the rows `out`; with `MASKED` the last vector holds only the
        /// lanes of `mask`. (Two forms, not a test per tap: the mask would be a 17th
        /// register in the loop.)
        ///
        /// # Safety
        #[doc = concat!("The CPU supports ", $feature, ". For each tap `t` and each")]
        /// lane `j` of the full vectors and the enabled lanes of the last, `x + offsets[t]
        /// + j` is valid for reads and `out[i] + j` (`i < filters`) for writes.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn $tile<const V: usize, const MASKED: bool>(
            tiles: &DirectTiles<'_, $t>,
            x: *const $t,
            out: [*mut $t; KB],
            mask: u16,
        ) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            let mask = $mask(mask);
            let plain = |v: usize| !MASKED || v + 1 < V;
            let mut acc: [[_; V]; KB] = std::array::from_fn(|i| [$set1(tiles.bias[i]); V]);
            for (&offset, weights) in tiles.offsets.iter().zip(tiles.weights.chunks_exact(KB)) {
                let at = x.wrapping_add(offset);
                // SAFETY: the ISA is enabled; the lanes read are the ones this
                // function's contract makes valid.
                let xs: [_; V] = std::array::from_fn(|v| unsafe {
                    if plain(v) {
                        $loadu(at.add(v * L))
                    } else {
                        $maskload(mask, at.add(v * L))
                    }
                });
                for (acc, &weight) in acc.iter_mut().zip(weights) {
                    let weight = $set1(weight);
                    for (acc, &xv) in acc.iter_mut().zip(&xs) {
                        *acc = $fma(weight, xv, *acc);
                    }
                }
            }
            for (acc, &row) in acc.iter().zip(&out).take(tiles.filters) {
                for (v, &sum) in acc.iter().enumerate() {
                    // SAFETY: as the loads: the lanes written are valid.
                    unsafe {
                        if plain(v) {
                            $storeu(row.add(v * L), sum)
                        } else {
                            $maskstore(row.add(v * L), mask, sum)
                        }
                    }
                }
            }
        }

        /// Runs `tiles` (see [`DirectTiles`]): per output row, tiles of up to
        /// [`MAX_VECTORS`] vectors, the row's last one masked where `q` ends inside it.
        ///
        /// # Safety
        #[doc = concat!("The CPU supports ", $feature, "; `tiles` passed")]
        /// [`DirectTiles::check`] for `planes` and `out`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name(tiles: &DirectTiles<'_, $t>, planes: &[$t], out: &mut [$t]) {
            const L: usize = $lanes;
            let span = MAX_VECTORS * L;
            let y = out.as_mut_ptr();
            for p in 0..tiles.rows {
                let x_row = planes.as_ptr().wrapping_add(tiles.x_at + p * tiles.row_len);
                for q0 in (0..tiles.q).step_by(span) {
                    let len = span.min(tiles.q - q0);
                    let x = x_row.wrapping_add(q0);
                    let out_rows = tiles.out_at.map(|at| y.wrapping_add(at + p * tiles.q + q0));
                    let last = len - (len - 1) / L * L;
                    let mask = column_mask(0, last, L);
                    // SAFETY: the ISA is enabled. The tile's pixels are `q0 + j < q` of
                    // row `p < rows`: `check` bounds their reads (every tap offset is at
                    // most `max_offset`) and writes; the last vector's mask enables the
                    // lanes below `len` only.
                    unsafe {
                        match (len.div_ceil(L), last == L) {
                            (1, true) => $tile::<1, false>(tiles, x, out_rows, mask),
                            (2, true) => $tile::<2, false>(tiles, x, out_rows, mask),
                            (_, true) => $tile::<3, false>(tiles, x, out_rows, mask),
                            (1, false) => $tile::<1, true>(tiles, x, out_rows, mask),
                            (2, false) => $tile::<2, true>(tiles, x, out_rows, mask),
                            (_, false) => $tile::<3, true>(tiles, x, out_rows, mask),
                        }
                    }
                }
            }
        }
    };
}

/// The AVX-512 masks are the lane bits themselves.
#[cfg(target_arch = "x86_64")]
fn mask16(bits: u16) -> u16 {
    bits
}

/// f64's 8 AVX-512 lanes: the low byte.
#[cfg(target_arch = "x86_64")]
fn mask8(bits: u16) -> u8 {
    bits as u8
}

#[cfg(target_arch = "x86_64")]
use crate::simd::masked::{
    load_f32x8, load_f64x4, mask_f32x8, mask_f64x4, store_f32x8, store_f64x4,
};

direct_kernel!(
    f32,
    "avx512f",
    16,
    tiles_f32_avx512,
    tile1_f32_avx512,
    mask = mask16,
    set1 = _mm512_set1_ps,
    loadu = _mm512_loadu_ps,
    maskload = _mm512_maskz_loadu_ps,
    storeu = _mm512_storeu_ps,
    maskstore = _mm512_mask_storeu_ps,
    fma = _mm512_fmadd_ps
);
direct_kernel!(
    f64,
    "avx512f",
    8,
    tiles_f64_avx512,
    tile1_f64_avx512,
    mask = mask8,
    set1 = _mm512_set1_pd,
    loadu = _mm512_loadu_pd,
    maskload = _mm512_maskz_loadu_pd,
    storeu = _mm512_storeu_pd,
    maskstore = _mm512_mask_storeu_pd,
    fma = _mm512_fmadd_pd
);
direct_kernel!(
    f32,
    "avx2,fma",
    8,
    tiles_f32_avx2,
    tile1_f32_avx2,
    mask = mask_f32x8,
    set1 = _mm256_set1_ps,
    loadu = _mm256_loadu_ps,
    maskload = load_f32x8,
    storeu = _mm256_storeu_ps,
    maskstore = store_f32x8,
    fma = _mm256_fmadd_ps
);
direct_kernel!(
    f64,
    "avx2,fma",
    4,
    tiles_f64_avx2,
    tile1_f64_avx2,
    mask = mask_f64x4,
    set1 = _mm256_set1_pd,
    loadu = _mm256_loadu_pd,
    maskload = load_f64x4,
    storeu = _mm256_storeu_pd,
    maskstore = store_f64x4,
    fma = _mm256_fmadd_pd
);

/// [`DirectKernel`] for one element type: the AVX-512 kernels on that path, the AVX2
/// ones on AVX2.
macro_rules! impl_direct_kernel {
    ($t:ty, avx512 = $avx512:ident, avx2 = $avx2:ident) => {
        impl DirectKernel for $t {
            fn direct_tiles(tiles: &DirectTiles<'_, $t>, planes: &[$t], out: &mut [$t]) {
                #[cfg(target_arch = "x86_64")]
                {
                    if isa() == Isa::Scalar {
                        return;
                    }
                    tiles.check(planes, out);
                    // SAFETY: `isa()` returns a path only when the CPU reports its
                    // features; `check` passed.
                    unsafe {
                        if isa() == Isa::Avx512 {
                            $avx512(tiles, planes, out)
                        } else {
                            $avx2(tiles, planes, out)
                        }
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (tiles, planes, out);
            }
        }
    };
}

impl_direct_kernel!(f32, avx512 = tiles_f32_avx512, avx2 = tiles_f32_avx2);
impl_direct_kernel!(f64, avx512 = tiles_f64_avx512, avx2 = tiles_f64_avx2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::forward::forward_lowered;
    use crate::shape::Conv2dSpec;

    #[allow(clippy::too_many_arguments)]
    fn spec(
        n: usize,
        c: usize,
        [h, w]: [usize; 2],
        k: usize,
        kernel: [usize; 2],
        pad: usize,
        dil: usize,
    ) -> Conv2dSpec {
        Conv2dSpec {
            batch: n,
            in_channels: c,
            in_h: h,
            in_w: w,
            out_channels: k,
            kernel,
            padding: [pad, pad],
            dilation: [dil, dil],
            ..Default::default()
        }
    }

    /// LeNet's first layer and small first layers take the path on AVX2 and AVX-512;
    /// strided, grouped, pointwise and deeper layers do not.
    #[test]
    fn which_layers_go_direct() {
        let geo = |s: Conv2dSpec| ConvGeometry::new(&s).unwrap();
        let takes = isa() != Isa::Scalar;
        assert_eq!(
            layout(&geo(spec(64, 1, [28, 28], 20, [5, 5], 0, 1))).is_some(),
            takes
        );
        assert_eq!(
            layout(&geo(spec(8, 3, [32, 32], 32, [3, 3], 1, 1))).is_some(),
            takes
        );
        assert_eq!(
            layout(&geo(spec(1, 32, [8, 8], 4, [1, 1], 1, 1))).is_some(),
            takes
        );
        // 33 taps, a pointwise layer, stride 2, groups.
        assert!(layout(&geo(spec(2, 11, [9, 9], 4, [3, 1], 1, 1))).is_none());
        assert!(layout(&geo(spec(2, 16, [9, 9], 4, [1, 1], 0, 1))).is_none());
        let mut strided = spec(2, 1, [28, 28], 20, [5, 5], 0, 1);
        strided.stride = [2, 1];
        assert!(layout(&geo(strided)).is_none());
        let mut grouped = spec(2, 4, [9, 9], 4, [3, 3], 1, 1);
        grouped.groups = 2;
        assert!(layout(&geo(grouped)).is_none());
    }

    /// Small integers (products and sums exact in either precision): the direct path,
    /// the lowered one and the reference agree bit for bit, over output rows of every
    /// length up to three AVX-512 vectors and past (full and masked tiles of 1–3 vectors),
    /// filter counts that leave a partial block, more rows than a band, padding,
    /// dilation, one image and several, with and without bias, and with ReLU applied.
    fn agrees_exactly<T: Element>() {
        let mut cases = vec![
            spec(3, 1, [28, 28], 20, [5, 5], 0, 1),
            spec(1, 1, [20, 12], 4, [3, 3], 1, 1),
            spec(3, 2, [11, 13], 5, [3, 2], 2, 2),
            spec(2, 3, [6, 9], 7, [3, 3], 1, 1),
        ];
        for w in [
            1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 23, 24, 25, 31, 33, 47, 48, 49, 50,
        ] {
            cases.push(spec(2, 2, [4, w], 7, [3, 3], 1, 1));
        }
        let mut seed = 0x000D_1EC7_u64;
        let mut small = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            T::from_f64(((seed >> 33) % 7) as f64 - 3.0)
        };
        for s in cases {
            let geo = ConvGeometry::new(&s).unwrap();
            let layout = layout(&geo);
            if isa() == Isa::Scalar {
                assert!(layout.is_none());
                return;
            }
            let layout = layout.expect("a short reduction");
            let x: Vec<T> = (0..geo.batch * geo.in_channels * geo.in_plane)
                .map(|_| small())
                .collect();
            let w: Vec<T> = (0..geo.out_channels * geo.col_rows)
                .map(|_| small())
                .collect();
            let b: Vec<T> = (0..geo.out_channels).map(|_| small()).collect();
            let y_len = geo.batch * geo.out_channels * geo.out_plane;
            for (bias, act) in [
                (None, Activation::Identity),
                (Some(&b[..]), Activation::Identity),
                (Some(&b[..]), Activation::Relu),
            ] {
                let mut want = vec![T::ZERO; y_len];
                crate::reference::conv2d_forward(&s, &x, &w, bias, &mut want).unwrap();
                if act == Activation::Relu {
                    want.iter_mut().for_each(|v| *v = v.max(T::ZERO));
                }
                let mut direct = vec![T::from_f64(f64::NAN); y_len];
                forward(&geo, &layout, &x, &w, bias, act, &mut direct);
                let mut lowered = vec![T::from_f64(f64::NAN); y_len];
                forward_lowered(&geo, &x, &w, bias, act, &mut lowered);
                for (i, ((d, l), r)) in direct.iter().zip(&lowered).zip(&want).enumerate() {
                    assert!(
                        d.to_f64().to_bits() == r.to_f64().to_bits()
                            && l.to_f64().to_bits() == r.to_f64().to_bits(),
                        "{s:?} bias {} {act:?}: element {i}: direct {d}, lowered {l}, \
                         reference {r}",
                        bias.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn agrees_exactly_f32() {
        agrees_exactly::<f32>();
    }

    #[test]
    fn agrees_exactly_f64() {
        agrees_exactly::<f64>();
    }
}
