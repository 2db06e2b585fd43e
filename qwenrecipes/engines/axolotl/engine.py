"""Axolotl 0.19 (transformers 5.16, peft 0.20, trl 1.9): one ``axolotl.yaml`` (+ ``deepspeed.json``).

Every knob is written out; Axolotl's own defaults differ from the canonical recipe in many silent ways
(cosine + auto 3 % warmup, bf16/tf32 "auto", fused LoRA kernels switched on by itself, save every epoch
with 4 checkpoints kept, a shared ``last_run_prepared`` cache, shuffling of the merged dataset).

Residual differences this render cannot remove (reported by ``effective()`` and ``notes``):
- ``warmup_steps: 1`` is bumped to 2 by Axolotl's trainer builder.
- The weights dtype follows the precision flags: with bf16/fp16 mixed precision the base model is always
  loaded in that half dtype, so ``model.dtype: float32`` plus bf16/fp16 cannot be expressed.
- With eval enabled Axolotl also evaluates once before the first step (``eval_on_start``).
- ``train_on: all`` trains every turn's content + ``<|im_end|>`` but still masks the
  ``<|im_start|>role\\n`` headers and the newline between turns (the chat_template strategy has no
  "every token" mode short of a different dataset type).
- An assistant turn with empty content (possible with ``qwen3_nothink``) is skipped: Axolotl's turn finder
  finds no span, so that turn's ``<|im_end|>`` is not trained (``qwenrecipes check`` reports it).
"""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

from qwenrecipes.engines.axolotl.bins import BINS_SETTINGS, packed_attention_problems
from qwenrecipes.engines.base import (
    CHATML_TEMPLATE_PLAIN,
    MEMORY_FALLBACK,
    BaseEngine,
    EnvSpec,
    engine_environment,
    header_context,
)
from qwenrecipes.engines.deepspeed import DEEPSPEED_FILE, deepspeed_config
from qwenrecipes.engines.launchers import is_multiprocess, torchrun_args
from qwenrecipes.engines.templating import render_template
from qwenrecipes.recipe import concepts
from qwenrecipes.recipe.memory import EngineProfile
from qwenrecipes.recipe.plan import EVAL_TOKENS_FILE, TRAIN_TOKENS_FILE, Plan

MAIN_FILE = "axolotl.yaml"
# Inside the render folder, so a stale cache from another run (Axolotl's default `last_run_prepared` in
# the cwd, keyed by a hash that ignores some options) can never be picked up.
PREPARED_DIR = "axolotl_prepared"
CHATML_NAME = concepts.CHAT_TEMPLATE_PINNED
IM_END = "<|im_end|>"
ATTN = {"sdpa": "sdpa", "flash_attention_2": "flash_attention_2", "eager": "eager"}
LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
LIGER_FLAGS = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_fused_linear_cross_entropy")

NOTES: dict[str, str] = {
    "warmup_steps": "Axolotl bumps warmup_steps=1 to 2",
    "model_dtype": "Axolotl loads the base weights in the mixed-precision dtype (bf16/fp16 flags decide it)",
    "loss_mask": "Axolotl's chat_template strategy masks role headers even with train_on_inputs, and trains "
                 "nothing for an assistant turn with empty content",
    "eval_steps": "Axolotl also evaluates once before the first step when eval is on",
    "packing": "qwenrecipes' bins as the rows of a dataset taken as given (skip_prepare_dataset, multipack off): "
               "per-row position ids and no attention mask keep rows apart with sdpa and eager (flash_attention_2: "
               "micro_batch_size 1 only)",
}


def fused_lora_kernels(plan: Plan) -> bool:
    """Whether the render turns Axolotl's fused LoRA kernels on (the memory estimate reads it too)."""
    lora = plan.recipe.lora
    return plan.recipe.uses_adapter and plan.target == "cuda" and lora["dropout"] == 0 and not lora["use_dora"]


def _number(value: float) -> int | float:
    """Axolotl types lora_alpha as int; an integral float (32.0) must reach it as 32."""
    return int(value) if float(value).is_integer() else value


