"""``python -m stat_pl select-lr``: each method's learning rate, chosen as the paper chooses it.

The paper trains every method at each peak learning rate of {5e-4, 2e-4, 1e-4, 8e-5, 2e-5} and reports
the run with the best MATH accuracy. Here that accuracy is read on MATH's 1,000 validation questions
(benchmark ``math_validation``, the profile's questions), never on the 4,000 Table 3 reports: an
``evaluate`` run over every sweep adapter writes ``results.json``, and this stage reads it, picks each
method's best run and copies that run's adapter to ``<output_dir>/<method>/adapter``, the folder the
"+GRPO" runs and Table 3's evaluation read. Ties go to the rate listed first in the sweep (the paper
names no rule). ``<output_dir>/<method>/selection.json`` keeps every rate's score and the choice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from stat_pl.errors import MissingFileError, UserError

#: Where an ``evaluate`` run over the sweep finds a method's run at a learning rate: ``<method>@lr<rate>``.
SWEEP_LABEL = "{method}@lr{lr:g}"


def sweep_label(method: str, lr: float) -> str:
    """The row label of ``method``'s run at ``lr`` in the sweep's evaluation (``stat_sel@lr0.0002``)."""
    return SWEEP_LABEL.format(method=method, lr=lr)


def select_learning_rate(
    results: str,
    sweeps: dict[str, dict[str, str]],
    output_dir: str,
    benchmark: str = "math_validation",
    metric: str = "pass@1",
) -> dict[str, dict[str, Any]]:
    """Pick each method's best learning rate by ``benchmark`` ``metric`` and copy its run's adapter.

    Args:
        results: the ``results.json`` of an ``evaluate`` run whose adapters are the sweep's runs, labelled
            :func:`sweep_label` (``<method>@lr<rate>``).
        sweeps: method -> learning rate (a number as text, ``"2e-4"``) -> the run's folder (a ``fit``'s
            ``default_root_dir``, holding ``adapter/``), in the order ties are broken.
        output_dir: ``<output_dir>/<method>/adapter`` and ``selection.json`` are written for each method.
        benchmark: the benchmark the choice is made on (a validation set, never a reported test set).
        metric: the metric of ``benchmark`` that is maximised.

    Returns:
        method -> its ``selection.json`` content.
    """
    summary = _read_summary(Path(results))
    chosen = {}
    for method, written in sweeps.items():
        if not written:
            raise UserError(f"sweeps: {method!r} lists no learning rate")
        runs = {_learning_rate(method, lr): run for lr, run in written.items()}
        scores = {lr: _score(summary, sweep_label(method, lr), benchmark, metric, results) for lr in runs}
        best = max(scores, key=lambda lr: (scores[lr], -list(runs).index(lr)))
        chosen[method] = _copy_choice(method, best, runs, scores, Path(output_dir), benchmark, metric, results)
    return chosen


def _learning_rate(method: str, written: str) -> float:
    try:
        return float(written)
    except ValueError:
        raise UserError(f"sweeps: {method}: {written!r} is not a learning rate") from None


def _read_summary(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"results: {path} does not exist; run `evaluate` over the sweep's adapters first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))["summary"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"results: {path} is not an evaluate results.json with a 'summary' ({e})") from None


def _score(summary: dict[str, Any], label: str, benchmark: str, metric: str, results: str) -> float:
    try:
        return float(summary[label][benchmark][metric])
    except KeyError:
        raise UserError(
            f"results: {results} has no {benchmark} {metric} for {label!r} (rows: {sorted(summary)}); "
            "evaluate every sweep adapter under its sweep label"
        ) from None


def _copy_choice(
    method: str,
    best: float,
    runs: dict[float, str],
    scores: dict[float, float],
    output_dir: Path,
    benchmark: str,
    metric: str,
    results: str,
) -> dict[str, Any]:
    source = Path(runs[best]) / "adapter"
    if not (source / "adapter_config.json").is_file():
        raise MissingFileError(f"sweeps: {method} at lr {best:g}: {source} holds no adapter (adapter_config.json)")
    target = output_dir / method
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target / "adapter")
    selection = {
        "method": method,
        "lr": best,
        "run": runs[best],
        "chosen_on": {"benchmark": benchmark, "metric": metric, "results": results},
        "scores": {f"{lr:g}": scores[lr] for lr in runs},
    }
    (target / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    print(f"select-lr: {method}: lr {best:g} ({benchmark} {metric} {100 * scores[best]:.1f}%) <- {runs[best]}")
    return selection
