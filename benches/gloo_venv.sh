# Sourced by benches/gloo_compare.sh and benches/netbench/run: makes sure $ROOT/.venv-gloo has
# the *full* torch 2.13.0 (`import torch` needs it; the slim .venv of the tch crates lacks
# cuDNN) and matplotlib, and sets GLOO_PY to its python. ~4.7 GB on first use; tests and CI
# never source this.
gloo_venv() {
    local venv="$ROOT/.venv-gloo"
    GLOO_PY="$venv/bin/python"
    [ -x "$GLOO_PY" ] || python3 -m venv "$venv"
    _have() { "$GLOO_PY" -c "import importlib.metadata as m,sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true; }
    [ "$(_have torch)" = "2.13.0" ] || "$GLOO_PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
    [ -n "$(_have matplotlib)" ] || "$GLOO_PY" -m pip install -q --disable-pip-version-check matplotlib
}
