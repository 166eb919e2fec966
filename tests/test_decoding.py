"""Tests of the KV cache, samplers, beam search and prompt helpers (model/decoding.py)."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import decoding
from model.config import get_config
from model.models import DecoderOnlyModel
from model.transformer import Transformer, init_cache

F32 = get_config("tiny", dtype="float32")
MQA = get_config("tiny", num_kv_heads=1, dtype="float32")
DECODE_LEN = 6
# The random models here have no vocabulary; these are the released Gemma tokenizer's ids.
BOS, EOS, END_OF_TURN = 2, 1, 107


@pytest.fixture(scope="module")
def model():
  return DecoderOnlyModel(F32)


@pytest.fixture(scope="module")
def params(model):
  return model.init_params(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def prompts():
  """Two left-padded prompts of different lengths, both starting with BOS."""
  return jnp.asarray(decoding.pad_prompts([[17, 42, 99, 5], [8, 200]], BOS))


@functools.partial(jax.jit, static_argnames="config")
def _full_logits(params, tokens, config=F32):
  segment_ids = (tokens != 0).astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
  return Transformer(config).apply({"params": params}, tokens, positions, segment_ids)[0]


def _greedy(params, prompts, stop_tokens=(), config=F32, max_decode_len=DECODE_LEN):
  return decoding.generate(config, params, prompts, jax.random.PRNGKey(0), max_decode_len=max_decode_len,
                           stop_tokens=stop_tokens)


# ---------------------------------------------------------------- cache


@pytest.mark.parametrize("config", [F32, MQA], ids=["gqa", "mqa"])
def test_cached_incremental_logits_equal_full_pass(config):
  params = DecoderOnlyModel(config).init_params(jax.random.PRNGKey(1))
  tokens = jnp.asarray([[0, 0, 2, 11, 12, 13, 14, 15, 16], [2, 21, 22, 23, 24, 25, 26, 27, 28]], jnp.int32)
  full = _full_logits(params, tokens, config)
  segment_ids = (tokens != 0).astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
  apply = jax.jit(Transformer(config).apply, static_argnames="decode")
  cache = init_cache(config, batch_size=2, cache_len=12)
  layer = cache["layers"]["layer_0"]
  assert layer["k"].shape == (2, config.num_kv_heads, 12, config.head_dim)  # modules.CACHE_AXES
  assert layer["v"].shape == (2, config.num_kv_heads, config.head_dim, 12)
  prefill = 5
  logits, cache = apply({"params": params}, tokens[:, :prefill], positions[:, :prefill],
                              segment_ids[:, :prefill], cache=cache, decode=True)
  pieces = [logits]
  for t in range(prefill, tokens.shape[1]):
    logits, cache = apply({"params": params}, tokens[:, t:t + 1], positions[:, t:t + 1],
                                segment_ids[:, t:t + 1], cache=cache, decode=True)
    pieces.append(logits)
  assert int(cache["index"]) == tokens.shape[1]
  real = np.asarray(segment_ids, bool)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1)[real], np.asarray(full)[real], atol=1e-5)


def test_cache_overflow_and_oversized_cache_are_errors(params):
  cache = init_cache(F32, batch_size=1, cache_len=4)
  with pytest.raises(ValueError, match="cache overflow"):
    Transformer(F32).apply({"params": params}, jnp.ones((1, 5), jnp.int32), jnp.zeros((1, 5), jnp.int32),
                           cache=cache, decode=True)
  with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
    init_cache(F32, batch_size=1, cache_len=F32.max_seq_len + 1)


# ---------------------------------------------------------------- samplers


def test_greedy_matches_argmax_of_full_rescoring(params, prompts):
  out, scores = _greedy(params, prompts)
  assert out.shape == (2, DECODE_LEN) and out.dtype == jnp.int32
  sequence = jnp.concatenate([prompts, out], axis=1)
  logits = _full_logits(params, sequence)
  width = prompts.shape[1]
  predicted = np.argmax(np.asarray(logits[:, width - 1:-1]), axis=-1)
  np.testing.assert_array_equal(np.asarray(out), predicted)
  log_probs = jax.nn.log_softmax(logits[:, width - 1:-1], axis=-1)
  expected = np.take_along_axis(np.asarray(log_probs), np.asarray(out)[..., None], -1).sum(axis=(1, 2))
  np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_generate_runs_no_forward_after_the_last_token(params, prompts, monkeypatch):
  """n tokens take the prefill and n - 1 single-token forwards: the last token's logits are never
  computed (nobody reads them). One and seven tokens still match the full rescoring's argmax."""
  calls = []
  step = decoding._step

  def counted(model, params, tokens, *args):
    jax.debug.callback(lambda t: calls.append(t.shape[1]), tokens)
    return step(model, params, tokens, *args)

  monkeypatch.setattr(decoding, "_step", counted)
  for length in (1, 7):  # Lengths no other test uses, so _generate is traced again with the counter.
    calls.clear()
    out, _ = _greedy(params, prompts, max_decode_len=length)
    jax.effects_barrier()
    assert calls == [prompts.shape[1]] + [1] * (length - 1)
    logits = _full_logits(params, jnp.concatenate([prompts, out], axis=1))
    np.testing.assert_array_equal(out, np.argmax(np.asarray(logits[:, prompts.shape[1] - 1:-1]), axis=-1))


