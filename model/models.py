"""t5x-style model interface around the Gemma decoder: loss, scoring and prediction.

The trainer and evaluator only talk to `DecoderOnlyModel`. Batches are the
output of seqio's `DecoderFeatureConverter` (all int32 [B, L]):

  decoder_target_tokens   tokens to predict (0 = padding)
  decoder_input_tokens    targets shifted right by one (first input is 0)
  decoder_loss_weights    1.0 where the target counts in the loss
  decoder_segment_ids     packed-example id per token, 0 = padding   (packed batches only)
  decoder_positions       position within its segment                (packed batches only)

Gemma 1 has no dropout, so `dropout_rng` is accepted for interface
compatibility with t5x trainers and not used.

Losses and scores are built from per-token statistics (`token_statistics`:
logsumexp, target logit, logit sum, argmax hit). With config.loss_chunk_size
they are computed for that many positions at a time (`map_chunks`), so the
[B, L, V] float32 logits of a long sequence never exist at once.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import decoding
from model.config import GemmaConfig
from model.modules import map_chunks
from model.transformer import Transformer

Batch = Mapping[str, Any]

_SAMPLING_METHODS = ("greedy", "temperature", "top_k", "top_p")


def token_statistics(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
  """Per-token float32 [..] numbers the losses and scores are made of, from logits [.., V].

    log_z          logsumexp of the logits
    target_logit   the target's logit (log p(target) = target_logit - log_z)
    sum_logits     sum over the vocab (label smoothing's uniform part)
    correct        1.0 where the argmax is the target
  """
  return {
      "log_z": jax.nn.logsumexp(logits, axis=-1),
      "target_logit": jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0],
      "sum_logits": jnp.sum(logits, axis=-1),
      "correct": (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32),
  }


def token_cross_entropy(stats: Mapping[str, jax.Array], vocab_size: int, label_smoothing: float = 0.0,
                        z_loss: float = 0.0):
  """Per-token (loss including the z-loss term, the z-loss term), t5x's semantics.

  Label smoothing puts 1 - label_smoothing on the target and spreads the rest
  evenly over the other vocab entries; the entropy of that distribution is
  subtracted so a perfect prediction has loss 0. The soft-target sum is taken
  in closed form (target part + uniform part), so no [.., V] one-hot is built.
  z_loss adds z_loss * log_z^2.
  """
  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  normalizing_constant = -(confidence * jnp.log(confidence)
                           + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
  log_z = stats["log_z"]
  target_log_prob = stats["target_logit"] - log_z
  loss = -target_log_prob
  if label_smoothing:
    sum_log_probs = stats["sum_logits"] - vocab_size * log_z
    loss = -((confidence - low_confidence) * target_log_prob + low_confidence * sum_log_probs)
  loss = loss - normalizing_constant
  total_z_loss = z_loss * jnp.square(log_z)
  return loss + total_z_loss, total_z_loss


def compute_weighted_cross_entropy(logits, targets, weights=None, label_smoothing=0.0, z_loss=0.0,
                                   loss_normalizing_factor=None):
  """Summed (loss, z_loss, weight_sum) over tokens, as t5x's function of the same name."""
  stats = token_statistics(logits, targets)
  return _weighted_sums(stats, logits.shape[-1], targets, weights, label_smoothing, z_loss,
                        loss_normalizing_factor)


def _weighted_sums(stats, vocab_size, targets, weights, label_smoothing, z_loss, loss_normalizing_factor):
  total_loss, total_z_loss = token_cross_entropy(stats, vocab_size, label_smoothing, z_loss)
  weight_sum = jnp.asarray(targets.size, jnp.float32)
  if weights is not None:
    total_loss = total_loss * weights
    total_z_loss = total_z_loss * weights
    weight_sum = jnp.sum(weights)
  if loss_normalizing_factor is not None:
    total_loss = total_loss / loss_normalizing_factor
    total_z_loss = total_z_loss / loss_normalizing_factor
  return jnp.sum(total_loss), jnp.sum(total_z_loss), weight_sum


def segments_and_positions(batch: Batch):
  """decoder_segment_ids and decoder_positions, derived when the batch is unpacked.

  For an unpacked batch a token is real iff its target is non-zero (the input
  of the first token is 0 by seqio's shift, so inputs cannot tell), and
  positions count real tokens from 0.
  """
  targets = jnp.asarray(batch["decoder_target_tokens"])
  segment_ids = batch.get("decoder_segment_ids")
  positions = batch.get("decoder_positions")
  if segment_ids is None:
    segment_ids = (targets != 0).astype(jnp.int32)
  if positions is None:
    real = (jnp.asarray(segment_ids) != 0).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0)
  return jnp.asarray(segment_ids, jnp.int32), jnp.asarray(positions, jnp.int32)


