//! Naive reference implementations: direct loops over every output and kernel tap,
//! accumulated in `f64`, written for obviousness rather than speed.
//!
//! They take the same arguments as the [`Conv2d`](crate::Conv2d) methods, with the spec
//! in place of the plan, validate the same way, and are the ground truth the fast passes
//! are tested against.

use crate::element::Element;
use crate::error::ConvError;
use crate::shape::{Axis, Conv2dSpec, ConvGeometry};

/// The input index that output position `o` reads at kernel tap `t` along `axis`, or
/// `None` where it falls into the padding. In `usize`: `o·stride + t·dilation` is below the
/// padded input size, which fits, while a cast to `isize` would not for strides or
/// paddings above `isize::MAX / 2`.
fn unpadded(axis: &Axis, o: usize, t: usize) -> Option<usize> {
    let padded = o * axis.stride + t * axis.dilation;
    padded.checked_sub(axis.padding).filter(|&i| i < axis.input)
}

/// Calls `f(n, k, oh, ow, c, r, s, x_index)` for every (output pixel, tap) pair whose input
/// index lies inside the image (taps that land in the padding contribute zero).
fn for_each_tap(geo: &ConvGeometry, mut f: impl FnMut([usize; 4], usize, usize, usize)) {
    let (cg, kg) = (geo.channels_per_group, geo.filters_per_group);
    for n in 0..geo.batch {
        for k in 0..geo.out_channels {
            let g = k / kg;
            for oh in 0..geo.h.output {
                for ow in 0..geo.w.output {
                    let y_index =
                        ((n * geo.out_channels + k) * geo.h.output + oh) * geo.w.output + ow;
                    for c in 0..cg {
                        for r in 0..geo.h.kernel {
                            let Some(ih) = unpadded(&geo.h, oh, r) else {
                                continue;
                            };
                            for s in 0..geo.w.kernel {
                                let Some(iw) = unpadded(&geo.w, ow, s) else {
                                    continue;
                                };
                                let x_index = ((n * geo.in_channels + g * cg + c) * geo.h.input
                                    + ih)
                                    * geo.w.input
                                    + iw;
                                let w_index = ((k * cg + c) * geo.h.kernel + r) * geo.w.kernel + s;
                                f([n, k, oh, ow], y_index, x_index, w_index);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Reference forward pass: `y[n,k,p,q] = bias[k] + Σ_{c,r,s} w[k,c,r,s] · x[n, g·C/groups + c, ih, iw]`.
/// Shapes and errors as [`Conv2d::forward`](crate::Conv2d::forward).
pub fn conv2d_forward<T: Element>(
    spec: &Conv2dSpec,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
) -> Result<(), ConvError> {
    let geo = ConvGeometry::new(spec)?;
    geo.check_x("x", x.len())?;
    geo.check_w("w", w.len())?;
    if let Some(b) = bias {
        geo.check_bias("bias", b.len())?;
    }
    geo.check_y("y", y.len())?;
    let mut acc = vec![0.0f64; y.len()];
    for_each_tap(&geo, |_, yi, xi, wi| {
        acc[yi] += x[xi].to_f64() * w[wi].to_f64()
    });
    for (i, (out, a)) in y.iter_mut().zip(&acc).enumerate() {
        let k = (i / geo.out_plane) % geo.out_channels;
        let b = bias.map_or(0.0, |b| b[k].to_f64());
        *out = T::from_f64(a + b);
    }
    Ok(())
}

/// Reference input delta: `dx[n, c, ih, iw] = Σ over the (k, p, q, r, s) that read it of
/// w[k, c, r, s] · dy[n, k, p, q]`. Shapes and errors as
/// [`Conv2d::backward_data`](crate::Conv2d::backward_data).
pub fn conv2d_backward_data<T: Element>(
    spec: &Conv2dSpec,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
) -> Result<(), ConvError> {
    let geo = ConvGeometry::new(spec)?;
    geo.check_y("dy", dy.len())?;
    geo.check_w("w", w.len())?;
    geo.check_x("dx", dx.len())?;
    let mut acc = vec![0.0f64; dx.len()];
    for_each_tap(&geo, |_, yi, xi, wi| {
        acc[xi] += dy[yi].to_f64() * w[wi].to_f64()
    });
    for (out, a) in dx.iter_mut().zip(&acc) {
        *out = T::from_f64(*a);
    }
    Ok(())
}

/// Reference weight gradient: `dw[k,c,r,s] = Σ_{n,p,q} dy[n,k,p,q] · x[n, g·C/groups + c, ih, iw]`
/// and `db[k] = Σ_{n,p,q} dy[n,k,p,q]`. Shapes and errors as
/// [`Conv2d::backward_weights`](crate::Conv2d::backward_weights).
pub fn conv2d_backward_weights<T: Element>(
    spec: &Conv2dSpec,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: Option<&mut [T]>,
) -> Result<(), ConvError> {
    let geo = ConvGeometry::new(spec)?;
    geo.check_x("x", x.len())?;
    geo.check_y("dy", dy.len())?;
    geo.check_w("dw", dw.len())?;
    if let Some(b) = &db {
        geo.check_bias("db", b.len())?;
    }
    let mut acc = vec![0.0f64; dw.len()];
    for_each_tap(&geo, |_, yi, xi, wi| {
        acc[wi] += dy[yi].to_f64() * x[xi].to_f64()
    });
    for (out, a) in dw.iter_mut().zip(&acc) {
        *out = T::from_f64(*a);
    }
    if let Some(db) = db {
        let mut sums = vec![0.0f64; db.len()];
        for (i, v) in dy.iter().enumerate() {
            sums[(i / geo.out_plane) % geo.out_channels] += v.to_f64();
        }
        for (out, s) in db.iter_mut().zip(&sums) {
            *out = T::from_f64(*s);
        }
    }
    Ok(())
}