def test_right_and_left_padded_prompts_give_the_same_output(model, params):
  left = jnp.asarray([[0, 0, 17, 42], [8, 200, 9, 10]], jnp.int32)
  right = jnp.asarray([[17, 42, 0, 0], [8, 200, 9, 10]], jnp.int32)
  a = model.predict_batch(params, {"decoder_input_tokens": left}, max_decode_len=DECODE_LEN, bos_id=BOS,
                          stop_tokens=())
  b = model.predict_batch(params, {"decoder_input_tokens": right}, max_decode_len=DECODE_LEN, bos_id=BOS,
                          stop_tokens=())
  np.testing.assert_array_equal(a, b)
  # predict_batch prepends BOS, so it matches generate on BOS-prefixed prompts.
  np.testing.assert_array_equal(a, _greedy(params, jnp.asarray(decoding.pad_prompts([[17, 42], [8, 200, 9, 10]], BOS)))[0])


def test_top_k_1_and_tiny_top_p_equal_greedy(params, prompts):
  greedy, _ = _greedy(params, prompts)
  for sampler in (decoding.Sampler("top_k", top_k=1), decoding.Sampler("top_p", top_p=1e-6)):
    sampled, _ = decoding.generate(F32, params, prompts, jax.random.PRNGKey(7), max_decode_len=DECODE_LEN,
                                   sampler=sampler, stop_tokens=())
    np.testing.assert_array_equal(sampled, greedy)


def test_sampling_is_deterministic_per_rng_and_stays_in_top_k(params, prompts):
  sampler = decoding.Sampler("top_k", top_k=3, temperature=5.0)
  run = lambda seed: decoding.generate(F32, params, prompts, jax.random.PRNGKey(seed),
                                       max_decode_len=DECODE_LEN, sampler=sampler, stop_tokens=())[0]
  first = run(1)
  np.testing.assert_array_equal(first, run(1))
  runs = [first] + [run(seed) for seed in range(2, 6)]
  assert any(not np.array_equal(first, other) for other in runs[1:])  # High temperature: samples differ.
  for out in runs:  # Every sampled token is among the 3 most likely after its prefix.
    logits = np.asarray(_full_logits(params, jnp.concatenate([prompts, out], axis=1)))
    top3 = np.argsort(logits[:, prompts.shape[1] - 1:-1], axis=-1)[..., -3:]
    assert np.all(np.any(top3 == np.asarray(out)[..., None], axis=-1))


def test_generation_stops_at_stop_tokens(params, prompts):
  free, _ = _greedy(params, prompts)
  stop = int(free[0, 2])
  out, _ = _greedy(params, prompts, stop_tokens=(stop,))
  for row, free_row in zip(np.asarray(out), np.asarray(free)):
    end = list(free_row).index(stop) + 1 if stop in free_row else DECODE_LEN
    np.testing.assert_array_equal(row[:end], free_row[:end])  # Stop token kept,
    assert not np.any(row[end:])  # then padding.


