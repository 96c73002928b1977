//! How the passes split work: pixel tiles, channel blocks and the fixed partition of the
//! weight-gradient reduction.
//!
//! Every split here depends only on the shape and the element size, never on the number
//! of threads, so each output element is computed by the same operations in the same
//! order whatever rayon pool runs the call: results are bit-identical across pools.

use aligned_vec::{AVec, ConstAlign};

/// Target size of one column tile (`col_rows × tile_len` elements).
///
/// The tile is written by im2col and read back at once by the GEMM's packing routine; at
/// 1 MiB it stays in this machine's 1 MiB-per-core L2 between the two, while leaving
/// enough pixels per tile (455 for a 64-channel 3×3 layer in f32) for the GEMM's column
/// blocks to run at full width.
pub(crate) const COL_TILE_BYTES: usize = 1 << 20;

/// Tiles never shrink below this many pixels (unless the plane is smaller): one AVX-512
/// register row of the f32 GEMM microkernel is 16 wide, and narrower tiles waste it.
pub(crate) const MIN_TILE_PIXELS: usize = 16;

/// At most this many bytes of a B operand are packed once per call and shared by the
/// call's GEMMs ([`PrepackedB`](crate::blocked::PrepackedB)): a single image's column
/// matrix or `dy`, which its row blocks would each pack again. Held by the calling
/// thread next to (never with) the packed weights of a batched call.
pub(crate) const PREPACKED_B_BYTES: usize = 2 << 20;

/// An upper bound on one call's weight-gradient partial sums, as a multiple of
/// `K·(C/groups)·R·S + K` (the size of `dw` plus `db`): at most 4 image chunks, each
/// holding at most `2·|dw| + 8·K` elements (channel blocks are padded to equal size, at
/// most 8 of them carry a `db` slot). Validation checks this bound fits in memory, so the
/// byte counts of `Conv2d::workspace` cannot overflow.
pub(crate) const PARTIALS_BOUND_FACTOR: usize = 32;

/// Pixels per tile for a column matrix with `rows` rows of `elem_size`-byte elements over
/// a plane of `total` pixels, split into at least `min_tiles` tiles where the plane allows
/// it. Tiles are balanced: all but the last have the returned length.
///
/// When the plane takes several tiles, their length is rounded up to a multiple of
/// [`TILE_MULTIPLE`] pixels (the column buffer may exceed the budget by less than that
/// many columns): every GEMM panel of a tile is then full, where a balanced 196-pixel
/// tile ends in a 32-wide panel with 4 valid columns.
pub(crate) fn tile_len(rows: usize, elem_size: usize, total: usize, min_tiles: usize) -> usize {
    let by_budget = (COL_TILE_BYTES / (rows.max(1) * elem_size)).max(MIN_TILE_PIXELS);
    let by_split = total.div_ceil(min_tiles.max(1)).max(MIN_TILE_PIXELS);
    let len = by_budget.min(by_split).clamp(1, total.max(1));
    let count = total.div_ceil(len);
    let balanced = total.div_ceil(count.max(1)).max(1);
    if balanced < total {
        balanced.next_multiple_of(TILE_MULTIPLE).min(total)
    } else {
        balanced
    }
}

/// Tile lengths are multiples of this when a plane takes several tiles: the widest GEMM
/// panel (`NR` = 32 f32 columns on AVX-512; the other kernels' `NR` divide it).
const TILE_MULTIPLE: usize = 32;

/// The tiles `(pix0, len)` covering `0..total` with tiles of `tile` pixels.
pub(crate) fn tiles(total: usize, tile: usize) -> impl Iterator<Item = (usize, usize)> + Clone {
    (0..total)
        .step_by(tile.max(1))
        .map(move |p| (p, tile.min(total - p)))
}

/// Splits `count` items into `parts` contiguous, nearly equal ranges (fixed, independent
/// of the thread count).
pub(crate) fn partition(
    count: usize,
    parts: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> + Clone {
    let parts = parts.max(1);
    (0..parts).map(move |i| (i * count / parts)..((i + 1) * count / parts))
}

/// A 64-byte aligned buffer of `len` zeros: the per-task column / scratch buffer.
pub(crate) fn aligned_zeros<T: crate::Element>(len: usize) -> AVec<T, ConstAlign<64>> {
    let mut v = AVec::<T, ConstAlign<64>>::with_capacity(64, len);
    v.resize(len, T::ZERO);
    v
}
