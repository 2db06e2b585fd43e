"""Resolve a validated recipe against its data and target hardware into a Plan: the one fully explicit
object every engine renders from. Cross-field rules that engines only discover at run time live here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenrecipes.data import prepare as datamod
from qwenrecipes.data.packing import Packing
from qwenrecipes.data.rows import RowReport, SplitReport, dropped_warnings, prepare_local, split_warnings
from qwenrecipes.errors import Problem, RecipeError
from qwenrecipes.recipe import memory
from qwenrecipes.recipe.hardware import EIGHT_BIT_OPTIMIZERS, detect_target, resolve_target
from qwenrecipes.recipe.load import Recipe, load_recipe, load_recipe_document
from qwenrecipes.recipe.text import text_problems

TRAIN_FILE = "data/train.jsonl"
EVAL_FILE = "data/eval.jsonl"
# Token handoff (data.handoff: tokens): the rows as input_ids + labels, in the format each engine reads
# (Engine.token_row), in the same order as data/train.jsonl.
TRAIN_TOKENS_FILE = "data/train.tokens.jsonl"
EVAL_TOKENS_FILE = "data/eval.tokens.jsonl"
PRECISION_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
__all__ = ["EIGHT_BIT_OPTIMIZERS", "Plan", "detect_target", "make_plan", "plan_recipe"]


@dataclass(frozen=True)
class Plan:
    """Everything an engine needs, with no value left to a default."""

    recipe: Recipe
    target: str  # "cpu" | "cuda"
    target_why: str  # how the target was chosen: declared, implied by GPU-only settings, --target, or this machine
    precision: str  # "bf16" | "fp16" | "fp32"
    model_dtype: str  # "bfloat16" | "float16" | "float32"
    model_path: str  # hub id or local path (builtin refs resolved)
    train_rows: list[list[dict[str, str]]] | None  # prepared rows, None for a hub dataset
    eval_rows: list[list[dict[str, str]]] | None
    dropped_rows: list[RowReport]  # every input row neither trained nor evaluated, with its reason
    max_steps: int | None  # None only for hub data (the engine decides the row count)
    warmup_steps: int
    warnings: list[str] = field(default_factory=list)
    gpu_memory_gb: float | None = None  # one GPU's memory (CUDA target): declared, detected or assumed
    gpu_memory_source: str = "none"  # "declared" | "detected" | "assumed" | "none" (CPU)
    engine: str | None = None  # set once resolve.resolve_for_engine made the training values concrete
    memory: dict[str, Any] | None = None  # that resolution's decisions and their reasons
    split_rows: list[SplitReport] = field(default_factory=list)  # input rows trained as several rows (qwen3_official)
    special_token_rows: list[RowReport] = field(default_factory=list)  # rows kept with literal special-token text
    packing: Packing | None = None  # data.packing: the bins qwenrecipes packed (data/packing.py)

    @property
    def world_size(self) -> int:
        """Training processes in all: one per GPU (or CPU process) on every node."""
        return self.recipe.distributed["gpus"] * self.recipe.distributed["nodes"]

    @property
    def effective_batch(self) -> int:
        t = self.recipe.training
        return t["micro_batch_size"] * t["gradient_accumulation_steps"] * self.world_size

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_rows) or self.recipe.eval is not None

    @property
    def train_stream(self) -> list[list[dict[str, str]]] | None:
        """Training rows in the exact order they are consumed, enough passes to cover max_steps."""
        if self.train_rows is None:
            return None
        if self.packing is not None:  # the rows of the bins, in the order the bins are trained
            rows = self.train_rows
            return [rows[i] for members in self.bin_stream or () for i in members]
        t = self.recipe.training
        copies = math.ceil(t["epochs"])
        if self.max_steps is not None:
            copies = max(1, math.ceil(self.max_steps * self.effective_batch / len(self.train_rows)))
        return datamod.epoch_stream(self.train_rows, copies=copies, seed=t["seed"], shuffle=self.recipe.data["shuffle"])

    @property
    def bin_stream(self) -> list[tuple[int, ...]] | None:
        """Packed recipes: the bins in the exact order they are trained (each one packed row), enough passes
        to cover max_steps, each pass shuffled from the seed as rows are."""
        if self.packing is None:
            return None
        t, bins = self.recipe.training, list(self.packing.bins)
        copies = max(1, math.ceil((self.max_steps or 0) * self.effective_batch / len(bins)))
        return datamod.epoch_stream(bins, copies=copies, seed=t["seed"], shuffle=self.recipe.data["shuffle"])

    @property
    def token_handoff(self) -> bool:
        """Engines get input_ids + labels made by qwenrecipes (data/tokens.py); only for data qwenrecipes read."""
        local_eval = self.recipe.eval is None or self.eval_rows is not None
        return self.recipe.data.get("handoff", "tokens") == "tokens" and self.train_rows is not None and local_eval

    @property
    def train_file(self) -> str:
        return TRAIN_FILE if self.train_rows is not None else self.recipe.train.path

    @property
    def eval_file(self) -> str | None:
        if self.eval_rows:
            return EVAL_FILE
        return self.recipe.eval.path if self.recipe.eval is not None else None

    @property
    def is_local(self) -> bool:
        """Model and every dataset are on this machine: engines can run with the hub switched off."""
        path = self.model_path
        local_model = Path(path).is_absolute() or path.startswith((".", "~"))
        local_eval = self.recipe.eval is None or self.recipe.eval.local_path is not None
        return local_model and self.recipe.train.local_path is not None and local_eval

    @property
    def precision_flags(self) -> dict[str, bool]:
        return {"bf16": self.precision == "bf16", "fp16": self.precision == "fp16"}

    def summary(self, *, with_bins: bool = False) -> dict[str, Any]:
        """The resolved values a person (and the render folder's resolved-recipe file) should see; plan.json
        adds the packed bins themselves (``with_bins``)."""
        packing = self.packing.summary(with_bins=with_bins) if self.packing is not None else None
        return {
            "target": self.target,
            "target_why": self.target_why,
            "precision": self.precision,
            "model_dtype": self.model_dtype,
            "model_path": self.model_path,
            "train_rows": len(self.train_rows) if self.train_rows is not None else None,
            "eval_rows": len(self.eval_rows) if self.eval_rows is not None else None,
            "dropped_rows": [report.as_dict() for report in self.dropped_rows],
            "split_rows": [report.as_dict() for report in self.split_rows],
            "special_token_rows": [report.as_dict() for report in self.special_token_rows],
            "world_size": self.world_size,
            "effective_batch": self.effective_batch,
            "max_steps": self.max_steps,
            "warmup_steps": self.warmup_steps,
            **({"packing": packing} if packing is not None else {}),
            "memory": self.memory if self.memory is not None else {
                "gpu_memory_gb": self.gpu_memory_gb, "gpu_memory_source": self.gpu_memory_source},
        }


def _resolve_model_path(name: str, base: Path) -> str:
    """builtin refs built; a local path made absolute like data paths are: relative to the recipe's folder,
    since engines run with the run folder as their cwd. "./x", "../x", or a folder that exists next to the
    recipe is local; anything else (org/name) is a hub id."""
    if name.startswith("builtin:"):
        from qwenrecipes.data.tiny import resolve_builtin_model

        return str(resolve_builtin_model(name))
    if name in (".", "..") or name.startswith(("./", "../")) or (not Path(name).is_absolute()
                                                                and not name.startswith("~")
                                                                and _is_dir(base / name)):
        return str((base / name).resolve())
    return name


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long for the OS is no folder
        return False


def _rule_problems(recipe: Recipe, target: str, precision: str) -> list[tuple[str, str]]:
    """Rules known from engines' failures and the troubleshooting lists, each with its fix."""
    out: list[tuple[str, str]] = text_problems(recipe)
    method, lora, quant = recipe.method, recipe.lora, recipe.quantization
    training, distributed = recipe.training, recipe.distributed
    if method["type"] == "qlora" and quant["bits"] != 4:
        out.append(("method.quantization.bits",
                    "qlora needs 4-bit quantization: set bits: 4 (8-bit is plain LoRA on an int8 base)"))
    touched = set(recipe.target_modules) | set(lora["modules_to_save"])
    if recipe.uses_adapter and "embed_tokens" in touched and "lm_head" not in touched:
        out.append(("method.lora.modules_to_save",
                    "training embed_tokens without lm_head breaks Qwen3's tied embeddings: add lm_head too"))
    if distributed["strategy"] == "deepspeed_zero3" and recipe.uses_adapter:
        out.append(("distributed.strategy",
                    "DeepSpeed ZeRO-3 with LoRA/QLoRA is a known failure (shape [0] weights, 4-bit params not "
                    "partitionable): use deepspeed_zero2"))
    if distributed["zero_offload"] and not distributed["strategy"].startswith("deepspeed"):
        out.append(("distributed.zero_offload", "zero_offload needs a deepspeed_* strategy"))
    if distributed["gpus"] * distributed["nodes"] > 1 and distributed["strategy"] == "none":
        out.append(("distributed.strategy", "several GPUs or nodes need a strategy: ddp, deepspeed_zero2 or fsdp"))
    if training["liger_kernel"] is True and method["type"] == "qlora":
        out.append(("training.liger_kernel",
                    "Liger kernels with QLoRA fail on 4-bit weights in several engines: set liger_kernel: false"))
    if training.get("warmup_ratio") is not None and training.get("warmup_steps") not in (None, 0):
        out.append(("training.warmup_ratio", "set either warmup_steps or warmup_ratio, not both (warmup_steps: null)"))
    if recipe.eval is not None and recipe.data["val_fraction"] > 0:
        out.append(("data.val_fraction", "set either data.eval (an eval file) or data.val_fraction (hold out part "
                                         "of the training rows), not both: with both, the held-out rows would "
                                         "be neither trained nor evaluated"))
    if training["eval_steps"] and not (recipe.eval or recipe.data["val_fraction"] > 0):
        out.append(("training.eval_steps", "eval_steps needs data.eval or data.val_fraction > 0"))
    for section, ref in (("train", recipe.train), ("eval", recipe.eval)):
        if ref is not None and ref.local_path is None and (ref.format != "messages" or ref.fields):
            out.append((f"data.{section}.path",
                        f"{ref.path!r} is read as a hub dataset, which engines load by name: only the `messages` "
                        "format with its default field names works there; download it to a local file to "
                        "convert another format or map fields"))
    if target == "cpu":
        if method["type"] == "qlora":
            out.append(("method.type", "qlora needs a CUDA GPU (bitsandbytes 4-bit); on CPU use lora"))
        if training["optimizer"] in EIGHT_BIT_OPTIMIZERS:
            out.append(("training.optimizer",
                        f"{training['optimizer']} needs a CUDA GPU (bitsandbytes); on CPU use adamw_torch"))
        if precision != "fp32":
            out.append(("training.precision", f"{precision} training needs a GPU; on CPU use fp32 (or auto)"))
        if recipe.model["attn"] == "flash_attention_2":
            out.append(("model.attn", "flash_attention_2 needs a CUDA GPU; on CPU use sdpa"))
        if training["liger_kernel"] is True:
            out.append(("training.liger_kernel", "Liger kernels are Triton (CUDA) code; on CPU use false or auto"))
    return out


def _gpu_memory(recipe: Recipe, target: str) -> tuple[float | None, str, list[str]]:
    """(GB, source, warnings): the recipe's hardware.gpu_memory_gb, else nvidia-smi's, else the assumed 24 GB."""
    if target != "cuda":
        return None, "none", []
    declared = recipe.hardware["gpu_memory_gb"]
    if declared is not None:
        return float(declared), "declared", []
    detected = memory.detect_gpu_memory_gb()
    if detected is not None:
        return detected, "detected", []
    assumed = memory.ASSUMED_GPU_MEMORY_GB
    return assumed, "assumed", [f"GPU memory unknown (no hardware.gpu_memory_gb, nvidia-smi did not answer): "
                                f"assuming {assumed:g} GB; set hardware.gpu_memory_gb for your card"]


def make_plan(recipe: Recipe, *, target: str | None = None) -> Plan:
    """Validate cross-field rules, prepare the data, and compute steps and warmup. Raises RecipeError."""
    file = str(recipe.source)
    # The recipe's own hardware, not this machine's: a GPU recipe renders the same on a laptop (hardware.py).
    choice = resolve_target(recipe, target)
    target = choice.target
    training, data = recipe.training, recipe.data
    precision = training["precision"]
    if precision == "auto":
        precision = "bf16" if target == "cuda" else "fp32"
    model_dtype = recipe.model["dtype"]
    if model_dtype == "auto":
        model_dtype = PRECISION_DTYPE[precision]
    pairs = _rule_problems(recipe, target, precision)
    gpu_memory_gb, gpu_memory_source, warnings = _gpu_memory(recipe, target)

    train_rows = eval_rows = None
    dropped: list[RowReport] = []
    splits: list[SplitReport] = []
    special: list[RowReport] = []
    if recipe.train.local_path is not None:
        local_eval = recipe.eval if recipe.eval is not None and recipe.eval.local_path is not None else None
        try:
            prepared = prepare_local(recipe.train, local_eval, file=file, chat_template=recipe.model["chat_template"],
                                     max_tokens=data["max_seq_length"], val_fraction=data["val_fraction"],
                                     seed=training["seed"], special_tokens=data["special_tokens_in_content"])
        except RecipeError as exc:
            raise RecipeError([*(Problem(file, p, m) for p, m in pairs), *exc.problems]) from None
        reasoning = sum(c.has_reasoning for c in prepared.conversations)
        if recipe.model["chat_template"] == "qwen3_nothink" and reasoning:
            pairs.append(("model.chat_template",
                          f"{reasoning} training rows carry reasoning (reasoning_content or <think> text) but "
                          "qwen3_nothink drops think blocks: use chat_template: qwen3, or strip the reasoning"))
        if recipe.model["chat_template"] == "qwen3" and not reasoning:
            warnings.append("chat_template qwen3 with no reasoning in the data: every assistant turn is trained "
                            "with an empty <think></think> block (use qwen3_nothink for a non-thinking model)")
        empty = sum(1 for row in prepared.train for m in row if m["role"] == "assistant" and not m["content"])
        if empty:
            warnings.append(f"{empty} assistant turns are empty: Axolotl trains nothing there (the other engines "
                            "train their <|im_end|>); drop them for identical training on every engine")
        train_rows, eval_rows, dropped = prepared.train, prepared.eval, prepared.dropped
        warnings.extend(dropped_warnings(dropped, data["max_seq_length"]))
        splits, special = prepared.split, prepared.special
        warnings.extend(split_warnings(splits, special))
        if not train_rows:
            pairs.append(("data.max_seq_length", f"every training row is longer than {data['max_seq_length']} "
                                                 "tokens: nothing is left to train (raise max_seq_length)"))
        if local_eval is not None and not eval_rows:
            pairs.append(("data.max_seq_length", f"every eval row is longer than {data['max_seq_length']} "
                                                 "tokens: nothing is left to evaluate (raise max_seq_length)"))

    if recipe.train.local_path is None:
        warnings.append(f"{recipe.train.path!r} is a hub dataset, loaded by each engine by name: qwenrecipes cannot "
                        "apply the think rule, drop over-long rows or fix the row order for it; download it to a "
                        "local file for identical training on every engine")
    model_path = _resolve_model_path(recipe.model["name_or_path"], recipe.source.parent)
    packing = None
    if data["packing"]:
        packing, problem = _pack(recipe, train_rows, eval_rows, model_path)
        pairs.extend([problem] if problem else [])
    world = recipe.distributed["gpus"] * recipe.distributed["nodes"]
    per_step = training["micro_batch_size"] * training["gradient_accumulation_steps"] * world
    max_steps = training["max_steps"]
    # One training example is a row, or with packing a bin: steps are counted in what the engines are handed.
    units, unit = (len(packing.bins), "packed bins") if packing else (len(train_rows or ()), "training rows")
    if train_rows is not None and per_step > units:
        pairs.append(("training.gradient_accumulation_steps",
                      f"effective batch {per_step} (micro_batch_size x gradient_accumulation_steps x world size "
                      f"{world} = gpus x nodes) is larger "
                      f"than the {units} {unit}: "
                      "lower micro_batch_size or gradient_accumulation_steps"))
    if data["packing"] and packing is None and train_rows is not None:
        warnings.append("data.packing with data.handoff: text: each engine packs with its own packer, so bins and "
                        "step counts differ between engines (data.handoff: tokens packs once for all of them)")
    elif max_steps is None and train_rows is not None and units:
        max_steps = max(1, math.ceil(units * training["epochs"] / per_step))
    if max_steps is None:
        warnings.append("step count is decided by the engine (hub data or its own packing): "
                        "warmup_ratio is passed as a ratio")

    warmup = training["warmup_steps"] or 0
    if training.get("warmup_ratio") is not None:
        warmup = math.ceil(training["warmup_ratio"] * max_steps) if max_steps else 0
    if max_steps is not None and warmup >= max_steps:
        pairs.append(("training.warmup_steps",
                      f"warmup ({warmup} steps) is not shorter than the run ({max_steps} optimizer steps): "
                      "lower warmup_steps or use warmup_ratio"))
    if max_steps is not None and training["save_steps"] and training["save_steps"] > max_steps:
        warnings.append(f"save_steps={training['save_steps']} > {max_steps} steps: only the final model is saved")

    if pairs:
        raise RecipeError([Problem(file, path, message) for path, message in pairs])
    return Plan(recipe=recipe, target=target, target_why=choice.describe(), precision=precision,
                model_dtype=model_dtype, model_path=model_path, train_rows=train_rows,
                eval_rows=eval_rows or None, dropped_rows=dropped, max_steps=max_steps, warmup_steps=warmup,
                warnings=warnings, gpu_memory_gb=gpu_memory_gb, gpu_memory_source=gpu_memory_source,
                split_rows=splits, special_token_rows=special, packing=packing)


def _pack(recipe: Recipe, train_rows: list[Any] | None, eval_rows: list[Any] | None,
          model_path: str) -> tuple[Packing | None, tuple[str, str] | None]:
    """data.packing: qwenrecipes tokenizes the training rows (data/tokens.py) and packs them once
    (data/packing.py); packing needs rows qwenrecipes read and the token handoff that carries the bins."""
    data = recipe.data
    local_eval = recipe.eval is None or eval_rows is not None
    if train_rows is None or not local_eval:
        return None, ("data.packing", "qwenrecipes packs the rows it read itself, so every engine trains the same "
                                      "bins: download the hub dataset to a local file, or set packing: false")
    if data.get("handoff", "tokens") != "tokens":  # the text handoff leaves packing to each engine (warned)
        return None, None
    if not train_rows:
        return None, None
    from qwenrecipes.data.packing import pack
    from qwenrecipes.data.tokens import tokenize_rows, tokenizer_for

    tokens = tokenize_rows(train_rows, data["train_on"], tokenizer_for(model_path))
    return pack(tokens, data["max_seq_length"], recipe.training["seed"]), None


def plan_recipe(path: str | Path, *, target: str | None = None) -> Plan:
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        # The data is only read for a schema-valid recipe; a missing data file is still worth saying in the same
        # round as an unknown key ("every problem at once"), so look for it in the raw document.
        raise RecipeError([*exc.problems, *missing_data_files(Path(path))]) from None
    return make_plan(recipe, target=target)


def missing_data_files(path: Path) -> list[Problem]:
    """data.train/eval paths that look local (a file suffix, ./, / or ~) and do not exist, from the raw document."""
    try:
        document = load_recipe_document(path)
    except RecipeError:
        return []
    data = document.get("data")
    out = []
    for section in ("train", "eval"):
        spec = data.get(section) if isinstance(data, dict) else None
        name = spec.get("path") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name.strip():
            continue
        try:
            candidate = Path(name).expanduser()
            candidate = candidate if candidate.is_absolute() else path.parent / candidate
            looks_local = name.startswith((".", "/", "~")) or candidate.suffix in (".jsonl", ".json", ".parquet")
            if looks_local and not candidate.exists():
                out.append(Problem(str(path), f"data.{section}.path", f"data file not found: {name}"))
        except (OSError, RuntimeError, ValueError):  # unusable paths are the schema's or the loader's to word
            continue
    return out
