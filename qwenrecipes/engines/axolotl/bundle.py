"""What an offline bundle of the axolotl env carries (`qwenrecipes env bundle axolotl`, bench/bundle.py)."""

from qwenrecipes.engines.base import BundleSpec

BUNDLE = BundleSpec(
    packages=("axolotl==0.19.0", "transformers==5.16.1", "peft==0.20.0", "trl==1.9.0", "datasets==4.8.4",
              "dill==0.4.1", "multiprocess==0.70.19", "fsspec==2025.10.0", "pydantic==2.12.5",
              "pydantic_core==2.41.5", "annotated_types==0.8.0", "typing_inspection==0.4.5",
              "typing_extensions==4.15.0", "addict==2.4.0", "fire==0.7.1", "termcolor==3.3.0",
              "python-dotenv==1.0.1", "posthog==6.7.11", "backoff==2.2.1", "distro==1.9.0", "fastcore==2.2.41",
              "evaluate==0.4.1", "wandb==0.31.0", "platformdirs==4.14.8", "opentelemetry-api==1.45.2",
              "bitsandbytes==0.50.2", "torchao==0.17.0", "liger_kernel==0.8.1"),
    sdists=("axolotl-contribs-lgpl==0.0.7",),
    trims=("wandb/bin", "torchao/_C*.so", "torchao/_models", "torchao/csrc", "transformers/models/**/modular_*.py"),
    notes="accelerate, huggingface_hub, tokenizers, torch, triton from the host; transformers whole (Liger)",
)
