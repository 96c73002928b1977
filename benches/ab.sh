#!/usr/bin/env bash
# Paired A/B of two builds of the suite runner, for a change whose effect is smaller than
# the host's drift: per round, per layer and pass, both binaries run back to back (the
# order alternating between rounds), and each cell reports the median over rounds of the
# paired ratio B / A, its range, and each side's best median.
#
# usage: benches/ab.sh A_BIN B_BIN          (suite runners: target/release/examples/suite
#                                            of the two commits, copied aside)
# environment:
#   SUITE=benches/mobilenet_dw_s2.json   layer file (default: benches/suite.json)
#   LAYERS="resnet_stem resnet_3x3_28"   layers (default: all of the layer file)
#   PASSES="fwd bwd_data bwd_weight"     passes (default: all three)
#   THREADS=1                            thread count
#   ROUNDS=8                             rounds
#
# Read a ratio against a cell the change does not touch, run in the same call: on the
# Intel host of 2026-11-28 such a control cell read 0.95-1.11 over six rounds, so only
# effects beyond that were called. Takes /tmp/bench.lock, as benches/compare.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then
    echo "usage: benches/ab.sh A_BIN B_BIN" >&2
    exit 2
fi
a=$1 b=$2
suite=${SUITE:-benches/suite.json}
layers=${LAYERS:-$(python3 -c 'import json, sys; print(" ".join(l["name"] for l in json.load(open(sys.argv[1]))["layers"]))' "$suite")}
passes=${PASSES:-fwd bwd_data bwd_weight}
threads=${THREADS:-1}
rounds=${ROUNDS:-8}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

exec 9>/tmp/bench.lock
flock 9
for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then order="A B"; else order="B A"; fi
    for layer in $layers; do
        for pass in $passes; do
            for side in $order; do
                bin=$a
                if [ "$side" = B ]; then bin=$b; fi
                line=$("$bin" --suite "$suite" --no-check --json --threads "$threads" --layers "$layer" \
                    --passes "$pass" --min-reps 7 --target-s 0.3 --retries 0 2>/dev/null)
                echo "$round $side $line" >> "$log"
            done
        done
    done
    echo "round $round of $rounds done" >&2
done
flock -u 9

python3 - "$log" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    rnd, side, record = line.split(" ", 2)
    r = json.loads(record)
    runs.setdefault((r["layer"], r["pass"]), {}).setdefault(side, {})[rnd] = r["gflops"]
print("| layer | pass | B/A median | range | best A | best B |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for (layer, pas), sides in runs.items():
    a, b = sides.get("A", {}), sides.get("B", {})
    ratios = [b[k] / a[k] for k in a if k in b]
    if not ratios:
        continue
    print("| %s | %s | %.3f | %.2f-%.2f | %.1f | %.1f |" % (
        layer, pas, statistics.median(ratios), min(ratios), max(ratios),
        max(a.values()), max(b.values())))
PY
