"""``python -m stat_pl evaluate`` end to end on the real SmolLM2-135M-Instruct, on CPU (slow).

Three rows in one call: the base model, an adapter written by ``python -m stat_pl fit`` (one optimizer
step) and an adapter whose LoRA B weights were perturbed (so its answers must differ from the base's),
over 10 questions of each local benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stat_pl.models import LoRAConfig, load_causal_lm

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = {
    "math": "math/test.jsonl",
    "gsm8k": "eval/gsm8k.jsonl",
    "aime24": "eval/aime24.jsonl",
    "amc23": "eval/amc23.jsonl",
}
METRICS = {"math": ["pass@1"], "gsm8k": ["pass@1"], "aime24": ["pass@1", "pass@2"], "amc23": ["avg@2"]}


def _run(*args: str) -> str:
    """``python -m stat_pl ...`` with one torch thread, several times faster on a shared CPU."""
    done = subprocess.run(
        [sys.executable, "-m", "stat_pl", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _fit_adapter(out: Path) -> Path:
    _run(
        "fit",
        "--config",
        "configs/sft_smollm2_math.yaml",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={out}",
    )
    return out / "adapter"


def _perturbed_adapter(base: Path, out: Path) -> Path:
    model = load_causal_lm(str(base), lora=LoRAConfig())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=generator)
    model.save_pretrained(str(out))
    return out


def _table_cells(table: str) -> dict[str, dict[str, float]]:
    header, _, *rows = [line for line in table.splitlines() if line.startswith("|")]
    names = header.strip("| ").split(" | ")
    return {
        cells[0]: {n: float(c) for n, c in zip(names[1:], cells[1:], strict=True)}
        for cells in (row.strip("| ").split(" | ") for row in rows)
    }


@pytest.mark.slow
def test_evaluate_base_and_adapters_on_smollm2(smollm2_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    adapters = {
        "sft": str(_fit_adapter(tmp_path / "fit")),
        "perturbed": str(_perturbed_adapter(smollm2_dir, tmp_path / "perturbed")),
    }
    config = {
        "model": "offline:smollm2-135m-instruct",
        "adapters": adapters,
        "max_new_tokens": 6,
        "batch_size": 16,
        "progress": False,
        "benchmarks": [
            {"name": n, "path": str(shared_data / p), "metrics": METRICS[n], "limit": 10} for n, p in BENCHMARKS.items()
        ],
    }
    config_path = tmp_path / "eval.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path / "eval"

    stdout = _run("evaluate", "--config", str(config_path), f"--output_dir={out}")
    results = json.loads((out / "results.json").read_text())
    assert list(results["summary"]) == ["base", "sft", "perturbed"]
    assert results["generation"]["completions_generated"] == 3 * (10 + 10 + 10 + 20 + 20)
    table = (out / "table.md").read_text()
    assert table in stdout
    cells = _table_cells(table)
    for model, per_benchmark in results["summary"].items():
        for benchmark, metrics in per_benchmark.items():
            for metric, value in metrics.items():
                assert cells[model][f"{benchmark.upper()} {metric}"] == pytest.approx(100 * value, abs=0.05)
    responses = {(q["model"], q["benchmark"], q["id"], q["setting"]["n"]): q["responses"] for q in results["questions"]}
    assert len(responses) == 3 * 50
    assert any(responses[("perturbed", *key[1:])] != text for key, text in responses.items() if key[0] == "base")
    assert (out / "plots" / "math_subject.png").is_file() and (out / "plots" / "math_skill.png").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["adapters"] == adapters

    _run("evaluate", "--config", str(config_path), f"--output_dir={out}")
    again = json.loads((out / "results.json").read_text())
    assert again["generation"]["completions_generated"] == 0
    assert again["summary"] == results["summary"] and (out / "table.md").read_text() == table
