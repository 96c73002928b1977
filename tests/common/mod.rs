//! Shared test definitions: a seeded generator, fills, the named shape battery and the
//! tolerance rule. Each test file includes this module; not every file uses every item.
#![allow(dead_code)]

use convgemm::{Conv2d, Conv2dSpec, Element, reference};

/// SplitMix64: a tiny seeded generator, so tests need no extra dependency and every run
/// sees the same data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    pub fn floats<T: Element>(&mut self, len: usize) -> Vec<T> {
        (0..len).map(|_| T::from_f64(self.unit())).collect()
    }
    /// Small integers in -3..=3: every product and partial sum of the tests' sizes is
    /// exact in f32 (|sum| < 2^24), so any summation order gives the same bits.
    pub fn small_ints<T: Element>(&mut self, len: usize) -> Vec<T> {
        (0..len)
            .map(|_| T::from_f64(self.range(0, 6) as f64 - 3.0))
            .collect()
    }
}

/// Sizes of the buffers of a plan: (x, w, y, bias).
pub fn lens(conv: &Conv2d) -> (usize, usize, usize, usize) {
    let [n, c, h, w] = conv.input_dims();
    let [_, k, p, q] = conv.output_dims();
    (
        n * c * h * w,
        conv.weight_dims().iter().product(),
        n * k * p * q,
        k,
    )
}

/// A named spec of the battery.
pub struct Case {
    pub name: &'static str,
    pub spec: Conv2dSpec,
}

#[allow(clippy::too_many_arguments)]
pub fn spec(
    n: usize,
    c: usize,
    hw: [usize; 2],
    k: usize,
    rs: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    groups: usize,
) -> Conv2dSpec {
    Conv2dSpec {
        batch: n,
        in_channels: c,
        in_h: hw[0],
        in_w: hw[1],
        out_channels: k,
        kernel: rs,
        stride,
        padding: pad,
        dilation: dil,
        groups,
    }
}

