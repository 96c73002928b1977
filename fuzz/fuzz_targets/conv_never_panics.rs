//! `conv_never_panics`: an arbitrary `Conv2dSpec` with unrestricted sizes (zeros, huge
//! values, products that overflow `usize`) and calls with buffers of arbitrary, often
//! wrong, lengths and arbitrary values (NaN, infinities, subnormals).
//!
//! Checked for each input:
//! - `Conv2d::new` and every method (dims, flops, workspace for each pass and element
//!   type, the three passes) return `Ok` or `Err`, never panic (the fuzz build has debug
//!   assertions and overflow checks on, so an arithmetic overflow is a panic too);
//! - every call of a pass returns the same result as the reference function given the
//!   same spec and buffers (the same `Err`, or both `Ok`);
//! - a call holds at most `conv_scratch_limit` extra heap bytes for the buffers it was
//!   given (the allocator aborts before a larger request reaches the system), so sizes are
//!   checked before anything is allocated.
//!
//! The buffers the target allocates stay small: a length is the plan's exact length (or
//! that ± a small delta) only when it is at most `MAX_LEN`, else a tiny one.
//!
//! Input layout (`fuzz/seeds/make_seeds.py` writes seeds in it): 14 size fields in the
//! order batch, in_channels, in_h, in_w, out_channels, kernel[0], kernel[1], stride[0],
//! stride[1], padding[0], padding[1], dilation[0], dilation[1], groups. Each is a tag
//! byte, `tag % 8`: 0–4 small (`next byte % 8` indexes `SMALL`, so zeros decode to 1),
//! 5 special (`next byte` indexes `SPECIAL`), 6 quotient (`next byte`: a limit of `LIMITS`
//! divided by the product of the fields before, ± 1), 7 raw (next 8 bytes, little-endian).
//! Then up to 8 operations, each an op byte (`% 8`: forward, backward_data,
//! backward_weights, each in f32 or f64, then `workspace`/dims, then reference-only
//! forward) followed by one length selector per buffer (two bytes: kind `% 4`: exact,
//! exact + delta (second byte as i8), tiny (second byte), empty) and, for the bias / db,
//! a presence byte. Missing bytes read as 0.
#![no_main]

use convgemm::{Conv2d, Conv2dSpec, ConvError, Element, Pass, reference};
use convgemm_fuzz::*;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// Largest buffer the target allocates (elements). Also bounds the work of a call that
/// passes every check: at most `MAX_LEN²` multiply-adds per pass.
const MAX_LEN: usize = 1024;

/// Sizes at the edges: overflow of products and of `2·padding`, `isize::MAX` bytes, the
/// `u32`/`i32` limits, and powers of two whose products land exactly on a limit.
const SPECIAL: [usize; 24] = [
    0,
    1,
    2,
    3,
    u32::MAX as usize,
    (u32::MAX as usize) + 1,
    i32::MAX as usize,
    1 << 20,
    1 << 30,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 59,
    1 << 60,
    (1 << 60) - 1,
    1 << 61,
    1 << 62,
    1 << 63,
    (1 << 63) + 1,
    isize::MAX as usize,
    isize::MAX as usize / 8,
    isize::MAX as usize / 8 + 1,
    usize::MAX / 2 - 1,
    usize::MAX,
];

/// Small sizes, in the order an input byte picks them: an all-zero input decodes to a
/// valid 1×1 spec (padding 1), from which single mutations reach the edges.
const SMALL: [usize; 8] = [1, 2, 3, 0, 4, 5, 7, 16];

/// Products the quotient mode aims at: the element limit of a buffer (`isize::MAX` bytes
/// of `f64`), `usize::MAX`, the scratch limits, `u32::MAX`.
const LIMITS: [usize; 4] = [
    isize::MAX as usize / 8,
    usize::MAX,
    isize::MAX as usize / 64,
    u32::MAX as usize,
];

/// One size field; `before` is the saturating product of the fields decoded so far.
fn size(b: &mut Bytes, before: usize) -> usize {
    match b.u8() % 8 {
        0..=4 => SMALL[(b.u8() % 8) as usize],
        5 => SPECIAL[b.u8() as usize % SPECIAL.len()],
        6 => {
            // Lands a product exactly on (or one off) a limit.
            let arg = b.u8();
            let q = LIMITS[(arg % 4) as usize] / before.max(1);
            q.wrapping_add(((arg >> 2) % 3) as usize).wrapping_sub(1)
        }
        _ => b.u64() as usize,
    }
}

