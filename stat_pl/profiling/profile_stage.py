"""``python -m stat_pl profile --config configs/profile_math.yaml``: Stages 1 and 2 offline, once.

The student answers the validation questions (0-shot), a :class:`DifficultyDetector` picks the difficult
ones and a :class:`Profiler` (the LLM teacher by default) names the skills the student misses on each:
the paper's Missing-Skill-Profile (DESIGN.md, Stages 1-2). MATH's validation questions are the 1k of
:func:`~stat_pl.evaluation.benchmarks.split_math_test`, the same split evaluation uses, so profiling
never sees an evaluation question; ``split: evaluation`` runs the detector over the evaluation split
instead, which is what a MATH-D benchmark is built from.

Written to ``output_dir``:

* ``profile.json``: the :class:`MissingSkillProfile`. Its ``questions`` are *all* difficult questions
  (an unlabelled one with no skills), so a MATH-D benchmark can read them; ``asked`` counts the profiled
  questions per skill (what ``weighting: rate`` divides by); ``meta`` holds the counts,
  the detector's and profiler's classes, and every question's difficulty and diagnosis status;
* ``responses.jsonl``: per question of this run the responses, the verdict and the skills named;
* ``generations.jsonl``: the graded responses, the store reruns read (evaluation's
  :class:`~stat_pl.evaluation.store.ResultStore`, under the group ``profile``);
* ``profile.png``: the top skills; ``summary.md`` / ``summary.json``: the counts;
* ``config.yaml``: from the command line, the parsed config that reruns the stage (:mod:`stat_pl.cli`).

Several devices or nodes (``devices``, ``num_nodes``, as ``fit``'s trainer takes them): Lightning Fabric launches one
process per device (:mod:`stat_pl.stage_ranks`), each generates its share of the questions into the same
``generations.jsonl``, and rank 0 judges them all and writes the files: the profile of the 1-rank run (greedy
answers; sampled ones are other draws of the same distribution, as each chunk of questions is seeded by its first).

Reruns pay nothing twice: responses are kept in ``generations.jsonl`` as each batch finishes (keyed by
the student, its adapter's weights, the question and the sampling), so an interrupted or repeated run
generates only what is missing and loads no model when nothing is; teacher answers come from the
teacher's cache.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from stat_pl.distributed import shard
from stat_pl.engines.choice import EngineChoice, choose_engine
from stat_pl.engines.server import ServerSettings
from stat_pl.engines.vllm import VLLMSettings
from stat_pl.errors import UserError
from stat_pl.evaluation.adapters import ModelEntry, check_adapter, model_skeleton
from stat_pl.evaluation.benchmarks import split_math_test
from stat_pl.evaluation.scoring import QuestionResult, SampleSetting, Timing
from stat_pl.evaluation.store import ResultStore, result_key
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.plots import plot_bars
from stat_pl.profiling.base import Attempt, Diagnosis, DifficultyDetector, Profiler
from stat_pl.profiling.detectors import GroundTruthDetector
from stat_pl.profiling.round import judge
from stat_pl.profiling.run_files import write_summary
from stat_pl.profiling.teacher_profiler import TeacherProfiler
from stat_pl.records import ProblemRecord, RecordSource, canonical_subject, load_records
from stat_pl.stage_ranks import launch_ranks
from stat_pl.teacher.base import Teacher

Split = Literal["validation", "evaluation", "all"]
GENERATIONS_FILE = "generations.jsonl"
#: The benchmark name the profile stage's results are stored under (a result key's second part).
STORE_GROUP = "profile"


def profile(
    questions: RecordSource,
    student: str = "offline:smollm2-135m-instruct",
    adapter: str | None = None,
    detector: DifficultyDetector | None = None,
    teacher: Teacher | None = None,
    profiler: Profiler | None = None,
    catalog: str = "../shared/data/skills/catalog.json",
    benchmark: str = "MATH",
    split: Split = "validation",
    split_seed: int = 0,
    validation_size: int = 1000,
    num_questions: int | None = None,
    max_new_tokens: int = 1024,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    system_prompt: str | None = None,
    output_dir: str = "runs/profile",
    top_k: int = 20,
    engine: EngineChoice = "auto",
    vllm: VLLMSettings | None = None,
    server: ServerSettings | None = None,
    device: str | None = None,
    accelerator: str = "auto",
    devices: int = 1,
    num_nodes: int = 1,
    timeout_s: float = 4 * 3600.0,
) -> dict[str, Any]:
    """Build the student's Missing-Skill-Profile on validation questions; write it with responses and a summary.

    Args:
        questions: the question file or Hub dataset (``../shared/data/math/test.jsonl`` for MATH).
        student: the student: Hub name, local folder, GGUF file or ``offline:smollm2-135m-instruct``.
        adapter: a PEFT adapter folder trained on ``student`` (e.g. after STAT-Sel), merged for generation.
        detector: Stage 1 (``class_path`` / ``init_args``); default ``GroundTruthDetector``. Its
            ``samples_per_question`` responses are sampled per question.
        teacher: the teacher of the default profiler, ``TeacherProfiler(teacher, catalog, benchmark)``.
        profiler: Stage 2 instead of the default, e.g. ``stat_pl.profiling.proxy.SkillMapProxy`` (no teacher)
            or a ``TeacherProfiler`` with its own teacher and options. Give ``teacher`` or ``profiler``.
        catalog: the skill catalog JSON of the default profiler; ``benchmark`` its entry.
        split: ``validation`` / ``evaluation``: that part of MATH's test split (:func:`split_math_test`
            with ``split_seed`` and ``validation_size``); ``all``: every question (not MATH).
        num_questions: profile only the first N questions of the split (it is shuffled); None: all.
        max_new_tokens, temperature, top_p, seed: the student's sampling (temperature 0 is greedy;
            consistency voting needs > 0).
        batch_size: sequences decoded together; responses are saved after each batch.
        system_prompt: an optional system turn; default the paper's 0-shot prompt, the question alone.
        output_dir: where everything is written; a rerun reuses its responses.
        top_k: skills in the bar chart.
        engine: what the student generates with: ``auto`` (vLLM on a GPU where it is installed, else HF:
            :mod:`stat_pl.engines.choice`), ``hf``, ``vllm`` (held as :class:`VLLMSettings` say) or ``vllm_server``: a
            separate ``vllm serve`` at ``server.url`` (:class:`~stat_pl.engines.server.ServerSettings`).
        device: where ``engine: hf`` puts the student of a single process (``cuda:1``, ``cpu``); default the current
            CUDA device, else the CPU.
        accelerator, devices, num_nodes: as Lightning's Trainer takes them: one process per device, each generating its
            share of the questions on its own device (vLLM: its own engine there), rank 0 judging them all.
        timeout_s: how long a rank waits for the others (the slowest share); past it the stage stops naming this.
    """
    detector = detector or GroundTruthDetector()
    if detector.samples_per_question > 1 and temperature <= 0:
        raise UserError(
            f"profile: the detector {type(detector).__name__} votes over "
            f"{detector.samples_per_question} samples per question, which greedy decoding makes "
            "identical; set `temperature` above 0 (e.g. 0.7)"
        )
    profiler = _profiler(profiler, teacher, catalog, benchmark)
    ranks = launch_ranks("profile", accelerator, devices, num_nodes, timeout_s, device)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    records = select_questions(questions, split, split_seed, validation_size, num_questions)
    setting = SampleSetting(
        n=detector.samples_per_question,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        top_p=top_p,
        seed=seed,
        system_prompt=system_prompt,
    )
    entry = ModelEntry("student", student, adapter)
    if adapter is not None:
        check_adapter(adapter, student, model_skeleton(student))
    from stat_pl.evaluation.evaluate import close_engines, engine_factory

    chosen = choose_engine(engine, "engine")
    factory = engine_factory(chosen, batch_size, adapter is not None, vllm, str(ranks.device), server)
    store, model_id = ResultStore(output / GENERATIONS_FILE), entry.fingerprint()
    try:
        generated = store.generate_missing(
            model_id,
            STORE_GROUP,
            shard(records, ranks.rank, ranks.world_size),
            setting,
            lambda: factory(entry),
            batch_size // setting.n,
            Timing(),
            model="student",
        )
    finally:
        close_engines(factory)
    generated_per_rank = ranks.objects.gather(generated)  # and every share is in the file
    if not ranks.is_zero:
        return {}
    store = ResultStore(output / GENERATIONS_FILE)  # with the other ranks' answers
    results = [store.get(result_key(model_id, STORE_GROUP, r, setting)) for r in records]
    attempts = [Attempt(r, tuple(result.responses)) for r, result in zip(records, results, strict=True)]
    difficult, diagnoses = judge(attempts, detector, profiler)
    hard = {attempt.record.id for attempt in difficult}
    verdicts = [attempt.record.id in hard for attempt in attempts]
    stats = dict(getattr(profiler, "stats", None) or {})
    counts = _counts(results, verdicts, diagnoses, stats, generated_per_rank)
    result = MissingSkillProfile.from_round(
        records,
        {d.question_id: d.skills for d in diagnoses},
        student=student,
        adapter=adapter,
        split=split,
        split_seed=split_seed,
        counts=counts,
        detector=_class_path(detector),
        profiler=_class_path(profiler),
        difficulty={a.record.id: hard for a, hard in zip(attempts, verdicts, strict=True)},
        statuses={d.question_id: d.status for d in diagnoses},
    )
    result.to_json(output / "profile.json")
    _write_responses(output / "responses.jsonl", attempts, verdicts, diagnoses)
    plot_bars(
        {"missing skills": result.histogram},
        output / "profile.png",
        f"Missing-Skill-Profile of {student} ({counts['difficult']} difficult questions)",
        "difficult questions",
        top_k=top_k,
    )
    table = write_summary(
        output,
        f"profile of {student}",
        counts,
        {
            "unmatched_skills": stats.get("unmatched_skills", {}),
            "top_skills": result.top_k(top_k),
            "files": sorted(p.name for p in output.iterdir()),
        },
    )
    print(table)
    return counts


def select_questions(
    questions: RecordSource, split: Split, split_seed: int, validation_size: int, num_questions: int | None
) -> list[ProblemRecord]:
    """The questions to profile: the split's part (subjects spelled as the catalog does), the first N."""
    records = [canonical_subject(r) for r in load_records(questions)]
    if split != "all":
        validation, evaluation = split_math_test(records, seed=split_seed, validation_size=validation_size)
        records = validation if split == "validation" else evaluation
    if num_questions is not None and num_questions < 1:
        raise UserError(f"num_questions must be >= 1 (or null for all), got {num_questions}")
    return records[:num_questions] if num_questions else records


