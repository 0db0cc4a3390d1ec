"""The reading side of ``bench/skillworld_v2.py``: its job files, the predictions, the report and its figures.

Nothing here trains; it reads ``<out>/*.json`` (what the jobs wrote) and applies the rules of
``skillworld_v2_analysis`` to them, so the report can be rebuilt at any time from the job files.
"""

from __future__ import annotations

import argparse
import heapq
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

import skillworld_v2_analysis as analysis

PREREGISTRATION = "skillworld_v2_preregistration.md"


# ---- job files ------------------------------------------------------------------------------------------
def job_file(out: Path, job: str) -> Path:
    return out / f"{job.replace(':', '-')}.json"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_job(out: Path, job: str) -> dict:
    return read_json(job_file(out, job))


def list_schedule(costs: Sequence[float], slots: int) -> float:
    """Wall time of independent jobs started in order on ``slots`` workers, each job on the first free one."""
    free = [0.0] * max(1, slots)
    for cost in costs:
        heapq.heapreplace(free, free[0] + cost)
    return max(free)


def measured_costs(out: Path) -> dict[str, float]:
    """Core-seconds per unit from the finished jobs in ``out``: a training example (every optimizer step but each
    job's first, which pays for warming up), a teacher-forced scored question (every scoring call but each job's
    first, which builds the merged copy, where a job has more), a greedily answered question, and the rest of a
    job (``load``: the model, the data, the first step and call)."""
    jobs = [read_json(p) for p in sorted(out.glob("*.json")) if "cpu" in read_json(p)]
    if not jobs:
        raise SystemExit(f"no finished job in {out} to measure costs from")
    batch_size = read_json(out / "design.json")["batch_size"]
    steps = [b for j in jobs for b in j["cpu"]["batches"][1:]]
    calls = [c for j in jobs for c in (j["cpu"]["score"][1:] or j["cpu"]["score"])]
    generated = [j["cpu"]["generate"] for j in jobs if j["cpu"].get("generate", [0, 0])[1]]
    rest = [
        j["cpu"]["total"]
        - sum(j["cpu"]["batches"])
        - sum(c[0] for c in j["cpu"]["score"])
        - j["cpu"].get("generate", [0, 0])[0]
        for j in jobs
    ]
    return {
        "load": fmean(rest),
        "train_example": sum(steps) / (len(steps) * batch_size),
        "score_question": sum(c[0] for c in calls) / sum(c[1] for c in calls),
        "generate_question": sum(g[0] for g in generated) / sum(g[1] for g in generated) if generated else float("nan"),
    }


def preregistration(results: Path) -> dict:
    """The preregistration file and the commit that last changed it; ``commit`` is None unless the file exists,
    is committed, and has no uncommitted change."""
    path = results / PREREGISTRATION
    if not path.exists():
        return {"path": str(path), "commit": None}
    git = ["git", "-C", str(results)]
    commit = subprocess.run([*git, "log", "-1", "--format=%H", "--", path.name], capture_output=True, text=True)
    clean = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", path.name], capture_output=True).returncode == 0
    return {"path": str(path), "commit": commit.stdout.strip() if commit.stdout.strip() and clean else None}


