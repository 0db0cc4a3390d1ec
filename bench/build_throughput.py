"""Stage 3 throughput: STAT-Sel over the real MATH pool, and STAT-Syn accepted questions per second.

STAT-Sel: a profile of 500 difficult questions made by the ``SkillMapProxy`` profiler on 500 MATH
test questions (seeded), drawn from the 7,500-question MATH training pool at the paper's size
(k = 5, target 9.5k QA pairs; without a teacher one answer per question, so the shortfall is
reported). Target: the build in under 10 s on CPU.

STAT-Syn: against the loopback OpenAI-compatible server of the tests (``tests/loopback_teacher.py``)
answering every request after ``--latency-s``, at concurrency 16. Each accepted question costs half
a question-writing request (2 questions per request) and one solving request (3 samples), so the
anchor is ``concurrency / latency / 1.5`` questions per second. Then the same build again from the
cache: it must send no request.

    python bench/build_throughput.py
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stat_pl.building import BuildInputs, ContaminationGuard, StatSel, StatSyn  # noqa: E402
from stat_pl.missing_skill_profile import MissingSkillProfile  # noqa: E402
from stat_pl.profiling.base import Attempt  # noqa: E402
from stat_pl.profiling.proxy import SkillMapProxy  # noqa: E402
from stat_pl.records import ProblemRecord, RecordSource, load_records  # noqa: E402
from stat_pl.teacher import OpenAICompatibleTeacher  # noqa: E402
from tests.loopback_teacher import Body, LoopbackTeacherServer, prompt_text  # noqa: E402

KEY_ENV = "STAT_PL_BENCH_TEACHER_KEY"
SHARED = REPO.parent / "shared" / "data"
TARGET_SEL_S = 10.0
REQUESTS_PER_ACCEPTED = 1.5


def proxy_profile(test_path: Path, questions: int, seed: int = 0) -> MissingSkillProfile:
    """Stage 2 without a teacher: ``questions`` MATH test questions, each missing its labelled skills."""
    records = [r for r in load_records(RecordSource(str(test_path))) if r.skills]
    chosen = random.Random(seed).sample(records, questions)
    diagnoses = SkillMapProxy().diagnose([Attempt(r, ()) for r in chosen])
    return MissingSkillProfile.from_questions({d.question_id: d.skills for d in diagnoses})


def bench_sel(pool_inputs: BuildInputs) -> float:
    start = time.perf_counter()
    dataset = StatSel(questions_per_skill=5, target_size=9500).build(pool_inputs)
    wall = time.perf_counter() - start
    stats = dataset.stats
    print(
        f"STAT-Sel: {stats['pairs']} pairs, {stats['picked_questions']} drawn questions, {len(dataset.rows)} "
        f"rows (target 9500, shortfall {stats['shortfall']} without teacher answers) in {wall:.2f} s"
    )
    return wall


def script(body: Body) -> list[str]:
    """Every new question is answered consistently: the bench measures the pipeline, not the filter."""
    text = prompt_text(body)
    if text.startswith("Solve the following"):
        return ["The answer is \\boxed{42}."] * int(body.get("n") or 1)
    skill = re.search(r'use the skill "([^"]+)"', text).group(1)
    tag = abs(hash(text))
    return [f"<question>New {skill} question {tag}-{i}: find the value.</question>" for i in range(2)]


def bench_syn(
    inputs: BuildInputs, references: list[ProblemRecord], latency_s: float, concurrency: int, pairs: int
) -> tuple[float, float, int]:
    """(accepted per second, cached rerun seconds, requests sent by the rerun); each run gets a fresh
    contamination guard over ``references`` (built outside the timing)."""
    profile = inputs.profile
    questions = dict(list(profile.questions.items())[:pairs])
    inputs.profile = MissingSkillProfile.from_questions(questions)
    with LoopbackTeacherServer(script, latency_s=latency_s) as server, tempfile.TemporaryDirectory() as tmp:

        def teacher() -> OpenAICompatibleTeacher:
            return OpenAICompatibleTeacher(
                model="bench",
                base_url=server.base_url,
                api_key_env=KEY_ENV,
                concurrency=concurrency,
                cache_dir=tmp,
                timeout=30,
            )

        inputs.teacher, inputs.guard = teacher(), ContaminationGuard.from_records(references)
        start = time.perf_counter()
        dataset = StatSyn().build(inputs)
        wall = time.perf_counter() - start
        before = server.count
        inputs.teacher, inputs.guard = teacher(), ContaminationGuard.from_records(references)
        start = time.perf_counter()
        StatSyn().build(inputs)
        rerun = time.perf_counter() - start
        rerun_requests = server.count - before
    rate = len(dataset.rows) / wall
    anchor = concurrency / latency_s / REQUESTS_PER_ACCEPTED
    print(
        f"STAT-Syn: {dataset.stats['prompts']} prompts, {dataset.stats['accepted']} accepted in {wall:.2f} s: "
        f"{rate:.1f} questions/s at concurrency {concurrency}, latency {latency_s * 1000:.0f} ms "
        f"(anchor {anchor:.1f}/s: {rate / anchor:.0%})"
    )
    print(f"STAT-Syn cached rerun: {rerun:.2f} s, {rerun_requests} requests")
    return rate, rerun, rerun_requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--syn-pairs", type=int, default=200, help="difficult questions used for STAT-Syn")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"this bench reads the real MATH data in {SHARED}, which is absent")
    os.environ.setdefault(KEY_ENV, "EMPTY")
    start = time.perf_counter()
    pool = load_records(RecordSource(str(SHARED / "math/train.jsonl")))
    profile = proxy_profile(SHARED / "math/test.jsonl", 500)
    print(
        f"loaded {len(pool)} training questions and made a 500-question profile "
        f"({len(profile.histogram)} skills) in {time.perf_counter() - start:.2f} s"
    )
    inputs = BuildInputs(pool=pool, pool_path="math/train.jsonl", profile=profile, profile_path="proxy profile")
    sel_wall = bench_sel(inputs)
    references = [*pool, *load_records(RecordSource(str(SHARED / "math/test.jsonl")))]
    start = time.perf_counter()
    ContaminationGuard.from_records(references)
    print(f"contamination guard over {len(references)} training + test questions: {time.perf_counter() - start:.2f} s")
    rate, rerun, rerun_requests = bench_syn(inputs, references, args.latency_s, args.concurrency, args.syn_pairs)
    print(
        f"\ntarget STAT-Sel < {TARGET_SEL_S:.0f} s: {'met' if sel_wall < TARGET_SEL_S else 'MISSED'} ({sel_wall:.2f} s)"
    )
    print(
        f"STAT-Syn at concurrency {args.concurrency}: {rate:.1f} accepted questions/s; cached rerun "
        f"{rerun:.2f} s with {rerun_requests} requests ({'met' if rerun_requests == 0 else 'MISSED'}: 0)"
    )


if __name__ == "__main__":
    main()
