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
