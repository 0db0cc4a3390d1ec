"""The pure parts of ``bench/skillworld_v2.py``: what it scores, which skills it keeps, what it predicts, its tests.

Nothing here trains or loads a model, so every rule of the experiment is checked on hand-computed numbers
(``tests/test_skillworld_v2_stats.py``):

- :func:`step_value_span`: the characters of a skill-world solution that the primary metric scores;
- the Phase-0 screen: :func:`learning_slope`, :func:`screen_table`, :func:`select_skills`, :func:`partitions`;
- mixes and profiles: :func:`arm_shares`, :func:`arm_counts`, :func:`profile_vs_truth`;
- predictions from the Phase-0 curves: :func:`interpolate`, :func:`predict_static`, :func:`predict_online`;
- the pre-registered test: :func:`paired_t_interval` (df = n - 1), :func:`sign_flip_p` (exact, all 2^n sign
  patterns), :func:`nested_bootstrap` (the secondary check) and :func:`margin_verdict`.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Mapping, Sequence
from statistics import fmean, stdev

from stat_pl.data.sampler import exact_counts
from stat_pl.grading import last_boxed_span

Curve = Sequence[tuple[float, float]]  # (examples of the skill seen so far, accuracy), examples increasing


# ---- what is scored ---------------------------------------------------------------------------------
def step_value_span(solution: str) -> tuple[int, int] | None:
    """Where the last step of a skill-world solution states its value: ``(start, end)`` character offsets.

    ``Step 1 [multi_digit_multiplication]: 46 × 9 = 414`` then ``Answer: \\boxed{414}``: the boxed answer
    repeats the step's value, so teacher-forcing it scores copying. The step's value, right after the last
    ``=`` of the last ``Step`` line, is where the skill is used (``40 ÷ 6 = 6 r 4``: the ``6``). None when the
    solution has no boxed answer or no step line that ends in it.
    """
    box = last_boxed_span(solution)
    if box is None:
        return None
    value = solution[box[0] : box[1]]
    lines = [m for m in re.finditer(r"^Step \d+ \[[a-z_]+\]: .*$", solution[: box[0]], re.MULTILINE)]
    if not lines:
        return None
    line = lines[-1]
    found = list(re.finditer(rf"= ({re.escape(value)})(?![\d/.])", line.group()))
    if not found:
        return None
    return line.start() + found[-1].start(1), line.start() + found[-1].end(1)


# ---- Phase 0: the screen ----------------------------------------------------------------------------
def learning_slope(curve: Curve, window: tuple[float, float]) -> float | None:
    """Least-squares slope of accuracy against examples seen, over the points inside ``window`` (accuracy per
    example); None with fewer than two such points."""
    points = [(x, y) for x, y in curve if window[0] <= x <= window[1]]
    if len(points) < 2:
        return None
    mean_x, mean_y = fmean(x for x, _ in points), fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def screen_table(curves: Mapping[str, Curve], window: tuple[float, float], min_reach: float) -> dict[str, dict]:
    """Per skill: its slope in ``window``, its best accuracy there (``reach``) and whether it qualifies (a slope,
    and a reach of at least ``min_reach``)."""
    table = {}
    for skill, curve in curves.items():
        slope = learning_slope(curve, window)
        inside = [y for x, y in curve if window[0] <= x <= window[1]]
        reach = max(inside) if inside else 0.0
        table[skill] = {"slope": slope, "reach": reach, "qualifies": slope is not None and reach >= min_reach}
    return table


def select_skills(table: Mapping[str, dict], k: int) -> list[str]:
    """The (at most) ``k`` qualifying skills that learn fastest, fastest first; ties by reach, then by name."""
    qualified = [s for s, row in table.items() if row["qualifies"]]
    return sorted(qualified, key=lambda s: (-table[s]["slope"], -table[s]["reach"], s))[:k]


def partitions(ranked: Sequence[str]) -> list[tuple[list[str], list[str]]]:
    """Two ``(A known, B weak)`` partitions of skills ranked fastest first: B takes every other skill from the
    fastest (ranks 1, 3, 5) and the swap takes the rest (2, 4, 6). Each B holds a fast and a slow learner, so
    an online profile has something to follow once the fast one is learnt."""
    odd, even = list(ranked[0::2]), list(ranked[1::2])
    return [(even, odd), (odd, even)]


def mean_curves(curves: Sequence[Mapping[str, Curve]]) -> dict[str, list[tuple[float, float]]]:
    """The point-wise mean of several screens' curves (same checkpoints), skill by skill."""
    skills = curves[0].keys()
    return {
        s: [(fmean(c[s][i][0] for c in curves), fmean(c[s][i][1] for c in curves)) for i in range(len(curves[0][s]))]
        for s in skills
    }


