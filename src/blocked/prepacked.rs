//! An A operand packed once and read by many GEMM calls.
//!
//! The passes multiply the same weights by every image and pixel tile: forward `W_g`,
//! input delta `W_gᵀ`. Packed per call, A is re-packed once per image and tile, which for
//! layers with many channels and few pixels per call (1×1 layers, small planes) is as
//! much data movement as packing B. [`PrepackedA`] packs every block the driver will ask
//! for once, into the calling thread's [`Slot::Weights`] buffer, and hands the blocks out
//! through [`PackA::packed`].

use std::ops::Range;

use super::driver::block_len;
use super::kernel::Kernel;
use super::pack::PackA;
use crate::element::Element;
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

/// `(MR, KC, MC)` of the kernel the blocked GEMM runs on `isa` for `T`.
fn kernel_blocking<T: Element>(isa: Isa) -> (usize, usize, usize) {
    fn of<T, K: Kernel<T>>() -> (usize, usize, usize) {
        (K::MR, K::KC, K::MC)
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
    let (mr, kc_cap, mc_cap) = kernel_blocking::<T>(isa);
    let kc = block_len(k, kc_cap, 1);
    let mc = block_len(m, mc_cap, mr);
    m.div_ceil(mc)
        .saturating_mul(k.div_ceil(kc))
        .saturating_mul(mc * kc)
}

impl<'a, T: Element, A: PackA<T>> PrepackedA<'a, T, A> {
    /// Packs all of `source` for the GEMM path `isa` (what [`simd::isa`] selects, for
    /// the passes), in the driver's blocks.
    pub(crate) fn new(isa: Isa, source: &'a A) -> Self {
        let (m, k) = (source.rows(), source.depth());
        let (mr, kc_cap, mc_cap) = kernel_blocking::<T>(isa);
        let kc = block_len(k, kc_cap, 1);
        let mc = block_len(m, mc_cap, mr);
        let (m_blocks, k_blocks) = (m.div_ceil(mc), k.div_ceil(kc));
        let slot = mc * kc;
        let mut data = take_from::<T>(Slot::Weights, prepacked_len::<T>(isa, m, k));
        for pb in 0..k_blocks {
            let depth = pb * kc..k.min((pb + 1) * kc);
            for ib in 0..m_blocks {
                let rows = ib * mc..m.min((ib + 1) * mc);
                let len = rows.len().div_ceil(mr) * mr * depth.len();
                let dst = &mut data[(pb * m_blocks + ib) * slot..][..len];
                source.pack_a(mr, rows, depth.clone(), dst);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocked::{StridedA, StridedB, gemm_packed_on};
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
                    let (mr, kc, mc) = kernel_blocking::<f32>(packed_for);
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
}
