#!/usr/bin/env bash
# GPU smoke run of stat-pl: install, the gpu tests, short SFT / GRPO / evaluate runs, one summary.
#
#   bash bench/gpu_smoke.sh [OUT]      # from the repo root, on a Linux machine with an NVIDIA GPU and PyPI access
#
# Installs stat-pl with its dev and vllm extras into the current Python (PyPI's torch, a CUDA build on Linux; without
# vLLM if it does not install, which the summary says), prints nvidia-smi, runs `pytest -m gpu`, then
# configs/sft_smollm2_math.yaml (4 steps), configs/grpo_smollm2_math.yaml (2 steps; engine auto: colocated vLLM where
# installed) and configs/eval_math.yaml (base model and the SFT adapter) on the GPU. Writes to OUT (the environment's,
# else the first argument, else runs/gpu_smoke): summary.md with the device, the date and per step its status,
# seconds and peak GPU memory (device-wide memory.used from nvidia-smi, sampled every 0.5 s), and <step>.log.
# Aims at under 8 minutes on one H100; each step has a time limit as a safety net. The SFT / GRPO / evaluate steps
# read ../shared/data (the MATH copies) and are skipped, with that reason, where it is absent. Exit status 1 when a
# step failed. Written without a GPU: not yet run.
set -euo pipefail

OUT=${OUT:-${1:-runs/gpu_smoke}}
mkdir -p "$OUT"
if ! command -v nvidia-smi >/dev/null; then
  echo "gpu_smoke.sh: nvidia-smi not found; run this on a machine with an NVIDIA GPU and its driver" >&2
  exit 1
fi
GPU=${CUDA_VISIBLE_DEVICES:-0}
GPU=${GPU%%,*}
DATA=../shared/data/math/train.jsonl
STARTED=$SECONDS
ROWS=()
FAILED=0
VLLM="not installed"

sample_gpu_memory() { # used MiB of the GPU every 0.5 s into $1, until killed
  while nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits --id="$GPU" >>"$1" 2>/dev/null; do
    sleep 0.5
  done
}

step() { # step NAME LIMIT_S COMMAND...: run COMMAND with a time limit into OUT/NAME.log, add its row; its status
  local name=$1 limit=$2
  shift 2
  local samples="$OUT/.$name.memory" started=$SECONDS status=0 verdict=passed peak sampler
  : >"$samples"
  sample_gpu_memory "$samples" &
  sampler=$!
  timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1 || status=$?
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  peak=$(sort -n "$samples" | tail -n 1)
  rm -f "$samples"
  if ((status == 124 || status == 137)); then
    verdict="timed out after $limit s"
  elif ((status != 0)); then
    verdict="failed (exit $status)"
  fi
  ROWS+=("| $name | $verdict | $((SECONDS - started)) | ${peak:-n/a} | $name.log |")
  echo "$name: $verdict ($((SECONDS - started)) s)"
  return "$status"
}

skip() { # skip NAME REASON
  ROWS+=("| $1 | skipped: $2 | - | - | - |")
  echo "$1: skipped: $2"
}

# shellcheck disable=SC2329 # called by the EXIT trap
write_summary() {
  {
    echo "# stat-pl GPU smoke run"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader --id="$GPU" 2>&1)"
    echo "- GPU memory used before the steps: ${IDLE_MIB:-n/a} MiB; the peaks below are device-wide, as nvidia-smi sees"
    echo "- torch: $(python -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -n 1)"
    echo "- vLLM: $VLLM"
    echo "- total: $((SECONDS - STARTED)) s"
    echo
    echo "| step | status | seconds | peak GPU MiB | log |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
  } >"$OUT/summary.md"
  echo "summary: $OUT/summary.md"
}
trap write_summary EXIT

IDLE_MIB=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits --id="$GPU")
nvidia-smi | tee "$OUT/nvidia-smi.txt"

# One resolution for torch and vLLM (vLLM pins the torch it was built for); without vLLM where that fails.
if step install-vllm 300 python -m pip install -e ".[dev,vllm]" &&
  python -c 'import vllm' >>"$OUT/install-vllm.log" 2>&1; then
  VLLM="installed: $(python -c 'from importlib.metadata import version; print(version("vllm"))')"
else
  VLLM="not installed: pip install -e '.[dev,vllm]' or import vllm failed (install-vllm.log); GRPO samples with HF"
  step install 300 bash -c 'python -m pip install torch && python -m pip install -e ".[dev]"' || exit 1
fi
step cuda 60 python -c 'import torch
assert torch.version.cuda, f"torch {torch.__version__} is a CPU build: pip uninstall torch, then run this again"
assert torch.cuda.is_available(), "torch sees no CUDA device"
print(torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())' ||
  exit 1
step smollm2 180 python -c 'from stat_pl.offline_models import ensure_smollm2; print(ensure_smollm2())' || exit 1

step gpu-tests 300 python -m pytest -m gpu -q -p no:cacheprovider || FAILED=1

if [[ ! -f $DATA ]]; then
  for name in sft grpo evaluate; do skip "$name" "$DATA is absent"; done
  exit "$FAILED"
fi
step sft 180 python -m stat_pl fit --config configs/sft_smollm2_math.yaml --trainer.accelerator=gpu \
  --trainer.max_steps=4 --trainer.limit_val_batches=2 --trainer.default_root_dir="$OUT/sft" || FAILED=1
step grpo 240 python -m stat_pl fit --config configs/grpo_smollm2_math.yaml --trainer.accelerator=gpu \
  --trainer.max_steps=2 --trainer.default_root_dir="$OUT/grpo" || FAILED=1
adapters="{}"
[[ -f $OUT/sft/adapter/adapter_config.json ]] && adapters="{sft: $OUT/sft/adapter}"
step evaluate 180 python -m stat_pl evaluate --config configs/eval_math.yaml --output_dir="$OUT/eval" \
  --adapters="$adapters" || FAILED=1
exit "$FAILED"