fn decode_spec(b: &mut Bytes) -> Conv2dSpec {
    let mut f = [0usize; 14];
    let mut before = 1usize;
    for v in &mut f {
        *v = size(b, before);
        before = before.saturating_mul((*v).max(1));
    }
    Conv2dSpec {
        batch: f[0],
        in_channels: f[1],
        in_h: f[2],
        in_w: f[3],
        out_channels: f[4],
        kernel: [f[5], f[6]],
        stride: [f[7], f[8]],
        padding: [f[9], f[10]],
        dilation: [f[11], f[12]],
        groups: f[13],
    }
}

/// A buffer length: the plan's (`expected`, `None` when there is no valid plan) or near
/// it, or tiny; never more than `MAX_LEN`.
fn length(b: &mut Bytes, expected: Option<usize>) -> usize {
    let kind = b.u8() % 4;
    let arg = b.u8();
    let len = match (kind, expected) {
        (0, Some(e)) => e,
        (1, Some(e)) => e.wrapping_add_signed(arg as i8 as isize),
        (3, _) => 0,
        _ => arg as usize,
    };
    if len <= MAX_LEN { len } else { len % 64 }
}

/// Values that must not upset anything: NaN, infinities, signed zeros, subnormals, extremes.
fn values<T: Element>(len: usize, salt: usize) -> Vec<T> {
    const V: [f64; 10] = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        1.0,
        -2.5,
        f64::MIN_POSITIVE / 4.0,
        f64::MAX,
        f64::MIN,
    ];
    (0..len)
        .map(|i| T::from_f64(V[(i + salt) % V.len()]))
        .collect()
}

/// The lengths a valid plan expects: (x, w, y, K).
fn expected(conv: &Conv2d) -> [usize; 4] {
    let prod = |d: [usize; 4]| d.iter().product::<usize>();
    [
        prod(conv.input_dims()),
        prod(conv.weight_dims()),
        prod(conv.output_dims()),
        conv.output_dims()[1],
    ]
}

fn bytes<T>(lens: &[usize]) -> Vec<usize> {
    lens.iter().map(|l| l * size_of::<T>()).collect()
}

/// Runs `fast` under the allocation guard, then `reference` on copies of the same buffers;
/// both must agree.
fn compare(
    what: &str,
    spec: &Conv2dSpec,
    buffer_bytes: &[usize],
    fast: impl FnOnce() -> Result<(), ConvError>,
    reference: impl FnOnce() -> Result<(), ConvError>,
) {
    let limit = conv_scratch_limit(buffer_bytes);
    let (fast, peak) = guarded(limit, fast);
    assert!(peak <= limit, "{what}: {peak} bytes held, limit {limit}");
    if let Err(e) = &fast {
        let _ = e.to_string();
    }
    let (reference, _) = guarded(limit, reference);
    assert_eq!(
        fast, reference,
        "{what}: fast and reference disagree on {spec:?}"
    );
}

fn forward<T: Element>(b: &mut Bytes, spec: &Conv2dSpec, conv: Option<&Conv2d>, fast: bool) {
    let e = conv.map(expected);
    let pick = |i: usize| e.map(|e| e[i]);
    let (xl, wl) = (length(b, pick(0)), length(b, pick(1)));
    let bias_len = (b.u8() & 1 != 0).then(|| length(b, pick(3)));
    let yl = length(b, pick(2));
    let (x, w) = (values::<T>(xl, 0), values::<T>(wl, 3));
    let bias = bias_len.map(|l| values::<T>(l, 7));
    let (mut y, mut y_ref) = (values::<T>(yl, 1), values::<T>(yl, 1));
    let buffers = bytes::<T>(&[xl, wl, yl, bias_len.unwrap_or(0)]);
    match conv {
        Some(conv) if fast => compare(
            "forward",
            spec,
            &buffers,
            || conv.forward(&x, &w, bias.as_deref(), &mut y),
            || reference::conv2d_forward(spec, &x, &w, bias.as_deref(), &mut y_ref),
        ),
        _ => {
            // No plan, or the reference alone: it must not panic or over-allocate either,
            // and without a plan it fails like `Conv2d::new`.
            let (r, _) = guarded(conv_scratch_limit(&buffers), || {
                reference::conv2d_forward(spec, &x, &w, bias.as_deref(), &mut y_ref)
            });
            if let Err(e) = Conv2d::new(*spec) {
                assert_eq!(r, Err(e), "reference and Conv2d::new disagree on {spec:?}");
            }
        }
    }
}

