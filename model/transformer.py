"""The Gemma 1 decoder: embed -> N pre-norm blocks -> final RMSNorm -> tied-embedding logits.

Attention mask: query i may attend key j iff j <= i (in sequence / cache-slot
order), both tokens have the same segment id, and the segment id is not 0
(padding). This covers packed batches (several documents per row, seqio's
`decoder_segment_ids`), right padding, and left-padded prompts.

KV cache (incremental decoding, `decode=True`), built by `init_cache`:

    {'index': int32 scalar        next cache slot to write (same for every row),
     'segment_ids': int32 [B, S]  segment id of each written slot, 0 = empty/padding,
     'layers': {'layer_<i>': {'k': [B, K, S, H], 'v': [B, K, H, S]}}}

(`modules.CACHE_AXES`: each the layout its attention product reads as stored.)
Keys are stored after RoPE, in the compute dtype, with K = num_kv_heads (one
head for the multi-query 2B model). A call with T tokens writes them into
slots [index, index + T) and advances index by T: the prompt is "prefilled"
with one call, then each generated token is one T=1 call. Rows with shorter
prompts are left-padded (segment id 0 on the padding), and carry their own
positions, so every row writes the same slot at every step.

Rematerialisation: with `config.remat_policy` other than 'none', every block is
wrapped in `nn.remat` (jax.checkpoint) with that policy, so the backward pass
recomputes what the policy does not save instead of keeping every layer's
activations. Parameter names and shapes are unchanged (layer_<i>), so
checkpoints and the HF converter do not care.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import GemmaConfig
from model import modules
from model.modules import Block, Embedder, RMSNorm

# config.remat_policy -> jax.checkpoint policy (None saves nothing but the block's inputs).
_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def block_class(config: GemmaConfig):
  """`Block`, or `Block` under `nn.remat` with the config's policy."""
  if config.remat_policy == "none":
    return Block
  return nn.remat(Block, policy=_REMAT_POLICIES[config.remat_policy], prevent_cse=True)


def init_cache(config: GemmaConfig, batch_size: int, cache_len: int) -> dict:
  """An empty KV cache for `batch_size` rows and `cache_len` slots."""
  if cache_len > config.max_seq_len:
    raise ValueError(f"cache_len {cache_len} exceeds the model's max_seq_len {config.max_seq_len}")
  sizes = {"B": batch_size, "S": cache_len, "K": config.num_kv_heads, "H": config.head_dim}
  layer = lambda: {name: jnp.zeros(tuple(sizes[axis] for axis in axes), config.compute_dtype)
                   for name, axes in modules.CACHE_AXES.items()}
  return {
      "index": jnp.zeros((), jnp.int32),
      "segment_ids": jnp.zeros((batch_size, cache_len), jnp.int32),
      "layers": {f"layer_{i}": layer() for i in range(config.num_layers)},
  }


def decoding_layout(params: dict) -> dict:
  """`params` with every layer's products laid out output-first (`modules.Attention.output_first`,
  `modules.FeedForward.output_first`), for decoding on the CPU.

  With few tokens per step XLA:CPU streams a weight about 1.6x faster when it leads the product,
  stored [out, in] (at `bench_100m`'s shapes, docs/model_benchmarks.md). The copy is made once, by
  whoever decodes many times with the same weights (`decoding.generate` takes either layout and
  gives the same tokens); it holds every weight once, so the training layout can be dropped while
  it is in use. Only decoding reads it: training and checkpoints keep the layout the model
  initialises. Params already in this layout are returned as they are.
  """
  def layer(p):
    if modules.QKV_OUTPUT_FIRST in p["attn"]:
      return p
    return {**p, "attn": modules.Attention.output_first(p["attn"]), "mlp": modules.FeedForward.output_first(p["mlp"])}
  return {name: layer(p) if name.startswith("layer_") else p for name, p in params.items()}


def attention_mask(query_segment_ids, key_segment_ids, query_slots, key_slots) -> jax.Array:
  """[B, T, S] bool: causal (by slot) AND same segment AND query not padding."""
  causal = query_slots[:, None] >= key_slots[None, :]
  same_segment = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
  real = (query_segment_ids != 0)[:, :, None]
  return causal[None] & same_segment & real


def _check_int_array(name, value, shape):
  if not jnp.issubdtype(jnp.asarray(value).dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array (int32), got dtype {jnp.asarray(value).dtype}")
  if tuple(value.shape) != tuple(shape):
    raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)} (same as tokens)")


