"""`qwenrecipes ui`: a local web app over the library (Starlette; needs the `qwenrecipes[ui]` extra).

The recipe as a form generated from the JSON Schema, validated by the same functions as `qwenrecipes validate`;
every engine's rendered files, the `explain` table and memory decisions; a token view as `check` sees it; runs
started through `qwenrecipes run` and watched live from events.jsonl; runs, compare and bench reports.

Safety (safety.py): bound to 127.0.0.1 by default, requests for another Host refused (DNS rebinding), every
request that starts a process or writes a file carries the per-launch token printed at start-up, and every file
path is resolved inside the project folder (symlinks that lead out of it are refused).
"""
