"""`qwenrecipes verify-export`: re-read every file of a merged model or GGUF export (tokenizer, template, EOS,
weights, GGUF metadata, Modelfile) and, with the tools env, compare the adapter, the merged model and the GGUF on
one prompt, top token by top token."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenrecipes.data.tiny import ENDOFTEXT_ID, IM_END_ID
from qwenrecipes.data.tokenizer_files import TOKENIZER_FILES
from qwenrecipes.errors import QwenRecipesError
from qwenrecipes.export.gguf import GGUF_FILE_TYPES
from qwenrecipes.export.readers import read_gguf_metadata, safetensors_keys
from qwenrecipes.export.source import (
    Source,
    compute_dtype,
    is_run_dir,
    model_template,
    read_json,
    read_manifest,
    resolve_source,
    write_json,
)
from qwenrecipes.export.templates import ENDOFTEXT, IM_END, MODELFILE, inference_chat_template
from qwenrecipes.export.tools_env import has_llama_cpp, run_tool, tools

# What verify runs through every runtime; short, so the f16 GGUF check takes seconds on CPU.
VERIFY_MESSAGES = [{"role": "user", "content": "Name three moons of Jupiter and say one fact about each."}]
# Minimum top-1 agreement (over all prompt positions) of the GGUF with the merged model, per quant.
# f16 only rounds weights; q8_0 loses a little more; q4_k_m changes predictions on near-ties (a random
# tiny model is all near-ties), so it is reported, never failed on. Measured on the tiny model (20 positions,
# llama-cpp-python 0.3.36): f16 1.00, q8_0 1.00, q4_k_m 0.55.
GGUF_MIN_AGREEMENT = {"f16": 0.9, "q8_0": 0.8, "q4_k_m": 0.0}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerifyReport:
    folder: Path
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def raise_for_failures(self) -> None:
        if not self.ok:
            lines = [f"  {c.name}: {c.detail}" for c in self.failures]
            raise QwenRecipesError(f"export in {self.folder} failed {len(lines)} check(s):\n" + "\n".join(lines))


def _verify_model_dir(report: VerifyReport, folder: Path, expected_template: str | None) -> None:
    prefix = f"{folder.name}:"
    missing = [n for n in ("config.json", "generation_config.json", *TOKENIZER_FILES) if not (folder / n).is_file()]
    report.add(f"{prefix} required files", not missing,
               f"missing {', '.join(missing)}: re-run `qwenrecipes merge RUN --force` (it copies every tokenizer "
               "file)" if missing else "config, generation_config and the 4 tokenizer files present")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
    else:
        shards = ["model.safetensors"] if (folder / "model.safetensors").is_file() else []
    absent = [s for s in shards if not (folder / s).is_file()]
    if report.add(f"{prefix} weights", bool(shards) and not absent,
                  f"{len(shards)} safetensors file(s)" if shards and not absent
                  else f"missing weights {absent or 'model*.safetensors'}: re-run the merge"):
        keys = [k for s in shards for k in safetensors_keys(folder / s)]
        lora = [k for k in keys if "lora_" in k]
        report.add(f"{prefix} adapter merged", not lora,
                   f"{len(keys)} tensors, no LoRA tensors" if not lora
                   else f"{len(lora)} LoRA tensors left (e.g. {lora[0]}): merge with `qwenrecipes merge`")
    if (folder / "generation_config.json").is_file():
        gen = read_json(folder / "generation_config.json")
        eos = gen.get("eos_token_id")
        eos_list = eos if isinstance(eos, list) else [eos]
        report.add(f"{prefix} generation_config EOS", IM_END_ID in eos_list and ENDOFTEXT_ID in eos_list,
                   f"eos_token_id={eos}" + ("" if IM_END_ID in eos_list and ENDOFTEXT_ID in eos_list else
                                            f", expected [{IM_END_ID}, {ENDOFTEXT_ID}] (<|im_end|>, <|endoftext|>):"
                                            " generation would not stop at the end of a turn; re-run the merge"))
        report.add(f"{prefix} generation_config pad", gen.get("pad_token_id") == ENDOFTEXT_ID,
                   f"pad_token_id={gen.get('pad_token_id')}, expected {ENDOFTEXT_ID}")
    if (folder / "tokenizer_config.json").is_file():
        tok = read_json(folder / "tokenizer_config.json")
        report.add(f"{prefix} tokenizer EOS/pad", tok.get("eos_token") == IM_END and tok.get("pad_token") == ENDOFTEXT,
                   f"eos_token={tok.get('eos_token')!r} pad_token={tok.get('pad_token')!r}, expected {IM_END!r} "
                   f"and {ENDOFTEXT!r}")
    if (folder / "tokenizer.json").is_file():
        added = {t.get("id"): t.get("content") for t in read_json(folder / "tokenizer.json").get("added_tokens", [])}
        good = added.get(IM_END_ID) == IM_END and added.get(ENDOFTEXT_ID) == ENDOFTEXT
        report.add(f"{prefix} tokenizer.json special ids", good,
                   f"{IM_END_ID}={added.get(IM_END_ID)!r} {ENDOFTEXT_ID}={added.get(ENDOFTEXT_ID)!r}")
    template = model_template(folder)
    if report.add(f"{prefix} chat template present", bool(template),
                  "found" if template else "no chat_template in tokenizer_config.json: re-run the merge"):
        if expected_template is not None:
            report.add(f"{prefix} chat template = training", template == expected_template,
                       "matches the recipe's template" if template == expected_template
                       else "differs from the template the recipe trained with: re-run the merge")
        jinja = folder / "chat_template.jinja"
        if jinja.is_file() and (folder / "tokenizer_config.json").is_file():
            in_config = read_json(folder / "tokenizer_config.json").get("chat_template")
            report.add(f"{prefix} chat_template.jinja = tokenizer_config", in_config in (None, template),
                       "consistent" if in_config in (None, template) else "two different templates")


def _verify_gguf_dir(report: VerifyReport, folder: Path, manifest: dict[str, Any],
                     expected_template: str | None) -> Path | None:
    ggufs = sorted(folder.glob("*.gguf"))
    gguf = folder / manifest["gguf"] if manifest.get("gguf") else (ggufs[0] if ggufs else None)
    if not report.add(f"{folder.name}: GGUF file", gguf is not None and gguf.is_file(),
                      str(gguf) if gguf and gguf.is_file() else "no .gguf file: re-run `qwenrecipes export gguf`"):
        return None
    assert gguf is not None
    meta = read_gguf_metadata(gguf)
    tokens = meta.get("tokenizer.ggml.tokens") or []
    arch = meta.get("general.architecture")
    report.add("gguf: architecture", arch == "qwen3", f"general.architecture={arch!r}")
    eos, pad = meta.get("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.padding_token_id")
    report.add("gguf: EOS/pad ids", eos == IM_END_ID and pad == ENDOFTEXT_ID,
               f"eos={eos} pad={pad}, expected eos={IM_END_ID} pad={ENDOFTEXT_ID}")
    names = (tokens[IM_END_ID] if len(tokens) > IM_END_ID else None,
             tokens[ENDOFTEXT_ID] if len(tokens) > ENDOFTEXT_ID else None)
    report.add("gguf: special tokens", names == (IM_END, ENDOFTEXT),
               f"{IM_END_ID}={names[0]!r} {ENDOFTEXT_ID}={names[1]!r}")
    template = meta.get("tokenizer.chat_template")
    present = report.add("gguf: chat template present", bool(template), "found" if template else "missing")
    if present and expected_template is not None:
        report.add("gguf: chat template = training", template == expected_template,
                       "matches" if template == expected_template else "differs from the recipe's template")
    quant = manifest.get("quant")
    if quant in GGUF_FILE_TYPES:
        file_type = meta.get("general.file_type")
        report.add("gguf: quant type", file_type == GGUF_FILE_TYPES[quant],
                   f"general.file_type={file_type}, {quant} is {GGUF_FILE_TYPES[quant]}")
    report.measured["gguf_metadata"] = {k: meta.get(k) for k in (
        "general.architecture", "general.file_type", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
        f"{arch}.context_length", "general.sampling.temp", "general.sampling.top_p", "general.sampling.top_k")}
    _verify_modelfile(report, folder, gguf, manifest)
    return gguf


def _verify_modelfile(report: VerifyReport, folder: Path, gguf: Path, manifest: dict[str, Any]) -> None:
    path = folder / MODELFILE
    if not report.add("Modelfile present", path.is_file(), str(path) if path.is_file() else "missing: re-export"):
        return
    text = path.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    from_line = next((line for line in lines if line.startswith("FROM ")), "")
    report.add("Modelfile FROM", from_line == f"FROM ./{gguf.name}", from_line or "no FROM line")
    report.add("Modelfile TEMPLATE", 'TEMPLATE """' in text and "<|im_start|>assistant" in text,
               "ChatML template" if "<|im_start|>" in text else "no ChatML TEMPLATE")
    stops = {line.split(None, 2)[2] for line in lines if line.startswith("PARAMETER stop ")}
    report.add("Modelfile stop tokens", {f'"{IM_END}"', f'"{ENDOFTEXT}"'} <= stops, f"stop {sorted(stops)}")
    ctx = [int(line.split()[2]) for line in lines if line.startswith("PARAMETER num_ctx ")]
    need = int(manifest.get("max_seq_length") or 0)
    report.add("Modelfile num_ctx", bool(ctx) and ctx[0] >= need,
               f"num_ctx={ctx[0] if ctx else None} (trained max_seq_length={need or 'unknown'})")


