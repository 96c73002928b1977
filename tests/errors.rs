//! Every `ConvError` the conv API can return, with its variant and its message.

use convgemm::{Conv2d, Conv2dSpec, ConvError, reference};

fn base() -> Conv2dSpec {
    Conv2dSpec {
        batch: 2,
        in_channels: 4,
        in_h: 8,
        in_w: 8,
        out_channels: 6,
        kernel: [3, 3],
        ..Default::default()
    }
}

fn err(spec: Conv2dSpec) -> ConvError {
    let e = Conv2d::new(spec).unwrap_err();
    // The reference validates identically.
    let r = reference::conv2d_forward::<f32>(&spec, &[], &[], None, &mut []).unwrap_err();
    assert_eq!(e, r);
    e
}

#[test]
fn zero_sizes() {
    type Setter = fn(&mut Conv2dSpec);
    let fields: [(&str, Setter); 12] = [
        ("batch", |s| s.batch = 0),
        ("in_channels", |s| s.in_channels = 0),
        ("in_h", |s| s.in_h = 0),
        ("in_w", |s| s.in_w = 0),
        ("out_channels", |s| s.out_channels = 0),
        ("kernel[0]", |s| s.kernel[0] = 0),
        ("kernel[1]", |s| s.kernel[1] = 0),
        ("stride[0]", |s| s.stride[0] = 0),
        ("stride[1]", |s| s.stride[1] = 0),
        ("dilation[0]", |s| s.dilation[0] = 0),
        ("dilation[1]", |s| s.dilation[1] = 0),
        ("groups", |s| s.groups = 0),
    ];
    for (field, set) in fields {
        let mut s = base();
        set(&mut s);
        let e = err(s);
        assert_eq!(e, ConvError::ZeroSize { field });
        assert_eq!(
            e.to_string(),
            format!("{field} is 0; every size, stride, dilation and groups must be at least 1")
        );
    }
    // The default spec has zero sizes: it must be filled in.
    assert!(matches!(
        Conv2d::new(Conv2dSpec::default()),
        Err(ConvError::ZeroSize { field: "batch" })
    ));
}

#[test]
fn groups_must_divide_channels() {
    for (c, k, g) in [(4, 6, 3), (6, 4, 3), (4, 6, 4), (3, 3, 5)] {
        let e = err(Conv2dSpec {
            in_channels: c,
            out_channels: k,
            groups: g,
            ..base()
        });
        assert_eq!(
            e,
            ConvError::GroupsMismatch {
                groups: g,
                in_channels: c,
                out_channels: k
            }
        );
        assert_eq!(
            e.to_string(),
            format!("groups {g} must divide both in_channels {c} and out_channels {k}")
        );
    }
}

#[test]
fn kernel_larger_than_padded_input() {
    let e = err(Conv2dSpec {
        kernel: [11, 3],
        padding: [1, 0],
        ..base()
    });
    assert_eq!(
        e,
        ConvError::KernelTooLarge {
            axis: "height",
            kernel_extent: 11,
            padded_input: 10
        }
    );
    assert_eq!(
        e.to_string(),
        "kernel height with dilation spans 11 but the padded input height is only 10; \
         expected dilation × (kernel − 1) + 1 <= input + 2 × padding"
    );
    // Dilation makes a small kernel too large.
    let e = err(Conv2dSpec {
        kernel: [3, 3],
        dilation: [1, 5],
        ..base()
    });
    assert_eq!(
        e,
        ConvError::KernelTooLarge {
            axis: "width",
            kernel_extent: 11,
            padded_input: 8
        }
    );
    // Exactly fitting is fine (P = 1).
    assert_eq!(
        Conv2d::new(Conv2dSpec {
            kernel: [10, 8],
            padding: [1, 0],
            ..base()
        })
        .unwrap()
        .output_dims(),
        [2, 6, 1, 1]
    );
}