/// The named battery: each entry stresses one thing the fast paths special-case.
pub fn battery() -> Vec<Case> {
    let one = [1, 1];
    let zero = [0, 0];
    vec![
        Case {
            name: "basic_3x3_pad1",
            spec: spec(2, 3, [7, 6], 4, [3, 3], one, one, one, 1),
        },
        Case {
            name: "stride_2x3",
            spec: spec(2, 3, [9, 11], 4, [3, 3], [2, 3], one, one, 1),
        },
        Case {
            name: "stride_3x1",
            spec: spec(2, 2, [10, 7], 3, [2, 3], [3, 1], zero, one, 1),
        },
        Case {
            name: "pad_2x3",
            spec: spec(2, 2, [6, 5], 3, [3, 3], one, [2, 3], one, 1),
        },
        Case {
            name: "pad_3x0",
            spec: spec(1, 2, [4, 8], 2, [5, 3], [2, 1], [3, 0], one, 1),
        },
        Case {
            name: "dilation_2x3",
            spec: spec(2, 3, [11, 12], 4, [3, 3], one, [2, 3], [2, 3], 1),
        },
        Case {
            name: "dilation_3x1_stride2",
            spec: spec(2, 2, [13, 9], 3, [3, 2], [2, 2], [1, 0], [3, 1], 1),
        },
        Case {
            name: "groups_2_multi_channel",
            spec: spec(2, 4, [7, 7], 6, [3, 3], one, one, one, 2),
        },
        Case {
            name: "groups_3_stride2",
            spec: spec(3, 6, [9, 8], 9, [3, 2], [2, 2], [1, 1], one, 3),
        },
        Case {
            name: "depthwise",
            spec: spec(2, 5, [8, 8], 5, [3, 3], one, one, one, 5),
        },
        Case {
            name: "depthwise_multiplier",
            spec: spec(2, 3, [7, 9], 6, [3, 3], [2, 1], one, one, 3),
        },
        // Strided depthwise layers (split into stride phases): MobileNet's 3 × 3 stride 2
        // on odd and even sizes, with a channel multiplier and dilation, and a 5 × 5
        // stride 3.
        Case {
            name: "depthwise_stride2",
            spec: spec(2, 6, [11, 10], 6, [3, 3], [2, 2], one, one, 6),
        },
        Case {
            name: "depthwise_stride2_multiplier_dilated",
            spec: spec(2, 3, [12, 9], 6, [3, 3], [2, 2], [2, 1], [2, 1], 3),
        },
        Case {
            name: "depthwise_stride3_5x5",
            spec: spec(1, 4, [13, 14], 4, [5, 5], [3, 3], [2, 2], one, 4),
        },
        Case {
            name: "depthwise_n1",
            spec: spec(1, 8, [10, 10], 8, [3, 3], one, one, one, 8),
        },
        Case {
            name: "kernel_1x5",
            spec: spec(2, 3, [6, 12], 4, [1, 5], one, [0, 2], one, 1),
        },
        Case {
            name: "kernel_5x2_nonsquare",
            spec: spec(2, 3, [11, 5], 2, [5, 2], one, [2, 0], one, 1),
        },
        Case {
            name: "pointwise_1x1",
            spec: spec(3, 8, [5, 7], 6, [1, 1], one, zero, one, 1),
        },
        Case {
            name: "pointwise_1x1_groups",
            spec: spec(2, 8, [5, 7], 6, [1, 1], one, zero, one, 2),
        },
        Case {
            name: "pointwise_1x1_n1",
            spec: spec(1, 24, [9, 9], 5, [1, 1], one, zero, one, 1),
        },
        Case {
            name: "1x1_stride2",
            spec: spec(2, 8, [9, 8], 6, [1, 1], [2, 2], zero, one, 1),
        },
        Case {
            name: "1x1_pad1",
            spec: spec(2, 4, [5, 5], 3, [1, 1], one, one, one, 1),
        },
        Case {
            name: "kernel_equals_padded_input",
            spec: spec(2, 3, [5, 4], 4, [7, 6], one, one, one, 1),
        },
        Case {
            name: "kernel_equals_input_no_pad",
            spec: spec(2, 3, [4, 4], 4, [4, 4], one, zero, one, 1),
        },
        // Valid convolutions (no padding, stride 1): the packing reads the input planes
        // in place instead of a padded copy. A single image, and groups.
        Case {
            name: "valid_single_image",
            spec: spec(1, 6, [9, 11], 20, [3, 3], one, zero, one, 1),
        },
        Case {
            name: "valid_grouped",
            spec: spec(2, 8, [7, 9], 8, [3, 3], one, zero, one, 2),
        },
        // Valid and read in place on the other routes: rows of 34 outputs (the forward
        // reading the column matrix in place, the wide weight gradient); pixel tiles
        // (rows of 14, 32 filters), batched and a single image.
        Case {
            name: "valid_wide",
            spec: spec(2, 4, [4, 36], 8, [3, 3], one, zero, one, 1),
        },
        Case {
            name: "valid_pixel_tiles",
            spec: spec(2, 4, [5, 16], 32, [3, 3], one, zero, one, 1),
        },
        Case {
            name: "valid_pixel_tiles_single_image",
            spec: spec(1, 4, [5, 16], 32, [3, 3], one, zero, one, 1),
        },
        Case {
            name: "stride_larger_than_kernel",
            spec: spec(2, 3, [11, 10], 4, [2, 2], [3, 4], zero, one, 1),
        },
        Case {
            name: "h1_1d_conv",
            spec: spec(2, 4, [1, 20], 5, [1, 3], one, [0, 1], one, 1),
        },
        Case {
            name: "h1_1d_stride_dilation",
            spec: spec(2, 3, [1, 25], 2, [1, 4], [1, 2], [0, 3], [1, 2], 1),
        },
        Case {
            name: "w1_column",
            spec: spec(2, 3, [15, 1], 2, [3, 1], [2, 1], [1, 0], one, 1),
        },
        Case {
            name: "batch1",
            spec: spec(1, 20, [12, 12], 7, [3, 3], one, one, one, 1),
        },
        Case {
            name: "batch7_more_than_threads",
            spec: spec(7, 3, [6, 6], 4, [3, 3], one, one, one, 1),
        },
        Case {
            name: "input_1x1",
            spec: spec(2, 3, [1, 1], 2, [3, 3], one, one, one, 1),
        },
        // Planes larger than one column tile, so the tile loops run several times.
        Case {
            name: "multi_tile",
            spec: spec(2, 64, [24, 24], 8, [3, 3], one, one, one, 1),
        },
        Case {
            name: "multi_tile_n1",
            spec: spec(1, 64, [24, 20], 8, [3, 3], [1, 1], [1, 1], one, 1),
        },
        // Few taps and 64 filters over long planes: the direct weight gradient
        // (`small_filter`) builds its flat dy in several bands of output rows.
        Case {
            name: "few_taps_many_bands",
            spec: spec(2, 1, [200, 100], 64, [3, 3], one, one, one, 1),
        },
        Case {
            name: "few_taps_stride2_many_bands",
            spec: spec(2, 1, [400, 300], 64, [3, 3], [2, 2], one, one, 1),
        },
        // A batched stride-2 layer with output rows of 48 pixels (51 per row in phase
        // planes): the forward reads its tap rows in place, as on the ResNet stem.
        Case {
            name: "stem_like_stride2_wide_rows",
            spec: spec(2, 3, [12, 96], 16, [7, 7], [2, 2], [3, 3], one, 1),
        },
        Case {
            name: "many_images_few_pixels",
            spec: spec(20, 2, [4, 4], 3, [2, 2], one, zero, one, 1),
        },
        // Depthwise rows wider than a vector: the 3×3 one takes the AVX-512 row kernel of
        // the forward with a masked last block (37 = 16 + 16 + 5 outputs), the 3×5 dilated
        // one the general path (16 outputs); more than 8 filters make several filter
        // blocks of the weight gradient, the last one partial (12 = 8 + 4, 20 = 8 + 8 + 4).
        Case {
            name: "depthwise_wide_rows",
            spec: spec(2, 12, [6, 37], 12, [3, 3], one, one, one, 12),
        },
        Case {
            name: "depthwise_wide_dilated_multiplier",
            spec: spec(2, 10, [5, 20], 20, [3, 5], one, [1, 2], [1, 2], 10),
        },
        // 3×3 depthwise with paddings 0 and 2: the row kernel's input delta pads dy by
        // 2 − pad (2 and 0), and masks columns on both sides or neither.
        Case {
            name: "depthwise_3x3_pad0",
            spec: spec(2, 6, [9, 20], 6, [3, 3], one, zero, one, 6),
        },
        Case {
            name: "depthwise_3x3_pad2",
            spec: spec(1, 4, [6, 18], 4, [3, 3], one, [2, 2], one, 4),
        },
        // Batched stride-1 layers with wide rows and >= 16 channels per group: the input
        // delta runs as the transposed forward (padding dil·(R−1) − pad: 1, 2 and 0).
        Case {
            name: "input_delta_as_transposed_forward",
            spec: spec(2, 16, [6, 40], 16, [3, 3], one, one, one, 1),
        },
        Case {
            name: "input_delta_transposed_grouped_dilated",
            spec: spec(2, 32, [5, 70], 24, [3, 3], one, [2, 2], [2, 2], 2),
        },
        Case {
            name: "input_delta_transposed_no_padding_left",
            spec: spec(2, 16, [4, 34], 16, [3, 3], one, [2, 2], one, 1),
        },
        // A single image with 40 filters: on 2 threads and more its output-channel blocks
        // (32 + 8) share one packed column matrix of 360 rows (2 depth blocks) by 99
        // pixels (3 full panels and a 3-column one); the input delta shares packed dy.
        Case {
            name: "single_image_shared_columns",
            spec: spec(1, 40, [9, 11], 40, [3, 3], one, one, one, 1),
        },
        // Batched stride-1 layers with narrow rows (12 padded columns for 10 outputs) and
        // at least as many channels as filters per group: the input delta runs as the
        // transposed forward packed from padded planes.
        Case {
            name: "input_delta_transposed_packed",
            spec: spec(2, 24, [10, 10], 16, [3, 3], one, one, one, 1),
        },
        Case {
            name: "input_delta_transposed_packed_grouped",
            spec: spec(2, 32, [7, 6], 32, [3, 3], one, one, one, 2),
        },
        // Pixel tiles (AVX-512: output rows a multiple of 14, filters of 32): tiles of 14
        // pixels × the filters of one panel, inputs read in place from padded planes.
        // Three images on 28-pixel rows, and the input delta as a transposed forward that
        // takes pixel tiles too (32 input channels); an uneven batch for two threads.
        Case {
            name: "pixel_tiles_3x3",
            spec: spec(3, 32, [6, 28], 64, [3, 3], one, one, one, 1),
        },
        // Strided and dilated: at stride 2 the planes keep their columns in order and
        // the kernel steps two elements per pixel; at stride 3, column phases make each
        // tap's inputs consecutive. Horizontal stride alone, too.
        Case {
            name: "pixel_tiles_stride2_dilated",
            spec: spec(2, 6, [30, 27], 32, [3, 3], [2, 2], one, [2, 1], 1),
        },
        Case {
            name: "pixel_tiles_stride_1x2",
            spec: spec(2, 5, [4, 28], 32, [3, 3], [1, 2], one, one, 1),
        },
        Case {
            name: "pixel_tiles_stride_1x3",
            spec: spec(2, 4, [5, 42], 32, [3, 3], [1, 3], one, one, 1),
        },
        // A single image (its panels split across tasks), 15 taps, uneven padding.
        Case {
            name: "pixel_tiles_single_image",
            spec: spec(1, 16, [5, 14], 64, [3, 5], one, [1, 2], one, 1),
        },
        // A single image of 13 channels (padded by runs of 2 channels in parallel) under
        // a 1 × 9 filter.
        Case {
            name: "pixel_tiles_single_image_1x9",
            spec: spec(1, 13, [4, 28], 32, [1, 9], one, [0, 4], one, 1),
        },
        // Padding deeper than the filter reaches: the first and last output rows read
        // nothing but padding (no filter row is kept for them), the others one or two of
        // the three filter rows.
        Case {
            name: "pixel_tiles_rows_of_padding",
            spec: spec(2, 4, [2, 14], 32, [3, 3], one, [3, 1], one, 1),
        },
        // Rows of 22 pixels, a tile of 14 then a short one of 8, dilated and padded so
        // that both edge tiles leave padding columns out; and rows of 16, two short
        // tiles, at stride 2.
        Case {
            name: "pixel_tiles_short_tiles_dilated",
            spec: spec(2, 8, [6, 22], 32, [3, 3], one, [2, 2], [2, 2], 1),
        },
        Case {
            name: "pixel_tiles_short_tiles_stride2",
            spec: spec(2, 5, [7, 32], 64, [3, 3], [2, 2], one, one, 1),
        },
        // 1 × 1 filters by pixel tiles, read from the image itself: a batch, a single
        // image (its panels split across tasks), and stride 2 (every other column).
        Case {
            name: "pixel_tiles_pointwise",
            spec: spec(3, 40, [3, 14], 32, [1, 1], one, zero, one, 1),
        },
        Case {
            name: "pixel_tiles_pointwise_single_image",
            spec: spec(1, 24, [2, 22], 64, [1, 1], one, zero, one, 1),
        },
        Case {
            name: "pixel_tiles_pointwise_stride2",
            spec: spec(2, 16, [5, 28], 32, [1, 1], [2, 2], zero, one, 1),
        },
        // A stem-like 7 × 7 stride-2 filter over 3 channels.
        Case {
            name: "pixel_tiles_7x7_stride2",
            spec: spec(2, 3, [9, 27], 32, [7, 7], [2, 2], [3, 3], one, 1),
        },
    ]
}

