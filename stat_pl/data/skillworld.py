"""The skill world: a seeded generator of short chained arithmetic word problems with known skills.

Real benchmarks only tell us which skills a question *needs*; the skill world also tells us which skill
a student got *wrong*, because every problem is a chain of 1-3 steps, one skill per step, and its worked
solution prints one step per line::

    Step 1 [percentages]: 20% of 350 = 70
    Step 2 [addition_with_carry]: 70 + 275 = 345
    Answer: \\boxed{345}

That makes it the ground truth for the whole STAT loop (DESIGN.md, Stages 1-2): the
:class:`~stat_pl.profiling.oracle.SkillWorldOracle` reads a student's steps and names the skill of the
first wrong one, so a profile built by a teacher can be scored against the truth, and a small student
(SmolLM2-135M) fine-tuned on CPU has genuinely weak skills (3-digit multiplication, remainders, gcd)
next to easy ones (x 1000 unit conversions, additions).

Everything is a function of the problem id (``skillworld/<split>/<seed>/<index>/L<level>/<codes>``), so
``problem_from_id`` regenerates any problem without files. Splits are disjoint by problem text: a
candidate belongs to the split that the hash of its text picks, and other splits never emit it.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

from stat_pl.errors import UserError
from stat_pl.records import DataSource, ProblemRecord
from stat_pl.skills import SkillCatalog, normalize_skill

#: Share of the hash space (out of 100) that each split owns; the text hash picks the split.
SPLIT_SHARES = {"train": 80, "validation": 10, "test": 10}
_MAX_VALUE = 99_999  # keeps solutions short: every digit is a token for SmolLM2
_TRIES_PER_STEP = 40
_MAX_MISSES = 10_000  # candidates in a row that give no problem before a configuration is called unusable
_ID = re.compile(r"skillworld/(?:train|validation|test)/-?\d+/\d+/L[123]/([a-z]+(?:-[a-z]+){0,2})")


@dataclass(frozen=True)
class Step:
    """One step of a chain: its sentence in the problem, its worked line, its value (``"70"``, ``"7/10"``)."""

    skill: str
    text: str
    work: str
    value: str


@dataclass(frozen=True)
class SkillWorldProblem:
    """A generated problem; ``steps`` are in solving order and ``answer`` is the last step's value."""

    id: str
    split: str
    level: int
    text: str
    steps: tuple[Step, ...]

    @property
    def answer(self) -> str:
        return self.steps[-1].value

    @property
    def skills(self) -> tuple[str, ...]:
        return tuple(step.skill for step in self.steps)

    @property
    def solution(self) -> str:
        """The worked solution, one ``Step i [skill]: work`` line per step, then ``Answer: \\boxed{}``."""
        lines = [f"Step {i} [{step.skill}]: {step.work}" for i, step in enumerate(self.steps, start=1)]
        return "\n".join([*lines, f"Answer: \\boxed{{{self.answer}}}"])

    def to_record(self) -> ProblemRecord:
        return ProblemRecord(
            id=self.id,
            problem=self.text,
            answer=self.answer,
            solutions=(self.solution,),
            subject="skillworld",
            level=self.level,
            skills=self.skills,
            source=f"skillworld/{self.split}",
        )


# A skill turns the running value x into one step, or returns None when it cannot use this x (the
# generator then draws new numbers). ``first`` is True when x is the problem's own starting number.
_SkillFn = Callable[[random.Random, int, int, bool], "Step | None"]


@dataclass(frozen=True)
class _Skill:
    name: str
    code: str
    start: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # starting number range per level
    apply: _SkillFn
    final_only: bool = False  # its value is a fraction, which no other skill takes as input


def _step(
    skill: str, first: bool, first_text: str, chain_text: str, work: str, value: int | str, after_value: str = ""
) -> Step:
    """A step whose sentence is ``first_text`` when it starts the problem, else "Then <chain_text>"."""
    text = first_text if first else f"Then {chain_text[0].lower()}{chain_text[1:]}"
    return Step(skill=skill, text=text, work=f"{work} = {value}{after_value}", value=str(value))


