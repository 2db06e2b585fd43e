# Device call 10: ms-swift 4.6.0 (engine `swift`) at the shape of every other engine's row: Qwen3-4B random init,
# LoRA r=16 on the 7 projections, seq 2048 x micro-batch 4, sdpa, bf16, adamw_torch, 15 steps; checkpointing on and
# off, then the memory-aware `auto` recipe capped at 24 GB (calibrates swift's memory profile, uncalibrated so far).
# CPU side first: qwenrecipes env bundle swift --python 3.12 [--host-has FREEZE] -o .gpu/bundle-swift
# carry: .gpu/qr-wheels .gpu/data .gpu/bundle-swift/site.tar.xz
#   bash benchmarks/gpu_run.sh benchmarks/plans/call10.sh 560
# Run 2026-12-05: every swift point failed before training (the bundle trim deleted transformers' modeling_auto.py;
# benchmarks/results/h200-swift/call10-output.txt); call12.sh repeats these rows with the bundle repaired.
L=benchmarks/recipes/qwen3-4b-lora-2048.yaml; A=benchmarks/recipes/qwen3-4b-lora-2048-auto.yaml
SWIFT=.gpu/bundle-swift/site
b swift "$L" lora-gc 128x2048 "$SWIFT"
b swift "$L" lora-nogc 128x2048 "$SWIFT" --set training.gradient_checkpointing=false
b swift "$A" auto-24gb-cap24 128x2048 "$SWIFT" --set hardware.gpu_memory_gb=24 --memory-cap-gb 24
# Issue 14 (packing-h200.md): swift's unpacked baseline on the realistic mix, run in this call because the swift
# bundle (17 MiB xz) does not fit call 11's carry beside the other four engines (47 MiB + the tree, 64 MiB limit).
b swift benchmarks/recipes/qwen3-4b-lora-4096.yaml unpacked-lmsys4096 4000xlmsys:4096 "$SWIFT"
b swift benchmarks/recipes/qwen3-4b-lora-4096.yaml packed-lmsys4096 4000xlmsys:4096 "$SWIFT" --set data.packing=true
