"""Building blocks of the Gemma 1 decoder: embedder, RMSNorm, RoPE, attention, GeGLU MLP, block.

Conventions (named dims in einsums):
  B batch, T query length, S key length, M = B * T tokens (`token_einsum`), D embed_dim, N query heads,
  K key/value heads, G query heads per kv head (N = K * G), H head_dim,
  F hidden_dim (FFN width per GeGLU branch), V vocab.

Every parameter is stored in `config.param_dtype` and cast to `config.dtype`
where it is used; every parameter carries logical axis names (t5x style:
'vocab', 'embed', 'heads', 'kv_heads', 'kv', 'mlp') so a mesh + rules can shard
it. 'kv_heads' is not in t5x's standard rules, so it is replicated unless the
rules name it (the 2B model has a single key/value head, which cannot be split).

Memory for long sequences: `config.attention_chunk_size` runs attention over
blocks of queries (`map_chunks`), so only [heads, block, keys] probabilities
exist at once and the backward pass recomputes them; every query row still sees
its full softmax, so the result equals the one-block computation.

Speed: without a cache, attention skips the masked half of the causal [T, S] square
(`causal_block_attention`, `config.attention_causal_blocks` query blocks).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import GemmaConfig

ROPE_BASE_FREQUENCY = 10_000
RMS_NORM_EPS = 1e-6
# Added to masked attention logits (in float32) before the softmax.
_MASK_VALUE = -2.3819763e38


def token_einsum(equation: str, x: jax.Array, w: jax.Array, **kwargs) -> jax.Array:
  """`jnp.einsum(equation, x, w)` with x's leading [B, T] axes folded into one token axis M.

  The equation names the token axis M ("MD,DF->MF"); the result gets [B, T] back. Same numbers
  as the [B, T] einsum, but the weight gradient becomes one plain matmul contracting M: with B
  and T as two contracting axes XLA's CPU backend emits a transpose copy and a slower generic
  dot for it (measured in docs/model_benchmarks.md). A plain product ("MA,AB->MB") goes through
  `matmul`, whose weight gradient XLA:CPU runs at its fast kernels' rate.
  """
  lead = x.shape[:2]
  tokens = x.reshape((lead[0] * lead[1],) + x.shape[2:])
  out = matmul(tokens, w) if _is_plain_matmul(equation) and not kwargs else jnp.einsum(equation, tokens, w, **kwargs)
  return out.reshape(lead + out.shape[1:])


def _is_plain_matmul(equation: str) -> bool:
  """Whether `equation` is "MA,AB->MB" (one token axis, one contracted axis, one output axis)."""
  lhs, rest = equation.split(",")
  rhs, out = rest.split("->")
  return len(lhs) == len(rhs) == len(out) == 2 and lhs[0] == out[0] == "M" and lhs[1] == rhs[0] \
      and out[1] == rhs[1] and len(set(lhs + rhs)) == 3


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """`x @ w` for x [..., M, K], w [..., K, N] (the same leading axes), with a backward pass whose
  weight gradient XLA:CPU runs as a plain product when many tokens go through.

  Autodiff's weight gradient, x^T g, contracts the token axis M, which is the leading axis of both
  operands. XLA:CPU runs that layout with a generic dot, at about half the rate of its YNNPACK
  kernels when M is the longest axis (2048 tokens against 256 and 1024 features), and at their rate
  when it is not (docs/model_benchmarks.md). So when M >= max(K, N) x is transposed first, behind
  an optimization barrier that keeps the transpose from being folded back into the dot: one copy
  of x [M, K], then a product in the fast layout. Same numbers as autodiff, up to summation order.
  """
  return jnp.matmul(x, w)


def transposes_for_weight_gradient(x: jax.Array, w: jax.Array) -> bool:
  """Whether `matmul`'s backward copies x transposed (the token axis M is its longest axis)."""
  return x.shape[-2] >= max(w.shape[-2:])


def _matmul_fwd(x, w):
  return jnp.matmul(x, w), (x, w)


def _matmul_bwd(residuals, grad):
  x, w = residuals
  x_t = jnp.swapaxes(x, -1, -2)  # [..., K, M]
  if transposes_for_weight_gradient(x, w):
    x_t = jax.lax.optimization_barrier(x_t)  # Laid out as written, not folded into the dot.
  return jnp.matmul(grad, jnp.swapaxes(w, -1, -2)).astype(x.dtype), jnp.matmul(x_t, grad).astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