def _by_level(level: int, *ranges: tuple[int, int]) -> tuple[int, int]:
    return ranges[level - 1]


def _addition(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    b = rng.randint(*_by_level(level, (10, 99), (100, 999), (1000, 9999)))
    if x % 10 + b % 10 < 10:
        return None
    return _step("addition_with_carry", first, f"Add {x} and {b}.", f"Add {b} to it.", f"{x} + {b}", x + b)


def _subtraction(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    if x < 20:
        return None
    b = rng.randint(max(2, x // 10), x - 2)
    if b % 10 <= x % 10:
        return None
    return _step(
        "subtraction_with_borrow", first, f"Subtract {b} from {x}.", f"Subtract {b} from it.", f"{x} - {b}", x - b
    )


def _multiplication(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    if x > 999:
        return None
    b = rng.randint(*_by_level(level, (3, 9), (11, 99), (11, 99)))
    return _step(
        "multi_digit_multiplication", first, f"Multiply {x} by {b}.", f"Multiply it by {b}.", f"{x} × {b}", x * b
    )


def _division(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    d = rng.randint(*_by_level(level, (3, 9), (6, 19), (11, 49)))
    q, r = divmod(x, d)
    if r == 0 or q < 2:
        return None
    return _step(
        "division_with_remainder",
        first,
        f"Pack {x} eggs in boxes of {d}; count full boxes.",
        f"Pack that many eggs in boxes of {d}; count full boxes.",
        f"{x} ÷ {d}",
        q,
        f" r {r}",
    )


def _modular(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    m = rng.randint(*_by_level(level, (3, 9), (6, 19), (11, 29)))
    if x < m or x % m < 2:
        return None
    return _step("modular_arithmetic", first, f"Find {x} mod {m}.", f"Take it mod {m}.", f"{x} mod {m}", x % m)


def _fraction(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    factors = [d for d in _divisors(x) if 1 < d <= (12, 50, 100)[level - 1]]
    if not factors:
        return None
    den = rng.choice(factors) * rng.randint(*_by_level(level, (2, 9), (2, 19), (3, 49)))
    value = Fraction(x, den)
    if value.denominator == 1:
        return None
    return _step(
        "fraction_simplification",
        first,
        f"Write {x}/{den} in lowest terms.",
        f"Write it over {den} in lowest terms.",
        f"{x}/{den}",
        str(value),
    )


def _percentages(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    offered = ((10, 50), (10, 20, 25, 50, 75), (5, 15, 20, 25, 30, 40, 60, 75))[level - 1]
    usable = [p for p in offered if x * p % 100 == 0]
    if not usable:
        return None
    p = rng.choice(usable)
    return _step("percentages", first, f"Find {p}% of {x}.", f"Take {p}% of it.", f"{p}% of {x}", x * p // 100)


def _linear(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    a = rng.randint(*_by_level(level, (2, 5), (2, 9), (3, 19)))
    b = rng.randint(1, max(1, min(x // 2, (20, 99, 999)[level - 1])))
    b += (x - b) % a
    n = (x - b) // a
    if n < 2:
        return None
    return _step(
        "linear_equations",
        first,
        f"Solve {a}n + {b} = {x} for n.",
        f"Solve {a}n + {b} = it for n.",
        f"{a}n + {b} = {x}, n = {x - b} / {a}",
        n,
    )


def _powers(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    e = rng.choice(((2,), (2, 3), (2, 3, 4))[level - 1])
    return _step("powers", first, f"Compute {x}^{e}.", f"Raise it to the power {e}.", f"{x}^{e}", x**e)


def _gcd_lcm(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    if level > 1 and rng.random() < 0.5:
        b = rng.randint(2, (9, 20, 30)[level - 1])
        if x > 100 or math.gcd(x, b) == 1 or x % b == 0 or b % x == 0:
            return None
        return _step(
            "gcd_lcm",
            first,
            f"Find the least common multiple of {x} and {b}.",
            f"Find the least common multiple of it and {b}.",
            f"lcm({x}, {b})",
            math.lcm(x, b),
        )
    g = rng.choice([d for d in _divisors(x) if d > 1])
    b = g * rng.randint(2, (9, 19, 29)[level - 1])
    if b == x:
        return None
    return _step(
        "gcd_lcm",
        first,
        f"Find the greatest common divisor of {x} and {b}.",
        f"Find the greatest common divisor of it and {b}.",
        f"gcd({x}, {b})",
        math.gcd(x, b),
    )


def _order_of_operations(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    b = rng.randint(*_by_level(level, (2, 9), (11, 49), (11, 99)))
    c = rng.randint(*_by_level(level, (2, 9), (2, 9), (11, 49)))
    sign = rng.choice("+-")
    value = x + b * c if sign == "+" else x - b * c
    if value < 2:
        return None
    expression = f"{x} {sign} {b} × {c}"
    return _step(
        "order_of_operations",
        first,
        f"Compute {expression}.",
        f"Compute it {sign} {b} × {c}.",
        f"{expression} = {x} {sign} {b * c}",
        value,
    )


_UNITS = (
    (("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000), ("L", "mL", 1000)),
    (("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7)),
    (("dozens", "eggs", 12), ("feet", "inches", 12), ("yards", "feet", 3), ("years", "months", 12)),
)


def _unit_conversion(rng: random.Random, x: int, level: int, first: bool) -> Step | None:
    unit, target, factor = rng.choice([u for units in _UNITS[:level] for u in units])
    return _step(
        "unit_conversion",
        first,
        f"Convert {x} {unit} to {target}.",
        f"Convert it from {unit} to {target}.",
        f"{x} × {factor}",
        x * factor,
    )


def _divisors(x: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(x) + 1) if x % d == 0]
    return sorted({*small, *(x // d for d in small)})


# Intended difficulty for a small LM: easy (unit_conversion, addition_with_carry), medium
# (subtraction_with_borrow, percentages, powers, order_of_operations, fraction_simplification),
# hard (multi_digit_multiplication, division_with_remainder, modular_arithmetic, linear_equations, gcd_lcm).
_SKILLS = (
    _Skill("addition_with_carry", "add", ((10, 99), (100, 999), (1000, 9999)), _addition),
    _Skill("subtraction_with_borrow", "sub", ((20, 99), (100, 999), (1000, 9999)), _subtraction),
    _Skill("multi_digit_multiplication", "mul", ((12, 99), (12, 99), (101, 999)), _multiplication),
    _Skill("division_with_remainder", "div", ((20, 99), (100, 999), (1000, 9999)), _division),
    _Skill("modular_arithmetic", "mod", ((20, 99), (100, 999), (1000, 9999)), _modular),
    _Skill("fraction_simplification", "frac", ((4, 60), (20, 300), (100, 999)), _fraction, final_only=True),
    _Skill("percentages", "pct", ((20, 990), (20, 990), (100, 9990)), _percentages),
    _Skill("linear_equations", "lin", ((10, 60), (30, 300), (100, 2000)), _linear),
    _Skill("powers", "pow", ((2, 15), (2, 12), (3, 20)), _powers),
    _Skill("gcd_lcm", "gcd", ((12, 99), (24, 300), (24, 999)), _gcd_lcm),
    _Skill("order_of_operations", "ops", ((2, 20), (10, 99), (100, 999)), _order_of_operations),
    _Skill("unit_conversion", "unit", ((2, 30), (2, 60), (10, 200)), _unit_conversion),
)
_BY_NAME = {s.name: s for s in _SKILLS}
_BY_CODE = {s.code: s for s in _SKILLS}

#: The skill world's skills, in catalog order.
SKILLWORLD_SKILLS: tuple[str, ...] = tuple(s.name for s in _SKILLS)


def skillworld_catalog() -> SkillCatalog:
    """The catalog of the skill world: one subject, ``skillworld``, with :data:`SKILLWORLD_SKILLS`."""
    return SkillCatalog({"skillworld": SKILLWORLD_SKILLS}, source="stat_pl.data.skillworld")


@dataclass(kw_only=True)  # keyword-only, so SkillWorldSource keeps (split, n) as its positional arguments
class SkillWorld:
    """A seeded source of skill-world problems: same arguments, same problems, in the same order.

    Args:
        seed: picks the problems; splits stay disjoint across seeds too (the split follows the text).
        levels: difficulty levels to draw from. Level L has L steps (at most ``max_skills``) and bigger
            numbers: 2-digit operands at level 1, up to 4-digit ones at level 3.
        max_skills: the most steps (distinct skills) one problem chains, 1-3.
        skill_weights: relative frequency of each skill when a step's skill is drawn; skills left out
            weigh 1.0, weight 0 leaves a skill out. Skills that need special inputs (fractions come only
            last, powers need small numbers) end up somewhat below their weight.
    """

    seed: int = 0
    levels: tuple[int, ...] = (1, 2, 3)
    max_skills: int = 3
    skill_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        self.levels = tuple(self.levels)
        if not self.levels or not set(self.levels) <= {1, 2, 3}:
            raise UserError(f"SkillWorld.levels must be a non-empty subset of (1, 2, 3), got {self.levels}")
        if not 1 <= self.max_skills <= 3:
            raise UserError(f"SkillWorld.max_skills must be 1, 2 or 3, got {self.max_skills}")
        weights = {normalize_skill(k): float(v) for k, v in (self.skill_weights or {}).items()}
        skillworld_catalog().check(weights, "SkillWorld.skill_weights")
        if any(w < 0 for w in weights.values()):
            raise UserError(f"SkillWorld.skill_weights must be >= 0, got {weights}")
        self._weights = {name: weights.get(name, 1.0) for name in SKILLWORLD_SKILLS}

    def problems(self, split: str, n: int) -> list[SkillWorldProblem]:
        """The first ``n`` problems of ``split`` (``train``, ``validation`` or ``test``), distinct by text."""
        out: list[SkillWorldProblem] = []
        seen: set[str] = set()
        repeats = 0  # candidates in a row whose text was already taken: the split may hold fewer than n
        for problem in self._iter_split(split):
            if len(out) == n:
                break
            if problem.text in seen:
                repeats += 1
                if repeats == _MAX_MISSES:
                    raise UserError(
                        f"{self} has only about {len(out)} distinct {split} problems, fewer than the {n} "
                        f"asked for (the last {_MAX_MISSES} candidates all repeated one): ask for fewer, or "
                        "widen levels, max_skills or skill_weights"
                    )
                continue
            repeats = 0
            seen.add(problem.text)
            out.append(problem)
        return out

    def records(self, split: str, n: int) -> list[ProblemRecord]:
        """:meth:`problems` as :class:`ProblemRecord` rows, the worked solution as their one solution."""
        return [p.to_record() for p in self.problems(split, n)]

    def _iter_split(self, split: str) -> Iterator[SkillWorldProblem]:
        """Every problem of ``split`` in index order; a candidate whose text hashes elsewhere is skipped."""
        _check_split(split)
        index, misses = 0, 0
        while misses < _MAX_MISSES:
            rng = random.Random(f"skillworld:{self.seed}:{split}:{index}")
            level = rng.choice(self.levels)
            skills = self._draw_skills(rng, min(level, self.max_skills))
            problem = _build(_problem_id(split, self.seed, index, level, skills)) if skills else None
            if problem is not None and _split_of(problem.text) == split:
                misses = 0
                yield problem
            else:
                misses += 1
            index += 1
        raise UserError(
            f"{self} makes no {split} problems: its skill_weights, levels and max_skills leave "
            "no chain of distinct skills that can be built; give more skills a positive weight"
        )

    def _draw_skills(self, rng: random.Random, n_steps: int) -> tuple[str, ...] | None:
        """``n_steps`` distinct skills by weight; a final-only skill may only be drawn for the last step."""
        chosen: list[str] = []
        for position in range(n_steps):
            names = [
                name
                for name, w in self._weights.items()
                if w > 0 and name not in chosen and (position == n_steps - 1 or not _BY_NAME[name].final_only)
            ]
            if not names:
                return None
            chosen.append(rng.choices(names, weights=[self._weights[name] for name in names])[0])
        return tuple(chosen)


def problem_from_id(problem_id: str) -> SkillWorldProblem:
    """Regenerate a problem from its id alone: ``skillworld/<split>/<seed>/<index>/L<level>/<codes>``."""
    match = _ID.fullmatch(problem_id)
    codes = match.group(1).split("-") if match else []
    problem = _build(problem_id) if codes and all(c in _BY_CODE for c in codes) else None
    if problem is None or _split_of(problem.text) != problem.split:
        raise UserError(
            f"{problem_id!r} is not a skill-world problem id (skillworld/<split>/<seed>/"
            "<index>/L<level>/<skill codes>, as SkillWorld makes them)"
        )
    return problem


def _problem_id(split: str, seed: int, index: int, level: int, skills: tuple[str, ...]) -> str:
    codes = "-".join(_BY_NAME[s].code for s in skills)
    return f"skillworld/{split}/{seed}/{index}/L{level}/{codes}"


def _build(problem_id: str) -> SkillWorldProblem | None:
    """The problem an id names, drawn from an RNG seeded by the id; None when its chain cannot be built."""
    _, split, _, _, level_code, codes = problem_id.split("/")
    level = int(level_code[1:])
    rng = random.Random(problem_id)
    steps: list[Step] = []
    value: int | None = None
    for skill in (_BY_CODE[code] for code in codes.split("-")):
        step = _try_step(rng, skill, value, level)
        if step is None:
            return None
        steps.append(step)
        value = None if skill.final_only else int(step.value)
    text = " ".join(step.text for step in steps)
    return SkillWorldProblem(id=problem_id, split=split, level=level, text=text, steps=tuple(steps))


def _try_step(rng: random.Random, skill: _Skill, value: int | None, level: int) -> Step | None:
    """Draw numbers for one step until the skill accepts them; a first step also draws its start number."""
    for _ in range(_TRIES_PER_STEP):
        x = value if value is not None else rng.randint(*skill.start[level - 1])
        step = skill.apply(rng, x, level, value is None)
        if step is not None and _in_range(step.value):
            return step
    return None


def _in_range(value: str) -> bool:
    number = Fraction(value)
    return number.denominator > 1 or 2 <= number <= _MAX_VALUE


def _check_split(split: str) -> None:
    if split not in SPLIT_SHARES:
        raise UserError(f"unknown skill-world split {split!r}; choose one of {list(SPLIT_SHARES)}")


def _split_of(text: str) -> str:
    """The split that owns a problem text: a stable hash of the text, cut by :data:`SPLIT_SHARES`."""
    bucket = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") % 100
    for split, share in SPLIT_SHARES.items():
        if bucket < share:
            return split
        bucket -= share
    raise AssertionError("SPLIT_SHARES must add up to 100")


@dataclass
class SkillWorldSource(SkillWorld, DataSource):
    """The skill world as a data source for a DataModule or a callback: ``n`` problems of ``split``.

    It is a :class:`SkillWorld` (``seed``, ``levels``, ``max_skills``, ``skill_weights``, with its
    defaults) that a config can name wherever a :class:`~stat_pl.records.DataSource` goes.
    """

    split: str = "train"
    n: int = 1000

    def load(self) -> list[ProblemRecord]:
        return self.records(self.split, self.n)
