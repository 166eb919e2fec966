"""Autoregressive decoding with a KV cache: samplers (greedy / temperature / top-k / top-p) and beam search.

Both `generate` and `beam_search` are single jit-compiled functions: the
prompt is prefilled into the cache with one forward pass, then a
`jax.lax.while_loop` runs one single-token forward pass per generated token
and exits early once every row has produced a stop token.

Prompts are int32 [B, P] rows of token ids, left-padded with 0 (use
`left_pad_with_bos` or `pad_prompts`); each row gets its own positions
(0 at its first real token), and padding is masked out of attention.

Outputs are int32 [B, max_decode_len]: generated tokens, including the stop
token that ended the row, then 0s.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from model.config import GemmaConfig
from model.transformer import Transformer, init_cache

PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
START_OF_TURN_ID = 106
END_OF_TURN_ID = 107
DEFAULT_STOP_TOKENS = (EOS_ID, END_OF_TURN_ID)

_NEG_INF = -1e9  # Score of impossible beams / masked tokens (finite: keeps arithmetic NaN-free).


# ---------------------------------------------------------------- prompts


def chat_template(user_text: str) -> str:
  """Gemma's instruction-tuned turn format for one user message (BOS is added at tokenisation)."""
  return f"<start_of_turn>user\n{user_text}<end_of_turn>\n<start_of_turn>model\n"


def format_prompt(token_ids: Sequence[int], bos_id: int = BOS_ID) -> list[int]:
  """token_ids with BOS prepended (once)."""
  token_ids = [int(t) for t in token_ids]
  return token_ids if token_ids[:1] == [bos_id] else [bos_id] + token_ids


def pad_prompts(prompts: Sequence[Sequence[int]], bos_id: int = BOS_ID) -> np.ndarray:
  """int32 [B, P]: each prompt with BOS prepended, left-padded with 0 to the longest."""
  rows = [format_prompt(p, bos_id) for p in prompts]
  if any(PAD_ID in row for row in rows):
    raise ValueError(f"prompts may not contain the padding id {PAD_ID}")
  width = max(len(r) for r in rows)
  out = np.zeros((len(rows), width), np.int32)
  for i, row in enumerate(rows):
    out[i, width - len(row):] = row
  return out


def left_pad(tokens: jax.Array) -> jax.Array:
  """Moves every 0 of each row to its left end, keeping the order of the other tokens."""
  order = jnp.argsort(tokens != PAD_ID, axis=1, stable=True)
  return jnp.take_along_axis(tokens, order, axis=1)


def left_pad_with_bos(tokens: jax.Array, bos_id: int = BOS_ID) -> jax.Array:
  """[B, P] left- or right-padded prompts -> [B, P + 1] left-padded prompts that all start with BOS."""
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"prompts must be an integer [batch, length] array, got {tokens.dtype} {tokens.shape}")
  tokens = left_pad(tokens.astype(jnp.int32))
  batch, length = tokens.shape
  first = length - jnp.sum(tokens != PAD_ID, axis=1)  # index of the first real token (length if none)
  first_token = jnp.take_along_axis(tokens, jnp.minimum(first, length - 1)[:, None], axis=1)[:, 0]
  needs_bos = (first == length) | (first_token != bos_id)
  padded = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), tokens], axis=1)
  # In `padded` the first real token sits at first + 1, so the slot before it is `first`.
  return padded.at[jnp.arange(batch), first].set(jnp.where(needs_bos, bos_id, PAD_ID))


def _prompt_segments_and_positions(prompts):
  segment_ids = (prompts != PAD_ID).astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
  return segment_ids, positions


# ---------------------------------------------------------------- samplers


