# Device call 12: what calls 10 and 11 could not finish (benchmarks/README.md, "Packing on one H200").
# 1. LLaMA-Factory's two issue-14 points. In call 11 both died at once: the token handoff runs
#    `python load_tokens.py llamafactory-cli train ...` and bench's host_argv (qwenrecipes/bench/launch.py) rewrites
#    only the leading `python`, so load_tokens.py execvp's `llamafactory-cli`, which an offline bundle does not have
#    (FileNotFoundError). Work-around here, not in qwenrecipes: a `llamafactory-cli` on PATH that runs the module.
# 2. The fixed-2048 point (issue 14's "packed >= 85% of its own fixed-length tok/s") for the two engines that gained a
#    path for qwenrecipes' bins after call 11's plan was written (Axolotl 4fb5a87, LLaMA-Factory c4b32ba); call 11
#    measured it for TRL only.
# 3. Call 10's ms-swift rows. Its first try died preparing the model: the swift bundle's trim
#    (qwenrecipes/engines/swift/bundle.py keep_modeling=("qwen3",)) deletes transformers/models/auto/modeling_auto.py,
#    so `from transformers import AutoModelForCausalLM` fails; the carried bundle had every modeling_*.py put back
#    from the transformers 5.19.0 wheel (then re-compressed) before this call.
# Both were fixed in qwenrecipes afterwards (commit 9877304): the shim below is harmless but no longer needed, and a
# bundle from `qwenrecipes env bundle swift` now keeps transformers/models/auto.
# 4. TRL packed again: since call 11 the rendered train_trl.py keeps the bins side by side under sdpa (BinsSideBySide),
#    as Axolotl does, instead of TRL's one flattened 16k row (3.25k tok/s in call 11); target: >= 2.5x its unpacked
#    1.79k and >= 85% of its fixed-2048 7.66k (call 11's points, same bundle).
#    ms-swift's packed row below also keeps the bins side by side now (the bins template's collator).
# carry: .gpu/qr-wheels .gpu/data .gpu/bundle-lf/site.tar.xz .gpu/bundle-axolotl/site.tar.xz .gpu/bundle-swift/site.tar.xz
#        .gpu/bundle-trl-liger/site.tar.xz
#   bash benchmarks/gpu_run.sh benchmarks/plans/call12.sh 330
# Not run: 2026-12-05, five starts refused ("no device machine could be started right now") until device time ran out.
mkdir -p /tmp/qrbin && printf '#!/bin/sh\nexec python3 -m llamafactory.cli "$@"\n' > /tmp/qrbin/llamafactory-cli
chmod +x /tmp/qrbin/llamafactory-cli && export PATH="/tmp/qrbin:$PATH"
R=benchmarks/recipes/qwen3-4b-lora-4096.yaml; L=benchmarks/recipes/qwen3-4b-lora-2048.yaml
A=benchmarks/recipes/qwen3-4b-lora-2048-auto.yaml; SWIFT=.gpu/bundle-swift/site
b trl "$R" packed-lmsys4096 4000xlmsys:4096 .gpu/bundle-trl-liger/site --set data.packing=true
b llamafactory "$R" packed-lmsys4096 4000xlmsys:4096 .gpu/bundle-lf/site --set data.packing=true
b llamafactory "$R" unpacked-lmsys4096 4000xlmsys:4096 .gpu/bundle-lf/site
b axolotl "$L" fixed-2048 128x2048 .gpu/bundle-axolotl/site
b llamafactory "$L" fixed-2048 128x2048 .gpu/bundle-lf/site
b swift "$R" packed-lmsys4096 4000xlmsys:4096 "$SWIFT" --set data.packing=true
b swift "$L" lora-gc 128x2048 "$SWIFT"
b swift "$L" lora-nogc 128x2048 "$SWIFT" --set training.gradient_checkpointing=false
b swift "$A" auto-24gb-cap24 128x2048 "$SWIFT" --set hardware.gpu_memory_gb=24 --memory-cap-gb 24
b swift "$R" unpacked-lmsys4096 4000xlmsys:4096 "$SWIFT"