/// A random small valid spec (rejection-sampled), any groups.
pub fn random_spec(rng: &mut Rng) -> Conv2dSpec {
    valid_spec(rng, |rng| {
        let groups = rng.range(1, 3);
        spec(
            rng.range(1, 3),
            groups * rng.range(1, 4),
            [rng.range(1, 10), rng.range(1, 10)],
            groups * rng.range(1, 4),
            [rng.range(1, 4), rng.range(1, 4)],
            [rng.range(1, 3), rng.range(1, 3)],
            [rng.range(0, 3), rng.range(0, 3)],
            [rng.range(1, 3), rng.range(1, 3)],
            groups,
        )
    })
}

/// A random valid depthwise spec (`C/groups = 1`, channel multiplier 1–2): the direct
/// depthwise kernels' territory, with strides up to 4 (more stride phases than kernel
/// taps, or the reverse), dilation, and padding up to the kernel's reach.
pub fn random_depthwise_spec(rng: &mut Rng) -> Conv2dSpec {
    valid_spec(rng, |rng| {
        let channels = rng.range(1, 3);
        spec(
            rng.range(1, 2),
            channels,
            [rng.range(1, 12), rng.range(1, 12)],
            channels * rng.range(1, 2),
            [rng.range(1, 5), rng.range(1, 5)],
            [rng.range(1, 4), rng.range(1, 4)],
            [rng.range(0, 4), rng.range(0, 4)],
            [rng.range(1, 3), rng.range(1, 3)],
            channels,
        )
    })
}

