//! Shapes the fuzzers (`fuzz/`) found wrong, kept as regression tests. Each test says
//! which target found it and what went wrong.

use convgemm::{Conv2d, Conv2dSpec, reference};

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
