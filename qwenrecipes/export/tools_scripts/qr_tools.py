"""qwenrecipes' heavy half of merge / generate / export / verify / push, run INSIDE the tools venv.

Standalone on purpose: it imports torch, transformers, peft, llama_cpp and huggingface_hub, none of which
the qwenrecipes package may depend on, and it imports nothing from qwenrecipes (the venv does not have
it). The library (the qwenrecipes.export package) decides everything (paths, templates, dtypes, sampling) and
passes it on the command line; this script only does the tensor work and writes one JSON result to
``--result`` so the caller never has to parse logs.

Subcommands: merge, generate, compare, convert, quantize, push.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

# The tokens every Qwen3 chat turn ends with; generation stops on either.
IM_END_ID = 151645
ENDOFTEXT_ID = 151643

_DTYPES = ("float32", "bfloat16", "float16")


def _write_result(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _load_model(model_dir: str, adapter_dir: str | None, dtype: str) -> Any:
    """The base (or merged) model in ``dtype``, with the adapter attached UNMERGED when one is given,
    so `generate` on an adapter really exercises base + LoRA rather than a merge."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_torch_dtype(dtype))
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model


# ------------------------------------------------------------------------------------------------ merge


def cmd_merge(args: argparse.Namespace) -> None:
    """Merge the LoRA adapter into the base and save sharded safetensors (weights and config only:
    tokenizer files, chat template and generation_config are written by the library, byte-exact)."""
    import torch

    model = _load_model(args.base, args.adapter, args.dtype)
    merged = model.merge_and_unload()
    # transformers writes a generation_config.json from the base; the library overwrites it afterwards.
    merged.save_pretrained(args.out, safe_serialization=True, max_shard_size=args.max_shard_size)
    params = sum(p.numel() for p in merged.parameters())
    _write_result(args.result, {
        "dtype": str(next(merged.parameters()).dtype).replace("torch.", ""),
        "parameters": int(params),
        "torch": torch.__version__,
    })


# --------------------------------------------------------------------------------------------- generate


def _tokenizer(tokenizer_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _prompt_ids(tok: Any, template: str, messages: list[dict[str, str]], thinking: bool) -> list[int]:
    # The template comes from the library (the one matching training), never the tokenizer's own,
    # so the adapter and the merged model see the same prompt whatever their tokenizer_config says.
    text = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True,
                                   enable_thinking=thinking)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def cmd_generate(args: argparse.Namespace) -> None:
    import torch

    tok = _tokenizer(args.tokenizer)
    template = Path(args.template_file).read_text(encoding="utf-8")
    messages = json.loads(Path(args.messages_file).read_text(encoding="utf-8"))
    ids = _prompt_ids(tok, template, messages, args.thinking)
    model = _load_model(args.model, args.adapter, args.dtype)
    torch.manual_seed(args.seed)
    kwargs: dict[str, Any] = {"do_sample": not args.greedy}
    if not args.greedy:
        kwargs.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    else:
        # generation_config.json may carry sampling values; greedy must not warn about or use them.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=args.max_new_tokens, eos_token_id=[IM_END_ID, ENDOFTEXT_ID],
            pad_token_id=ENDOFTEXT_ID, **kwargs,
        )
    new = [int(t) for t in out[0][len(ids):]]
    _write_result(args.result, {
        "prompt_ids": ids,
        "tokens": new,
        "text": tok.decode(new, skip_special_tokens=True),
        "stopped_on_eos": bool(new) and new[-1] in (IM_END_ID, ENDOFTEXT_ID),
    })


# ------------------------------------------------------------------------------------------------ score


def _top(row: Any, k: int) -> list[int]:
    import numpy as np

    row = np.asarray(row, dtype=np.float64)
    return [int(i) for i in np.argsort(-row, kind="stable")[:k]]


def _without_extra_buffer_types() -> None:
    """Load GGUFs without llama.cpp's "extra buffer types" (weight repacking for AMX / AVX kernels).
    A native build on a Xeon that advertises AMX uses AMX for q8_0/q4_K matmuls, and where the VM does not
    really enable AMX that dies with SIGILL (seen on our CI-class machines). The check compares numbers;
    it needs no repacked kernels."""
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params() -> Any:
        value = default()
        value.use_extra_bufts = False
        return value

    low.llama_model_default_params = params


def _gguf_top(path: str, ids: list[int], text: str, k: int) -> dict[str, Any]:
    import llama_cpp

    _without_extra_buffer_types()
    llm = llama_cpp.Llama(model_path=path, n_ctx=max(64, len(ids) + 8), logits_all=True, verbose=False,
                          n_threads=max(1, min(4, os.cpu_count() or 1)), seed=0)
    llm.eval(ids)
    return {
        "top": [_top(llm.scores[i], k) for i in range(len(ids))],
        # llama.cpp's own tokenizer on the same text: proves the GGUF vocab, merges and pre-tokenizer work.
        "ids": [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)],
        "llama_cpp": llama_cpp.__version__,
    }


