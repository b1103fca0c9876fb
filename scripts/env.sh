# Source this file (`. scripts/env.sh`) to build the tch crates: it points torch-sys at the
# venv that scripts/setup created. Harmless when the venv does not exist.
_sr_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$_sr_root/.venv/bin/python" ]; then
    LIBTORCH="$("$_sr_root/.venv/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')/torch"
    export LIBTORCH
fi
unset _sr_root
