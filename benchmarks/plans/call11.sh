# Device call 11 (issue 14, packing; benchmarks/plans/packing-h200.md): Qwen3-4B random init, LoRA r=16 on the 7
# projections, sdpa, bf16, checkpointing on, micro-batch 4, 15 steps. Per engine: packed (qwenrecipes' bins) and
# unpacked on realistic chat lengths capped at 4096 (lognormal fitted to LMSYS-Chat-1M, qwenrecipes/data/lengths.py),
# then the fixed-length 2,048-token point. Engines that refuse qwenrecipes' bins record the refusal in seconds.
# CPU side first (packing-h200.md): bundles, qr-wheels, data incl. synthetic-4000xlmsys4096-s0.jsonl.gz
# carry: .gpu/qr-wheels .gpu/data .gpu/bundle-trl-liger/site.tar.xz .gpu/bundle-axolotl/site.tar.xz
#        .gpu/bundle-lf/site.tar.xz .gpu/bundle-unsloth/site.tar.xz
#   bash benchmarks/gpu_run.sh benchmarks/plans/call11.sh 575
R=benchmarks/recipes/qwen3-4b-lora-4096.yaml; F=benchmarks/recipes/qwen3-4b-lora-2048.yaml
TRL=.gpu/bundle-trl-liger/site
b trl "$R" packed-lmsys4096 4000xlmsys:4096 "$TRL" --set data.packing=true
b trl "$R" unpacked-lmsys4096 4000xlmsys:4096 "$TRL"
b trl "$F" fixed-2048 128x2048 "$TRL"
b axolotl "$R" packed-lmsys4096 4000xlmsys:4096 .gpu/bundle-axolotl/site --set data.packing=true
b llamafactory "$R" packed-lmsys4096 4000xlmsys:4096 .gpu/bundle-lf/site --set data.packing=true
b unsloth "$R" packed-lmsys4096 4000xlmsys:4096 .gpu/bundle-unsloth/site --set data.packing=true
b axolotl "$R" unpacked-lmsys4096 4000xlmsys:4096 .gpu/bundle-axolotl/site
b llamafactory "$R" unpacked-lmsys4096 4000xlmsys:4096 .gpu/bundle-lf/site
b unsloth "$R" unpacked-lmsys4096 4000xlmsys:4096 .gpu/bundle-unsloth/site
