#!/usr/bin/env python3
"""Checks `rust-version` in Cargo.toml against the dependencies' own `rust-version`.

Reads `cargo metadata` (all features) and walks the normal and build dependencies of
convgemm, every platform included. The declared rust-version must be at least the highest
one among them: a lower one would promise a Rust the dependencies refuse to build with.
Our own code's floor is checked by clippy's `incompatible_msrv` lint, which flags std
APIs newer than the declared rust-version.
"""
import json
import subprocess
import sys


def version(v):
    """`"1.89"` and `"1.89.0"` alike as `(1, 89, 0)`."""
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = meta["resolve"]["root"]
declared = packages[root]["rust_version"]

seen, stack = set(), [root]
while stack:
    node = nodes[stack.pop()]
    for dep in node["deps"]:
        kinds = {k["kind"] for k in dep["dep_kinds"]}
        if kinds - {"dev"} and dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            stack.append(dep["pkg"])

floors = sorted(
    ((version(packages[p]["rust_version"]), packages[p]["name"], packages[p]["version"])
     for p in seen if packages[p].get("rust_version")),
    reverse=True,
)
top = floors[0]
setters = ", ".join(f"{n} {v}" for f, n, v in floors if f == top[0])
top_s = ".".join(map(str, top[0][:2] if top[0][2] == 0 else top[0]))
print(f"declared rust-version {declared}; highest among {len(seen)} dependencies: {top_s} ({setters})")
if version(declared) < top[0]:
    sys.exit(f"rust-version {declared} is lower than {top_s}, which {setters} require: raise it")
if version(declared) > top[0]:
    print(f"note: rust-version {declared} is above the dependencies' floor {top_s}; "
          "lower it unless convgemm's own code needs it (clippy's incompatible_msrv tells)")
