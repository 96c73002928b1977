//! The blocked GEMM against a naive triple loop, on every kernel path this CPU has.
//!
//! Each test runs all three paths in-process (`gemm_on`), so one `cargo test` covers
//! every kernel; CI also runs the suite under each `CONVGEMM_ISA`.

use std::ops::Range;

use super::*;

const PATHS: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Scalar];

/// SplitMix64, as in the integration tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit<T: Element>(&mut self) -> T {
        T::from_f64((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
    }
    /// Small integers in -3..=3: every sum of the tests' sizes is exact in f32.
    fn small<T: Element>(&mut self) -> T {
        T::from_f64((self.next() % 7) as f64 - 3.0)
    }
}

/// A matrix stored with a chosen layout and padding, so views are strided.
struct Stored<T> {
    data: Vec<T>,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<T: Element> Stored<T> {
    /// `transposed`: column-major; `pad`: extra elements per leading dimension.
    fn new(
        rows: usize,
        cols: usize,
        transposed: bool,
        pad: usize,
        fill: impl FnMut() -> T,
    ) -> Self {
        let (rs, cs) = if transposed {
            (1, rows + pad)
        } else {
            (cols + pad, 1)
        };
        let len = span(rows, cols, rs, cs) + pad;
        let mut data: Vec<T> = std::iter::repeat_with(fill).take(len).collect();
        // Padding holds a sentinel, so reads of it show up in the results.
        let mut inside = vec![false; len];
        for i in 0..rows {
            for j in 0..cols {
                inside[i * rs + j * cs] = true;
            }
        }
        for (v, &inside) in data.iter_mut().zip(&inside) {
            if !inside {
                *v = T::from_f64(1e30);
            }
        }
        Stored {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }
    fn get(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }
    /// Every stored element's bits (as `f64`, exact for `f32`), padding included.
    fn bits(&self) -> Vec<u64> {
        self.data.iter().map(|v| v.to_f64().to_bits()).collect()
    }
    fn view(&self) -> MatRef<'_, T> {
        MatRef {
            data: &self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.rs,
            col_stride: self.cs,
        }
    }
    fn view_mut(&mut self) -> MatMut<'_, T> {
        MatMut {
            data: &mut self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.rs,
            col_stride: self.cs,
        }
    }
}

/// The exact-in-f64 reference `alpha·A·B + beta·C` and the per-element error scale
/// `|alpha|·Σ|a||b| + |beta·c|`. `beta == 0` ignores C (which may be NaN).
fn reference<T: Element>(
    alpha: T,
    a: &Stored<T>,
    b: &Stored<T>,
    beta: T,
    c: &Stored<T>,
) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(c.rows * c.cols);
    for i in 0..c.rows {
        for j in 0..c.cols {
            let (mut s, mut mag) = (0.0, 0.0);
            for p in 0..a.cols {
                let prod = a.get(i, p).to_f64() * b.get(p, j).to_f64();
                s += prod;
                mag += prod.abs();
            }
            let (alpha, beta) = (alpha.to_f64(), beta.to_f64());
            let cb = if beta == 0.0 {
                0.0
            } else {
                beta * c.get(i, j).to_f64()
            };
            out.push((alpha * s + cb, alpha.abs() * mag + cb.abs()));
        }
    }
    out
}

/// Runs one case on one path and checks it: bit-exact when `exact`, else within
/// `(k + 3)·ε` of the error scale. Also checks C's padding is untouched.
#[allow(clippy::too_many_arguments)]
fn check_case<T: Element>(
    isa: Isa,
    (m, k, n): (usize, usize, usize),
    layouts: [bool; 3],
    alpha: f64,
    beta: f64,
    exact: bool,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let gen_val = |rng: &mut Rng| {
        if exact {
            rng.small::<T>()
        } else {
            rng.unit::<T>()
        }
    };
    let a = Stored::new(m, k, layouts[0], 3, || gen_val(&mut rng));
    let b = Stored::new(k, n, layouts[1], 2, || gen_val(&mut rng));
    let mut c = Stored::new(m, n, layouts[2], 5, || gen_val(&mut rng));
    if beta == 0.0 {
        // C must not be read: NaN would propagate into every element.
        for i in 0..m {
            for j in 0..n {
                c.data[i * c.rs + j * c.cs] = T::from_f64(f64::NAN);
            }
        }
    }
    let (alpha, beta) = (T::from_f64(alpha), T::from_f64(beta));
    let want = reference(alpha, &a, &b, beta, &c);
    let before = c.data.clone();
    gemm_on(isa, alpha, a.view(), b.view(), beta, c.view_mut());
    let eps = T::EPSILON.to_f64() * (k + 3) as f64;
    for i in 0..m {
        for j in 0..n {
            let got = c.get(i, j).to_f64();
            let (v, scale) = want[i * n + j];
            let ok = if exact {
                got == v
            } else {
                (got - v).abs() <= eps * scale
            };
            assert!(
                ok,
                "{isa:?} {} m{m} k{k} n{n} layouts {layouts:?} alpha {alpha} beta {beta}: \
                 c[{i},{j}] = {got}, want {v} (scale {scale})",
                std::any::type_name::<T>()
            );
        }
    }
    let mut inside = vec![false; c.data.len()];
    for i in 0..m {
        for j in 0..n {
            inside[i * c.rs + j * c.cs] = true;
        }
    }
    for (idx, &inside) in inside.iter().enumerate() {
        if !inside {
            assert_eq!(
                c.data[idx].to_f64(),
                before[idx].to_f64(),
                "{isa:?}: padding of C written"
            );
        }
    }
}