# ---- predictions ----------------------------------------------------------------------------------------
def predict(args: argparse.Namespace) -> dict:
    """Each arm's predicted accuracy change on B and on A against uniform, per seed, from the Phase-0 curves
    and the seed's start profile; writes ``<out>/predictions.json`` and prints the table for the
    preregistration."""
    curves = {s: [tuple(p) for p in c] for s, c in read_json(args.out / "selection.json")["curves"].items()}
    per_epoch = args.arm_steps_per_epoch * args.batch_size
    alpha = args.ema_alpha if args.online_combine == "ema" else 1.0
    seeds = {}
    for seed in args.seeds:
        if not job_file(args.out, f"warmup:{seed}").exists():
            continue
        start = read_job(args.out, f"warmup:{seed}")
        known, weak = start["known"], start["weak"]
        skills = known + weak
        mine = {s: curves[s] for s in skills}
        counts = {
            "uniform": analysis.arm_counts(analysis.arm_shares({}, 0.0, skills), per_epoch, args.arm_epochs),
            **{
                arm: analysis.arm_counts(
                    analysis.arm_shares(start["targeting"][arm]["mix"], args.weight_floor, skills),
                    per_epoch,
                    args.arm_epochs,
                )
                for arm in ("proportional", "sharpened")
            },
        }
        accuracy = {arm: analysis.predict_static(mine, start["seen"], c) for arm, c in counts.items()}
        histogram, asked = start["profile"]["histogram"], start["profile"]["asked"]
        failures = {s: histogram.get(s, 0.0) / asked[s] for s in skills}
        accuracy["online"], mixes = analysis.predict_online(
            mine,
            start["seen"],
            failures,
            floor=args.weight_floor,
            power=args.sharpen_power,
            alpha=alpha,
            per_epoch=per_epoch,
            epochs=args.arm_epochs,
        )
        counts["online"] = {s: sum(m[s] for m in mixes) for s in skills}
        seeds[seed] = {
            arm: {
                "b_change": 100 * fmean(accuracy[arm][s] - accuracy["uniform"][s] for s in weak),
                "a_change": 100 * fmean(accuracy[arm][s] - accuracy["uniform"][s] for s in known),
                "b_share": sum(counts[arm][s] for s in weak) / sum(counts[arm].values()),
                "accuracy": accuracy[arm],
            }
            for arm in counts
        }
        seeds[seed]["start"] = {
            "predicted": {
                g: 100 * fmean(interpolate_at(mine, start["seen"], k)) for g, k in (("A", known), ("B", weak))
            },
            "measured": {g: 100 * fmean(start["test_exact"][s] for s in k) for g, k in (("A", known), ("B", weak))},
        }
    if not seeds:
        raise SystemExit(f"predict needs the warm-ups in {args.out}; run phase1 first")
    arms = [a for a in next(iter(seeds.values())) if a != "start"]
    mean = {
        arm: {k: fmean(seeds[s][arm][k] for s in seeds) for k in ("b_change", "a_change", "b_share")} for arm in arms
    }
    start = {
        kind: {g: fmean(seeds[s]["start"][kind][g] for s in seeds) for g in ("A", "B")}
        for kind in ("predicted", "measured")
    }
    model = (
        "a skill's accuracy is its Phase-0 curve at the examples of it seen (warm-up + arm): no transfer between "
        "skills, no forgetting; the online arm's failures follow 1 - that accuracy by its EMA"
    )
    predictions = {"seeds": seeds, "mean": mean, "start": start, "model": model}
    (args.out / "predictions.json").write_text(json.dumps(predictions, indent=1))
    print(preregistration_draft(args, predictions))
    return predictions


def interpolate_at(curves: dict, seen: dict, skills: Sequence[str]) -> list[float]:
    return [analysis.interpolate(curves[s], seen.get(s, 0)) for s in skills]


def preregistration_draft(args: argparse.Namespace, predictions: dict) -> str:
    """The predictions, metric, test and margins as Markdown, a draft of the preregistration to review and commit."""
    start, mean = predictions["start"], predictions["mean"]
    lines = [
        "## Predictions (from the Phase-0 curves and each seed's start profile; mean over seeds)",
        "",
        f"Model: {predictions['model']}.",
        "",
        f"Start (after the warm-up), test exact match: A measured {start['measured']['A']:.1f}% (predicted "
        f"{start['predicted']['A']:.1f}%), B measured {start['measured']['B']:.1f}% "
        f"(predicted {start['predicted']['B']:.1f}%).",
        "",
        "| arm | share of the arm's examples on B | predicted change on B vs uniform (points) | on A (points) |",
        "|---|---|---|---|",
        *(
            f"| {arm} | {100 * row['b_share']:.0f}% | {row['b_change']:+.1f} | {row['a_change']:+.1f} |"
            for arm, row in mean.items()
        ),
        "",
        "## Metric, test, margins",
        "",
        "- Primary metric: teacher-forced exact match of the last step's value on B's test questions "
        f"({args.test_per_skill} per skill), per seed the mean over B's questions; A's the same on A.",
        f"- Test: per-seed paired differences (arm - baseline, seeds {args.seeds}, partition = seed mod 2); the mean "
        "with its 95% t-interval, df = seeds - 1; an exact sign-flip test over all 2^seeds sign patterns. The "
        "question bootstrap (seeds, then questions within skill) is a secondary, nested check only.",
        f"- Margins: STAT-Sel (proportional, sharpened, online) - uniform on B >= {args.margin_b:+g} points; on A >= "
        f"{args.margin_a:+g} points; online - sharpened (the static arm with the same weights) on B >= "
        f"{args.margin_online:+g} points. A margin is met when the whole 95% t-interval clears it, not met when the "
        "whole interval falls short of it, else inconclusive.",
    ]
    return "\n".join(lines)


