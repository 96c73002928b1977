//! The blocking loops (the plumbing), written once against [`Kernel`].
//!
//! ```text
//! for jc in n by NC:                  B block KC × NC lives in L2
//!   for pc in k by KC:                  pack B[pc.., jc..]           (PackB)
//!     for ic in m by MC:                  pack A[ic.., pc..]         (PackA), lives in L2
//!       for jr in nc by NR:                 B micro-panel KC × NR lives in L1
//!         for ir in mc by MR:                 kernel: C[ir, jr] (+)= A panel · B panel
//! ```
//!
//! The first `k` block applies the caller's `beta`; later ones accumulate (`beta = 1`).
//! The `k` blocks depend only on `k` and on whether B's rows are read in place
//! (`Kernel::KC_IN_PLACE`), and every tile, full or partial, goes through the
//! same kernel (partial ones through a local tile), so each element of C is computed by
//! the same operations in the same order however the caller splits M and N.

use super::kernel::Kernel;
use super::pack::{PackA, PackB};
use crate::element::Element;
use crate::scratch;

/// The C operand as the driver writes it: a raw strided view whose bounds the safe entry
/// points have checked.
pub struct RawMatMut<T> {
    pub(super) ptr: *mut T,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: isize,
    pub(super) col_stride: isize,
}

/// Length of the equal blocks (rounded up to a multiple of `unit`) that cover `len` in
/// `len.div_ceil(max)` blocks: 576 with KC 256 gives 3 × 192, not 256 + 256 + 64.
pub(super) fn block_len(len: usize, max: usize, unit: usize) -> usize {
    let blocks = len.div_ceil(max).max(1);
    len.div_ceil(blocks)
        .next_multiple_of(unit)
        .min(max.next_multiple_of(unit))
}

