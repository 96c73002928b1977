//! Forward by pixel tiles: `y = W ⊛ x` with no column matrix and no packed B panels.
//!
//! The GEMM of the other forward paths puts output channels in the rows of its tile and
//! pixels in the vector lanes, so its B operand (the column matrix) is packed from the
//! padded image, or read in place with unaligned loads. Here the tile is transposed:
//! [`Kernel::kernel_pixels`] holds [`TILE_PIXELS`] (or [`SHORT_TILE_PIXELS`]) consecutive
//! output pixels of one output row × `NR` output channels, broadcasts each pixel's
//! inputs straight from the input planes ([`TileInput`]: at stride 1 or 2 the image
//! itself, the kernel stepping 1 or 2 elements per pixel; at a larger stride padded
//! planes whose column phases make a row's inputs consecutive for every tap), and loads
//! the filters as contiguous vectors from a panel packed once per call
//! (`[K/NR][C·R·S][NR]`). The whole reduction `C·R·S` stays in registers, and the tile
//! is written once, transposed into the NCHW output, with the bias and activation. The
//! padding taps are skipped, as PyTorch's oneDNN kernels do, which is what lets the
//! tiles read the image with no padded copy: an output row at a padded edge leaves out
//! the filter rows whose inputs are all padding (on resnet_3x3_28 a third of the work of
//! 2 rows in 28), and a tile at a left or right edge leaves each tap column out of the
//! pixels whose input for it is a padding column (a third of the work of 2 pixels in
//! 28).
//!
//! Taken on the AVX-512 path (f32 and f64) for ungrouped layers whose output rows split
//! into tiles of [`TILE_PIXELS`] and of [`SHORT_TILE_PIXELS`] ([`row_tiles`]) and whose
//! filters are a multiple of 32 (the f32 panel width; f64 panels are 16 wide), with
//! moderate padding ([`PaddedLayout::new`]). Rows of 64 (dilated_3x3: 4 long tiles and
//! a short one) ran 1.023–1.030× the packed GEMM forward at 1 and 2 threads
//! (`benches/ab.sh`, 4–6 rounds, Zen 4; its input delta, a transposed forward that takes
//! the same tiles, 0.995–1.027), and in 8 short tiles the same as the split (1.008). A
//! 1-D layer needs its rows to be a multiple of 14: audio_1x9's single row of 4000 ran
//! 0.986× (forward and input delta, 6 rounds; 1.043× in an earlier 4) against the GEMM
//! reading its rows in place. (An earlier try at other row lengths, before the kernel
//! prefetched its output and skipped padding, had measured 0.95–0.98 on dilated_3x3.)
//!
//! 1 × 1 filters take the tiles too, reading the image itself (no padding): against the
//! GEMM, which needs no column matrix for them either, resnet_1x1_14 ran 1.049× and a
//! single image of it 1.099×; a stride-2 1 × 1 layer (512 to 1024 channels, 28 × 28)
//! 1.003× and a 64-channel one on 56 × 56 0.994× (`benches/ab.sh`, 3–4 rounds, Zen 4,
//! 1 thread).
//!
//! Order of work, per image: the output rows in bands whose input rows fit
//! [`BAND_BYTES`], and in each band every panel of filters over the band's tiles, so the
//! band's padded rows and the panel stay in L2 while the tiles stream through L1.
//! Batches run one image per task; a single image splits its padding and its panels
//! across tasks. Each output is the same sum in the same order either way, so results do
//! not depend on the thread count or on how a batch is split.

use std::ops::Range;

use crate::activation::{Activation, apply_in_place};
use crate::blocked::transpose::{Strided, transpose};
use crate::blocked::{Engine, Kernel};
use crate::element::Element;
use crate::gemm::use_blocked;
use crate::im2col::{PaddedLayout, pad_planes, padded_input};
use crate::parallel::*;
use crate::scratch::{Slot, take, take_from, take_packing};
use crate::shape::ConvGeometry;
use crate::simd::{Isa, isa};

/// Output pixels per tile: the AVX-512 kernels' `PIXEL_MR`.
const TILE_PIXELS: usize = 14;

/// Output pixels per short tile: the AVX-512 kernels' `PIXEL_MR_SHORT`. A row whose
/// length is not a multiple of 14 ends in tiles of 8 ([`row_tiles`]).
const SHORT_TILE_PIXELS: usize = 8;

/// The tiles of an output row of `q` pixels: `(long, short)`, as many tiles of
/// [`TILE_PIXELS`] as leave a multiple of [`SHORT_TILE_PIXELS`], then that many short
/// tiles; `None` if no such split exists (`q` odd, or 2, 4, 6, 10, 12, 18, 20 or 26).
///
/// Constant time whatever `q` (a fuzzed layer can be 2⁴⁰ pixels wide): one long tile
/// fewer moves the rest by 14 ≡ 6 (mod 8), so the rest's residue repeats every 4 long
/// tiles, and the 4 largest counts are all there is to try.
fn row_tiles(q: usize) -> Option<(usize, usize)> {
    let most = q / TILE_PIXELS;
    (most.saturating_sub(3)..=most)
        .rev()
        .map(|long| (long, q - long * TILE_PIXELS))
        .find(|&(_, rest)| rest.is_multiple_of(SHORT_TILE_PIXELS))
        .map(|(long, rest)| (long, rest / SHORT_TILE_PIXELS))
        .filter(|&(long, short)| long + short > 0)
}

