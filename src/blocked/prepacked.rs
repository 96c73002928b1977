//! An A operand packed once and read by many GEMM calls.
//!
//! The passes multiply the same weights by every image and pixel tile: forward `W_g`,
//! input delta `W_gᵀ`. Packed per call, A is re-packed once per image and tile, which for
//! layers with many channels and few pixels per call (1×1 layers, small planes) is as
//! much data movement as packing B. [`PrepackedA`] packs every block the driver will ask
//! for once, into the calling thread's [`Slot::Weights`] buffer, and hands the blocks out
//! through [`PackA::packed`].
//!
//! [`PrepackedB`] does the same for a B operand that several GEMMs of one call share: a
//! single image's column matrix (forward) or output gradient (input delta), multiplied
//! by disjoint row blocks of the weights on different threads. Packed per GEMM, every
//! row block packs all of B again.

use std::ops::Range;

use super::driver::block_len;
use super::kernel::Kernel;
use super::pack::{PackA, PackB};
use crate::element::Element;
use crate::parallel::*;
use crate::scratch::{Scratch, Slot, take_from};
use crate::simd::{self, Isa};

/// `source`, packed for the blocks of the GEMM path it was built for.
///
/// Blocks are stored in uniform slots of `mc × kc` elements, slot `pb · m_blocks + ib`
/// for rows `ib·mc ..` and depth `pb·kc ..`, each in [`PackA::pack_a`]'s layout. A request
/// for any other block (another path, another split) is packed from `source`, so a
/// mismatch costs speed, never correctness.
pub(crate) struct PrepackedA<'a, T: Element, A> {
    source: &'a A,
    /// Panel height of the kernel the blocks were packed for.
    mr: usize,
    /// The driver's row and depth block lengths for this operand.
    mc: usize,
    kc: usize,
    m_blocks: usize,
    data: Scratch<T>,
}

/// The tile and block sizes of the kernel the blocked GEMM runs on some path.
#[derive(Clone, Copy)]
struct Blocking {
    mr: usize,
    nr: usize,
    kc: usize,
    mc: usize,
}

/// The [`Blocking`] of the kernel the blocked GEMM runs on `isa` for `T`.
fn kernel_blocking<T: Element>(isa: Isa) -> Blocking {
    fn of<T, K: Kernel<T>>() -> Blocking {
        Blocking {
            mr: K::MR,
            nr: K::NR,
            kc: K::KC,
            mc: K::MC,
        }
    }
    match isa.min(simd::detect()) {
        Isa::Avx512 => of::<T, T::Avx512>(),
        Isa::Avx2 => of::<T, T::Avx2>(),
        Isa::Scalar => of::<T, T::Portable>(),
    }
}

/// Elements [`PrepackedA::new`] packs for an `m × k` operand on path `isa`: whole
/// `mc × kc` slots, so up to one block row and column of padding beyond `m·k`.
pub(crate) fn prepacked_len<T: Element>(isa: Isa, m: usize, k: usize) -> usize {
    let Blocking {
        mr,
        kc: kc_cap,
        mc: mc_cap,
        ..
    } = kernel_blocking::<T>(isa);
    let kc = block_len(k, kc_cap, 1);
    let mc = block_len(m, mc_cap, mr);
    m.div_ceil(mc)
        .saturating_mul(k.div_ceil(kc))
        .saturating_mul(mc * kc)
}

/// Panels one packing task writes in [`PrepackedA::new`]: 4 panels of 8 rows by 256
/// columns of f32 are 32 KiB, so the 16 panels of a 128-row block are 4 tasks.
const A_PANELS_PER_TASK: usize = 4;

