# Device call 6 (session 2): Liger for LLaMA-Factory and Axolotl without checkpointing, where an Unsloth step goes
# (kernel profile), which sdpa backend is fastest here, and Unsloth on it if it wins.
# carry: .gpu/qr-wheels .gpu/data .gpu/xz (bundle-lf, bundle-axolotl, bundle-unsloth, trl-nobnb as .tar.xz)
L=benchmarks/recipes/qwen3-4b-lora-2048.yaml
LF=.gpu/bundle-lf/site; AXO=.gpu/bundle-axolotl/site; UNS=.gpu/bundle-unsloth/site; TRL=.gpu/trl-nobnb
NOGC="--set training.gradient_checkpointing=false"
timeout 90 python3 benchmarks/attention_backends.py --out "$OUT/attention_backends.json" 2>&1 | tail -8
b llamafactory "$L" lora-nogc-liger 128x2048 "$LF" $NOGC --set training.liger_kernel=true
b axolotl "$L" lora-nogc-kernels-liger 128x2048 "$AXO" $NOGC --set training.liger_kernel=true
QWENRECIPES_BENCH_PROFILE=8:2 b unsloth "$L" lora-nogc-profiled 128x2048 "$UNS" $NOGC
# cuDNN attention first, if it beat the default (flash) on the expanded-KV call Unsloth makes.
if python3 - "$OUT/attention_backends.json" <<'PY'
import json, sys
rows = {(r["backend"], r["kv"]): r.get("ms_per_call") for r in json.load(open(sys.argv[1]))["rows"]}
c, f = rows.get(("cudnn", "expanded to 32 heads")), rows.get(("flash", "expanded to 32 heads"))
sys.exit(0 if c and f and c < 0.9 * f else 1)
PY
then
  QWENRECIPES_BENCH_SDPA_PRIORITY=cudnn,flash,efficient,math b unsloth "$L" lora-nogc-cudnn 128x2048 "$UNS" $NOGC
  QWENRECIPES_BENCH_SDPA_PRIORITY=cudnn,flash,efficient,math b axolotl "$L" lora-nogc-kernels-liger-cudnn 128x2048 "$AXO" $NOGC --set training.liger_kernel=true
fi
QWENRECIPES_BENCH_PROFILE=8:2 b trl "$L" lora-nogc-liger-profiled 128x2048 "$TRL" $NOGC --set training.liger_kernel=true
