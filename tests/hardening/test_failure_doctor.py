"""The known-failure doctor: validate-time rules and run-time classification of real engine errors into a fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from qwenrecipes.recipe.load import build_recipe
from qwenrecipes.recipe.plan import make_plan
from qwenrecipes.run import doctor
from qwenrecipes.run.rundir import SUMMARY_FILE
from qwenrecipes.run.runner import execute
from tests.conftest import run_cli
from tests.hardening.conftest import assert_clean_refusal, fake_spec, recipe_document, write_recipe


# ------------------------------------------------------------------------------------ doctor: validate
@pytest.mark.parametrize(
    ("sections", "field", "fragment"),
    [
        ({"distributed": {"gpus": 2, "strategy": "deepspeed_zero3"}}, "distributed.strategy",
         "use deepspeed_zero2"),
        ({"method": {"type": "qlora"}, "distributed": {"gpus": 2, "strategy": "deepspeed_zero3"}},
         "distributed.strategy", "use deepspeed_zero2"),
        ({"method": {"type": "qlora"}, "training": {"liger_kernel": True}}, "training.liger_kernel",
         "set liger_kernel: false"),
        ({"method": {"type": "lora", "lora": {"modules_to_save": ["embed_tokens"]}}}, "method.lora.modules_to_save",
         "add lm_head too"),
        ({"method": {"type": "lora", "lora": {"target_modules": ["q_proj", "embed_tokens"]}}},
         "method.lora.modules_to_save", "add lm_head too"),
        ({"model": {"chat_template": "qwen2.5"}}, "model.chat_template", "is not one of: qwen3, qwen3_nothink"),
        ({"model": {"chat_template": "qwen3-nothink"}}, "model.chat_template", "did you mean 'qwen3_nothink'?"),
    ],
    ids=["zero3-lora", "zero3-qlora", "liger-qlora", "embed-without-head", "embed-target-without-head",
         "unknown-template", "template-typo"],
)
def test_validate_time_doctor_rules(tmp_path: Path, data_file: Path, sections: dict[str, dict[str, Any]],
                                    field: str, fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    document = recipe_document(data_file)
    for name, values in sections.items():
        merged = copy.deepcopy(document.get(name, {}))
        for key, value in values.items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
        document[name] = merged
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    code, _, err = run_cli(["validate", str(recipe), "--target", "cuda"], capsys)
    assert_clean_refusal(code, err, recipe, f"::{field}: ", fragment)


def test_embed_tokens_with_lm_head_is_fine(tmp_path: Path, data_file: Path) -> None:
    document = recipe_document(data_file, method={"type": "lora",
                                                  "lora": {"modules_to_save": ["embed_tokens", "lm_head"]}})
    make_plan(build_recipe(document, tmp_path / "r.yaml"), target="cuda")


# ------------------------------------------------------------------------------------ doctor: run time
# Real error text, as torch / DeepSpeed / transformers / bitsandbytes / huggingface_hub print it.
TORCH_OOM = """Traceback (most recent call last):
  File "/envs/trl/lib/python3.11/site-packages/transformers/trainer.py", line 2325, in train
    return inner_training_loop(
  File "/envs/trl/lib/python3.11/site-packages/torch/nn/modules/linear.py", line 125, in forward
    return F.linear(input, self.weight, self.bias)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.16 GiB. GPU 0 has a total capacity of 23.54 GiB \
of which 626.94 MiB is free. Including non-PyTorch memory, this process has 22.92 GiB memory in use. Of the \
allocated memory 21.87 GiB is allocated by PyTorch, and 612.07 MiB is reserved by PyTorch but unallocated. If \
reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid \
fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)
"""
ZERO3_SHAPE0 = """Traceback (most recent call last):
  File "/envs/axolotl/lib/python3.11/site-packages/peft/tuners/lora/layer.py", line 130, in update_layer
    self.reset_lora_parameters(adapter_name, init_lora_weights)
  File "/envs/axolotl/lib/python3.11/site-packages/torch/nn/init.py", line 459, in kaiming_uniform_
    return tensor.uniform_(-bound, bound, generator=generator)
