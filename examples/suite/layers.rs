//! The benchmark suite file, its layers and the three passes; shared by the suite runner
//! (`examples/suite`) and the criterion bench (`benches/conv.rs`, through `#[path]`).
//!
//! A suite file is JSON: `{"layers": [{"name", "n", "c", "h", "w", "k", "r", "s",
//! "stride": [sh, sw], "pad": [ph, pw], "dil": [dh, dw], "groups"}, ...]}`, the format of
//! `benches/suite.json` and of the peer scripts. `stride`, `pad`, `dil` and `groups` may
//! be left out (defaults `[1,1]`, `[0,0]`, `[1,1]`, 1); other keys (such as `"_doc"`) are
//! ignored. Every problem is reported as a message naming the file, the layer and the
//! field; nothing here panics on bad input.
#![allow(dead_code)] // each of the two users needs a different part

use convgemm::{Conv2d, Conv2dSpec, Element};
use serde_json::Value;

/// One layer of a suite: its name and validated plan.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The layer's `"name"`, unique within the file.
    pub name: String,
    /// The convolution, validated by [`Conv2d::new`].
    pub conv: Conv2d,
}

impl Layer {
    /// The same layer with batch size `batch` (used for the reference check).
    pub fn with_batch(&self, batch: usize) -> Result<Conv2d, String> {
        let spec = Conv2dSpec {
            batch,
            ..*self.conv.spec()
        };
        Conv2d::new(spec).map_err(|e| format!("layer {:?} at batch {batch}: {e}", self.name))
    }
}

/// The three passes, with the names used on the command line and in the JSON lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassKind {
    /// `Conv2d::forward` (with bias).
    Fwd,
    /// `Conv2d::backward_data`.
    BwdData,
    /// `Conv2d::backward_weights` (with the bias gradient).
    BwdWeight,
}

impl PassKind {
    /// All passes, in suite order.
    pub const ALL: [PassKind; 3] = [PassKind::Fwd, PassKind::BwdData, PassKind::BwdWeight];

    /// The short name: `fwd`, `bwd_data` or `bwd_weight`.
    pub fn name(self) -> &'static str {
        match self {
            PassKind::Fwd => "fwd",
            PassKind::BwdData => "bwd_data",
            PassKind::BwdWeight => "bwd_weight",
        }
    }

    /// Parses a short name.
    pub fn parse(s: &str) -> Result<PassKind, String> {
        PassKind::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown pass {s:?}; expected one of fwd, bwd_data, bwd_weight"))
    }

    /// The crate's own name for the pass.
    pub fn pass(self) -> convgemm::Pass {
        match self {
            PassKind::Fwd => convgemm::Pass::Forward,
            PassKind::BwdData => convgemm::Pass::BackwardData,
            PassKind::BwdWeight => convgemm::Pass::BackwardWeights,
        }
    }
}

/// Reads and validates a suite file.
pub fn load_suite(path: &str) -> Result<Vec<Layer>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read suite file {path}: {e}"))?;
    parse_suite(&text).map_err(|e| format!("suite file {path}: {e}"))
}

/// Parses the text of a suite file.
pub fn parse_suite(text: &str) -> Result<Vec<Layer>, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let list = root
        .get("layers")
        .and_then(Value::as_array)
        .ok_or("expected an object with a \"layers\" array")?;
    if list.is_empty() {
        return Err("the \"layers\" array is empty".into());
    }
    let mut layers: Vec<Layer> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let layer = parse_layer(entry).map_err(|e| {
            let name = entry.get("name").and_then(Value::as_str).unwrap_or("?");
            format!("layer {i} ({name:?}): {e}")
        })?;
        if layers.iter().any(|l| l.name == layer.name) {
            return Err(format!("layer {i}: duplicate name {:?}", layer.name));
        }
        layers.push(layer);
    }
    Ok(layers)
}

fn parse_layer(v: &Value) -> Result<Layer, String> {
    if !v.is_object() {
        return Err("expected an object".into());
    }
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("field \"name\": expected a non-empty string")?
        .to_string();
    let spec = Conv2dSpec {
        batch: size(v, "n")?,
        in_channels: size(v, "c")?,
        in_h: size(v, "h")?,
        in_w: size(v, "w")?,
        out_channels: size(v, "k")?,
        kernel: [size(v, "r")?, size(v, "s")?],
        stride: pair(v, "stride", [1, 1])?,
        padding: pair(v, "pad", [0, 0])?,
        dilation: pair(v, "dil", [1, 1])?,
        groups: if v.get("groups").is_some() {
            size(v, "groups")?
        } else {
            1
        },
    };
    let conv = Conv2d::new(spec).map_err(|e| e.to_string())?;
    Ok(Layer { name, conv })
}

/// A required non-negative integer field (zero is left for `Conv2d::new` to reject with
/// its own message).
fn size(v: &Value, key: &str) -> Result<usize, String> {
    let field = v.get(key).ok_or_else(|| format!("missing field {key:?}"))?;
    as_usize(field)
        .ok_or_else(|| format!("field {key:?}: expected a non-negative integer, got {field}"))
}

/// An optional `[height, width]` field.
fn pair(v: &Value, key: &str, default: [usize; 2]) -> Result<[usize; 2], String> {
    let Some(field) = v.get(key) else {
        return Ok(default);
    };
    let bad = || {
        format!("field {key:?}: expected [height, width], two non-negative integers, got {field}")
    };
    match field.as_array().map(Vec::as_slice) {
        Some([a, b]) => Ok([as_usize(a).ok_or_else(bad)?, as_usize(b).ok_or_else(bad)?]),
        _ => Err(bad()),
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|u| usize::try_from(u).ok())
}