/// Input planes of a multiple of this many elements (2 KiB of f32, 4 KiB of f64), in more
/// than [`L1_WAYS`] channels, are read from a padded copy even at strides 1 and 2: at
/// such a channel stride the taps of successive channels fall in the same few L1 sets,
/// more of them than a set holds. dilated_3x3 (64 channels of 64 × 64, 16 KiB) read from
/// the image ran 0.913 of its padded copy (`benches/ab.sh`, 4 rounds, Zen 4, 1 thread;
/// the padded planes are 68 × 68), twice; the stem (3 channels of 224 × 224) 1.024.
const ALIASED_PLANE: usize = 512;

/// Ways of an L1 data cache set (Zen 4 8, recent Intel 12): the channels whose taps may
/// share a set without evicting each other.
const L1_WAYS: usize = 8;

/// `(first pixel, width)` of each tile of a row that [`row_tiles`] split into `long` and
/// `short` tiles, in order.
fn tiles_of_row(long: usize, short: usize) -> impl Iterator<Item = (usize, usize)> {
    let long_tiles = (0..long).map(|t| (t * TILE_PIXELS, TILE_PIXELS));
    let short_tiles = (0..short).map(move |t| {
        let q0 = long * TILE_PIXELS + t * SHORT_TILE_PIXELS;
        (q0, SHORT_TILE_PIXELS)
    });
    long_tiles.chain(short_tiles)
}

/// Filters must be a multiple of this (the widest panel, f32's 32).
const FILTER_MULTIPLE: usize = 32;

/// Taps per channel the kernel's offset table holds (the table lives on the stack).
const MAX_TAPS: usize = 64;

/// Pixels of an output row computed (as tiles) before they are written out together:
/// each output plane then receives runs of up to 70 pixels (whole cache lines) instead
/// of 14 in partial lines.
const CHUNK_PIXELS: usize = 5 * TILE_PIXELS;

/// Elements of a chunk (f32: 70 pixels × 32 filters).
const CHUNK_LEN: usize = CHUNK_PIXELS * FILTER_MULTIPLE;

/// Bytes of padded input rows one band of output rows reads: with the filters packed
/// (590 KB on resnet_3x3_28) it stays within a 2 MiB L2. In a throwaway probe (1 thread)
/// resnet_3x3_s2, whose padded image is 1.7 MB, ran 0.91 of the packed GEMM unbanded and
/// 1.05 with bands of 4–14 rows; the other layers' images (≤ 0.9 MB) changed little.
const BAND_BYTES: usize = 320 << 10;

/// Where the tiles read their inputs: input `(c, tap t)` of output pixel `(p, q)` is
/// element `c·channel_len + taps[t] + p·row_step + q·pixel_step − origin` of the planes.
///
/// At horizontal strides 1 and 2 the planes are the image's own, `origin` the offset
/// of its first element from the top-left padding corner (unless the planes alias in
/// L1: [`ALIASED_PLANE`]): the kernel leaves out every tap whose input is padding (rows
/// by the filter rows it keeps, columns by the edge tiles' lead and trail), so it never
/// reads one and needs no padded copy. That copy, when the
/// tiles read padded planes, was bound by reading the image from memory: 11 % of
/// resnet_3x3_s2's forward in `perf record`, 1.8 % of resnet_3x3_28's. At larger strides
/// the planes are padded and split into column phases ([`PaddedLayout::new`]), so that
/// a pixel's inputs are consecutive; at strides 1 and 2 with aliasing planes, padded
/// with the columns in order ([`PaddedLayout::unphased`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileInput {
    /// The padded planes, or `None`: the image itself.
    padded: Option<PaddedLayout>,
    /// Elements per channel of the planes.
    channel_len: usize,
    /// Elements per stored row (of one column phase when padded).
    row_len: usize,
    /// Elements per stored row over all column phases: what one padded row costs.
    full_row_len: usize,
    /// Elements between consecutive output pixels' inputs: 1 or 2.
    pixel_step: usize,
    /// Subtracted from every address: `pad_h·W + pad_w` for the image, 0 when padded.
    origin: usize,
}

impl TileInput {
    /// Elements of the padded copy of one image a task holds (0 for the image itself).
    pub(crate) fn copy_len(&self, geo: &ConvGeometry) -> usize {
        self.padded
            .map_or(0, |layout| layout.copy_len(geo, geo.in_channels))
    }

