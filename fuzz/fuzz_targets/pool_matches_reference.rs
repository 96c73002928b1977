//! `pool_matches_reference`: `MaxPool2d` and `AvgPool2d` (both `count_include_pad`
//! settings) on a small arbitrary `Pool2dSpec`, against the naive PyTorch-semantics
//! reference in this file.
//!
//! NOTE: needs the pooling API of issue 4 (`convgemm::{MaxPool2d, AvgPool2d, Pool2dSpec}`).
//! Until it is in the tree this file is not listed in `fuzz/Cargo.toml` nor run by `.ci/run`;
//! `fuzz/README.md` has the lines that enable it.
//!
//! Checked for each input:
//! - validity: `MaxPool2d::new` and `AvgPool2d::new` succeed exactly when the reference's
//!   rules hold (every size ≥ 1, padding ≤ kernel / 2, kernel ≤ padded input); an invalid
//!   spec is an `Err`, never a panic; `output_dims` is `[N, C, P, Q]` with
//!   `P = (H + 2·pad − kernel) / stride + 1` (floor mode);
//! - max pool forward: `y` and `argmax` bit for bit (ties: the first maximum in row-major
//!   window order; `argmax` is the flat index `h·W + w` into the input plane); backward
//!   (`dx` zeroed, each `dy` added at its argmax) within the tolerance rule, with `L` the
//!   most windows that can share an input element, `⌈R/stride_h⌉·⌈S/stride_w⌉`;
//! - average pool forward and backward within the tolerance rule (`L = R·S` forward,
//!   `⌈R/stride_h⌉·⌈S/stride_w⌉` backward); the divisor is `R·S` with
//!   `count_include_pad`, else the number of window elements inside the input;
//! - every output element is written (outputs start as NaN, `argmax` as `u32::MAX`);
//! - hostile input: with flag bit 5, an argmax entry outside its plane makes `backward`
//!   return `Err(InvalidValue)`; with flag bit 6, a buffer one element too long or short
//!   makes each call return `Err(BufferLength)`.
//!
//! Input layout (one byte per field, 0 when the input is shorter):
//!
//! | byte | field | decoded |
//! |---|---|---|
//! | 0 | flags | bit 0 count_include_pad, bits 1–2 data mode (uniform, small ints, wide magnitudes, sparse), bit 3 also f32, bit 4 big planes, bit 5 corrupt an argmax, bit 6 wrong buffer lengths |
//! | 1 | batch | `% 4` |
//! | 2 | channels | `% 5` |
//! | 3, 4 | in_h, in_w | `% 13`, or `% 49` with bit 4 |
//! | 5, 6 | kernel | `% 6` |
//! | 7, 8 | stride | `% 5` |
//! | 9, 10 | padding | `% 4` |
//! | 11–18 | data seed | little-endian `u64` |
#![no_main]

use convgemm::{AvgPool2d, ConvError, Element, MaxPool2d, Pool2dSpec};
use convgemm_fuzz::*;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

struct Case {
    spec: Pool2dSpec,
    include_pad: bool,
    mode: DataMode,
    f32_too: bool,
    corrupt_argmax: bool,
    wrong_lengths: bool,
    seed: u64,
}

fn decode(data: &[u8]) -> Case {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let batch = (b.u8() % 4) as usize;
    let channels = (b.u8() % 5) as usize;
    let plane = if flags & 16 != 0 { 49 } else { 13 };
    let mut pair = |m: u8| [(b.u8() % m) as usize, (b.u8() % m) as usize];
    let in_hw = pair(plane);
    let kernel = pair(6);
    let stride = pair(5);
    let padding = pair(4);
    let seed = b.u64();
    Case {
        spec: Pool2dSpec {
            batch,
            channels,
            in_h: in_hw[0],
            in_w: in_hw[1],
            kernel,
            stride,
            padding,
        },
        include_pad: flags & 1 != 0,
        mode: DataMode::from_bits(flags >> 1),
        f32_too: flags & 8 != 0,
        corrupt_argmax: flags & 32 != 0,
        wrong_lengths: flags & 64 != 0,
        seed,
    }
}

