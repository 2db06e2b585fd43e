"""What an offline bundle of the swift env carries (`qwenrecipes env bundle swift`, bench/bundle.py): ms-swift and
the pure-Python packages of its training path that a GPU host with torch, transformers, peft and accelerate lacks.
ms-swift imports modelscope at start-up even with USE_HF=1, and its trainers import trl."""

from qwenrecipes.engines.base import BundleSpec

BUNDLE = BundleSpec(
    packages=("ms_swift==4.6.0", "modelscope==1.40.2", "modelscope-hub==0.5.1", "trl==0.29.1", "datasets==4.8.4",
              "dill==0.4.1", "multiprocess==0.70.19", "addict==2.4.0", "attrdict==2.0.1", "binpacking==2.0.1",
              "dacite==1.9.2", "json_repair==0.64.6", "lazy-importer==0.1.0", "simplejson==4.3.0",
              "sortedcontainers==2.4.0", "transformers-stream-generator==0.0.5", "zstandard==0.25.0",
              "bitsandbytes==0.50.2"),
    notes="transformers 5.19 (swift caps <5.20), peft, accelerate, torch, pyarrow, fsspec, xxhash from the host",
)