    /// Offset of tap `(r, s)` of channel 0 for output pixel `(0, 0)`, before `origin`.
    fn tap_offset(&self, geo: &ConvGeometry, r: usize, s: usize) -> usize {
        match &self.padded {
            Some(layout) => layout.tap_offset(geo, 0, r, s),
            None => r * geo.h.dilation * self.row_len + s * geo.w.dilation,
        }
    }

    /// The planes of image `x_n`: itself, or its padded copy in `buffer` (at least
    /// [`TileInput::copy_len`] long).
    fn planes<'a, T: Element>(
        &self,
        geo: &ConvGeometry,
        x_n: &'a [T],
        buffer: &'a mut [T],
    ) -> &'a [T] {
        match &self.padded {
            Some(layout) => padded_input(geo, layout, x_n, buffer),
            None => x_n,
        }
    }
}

/// The input of the pixel-tile path, when `geo` takes it. (Still only with moderate
/// padding, where [`PaddedLayout::new`] accepts the layer, as when every stride read
/// padded planes.) Earlier, reading padded planes at stride 2: the columns in order
/// against split phases, paired medians of `benches/ab.sh` over 6 rounds (Intel host,
/// `fma_peak` 175): resnet_3x3_s2 1.05 at 1 and at 2 threads, the ResNet stem 1.00;
/// padding band by band, each band just before its tiles, 1.015.
pub(crate) fn layout(geo: &ConvGeometry) -> Option<TileInput> {
    let kernel_has_tiles = <<f32 as Engine>::Avx512 as Kernel<f32>>::PIXEL_MR == TILE_PIXELS
        && <<f64 as Engine>::Avx512 as Kernel<f64>>::PIXEL_MR == TILE_PIXELS
        && <<f32 as Engine>::Avx512 as Kernel<f32>>::PIXEL_MR_SHORT == SHORT_TILE_PIXELS
        && <<f64 as Engine>::Avx512 as Kernel<f64>>::PIXEL_MR_SHORT == SHORT_TILE_PIXELS;
    let applies = kernel_has_tiles
        && use_blocked()
        && isa() == Isa::Avx512
        && geo.groups == 1
        && geo.taps <= MAX_TAPS
        && row_tiles(geo.w.output).is_some_and(|(_, short)| short == 0 || geo.h.output > 1)
        && geo.out_channels.is_multiple_of(FILTER_MULTIPLE);
    if applies { tile_input(geo) } else { None }
}

/// The [`TileInput`] of `geo` (whichever ISA runs): the image at strides 1 and 2 unless
/// its planes alias ([`ALIASED_PLANE`]), padded planes otherwise;
/// `None` where [`PaddedLayout::new`] refuses the layer.
fn tile_input(geo: &ConvGeometry) -> Option<TileInput> {
    let aliased = geo.in_plane.is_multiple_of(ALIASED_PLANE) && geo.in_channels > L1_WAYS;
    let padded = if geo.w.stride <= 2 && aliased {
        // Columns in order: the broadcasts need no contiguous runs.
        PaddedLayout::unphased(geo)?
    } else {
        PaddedLayout::new(geo)?
    };
    Some(if geo.w.stride <= 2 && !aliased {
        TileInput {
            padded: None,
            channel_len: geo.in_plane,
            row_len: geo.w.input,
            full_row_len: geo.w.input,
            pixel_step: geo.w.stride,
            origin: geo.h.padding * geo.w.input + geo.w.padding,
        }
    } else {
        TileInput {
            padded: Some(padded),
            channel_len: padded.channel_len,
            row_len: padded.row_len,
            full_row_len: padded.padded_row_len(),
            pixel_step: padded.column_step(geo),
            origin: 0,
        }
    })
}

/// Elements of the packed filters a call holds: `K·C·R·S` for a batch, none for a single
/// image (its tasks pack one panel each into their packing buffers).
pub(crate) fn packed_len(geo: &ConvGeometry) -> usize {
    if geo.batch > 1 { geo.w_len } else { 0 }
}

/// Batched forward: one image per task (padded once where `input` asks), band by band.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Element>(
    geo: &ConvGeometry,
    input: &TileInput,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    let nr = <T::Avx512 as Kernel<T>>::NR;
    let (x_image, y_image) = (
        geo.in_channels * geo.in_plane,
        geo.out_channels * geo.out_plane,
    );
    let mut packed = take_from::<T>(Slot::Weights, packed_len(geo));
    pack_filters(geo, w, nr, &mut packed);
    let taps = tap_offsets(geo, input);
    let band = band_rows(geo, input, size_of::<T>());
    let panel_len = geo.col_rows * nr;
    y.par_chunks_exact_mut(y_image)
        .zip(x.par_chunks_exact(x_image))
        .for_each_init(
            || take::<T>(input.copy_len(geo)),
            |buffer, (y_n, x_n)| {
                let planes = input.planes(geo, x_n, buffer);
                for row0 in (0..geo.h.output).step_by(band) {
                    let rows = row0..(row0 + band).min(geo.h.output);
                    let panels = y_n
                        .chunks_exact_mut(nr * geo.out_plane)
                        .zip(packed.chunks_exact(panel_len));
                    for (p, (y_p, panel)) in panels.enumerate() {
                        let bias = bias.map(|b| &b[p * nr..][..nr]);
                        let work = Panel {
                            geo,
                            input,
                            planes,
                            taps: &taps,
                            panel,
                            bias,
                            act,
                        };
                        work.run(y_p, rows.clone());
                    }
                }
            },
        );
}

