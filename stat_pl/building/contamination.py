"""The contamination guard: synthetic questions must not be near-copies of training or test questions.

A teacher shown three training questions may copy one, or reproduce a benchmark question it has
memorised; either would leak the test set into training or waste a row. A new question is rejected
when, after normalisation (:func:`stat_pl.records.problem_tokens`: lower case; ``$``,
``\\left``/``\\right`` and spacing dropped; words, numbers, LaTeX commands and symbols as tokens):

* its token sequence equals a reference question's, or
* the share of word ``ngram``-grams it has in common with one reference question, over the smaller
  of the two n-gram sets, exceeds ``max_overlap`` (defaults: 8-grams, 0.5). Measuring against the
  smaller set catches a copy with a sentence added as well as a copy with a sentence cut; 8-grams
  are long enough that the stock phrases of math problems ("what is the value of") do not count.

Accepted questions can be added to the guard, so it also rejects a second copy of the same new
question (within one build, and across live re-synthesis rounds when the guard is kept).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from stat_pl.errors import UserError
from stat_pl.records import ProblemRecord, problem_tokens


@dataclass(frozen=True)
class Match:
    """Why a question was rejected: the reference it copies, the measured overlap (1.0: identical),
    and whether that reference is itself a synthetic question added to the guard."""

    reference_id: str
    overlap: float
    synthetic: bool = False


class ContaminationGuard:
    """An n-gram index of reference questions (training pool, test sets, accepted synthetic ones).

    Args:
        ngram: the n of the word n-grams compared.
        max_overlap: a question whose overlap with one reference exceeds this is a near-duplicate.
    """

    def __init__(self, ngram: int = 8, max_overlap: float = 0.5) -> None:
        if ngram < 1:
            raise UserError(f"contamination ngram must be >= 1, got {ngram}")
        if not 0.0 < max_overlap <= 1.0:
            raise UserError(f"contamination max_overlap must be in (0, 1], got {max_overlap}")
        self.ngram = ngram
        self.max_overlap = max_overlap
        self._exact: dict[tuple[str, ...], int] = {}
        self._postings: dict[int, list[int]] = {}
        self._ids: list[str] = []
        self._sizes: list[int] = []
        self._synthetic: list[bool] = []

    @classmethod
    def from_records(
        cls, records: Iterable[ProblemRecord], ngram: int = 8, max_overlap: float = 0.5
    ) -> ContaminationGuard:
        guard = cls(ngram, max_overlap)
        guard.add_records(records)
        return guard

    def __len__(self) -> int:
        return len(self._ids)

    def add_records(self, records: Iterable[ProblemRecord], synthetic: bool = False) -> None:
        for record in records:
            self.add(record.id, record.problem, synthetic)

    def add(self, reference_id: str, text: str, synthetic: bool = False) -> None:
        """Index one question: a reference (training, test) or an accepted ``synthetic`` one."""
        toks = problem_tokens(text)
        index = len(self._ids)
        self._exact.setdefault(toks, index)
        grams = self._grams(toks)
        self._ids.append(reference_id)
        self._synthetic.append(synthetic)
        self._sizes.append(len(grams))
        for gram in grams:
            self._postings.setdefault(gram, []).append(index)

    def check(self, text: str) -> Match | None:
        """The reference that ``text`` nearly copies, or None when it is new."""
        toks = problem_tokens(text)
        if toks in self._exact:
            index = self._exact[toks]
            return Match(self._ids[index], 1.0, self._synthetic[index])
        grams = self._grams(toks)
        if not grams:
            return None
        shared: Counter[int] = Counter()
        for gram in grams:
            shared.update(self._postings.get(gram, ()))
        best: Match | None = None
        for index, count in shared.items():
            overlap = count / min(len(grams), self._sizes[index])
            if overlap > self.max_overlap and (best is None or overlap > best.overlap):
                best = Match(self._ids[index], round(overlap, 3), self._synthetic[index])
        return best

    def _grams(self, toks: tuple[str, ...]) -> set[int]:
        if len(toks) < self.ngram:
            return set()
        return {hash(toks[i : i + self.ngram]) for i in range(len(toks) - self.ngram + 1)}
