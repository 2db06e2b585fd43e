"""The echo engine's token check: runs with the render folder as cwd, ``python -P check_tokens.py OUT_JSON``, in the
interpreter its EnvSpec names. It tokenizes like the canonical reference (it has no preprocessing of its own)."""

from __future__ import annotations

import json
import sys

import yaml

from qwenrecipes.check.tokens import reference_tokens
from qwenrecipes.recipe.plan import TRAIN_FILE


def main() -> None:
    with open("echo.yaml", encoding="utf-8") as handle:
        train_on = yaml.safe_load(handle)["train_on"]
    with open(TRAIN_FILE, encoding="utf-8") as handle:
        conversations = [json.loads(line)["messages"] for line in handle if line.strip()]
    rows = [reference_tokens(messages, train_on).to_json() for messages in conversations]
    with open(sys.argv[1], "w", encoding="utf-8") as handle:
        json.dump({"ok": True, "rows": rows}, handle)


if __name__ == "__main__":
    main()