/// A single image: padded once (runs of channels in parallel), then its filter panels in
/// parallel, each packed by its task just before use. (Packing all filters first, as a
/// batch does, ran batch1_3x3_14 at 0.90–0.96 of the GEMM path on one thread: its 2.4 MB
/// of packed filters went out to L3 and came back; one 295 KB panel stays in L2.)
pub(crate) fn forward_single_image<T: Element>(
    geo: &ConvGeometry,
    input: &TileInput,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    let nr = <T::Avx512 as Kernel<T>>::NR;
    let panel_len = geo.col_rows * nr;
    let taps = tap_offsets(geo, input);
    let mut buffer = take::<T>(input.copy_len(geo));
    let planes = match &input.padded {
        Some(layout) if !layout.is_identity(geo) => {
            pad_in_parallel(geo, layout, x, &mut buffer);
            &buffer[..layout.buffer_len(geo.in_channels)]
        }
        _ => x,
    };
    y.par_chunks_exact_mut(nr * geo.out_plane)
        .zip(w.par_chunks_exact(panel_len))
        .enumerate()
        .for_each(|(p, (y_p, filters))| {
            let mut panel = take_packing::<T>(panel_len);
            pack_panel(geo.col_rows, nr, filters, &mut panel);
            let bias = bias.map(|b| &b[p * nr..][..nr]);
            let work = Panel {
                geo,
                input,
                planes,
                taps: &taps,
                panel: &panel,
                bias,
                act,
            };
            work.run(y_p, 0..geo.h.output);
        });
}

/// Tasks a single image's padding splits into, by channels (a copy, so any split gives
/// the same planes). Padded by the calling thread alone, batch1_3x3_14's forward ran 0.90
/// of this at 2 threads (`benches/ab.sh`, 6 rounds, Zen 4 host; 1.00 at 1 thread).
const PAD_TASKS: usize = 8;

/// [`pad_planes`] of one image's `C` channels `x` into `planes`, runs of channels in
/// parallel.
fn pad_in_parallel<T: Element>(
    geo: &ConvGeometry,
    layout: &PaddedLayout,
    x: &[T],
    planes: &mut [T],
) {
    let per_task = geo.in_channels.div_ceil(PAD_TASKS).max(1);
    planes[..layout.buffer_len(geo.in_channels)]
        .par_chunks_mut(layout.buffer_len(per_task))
        .zip(x.par_chunks(per_task * geo.in_plane))
        .for_each(|(dst, src)| pad_planes(geo, layout, src, dst));
}

/// `packed[p][e][j] = w[p·NR + j][e]`: each panel of `nr` filters with its `C·R·S`
/// weights interleaved, so step `e` of the kernel loads one contiguous row. In parallel
/// over panels (the calling thread does this before the tasks start).
fn pack_filters<T: Element>(geo: &ConvGeometry, w: &[T], nr: usize, packed: &mut [T]) {
    let crs = geo.col_rows;
    packed
        .par_chunks_exact_mut(crs * nr)
        .zip(w.par_chunks_exact(crs * nr))
        .for_each(|(panel, filters)| pack_panel(crs, nr, filters, panel));
}

/// One panel: the transpose of its `nr × crs` block of filters, by in-register block
/// transposes.
fn pack_panel<T: Element>(crs: usize, nr: usize, filters: &[T], panel: &mut [T]) {
    transpose(isa(), filters, Strided(crs), crs, nr, panel, nr);
}

/// Offsets of the `R·S` taps of channel 0 in the padded planes, row-major (the order of
/// `C·R·S` within a channel), relative to output pixel `(0, 0)`.
fn tap_offsets(geo: &ConvGeometry, input: &TileInput) -> [usize; MAX_TAPS] {
    let mut taps = [0; MAX_TAPS];
    for r in 0..geo.h.kernel {
        for s in 0..geo.w.kernel {
            taps[r * geo.w.kernel + s] = input.tap_offset(geo, r, s);
        }
    }
    taps
}

/// Output rows per band: as many as read at most [`BAND_BYTES`] of padded input (an
/// output row reads `stride_h` padded rows of every channel and column phase).
fn band_rows(geo: &ConvGeometry, input: &TileInput, elem_size: usize) -> usize {
    let row_bytes = geo.in_channels * geo.h.stride * input.full_row_len * elem_size;
    (BAND_BYTES / row_bytes.max(1)).max(1)
}

