"""`qwenrecipes push`: upload a merged model, an adapter or a GGUF export to the Hugging Face Hub (after its own
checks pass)."""

from __future__ import annotations

import os
from pathlib import Path

from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.export.source import is_run_dir, read_manifest, resolve_source
from qwenrecipes.export.tools_env import run_tool, tools
from qwenrecipes.export.verify import verify_export


def push(path: str | os.PathLike[str], repo_id: str, *, what: str = "auto", private: bool = False) -> str:
    """Upload a merged model, an adapter or a GGUF export to the Hugging Face Hub with huggingface_hub (in the
    tools env). The token comes from $HF_TOKEN only and reaches the child through its environment."""
    if not (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        raise QwenRecipesError("push needs a Hugging Face token in $HF_TOKEN (it is never read from or written to "
                               "disk): export HF_TOKEN=hf_… and retry")
    folder = Path(path).expanduser()
    if is_run_dir(folder):
        choices = {"merged": folder / "merged", "gguf": folder / "gguf", "adapter": resolve_source(folder).path}
        if what == "auto":
            folder = next(p for p in (choices["merged"], choices["adapter"]) if p.is_dir())
        elif what in choices:
            folder = choices[what]
        else:
            raise QwenRecipesError(f"unknown --what {what!r}: choose merged, adapter or gguf")
    if not folder.is_dir():
        raise QwenRecipesError(f"{folder} does not exist: merge or export first")
    if folder.name in ("merged",) or read_manifest(folder).get("kind") in ("merged", "gguf"):
        report = verify_export(folder, runtime=False)
        report.raise_for_failures()  # never publish an export that fails its own checks
    result = run_tool(tools(offline=False), ["push", "--folder", str(folder), "--repo-id", repo_id,
                                             *(["--private"] if private else [])], what="push")
    return str(result.get("url", ""))