/// Draws specs from `draw` until one is valid.
fn valid_spec(rng: &mut Rng, mut draw: impl FnMut(&mut Rng) -> Conv2dSpec) -> Conv2dSpec {
    loop {
        let s = draw(rng);
        if Conv2d::new(s).is_ok() {
            return s;
        }
    }
}

/// Largest absolute difference.
pub fn max_abs_diff<T: Element>(a: &[T], b: &[T]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.to_f64() - y.to_f64()).abs())
        .fold(0.0, f64::max)
}

/// The tolerance rule.
///
/// A sum of `L` products computed in any order with rounding unit `u = ε/2` has error at
/// most `(L − 1)·u·Σ|terms|` (Higham, Numerical Stability, §3.1; blocked and FMA summation
/// only lower it). The reference sums in f64 and rounds once to `T`, adding at most
/// `u·|ref| ≤ u·Σ|terms|`. So each element must satisfy
///
/// `|fast − ref| ≤ (L + 1)·ε·Σ|terms|`
///
/// (a factor 2 over the bound, no more). `Σ|terms|` comes from running the reference on
/// the absolute values of the inputs; `L` is the pass's reduction length. For f64 and the
/// battery's sizes this is about 1e-13 relative to the magnitude, for f32 about 1e-4.
pub fn assert_within<T: Element>(
    what: &str,
    fast: &[T],
    reference: &[T],
    magnitude: &[T],
    reduction_len: usize,
) {
    assert_eq!(fast.len(), reference.len());
    let eps = T::EPSILON.to_f64();
    for (i, ((f, r), m)) in fast.iter().zip(reference).zip(magnitude).enumerate() {
        let tol = (reduction_len as f64 + 1.0) * eps * m.to_f64();
        let err = (f.to_f64() - r.to_f64()).abs();
        assert!(
            err <= tol,
            "{what}: element {i}: fast {f} vs reference {r}: error {err:e} > tolerance {tol:e} (L = {reduction_len})"
        );
    }
}

