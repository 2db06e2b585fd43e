"""Runs inside an engine env (transformers installed): the official template rendered by transformers itself.

usage: python render_with_transformers.py CASES.json TEMPLATE.jinja MODEL_DIR OUT.json
CASES.json: [{"messages": [...], "tools": [...]}]. Writes, per case, the text apply_chat_template renders (default
enable_thinking, no generation prompt) with the shipped template and with the model dir's own template, and the ids
transformers' tokenizer gives the shipped rendering."""

import json
import sys
from pathlib import Path

import transformers
from transformers import AutoTokenizer

cases_path, template_path, model_dir, out_path = sys.argv[1:5]
cases = json.loads(Path(cases_path).read_text(encoding="utf-8"))
template = Path(template_path).read_text(encoding="utf-8")
tokenizer = AutoTokenizer.from_pretrained(model_dir)
own = tokenizer.chat_template
out = []
for case in cases:
    kwargs = {"tools": case["tools"] or None, "tokenize": False}
    text = tokenizer.apply_chat_template(case["messages"], chat_template=template, **kwargs)
    own_text = tokenizer.apply_chat_template(case["messages"], chat_template=own, **kwargs)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out.append({"text": text, "own_template_text": own_text, "ids": ids})
Path(out_path).write_text(json.dumps({"transformers": transformers.__version__, "rows": out}), encoding="utf-8")
