//! Shapes the fuzzers (`fuzz/`) found wrong, kept as regression tests. Each test says
//! which target found it and what went wrong.

use convgemm::{Conv2d, Conv2dSpec, ConvError, Pass, reference};

/// conv_never_panics: a stride above `isize::MAX` with a padding near 2^62 gives a valid
/// 2-row output, but the reference computed the input row as
/// `(oh·stride + r·dilation) as isize − padding as isize`, which overflows `isize` for
/// `oh = 1` (a panic in debug builds, the fuzz build included). The row index is now
/// computed in `usize`, comparing with the padding first.
#[test]
fn reference_huge_stride_and_padding() {
    let spec = Conv2dSpec {
        batch: 1,
        in_channels: 1,
        in_h: 1,
        in_w: 1,
        out_channels: 1,
        kernel: [1, 1],
        stride: [1 << 63, 1],
        padding: [1 << 62, 0],
        ..Default::default()
    };
    let conv = Conv2d::new(spec).unwrap();
    assert_eq!(conv.output_dims(), [1, 1, 2, 1]);
    let (x, w) = ([3.0f64], [2.0f64]);
    let (mut y, mut y_ref) = ([f64::NAN; 2], [f64::NAN; 2]);
    conv.forward(&x, &w, None, &mut y).unwrap();
    reference::conv2d_forward(&spec, &x, &w, None, &mut y_ref).unwrap();
    // Both output rows read only padding.
    assert_eq!(y, [0.0, 0.0]);
    assert_eq!(y_ref, [0.0, 0.0]);
    let mut dx_ref = [f64::NAN];
    reference::conv2d_backward_data(&spec, &[1.0, 1.0], &w, &mut dx_ref).unwrap();
    assert_eq!(dx_ref, [0.0]);
    let mut dw_ref = [f64::NAN];
    reference::conv2d_backward_weights(&spec, &x, &[1.0, 1.0], &mut dw_ref, None).unwrap();
    assert_eq!(dw_ref, [0.0]);
}

/// conv_never_panics: `Conv2d::workspace` multiplies the column-tile and partial-sum
/// element counts by the element size; for a valid plan with weights near the
/// `isize::MAX`-bytes limit (`C = 2^60 − 1`, a 1×1 kernel, padding 3, so 4 pixel tiles)
/// that overflowed `usize` (a panic in debug builds, a wrong size in release). Validation
/// now also requires the passes' scratch (16-pixel column tiles, 8 weight-sized partial
/// sums) to fit in `isize::MAX` bytes, so such plans are `TooLarge` and every plan that
/// passes has a workspace that can be counted in bytes.
#[test]
fn workspace_of_the_largest_plans() {
    let edges = [
        (1usize << 60) - 1,
        1 << 57,
        (1 << 57) - 1,
        1 << 56,
        (1 << 56) - 1,
        (1 << 56) - 2,
        1 << 55,
        (1 << 53) + 1,
    ];
    let mut valid = 0;
    for &c in &edges {
        for &k in &[1usize, 2, 7, 1 << 20] {
            for &(batch, pad) in &[(1, 3), (2, 3), (8, 0), (1, 0)] {
                let spec = Conv2dSpec {
                    batch,
                    in_channels: c,
                    in_h: 1,
                    in_w: 1,
                    out_channels: k,
                    kernel: [1, 1],
                    padding: [pad, pad],
                    ..Default::default()
                };
                let conv = match Conv2d::new(spec) {
                    Ok(conv) => conv,
                    Err(ConvError::TooLarge { .. }) => continue,
                    Err(e) => panic!("{spec:?}: unexpected {e}"),
                };
                valid += 1;
                for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardWeights] {
                    let ws = conv.workspace::<f64>(pass);
                    assert!(ws.column_bytes_per_task <= isize::MAX as usize, "{spec:?}");
                    assert!(ws.partial_bytes <= isize::MAX as usize, "{spec:?}");
                    assert!(ws.packed_weight_bytes <= isize::MAX as usize, "{spec:?}");
                    let _ = conv.workspace::<f32>(pass);
                }
            }
        }
    }
    assert!(valid > 0);
    // The first edge: valid before the scratch check, now rejected with a message that
    // names the scratch.
    let err = Conv2d::new(Conv2dSpec {
        batch: 1,
        in_channels: (1 << 60) - 1,
        in_h: 1,
        in_w: 1,
        out_channels: 1,
        kernel: [1, 1],
        padding: [3, 3],
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("column tile: "), "{err}");
}

