#!/usr/bin/env bash
# Create or refresh the project's environment; a second run with nothing changed takes seconds.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# ENN-PyTorch's source archive, when a shared/upstream/ folder lies beside the project (CI has one; a
# user's clone does not, and the upstream compatibility tests then skip, naming what to install).
upstream=$(ls ../shared/upstream/enn_torch-*.tar.gz 2>/dev/null | sort | tail -n 1 || true)
want=$(cat pyproject.toml constraints.txt | { cat; echo "$upstream"; } | sha256sum | cut -d' ' -f1)
stamp="$venv/.enn-nb-env"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "environment up to date: $venv"
    exit 0
fi
start=$(date +%s)
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# torch is pinned in the same command as everything else: alone, a dependency would pull a CUDA build.
"$venv/bin/python" -m pip install --disable-pip-version-check -q \
    -c constraints.txt --only-binary=onnxsim \
    "torch==2.13.0" -e ".[dev]" onnxsim
# The kernelspec ipykernel ships starts `python` from PATH: register one that starts this venv's Python.
"$venv/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (enn_nb)" >/dev/null
if [ -n "$upstream" ]; then
    # Upstream declares Python >= 3.12 and CUDA-only extras; it runs on 3.11 CPU with the three
    # packages of the `enn-torch` extra. --no-deps keeps pip from pulling a CUDA torch.
    "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps --ignore-requires-python \
        -c constraints.txt "$upstream" tensordict pyvers torchdata
    echo "installed ENN-PyTorch from $upstream"
fi
echo "$want" > "$stamp"
echo "environment ready in $(( $(date +%s) - start ))s: $venv"