fn backward_data<T: Element>(b: &mut Bytes, spec: &Conv2dSpec, conv: Option<&Conv2d>) {
    let e = conv.map(expected);
    let pick = |i: usize| e.map(|e| e[i]);
    let (yl, wl, xl) = (length(b, pick(2)), length(b, pick(1)), length(b, pick(0)));
    let (dy, w) = (values::<T>(yl, 2), values::<T>(wl, 5));
    let (mut dx, mut dx_ref) = (values::<T>(xl, 4), values::<T>(xl, 4));
    let buffers = bytes::<T>(&[yl, wl, xl]);
    match conv {
        Some(conv) => compare(
            "backward_data",
            spec,
            &buffers,
            || conv.backward_data(&dy, &w, &mut dx),
            || reference::conv2d_backward_data(spec, &dy, &w, &mut dx_ref),
        ),
        None => {
            let (r, _) = guarded(conv_scratch_limit(&buffers), || {
                reference::conv2d_backward_data(spec, &dy, &w, &mut dx_ref)
            });
            assert!(
                r.is_err(),
                "reference accepts a spec Conv2d::new rejects: {spec:?}"
            );
        }
    }
}

fn backward_weights<T: Element>(b: &mut Bytes, spec: &Conv2dSpec, conv: Option<&Conv2d>) {
    let e = conv.map(expected);
    let pick = |i: usize| e.map(|e| e[i]);
    let (xl, yl, wl) = (length(b, pick(0)), length(b, pick(2)), length(b, pick(1)));
    let db_len = (b.u8() & 1 != 0).then(|| length(b, pick(3)));
    let (x, dy) = (values::<T>(xl, 6), values::<T>(yl, 8));
    let (mut dw, mut dw_ref) = (values::<T>(wl, 9), values::<T>(wl, 9));
    let mut db = db_len.map(|l| values::<T>(l, 0));
    let mut db_ref = db.clone();
    let buffers = bytes::<T>(&[xl, yl, wl, db_len.unwrap_or(0)]);
    match conv {
        Some(conv) => compare(
            "backward_weights",
            spec,
            &buffers,
            || conv.backward_weights(&x, &dy, &mut dw, db.as_deref_mut()),
            || {
                reference::conv2d_backward_weights(
                    spec,
                    &x,
                    &dy,
                    &mut dw_ref,
                    db_ref.as_deref_mut(),
                )
            },
        ),
        None => {
            let (r, _) = guarded(conv_scratch_limit(&buffers), || {
                reference::conv2d_backward_weights(
                    spec,
                    &x,
                    &dy,
                    &mut dw_ref,
                    db_ref.as_deref_mut(),
                )
            });
            assert!(
                r.is_err(),
                "reference accepts a spec Conv2d::new rejects: {spec:?}"
            );
        }
    }
}

/// Every method that takes no buffer.
fn inspect(conv: &Conv2d) {
    let _ = (
        conv.spec(),
        conv.input_dims(),
        conv.weight_dims(),
        conv.output_dims(),
    );
    let _ = conv.flops();
    for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardWeights] {
        let _ = conv.workspace::<f32>(pass);
        let _ = conv.workspace::<f64>(pass);
    }
    let _ = format!("{conv:?}");
}

fuzz_target!(|data: &[u8]| {
    init();
    let mut b = Bytes::new(data);
    let spec = decode_spec(&mut b);
    let (plan, _) = guarded(64 << 10, || Conv2d::new(spec));
    if debug() {
        eprintln!("{spec:?} -> {:?}", plan.as_ref().map(|c| c.output_dims()));
    }
    let conv = match &plan {
        Ok(conv) => {
            inspect(conv);
            Some(conv)
        }
        Err(e) => {
            let _ = e.to_string();
            None
        }
    };
    for _ in 0..8 {
        if b.is_empty() {
            break;
        }
        let op = b.u8() % 8;
        if debug() {
            eprintln!("  op {op}");
        }
        match op {
            0 => forward::<f32>(&mut b, &spec, conv, true),
            1 => forward::<f64>(&mut b, &spec, conv, true),
            2 => backward_data::<f32>(&mut b, &spec, conv),
            3 => backward_data::<f64>(&mut b, &spec, conv),
            4 => backward_weights::<f32>(&mut b, &spec, conv),
            5 => backward_weights::<f64>(&mut b, &spec, conv),
            6 => {
                if let Some(conv) = conv {
                    inspect(conv);
                }
            }
            _ => forward::<f64>(&mut b, &spec, conv, false),
        }
    }
});
