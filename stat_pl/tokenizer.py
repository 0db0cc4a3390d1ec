"""The tokenizer of a model name or path, without loading the model (what DataModules and engines need).

``offline:smollm2-135m-instruct`` names the real pretrained model stat-pl can provide without the Hub
(:mod:`stat_pl.offline_models`); every other string is a Hub name, a local folder or a GGUF file.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from stat_pl.errors import MissingFileError
from stat_pl.offline_models import resolve_model_path


def pretrained_source(name_or_path: str) -> tuple[str, dict]:
    """``from_pretrained``'s arguments for a name: a GGUF file becomes ``(folder, {gguf_file: name})``.

    A name written as a path (absolute, or starting with ``.`` or ``~``) must exist: transformers would
    otherwise take it for a Hub name and fail with a message about the Hub.
    """
    path = Path(resolve_model_path(name_or_path)).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MissingFileError(f"GGUF file {path} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if name_or_path.startswith((".", "~")) or path.is_absolute():
        if not path.is_dir():
            raise MissingFileError(
                f"model {name_or_path}: no folder at {path}; give a folder that "
                "save_pretrained wrote, a Hub name, or offline:smollm2-135m-instruct"
            )
    return str(path), {}


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (the EOS token when the model has none)."""
    source, extra = pretrained_source(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
