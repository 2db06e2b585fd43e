"""What an offline bundle of the unsloth env carries (`qwenrecipes env bundle unsloth`, bench/bundle.py)."""

from qwenrecipes.engines.base import BundleSpec

BUNDLE = BundleSpec(
    packages=("unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "trl==1.15.0", "datasets==4.8.5", "dill==0.4.1",
              "multiprocess==0.70.19", "bitsandbytes==0.50.2", "cut_cross_entropy==25.1.1", "torchao==0.18.0",
              "tyro==1.0.17", "docstring_parser==0.18.0", "typeguard==4.6.1", "shtab==1.13.0",
              "msgspec==0.22.0", "pydantic==2.14.4", "pydantic_core==2.50.5", "annotated_types==0.8.0",
              "typing_inspection==0.4.5", "typing_extensions==4.16.0", "json5==0.17.3", "nest_asyncio==1.6.0",
              "structlog==26.1.0", "wheel==0.48.0", "certifi==2026.10.19.post1"),
    trims=("studio", "torchao/_C*.so"),
    notes="unsloth's Studio web app (82 MB) is not used for training",
)
