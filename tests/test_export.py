"""merge / generate / export gguf / verify-export / push.

Fast tests check the pure-Python half (source resolution, file finalization, the GGUF reader, the
Modelfile, verify's failure messages) on hand-made folders. Tests marked `engine` run the real chain on the
tiny model in the tools interpreter ($QWENRECIPES_TOOLS_PYTHON, else the `tools` or `trl` env) and skip
when none is installed. push is not tested against the Hub (no network here, and no local server).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from qwenrecipes.data.tiny import ENDOFTEXT_ID, IM_END_ID, TINY_QWEN3_REF, resolve_builtin_model
from qwenrecipes.data.tokenizer_files import TOKENIZER_FILES
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.export.converter import extract_converter
from qwenrecipes.export.generate import generate, generation_warnings
from qwenrecipes.export.gguf import export_gguf
from qwenrecipes.export.merge import finalize_model_dir, merge, prepare_out
from qwenrecipes.export.push import push
from qwenrecipes.export.readers import read_gguf_metadata
from qwenrecipes.export.source import MANIFEST, RESOLVED_RECIPE, SUMMARY, compute_dtype, resolve_source
from qwenrecipes.export.templates import MODELFILE, inference_chat_template, modelfile_text, template_name_of
from qwenrecipes.export.tools_env import Tools, has_llama_cpp, tools
from qwenrecipes.export.verify import VerifyReport, verify_export

# ------------------------------------------------------------------------------------------ helpers


def _write_run(run: Path, *, template: str = "qwen3", method: str = "lora", max_len: int = 512,
               adapter_rel: str | None = "outputs/adapter", model_path: str | None = None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    document = {
        "recipe": {"name": "tiny-export", "model": {"name_or_path": TINY_QWEN3_REF, "chat_template": template},
                   "method": {"type": method}, "data": {"max_seq_length": max_len}, "output": {"dir": "outputs"}},
        "resolved": {"model_path": model_path or str(resolve_builtin_model(TINY_QWEN3_REF))},
    }
    import yaml

    (run / RESOLVED_RECIPE).write_text(yaml.safe_dump(document), encoding="utf-8")
    (run / SUMMARY).write_text(json.dumps({"status": "ok", "artifacts": {"adapter_dir": adapter_rel}}),
                               encoding="utf-8")
    return run


def _fake_adapter(folder: Path, base: str = "/nonexistent/base") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, 4), np.float32)},
              str(folder / "adapter_model.safetensors"))
    return folder


def _fake_merged(folder: Path, template: str = "qwen3_nothink") -> Path:
    """A model folder as merge writes it, with a toy weight file (verify never loads it without runtime)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "dtype": "float32"}))
    save_file({"model.embed_tokens.weight": np.zeros((4, 2), np.float32)}, str(folder / "model.safetensors"))
    finalize_model_dir(folder, tokenizer_from=resolve_builtin_model(TINY_QWEN3_REF), template_name=template,
                       generation_base=None)
    (folder / MANIFEST).write_text(json.dumps({"kind": "merged", "chat_template": template,
                                               "max_seq_length": 512}))
    return folder


def _gguf_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _write_gguf(path: Path, *, eos: int = IM_END_ID, template: str = "", file_type: int = 1) -> Path:
    """A metadata-only GGUF v3 file (no tensors): enough for verify's file checks."""
    tokens = [f"t{i}" for i in range(ENDOFTEXT_ID)] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    kv: list[bytes] = []

    def add(key: str, kind: int, payload: bytes) -> None:
        kv.append(_gguf_string(key) + struct.pack("<I", kind) + payload)

    add("general.architecture", 8, _gguf_string("qwen3"))
    add("general.file_type", 4, struct.pack("<I", file_type))
    add("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, len(tokens)) + b"".join(_gguf_string(t) for t in tokens))
    add("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, 3, 3))
    add("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", eos))
    add("tokenizer.ggml.padding_token_id", 4, struct.pack("<I", ENDOFTEXT_ID))
    add("tokenizer.chat_template", 8, _gguf_string(template))
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv))
    return path