RuntimeError: The size of tensor a (0) must match the size of tensor b (4096) at non-singleton dimension 1
ValueError: weight should have at least two dimensions, got torch.Size([0])
RuntimeError: size mismatch for base_model.model.model.layers.0.self_attn.q_proj.weight: copying a param with \
shape [0] from checkpoint, the shape in current model is torch.Size([4096, 4096]).
"""
BNB_NO_GPU = """Traceback (most recent call last):
  File "/envs/trl/lib/python3.11/site-packages/transformers/quantizers/quantizer_bnb_4bit.py", line 74, in \
validate_environment
    raise RuntimeError("No GPU found. A GPU is needed for quantization.")
RuntimeError: No GPU found. A GPU is needed for quantization.
"""
BNB_NOT_COMPILED = ("UserWarning: The installed version of bitsandbytes was compiled without GPU support. 8-bit "
                    "optimizers, 8-bit multiplication, and GPU quantization are unavailable.\n"
                    "AttributeError: 'NoneType' object has no attribute 'cadam32bit_grad_fp32'\n")
MISSING_REPO = """Traceback (most recent call last):
  File "/envs/trl/lib/python3.11/site-packages/huggingface_hub/utils/_http.py", line 409, in hf_raise_for_status
    response.raise_for_status()
huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-6752a3f1-1d2b4c5e)

Repository Not Found for url: https://huggingface.co/Qwen/Qwen3-0.7B/resolve/main/config.json.
Please make sure you specified the correct `repo_id` and `repo_type`.
If you are trying to access a private or gated repo, make sure you are authenticated.
OSError: Qwen/Qwen3-0.7B is not a local folder and is not a valid model identifier listed on \
'https://huggingface.co/models'
If this is a private repository, make sure to pass a token having permission to this repo either by logging in \
with `hf auth login` or by passing `token=<your_token>`
"""
OFFLINE_MISS = ("OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
                "in the cached files.\nCheck your internet connection or see how to run the library in offline "
                "mode at 'https://huggingface.co/docs/transformers/installation#offline-mode'.\n")
CPU_OOM = "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: " \
          "you tried to allocate 34359738368 bytes. Error code 12 (Cannot allocate memory)\n"
TEMPLATE_ERROR = ("jinja2.exceptions.TemplateError: Conversation roles must alternate "
                  "user/assistant/user/assistant/...\n")


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (TORCH_OOM, "cuda_oom"),
        ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`\n", "cuda_oom"),
        (ZERO3_SHAPE0, "zero3_lora"),
        (BNB_NO_GPU, "bitsandbytes"),
        (BNB_NOT_COMPILED, "bitsandbytes"),
        (MISSING_REPO, "missing_model_or_data"),
        (OFFLINE_MISS, "missing_model_or_data"),
        (CPU_OOM, "cpu_oom"),
        (TEMPLATE_ERROR, "chat_template"),
        ("ModuleNotFoundError: No module named 'peft'\n", "import_error"),
    ],
    ids=["torch-oom", "cublas-alloc", "zero3-shape0", "bnb-no-gpu", "bnb-cpu-build", "missing-repo",
         "offline-miss", "cpu-oom", "template", "import"],
)
def test_run_time_doctor_classifies_real_errors(text: str, name: str) -> None:
    diagnosis = doctor.classify(text)
    assert diagnosis is not None and diagnosis.name == name


def test_oom_remedies_are_ordered_and_keep_the_effective_batch() -> None:
    diagnosis = doctor.classify(TORCH_OOM)
    assert diagnosis is not None
    fix = diagnosis.fix
    steps = ["micro_batch_size", "max_seq_length", "gradient_checkpointing", "qlora", "lora.r"]
    positions = [fix.find(step) for step in steps]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), fix
    assert "raise gradient_accumulation_steps to keep the effective batch" in fix


def test_a_failed_fake_run_carries_the_diagnosis_in_its_summary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = execute(fake_spec(run, "--crash", TORCH_OOM.splitlines()[-1]))
    assert result.status == "failed"
    error = json.loads((run / SUMMARY_FILE).read_text())["error"]
    assert error["class"] == "cuda_oom" and "effective batch" in error["fix"]