def test_bad_sampler_settings_are_rejected(model, params):
  with pytest.raises(ValueError, match="temperature must be > 0"):
    decoding.Sampler("temperature", temperature=0.0)
  with pytest.raises(ValueError, match="top_p"):
    decoding.Sampler("top_p", top_p=1.5)
  with pytest.raises(ValueError, match="unknown decoding method"):
    model.predict_batch(params, {"decoder_input_tokens": jnp.ones((1, 2), jnp.int32)}, method="nucleus",
                        bos_id=BOS, stop_tokens=(EOS, END_OF_TURN))
  with pytest.raises(ValueError, match="needs an rng"):
    model.predict_batch(params, {"decoder_input_tokens": jnp.ones((1, 2), jnp.int32)}, method="top_k",
                        bos_id=BOS, stop_tokens=(EOS, END_OF_TURN))


# ---------------------------------------------------------------- beam search


def test_one_beam_equals_greedy(params, prompts):
  greedy, greedy_scores = _greedy(params, prompts)
  beam, beam_scores = decoding.beam_search(F32, params, prompts, max_decode_len=DECODE_LEN, num_beams=1,
                                           brevity_alpha=0.0, stop_tokens=())
  np.testing.assert_array_equal(beam, greedy)
  np.testing.assert_allclose(beam_scores, greedy_scores, rtol=1e-5)


def test_beam_search_with_a_beam_per_token_is_exhaustive():
  """With vocab V, length 2 and V beams nothing is pruned: the result is the best of all V^2 sequences."""
  config = get_config("tiny", num_layers=1, vocab_size=8, dtype="float32")
  params = DecoderOnlyModel(config).init_params(jax.random.PRNGKey(3))
  prompt = jnp.asarray([[2, 5]], jnp.int32)
  best, score = decoding.beam_search(config, params, prompt, max_decode_len=2, num_beams=8, brevity_alpha=0.0,
                                     stop_tokens=())
  candidates = jnp.asarray([[2, 5, a, b] for a, b in itertools.product(range(8), repeat=2)], jnp.int32)
  log_probs = jax.nn.log_softmax(_full_logits(params, candidates, config), axis=-1)
  totals = np.take_along_axis(np.asarray(log_probs[:, 1:3]), np.asarray(candidates[:, 2:, None]), -1).sum((1, 2))
  np.testing.assert_array_equal(best[0], candidates[np.argmax(totals), 2:])
  np.testing.assert_allclose(score[0], totals.max(), rtol=1e-5)


def test_beam_score_is_brevity_normalised_log_prob(params, prompts):
  out, score = decoding.beam_search(F32, params, prompts, max_decode_len=DECODE_LEN, num_beams=3,
                                    brevity_alpha=0.6, stop_tokens=())
  logits = _full_logits(params, jnp.concatenate([prompts, out], axis=1))
  log_probs = jax.nn.log_softmax(logits[:, prompts.shape[1] - 1:-1], axis=-1)
  total = np.take_along_axis(np.asarray(log_probs), np.asarray(out)[..., None], -1).sum(axis=(1, 2))
  np.testing.assert_allclose(score, total / ((5.0 + DECODE_LEN) / 6.0) ** 0.6, rtol=1e-5)


# ---------------------------------------------------------------- prompts


def test_chat_template_and_bos_helpers():
  # gemma-it's format, content trimmed as its template does.
  assert decoding.chat_template(" Hi there\n") == "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
  assert decoding.format_prompt([5, 6], bos_id=2) == [2, 5, 6]
  assert decoding.format_prompt([2, 5], bos_id=2) == [2, 5]
  assert decoding.format_prompt([2, 5], bos_id=9) == [9, 2, 5]  # BOS is the vocabulary's, not 2.
  np.testing.assert_array_equal(decoding.pad_prompts([[5], [2, 7, 8]], 2), [[0, 2, 5], [2, 7, 8]])
  with pytest.raises(ValueError, match="padding id"):
    decoding.pad_prompts([[5, 0, 6]], 2)