/// Shapes named by what they stress: 1s, tails of every MR/NR/KC/MC/NC in use
/// (MR 4, 6, 8; NR 8, 16, 32; KC 256; MC 96..192; NC 256, 512), and a large one.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 9, 1),
    (1, 1, 40),
    (40, 1, 1),
    (2, 3, 5),
    (5, 17, 7),
    (6, 8, 16),
    (8, 256, 32),
    (9, 257, 33),
    (13, 300, 47),
    (64, 576, 455),
    (97, 100, 257),
    (193, 513, 65),
    (70, 40, 1100),
];

#[test]
fn matches_reference_on_all_shapes_layouts_and_paths() {
    for &isa in &PATHS {
        for (s, &shape) in SHAPES.iter().enumerate() {
            for layout in 0..8 {
                let layouts = [layout & 1 != 0, layout & 2 != 0, layout & 4 != 0];
                // The large shapes with one layout each keep the test fast.
                if shape.0 * shape.1 * shape.2 > 2_000_000 && layout % 3 != 0 {
                    continue;
                }
                let seed = (s * 8 + layout) as u64;
                for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (-1.5, 0.5), (2.0, 0.0)] {
                    check_case::<f32>(isa, shape, layouts, alpha, beta, true, seed);
                    check_case::<f64>(isa, shape, layouts, alpha, beta, true, seed);
                    check_case::<f32>(isa, shape, layouts, alpha, beta, false, seed);
                    check_case::<f64>(isa, shape, layouts, alpha, beta, false, seed);
                }
            }
        }
    }
}

#[test]
fn large_square_within_tolerance() {
    for &isa in &PATHS {
        check_case::<f32>(isa, (300, 1100, 600), [false; 3], 1.0, 0.0, false, 7);
        check_case::<f64>(
            isa,
            (300, 1100, 600),
            [false, true, false],
            1.0,
            1.0,
            false,
            8,
        );
    }
}

#[test]
fn empty_depth_scales_c_by_beta() {
    for &isa in &PATHS {
        let mut c = vec![2.0f32; 6];
        gemm_on(
            isa,
            1.0,
            MatRef::row_major(&[], 2, 0, 0),
            MatRef::row_major(&[], 0, 3, 3),
            0.5,
            MatMut::row_major(&mut c, 2, 3, 3),
        );
        assert_eq!(c, [1.0; 6]);
        let mut c = vec![f32::NAN; 6];
        gemm_on(
            isa,
            1.0,
            MatRef::row_major(&[], 2, 0, 0),
            MatRef::row_major(&[], 0, 3, 3),
            0.0,
            MatMut::row_major(&mut c, 2, 3, 3),
        );
        assert_eq!(c, [0.0; 6]);
    }
}

/// Results do not depend on how M and N are split (the passes split them across threads),
/// nor on computing `C` or `Cᵀ = Bᵀ · Aᵀ`: bit for bit, with random (inexact) data.
#[test]
fn results_do_not_depend_on_the_partition() {
    partition_case::<f32>();
    partition_case::<f64>();
}