# ---- mixes and profiles -----------------------------------------------------------------------------
def arm_shares(mix: Mapping[str, float], floor: float, skills: Sequence[str]) -> dict[str, float]:
    """Each skill's share of an epoch under ``sampling: stratified`` over a pool with equally many problems per
    skill: ``(1 - floor)`` by the profile's mix, ``floor`` evenly (all of it evenly without a mix)."""
    floor = floor if mix else 1.0
    return {s: (1 - floor) * mix.get(s, 0.0) + floor / len(skills) for s in skills}


def arm_counts(shares: Mapping[str, float], per_epoch: int, epochs: int) -> dict[str, int]:
    """Examples of each skill over ``epochs`` epochs of ``per_epoch`` draws: the sampler's exact counts."""
    counts = exact_counts(shares, per_epoch)
    return {s: epochs * c for s, c in counts.items()}


def profile_vs_truth(shares: Mapping[str, float], truth: Sequence[str], skills: Sequence[str]) -> dict[str, float]:
    """A profile's targeting against the known weak set: it *flags* the skills whose share exceeds the even
    share ``1 / len(skills)``; precision and recall of the flagged set against ``truth``, and the share of the
    profile on ``truth`` (``mass``)."""
    flagged = {s for s in skills if shares.get(s, 0.0) > 1 / len(skills) + 1e-12}
    hits = len(flagged & set(truth))
    return {
        "precision": hits / len(flagged) if flagged else 0.0,
        "recall": hits / len(truth),
        "mass": sum(shares.get(s, 0.0) for s in truth) / (sum(shares.values()) or 1.0),
    }


# ---- predictions from the Phase-0 curves ------------------------------------------------------------
def interpolate(curve: Curve, x: float) -> float:
    """Accuracy after ``x`` examples: piecewise linear between the curve's points, flat beyond its ends."""
    if x <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return curve[-1][1]


def predict_static(
    curves: Mapping[str, Curve], seen: Mapping[str, float], counts: Mapping[str, float]
) -> dict[str, float]:
    """Each skill's predicted accuracy after the arm: its Phase-0 curve at the examples seen before the arm
    (``seen``) plus the arm's (``counts``). The model behind it: a skill's accuracy depends only on how many of
    its own examples the student has seen (no transfer between skills, no forgetting)."""
    return {s: interpolate(curves[s], seen.get(s, 0.0) + counts.get(s, 0.0)) for s in curves}