def cmd_compare(args: argparse.Namespace) -> None:
    """One prompt through several runtimes (HF model, base + adapter, GGUF) in one process: the top-k
    next-token ids at every prompt position from each, for the library to compare."""
    import torch

    request = json.loads(Path(args.request).read_text(encoding="utf-8"))
    tok = _tokenizer(request["tokenizer"])
    text = tok.apply_chat_template(request["messages"], chat_template=request["template"], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=request.get("thinking", True))
    ids = [int(t) for t in tok(text, add_special_tokens=False)["input_ids"]]
    k = int(request.get("k", 5))
    result: dict[str, Any] = {"text": text, "ids": ids, "runs": {}}
    for run in request["runs"]:
        if run.get("gguf"):
            result["runs"][run["name"]] = _gguf_top(run["gguf"], ids, text, k)
            continue
        model = _load_model(run["model"], run.get("adapter"), run.get("dtype", "float32"))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        result["runs"][run["name"]] = {"top": [_top(logits[i].numpy(), k) for i in range(len(ids))]}
        del model
    _write_result(args.result, result)


# ---------------------------------------------------------------------------------------------- convert


def _without_sentencepiece(converter: Path) -> None:
    """Let the converter run where sentencepiece is not installed (the trl env). Qwen3 tokenizers are BPE
    (vocab.json + merges.txt): the converter's Qwen path imports SentencePieceProcessor before it looks for a
    tokenizer.model, then falls back to BPE on FileNotFoundError. We raise that FileNotFoundError first when
    there is no tokenizer.model, so the import never happens; a model that has one still needs the package."""
    try:
        import sentencepiece  # noqa: F401

        return
    except ImportError:
        pass
    sys.path.insert(0, str(converter / "gguf-py"))
    import conversion.base as base  # the same module object the script imports below

    original = base.TextModel._create_vocab_sentencepiece

    def create_vocab(self: Any) -> Any:
        if not (Path(self.dir_model) / "tokenizer.model").is_file():
            raise FileNotFoundError(f"File not found: {Path(self.dir_model) / 'tokenizer.model'}")
        return original(self)

    base.TextModel._create_vocab_sentencepiece = create_vocab


def cmd_convert(args: argparse.Namespace) -> None:
    """llama.cpp's convert_hf_to_gguf.py, run in this process as __main__ with our arguments."""
    converter = Path(args.converter)
    # The script puts its own gguf-py first on sys.path; its `conversion` package sits next to it.
    sys.path.insert(0, str(converter))
    _without_sentencepiece(converter)
    sys.argv = [str(converter / "convert_hf_to_gguf.py"), args.model, "--outfile", args.outfile,
                "--outtype", args.outtype, "--model-name", args.name]
    try:
        runpy.run_path(str(converter / "convert_hf_to_gguf.py"), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    if not Path(args.outfile).is_file():
        sys.exit(f"the converter wrote no {args.outfile}")
    _write_result(args.result, {"outfile": args.outfile, "bytes": Path(args.outfile).stat().st_size})


# --------------------------------------------------------------------------------------------- quantize


def cmd_quantize(args: argparse.Namespace) -> None:
    import llama_cpp

    ftypes = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[args.ftype]
    params.nthread = max(1, os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(args.src.encode("utf-8"), args.dst.encode("utf-8"), params)
    if rc != 0:
        sys.exit(f"llama_model_quantize returned {rc}")
    _write_result(args.result, {"llama_cpp": llama_cpp.__version__, "ftype": args.ftype})


# ------------------------------------------------------------------------------------------------- push


def cmd_push(args: argparse.Namespace) -> None:
    from huggingface_hub import HfApi

    # The token is read from the environment by the library's caller and passed on only through it:
    # never on the command line (visible in ps) and never written to disk.
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    api = HfApi(token=token)
    api.create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=args.folder, repo_id=args.repo_id, repo_type="model",
                             commit_message=args.message)
    _write_result(args.result, {"url": str(getattr(info, "commit_url", info))})


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qr_tools")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("merge")
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=_DTYPES, required=True)
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("generate")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--template-file", required=True)
    p.add_argument("--messages-file", required=True)
    p.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--model", required=True)
    p.add_argument("--adapter")
    p.add_argument("--dtype", choices=_DTYPES, default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("compare")
    p.add_argument("--request", required=True)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("convert")
    p.add_argument("--converter", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--outfile", required=True)
    p.add_argument("--outtype", choices=("f16", "q8_0", "bf16", "f32"), required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("quantize")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--ftype", choices=("q4_k_m", "q8_0"), required=True)
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("push")
    p.add_argument("--folder", required=True)
    p.add_argument("--repo-id", required=True)
    p.add_argument("--private", action="store_true")
    p.add_argument("--message", default="Upload with qwenrecipes")
    p.add_argument("--result", required=True)
    p.set_defaults(func=cmd_push)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
