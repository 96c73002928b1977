use super::*;
use convgemm::ndarray::{conv2d_backward_data_into, conv2d_backward_weights, conv2d_into};
use ndarray::{Array, s};
use std::panic::{AssertUnwindSafe, catch_unwind};

const BATCH: usize = 3;

fn data<T: Element>() -> (Array4<T>, Array4<T>) {
    (
        lcg_array([BATCH, 2, 9, 9], 10, 1.0),
        lcg_array([BATCH, 2, 5, 5], 11, 1.0),
    )
}

#[test]
fn gradients_match_central_differences() {
    let net = TwoLayerNet::<f64>::new(BATCH).unwrap();
    let (x, t) = data::<f64>();
    let (x, t) = (x.view(), t.view());
    let (_, g) = net.loss_and_grads(&x, &t).unwrap();
    let eps = 1e-6;
    // A few entries of every parameter, each nudged both ways.
    let probes: [(&str, usize); 4] = [("w1", 0), ("b1", 1), ("w2", 2), ("b2", 3)];
    for (name, seed) in probes {
        for i in 0..5 {
            let loss_at = |delta: f64| {
                let mut n = net.clone();
                let p: &mut [f64] = match name {
                    "w1" => n.w1.as_slice_mut().unwrap(),
                    "b1" => n.b1.as_slice_mut().unwrap(),
                    "w2" => n.w2.as_slice_mut().unwrap(),
                    _ => n.b2.as_slice_mut().unwrap(),
                };
                let j = (i * 7 + seed) % p.len();
                p[j] += delta;
                (j, n.loss(&x, &t).unwrap())
            };
            let ((j, up), (_, down)) = (loss_at(eps), loss_at(-eps));
            let numeric = (up - down) / (2.0 * eps);
            let analytic = match name {
                "w1" => g.dw1.as_slice().unwrap()[j],
                "b1" => g.db1[j],
                "w2" => g.dw2.as_slice().unwrap()[j],
                _ => g.db2[j],
            };
            assert!(
                (numeric - analytic).abs() <= 1e-6 * (1.0 + analytic.abs()),
                "{name}[{j}]: finite difference {numeric}, backprop {analytic}"
            );
        }
    }
    assert!(g.dw1.iter().filter(|v| **v != 0.0).count() > g.dw1.len() / 2);
}

#[test]
fn sgd_learns_in_f32() {
    let mut net = TwoLayerNet::<f32>::new(BATCH).unwrap();
    let (x, t) = data::<f32>();
    let first = net.loss(&x.view(), &t.view()).unwrap();
    for _ in 0..30 {
        let (_, g) = net.loss_and_grads(&x.view(), &t.view()).unwrap();
        net.sgd_step(&g, 0.02);
    }
    let last = net.loss(&x.view(), &t.view()).unwrap();
    assert!(last < 0.8 * first, "loss {first} -> {last}");
}

/// A batch of 6 as micro-batches of 2 + 4, accumulated into one set of gradients: exactly
/// the sum of the two micro-batches' own gradients (the accumulating call adds the
/// overwriting call's bits). How close that is to the whole batch's gradient (the sums over
/// images regrouped) is convgemm's own test (`tests/accumulate.rs`).
#[test]
fn micro_batch_gradients_accumulate() {
    let full = TwoLayerNet::<f64>::new(6).unwrap();
    let x = lcg_array::<f64>([6, 2, 9, 9], 21, 1.0);
    let target = lcg_array::<f64>([6, 2, 5, 5], 22, 1.0);
    let mut acc = full.zero_grads();
    let mut parts = Vec::new();
    for (start, len) in [(0, 2), (2, 4)] {
        let net = TwoLayerNet {
            conv1: Conv2dSpec {
                batch: len,
                ..full.conv1
            },
            conv2: Conv2dSpec {
                batch: len,
                ..full.conv2
            },
            ..full.clone()
        };
        let xs = x.slice(s![start..start + len, .., .., ..]);
        let ts = target.slice(s![start..start + len, .., .., ..]);
        net.accumulate_grads(&xs, &ts, &mut acc).unwrap();
        parts.push(net.loss_and_grads(&xs, &ts).unwrap().1);
    }
    assert!(acc.dw1.iter().all(|v| *v != 0.0));
    assert_eq!(acc.dw1, &parts[0].dw1 + &parts[1].dw1);
    assert_eq!(acc.db1, &parts[0].db1 + &parts[1].db1);
    assert_eq!(acc.dw2, &parts[0].dw2 + &parts[1].dw2);
    assert_eq!(acc.db2, &parts[0].db2 + &parts[1].db2);
}

