"""`validate --native` for Unsloth: it cannot even be imported without a GPU, so its script gets a static check
here instead: it compiles and calls only what the template writes."""

from __future__ import annotations

import ast
from pathlib import Path

# The calls the template writes; anything else in the script means it was not ours.
UNSLOTH_CALLS = {
    "os.environ.setdefault", "argparse.ArgumentParser", "cli.add_argument", "cli.parse_args", "int",
    "os.environ.get", "SystemExit", "FastLanguageModel.from_pretrained", "getattr", "FastLanguageModel.get_peft_model",
    "load_dataset", "SFTConfig", "SFTTrainer", "train_on_responses_only", "trainer.train", "trainer.save_model",
    "main", "BitsAndBytesConfig", "DataCollatorForLanguageModeling",
}


def static_check(folder: Path) -> str | None:
    script = folder / "train_unsloth.py"
    text = script.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text)
        compile(tree, str(script), "exec")
    except SyntaxError as exc:
        return f"train_unsloth.py does not compile: {exc}"
    names = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    unexpected = sorted(names - UNSLOTH_CALLS)
    return f"unexpected calls in train_unsloth.py: {', '.join(unexpected)}" if unexpected else None


# Unsloth does not import on every host (CUDA path): a static check of the script, run here. BaseEngine.native_check()
# finds it by this name.
NATIVE_CHECK = static_check
