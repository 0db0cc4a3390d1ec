"""`python -m stat_pl fit` with bad input: one line naming the file and line, exit status 2; a bug keeps its traceback.

The data and model-folder errors surface in the DataModule's setup, before the model is built, so these runs stay short.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROW = {"problem": "What is 1 + 1?", "answer": "2", "solution": "1 + 1 = \\boxed{2}"}


def fit_config(tmp_path: Path, model_dir: Path, train: dict, **data) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "run"),
        },
        "model": {
            "class_path": "stat_pl.modules.sft.SFTModule",
            "init_args": {"student": {"model": str(model_dir), "quantization": "none"}},
        },
        "data": {
            "class_path": "stat_pl.data.sft_datamodule.SFTDataModule",
            "init_args": {"train": [train], "batch_size": 1, **data},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def records(path: Path) -> dict:
    return {"class_path": "stat_pl.records.RecordSource", "init_args": {"path": str(path)}}


def fit(config: Path, tmp_path: Path, **extra_env: str) -> subprocess.CompletedProcess:
    """``python -m stat_pl fit --config config``; modules written into ``tmp_path`` are importable."""
    env = {name: value for name, value in os.environ.items() if name != "STAT_PL_TRACEBACK"}
    env.update(PYTHONPATH=str(tmp_path), TOKENIZERS_PARALLELISM="false", **extra_env)
    return subprocess.run(
        [sys.executable, "-m", "stat_pl", "fit", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_one_line_error(out: subprocess.CompletedProcess, message: str) -> None:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("stat_pl fit: error: ") and message in last, last


@pytest.mark.parametrize(
    "content, data, message",
    [
        pytest.param(None, {}, "data file {path} does not exist", id="missing"),
        pytest.param("", {}, "data.train[0] ({path}) has no rows", id="empty"),
        pytest.param(json.dumps(ROW) + "\n{not json\n", {}, "{path}:2: malformed JSON", id="malformed-row"),
        pytest.param(json.dumps({"answer": "2"}) + "\n", {}, "{path}:1: field 'problem'", id="missing-field"),
        pytest.param(
            json.dumps({**ROW, "problem": "What is 1 + 1? " * 40}) + "\n",
            {"max_length": 16},
            "data.train[0] ({path}): all 1 rows were skipped",
            id="every-row-skipped",
        ),
    ],
)
def test_a_bad_data_file_is_one_line_naming_file_and_line(tmp_path, tiny_model_dir, content, data, message):
    path = tmp_path / "train.jsonl"
    if content is not None:
        path.write_text(content)
    out = fit(fit_config(tmp_path, tiny_model_dir, records(path), **data), tmp_path)
    assert_one_line_error(out, message.format(path=path))


def test_a_missing_model_folder_is_one_line_naming_it(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROW) + "\n")
    absent = tmp_path / "no-such-model"
    out = fit(fit_config(tmp_path, absent, records(path)), tmp_path)
    assert_one_line_error(out, f"model {absent}: no folder at {absent}")


def test_stat_pl_traceback_shows_where_a_user_error_was_raised(tmp_path, tiny_model_dir):
    out = fit(fit_config(tmp_path, tiny_model_dir, records(tmp_path / "absent.jsonl")), tmp_path, STAT_PL_TRACEBACK="1")
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "MissingFileError" in out.stderr, out.stderr[-3000:]


def test_a_bug_keeps_its_traceback(tmp_path, tiny_model_dir):
    (tmp_path / "broken_source.py").write_text(
        "from stat_pl.records import DataSource\n\n\n"
        "class BrokenSource(DataSource):\n"
        "    def load(self):\n"
        "        return [][0]\n"
    )
    out = fit(fit_config(tmp_path, tiny_model_dir, {"class_path": "broken_source.BrokenSource"}), tmp_path)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "IndexError" in out.stderr, out.stderr[-3000:]
    assert "stat_pl fit: error:" not in out.stderr
