"""Standalone scripts that `qwenrecipes check` runs inside each engine's own env.

They never import qwenrecipes (engine envs do not contain it). Each runs with a render folder as cwd, whose
``data/train.jsonl`` holds the sample rows, calls that engine's own preprocessing on it and writes
``{"ok": true, "rows": [{"input_ids": [...], "labels": [...]}, ...]}`` (rows in file order) or
``{"ok": false, "error": "...", "skip": bool}`` to the JSON file named by its first argument.
"""