/// `C = alpha · A · B + beta · C` with kernel `K`.
///
/// # Safety
/// Every element of `c` (`rows × cols` with its strides) is valid for writes (and reads
/// unless `beta == 0`), distinct elements have distinct addresses, and `c` does not
/// overlap anything `a` and `b` read. `a.rows() == c.rows`, `a.depth() == b.depth()`,
/// `b.cols() == c.cols`. The CPU supports `K`'s instructions.
#[inline(always)]
pub(super) unsafe fn gemm<T: Element, K: Kernel<T>, A: PackA<T>, B: PackB<T>>(
    alpha: T,
    a: &A,
    b: &B,
    beta: T,
    c: RawMatMut<T>,
) {
    let (m, k, n) = (c.rows, a.depth(), c.cols);
    if m == 0 || n == 0 {
        return;
    }
    let at = |i: usize, j: usize| {
        // SAFETY: (i, j) is inside the rows × cols view the caller guarantees valid.
        unsafe {
            c.ptr
                .offset(i as isize * c.row_stride + j as isize * c.col_stride)
        }
    };
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                let p = at(i, j);
                // SAFETY: valid element of C; read only when beta != 0.
                unsafe { *p = if beta == T::ZERO { T::ZERO } else { beta * *p } };
            }
        }
        return;
    }
    // The stack arrays below hold one k block's row offsets, one A block's and one
    // panel's: a kernel tuned past them fails to build instead of panicking in a call.
    const {
        assert!(
            K::KC <= MAX_IN_PLACE_DEPTH
                && K::KC_IN_PLACE <= MAX_IN_PLACE_DEPTH
                && K::MC <= MAX_IN_PLACE_ROWS
                && K::MR <= MAX_MR
        )
    };
    let (mr, nr) = (K::MR, K::NR);
    let mut offsets = [0usize; MAX_IN_PLACE_DEPTH];
    // B read in place (asked of its first rows) takes all of `k` in one block when it is
    // at most the kernel's in-place depth: no B micro-panel is packed to stay in L1 then,
    // and each C tile is loaded and stored once. Deeper products keep `KC` blocks.
    let probe = k.min(K::KC);
    let b_in_place = b.rows_in_place(0..probe, &mut offsets[..probe]).is_some();
    let kc_max = if b_in_place && k <= K::KC_IN_PLACE {
        k
    } else {
        block_len(k, K::KC, 1)
    };
    let mc_max = block_len(m, K::MC, mr);
    // NC keeps the packed B block in L2 for its reuse by every A block. With a single A
    // block (m <= MC: the conv layers' filter counts) there is no such reuse: each B
    // micro-panel is used by the MC/MR A micro-panels right after it is packed, so wider
    // B blocks cost only memory and save re-packing A once per NC columns.
    let nc_cap = if m <= K::MC { 8 * K::NC } else { K::NC };
    let nc_max = block_len(n, nc_cap, nr);
    let a_len = mc_max * kc_max;
    // With B in place no B block is packed: a block the operand then refuses is packed
    // panel by panel (below), so the deeper blocks take no more memory.
    let b_len = if b_in_place { 0 } else { nc_max * kc_max };
    // A block, B block, one panel of B (the last panel of in-place rows), and a C tile.
    let mut buf = scratch::take_packing::<T>(a_len + b_len + nr * kc_max + mr * nr);
    let (a_buf, rest) = buf.split_at_mut(a_len);
    let (b_buf, rest) = rest.split_at_mut(b_len);
    let (edge_panel, tile) = rest.split_at_mut(nr * kc_max);
    let mut a_offsets = [0usize; MAX_IN_PLACE_ROWS];

    for jc in (0..n).step_by(nc_max) {
        let nc = nc_max.min(n - jc);
        for pc in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - pc);
            // B's rows in place (no packing) when the operand offers them; else the
            // KC × NC block is packed. The farthest row start, for the bounds check of
            // each panel read in place.
            let in_place = (kc <= MAX_IN_PLACE_DEPTH)
                .then(|| b.rows_in_place(pc..pc + kc, &mut offsets[..kc]))
                .flatten()
                .map(|data| (data, offsets[..kc].iter().copied().max().unwrap_or(0)));
            let offsets = &offsets[..kc];
            // Else packed: by the operand already (`PackB::packed`), or here (empty: by
            // panels, below).
            let b_packed: &[T] = match in_place {
                Some(_) => &[],
                None => match b.packed(nr, pc..pc + kc, jc..jc + nc) {
                    Some(block) => block,
                    None if b_in_place => &[],
                    None => {
                        let b_pack = &mut b_buf[..nc.div_ceil(nr) * nr * kc];
                        b.pack_b(nr, pc..pc + kc, jc..jc + nc, b_pack);
                        b_pack
                    }
                },
            };
            let beta = if pc == 0 { beta } else { T::ONE };
            for ic in (0..m).step_by(mc_max) {
                let mc = mc_max.min(m - ic);
                let prepacked = a.packed(mr, ic..ic + mc, pc..pc + kc);
                // A's columns read in place where the operand already holds them
                // contiguous, every panel is full, the kernel has the form and B is
                // packed: the single-image input delta's `Wᵀ`, whose packing was 8–11 %
                // of its time. Else packed: by the operand already, or here.
                let a_cols =
                    (prepacked.is_none() && K::A_IN_PLACE && in_place.is_none() && mc % mr == 0)
                        .then(|| a.columns_in_place(ic..ic + mc, pc..pc + kc))
                        .flatten()
                        .filter(|&(data, step)| {
                            (kc - 1)
                                .checked_mul(step)
                                .and_then(|last| last.checked_add(mc))
                                .is_some_and(|end| end <= data.len())
                        });
                // A's rows read in place where the operand holds each as a run (the
                // weight gradient's taps of a padded image) and B is packed; every run
                // checked inside `data`.
                let a_rows = (prepacked.is_none()
                    && a_cols.is_none()
                    && in_place.is_none()
                    && mc <= MAX_IN_PLACE_ROWS)
                    .then(|| a.rows_in_place(ic..ic + mc, pc..pc + kc, &mut a_offsets[..mc]))
                    .flatten()
                    .filter(|data| {
                        a_offsets[..mc]
                            .iter()
                            .all(|&o| o.checked_add(kc).is_some_and(|end| end <= data.len()))
                    });
                let a_pack: &[T] = match (prepacked, a_cols.is_some() || a_rows.is_some()) {
                    (Some(packed), _) => packed,
                    (None, true) => &[],
                    (None, false) => {
                        let a_pack = &mut a_buf[..mc.div_ceil(mr) * mr * kc];
                        a.pack_a(mr, ic..ic + mc, pc..pc + kc, a_pack);
                        a_pack
                    }
                };
                for jr in (0..nc).step_by(nr) {
                    let w = nr.min(nc - jr);
                    // In place: full panels whose columns lie contiguous in every row
                    // are read where they lie (checked: the farthest row's panel ends
                    // inside `data`); the others, and the last, partial one, are packed
                    // here.
                    let rows = in_place.filter(|_| w == nr).and_then(|(data, last_row)| {
                        let at = b.column_in_place(jc + jr, nr)?;
                        let end = last_row.checked_add(at)?.checked_add(nr)?;
                        (end <= data.len()).then(|| data[at..].as_ptr())
                    });
                    let b_panel: &[T] = match (&in_place, rows) {
                        (None, _) if !b_packed.is_empty() => &b_packed[jr * kc..][..nr * kc],
                        (Some(_), Some(_)) => &[],
                        // Panels of B in place that cannot be read there, or every panel
                        // of a block refused in place: packed one at a time.
                        _ => {
                            let panel = &mut edge_panel[..nr * kc];
                            b.pack_b(nr, pc..pc + kc, jc + jr..jc + jr + w, panel);
                            panel
                        }
                    };
                    if rows.is_none() && a_rows.is_none() && w <= K::NR_THIN {
                        // A last panel of a few columns: the thin kernel, two A panels
                        // per call, straight into C.
                        for ir in (0..mc).step_by(2 * mr) {
                            let h = (2 * mr).min(mc - ir);
                            let (a_ptr, a_steps) = match a_cols {
                                Some((data, step)) => (data[ir..].as_ptr(), [mr, step]),
                                None => {
                                    let panels = h.div_ceil(mr) * mr * kc;
                                    (a_pack[ir * kc..][..panels].as_ptr(), [mr * kc, mr])
                                }
                            };
                            let strides = [c.row_stride, c.col_stride];
                            // SAFETY: packed, the A slice holds h.div_ceil(MR) panels of
                            // kc·MR elements; in place, rows ir .. ir + h < mc of every
                            // column p < kc lie at a_ptr + p·step (checked above); the B
                            // panel holds kc·NR; the h × w block at C(ic + ir, jc + jr) is
                            // inside C (h ≤ mc − ir, w ≤ nc − jr), valid per the caller;
                            // h ≤ 2·MR, 1 ≤ w ≤ NR_THIN; the CPU check is the caller's.
                            unsafe {
                                K::kernel_thin(
                                    kc,
                                    alpha,
                                    a_ptr,
                                    a_steps,
                                    b_panel.as_ptr(),
                                    beta,
                                    at(ic + ir, jc + jr),
                                    strides,
                                    h,
                                    w,
                                )
                            };
                        }
                        continue;
                    }
                    for ir in (0..mc).step_by(mr) {
                        let h = mr.min(mc - ir);
                        let a_ptr = match (a_cols, a_rows) {
                            (Some((data, _)), _) => data[ir..].as_ptr(),
                            (None, Some(data)) => data.as_ptr(),
                            (None, None) => a_pack[ir * kc..][..mr * kc].as_ptr(),
                        };
                        // In-place rows of this panel; a partial panel repeats its last
                        // row (computed, never stored: the edge tile keeps h rows).
                        let mut panel_rows = [0usize; MAX_MR];
                        if a_rows.is_some() {
                            for (i, o) in panel_rows[..mr].iter_mut().enumerate() {
                                *o = a_offsets[ir + i.min(h - 1)];
                            }
                        }
                        let c_tile = at(ic + ir, jc + jr);
                        let b_ptr = b_panel.as_ptr();
                        // The kernel on a tile `t` of row stride `rs`, `narrow` when only
                        // its first NR_NARROW columns are needed.
                        // SAFETY (all arms): a packed A panel holds kc·MR elements; A read
                        // in place holds column p of this panel's MR rows at a_ptr +
                        // p·step (checked above: (kc − 1)·step + mc elements from the
                        // block's first, and ir + MR ≤ mc); a packed B panel kc·NR;
                        // in place, every row's NR elements from its offset plus the
                        // panel's `column_in_place` lie in `data` (checked above against
                        // the farthest row); the tile is valid per the caller; the CPU
                        // check is the caller's. A rows in place: `panel_rows` holds MR
                        // offsets of rows of this block, each run of kc elements checked
                        // inside `data` above.
                        let run = |t: *mut T, rs: isize, narrow: bool| unsafe {
                            match (rows, a_cols) {
                                (None, None) if a_rows.is_some() => K::kernel_a_rows(
                                    kc,
                                    alpha,
                                    a_ptr,
                                    panel_rows.as_ptr(),
                                    b_ptr,
                                    beta,
                                    t,
                                    rs,
                                    narrow,
                                ),
                                (None, Some((_, step))) => K::kernel_strided_a(
                                    kc, alpha, a_ptr, step, b_ptr, beta, t, rs, narrow,
                                ),
                                (Some(r), _) => K::kernel_rows(
                                    kc,
                                    alpha,
                                    a_ptr,
                                    r,
                                    offsets.as_ptr(),
                                    beta,
                                    t,
                                    rs,
                                ),
                                (None, None) if narrow => {
                                    K::kernel_narrow(kc, alpha, a_ptr, b_ptr, beta, t, rs)
                                }
                                (None, None) => K::kernel(kc, alpha, a_ptr, b_ptr, beta, t, rs),
                            }
                        };
                        if h == mr && w == nr && c.col_stride == 1 {
                            // The MR × NR tile at c_tile is inside C (h, w full) with unit
                            // column stride.
                            run(c_tile, c.row_stride, false);
                        } else {
                            edge_tile::<T, K>(beta, &c, c_tile, h, w, tile, run);
                        }
                    }
                }
            }
        }
    }
}