# ---- the report -----------------------------------------------------------------------------------------
def comparisons(args: argparse.Namespace) -> list[dict]:
    """The pre-registered comparisons: (arm, baseline, group, margin in points)."""
    rows = []
    for arm in ("proportional", "sharpened", "online"):
        rows += [
            {"arm": arm, "baseline": "uniform", "group": "B", "margin": args.margin_b},
            {"arm": arm, "baseline": "uniform", "group": "A", "margin": args.margin_a},
        ]
    rows.append({"arm": "online", "baseline": "sharpened", "group": "B", "margin": args.margin_online})
    return rows


def group_exact(run: dict, skills: Sequence[str]) -> dict[str, list[float]]:
    """A run's per-question exact matches on ``skills``' test questions, by skill."""
    return {s: [v for v, k in zip(run["test"]["exact"], run["test_skills"], strict=True) if k == s] for s in skills}


def compare(args: argparse.Namespace, runs: dict, row: dict) -> dict | None:
    """One comparison over the seeds that ran both arms: per-seed paired differences (points), the t-interval,
    the sign-flip tests, the nested bootstrap and the verdict against the margin."""
    seeds = [s for s in args.seeds if row["arm"] in runs[s] and row["baseline"] in runs[s]]
    if not seeds:
        return None
    diffs, per_seed = {}, []
    for s in seeds:
        skills = runs[s]["warmup"]["weak" if row["group"] == "B" else "known"]
        arm, base = group_exact(runs[s][row["arm"]], skills), group_exact(runs[s][row["baseline"]], skills)
        paired = {k: [100 * (a - b) for a, b in zip(arm[k], base[k], strict=True)] for k in skills}
        per_seed.append(paired)
        diffs[s] = fmean(v for values in paired.values() for v in values)
    values = list(diffs.values())
    t = analysis.paired_t_interval(values)
    return {
        **row,
        "seeds": seeds,
        "per_seed": diffs,
        "t_interval": t,
        "sign_flip_p": analysis.sign_flip_p(values),
        "sign_flip_p_greater": analysis.sign_flip_p(values, "greater"),
        "bootstrap": analysis.nested_bootstrap(per_seed, args.bootstrap),
        "verdict": analysis.margin_verdict(t["low"], t["high"], row["margin"]),
    }


def realised_b_share(runs: dict, arm: str, seeds: Sequence[int]) -> list[float]:
    """Per epoch, the share of the arm's examples on B (mean over ``seeds``)."""
    shares = []
    for s in seeds:
        weak = runs[s]["warmup"]["weak"]
        shares.append([sum(e.get(k, 0) for k in weak) / sum(e.values()) for e in runs[s][arm]["mix"]])
    return [fmean(column) for column in zip(*shares, strict=True)]


def report(args: argparse.Namespace) -> dict:
    """The results JSON, one PNG per comparison and the Markdown tables (printed and in ``skillworld_v2.md``)."""
    runs = {}
    for s in args.seeds:
        if job_file(args.out, f"warmup:{s}").exists():
            runs[s] = {"warmup": read_job(args.out, f"warmup:{s}")}
            for arm in args.arms:
                if job_file(args.out, f"arm:{arm}:{s}").exists():
                    runs[s][arm] = read_job(args.out, f"arm:{arm}:{s}")
    args.results.mkdir(parents=True, exist_ok=True)
    selection = read_json(args.out / "selection.json")
    plot_screen(selection, args.results / "skillworld_v2_screen.png")
    if not runs:
        return screen_report(args, selection)
    args.seeds = [s for s in args.seeds if s in runs]
    found = [c for c in (compare(args, runs, row) for row in comparisons(args)) if c]
    arms = [a for a in args.arms if all(a in runs[s] for s in args.seeds)]
    result = {
        "design": read_json(args.out / "design.json"),
        "machine": next(iter(runs.values()))["warmup"]["machine"],
        "date": time.strftime("%Y-%m-%d"),
        "preregistration": preregistration(args.results),
        "unregistered": args.unregistered,
        "selection": selection,
        "predictions": read_json(args.out / "predictions.json") if (args.out / "predictions.json").exists() else None,
        "comparisons": found,
        "start": start_figures(runs, args.seeds),
        "end": {arm: end_figures(runs, arm, args.seeds) for arm in arms},
        "realised_b_share": {arm: realised_b_share(runs, arm, args.seeds) for arm in arms},
        "targeting": targeting_summary(runs, args.seeds),
        "compute": compute(args, runs),
        "seeds": {s: {k: strip(v) for k, v in r.items()} for s, r in runs.items()},
    }
    (args.results / "skillworld_v2.json").write_text(json.dumps(result, indent=1))
    for c in found:
        if c["group"] == "B":
            plot_comparison(c, next((d for d in found if same_pair(d, c) and d["group"] == "A"), None), args.results)
    text = markdown(result)
    (args.results / "skillworld_v2.md").write_text(text)
    print(text)
    return result


