"""Secrets never reach engine.log, events.jsonl or summary.json: the values of the secret variables the engine
gets, and anything shaped like a Hugging Face token, are replaced by ``***``."""

from __future__ import annotations

import re
from typing import Any

SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
# Token-shaped strings are redacted even when they did not come from our environment (an engine may
# read ~/.cache/huggingface/token and echo it).
_TOKEN_RE = re.compile(rb"\bhf_[A-Za-z0-9]{20,}\b")
REDACTED = "***"
# The start of a token-shaped string at the end of a buffer ("h", "hf", "hf_abc..."): it may go on in the
# next chunk, so it is never cut there.
_PARTIAL_TOKEN_RE = re.compile(rb"h(?:f(?:_[A-Za-z0-9]*)?)?\Z")


class Redactor:
    """Replaces secret values (from the environment the engine gets) in bytes and text."""

    def __init__(self, env: dict[str, str]) -> None:
        # Short values would redact ordinary words; real tokens are long.
        values = {env[n] for n in SECRET_NAMES if len(env.get(n, "")) >= 6}
        self._values = sorted((v.encode() for v in values), key=len, reverse=True)

    def data(self, raw: bytes) -> bytes:
        for value in self._values:
            raw = raw.replace(value, REDACTED.encode())
        return _TOKEN_RE.sub(REDACTED.encode(), raw)

    def split_safe(self, data: bytes, *, force: bool = False) -> tuple[bytes, bytes]:
        """(redacted bytes that can be written now, bytes to keep until more output comes) for an overlong
        unterminated line: everything before the cut is redacted, and the kept tail is long enough to hold the
        start of any secret (the longest value, or a token-shaped run) that the next chunk may complete.
        `force` writes everything (a pathological token-shaped run longer than the buffer)."""
        clean = self.data(data)
        if force:
            return clean, b""
        longest = max((len(v) for v in self._values), default=0)
        cut = max(0, len(clean) - max(longest - 1, 0))
        partial = _PARTIAL_TOKEN_RE.search(clean, 0, cut)
        if partial is not None:
            cut = partial.start()
        return clean[:cut], clean[cut:]

    def text(self, text: str) -> str:
        return self.data(text.encode("utf-8", errors="surrogateescape")).decode("utf-8", errors="replace")

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value
