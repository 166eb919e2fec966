"""model/t5x_adapter.py under real t5x's DecoderOnlyModel, in this process (no gin, no flags).

The adapter's logits equal our Transformer's; its init emits t5x's params_axes; t5x's cached
decoding contract (empty cache, prefill with per-row lengths over right-padded prompts, one
token per row at its own cache index) gives the logits of a full forward pass; and t5x's
predict_batch decodes greedily exactly as our predict_batch (model.infer's path) does.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import partitioning as flax_partitioning

pytest.importorskip("t5x", reason="real t5x (docs/t5x.md) is not installed")
from t5x import adafactor  # noqa: E402
from t5x import decoding as t5x_decoding  # noqa: E402
from t5x import models as t5x_models  # noqa: E402

from model import decoding  # noqa: E402
from model import models as gemma_models  # noqa: E402
from model.config import get_config  # noqa: E402
from model.t5x_adapter import GemmaT5xAdapter  # noqa: E402

CONFIG = get_config("tiny", dtype="float32")


class _Vocabulary:
  """The special ids of this test's synthetic token ids (t5x's DecoderOnlyModel reads eos_id)."""
  eos_id = 1
  bos_id = 2


@pytest.fixture(scope="module")
def tiny():
  adapter = GemmaT5xAdapter(CONFIG)
  tokens = jnp.ones((2, 8), jnp.int32)
  variables = adapter.init(jax.random.PRNGKey(0), tokens, tokens, enable_dropout=False)
  return adapter, variables


def test_adapter_emits_plain_params_and_t5x_params_axes(tiny):
  _, variables = tiny
  ours = gemma_models.DecoderOnlyModel(CONFIG)
  params = variables["params"]["decoder"]
  assert jax.tree.structure(params) == jax.tree.structure(ours.abstract_params())
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
  axes = flax_partitioning.get_axis_names(variables["params_axes"])["decoder"]
  want = jax.tree.map(lambda spec: jax.sharding.PartitionSpec(*("stack" if a is None else a for a in spec)),
                      ours.logical_axes(), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert axes == want  # Our trainer's logical names; the unnamed stacking axis is t5x's 'stack'.
  assert axes["layer_0"]["attn"]["kv_einsum"] == jax.sharding.PartitionSpec("stack", "kv_heads", "embed", "kv")


def test_adapter_logits_equal_the_transformer_packed_and_unpacked(tiny):
  adapter, variables = tiny
  params = variables["params"]
  ours = gemma_models.DecoderOnlyModel(CONFIG)
  rng = np.random.default_rng(0)
  targets = rng.integers(1, CONFIG.vocab_size, (2, 12)).astype(np.int32)
  targets[1, 9:] = 0  # Right padding.
  inputs = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
  packed = {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_segment_ids": np.array([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3], np.int32),
            "decoder_positions": np.array([list(range(5)) + list(range(7)), list(range(9)) + [0] * 3], np.int32)}
  got = adapter.apply({"params": params}, inputs, targets, decoder_segment_ids=packed["decoder_segment_ids"],
                      decoder_positions=packed["decoder_positions"], enable_dropout=False, decode=False)
  np.testing.assert_allclose(got, ours.logits(params["decoder"], packed), rtol=1e-6, atol=1e-6)
  unpacked = adapter.apply({"params": params}, inputs, targets, enable_dropout=True)
  np.testing.assert_allclose(unpacked, ours.logits(params["decoder"], {"decoder_input_tokens": inputs,
                                                                       "decoder_target_tokens": targets}),
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(unpacked[0, 5:], got[0, 5:], atol=1e-3)  # The segment mask is really used.


def test_t5x_cache_contract_prefill_then_per_row_decode_equals_the_full_pass(tiny):
  """Rows with prompts of 3 and 6 tokens (right-padded), then 4 teacher-forced decode steps."""
  adapter, variables = tiny
  params = variables["params"]
  rng = np.random.default_rng(1)
  length, prompt_lengths, steps = 12, np.array([3, 6]), 4
  sequences = rng.integers(3, CONFIG.vocab_size, (2, length)).astype(np.int32)
  full = adapter.apply({"params": params}, sequences, np.ones_like(sequences), enable_dropout=False)

  _, state = adapter.apply({"params": params}, jnp.ones((2, length), jnp.int32), jnp.ones((2, length), jnp.int32),
                           decode=True, mutable=["cache"], enable_dropout=False)
  assert set(state["cache"]) == {"cache_index", "segment_ids", "layers"}
  assert state["cache"]["cache_index"].shape == (2,)
  real = (np.arange(length)[None] < prompt_lengths[:, None]).astype(np.int32)
  # As t5x's _compute_kv_cache: the last prompt token is computed but left for the first decode step.
  _, state = adapter.apply({"params": params, **state}, sequences * real, real, mutable=["cache"],
                           prefill=True, prefill_lengths=jnp.asarray(prompt_lengths - 1), enable_dropout=False)
  np.testing.assert_array_equal(state["cache"]["cache_index"], prompt_lengths - 1)
  for step in range(steps):
    index = prompt_lengths - 1 + step
    token = sequences[np.arange(2), index][:, None]
    logits, state = adapter.apply({"params": params, **state}, token, token, decode=True, mutable=["cache"],
                                  enable_dropout=False)
    np.testing.assert_allclose(logits[:, 0], full[np.arange(2), index], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(state["cache"]["cache_index"], prompt_lengths - 1 + steps)


def test_t5x_predict_batch_greedy_equals_our_predict_batch(tiny):
  _, variables = tiny
  params = variables["params"]
  model = t5x_models.DecoderOnlyModel(
      module=GemmaT5xAdapter(CONFIG), vocabulary=_Vocabulary(), optimizer_def=adafactor.Adafactor(),
      decode_fn=functools.partial(t5x_decoding.temperature_sample, temperature=0.0))
  prompts = [[2, 17, 42, 99, 5], [2, 8, 200], [2, 30, 31, 32, 33, 34, 35, 36]]
  length = 20
  inputs = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    inputs[i, :len(p)] = p
  causal = (inputs != 0).astype(np.int32)
  got = model.predict_batch(params, {"decoder_input_tokens": inputs, "decoder_causal_attention": causal,
                                     "decoder_target_tokens": inputs})
  ours = gemma_models.DecoderOnlyModel(CONFIG)
  bos, eos = _Vocabulary.bos_id, _Vocabulary.eos_id
  want = ours.predict_batch(params["decoder"], {"decoder_input_tokens": decoding.pad_prompts(prompts, bos)},
                            max_decode_len=length, bos_id=bos, stop_tokens=(eos,))
  for i, p in enumerate(prompts):
    n = length - len(p) + 1  # t5x decodes until its [B, length] buffer is full.
    np.testing.assert_array_equal(np.asarray(got)[i, :n], np.asarray(want)[i, :n])


def test_predict_batch_adds_no_second_bos_column():
  ours = gemma_models.DecoderOnlyModel(CONFIG)
  params = ours.init_params(jax.random.PRNGKey(0))
  cfg = CONFIG
  # BOS + tokens, 5 short of max_seq_len: 5 more tokens fit only if no extra BOS column is added.
  prompt = np.asarray([[_Vocabulary.bos_id] + list(range(10, 10 + cfg.max_seq_len - 6))], np.int32)
  out = ours.predict_batch(params, {"decoder_input_tokens": prompt}, max_decode_len=5, bos_id=_Vocabulary.bos_id,
                           stop_tokens=())
  assert out.shape == (1, 5)
  want = decoding.generate(cfg, params, jnp.asarray(prompt), jax.random.PRNGKey(0), max_decode_len=5,
                           stop_tokens=())[0]
  np.testing.assert_array_equal(out, want)


def test_adapter_refuses_prefix_lm_and_malformed_decoding_calls(tiny):
  adapter, variables = tiny
  params = variables["params"]
  tokens = jnp.ones((2, 8), jnp.int32)
  with pytest.raises(ValueError, match="prefix-LM"):
    adapter.apply({"params": params}, tokens, tokens, decoder_causal_attention=tokens)
  with pytest.raises(ValueError, match="separate calls"):
    adapter.apply({"params": params}, tokens, tokens, decode=True, prefill=True, mutable=["cache"])
  _, state = adapter.apply({"params": params}, tokens, tokens, decode=True, mutable=["cache"])
  with pytest.raises(ValueError, match="needs prefill_lengths"):
    adapter.apply({"params": params, **state}, tokens, tokens, prefill=True, mutable=["cache"])
  with pytest.raises(ValueError, match="one token per row"):
    adapter.apply({"params": params, **state}, tokens, tokens, decode=True, mutable=["cache"])
