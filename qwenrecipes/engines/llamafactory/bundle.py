"""What an offline bundle of the llamafactory env carries (`qwenrecipes env bundle llamafactory`, bench/bundle.py)."""

from qwenrecipes.engines.base import BundleSpec

BUNDLE = BundleSpec(
    packages=("llamafactory==0.9.5", "transformers==5.6.0", "tokenizers==0.22.2", "peft==0.18.1",
              "accelerate==1.11.0", "trl==0.24.0", "datasets==4.0.0", "dill==0.3.8", "multiprocess==0.70.16",
              "fsspec==2025.3.0", "omegaconf==2.4.0", "bitsandbytes==0.50.2",
              "liger_kernel==0.8.5"),
    trims=("llamafactory/webui", "transformers/models/**/modular_*.py"),
    notes="transformers travels whole: Liger imports ~20 model families' modeling files at import",
)
