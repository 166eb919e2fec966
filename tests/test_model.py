"""Tests of the Gemma decoder (model/config.py, modules.py, transformer.py) and DecoderOnlyModel's losses."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import GemmaConfig, get_config
from model.models import DecoderOnlyModel
from model.modules import Embedder, RMSNorm, apply_rope
from model.transformer import Transformer

F32 = get_config("tiny", dtype="float32")


@pytest.fixture(scope="module")
def model():
  return DecoderOnlyModel(F32)


@pytest.fixture(scope="module")
def params(model):
  return model.init_params(jax.random.PRNGKey(0))


@functools.partial(jax.jit, static_argnames="config")
def _apply(params, tokens, positions, segment_ids, config):
  return Transformer(config).apply({"params": params}, tokens, positions, segment_ids)[0]


def _forward(params, tokens, positions=None, segment_ids=None, config=F32):
  """Full-sequence logits as numpy (jitted: eager op-by-op dispatch is slow on CPU)."""
  tokens = jnp.asarray(tokens, jnp.int32)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  if segment_ids is not None:
    segment_ids = jnp.asarray(segment_ids, jnp.int32)
  return np.asarray(_apply(params, tokens, jnp.asarray(positions, jnp.int32), segment_ids, config))


def _random_tokens(seed, shape, vocab=F32.vocab_size):
  return np.random.default_rng(seed).integers(3, vocab, size=shape).astype(np.int32)


# ---------------------------------------------------------------- configs and parameters


@pytest.mark.parametrize("name, non_embedding, embedding", [
    ("gemma_2b", 1_981_884_416, 524_550_144),
    ("gemma_7b", 7_751_248_896, 786_825_216),
])
def test_parameter_counts_match_the_paper(name, non_embedding, embedding):
  abstract = DecoderOnlyModel(get_config(name)).abstract_params()
  embed = abstract["embedder"]["input_embedding"]
  total = sum(leaf.size for leaf in jax.tree.leaves(abstract))
  assert embed.size == embedding
  assert total - embed.size == non_embedding
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))


def test_released_vocab_override():
  cfg = get_config("gemma_2b", vocab_size=256000)
  assert cfg.num_embedding_params() == 256000 * 2048
  assert get_config("gemma_2b").vocab_size == 256128


def test_unknown_config_name_lists_known_names():
  with pytest.raises(ValueError, match="gemma_2b.*gemma_7b.*small.*tiny"):
    get_config("gemma_3b")
  with pytest.raises(ValueError, match="Unknown GemmaConfig field"):
    get_config("tiny", num_layer=3)
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    get_config("tiny", num_kv_heads=3)


def test_logical_axes_cover_every_param(model, params):
  axes = model.logical_axes()
  assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) == \
      jax.tree.structure(params)
  assert axes["embedder"]["input_embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
  assert axes["layer_0"]["mlp"]["linear"] == jax.sharding.PartitionSpec("mlp", "embed")
  assert axes["layer_1"]["attn"]["q_einsum"] == jax.sharding.PartitionSpec("heads", "embed", "kv")
  # Every axis of every param is named or deliberately unsharded (the stacked k/v and gate/up dim).
  for spec, leaf in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                        jax.tree.leaves(params)):
    assert len(spec) == leaf.ndim


def test_norm_scales_start_at_zero(params):
  assert not np.any(np.asarray(params["final_norm"]["scale"]))
  assert not np.any(np.asarray(params["layer_0"]["pre_ffw_norm"]["scale"]))


# ---------------------------------------------------------------- modules


def test_rms_norm_formula_and_bf16_upcast():
  cfg = get_config("tiny", dtype="bfloat16")
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, cfg.embed_dim), jnp.float32) * 3
  scale = jax.random.normal(jax.random.PRNGKey(2), (cfg.embed_dim,), jnp.float32)
  norm = RMSNorm(cfg)
  x16 = x.astype(jnp.bfloat16)
  out = norm.apply({"params": {"scale": scale}}, x16)
  assert out.dtype == jnp.bfloat16
  # Reference: the whole formula in float32 (float64 here), cast to bf16 once at the end.
  x64 = np.asarray(x16.astype(jnp.float32), np.float64)
  ref = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-6) * (1 + np.asarray(scale, np.float64))
  np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)),
                                np.asarray(jnp.asarray(ref, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)))
  # A bf16-only computation rounds differently somewhere, so the upcast is observable.
  var16 = jnp.mean(jnp.square(x16), axis=-1, keepdims=True)
  bf16_only = x16 * jax.lax.rsqrt(var16 + 1e-6) * (1 + scale.astype(jnp.bfloat16))
  assert not np.array_equal(np.asarray(out, np.float32), np.asarray(bf16_only, np.float32))


def test_embedding_normalizer_is_rounded_to_the_activation_dtype():
  cfg = get_config("tiny", embed_dim=2048, num_heads=8, head_dim=256, dtype="bfloat16")
  table = jnp.ones((cfg.vocab_size, cfg.embed_dim), jnp.float32)
  out = Embedder(cfg).apply({"params": {"input_embedding": table}}, jnp.array([[5]]), method=Embedder.encode)
  assert out.dtype == jnp.bfloat16
  # sqrt(2048) = 45.2548..., which bf16 rounds to 45.25 (HF: torch.tensor(hidden**0.5, dtype=bf16)).
  np.testing.assert_array_equal(np.asarray(out, np.float32), 45.25)
  f32 = Embedder(dataclasses.replace(cfg, dtype="float32")).apply(
      {"params": {"input_embedding": table}}, jnp.array([[5]]), method=Embedder.encode)
  np.testing.assert_allclose(np.asarray(f32), 2048**0.5, rtol=1e-7)


def test_rope_matches_half_split_rotation():
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 3, 2, 8), jnp.float32)
  positions = jnp.array([[0, 1, 100]])
  out = np.asarray(apply_rope(x, positions), np.float64)
  np.testing.assert_allclose(out[0, 0], np.asarray(x[0, 0]), atol=1e-7)  # Position 0: identity.
  xs = np.asarray(x, np.float64)
  inv_freq = 1.0 / 10000 ** (np.arange(0, 8, 2) / 8)
  for t, pos in enumerate([0, 1, 100]):
    angle = pos * inv_freq
    first, second = xs[0, t, :, :4], xs[0, t, :, 4:]
    expected = np.concatenate([first * np.cos(angle) - second * np.sin(angle),
                               second * np.cos(angle) + first * np.sin(angle)], axis=-1)
    np.testing.assert_allclose(out[0, t], expected, atol=2e-5)


def test_rope_angles_are_float32_with_bf16_activations():
  x = jnp.ones((1, 2, 1, 256), jnp.bfloat16)
  out = apply_rope(x, jnp.array([[8190, 8191]]))
  assert out.dtype == jnp.bfloat16
  # bf16 positions would both round to 8192; float32 angles keep them apart.
  assert not np.array_equal(np.asarray(out[0, 0], np.float32), np.asarray(out[0, 1], np.float32))


# ---------------------------------------------------------------- masking


def test_packed_segments_do_not_see_each_other(params):
  seg1, seg2 = _random_tokens(0, (1, 4)), _random_tokens(1, (1, 3))
  segments = [[1] * 4 + [2] * 3 + [0]]
  positions = [[0, 1, 2, 3, 0, 1, 2, 0]]
  packed = np.concatenate([seg1, seg2, [[0]]], axis=1)
  other = np.concatenate([_random_tokens(2, (1, 4)), seg2, [[0]]], axis=1)
  a = _forward(params, packed, positions, segments)
  b = _forward(params, other, positions, segments)
  np.testing.assert_array_equal(a[:, 4:7], b[:, 4:7])
  assert not np.allclose(a[:, :4], b[:, :4])
  # Each segment gives the logits it would give alone.
  np.testing.assert_allclose(a[:, 4:7], _forward(params, seg2), atol=1e-5)
  np.testing.assert_allclose(a[:, :4], _forward(params, seg1), atol=1e-5)


def test_left_padding_matches_unpadded(params):
  tokens = _random_tokens(3, (1, 5))
  padded = np.concatenate([np.zeros((1, 3), np.int32), tokens], axis=1)
  out = _forward(params, padded, [[0, 0, 0, 0, 1, 2, 3, 4]], [[0, 0, 0, 1, 1, 1, 1, 1]])
  np.testing.assert_allclose(out[:, 3:], _forward(params, tokens), atol=1e-5)


def test_mha_with_heads_times_head_dim_not_embed_dim():
  cfg = get_config("tiny", num_heads=4, num_kv_heads=4, head_dim=32, dtype="float32")  # 4 * 32 = 128 != 64
  model = DecoderOnlyModel(cfg)
  params = model.init_params(jax.random.PRNGKey(0))
  assert params["layer_0"]["attn"]["q_einsum"].shape == (4, 64, 32)
  assert params["layer_0"]["attn"]["attn_vec_einsum"].shape == (4, 32, 64)
  logits = _forward(params, _random_tokens(4, (2, 6)), config=cfg)
  assert logits.shape == (2, 6, cfg.vocab_size) and np.all(np.isfinite(logits))


def test_bf16_forward_returns_float32_logits():
  cfg = get_config("tiny")
  params = DecoderOnlyModel(cfg).init_params(jax.random.PRNGKey(0))
  logits = _forward(params, _random_tokens(5, (1, 4)), config=cfg)
  assert logits.dtype == np.float32 and np.all(np.isfinite(logits))


# ---------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors(params):
  positions = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(TypeError, match="tokens must be an integer"):
    Transformer(F32).apply({"params": params}, jnp.zeros((1, 4), jnp.float32), positions)
  too_long = jnp.zeros((1, F32.max_seq_len + 1), jnp.int32)
  with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
    Transformer(F32).apply({"params": params}, too_long, too_long)
  with pytest.raises(ValueError, match="decode=True needs a cache"):
    Transformer(F32).apply({"params": params}, jnp.zeros((1, 4), jnp.int32), positions, decode=True)
  with pytest.raises(ValueError, match=r"token ids must be in \[0, 256\)"):
    Transformer(F32).apply({"params": params}, jnp.full((1, 4), 256, jnp.int32), positions)
  with pytest.raises(ValueError, match="positions has shape"):
    Transformer(F32).apply({"params": params}, jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 3), jnp.int32))


def test_vocab_mismatch_is_reported(params):
  with pytest.raises(ValueError, match="vocab mismatch: params have 256 rows, config.vocab_size is 512"):
    DecoderOnlyModel(get_config("tiny", vocab_size=512, dtype="float32")).check_params(params)
  DecoderOnlyModel(F32).check_params(params)  # The matching config passes.


# ---------------------------------------------------------------- losses


def _unpacked_batch(targets):
  targets = np.asarray(targets, np.int32)
  inputs = np.concatenate([np.zeros((targets.shape[0], 1), np.int32), targets[:, :-1]], axis=1)
  return {"decoder_target_tokens": targets, "decoder_input_tokens": inputs,
          "decoder_loss_weights": (targets > 0).astype(np.int32)}


def _manual_log_probs(params, batch):
  logits = _forward(params, batch["decoder_input_tokens"]).astype(np.float64)
  log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  return logits - log_z[..., None], log_z


def test_loss_matches_manual_cross_entropy(model, params):
  targets = np.concatenate([_random_tokens(6, (2, 5)), np.zeros((2, 2), np.int32)], axis=1)
  batch = _unpacked_batch(targets)
  loss, metrics = jax.jit(model.loss_fn)(params, batch)
  log_probs, _ = _manual_log_probs(params, batch)
  picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  expected = -np.sum(picked * batch["decoder_loss_weights"]) / 10
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert metrics["weight_sum"] == 10 and metrics["num_tokens"] == 10
  assert metrics["z_loss"] == 0 and metrics["cross_ent_loss"] == loss
  argmax_right = (np.argmax(log_probs, -1) == targets) * batch["decoder_loss_weights"]
  np.testing.assert_allclose(metrics["accuracy"], argmax_right.sum() / 10)


def test_z_loss_adds_log_z_squared(params):
  batch = _unpacked_batch(_random_tokens(7, (2, 6)))
  base, _ = jax.jit(DecoderOnlyModel(F32).loss_fn)(params, batch)
  loss, metrics = jax.jit(DecoderOnlyModel(F32, z_loss=1e-2).loss_fn)(params, batch)
  _, log_z = _manual_log_probs(params, batch)
  expected_z = 1e-2 * np.mean(log_z**2)
  np.testing.assert_allclose(metrics["z_loss"], expected_z, rtol=1e-5)
  np.testing.assert_allclose(loss, base + expected_z, rtol=1e-5)
  np.testing.assert_allclose(metrics["cross_ent_loss"], base, rtol=1e-5)


def test_label_smoothing_and_loss_normalizing_factor(params):
  batch = _unpacked_batch(_random_tokens(8, (1, 6)))
  smoothing, vocab = 0.1, F32.vocab_size
  loss, _ = jax.jit(DecoderOnlyModel(F32, label_smoothing=smoothing).loss_fn)(params, batch)
  log_probs, _ = _manual_log_probs(params, batch)
  soft = np.full(log_probs.shape, smoothing / (vocab - 1))
  np.put_along_axis(soft, batch["decoder_target_tokens"][..., None], 1 - smoothing, -1)
  entropy = -(0.9 * np.log(0.9) + smoothing * np.log(smoothing / (vocab - 1)))
  expected = np.mean(-np.sum(soft * log_probs, -1) - entropy)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  summed, _ = jax.jit(DecoderOnlyModel(F32, loss_normalizing_factor=2.0).loss_fn)(params, batch)
  plain, _ = jax.jit(DecoderOnlyModel(F32).loss_fn)(params, batch)
  np.testing.assert_allclose(summed, plain * 6 / 2.0, rtol=1e-5)


def test_packed_and_unpacked_losses_agree(model, params):
  a, b = _random_tokens(9, (1, 4)), _random_tokens(10, (1, 3))
  unpacked = _unpacked_batch(np.stack([np.pad(a[0], (0, 4)), np.pad(b[0], (0, 5))]))
  packed_targets = np.concatenate([a, b, [[0]]], axis=1)
  packed = {
      "decoder_target_tokens": packed_targets,
      "decoder_input_tokens": np.array([[0, *a[0, :3], 0, *b[0, :2], 0]], np.int32),
      "decoder_loss_weights": (packed_targets > 0).astype(np.int32),
      "decoder_segment_ids": np.array([[1, 1, 1, 1, 2, 2, 2, 0]], np.int32),
      "decoder_positions": np.array([[0, 1, 2, 3, 0, 1, 2, 0]], np.int32),
  }
  loss_u, metrics_u = jax.jit(model.loss_fn)(params, unpacked)
  loss_p, metrics_p = jax.jit(model.loss_fn)(params, packed)
  np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5)
  assert metrics_p["weight_sum"] == metrics_u["weight_sum"] == 7
  score = jax.jit(model.score_batch)
  np.testing.assert_allclose(score(params, packed).sum(), score(params, unpacked).sum(), rtol=1e-5)


def test_score_batch_sums_target_log_probs(model, params):
  targets = np.concatenate([_random_tokens(11, (2, 4)), np.zeros((2, 1), np.int32)], axis=1)
  batch = _unpacked_batch(targets)
  batch["decoder_loss_weights"][1, 0] = 0  # A zero weight drops that token from the score.
  scores = jax.jit(model.score_batch)(params, batch)
  log_probs, _ = _manual_log_probs(params, batch)
  picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  assert scores.shape == (2,) and scores.dtype == jnp.float32
  np.testing.assert_allclose(scores, np.sum(picked * batch["decoder_loss_weights"], -1), rtol=1e-5)


def test_gradients_are_finite_and_nonzero(model, params):
  batch = _unpacked_batch(_random_tokens(12, (2, 6)))
  grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch)[0]))(params)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert all(np.any(g != 0) for g in leaves)
  assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_softmax_backward_equals_autodiff_of_jax_softmax():
  """modules.softmax's own backward against autodiff through jax.nn.softmax, with masked entries
  at the model's mask value (their probability is 0, so their gradient must be 0 too)."""
  from model import modules
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 7), jnp.float32) * 4
  logits = jnp.where(jnp.tril(jnp.ones((5, 7), bool)), logits, modules._MASK_VALUE)
  weights = jax.random.normal(jax.random.PRNGKey(1), logits.shape, jnp.float32)
  ours = jax.grad(lambda x: jnp.sum(modules.softmax(x) * weights))(logits)
  reference = jax.grad(lambda x: jnp.sum(jax.nn.softmax(x, axis=-1) * weights))(logits)
  assert jnp.array_equal(modules.softmax(logits), jax.nn.softmax(logits, axis=-1))
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(ours).max()) > 0.1  # Not trivially zero.
  assert not jnp.any(jnp.where(jnp.tril(jnp.ones((5, 7), bool)), 0.0, ours))


