# Device call 7 (session 2): Liger for LLaMA-Factory and Axolotl without checkpointing (bundles now carry the whole
# transformers: Liger imports ~20 model families' modeling files), and Unsloth with the fused AdamW.
# carry: .gpu/qr-wheels .gpu/data .gpu/bundle-{lf,axolotl,unsloth}/site.tar.xz
L=benchmarks/recipes/qwen3-4b-lora-2048.yaml
LF=.gpu/bundle-lf/site; AXO=.gpu/bundle-axolotl/site; UNS=.gpu/bundle-unsloth/site
NOGC="--set training.gradient_checkpointing=false"
b llamafactory "$L" lora-nogc-liger 128x2048 "$LF" $NOGC --set training.liger_kernel=true
b axolotl "$L" lora-nogc-kernels-liger 128x2048 "$AXO" $NOGC --set training.liger_kernel=true
b unsloth "$L" lora-nogc-fusedadamw 128x2048 "$UNS" $NOGC --set training.optimizer=adamw_torch_fused
b llamafactory "$L" lora-nogc-liger-fusedadamw 128x2048 "$LF" $NOGC --set training.liger_kernel=true --set training.optimizer=adamw_torch_fused
