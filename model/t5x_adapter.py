"""Our Gemma `Transformer` behind the module interface of t5x's `DecoderOnlyModel`.

t5x (github.com/google-research/t5x) drives a flax module with

    module.apply({'params': params}, decoder_input_tokens, decoder_target_tokens,
                 decoder_segment_ids=..., decoder_positions=..., decoder_causal_attention=...,
                 enable_dropout=..., decode=False) -> float32 logits [B, L, V]

and partitions parameters from a `params_axes` collection (flax.linen.partitioning's
`AxisMetadata`, one `<name>_axes` entry per parameter). `GemmaT5xAdapter` provides both:

* the call signature above, mapping t5x's features onto `Transformer(tokens, positions,
  segment_ids)` exactly as `model.models.DecoderOnlyModel` does (unpacked batches: a token is
  real iff its target is non-zero, positions count real tokens);
* at init, plain (unboxed) parameters under `params['decoder']` -- the same tree as our own
  checkpoints -- plus `params_axes['decoder']` with our logical axis names ('vocab', 'embed',
  'heads', 'kv_heads', 'kv', 'mlp'; the unnamed axis that stacks key/value and gate/up is
  named 'stack', which t5x's partitioning rules replicate and its Adafactor rules treat as a
  batch of matrices);
* t5x's cached decoding (`DecoderOnlyModel.predict_batch`, `t5x.infer` predict mode, seqio
  evaluations with generation), below.

`optax_optimizer` / `optimizer_schedule` give t5x `model.train`'s optimizer (t5x's `OptaxWrapper`
around `model.optimizers.create_optimizer`), so both trainers follow one loss curve
(gin/t5x/parity_gemma_small.gin, tests/test_t5x_parity.py).

Cached decoding, as t5x's decoder-only models do it (t5x/models.py `_compute_kv_cache` and
t5x/decoding.py): prompts are right-padded and every row has its own cache index.

1. `decode=True` on a module without a cache: creates the 'cache' collection for the call's
   [B, L] shape (L = the longest decode), all slots empty.
2. `prefill=True, prefill_lengths=n [B]`: runs the prompts (real where decoder_target_tokens
   != 0) through the model, keeps the keys/values of slots < n[b] and sets cache_index = n.
   The token at slot n[b] is fed again by the first decode step.
3. `decode=True` with [B, 1] tokens: row b's token sits at position cache_index[b]; it is
   written to that slot, attends to the slots up to it, and cache_index advances by one.

The cache is {'cache_index': int32 [B], 'segment_ids': int32 [B, L] (0 = empty slot),
'layers': {'layer_<i>': {'k', 'v': [B, L, K, H]}}}: every leaf has the batch first, so t5x can
expand and reorder it for sampling and beam search. A decode step runs our Transformer's own
KV-cache step once per row (`jax.vmap`), each row with its own scalar index.

Prefix-LM attention (`decoder_causal_attention` bidirectional over the inputs) is not part of
Gemma and is refused.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning

# gin configurables of the data side (tasks.register_data_dir, model.gin_utils.build_model) and of
# model.optimizers (create_optimizer, create_schedule) are defined when these modules are
# imported: import them here, when gin parses gemma.gin, not lazily inside gemma_vocabulary (t5x
# has locked the config by then).
import tasks
from model import gin_utils
from tasks import eval_tasks
from model.config import GemmaConfig
from model.models import segments_and_positions
from model.optimizers import Optimizer, create_optimizer
from model.transformer import Transformer, init_cache

# The axis our params leave unnamed (stacked key/value, stacked gate/up), t5x's name for it.
STACK_AXIS = "stack"


def _is_boxed(_, value) -> bool:
  return isinstance(value, nn.LogicallyPartitioned)


def _params_and_axes(variables):
  """Boxed params -> {'params': plain arrays, 'params_axes': t5x's `<name>_axes` metadata}.

  Runs on every pass of `nn.map_variables`; once the params are plain (second init pass),
  the axes already derived are kept.
  """
  params = variables.get("params", {})
  flat = traverse_util.flatten_dict(params, is_leaf=_is_boxed)
  axes = {path[:-1] + (path[-1] + "_axes",): flax_partitioning.AxisMetadata(
              names=tuple(STACK_AXIS if name is None else name for name in value.names))
          for path, value in flat.items() if isinstance(value, nn.LogicallyPartitioned)}
  return {"params": nn.unbox(params),
          "params_axes": traverse_util.unflatten_dict(axes) if axes else variables.get("params_axes", {})}


def _decode_row(decoder, token, position, row_cache, index):
  """One row's decode step: our Transformer's cached call on a [1, 1] token at `index`."""
  cache = {"index": index, **jax.tree.map(lambda x: x[None], row_cache)}
  logits, cache = decoder(token[None, None], position[None, None], jnp.ones((1, 1), jnp.int32),
                          cache=cache, decode=True)
  return logits[0, 0], {"segment_ids": cache["segment_ids"][0],
                        "layers": jax.tree.map(lambda x: x[0], cache["layers"])}


class GemmaT5xAdapter(nn.Module):
  """`Transformer(config)` with the call signature of t5x's decoder-only modules."""

  config: GemmaConfig

  @nn.compact
  def __call__(self,
               decoder_input_tokens,
               decoder_target_tokens,
               decoder_segment_ids=None,
               decoder_positions=None,
               decoder_causal_attention=None,
               *,
               enable_dropout: bool = True,
               decode: bool = False,
               max_decode_length: Optional[int] = None,
               prefill: Optional[bool] = None,
               prefill_lengths=None):
    """float32 logits [B, L, V] (t5x's features, int [B, L]); see the module docstring."""
    del enable_dropout, max_decode_length  # Gemma 1 has no dropout; the cache has its own length.
    if decoder_causal_attention is not None:
      raise ValueError("decoder_causal_attention (prefix-LM bidirectional attention) is not part of "
                       "Gemma; leave DecoderOnlyModel.inputs_bidirectional_attention=False")
    if decode and prefill:
      raise ValueError("prefill=True and decode=True are separate calls: prefill the prompts first, "
                       "then decode one token per call")
    if self.is_initializing():  # Emit plain params and their t5x `params_axes`.
      decoder = nn.map_variables(Transformer, ["params", "params_axes"], trans_out_fn=_params_and_axes,
                                 init=True, mutable=True)(self.config, name="decoder")
    else:  # Same parameter tree, already plain.
      decoder = Transformer(self.config, name="decoder")
    tokens = jnp.asarray(decoder_input_tokens, jnp.int32)
    batch = {"decoder_target_tokens": decoder_target_tokens}
    if decoder_segment_ids is not None:
      batch["decoder_segment_ids"] = decoder_segment_ids
    if decoder_positions is not None:
      batch["decoder_positions"] = decoder_positions
    segment_ids, positions = segments_and_positions(batch)
    if not (decode or prefill) or self.is_initializing():
      logits, _ = decoder(tokens, positions, segment_ids)
      return logits

    if not self.has_variable("cache", "cache_index"):  # Step 1: make the empty cache.
      empty = init_cache(self.config, *tokens.shape)
      self.variable("cache", "cache_index", jnp.zeros, (tokens.shape[0],), jnp.int32)
      self.variable("cache", "segment_ids", lambda: empty["segment_ids"])
      self.variable("cache", "layers", lambda: empty["layers"])
      logits, _ = decoder(tokens, positions, segment_ids)
      return logits
    cache_index = self.variable("cache", "cache_index")
    cached_segments = self.variable("cache", "segment_ids")
    cached_layers = self.variable("cache", "layers")

    if prefill:  # Step 2.
      if prefill_lengths is None:
        raise ValueError("prefill=True needs prefill_lengths [batch]: the number of prompt tokens "
                         "to keep in the cache (t5x's _compute_kv_cache passes them)")
      batch_size, cache_len = cached_segments.value.shape
      if tokens.shape != (batch_size, cache_len):
        raise ValueError(f"prefill tokens have shape {tokens.shape}; the cache was made for "
                         f"{(batch_size, cache_len)}")
      logits, cache = decoder(tokens, positions, segment_ids, cache=init_cache(self.config, *tokens.shape),
                              decode=True)
      lengths = jnp.asarray(prefill_lengths, jnp.int32)
      kept = jnp.arange(cache_len)[None, :] < lengths[:, None]
      cached_segments.value = jnp.where(kept, cache["segment_ids"], 0)
      cached_layers.value = cache["layers"]
      cache_index.value = lengths
      return logits

    # Step 3: one token per row, each at its own slot.
    if tokens.shape[1] != 1:
      raise ValueError(f"decode=True feeds one token per row, got tokens of shape {tokens.shape}")
    step = nn.vmap(_decode_row, variable_axes={"params": None},
                   split_rngs={"params": False}, in_axes=0, out_axes=0)
    # t5x's beam search keeps the index as [batch, beams] while the other leaves are flattened
    # to [batch * beams, ...]; row order is the same.
    index = cache_index.value.reshape(-1)
    logits, cache = step(decoder, tokens[:, 0], index, {"segment_ids": cached_segments.value,
                                                        "layers": cached_layers.value}, index)
    cached_segments.value = cache["segment_ids"]
    cached_layers.value = cache["layers"]
    cache_index.value = cache_index.value + 1
    return logits[:, None, :]


def gemma_vocabulary(data_dir: str, register_eval_tasks: bool = False, eval_examples: int = 100):
  """The SentencePiece vocabulary of a tokenized DATA_DIR, for t5x's `VOCABULARY` macro.

  Also registers DATA_DIR's gf_* seqio tasks (once per process): t5x builds MODEL, and so
  the vocabulary, before it looks up MIXTURE_OR_TASK_NAME. With register_eval_tasks, also
  DATA_DIR's eval tasks (tasks/eval_tasks.py: `gf_eval_next_line`, at most `eval_examples`
  examples), for t5x.eval / t5x.infer.
  """
  gin_utils.register_data_dir(data_dir)
  if register_eval_tasks:
    eval_tasks.register_eval_tasks(data_dir, max_examples=eval_examples)
  return tasks.get_vocabulary(data_dir)


def optax_optimizer(optimizer: Optional[Optimizer] = None):
  """t5x's `OptaxWrapper` around `model.optimizers.create_optimizer()`'s optax transformation.

  For t5x's `DecoderOnlyModel.optimizer_def`: t5x.train then applies model.train's update (the
  gradient clip, the optimizer and its schedule, which lives inside the transformation).
  """
  from t5x import optimizers as t5x_optimizers
  optimizer = optimizer if optimizer is not None else create_optimizer()
  return t5x_optimizers.OptaxWrapper(optimizer.tx)


def optimizer_schedule(optimizer: Optional[Optimizer] = None):
  """The learning-rate schedule of `optimizer`, for t5x's `Trainer.learning_rate_fn`.

  An `OptaxWrapper` ignores the rate t5x's trainer passes it; binding the same schedule makes
  t5x's logged `learning_rate` the one the transformation applies.
  """
  optimizer = optimizer if optimizer is not None else create_optimizer()
  return optimizer.learning_rate_fn