# Most tokens at which the tied-embedding logits read the table as the dot's left operand
# (`weights_first_matmul`): below it, in decoding, that form streams the table faster than
# `x @ table^T` on XLA:CPU; above it the usual form is faster (docs/model_benchmarks.md).
FEW_TOKENS = 64


def weights_first_matmul(x: jax.Array, w_t: jax.Array, **kwargs) -> jax.Array:
  """`x @ w_t^T` for x [M, K] and w_t [N, K], computed as `(w_t @ x^T)^T`.

  With few tokens (M <= FEW_TOKENS) a product is a pass over the weight. XLA:CPU's kernels read
  their left operand row by row as stored and pack the right one at every call, so with the weight
  on the left they stream it faster than `x @ w_t^T`, which packs all of it at every call. The
  [N, M] result is small; the barrier keeps XLA from folding its transpose back into the dot, which
  would swap the operands again. Same numbers up to summation order.
  """
  return jax.lax.optimization_barrier(jnp.einsum("NK,MK->NM", w_t, x, **kwargs)).T


def output_first_product(x: jax.Array, w_t: jax.Array, **kwargs) -> jax.Array:
  """x [B, T, K] times a weight stored output-first, w_t [N, K]: [B, T, N].

  With few tokens (decoding) the weight leads the product (`weights_first_matmul`); with many
  (a prefill) XLA picks the layout of a plain product.
  """
  tokens = x.reshape((-1, x.shape[-1]))
  if tokens.shape[0] <= FEW_TOKENS:
    out = weights_first_matmul(tokens, w_t, **kwargs)
  else:
    out = jnp.einsum("MK,NK->MN", tokens, w_t, **kwargs)
  return out.reshape(x.shape[:2] + out.shape[1:])


# Names of the weights of `Attention.output_first` and `FeedForward.output_first`: each module's
# products as [out, in] matrices, the output axes folded into one. Decoding on the CPU streams a
# weight fastest in that form (`weights_first_matmul`); `transformer.decoding_layout` makes them.
QKV_OUTPUT_FIRST = "qkv_output_first"
ATTN_OUT_OUTPUT_FIRST = "attn_vec_output_first"
GATING_OUTPUT_FIRST = "gating_output_first"
DOWN_OUTPUT_FIRST = "linear_output_first"


def weight_copy_is_cheaper(x: jax.Array, stacked: jax.Array) -> bool:
  """Whether copying the C weights out of `stacked` [C, D, ...] costs less than broadcasting the
  tokens of x [B, T, D] over C and splitting the C results (what `stacked_token_einsum` picks from).

  XLA's CPU backend copies a weight out of its stack (`stacked[c]` is not a view there) or into the
  layout a dot wants; with many tokens that copy is small next to the matmul, but with few, as in
  decoding, it costs more than the matmul itself (docs/model_benchmarks.md).
  """
  num, width = stacked.shape[0], x.shape[-1]
  tokens = x.shape[0] * x.shape[1]
  return num * tokens * (width + stacked[0].size // width) >= stacked.size


def stacked_token_einsum(equation: str, x: jax.Array, stacked: jax.Array) -> list[jax.Array]:
  """`[token_einsum(equation, x, w) for w in stacked]`, copying whichever is smaller: the weights
  (many tokens), or x broadcast over the stack for one batched dot over the weights as stored."""
  if weight_copy_is_cheaper(x, stacked):
    return [token_einsum(equation, x, w) for w in stacked]
  lead, num = x.shape[:2], stacked.shape[0]
  tokens = x.reshape((lead[0] * lead[1],) + x.shape[2:])
  lhs, rest = equation.split(",")
  rhs, result = rest.split("->")
  broadcast = jnp.broadcast_to(tokens, (num,) + tokens.shape)
  out = (matmul(broadcast, stacked) if _is_plain_matmul(equation)
         else jnp.einsum(f"C{lhs},C{rhs}->C{result}", broadcast, stacked))
  return [y.reshape(lead + y.shape[1:]) for y in out]


def _dense_init(in_axis, out_axis, batch_axis=()):
  """Fan-in scaled truncated normal, like t5x's default kernel init."""
  return nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis)