/// Whole, split into blocks of C, or transposed: the same bits, on every path.
fn partition_case<T: Element>() {
    let (m, k, n) = (77, 600, 301);
    let mut rng = Rng(42);
    let a: Vec<T> = (0..m * k).map(|_| rng.unit()).collect();
    let b: Vec<T> = (0..k * n).map(|_| rng.unit()).collect();
    let c0: Vec<T> = (0..m * n).map(|_| rng.unit()).collect();
    for &isa in &PATHS {
        // alpha != 1 makes the epilogue's products round: every kernel form must fuse
        // them the same way.
        for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (0.7, 1.0), (-1.3, 0.6)] {
            let (alpha, beta) = (T::from_f64(alpha), T::from_f64(beta));
            let mut whole = c0.clone();
            gemm_on(
                isa,
                alpha,
                MatRef::row_major(&a, m, k, k),
                MatRef::row_major(&b, k, n, n),
                beta,
                MatMut::row_major(&mut whole, m, n, n),
            );
            for (m_split, n_split) in [(1, 1), (5, 3), (33, 130), (8, 32), (77, 301)] {
                let mut parts = c0.clone();
                let mut i0 = 0;
                while i0 < m {
                    let i1 = (i0 + m_split).min(m);
                    let mut j0 = 0;
                    while j0 < n {
                        let j1 = (j0 + n_split).min(n);
                        let a_v = MatRef::row_major(&a[i0 * k..], i1 - i0, k, k);
                        let b_v = MatRef::row_major(&b[j0..], k, j1 - j0, n);
                        let c_v = MatMut::row_major(&mut parts[i0 * n + j0..], i1 - i0, j1 - j0, n);
                        gemm_on(isa, alpha, a_v, b_v, beta, c_v);
                        j0 = j1;
                    }
                    i0 = i1;
                }
                assert!(
                    whole
                        .iter()
                        .zip(&parts)
                        .all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits()),
                    "{isa:?}: split {m_split}x{n_split} changed the bits (alpha {alpha}, beta {beta})"
                );
            }
            // Cᵀ stored column-major is the same matrix: same bits.
            let mut ct = vec![T::ZERO; m * n];
            for i in 0..m {
                for j in 0..n {
                    ct[j * m + i] = c0[i * n + j];
                }
            }
            let c_v = MatMut {
                data: &mut ct,
                rows: m,
                cols: n,
                row_stride: 1,
                col_stride: m,
            };
            gemm_on(
                isa,
                alpha,
                MatRef::row_major(&a, m, k, k),
                MatRef::row_major(&b, k, n, n),
                beta,
                c_v,
            );
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(
                        ct[j * m + i].to_f64().to_bits(),
                        whole[i * n + j].to_f64().to_bits(),
                        "{isa:?}: transposed C"
                    );
                }
            }
        }
    }
}

/// A [`PackB`] that computes each element from a function, as a fused im2col does from
/// the image: the seam works for operands that are never stored.
struct FnB<F> {
    k: usize,
    n: usize,
    f: F,
}

impl<T: Element, F: Fn(usize, usize) -> T> PackB<T> for FnB<F> {
    fn depth(&self) -> usize {
        self.k
    }
    fn cols(&self) -> usize {
        self.n
    }
    fn pack_b(&self, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [T]) {
        let kc = depth.len();
        for (p, panel) in dst.chunks_exact_mut(nr * kc).enumerate() {
            for (kk, row) in panel.chunks_exact_mut(nr).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    let col = cols.start + p * nr + j;
                    *v = if col < cols.end {
                        (self.f)(depth.start + kk, col)
                    } else {
                        T::ZERO
                    };
                }
            }
        }
    }
}

#[test]
fn generated_b_matches_stored_b() {
    let (m, k, n) = (19, 300, 70);
    let f = |i: usize, j: usize| ((i * 7 + j * 3) % 11) as f64 - 5.0;
    let b: Vec<f64> = (0..k * n).map(|x| f(x / n, x % n)).collect();
    let a: Vec<f64> = (0..m * k).map(|x| (x % 5) as f64 - 2.0).collect();
    for &isa in &PATHS {
        let mut stored = vec![0.0; m * n];
        gemm_on(
            isa,
            1.0,
            MatRef::row_major(&a, m, k, k),
            MatRef::row_major(&b, k, n, n),
            0.0,
            MatMut::row_major(&mut stored, m, n, n),
        );
        let mut fused = vec![f64::NAN; m * n];
        gemm_packed_on(
            isa,
            1.0,
            &StridedA(MatRef::row_major(&a, m, k, k)),
            &FnB { k, n, f },
            0.0,
            MatMut::row_major(&mut fused, m, n, n),
        );
        assert_eq!(stored, fused);
        assert!(
            fused.iter().filter(|v| **v != 0.0).count() > m * n / 2,
            "mostly zeros"
        );
    }
}

