"""Compiled per-chip memory of the 2B / 7B post-training gin files on v5e (16 GiB HBM per chip).

As tests/test_memory.py does for pretraining: each run compiles the real jit'd functions of a gin
file (the `model.train.Trainer` step: loss, gradients, AdamW update, FSDP / model-parallel
shardings) against abstract arguments on simulated CPU devices, in a fresh process (XLA_FLAGS
only apply before jax initialises); nothing is allocated. XLA's CPU memory analysis estimates TPU
memory and overstates bf16 activations (the CPU backend computes bf16 matmuls in float32).

* SFT: the train step on the real per-data-replica batch (`model.train`).
* Reward model: the Bradley-Terry step on `BATCH_SIZE` pairs of `MAX_LENGTH` tokens.
* RLHF: the policy's step on a rollout batch (prompts of `MAX_LENGTH` tokens, an upper bound,
  plus `MAX_DECODE_LEN` response tokens), with the frozen reference and reward-model params that
  stay on the chip added; and the rollout (KV-cache sampling, reference log-probs, reward) whose
  arguments hold all three param sets, with the policy's optimizer state added. The chip's peak
  is the larger of the two phases.

The 7B files run on a 2 x 16 proxy mesh: the real per-chip shards along 'model' and the real
per-model-group batch, params/state split 2 ways over 'data' instead of 16 (overstated).

    .venv/bin/python -m benchmarks.post_training_memory [--runs=sft_2b,rlhf_7b] [--result=PATH]

Writes benchmarks/results/post_training_memory.json (one row per run; `fits_16_gib`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V5E_HBM_BYTES = 16 * 2**30

# name: (gin file, kind, simulated devices, chips of the real run)
RUNS = {
    "sft_2b": ("gin/runs/sft_2b_v5e.gin", "sft", 16, 256),
    "sft_7b": ("gin/runs/sft_7b_v5e.gin", "sft", 32, 256),
    "reward_model_2b": ("gin/runs/reward_model_2b_v5e.gin", "reward_model", 16, 256),
    "reward_model_7b": ("gin/runs/reward_model_7b_v5e.gin", "reward_model", 32, 256),
    "rlhf_2b": ("gin/runs/rlhf_2b_v5e.gin", "rlhf", 16, 256),  # 2 x 8: the real 'model' shards
    "rlhf_7b": ("gin/runs/rlhf_7b_v5e.gin", "rlhf", 32, 256),
}

# argv: kind, gin_file, simulated devices, chips of the real run, extra gin bindings.
CHILD = r"""
import json, os, sys, time
kind, gin_file, num_devices, num_chips = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
import gin, jax, jax.numpy as jnp, numpy as np
from model import checkpoints, data, gin_utils, optimizers, partitioning, reward_model, rlhf, train  # noqa: F401
from model.partitioning import Partitioner

gin_utils.parse_gin([gin_file], ["Partitioner.init_distributed = False", "MODEL_DIR = '/unused'",
                                 *sys.argv[5:]])
fn = {"sft": "train", "reward_model": "train_reward_model", "rlhf": "train_rlhf"}[kind]
build = lambda name: gin.query_parameter(f"{fn}.{name}").scoped_configurable_fn()
model, optimizer, partitioner = build("model"), build("optimizer"), Partitioner()
data_replicas = num_chips // partitioner.model_size

def sds(shape, dtype, sharding=None):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding or partitioner.batch_sharding)

def per_device_bytes(tree):
  return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)))

def analyse(jitted, *args, **kwargs):
  start = time.time()
  with partitioner.activate():
    compiled = jitted.lower(*args, **kwargs).compile()
  m = compiled.memory_analysis()
  r = {f: int(getattr(m, f)) for f in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                                       "alias_size_in_bytes", "generated_code_size_in_bytes")}
  # Donated arguments: outputs that reuse their buffers (alias) are not counted twice.
  r["total_bytes"] = (r["argument_size_in_bytes"] + r["temp_size_in_bytes"] + r["output_size_in_bytes"]
                      - r["alias_size_in_bytes"] + r["generated_code_size_in_bytes"])
  r["compile_seconds"] = round(time.time() - start, 1)
  return r

def rows(global_rows):
  per = global_rows // data_replicas
  return per, per * partitioner.data_size

micro = 1
if kind == "sft":
  micro = gin.query_parameter("%NUM_MICROBATCHES")
  per, n = rows(gin.query_parameter("%BATCH_SIZE"))
  length = gin.query_parameter("%TASK_FEATURE_LENGTHS")["targets"]
  objective, batch = model, {k: sds((n, length), jnp.int32) for k in (
      "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights", "decoder_segment_ids",
      "decoder_positions")}
  shape = {"per_replica_rows": per, "seq_len": length}
elif kind == "reward_model":
  micro = gin.query_parameter("%NUM_MICROBATCHES")
  per, n = rows(gin.query_parameter("%BATCH_SIZE"))
  length = gin.query_parameter("%MAX_LENGTH")
  objective = reward_model.RewardModel(model.config, gin.query_parameter("%MARGIN"), gin.query_parameter("%CENTER_COEF"))
  batch = {k: sds((n, length), jnp.int32) for k in ("chosen", "rejected")}
  shape = {"per_replica_pairs": per, "seq_len": length}
