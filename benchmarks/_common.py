"""Shared pieces of the model benchmarks: flags, configs, devices, and the HF twin model.

Timing is benchmarks/harness.py's job (paired, interleaved, pinned processes).

Both benchmarks compare this project's Flax Gemma (JAX) with transformers'
GemmaForCausalLM (PyTorch) computing the same function: the same config, the
same weights (copied with `model.hf_convert`), the same batch. Weights are
stored in the benchmark dtype on both sides (`param_dtype = dtype`), because a
torch model has one dtype for weights and activations.

Only jax / flax / optax / numpy / torch / transformers / safetensors are
imported (directly or through `model.*`), so the scripts run unchanged on a
GPU machine that has no gin, seqio or tensorflow.
"""

from __future__ import annotations

import os

# JAX grabs 75% of GPU memory at start-up by default; the torch side of the
# benchmark needs its share, so allocate on demand. (No effect on CPU.)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import gc  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from model import hf_convert  # noqa: E402
from model.config import GemmaConfig, get_config  # noqa: E402
from model.models import DecoderOnlyModel  # noqa: E402

# Benchmark-only shapes, on top of model/config.py's named configs: (base config, overrides).
PRESETS = {
    # ~111M parameters (86M non-embedding): the 2B shape (MQA, head_dim > d_model / heads) scaled down.
    "bench_100m": ("gemma_2b", dict(num_layers=8, embed_dim=768, num_heads=6, num_kv_heads=1, head_dim=128,
                                    hidden_dim=4096, vocab_size=32000, max_seq_len=2048)),
}

# Largest accepted |ours - transformers| of a loss / logit before timing, per dtype.
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1}


# ---------------------------------------------------------------- flags and configs


def parse_overrides(items: list[str]) -> dict:
  """['num_layers=4', 'max_seq_len=512'] -> {'num_layers': 4, ...}; values are ints when they parse as ints."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"config override {item!r} is not of the form field=value")
    try:
      out[key] = int(value)
    except ValueError:
      out[key] = value
  return out


def build_config(name: str, overrides: dict, dtype: str) -> GemmaConfig:
  """A model/config.py config or a PRESETS entry, with overrides, weights and compute in `dtype`."""
  if dtype not in TOLERANCE:
    raise ValueError(f"--dtype must be one of {sorted(TOLERANCE)}, got {dtype!r}")
  base, preset = PRESETS.get(name, (name, {}))
  return get_config(base, **{**preset, **overrides, "dtype": dtype, "param_dtype": dtype})


def add_model_flags(parser: argparse.ArgumentParser, batch_size: int, seq_len: int) -> None:
  """The model and input flags both model benchmarks take (the harness adds its own: --pairs, --threads...)."""
  parser.add_argument("--config", default="bench_100m",
                      help=f"model/config.py name or one of {sorted(PRESETS)} (default: %(default)s)")
  parser.add_argument("--override", nargs="*", default=[], metavar="FIELD=VALUE",
                      help="GemmaConfig overrides, e.g. --override num_layers=4 vocab_size=8192")
  parser.add_argument("--dtype", default="float32", choices=sorted(TOLERANCE))
  parser.add_argument("--batch_size", type=int, default=batch_size)
  parser.add_argument("--seq_len", type=int, default=seq_len)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--name", default="", help="benchmark name (the result file's stem); default from the flags")
  parser.add_argument("--no_check", action="store_true",
                      help="time even if ours and transformers disagree (the difference is still printed)")
  parser.add_argument("--smoke", action="store_true", help="allow fewer than harness.MIN_PAIRS rounds (tests)")


def positive(args, *names) -> None:
  for name in names:
    if getattr(args, name) < 1:
      raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")


# ---------------------------------------------------------------- devices and timing


def usable_cores() -> int:
  """Cores this process may run on (the harness pins each side; XLA sizes its pool to match)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def setup_torch(threads: int):
  """Imports torch, sets its CPU threads (0 = the usable cores, as XLA does), returns (torch, device)."""
  import torch
  import transformers
  transformers.logging.set_verbosity_error()
  torch.set_num_threads(threads or usable_cores())
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  return torch, device


def torch_sync(torch, device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def release_torch(torch) -> None:
  """Frees what deleted torch objects held, so the JAX phase that follows gets the GPU memory."""
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


# ---------------------------------------------------------------- models


def random_params(config: GemmaConfig, seed: int):
  """Freshly initialised params of our model (param_dtype), as numpy, with non-zero norm scales.

  Random (rather than zero) RMSNorm scales make the equality check between the
  two frameworks also cover the (1 + scale) convention.
  """
  params = DecoderOnlyModel(config).init_params(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    x = np.asarray(x)
    if "scale" in jax.tree_util.keystr(path):
      x = (x.astype(np.float32) + rng.normal(0, 0.1, x.shape).astype(np.float32)).astype(x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(perturb, params)


def hf_state_dict(config: GemmaConfig, params, torch) -> dict:
  """`params` as a transformers Gemma state dict of CPU torch tensors in config.dtype (exact: same dtype)."""
  dtype = getattr(torch, config.dtype)
  return {name: torch.tensor(value, dtype=dtype) for name, value in hf_convert.to_hf_state_dict(params, config).items()}


def hf_twin(config: GemmaConfig, state_dict: dict, attn: str, torch, device):
  """transformers GemmaForCausalLM on `device` holding `state_dict` (see hf_state_dict), with `attn` attention."""
  import transformers
  hf_config = transformers.GemmaConfig(**{k: v for k, v in hf_convert.to_hf_config(config).items()
                                          if k not in ("architectures", "model_type", "torch_dtype", "dtype")})
  dtype = getattr(torch, config.dtype)
  with torch.device(device):
    # dtype= builds the weights in that dtype but keeps RoPE's inv_freq in float32, as from_pretrained does.
    model = transformers.GemmaForCausalLM._from_config(hf_config, dtype=dtype, attn_implementation=attn)
  missing, unexpected = model.load_state_dict(state_dict, strict=False)
  if set(missing) - {"lm_head.weight"} or unexpected:
    raise RuntimeError(f"HF state dict mismatch: missing {missing}, unexpected {unexpected}")
  model.tie_weights()
  if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
    raise RuntimeError("transformers did not tie lm_head to the embedding")
  if model.config._attn_implementation != attn:
    raise RuntimeError(f"transformers picked attention {model.config._attn_implementation!r}, asked for {attn!r}")
  return model


def check_close(what: str, diff: float, dtype: str, enabled: bool) -> None:
  """Prints the ours-vs-transformers difference and stops the benchmark when it is too large."""
  tolerance = TOLERANCE[dtype]
  print(f"check {what}: max |ours - transformers| = {diff:.3g} "
        f"({'tolerance' if enabled else 'not enforced; tolerance would be'} {tolerance:g} for {dtype})", flush=True)
  if enabled and not diff <= tolerance:
    raise SystemExit(f"{what} differ by {diff:.3g} > {tolerance:g}: the two models do not compute the same "
                     "function, so timing them would be meaningless (pass --no_check to time anyway)")