def predict_online(
    curves: Mapping[str, Curve],
    seen: Mapping[str, float],
    start_failures: Mapping[str, float],
    *,
    floor: float,
    power: float,
    alpha: float,
    per_epoch: int,
    epochs: int,
) -> tuple[dict[str, float], list[dict[str, int]]]:
    """The online arm under the same model: each epoch samples by the current failure profile (failures ** power,
    then the floor), then its failures move by EMA ``alpha`` toward ``1 - predicted accuracy``. Returns the
    predicted accuracies and the per-epoch counts."""
    skills = list(curves)
    failures = dict(start_failures)
    total = {s: float(seen.get(s, 0.0)) for s in skills}
    mixes = []
    for _ in range(epochs):
        scores = {s: failures.get(s, 0.0) ** power for s in skills}
        norm = sum(scores.values())
        mix = {s: v / norm for s, v in scores.items()} if norm else {}
        counts = exact_counts(arm_shares(mix, floor, skills), per_epoch)
        mixes.append(counts)
        for s in skills:
            total[s] += counts[s]
            failures[s] = alpha * (1 - interpolate(curves[s], total[s])) + (1 - alpha) * failures.get(s, 0.0)
    return {s: interpolate(curves[s], total[s]) for s in skills}, mixes


# ---- the pre-registered test ------------------------------------------------------------------------
def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b) by its continued fraction (Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below this point; use the symmetry above it
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * result


def t_two_sided_tail(t: float, df: int) -> float:
    """P(|T| >= t) for Student's t with ``df`` degrees of freedom."""
    return _incomplete_beta(df / (df + t * t), df / 2, 0.5)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom, by bisection on the tail."""
    low, high = 0.0, 1e6
    for _ in range(200):
        middle = (low + high) / 2
        if t_two_sided_tail(middle, df) / 2 > 1 - p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def paired_t_interval(differences: Sequence[float], level: float = 0.95) -> dict[str, float | None]:
    """Mean of the per-seed paired differences and its ``level`` t-interval with df = n - 1 (None bounds for
    fewer than two seeds)."""
    n = len(differences)
    mean = fmean(differences)
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "df": None, "t": None, "low": None, "high": None}
    sd = stdev(differences)
    t = t_quantile(1 - (1 - level) / 2, n - 1)
    half = t * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "df": n - 1, "t": t, "low": mean - half, "high": mean + half}


def sign_flip_p(differences: Sequence[float], alternative: str = "two-sided") -> float:
    """Exact sign-flip (paired permutation) p-value of the mean difference: the share of all 2^n sign patterns
    whose mean is at least as extreme as the observed one (``two-sided``: in absolute value; ``greater`` /
    ``less``: in that direction). Under no effect every pattern is equally likely."""
    observed = fmean(differences)
    eps = 1e-12 * max(1.0, abs(observed))
    extreme = 0
    patterns = list(itertools.product((1, -1), repeat=len(differences)))
    for signs in patterns:
        mean = fmean(s * d for s, d in zip(signs, differences, strict=True))
        if alternative == "two-sided":
            extreme += abs(mean) >= abs(observed) - eps
        elif alternative == "greater":
            extreme += mean >= observed - eps
        elif alternative == "less":
            extreme += mean <= observed + eps
        else:
            raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    return extreme / len(patterns)


def nested_bootstrap(
    per_seed: Sequence[Mapping[str, Sequence[float]]], reps: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean paired difference, resampling seeds and then, within each drawn seed,
    the questions of each skill (``per_seed[i][skill]``: that seed's per-question differences)."""
    rng = random.Random(seed)
    means = []
    for _ in range(reps):
        seed_means = []
        for _ in per_seed:
            drawn = rng.choice(per_seed)
            values = [v for q in drawn.values() for v in (rng.choice(q) for _ in q)]
            seed_means.append(fmean(values))
        means.append(fmean(seed_means))
    means.sort()
    tail = (1 - level) / 2
    return means[int(tail * reps)], means[max(0, math.ceil((1 - tail) * reps) - 1)]


def margin_verdict(low: float | None, high: float | None, margin: float) -> str:
    """Against a pre-registered claim "the difference is at least ``margin``": ``met`` when the whole interval
    lies at or above it, ``not met`` when it lies wholly below, else ``inconclusive`` (also without an interval)."""
    if low is None or high is None:
        return "inconclusive"
    if low >= margin:
        return "met"
    if high < margin:
        return "not met"
    return "inconclusive"