def test_left_pad_with_bos_handles_either_padding_side():
  tokens = jnp.asarray([[5, 6, 0, 0], [0, 2, 7, 8], [0, 0, 0, 0]], jnp.int32)
  np.testing.assert_array_equal(decoding.left_pad_with_bos(tokens, 2),
                                [[0, 0, 2, 5, 6], [0, 0, 2, 7, 8], [0, 0, 0, 0, 2]])
  with pytest.raises(ValueError, match="integer"):
    decoding.left_pad_with_bos(jnp.ones((1, 2), jnp.float32), 2)


@pytest.mark.parametrize("tokens", [(1, 1), (2, 64)], ids=["few_tokens", "many_tokens"])
def test_stacked_token_einsum_equals_one_einsum_per_weight(tokens):
  """Both ways of contracting a stack of weights (a batched dot over the stack, or weight slices)
  give each weight's own einsum; the shapes put one case on each side of the choice."""
  from model import modules
  x = jax.random.normal(jax.random.PRNGKey(0), tokens + (16,))
  stacked = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 128))
  few = not modules.weight_copy_is_cheaper(x, stacked)
  assert few == (tokens == (1, 1))
  got = modules.stacked_token_einsum("MD,DF->MF", x, stacked)
  for out, w in zip(got, stacked, strict=True):
    np.testing.assert_allclose(out, jnp.einsum("BTD,DF->BTF", x, w), rtol=1e-5, atol=1e-5)


def _weight_copies(hlo_text: str, weight_shapes: set) -> list[str]:
  """The ops of a compiled module that write a weight-sized array other than by a dot: a slice,
  transpose or copy of a weight, as XLA:CPU emits for `stacked[c]` or a transposed operand."""
  import re
  found = []
  for line in hlo_text.splitlines():
    m = re.search(r"= f32\[([0-9,]*)\]\{[0-9,]*\} (slice|transpose|copy|fusion)\(", line)
    if m and "kind=kCustom" not in line:
      shape = tuple(sorted(int(d) for d in m.group(1).split(",") if d))
      if shape in weight_shapes:
        found.append(line.strip()[:160])
  return found


def test_a_decoding_step_reads_the_weights_as_stored():
  """One decode step multiplies by every weight where it lies: no weight is sliced out of its
  stack or transposed first (at one token per row such a copy cost more than the matmul: the
  per-step time halved when they went, docs/model_benchmarks.md)."""
  config = get_config("tiny", num_kv_heads=1, dtype="float32", embed_dim=128, hidden_dim=512,
                      num_heads=4, head_dim=32)
  params = Transformer(config).init(jax.random.PRNGKey(0), jnp.ones((1, 1), jnp.int32),
                                    jnp.zeros((1, 1), jnp.int32))["params"]
  weights = {tuple(sorted(w.shape)) for w in jax.tree.leaves(params) if w.ndim >= 2}
  weights |= {tuple(sorted(w.shape[1:])) for w in jax.tree.leaves(params) if w.ndim >= 3}
  cache = init_cache(config, 2, 8)
  step = jax.jit(lambda p, c, t: decoding._step(Transformer(config), p, t, jnp.zeros_like(t), jnp.ones_like(t), c))
  tokens = jnp.ones((2, 1), jnp.int32)
  copies = _weight_copies(step.lower(params, cache, tokens).compile().as_text(), weights)
  assert not copies, "\n".join(copies)