/// Found by `conv_never_panics` in CI on the phase-split lowering: a stride far larger than
/// the input width made the phased planes `stride_w × H × 1` long (overflowing `usize`
/// near 2^63; wasting memory long before). Only the phases that hold a column are stored.
#[test]
fn huge_width_stride_with_phase_split() {
    for stride in [7usize, 1 << 20, 1 << 62] {
        let spec = Conv2dSpec {
            batch: 2,
            in_channels: 3,
            in_h: 5,
            in_w: 5,
            out_channels: 2,
            kernel: [3, 3],
            stride: [1, stride],
            padding: [1, 1],
            ..Default::default()
        };
        check_all_passes(spec);
    }
}

/// A depthwise layer whose padding dwarfs its planes (legal: only the kernel must fit)
/// must not materialize a padded plane of that size: it takes the GEMM path, and every
/// pass still matches the reference.
#[test]
fn depthwise_with_padding_far_beyond_the_kernel() {
    for (padding, stride) in [(40usize, 40usize), (1 << 20, 1 << 21), (1 << 40, 1 << 41)] {
        let spec = Conv2dSpec {
            batch: 2,
            in_channels: 4,
            in_h: 4,
            in_w: 3,
            out_channels: 4,
            kernel: [3, 3],
            stride: [stride, stride],
            padding: [padding, padding],
            groups: 4,
            ..Default::default()
        };
        let conv = Conv2d::new(spec).unwrap();
        let ws = conv.workspace::<f64>(convgemm::Pass::Forward);
        assert!(ws.column_bytes_per_task < 1 << 20, "{padding}: {ws:?}");
        check_all_passes(spec);
    }
}

/// Found by `conv_never_panics` on the row-phased padded layout (the direct weight
/// gradient asks for it in `Conv2d::workspace`): a padded height near 2^64 with a stride
/// that does not divide it made `row phases × rows per phase` overflow `usize`. Such a
/// layout is now refused (the passes lower without it); the overflow panics in debug and
/// fuzz builds, and in release the passes must still match the reference.
#[test]
fn row_phases_of_a_height_near_usize_max() {
    let spec = Conv2dSpec {
        batch: 2,
        in_channels: 1,
        in_h: 1,
        in_w: 3,
        out_channels: 2,
        kernel: [1, 1],
        stride: [1 << 63, 1],
        padding: [(1 << 63) - 1, 0],
        ..Default::default()
    };
    let conv = Conv2d::new(spec).unwrap();
    for pass in [
        convgemm::Pass::Forward,
        convgemm::Pass::BackwardData,
        convgemm::Pass::BackwardWeights,
    ] {
        let ws = conv.workspace::<f32>(pass);
        assert!(ws.column_bytes_per_task < 1 << 20, "{pass:?}: {ws:?}");
    }
    check_all_passes(spec);
}

/// Found by `conv_never_panics` right after the padded planes gained row phases: with a
/// single output row, `stride_h · row_len` (the step between output rows, never taken)
/// overflowed `usize` in the weight gradient's packer; likewise the tap stepping of a
/// one-row kernel with a huge dilation. Both are now computed only where they are real.
#[test]
fn huge_height_stride_and_dilation() {
    for (stride, dilation) in [(1usize << 62, 1usize), (3, 1 << 62), (1 << 62, 1 << 62)] {
        let spec = Conv2dSpec {
            batch: 2,
            in_channels: 3,
            in_h: 5,
            in_w: 6,
            out_channels: 2,
            kernel: [1, 3],
            stride: [stride, 1],
            padding: [1, 1],
            dilation: [dilation, 1],
            ..Default::default()
        };
        check_all_passes(spec);
    }
}