#[test]
#[should_panic(expected = "out of bounds")]
fn rejects_c_out_of_bounds() {
    let mut c = vec![0.0f32; 5];
    gemm(
        1.0,
        MatRef::row_major(&[1.0; 6], 2, 3, 3),
        MatRef::row_major(&[1.0; 9], 3, 3, 3),
        0.0,
        MatMut::row_major(&mut c, 2, 3, 3),
    );
}

#[test]
#[should_panic(expected = "shape mismatch")]
fn rejects_shape_mismatch() {
    let mut c = vec![0.0f32; 6];
    gemm(
        1.0,
        MatRef::row_major(&[1.0; 6], 2, 3, 3),
        MatRef::row_major(&[1.0; 8], 2, 4, 4),
        0.0,
        MatMut::row_major(&mut c, 2, 3, 3),
    );
}

/// A B operand whose rows lie scattered in `data` (row `i` at `offsets[i]`), offered to
/// the driver in place; `visible` elements of `data` are shown to it (fewer than needed
/// makes the driver's bounds check refuse them, and it packs instead).
struct ScatteredB<'a> {
    data: &'a [f64],
    offsets: Vec<usize>,
    n: usize,
    visible: usize,
    /// Blocks starting at or past this row are refused in place (the driver asks the
    /// first rows before it picks the block depth).
    refuse_from: usize,
}

impl PackB<f64> for ScatteredB<'_> {
    fn depth(&self) -> usize {
        self.offsets.len()
    }
    fn cols(&self) -> usize {
        self.n
    }
    fn pack_b(&self, nr: usize, depth: Range<usize>, cols: Range<usize>, dst: &mut [f64]) {
        let f = |i: usize, j: usize| self.data[self.offsets[i] + j];
        FnB {
            k: self.offsets.len(),
            n: self.n,
            f,
        }
        .pack_b(nr, depth, cols, dst)
    }
    fn rows_in_place(&self, depth: Range<usize>, offsets: &mut [usize]) -> Option<&[f64]> {
        if depth.start >= self.refuse_from {
            return None;
        }
        offsets.copy_from_slice(&self.offsets[depth]);
        Some(&self.data[..self.visible])
    }
}

/// On every path, a GEMM reading B's rows in place (`Kernel::kernel_rows`, packing only
/// the partial panels) gives the bits of the same GEMM on B stored densely, for `beta`
/// 0 and 1, over shapes with partial tiles; rows that would reach past the data are
/// refused and packed instead, and so are whole blocks after the first when the operand
/// refuses them. In place, a kernel may take all of `k` in one block (`KC_IN_PLACE`:
/// `k = 500` here on AVX-512, against 2 × 250 packed; `k = 700` is three `KC` blocks
/// either way), so the values are small integers: every partial sum is exact
/// (|sum| ≤ 700 · 5 · 2), and the bits cannot depend on the blocks, only on which
/// elements were read.
#[test]
fn in_place_rows_match_packed_rows() {
    for k in [500, 700] {
        in_place_case(19, k, 70);
    }
}

fn in_place_case(m: usize, k: usize, n: usize) {
    let f = |i: usize, j: usize| ((i * 7 + j * 3) % 11) as f64 - 5.0;
    let dense: Vec<f64> = (0..k * n).map(|x| f(x / n, x % n)).collect();
    // Row i at a scattered place: rows in reverse order, gaps of i % 5.
    let stride = n + 5;
    let offsets: Vec<usize> = (0..k).map(|i| (k - 1 - i) * stride + i % 5).collect();
    let mut data = vec![f64::NAN; k * stride];
    for (i, &o) in offsets.iter().enumerate() {
        data[o..o + n].copy_from_slice(&dense[i * n..][..n]);
    }
    let a: Vec<f64> = (0..m * k).map(|x| (x % 5) as f64 - 2.0).collect();
    let c0: Vec<f64> = (0..m * n).map(|x| (x % 3) as f64 - 1.0).collect();
    for &isa in &PATHS {
        for beta in [0.0, 1.0] {
            let mut want = c0.clone();
            gemm_on(
                isa,
                1.0,
                MatRef::row_major(&a, m, k, k),
                MatRef::row_major(&dense, k, n, n),
                beta,
                MatMut::row_major(&mut want, m, n, n),
            );
            let cases = [(data.len(), k), (offsets[0] + n - 1, k), (data.len(), 1)];
            for (visible, refuse_from) in cases {
                let b = ScatteredB {
                    data: &data,
                    offsets: offsets.clone(),
                    n,
                    visible,
                    refuse_from,
                };
                let mut got = c0.clone();
                gemm_packed_on(
                    isa,
                    1.0,
                    &StridedA(MatRef::row_major(&a, m, k, k)),
                    &b,
                    beta,
                    MatMut::row_major(&mut got, m, n, n),
                );
                assert_eq!(
                    got, want,
                    "{isa:?} k {k} beta {beta} visible {visible} refused from {refuse_from}"
                );
            }
        }
    }
}