/// Fails when a result is mostly zeros (as benchdnn does), so a kernel that writes nothing
/// cannot pass against a reference that happens to be small.
pub fn assert_not_mostly_zero<T: Element>(what: &str, v: &[T]) {
    let nonzero = v.iter().filter(|x| x.to_f64() != 0.0).count();
    assert!(
        v.is_empty() || nonzero * 2 >= v.len(),
        "{what}: only {nonzero} of {} values are non-zero",
        v.len()
    );
}

fn abs<T: Element>(v: &[T]) -> Vec<T> {
    v.iter().map(|x| x.abs()).collect()
}

/// Runs the three passes of `spec` (with or without bias) against the reference, on
/// random data, with the tolerance rule.
pub fn check_against_reference<T: Element>(name: &str, spec: &Conv2dSpec, bias: bool, seed: u64) {
    let conv = Conv2d::new(*spec).unwrap();
    let (xl, wl, yl, kl) = lens(&conv);
    let mut rng = Rng::new(seed);
    let x: Vec<T> = rng.floats(xl);
    let w: Vec<T> = rng.floats(wl);
    let dy: Vec<T> = rng.floats(yl);
    let b: Vec<T> = rng.floats(kl);
    let bias_opt = bias.then_some(&b[..]);
    let bias_abs = abs(&b);
    let (xa, wa, dya) = (abs(&x), abs(&w), abs(&dy));
    let [_, cg, r, s] = conv.weight_dims();
    let [_, k, p, q] = conv.output_dims();
    let kg = k / spec.groups;

    // forward: L = C/groups·R·S products + the bias
    let mut y = vec![T::ZERO; yl];
    let mut y_ref = vec![T::ZERO; yl];
    let mut y_mag = vec![T::ZERO; yl];
    conv.forward(&x, &w, bias_opt, &mut y).unwrap();
    reference::conv2d_forward(spec, &x, &w, bias_opt, &mut y_ref).unwrap();
    reference::conv2d_forward(spec, &xa, &wa, bias.then_some(&bias_abs[..]), &mut y_mag).unwrap();
    assert_within(
        &format!("{name} forward"),
        &y,
        &y_ref,
        &y_mag,
        cg * r * s + 1,
    );

    // input delta: each dx element sums at most K/groups·R·S products
    let mut dx = vec![T::ZERO; xl];
    let mut dx_ref = vec![T::ZERO; xl];
    let mut dx_mag = vec![T::ZERO; xl];
    conv.backward_data(&dy, &w, &mut dx).unwrap();
    reference::conv2d_backward_data(spec, &dy, &w, &mut dx_ref).unwrap();
    reference::conv2d_backward_data(spec, &dya, &wa, &mut dx_mag).unwrap();
    assert_within(
        &format!("{name} backward_data"),
        &dx,
        &dx_ref,
        &dx_mag,
        kg * r * s,
    );

    // weight gradient: each dw element sums N·P·Q products; db sums N·P·Q values
    let mut dw = vec![T::ZERO; wl];
    let mut dw_ref = vec![T::ZERO; wl];
    let mut dw_mag = vec![T::ZERO; wl];
    let mut db = vec![T::ZERO; kl];
    let mut db_ref = vec![T::ZERO; kl];
    let mut db_mag = vec![T::ZERO; kl];
    conv.backward_weights(&x, &dy, &mut dw, bias.then_some(&mut db[..]))
        .unwrap();
    reference::conv2d_backward_weights(spec, &x, &dy, &mut dw_ref, Some(&mut db_ref)).unwrap();
    reference::conv2d_backward_weights(spec, &xa, &dya, &mut dw_mag, Some(&mut db_mag)).unwrap();
    let l = spec.batch * p * q;
    assert_within(
        &format!("{name} backward_weights dw"),
        &dw,
        &dw_ref,
        &dw_mag,
        l,
    );
    if bias {
        assert_within(
            &format!("{name} backward_weights db"),
            &db,
            &db_ref,
            &db_mag,
            l,
        );
    }
}