class Embedder(nn.Module):
  """Token embedding table, shared by the input lookup and the output logits (tied)."""

  config: GemmaConfig

  def setup(self):
    cfg = self.config
    self.input_embedding = self.param(
        "input_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(stddev=cfg.embed_dim**-0.5), ("vocab", "embed")),
        (cfg.vocab_size, cfg.embed_dim),
        cfg.weight_dtype,
    )

  def encode(self, tokens: jax.Array) -> jax.Array:
    """[B, T] int -> [B, T, D] in the compute dtype, scaled by sqrt(D).

    The sqrt(D) constant is rounded to the compute dtype first (in bf16,
    sqrt(2048) = 45.25... becomes 45.25), matching HF transformers and the
    reference implementation.
    """
    dtype = self.config.compute_dtype
    x = jnp.take(self.input_embedding, tokens, axis=0).astype(dtype)
    normalizer = jnp.asarray(self.config.embed_dim**0.5, dtype=dtype)
    return x * normalizer

  def decode(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> float32 logits [B, T, V] through the transposed embedding."""
    table = self.input_embedding.astype(self.config.compute_dtype)  # Stored [V, D]: output-first.
    return output_first_product(x, table, preferred_element_type=jnp.float32)


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) * (1 + scale), in float32, cast back to x's dtype once."""

  config: GemmaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
        "scale",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        (x.shape[-1],),
        self.config.weight_dtype,
    )
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = x32 * jax.lax.rsqrt(variance + RMS_NORM_EPS)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, base: int = ROPE_BASE_FREQUENCY) -> jax.Array:
  """Rotary position embedding with the half-split layout of Gemma / HF.

  Element i of a head is rotated together with element i + H/2. Angles are
  computed in float32 (so positions 8190 and 8191 stay distinct even with
  bf16 activations), the rotation is applied in float32, and the result is
  cast back to x's dtype once.

  Args:
    x: [B, T, N, H] queries or keys.
    positions: [B, T] int positions.
  """
  head_dim = x.shape[-1]
  fraction = 2.0 * jnp.arange(head_dim // 2, dtype=jnp.float32) / head_dim
  timescale = jnp.float32(base) ** fraction  # [H/2]
  angles = positions.astype(jnp.float32)[:, :, None] / timescale  # [B, T, H/2]
  sin, cos = (materialized(f(angles))[:, :, None] for f in (jnp.sin, jnp.cos))  # [B, T, 1, H/2]
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


def materialized(x: jax.Array) -> jax.Array:
  """x [A, B, ...], read through a gather of its own rows (same values), so it is computed once.

  XLA:CPU fuses an elementwise producer into each consumer and recomputes it per consumer element:
  RoPE's sin and cos of [B, T, H/2] angles were evaluated again for every head and both halves of
  every query and key (and again in the backward pass), at several times the cost of the rotation.
  It does not fuse through a gather, and an optimization barrier is removed before fusion
  (docs/model_benchmarks.md, "What each change bought"). On other backends it costs one read of
  [B, T, H/2] floats, nothing beside the attention, so it is not made CPU-only.
  """
  rows = jnp.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2])
  return jnp.take(x.reshape((-1,) + x.shape[2:]), rows, axis=0)


@jax.custom_vjp
def softmax(logits):
  """`jax.nn.softmax` over the last axis, with the backward pass written in terms of its output.

  Autodiff through softmax's exp-and-divide keeps the exponentials and their sum and differentiates
  the division too (seven elementwise operations and a reduction over the [.., T, S] square); this
  keeps only the probabilities p and computes `p * (g - sum(g * p))`: same gradient, less work
  (docs/model_benchmarks.md, "What each change bought").
  """
  return jax.nn.softmax(logits, axis=-1)


def _softmax_fwd(logits):
  probs = jax.nn.softmax(logits, axis=-1)
  return probs, probs


