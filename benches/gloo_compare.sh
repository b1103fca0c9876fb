#!/usr/bin/env bash
# Side-by-side: torch.distributed all_reduce (gloo, CPU) vs `sketchreduce bench allreduce`
# (innet | ring | allgather) on the same sizes, on loopback. Writes out/gloo_compare.{md,json,png}.
#
# Sets up a separate full-torch venv (.venv-gloo, see benches/gloo_venv.sh) only when this
# script runs; tests and CI keep the slim .venv. For the network-bound comparison (1 Gbit/s
# links between network namespaces) use benches/netbench/run instead.
# Usage: benches/gloo_compare.sh [--workers 2,4] [--dim 1000000] [--densities 0.001,0.01,0.1,1] [--iters 10]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. "$ROOT/benches/gloo_venv.sh"
gloo_venv
cargo build --release -q -p sketchreduce-cli
mkdir -p out
exec "$GLOO_PY" "$ROOT/benches/gloo_compare.py" --sketchreduce "$ROOT/target/release/sketchreduce" "$@"
