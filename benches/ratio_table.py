#!/usr/bin/env python3
"""Join convgemm's and the peers' JSON lines into markdown tables for BENCHMARKS.md.

Usage:
  python3 benches/ratio_table.py [--ours convgemm] [--peers torch] [--peak GFLOPS] FILE.jsonl...

Reads the lines printed by `cargo run --release --example suite -- --json` and by
../shared/peers/bench.py (any order, any number of files; other lines are skipped). Per
(impl, layer, pass, threads) it keeps the fastest median among the records given, preferring
records whose "foreign_cores" (peers only) is <= 0.15, like the peers' make_table.py, and
marks a cell '*' when its record was disturbed.

Prints:
  1. GFLOP/s: ours and the best of --peers, per layer, pass and thread count (the peer's
     name is given when several are compared; with --peak also % of peak for ours);
  2. the ratio ours / best peer (GFLOP/s over GFLOP/s, > 1 means ours is faster), with the
     geometric mean of each column, and of all cells at 1 and at 2 threads.
A cell that one side lacks is "-" and is left out of the geometric means (which then say how
many cells they cover). Standard library only.
"""
import argparse
import json
import math
import sys

PASSES = ("fwd", "bwd_data", "bwd_weight")
QUIET = 0.15


def load(paths):
    """{(impl, layer, pass, threads): record} keeping the best record of each key, and the
    layers in first-seen order."""
    best, layers = {}, []
    for path in paths:
        try:
            f = open(path)
        except OSError as e:
            sys.exit("error: cannot read %s: %s" % (path, e))
        with f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit("error: %s line %d: invalid JSON: %s" % (path, n, e))
                if r.get("_meta"):
                    continue
                try:
                    key = (r["impl"], r["layer"], r["pass"], int(r["threads"]))
                    rank = (r.get("foreign_cores", 0.0) > QUIET, float(r["ms"]))
                    float(r["gflops"])
                except (KeyError, TypeError, ValueError) as e:
                    sys.exit("error: %s line %d: not a benchmark record (%s)" % (path, n, e))
                if r["layer"] not in layers:
                    layers.append(r["layer"])
                if key not in best or rank < best[key][0]:
                    best[key] = (rank, r)
    return {k: v[1] for k, v in best.items()}, layers


def best_peer(recs, peers, layer, pas, t):
    """The fastest peer record of a cell, or None."""
    cands = [recs[(p, layer, pas, t)] for p in peers if (p, layer, pas, t) in recs]
    return max(cands, key=lambda r: r["gflops"], default=None)


def mark(rec):
    """'*' when other processes used more than QUIET cores while rec was timed."""
    return "*" if rec is not None and rec.get("foreign_cores", 0.0) > QUIET else ""


def geomean(values):
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values)), len(values)


def fmt_gm(gm, total):
    if gm is None:
        return "-"
    value, n = gm
    return "**%.2f**" % value + ("" if n == total else " (%d/%d)" % (n, total))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--ours", default="convgemm", help="impl name of ours (default convgemm)")
    ap.add_argument("--peers", default="torch",
                    help="comma list of peer impls; each cell compares with the fastest (default torch)")
    ap.add_argument("--peak", type=float, default=None,
                    help="peak GFLOP/s of all cores; adds %% of peak (scaled by threads/cores)")
    ap.add_argument("--cores", type=int, default=2, help="cores the --peak figure is for (default 2)")
    args = ap.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    recs, layers = load(args.files)
    threads = sorted({k[3] for k in recs if k[0] == args.ours})
    if not threads:
        sys.exit("error: no records with impl %r in the files given" % args.ours)
    cols = [(pas, t) for pas in PASSES for t in threads]
    several = len(peers) > 1
    peer_title = "best of " + "/".join(peers) if several else peers[0]

    print("### GFLOP/s: %s vs %s\n" % (args.ours, peer_title))
    print("| layer | " + " | ".join("%s %dT" % c for c in cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for L in layers:
        cells = []
        for pas, t in cols:
            ours = recs.get((args.ours, L, pas, t))
            peer = best_peer(recs, peers, L, pas, t)
            a = "-" if ours is None else "%.1f" % ours["gflops"] + mark(ours)
            if ours is not None and args.peak:
                a += " (%.0f%%)" % (100 * ours["gflops"] / (args.peak * min(t, args.cores) / args.cores))
            b = "-" if peer is None else "%.1f" % peer["gflops"] + mark(peer) + (
                " %s" % peer["impl"] if several else "")
            cells.append("%s / %s" % (a, b))
        print("| %s | %s |" % (L, " | ".join(cells)))
    print("\nEach cell: %s / %s." % (args.ours, peer_title)
          + (" Percentages: of the peak (%.0f GFLOP/s for %d cores) scaled to the threads used."
             % (args.peak, args.cores) if args.peak else ""))

    print("\n### Ratio %s / %s (GFLOP/s; > 1: %s is faster)\n" % (args.ours, peer_title, args.ours))
    print("| layer | " + " | ".join("%s %dT" % c for c in cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    ratios = {}
    for L in layers:
        cells = []
        for pas, t in cols:
            ours = recs.get((args.ours, L, pas, t))
            peer = best_peer(recs, peers, L, pas, t)
            r = ours["gflops"] / peer["gflops"] if ours and peer and peer["gflops"] > 0 else None
            ratios[(L, pas, t)] = r
            cells.append("-" if r is None else "%.2f" % r + (mark(ours) or mark(peer)))
        print("| %s | %s |" % (L, " | ".join(cells)))
    gms = [fmt_gm(geomean([ratios[(L, pas, t)] for L in layers]), len(layers)) for pas, t in cols]
    print("| geometric mean | %s |" % " | ".join(gms))
    print()
    for t in threads:
        cells = [ratios[(L, pas, t)] for L in layers for pas in PASSES]
        print("- geometric mean over all layers and passes at %d thread(s): %s"
              % (t, fmt_gm(geomean(cells), len(cells))))
    disturbed = sum(1 for r in recs.values() if mark(r))
    if disturbed:
        print("\n'*': other processes used more than %.2f cores while this was timed (%d of %d"
              " records; only records that carry \"foreign_cores\", i.e. the peers', can be"
              " marked); such numbers are unreliable." % (QUIET, disturbed, len(recs)))


if __name__ == "__main__":
    main()