def _top1_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = list(zip(a, b, strict=False))
    return sum(x[0] == y[0] for x, y in pairs) / max(1, len(pairs))


def _run_spec(name: str, source: Source) -> dict[str, Any]:
    """A `compare` run that loads ``source`` as generate does (adapter unmerged on its base)."""
    if source.kind == "adapter":
        return {"name": name, "model": source.base, "adapter": str(source.path), "dtype": compute_dtype(source)}
    return {"name": name, "model": str(source.path), "dtype": compute_dtype(source)}


def _verify_runtime(report: VerifyReport, model_dir: Path, gguf: Path | None, quant: str | None,
                    manifest: dict[str, Any]) -> None:
    """One prompt through the merged model, the adapter (when known) and the GGUF (when llama-cpp-python is
    there), in one tools process; their top-1 next tokens must agree at every prompt position."""
    try:
        tool = tools()
    except QwenRecipesError as exc:
        report.skipped.append(f"runtime comparison: {exc}")
        return
    model = resolve_source(model_dir)
    runs = [_run_spec("merged", model)]
    adapter = manifest.get("adapter")
    if adapter and Path(adapter).is_dir():
        runs.append(_run_spec("adapter", resolve_source(adapter)))
    else:
        report.skipped.append("adapter vs merged: the adapter folder is unknown or gone")
    if gguf is not None:
        if has_llama_cpp(tool.python):
            runs.append({"name": "gguf", "gguf": str(gguf)})
        else:
            report.skipped.append(f"GGUF runtime comparison: llama-cpp-python is not installed in {tool.python} "
                                  "(install the tools env)")
    with tempfile.TemporaryDirectory(prefix="qr-verify-") as tmp:
        request = Path(tmp) / "request.json"
        write_json(request, {"tokenizer": str(model_dir), "template": inference_chat_template(model.chat_template),
                              "messages": VERIFY_MESSAGES, "thinking": True, "k": 5, "runs": runs})
        result = run_tool(tool, ["compare", "--request", str(request)], what="runtime comparison")
    merged = result["runs"]["merged"]["top"]
    report.measured["positions"] = len(merged)
    if "adapter" in result["runs"]:
        scored = result["runs"]["adapter"]["top"]
        agree = _top1_agreement(scored, merged)
        top5 = sum(set(x) == set(y) for x, y in zip(scored, merged, strict=False)) / max(1, len(merged))
        report.measured.update(adapter_vs_merged_top1=agree, adapter_vs_merged_top5_sets=top5)
        report.add("runtime: adapter = merged (top-1)", agree == 1.0,
                   f"top-1 agreement {agree:.3f} over {len(merged)} positions (top-5 sets {top5:.3f})")
    if "gguf" in result["runs"]:
        run = result["runs"]["gguf"]
        agree = _top1_agreement(run["top"], merged)
        need = GGUF_MIN_AGREEMENT.get(quant or "f16", 0.9)
        report.measured.update(gguf_vs_merged_top1=agree, llama_cpp=run.get("llama_cpp"))
        report.add("runtime: GGUF = merged (top-1)", agree >= need,
                   f"top-1 agreement {agree:.3f} over {len(merged)} positions (need ≥ {need} for {quant})")
        same_ids = run.get("ids") == result["ids"]
        report.add("runtime: GGUF tokenizer = HF tokenizer", same_ids,
                   "same prompt ids" if same_ids else f"llama.cpp tokenizes the prompt differently "
                   f"({len(run.get('ids') or [])} vs {len(result['ids'])} ids)")