#[test]
fn overflowing_sizes() {
    let huge = usize::MAX / 2;
    let cases = [
        (
            Conv2dSpec {
                padding: [huge, 0],
                ..base()
            },
            "padded input height: 8 + 2 × padding",
        ),
        (
            Conv2dSpec {
                kernel: [3, 3],
                dilation: [huge + 1, 1],
                ..base()
            },
            "dilated kernel height: dilation",
        ),
        (
            Conv2dSpec {
                batch: huge,
                ..base()
            },
            "x: N",
        ),
        (
            Conv2dSpec {
                in_h: 1 << 40,
                in_w: 1 << 40,
                ..base()
            },
            "x: N 2 × C 4 × H 1099511627776 × W 1099511627776",
        ),
        (
            Conv2dSpec {
                out_channels: 1 << 62,
                in_channels: 2,
                groups: 2,
                ..base()
            },
            "w: K",
        ),
        // The buffer would exceed isize::MAX bytes without overflowing usize.
        (
            Conv2dSpec {
                batch: 1 << 20,
                in_channels: 1 << 20,
                in_h: 1 << 10,
                in_w: 1 << 10,
                ..base()
            },
            "x: N 1048576",
        ),
    ];
    for (spec, prefix) in cases {
        let e = err(spec);
        match &e {
            ConvError::TooLarge { what } => assert!(
                what.starts_with(prefix),
                "{what:?} should start with {prefix:?}"
            ),
            other => panic!("expected TooLarge for {spec:?}, got {other:?}"),
        }
        assert!(
            e.to_string()
                .ends_with("does not fit in memory (overflows usize or exceeds isize::MAX bytes)")
        );
    }
}

#[test]
fn wrong_buffer_lengths() {
    let spec = Conv2dSpec {
        batch: 1,
        in_channels: 1,
        in_h: 8,
        in_w: 8,
        out_channels: 64,
        kernel: [3, 3],
        ..base()
    };
    let conv = Conv2d::new(spec).unwrap();
    let (x, w, y, b) = (
        vec![0.0f32; 64],
        vec![0.0f32; 576],
        vec![0.0f32; 64 * 36],
        vec![0.0f32; 64],
    );
    let msg = |e: ConvError| e.to_string();

    let e = conv.forward(&x, &w[1..], None, &mut y.clone()).unwrap_err();
    assert_eq!(
        e,
        ConvError::BufferLength {
            buffer: "w",
            actual: 575,
            expected: 576,
            formula: "K 64 × C/groups 1 × R 3 × S 3".into()
        }
    );
    assert_eq!(
        msg(e),
        "w has 575 elements, expected 576 = K 64 × C/groups 1 × R 3 × S 3"
    );
    assert_eq!(
        msg(conv.forward(&x[1..], &w, None, &mut y.clone()).unwrap_err()),
        "x has 63 elements, expected 64 = N 1 × C 1 × H 8 × W 8"
    );
    assert_eq!(
        msg(conv
            .forward(&x, &w, Some(&b[..3]), &mut y.clone())
            .unwrap_err()),
        "bias has 3 elements, expected 64 = K 64"
    );
    assert_eq!(
        msg(conv.forward(&x, &w, None, &mut [0.0; 1]).unwrap_err()),
        "y has 1 elements, expected 2304 = N 1 × K 64 × P 6 × Q 6"
    );
    assert_eq!(
        msg(conv.backward_data(&y[..5], &w, &mut x.clone()).unwrap_err()),
        "dy has 5 elements, expected 2304 = N 1 × K 64 × P 6 × Q 6"
    );
    assert_eq!(
        msg(conv.backward_data(&y, &w, &mut vec![0.0; 65]).unwrap_err()),
        "dx has 65 elements, expected 64 = N 1 × C 1 × H 8 × W 8"
    );
    assert_eq!(
        msg(conv
            .backward_weights(&x, &y, &mut vec![0.0; 577], None)
            .unwrap_err()),
        "dw has 577 elements, expected 576 = K 64 × C/groups 1 × R 3 × S 3"
    );
    assert_eq!(
        msg(conv
            .backward_weights(&x, &y, &mut w.clone(), Some(&mut [0.0; 63]))
            .unwrap_err()),
        "db has 63 elements, expected 64 = K 64"
    );
    // The reference checks the same way.
    assert_eq!(
        msg(
            reference::conv2d_backward_weights(&spec, &x, &y, &mut vec![0.0f32; 577], None)
                .unwrap_err()
        ),
        "dw has 577 elements, expected 576 = K 64 × C/groups 1 × R 3 × S 3"
    );
    // A failed call leaves outputs untouched.
    let mut y_sentinel = vec![7.0f32; 2304];
    assert!(conv.forward(&x[1..], &w, None, &mut y_sentinel).is_err());
    assert!(y_sentinel.iter().all(|v| *v == 7.0));
}

#[test]
fn errors_are_std_errors() {
    fn takes_error(_: &dyn std::error::Error) {}
    takes_error(&err(Conv2dSpec {
        groups: 0,
        ..base()
    }));
}
