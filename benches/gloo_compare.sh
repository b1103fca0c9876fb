#!/usr/bin/env bash
# Side-by-side: torch.distributed all_reduce (gloo, CPU) vs `sketchreduce bench allreduce`
# (innet | ring | allgather) on the same sizes, on loopback. Writes out/gloo_compare.{md,json,png}.
#
# Sets up a separate full-torch venv (.venv-gloo, ~2.6 GB of wheels: `import torch` needs the
# full profile) only when this script runs; tests and CI keep the slim .venv.
# Usage: benches/gloo_compare.sh [--workers 2,4] [--dim 1000000] [--densities 0.001,0.01,0.1,1] [--iters 10]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv-gloo"
PY="$VENV/bin/python"
[ -x "$PY" ] || python3 -m venv "$VENV"
have() { "$PY" -c "import importlib.metadata as m,sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true; }
[ "$(have torch)" = "2.13.0" ] || "$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
[ -n "$(have matplotlib)" ] || "$PY" -m pip install -q --disable-pip-version-check matplotlib
cargo build --release -q -p sketchreduce-cli
mkdir -p out
exec "$PY" "$ROOT/benches/gloo_compare.py" --sketchreduce "$ROOT/target/release/sketchreduce" "$@"
