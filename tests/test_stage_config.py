"""An offline stage saves its parsed config to ``<output_dir>/config.yaml``, and that file reruns it.

What a user relies on: ``python -m stat_pl <stage> --config <old run>/config.yaml --output_dir=<new>``
repeats the run exactly, with every argument the first run had, defaults and nested objects included
(the detector's ``k``, the builder's ``target_size``), and no secret in the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from stat_pl.cli import main


def _rerun_from_saved(stage: str, first: Path, second: Path, *args: str) -> tuple[dict, dict]:
    main([stage, *args, f"--output_dir={first}"])
    main([stage, "--config", str(first / "config.yaml"), f"--output_dir={second}"])
    return yaml.safe_load((first / "config.yaml").read_text()), yaml.safe_load((second / "config.yaml").read_text())


def test_a_build_reruns_from_its_saved_config(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    first, second = _rerun_from_saved(
        "build", tmp_path / "a", tmp_path / "b", "--config", "configs/build_stat_sel.yaml", "--plot=false"
    )
    assert first["builders"][0]["init_args"]["target_size"] == 200 and first["plot"] is False
    assert {**second, "output_dir": first["output_dir"]} == first
    data = [(tmp_path / run / "stat_sel" / "data.jsonl").read_text() for run in ("a", "b")]
    assert data[0] == data[1] and len(data[0].splitlines()) == 200


def test_a_profile_reruns_from_its_saved_config(
    tiny_model_dir: Path, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    config = tmp_path / "profile.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "questions": {"path": str(shared_data / "math" / "test.jsonl")},
                "student": str(tiny_model_dir),
                "detector": {
                    "class_path": "stat_pl.profiling.detectors.ConsistencyDetector",
                    "init_args": {"k": 3, "min_votes": 2},
                },
                "profiler": {"class_path": "stat_pl.profiling.proxy.SkillMapProxy"},
                "num_questions": 3,
                "max_new_tokens": 4,
                "temperature": 0.9,
                "seed": 7,
            }
        )
    )
    first, second = _rerun_from_saved("profile", tmp_path / "a", tmp_path / "b", "--config", str(config))
    assert first["detector"]["init_args"] == {"k": 3, "min_votes": 2} and first["seed"] == 7
    assert {**second, "output_dir": first["output_dir"]} == first
    rows = [
        [yaml.safe_load(line) for line in (tmp_path / run / "responses.jsonl").read_text().splitlines()]
        for run in ("a", "b")
    ]
    assert rows[0] == rows[1] and all(len(row["responses"]) == 3 for row in rows[0])


def test_a_catalog_without_the_benchmark_is_a_one_line_error(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("STAT_PL_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["build", "--config", "configs/build_stat_sel.yaml", "--benchmark=MATH9", f"--output_dir={tmp_path}"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and line.startswith("stat_pl build: error: ") and "no benchmark 'MATH9'" in line