/// On every path, a GEMM whose A has contiguous columns (read in place by
/// `Kernel::kernel_strided_a` and the thin kernel, no packing) gives the bits of the same
/// GEMM on A stored row-major (packed), in f32 and f64, for `alpha` 1 and 0.7 and `beta`
/// 0, 1 and 0.5: rows in one and in two A blocks, two `k` blocks, column tails for the
/// thin (≤ 8 columns) and the narrow kernel, and M not a multiple of MR (packed instead).
#[test]
fn a_read_in_place_matches_packed_a() {
    a_in_place_case::<f32>();
    a_in_place_case::<f64>();
}

fn a_in_place_case<T: Element>() {
    let mut rng = Rng(0xA1);
    for (m, k, n) in [
        (16, 300, 70),
        (200, 40, 45),
        (64, 513, 100),
        (24, 7, 4),
        (20, 50, 33),
    ] {
        let col_major = Stored::<T>::new(m, k, true, 3, || rng.unit());
        let mut row_major = Stored::<T>::new(m, k, false, 0, || T::ZERO);
        for i in 0..m {
            for j in 0..k {
                row_major.data[i * k + j] = col_major.get(i, j);
            }
        }
        let b = Stored::<T>::new(k, n, false, 1, || rng.unit());
        let c0 = Stored::<T>::new(m, n, false, 0, || rng.unit());
        for &isa in &PATHS {
            for (alpha, beta) in [(1.0, 0.0), (0.7, 1.0), (1.0, 0.5)] {
                let (alpha, beta) = (T::from_f64(alpha), T::from_f64(beta));
                let run = |a: &Stored<T>| {
                    let mut c = Stored::<T>::new(m, n, false, 0, || T::ZERO);
                    c.data.copy_from_slice(&c0.data);
                    gemm_packed_on(
                        isa,
                        alpha,
                        &StridedA(a.view()),
                        &StridedB(b.view()),
                        beta,
                        c.view_mut(),
                    );
                    c.bits()
                };
                assert!(
                    run(&col_major) == run(&row_major),
                    "{isa:?} {m}x{k}x{n} alpha {alpha:?} beta {beta:?}"
                );
            }
        }
    }
}

/// An A operand whose rows lie scattered in `data` (row `i` at `offsets[i]`, a run of
/// `k` elements), offered to the driver in place by rows; `visible` elements of `data`
/// are shown to it (too few makes the driver's bounds check refuse them: it packs).
struct ScatteredRowsA<'a, T> {
    data: &'a [T],
    offsets: Vec<usize>,
    k: usize,
    visible: usize,
}

