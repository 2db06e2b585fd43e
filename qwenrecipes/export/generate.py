"""`qwenrecipes generate`: one sampled answer from an adapter (unmerged on its base) or a model folder, through
the chat template matching training."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qwenrecipes.export.source import Source, SourceKind, compute_dtype, resolve_source, tokenizer_source, write_json
from qwenrecipes.export.templates import inference_chat_template, sampling_for
from qwenrecipes.export.tools_env import run_tool, tools


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: list[int]
    prompt_ids: list[int]
    stopped_on_eos: bool
    kind: SourceKind


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


def _model_args(source: Source) -> list[str]:
    """qr_tools.py arguments that load RUN_OR_DIR: the base with the adapter unmerged, or the model."""
    if source.kind == "adapter":
        assert source.base is not None
        return ["--model", source.base, "--adapter", str(source.path), "--dtype", compute_dtype(source)]
    return ["--model", str(source.path), "--dtype", compute_dtype(source)]


def generation_warnings(*, greedy: bool, thinking: bool) -> list[str]:
    """Doctor rule: Qwen3's model card warns that greedy decoding in thinking mode degrades into endless
    repetition; it is allowed only when asked for, and then said out loud."""
    if greedy and thinking:
        return ["greedy decoding in thinking mode: Qwen3 tends to repeat itself endlessly; drop --greedy "
                "(Qwen3's thinking-mode sampling: temperature 0.6 / top_p 0.95 / top_k 20) or use --no-thinking"]
    return []


def generate(path: str | os.PathLike[str], prompt: str, *, system: str | None = None, thinking: bool = True,
             seed: int = 0, max_new_tokens: int = 256, greedy: bool = False) -> Generation:
    """Sample one answer from the adapter (base + adapter, unmerged) or a model folder, through the chat
    template matching training. Sampling is Qwen3's published setting for the mode (thinking 0.6 / 0.95 / 20,
    non-thinking 0.7 / 0.8 / 20), greedy only on request: Qwen3 in thinking mode loops when decoded greedily."""
    source = resolve_source(path)
    sampling = sampling_for(source.chat_template, thinking=thinking)
    tool = tools()
    with tempfile.TemporaryDirectory(prefix="qr-gen-") as tmp:
        template_file, messages_file = Path(tmp) / "template.jinja", Path(tmp) / "messages.json"
        template_file.write_text(inference_chat_template(source.chat_template), encoding="utf-8")
        write_json(messages_file, _messages(prompt, system))
        args = ["generate", *_model_args(source), "--tokenizer", str(tokenizer_source(source)),
                "--template-file", str(template_file), "--messages-file", str(messages_file),
                "--thinking" if thinking else "--no-thinking", "--seed", str(seed),
                "--max-new-tokens", str(max_new_tokens), "--temperature", str(sampling["temperature"]),
                "--top-p", str(sampling["top_p"]), "--top-k", str(sampling["top_k"])]
        if greedy:
            args.append("--greedy")
        data = run_tool(tool, args, what="generate")
    return Generation(str(data["text"]), list(data["tokens"]), list(data["prompt_ids"]),
                      bool(data["stopped_on_eos"]), source.kind)
