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

Special ids are arguments, never constants here: BOS and the stop tokens differ between
vocabularies (`<end_of_turn>` is 107 in the released Gemma tokenizer, 5 in the project's own), so
callers pass those of the vocabulary in use (`tasks.special_tokens.special_tokens(vocab)`:
`.bos`, `.stop_ids`). Only padding is fixed: 0, the id seqio pads with and the model masks.

Both take the parameters in either layout: the model's own, or `decoding_params`'s, which whoever
decodes many times with the same weights makes once (on the CPU it streams them faster).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from model.config import GemmaConfig
from model.transformer import Transformer, decoding_layout, init_cache

PAD_ID = 0  # seqio's padding id (tasks.special_tokens checks that <pad> is this id).

_NEG_INF = -1e9  # Score of impossible beams / masked tokens (finite: keeps arithmetic NaN-free).


def decoding_params(params):
  """`params` in the layout that decodes fastest where they live: on the CPU, every layer's products
  laid out output-first (`transformer.decoding_layout`, a copy made here); elsewhere the params
  themselves, since accelerators' dot kernels take either layout at the same speed.

  Worth it for many decoding calls with the same weights (an evaluation, a chat); `generate` and
  `beam_search` give the same tokens with either layout.
  """
  platforms = lambda leaf: ({d.platform for d in leaf.devices()} if isinstance(leaf, jax.Array)
                            else {jax.default_backend()})  # numpy: where jnp would put it.
  on_cpu = all(platforms(leaf) == {"cpu"} for leaf in jax.tree.leaves(params))
  return decoding_layout(params) if on_cpu else params


# ---------------------------------------------------------------- prompts


def chat_template(user_text: str) -> str:
  """One user message in gemma-it's format plus the generation prompt, as text without BOS
  (`tasks.chat_template` renders it; BOS is added at tokenisation)."""
  from tasks import chat_template as ct
  return ct.render([ct.Turn(ct.USER, user_text.strip())], add_generation_prompt=True, bos="")


def format_prompt(token_ids: Sequence[int], bos_id: int) -> list[int]:
  """token_ids with BOS prepended (once)."""
  token_ids = [int(t) for t in token_ids]
  return token_ids if token_ids[:1] == [bos_id] else [bos_id] + token_ids


def pad_prompts(prompts: Sequence[Sequence[int]], bos_id: int) -> np.ndarray:
  """int32 [B, P]: each prompt with BOS prepended, left-padded with 0 to the longest."""
  if isinstance(prompts, (str, bytes)) or not len(prompts):
    raise ValueError(f"pad_prompts needs a non-empty list of prompts (lists of token ids), got {prompts!r}")
  if any(isinstance(p, (int, np.integer)) for p in prompts):
    raise ValueError("pad_prompts takes a list of prompts, each a list of token ids; wrap a single "
                     "prompt as [prompt]")
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


def left_pad_with_bos(tokens: jax.Array, bos_id: int) -> jax.Array:
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
  """Writes tokens into the cache; returns the logits [B, V] after the last one, and the cache.

  Only the last position's logits are computed (prompts are left-padded, so it is every row's last
  real token): a prefill does not pay for [B, P, V] logits that nobody reads.
  """
  hidden, cache = model.apply({"params": params}, tokens, positions, segment_ids, cache=cache, decode=True,
                              method=Transformer.hidden_states)
  return model.apply({"params": params}, hidden[:, -1:], method=Transformer.logits)[:, 0], cache


def _prefill(config, params, prompts, max_decode_len):
  model = Transformer(config)
  cache = init_cache(config, prompts.shape[0], prompts.shape[1] + max_decode_len)
  segment_ids, positions = _prompt_segments_and_positions(prompts)
  last_logits, cache = _step(model, params, prompts, positions, segment_ids, cache)
  return model, last_logits, cache, jnp.sum(segment_ids, axis=1)


def check_prompts(config: GemmaConfig, prompts, max_decode_len) -> None:
  """Clear errors, before anything is traced, for arguments a jitted decoder cannot check: the
  prompts must be a non-empty integer [batch, length] array whose ids (when concrete) are in
  [0, vocab_size), and max_decode_len a positive int."""
  if isinstance(max_decode_len, bool) or not isinstance(max_decode_len, (int, np.integer)) \
      or max_decode_len < 1:
    raise ValueError(f"max_decode_len must be a positive int, got {max_decode_len!r}")
  shape = np.shape(prompts)
  dtype = prompts.dtype if hasattr(prompts, "dtype") else np.asarray(prompts).dtype
  if len(shape) != 2:
    raise ValueError(f"prompts must be a [batch, length] array, got shape {shape}"
                     + (" (wrap a single prompt as [prompt])" if len(shape) == 1 else ""))
  if 0 in shape:
    raise ValueError(f"prompts must hold at least one prompt of at least one token, got shape {shape}")
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"prompts must hold integer token ids, got dtype {dtype}")
  if not isinstance(prompts, jax.core.Tracer):
    values = np.asarray(prompts)
    bad = np.unique(values[(values < 0) | (values >= config.vocab_size)])
    if bad.size:
      raise ValueError(f"prompts hold token ids outside [0, {config.vocab_size}) "
                       f"(vocab_size): {bad[:10].tolist()}")