def verify_export(path: str | os.PathLike[str], *, runtime: bool = True) -> VerifyReport:
    """Check a merged model folder, a GGUF export folder, or a run dir (its merged/ and gguf/)."""
    folder = Path(path).expanduser()
    report = VerifyReport(folder)
    if not folder.is_dir():
        raise QwenRecipesError(f"{folder} is not a folder: pass a merged model, a GGUF export or a run dir")
    targets = [folder]
    if is_run_dir(folder):
        targets = [p for p in (folder / "merged", folder / "gguf") if p.is_dir()]
        if not targets:
            raise QwenRecipesError(f"{folder} has no merged/ or gguf/ yet: run `qwenrecipes merge {folder}` or "
                                   f"`qwenrecipes export gguf {folder}` first")
    else:
        # `export gguf merged/` writes merged-gguf/ beside it: checked with the model it was made from.
        beside = folder.parent / f"{folder.name}-gguf"
        made_from = read_manifest(beside).get("merged") if beside.is_dir() else None
        if made_from and Path(made_from) == folder.resolve():
            targets.append(beside)
    model_dir: Path | None = None
    gguf: Path | None = None
    quant: str | None = None
    manifest: dict[str, Any] = {}
    for target in targets:
        manifest = read_manifest(target) or manifest
        if any(target.glob("*.gguf")) or read_manifest(target).get("kind") == "gguf":
            gguf_manifest = read_manifest(target)
            name = gguf_manifest.get("chat_template")
            gguf = _verify_gguf_dir(report, target, gguf_manifest, inference_chat_template(name) if name else None)
            quant = gguf_manifest.get("quant")
            merged = gguf_manifest.get("merged")
            if merged and Path(merged).is_dir() and model_dir is None and Path(merged) not in targets:
                model_dir = Path(merged)
                _verify_model_dir(report, model_dir, inference_chat_template(name) if name else None)
        else:
            model_dir = target
            source = resolve_source(target)
            if not source.chat_template_known:
                report.skipped.append("chat template = training: no recipe or manifest says which template "
                                      "was trained; only presence checked")
            expected = inference_chat_template(source.chat_template) if source.chat_template_known else None
            _verify_model_dir(report, target, expected)
    if runtime and model_dir is not None and report.ok:
        _verify_runtime(report, model_dir, gguf, quant, read_manifest(model_dir) or manifest)
    elif runtime and model_dir is None:
        report.skipped.append("runtime comparison: the merged model folder is unknown or gone")
    return report