/// Found by `conv_never_panics` on the padded planes: with a width stride near
/// `usize::MAX` and a padding wider than a phase index, the first image column of a
/// phase, `lo·stride + phase − pad`, overflowed before it was clamped (the phase holds
/// no image column).
#[test]
fn width_stride_near_usize_max_with_wide_padding() {
    for stride in [usize::MAX - 1, usize::MAX] {
        let spec = Conv2dSpec {
            batch: 2,
            in_channels: 2,
            in_h: 4,
            in_w: 5,
            out_channels: 2,
            kernel: [3, 3],
            stride: [1, stride],
            padding: [1, 3],
            ..Default::default()
        };
        check_all_passes(spec);
    }
}

/// All three passes of `spec` against the reference on small-integer data (exact).
fn check_all_passes(spec: Conv2dSpec) {
    let conv = Conv2d::new(spec).unwrap();
    let [n, c, h, w] = conv.input_dims();
    let [_, k, p, q] = conv.output_dims();
    let x: Vec<f64> = (0..n * c * h * w).map(|i| (i % 5) as f64 - 2.0).collect();
    let wt: Vec<f64> = (0..conv.weight_dims().iter().product())
        .map(|i| (i % 3) as f64 - 1.0)
        .collect();
    let dy: Vec<f64> = (0..n * k * p * q).map(|i| (i % 7) as f64 - 3.0).collect();
    let (mut y, mut y_ref) = (vec![0.0; dy.len()], vec![0.0; dy.len()]);
    conv.forward(&x, &wt, None, &mut y).unwrap();
    reference::conv2d_forward(&spec, &x, &wt, None, &mut y_ref).unwrap();
    assert_eq!(y, y_ref, "{spec:?} forward");
    let (mut dx, mut dx_ref) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    conv.backward_data(&dy, &wt, &mut dx).unwrap();
    reference::conv2d_backward_data(&spec, &dy, &wt, &mut dx_ref).unwrap();
    assert_eq!(dx, dx_ref, "{spec:?} backward_data");
    let (mut dw, mut dw_ref) = (vec![0.0; wt.len()], vec![0.0; wt.len()]);
    conv.backward_weights(&x, &dy, &mut dw, None).unwrap();
    reference::conv2d_backward_weights(&spec, &x, &dy, &mut dw_ref, None).unwrap();
    assert_eq!(dw, dw_ref, "{spec:?} backward_weights");
}

/// Found by `conv_never_panics` on main: a valid depthwise plan with a huge padding (a
/// 2.6·10¹⁷-row output) passed the padded-plane bound relative to the planes, but the
/// bytes of its padded scratch overflowed `usize` in `Conv2d::workspace`. Such plans now
/// take the GEMM path, whose scratch is bounded by validation. (The overflow panics in
/// debug builds and the fuzz build; `cargo test` without `--release` catches a regression,
/// and the reported sizes must stay sane in any build.)
#[test]
fn depthwise_workspace_of_astronomical_planes() {
    let spec = Conv2dSpec {
        batch: 1,
        in_channels: 2,
        in_h: 1,
        in_w: 2,
        out_channels: 2,
        kernel: [3, 2],
        stride: [1, 3],
        padding: [128102389400760776, 2],
        dilation: [2, 2],
        groups: 2,
    };
    let conv = Conv2d::new(spec).unwrap();
    for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardWeights] {
        let (w64, w32) = (conv.workspace::<f64>(pass), conv.workspace::<f32>(pass));
        assert!(
            w64.column_bytes_per_task <= isize::MAX as usize,
            "{pass:?}: {w64:?}"
        );
        assert!(
            w32.column_bytes_per_task <= w64.column_bytes_per_task,
            "{pass:?}: {w32:?} vs {w64:?}"
        );
    }
}