def generate(config: GemmaConfig, params, prompts: jax.Array, rng: jax.Array, *, max_decode_len: int,
             sampler: Sampler = Sampler(), stop_tokens: tuple[int, ...]):
  """Samples continuations of left-padded prompts (arguments checked by `check_prompts`).

  Returns (int32 [B, max_decode_len] tokens, float32 [B] sum of the model's
  log-probabilities of the generated tokens, stop token included).
  """
  check_prompts(config, prompts, max_decode_len)
  return _generate(config, params, prompts, rng, max_decode_len=max_decode_len, sampler=sampler,
                   stop_tokens=tuple(stop_tokens))


@functools.partial(jax.jit, static_argnames=("config", "max_decode_len", "sampler", "stop_tokens"))
def _generate(config: GemmaConfig, params, prompts: jax.Array, rng: jax.Array, *, max_decode_len: int,
              sampler: Sampler, stop_tokens: tuple[int, ...]):
  batch = prompts.shape[0]
  model, last_logits, cache, next_positions = _prefill(config, params, prompts, max_decode_len)
  stop = jnp.asarray(stop_tokens, jnp.int32)

  def pick(state):
    """Samples token `step` from last_logits and records it; returns the state without the forward."""
    step, cache, last_logits, positions, done, out, scores = state
    token = sampler(last_logits, jax.random.fold_in(rng, step))
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(last_logits, axis=-1), token[:, None], axis=-1)[:, 0]
    token = jnp.where(done, PAD_ID, token)
    scores = scores + jnp.where(done, 0.0, log_prob)
    out = out.at[:, step].set(token)
    return token, (step, cache, last_logits, positions, done | jnp.isin(token, stop), out, scores)

  # The loop picks tokens 0 .. max_decode_len - 2, each followed by the forward that gives the next
  # logits; the last token is picked after it, so no forward runs whose logits nobody reads.
  def cond(state):
    step, _, _, _, done, _, _ = state
    return (step < max_decode_len - 1) & ~jnp.all(done)

  def body(state):
    token, (step, cache, _, positions, done, out, scores) = pick(state)
    last_logits, cache = _step(model, params, token[:, None], positions[:, None],
                               jnp.ones((batch, 1), jnp.int32), cache)
    return step + 1, cache, last_logits, positions + 1, done, out, scores

  state = (jnp.int32(0), cache, last_logits, next_positions, jnp.zeros((batch,), bool),
           jnp.zeros((batch, max_decode_len), jnp.int32), jnp.zeros((batch,), jnp.float32))
  # After the loop every row is done (pick writes padding) or `step` is max_decode_len - 1.
  _, (_, _, _, _, _, out, scores) = pick(jax.lax.while_loop(cond, body, state))
  return out, scores


# ---------------------------------------------------------------- beam search


