"""Stage 3: targeted training data (STAT-Sel, STAT-Syn) and the paper's baselines.

Each builder turns a Missing-Skill-Profile and a training pool into rows that record why they are
there; ``python -m stat_pl build`` (:func:`stat_pl.building.run.build`) writes them as JSONL with a
manifest and a skill-distribution plot. :meth:`StatSyn.synthesize_for_profile` is STAT-Syn for the live loop.
"""

from stat_pl.building.base import BuildInputError, BuildInputs, BuiltDataset, BuiltRow, DataBuilder
from stat_pl.building.baselines import EmbedSel, EmbedSyn, MathAugment, MathHard, MathTrain
from stat_pl.building.contamination import ContaminationGuard
from stat_pl.building.embedding import EmbeddingModel
from stat_pl.building.selection import AnswerSettings
from stat_pl.building.stat_sel import StatSel
from stat_pl.building.stat_syn import StatSyn
from stat_pl.building.synthesis import SynthesisSettings

__all__ = [
    "AnswerSettings",
    "BuildInputError",
    "BuildInputs",
    "BuiltDataset",
    "BuiltRow",
    "ContaminationGuard",
    "DataBuilder",
    "EmbedSel",
    "EmbedSyn",
    "EmbeddingModel",
    "MathAugment",
    "MathHard",
    "MathTrain",
    "StatSel",
    "StatSyn",
    "SynthesisSettings",
]