/// conv_never_panics (allocation guard): 317 channels of a 1 × 1 input with padding 7 × 16
/// (and a dilation near 2^23 that leaves one kernel row) were padded per channel to
/// 15 × 33 planes, which the padded layout accepted because each channel stayed within a
/// fixed per-channel allowance: 1.25 MB per image in f64, two images in flight, over the
/// guard's limit for buffers of a few KB. The allowance now covers the whole image, so
/// each task's scratch stays near the 1 MiB column tile.
#[test]
fn padded_copy_of_many_tiny_channels() {
    let spec = Conv2dSpec {
        batch: 2,
        in_channels: 317,
        in_h: 1,
        in_w: 1,
        out_channels: 1,
        kernel: [1, 1],
        stride: [2, 1],
        padding: [7, 16],
        dilation: [8_281_344, 1],
        groups: 1,
    };
    let conv = Conv2d::new(spec).unwrap();
    assert_eq!(conv.output_dims(), [2, 1, 8, 33]);
    for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardWeights] {
        let ws = conv.workspace::<f64>(pass);
        assert!(
            ws.column_bytes_per_task <= 1 << 20,
            "{pass:?}: {ws:?} for buffers of a few KB"
        );
    }
    check_all_passes(spec);
}

/// conv_never_panics (allocation guard): the strided depthwise forward split each padded
/// plane into `stride_w` column phases, so a stride far wider than the row (here 2^20 over
/// a 3-column row) allocated 2^20 phase planes, nearly all empty. Only the phases that
/// hold a column are kept (`min(stride_w, W + 2·pad_w)`), so the scratch stays within
/// two padded planes; the forward still matches the reference.
#[test]
fn depthwise_stride_wider_than_the_row() {
    let spec = Conv2dSpec {
        batch: 1,
        in_channels: 2,
        in_h: 5,
        in_w: 3,
        out_channels: 2,
        kernel: [3, 3],
        stride: [2, 1 << 20],
        padding: [1, 0],
        dilation: [1, 1],
        groups: 2,
    };
    let conv = Conv2d::new(spec).unwrap();
    let padded_plane = (5 + 2) * 3 * size_of::<f64>();
    let ws = conv.workspace::<f64>(Pass::Forward);
    assert!(
        ws.column_bytes_per_task <= 2 * padded_plane,
        "{ws:?} against a padded plane of {padded_plane} bytes"
    );
    let x: Vec<f64> = (0..2 * 5 * 3).map(|i| i as f64 * 0.25 - 3.0).collect();
    let w: Vec<f64> = (0..2 * 9).map(|i| 1.0 - i as f64 * 0.125).collect();
    let mut y = vec![0.0; conv.output_dims().iter().product()];
    conv.forward(&x, &w, None, &mut y).unwrap();
    let mut want = vec![0.0; y.len()];
    convgemm::reference::conv2d_forward(&spec, &x, &w, None, &mut want).unwrap();
    // Small integers and quarters: every product and sum is exact.
    assert_eq!(y, want);
}

/// Found by `conv_never_panics` in CI: splitting an output row into pixel tiles of 14 and
/// 8 tried every count of long tiles, one by one, so planning a layer `2^40` pixels wide
/// (valid, if never allocated) with an odd width spun for hours on the AVX-512 path. The split now tries the
/// four counts that can differ (`row_tiles`). Planning such layers returns at once.
#[test]
fn pixel_tiles_of_an_astronomically_wide_row() {
    // Odd widths have no split: the old loop ran through all 2^40 / 14 counts.
    for in_w in [(1usize << 40) + 1, (1 << 40) + 6, (1 << 44) + 3] {
        let spec = Conv2dSpec {
            batch: 2,
            // 8 channels: a reduction (72) too long for the direct kernel, which would
            // take the layer before pixel tiles are asked.
            in_channels: 8,
            in_h: 3,
            in_w,
            out_channels: 32,
            kernel: [3, 3],
            padding: [1, 1],
            ..Default::default()
        };
        if let Ok(conv) = Conv2d::new(spec) {
            for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardWeights] {
                let _ = conv.workspace::<f32>(pass);
                let _ = conv.workspace::<f64>(pass);
            }
            let mut y = [0.0f32; 4];
            assert!(conv.forward(&[1.0], &[1.0; 2304], None, &mut y).is_err());
        }
    }
}
