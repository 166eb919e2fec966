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
  'heads', 'kv_heads', 'kv', 'mlp'), so t5x's ModelBasedPjitPartitioner can shard them.

Not supported, with a clear error: t5x's cached decoding (`decode=True` / `prefill=True`, used by
`predict_batch` and infer evaluations). Our KV cache writes every row at one shared slot with
left-padded prompts; t5x's decoders keep a per-row cache index over right-padded prompts. Sample
with `python -m model.infer` instead. Prefix-LM attention (`decoder_causal_attention`) is not
part of Gemma and is refused too.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning

from model.config import GemmaConfig
from model.models import segments_and_positions
from model.transformer import Transformer


def _is_boxed(_, value) -> bool:
  return isinstance(value, nn.LogicallyPartitioned)


def _params_and_axes(variables):
  """Boxed params -> {'params': plain arrays, 'params_axes': t5x's `<name>_axes` metadata}.

  Runs on every pass of `nn.map_variables`; once the params are plain (second init pass),
  the axes already derived are kept.
  """
  params = variables.get("params", {})
  flat = traverse_util.flatten_dict(params, is_leaf=_is_boxed)
  axes = {path[:-1] + (path[-1] + "_axes",): flax_partitioning.AxisMetadata(names=tuple(value.names))
          for path, value in flat.items() if isinstance(value, nn.LogicallyPartitioned)}
  return {"params": nn.unbox(params),
          "params_axes": traverse_util.unflatten_dict(axes) if axes else variables.get("params_axes", {})}


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
    """float32 logits [B, L, V] for teacher-forced decoder inputs (t5x's features, int [B, L])."""
    del enable_dropout, max_decode_length, prefill_lengths  # Gemma 1 has no dropout.
    if decode or prefill:
      raise ValueError(
          "GemmaT5xAdapter does not implement t5x's cached decoding (decode=True / prefill=True, "
          "used by t5x predict_batch and infer evaluations): our KV cache keeps one shared slot "
          "index for left-padded prompts. Use `python -m model.infer` to sample, and t5x only "
          "for training and score-based evaluation.")
    if decoder_causal_attention is not None:
      raise ValueError("decoder_causal_attention (prefix-LM bidirectional attention) is not part of "
                       "Gemma; leave DecoderOnlyModel.inputs_bidirectional_attention=False")
    batch = {"decoder_target_tokens": decoder_target_tokens}
    if decoder_segment_ids is not None:
      batch["decoder_segment_ids"] = decoder_segment_ids
    if decoder_positions is not None:
      batch["decoder_positions"] = decoder_positions
    segment_ids, positions = segments_and_positions(batch)
    decoder = nn.map_variables(Transformer, ["params", "params_axes"], trans_out_fn=_params_and_axes,
                               init=True, mutable=True)(self.config, name="decoder")
    logits, _ = decoder(jnp.asarray(decoder_input_tokens, jnp.int32), positions, segment_ids)
    return logits


def gemma_vocabulary(data_dir: str):
  """The SentencePiece vocabulary of a tokenized DATA_DIR, for t5x's `VOCABULARY` macro.

  Also registers DATA_DIR's gf_* seqio tasks (once per process): t5x builds MODEL, and so
  the vocabulary, before it looks up MIXTURE_OR_TASK_NAME.
  """
  from model import gin_utils
  import tasks
  gin_utils.register_data_dir(data_dir)
  return tasks.get_vocabulary(data_dir)
