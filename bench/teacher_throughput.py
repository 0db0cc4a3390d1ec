"""Teacher throughput: Stage 0 labels per second against a server with 200 ms latency, and a cached rerun.

Runs ``label_skills`` through ``OpenAICompatibleTeacher`` against the loopback OpenAI-compatible server
of the tests (``tests/loopback_teacher.py``), which answers every request after ``--latency-s``. The
anchor is the ideal rate ``concurrency / latency`` (every worker always waiting on one request); the
table shows how close the client gets to it. Then 1,000 labels are made, and made again by a fresh
teacher on the same cache: that rerun must send no request and take under 2 s.

    python bench/teacher_throughput.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stat_pl.profiling.teacher_profiler import label_skills  # noqa: E402
from stat_pl.records import ProblemRecord  # noqa: E402
from stat_pl.skills import SkillCatalog  # noqa: E402
from stat_pl.teacher import OpenAICompatibleTeacher  # noqa: E402
from tests.loopback_teacher import LoopbackTeacherServer  # noqa: E402

KEY_ENV = "STAT_PL_BENCH_TEACHER_KEY"
SHARED_CATALOG = REPO.parent / "shared" / "data" / "skills" / "catalog.json"
TARGET_LABELS_PER_S_AT_16 = 50.0
TARGET_CACHED_RERUN_S = 2.0


def catalog() -> SkillCatalog:
    """The real MATH catalog when ``../shared`` is there (realistic prompt sizes), else a small one."""
    if SHARED_CATALOG.is_file():
        return SkillCatalog.from_json(SHARED_CATALOG)
    return SkillCatalog({"algebra": ["solving_equations", "factoring_skills", "quadratic_equations"]})


def records(count: int, tag: str) -> list[ProblemRecord]:
    return [
        ProblemRecord(
            id=f"{tag}/{i}",
            problem=f"Solve x + {i} = {count} ({tag}).",
            answer=str(count - i),
            subject="algebra",
            solutions=(f"x = \\boxed{{{count - i}}}",),
        )
        for i in range(count)
    ]


def run(
    server: LoopbackTeacherServer, cache_dir: str, concurrency: int, batch: list[ProblemRecord], skills: SkillCatalog
) -> tuple[float, int, int]:
    """Label ``batch``; returns (wall seconds, labelled, server requests made)."""
    teacher = OpenAICompatibleTeacher(
        model="bench-teacher",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        timeout=30,
        max_retries=2,
        concurrency=concurrency,
        cache_dir=cache_dir,
    )
    before = server.count
    start = time.perf_counter()
    _, stats = label_skills(batch, teacher, skills)
    return time.perf_counter() - start, stats["labelled"], server.count - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--rerun-labels", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "EMPTY")
    skills = catalog()
    answer = f"<skill>{skills.skills('algebra')[0]}</skill>"
    sizes = {1: 64, 4: 64, 16: 256, 64: 256}
    with (
        LoopbackTeacherServer(lambda body: answer, latency_s=args.latency_s) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        print(f"server latency {args.latency_s * 1000:.0f} ms; anchor = concurrency / latency")
        print(f"{'concurrency':>11} {'labels':>6} {'wall s':>7} {'labels/s':>9} {'anchor/s':>9} {'of anchor':>9}")
        rates = {}
        for concurrency, count in sizes.items():
            wall, labelled, _ = run(
                server, f"{tmp}/c{concurrency}", concurrency, records(count, f"c{concurrency}"), skills
            )
            rates[concurrency] = labelled / wall
            anchor = concurrency / args.latency_s
            print(
                f"{concurrency:>11} {labelled:>6} {wall:>7.2f} {rates[concurrency]:>9.1f} {anchor:>9.1f} "
                f"{rates[concurrency] / anchor:>9.0%}"
            )
        batch = records(args.rerun_labels, "rerun")
        first_wall, _, first_requests = run(server, f"{tmp}/rerun", 64, batch, skills)
        rerun_wall, rerun_labelled, rerun_requests = run(server, f"{tmp}/rerun", 64, batch, skills)
    print(
        f"\n{args.rerun_labels} labels: first run {first_wall:.2f} s ({first_requests} requests); "
        f"cached rerun {rerun_wall:.2f} s ({rerun_requests} requests, {rerun_labelled} labelled)"
    )
    print(
        f"target >= {TARGET_LABELS_PER_S_AT_16:.0f} labels/s at concurrency 16: "
        f"{'met' if rates[16] >= TARGET_LABELS_PER_S_AT_16 else 'MISSED'} ({rates[16]:.1f})"
    )
    print(
        f"target cached rerun of {args.rerun_labels} labels < {TARGET_CACHED_RERUN_S:.0f} s, 0 requests: "
        f"{'met' if rerun_wall < TARGET_CACHED_RERUN_S and rerun_requests == 0 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