/// Fills `table[t]` with the `[lead, trail]` pixels of the tile at output column `q0`
/// whose input for tap `t` is a padding column, for every tap; returns whether any
/// is (the tile is at a left or right edge). Each tap column's valid outputs are one
/// run ([`Axis::valid_outputs`](crate::shape::Axis::valid_outputs)), so the pixels
/// it leaves out are a lead and a trail of the tile.
fn edge_table_of(
    geo: &ConvGeometry,
    q0: usize,
    width: usize,
    table: &mut [[u8; 2]; MAX_TAPS],
) -> bool {
    let axis = &geo.w;
    let tile_end = q0 + width;
    let mut any = false;
    for s in 0..axis.kernel {
        let (lo, hi) = axis.valid_outputs(s);
        // At most `width` (≤ 14) each: they fit a u8.
        let lead = lo.saturating_sub(q0).min(width) as u8;
        let trail = tile_end.saturating_sub(hi).min(width) as u8;
        any |= lead != 0 || trail != 0;
        for r in 0..geo.h.kernel {
            table[r * axis.kernel + s] = [lead, trail];
        }
    }
    any
}

/// One panel of filters over the padded planes of one image.
struct Panel<'a, T: Element> {
    geo: &'a ConvGeometry,
    input: &'a TileInput,
    planes: &'a [T],
    taps: &'a [usize; MAX_TAPS],
    /// `C·R·S × NR`, packed by [`pack_filters`].
    panel: &'a [T],
    /// The panel's `NR` biases.
    bias: Option<&'a [T]>,
    act: Activation,
}

