# Device call 5: Axolotl without gradient checkpointing, rendered (fused LoRA kernels off) and with Axolotl's
# fused LoRA kernels on (its own default; rendered off so every engine runs the same PEFT maths).
# carry: .gpu/qr-wheels .gpu/data .gpu/bundle-axolotl
L=benchmarks/recipes/qwen3-4b-lora-2048.yaml
AXO=.gpu/bundle-axolotl/site
b axolotl "$L" lora-nogc-kernels 128x2048 "$AXO" --set training.gradient_checkpointing=false \
  --patch-config lora_mlp_kernel=true --patch-config lora_qkv_kernel=true --patch-config lora_o_kernel=true
b axolotl "$L" lora-nogc 128x2048 "$AXO" --set training.gradient_checkpointing=false