impl<T: Element> PackA<T> for ScatteredRowsA<'_, T> {
    fn rows(&self) -> usize {
        self.offsets.len()
    }
    fn depth(&self) -> usize {
        self.k
    }
    fn pack_a(&self, mr: usize, rows: Range<usize>, depth: Range<usize>, dst: &mut [T]) {
        let kc = depth.len();
        for (panel, i0) in dst.chunks_exact_mut(mr * kc).zip(rows.clone().step_by(mr)) {
            for i in 0..mr {
                for kk in 0..kc {
                    panel[kk * mr + i] = if i0 + i < rows.end {
                        self.data[self.offsets[i0 + i] + depth.start + kk]
                    } else {
                        T::ZERO
                    };
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
        for (o, &row) in offsets.iter_mut().zip(&self.offsets[rows]) {
            *o = row + depth.start;
        }
        Some(&self.data[..self.visible])
    }
}

/// On every path, a GEMM reading A's rows in place (`Kernel::kernel_a_rows`, the weight
/// gradient's taps of a padded image) gives the bits of the same GEMM on A stored densely
/// (packed), in f32 and f64, for `alpha` 1 and 0.7 and `beta` 0, 1 and 0.5: M not a
/// multiple of MR (the last panel repeats a row, kept out of C), rows in one and in
/// several A blocks, several `k` blocks, narrow and thin column tails; rows that would
/// reach past the data are refused and packed instead.
#[test]
fn a_rows_in_place_match_packed_a() {
    a_rows_case::<f32>();
    a_rows_case::<f64>();
}

fn a_rows_case<T: Element>() {
    let mut rng = Rng(0xA2);
    for (m, k, n) in [
        (19, 300, 70),
        (200, 40, 45),
        (64, 513, 20),
        (13, 7, 4),
        (8, 50, 33),
    ] {
        let dense = Stored::<T>::new(m, k, false, 0, || rng.unit());
        // Row i at a scattered place: rows in reverse order, gaps of i % 5.
        let stride = k + 5;
        let offsets: Vec<usize> = (0..m).map(|i| (m - 1 - i) * stride + i % 5).collect();
        let mut data = vec![T::from_f64(f64::NAN); m * stride];
        for (i, &o) in offsets.iter().enumerate() {
            data[o..o + k].copy_from_slice(&dense.data[i * k..][..k]);
        }
        let b = Stored::<T>::new(k, n, false, 1, || rng.unit());
        let c0 = Stored::<T>::new(m, n, false, 0, || rng.unit());
        for &isa in &PATHS {
            for (alpha, beta) in [(1.0, 0.0), (0.7, 1.0), (1.0, 0.5)] {
                let (alpha, beta) = (T::from_f64(alpha), T::from_f64(beta));
                let run = |a: &dyn Fn(MatMut<'_, T>)| {
                    let mut c = Stored::<T>::new(m, n, false, 0, || T::ZERO);
                    c.data.copy_from_slice(&c0.data);
                    a(c.view_mut());
                    c.bits()
                };
                let want = run(&|c| {
                    gemm_packed_on(
                        isa,
                        alpha,
                        &StridedA(dense.view()),
                        &StridedB(b.view()),
                        beta,
                        c,
                    )
                });
                for visible in [data.len(), offsets[0] + k - 1] {
                    let a = ScatteredRowsA {
                        data: &data,
                        offsets: offsets.clone(),
                        k,
                        visible,
                    };
                    let got =
                        run(&|c| gemm_packed_on(isa, alpha, &a, &StridedB(b.view()), beta, c));
                    assert!(
                        got == want,
                        "{isa:?} {m}x{k}x{n} alpha {alpha:?} beta {beta:?} visible {visible}"
                    );
                }
            }
        }
    }
}

/// On every path, [`RowsA`] (A's rows read in place where the driver can: the forward's
/// weights when nothing prepacks them) gives the bits of [`StridedA`] (packed), in f32
/// and f64, with padded rows (a sentinel between them), M not a multiple of MR, several
/// A and `k` blocks, and `alpha`/`beta` 1/0 and 0.7/1; a column-major A, whose rows are
/// not runs, is packed instead.
#[test]
fn rows_a_matches_strided_a() {
    rows_a_case::<f32>();
    rows_a_case::<f64>();
}

fn rows_a_case<T: Element>() {
    let mut rng = Rng(0xB3);
    for (m, k, n) in [
        (19, 300, 70),
        (200, 40, 45),
        (64, 577, 20),
        (13, 7, 4),
        (6, 2304, 49),
    ] {
        let b = Stored::<T>::new(k, n, false, 1, || rng.unit());
        for transposed in [false, true] {
            let a = Stored::<T>::new(m, k, transposed, 3, || rng.unit());
            for &isa in &PATHS {
                for (alpha, beta) in [(1.0, 0.0), (0.7, 1.0)] {
                    let (alpha, beta) = (T::from_f64(alpha), T::from_f64(beta));
                    let mut want = Stored::<T>::new(m, n, false, 0, || T::from_f64(0.25));
                    gemm_packed_on(
                        isa,
                        alpha,
                        &StridedA(a.view()),
                        &StridedB(b.view()),
                        beta,
                        want.view_mut(),
                    );
                    let mut got = Stored::<T>::new(m, n, false, 0, || T::from_f64(0.25));
                    gemm_packed_on(
                        isa,
                        alpha,
                        &RowsA(a.view()),
                        &StridedB(b.view()),
                        beta,
                        got.view_mut(),
                    );
                    assert!(
                        got.bits() == want.bits(),
                        "{isa:?} {m}x{k}x{n} transposed {transposed} alpha {alpha:?} beta {beta:?}"
                    );
                }
            }
        }
    }
}
