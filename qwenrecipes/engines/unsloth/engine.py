"""Unsloth engine: one standalone `train_unsloth.py` (FastLanguageModel + TRL SFTTrainer).

Every recipe value enters the script as a Python literal (the template's `py` filter = repr), so a hostile
string stays a string. effective() reads the script back with `ast` (never executes it) and fills in
Unsloth's own defaults for anything a call leaves out.

Checked against the unsloth 2026.10.9 / unsloth_zoo 2026.10.9 sources (trl 1.15, transformers 5.17):
- `from_pretrained` remaps hub names to unsloth/* repos unless `use_exact_model_name=True` (models/loader.py);
  it drops `attn_implementation` and picks attention itself (models/llama.py).
- Its trainer patch turns `bf16=False, fp16=False` on a float32 model into bf16 (or fp16) autocast
  (models/rl.py): an fp32 recipe does not train in fp32 under Unsloth.
- `train_on_responses_only` (unsloth_zoo/dataset_utils.py) starts each trained span after the
  `<|im_start|>assistant\\n` tokens and ends it on the first EOS id (inclusive), so with
  eos_token = <|im_end|> it trains exactly content + <|im_end|>: system, user, the header and the
  newline after <|im_end|> stay masked.
- Auto padding-free batching only applies when `padding_free` is None (unsloth/trainer.py); the script sets
  it explicitly and also exports UNSLOTH_DISABLE_AUTO_PADDING_FREE=1.
- The statistics download is skipped when UNSLOTH_DISABLE_STATISTICS is set (models/_utils.py; base.TELEMETRY_OFF
  sets it).
"""

from __future__ import annotations

import ast
from typing import Any

from qwenrecipes.data.packing import PackedRow
from qwenrecipes.engines.base import (
    CHATML_TEMPLATE_PLAIN,
    BaseEngine,
    EnvSpec,
    engine_environment,
    header_context,
)
from qwenrecipes.engines.launchers import is_multiprocess, torchrun_args
from qwenrecipes.engines.templating import render_template
from qwenrecipes.recipe import concepts
from qwenrecipes.recipe.memory import EngineProfile
from qwenrecipes.recipe.plan import EVAL_TOKENS_FILE, TRAIN_TOKENS_FILE, Plan

UNSLOTH_VERSION = "2026.10.9"
SCRIPT_FILE = "train_unsloth.py"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
INSTRUCTION_PART = "<|im_start|>user\n"
RESPONSE_PART = "<|im_start|>assistant\n"
# qwenrecipes' bins (data.packing) on the CPU backend: TRL's padding-free collator, passed as data_collator (the CPU
# backend forces SFTConfig's padding_free off), one flattened row per micro-batch with position ids restarting per
# row and no attention mask; stock transformers keeps the rows apart (measured: docs/equivalence.md, Packing).
# On a GPU Unsloth takes its CUDA path (unsloth/models/rl.py, unsloth_zoo), which that measurement does not cover.
PACKED_CUDA_REFUSED = ("Unsloth's CUDA path is not verified to keep a bin's rows apart (measured on its CPU backend "
                       "only): its dataset preparation (unsloth_zoo sft_prepare_dataset) swaps the trainer's collator "
                       "for DataCollatorForSeq2Seq on rows with labels (padded, an attention mask, no position ids), "
                       "and its fast Qwen3 forward drops the attention mask in training and separates packed rows only "
                       "through its own varlen kernels (packed_seq_lengths)")