/// Keeps the layers named in `names` (in the suite's order); every name must exist.
pub fn select_layers(all: Vec<Layer>, names: &[String]) -> Result<Vec<Layer>, String> {
    if names.is_empty() {
        return Ok(all);
    }
    if let Some(missing) = names.iter().find(|n| !all.iter().any(|l| &l.name == *n)) {
        let known: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
        return Err(format!(
            "no layer named {missing:?} in the suite; it has: {}",
            known.join(", ")
        ));
    }
    Ok(all
        .into_iter()
        .filter(|l| names.contains(&l.name))
        .collect())
}

/// SplitMix64: a tiny seeded generator, so every run times the same data.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `len` values uniform in [-1, 1).
    pub fn floats<T: Element>(&mut self, len: usize) -> Vec<T> {
        (0..len)
            .map(|_| T::from_f64((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0))
            .collect()
    }
}

/// The buffers of one layer, allocated once: inputs filled with seeded random values,
/// outputs zeroed.
pub struct Buffers<T> {
    /// Input `N·C·H·W`.
    pub x: Vec<T>,
    /// Weights `K·(C/groups)·R·S`.
    pub w: Vec<T>,
    /// Bias `K`.
    pub b: Vec<T>,
    /// Output gradient `N·K·P·Q`.
    pub dy: Vec<T>,
    /// Forward output `N·K·P·Q`.
    pub y: Vec<T>,
    /// Input gradient `N·C·H·W`.
    pub dx: Vec<T>,
    /// Weight gradient `K·(C/groups)·R·S`.
    pub dw: Vec<T>,
    /// Bias gradient `K`.
    pub db: Vec<T>,
    /// Whether [`Buffers::run`] calls the accumulating backward passes (adding into `dx`,
    /// `dw` and `db`, which start at zero).
    pub accumulate: bool,
}

impl<T: Element> Buffers<T> {
    /// Allocates and fills the buffers of `conv`.
    pub fn new(conv: &Conv2d, seed: u64) -> Buffers<T> {
        let x_len = conv.input_dims().iter().product();
        let w_len = conv.weight_dims().iter().product();
        let y_len = conv.output_dims().iter().product();
        let k = conv.output_dims()[1];
        let mut rng = Rng::new(seed);
        Buffers {
            x: rng.floats(x_len),
            w: rng.floats(w_len),
            b: rng.floats(k),
            dy: rng.floats(y_len),
            y: vec![T::ZERO; y_len],
            dx: vec![T::ZERO; x_len],
            dw: vec![T::ZERO; w_len],
            db: vec![T::ZERO; k],
            accumulate: false,
        }
    }

    /// Runs one pass of `conv` on these buffers, as the benchmarks time it: forward with
    /// bias, backward_weights with the bias gradient (as PyTorch's peers do); with
    /// `accumulate`, the accumulating forms of the backward passes.
    pub fn run(&mut self, conv: &Conv2d, pass: PassKind) -> Result<(), convgemm::ConvError> {
        let (dx, dw, db) = (&mut self.dx, &mut self.dw, Some(&mut self.db[..]));
        match (pass, self.accumulate) {
            (PassKind::Fwd, _) => conv.forward(&self.x, &self.w, Some(&self.b), &mut self.y),
            (PassKind::BwdData, false) => conv.backward_data(&self.dy, &self.w, dx),
            (PassKind::BwdData, true) => conv.backward_data_accumulate(&self.dy, &self.w, dx),
            (PassKind::BwdWeight, false) => conv.backward_weights(&self.x, &self.dy, dw, db),
            (PassKind::BwdWeight, true) => {
                conv.backward_weights_accumulate(&self.x, &self.dy, dw, db)
            }
        }
    }

    /// Runs one pass with the naive reference on these buffers.
    pub fn run_reference(
        &mut self,
        conv: &Conv2d,
        pass: PassKind,
    ) -> Result<(), convgemm::ConvError> {
        use convgemm::reference as r;
        let spec = conv.spec();
        match pass {
            PassKind::Fwd => r::conv2d_forward(spec, &self.x, &self.w, Some(&self.b), &mut self.y),
            PassKind::BwdData => r::conv2d_backward_data(spec, &self.dy, &self.w, &mut self.dx),
            PassKind::BwdWeight => r::conv2d_backward_weights(
                spec,
                &self.x,
                &self.dy,
                &mut self.dw,
                Some(&mut self.db),
            ),
        }
    }

    /// The output of `pass` (for `bwd_weight`, `dw` followed by `db`).
    pub fn output(&self, pass: PassKind) -> Vec<T> {
        match pass {
            PassKind::Fwd => self.y.clone(),
            PassKind::BwdData => self.dx.clone(),
            PassKind::BwdWeight => self.dw.iter().chain(&self.db).copied().collect(),
        }
    }

    /// The same buffers with every input replaced by its absolute value: the reference on
    /// them gives `Σ|terms|` for each output, the magnitude in the error bound.
    pub fn abs(&self) -> Buffers<T> {
        let abs = |v: &[T]| v.iter().map(|a| a.abs()).collect();
        Buffers {
            x: abs(&self.x),
            w: abs(&self.w),
            b: abs(&self.b),
            dy: abs(&self.dy),
            y: self.y.clone(),
            dx: self.dx.clone(),
            dw: self.dw.clone(),
            db: self.db.clone(),
            accumulate: self.accumulate,
        }
    }
}
