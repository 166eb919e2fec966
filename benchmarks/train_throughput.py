r"""Train-step throughput (tokens/s, MFU) and XLA's per-device memory analysis.

Runs the real `model.train.Trainer` step (same partitioner, optimizer and jit shardings as
training) on random full-length batches, so the number excludes the input pipeline. Runs
unchanged on CPU, GPU and TPU:

  python -m benchmarks.train_throughput --config=small --batch_size=8 --seq_len=128
  python -m benchmarks.train_throughput --config=gemma_2b --batch_size=2 --seq_len=2048 \
      --optimizer=adafactor --dtype=bfloat16                       # one GPU / TPU chip
  # Compile only, on simulated CPU devices: does the 2B step fit in 16 GiB per v5e chip?
  python -m benchmarks.train_throughput --config=gemma_2b --simulated_devices=8 --fsdp \
      --batch_size=8 --seq_len=8192 --compile_only

MFU = achieved model FLOP/s / peak. Model FLOPs per token = 6 N + 12 L H Q T (PaLM's count,
N = all params because Gemma ties the output projection to the embedding, L layers, H heads,
Q head dim, T sequence length). The peak comes from --peak_tflops or a table of known chips (bf16
dense); on CPU it is unknown and MFU is not reported.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "small", "tiny | small | gemma_2b | gemma_7b")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch size (sequences).")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Sequence length (tokens).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_DTYPE = flags.DEFINE_string("dtype", None, "Compute dtype (default: float32 on CPU, else bfloat16).")
_OPT = flags.DEFINE_enum("optimizer", "adafactor", ["adafactor", "adamw"], "Optimizer.")
_VOCAB = flags.DEFINE_integer("vocab_size", None, "Override the config's vocab size.")
_LAYERS = flags.DEFINE_integer("num_layers", None, "Override the number of layers.")
_PARTITIONS = flags.DEFINE_integer("num_partitions", 1, "Size of the 'model' mesh axis.")
_FSDP = flags.DEFINE_bool("fsdp", False, "Shard params/optimizer state over 'data'.")
_MICRO = flags.DEFINE_integer("num_microbatches", 1, "Gradient accumulation microbatches.")
_SIM = flags.DEFINE_integer("simulated_devices", 0, "Simulate this many CPU devices (compile checks).")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Lower + compile, report memory, no run.")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device for MFU.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the JSON result here.")

# bf16 dense peak TFLOP/s per chip, matched against jax's device_kind.
PEAK_TFLOPS = {"TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v4": 275.0,
               "H100": 989.0, "H200": 989.0, "A100": 312.0}


def model_flops_per_token(config, seq_len: int, num_params: int) -> float:
  return 6.0 * num_params + 12.0 * config.num_layers * config.num_heads * config.head_dim * seq_len


def main(argv):
  del argv
  if _SIM.value:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_SIM.value}")
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import jax.numpy as jnp
  import numpy as np

  from model import gin_utils, optimizers, train
  from model.partitioning import Partitioner

  platform = jax.devices()[0].platform
  dtype = _DTYPE.value or ("float32" if platform == "cpu" and not _SIM.value else "bfloat16")
  overrides = {}
  if _LAYERS.value:
    overrides["num_layers"] = _LAYERS.value
  model = gin_utils.build_model(_CONFIG.value, vocab_size=_VOCAB.value, dtype=dtype,
                                config_overrides=overrides)
  config = model.config
  opt = optimizers.create_optimizer(_OPT.value, optimizers.create_schedule("constant", 1e-4, 0))
  partitioner = Partitioner(num_partitions=_PARTITIONS.value, shard_params_over_data=_FSDP.value)
  partitioner.check_batch_size(_BATCH.value, _MICRO.value)
  trainer = train.Trainer(model, opt, partitioner, num_microbatches=_MICRO.value)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_params))
  batch_shape = (_BATCH.value, _SEQ.value)
  result = {
      "config": _CONFIG.value, "num_params": num_params, "dtype": dtype,
      "optimizer": _OPT.value, "batch_size": _BATCH.value, "seq_len": _SEQ.value,
      "mesh": dict(partitioner.mesh.shape), "fsdp": _FSDP.value,
      "num_microbatches": _MICRO.value, "device_kind": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(), "platform": platform,
  }

  # Compile against abstract arguments: no parameter or batch is allocated for this.
  abstract_state = train.TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioner.replicated),
      params=trainer.abstract_train_params(), opt_state=trainer.abstract_train_opt_state())
  abstract_batch = {k: jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=partitioner.batch_sharding)
                    for k in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                              "decoder_segment_ids", "decoder_positions")}
  t0 = time.time()
  with partitioner.activate():
    compiled = trainer._train_step.lower(abstract_state, abstract_batch).compile()
  result["compile_seconds"] = round(time.time() - t0, 2)
  memory = compiled.memory_analysis()
  if memory is not None:
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    per_device = {f: int(getattr(memory, f, 0) or 0) for f in fields}
    # Donated state aliases its outputs: peak ~ arguments + temporaries + non-aliased outputs.
    per_device["peak_estimate_gib"] = round(
        (per_device["argument_size_in_bytes"] + per_device["temp_size_in_bytes"]
         + per_device["output_size_in_bytes"] - per_device["alias_size_in_bytes"]) / 2**30, 3)
    result["memory_per_device"] = per_device
  if _COMPILE_ONLY.value:
    print(json.dumps(result, indent=2, sort_keys=True))
    _write(result)
    return

  rng = np.random.default_rng(0)
  tokens = rng.integers(4, config.vocab_size, size=batch_shape, dtype=np.int32)
  host_batch = {
      "decoder_target_tokens": tokens,
      "decoder_input_tokens": np.concatenate([np.zeros((_BATCH.value, 1), np.int32),
                                              tokens[:, :-1]], axis=1),
      "decoder_loss_weights": np.ones(batch_shape, np.int32),
      "decoder_segment_ids": np.ones(batch_shape, np.int32),
      "decoder_positions": np.broadcast_to(np.arange(_SEQ.value, dtype=np.int32), batch_shape).copy(),
  }
  batch = partitioner.shard_batch(host_batch)
  state = trainer.init_state()
  for _ in range(_WARMUP.value):
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  tokens_per_s = _BATCH.value * _SEQ.value / step_s
  flops_per_s = tokens_per_s * model_flops_per_token(config, _SEQ.value, num_params)
  peak = _PEAK.value or next((v for k, v in PEAK_TFLOPS.items()
                              if k.lower() in result["device_kind"].lower()), None)
  result.update({
      "step_seconds_median": round(step_s, 5),
      "step_seconds_min": round(min(times), 5),
      "tokens_per_second": round(tokens_per_s, 1),
      "tokens_per_second_per_device": round(tokens_per_s / jax.device_count(), 1),
      "model_tflops_per_second_per_device": round(flops_per_s / jax.device_count() / 1e12, 3),
      "mfu": round(flops_per_s / jax.device_count() / (peak * 1e12), 4) if peak else None,
      "peak_tflops_per_device": peak,
      "final_loss": float(metrics["loss"]),
  })
  print(json.dumps(result, indent=2, sort_keys=True))
  _write(result)


def _write(result):
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  app.run(main)