/// The naive reference: PyTorch's max_pool2d / avg_pool2d in floor mode, in f64.
mod naive {
    use super::Pool2dSpec;

    /// `[P, Q]` if the spec is valid.
    pub fn output_hw(s: &Pool2dSpec) -> Option<[usize; 2]> {
        let sizes = [
            s.batch,
            s.channels,
            s.in_h,
            s.in_w,
            s.kernel[0],
            s.kernel[1],
        ];
        if sizes.contains(&0) || s.stride.contains(&0) {
            return None;
        }
        let mut out = [0; 2];
        for (a, input) in [s.in_h, s.in_w].into_iter().enumerate() {
            let (k, st, p) = (s.kernel[a], s.stride[a], s.padding[a]);
            if p > k / 2 || k > input + 2 * p {
                return None;
            }
            out[a] = (input + 2 * p - k) / st + 1;
        }
        Some(out)
    }

    /// The input positions `(ih, iw)` of window `(oh, ow)` that lie inside the input, in
    /// row-major window order.
    pub fn window(s: &Pool2dSpec, oh: usize, ow: usize) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for r in 0..s.kernel[0] {
            let ih = (oh * s.stride[0] + r) as isize - s.padding[0] as isize;
            if ih < 0 || ih as usize >= s.in_h {
                continue;
            }
            for c in 0..s.kernel[1] {
                let iw = (ow * s.stride[1] + c) as isize - s.padding[1] as isize;
                if iw < 0 || iw as usize >= s.in_w {
                    continue;
                }
                v.push((ih as usize, iw as usize));
            }
        }
        v
    }

    /// Calls `f(plane, oh, ow, y_index)` for every output element.
    pub fn for_each_output(s: &Pool2dSpec, mut f: impl FnMut(usize, usize, usize, usize)) {
        let [p, q] = output_hw(s).expect("valid spec");
        for plane in 0..s.batch * s.channels {
            for oh in 0..p {
                for ow in 0..q {
                    f(plane, oh, ow, (plane * p + oh) * q + ow);
                }
            }
        }
    }

    /// Max pool forward: (y, argmax), the first maximum in window order.
    pub fn max_forward(s: &Pool2dSpec, x: &[f64]) -> (Vec<f64>, Vec<u32>) {
        let [p, q] = output_hw(s).unwrap();
        let len = s.batch * s.channels * p * q;
        let (mut y, mut arg) = (vec![0.0; len], vec![0u32; len]);
        let hw = s.in_h * s.in_w;
        for_each_output(s, |plane, oh, ow, yi| {
            let mut best: Option<(f64, usize)> = None;
            for (ih, iw) in window(s, oh, ow) {
                let i = ih * s.in_w + iw;
                let v = x[plane * hw + i];
                if best.is_none_or(|(b, _)| v > b) {
                    best = Some((v, i));
                }
            }
            let (v, i) = best.expect("a window always overlaps the input");
            y[yi] = v;
            arg[yi] = i as u32;
        });
        (y, arg)
    }

    /// Max pool backward: each dy added at its argmax.
    pub fn max_backward(s: &Pool2dSpec, dy: &[f64], arg: &[u32]) -> Vec<f64> {
        let hw = s.in_h * s.in_w;
        let mut dx = vec![0.0; s.batch * s.channels * hw];
        for_each_output(s, |plane, _, _, yi| {
            dx[plane * hw + arg[yi] as usize] += dy[yi]
        });
        dx
    }

    fn divisor(s: &Pool2dSpec, include_pad: bool, oh: usize, ow: usize) -> f64 {
        if include_pad {
            (s.kernel[0] * s.kernel[1]) as f64
        } else {
            window(s, oh, ow).len() as f64
        }
    }

    pub fn avg_forward(s: &Pool2dSpec, include_pad: bool, x: &[f64]) -> Vec<f64> {
        let [p, q] = output_hw(s).unwrap();
        let hw = s.in_h * s.in_w;
        let mut y = vec![0.0; s.batch * s.channels * p * q];
        for_each_output(s, |plane, oh, ow, yi| {
            let sum: f64 = window(s, oh, ow)
                .iter()
                .map(|&(ih, iw)| x[plane * hw + ih * s.in_w + iw])
                .sum();
            y[yi] = sum / divisor(s, include_pad, oh, ow);
        });
        y
    }

    pub fn avg_backward(s: &Pool2dSpec, include_pad: bool, dy: &[f64]) -> Vec<f64> {
        let hw = s.in_h * s.in_w;
        let mut dx = vec![0.0; s.batch * s.channels * hw];
        for_each_output(s, |plane, oh, ow, yi| {
            let share = dy[yi] / divisor(s, include_pad, oh, ow);
            for (ih, iw) in window(s, oh, ow) {
                dx[plane * hw + ih * s.in_w + iw] += share;
            }
        });
        dx
    }
}

