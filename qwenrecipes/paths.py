"""Where qwenrecipes keeps its cache (built models, engine virtualenvs, run outputs)."""

from __future__ import annotations

import os
from pathlib import Path


def qwenrecipes_home() -> Path:
    """The cache root: ``$QWENRECIPES_HOME`` if set, else ``~/.cache/qwenrecipes``.

    Read on every call (not at import) so tests can point it at a tmp dir with monkeypatch.
    """
    env = os.environ.get("QWENRECIPES_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "qwenrecipes"
