# Device call 2: Axolotl (rendered; then its fused LoRA kernels patched on, as a renderer experiment), TRL tuning
# (Liger), the long-context point and the 24 GB cap check.
# carry: .gpu/qr-wheels .gpu/data .gpu/bundle-axolotl .gpu/trl-nobnb
L=benchmarks/recipes/qwen3-4b-lora-2048.yaml; Q=benchmarks/recipes/qwen3-4b-qlora-2048.yaml
LONG=benchmarks/recipes/qwen3-4b-lora-8192.yaml
AXO=.gpu/bundle-axolotl/site; TRL=.gpu/trl-nobnb
NOGC="--set training.gradient_checkpointing=false"
b axolotl "$L" lora-gc 128x2048 "$AXO"
b axolotl "$Q" qlora-gc 128x2048 "$AXO"
b axolotl "$L" lora-nogc 128x2048 "$AXO" $NOGC
b trl "$L" lora-nogc-liger 128x2048 "$TRL" $NOGC --set training.liger_kernel=true
b trl "$LONG" lora-8192-gc 32x8192 "$TRL"
b axolotl "$L" lora-nogc-lorakernels 128x2048 "$AXO" $NOGC --patch-config lora_mlp_kernel=true --patch-config lora_qkv_kernel=true --patch-config lora_o_kernel=true
b trl "$L" lora-gc-cap24 128x2048 "$TRL" --memory-cap-gb 24
