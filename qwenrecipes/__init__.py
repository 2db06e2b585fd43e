"""qwenrecipes: one canonical Qwen fine-tuning recipe, rendered for every engine, run and compared."""

__version__ = "0.1.0"