def screen_report(args: argparse.Namespace, selection: dict) -> dict:
    """Phase 0 alone (no warm-up ran, e.g. because too few skills qualified): the screen, its verdict, its cost."""
    screens = {s: read_job(args.out, f"screen:{s}") for s in args.screen_seeds}
    result = {
        "design": read_json(args.out / "design.json"),
        "machine": next(iter(screens.values()))["machine"],
        "date": time.strftime("%Y-%m-%d"),
        "selection": selection,
        "compute": {"phase0": {"jobs": len(screens), "core_seconds": sum(j["cpu"]["total"] for j in screens.values())}},
    }
    (args.results / "skillworld_v2.json").write_text(json.dumps(result, indent=1))
    verdict = (
        f"kept {selection['selected']}"
        if selection["enough"]
        else f"only {len(selection['qualified'])} skill(s) qualify: fewer than {args.keep}, the experiment stops here"
    )
    lines = ["| skill | slope (points / 100 examples) | reach (%) | qualifies |", "|---|---|---|---|"]
    for skill, row in selection["table"].items():
        slope = "n/a" if row["slope"] is None else f"{1e4 * row['slope']:.1f}"
        lines.append(f"| {skill} | {slope} | {100 * row['reach']:.0f} | {row['qualifies']} |")
    text = "\n".join(
        [f"Phase 0: {verdict}.", "", *lines, "", f"core-s: {result['compute']['phase0']['core_seconds']:.0f}"]
    )
    (args.results / "skillworld_v2.md").write_text(text)
    print(text)
    return result


def plot_screen(selection: dict, path: Path) -> Path:
    """The screen: held-out exact match of every skill against the examples of it seen, the window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for skill, curve in selection["curves"].items():
        kept = skill in selection["selected"]
        axes.plot(
            [x for x, _ in curve],
            [100 * y for _, y in curve],
            marker="o",
            linestyle="-" if kept else ":",
            label=f"{skill}{' (kept)' if kept else ''}",
        )
    window = selection.get("window")
    if window:
        axes.axvspan(*window, color="grey", alpha=0.1)
    axes.set(
        xlabel="examples of the skill seen",
        ylabel="held-out exact match of the step value (%)",
        title="Phase 0: uniform SFT from the base model",
    )
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def same_pair(one: dict, two: dict) -> bool:
    return one["arm"] == two["arm"] and one["baseline"] == two["baseline"]


def strip(run: dict) -> dict:
    """A job's figures without its per-question lists (kept in the job files)."""
    return {k: v for k, v in run.items() if k not in ("test", "test_skills", "profile")}


def start_figures(runs: dict, seeds: Sequence[int]) -> dict[str, float]:
    """Mean test exact match (%) on A and B after the warm-up: did the construction work?"""
    return {
        group: 100 * fmean(fmean(runs[s]["warmup"]["test_exact"][k] for k in runs[s]["warmup"][key]) for s in seeds)
        for group, key in (("A", "known"), ("B", "weak"))
    }


def end_figures(runs: dict, arm: str, seeds: Sequence[int]) -> dict[str, float]:
    return {
        group: 100 * fmean(fmean(runs[s][arm]["test_exact"][k] for k in runs[s]["warmup"][key]) for s in seeds)
        for group, key in (("A", "known"), ("B", "weak"))
    }


def targeting_summary(runs: dict, seeds: Sequence[int]) -> dict:
    """Precision, recall and mass on B of the start profile (each weighting) and of the online arm's profiles
    per epoch, mean over seeds."""

    def mean_of(rows: list[dict]) -> dict[str, float]:
        return {k: fmean(r[k] for r in rows) for k in ("precision", "recall", "mass")}

    summary = {
        f"start, {w}": mean_of([runs[s]["warmup"]["targeting"][w] for s in seeds])
        for w in ("proportional", "sharpened")
    }
    online = [runs[s]["online"]["targeting"] for s in seeds if "online" in runs[s]]
    for epoch in range(min((len(t) for t in online), default=0)):
        summary[f"online, epoch {epoch + 1}"] = mean_of([t[epoch] for t in online])
    return summary


