//! criterion benchmarks of the suite layers (`benches/suite.json`): one group per layer,
//! one benchmark per pass (`forward`, `backward_data`, `backward_weights`), throughput in
//! FLOPs (criterion prints them as `elem/s`: 1 Gelem/s = 1 GFLOP/s). On the small layers
//! (`SMALL_LAYERS`) the naive reference is timed in the same group (`reference_*`), so the
//! report shows the speed-up.
//!
//! ```sh
//! cargo bench --bench conv                      # everything, about 3 minutes on 2 cores
//! cargo bench --bench conv -- resnet_3x3_56     # one layer (a regex on "layer/pass")
//! cargo bench --bench conv -- /backward_data    # one pass on every layer
//! cargo bench --bench conv -- --test            # each benchmark once, for CI
//! ```
//! The defaults (0.5 s warm-up, 2 s measurement, 20 flat samples; 10 for the reference)
//! keep the full run short; criterion's own flags (`--measurement-time`, `--sample-size`,
//! ...) override them. Threads: rayon's global pool (all cores, or `RAYON_NUM_THREADS`).
//! For median-of-runs numbers in the peers' JSON format use the suite runner
//! (`cargo run --release --example suite`).

#[path = "../examples/suite/layers.rs"]
mod layers;

use convgemm::Conv2d;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use layers::{Buffers, Layer, PassKind};
use std::hint::black_box;
use std::time::Duration;

/// Layers small enough that the naive reference can be timed next to convgemm.
const SMALL_LAYERS: [&str; 3] = ["lenet_c1", "lenet_c2", "batch1_3x3_14"];

/// The benchmark name of a pass.
fn bench_name(pass: PassKind) -> &'static str {
    match pass {
        PassKind::Fwd => "forward",
        PassKind::BwdData => "backward_data",
        PassKind::BwdWeight => "backward_weights",
    }
}

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/suite.json");
    let layers = match layers::load_suite(path) {
        Ok(layers) => layers,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    for layer in &layers {
        if let Err(e) = bench_layer(&mut c, layer) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    c.final_summary();
}

/// The group of one layer: the three passes, and the reference on small layers.
fn bench_layer(c: &mut Criterion, layer: &Layer) -> Result<(), String> {
    let conv = &layer.conv;
    let mut buffers = Buffers::<f32>::new(conv, 0x5eed);
    let mut group = c.benchmark_group(&layer.name);
    group
        .throughput(Throughput::Elements(conv.flops()))
        .sampling_mode(SamplingMode::Flat);
    for pass in PassKind::ALL {
        // One untimed call, so a failure is an error message instead of a panic below.
        buffers
            .run(conv, pass)
            .map_err(|e| format!("{} {}: {e}", layer.name, pass.name()))?;
        group.bench_function(bench_name(pass), |b| {
            b.iter(|| black_box(buffers.run(conv, pass)).expect("ran once above"))
        });
    }
    if SMALL_LAYERS.contains(&layer.name.as_str()) {
        bench_reference(&mut group, conv, &mut buffers);
    }
    group.finish();
    Ok(())
}

/// The naive reference on the same buffers (fewer samples: it is 10-100× slower).
fn bench_reference(
    group: &mut BenchmarkGroup<WallTime>,
    conv: &Conv2d,
    buffers: &mut Buffers<f32>,
) {
    group.sample_size(10);
    for pass in PassKind::ALL {
        let name = format!("reference_{}", bench_name(pass));
        group.bench_function(name, |b| {
            b.iter(|| black_box(buffers.run_reference(conv, pass)).expect("same buffers as above"))
        });
    }
}
