#!/usr/bin/env bash
# Per-node launch of qwen3-8b-2node on swift: 2 nodes x 8 processes.
# Run it on every node, from this folder (the same copy on every node, or a shared filesystem), with
#   NODE_RANK    this node's rank, 0 .. 1 (0 on the node at MASTER_ADDR)
#   MASTER_ADDR  the address of node 0, reachable from every node
#   MASTER_PORT  the rendezvous port (default 29500, distributed.master_port)
#   ENGINE_BIN   optional: the swift env's bin/ (else it must be first on PATH)
# slurm.sbatch and skypilot.yaml run this script with those set.
set -euo pipefail
cd "$(dirname "$0")"
: "${NODE_RANK:?set NODE_RANK (0..1)}"
: "${MASTER_ADDR:?set MASTER_ADDR (the address of node 0)}"
export NODE_RANK MASTER_ADDR
export MASTER_PORT="${MASTER_PORT:-29500}"
if [ -n "${ENGINE_BIN:-}" ]; then export PATH="$ENGINE_BIN:$PATH"; fi
export AXOLOTL_DO_NOT_TRACK=1
export DO_NOT_TRACK=1
export HF_HUB_DISABLE_TELEMETRY=1
export UNSLOTH_DISABLE_STATISTICS=1
export GRADIO_ANALYTICS_ENABLED=False
export WANDB_MODE=disabled
export USE_HF=1
export TOKENIZERS_PARALLELISM=false
exec torchrun --nproc_per_node=8 --log_dir=ranks --tee=3 --nnodes=2 --rdzv_backend=c10d --rdzv_endpoint="${MASTER_ADDR}":"${MASTER_PORT}" --rdzv_id=qwen3-8b-2node train_swift.py swift_sft.yaml