@pytest.mark.parametrize("batch_axes", [(), (2,)], ids=["plain", "stacked"])
def test_matmul_gradients_equal_autodiff_and_contract_no_leading_axes(batch_axes):
  """modules.matmul's own backward against autodiff through jnp.matmul (both operands), and its
  compiled weight gradient holds no dot that contracts the leading token axis of both operands
  (the slow XLA:CPU layout it exists to avoid; autodiff's gradient has one)."""
  import re
  from model import modules
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(keys[0], batch_axes + (48, 16), jnp.float32)
  w = jax.random.normal(keys[1], batch_axes + (16, 24), jnp.float32)
  weights = jax.random.normal(keys[2], batch_axes + (48, 24), jnp.float32)
  loss = lambda f: (lambda x, w: jnp.sum(f(x, w) * weights))
  ours = jax.jit(jax.grad(loss(modules.matmul), argnums=(0, 1)))
  reference = jax.jit(jax.grad(loss(jnp.matmul), argnums=(0, 1)))
  assert jnp.array_equal(modules.matmul(x, w), jnp.matmul(x, w))
  for got, want in zip(ours(x, w), reference(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got).max()) > 0.1
  token_axis = len(batch_axes)
  dims = re.escape(f"{{{token_axis}}}")
  contracts_tokens = re.compile(rf"lhs_contracting_dims={dims}, (rhs_batch_dims=\{{[0-9,]*\}}, )?"
                                rf"rhs_contracting_dims={dims}")
  assert contracts_tokens.search(reference.lower(x, w).compile().as_text())  # The pattern finds autodiff's.
  assert modules.transposes_for_weight_gradient(x, w)  # 48 tokens >= 16, 24 features.
  assert not contracts_tokens.search(ours.lower(x, w).compile().as_text())
  assert not modules.transposes_for_weight_gradient(x[..., :8, :], w)  # Fewer tokens: autodiff's dot.