UNSLOTH_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Defaults of the calls the script makes, as Unsloth sets them (models/loader.py from_pretrained,
# models/llama.py get_peft_model, models/rl.py patched SFTConfig on top of trl 1.15 / transformers 5.17).
FROM_PRETRAINED_DEFAULTS: dict[str, Any] = {
    "model_name": "unsloth/Llama-3.2-1B-Instruct", "max_seq_length": 2048, "dtype": None, "load_in_4bit": True,
    "load_in_8bit": False, "load_in_16bit": False, "full_finetuning": False, "use_exact_model_name": False,
    "trust_remote_code": False, "use_gradient_checkpointing": "unsloth", "random_state": 3407,
}
PEFT_DEFAULTS: dict[str, Any] = {
    "r": 16, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": UNSLOTH_TARGETS, "modules_to_save": None,
    "use_rslora": False, "use_dora": False, "use_gradient_checkpointing": "unsloth", "random_state": 3407,
}
SFT_DEFAULTS: dict[str, Any] = {
    "output_dir": None, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "max_steps": -1,
    "num_train_epochs": 3.0, "learning_rate": 5e-5, "lr_scheduler_type": "linear", "warmup_steps": 0.1,
    "optim": "adamw_8bit", "weight_decay": 0.001, "max_grad_norm": 1.0, "bf16": False, "fp16": False,
    "gradient_checkpointing": True, "seed": 3407, "max_length": 1024, "packing": False, "padding_free": None,
    "logging_steps": 1, "save_strategy": "steps", "save_steps": 500, "save_total_limit": None,
    "eval_strategy": "no", "eval_steps": None, "use_liger_kernel": False, "report_to": "none",
    "assistant_only_loss": False, "completion_only_loss": None,
}


def _context(plan: Plan, tokens: bool) -> dict[str, Any]:
    recipe = plan.recipe
    training, data, lora, quant = recipe.training, recipe.data, recipe.lora, recipe.quantization
    method = recipe.method["type"]
    gc = training["gradient_checkpointing"]
    data_files = {"train": TRAIN_TOKENS_FILE if tokens else plan.train_file}
    if plan.eval_file is not None:
        data_files["test"] = EVAL_TOKENS_FILE if tokens else plan.eval_file
    eval_on = bool(training["eval_steps"]) and plan.eval_file is not None
    return {
        "unsloth_version": UNSLOTH_VERSION,
        "chat_template": CHATML_TEMPLATE_PLAIN,
        "gpus": plan.world_size,  # WORLD_SIZE: every process on every node
        "target": plan.target,
        "model_path": plan.model_path,
        "max_seq_length": data["max_seq_length"],
        "model_dtype": plan.model_dtype,
        "load_in_4bit": method == "qlora",
        "load_in_16bit": method == "lora",
        "full_finetuning": method == "full",
        "quantization": dict(quant) if method == "qlora" else None,
        "trust_remote_code": recipe.model["trust_remote_code"],
        # "unsloth" = Unsloth's offloaded checkpointing: same maths, less memory than HF's.
        "unsloth_gc": "unsloth" if gc else False,
        "gradient_checkpointing": gc,
        "seed": training["seed"],
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "lora": {
            "r": lora["r"], "alpha": lora["alpha"], "dropout": float(lora["dropout"]),
            "target_modules": list(recipe.target_modules), "modules_to_save": list(lora["modules_to_save"]) or None,
            "use_rslora": lora["use_rslora"], "use_dora": lora["use_dora"],
        } if recipe.uses_adapter else None,
        "data_files": data_files,
        "has_eval": eval_on,
        "output_dir": recipe.output["dir"],
        "micro_batch_size": training["micro_batch_size"],
        "gradient_accumulation_steps": training["gradient_accumulation_steps"],
        "max_steps": plan.max_steps if plan.max_steps is not None else -1,
        "num_train_epochs": float(training["epochs"]),
        "learning_rate": float(training["learning_rate"]),
        "scheduler": training["scheduler"],
        "warmup_steps": plan.warmup_steps,  # an int: a float < 1 would be read as a ratio
        "optimizer": training["optimizer"],
        "weight_decay": float(training["weight_decay"]),
        "max_grad_norm": float(training["max_grad_norm"]),
        "bf16": plan.precision_flags["bf16"],
        "fp16": plan.precision_flags["fp16"],
        # Unsloth's own packer (the text handoff); qwenrecipes' bins go through TRL's padding-free collator instead.
        "engine_packing": data["packing"] and plan.packing is None,
        "bins": plan.packing is not None,
        "logging_steps": training["logging_steps"],
        "save_strategy": "steps" if training["save_steps"] else "no",
        "save_steps": training["save_steps"],
        "save_total_limit": training["save_total_limit"],
        "eval_strategy": "steps" if eval_on else "no",
        "eval_steps": training["eval_steps"],
        "liger_kernel": training["liger_kernel"],
        "report_to": recipe.output["report_to"],
        "train_on_responses": data["train_on"] == "assistant" and not tokens,
        "tokens": tokens,
    }


# ------------------------------------------------------------------------------------------ reading back
def _literal(node: ast.expr) -> Any:
    """A keyword's value: a literal, or `getattr(torch, "<dtype>")` read as the dtype name."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and len(node.args) == 2 and isinstance(node.args[1], ast.Constant)):
        return node.args[1].value
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)  # code, not data (e.g. dataset["test"]): keep its text


def _call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def read_script(text: str) -> dict[str, Any]:
    """Keyword arguments of every call and the module-level / attribute assignments, by name. The last call of
    a name wins (the template makes each call once)."""
    tree = ast.parse(text)
    calls: dict[str, dict[str, Any]] = {}
    assigns: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            calls[_call_name(node)] = {k.arg: _literal(k.value) for k in node.keywords if k.arg is not None}
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = ast.unparse(node.targets[0])
            try:
                assigns[target] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return {"calls": calls, "assigns": assigns}


# Why Unsloth's effective values differ where `explain` flags them (residual, not removable by rendering).
NOTES: dict[str, str] = {
    "attn": "FastLanguageModel takes no attn_implementation; Unsloth picks its own attention kernels (CPU backend: "
            "whatever transformers picks, SDPA by default)",
    "precision": "Unsloth's trainer patch runs fp32 recipes under bf16/fp16 autocast on a GPU; its CPU backend keeps "
                 "the explicit dtype and drops bf16 where the CPU has no native bf16",
    "gradient_checkpointing": "Unsloth's checkpointing offloads activations to CPU (same maths, less memory); its CPU "
                              "backend uses plain non-reentrant HF checkpointing",
    "distributed": "Unsloth runs multi-GPU only as DDP under torchrun on one node; `run` refuses deepspeed/fsdp "
                   "and several nodes (their render is DDP, shown for comparison only)",
    "model": "without use_exact_model_name Unsloth remaps hub ids to its own unsloth/* repos",
    # On a host without a GPU, Unsloth 2026.10.9 takes its CPU backend (unsloth_zoo/cpu): stock transformers +
    # PEFT + TRL under Unsloth's patches, none of its CUDA kernels.
    "optimizer": "CPU backend: adamw_torch (and 8-bit/paged optimizers) become adamw_torch_fused (same maths)",
    "method": "CPU backend: stock transformers model + PEFT LoRA (no fused Triton LoRA kernels); 4-bit loads 16-bit "
              "weights unless bitsandbytes' CPU 4-bit passes Unsloth's probe",
    "loss_mask": "CPU backend: the loss is a pure-torch chunked cross-entropy (same value, no [tokens, vocab] logits); "
                 "TRL's per-step entropy/token-accuracy metrics are not logged",
    "packing": "qwenrecipes' bins through TRL's padding-free collator (seq_lengths -> position ids, no attention mask) "
               "on the CPU backend, which forces Unsloth's own packing and padding-free batches off; refused on CUDA",
}


class UnslothEngine(BaseEngine):
    name = "unsloth"
    main_file = SCRIPT_FILE
    notes = NOTES
    # 2026.10.9 imports on a host without a GPU (its CPU backend); that host installs lock-cpu.txt
    # (run/env_locks.py, lock_variant).
    env = EnvSpec("unsloth", ("unsloth:FastLanguageModel",))
    # Liger stays off: Unsloth patches the same ops with its own fused kernels.
    # Measured (H200, Qwen3-4B, seq 2048 x 4, LoRA r=16): 9.6 GiB ckpt on, 36.0 off, 4.5 QLoRA: it keeps 0.56 of
    # the activations, offloads three quarters of the checkpoints to CPU and fuses its loss.
    memory_profile = EngineProfile(fixed_gib=0.5, activations=0.563, checkpoints=0.25, logits_bytes=0.0, liger=1.0,
                                   lora_kernels=1.0, fused_loss=True)

    def launch_problems(self, plan: Plan) -> list[tuple[str, str]]:
        # unsloth.ai/docs/basics/multi-gpu-training-with-unsloth: multi-GPU is DDP on one node (its DDP guide:
        # torchrun / accelerate launch of the training script); FSDP, DeepSpeed and several nodes have no
        # supported path, and rendering them as DDP would train something other than the recipe says.
        distributed = plan.recipe.distributed
        out = []
        if distributed["strategy"] not in ("none", "ddp"):
            out.append(("distributed.strategy", f"Unsloth cannot run {distributed['strategy']}: its only supported "
                        "multi-GPU path is DDP (strategy: ddp) on one node; use axolotl, llamafactory or trl for "
                        "DeepSpeed / FSDP"))
        if distributed["nodes"] > 1:
            out.append(("distributed.nodes", "Unsloth has no multi-node launch (its multi-GPU support is DDP on "
                        "one node): set nodes: 1, or use axolotl, llamafactory or trl"))
        return out

    def packing_problems(self, plan: Plan) -> list[tuple[str, str]]:
        if plan.packing is None or plan.target == "cpu":
            return []
        return [("data.packing", f"{PACKED_CUDA_REFUSED}: set packing: false, or use trl, axolotl or llamafactory")]

    def packed_row(self, row: PackedRow) -> dict[str, Any]:
        # TRL's DataCollatorForLanguageModeling(padding_free=True) builds position ids from seq_lengths.
        return {"input_ids": row.input_ids, "labels": row.labels, "seq_lengths": row.seq_lengths}

    def render(self, plan: Plan) -> dict[str, str]:
        text = render_template("unsloth/train_unsloth.py.j2", **header_context(plan, self.name),
                               **_context(plan, self.handoff(plan) == "tokens"))
        return {SCRIPT_FILE: text}

    def command(self, plan: Plan, resume_from: str | None = None) -> list[str]:
        resume = ["--resume", resume_from] if resume_from else []
        if is_multiprocess(plan):  # Unsloth's multi-GPU path is plain DDP under torchrun
            return ["torchrun", *torchrun_args(plan), SCRIPT_FILE, *resume]
        return ["python", SCRIPT_FILE, *resume]

    def environment(self, plan: Plan) -> dict[str, str]:
        own = {"UNSLOTH_DISABLE_AUTO_PADDING_FREE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if plan.recipe.output["report_to"] == "wandb":
            own["WANDB_MODE"] = "online"
        return engine_environment(plan, own)

    def effective(self, files: dict[str, str]) -> dict[str, Any]:
        parsed = read_script(files[SCRIPT_FILE])
        calls, assigns = parsed["calls"], parsed["assigns"]
        load = {**FROM_PRETRAINED_DEFAULTS, **calls.get("FastLanguageModel.from_pretrained", {})}
        has_peft = "FastLanguageModel.get_peft_model" in calls
        peft = {**PEFT_DEFAULTS, **calls.get("FastLanguageModel.get_peft_model", {})}
        sft = {**SFT_DEFAULTS, **calls.get("SFTConfig", {})}
        bnb = calls.get("BitsAndBytesConfig")
        masking = calls.get("train_on_responses_only")
        data_files = calls.get("load_dataset", {}).get("data_files")
        trainer = calls.get("SFTTrainer", {})
        gpus = int(assigns.get("WORLD_SIZE", 1))
        evaluates = sft["eval_strategy"] == "steps" and trainer.get("eval_dataset") is not None

        four_bit = bool(load["load_in_4bit"]) and not load["full_finetuning"]
        method = "full" if load["full_finetuning"] or not has_peft else ("qlora" if four_bit else "lora")
        dtype = load["dtype"] or "bfloat16 (Unsloth: bf16 when supported, else fp16)"
        if bnb is not None:
            quantization: dict[str, object] | None = concepts.quantization_value(
                4, bnb.get("bnb_4bit_quant_type", "fp4"), bnb.get("bnb_4bit_use_double_quant", False),
                bnb.get("bnb_4bit_compute_dtype", "float32"))
        elif four_bit:
            quantization = concepts.quantization_value(4, "nf4", True, load["dtype"])  # Unsloth's built-in config
        else:
            quantization = None

        template = assigns.get("tokenizer.chat_template", assigns.get("CHAT_TEMPLATE"))
        plain = template == CHATML_TEMPLATE_PLAIN or assigns.get("CHAT_TEMPLATE") == CHATML_TEMPLATE_PLAIN
        eos = assigns.get("tokenizer.eos_token", sft.get("eos_token"))
        train_file = data_files.get("train") if isinstance(data_files, dict) else data_files
        tokens = str(train_file or "").endswith(".tokens.jsonl")
        if tokens:
            loss_mask = concepts.LOSS_MASK_TOKENS
        elif masking is None:
            loss_mask = concepts.LOSS_MASK_ALL
        elif (masking.get("instruction_part") == INSTRUCTION_PART and masking.get("response_part") == RESPONSE_PART
              and eos == EOS_TOKEN):
            loss_mask = concepts.LOSS_MASK_ASSISTANT
        else:
            parts = f"{masking.get('instruction_part')!r}, {masking.get('response_part')!r}"
            loss_mask = f"train_on_responses_only({parts}), eos {eos!r}: spans may run past <|im_end|>"

        cpu = assigns.get("TARGET") == "cpu"  # Unsloth's CPU backend (NOTES)
        bf16, fp16 = bool(sft["bf16"]), bool(sft["fp16"])
        if bf16:
            precision = "bf16"
        elif fp16:
            precision = "fp16"
        else:
            precision = "fp32" if cpu else "bf16 autocast (Unsloth turns fp32 into bf16/fp16 mixed precision)"
        gc_value = peft["use_gradient_checkpointing"] if has_peft else load["use_gradient_checkpointing"]
        if gc_value == "unsloth":
            gradient_checkpointing: bool | str = (True if cpu else "unsloth (offloaded to CPU; same maths)")
        else:
            gradient_checkpointing = bool(gc_value)
        optimizer = sft["optim"]
        if cpu and (optimizer == "adamw_torch" or "8bit" in optimizer or "paged" in optimizer):
            optimizer = "adamw_torch_fused (Unsloth's CPU backend)"
        micro, accumulation = sft["per_device_train_batch_size"], sft["gradient_accumulation_steps"]
        steps = sft["max_steps"]
        max_steps = steps if steps and steps > 0 else f"{sft['num_train_epochs']:g} epochs"
        collator = calls.get("DataCollatorForLanguageModeling", {})
        if collator.get("padding_free") and "data_collator" in trainer and tokens:
            packing: bool | str = concepts.PACKING_BINS
        elif sft["packing"]:
            packing = "unsloth sample packing (padding-free, per-row position_ids)"
        elif sft["padding_free"] is None:
            packing = "padding-free batches (Unsloth auto, no packing)"
        elif sft["padding_free"]:
            packing = "padding-free batches (no packing)"
        else:
            packing = False
        return {
            "model": load["model_name"] if load["use_exact_model_name"]
            else f"{load['model_name']} (may be remapped to an unsloth/* repo)",
            "model_dtype": dtype,
            "attn": "transformers default (Unsloth's CPU backend)" if cpu
            else "chosen by Unsloth (attn_implementation is not accepted)",
            "method": method,
            "quantization": quantization,
            "lora_r": peft["r"] if has_peft else None,
            "lora_alpha": peft["lora_alpha"] if has_peft else None,
            "lora_dropout": peft["lora_dropout"] if has_peft else None,
            "lora_targets": list(peft["target_modules"]) if has_peft else None,
            "use_dora": bool(peft["use_dora"]) if has_peft else None,
            "use_rslora": bool(peft["use_rslora"]) if has_peft else None,
            "modules_to_save": list(peft["modules_to_save"] or []) if has_peft else None,
            "chat_template": concepts.CHAT_TEMPLATE_TOKENS if tokens else (
                concepts.CHAT_TEMPLATE_PINNED if plain else "tokenizer's own template"),
            "think_handling": concepts.THINK_INLINE if plain else "tokenizer template decides",
            "loss_mask": loss_mask,
            "train_file": train_file,
            "eval_file": data_files.get("test") if isinstance(data_files, dict) else None,
            "max_seq_length": sft["max_length"],
            "truncation": concepts.TRUNCATION_NONE if sft["max_length"] is not None else "none (max_length null)",
            "packing": packing,
            "micro_batch_size": micro,
            "gradient_accumulation_steps": accumulation,
            "gpus": gpus,
            "effective_batch": micro * accumulation * gpus,
            "max_steps": max_steps,
            "learning_rate": sft["learning_rate"],
            "scheduler": sft["lr_scheduler_type"],
            "warmup_steps": sft["warmup_steps"],
            "optimizer": optimizer,
            "weight_decay": sft["weight_decay"],
            "max_grad_norm": sft["max_grad_norm"],
            "precision": precision,
            "gradient_checkpointing": gradient_checkpointing,
            "seed": sft["seed"],
            "logging_steps": sft["logging_steps"],
            "save_steps": sft["save_steps"] if sft["save_strategy"] == "steps" else None,
            "save_total_limit": sft["save_total_limit"],
            "eval_steps": sft["eval_steps"] if evaluates else None,
            "liger_kernel": bool(sft["use_liger_kernel"]),
            "report_to": sft["report_to"],
            "distributed": "ddp (torchrun)" if gpus > 1 else "none",
        }


ENGINE = UnslothEngine()