class DecoderOnlyModel:
  """Gemma decoder + loss / scoring / decoding, in the shape of t5x's DecoderOnlyModel."""

  def __init__(self, config: GemmaConfig, z_loss: float = 0.0, label_smoothing: float = 0.0,
               loss_normalizing_factor: float | None = None):
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if z_loss < 0.0:
      raise ValueError(f"z_loss must be >= 0, got {z_loss}")
    if loss_normalizing_factor is not None and loss_normalizing_factor <= 0:
      raise ValueError(f"loss_normalizing_factor must be positive or None, got {loss_normalizing_factor}")
    self.config = config
    self.module = Transformer(config)
    self.z_loss = float(z_loss)
    self.label_smoothing = float(label_smoothing)
    self.loss_normalizing_factor = loss_normalizing_factor

  # ---------------------------------------------------------------- params

  def _init_variables(self, rng, batch_size, seq_len):
    tokens = jnp.ones((batch_size, seq_len), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch_size, seq_len))
    return self.module.init(rng, tokens, positions)

  def init_params(self, rng, batch_size: int = 1, seq_len: int = 8):
    """Freshly initialised parameters (plain arrays in param_dtype, no partitioning boxes)."""
    init = jax.jit(self._init_variables, static_argnums=(1, 2))  # One compile beats eager op-by-op init.
    return nn.unbox(init(rng, batch_size, seq_len)["params"])

  def abstract_params(self, batch_size: int = 1, seq_len: int = 8):
    """Parameter shapes/dtypes as jax.ShapeDtypeStruct, without allocating anything."""
    return jax.eval_shape(lambda: self.init_params(jax.random.PRNGKey(0), batch_size, seq_len))

  def logical_axes(self):
    """PartitionSpecs of logical axis names, one per parameter (same tree as params)."""
    boxed = jax.eval_shape(lambda: self._init_variables(jax.random.PRNGKey(0), 1, 8))
    return nn.get_partition_spec(boxed)["params"]

  def check_params(self, params) -> None:
    """Raises a clear ValueError if params do not match this model's config."""
    expected = self.abstract_params()
    got_paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    want_paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(expected)}
    missing = sorted(set(want_paths) - set(got_paths))
    extra = sorted(set(got_paths) - set(want_paths))
    if missing or extra:
      raise ValueError(f"params do not match the config: missing {missing[:5]}, unexpected {extra[:5]}")
    for path, want in want_paths.items():
      if tuple(got_paths[path].shape) != tuple(want.shape):
        hint = ""
        if "input_embedding" in path:
          hint = (f" (vocab mismatch: params have {got_paths[path].shape[0]} rows, "
                  f"config.vocab_size is {self.config.vocab_size})")
        raise ValueError(f"param {path} has shape {tuple(got_paths[path].shape)}, expected {tuple(want.shape)}{hint}")
      if jnp.dtype(got_paths[path].dtype) != jnp.dtype(want.dtype):
        raise ValueError(f"param {path} has dtype {jnp.dtype(got_paths[path].dtype)}, expected {want.dtype} "
                         f"(config.param_dtype {self.config.param_dtype!r})")

  # ---------------------------------------------------------------- forward

  def in_vocab(self, tokens) -> jax.Array:
    """bool: ids in [0, vocab_size). Jitted paths cannot raise on values, so out-of-vocab ids
    (which would embed as NaN) are replaced by padding, left out of the loss and counted
    (`loss_fn`'s `invalid_tokens`, which the trainer turns into an error)."""
    tokens = jnp.asarray(tokens)
    return (tokens >= 0) & (tokens < self.config.vocab_size)

  def _inputs(self, batch: Batch) -> jax.Array:
    inputs = jnp.asarray(batch["decoder_input_tokens"])
    return jnp.where(self.in_vocab(inputs), inputs, 0)

  def logits(self, params, batch: Batch) -> jax.Array:
    """float32 [B, L, V] next-token logits for decoder_input_tokens."""
    segment_ids, positions = segments_and_positions(batch)
    logits, _ = self.module.apply({"params": params}, self._inputs(batch), positions, segment_ids)
    return logits

  def token_statistics(self, params, batch: Batch) -> dict[str, jax.Array]:
    """`token_statistics` of every target, float32 [B, L] each.

    With config.loss_chunk_size the logits are computed for that many positions
    at a time and recomputed in the backward pass (`map_chunks`), so the
    [B, L, V] float32 logits never exist at once; the numbers are the same.
    """
    segment_ids, positions = segments_and_positions(batch)
    hidden, _ = self.module.apply({"params": params}, self._inputs(batch), positions,
                                  segment_ids, method=Transformer.hidden_states)
    targets = jnp.asarray(batch["decoder_target_tokens"])
    targets = jnp.where(self.in_vocab(targets), targets, 0)

    def chunk_statistics(hidden_chunk, targets_chunk):
      logits = self.module.apply({"params": params}, hidden_chunk, method=Transformer.logits)
      return token_statistics(logits, targets_chunk)

    if self.config.loss_chunk_size is None:
      return chunk_statistics(hidden, targets)
    return map_chunks(chunk_statistics, (hidden, targets), self.config.loss_chunk_size)

  def loss_fn(self, params, batch: Batch, dropout_rng=None):
    """(scalar loss, metrics) for a training batch; see the module docstring for the batch."""
    del dropout_rng  # Gemma 1 has no dropout.
    stats = self.token_statistics(params, batch)
    targets = jnp.asarray(batch["decoder_target_tokens"])
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else jnp.asarray(weights)
    weights = weights.astype(jnp.float32) * self.in_vocab(targets)
    invalid = (jnp.sum(~self.in_vocab(targets))
               + jnp.sum(~self.in_vocab(batch["decoder_input_tokens"]))).astype(jnp.float32)
    targets = jnp.where(self.in_vocab(targets), targets, 0)
    loss, z_loss, weight_sum = _weighted_sums(stats, self.config.vocab_size, targets, weights, self.label_smoothing,
                                              self.z_loss, self.loss_normalizing_factor)
    if self.loss_normalizing_factor is None:
      # Normalise by the number of weighted target tokens (guarding an all-padding batch).
      denominator = jnp.maximum(weight_sum, 1e-8)
      loss, z_loss = loss / denominator, z_loss / denominator
    correct = stats["correct"]
    metrics = {
        "loss": loss,
        "cross_ent_loss": loss - z_loss,
        "z_loss": z_loss,
        "accuracy": jnp.sum(correct * weights) / jnp.maximum(weight_sum, 1e-8),
        "num_tokens": jnp.sum(targets > 0).astype(jnp.float32),
        "weight_sum": weight_sum,
        "invalid_tokens": invalid,
    }
    return loss, metrics

  def score_batch(self, params, batch: Batch) -> jax.Array:
    """float32 [B]: sum over tokens of log p(target) * decoder_loss_weights."""
    stats = self.token_statistics(params, batch)
    targets = jnp.asarray(batch["decoder_target_tokens"])
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else jnp.asarray(weights)
    weights = weights.astype(jnp.float32) * self.in_vocab(targets)
    token_scores = stats["target_logit"] - stats["log_z"]
    return jnp.sum(token_scores * weights, axis=-1)

  # ---------------------------------------------------------------- decoding

  def predict_batch(self, params, batch: Batch, rng=None, *, bos_id: int, stop_tokens,
                    max_decode_len: int = 64, method: str = "greedy",
                    temperature: float = 1.0, top_k: int = 40, top_p: float = 0.95, num_beams: int = 4,
                    brevity_alpha: float = 0.6, return_scores: bool = False):
    """int32 [B, max_decode_len] continuations of the prompts in batch['decoder_input_tokens'].

    Prompts are rows of token ids padded with 0 on either side; BOS is
    prepended to rows that do not start with it (and only to those: a batch of
    prompts that start with BOS keeps its length). Generation stops at any of
    `stop_tokens` (kept in the output); later slots are 0. `bos_id` and
    `stop_tokens` are the vocabulary's (`tasks.special_tokens`: `.bos`, `.stop_ids`). `method` is one of
    greedy, temperature, top_k, top_p, beam. With return_scores=True, also
    returns float32 [B] log-probabilities of the continuations (beam:
    brevity-normalised scores).
    """
    prompts = decoding.left_pad_with_bos(jnp.asarray(batch["decoder_input_tokens"]), bos_id)
    # left_pad_with_bos adds a column for BOS; where no row needed it, that column is all
    # padding and would only cost a position of the cache (max_seq_len): drop it.
    first_used = int(jnp.argmax(jnp.any(prompts != decoding.PAD_ID, axis=0)))
    prompts = prompts[:, first_used:]
    if method == "beam":
      tokens, scores = decoding.beam_search(self.config, params, prompts, max_decode_len=max_decode_len,
                                            num_beams=num_beams, brevity_alpha=brevity_alpha,
                                            stop_tokens=tuple(stop_tokens))
    elif method in _SAMPLING_METHODS:
      if rng is None:
        if method != "greedy":
          raise ValueError(f"method={method!r} samples and needs an rng")
        rng = jax.random.PRNGKey(0)
      sampler = decoding.Sampler(method=method, temperature=temperature, top_k=top_k, top_p=top_p)
      tokens, scores = decoding.generate(self.config, params, prompts, rng, max_decode_len=max_decode_len,
                                         sampler=sampler, stop_tokens=tuple(stop_tokens))
    else:
      raise ValueError(f"unknown decoding method {method!r}; use one of {_SAMPLING_METHODS + ('beam',)}")
    return (tokens, scores) if return_scores else tokens
