"""LLaMA-Factory 0.9.5 (transformers 5.6, peft 0.18, trl 0.24): ``llamafactory.yaml`` for
``llamafactory-cli train``, the same arguments as ``llamafactory.args`` (one ``--key=value`` per line),
``data/dataset_info.json`` and, for ZeRO strategies, ``deepspeed.json``.

Template: ``qwen3_nothink`` is LF's plain ChatML (a plain ``Template``, not the ``ReasoningTemplate``), so
it neither inserts nor strips ``<think>`` text: the think block qwenrecipes wrote into the content passes
through untouched. It has no default system prompt (unlike ``qwen``).

Residual differences this render cannot remove (reported by ``effective()`` and ``notes``):
- Loss mask: LF's assistant slot is ``{{content}}<|im_end|>\\n``, so the newline after ``<|im_end|>`` is
  trained too (canonical: content + ``<|im_end|>``). ``train_on: all`` (``train_on_prompt``) trains
  every token, headers included.
- Weights dtype: LF derives it from the precision flags (bf16/fp16); for fp32 training it infers bf16/fp16
  from the checkpoint on a GPU (fp32 only on CPU). Trainable parameters are upcast to fp32 (PEFT does the
  same for LoRA in the other engines; for full fine-tuning the others keep them in the half dtype).
- The tokenizer LF saves with the adapter keeps the checkpoint's own chat template (official Qwen3), not
  the plain ChatML it trained with (qwen3_nothink does not replace the Jinja template); Axolotl saves the
  pinned one.
- ``overwrite_output_dir: true`` only stops the silent auto-resume; old checkpoints in ``output_dir`` are
  not deleted (the runner refuses a non-empty folder).
"""

from __future__ import annotations

import shlex
from types import MappingProxyType
from typing import Any

from qwenrecipes.data.packing import PackedRow
from qwenrecipes.engines.base import BaseEngine, EnvSpec, engine_environment, header_context
from qwenrecipes.engines.deepspeed import DEEPSPEED_FILE, deepspeed_config
from qwenrecipes.engines.launchers import accelerate_args, cpu_fsdp_problems, is_multiprocess, torchrun_environment
from qwenrecipes.engines.templating import render_template
from qwenrecipes.recipe import concepts
from qwenrecipes.recipe.memory import EngineProfile
from qwenrecipes.recipe.plan import EVAL_TOKENS_FILE, TRAIN_TOKENS_FILE, Plan

MAIN_FILE = "llamafactory.yaml"
ARGS_FILE = "llamafactory.args"
DATASET_DIR = "data"
DATASET_INFO = f"{DATASET_DIR}/dataset_info.json"
ACCELERATE_FSDP = "accelerate_fsdp.yaml"
TRAIN_NAME = "qwenrecipes_train"
EVAL_NAME = "qwenrecipes_eval"
TEMPLATE = "qwen3_nothink"
CHATML_NAME = concepts.CHAT_TEMPLATE_PINNED
TARGET_MARK = "# qwenrecipes-target: "
FLASH_ATTN = {"sdpa": "sdpa", "flash_attention_2": "fa2", "eager": "disabled"}
FLASH_ATTN_BACK = {v: k for k, v in FLASH_ATTN.items()}
LOSS_MASK_LF = "assistant turns: content + <|im_end|> + trailing \\n"
SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"}
LOAD_TOKENS = "load_tokens.py"  # token handoff: saves data/*.tokens.jsonl where tokenized_path loads it
TOKENIZED_PATH = f"{DATASET_DIR}/tokenized"
SMALL_DATA_ROWS = 5000  # below this, one preprocessing process is faster than spawning workers

# qwenrecipes' bins (data.packing, token handoff): each bin one saved row whose attention_mask holds every token's
# 1-based row index in the bin (the segment ids LF's own neat_packing writes). neat_packing makes LF's SFT collator
# (SFTDataCollatorWith4DAttentionMask, data/collator.py) turn them into a block-diagonal causal 4-D mask for these
# implementations; no position_ids reach the model, RoPE is relative, so each row gets its logits alone up to float
# error (measured: docs/equivalence.md, Packing). With flash_attention_2 the collator drops the mask and keeps rows
# apart only through a position_ids column with a micro-batch of 1, which this path does not hand it: refused.
PACKED_ATTENTION = ("sdpa", "eager")
PACKED_FA2_REFUSED = ("with flash_attention_2 LLaMA-Factory 0.9.5's neat_packing collator drops the attention mask and "
                      "keeps a bin's rows apart only through position_ids (micro-batch 1), which its collator does not "
                      "pad and qwenrecipes' bins do not carry here, so rows would attend across; not verified")

