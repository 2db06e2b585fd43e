"""qwenrecipes' heavy half of `qwenrecipes eval`, run INSIDE an engine env (the trl env: torch, transformers,
peft, lm-eval).

Standalone on purpose, like export/tools_scripts/qr_tools.py: it imports nothing from qwenrecipes (the venv
does not have it). The library decides everything (token ids, loss mask, prompts, dtypes, chat template) and
passes it in a request JSON; this script only does the tensor work and writes one JSON result. Progress goes
to stdout as one JSON object per line ({"qr_progress": ...}) so the library can draw a bar.

Subcommands:
  score    teacher-forced loss on given (input_ids, labels) rows + greedy generations on given prompt ids,
           for each model of the request (base, base + adapter unmerged, or a merged/full model folder).
  lm-eval  lm-evaluation-harness's simple_evaluate with its HF backend (peft= for an adapter).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

IGNORE = -100
IM_END_ID = 151645
ENDOFTEXT_ID = 151643


def _progress(what: str, done: int, total: int) -> None:
    print(json.dumps({"qr_progress": {"what": what, "done": done, "total": total}}), flush=True)


def _write_result(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(spec: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec["dtype"]]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, attn_implementation="sdpa")
    if spec.get("adapter"):
        from peft import PeftModel

        # Unmerged: the numbers are those of base + LoRA as trained, not of a merge's rounding.
        model = PeftModel.from_pretrained(model, spec["adapter"])
    model.to(_device())
    model.eval()
    return model


def _losses(model: Any, rows: list[dict[str, list[int]]], batch_size: int, what: str, done: int,
            total: int) -> list[dict[str, float]]:
    """Per row: the summed cross-entropy over the trained (label != -100) next-token predictions and their
    count. Rows are batched by length (right padding, masked) so padding never changes a number."""
    import torch

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out: list[dict[str, float]] = [{} for _ in rows]
    device = _device()
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(rows[i]["input_ids"]) for i in chunk)
        ids = torch.full((len(chunk), width), ENDOFTEXT_ID, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for k, i in enumerate(chunk):
            n = len(rows[i]["input_ids"])
            ids[k, :n] = torch.tensor(rows[i]["input_ids"])
            labels[k, :n] = torch.tensor(rows[i]["labels"])
            mask[k, :n] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        # Token t predicts token t+1: the shift every causal-LM trainer applies.
        shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:].to(device)
        losses = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                                   shift_labels.reshape(-1), ignore_index=IGNORE,
                                                   reduction="none").view(len(chunk), -1)
        for k, i in enumerate(chunk):
            trained = shift_labels[k] != IGNORE
            out[i] = {"loss_sum": float(losses[k][trained].sum()), "tokens": int(trained.sum())}
        done += len(chunk)
        _progress(what, done, total)
    return out


def _generate(model: Any, prompt_ids: list[int], max_new_tokens: int) -> dict[str, Any]:
    import torch

    ids = torch.tensor([prompt_ids], device=_device())
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID)
    new = [int(t) for t in out[0][len(prompt_ids):]]
    return {"tokens": new, "stopped_on_eos": bool(new) and new[-1] in (IM_END_ID, ENDOFTEXT_ID)}


def cmd_score(args: argparse.Namespace) -> None:
    import torch
    import transformers

    request = json.loads(Path(args.request).read_text(encoding="utf-8"))
    torch.manual_seed(0)
    rows, prompts = request["rows"], request["prompts"]
    per_model = len(rows) + len(prompts)
    total, done = per_model * len(request["models"]), 0
    result: dict[str, Any] = {"models": {}, "torch": torch.__version__, "transformers": transformers.__version__,
                              "device": _device()}
    for spec in request["models"]:
        model = _load(spec)
        scores = _losses(model, rows, int(request.get("batch_size", 4)), spec["name"], done, total)
        done += len(rows)
        generations = []
        for prompt in prompts:
            generations.append(_generate(model, prompt, int(request.get("max_new_tokens", 128))))
            done += 1
            _progress(spec["name"], done, total)
        result["models"][spec["name"]] = {"rows": scores, "generations": generations}
        del model
    _write_result(args.result, result)


def cmd_lm_eval(args: argparse.Namespace) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    request = json.loads(Path(args.request).read_text(encoding="utf-8"))
    manager = TaskManager(include_path=request.get("include_path"))
    out: dict[str, Any] = {"lm_eval": lm_eval.__version__, "models": {}}
    for index, spec in enumerate(request["models"]):
        _progress(f"lm-eval {spec['name']}", index, len(request["models"]))
        results = lm_eval.simple_evaluate(
            model="hf", model_args=spec["model_args"], tasks=request["tasks"], task_manager=manager,
            limit=request.get("limit"), apply_chat_template=bool(request.get("apply_chat_template", True)),
            device=_device(), batch_size=request.get("batch_size", 1), random_seed=0, numpy_random_seed=0,
            torch_random_seed=0, fewshot_random_seed=0, num_fewshot=request.get("num_fewshot"),
        )
        if results is None:
            sys.exit("lm-eval returned no results (not the main process?)")
        out["models"][spec["name"]] = {
            "results": results.get("results", {}),
            "n_samples": results.get("n-samples", {}),
            "configs": {name: {k: str(v) for k, v in config.items() if k in ("output_type", "metric_list",
                                                                                "num_fewshot", "dataset_path")}
                        for name, config in (results.get("configs") or {}).items()},
        }
        _progress(f"lm-eval {spec['name']}", index + 1, len(request["models"]))
    _write_result(args.result, json.loads(json.dumps(out, default=_jsonable)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qr_eval")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, func in (("score", cmd_score), ("lm-eval", cmd_lm_eval)):
        p = sub.add_parser(name)
        p.add_argument("--request", required=True)
        p.add_argument("--result", required=True)
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
