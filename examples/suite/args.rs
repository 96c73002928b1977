//! Command-line arguments of the suite runner (no parser dependency: a handful of flags).

use crate::layers::PassKind;

/// The usage text, printed by `--help` and after an argument error.
pub const USAGE: &str = "\
usage: cargo run --release --example suite -- [OPTIONS]

Times convgemm's three passes on every layer of a suite file, after checking each pass
against the naive reference at batch 1.

options:
  --suite FILE          suite file (default benches/suite.json)
  --threads N           rayon pool of N threads (default: all cores)
  --layers a,b          only these layers (default: all)
  --batch N             run every layer with batch size N instead of the file's,
                        named with an _nN suffix (an uneven batch for the thread
                        count, say; the peer scripts keep the file's)
  --passes p,q          among fwd,bwd_data,bwd_weight (default: all three)
  --json                one JSON line per measurement on stdout (with the kernel
                        path, \"isa\")
  --f64                 time f64 instead of f32 (JSON impl \"convgemm_f64\")
  --accumulate          time the accumulating backward passes (backward_data_accumulate,
                        backward_weights_accumulate; JSON impl \"convgemm_acc\",
                        \"convgemm_f64_acc\")
  --min-reps N          timed runs per measurement, at least 7 (default 9)
  --target-s SECS       keep sampling (up to 40 runs) until this much time (default 0.4)
  --max-wait SECS       before each measurement, wait up to SECS for other processes
                        to go quiet (default 0: no wait; the peer scripts use 20)
  --retries N           re-measure up to N times when other processes took over 0.15
                        core meanwhile, keep the least disturbed (default 2)
  --no-check            skip the reference check (not recommended)
  -h, --help            this text";

/// Parsed options.
#[derive(Debug)]
pub struct Args {
    /// Path of the suite file.
    pub suite: String,
    /// Threads of the rayon pool.
    pub threads: usize,
    /// Layer names to run (empty: all).
    pub layers: Vec<String>,
    /// Batch size replacing every layer's (None: the suite file's).
    pub batch: Option<usize>,
    /// Passes to run, in the order given.
    pub passes: Vec<PassKind>,
    /// JSON lines instead of a table.
    pub json: bool,
    /// Time `f64` instead of `f32`.
    pub f64: bool,
    /// Time the accumulating forms of the backward passes.
    pub accumulate: bool,
    /// Minimum number of timed runs.
    pub min_reps: usize,
    /// Minimum total sampling time, seconds.
    pub target_s: f64,
    /// Longest wait for a quiet machine before each measurement, seconds.
    pub max_wait_s: f64,
    /// Re-measurements of a disturbed measurement.
    pub retries: usize,
    /// Run the reference check before timing.
    pub check: bool,
}

/// What the command line asked for.
pub enum Command {
    /// Run the suite.
    Run(Args),
    /// Print the usage text.
    Help,
}

/// Parses `args` (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut out = Args {
        suite: "benches/suite.json".into(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        layers: Vec::new(),
        batch: None,
        passes: PassKind::ALL.to_vec(),
        json: false,
        f64: false,
        accumulate: false,
        min_reps: 9,
        target_s: 0.4,
        max_wait_s: 0.0,
        retries: 2,
        check: true,
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--suite" => out.suite = value()?,
            "--threads" => out.threads = positive(&flag, &value()?)?,
            "--layers" => out.layers = list(&flag, &value()?)?,
            "--batch" => out.batch = Some(positive(&flag, &value()?)?),
            "--passes" => {
                out.passes = list(&flag, &value()?)?
                    .iter()
                    .map(|p| PassKind::parse(p))
                    .collect::<Result<_, _>>()?
            }
            "--json" => out.json = true,
            "--f64" => out.f64 = true,
            "--accumulate" => out.accumulate = true,
            "--min-reps" => {
                out.min_reps = positive(&flag, &value()?)?;
                if out.min_reps < 7 {
                    return Err(
                        "--min-reps must be at least 7 (the median of at least 7 runs)".into(),
                    );
                }
            }
            "--target-s" => out.target_s = seconds(&flag, &value()?)?,
            "--max-wait" => out.max_wait_s = seconds(&flag, &value()?)?,
            "--retries" => {
                let v = value()?;
                out.retries = v
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n <= 100)
                    .ok_or_else(|| {
                        format!("--retries: expected an integer in 0..=100, got {v:?}")
                    })?;
            }
            "--no-check" => out.check = false,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Command::Run(out))
}

fn positive(flag: &str, v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| (1..=4096).contains(&n))
        .ok_or_else(|| format!("{flag}: expected an integer in 1..=4096, got {v:?}"))
}

fn seconds(flag: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|t| t.is_finite() && (0.0..=600.0).contains(t))
        .ok_or_else(|| format!("{flag}: expected seconds in 0..=600, got {v:?}"))
}

/// A comma-separated list without empty or repeated items.
fn list(flag: &str, v: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
    if items.iter().any(String::is_empty) {
        return Err(format!("{flag}: empty item in {v:?}"));
    }
    if let Some((i, dup)) = items
        .iter()
        .enumerate()
        .find(|(i, s)| items[..*i].contains(s))
    {
        return Err(format!("{flag}: {dup:?} given twice (item {})", i + 1));
    }
    Ok(items)
}