NOTES: dict[str, str] = {
    "loss_mask": "LF's assistant slot is content<|im_end|>\\n: the newline after <|im_end|> is trained too",
    "packing": "qwenrecipes' bins through LF's neat_packing collator: a block-diagonal 4-D mask from each token's row "
               "index (no position ids; RoPE is relative): rows stay separate with sdpa and eager",
    "model_dtype": "LF loads weights in the bf16/fp16 training dtype; with fp32 on a GPU it infers bf16/fp16",
}


def _dataset_entry(path: str, split: str, local: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"file_name": path.removeprefix(f"{DATASET_DIR}/")} if local else {
        "hf_hub_url": path, "split": split}
    entry.update({"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": dict(SHAREGPT_TAGS)})
    return entry


def _arg_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class LlamaFactoryEngine(BaseEngine):
    name = "llamafactory"
    main_file = MAIN_FILE
    notes = NOTES
    # It refuses to import when transformers/peft/trl differ from its own (narrow) version list.
    env = EnvSpec("llamafactory", ("llamafactory.train.tuner",), health_env={"DISABLE_VERSION_CHECK": "1"})
    supports_liger = True
    # Measured (H200, Qwen3-4B, seq 2048 x 4, LoRA r=16): 23.3 GiB ckpt on, 69.6 off, 18.3 QLoRA: the counted
    # activations plus fp32 logits (bf16 logits + fp32 copy + fp32 grad, ~10 bytes per vocab entry).
    memory_profile = EngineProfile(fixed_gib=0.5, activations=1.0, checkpoints=1.0, logits_bytes=10.4, liger=0.753,
                                   lora_kernels=1.0)
    log_keys = MappingProxyType({"vram_allocated": "memory_gb", "throughput": "tokens_per_s"})  # RECORD_VRAM=1
    console_modules = MappingProxyType({"llamafactory-cli": "llamafactory.cli",
                                        "accelerate": "accelerate.commands.accelerate_cli"})

    # ------------------------------------------------------------------------------------- render
    def sections(self, plan: Plan) -> list[tuple[str, dict[str, Any]]]:
        recipe = plan.recipe
        training, data, lora, quant = recipe.training, recipe.data, recipe.lora, recipe.quantization
        qlora = recipe.method["type"] == "qlora"

        model: dict[str, Any] = {
            "model_name_or_path": plan.model_path,
            "trust_remote_code": recipe.model["trust_remote_code"],
            "flash_attn": FLASH_ATTN[recipe.model["attn"]],
            "enable_liger_kernel": training["liger_kernel"],
            # LF checkpoints by default; the recipe decides. Non-reentrant like the other engines.
            "disable_gradient_checkpointing": not training["gradient_checkpointing"],
            "use_reentrant_gc": False,
            "use_unsloth": False,
            "use_unsloth_gc": False,
            "upcast_layernorm": False,
            "upcast_lmhead_output": False,
        }
        if qlora:
            # LF's compute dtype is the training dtype (bf16/fp16 flag); the recipe's compute_dtype can only
            # differ when precision differs, which effective() reports.
            model.update({"quantization_bit": quant["bits"], "quantization_method": "bnb",
                          "quantization_type": quant["quant_type"], "double_quantization": quant["double_quant"]})

        method: dict[str, Any] = {
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora" if recipe.uses_adapter else "full",
        }
        if recipe.uses_adapter:
            method.update({
                "lora_rank": lora["r"],
                "lora_alpha": int(lora["alpha"]) if float(lora["alpha"]).is_integer() else lora["alpha"],
                "lora_dropout": lora["dropout"],
                "lora_target": ",".join(recipe.target_modules),
                "additional_target": ",".join(lora["modules_to_save"]) or None,
                "use_dora": lora["use_dora"],
                "use_rslora": lora["use_rslora"],
                "pissa_init": False,
                "create_new_adapter": False,
            })
        method["pure_bf16"] = False

        dataset: dict[str, Any] = {
            "dataset": TRAIN_NAME,
            "dataset_dir": DATASET_DIR,
        }
        if plan.eval_file is not None:
            dataset["eval_dataset"] = EVAL_NAME
        if self.handoff(plan) == "tokens":
            # get_dataset loads this saved dataset (load_tokens.py) and skips its template and processors.
            dataset["tokenized_path"] = TOKENIZED_PATH
        dataset.update({
            "template": TEMPLATE,
            # No effect on qwen3_nothink (a plain Template); false so no think block is ever added.
            "enable_thinking": False,
            # With packing LF uses cutoff_len - 1 as the row budget (and model_max_length): +1 keeps
            # max_seq_length-token rows whole. qwenrecipes' bins (tokenized_path) are never cut or re-binned.
            "cutoff_len": data["max_seq_length"] + (1 if data["packing"] else 0),
            "train_on_prompt": data["train_on"] == "all",
            "mask_history": False,
            "packing": data["packing"],
            # Plain packing gives packed rows an all-ones attention mask (they attend to each other); neat_packing
            # makes the collator build a block-diagonal mask from the row indices (its packer's or the bins').
            "neat_packing": data["packing"],
            "val_size": 0.0,  # qwenrecipes already split
            "streaming": False,
            "overwrite_cache": True,  # never reuse another run's tokenized cache
            "preprocessing_num_workers": 1 if (plan.train_rows is not None
                                               and len(plan.train_rows) < SMALL_DATA_ROWS) else 8,
        })

        report = recipe.output["report_to"]
        train: dict[str, Any] = {
            "output_dir": recipe.output["dir"],
            # LF silently resumes from the last checkpoint in a non-empty output_dir unless this is set.
            "overwrite_output_dir": True,
            "resume_from_checkpoint": None,
            "per_device_train_batch_size": training["micro_batch_size"],
            "per_device_eval_batch_size": training["micro_batch_size"],
            "gradient_accumulation_steps": training["gradient_accumulation_steps"],
            "num_train_epochs": float(training["epochs"]),
            "max_steps": plan.max_steps if plan.max_steps is not None else -1,
            "learning_rate": training["learning_rate"],
            "lr_scheduler_type": training["scheduler"],
            "warmup_steps": plan.warmup_steps,
            "optim": training["optimizer"],
            "weight_decay": training["weight_decay"],
            "max_grad_norm": training["max_grad_norm"],
            "bf16": plan.precision == "bf16",
            "fp16": plan.precision == "fp16",
            "tf32": False,  # torch's default; TF32 would change fp32 maths on Ampere+ only
            "seed": training["seed"],
            "data_seed": training["seed"],
            # qwenrecipes shuffled once with the seed; a sequential sampler keeps that order.
            "disable_shuffling": True,
            "logging_steps": training["logging_steps"],
        }
        if training["save_steps"]:
            train.update({"save_strategy": "steps", "save_steps": training["save_steps"]})
        else:
            train["save_strategy"] = "no"  # canonical: only the final model (LF saves it at the end anyway)
        train["save_total_limit"] = training["save_total_limit"]
        train["save_only_model"] = False
        if plan.has_eval and training["eval_steps"]:
            train.update({"eval_strategy": "steps", "eval_steps": training["eval_steps"]})
        else:
            train["eval_strategy"] = "no"
        train.update({
            "report_to": report,
            "run_name": recipe.name,
            "plot_loss": False,
            "include_effective_tokens_per_second": False,
            "dataloader_num_workers": 0,
            "ddp_timeout": 180000000,  # LF's examples: long tokenization on rank 0 must not time out DDP
        })
        if recipe.distributed["gpus"] * recipe.distributed["nodes"] > 1:
            train["ddp_find_unused_parameters"] = False
        if recipe.distributed["strategy"].startswith("deepspeed"):
            train["deepspeed"] = DEEPSPEED_FILE
        return [("model", model), ("method", method), ("dataset", dataset), ("train", train)]

    def _flat(self, plan: Plan) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _, section in self.sections(plan):
            out.update(section)
        return out

    def launch_problems(self, plan: Plan) -> list[tuple[str, str]]:
        return cpu_fsdp_problems(plan)  # FSDP through accelerate: accelerator processes only

    def render(self, plan: Plan) -> dict[str, str]:
        sections = self.sections(plan)
        files = {MAIN_FILE: render_template("llamafactory/llamafactory.yaml.j2", sections=sections,
                                             target=plan.target, warnings=plan.warnings,
                                             **header_context(plan, self.name))}
        # CLI form: null values are left out (an argparse flag cannot carry None; null is LF's default).
        # --key=value: a value starting with "-" can never be taken for an option.
        lines = [shlex.quote(f"--{key}={_arg_text(value)}") for key, value in self._flat(plan).items()
                 if value is not None]
        files[ARGS_FILE] = render_template("llamafactory/llamafactory.args.j2", lines=lines)
        local = plan.train_rows is not None
        info = {TRAIN_NAME: _dataset_entry(plan.train_file, plan.recipe.train.split, local)}
        if plan.eval_file is not None:
            eval_local = bool(plan.eval_rows) or (plan.recipe.eval is not None
                                                  and plan.recipe.eval.local_path is not None)
            split = plan.recipe.eval.split if plan.recipe.eval is not None else "train"
            info[EVAL_NAME] = _dataset_entry(plan.eval_file, split, eval_local)
        files[DATASET_INFO] = render_template("llamafactory/dataset_info.json.j2", info=info)
        if self.handoff(plan) == "tokens":
            splits = {"train": TRAIN_TOKENS_FILE, **({"validation": EVAL_TOKENS_FILE} if plan.eval_rows else {})}
            files[LOAD_TOKENS] = render_template("llamafactory/load_tokens.py.j2", **header_context(plan, self.name),
                                                 tokenized_path=TOKENIZED_PATH, files=splits,
                                                 packed=plan.packing is not None)
        ds = deepspeed_config(plan)
        if ds is not None:
            files[DEEPSPEED_FILE] = render_template("llamafactory/deepspeed.json.j2", config=ds)
        if plan.recipe.distributed["strategy"] == "fsdp":
            files[ACCELERATE_FSDP] = render_template("llamafactory/accelerate_fsdp.yaml.j2",
                                                     config=self._fsdp_accelerate(plan))
        return files

    def _fsdp_accelerate(self, plan: Plan) -> dict[str, Any]:
        """LF runs FSDP only through `accelerate launch --config_file` (its examples/accelerate)."""
        return {
            "compute_environment": "LOCAL_MACHINE",
            "distributed_type": "FSDP",
            "fsdp_config": {
                "fsdp_version": 2,
                "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "fsdp_transformer_layer_cls_to_wrap": "Qwen3DecoderLayer",
                "fsdp_offload_params": False,
                "fsdp_state_dict_type": "FULL_STATE_DICT",
                "fsdp_cpu_ram_efficient_loading": True,
                "fsdp_reshard_after_forward": True,
            },
            "mixed_precision": {"bf16": "bf16", "fp16": "fp16"}.get(plan.precision, "no"),
            "num_machines": plan.recipe.distributed["nodes"],
            "num_processes": plan.world_size,  # every node's; this node's rank comes from the command line
            "machine_rank": 0,
            "main_training_function": "main",
            "rdzv_backend": "static",
            "same_network": True,
            "use_cpu": False,
        }

    def command(self, plan: Plan, resume_from: str | None = None) -> list[str]:
        # LF merges `key=value` arguments after the YAML into it (OmegaConf), so resuming is an override.
        resume = [f"resume_from_checkpoint={resume_from}"] if resume_from else []
        # Token handoff: load_tokens.py saves the rows where tokenized_path reads them, then execs the launch.
        first = ["python", LOAD_TOKENS] if self.handoff(plan) == "tokens" else []
        if plan.recipe.distributed["strategy"] == "fsdp":
            return [*first, "accelerate", "launch", "--config_file", ACCELERATE_FSDP, *accelerate_args(plan),
                    "-m", "llamafactory.launcher", MAIN_FILE, *resume]
        return [*first, "llamafactory-cli", "train", MAIN_FILE, *resume]

    def packing_problems(self, plan: Plan) -> list[tuple[str, str]]:
        attn = plan.recipe.model["attn"]
        if plan.packing is None or attn in PACKED_ATTENTION:
            return []
        why = PACKED_FA2_REFUSED if attn == "flash_attention_2" else f"{attn} is not verified to keep rows apart"
        return [("model.attn", f"{why} (docs/equivalence.md, Packing): use {' or '.join(PACKED_ATTENTION)}")]

    def packed_row(self, row: PackedRow) -> dict[str, Any]:
        # Loaded from tokenized_path as is: LF's own packer (in the preprocessing a saved dataset skips) never runs.
        segments = [n for n, length in enumerate(row.seq_lengths, 1) for _ in range(length)]
        return {"input_ids": row.input_ids, "attention_mask": segments, "labels": row.labels}

    def environment(self, plan: Plan) -> dict[str, str]:
        # DISABLE_VERSION_CHECK: LF 0.9.5 refuses transformers/peft/trl versions outside its own pins at
        # start-up; the engine env is pinned and tested by qwenrecipes, so that check only blocks runs.
        own = {"DISABLE_VERSION_CHECK": "1"}
        distributed = plan.recipe.distributed
        if is_multiprocess(plan) and distributed["strategy"] != "fsdp":
            # Explicit torchrun with the recipe's GPU count (LF would otherwise take every visible GPU). LF's
            # launcher reads NODE_RANK, MASTER_ADDR and MASTER_PORT from the environment itself (launch_node.sh
            # sets them); torchrun reads PET_LOG_DIR / PET_TEE, so every rank's output is kept in ranks/.
            own.update({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(distributed["gpus"]),
                        "NNODES": str(distributed["nodes"]), **torchrun_environment(plan)})
        return engine_environment(plan, own)

    def effective(self, files: dict[str, str]) -> dict[str, Any]:
        # Its own module: reading files back is not needed to render, and keeps this module short.
        from qwenrecipes.engines.llamafactory.effective import effective

        return effective(files)


ENGINE = LlamaFactoryEngine()