impl<T: Element> Panel<'_, T> {
    /// Every tile of output rows `rows` into `y` (the panel's `NR` output planes).
    fn run(&self, y: &mut [T], rows: Range<usize>) {
        let geo = self.geo;
        let nr = <T::Avx512 as Kernel<T>>::NR;
        let (plane, q) = (geo.out_plane, geo.w.output);
        let (channels, channel_len) = (geo.in_channels, self.input.channel_len);
        let row_step = geo.h.stride * self.input.row_len;
        let (pixel_step, origin) = (self.input.pixel_step, self.input.origin);
        assert!(
            <T::Avx512 as Kernel<T>>::PIXEL_MR == TILE_PIXELS
                && <T::Avx512 as Kernel<T>>::PIXEL_MR_SHORT == SHORT_TILE_PIXELS
                && nr <= FILTER_MULTIPLE
                && self.panel.len() == geo.col_rows * nr
                && y.len() == nr * plane
                && rows.end <= geo.h.output
                && (pixel_step == 1 || pixel_step == 2),
            "pixel tiles: operand sizes disagree"
        );
        // The farthest input a tile could read, over all channels, taps and pixels:
        // within padded planes. The image itself holds every input a tile reads (it reads
        // no padding), its `C` whole planes.
        let last_tap = self.taps[..geo.taps].iter().copied().max().unwrap_or(0);
        let farthest = (channels - 1) * channel_len
            + last_tap
            + (geo.h.output - 1) * row_step
            + (q - 1) * pixel_step;
        let planes_hold_inputs = match self.input.padded {
            Some(_) => farthest < self.planes.len(),
            None => channel_len == geo.in_plane && channels * channel_len <= self.planes.len(),
        };
        assert!(planes_hold_inputs, "pixel tiles: planes too short");
        let mut chunk = [T::ZERO; CHUNK_LEN];
        let mut edge_table = [[0u8; 2]; MAX_TAPS];
        let row_taps = geo.w.kernel;
        let (long, short) = row_tiles(q).expect("pixel tiles: the row splits into tiles");
        for p in rows {
            // The filter rows whose inputs lie in the image for this output row: the
            // others read only padding (zeros), so their taps are skipped, as in the
            // reference. Each output is still the same sum in the same order (the terms
            // skipped are all zero products), whichever tile or thread computes it.
            let filter_rows = geo.h.valid_taps(p);
            let (tap0, tap_count) = (filter_rows.start * row_taps, filter_rows.len() * row_taps);
            // The tiles of the row, `long` of 14 pixels then `short` of 8, gathered in
            // a chunk of at most CHUNK_PIXELS and written out together.
            let mut first = 0;
            for (q0, width) in tiles_of_row(long, short) {
                if q0 + width > first + CHUNK_PIXELS {
                    self.write(&chunk, &mut y[p * q + first..], q0 - first);
                    first = q0;
                }
                let at = (q0 - first) * nr;
                let edges = if edge_table_of(geo, q0, width, &mut edge_table) {
                    edge_table[tap0..].as_ptr()
                } else {
                    std::ptr::null()
                };
                // SAFETY: `width` is the kernel's PIXEL_MR (14) or PIXEL_MR_SHORT (8),
                // checked above. The kernel reads `x + c·channel_len + taps[t] +
                // i·pixel_step` (pixel_step 1 or 2, checked above) for c < channels, tap0
                // ≤ t < tap0 + tap_count ≤ R·S, and the i < width it keeps for tap t. In
                // padded planes that is at most `farthest` (checked above) past
                // `planes`, since p < P and q0 + i < Q (the tiles cover the row). In the
                // image itself (`origin` > 0 possible) it is element `c·H·W + ih·W + iw`
                // with `ih = p·stride_h + r·dil_h − pad_h` and `iw = (q0 + i)·stride_w +
                // s·dil_w − pad_w` for tap t = (r, s): `ih < H` as `r` is one of the
                // `valid_taps(p)` filter rows kept, and `iw < W` as pixel i is not in
                // the lead or trail `edges` gives tap t (all of them kept when `edges` is
                // null: `edge_table_of` found no pixel of the tile out of the image), so
                // within the `C·H·W` elements checked above. `edges`, when not null,
                // points at entry tap0 of `edge_table`, whose MAX_TAPS ≥ R·S entries are
                // each at most `width`.
                // The panel holds `C·R·S·NR` elements, of which it reads
                // `(c·R·S + t)·NR + j` for those c, t and j < NR (`channel_taps` R·S);
                // the tile's `width·NR` elements from `chunk + at` are in the chunk
                // (q0 + width ≤ first + CHUNK_PIXELS, NR ≤ 32). `y + p·Q + q0 +
                // j·plane` is only prefetched. The kernel exists and the CPU has
                // AVX-512F: `layout` took this path only when `isa()` is AVX-512 and
                // both kernels have tiles of 14 and 8.
                unsafe {
                    <T::Avx512 as Kernel<T>>::kernel_pixels(
                        width,
                        channels,
                        channel_len,
                        self.taps.as_ptr().add(tap0),
                        tap_count,
                        geo.taps,
                        edges,
                        self.planes
                            .as_ptr()
                            .wrapping_add(p * row_step + q0 * pixel_step)
                            .wrapping_sub(origin),
                        pixel_step,
                        self.panel.as_ptr().add(tap0 * nr),
                        chunk.as_mut_ptr().add(at),
                        y.as_ptr().wrapping_add(p * q + q0),
                        plane,
                    );
                }
            }
            self.write(&chunk, &mut y[p * q + first..], q - first);
        }
    }

    /// Writes a chunk (`pixels × NR`, row-major) transposed into the panel's `NR` output
    /// planes from `y`, with the bias and activation. (By 8 × 8 blocks in registers, then
    /// the bias and activation over each run, it ran 0.99 of this on resnet_3x3_56 and
    /// the stem.)
    fn write(&self, chunk: &[T], y: &mut [T], pixels: usize) {
        let (nr, plane) = (<T::Avx512 as Kernel<T>>::NR, self.geo.out_plane);
        for j in 0..nr {
            let run = &mut y[j * plane..][..pixels];
            let column = chunk[j..].iter().step_by(nr);
            match self.bias {
                Some(b) => run.iter_mut().zip(column).for_each(|(v, &c)| *v = c + b[j]),
                None => run.iter_mut().zip(column).for_each(|(v, &c)| *v = c),
            }
            apply_in_place(self.act, run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Conv2dSpec;

    /// A 3 × 3 layer with padding 1 on `hw × hw` images.
    fn spec3x3(n: usize, c: usize, hw: usize, k: usize, stride: usize) -> Conv2dSpec {
        Conv2dSpec {
            batch: n,
            in_channels: c,
            in_h: hw,
            in_w: hw,
            out_channels: k,
            kernel: [3, 3],
            stride: [stride, stride],
            padding: [1, 1],
            ..Default::default()
        }
    }

    fn geometry(n: usize, c: usize, hw: usize, k: usize, stride: usize) -> ConvGeometry {
        ConvGeometry::new(&spec3x3(n, c, hw, k, stride)).unwrap()
    }

    /// The suite's 3 × 3 ResNet layers take the path on the AVX-512 path (so the test
    /// battery's `pixel_tiles_*` cases, shaped alike, exercise it), and shapes it cannot
    /// tile do not.
    #[test]
    fn which_layers_take_pixel_tiles() {
        if isa() != Isa::Avx512 {
            assert!(layout(&geometry(8, 128, 28, 128, 1)).is_none());
            return;
        }
        assert!(layout(&geometry(8, 128, 28, 128, 1)).is_some());
        assert!(layout(&geometry(8, 64, 56, 64, 1)).is_some());
        assert!(layout(&geometry(8, 128, 56, 128, 2)).is_some());
        assert!(layout(&geometry(1, 256, 14, 256, 1)).is_some());
        // Strides 1 and 2 read the image itself (no copy), the kernel stepping one or
        // two elements per pixel; stride 3 reads padded planes split into phases, one
        // element per pixel.
        let step_and_copy =
            |geo: &ConvGeometry| layout(geo).map(|l| (l.pixel_step, l.copy_len(geo)));
        let s1 = geometry(8, 64, 56, 64, 1);
        assert_eq!(step_and_copy(&s1), Some((1, 0)));
        let s2 = geometry(8, 128, 56, 128, 2);
        assert_eq!(step_and_copy(&s2), Some((2, 0)));
        let s3 = geometry(2, 8, 42, 32, 3);
        assert!(step_and_copy(&s3).is_some_and(|(step, copy)| step == 1 && copy > 0));
        // 64 × 64 planes (16 KiB of f32) alias in L1: copied, padded, columns in order.
        let aliased = geometry(8, 64, 64, 64, 2);
        assert!(step_and_copy(&aliased).is_some_and(|(step, copy)| step == 2 && copy > 0));
        // Padding rows deeper than the filter (the battery's `pixel_tiles_rows_of_padding`).
        let deep = ConvGeometry::new(&Conv2dSpec {
            batch: 2,
            in_channels: 4,
            in_h: 2,
            in_w: 14,
            out_channels: 32,
            kernel: [3, 3],
            padding: [3, 1],
            ..Default::default()
        })
        .unwrap();
        assert!(layout(&deep).is_some());
        assert!(deep.h.valid_taps(0).is_empty() && deep.h.valid_taps(5).is_empty());
        // Rows of 16 pixels (two short tiles) and 22 (one of each) are tiled; rows of
        // 18 (no split) and 48 filters are not.
        assert!(layout(&geometry(2, 8, 16, 32, 1)).is_some());
        assert!(layout(&geometry(2, 8, 22, 32, 1)).is_some());
        assert!(layout(&geometry(2, 8, 18, 32, 1)).is_none());
        assert!(layout(&geometry(2, 8, 14, 48, 1)).is_none());
        // 1 × 1 filters: resnet_1x1_14.
        let pointwise = ConvGeometry::new(&Conv2dSpec {
            batch: 8,
            in_channels: 1024,
            in_h: 14,
            in_w: 14,
            out_channels: 256,
            kernel: [1, 1],
            ..Default::default()
        })
        .unwrap();
        assert!(layout(&pointwise).is_some_and(|l| l.copy_len(&pointwise) == 0));
        // A single output row needs a multiple of 14 (audio_1x9's 4000 is not).
        let audio = |w: usize| {
            ConvGeometry::new(&Conv2dSpec {
                batch: 8,
                in_channels: 64,
                in_h: 1,
                in_w: w,
                out_channels: 64,
                kernel: [1, 9],
                padding: [0, 4],
                ..Default::default()
            })
            .unwrap()
        };
        assert!(layout(&audio(4000)).is_none());
        assert!(layout(&audio(3990)).is_some());
    }

    /// Rows split into tiles of 14 then 8 that cover them exactly, with as many of 14 as
    /// can be; the lengths with no split are refused.
    #[test]
    fn rows_split_into_long_and_short_tiles() {
        assert_eq!(row_tiles(64), Some((4, 1)));
        assert_eq!(row_tiles(4000), Some((284, 3)));
        assert_eq!(row_tiles(28), Some((2, 0)));
        assert_eq!(row_tiles(16), Some((0, 2)));
        // Huge rows in constant time (the loop over every count of long tiles this
        // replaced hung the `conv_never_panics` fuzzer).
        let huge = usize::MAX / 2;
        let (long, short) = row_tiles(huge - huge % 2).unwrap();
        assert_eq!(
            long * TILE_PIXELS + short * SHORT_TILE_PIXELS,
            huge - huge % 2
        );
        assert_eq!(row_tiles(huge | 1), None);
        for q in 0..2000 {
            match row_tiles(q) {
                Some((long, short)) => {
                    assert_eq!(long * TILE_PIXELS + short * SHORT_TILE_PIXELS, q, "{q}");
                    // No split with more long tiles exists.
                    let more = (long + 1..=q / TILE_PIXELS)
                        .any(|l| (q - l * TILE_PIXELS).is_multiple_of(SHORT_TILE_PIXELS));
                    assert!(!more, "{q}");
                }
                None => {
                    let any = (0..=q / TILE_PIXELS)
                        .any(|l| (q - l * TILE_PIXELS).is_multiple_of(SHORT_TILE_PIXELS) && q > 0);
                    assert!(!any, "{q}");
                }
            }
        }
    }

    /// The taps that read padding are left out, not multiplied by a zero: with one
    /// weight of each filter infinite, an output whose window puts that tap on a padding
    /// row or column stays finite, as in the reference (a product `0 · ∞` would make it
    /// NaN), and every output equals the reference's. Padding 1 on 28 × 28 with a 3 × 3
    /// filter: the infinite tap on a corner (0, 0) and on an edge (1, 2), so top rows,
    /// left and right columns are all met. 8 channels, so that the reduction (72) is
    /// too long for the direct kernel and the forward takes pixel tiles. Inputs are small
    /// positive integers, the finite weights too, so every finite sum is exact in f32.
    #[test]
    fn padding_taps_are_left_out() {
        if isa() != Isa::Avx512 {
            return;
        }
        let spec = spec3x3(2, 8, 28, 32, 1);
        let geo = ConvGeometry::new(&spec).unwrap();
        assert!(
            super::super::direct_forward::layout(&geo).is_none() && layout(&geo).is_some(),
            "the shape takes pixel tiles"
        );
        for infinite_tap in [(0, 0), (1, 2)] {
            let x: Vec<f32> = (0..geo.x_len).map(|i| (1 + i % 5) as f32).collect();
            let mut w: Vec<f32> = (0..geo.w_len).map(|i| (1 + i % 3) as f32).collect();
            for k in 0..32 {
                w[k * geo.col_rows + infinite_tap.0 * 3 + infinite_tap.1] = f32::INFINITY;
            }
            let mut y = vec![0.0f32; geo.y_len];
            let mut y_ref = y.clone();
            crate::Conv2d::new(spec)
                .unwrap()
                .forward(&x, &w, None, &mut y)
                .unwrap();
            crate::reference::conv2d_forward(&spec, &x, &w, None, &mut y_ref).unwrap();
            let finite = y_ref.iter().filter(|v| v.is_finite()).count();
            assert!(
                finite > 0 && finite < y.len(),
                "{infinite_tap:?}: some finite"
            );
            for (i, (a, b)) in y.iter().zip(&y_ref).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{infinite_tap:?}: output {i}");
            }
        }
    }

    /// The inputs a tile reads when the tiles read the image itself: over small layers
    /// (strides 1 and 2, padding 0–3, dilation 1–2, filters 1–5 wide, rows of 8 to 30
    /// pixels), the address `Panel::run` and the kernel compute for every kept filter
    /// row, tap and pixel of every tile is the image element `(ih, iw)` of that tap,
    /// inside the image; and every tap left out (a filter row, or a pixel in an edge
    /// tile's lead or trail) is one whose input is padding. Independent of the ISA.
    #[test]
    fn tiles_read_only_the_image() {
        let mut layers = 0;
        for (w, k, stride, pad, dil) in (8..31)
            .flat_map(|w| (1..6).map(move |k| (w, k)))
            .flat_map(|(w, k)| (1..3).map(move |st| (w, k, st)))
            .flat_map(|(w, k, st)| (0..4).map(move |pd| (w, k, st, pd)))
            .flat_map(|(w, k, st, pd)| (1..3).map(move |dl| (w, k, st, pd, dl)))
        {
            let spec = Conv2dSpec {
                batch: 1,
                in_channels: 2,
                in_h: 4,
                in_w: w,
                out_channels: 32,
                kernel: [k, k],
                stride: [stride, stride],
                padding: [pad, pad],
                dilation: [dil, dil],
                ..Default::default()
            };
            let Ok(geo) = ConvGeometry::new(&spec) else {
                continue;
            };
            let (Some((long, short)), Some(input)) = (row_tiles(geo.w.output), tile_input(&geo))
            else {
                continue;
            };
            assert!(input.padded.is_none() && input.copy_len(&geo) == 0);
            layers += 1;
            let taps = tap_offsets(&geo, &input);
            let row_step = stride * input.row_len;
            let mut table = [[0u8; 2]; MAX_TAPS];
            let inside = |i: isize, n: usize| (0..n as isize).contains(&i);
            for c in 0..2 {
                for p in 0..geo.h.output {
                    let rows = geo.h.valid_taps(p);
                    for (q0, width) in tiles_of_row(long, short) {
                        let edges = edge_table_of(&geo, q0, width, &mut table);
                        for (t, &tap) in taps[..geo.taps].iter().enumerate() {
                            let (r, s) = (t / k, t % k);
                            let [lead, trail] = table[t].map(usize::from);
                            for i in 0..width {
                                let ih = (p * stride + r * dil) as isize - pad as isize;
                                let iw = ((q0 + i) * stride + s * dil) as isize - pad as isize;
                                let kept = rows.contains(&r)
                                    && (!edges || (i >= lead && i + trail < width));
                                let in_image = inside(ih, geo.h.input) && inside(iw, geo.w.input);
                                assert_eq!(kept, in_image, "{spec:?} p {p} q {} t {t}", q0 + i);
                                if kept {
                                    let address = (c * input.channel_len
                                        + tap
                                        + p * row_step
                                        + (q0 + i) * input.pixel_step)
                                        as isize
                                        - input.origin as isize;
                                    let element = (c * geo.in_plane) as isize
                                        + ih * geo.w.input as isize
                                        + iw;
                                    assert_eq!(address, element, "{spec:?} p {p} t {t}");
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(layers > 300, "{layers} layers checked");
    }
}