@dataclasses.dataclass(frozen=True)
class Sampler:
  """How the next token is picked from logits. Hashable, so it is a static jit argument.

  greedy: argmax. temperature: sample softmax(logits / temperature).
  top_k: sample among the top_k most likely tokens. top_p (nucleus): sample
  among the smallest set of tokens whose probability mass reaches top_p.
  Temperature applies to all sampling methods.
  """

  method: str = "greedy"
  temperature: float = 1.0
  top_k: int = 40
  top_p: float = 0.95

  def __post_init__(self):
    if self.method not in ("greedy", "temperature", "top_k", "top_p"):
      raise ValueError(f"unknown sampling method {self.method!r}")
    if self.temperature <= 0:
      raise ValueError(f"temperature must be > 0 (use method='greedy' for argmax), got {self.temperature}")
    if self.method == "top_k" and self.top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {self.top_k}")
    if self.method == "top_p" and not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    """[B, V] float32 logits -> [B] int32 tokens."""
    if self.method == "greedy":
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / self.temperature
    if self.method == "top_k":
      kth_largest = jax.lax.top_k(logits, min(self.top_k, logits.shape[-1]))[0][:, -1:]
      logits = jnp.where(logits < kth_largest, _NEG_INF, logits)
    elif self.method == "top_p":
      sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
      sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
      mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
      # Keep a token while the mass of the more likely tokens is still below top_p.
      threshold = jnp.min(jnp.where(mass_before < self.top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
      logits = jnp.where(logits < threshold, _NEG_INF, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _step(model, params, tokens, positions, segment_ids, cache):
  logits, cache = model.apply({"params": params}, tokens, positions, segment_ids, cache=cache, decode=True)
  return logits[:, -1], cache


def _prefill(config, params, prompts, max_decode_len):
  model = Transformer(config)
  cache = init_cache(config, prompts.shape[0], prompts.shape[1] + max_decode_len)
  segment_ids, positions = _prompt_segments_and_positions(prompts)
  last_logits, cache = _step(model, params, prompts, positions, segment_ids, cache)
  return model, last_logits, cache, jnp.sum(segment_ids, axis=1)


@functools.partial(jax.jit, static_argnames=("config", "max_decode_len", "sampler", "stop_tokens"))
def generate(config: GemmaConfig, params, prompts: jax.Array, rng: jax.Array, *, max_decode_len: int,
             sampler: Sampler = Sampler(), stop_tokens: tuple[int, ...] = DEFAULT_STOP_TOKENS):
  """Samples continuations of left-padded prompts.

  Returns (int32 [B, max_decode_len] tokens, float32 [B] sum of the model's
  log-probabilities of the generated tokens, stop token included).
  """
  batch = prompts.shape[0]
  model, last_logits, cache, next_positions = _prefill(config, params, prompts, max_decode_len)
  stop = jnp.asarray(stop_tokens, jnp.int32)

  def cond(state):
    step, _, _, _, done, _, _ = state
    return (step < max_decode_len) & ~jnp.all(done)

  def body(state):
    step, cache, last_logits, positions, done, out, scores = state
    token = sampler(last_logits, jax.random.fold_in(rng, step))
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(last_logits, axis=-1), token[:, None], axis=-1)[:, 0]
    token = jnp.where(done, PAD_ID, token)
    scores = scores + jnp.where(done, 0.0, log_prob)
    out = out.at[:, step].set(token)
    done = done | jnp.isin(token, stop)
    last_logits, cache = _step(model, params, token[:, None], positions[:, None],
                               jnp.ones((batch, 1), jnp.int32), cache)
    return step + 1, cache, last_logits, positions + 1, done, out, scores

  state = (jnp.int32(0), cache, last_logits, next_positions, jnp.zeros((batch,), bool),
           jnp.zeros((batch, max_decode_len), jnp.int32), jnp.zeros((batch,), jnp.float32))
  _, _, _, _, _, out, scores = jax.lax.while_loop(cond, body, state)
  return out, scores


# ---------------------------------------------------------------- beam search


def brevity_penalty(alpha: float, length: jax.Array) -> jax.Array:
  """t5x / GNMT length penalty ((5 + length) / 6) ** alpha; alpha = 0 ranks by raw log-probability."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=("config", "max_decode_len", "num_beams", "brevity_alpha", "stop_tokens"))
def beam_search(config: GemmaConfig, params, prompts: jax.Array, *, max_decode_len: int, num_beams: int = 4,
                brevity_alpha: float = 0.6, stop_tokens: tuple[int, ...] = DEFAULT_STOP_TOKENS):
  """Beam search; returns (int32 [B, max_decode_len] best beam, float32 [B] its normalised score).

  The W live beams of a row are ranked by summed log-probability. A beam that
  emits a stop token stays in the beam set, extended with padding at no cost,
  so it keeps competing with the live ones. When the loop ends (all beams
  stopped or max_decode_len reached) each beam's log-probability is divided
  by `brevity_penalty(brevity_alpha, generated length incl. the stop token)`
  and the best one is returned. With num_beams=1 this is greedy decoding.
  """
  if num_beams < 1:
    raise ValueError(f"num_beams must be >= 1, got {num_beams}")
  batch, width = prompts.shape[0], num_beams
  flat_prompts = jnp.repeat(prompts, width, axis=0)  # [B * W, P], beams of a row are adjacent.
  model, last_logits, cache, next_positions = _prefill(config, params, flat_prompts, max_decode_len)
  vocab = last_logits.shape[-1]
  stop = jnp.asarray(stop_tokens, jnp.int32)
  # Only beam 0 is live at first, so the W beams do not all pick the same token.
  first_scores = jnp.where(jnp.arange(width) == 0, 0.0, _NEG_INF).astype(jnp.float32)
  pad_continuation = jnp.full((vocab,), _NEG_INF, jnp.float32).at[PAD_ID].set(0.0)

  def cond(state):
    step, *_, done, _ = state
    return (step < max_decode_len) & ~jnp.all(done)

  def body(state):
    step, cache, last_logits, positions, scores, lengths, done, seqs = state
    log_probs = jax.nn.log_softmax(last_logits, axis=-1).reshape(batch, width, vocab)
    log_probs = jnp.where(done[..., None], pad_continuation, log_probs)
    candidates = (scores[..., None] + log_probs).reshape(batch, width * vocab)
    scores, flat_index = jax.lax.top_k(candidates, width)
    parent, token = flat_index // vocab, (flat_index % vocab).astype(jnp.int32)

    done = jnp.take_along_axis(done, parent, axis=1)
    lengths = jnp.take_along_axis(lengths, parent, axis=1) + (~done).astype(jnp.int32)
    seqs = jnp.take_along_axis(seqs, parent[..., None], axis=1).at[:, :, step].set(token)
    done = done | jnp.isin(token, stop)

    rows = (jnp.arange(batch)[:, None] * width + parent).reshape(-1)
    cache = jax.tree.map(lambda x: x[rows] if x.ndim else x, cache)
    positions = positions[rows]
    last_logits, cache = _step(model, params, token.reshape(-1, 1), positions[:, None],
                               jnp.ones((batch * width, 1), jnp.int32), cache)
    return step + 1, cache, last_logits, positions + 1, scores, lengths, done, seqs

  state = (jnp.int32(0), cache, last_logits, next_positions, jnp.tile(first_scores, (batch, 1)),
           jnp.zeros((batch, width), jnp.int32), jnp.zeros((batch, width), bool),
           jnp.zeros((batch, width, max_decode_len), jnp.int32))
  _, _, _, _, scores, lengths, _, seqs = jax.lax.while_loop(cond, body, state)
  normalized = scores / brevity_penalty(brevity_alpha, jnp.maximum(lengths, 1))
  best = jnp.argmax(normalized, axis=1)
  return seqs[jnp.arange(batch), best], normalized[jnp.arange(batch), best]