/// Deepest `k` block whose B rows the driver reads in place (its row offsets live on the
/// stack, 4.5 KiB); every kernel's `KC` and `KC_IN_PLACE` is at most this.
const MAX_IN_PLACE_DEPTH: usize = 576;

/// Most rows of an A block whose rows the driver reads in place (their offsets live on
/// the stack); every kernel's `MC` is at most this.
const MAX_IN_PLACE_ROWS: usize = 256;

/// Room for one panel's row offsets: every kernel's `MR` is at most this.
const MAX_MR: usize = 16;

/// A partial tile, or a tile of a C without unit column stride: `run` computes the
/// kernel on the local `MR × NR` `tile`, with the valid `h × w` part of C copied in
/// (unless `beta` is 0) and out. Copies are exact, so the result is the full-tile
/// kernel's, bit for bit.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn edge_tile<T: Element, K: Kernel<T>>(
    beta: T,
    c: &RawMatMut<T>,
    c_tile: *mut T,
    h: usize,
    w: usize,
    tile: &mut [T],
    run: impl Fn(*mut T, isize, bool),
) {
    let (mr, nr) = (K::MR, K::NR);
    let (rs, cs) = (c.row_stride, c.col_stride);
    let tile = &mut tile[..mr * nr];
    if beta != T::ZERO {
        for i in 0..h {
            for j in 0..w {
                // SAFETY: (i, j) with i < h, j < w is inside C (the driver's bounds).
                tile[i * nr + j] = unsafe { *c_tile.offset(i as isize * rs + j as isize * cs) };
            }
        }
    }
    // `tile` is a local MR × NR row-major buffer (row stride NR), not aliased by the
    // operands. The narrow kernel computes the first NR_NARROW >= w columns, all that is
    // copied out.
    run(tile.as_mut_ptr(), nr as isize, w <= K::NR_NARROW);
    for i in 0..h {
        for j in 0..w {
            // SAFETY: as above.
            unsafe { *c_tile.offset(i as isize * rs + j as isize * cs) = tile[i * nr + j] };
        }
    }
}
