"""LLaMA-Factory's own structured log: ``output_dir/trainer_log.jsonl``, which (unlike stdout) has the step."""

from __future__ import annotations

import json
from typing import Any


def parse_trainer_log(line: str) -> list[dict[str, Any]]:
    """One line of trainer_log.jsonl -> train / eval events in the run event schema (run/events.py)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return []
    if not isinstance(record, dict) or "current_steps" not in record:
        return []
    step = record["current_steps"]
    out: list[dict[str, Any]] = []
    if record.get("loss") is not None:
        out.append({"type": "train", "step": step, "total_steps": record.get("total_steps"),
                    "loss": record.get("loss"), "lr": record.get("lr"), "epoch": record.get("epoch"),
                    "tokens_per_s": record.get("throughput"), "tokens_seen": record.get("total_tokens"),
                    "memory_gb": record.get("vram_allocated")})
    if record.get("eval_loss") is not None:
        out.append({"type": "eval", "step": step, "eval_loss": record["eval_loss"], "epoch": record.get("epoch")})
    return [{k: v for k, v in event.items() if v is not None} for event in out]