@pytest.mark.parametrize("config", [F32, MQA], ids=["gqa", "mqa"])
def test_the_decoding_loop_updates_the_kv_cache_in_place(config):
  """The compiled generate loop holds no copy of a layer's key or value cache: each cache is read
  as stored and written in place (XLA:CPU had copied the keys about four times and the values once,
  transposed, at every step: a tenth of the step, docs/model_benchmarks.md)."""
  import re
  params = DecoderOnlyModel(config).init_params(jax.random.PRNGKey(0))
  prompts = jnp.ones((2, 7), jnp.int32)
  slots = prompts.shape[1] + 5  # No other array of the model has this size.
  hlo = decoding._generate.lower(config, params, prompts, jax.random.PRNGKey(0), max_decode_len=5,
                                 sampler=decoding.Sampler(), stop_tokens=()).compile().as_text()
  cache_size = 2 * slots * config.num_kv_heads * config.head_dim
  copies = []
  body = re.search(r" while\(.*body=%([^,\s]+)", hlo).group(1)  # The loop; the prefill may copy once.
  body_text = re.search(r"\n%" + re.escape(body) + r" .*?\n}", hlo, re.S).group(0)
  for line in body_text.splitlines():
    m = re.search(r"= f32\[([0-9,]*)\]\{[0-9,]*\} (\S+)\(", line.split(", metadata")[0])
    if m and ("copy" in m.group(2) or "transpose" in m.group(2) or "copy" in line.split(" = ")[0]):
      shape = [int(d) for d in m.group(1).split(",") if d]
      if slots in shape and int(np.prod(shape)) == cache_size:
        copies.append(line.strip()[:160])
  assert not copies, "\n".join(copies)


@pytest.mark.parametrize("tokens", [(2, 1), (2, 40)], ids=["decoding", "many_tokens"])
def test_logits_put_the_embedding_table_first_only_for_few_tokens(tokens):
  """With few tokens (decoding) the tied-embedding logits are computed as table @ x^T, the [V, D]
  table as the dot's left operand (XLA:CPU streams it faster so, docs/model_benchmarks.md); with
  many, as x @ table^T. Both give the einsum's logits."""
  import re

  import flax.linen as nn

  from model import modules
  config = get_config("tiny", dtype="float32")
  embedder = modules.Embedder(config)
  table_params = nn.unbox(embedder.init(jax.random.PRNGKey(0), jnp.ones((1, 1), jnp.int32),
                                        method=modules.Embedder.encode))
  x = jax.random.normal(jax.random.PRNGKey(1), tokens + (config.embed_dim,))
  decode = jax.jit(lambda p, x: embedder.apply(p, x, method=modules.Embedder.decode))
  table = table_params["params"]["input_embedding"]
  np.testing.assert_allclose(decode(table_params, x), jnp.einsum("BTD,VD->BTV", x, table), rtol=1e-5, atol=1e-5)
  hlo = decode.lower(table_params, x).compile().as_text()
  vocab, num = config.vocab_size, tokens[0] * tokens[1]
  table_first = re.search(rf"= f32\[{vocab},{num}\]\{{[0-9,]*\}} (dot|fusion)\(", hlo)
  assert bool(table_first) == (num <= modules.FEW_TOKENS), hlo[:4000]


# ---------------------------------------------------------------- decoding layout


@pytest.mark.parametrize("config", [F32, MQA], ids=["gqa", "mqa"])
@pytest.mark.parametrize("prompt_len", [4, 40], ids=["few_tokens", "many_tokens"])
def test_the_decoding_layout_gives_the_same_tokens_and_scores(config, prompt_len):
  """generate (greedy and sampled) and beam_search over `decoding_params` give the tokens and scores
  of the model's own layout; 2 x 40 prompt tokens put the prefill past FEW_TOKENS (a plain product),
  2 x 4 keep it in the weights-first form."""
  from model import modules
  params = DecoderOnlyModel(config).init_params(jax.random.PRNGKey(3))
  fast = decoding.decoding_params(params)
  assert modules.QKV_OUTPUT_FIRST in fast["layer_0"]["attn"]
  prompts = jnp.asarray(decoding.pad_prompts([list(range(3, 3 + prompt_len)), [8, 200, 7]], BOS))
  assert (prompts.size > modules.FEW_TOKENS) == (prompt_len == 40)
  rng = jax.random.PRNGKey(5)
  for sampler in (decoding.Sampler("greedy"), decoding.Sampler("top_k", top_k=5)):
    run = lambda p: decoding.generate(config, p, prompts, rng, max_decode_len=DECODE_LEN, sampler=sampler,
                                      stop_tokens=())
    (tokens, scores), (fast_tokens, fast_scores) = run(params), run(fast)
    np.testing.assert_array_equal(fast_tokens, tokens)
    np.testing.assert_allclose(fast_scores, scores, rtol=1e-5, atol=1e-5)
  beams = lambda p: decoding.beam_search(config, p, prompts, max_decode_len=DECODE_LEN, num_beams=3, stop_tokens=())
  (tokens, scores), (fast_tokens, fast_scores) = beams(params), beams(fast)
  np.testing.assert_array_equal(fast_tokens, tokens)
  np.testing.assert_allclose(fast_scores, scores, rtol=1e-5, atol=1e-5)


