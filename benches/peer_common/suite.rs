//! The layer suite for the peer runners (`candle_peer`, `burn_peer`): each includes this
//! file (`#[path = "../../peer_common/suite.rs"] mod peer_suite;`), as they are separate crates
//! that do not depend on convgemm. A suite file is `benches/suite.json`'s format.

/// One layer of a suite file, NCHW: `n` images of `c × h × w`, `k` filters of `r × s`,
/// symmetric padding `pad` (`[h, w]`), `groups` groups.
pub struct Layer {
    pub name: String,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dil: [usize; 2],
    pub groups: usize,
}

impl Layer {
    pub fn out(&self) -> [usize; 2] {
        let axis = |input: usize, pad: usize, dil: usize, kernel: usize, stride: usize| {
            (input + 2 * pad - dil * (kernel - 1) - 1) / stride + 1
        };
        [
            axis(self.h, self.pad[0], self.dil[0], self.r, self.stride[0]),
            axis(self.w, self.pad[1], self.dil[1], self.s, self.stride[1]),
        ]
    }

    pub fn flops(&self) -> f64 {
        let [p, q] = self.out();
        2.0 * (self.n * self.k * (self.c / self.groups) * self.r * self.s * p * q) as f64
    }
}

pub fn load(path: &str) -> Vec<Layer> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let suite: serde_json::Value = serde_json::from_str(&text).expect("suite JSON");
    let num = |l: &serde_json::Value, key: &str| l[key].as_u64().expect(key) as usize;
    let pair = |l: &serde_json::Value, key: &str| {
        let v = &l[key];
        [
            v[0].as_u64().expect(key) as usize,
            v[1].as_u64().expect(key) as usize,
        ]
    };
    suite["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| Layer {
            name: l["name"].as_str().expect("name").to_string(),
            n: num(l, "n"),
            c: num(l, "c"),
            h: num(l, "h"),
            w: num(l, "w"),
            k: num(l, "k"),
            r: num(l, "r"),
            s: num(l, "s"),
            stride: pair(l, "stride"),
            pad: pair(l, "pad"),
            dil: pair(l, "dil"),
            groups: num(l, "groups"),
        })
        .collect()
}

/// The layers of the command line's suite (`--suite FILE`, default `benches/suite.json`),
/// only those named by `--layers a,b` if given.
pub fn selected_layers() -> Vec<Layer> {
    let mut args = std::env::args().skip(1);
    let (mut suite, mut only) = ("benches/suite.json".to_string(), None::<Vec<String>>);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--suite" => suite = args.next().expect("--suite FILE"),
            "--layers" => {
                only = Some(
                    args.next()
                        .expect("--layers a,b")
                        .split(',')
                        .map(str::to_string)
                        .collect(),
                )
            }
            other => panic!("unknown argument {other}"),
        }
    }
    load(&suite)
        .into_iter()
        .filter(|layer| only.as_ref().is_none_or(|o| o.contains(&layer.name)))
        .collect()
}
