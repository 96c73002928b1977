//! `conv_matches_reference`: a small arbitrary `Conv2dSpec` (every field) and data derived
//! from the input; all three passes, with and without bias, against `convgemm::reference`
//! under the crate's tolerance rule `|fast − ref| ≤ (L + 1)·ε·Σ|terms|`.
//!
//! Checked for each input:
//! - an invalid spec: `Conv2d::new` and all three reference functions return the same
//!   `Err` (no panic);
//! - a valid spec, in f64 (and in f32 when flag bit 4 is set): forward, input delta and
//!   weight gradient within the tolerance of the reference (Σ|terms| from the reference
//!   run on absolute values), bit for bit on small-integer data, every output element
//!   written (outputs start as NaN), and bit-identical results in a 2-thread and a
//!   1-thread rayon pool;
//! - the accumulating backward passes, run onto those results: every element becomes
//!   `g + g`, bit for bit.
//!
//! Input layout (one byte per field, 0 when the input is shorter; `fuzz/seeds/make_seeds.py`
//! writes seeds in this layout):
//!
//! | byte | field | decoded |
//! |---|---|---|
//! | 0 | flags | bit 0 bias, bits 1–2 data mode (uniform, small ints, wide magnitudes, sparse), bit 3 raw channel counts (else multiples of groups), bit 4 also f32, bit 5 big planes |
//! | 1 | batch | `% 4` |
//! | 2 | groups | `% 5` |
//! | 3, 4 | in, out channels | per group `% 5` (× groups), or raw `% 13` with bit 3 |
//! | 5, 6 | in_h, in_w | `% 13`, or `% 49` with bit 5 |
//! | 7, 8 | kernel | `% 6` |
//! | 9, 10 | stride | `% 5` |
//! | 11, 12 | padding | `% 6` |
//! | 13, 14 | dilation | `% 4` |
//! | 15–22 | data seed | little-endian `u64` |
#![no_main]

use convgemm::{Conv2d, Conv2dSpec, Element, reference};
use convgemm_fuzz::*;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// Valid specs whose naive reference would take more multiply-adds than this per pass are
/// skipped, to keep executions fast (the shapes stay as varied: this only trims the
/// largest planes of big mode).
const MAX_WORK: usize = 1 << 19;

struct Case {
    spec: Conv2dSpec,
    bias: bool,
    mode: DataMode,
    f32_too: bool,
    seed: u64,
}

fn decode(data: &[u8]) -> Case {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let bias = flags & 1 != 0;
    let mode = DataMode::from_bits(flags >> 1);
    let raw_channels = flags & 8 != 0;
    let f32_too = flags & 16 != 0;
    let big = flags & 32 != 0;
    let batch = (b.u8() % 4) as usize;
    let groups = (b.u8() % 5) as usize;
    let (ci, co) = (b.u8() as usize, b.u8() as usize);
    let (in_channels, out_channels) = if raw_channels {
        (ci % 13, co % 13)
    } else {
        (groups * (ci % 5), groups * (co % 5))
    };
    let plane = if big { 49 } else { 13 };
    let mut pair = |m: u8| [(b.u8() % m) as usize, (b.u8() % m) as usize];
    let in_hw = pair(plane);
    let kernel = pair(6);
    let stride = pair(5);
    let padding = pair(6);
    let dilation = pair(4);
    let seed = b.u64();
    Case {
        spec: Conv2dSpec {
            batch,
            in_channels,
            in_h: in_hw[0],
            in_w: in_hw[1],
            out_channels,
            kernel,
            stride,
            padding,
            dilation,
            groups,
        },
        bias,
        mode,
        f32_too,
        seed,
    }
}

/// An invalid spec: the plan and every reference entry fail with the same error.
fn check_invalid(spec: &Conv2dSpec) {
    let Err(err) = Conv2d::new(*spec) else {
        return;
    };
    let _ = err.to_string();
    let mut none: [f64; 0] = [];
    let r1 = reference::conv2d_forward::<f64>(spec, &[], &[], None, &mut none);
    let r2 = reference::conv2d_backward_data::<f64>(spec, &[], &[], &mut none);
    let mut none2: [f64; 0] = [];
    let r3 = reference::conv2d_backward_weights::<f64>(spec, &[], &[], &mut none, Some(&mut none2));
    for r in [r1, r2, r3] {
        assert_eq!(
            r,
            Err(err.clone()),
            "reference disagrees with Conv2d::new on {spec:?}"
        );
    }
}

/// The three outputs of one run of the passes.
struct Outputs<T> {
    y: Vec<T>,
    dx: Vec<T>,
    dw: Vec<T>,
    db: Vec<T>,
}

fn run_fast<T: Element>(conv: &Conv2d, x: &[T], w: &[T], b: Option<&[T]>, dy: &[T]) -> Outputs<T> {
    let nan = T::from_f64(f64::NAN);
    let mut o = Outputs {
        y: vec![nan; dy.len()],
        dx: vec![nan; x.len()],
        dw: vec![nan; w.len()],
        db: vec![
            nan;
            if b.is_some() {
                conv.output_dims()[1]
            } else {
                0
            }
        ],
    };
    conv.forward(x, w, b, &mut o.y).expect("forward");
    conv.backward_data(dy, w, &mut o.dx).expect("backward_data");
    let db = b.is_some().then_some(&mut o.db[..]);
    conv.backward_weights(x, dy, &mut o.dw, db)
        .expect("backward_weights");
    o
}