def test_the_decoding_layout_holds_every_weight_once():
  """`decoding_layout` replaces each layer's products rather than adding copies (the training layout
  can be dropped while decoding), leaves the embedding table and norm scales as they are, and leaves
  params already in its layout alone."""
  params = DecoderOnlyModel(MQA).init_params(jax.random.PRNGKey(0))
  fast = decoding.decoding_params(params)
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert size(fast) == size(params)
  layer = fast["layer_1"]
  assert not {"q_einsum", "kv_einsum", "attn_vec_einsum"} & set(layer["attn"])
  assert not {"gating_einsum", "linear"} & set(layer["mlp"])
  assert all(x.ndim == 2 for x in jax.tree.leaves({"attn": layer["attn"], "mlp": layer["mlp"]}))
  np.testing.assert_array_equal(fast["embedder"]["input_embedding"], params["embedder"]["input_embedding"])
  np.testing.assert_array_equal(layer["pre_ffw_norm"]["scale"], params["layer_1"]["pre_ffw_norm"]["scale"])
  again = decoding.decoding_params(fast)  # Already laid out for decoding: returned as it is.
  assert jax.tree.structure(again) == jax.tree.structure(fast)
  assert all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(fast)))


def test_a_decoding_step_over_the_decoding_layout_puts_every_weight_first():
  """Over `decoding_params`, every product of a decoding step has its weight as the dot's left
  operand, [out, in] as stored ([out, tokens] results: the form XLA:CPU streams fastest,
  docs/model_benchmarks.md), and no weight is copied or transposed first."""
  import re
  config = get_config("tiny", num_kv_heads=1, dtype="float32", embed_dim=128, hidden_dim=512,
                      num_heads=4, head_dim=32)
  params = decoding.decoding_params(DecoderOnlyModel(config).init_params(jax.random.PRNGKey(0)))
  matrices = {w.shape for w in jax.tree.leaves(params) if w.ndim == 2}
  assert len(matrices) == 5  # The table, qkv, attention output, gate and up, down.
  cache = init_cache(config, 2, 8)
  step = jax.jit(lambda p, c, t: decoding._step(Transformer(config), p, t, jnp.zeros_like(t), jnp.ones_like(t), c))
  tokens = jnp.ones((2, 1), jnp.int32)
  hlo = step.lower(params, cache, tokens).compile().as_text()
  for out, _ in matrices:
    assert re.search(rf"= f32\[{out},2\]\{{[0-9,]*\}} (dot|fusion)\(", hlo), (out, hlo[:4000])
  copies = _weight_copies(hlo, {tuple(sorted(shape)) for shape in matrices})
  assert not copies, "\n".join(copies)


def test_decoding_params_keeps_the_model_layout_off_the_cpu(monkeypatch):
  """Off the CPU (here: numpy params where the default backend says "gpu") the params are returned
  as they are: accelerators' dot kernels take either layout."""
  params = jax.tree.map(np.asarray, DecoderOnlyModel(MQA).init_params(jax.random.PRNGKey(0)))
  from model import modules
  assert modules.QKV_OUTPUT_FIRST in decoding.decoding_params(params)["layer_0"]["attn"]
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert decoding.decoding_params(params) is params
