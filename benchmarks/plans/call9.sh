# Device call 9 (session 2): Unsloth's run of the memory-aware recipe on a declared, capped 24 GB (cut by call 8's
# deadline). carry: .gpu/qr-wheels .gpu/data .gpu/bundle-unsloth/site.tar.xz
A=benchmarks/recipes/qwen3-4b-lora-2048-auto.yaml; UNS=.gpu/bundle-unsloth/site
b unsloth "$A" auto-24gb-cap24 128x2048 "$UNS" --set hardware.gpu_memory_gb=24 --memory-cap-gb 24