else:
  rl = build("rl")
  micro = gin.query_parameter("%NUM_MICROBATCHES")
  per, n = rows(gin.query_parameter("%PROMPTS_PER_STEP") * rl.group_size)
  prompt_len, decode_len = gin.query_parameter("%MAX_LENGTH"), rl.max_decode_len
  objective = rlhf.PolicyObjective(model, rl)
  batch = {"prompts": sds((n, prompt_len), jnp.int32), "responses": sds((n, decode_len), jnp.int32),
           "response_mask": sds((n, decode_len), jnp.float32), "advantages": sds((n,), jnp.float32),
           "old_log_probs": sds((n, decode_len), jnp.float32)}
  shape = {"per_replica_rows": per, "prompt_len": prompt_len, "max_decode_len": decode_len}
trainer = train.Trainer(objective, optimizer, partitioner, num_microbatches=micro)
params, opt_state = trainer.abstract_train_params(), trainer.abstract_train_opt_state()
state = train.TrainState(step=sds((), jnp.int32, partitioner.replicated), params=params, opt_state=opt_state)
report = {"kind": kind, "gin_file": gin_file, "mesh": dict(partitioner.mesh.shape), "chips": num_chips,
          "num_microbatches": micro, **shape,
          "remat_policy": model.config.remat_policy, "scan_layers": model.config.scan_layers,
          "attention_chunk_size": model.config.attention_chunk_size,
          "loss_chunk_size": model.config.loss_chunk_size,
          "num_params": int(sum(x.size for x in jax.tree.leaves(trainer.abstract_params))),
          "param_bytes_per_device": per_device_bytes(params),
          "opt_state_bytes_per_device": per_device_bytes(opt_state)}
report["train_step"] = analyse(trainer._train_step, state, batch)
peak = report["train_step"]["total_bytes"]
if kind == "rlhf":
  rm = reward_model.RewardModel(build("reward_model_base").config)
  rm_params = trainer._with_shardings(rm.abstract_params(), partitioner.param_shardings(rm.abstract_params(), rm.logical_axes()))
  report["reference_bytes_per_device"] = report["param_bytes_per_device"]
  report["reward_model_bytes_per_device"] = per_device_bytes(rm_params)
  report["train_phase_bytes"] = peak + report["reference_bytes_per_device"] + report["reward_model_bytes_per_device"]
  prompts = sds((n // rl.group_size, prompt_len), jnp.int32, partitioner.replicated)  # as train_rlhf passes them
  key = sds((2,), jnp.uint32, partitioner.replicated)
  report["rollout"] = analyse(rlhf.rollout, model.config, rl, (1,), rm, params, params, rm_params, prompts, key)
  report["rollout_phase_bytes"] = report["rollout"]["total_bytes"] + report["opt_state_bytes_per_device"]
  peak = max(report["train_phase_bytes"], report["rollout_phase_bytes"])
report["peak_bytes"] = peak
print("REPORT" + json.dumps(report))
"""


def compile_report(kind: str, gin_file: str, devices: int, chips: int, *bindings: str) -> dict:
  """Compiles a gin file's step(s) in a fresh process on `devices` simulated CPU devices, sized
  for a run on `chips` chips; returns the report (raises with the process's log)."""
  env = {**os.environ, "PYTHONPATH": REPO}
  env.pop("XLA_FLAGS", None)
  start = time.time()
  proc = subprocess.run([sys.executable, "-c", CHILD, kind, gin_file, str(devices), str(chips), *bindings],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{gin_file} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}")
  report = json.loads(lines[-1][len("REPORT"):])
  report.update(bindings=list(bindings), wall_seconds=round(time.time() - start, 1),
                peak_gib=round(report["peak_bytes"] / 2**30, 2),
                fits_16_gib=report["peak_bytes"] < V5E_HBM_BYTES)
  return report


def measure(name: str, *bindings: str) -> dict:
  """One run of RUNS."""
  return {"run": name, **compile_report(RUNS[name][1], RUNS[name][0], *RUNS[name][2:], *bindings)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated names of RUNS")
  parser.add_argument("--binding", action="append", default=[],
                      help="an extra gin binding for every run (e.g. 'NUM_MICROBATCHES = 1', to "
                           "measure another setting); rows are keyed by run and bindings")
  parser.add_argument("--result", default=os.path.join(harness.RESULTS_DIR, "post_training_memory.json"))
  args = parser.parse_args(argv)
  names = [n for n in args.runs.split(",") if n]
  unknown = sorted(set(names) - set(RUNS))
  if unknown:
    raise SystemExit(f"unknown runs {unknown}; known: {sorted(RUNS)}")
  previous = {}
  if os.path.exists(args.result):  # Runs are measured one at a time; keep the others' rows.
    with open(args.result) as f:
      previous = {(r["run"], tuple(r["bindings"])): r for r in json.load(f)["rows"]}
  for name in names:
    report = measure(name, *args.binding)
    print(f"{name}: peak {report['peak_gib']} GiB per chip, fits 16 GiB: {report['fits_16_gib']} "
          f"({report['wall_seconds']} s)", flush=True)
    previous[(name, tuple(args.binding))] = report
    rows = sorted(previous.values(), key=lambda r: (list(RUNS).index(r["run"]), r["bindings"]))
    result = {"benchmark": "post_training_memory", "hbm_bytes_per_chip": V5E_HBM_BYTES, "rows": rows,
              "machine": harness.machine(), "libraries": harness.library_versions(),
              "load_average": os.getloadavg()}
    harness.write_result(result, args.result)
  return result


if __name__ == "__main__":
  main()
