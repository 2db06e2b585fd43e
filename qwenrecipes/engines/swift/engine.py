"""ms-swift 4.6.0 (transformers 5.19, peft 0.20, trl 0.29): ``swift_sft.yaml`` (the arguments of ``swift sft``),
``qwenrecipes_template.py`` (the ChatML template with qwenrecipes' loss mask, textpath.py), the fixed launcher
``train_swift.py`` and, for ZeRO or FSDP strategies, ``deepspeed.json`` / ``fsdp.json``.

Why a launcher instead of ``swift sft swift_sft.yaml`` (which runs the same file alone): swift keeps the final
weights only in its last ``checkpoint-N``, and with ``save_strategy: no`` (the recipe's ``save_steps: null``, "only
the final model") it saves nothing at all. The launcher is swift/cli/sft.py (YAML expansion + SwiftSft) plus
``trainer.save_model(output_dir)`` after training, like every other engine's final model. Multi-GPU runs it under
torchrun, as `swift sft` does when NPROC_PER_NODE is set.

How swift reads the file: the YAML must be the first argument after ``sft`` (there is no --config flag);
``swift.cli.main.parse_yaml_args`` turns each key into ``--key value`` (a list into several values, a dict into
JSON) and flags after it win, which is how resuming adds ``--resume_from_checkpoint``. YAML null would become the
string "None" (``system: null`` would add a system prompt "None"), so null values are never written: the key is
left out and swift's default applies, which effective() reports.

Swift's defaults differ from the HF Trainer's in many places (cosine schedule, weight decay 0.1, adam beta2 0.95,
gradient checkpointing on, grad accumulation auto-sized to 16, LoRA alpha 32 / dropout 0.05, logging every 5 steps,
a timestamped output subfolder, a ModelScope "is the model latest" call): every one of them is written explicitly.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from qwenrecipes.data.packing import PackedRow
from qwenrecipes.engines.base import (
    MEMORY_FALLBACK,
    BaseEngine,
    EnvSpec,
    engine_environment,
    header_context,
)
from qwenrecipes.engines.deepspeed import DEEPSPEED_FILE, deepspeed_config
from qwenrecipes.engines.launchers import cpu_fsdp_problems, is_multiprocess, torchrun_args
from qwenrecipes.engines.swift import textpath, tokenpath
from qwenrecipes.engines.templating import render_template
from qwenrecipes.recipe.memory import DEFAULT_PROFILE
from qwenrecipes.recipe.plan import Plan

SWIFT_VERSION = "4.6.0"
MAIN_FILE = "swift_sft.yaml"
LAUNCHER_FILE = "train_swift.py"
FSDP_FILE = "fsdp.json"
MODEL_TYPE = "qwen3"  # a local folder matches qwen3, qwen3_emb and qwen3_reranker: swift refuses to guess
# The log-dict key swift adds on a GPU: the running peak of torch max_memory_reserved (GiB), a second-best figure
# next to the allocated peak other engines log (run/events.py uses it when nothing better is there).
MEMORY_KEY = "memory(GiB)"

# Why swift's effective values differ where `explain` flags them.
NOTES: dict[str, str] = {
    "model": "swift loads every model with trust_remote_code=True (no switch); Qwen3 has no remote code",
    "save_steps": "swift keeps its final weights in the last checkpoint-N; train_swift.py also saves them into "
                  "output_dir",
    "packing": "qwenrecipes' bins side by side through the bins template's collator (per-row position ids, "
               "no attention mask; verified with sdpa and eager); with the text handoff swift packs with its "
               "binpack strategy (rows kept apart only with flash_attention_2/3)",
    "liger_kernel": "liger-kernel is not in the swift env's lock: use_liger_kernel is off unless the env adds it",
    "quantization": "QLoRA needs bitsandbytes, which the CPU lock of the swift env does not carry",
}


def _drop_none(section: dict[str, Any]) -> dict[str, Any]:
    # swift turns YAML null into the string "None": a key without a value is left out (its default applies).
    return {k: v for k, v in section.items() if v is not None}


def _fsdp_config(plan: Plan) -> dict[str, Any]:
    """swift's own fsdp2 preset (swift/config/fsdp2.json) with the recipe's checkpointing: under FSDP2 swift wants
    activation_checkpointing in fsdp_config instead of --gradient_checkpointing."""
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "fsdp_version": 2,
            "reshard_after_forward": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "cpu_ram_efficient_loading": True,
            "state_dict_type": "SHARDED_STATE_DICT",
            "activation_checkpointing": bool(plan.recipe.training["gradient_checkpointing"]),
        },
    }


class SwiftEngine(BaseEngine):
    name = "swift"
    main_file = MAIN_FILE
    notes = NOTES
    # `import swift` is lazy: these are the modules `swift sft` really loads. USE_HF: hub lookups go to HF, which
    # HF_HUB_OFFLINE then blocks (the default, ModelScope, has no offline switch).
    env = EnvSpec("ms-swift", ("swift.pipelines:sft_main", "swift.arguments:SftArguments"),
                  health_env={"USE_HF": "1", "HF_HUB_OFFLINE": "1"})
    # Uncalibrated (no GPU measurement yet): the conservative transformers+peft profile. swift computes the loss
    # from full logits in its own trainer like plain transformers does; calibrate from the H200 plan
    # (benchmarks/plans/call10.sh) before trusting it for near-full cards.
    memory_profile = DEFAULT_PROFILE
    log_keys = MappingProxyType({MEMORY_KEY: MEMORY_FALLBACK})
    console_modules = MappingProxyType({"torchrun": "torch.distributed.run", "swift": "swift.cli.main"})

    # ------------------------------------------------------------------------------------- render
    def sections(self, plan: Plan) -> list[tuple[str, dict[str, Any]]]:
        recipe = plan.recipe
        training, lora, quant = recipe.training, recipe.lora, recipe.quantization
        strategy = recipe.distributed["strategy"]
        model = {
            "model": plan.model_path,
            "model_type": MODEL_TYPE,
            "torch_dtype": plan.model_dtype,
            "attn_impl": recipe.model["attn"],
            "use_hf": True,  # hub ids are Hugging Face ids (swift's default hub is ModelScope)
            "check_model": False,  # else a ModelScope call per run asks whether a local model is the latest
        }
        method: dict[str, Any] = {"tuner_type": "lora" if recipe.uses_adapter else "full"}
        if recipe.uses_adapter:
            method.update({
                "lora_rank": lora["r"],
                "lora_alpha": lora["alpha"],
                "lora_dropout": lora["dropout"],
                "lora_bias": "none",
                "target_modules": list(recipe.target_modules),
                "modules_to_save": list(lora["modules_to_save"]) or None,
                "use_dora": lora["use_dora"],
                "use_rslora": lora["use_rslora"],
            })
        if recipe.method["type"] == "qlora":
            method.update({
                "quant_method": "bnb",
                "quant_bits": quant["bits"],
                "bnb_4bit_quant_type": quant["quant_type"],
                "bnb_4bit_use_double_quant": quant["double_quant"],
                "bnb_4bit_compute_dtype": quant["compute_dtype"],
            })
        checkpointing = bool(training["gradient_checkpointing"]) and strategy != "fsdp"  # fsdp: in fsdp.json
        train = {
            "per_device_train_batch_size": training["micro_batch_size"],
            "per_device_eval_batch_size": training["micro_batch_size"],
            "gradient_accumulation_steps": training["gradient_accumulation_steps"],  # swift's None means 16/bs
            "max_steps": plan.max_steps if plan.max_steps is not None else -1,
            "num_train_epochs": float(training["epochs"]),
            "learning_rate": float(training["learning_rate"]),
            "lr_scheduler_type": training["scheduler"],
            "warmup_steps": plan.warmup_steps,
            "optim": training["optimizer"],
            "weight_decay": float(training["weight_decay"]),
            # The HF Trainer's AdamW constants, which every other engine uses (swift's beta2 is 0.95).
            "adam_beta1": 0.9,
            "adam_beta2": 0.999,
            "adam_epsilon": 1e-08,
            "max_grad_norm": float(training["max_grad_norm"]),
            "bf16": plan.precision == "bf16",
            "fp16": plan.precision == "fp16",
            "gradient_checkpointing": checkpointing,
            "gradient_checkpointing_kwargs": {"use_reentrant": False} if checkpointing else None,
            "seed": training["seed"],
            "data_seed": training["seed"],
            "use_liger_kernel": training["liger_kernel"],
        }
        save_steps, eval_steps = training["save_steps"], training["eval_steps"]
        evaluating = bool(eval_steps) and plan.has_eval
        run = {
            "output_dir": recipe.output["dir"],
            "add_version": False,  # else output_dir/v0-<timestamp>/
            "create_checkpoint_symlink": False,
            "logging_strategy": "steps",
            "logging_steps": training["logging_steps"],
            "logging_first_step": False,
            "save_strategy": "steps" if save_steps else "no",  # null: only the final model
            "save_steps": save_steps or None,
            "save_total_limit": training["save_total_limit"],
            "save_only_model": False,  # checkpoints carry optimizer + scheduler + RNG: resumable
            "eval_strategy": "steps" if evaluating else "no",
            "eval_steps": eval_steps if evaluating else None,
            "report_to": [recipe.output["report_to"]],
            "dataloader_num_workers": 0,
            "deepspeed": DEEPSPEED_FILE if strategy.startswith("deepspeed") else None,
            "fsdp": FSDP_FILE if strategy == "fsdp" else None,
            "ddp_find_unused_parameters": False if is_multiprocess(plan) else None,
        }
        return [(title, _drop_none(section)) for title, section in (
            ("model", model), ("method", method),
            ("dataset", (tokenpath if self.handoff(plan) == "tokens" else textpath).dataset_args(plan)),
            ("train", train), ("run", run))]

    def render(self, plan: Plan) -> dict[str, str]:
        context = header_context(plan, self.name)
        # The bins template only in a folder of qwenrecipes' bins (tokenpath.py).
        bins = tokenpath.BINS_TEMPLATE_NAME if plan.packing is not None else None
        files = {
            MAIN_FILE: render_template("swift/swift_sft.yaml.j2", sections=self.sections(plan), target=plan.target,
                                       warnings=plan.warnings, swift_version=SWIFT_VERSION, **context),
            LAUNCHER_FILE: render_template("swift/train_swift.py.j2", **context),
            textpath.REGISTER_FILE: render_template(textpath.REGISTER_TEMPLATE, template_name=textpath.TEMPLATE_NAME,
                                                    tokens_template_name=tokenpath.TEMPLATE_NAME,
                                                    bins_template_name=bins, **context),
        }
        ds = deepspeed_config(plan)
        if ds is not None:
            files[DEEPSPEED_FILE] = render_template("swift/config.json.j2", config=ds)
        if plan.recipe.distributed["strategy"] == "fsdp":
            files[FSDP_FILE] = render_template("swift/config.json.j2", config=_fsdp_config(plan))
        return files

    def command(self, plan: Plan, resume_from: str | None = None) -> list[str]:
        # Flags after the YAML override it (argparse keeps the last value).
        tail = [LAUNCHER_FILE, MAIN_FILE, *(["--resume_from_checkpoint", resume_from] if resume_from else [])]
        if is_multiprocess(plan):  # every rank teed into ranks/; several nodes: c10d rendezvous (launchers.py)
            return ["torchrun", *torchrun_args(plan), *tail]
        return ["python", *tail]

    def environment(self, plan: Plan) -> dict[str, str]:
        own = {"USE_HF": "1", "TOKENIZERS_PARALLELISM": "false"}
        if plan.target == "cpu":
            own["CUDA_VISIBLE_DEVICES"] = ""  # swift would otherwise take any visible GPU (device_map auto)
        if plan.recipe.output["report_to"] == "wandb":
            own["WANDB_MODE"] = "online"
        return engine_environment(plan, own)

    def effective(self, files: dict[str, str]) -> dict[str, Any]:
        from qwenrecipes.engines.swift.effective import effective

        return effective(files)

    def launch_problems(self, plan: Plan) -> list[tuple[str, str]]:
        return cpu_fsdp_problems(plan)  # FSDP through accelerate: accelerator processes only

    def token_row(self, input_ids: list[int], labels: list[int]) -> dict[str, Any]:
        return tokenpath.token_row(input_ids, labels)

    def packing_problems(self, plan: Plan) -> list[tuple[str, str]]:
        if plan.packing is None or plan.recipe.model["attn"] in tokenpath.PACKED_ATTN:
            return []
        return [("model.attn", f"{plan.recipe.model['attn']} {tokenpath.PACKED_ATTN_REFUSED} (docs/equivalence.md, "
                               f"Packing): use {' or '.join(tokenpath.PACKED_ATTN)}, or packing: false")]

    def packed_row(self, row: PackedRow) -> dict[str, Any]:
        return tokenpath.packed_row(row.input_ids, row.labels, row.seq_lengths)


ENGINE = SwiftEngine()