#[test]
fn one_network_serves_many_threads_with_identical_results() {
    let net = TwoLayerNet::<f32>::new(BATCH).unwrap();
    let (x, _) = data::<f32>();
    let y = net.forward(&x.view()).unwrap().y;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| net.forward(&x.view()).unwrap().y))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), y);
        }
    });
}

/// Runs `f`, failing the test if it panics or succeeds; returns the error's message.
fn error_of<R>(what: &str, f: impl FnOnce() -> Result<R, ConvError>) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(!msg.is_empty(), "{what}: empty message");
            msg
        }
        Ok(Ok(_)) => panic!("{what}: expected an error, got Ok"),
        Err(_) => panic!("{what}: panicked instead of returning an error"),
    }
}

fn valid() -> Conv2dSpec {
    TwoLayerNet::<f32>::new(2).unwrap().conv2
}

#[test]
fn every_documented_spec_error_is_an_err() {
    type Edit = fn(&mut Conv2dSpec);
    let zero: [(&str, Edit); 12] = [
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
    for (field, edit) in zero {
        let mut spec = valid();
        edit(&mut spec);
        let msg = error_of(field, || Conv2d::new(spec));
        assert!(msg.starts_with(field), "{msg}");
    }
    let others: [(&str, Edit); 7] = [
        ("groups", |s| s.groups = 3),
        ("kernel height", |s| s.kernel[0] = 12),
        ("kernel width", |s| s.dilation[1] = 6),
        ("padded input", |s| s.padding[0] = usize::MAX),
        ("dilated kernel", |s| s.dilation[0] = usize::MAX),
        ("x:", |s| {
            s.batch = usize::MAX / 4;
            s.in_h = 1 << 20;
        }),
        ("w:", |s| {
            s.in_channels = 2;
            s.groups = 2;
            s.out_channels = usize::MAX / 2 + 1;
        }),
    ];
    for (fragment, edit) in others {
        let mut spec = valid();
        edit(&mut spec);
        let msg = error_of(fragment, || Conv2d::new(spec));
        assert!(msg.contains(fragment), "{fragment}: {msg}");
        // The ndarray functions validate the same spec first.
        let x = Array4::<f32>::zeros((1, 1, 1, 1));
        error_of(fragment, || conv2d(&x.view(), &x.view(), None, &spec));
    }
}

#[test]
fn every_documented_buffer_error_is_an_err() {
    let conv = Conv2d::new(valid()).unwrap();
    let len = |d: [usize; 4]| d.iter().product::<usize>();
    let (xl, wl, yl) = (
        len(conv.input_dims()),
        len(conv.weight_dims()),
        len(conv.output_dims()),
    );
    let k = conv.output_dims()[1];
    let v = |n: usize| vec![0.0f32; n];
    for (name, (x, w, b, y)) in [
        ("x", (xl - 1, wl, k, yl)),
        ("w", (xl, wl + 1, k, yl)),
        ("bias", (xl, wl, k + 1, yl)),
        ("y", (xl, wl, k, 0)),
    ] {
        let msg = error_of(name, || conv.forward(&v(x), &v(w), Some(&v(b)), &mut v(y)));
        assert!(msg.starts_with(&format!("{name} has")), "{msg}");
    }
    for (name, (dy, w, dx)) in [
        ("dy", (yl + 3, wl, xl)),
        ("w", (yl, 1, xl)),
        ("dx", (yl, wl, xl * 2)),
    ] {
        let msg = error_of(name, || conv.backward_data(&v(dy), &v(w), &mut v(dx)));
        assert!(msg.starts_with(&format!("{name} has")), "{msg}");
    }
    for (name, (x, dy, dw, db)) in [
        ("x", (0, yl, wl, k)),
        ("dy", (xl, yl - 1, wl, k)),
        ("dw", (xl, yl, wl - 1, k)),
        ("db", (xl, yl, wl, 0)),
    ] {
        let msg = error_of(name, || {
            conv.backward_weights(&v(x), &v(dy), &mut v(dw), Some(&mut v(db)))
        });
        assert!(msg.starts_with(&format!("{name} has")), "{msg}");
    }
}

#[test]
fn every_documented_array_error_is_an_err() {
    let spec = valid();
    let conv = Conv2d::new(spec).unwrap();
    let x = Array4::<f64>::zeros(conv.input_dims());
    let w = Array4::<f64>::zeros(conv.weight_dims());
    let dy = Array4::<f64>::zeros(conv.output_dims());
    let b = Array1::<f64>::zeros(2);
    let x_wrong = Array4::<f64>::zeros((2, 4, 9, 8));

    // Shapes.
    let msg = error_of("x shape", || {
        conv2d(&x_wrong.view(), &w.view(), None, &spec)
    });
    assert!(msg.contains("expected [2, 4, 9, 9]"), "{msg}");
    error_of("w shape", || conv2d(&x.view(), &x.view(), None, &spec));
    error_of("bias shape", || {
        conv2d(&x.view(), &w.view(), Some(b.slice(s![..1])), &spec)
    });
    error_of("dy shape", || {
        conv2d_backward_data(&x.view(), &w.view(), &spec)
    });
    error_of("dy shape", || {
        conv2d_backward_weights(&x.view(), &x.view(), &spec, true)
    });
    let mut y = Array4::<f64>::zeros((2, 2, 5, 4));
    error_of("y shape", || {
        conv2d_into(&x.view(), &w.view(), None, &spec, y.view_mut())
    });

    // Layouts: the same shapes, strided, transposed or reversed.
    let mut x_t = x.view();
    x_t.swap_axes(2, 3);
    let msg = error_of("x layout", || conv2d(&x_t, &w.view(), None, &spec));
    assert!(msg.contains("standard layout"), "{msg}");
    let w_rev = w.slice(s![.., .., ..;-1, ..]);
    error_of("w layout", || conv2d(&x.view(), &w_rev, None, &spec));
    let b_wide = Array1::<f64>::zeros(4);
    error_of("bias layout", || {
        conv2d(&x.view(), &w.view(), Some(b_wide.slice(s![..;2])), &spec)
    });
    let big = Array::<f64, _>::zeros((2, 2, 5, 10));
    let dy_strided = big.slice(s![.., .., .., ..;2]);
    error_of("dy layout", || {
        conv2d_backward_data(&dy_strided, &w.view(), &spec)
    });
    let mut dx = Array4::<f64>::zeros(conv.input_dims());
    let mut dx_t = dx.view_mut();
    dx_t.swap_axes(2, 3);
    error_of("dx layout", || {
        conv2d_backward_data_into(&dy.view(), &w.view(), &spec, dx_t)
    });
    let mut db = Array1::<f64>::zeros(4);
    let mut dw = Array4::<f64>::zeros(conv.weight_dims());
    error_of("db layout", || {
        conv2d_backward_weights_into(
            &x.view(),
            &dy.view(),
            &spec,
            dw.view_mut(),
            Some(db.slice_mut(s![..;2])),
        )
    });
}
