//! Output of the suite runner: a readable table (stdout) or one JSON line per
//! measurement (stdout), and a progress line on stderr in both cases.

use crate::check::CheckResult;
use crate::layers::{Layer, PassKind};
use crate::timing::Samples;
use std::io::{IsTerminal, Write};

/// A measurement is flagged when other processes used more cores than this meanwhile
/// (the same threshold as the peer scripts).
pub const FOREIGN_MAX: f64 = 0.15;

/// One timed layer × pass.
pub struct Row<'a> {
    /// The layer.
    pub layer: &'a Layer,
    /// The pass.
    pub pass: PassKind,
    /// Its timings.
    pub samples: Samples,
    /// Column bytes per task (from `Conv2d::workspace`).
    pub column_bytes_per_task: usize,
    /// Bytes the calling thread holds for the call: weight-gradient partial sums plus
    /// packed weights (from `Conv2d::workspace`).
    pub per_call_bytes: usize,
}

/// Writes results as they come.
pub struct Reporter {
    json: bool,
    impl_name: &'static str,
    threads: usize,
    tty: bool,
    progress_shown: bool,
}

impl Reporter {
    /// A reporter for `threads` threads; `impl_name` is the JSON `"impl"` field.
    pub fn new(json: bool, impl_name: &'static str, threads: usize) -> Reporter {
        Reporter {
            json,
            impl_name,
            threads,
            tty: std::io::stderr().is_terminal(),
            progress_shown: false,
        }
    }

    /// Shows what runs now: one line, rewritten in place on a terminal.
    pub fn progress(&mut self, step: usize, steps: usize, what: &str) {
        let line = format!("[{step:>3}/{steps}] {what}");
        if self.tty {
            note_raw(&format!("\r\x1b[2K{line}"));
            self.progress_shown = true;
        } else {
            note(&line);
        }
    }

    /// Clears the progress line before regular output.
    fn clear_progress(&mut self) {
        if self.progress_shown {
            note_raw("\r\x1b[2K");
            self.progress_shown = false;
        }
    }

    /// The header of the run (table form only).
    pub fn header(&mut self, suite: &str, dtype: &str) {
        if self.json {
            return;
        }
        self.clear_progress();
        say(&format!(
            "convgemm suite runner: {suite}, {dtype}, {} thread(s), kernel path {}, CPU: {}",
            self.threads,
            convgemm::isa_name(),
            cpu_model()
        ));
    }

    /// The result of one reference check (stdout in table form, stderr with `--json`).
    pub fn check(&mut self, layer: &Layer, pass: PassKind, r: &CheckResult) {
        self.clear_progress();
        let line = format!(
            "check {:<16} {:<10} max rel err {:9.2e}  tolerance {:9.2e}  {}",
            layer.name,
            pass.name(),
            r.rel_err,
            r.rel_tol,
            if r.passed() { "ok" } else { "FAILED" }
        );
        if self.json {
            note(&format!("# {line}"));
        } else {
            say(&line);
        }
    }

    /// Column titles of the table (table form only).
    pub fn table_header(&mut self) {
        if self.json {
            return;
        }
        self.clear_progress();
        say("");
        say(&format!(
            "{:<16} {:<10} {:>10} {:>10} {:>9} {:>12} {:>10} {:>10} {:>5} {:>6}",
            "layer",
            "pass",
            "ms",
            "min ms",
            "GFLOP/s",
            "ws_bytes",
            "col/task",
            "per-call",
            "reps",
            "load"
        ));
    }

    /// One measurement.
    pub fn row(&mut self, row: &Row) {
        self.clear_progress();
        let s = &row.samples;
        let gflops = row.layer.conv.flops() as f64 / (s.median_ms * 1e6);
        let ws = ws_bytes(row.column_bytes_per_task, row.per_call_bytes, self.threads);
        let disturbed = s.foreign_cores.is_some_and(|f| f > FOREIGN_MAX);
        if self.json {
            say(&format!(
                "{{\"impl\":\"{}\",\"layer\":{},\"pass\":\"{}\",\"threads\":{},\"ms\":{},\"gflops\":{},\"ws_bytes\":{},\"isa\":\"{}\"}}",
                self.impl_name,
                serde_json::Value::from(row.layer.name.as_str()),
                row.pass.name(),
                self.threads,
                round(s.median_ms, 4),
                round(gflops, 2),
                ws,
                convgemm::isa_name()
            ));
            if disturbed {
                note(&format!(
                    "# warning: other processes used {:.2} cores while timing {} {}; the number is unreliable",
                    s.foreign_cores.unwrap_or(0.0),
                    row.layer.name,
                    row.pass.name()
                ));
            }
        } else {
            let load = s.foreign_cores.map_or("-".into(), |f| {
                format!("{f:.2}{}", if disturbed { "*" } else { "" })
            });
            say(&format!(
                "{:<16} {:<10} {:>10.3} {:>10.3} {:>9.1} {:>12} {:>10} {:>10} {:>5} {:>6}",
                row.layer.name,
                row.pass.name(),
                s.median_ms,
                s.min_ms,
                gflops,
                ws,
                row.column_bytes_per_task,
                row.per_call_bytes,
                s.reps,
                load
            ));
        }
    }

    /// The closing notes (table form only).
    pub fn footer(&mut self) {
        self.clear_progress();
        if self.json {
            return;
        }
        say(&format!(
            "\nms: median run; min ms: fastest run; GFLOP/s: 2·N·K·(C/groups)·R·S·P·Q / median; \
             ws_bytes = col/task × threads + per-call (dW partials, packed weights; bytes);\n\
             load: cores other processes used while timing (* = over {FOREIGN_MAX}: unreliable)."
        ));
    }
}

/// The workspace reported per measurement: one column buffer per thread (each rayon task
/// holds one while it runs, and at most `threads` run at once) plus the buffers held for
/// the whole call (weight-gradient partial sums, packed weights).
pub fn ws_bytes(column_bytes_per_task: usize, per_call_bytes: usize, threads: usize) -> usize {
    column_bytes_per_task
        .saturating_mul(threads)
        .saturating_add(per_call_bytes)
}

/// `v` rounded to `digits` decimals, printed by `Display` (shortest form, no exponent).
fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

/// The CPU's model name from `/proc/cpuinfo`, or `unknown`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Writes a line to stdout. When stdout is closed (piped into `head`, say) the program
/// ends quietly with status 1 instead of panicking.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(1);
    }
}

/// Writes a line to stderr; a closed stderr is ignored.
pub fn note(line: &str) {
    note_raw(&format!("{line}\n"));
}

/// Writes text to stderr as is; a closed stderr is ignored.
pub fn note_raw(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
}