fn to_f64<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

fn check<T: Element>(case: &Case, max: &MaxPool2d, avg: &AvgPool2d, x64: &[f64], dy64: &[f64]) {
    let s = &case.spec;
    let ty = std::any::type_name::<T>();
    // The data as T, and the reference run on exactly those values.
    let (x, dy): (Vec<T>, Vec<T>) = (convert(x64), convert(dy64));
    let (xr, dyr) = (to_f64(&x), to_f64(&dy));
    let dy_abs: Vec<f64> = dyr.iter().map(|v| v.abs()).collect();
    let x_abs: Vec<f64> = xr.iter().map(|v| v.abs()).collect();
    let nan = T::from_f64(f64::NAN);
    let l_back = s.kernel[0].div_ceil(s.stride[0]) * s.kernel[1].div_ceil(s.stride[1]);

    // Max pool.
    let (y_ref, arg_ref) = naive::max_forward(s, &xr);
    let mut y = vec![nan; dy.len()];
    let mut arg = vec![u32::MAX; dy.len()];
    max.forward(&x, &mut y, &mut arg).expect("max forward");
    assert_bits_equal(&format!("{ty} max forward"), &y, &convert::<T>(&y_ref));
    assert_eq!(arg, arg_ref, "{ty} max forward argmax");
    let mut dx = vec![nan; x.len()];
    max.backward(&dy, &arg, &mut dx).expect("max backward");
    let dx_ref = convert::<T>(&naive::max_backward(s, &dyr, &arg_ref));
    let dx_mag = convert::<T>(&naive::max_backward(s, &dy_abs, &arg_ref));
    assert_within(&format!("{ty} max backward"), &dx, &dx_ref, &dx_mag, l_back);

    // Average pool.
    let inc = case.include_pad;
    let mut y = vec![nan; dy.len()];
    avg.forward(&x, &mut y).expect("avg forward");
    let y_ref = convert::<T>(&naive::avg_forward(s, inc, &xr));
    let y_mag = convert::<T>(&naive::avg_forward(s, inc, &x_abs));
    let l_fwd = s.kernel[0] * s.kernel[1];
    assert_within(
        &format!("{ty} avg forward (include_pad {inc})"),
        &y,
        &y_ref,
        &y_mag,
        l_fwd,
    );
    let mut dx = vec![nan; x.len()];
    avg.backward(&dy, &mut dx).expect("avg backward");
    let dx_ref = convert::<T>(&naive::avg_backward(s, inc, &dyr));
    let dx_mag = convert::<T>(&naive::avg_backward(s, inc, &dy_abs));
    assert_within(
        &format!("{ty} avg backward (include_pad {inc})"),
        &dx,
        &dx_ref,
        &dx_mag,
        l_back,
    );

    if case.corrupt_argmax && !arg.is_empty() {
        let mut rng = Rng::new(case.seed ^ 0xA5A5);
        let j = rng.below(arg.len() as u64) as usize;
        arg[j] = match rng.below(3) {
            0 => (s.in_h * s.in_w) as u32,
            1 => (s.in_h * s.in_w + 1 + rng.below(1000) as usize) as u32,
            _ => u32::MAX,
        };
        let mut dx = vec![nan; x.len()];
        let r = max.backward(&dy, &arg, &mut dx);
        assert!(
            matches!(r, Err(ConvError::InvalidValue { .. })),
            "{ty} max backward with argmax[{j}] = {} outside the plane: {r:?}",
            arg[j]
        );
    }

    if case.wrong_lengths {
        let longer = |v: &[T]| {
            let mut v = v.to_vec();
            v.push(T::ZERO);
            v
        };
        let shorter = |v: &[T]| v[..v.len().saturating_sub(1)].to_vec();
        let is_len_err =
            |r: Result<(), ConvError>| matches!(r, Err(ConvError::BufferLength { .. }));
        let mut y = vec![nan; dy.len()];
        let mut arg = vec![0u32; dy.len()];
        let mut dx = vec![nan; x.len()];
        assert!(
            is_len_err(max.forward(&longer(&x), &mut y, &mut arg)),
            "max forward x + 1"
        );
        assert!(
            is_len_err(max.forward(&x, &mut longer(&y), &mut arg)),
            "max forward y + 1"
        );
        let mut arg_long = arg.clone();
        arg_long.push(0);
        assert!(
            is_len_err(max.forward(&x, &mut y, &mut arg_long)),
            "max forward argmax + 1"
        );
        assert!(
            is_len_err(max.backward(&longer(&dy), &arg, &mut dx)),
            "max backward dy + 1"
        );
        assert!(
            is_len_err(max.backward(&dy, &arg, &mut longer(&dx))),
            "max backward dx + 1"
        );
        assert!(
            is_len_err(avg.forward(&longer(&x), &mut y)),
            "avg forward x + 1"
        );
        assert!(
            is_len_err(avg.backward(&dy, &mut longer(&dx))),
            "avg backward dx + 1"
        );
        if !x.is_empty() {
            assert!(
                is_len_err(avg.forward(&shorter(&x), &mut y)),
                "avg forward x - 1"
            );
            assert!(
                is_len_err(max.backward(&dy, &arg, &mut shorter(&dx))),
                "max backward dx - 1"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    init();
    let case = decode(data);
    let s = case.spec;
    let expected = naive::output_hw(&s);
    let max = MaxPool2d::new(s);
    let avg = AvgPool2d::new(s, case.include_pad);
    if debug() {
        eprintln!(
            "{s:?} include_pad {} {:?} -> {expected:?}",
            case.include_pad, case.mode
        );
    }
    let (max, avg) = match (max, avg, expected) {
        (Ok(max), Ok(avg), Some(_)) => (max, avg),
        (Err(e1), Err(e2), None) => {
            let _ = (e1.to_string(), e2.to_string());
            return;
        }
        (max, avg, expected) => panic!(
            "{s:?}: MaxPool2d::new {:?}, AvgPool2d::new {:?}, reference output {expected:?}",
            max.map(|_| ()),
            avg.map(|_| ())
        ),
    };
    let [p, q] = expected.unwrap();
    let dims = [s.batch, s.channels, p, q];
    assert_eq!(max.output_dims(), dims, "MaxPool2d::output_dims of {s:?}");
    assert_eq!(avg.output_dims(), dims, "AvgPool2d::output_dims of {s:?}");
    let mut rng = Rng::new(case.seed);
    let x = draw(&mut rng, case.mode, s.batch * s.channels * s.in_h * s.in_w);
    let dy = draw(&mut rng, case.mode, dims.iter().product());
    check::<f64>(&case, &max, &avg, &x, &dy);
    if case.f32_too {
        check::<f32>(&case, &max, &avg, &x, &dy);
    }
});