def _fake_gguf_export(folder: Path, merged: Path, **gguf: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    template = inference_chat_template("qwen3_nothink")
    _write_gguf(folder / "m-f16.gguf", template=gguf.pop("template", template), **gguf)
    (folder / MODELFILE).write_text(modelfile_text("m-f16.gguf", 2048))
    (folder / MANIFEST).write_text(json.dumps({"kind": "gguf", "gguf": "m-f16.gguf", "quant": "f16",
                                               "merged": str(merged), "chat_template": "qwen3_nothink",
                                               "max_seq_length": 512}))
    return folder


def _failed(report: VerifyReport) -> dict[str, str]:
    return {c.name: c.detail for c in report.failures}


# ------------------------------------------------------------------------------------- templates


def test_inference_templates_match_training_choice() -> None:
    from qwenrecipes.engines.base import CHATML_TEMPLATE_PLAIN

    assert inference_chat_template("qwen3_nothink") == CHATML_TEMPLATE_PLAIN
    official = inference_chat_template("qwen3")
    assert "enable_thinking" in official and "<think>" in official
    assert template_name_of(official) == "qwen3"
    assert template_name_of(CHATML_TEMPLATE_PLAIN) == "qwen3_nothink"
    assert template_name_of("{{ nope }}") is None
    # qwen3_official trains on the shipped official template byte for byte: merge/export serve that same text.
    from qwenrecipes.data.qwen3_official import official_template

    assert inference_chat_template("qwen3_official") == official_template() != official
    assert template_name_of(official_template()) == "qwen3_official"
    with pytest.raises(QwenRecipesError, match="qwen3, qwen3_nothink, qwen3_official"):
        inference_chat_template("llama3")


def test_modelfile_has_template_stops_and_context() -> None:
    text = modelfile_text("m-q4_k_m.gguf", 4096)
    assert text.splitlines()[1] == "FROM ./m-q4_k_m.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "PARAMETER num_ctx 4096" in text
    assert 'TEMPLATE """' in text and "<|im_start|>assistant" in text
    assert text.count('"""') == 2  # the Go template itself never closes the triple quote


# ------------------------------------------------------------------------------------- resolution


def test_resolve_run_uses_summary_adapter_and_recipe(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", template="qwen3_nothink", max_len=1024)
    _fake_adapter(run / "outputs" / "adapter")
    source = resolve_source(run)
    assert source.kind == "adapter" and source.path == run / "outputs" / "adapter"
    assert source.chat_template == "qwen3_nothink" and source.chat_template_known
    assert source.max_seq_length == 1024 and source.name == "tiny-export"
    assert source.base == str(resolve_builtin_model(TINY_QWEN3_REF))  # the run's resolved path wins


def test_resolve_run_falls_back_to_newest_adapter(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", adapter_rel=None)
    old = _fake_adapter(run / "outputs" / "checkpoint-1")
    new = _fake_adapter(run / "outputs" / "checkpoint-2")
    import os

    os.utime(old, (1, 1))
    assert resolve_source(run).path == new
    # An adapter dir inside a run finds the run's recipe above it.
    inner = resolve_source(new)
    assert inner.kind == "adapter" and inner.run is not None and inner.run.run_dir == run


def test_resolve_rejects_empty_things(tmp_path: Path) -> None:
    with pytest.raises(QwenRecipesError, match="does not exist"):
        resolve_source(tmp_path / "missing")
    with pytest.raises(QwenRecipesError, match="neither a run dir"):
        resolve_source(tmp_path)
    run = _write_run(tmp_path / "run", adapter_rel=None)
    with pytest.raises(QwenRecipesError, match="finish the run first"):
        resolve_source(run)


def test_adapter_base_missing_names_the_fix(tmp_path: Path) -> None:
    adapter = _fake_adapter(tmp_path / "adapter", base="/gone/base")
    with pytest.raises(QwenRecipesError, match="cannot find the base model"):
        resolve_source(adapter)


def test_qlora_merges_in_bf16(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", method="qlora")
    _fake_adapter(run / "outputs" / "adapter")
    assert compute_dtype(resolve_source(run)) == "bfloat16"
    run2 = _write_run(tmp_path / "run2", method="lora")
    _fake_adapter(run2 / "outputs" / "adapter")
    assert compute_dtype(resolve_source(run2)) == "float32"  # the tiny base's own dtype


def test_merge_refuses_full_model_and_foreign_folders(tmp_path: Path) -> None:
    model = _fake_merged(tmp_path / "model")
    with pytest.raises(QwenRecipesError, match="no adapter to merge"):
        merge(model)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(QwenRecipesError, match="not written by qwenrecipes"):
        prepare_out(foreign, force=True)
    with pytest.raises(QwenRecipesError, match="--force"):
        prepare_out(foreign, force=False)
    assert (foreign / "keep.txt").is_file()


# ----------------------------------------------------------------------------------------- verify


def test_finalized_model_dir_passes_file_checks(tmp_path: Path) -> None:
    merged = _fake_merged(tmp_path / "merged")
    for name in TOKENIZER_FILES:
        assert (merged / name).is_file()
    generation = json.loads((merged / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [IM_END_ID, ENDOFTEXT_ID] and generation["pad_token_id"] == ENDOFTEXT_ID
    # Qwen3's published non-thinking settings: this model was trained with qwen3_nothink.
    assert (generation["temperature"], generation["top_p"], generation["top_k"]) == (0.7, 0.8, 20)
    report = verify_export(merged, runtime=False)
    assert report.ok, _failed(report)
    assert any(c.name.endswith("chat template = training") for c in report.checks)


def test_broken_merged_export_fails_clearly(tmp_path: Path) -> None:
    merged = _fake_merged(tmp_path / "merged")
    (merged / "vocab.json").unlink()
    generation = json.loads((merged / "generation_config.json").read_text())
    generation["eos_token_id"] = ENDOFTEXT_ID
    (merged / "generation_config.json").write_text(json.dumps(generation))
    config = json.loads((merged / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages }}"
    (merged / "tokenizer_config.json").write_text(json.dumps(config))
    (merged / "chat_template.jinja").unlink()
    failed = _failed(verify_export(merged, runtime=False))
    assert "missing vocab.json" in failed["merged: required files"]
    assert "qwenrecipes merge" in failed["merged: required files"]
    assert "expected [151645, 151643]" in failed["merged: generation_config EOS"]
    assert "differs from the template" in failed["merged: chat template = training"]


def test_leftover_lora_tensors_fail(tmp_path: Path) -> None:
    merged = _fake_merged(tmp_path / "merged")
    save_file({"model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, 2), np.float32)},
              str(merged / "model.safetensors"))
    assert "LoRA tensors left" in _failed(verify_export(merged, runtime=False))["merged: adapter merged"]


def test_gguf_reader_and_gguf_export_checks(tmp_path: Path) -> None:
    merged = _fake_merged(tmp_path / "merged")
    folder = _fake_gguf_export(tmp_path / "gguf", merged)
    meta = read_gguf_metadata(folder / "m-f16.gguf")
    assert meta["general.architecture"] == "qwen3" and meta["tokenizer.ggml.eos_token_id"] == IM_END_ID
    assert meta["tokenizer.ggml.tokens"][IM_END_ID] == "<|im_end|>"
    assert meta["tokenizer.ggml.token_type"] == 3  # arrays not asked for come back as their length
    report = verify_export(folder, runtime=False)
    assert report.ok, _failed(report)
    names = {c.name for c in report.checks}
    assert {"gguf: EOS/pad ids", "Modelfile stop tokens", "merged: required files"} <= names


def test_broken_gguf_export_fails_clearly(tmp_path: Path) -> None:
    merged = _fake_merged(tmp_path / "merged")
    folder = _fake_gguf_export(tmp_path / "gguf", merged, eos=ENDOFTEXT_ID, template="{{ x }}", file_type=7)
    (folder / MODELFILE).write_text('FROM ./other.gguf\nPARAMETER stop "<|im_end|>"\nPARAMETER num_ctx 128\n')
    failed = _failed(verify_export(folder, runtime=False))
    assert "expected eos=151645" in failed["gguf: EOS/pad ids"]
    assert "differs" in failed["gguf: chat template = training"]
    assert "f16 is 1" in failed["gguf: quant type"]
    assert {"Modelfile FROM", "Modelfile TEMPLATE", "Modelfile stop tokens", "Modelfile num_ctx"} <= set(failed)
    (folder / "m-f16.gguf").write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(QwenRecipesError, match="not a GGUF file"):
        verify_export(folder, runtime=False)


def test_cli_verify_export_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qwenrecipes.cli import main

    merged = _fake_merged(tmp_path / "merged")
    (merged / "merges.txt").unlink()
    with pytest.raises(SystemExit) as exc:
        main(["verify-export", str(merged), "--no-runtime"])
    assert exc.value.code == 2
    out = capsys.readouterr()
    assert "FAIL merged: required files: missing merges.txt" in out.out
    assert "1 check(s) failed" in out.err


# ------------------------------------------------------------------------------- converter, push


def test_converter_sdist_pin_is_enforced(tmp_path: Path) -> None:
    fake = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    fake.write_bytes(b"not the sdist")
    with pytest.raises(QwenRecipesError, match="refusing to run an unpinned converter"):
        extract_converter(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_push_needs_token_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(QwenRecipesError, match=r"\$HF_TOKEN"):
        push(tmp_path, "me/model")


# ------------------------------------------------------------------------ the real chain (engine)



def _tools_or_skip() -> Tools:
    try:
        return tools()
    except QwenRecipesError as exc:
        pytest.skip(f"no tools env for merge/generate/export: {exc}")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real run dir: `qwenrecipes run` trains the tiny Qwen3 a few steps with TRL (train -> merge -> ...)."""
    _tools_or_skip()
    from qwenrecipes.run.envs import env_for

    try:
        env_for("trl")
    except QwenRecipesError as exc:
        pytest.skip(f"trl env not installed: {exc}")
    run = tmp_path_factory.mktemp("export") / "run"
    recipe = Path(__file__).parent / "recipes" / "export-tiny.yaml"
    result = subprocess.run([sys.executable, "-c", "from qwenrecipes.cli import main; main()", "run", str(recipe),
                             "--engine", "trl", "--run-dir", str(run), "--target", "cpu"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    yield run


@pytest.mark.engine
def test_chain_merge_generate_gguf_verify(tiny_run: Path, tmp_path: Path) -> None:
    merged = merge(tiny_run, max_shard_size="10MB")  # the tiny model is ~39 MB in float32: 2+ shards
    assert merged.path == tiny_run / "merged" and merged.shards >= 2
    for name in (*TOKENIZER_FILES, "generation_config.json", "chat_template.jinja"):
        assert (merged.path / name).is_file(), name

    # Same seed, same tokens: base + adapter (unmerged) and the merged model sample the same answer.
    from_adapter = generate(tiny_run, "Hello there", seed=7, max_new_tokens=16)
    from_merged = generate(merged.path, "Hello there", seed=7, max_new_tokens=16)
    assert from_adapter.kind == "adapter" and from_merged.kind == "model"
    assert from_adapter.prompt_ids == from_merged.prompt_ids
    assert from_adapter.tokens == from_merged.tokens and len(from_adapter.tokens) > 0
    # Sampling is the default: another seed gives another answer (a random model is near-uniform).
    assert generate(merged.path, "Hello there", seed=8, max_new_tokens=16).tokens != from_merged.tokens

    result = export_gguf(tiny_run, "f16")
    assert result.gguf.is_file() and result.num_ctx >= 512
    report = verify_export(result.folder)
    assert report.ok, _failed(report)
    assert report.measured["adapter_vs_merged_top1"] == 1.0

    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(merged.path, broken)
    (broken / "tokenizer.json").unlink()
    failed = _failed(verify_export(broken))
    assert "missing tokenizer.json" in failed["broken: required files"]


@pytest.mark.engine
def test_gguf_q4_k_m_needs_llama_cpp(tiny_run: Path) -> None:
    tool = _tools_or_skip()
    if not has_llama_cpp(tool.python):
        with pytest.raises(QwenRecipesError, match="q4_k_m needs llama-cpp-python"):
            export_gguf(tiny_run, "q4_k_m", tiny_run / "gguf-q4")
        return
    result = export_gguf(tiny_run, "q4_k_m", tiny_run / "gguf-q4")
    report = verify_export(result.folder)
    assert report.ok, _failed(report)
    assert "gguf_vs_merged_top1" in report.measured


def test_greedy_thinking_is_warned() -> None:
    """Doctor rule: greedy decoding with thinking on is named, with the fix; sampling or no-think is quiet."""
    [warning] = generation_warnings(greedy=True, thinking=True)
    assert "greedy decoding in thinking mode" in warning and "--no-thinking" in warning
    assert generation_warnings(greedy=False, thinking=True) == []
    assert generation_warnings(greedy=True, thinking=False) == []


@pytest.mark.parametrize("template,expected", [("qwen3", (0.6, 0.95, 20)), ("qwen3_nothink", (0.7, 0.8, 20))])
def test_sampling_follows_the_think_rule(tmp_path: Path, template: str, expected: tuple[float, float, int]) -> None:
    """generation_config.json and the Modelfile carry Qwen3's published sampling for the trained think rule."""
    from qwenrecipes.export.templates import modelfile_text

    generation = json.loads((_fake_merged(tmp_path / "m", template) / "generation_config.json").read_text())
    assert (generation["do_sample"], generation["temperature"], generation["top_p"], generation["top_k"]) == (
        True, *expected)
    modelfile = modelfile_text("m.gguf", 4096, template)
    assert [line.split()[-1] for line in modelfile.splitlines()
            if line.startswith(("PARAMETER temperature", "PARAMETER top_p", "PARAMETER top_k"))] == [
        str(v) for v in expected]
