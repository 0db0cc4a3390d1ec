"""``python -m stat_pl build`` end to end with the shipped configs, on the real MATH data in ../shared.

The STAT-Sel config runs as shipped (offline, CPU, no teacher); the STAT-Syn config runs against the
loopback OpenAI-compatible server with only ``--teacher.*`` overridden, and a rerun pays for nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from loopback_teacher import Body, LoopbackTeacherServer, prompt_text

from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import RecordSource, load_records

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "STAT_PL_TEST_BUILD_CLI_KEY"


def run_build(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), KEY_ENV: "sk-test"}
    return subprocess.run(
        [sys.executable, "-m", "stat_pl", "build", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_shipped_stat_sel_config_builds_the_profiles_skill_mix(shared_data, tmp_path):
    out = run_build("--config", "configs/build_stat_sel.yaml", f"--output_dir={tmp_path / 'sel'}")
    assert out.returncode == 0, out.stderr[-3000:]

    folder = tmp_path / "sel" / "stat_sel"
    records = load_records(RecordSource(str(folder / "data.jsonl")))
    manifest = json.loads((folder / "manifest.json").read_text())
    profile = MissingSkillProfile.from_json(ROOT / "configs/examples/profile_math.json")
    assert len(records) == manifest["rows"] == 200 and manifest["stats"]["shortfall"] == 0
    assert all(r.solutions and r.answer and r.source == "stat_sel" for r in records)
    assert set(manifest["skill_shares"]) == set(profile.histogram)
    for skill, share in profile.shares().items():
        assert abs(manifest["skill_shares"][skill] - share) < 1 / 200
    assert manifest["rows_per_origin"] == {"pool": 200} and manifest["teacher"] == {}
    config = yaml.safe_load((tmp_path / "sel" / "config.yaml").read_text())  # saved by the command line
    assert config["builders"][0]["init_args"]["target_size"] == 200
    assert (folder / "skill_distribution.png").stat().st_size > 10_000


def script_for(test_question: str):
    """Two new questions per prompt; the solutions of one agree, of the other not; trigonometry copies a
    test question."""

    def script(body: Body) -> list[str]:
        text = prompt_text(body)
        if text.startswith("Solve the following"):
            agree = "[agree]" in text
            return [f"\\boxed{{{2 if agree or i == 0 else 10 + i}}}" for i in range(3)]
        skill = re.search(r'use the skill "([^"]+)"', text).group(1)
        first = test_question if skill == "basic trigonometry" else f"A new {skill} problem for {hash(text)}. [agree]"
        return [f"<question>{first}</question>", f"<question>Another {skill} problem, {hash(text)}.</question>"]

    return script


def test_the_shipped_stat_syn_config_runs_against_a_teacher_url_and_resumes_from_the_cache(shared_data, tmp_path):
    test_question = json.loads((shared_data / "math/test.jsonl").read_text().splitlines()[0])["problem"]
    args = [
        "--config",
        "configs/build_stat_syn.yaml",
        f"--output_dir={tmp_path / 'syn'}",
        f"--teacher.api_key_env={KEY_ENV}",
        f"--teacher.cache_dir={tmp_path / 'cache'}",
    ]
    with LoopbackTeacherServer(script_for(test_question)) as server:
        first = run_build(*args, f"--teacher.base_url={server.base_url}")
        assert first.returncode == 0, first.stderr[-3000:]
        manifest = json.loads((tmp_path / "syn/stat_syn/manifest.json").read_text())
        count = server.count
        again = run_build(*args, f"--teacher.base_url={server.base_url}")
        assert again.returncode == 0, again.stderr[-3000:]
        rerun = json.loads((tmp_path / "syn/stat_syn/manifest.json").read_text())

    pairs = 40  # the example profile: 40 difficult questions, one missing skill each
    trig = MissingSkillProfile.from_json(ROOT / "configs/examples/profile_math.json").histogram["basic_trigonometry"]
    assert manifest["stats"]["proposed"] == 2 * pairs
    assert manifest["stats"]["rejected"] == {"contaminated": trig, "inconsistent": pairs}
    assert manifest["rows"] == pairs - trig and manifest["rows_per_origin"] == {"synthetic": pairs - trig}
    assert manifest["teacher"]["requests"] == count == pairs + (2 * pairs - trig)
    assert rerun["teacher"]["requests"] == 0 and rerun["teacher"]["cache_hits"] == count
    assert server.count == count
    config = (tmp_path / "syn" / "config.yaml").read_text()
    assert yaml.safe_load(config)["teacher"]["init_args"]["api_key_env"] == KEY_ENV and "sk-test" not in config
    rows = load_records(RecordSource(str(tmp_path / "syn/stat_syn/data.jsonl")))
    assert all(len(r.solutions) == 3 and r.answer == "2" for r in rows)
