# Device call 4: LLaMA-Factory, qwenrecipes-rendered.
# carry: .gpu/qr-wheels .gpu/data .gpu/bundle-lf
L=benchmarks/recipes/qwen3-4b-lora-2048.yaml; Q=benchmarks/recipes/qwen3-4b-qlora-2048.yaml
LF=.gpu/bundle-lf/site
b llamafactory "$L" lora-gc 128x2048 "$LF"
b llamafactory "$Q" qlora-gc 128x2048 "$LF"
b llamafactory "$L" lora-nogc 128x2048 "$LF" --set training.gradient_checkpointing=false
