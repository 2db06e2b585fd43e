"""What an offline bundle of the trl env carries (`qwenrecipes env bundle trl`, bench/bundle.py)."""

from qwenrecipes.engines.base import BundleSpec

BUNDLE = BundleSpec(
    packages=("trl==1.9.0", "datasets==4.8.5", "dill==0.4.1", "multiprocess==0.70.19", "bitsandbytes==0.50.2",
              "liger_kernel==0.8.5"),
    notes="transformers, peft, accelerate, torch, triton, pyarrow, fsspec, xxhash from the host",
)
