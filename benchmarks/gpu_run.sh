#!/usr/bin/env bash
# Both model benchmarks on one GPU, at Gemma 2B size (full model, bfloat16 weights and compute):
#   training step: batch 8 x seq 1024, AdamW, transformers eager + sdpa vs ours;
#   decoding:      batch 8, 128-token prompts, 128 new tokens, greedy with KV cache.
# Writes logs and JSON results to $OUT (or out/model_benchmarks_gpu). Took 217 s on an H200 (139 GiB);
# not yet run on an H100 (78 GiB), where the batch-8 training step may be tight: lower --batch_size there.
# Needs only python3 with jax[cuda], flax, optax, torch (CUDA), transformers, safetensors, numpy, ml_dtypes.
#
#   bash benchmarks/gpu_run.sh            # PYTHON=... to pick the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DIR=${OUT:-out/model_benchmarks_gpu}
mkdir -p "$DIR"
export PYTHONUNBUFFERED=1
# The 2B model with the released checkpoints' vocabulary (256000 rows).
MODEL=(--config gemma_2b --override vocab_size=256000 --dtype bfloat16)

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c "import jax, torch; print(jax.devices(), torch.cuda.get_device_name(0))"; } 2>&1 | tee "$DIR/gpu.txt"

"$PY" -m benchmarks.model_train_step "${MODEL[@]}" --batch_size 8 --seq_len 1024 \
    --warmup 2 --steps 5 --repeats 2 --json "$DIR/train_2b_bf16.json" 2>&1 | tee "$DIR/train_2b_bf16.log"

"$PY" -m benchmarks.model_decode "${MODEL[@]}" --batch_size 8 --seq_len 128 --new_tokens 128 \
    --repeats 3 --json "$DIR/decode_2b_bf16.json" 2>&1 | tee "$DIR/decode_2b_bf16.log"