impl<'a, T: Element, A: PackA<T> + Sync> PrepackedA<'a, T, A> {
    /// Packs all of `source` for the GEMM path `isa` (what [`simd::isa`] selects, for
    /// the passes), in the driver's blocks: in parallel over blocks and groups of
    /// [`A_PANELS_PER_TASK`] panels (plain copies: the bits do not depend on the split).
    pub(crate) fn new(isa: Isa, source: &'a A) -> Self {
        let (m, k) = (source.rows(), source.depth());
        let Blocking {
            mr,
            kc: kc_cap,
            mc: mc_cap,
            ..
        } = kernel_blocking::<T>(isa);
        let kc = block_len(k, kc_cap, 1);
        let mc = block_len(m, mc_cap, mr);
        let m_blocks = m.div_ceil(mc);
        let slot = mc * kc;
        let mut data = take_from::<T>(Slot::Weights, prepacked_len::<T>(isa, m, k));
        if m > 0 && k > 0 {
            // One slot per (depth block, row block), slot `pb · m_blocks + ib`.
            data.par_chunks_mut(slot)
                .enumerate()
                .for_each(|(s, block)| {
                    let (pb, ib) = (s / m_blocks, s % m_blocks);
                    let depth = pb * kc..k.min((pb + 1) * kc);
                    let rows = ib * mc..m.min((ib + 1) * mc);
                    let len = rows.len().div_ceil(mr) * mr * depth.len();
                    let task = A_PANELS_PER_TASK * mr * depth.len();
                    block[..len]
                        .par_chunks_mut(task)
                        .enumerate()
                        .for_each(|(t, dst)| {
                            let r0 = rows.start + t * A_PANELS_PER_TASK * mr;
                            let panel_rows = r0..rows.end.min(r0 + A_PANELS_PER_TASK * mr);
                            source.pack_a(mr, panel_rows, depth.clone(), dst);
                        });
                });
        }
        PrepackedA {
            source,
            mr,
            mc,
            kc,
            m_blocks,
            data,
        }
    }
}

impl<T: Element, A: PackA<T>> PackA<T> for PrepackedA<'_, T, A> {
    fn rows(&self) -> usize {
        self.source.rows()
    }

    fn depth(&self) -> usize {
        self.source.depth()
    }

    fn pack_a(&self, mr: usize, rows: Range<usize>, depth: Range<usize>, dst: &mut [T]) {
        match self.packed(mr, rows.clone(), depth.clone()) {
            Some(block) => dst.copy_from_slice(block),
            None => self.source.pack_a(mr, rows, depth, dst),
        }
    }

    fn packed(&self, mr: usize, rows: Range<usize>, depth: Range<usize>) -> Option<&[T]> {
        let (m, k) = (self.rows(), self.depth());
        let aligned = mr == self.mr
            && rows.start.is_multiple_of(self.mc)
            && depth.start.is_multiple_of(self.kc);
        let whole = rows.end == m.min(rows.start + self.mc)
            && depth.end == k.min(depth.start + self.kc)
            && rows.start < m
            && depth.start < k;
        if !(aligned && whole) {
            return None;
        }
        let slot =
            (depth.start / self.kc * self.m_blocks + rows.start / self.mc) * self.mc * self.kc;
        let len = rows.len().div_ceil(mr) * mr * depth.len();
        Some(&self.data[slot..][..len])
    }
}

/// Elements [`PrepackedB`] packs for a `k × n` operand on path `isa`: every depth block
/// over all columns in whole panels, so `n` rounded up to `NR` and `k` to a whole block.
pub(crate) fn prepacked_b_len<T: Element>(isa: Isa, k: usize, n: usize) -> usize {
    let Blocking { nr, kc: kc_cap, .. } = kernel_blocking::<T>(isa);
    let kc = block_len(k, kc_cap, 1);
    k.div_ceil(kc)
        .saturating_mul(kc)
        .saturating_mul(n.div_ceil(nr).saturating_mul(nr))
}

/// Panels one packing task writes in [`PrepackedB::new`]: 2 panels of 32 f32 columns by
/// 256 rows are 64 KiB, small enough that two threads share the work evenly.
const PANELS_PER_TASK: usize = 2;

/// `source`, packed for the depth blocks of the GEMM path it was built for, over all of
/// its columns.
///
/// Depth block `pb` (rows `pb·kc ..` of B) starts at `pb · kc · n_pad` (`n_pad` = columns
/// rounded up to `NR`) and holds [`PackB::pack_b`]'s layout for all columns; its panels
/// are contiguous, so the block for any panel-aligned column range is a sub-slice. A
/// request that does not match (another path, a range not starting on a panel) is packed
/// from `source`, so a mismatch costs speed, never correctness.
pub(crate) struct PrepackedB<'a, T: Element, B> {
    source: &'a B,
    nr: usize,
    kc: usize,
    n_pad: usize,
    data: Scratch<T>,
}