def brevity_penalty(alpha: float, length: jax.Array) -> jax.Array:
  """t5x / GNMT length penalty ((5 + length) / 6) ** alpha; alpha = 0 ranks by raw log-probability."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(config: GemmaConfig, params, prompts: jax.Array, *, max_decode_len: int, num_beams: int = 4,
                brevity_alpha: float = 0.6, stop_tokens: tuple[int, ...]):
  """`_beam_search` (below) after `check_prompts`."""
  check_prompts(config, prompts, max_decode_len)
  return _beam_search(config, params, prompts, max_decode_len=max_decode_len, num_beams=num_beams,
                      brevity_alpha=brevity_alpha, stop_tokens=tuple(stop_tokens))


@functools.partial(jax.jit, static_argnames=("config", "max_decode_len", "num_beams", "brevity_alpha", "stop_tokens"))
def _beam_search(config: GemmaConfig, params, prompts: jax.Array, *, max_decode_len: int, num_beams: int = 4,
                 brevity_alpha: float = 0.6, stop_tokens: tuple[int, ...]):
  """Beam search; returns (int32 [B, max_decode_len] best hypothesis, float32 [B] its normalised score).

  As t5x's and transformers' beam search: each row keeps W live beams (ranked by
  summed log-probability) and a separate set of the W best finished hypotheses
  (ranked by log-probability / `brevity_penalty(brevity_alpha, generated length
  incl. the stop token)`). Every step extends the live beams, moves candidates
  that end in a stop token into the finished set, and keeps the W best others
  live, so live beams never push a finished hypothesis out. The loop ends at
  max_decode_len, or when no live beam can still beat the worst finished one
  (its best possible score is its log-probability normalised at max_decode_len).
  The best finished hypothesis is returned; a row that finished none returns
  its best live beam. With num_beams=1 and no stop tokens this is greedy decoding.
  """
  if num_beams < 1:
    raise ValueError(f"num_beams must be >= 1, got {num_beams}")
  batch, width = prompts.shape[0], num_beams
  flat_prompts = jnp.repeat(prompts, width, axis=0)  # [B * W, P], beams of a row are adjacent.
  model, last_logits, cache, next_positions = _prefill(config, params, flat_prompts, max_decode_len)
  vocab = last_logits.shape[-1]
  stop = jnp.asarray(stop_tokens, jnp.int32)
  # Each beam's top len(stop) + 1 tokens hold a non-stop one, so this many candidates always
  # leave W live beams after the finished ones are taken out.
  num_candidates = min(width * (len(stop_tokens) + 1), width * vocab)
  # Only beam 0 is live at first, so the W beams do not all pick the same token.
  first_scores = jnp.where(jnp.arange(width) == 0, 0.0, _NEG_INF).astype(jnp.float32)
  best_possible_penalty = brevity_penalty(brevity_alpha, jnp.int32(max_decode_len))

  def cond(state):
    step, _, _, _, live_scores, _, finished_scores, _ = state
    # Scores are <= 0 and the penalty grows with length, so no live beam can end above this.
    best_live = live_scores[:, 0] / best_possible_penalty
    settled = jnp.all(finished_scores[:, -1] >= best_live)
    return (step < max_decode_len) & ~settled

  def body(state):
    step, cache, last_logits, positions, live_scores, live_seqs, finished_scores, finished_seqs = state
    log_probs = jax.nn.log_softmax(last_logits, axis=-1).reshape(batch, width, vocab)
    candidates = (live_scores[..., None] + log_probs).reshape(batch, width * vocab)
    scores, flat_index = jax.lax.top_k(candidates, num_candidates)
    parent, token = flat_index // vocab, (flat_index % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(live_seqs, parent[..., None], axis=1).at[:, :, step].set(token)
    stopped = jnp.isin(token, stop) & (scores > _NEG_INF / 2)  # Dead beams finish nothing.

    # The W best of the old finished set and the candidates that just stopped.
    new_finished = jnp.where(stopped, scores / brevity_penalty(brevity_alpha, step + 1), _NEG_INF)
    finished_scores, keep = jax.lax.top_k(jnp.concatenate([finished_scores, new_finished], axis=1), width)
    finished_seqs = jnp.take_along_axis(jnp.concatenate([finished_seqs, seqs], axis=1), keep[..., None], axis=1)

    # The W best candidates that did not stop stay live.
    live_scores, keep = jax.lax.top_k(jnp.where(stopped, _NEG_INF, scores), width)
    parent, token = jnp.take_along_axis(parent, keep, axis=1), jnp.take_along_axis(token, keep, axis=1)
    live_seqs = jnp.take_along_axis(seqs, keep[..., None], axis=1)

    rows = (jnp.arange(batch)[:, None] * width + parent).reshape(-1)
    cache = jax.tree.map(lambda x: x[rows] if x.ndim else x, cache)
    positions = positions[rows]
    last_logits, cache = _step(model, params, token.reshape(-1, 1), positions[:, None],
                               jnp.ones((batch * width, 1), jnp.int32), cache)
    return (step + 1, cache, last_logits, positions + 1, live_scores, live_seqs, finished_scores,
            finished_seqs)

  empty_seqs = jnp.zeros((batch, width, max_decode_len), jnp.int32)
  state = (jnp.int32(0), cache, last_logits, next_positions, jnp.tile(first_scores, (batch, 1)), empty_seqs,
           jnp.full((batch, width), _NEG_INF, jnp.float32), empty_seqs)
  step, _, _, _, live_scores, live_seqs, finished_scores, finished_seqs = jax.lax.while_loop(cond, body, state)
  any_finished = finished_scores[:, 0] > _NEG_INF / 2
  live_best = live_scores[:, 0] / brevity_penalty(brevity_alpha, jnp.maximum(step, 1))
  tokens = jnp.where(any_finished[:, None], finished_seqs[:, 0], live_seqs[:, 0])
  return tokens, jnp.where(any_finished, finished_scores[:, 0], live_best)