def _softmax_bwd(probs, grad):
  return (probs * (grad - jnp.sum(grad * probs, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def dot_product_attention(query, key, value, mask, key_axes="BSKH", value_axes="BSKH"):
  """softmax(q k^T + mask) v with float32 logits and softmax.

  Args:
    query: [B, T, K, G, H] queries, already scaled.
    key, value: [B, S, K, H], or laid out as key_axes / value_axes name them (a cache: CACHE_AXES).
    mask: [B, T, S] bool, True where query t may attend key s.

  Returns:
    [B, T, K, G, H] in value's dtype.
  """
  logits = jnp.einsum(f"BTKGH,{key_axes}->BKGTS", query, key, preferred_element_type=jnp.float32)
  logits = jnp.where(mask[:, None, None, :, :], logits, _MASK_VALUE)
  probs = softmax(logits).astype(value.dtype)
  return jnp.einsum(f"BKGTS,{value_axes}->BTKGH", probs, value)


def causal_block_attention(query, key, value, mask, num_blocks: int):
  """`dot_product_attention` for a causal mask over T == S positions, skipping the masked half.

  The queries are split into `num_blocks` blocks of consecutive positions and block [start, end)
  is multiplied only against keys [0, end), with the mask sliced to match: under a causal mask
  (no query sees a later key) the keys after `end` have probability 0 for every query of the
  block, so dropping them changes nothing but the summation order, while the logits, softmax and
  their backward shrink to (num_blocks + 1) / (2 * num_blocks) of the full [T, S] square. The
  slices are static, so XLA sees smaller dots; any further masking (packed segments, padding,
  a sliding window) is still applied by the mask within each block. This is the work torch's
  CPU flash-attention kernel skips (docs/model_benchmarks.md, "What each change bought").

  The mask must be causal by position (`transformer.attention_mask` without a cache is). One
  difference: a query that sees no key at all (a padding position, segment 0) averages the values
  of its block's keys rather than of all keys; nothing reads those rows (no real query attends to
  padding, and the loss weights them 0).
  """
  length = query.shape[1]
  if num_blocks <= 1 or length < 2 or key.shape[1] != length:
    return dot_product_attention(query, key, value, mask)
  num_blocks = min(num_blocks, length)
  bounds = [length * i // num_blocks for i in range(num_blocks + 1)]
  blocks = [dot_product_attention(query[:, start:end], key[:, :end], value[:, :end], mask[:, start:end, :end])
            for start, end in zip(bounds[:-1], bounds[1:])]
  return jnp.concatenate(blocks, axis=1)


# Layout of a layer's cached keys and values (B batch, K kv heads, S cache slots, H head_dim):
# `transformer.init_cache` builds it, `attend_with_cache` reads and writes it. Batch stays first
# (beam search reorders cache rows with x[rows]). Each is the layout its attention product reads
# as stored: XLA:CPU copied [B, S, K, H] values into [B, K, H, S] at every decoding step.
CACHE_AXES = {"k": "BKSH", "v": "BKHS"}


def write_cache(cache: jax.Array, x: jax.Array, axes: str, index) -> jax.Array:
  """x [B, T, K, H] written into `cache` (laid out as `axes`) at slots [index, index + T)."""
  x = jnp.transpose(x.astype(cache.dtype), ["BSKH".index(a) for a in axes])  # T takes S's place.
  return jax.lax.dynamic_update_slice(cache, x, tuple(index if a == "S" else 0 for a in axes))


def decode_step_attention(query, cached_key, cached_value, key, value, mask, index):
  """`dot_product_attention` over the cache with key, value [B, T, K, H] written at slot `index`,
  computed from the cache as it was (slots < index) and the new keys/values: one softmax over
  both parts' logits, and the two parts' products with the values summed in float32. Same
  result up to summation order. It reads only the old cache, so the cache update has one
  consumer and can be done in place (`attend_with_cache`).
  """
  key_axes, value_axes = CACHE_AXES["k"], CACHE_AXES["v"]
  slots, length = mask.shape[-1], query.shape[1]
  old = jnp.einsum(f"BTKGH,{key_axes}->BKGTS", query, cached_key, preferred_element_type=jnp.float32)
  new = jnp.einsum("BTKGH,BSKH->BKGTS", query, key, preferred_element_type=jnp.float32)
  old_mask = mask & (jnp.arange(slots) < index)
  new_mask = jax.lax.dynamic_slice_in_dim(mask, index, length, axis=2)
  logits = jnp.concatenate([jnp.where(old_mask[:, None, None], old, _MASK_VALUE),
                            jnp.where(new_mask[:, None, None], new, _MASK_VALUE)], axis=-1)
  probs = softmax(logits).astype(value.dtype)
  encoded = (jnp.einsum(f"BKGTS,{value_axes}->BTKGH", probs[..., :slots], cached_value,
                        preferred_element_type=jnp.float32)
             + jnp.einsum("BKGTS,BSKH->BTKGH", probs[..., slots:], value, preferred_element_type=jnp.float32))
  return encoded.astype(value.dtype)


def _after(x: jax.Array, done: jax.Array) -> jax.Array:
  """x, made to depend on `done` (x + 0 * one element of done: the same x unless done holds a NaN
  or an infinity, where the attention output is already lost).

  XLA:CPU orders ops by their data dependencies alone when it decides whether a loop-carried
  buffer can be updated in place (optimization barriers are gone by then): writing the new keys
  into the cache while the attention still reads the old cache, in no order it can see, makes it
  copy the cache at every step (docs/model_benchmarks.md, "Decoding's cache copies").
  """
  return x + (done.reshape(-1)[0] * 0).astype(x.dtype)


def attend_with_cache(query, key, value, mask, layer_cache, index, chunk_size=None):
  """Writes key, value [B, T, K, H] into the layer's cache at slot `index` and attends from query
  [B, T, K, G, H] (mask [B, T, S]) over everything cached; returns ([B, T, K, G, H], new cache).

  A call of one token per row (a decoding step) attends over the old cache and its own key
  (`decode_step_attention`) and writes the cache after, so XLA updates it in place; other calls
  (a prefill) attend over the updated cache, where the extra [T, T] logits of the split would
  cost more than the one cache copy it saves.
  """
  dtype = query.dtype
  cached_key, cached_value = layer_cache["k"], layer_cache["v"]
  if query.shape[1] == 1:
    key, value = key.astype(cached_key.dtype).astype(dtype), value.astype(cached_value.dtype).astype(dtype)
    encoded = decode_step_attention(query, cached_key.astype(dtype), cached_value.astype(dtype), key, value,
                                    mask, index)
    new_cache = {"k": write_cache(cached_key, _after(key, encoded), CACHE_AXES["k"], index),
                 "v": write_cache(cached_value, _after(value, encoded), CACHE_AXES["v"], index)}
    return encoded, new_cache
  new_cache = {name: write_cache(layer_cache[name], x, CACHE_AXES[name], index)
               for name, x in (("k", key), ("v", value))}
  cached_key, cached_value = new_cache["k"].astype(dtype), new_cache["v"].astype(dtype)
  attend = lambda q, m: dot_product_attention(q, cached_key, cached_value, m, CACHE_AXES["k"], CACHE_AXES["v"])
  return (attend(query, mask) if chunk_size is None else map_chunks(attend, (query, mask), chunk_size)), new_cache


def map_chunks(fn, xs, chunk_size: int):
  """fn over blocks of `chunk_size` positions along axis 1 of every array in `xs`, one at a time.

  Same result as `fn(*xs)` when fn treats positions independently (each query row of an
  attention, each token of a loss). The full blocks run in a `lax.map` (a sequential loop, so
  only one block's intermediates exist at once) under `jax.checkpoint`: the backward pass
  keeps just each block's inputs and recomputes its intermediates (attention probabilities,
  vocab logits). A shorter last block, if any, is one more call. Outputs are concatenated
  along axis 1.
  """
  length = xs[0].shape[1]
  num_full = length // chunk_size
  if length <= chunk_size:
    return fn(*xs)
  checkpointed = jax.checkpoint(fn)

  def to_blocks(x):  # [B, n*C, ...] -> [n, B, C, ...]
    x = x[:, :num_full * chunk_size]
    return jnp.moveaxis(x.reshape((x.shape[0], num_full, chunk_size) + x.shape[2:]), 1, 0)

  def from_blocks(y):  # [n, B, C, ...] -> [B, n*C, ...]
    y = jnp.moveaxis(y, 0, 1)
    return y.reshape((y.shape[0], num_full * chunk_size) + y.shape[3:])

  outputs = jax.lax.map(lambda blocks: checkpointed(*blocks), tuple(to_blocks(x) for x in xs))
  outputs = jax.tree.map(from_blocks, outputs)
  if length % chunk_size:
    tail = checkpointed(*(x[:, num_full * chunk_size:] for x in xs))
    outputs = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), outputs, tail)
  return outputs


class Attention(nn.Module):
  """Multi-head / grouped-query / multi-query attention with RoPE and an optional KV cache."""

  config: GemmaConfig

  @nn.compact
  def __call__(self, x, positions, mask, layer_cache=None, cache_index=None):
    """Attends from x to itself (or to the cache, which x is first written into).

    Args:
      x: [B, T, D] normed activations.
      positions: [B, T] int positions (RoPE).
      mask: [B, T, S] bool, True where query t may attend key s; without a cache (T == S) it must be
        causal, as `transformer.attention_mask` builds it (`causal_block_attention` relies on it).
      layer_cache: None, or {'k', 'v'}: cached keys/values (after RoPE), laid out as CACHE_AXES.
      cache_index: int32 scalar, the cache slot of x's first token.

    Returns:
      ([B, T, D] output, updated layer cache or None).
    """
    cfg = self.config
    dtype = cfg.compute_dtype
    if self.has_variable("params", QKV_OUTPUT_FIRST):  # transformer.decoding_layout's weights.
      query, key, value = self._project_output_first(x)
      out_w_t = self.get_variable("params", ATTN_OUT_OUTPUT_FIRST).astype(dtype)
      project_out = lambda encoded: output_first_product(encoded, out_w_t)
    else:
      query, key, value, project_out = self._project(x)
    query = apply_rope(query, positions) * jnp.asarray(cfg.head_dim**-0.5, dtype)
    key = apply_rope(key, positions)

    batch, length = query.shape[:2]
    query = query.reshape(batch, length, cfg.num_kv_heads, cfg.num_query_groups, cfg.head_dim)
    new_cache = None
    if layer_cache is not None:
      encoded, new_cache = attend_with_cache(query, key, value, mask, layer_cache, cache_index,
                                             cfg.attention_chunk_size)
    else:
      key, value = key.astype(dtype), value.astype(dtype)
      if cfg.attention_chunk_size is None:
        encoded = causal_block_attention(query, key, value, mask, cfg.attention_causal_blocks)
      else:
        attend = lambda q, m: dot_product_attention(q, key, value, m)
        encoded = map_chunks(attend, (query, mask), cfg.attention_chunk_size)
    # Heads and head_dim folded into one axis X (free reshapes): a plain product over the weight.
    return project_out(encoded.reshape(batch, length, cfg.num_heads * cfg.head_dim)), new_cache

  def _project(self, x):
    """Query [B, T, N, H], key and value [B, T, K, H] and the output projection, over the weights
    in their training layout (the model's parameters)."""
    cfg = self.config
    dtype = cfg.compute_dtype
    q_w = self.param("q_einsum", nn.with_logical_partitioning(_dense_init(1, (0, 2)), ("heads", "embed", "kv")),
                     (cfg.num_heads, cfg.embed_dim, cfg.head_dim), cfg.weight_dtype)
    kv_w = self.param("kv_einsum",
                      nn.with_logical_partitioning(_dense_init(2, (1, 3), (0,)), (None, "kv_heads", "embed", "kv")),
                      (2, cfg.num_kv_heads, cfg.embed_dim, cfg.head_dim), cfg.weight_dtype)
    out_w = self.param("attn_vec_einsum",
                       nn.with_logical_partitioning(_dense_init((0, 1), 2), ("heads", "kv", "embed")),
                       (cfg.num_heads, cfg.head_dim, cfg.embed_dim), cfg.weight_dtype)

    q_w, kv_w = q_w.astype(dtype), kv_w.astype(dtype)
    if weight_copy_is_cheaper(x, q_w):  # XLA transposes q_w once to [D, N, H] for the dot.
      query = token_einsum("MD,NDH->MNH", x, q_w)
    else:  # Few tokens: one batched dot per head over q_w as stored.
      query = jnp.stack(stacked_token_einsum("MD,DH->MH", x, q_w), axis=2)
    key, value = stacked_token_einsum("MD,KDH->MKH", x, kv_w)
    # Folding heads and head_dim into X keeps the output projection a plain matmul over the weight
    # as stored, which XLA would otherwise transpose on every call.
    out_w = out_w.reshape(cfg.num_heads * cfg.head_dim, cfg.embed_dim).astype(dtype)
    return query, key, value, lambda encoded: token_einsum("MX,XD->MD", encoded, out_w)

  def _project_output_first(self, x):
    """Query, key and value as `_project` gives them, from one product over QKV_OUTPUT_FIRST."""
    cfg = self.config
    qkv = output_first_product(x, self.get_variable("params", QKV_OUTPUT_FIRST).astype(cfg.compute_dtype))
    lead, q_width = x.shape[:2], cfg.num_heads * cfg.head_dim
    query = qkv[..., :q_width].reshape(lead + (cfg.num_heads, cfg.head_dim))
    key_value = qkv[..., q_width:].reshape(lead + (2, cfg.num_kv_heads, cfg.head_dim))
    return query, key_value[:, :, 0], key_value[:, :, 1]

  @staticmethod
  def output_first(params: dict) -> dict:
    """This module's parameters with its products laid out for `_project_output_first`:
    [N*H + 2*K*H, D] for the query, key and value, [D, N*H] for the output projection."""
    q_w, kv_w, out_w = params["q_einsum"], params["kv_einsum"], params["attn_vec_einsum"]
    embed = q_w.shape[1]
    q_t = jnp.transpose(q_w, (0, 2, 1)).reshape(-1, embed)  # [N, D, H] -> [N*H, D]
    kv_t = jnp.transpose(kv_w, (0, 1, 3, 2)).reshape(-1, embed)  # [2, K, D, H] -> [2*K*H, D]
    rest = {k: v for k, v in params.items() if k not in ("q_einsum", "kv_einsum", "attn_vec_einsum")}
    return {**rest, QKV_OUTPUT_FIRST: jnp.concatenate([q_t, kv_t]),
            ATTN_OUT_OUTPUT_FIRST: out_w.reshape(-1, embed).T}


class FeedForward(nn.Module):
  """GeGLU: gelu_tanh(x W_gate) * (x W_up), projected back with W_down. No biases."""

  config: GemmaConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype = cfg.compute_dtype
    if self.has_variable("params", GATING_OUTPUT_FIRST):  # transformer.decoding_layout's weights.
      gate_up = output_first_product(x, self.get_variable("params", GATING_OUTPUT_FIRST).astype(dtype))
      gate, up = gate_up[..., :cfg.hidden_dim], gate_up[..., cfg.hidden_dim:]
      down_t = self.get_variable("params", DOWN_OUTPUT_FIRST).astype(dtype)
      project_down = lambda hidden: output_first_product(hidden, down_t)
    else:
      gating = self.param("gating_einsum",
                          nn.with_logical_partitioning(_dense_init(1, 2, (0,)), (None, "embed", "mlp")),
                          (2, cfg.embed_dim, cfg.hidden_dim), cfg.weight_dtype)
      down = self.param("linear", nn.with_logical_partitioning(_dense_init(0, 1), ("mlp", "embed")),
                        (cfg.hidden_dim, cfg.embed_dim), cfg.weight_dtype)
      gate, up = stacked_token_einsum("MD,DF->MF", x, gating.astype(dtype))
      project_down = lambda hidden: token_einsum("MF,FD->MD", hidden, down.astype(dtype))
    hidden = jax.nn.gelu(gate, approximate=True) * up
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    return project_down(hidden)

  @staticmethod
  def output_first(params: dict) -> dict:
    """This module's parameters laid out output-first: [2*F, D] for gate and up, [D, F] for down."""
    gating, down = params["gating_einsum"], params["linear"]
    gating_t = jnp.transpose(gating, (0, 2, 1)).reshape(-1, gating.shape[1])  # [2, D, F] -> [2*F, D]
    return {GATING_OUTPUT_FIRST: gating_t, DOWN_OUTPUT_FIRST: down.T}


class Block(nn.Module):
  """Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x))."""

  config: GemmaConfig

  @nn.compact
  def __call__(self, x, positions, mask, layer_cache=None, cache_index=None):
    attn_out, new_cache = Attention(self.config, name="attn")(
        RMSNorm(self.config, name="pre_attention_norm")(x), positions, mask, layer_cache, cache_index)
    x = x + attn_out
    x = x + FeedForward(self.config, name="mlp")(RMSNorm(self.config, name="pre_ffw_norm")(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), new_cache
