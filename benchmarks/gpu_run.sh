#!/usr/bin/env bash
# Prepared for a task that is lent a GPU (none has run it with the pinned versions yet; see
# docs/model_benchmarks.md). Gemma 2B (vocab 256000, bfloat16 weights and compute), measured with
# benchmarks/harness.py: each side in its own process, interleaved, 7 timed pairs, results as JSON.
#   training step: batch 8 x seq 1024, AdamW, ours vs transformers sdpa (+ eager);
#   decoding:      batch 8, 128-token prompts, 128 new tokens, greedy, KV cache; transformers with
#                  sdpa + dynamic cache and sdpa + static cache + torch.compile.
# Then MFU of each training side from its tokens/s: model FLOPs per token = 6 N + 12 L H Q T
# (N all parameters, tied embedding; L layers, H heads, Q head dim, T sequence length), against
# the GPU's dense bf16 peak (benchmarks/train_throughput.py's table, or PEAK_TFLOPS=...).
# Needs python3 with jax[cuda], flax, optax, torch (CUDA), transformers, safetensors, numpy.
#
#   OUT=benchmarks/results bash benchmarks/gpu_run.sh     # PYTHON=... to pick the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DIR=${OUT:-benchmarks/results}
mkdir -p "$DIR"
export PYTHONUNBUFFERED=1
MODEL=(--config gemma_2b --override vocab_size=256000 --dtype bfloat16)
# Two CPU threads per side for the host-side work (Python dispatch, torch's CPU ops).
HARNESS=(--pairs 7 --threads 2)

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c "import jax, torch, transformers; print(jax.__version__, jax.devices(), torch.__version__,
torch.cuda.get_device_name(0), transformers.__version__)"; } 2>&1 | tee "$DIR/gpu_2b.txt"

"$PY" -m benchmarks.model_train_step "${MODEL[@]}" "${HARNESS[@]}" --batch_size 8 --seq_len 1024 --warmup 2 \
    --peers sdpa eager --name gpu_train_step_2b_bf16 --result "$DIR/gpu_train_step_2b_bf16.json" \
    2>&1 | tee "$DIR/gpu_train_step_2b_bf16.log"

"$PY" -m benchmarks.model_decode "${MODEL[@]}" "${HARNESS[@]}" --batch_size 8 --seq_len 128 --new_tokens 128 \
    --peers sdpa compile --name gpu_decode_2b_bf16 --result "$DIR/gpu_decode_2b_bf16.json" \
    2>&1 | tee "$DIR/gpu_decode_2b_bf16.log"

"$PY" - "$DIR/gpu_train_step_2b_bf16.json" <<'EOF' 2>&1 | tee "$DIR/gpu_mfu_2b_bf16.txt"
import json, os, sys
result = json.load(open(sys.argv[1]))
c, seq = result["settings"]["config"], result["settings"]["seq_len"]
n = c["vocab_size"] * c["embed_dim"] + c["num_layers"] * (
    (2 * c["num_heads"] + 2 * c["num_kv_heads"]) * c["embed_dim"] * c["head_dim"]
    + 3 * c["embed_dim"] * c["hidden_dim"] + 2 * c["embed_dim"]) + c["embed_dim"]
flops_per_token = 6 * n + 12 * c["num_layers"] * c["num_heads"] * c["head_dim"] * seq
import torch
name = torch.cuda.get_device_name(0)
table = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 TFLOP/s, as benchmarks/train_throughput.py
peak = float(os.environ.get("PEAK_TFLOPS") or next((v for k, v in table.items() if k in name), "nan"))
print(f"{name}: N = {n} parameters, model FLOPs per token = 6N + 12LHQT = {flops_per_token:.4g}, peak {peak} TFLOP/s")
for side, s in result["sides"].items():
  tps = s["tokens_per_s_wall"]
  print(f"{side}: {tps:.0f} tokens/s, MFU {tps * flops_per_token / (peak * 1e12):.3f}")
EOF
