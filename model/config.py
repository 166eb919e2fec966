"""Gemma 1 model configurations (paper arXiv 2403.08295, Table 1).

A `GemmaConfig` is a frozen (hashable) dataclass, so it can be a static
argument of `jax.jit` and a field of a Flax module.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

# Gemma's SentencePiece vocabulary as given in the paper. The released
# checkpoints (and HF transformers' GemmaConfig) use 256000 rows; pass
# `vocab_size=256000` to `get_config` to match them.
PAPER_VOCAB_SIZE = 256128
RELEASED_VOCAB_SIZE = 256000

_DTYPES = ("float32", "bfloat16", "float16")

# What each decoder block keeps for the backward pass (`Block` under `nn.remat`):
#   none                               everything (no rematerialisation; fastest, most memory)
#   full                               only the block's input; the block is recomputed in backward
#   dots_saveable                      matmul outputs (jax.checkpoint_policies.dots_saveable)
#   dots_with_no_batch_dims_saveable   projection outputs but not the attention logits/probs
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Hyper-parameters of a Gemma 1 decoder."""

  num_layers: int
  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  hidden_dim: int  # FFN width of each GeGLU branch (gate and up).
  vocab_size: int
  max_seq_len: int = 8192
  dtype: str = "bfloat16"  # Activation / compute dtype.
  param_dtype: str = "float32"
  # Memory knobs. None of them changes the numbers the model computes (up to float summation
  # order); they trade recomputation for memory so long sequences fit an accelerator.
  remat_policy: str = "none"  # One of REMAT_POLICIES.
  # Run the blocks as one lax.scan (parameters keep their per-layer layout; see Transformer).
  scan_layers: bool = False
  # Attention over query blocks of this many tokens, each block's logits/probs recomputed in the
  # backward pass, so at most [heads, block, keys] probabilities live at once. None: one block.
  attention_chunk_size: int | None = None
  # Speed: attention without a cache (and without attention_chunk_size) splits the queries into this
  # many blocks and multiplies each only against the keys up to its end
  # (`modules.causal_block_attention`); 1: the full [T, S] square. Same numbers up to summation order.
  attention_causal_blocks: int = 4
  # DecoderOnlyModel's loss/scores compute logits + log-softmax for this many positions of a row
  # at a time (recomputed in backward), never the whole [batch, length, vocab]. None: all at once.
  loss_chunk_size: int | None = None

  def __post_init__(self):
    for name in ("num_layers", "embed_dim", "num_heads", "num_kv_heads",
                 "head_dim", "hidden_dim", "vocab_size", "max_seq_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"GemmaConfig.{name} must be a positive int, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
          f"({self.num_kv_heads}) for grouped-query attention")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
    for name in ("attention_chunk_size", "loss_chunk_size"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"GemmaConfig.{name} must be a positive int or None, got {value!r}")
    if (not isinstance(self.attention_causal_blocks, int) or isinstance(self.attention_causal_blocks, bool)
        or self.attention_causal_blocks < 1):
      raise ValueError(f"GemmaConfig.attention_causal_blocks must be a positive int, got "
                       f"{self.attention_causal_blocks!r}")
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f"GemmaConfig.scan_layers must be a bool, got {self.scan_layers!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"GemmaConfig.remat_policy must be one of {REMAT_POLICIES}, "
                       f"got {self.remat_policy!r}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"GemmaConfig.{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def num_query_groups(self) -> int:
    """Query heads that share one key/value head (1 = MHA, num_heads = MQA)."""
    return self.num_heads // self.num_kv_heads

  def num_embedding_params(self) -> int:
    return self.vocab_size * self.embed_dim

  def num_non_embedding_params(self) -> int:
    attention = (self.num_heads + 2 * self.num_kv_heads + self.num_heads) * self.embed_dim * self.head_dim
    mlp = 3 * self.embed_dim * self.hidden_dim
    norms = 2 * self.embed_dim
    return self.num_layers * (attention + mlp + norms) + self.embed_dim


_CONFIGS = {
    # Gemma 2B: multi-query attention (one key/value head).
    "gemma_2b": dict(num_layers=18, embed_dim=2048, num_heads=8, num_kv_heads=1,
                     head_dim=256, hidden_dim=16384, vocab_size=PAPER_VOCAB_SIZE),
    # Gemma 7B: multi-head attention; num_heads * head_dim (4096) != embed_dim (3072).
    "gemma_7b": dict(num_layers=28, embed_dim=3072, num_heads=16, num_kv_heads=16,
                     head_dim=256, hidden_dim=24576, vocab_size=PAPER_VOCAB_SIZE),
    # Unit tests: two layers, grouped-query attention (4 query heads, 2 kv heads).
    "tiny": dict(num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2,
                 head_dim=16, hidden_dim=128, vocab_size=256, max_seq_len=128),
    # CPU demo: the 2B shape scaled down (multi-query attention).
    "small": dict(num_layers=4, embed_dim=256, num_heads=4, num_kv_heads=1,
                  head_dim=64, hidden_dim=1024, vocab_size=4096, max_seq_len=1024),
}


def config_names() -> list[str]:
  return sorted(_CONFIGS)


def get_config(name: str, **overrides) -> GemmaConfig:
  """Returns the named config with `overrides` applied, e.g. `vocab_size=4096`."""
  if name not in _CONFIGS:
    raise ValueError(f"Unknown Gemma config {name!r}; known configs: {', '.join(config_names())}")
  fields = {f.name for f in dataclasses.fields(GemmaConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"Unknown GemmaConfig field(s) {unknown}; fields are {sorted(fields)}")
  return GemmaConfig(**{**_CONFIGS[name], **overrides})