def test_bad_loss_settings_are_rejected():
  with pytest.raises(ValueError, match="label_smoothing"):
    DecoderOnlyModel(F32, label_smoothing=1.0)
  with pytest.raises(ValueError, match="z_loss"):
    DecoderOnlyModel(F32, z_loss=-1.0)


def test_gemma_config_is_hashable_and_validated():
  assert hash(get_config("tiny")) == hash(get_config("tiny"))
  with pytest.raises(ValueError, match="dtype"):
    GemmaConfig(1, 8, 1, 1, 4, 8, 16, dtype="int8")


# ---------------------------------------------------------------- causal block attention


def _packed_padded_segments(length):
  """[2, length] segment ids: row 0 three packed documents, row 1 one document then padding (0)."""
  segments = np.ones((2, length), np.int32)
  segments[0, length // 3:] = 2
  segments[0, 2 * length // 3:] = 3
  segments[1, length - 7:] = 0
  return jnp.asarray(segments)


@pytest.mark.parametrize("num_blocks", [2, 3, 4, 40])  # Even blocks, uneven blocks, one query per block.
@pytest.mark.parametrize("window", [None, 5])  # Plain causal, and a sliding window within it.
def test_causal_block_attention_equals_the_full_square(num_blocks, window):
  """Query blocks against only the keys up to their end give the full-square attention and its
  gradient, with packed segments, padding rows and a sliding window in the mask."""
  from model.modules import causal_block_attention, dot_product_attention
  from model.transformer import attention_mask
  length = 40
  segments, slots = _packed_padded_segments(length), jnp.arange(length)
  mask = attention_mask(segments, segments, slots, slots)
  if window is not None:
    mask = mask & (slots[:, None] - slots[None, :] < window)[None]
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32)
             for s in [(2, length, 2, 3, 16), (2, length, 2, 16), (2, length, 2, 16)])
  # Padding queries see no key; their (unread) rows are the one place the two may differ.
  real = np.asarray(segments != 0)[:, :, None, None, None]
  weights = jnp.asarray(rng.normal(size=q.shape) * real, jnp.float32)

  def full(q, k, v):
    return dot_product_attention(q, k, v, mask)

  def blocked(q, k, v):
    return causal_block_attention(q, k, v, mask, num_blocks)

  np.testing.assert_allclose(np.asarray(jax.jit(blocked)(q, k, v)) * real, np.asarray(full(q, k, v)) * real,
                             rtol=1e-5, atol=1e-6)
  grads = [jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * weights), argnums=(0, 1, 2)))(q, k, v)
           for f in (full, blocked)]
  for want, got in zip(*grads):
    assert float(jnp.abs(want).max()) > 0.1  # Not trivially zero.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_causal_block_attention_slices_the_square():
  """The compiled blocked attention holds no [T, S] logits: its largest logits block is
  [T / n, T] for the last block (so a wrong slice, or no slicing, would show here)."""
  from model.modules import causal_block_attention
  length, num_blocks = 64, 4
  q = jnp.zeros((1, length, 1, 2, 8), jnp.float32)
  k = v = jnp.zeros((1, length, 1, 8), jnp.float32)
  mask = jnp.tril(jnp.ones((length, length), bool))[None]
  hlo = jax.jit(lambda q, k, v: causal_block_attention(q, k, v, mask, num_blocks)).lower(q, k, v).as_text()
  block = length // num_blocks
  assert f"tensor<1x1x2x{length}x{length}xf32>" not in hlo
  for i in range(num_blocks):
    assert f"tensor<1x1x2x{block}x{block * (i + 1)}xf32>" in hlo


