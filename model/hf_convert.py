"""Conversion between this project's Gemma params and HF transformers' GemmaForCausalLM.

The state-dict side is plain numpy (no torch needed); files are safetensors
+ config.json, the layout `GemmaForCausalLM.from_pretrained` reads and
`save_pretrained` writes. The LM head is tied to the embedding, so
`lm_head.weight` is not written, and on import it must equal the embedding.

Layout (HF nn.Linear weights are [out, in]):

  model.embed_tokens.weight                   [V, D]    embedder.input_embedding
  model.layers.i.self_attn.q_proj.weight      [N*H, D]  q_einsum [N, D, H]
  model.layers.i.self_attn.k_proj.weight      [K*H, D]  kv_einsum[0] [K, D, H]
  model.layers.i.self_attn.v_proj.weight      [K*H, D]  kv_einsum[1]
  model.layers.i.self_attn.o_proj.weight      [D, N*H]  attn_vec_einsum [N, H, D]
  model.layers.i.mlp.gate_proj.weight         [F, D]    gating_einsum[0] [D, F]
  model.layers.i.mlp.up_proj.weight           [F, D]    gating_einsum[1]
  model.layers.i.mlp.down_proj.weight         [D, F]    linear [F, D]
  model.layers.i.input_layernorm.weight       [D]       pre_attention_norm.scale
  model.layers.i.post_attention_layernorm.weight [D]    pre_ffw_norm.scale
  model.norm.weight                           [D]       final_norm.scale
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Mapping

import jax
import ml_dtypes
import numpy as np
import safetensors.numpy

from model.config import GemmaConfig

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
_TORCH_DTYPE_NAMES = {"float32", "float16", "bfloat16"}
# transformers config fields of later Gemmas (and other models) that Gemma 1 does not have: each
# must be absent, None or False, else the import is refused rather than silently ignored.
_NOT_IN_GEMMA_1 = ("rope_scaling", "sliding_window", "attn_logit_softcapping",
                   "final_logit_softcapping", "query_pre_attn_scalar",
                   "use_bidirectional_attention", "layer_types", "use_sliding_window")


# ---------------------------------------------------------------- configs


def to_hf_config(config: GemmaConfig, dtype: str = "float32") -> dict[str, Any]:
  """The config.json of the equivalent transformers GemmaConfig."""
  return {
      "architectures": ["GemmaForCausalLM"],
      "model_type": "gemma",
      "vocab_size": config.vocab_size,
      "hidden_size": config.embed_dim,
      "intermediate_size": config.hidden_dim,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "hidden_act": "gelu_pytorch_tanh",
      "hidden_activation": "gelu_pytorch_tanh",
      "max_position_embeddings": config.max_seq_len,
      "rms_norm_eps": 1e-6,
      "rope_theta": 10000.0,
      "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
      "attention_bias": False,
      "attention_dropout": 0.0,
      "tie_word_embeddings": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "bos_token_id": 2,
      "torch_dtype": dtype,
      "dtype": dtype,
  }


def from_hf_config(hf_config: Mapping[str, Any], **overrides) -> GemmaConfig:
  """GemmaConfig from a transformers Gemma config.json dict; refuses settings this model does not have."""
  if hf_config.get("model_type", "gemma") != "gemma":
    raise ValueError(f"not a Gemma 1 config: model_type={hf_config.get('model_type')!r}")
  act = hf_config.get("hidden_activation") or hf_config.get("hidden_act", "gelu_pytorch_tanh")
  if act not in ("gelu_pytorch_tanh", "gelu"):  # HF maps legacy "gelu" to the tanh approximation too.
    raise ValueError(f"unsupported activation {act!r}; Gemma uses gelu_pytorch_tanh")
  theta = (hf_config.get("rope_parameters") or {}).get("rope_theta", hf_config.get("rope_theta", 10000.0))
  if float(theta) != 10000.0:
    raise ValueError(f"unsupported rope_theta {theta}; this model uses 10000")
  if float(hf_config.get("rms_norm_eps", 1e-6)) != 1e-6:
    raise ValueError(f"unsupported rms_norm_eps {hf_config['rms_norm_eps']}; this model uses 1e-6")
  if hf_config.get("attention_bias") or not hf_config.get("tie_word_embeddings", True):
    raise ValueError("attention biases and untied LM heads are not part of Gemma 1")
  present = {k: hf_config[k] for k in _NOT_IN_GEMMA_1 if hf_config.get(k) not in (None, False)}
  if present:
    raise ValueError(f"settings Gemma 1 does not have: {present}; this model cannot represent them")
  rope = dict(hf_config.get("rope_parameters") or {})
  if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_type", "rope_theta"}:
    raise ValueError(f"unsupported rope_parameters {rope}; Gemma 1 uses default RoPE (theta only)")
  if float(hf_config.get("attention_dropout") or 0.0) != 0.0:
    raise ValueError(f"attention_dropout {hf_config['attention_dropout']}: Gemma 1 has no dropout")
  hidden, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
  fields = dict(
      num_layers=hf_config["num_hidden_layers"],
      embed_dim=hidden,
      num_heads=heads,
      num_kv_heads=hf_config.get("num_key_value_heads", heads),
      head_dim=hf_config.get("head_dim") or hidden // heads,
      hidden_dim=hf_config["intermediate_size"],
      vocab_size=hf_config["vocab_size"],
      max_seq_len=hf_config.get("max_position_embeddings", 8192),
  )
  return GemmaConfig(**{**fields, **overrides})


# ---------------------------------------------------------------- state dicts


def _as_numpy(value, name: str = "tensor") -> np.ndarray:
  """numpy float32 copy of a floating numpy / jax / torch array (torch bf16 is upcast first).

  Integer, bool and complex tensors are refused: casting them would make up weights.
  """
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch.
    if not value.dtype.is_floating_point:  # False for ints, bools and complex.
      raise ValueError(f"HF tensor {name} has dtype {value.dtype}; weights must be floating point")
    return value.detach().float().cpu().numpy()
  dtype = np.asarray(value).dtype
  if not (np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16):
    raise ValueError(f"HF tensor {name} has dtype {dtype}; weights must be floating point")
  return np.asarray(value, np.float32)


def to_hf_state_dict(params, config: GemmaConfig) -> dict[str, np.ndarray]:
  """float32 numpy HF state dict (without the tied lm_head.weight)."""
  p = jax.tree.map(_as_numpy, params)
  n, k, h, d = config.num_heads, config.num_kv_heads, config.head_dim, config.embed_dim
  out = {"model.embed_tokens.weight": p["embedder"]["input_embedding"],
         "model.norm.weight": p["final_norm"]["scale"]}
  for i in range(config.num_layers):
    layer, prefix = p[f"layer_{i}"], f"model.layers.{i}."
    attn, mlp = layer["attn"], layer["mlp"]
    out[prefix + "self_attn.q_proj.weight"] = attn["q_einsum"].transpose(0, 2, 1).reshape(n * h, d)
    out[prefix + "self_attn.k_proj.weight"] = attn["kv_einsum"][0].transpose(0, 2, 1).reshape(k * h, d)
    out[prefix + "self_attn.v_proj.weight"] = attn["kv_einsum"][1].transpose(0, 2, 1).reshape(k * h, d)
    out[prefix + "self_attn.o_proj.weight"] = attn["attn_vec_einsum"].reshape(n * h, d).T
    out[prefix + "mlp.gate_proj.weight"] = mlp["gating_einsum"][0].T
    out[prefix + "mlp.up_proj.weight"] = mlp["gating_einsum"][1].T
    out[prefix + "mlp.down_proj.weight"] = mlp["linear"].T
    out[prefix + "input_layernorm.weight"] = layer["pre_attention_norm"]["scale"]
    out[prefix + "post_attention_layernorm.weight"] = layer["pre_ffw_norm"]["scale"]
  return {name: np.ascontiguousarray(value) for name, value in out.items()}


def from_hf_state_dict(state_dict: Mapping[str, Any], config: GemmaConfig):
  """Params (numpy, config.param_dtype) from a GemmaForCausalLM / GemmaModel state dict."""
  sd = {(name[len("model."):] if name.startswith("model.") else name): value for name, value in state_dict.items()}
  n, k, h, d, f = config.num_heads, config.num_kv_heads, config.head_dim, config.embed_dim, config.hidden_dim
  used = set()

  def get(name, shape):
    if name not in sd:
      raise ValueError(f"HF state dict has no {name!r} (or 'model.{name}')")
    used.add(name)
    value = _as_numpy(sd[name], name)
    if value.shape != shape:
      raise ValueError(f"HF tensor {name} has shape {value.shape}, expected {shape} for this config")
    return value

  params = {"embedder": {"input_embedding": get("embed_tokens.weight", (config.vocab_size, d))},
            "final_norm": {"scale": get("norm.weight", (d,))}}
  for i in range(config.num_layers):
    prefix = f"layers.{i}."
    q = get(prefix + "self_attn.q_proj.weight", (n * h, d)).reshape(n, h, d).transpose(0, 2, 1)
    key = get(prefix + "self_attn.k_proj.weight", (k * h, d)).reshape(k, h, d).transpose(0, 2, 1)
    value = get(prefix + "self_attn.v_proj.weight", (k * h, d)).reshape(k, h, d).transpose(0, 2, 1)
    out = get(prefix + "self_attn.o_proj.weight", (d, n * h)).T.reshape(n, h, d)
    gate = get(prefix + "mlp.gate_proj.weight", (f, d)).T
    up = get(prefix + "mlp.up_proj.weight", (f, d)).T
    params[f"layer_{i}"] = {
        "attn": {"q_einsum": q, "kv_einsum": np.stack([key, value]), "attn_vec_einsum": out},
        "mlp": {"gating_einsum": np.stack([gate, up]), "linear": get(prefix + "mlp.down_proj.weight", (d, f)).T},
        "pre_attention_norm": {"scale": get(prefix + "input_layernorm.weight", (d,))},
        "pre_ffw_norm": {"scale": get(prefix + "post_attention_layernorm.weight", (d,))},
    }
  if "lm_head.weight" in sd:
    used.add("lm_head.weight")
    if not np.array_equal(_as_numpy(sd["lm_head.weight"], "lm_head.weight"),
                          params["embedder"]["input_embedding"]):
      raise ValueError("lm_head.weight differs from embed_tokens.weight; Gemma ties them")
  unused = sorted(set(sd) - used - {name for name in sd if name.endswith("rotary_emb.inv_freq")})
  if unused:
    raise ValueError(f"HF state dict has tensors this config does not use: {unused[:5]} "
                     f"({len(unused)} in all; is num_layers right?)")
  dtype = _NUMPY_DTYPES[config.param_dtype]
  return jax.tree.map(lambda x: np.ascontiguousarray(x).astype(dtype), params)


# ---------------------------------------------------------------- files


def export_hf(params, config: GemmaConfig, out_dir: str, dtype: str = "float32") -> None:
  """Writes `out_dir/model.safetensors` and `config.json` for GemmaForCausalLM.from_pretrained."""
  if dtype not in _TORCH_DTYPE_NAMES:
    raise ValueError(f"dtype must be one of {sorted(_TORCH_DTYPE_NAMES)}, got {dtype!r}")
  os.makedirs(out_dir, exist_ok=True)
  tensors = {name: value.astype(_NUMPY_DTYPES[dtype]) for name, value in to_hf_state_dict(params, config).items()}
  safetensors.numpy.save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(to_hf_config(config, dtype), f, indent=2, sort_keys=True)


def import_hf(model_dir: str, **config_overrides):
  """(GemmaConfig, params) from a directory with config.json and one or more *.safetensors files.

  The params keep the checkpoint's dtype (config.json `dtype` / `torch_dtype`) unless
  `param_dtype` is given.
  """
  config_path = os.path.join(model_dir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"no config.json in {model_dir}")
  with open(config_path) as f:
    hf_config = json.load(f)
  saved_dtype = hf_config.get("dtype") or hf_config.get("torch_dtype")
  if saved_dtype is not None and "param_dtype" not in config_overrides:
    if saved_dtype not in _TORCH_DTYPE_NAMES:
      raise ValueError(f"{config_path}: dtype {saved_dtype!r} is not one of "
                       f"{sorted(_TORCH_DTYPE_NAMES)}; pass param_dtype= to choose one")
    config_overrides["param_dtype"] = saved_dtype
  config = from_hf_config(hf_config, **config_overrides)
  files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
  state_dict = {}
  for path in files:
    state_dict.update(safetensors.numpy.load_file(path))
  return config, from_hf_state_dict(state_dict, config)
