# Device call 3: Axolotl, qwenrecipes-rendered (bundle with stub model packages: see NOTES.md, call 2 failure).
# carry: .gpu/qr-wheels .gpu/data .gpu/bundle-axolotl
L=benchmarks/recipes/qwen3-4b-lora-2048.yaml; Q=benchmarks/recipes/qwen3-4b-qlora-2048.yaml
AXO=.gpu/bundle-axolotl/site
b axolotl "$L" lora-gc 128x2048 "$AXO"
b axolotl "$Q" qlora-gc 128x2048 "$AXO"
b axolotl "$L" lora-nogc 128x2048 "$AXO" --set training.gradient_checkpointing=false