impl<'a, T: Element, B: PackB<T> + Sync> PrepackedB<'a, T, B> {
    /// Packs all of `source` for the GEMM path `isa`, in parallel over depth blocks and
    /// pairs of panels (plain copies: the bits do not depend on the split).
    pub(crate) fn new(isa: Isa, source: &'a B) -> Self {
        let (k, n) = (source.depth(), source.cols());
        let Blocking { nr, kc: kc_cap, .. } = kernel_blocking::<T>(isa);
        let kc = block_len(k, kc_cap, 1);
        let n_pad = n.div_ceil(nr) * nr;
        let mut data = take_from::<T>(Slot::Weights, prepacked_b_len::<T>(isa, k, n));
        if k > 0 && n > 0 {
            data.par_chunks_mut(kc * n_pad)
                .enumerate()
                .for_each(|(pb, block)| {
                    let depth = pb * kc..k.min((pb + 1) * kc);
                    let task = PANELS_PER_TASK * nr * depth.len();
                    block[..n_pad * depth.len()]
                        .par_chunks_mut(task)
                        .enumerate()
                        .for_each(|(t, dst)| {
                            let j0 = t * PANELS_PER_TASK * nr;
                            let cols = j0..n.min(j0 + PANELS_PER_TASK * nr);
                            source.pack_b(nr, depth.clone(), cols, dst);
                        });
                });
        }
        PrepackedB {
            source,
            nr,
            kc,
            n_pad,
            data,
        }
    }
}