/// Runs the three passes on small-integer data and requires bit-for-bit equality with the
/// reference (every sum is exact, so the summation order cannot matter).
pub fn check_exact<T: Element>(name: &str, spec: &Conv2dSpec, seed: u64) {
    let conv = Conv2d::new(*spec).unwrap();
    let (xl, wl, yl, kl) = lens(&conv);
    let mut rng = Rng::new(seed);
    let x: Vec<T> = rng.small_ints(xl);
    let w: Vec<T> = rng.small_ints(wl);
    let dy: Vec<T> = rng.small_ints(yl);
    let b: Vec<T> = rng.small_ints(kl);

    let mut y = vec![T::ZERO; yl];
    let mut y_ref = vec![T::ZERO; yl];
    conv.forward(&x, &w, Some(&b), &mut y).unwrap();
    reference::conv2d_forward(spec, &x, &w, Some(&b), &mut y_ref).unwrap();
    assert!(
        y == y_ref,
        "{name}: forward differs from the reference on exact data"
    );

    let mut dx = vec![T::ONE; xl];
    let mut dx_ref = vec![T::ZERO; xl];
    conv.backward_data(&dy, &w, &mut dx).unwrap();
    reference::conv2d_backward_data(spec, &dy, &w, &mut dx_ref).unwrap();
    assert!(
        dx == dx_ref,
        "{name}: backward_data differs from the reference on exact data"
    );

    let mut dw = vec![T::ONE; wl];
    let mut dw_ref = vec![T::ZERO; wl];
    let mut db = vec![T::ONE; kl];
    let mut db_ref = vec![T::ZERO; kl];
    conv.backward_weights(&x, &dy, &mut dw, Some(&mut db))
        .unwrap();
    reference::conv2d_backward_weights(spec, &x, &dy, &mut dw_ref, Some(&mut db_ref)).unwrap();
    assert!(
        dw == dw_ref,
        "{name}: backward_weights dw differs from the reference on exact data"
    );
    assert!(
        db == db_ref,
        "{name}: backward_weights db differs from the reference on exact data"
    );
}