def _class_path(value: object) -> str:
    """How a config names ``value``'s class; its arguments are in the run's ``config.yaml``."""
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _profiler(profiler: Profiler | None, teacher: Teacher | None, catalog: str, benchmark: str) -> Profiler:
    if profiler is not None and teacher is not None:
        raise UserError(
            "profile: give `teacher` (for the default TeacherProfiler) or `profiler` (which holds its "
            "own teacher, if any), not both"
        )
    if profiler is not None:
        return profiler
    if teacher is None:
        raise UserError(
            "profile: set `teacher` (e.g. class_path stat_pl.teacher.OpenAICompatibleTeacher) or a "
            "`profiler` that needs none (class_path stat_pl.profiling.proxy.SkillMapProxy)"
        )
    return TeacherProfiler(teacher, catalog, benchmark)


def _write_responses(
    path: Path, attempts: Sequence[Attempt], verdicts: Sequence[bool], diagnoses: Sequence[Diagnosis]
) -> None:
    """``responses.jsonl``: this run's questions only, each with its responses, verdict and diagnosis."""
    by_id = {d.question_id: d for d in diagnoses}
    with path.open("w", encoding="utf-8") as f:
        for attempt, hard in zip(attempts, verdicts, strict=True):
            record, diagnosis = attempt.record, by_id.get(attempt.record.id)
            f.write(
                json.dumps(
                    {
                        "id": record.id,
                        "subject": record.subject,
                        "problem": record.problem,
                        "answer": record.answer,
                        "responses": list(attempt.responses),
                        "difficult": hard,
                        "status": diagnosis.status if diagnosis else None,
                        "missing_skills": list(diagnosis.skills) if diagnosis else [],
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )


def _counts(
    results: Sequence[QuestionResult],
    verdicts: Sequence[bool],
    diagnoses: Sequence[Diagnosis],
    stats: dict[str, Any],
    generated_per_rank: Sequence[int],
) -> dict[str, Any]:
    """The summary table's rows (questions counted); ``teacher_calls`` are this run's paid calls, retries included;
    ``responses_generated_per_rank`` only with several ranks.

    ``unlabelled`` counts difficult questions the profiler gave no usable answer for (teacher failures,
    answers without a usable tag, unreadable responses): every difficult question is one or the other.
    """
    statuses = Counter(d.status for d in diagnoses)
    return {
        "questions": len(results),
        "correct_first_response": sum(bool(r.correct) and r.correct[0] for r in results),
        "difficult": sum(verdicts),
        "labelled": statuses["labelled"],
        "unlabelled": len(diagnoses) - statuses["labelled"],
        "unmatched_skill_names": stats.get("unmatched_skill_names", 0),
        "teacher_calls": stats.get("teacher_calls", 0),
        "cache_hits": stats.get("cache_hits", 0),
        "responses_generated": sum(generated_per_rank),
        "responses_reused": len(results) - sum(generated_per_rank),
        **({"responses_generated_per_rank": list(generated_per_rank)} if len(generated_per_rank) > 1 else {}),
    }
