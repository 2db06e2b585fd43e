# Device call 1: TRL/PEFT (the vanilla baseline) and Unsloth, qwenrecipes-rendered recipes, seq 2048, mb 4.
# carry: .gpu/qr-wheels .gpu/data .gpu/trl-lite .gpu/bundle-unsloth   (TRL reads datasets/bnb from the unsloth bundle)
L=benchmarks/recipes/qwen3-4b-lora-2048.yaml; Q=benchmarks/recipes/qwen3-4b-qlora-2048.yaml
TRL=.gpu/trl-lite:.gpu/bundle-unsloth/site; UNS=.gpu/bundle-unsloth/site
b trl "$L" lora-gc 128x2048 "$TRL"
b unsloth "$L" lora-gc 128x2048 "$UNS"
b trl "$Q" qlora-gc 128x2048 "$TRL"
b unsloth "$Q" qlora-gc 128x2048 "$UNS"
b unsloth "$L" lora-nogc 128x2048 "$UNS" --set training.gradient_checkpointing=false
b trl "$L" lora-nogc 128x2048 "$TRL" --set training.gradient_checkpointing=false
b trl "$L" lora-nogc-liger 128x2048 "$TRL" --set training.gradient_checkpointing=false --set training.liger_kernel=true
