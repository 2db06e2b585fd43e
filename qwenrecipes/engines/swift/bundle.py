"""What an offline bundle of the swift env carries (`qwenrecipes env bundle swift`, bench/bundle.py): ms-swift and
the packages of its training path a GPU host with torch lacks. ms-swift imports modelscope at start-up even with
USE_HF=1, its trainers import trl, and it caps transformers < 5.20, so its own transformers travels (trimmed to the
Qwen3 modeling file; --host-has FREEZE skips whatever the host already has at these versions)."""

from qwenrecipes.engines.base import BundleSpec

BUNDLE = BundleSpec(
    packages=("ms_swift==4.6.0", "modelscope==1.40.2", "modelscope-hub==0.5.1", "transformers==5.19.0",
              "tokenizers==0.23.3", "huggingface_hub==1.33.0", "peft==0.20.0", "accelerate==1.16.0", "trl==0.29.1",
              "datasets==4.8.4", "dill==0.4.1", "multiprocess==0.70.19", "fsspec==2026.2.0", "addict==2.4.0",
              "attrdict==2.0.1", "binpacking==2.0.1", "dacite==1.9.2", "json_repair==0.64.6",
              "lazy-importer==0.1.0", "simplejson==4.3.0", "sortedcontainers==2.4.0", "zstandard==0.25.0",
              "bitsandbytes==0.50.2"),
    sdists=("transformers-stream-generator==0.0.5",),  # no wheel on PyPI
    trims=("transformers/models/**/modular_*.py",),
    keep_modeling=("qwen3",),
    notes="torch, triton, pyarrow, xxhash, numpy from the host; transformers 5.19 travels (swift caps it < 5.20)",
)
