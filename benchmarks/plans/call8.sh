# Device call 8 (session 2): the memory-aware recipe (checkpointing/Liger left to `auto`) as rendered for a declared
# 24 GB card, run with the allocator capped at 24 GB; the same recipe with the H200's memory detected; and what the
# per-step loss sync costs (logging every 5 steps instead of every step).
# carry: .gpu/qr-wheels .gpu/data .gpu/bundle-{lf,axolotl,unsloth,trl-liger}/site.tar.xz
A=benchmarks/recipes/qwen3-4b-lora-2048-auto.yaml; L=benchmarks/recipes/qwen3-4b-lora-2048.yaml
LF=.gpu/bundle-lf/site; AXO=.gpu/bundle-axolotl/site; UNS=.gpu/bundle-unsloth/site; TRL=.gpu/bundle-trl-liger/site
CAP24="--set hardware.gpu_memory_gb=24 --memory-cap-gb 24"
b llamafactory "$A" auto-24gb-cap24 128x2048 "$LF" $CAP24
b axolotl "$A" auto-24gb-cap24 128x2048 "$AXO" $CAP24
b axolotl "$A" auto-detected 128x2048 "$AXO"
b trl "$A" auto-24gb-cap24 128x2048 "$TRL" $CAP24
b unsloth "$L" lora-nogc-log5 128x2048 "$UNS" --set training.gradient_checkpointing=false \
  --set training.logging_steps=5 --steps 25 --warmup 5
b unsloth "$A" auto-24gb-cap24 128x2048 "$UNS" $CAP24