impl<T: Element, B: PackB<T>> PackB<T> for PrepackedB<'_, T, B> {
    fn depth(&self) -> usize {
        self.source.depth()
    }

    fn cols(&self) -> usize {
        self.source.cols()
    }

    fn pack_b(&self, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [T]) {
        match self.packed(nr, depth.clone(), cols.clone()) {
            Some(block) => dst.copy_from_slice(block),
            None => self.source.pack_b(nr, depth, cols, dst),
        }
    }

    fn packed(&self, nr: usize, depth: Range<usize>, cols: Range<usize>) -> Option<&[T]> {
        let (k, n) = (self.depth(), self.cols());
        // Whole panels: the range starts on one and ends on one or at the last column
        // (whose panel the prepacking zero-padded, as `pack_b` requires).
        let aligned = nr == self.nr
            && depth.start.is_multiple_of(self.kc)
            && cols.start.is_multiple_of(nr)
            && (cols.end == n || cols.len().is_multiple_of(nr));
        let whole = depth.start < k
            && depth.end == k.min(depth.start + self.kc)
            && cols.start < cols.end
            && cols.end <= n;
        if !(aligned && whole) {
            return None;
        }
        let start = depth.start / self.kc * self.kc * self.n_pad + cols.start * depth.len();
        let len = cols.len().div_ceil(nr) * nr * depth.len();
        Some(&self.data[start..][..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocked::{PackB, StridedA, StridedB, gemm_packed_on};
    use crate::gemm::{MatMut, MatRef};

    /// On every path, a GEMM with a prepacked A gives the bits of the same GEMM packing A
    /// itself, over shapes that span several row and depth blocks; a block request the
    /// prepacking does not match (another path's `mr`) falls back to packing.
    #[test]
    fn same_bits_as_packing_per_call() {
        let mut isas = vec![Isa::Scalar];
        if simd::detect() >= Isa::Avx2 {
            isas.push(Isa::Avx2);
        }
        if simd::detect() >= Isa::Avx512 {
            isas.push(Isa::Avx512);
        }
        for &(m, k, n) in &[(1, 1, 1), (7, 300, 33), (200, 513, 40), (390, 70, 17)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 61) as f32 - 30.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 53) as f32 - 26.0)
                .collect();
            let a_view = StridedA(MatRef::row_major(&a, m, k, k));
            let b_view = StridedB(MatRef::row_major(&b, k, n, n));
            for &isa in &isas {
                for &packed_for in &isas {
                    let pre = PrepackedA::new(packed_for, &a_view);
                    let Blocking { mr, kc, mc, .. } = kernel_blocking::<f32>(packed_for);
                    let first = pre.packed(
                        mr,
                        0..m.min(block_len(m, mc, mr)),
                        0..k.min(block_len(k, kc, 1)),
                    );
                    assert!(first.is_some(), "the first block is prepacked");
                    let mut want = vec![0.0f32; m * n];
                    let mut got = vec![f32::NAN; m * n];
                    let c = |d| MatMut::row_major(d, m, n, n);
                    gemm_packed_on(isa, 1.0, &a_view, &b_view, 0.0, c(&mut want));
                    gemm_packed_on(isa, 1.0, &pre, &b_view, 0.0, c(&mut got));
                    let same = want
                        .iter()
                        .zip(&got)
                        .all(|(w, g)| w.to_bits() == g.to_bits());
                    assert!(same, "{m}x{k}x{n} on {isa:?}, packed for {packed_for:?}");
                }
            }
        }
    }

    /// A GEMM with a prepacked B gives the bits of the same GEMM packing B itself, whole
    /// or split into row blocks (how the passes share it), on every path and whichever
    /// path B was packed for; requests off the panel grid fall back to packing.
    #[test]
    fn prepacked_b_same_bits_as_packing_per_call() {
        let mut isas = vec![Isa::Scalar];
        if simd::detect() >= Isa::Avx2 {
            isas.push(Isa::Avx2);
        }
        if simd::detect() >= Isa::Avx512 {
            isas.push(Isa::Avx512);
        }
        for &(m, k, n) in &[(1, 1, 1), (40, 300, 99), (200, 514, 40), (17, 70, 196)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 61) as f32 - 30.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 53) as f32 - 26.0)
                .collect();
            let b_view = StridedB(MatRef::row_major(&b, k, n, n));
            for &isa in &isas {
                for &packed_for in &isas {
                    let pre = PrepackedB::new(packed_for, &b_view);
                    let Blocking { nr, kc, .. } = kernel_blocking::<f32>(packed_for);
                    let kc = block_len(k, kc, 1);
                    assert!(pre.packed(nr, 0..kc.min(k), 0..n).is_some());
                    if n > 1 {
                        assert!(pre.packed(nr, 0..kc.min(k), 1..n).is_none(), "off the grid");
                    }
                    // Every depth block, from the second panel on: what `pack_b` writes.
                    for p0 in (0..k).step_by(kc).filter(|_| n > nr) {
                        let depth = p0..k.min(p0 + kc);
                        let cols = nr.min(n)..n;
                        let mut want = vec![0.0f32; cols.len().div_ceil(nr) * nr * depth.len()];
                        b_view.pack_b(nr, depth.clone(), cols.clone(), &mut want);
                        if let Some(got) = pre.packed(nr, depth, cols) {
                            assert_eq!(got, &want[..], "{k}x{n} packed for {packed_for:?}");
                        }
                    }
                    let mut want = vec![0.0f32; m * n];
                    let mut got = vec![f32::NAN; m * n];
                    let whole = StridedA(MatRef::row_major(&a, m, k, k));
                    gemm_packed_on(isa, 1.0, &whole, &b_view, 0.0, {
                        MatMut::row_major(&mut want, m, n, n)
                    });
                    // Row blocks of 16 (the last one partial), as the passes split them.
                    for (i, rows) in got.chunks_mut(16 * n).enumerate() {
                        let h = rows.len() / n;
                        let a_rows = StridedA(MatRef::row_major(&a[i * 16 * k..], h, k, k));
                        let c = MatMut::row_major(rows, h, n, n);
                        gemm_packed_on(isa, 1.0, &a_rows, &pre, 0.0, c);
                    }
                    let same = want
                        .iter()
                        .zip(&got)
                        .all(|(w, g)| w.to_bits() == g.to_bits());
                    assert!(same, "{m}x{k}x{n} on {isa:?}, packed for {packed_for:?}");
                }
            }
        }
    }
}
