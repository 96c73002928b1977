//! The suite runner: GFLOP/s of convgemm's three passes on every layer of a suite file.
//!
//! ```sh
//! cargo run --release --example suite -- [--suite FILE] [--threads N] [--layers a,b] \
//!     [--passes fwd,bwd_data,bwd_weight] [--json] [--f64]
//! ```
//!
//! 1. Loads the suite (default `benches/suite.json`) and keeps the selected layers.
//! 2. Builds a rayon pool of `--threads` threads and runs everything inside it.
//! 3. Check phase: every selected layer × pass once at batch 1 against the naive
//!    reference (see `check.rs` for the tolerance). Any failure ends the run with exit
//!    status 1 before timing.
//! 4. Timing phase: per layer, allocate the buffers once; per pass, warm up, then time
//!    at least 7 runs and report the median (table, or `--json` lines in the format of the
//!    peer scripts in `../shared/peers/`).
//!
//! Exit status: 0 on success, 1 on a failed check or a runtime error, 2 on bad arguments.

mod args;
mod check;
mod layers;
mod report;
mod timing;

use args::{Args, Command};
use convgemm::Element;
use layers::{Buffers, Layer};
use report::{Reporter, Row};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    match args::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            report::say(args::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Run(args)) => match run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                report::note(&format!("error: {e}"));
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            report::note(&format!("error: {e}\n\n{}", args::USAGE));
            ExitCode::from(2)
        }
    }
}

/// Loads the suite and runs it in a pool of the requested size.
fn run(args: &Args) -> Result<(), String> {
    let mut layers = layers::select_layers(layers::load_suite(&args.suite)?, &args.layers)?;
    if let Some(batch) = args.batch {
        // Renamed (`resnet_3x3_28_n3`) so the results are not mistaken for the file's.
        for layer in &mut layers {
            layer.conv = layer.with_batch(batch)?;
            layer.name = format!("{}_n{batch}", layer.name);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .map_err(|e| format!("cannot start a pool of {} threads: {e}", args.threads))?;
    pool.install(|| match (args.f64, args.accumulate) {
        (true, false) => run_typed::<f64>(args, &layers, "f64", "convgemm_f64"),
        (true, true) => run_typed::<f64>(args, &layers, "f64", "convgemm_f64_acc"),
        (false, false) => run_typed::<f32>(args, &layers, "f32", "convgemm"),
        (false, true) => run_typed::<f32>(args, &layers, "f32", "convgemm_acc"),
    })
}

/// The check phase, then the timing phase, for element type `T`.
fn run_typed<T: Element>(
    args: &Args,
    layers: &[Layer],
    dtype: &str,
    impl_name: &'static str,
) -> Result<(), String> {
    let mut out = Reporter::new(args.json, impl_name, args.threads);
    out.header(&args.suite, dtype);
    if args.check {
        check_all::<T>(args, layers, &mut out)?;
    }
    time_all::<T>(args, layers, &mut out)?;
    out.footer();
    Ok(())
}

/// Times every selected layer × pass, reporting each as it completes.
fn time_all<T: Element>(args: &Args, layers: &[Layer], out: &mut Reporter) -> Result<(), String> {
    out.table_header();
    let plan = timing::Plan {
        min_reps: args.min_reps,
        max_reps: args.min_reps.max(40),
        target: Duration::from_secs_f64(args.target_s),
    };
    let quiet = timing::Quiet {
        max_wait: Duration::from_secs_f64(args.max_wait_s),
        retries: args.retries,
        foreign_max: report::FOREIGN_MAX,
    };
    let steps = layers.len() * args.passes.len();
    let mut step = 0;
    for layer in layers {
        // Allocated once per layer, outside the timed loop; every pass reuses them.
        let mut buffers = Buffers::<T>::new(&layer.conv, 0x5eed);
        buffers.accumulate = args.accumulate;
        for &pass in &args.passes {
            step += 1;
            let what = format!("{} {}", layer.name, pass.name());
            out.progress(step, steps, &format!("timing {what}"));
            let samples = timing::measure_quietly(plan, quiet, || buffers.run(&layer.conv, pass))
                .map_err(|e| format!("{what}: {e}"))?;
            let ws = layer.conv.workspace::<T>(pass.pass());
            out.row(&Row {
                layer,
                pass,
                samples,
                column_bytes_per_task: ws.column_bytes_per_task,
                per_call_bytes: ws.partial_bytes.saturating_add(ws.packed_weight_bytes),
            });
        }
    }
    Ok(())
}

/// Checks every selected layer × pass against the reference; reports each, then fails if
/// any was out of tolerance.
fn check_all<T: Element>(args: &Args, layers: &[Layer], out: &mut Reporter) -> Result<(), String> {
    let steps = layers.len() * args.passes.len();
    let mut failed = Vec::new();
    for (i, (layer, &pass)) in layers
        .iter()
        .flat_map(|l| args.passes.iter().map(move |p| (l, p)))
        .enumerate()
    {
        out.progress(
            i + 1,
            steps,
            &format!(
                "checking {} {} against the reference",
                layer.name,
                pass.name()
            ),
        );
        let result = check::check_pass::<T>(layer, pass, args.accumulate)?;
        out.check(layer, pass, &result);
        if !result.passed() {
            failed.push(format!("{} {}", layer.name, pass.name()));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the result differs from the reference beyond the tolerance on: {}",
            failed.join(", ")
        ))
    }
}
