"""After training: merge the adapter, try the model, export to GGUF + Ollama, verify, push.

Everything here is checked rather than hoped: the merged folder gets the four Qwen3 tokenizer files copied
byte for byte (transformers 5's ``save_pretrained`` writes only tokenizer.json, a known cause of broken
exports), a chat template that matches training, and a generation_config that stops on ``<|im_end|>``;
``verify.verify_export`` re-reads every file (GGUF metadata included, with a pure-Python reader) and, when the
tools env is installed, runs one prompt through the adapter, the merged model and the GGUF and compares
their top tokens.

The tensor work runs in another interpreter (the "tools" env: torch, transformers, peft and optionally
llama-cpp-python) through ``tools_scripts/qr_tools.py``; this package never imports torch.

Modules: ``source`` (what RUN_OR_DIR points at), ``templates`` (chat template + Ollama Modelfile), ``tools_env``
(the tools interpreter), ``merge``, ``generate``, ``converter`` (llama.cpp's HF->GGUF converter, pinned),
``gguf`` (export), ``readers`` (GGUF metadata, safetensors headers), ``verify``, ``push``.
"""