def compute(args: argparse.Namespace, runs: dict) -> dict:
    """Core-seconds and wall seconds per phase (sums over its jobs), and the training examples."""
    phases = {"phase0": [read_job(args.out, f"screen:{s}") for s in args.screen_seeds]}
    phases["phase1"] = [r["warmup"] for r in runs.values()]
    phases["phase2"] = [r[a] for r in runs.values() for a in r if a != "warmup"]
    out = {
        name: {
            "jobs": len(jobs),
            "core_seconds": sum(j["cpu"]["total"] for j in jobs),
            "job_wall_seconds": sum(j["wall_seconds"] for j in jobs),
            "examples": sum(j["examples"] for j in jobs),
        }
        for name, jobs in phases.items()
    }
    out["total_core_seconds"] = sum(p["core_seconds"] for p in out.values())
    return out


def plot_comparison(b: dict, a: dict | None, folder: Path) -> Path:
    """Per-seed paired differences on B (and A), their mean with the 95% t-interval, and the margin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [c for c in (b, a) if c]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for axis, c in zip(axes[0], panels, strict=True):
        seeds = c["seeds"]
        axis.scatter(
            range(len(seeds)), [c["per_seed"][s] for s in seeds], color=["C0" if s % 2 == 0 else "C1" for s in seeds]
        )
        t = c["t_interval"]
        axis.axhline(t["mean"], color="k", label=f"mean {t['mean']:+.1f}")
        if t["low"] is not None:
            axis.axhspan(t["low"], t["high"], color="k", alpha=0.1, label="95% t-interval")
        axis.axhline(c["margin"], color="r", linestyle="--", label=f"margin {c['margin']:+g}")
        axis.axhline(0, color="grey", linewidth=0.5)
        axis.set(
            xticks=range(len(seeds)),
            xticklabels=[f"seed {s}" for s in seeds],
            ylabel="exact match difference (points)",
            title=f"{c['arm']} - {c['baseline']} on {c['group']}: {c['verdict']}",
        )
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = folder / f"skillworld_v2_{b['arm']}_vs_{b['baseline']}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def markdown(result: dict) -> str:
    """The tables for bench/README.md: verdicts, start and end figures, mixes, targeting, compute."""
    predicted = (result["predictions"] or {}).get("mean", {})
    lines = []
    if result["unregistered"] or result["preregistration"]["commit"] is None:
        lines.append("**Not pre-registered** (a plumbing check or a run without the committed preregistration).\n")
    lines += [
        "| comparison | group | margin | mean (points) [95% t-interval] | sign-flip p (2-sided / greater) | "
        "question bootstrap | predicted | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["comparisons"]:
        t = c["t_interval"]
        interval = f"[{t['low']:+.1f}, {t['high']:+.1f}]" if t["low"] is not None else "[n/a]"
        low, high = c["bootstrap"]
        key = "b_change" if c["group"] == "B" else "a_change"
        guess = predicted.get(c["arm"], {}).get(key)
        base = predicted.get(c["baseline"], {}).get(key, 0.0) if c["baseline"] != "uniform" else 0.0
        guess_text = f"{guess - base:+.1f}" if guess is not None else ""
        lines.append(
            f"| {c['arm']} - {c['baseline']} | {c['group']} | {c['margin']:+g} | "
            f"{t['mean']:+.1f} {interval} (n={t['n']}) | "
            f"{c['sign_flip_p']:.3f} / {c['sign_flip_p_greater']:.3f} | [{low:+.1f}, {high:+.1f}] | {guess_text} | "
            f"**{c['verdict']}** |"
        )
    lines += ["", "| test exact match (%) | A (known) | B (weak) |", "|---|---|---|"]
    lines.append(f"| start (after the warm-up) | {result['start']['A']:.1f} | {result['start']['B']:.1f} |")
    for arm, row in result["end"].items():
        lines.append(f"| {arm} | {row['A']:.1f} | {row['B']:.1f} |")
    lines += ["", "| arm | realised share of examples on B, per epoch |", "|---|---|"]
    for arm, shares in result["realised_b_share"].items():
        lines.append(f"| {arm} | {' / '.join(f'{100 * v:.0f}%' for v in shares)} |")
    lines += ["", "| profile (mix) | precision vs B | recall vs B | share on B |", "|---|---|---|---|"]
    for name, row in result["targeting"].items():
        lines.append(f"| {name} | {row['precision']:.2f} | {row['recall']:.2f} | {100 * row['mass']:.0f}% |")
    lines += ["", "| phase | jobs | core-s | training examples |", "|---|---|---|---|"]
    for name in ("phase0", "phase1", "phase2"):
        row = result["compute"][name]
        lines.append(f"| {name} | {row['jobs']} | {row['core_seconds']:.0f} | {row['examples']} |")
    lines.append(f"| total | | {result['compute']['total_core_seconds']:.0f} | |")
    return "\n".join(lines)
