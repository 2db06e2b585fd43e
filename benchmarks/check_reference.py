"""How long `qwenrecipes check`'s reference takes for every row of a dataset: 10,000 synthetic conversations.

`check` now checks every row by default; this times qwenrecipes' own side of it, per rule (model.chat_template):
  rows      canonical conversations -> prepared rows (data/render_text.conversation_rows: think rule, tools,
            official-template splits)
  text      each row's training text + trained character spans (render_text.training_text)
  reference the reference tokens: Qwen3 tokenizer on the text + labels by span overlap
            (check/tokens.reference_tokens, one row at a time, as check calls it)
  batch     the same ids and labels in bulk (data/tokens.tokenize_rows, the token handoff's encode_batch path,
            where the tree has it; checked equal to the row-by-row reference)
The engines' own preprocessing (in their envs) comes on top and is each engine's cost, not measured here.
Rows: a mix of single-turn, multi-turn with reasoning in earlier turns, tool calls with grouped results, unicode.
Prints a table; writes benchmarks/results/check_reference.json.

    python benchmarks/check_reference.py [--rows 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

from qwenrecipes.check.tokens import reference_tokens
from qwenrecipes.data.render_text import conversation_rows, training_text
from qwenrecipes.data.tokenizer_files import load_qwen3_tokenizer

ROOT = Path(__file__).resolve().parent.parent
RULES = ("qwen3", "qwen3_nothink", "qwen3_official")
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "it",
         "an", "be", "this", "are", "or", "which", "not", "but", "had", "a", "one", "all", "her", "his", "they",
         "we", "you"]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def conversation(rng: random.Random, thinking: bool) -> tuple[list[dict[str, Any]], list[Any]]:
    """One synthetic conversation; reasoning only when the rule allows it."""
    kind = rng.randrange(4)
    reasoning = (lambda: {"reasoning_content": _text(rng, rng.randint(5, 40))}) if thinking else dict
    if kind == 0:
        return [{"role": "user", "content": _text(rng, rng.randint(5, 60))},
                {"role": "assistant", "content": _text(rng, rng.randint(5, 120)), **reasoning()}], []
    if kind == 1:
        messages: list[dict[str, Any]] = [{"role": "system", "content": "You are helpful. 你好 🌍"}]
        for _ in range(rng.randint(2, 4)):
            messages += [{"role": "user", "content": _text(rng, rng.randint(5, 40))},
                         {"role": "assistant", "content": _text(rng, rng.randint(5, 80)), **reasoning()}]
        return messages, []
    if kind == 2:
        return [{"role": "user", "content": _text(rng, 20)},
                {"role": "assistant", "content": "", **reasoning(),
                 "tool_calls": [{"name": "lookup", "arguments": {"q": _text(rng, 2)}},
                                {"name": "lookup", "arguments": {"q": _text(rng, 2)}}]},
                {"role": "tool", "content": _text(rng, 30)}, {"role": "tool", "content": _text(rng, 30)},
                {"role": "assistant", "content": _text(rng, 50)}], TOOLS
    return [{"role": "user", "content": _text(rng, 10)}, {"role": "user", "content": _text(rng, 10)},
            {"role": "assistant", "content": _text(rng, 30)}], []


def measure(rule: str, count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    conversations = [conversation(rng, rule != "qwen3_nothink") for _ in range(count)]
    load_qwen3_tokenizer()  # loaded once per process, not part of the per-row cost
    start = time.perf_counter()
    rows = [row for messages, tools in conversations for row in conversation_rows(messages, tools, rule)]
    rows_s = time.perf_counter() - start
    start = time.perf_counter()
    for row in rows:
        training_text(row, "assistant")
    text_s = time.perf_counter() - start
    start = time.perf_counter()
    tokens = [reference_tokens(row, "assistant") for row in rows]
    reference_s = time.perf_counter() - start
    batch_s = None
    try:  # the token handoff's bulk path (data/tokens.py), where this tree has it
        from qwenrecipes.data.tokens import tokenize_rows
    except ImportError:
        tokenize_rows = None
    if tokenize_rows is not None:
        start = time.perf_counter()
        batched = tokenize_rows(rows, "assistant")
        batch_s = time.perf_counter() - start
        assert [(b.input_ids, b.labels) for b in batched] == [(t.input_ids, t.labels) for t in tokens]
    return {"rule": rule, "conversations": count, "rows": len(rows), "tokens": sum(len(t.input_ids) for t in tokens),
            "rows_s": rows_s, "text_s": text_s, "reference_s": reference_s, "reference_batch_s": batch_s,
            "total_s": rows_s + text_s + reference_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "check_reference.json")
    args = parser.parse_args()
    results = [measure(rule, args.rows, args.seed) for rule in RULES]
    header = f"{'rule':16} {'convs':>6} {'rows':>6} {'tokens':>9} {'rows s':>7} {'text s':>7} {'ref s':>7} " \
             f"{'batch s':>8} {'total s':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        batch = "-" if r["reference_batch_s"] is None else f"{r['reference_batch_s']:.2f}"
        print(f"{r['rule']:16} {r['conversations']:6d} {r['rows']:6d} {r['tokens']:9d} {r['rows_s']:7.2f} "
              f"{r['text_s']:7.2f} {r['reference_s']:7.2f} {batch:>8} {r['total_s']:8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                                "platform": platform.platform()},
                                    "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