@pytest.mark.parametrize("num_blocks", [3, 4])
def test_model_with_causal_blocks_gives_the_full_square_loss_and_gradients(params, num_blocks):
  """The whole model (packed segments, padding), loss and every parameter gradient, blocked
  against the full square (attention_causal_blocks=1)."""
  length = 24
  segments = _packed_padded_segments(length)
  tokens = jnp.asarray(_random_tokens(13, (2, length))) * (segments != 0)
  starts = np.asarray(jnp.concatenate([jnp.ones((2, 1), bool), segments[:, 1:] != segments[:, :-1]], axis=1))
  positions = np.zeros((2, length), np.int32)
  for row in range(2):
    for t in range(1, length):
      positions[row, t] = 0 if starts[row, t] else positions[row, t - 1] + 1
  batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": jnp.roll(tokens, -1, axis=1) * (segments != 0),
           "decoder_segment_ids": segments, "decoder_positions": jnp.asarray(positions),
           "decoder_loss_weights": (segments != 0).astype(jnp.float32)}

  def loss_and_grads(blocks):
    model = DecoderOnlyModel(dataclasses.replace(F32, attention_causal_blocks=blocks))
    return jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch)[0]))(params)

  full_loss, full_grads = loss_and_grads(1)
  loss, grads = loss_and_grads(num_blocks)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
  for want, got in zip(jax.tree.leaves(full_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_attention_causal_blocks_is_validated():
  with pytest.raises(ValueError, match="attention_causal_blocks must be a positive int"):
    get_config("tiny", attention_causal_blocks=0)


def test_rope_computes_sin_and_cos_apart_from_the_rotation():
  """XLA:CPU would fuse RoPE's sin and cos into the rotation and recompute them for every head and
  half (`modules.materialized`): in the compiled HLO no computation holds both a sine and the
  rotation's concatenate, and the values are the formula's."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 4, 16), jnp.float32)
  positions = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (2, 8))
  hlo = jax.jit(apply_rope).lower(x, positions).compile().as_text()
  computations = hlo.split("\n\n")
  assert any("sine(" in c for c in computations) and any("concatenate(" in c for c in computations)
  assert not any("sine(" in c and "concatenate(" in c for c in computations)
  angles = np.arange(8)[:, None] / 10_000 ** (np.arange(8) / 8)
  first, second = np.split(np.asarray(x, np.float64), 2, axis=-1)
  cos, sin = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]
  want = np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  np.testing.assert_allclose(jax.jit(apply_rope)(x, positions), want, rtol=1e-5, atol=1e-5)
