#!/usr/bin/env bash
# DVC for `python -m stat_pl pipeline` (and its miniature test), in a venv of its own: DVC's hydra-core pins
# antlr4-python3-runtime 4.9, which breaks math-verify's LaTeX parsing in stat-pl's environment. Prints the
# executable to point $STAT_PL_DVC at.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-dvc/bin/dvc ] || { python -m venv .venv-dvc && .venv-dvc/bin/pip install --quiet "dvc==3.67.1"; }
echo "$PWD/.venv-dvc/bin/dvc"