fn run_reference<T: Element>(
    spec: &Conv2dSpec,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    dy: &[T],
) -> Outputs<T> {
    let k = spec.out_channels;
    let mut o = Outputs {
        y: vec![T::ZERO; dy.len()],
        dx: vec![T::ZERO; x.len()],
        dw: vec![T::ZERO; w.len()],
        db: vec![T::ZERO; k],
    };
    reference::conv2d_forward(spec, x, w, b, &mut o.y).expect("reference forward");
    reference::conv2d_backward_data(spec, dy, w, &mut o.dx).expect("reference backward_data");
    reference::conv2d_backward_weights(spec, x, dy, &mut o.dw, Some(&mut o.db))
        .expect("reference backward_weights");
    o
}

fn check<T: Element>(case: &Case, conv: &Conv2d, data: &[Vec<f64>; 4]) {
    let spec = &case.spec;
    let [x, w, dy, b] = data;
    let (x, w, dy, b): (Vec<T>, Vec<T>, Vec<T>, Vec<T>) =
        (convert(x), convert(w), convert(dy), convert(b));
    let bias = case.bias.then_some(&b[..]);
    let fast = run_fast(conv, &x, &w, bias, &dy);
    let exact = run_reference(spec, &x, &w, bias, &dy);
    let (ba, xa, wa, dya) = (abs(&b), abs(&x), abs(&w), abs(&dy));
    let mag = run_reference(spec, &xa, &wa, case.bias.then_some(&ba[..]), &dya);

    let [n, k, p, q] = conv.output_dims();
    let [_, cg, r, s] = conv.weight_dims();
    let kg = k / spec.groups;
    let l_fwd = cg * r * s + usize::from(case.bias);
    let l_bd = kg * r * s;
    let l_bw = n * p * q;
    let ty = std::any::type_name::<T>();
    if case.mode == DataMode::SmallInts {
        // Every sum is exact: any summation order gives the reference's bits.
        assert_bits_equal(&format!("{ty} forward (exact data)"), &fast.y, &exact.y);
        assert_bits_equal(
            &format!("{ty} backward_data (exact data)"),
            &fast.dx,
            &exact.dx,
        );
        assert_bits_equal(
            &format!("{ty} backward_weights dw (exact data)"),
            &fast.dw,
            &exact.dw,
        );
    }
    assert_within(&format!("{ty} forward"), &fast.y, &exact.y, &mag.y, l_fwd);
    assert_within(
        &format!("{ty} backward_data"),
        &fast.dx,
        &exact.dx,
        &mag.dx,
        l_bd,
    );
    assert_within(
        &format!("{ty} backward_weights dw"),
        &fast.dw,
        &exact.dw,
        &mag.dw,
        l_bw,
    );
    if case.bias {
        assert_within(
            &format!("{ty} backward_weights db"),
            &fast.db,
            &exact.db,
            &mag.db,
            l_bw,
        );
    }

    // The accumulating forms add exactly the overwriting results (here onto themselves).
    let (mut dx2, mut dw2, mut db2) = (fast.dx.clone(), fast.dw.clone(), fast.db.clone());
    conv.backward_data_accumulate(&dy, &w, &mut dx2)
        .expect("backward_data_accumulate");
    let db = bias.is_some().then_some(&mut db2[..]);
    conv.backward_weights_accumulate(&x, &dy, &mut dw2, db)
        .expect("backward_weights_accumulate");
    let twice = |v: &[T]| v.iter().map(|&a| a + a).collect::<Vec<T>>();
    assert_bits_equal(
        &format!("{ty} backward_data_accumulate"),
        &dx2,
        &twice(&fast.dx),
    );
    assert_bits_equal(
        &format!("{ty} backward_weights_accumulate dw"),
        &dw2,
        &twice(&fast.dw),
    );
    assert_bits_equal(
        &format!("{ty} backward_weights_accumulate db"),
        &db2,
        &twice(&fast.db),
    );

    // The split never depends on the thread count: a one-thread pool gives the same bits.
    let single = single_thread_pool().install(|| run_fast(conv, &x, &w, bias, &dy));
    assert_bits_equal(&format!("{ty} forward, 1 vs 2 threads"), &single.y, &fast.y);
    assert_bits_equal(
        &format!("{ty} backward_data, 1 vs 2 threads"),
        &single.dx,
        &fast.dx,
    );
    assert_bits_equal(
        &format!("{ty} backward_weights dw, 1 vs 2 threads"),
        &single.dw,
        &fast.dw,
    );
    assert_bits_equal(
        &format!("{ty} backward_weights db, 1 vs 2 threads"),
        &single.db,
        &fast.db,
    );
}

fuzz_target!(|data: &[u8]| {
    init();
    let case = decode(data);
    let spec = &case.spec;
    if debug() {
        eprintln!(
            "{spec:?} bias {} {:?} f32 {} seed {} -> {:?}",
            case.bias,
            case.mode,
            case.f32_too,
            case.seed,
            Conv2d::new(*spec).map(|c| c.output_dims())
        );
    }
    let conv = match Conv2d::new(*spec) {
        Ok(conv) => conv,
        Err(_) => return check_invalid(spec),
    };
    let [n, c, h, w] = conv.input_dims();
    let [_, k, p, q] = conv.output_dims();
    let w_len: usize = conv.weight_dims().iter().product();
    let (x_len, y_len) = (n * c * h * w, n * k * p * q);
    // Multiply-adds of one reference pass: every output times every tap of its group.
    if y_len * (w_len / k) > MAX_WORK {
        return;
    }
    let mut rng = Rng::new(case.seed);
    let data = [
        draw(&mut rng, case.mode, x_len),
        draw(&mut rng, case.mode, w_len),
        draw(&mut rng, case.mode, y_len),
        draw(&mut rng, case.mode, k),
    ];
    check::<f64>(&case, &conv, &data);
    if case.f32_too {
        check::<f32>(&case, &conv, &data);
    }
});