class Transformer(nn.Module):
  """Gemma 1 decoder-only transformer."""

  config: GemmaConfig

  def setup(self):
    self.embedder = Embedder(self.config)
    block = block_class(self.config)
    self.layers = [block(self.config, name=f"layer_{i}") for i in range(self.config.num_layers)]
    self.final_norm = RMSNorm(self.config)

  def __call__(self, tokens, positions, segment_ids=None, cache=None, decode=False):
    """Returns (float32 logits [B, T, V], new cache or None); arguments as `hidden_states`."""
    hidden, new_cache = self.hidden_states(tokens, positions, segment_ids, cache, decode)
    return self.logits(hidden), new_cache

  def _scan_blocks(self, x, positions, mask):
    """The blocks as one `lax.scan` over their parameters, stacked on the fly.

    Same computation as the Python loop, but the compiler sees one loop body, so the backward
    pass provably runs one layer at a time (an unrolled loop lets a scheduler start every
    layer's rematerialisation at once). The parameters stay `layer_<i>` (stacking copies them
    once per step, a 1/num_layers-sized slice at a time is used).
    """
    layer_params = [self.layers[i].variables["params"] for i in range(self.config.num_layers)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *layer_params)
    block = Block(self.config, parent=None)

    def body(x, params):
      x, _ = block.apply({"params": params}, x, positions, mask)
      return x, None

    if self.config.remat_policy != "none":
      body = jax.checkpoint(body, policy=_REMAT_POLICIES[self.config.remat_policy], prevent_cse=False)
    x, _ = jax.lax.scan(body, x, stacked)
    return x

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D] -> float32 logits [B, T, V] (tied embedding)."""
    return self.embedder.decode(hidden)

  def hidden_states(self, tokens, positions, segment_ids=None, cache=None, decode=False):
    """Returns (final-normed hidden states [B, T, D] in the compute dtype, new cache or None).

    `DecoderOnlyModel` turns these into logits a chunk of positions at a time
    (config.loss_chunk_size), so a loss never holds [B, L, V] float32 logits at once.

    Args:
      tokens: int32 [B, T] token ids.
      positions: int32 [B, T] RoPE positions (per row; restart at 0 for each packed segment).
      segment_ids: int32 [B, T]; 0 marks padding. None means one segment, no padding.
      cache: a cache from `init_cache`, required iff decode=True.
      decode: write the tokens into the cache and attend to everything cached so far.
    """
    cfg = self.config
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    _check_int_array("tokens", tokens, tokens.shape)
    _check_int_array("positions", positions, tokens.shape)
    batch, length = tokens.shape
    if length > cfg.max_seq_len:
      raise ValueError(f"sequence length {length} exceeds the model's max_seq_len {cfg.max_seq_len}")
    if not isinstance(tokens, jax.core.Tracer) and tokens.size and (
        int(tokens.max()) >= cfg.vocab_size or int(tokens.min()) < 0):
      raise ValueError(f"token ids must be in [0, {cfg.vocab_size}) (config.vocab_size), "
                       f"got min {int(tokens.min())} max {int(tokens.max())}")
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens, dtype=jnp.int32)
    _check_int_array("segment_ids", segment_ids, tokens.shape)
    if decode != (cache is not None):
      raise ValueError("decode=True needs a cache (see init_cache), and a cache is only used with decode=True")

    if decode:
      index = cache["index"]
      cache_len = cache["segment_ids"].shape[1]
      if cache["segment_ids"].shape[0] != batch:
        raise ValueError(f"cache batch size {cache['segment_ids'].shape[0]} != tokens batch size {batch}")
      if not isinstance(index, jax.core.Tracer) and int(index) + length > cache_len:
        raise ValueError(f"cache overflow: writing {length} tokens at slot {int(index)} of a {cache_len}-slot cache")
      key_segment_ids = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids.astype(jnp.int32), (0, index))
      query_slots = index + jnp.arange(length)
      key_slots = jnp.arange(cache_len)
    else:
      index = None
      key_segment_ids = segment_ids
      query_slots = key_slots = jnp.arange(length)
    mask = attention_mask(segment_ids, key_segment_ids, query_slots, key_slots)

    x = self.embedder.encode(tokens)
    new_layers = {}
    if cfg.scan_layers and not decode and not self.is_initializing():
      x = self._scan_blocks(x, positions, mask)
    else:
      for i, block in enumerate(self.layers):
        layer_cache = cache["layers"][f"layer_{i}"] if decode else None
        x, new_layers[f"layer_{i}"] = block(x, positions, mask, layer_cache, index)
    x = self.final_norm(x)

    if not decode:
      return x, None
    new_cache = {"index": index + length, "segment_ids": key_segment_ids, "layers": new_layers}
    return x, new_cache
