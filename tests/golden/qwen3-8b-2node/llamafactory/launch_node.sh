#!/usr/bin/env bash
# Per-node launch of qwen3-8b-2node on llamafactory: 2 nodes x 8 processes.
# Run it on every node, from this folder (the same copy on every node, or a shared filesystem), with
#   NODE_RANK    this node's rank, 0 .. 1 (0 on the node at MASTER_ADDR)
#   MASTER_ADDR  the address of node 0, reachable from every node
#   MASTER_PORT  the rendezvous port (default 29500, distributed.master_port)
#   ENGINE_BIN   optional: the llamafactory env's bin/ (else it must be first on PATH)
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
export DISABLE_VERSION_CHECK=1
export FORCE_TORCHRUN=1
export NPROC_PER_NODE=8
export NNODES=2
export PET_LOG_DIR=ranks
export PET_TEE=3
exec python load_tokens.py llamafactory-cli train llamafactory.yaml
