#!/usr/bin/env bash
# Regenerates the measured tables of BENCHMARKS.md in one command: the convgemm suite
# runner at 1 and 2 threads, then the PyTorch peers (../shared/peers/bench.py) on the same
# suite file, one after the other under the same allocator settings and quiet-machine
# protocol, then the GFLOP/s and ratio tables (benches/ratio_table.py).
#
# usage: benches/compare.sh [OUTDIR]       (default target/bench-compare/<date-time>)
# environment:
#   LAYERS=a,b              a subset of the suite (default: all layers)
#   PEERS=torch             peer impls of bench.py; e.g. torch,torch_cl,ort compares each
#                           cell with the fastest of them (ort and torch_cl: fwd only)
#   THREADS="1 2"           thread counts
#   PY=/opt/peers-venv/bin/python   the peers' Python (see ../shared/peers/README.md)
#   PEERS_DIR=../shared/peers
#   PEAK=232                peak GFLOP/s of all cores, for the % of peak (empty: none);
#                           232 is the 2-core Zen 4 host, 336 the Intel one of 2026-11-28
#                           (`cargo run --release --example fma_peak` gives the per-core
#                           figure of the machine at hand)
#   MAX_WAIT=20             seconds to wait for a quiet machine before each measurement
#                           (both sides; 0 for a quick smoke run)
#   ROUNDS=1                times to run both sides, alternating (convgemm, peers,
#                           convgemm, ...); the tables keep each cell's fastest median.
#                           On a shared host other guests slow whichever side runs at the
#                           time, and 2 rounds give both sides the same second chance.
#   PER_LAYER=              1: alternate layer by layer (convgemm on a layer at each
#                           thread count, then the peers on it, then the next layer)
#                           instead of side by side over the whole suite: on a host whose
#                           speed drifts over minutes (the Intel host of 2026-11-28: one
#                           core's FMA peak 123-169 GFLOP/s from one minute to the next),
#                           both sides of a cell then run within seconds of each other.
# Nothing else should run meanwhile (2 cores); the script takes /tmp/bench.lock so that
# cooperating benchmark runs wait for each other.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/bench-compare/$(date +%Y%m%d-%H%M%S)}
peers_dir=${PEERS_DIR:-../shared/peers}
py=${PY:-/opt/peers-venv/bin/python}
peers=${PEERS:-torch}
threads=${THREADS:-1 2}
peak=${PEAK-232}
max_wait=${MAX_WAIT:-20}
rounds=${ROUNDS:-1}

if [ ! -x "$py" ]; then
    echo "error: no Python at $py; create the peers' venv (bash $peers_dir/setup.sh) or set PY" >&2
    exit 1
fi
if [ ! -f "$peers_dir/bench.py" ]; then
    echo "error: no $peers_dir/bench.py; set PEERS_DIR" >&2
    exit 1
fi

# The peers' README: with glibc's defaults, large buffers are returned to the system and
# page-faulted in again on every call. Both sides allocate per call, so both get the same.
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456

mkdir -p "$out"
cargo build --release --example suite
exec 9>/tmp/bench.lock
echo "waiting for /tmp/bench.lock ..." >&2
flock 9
{ date -u '+%Y-%m-%d %H:%M UTC'; echo; lscpu; echo; rustc --version; git log -1 --oneline; } > "$out/machine.txt"

# The units each round alternates over: the whole selection, or (PER_LAYER) each layer.
units=("${LAYERS:-}")
if [ -n "${PER_LAYER:-}" ]; then
    mapfile -t units < <(python3 -c '
import json, sys
names = [l["name"] for l in json.load(open("benches/suite.json"))["layers"]]
chosen = [n for n in sys.argv[1].split(",") if n] or names
print("\n".join(n for n in names if n in chosen))' "${LAYERS:-}")
fi

for round in $(seq "$rounds"); do
    convgemm_s=0 peers_s=0
    for unit in "${units[@]}"; do
        unit_arg=()
        if [ -n "$unit" ]; then unit_arg=(--layers "$unit"); fi
        start=$SECONDS
        for t in $threads; do
            echo "== round $round: convgemm, $t thread(s) ${unit}" >&2
            ./target/release/examples/suite --threads "$t" --json --max-wait "$max_wait" \
                --retries 2 ${unit_arg[@]+"${unit_arg[@]}"} \
                >> "$out/convgemm.jsonl" 2>> "$out/convgemm.log"
        done
        convgemm_s=$((convgemm_s + SECONDS - start))

        start=$SECONDS
        echo "== round $round: peers: $peers ${unit}" >&2
        "$py" "$peers_dir/bench.py" --suite benches/suite.json --impl "$peers" \
            --max-wait "$max_wait" --threads "$(echo $threads | tr ' ' ,)" \
            ${unit_arg[@]+"${unit_arg[@]}"} >> "$out/peers.jsonl" 2>> "$out/peers.log"
        peers_s=$((peers_s + SECONDS - start))
    done
    echo "   round $round: convgemm $convgemm_s s, peers $peers_s s" >&2
done
flock -u 9

python3 benches/ratio_table.py --peers "$peers" ${peak:+--peak "$peak"} \
    "$out/convgemm.jsonl" "$out/peers.jsonl" > "$out/table.md"
cat "$out/table.md"
echo >&2
echo "results in $out: convgemm.jsonl, peers.jsonl, table.md, machine.txt, *.log" >&2