class AxolotlEngine(BaseEngine):
    name = "axolotl"
    main_file = MAIN_FILE
    notes = NOTES
    env = EnvSpec("axolotl", ("axolotl.cli.main", "axolotl.train"))
    supports_liger = True
    # Measured (H200, Qwen3-4B, seq 2048 x 4, LoRA r=16): 23.3 GiB ckpt on, 69.7 off, 52.5 off + LoRA kernels,
    # 18.3 QLoRA: fp32 logits (~10 bytes per vocab entry) and its fused LoRA kernels keep 0.65 of the activations.
    memory_profile = EngineProfile(fixed_gib=0.5, activations=1.0, checkpoints=1.0, logits_bytes=10.4, liger=0.753,
                                   lora_kernels=0.652)
    log_keys = MappingProxyType({  # include_tkps and its memory/* extras
        "tokens/total": "tokens_seen", "tokens/train_per_sec_per_gpu": "tokens_per_s",
        "memory/max_allocated (GiB)": "memory_gb",  # peak allocated is what OOMs
        "memory/max_active (GiB)": MEMORY_FALLBACK, "memory/device_reserved (GiB)": MEMORY_FALLBACK,
    })
    console_modules = MappingProxyType({"axolotl": "axolotl.cli.main"})

    # ------------------------------------------------------------------------------------- render
    def sections(self, plan: Plan) -> list[tuple[str, dict[str, Any]]]:
        """The config as ordered (title, mapping) sections; the template only lays them out."""
        recipe = plan.recipe
        training, data, lora, quant = recipe.training, recipe.data, recipe.lora, recipe.quantization
        train_all = data["train_on"] == "all"
        local = plan.train_rows is not None

        model: dict[str, Any] = {
            "base_model": plan.model_path,
            "tokenizer_config": plan.model_path,
            "trust_remote_code": recipe.model["trust_remote_code"],
            "attn_implementation": ATTN[recipe.model["attn"]],
            "bf16": plan.precision == "bf16",
            "fp16": plan.precision == "fp16",
            # Pure (non-AMP) half weights only when training in fp32 on half weights; Axolotl derives the
            # load dtype from these four flags, never from a dtype field.
            "bfloat16": plan.precision == "fp32" and plan.model_dtype == "bfloat16",
            "float16": plan.precision == "fp32" and plan.model_dtype == "float16",
            # Off everywhere: "auto" would turn TF32 matmuls on for Ampere+ only, so fp32 runs would differ
            # by GPU generation and from the engines that leave torch's default (off).
            "tf32": False,
            "gradient_checkpointing": training["gradient_checkpointing"],
            "gradient_checkpointing_kwargs": {"use_reentrant": False},
        }

        adapter: dict[str, Any]
        if recipe.uses_adapter:
            adapter = {
                "adapter": recipe.method["type"],
                "lora_r": lora["r"],
                "lora_alpha": _number(lora["alpha"]),
                "lora_dropout": lora["dropout"],
                "lora_target_modules": list(recipe.target_modules),
                "lora_target_linear": False,
                "lora_modules_to_save": list(lora["modules_to_save"]) or None,
                "peft_use_dora": lora["use_dora"],
                "peft_use_rslora": lora["use_rslora"],
                # Tied Qwen3 embeddings: keep embed_tokens/lm_head copies tied when both are trained in full.
                "peft_ensure_weight_tying": {"embed_tokens", "lm_head"} <= set(lora["modules_to_save"]),
            }
            # Axolotl's fused LoRA kernels compute the same LoRA function as PEFT in fused Triton code:
            # measured on the H200 (Qwen3-4B, seq 2048, no checkpointing) 15.0k tok/s and 52.5 GiB with them
            # against 12.5k and 69.7 GiB without. They need a CUDA GPU (on CPU they hang), dropout 0 and no
            # DoRA; everywhere else they are off, explicitly (Axolotl would auto-enable them).
            adapter.update(dict.fromkeys(LORA_KERNELS, fused_lora_kernels(plan)))
        else:
            adapter = {"adapter": None}
        adapter["load_in_8bit"] = False
        adapter["load_in_4bit"] = recipe.method["type"] == "qlora"
        if recipe.method["type"] == "qlora":
            # Axolotl hard-codes nf4 + double quant + compute=torch_dtype + bf16 storage; pin the recipe's
            # values (storage = compute dtype, as LLaMA-Factory does) through its override hook.
            adapter["bnb_config_kwargs"] = {
                "bnb_4bit_quant_type": quant["quant_type"],
                "bnb_4bit_use_double_quant": quant["double_quant"],
                "bnb_4bit_compute_dtype": quant["compute_dtype"],
                "bnb_4bit_quant_storage": quant["compute_dtype"],
            }

        dataset: dict[str, Any] = {
            "path": plan.train_file,
            "split": "train" if local else recipe.train.split,
            "type": "chat_template",
            "field_messages": "messages",
            "message_property_mappings": {"role": "role", "content": "content"},
            "roles": {"system": ["system"], "user": ["user"], "assistant": ["assistant"]},
            "drop_system_message": False,
            "chat_template": "jinja",
            # The plain template: Axolotl finds trained spans by diffing renders, not by {% generation %}
            # markers, so they add nothing here, and the tokenizer Axolotl saves stays portable to servers
            # whose Jinja has no `generation` tag.
            "chat_template_jinja": CHATML_TEMPLATE_PLAIN,
            "roles_to_train": ["system", "user", "assistant"] if train_all else ["assistant"],
            # <|im_end|> is the turn end whatever the tokenizer's eos is (Qwen3 base models use
            # <|endoftext|>), so name it as the EOT token and train it with its turn.
            "train_on_eos": "turn",
            "train_on_eot": "turn",
        }
        if local:
            dataset["ds_type"] = "json"
        tokens = self.handoff(plan) == "tokens"
        if tokens:
            # Rows with input_ids, attention_mask and labels and no `type`: Axolotl's get_dataset_wrapper takes
            # them as already tokenized (utils/data/wrappers.py) and trains their labels as they are.
            dataset = {"path": TRAIN_TOKENS_FILE, "split": "train", "ds_type": "json"}
        data_section: dict[str, Any] = {
            "chat_template": "jinja",
            "chat_template_jinja": CHATML_TEMPLATE_PLAIN,
            "eot_tokens": [IM_END],
            "datasets": [dataset],
        }
        if plan.eval_file is not None:
            eval_set = copy.deepcopy(dataset)
            eval_set["path"] = EVAL_TOKENS_FILE if tokens else plan.eval_file
            eval_set["split"] = "train" if plan.eval_rows else (recipe.eval.split if recipe.eval else "train")
            data_section["test_datasets"] = [eval_set]
        data_section.update({
            "val_set_size": 0.0,  # qwenrecipes already split
            "dataset_prepared_path": PREPARED_DIR,
            # Keep qwenrecipes' seeded order: no dataset shuffle and a sequential sampler.
            "shuffle_merged_datasets": False,
            "shuffle_before_merging_datasets": False,
            "curriculum_sampling": True,
            "train_on_inputs": train_all,
            "sequence_len": data["max_seq_length"],
            # Local rows are already no longer than sequence_len, so anything longer is a bug: fail loudly
            # rather than drop or truncate. Hub data was not pre-filtered: drop, as qwenrecipes would.
            "excess_length_strategy": "raise" if local else "drop",
            # Its own multipack sampler only under the text handoff; qwenrecipes' bins bypass it (bins.py).
            "sample_packing": data["packing"] and plan.packing is None,
            "eval_sample_packing": data["packing"] and plan.packing is None,
            "pad_to_sequence_len": data["packing"] and plan.packing is None,
        })
        if plan.packing is not None:
            data_section.update(BINS_SETTINGS)

        optim: dict[str, Any] = {
            "micro_batch_size": training["micro_batch_size"],
            "gradient_accumulation_steps": training["gradient_accumulation_steps"],
            "num_epochs": training["epochs"],
            "learning_rate": training["learning_rate"],
            "lr_scheduler": training["scheduler"],
            "warmup_steps": plan.warmup_steps,
            "optimizer": training["optimizer"],
            "weight_decay": training["weight_decay"],
            "max_grad_norm": training["max_grad_norm"],
            "seed": training["seed"],
        }
        if plan.max_steps is not None:
            optim["max_steps"] = plan.max_steps
        if training["liger_kernel"]:
            optim["plugins"] = [LIGER_PLUGIN]
            optim.update(dict.fromkeys(LIGER_FLAGS, True))

        report = recipe.output["report_to"]
        run: dict[str, Any] = {
            "output_dir": recipe.output["dir"],
            "logging_steps": training["logging_steps"],
        }
        if training["save_steps"]:
            run.update({"save_strategy": "steps", "save_steps": training["save_steps"]})
        else:
            run["save_strategy"] = "no"  # canonical: only the final model (Axolotl default: every epoch)
        run["save_total_limit"] = training["save_total_limit"]
        run["save_safetensors"] = True
        if plan.has_eval and training["eval_steps"]:
            run.update({"eval_strategy": "steps", "eval_steps": training["eval_steps"]})
        else:
            run["eval_strategy"] = "no"
        run.update({
            "use_tensorboard": report == "tensorboard",
            "use_wandb": report == "wandb",
            "use_mlflow": False,
        })
        if report == "wandb":
            run["wandb_project"] = recipe.name
            run["wandb_name"] = recipe.name

        dist: dict[str, Any] = {}
        strategy = recipe.distributed["strategy"]
        if strategy.startswith("deepspeed"):
            dist["deepspeed"] = DEEPSPEED_FILE
        elif strategy == "fsdp":
            dist["fsdp_config"] = {
                "fsdp_version": 2,
                "offload_params": False,
                "state_dict_type": "FULL_STATE_DICT",
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "transformer_layer_cls_to_wrap": "Qwen3DecoderLayer",
                "reshard_after_forward": True,
                "cpu_ram_efficient_loading": False,
            }
        if recipe.distributed["gpus"] * recipe.distributed["nodes"] > 1:
            dist["ddp_find_unused_parameters"] = False

        out = [("model and precision", model), ("method", adapter), ("data, chat template and loss mask",
               data_section), ("optimization", optim), ("logging, saving, evaluation", run)]
        if dist:
            out.append(("distribution", dist))
        return out

    def packing_problems(self, plan: Plan) -> list[tuple[str, str]]:
        # BaseEngine.packed_row's bins (input_ids, labels, position_ids, no attention_mask) are what it needs.
        return packed_attention_problems(plan)

    def launch_problems(self, plan: Plan) -> list[tuple[str, str]]:
        # axolotl/utils/config normalize_config: with WORLD_SIZE > 1 it sets device_map {"": LOCAL_RANK}
        # unconditionally, and transformers reads an integer device as an accelerator index, so every CPU rank
        # fails in from_pretrained ("Cannot access accelerator device when none is available").
        if plan.target == "cpu" and is_multiprocess(plan):
            return [("distributed.gpus", "Axolotl cannot train several processes on the CPU: with WORLD_SIZE > 1 "
                     "it places each rank's model on accelerator LOCAL_RANK (device_map {'': LOCAL_RANK}); use "
                     "gpus: 1 on the CPU, a CUDA target, or trl / llamafactory for multi-process CPU runs")]
        return []

    def lora_kernels(self, plan: Plan) -> bool:
        return fused_lora_kernels(plan)

    def render(self, plan: Plan) -> dict[str, str]:
        files = {MAIN_FILE: render_template("axolotl/axolotl.yaml.j2", sections=self.sections(plan),
                                             warnings=plan.warnings, **header_context(plan, self.name))}
        ds = deepspeed_config(plan)
        if ds is not None:
            files[DEEPSPEED_FILE] = render_template("axolotl/deepspeed.json.j2", config=ds)
        return files

    def command(self, plan: Plan, resume_from: str | None = None) -> list[str]:
        resume = ["--resume-from-checkpoint", resume_from] if resume_from else []
        if is_multiprocess(plan):
            # One process per GPU; torchrun is explicit where Axolotl's default accelerate launcher would
            # read a machine-wide accelerate config. Everything after "--" goes to torchrun as is
            # (a multi-node c10d rendezvous passes its own --rdzv_id, the same on every node).
            return ["axolotl", "train", MAIN_FILE, *resume, "--launcher", "torchrun", "--", *torchrun_args(plan)]
        return ["axolotl", "train", MAIN_FILE, *resume, "--launcher", "python"]

    def environment(self, plan: Plan) -> dict[str, str]:
        return engine_environment(plan, {})

    def effective(self, files: dict[str, str]) -> dict[str, Any]:
        # Its own module: reading files back is not needed to render, and keeps this module short.
        from qwenrecipes.engines.axolotl.effective import effective

        return effective(files)


ENGINE = AxolotlEngine()
