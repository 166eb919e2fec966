"""Conformance with HF transformers' GemmaForCausalLM (torch CPU, eager attention), via model/hf_convert.py.

The torch / transformers tests skip when those packages are absent; the
numpy round trip only needs safetensors.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("safetensors")

from model import decoding, hf_convert  # noqa: E402
from model.config import get_config  # noqa: E402
from model.models import DecoderOnlyModel  # noqa: E402
from model.transformer import Transformer  # noqa: E402

CONFIGS = {
    "gqa": get_config("tiny", dtype="float32"),
    "mqa": get_config("tiny", num_kv_heads=1, dtype="float32"),
    "mha_wide_heads": get_config("tiny", num_heads=4, num_kv_heads=4, head_dim=32, dtype="float32"),
}
ATOL = 1e-4
# The random models here have no vocabulary; the released Gemma tokenizer's BOS and stop ids.
BOS, STOP = 2, (1, 107)


def _random_params(config, seed=0):
  """Init params with non-zero norm scales, so the (1 + scale) convention is exercised."""
  params = DecoderOnlyModel(config).init_params(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x + rng.normal(0, 0.5, x.shape).astype(np.float32) if "scale" in jax.tree_util.keystr(path)
      else x, params)


@functools.partial(jax.jit, static_argnames="config")
def _our_logits(params, tokens, positions, segment_ids, config):
  return Transformer(config).apply({"params": params}, tokens, positions, segment_ids)[0]


def _batch(config):
  """A full row and a left-padded row: tokens, HF attention mask, positions."""
  rng = np.random.default_rng(1)
  tokens = rng.integers(3, config.vocab_size, size=(2, 9)).astype(np.int64)
  tokens[:, 0] = BOS
  tokens[1, :3] = 0
  tokens[1, 3] = BOS
  mask = (tokens != 0).astype(np.int64)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return tokens, mask, positions


def _compare(params, hf_model, config, positions=None):
  """Asserts our logits equal HF's on the real tokens of `_batch`; returns ours."""
  import torch
  tokens, mask, batch_positions = _batch(config)
  positions = batch_positions if positions is None else positions
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask),
                      position_ids=torch.from_numpy(positions)).logits.numpy()
  ours = np.asarray(_our_logits(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32),
                                jnp.asarray(mask, jnp.int32), config))
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=ATOL, rtol=0)
  return ours


def _hf_model(config, state_dict=None, seed=0):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(seed)
  hf_config = transformers.GemmaConfig(**{k: v for k, v in hf_convert.to_hf_config(config).items()
                                          if k not in ("architectures", "model_type", "torch_dtype", "dtype")})
  hf_config._attn_implementation = "eager"
  model = transformers.GemmaForCausalLM(hf_config).eval()
  if state_dict is not None:
    missing, unexpected = model.load_state_dict({k: torch.tensor(v) for k, v in state_dict.items()},
                                                strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    model.tie_weights()
  return model


def test_state_dict_round_trip_is_exact():
  config = CONFIGS["mqa"]
  params = _random_params(config)
  back = hf_convert.from_hf_state_dict(hf_convert.to_hf_state_dict(params, config), config)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  assert hf_convert.from_hf_config(hf_convert.to_hf_config(config), dtype="float32") == config


def test_state_dict_mismatches_are_reported():
  config = CONFIGS["gqa"]
  state_dict = hf_convert.to_hf_state_dict(_random_params(config), config)
  with pytest.raises(ValueError, match="embed_tokens.weight has shape"):
    hf_convert.from_hf_state_dict(state_dict, get_config("tiny", vocab_size=512))
  with pytest.raises(ValueError, match="does not use"):
    hf_convert.from_hf_state_dict(state_dict, get_config("tiny", num_layers=1))
  with pytest.raises(ValueError, match="Gemma ties them"):
    hf_convert.from_hf_state_dict({**state_dict, "lm_head.weight": state_dict["model.norm.weight"][None]}, config)
  with pytest.raises(ValueError, match="rope_theta"):
    hf_convert.from_hf_config({**hf_convert.to_hf_config(config), "rope_parameters": {"rope_theta": 5e5}})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exported_params_match_hf_logits(name):
  config = CONFIGS[name]
  params = _random_params(config, seed=2)
  hf_model = _hf_model(config, hf_convert.to_hf_state_dict(params, config))
  _compare(params, hf_model, config)


def test_imported_hf_params_match_hf_logits():
  torch = pytest.importorskip("torch")
  config = CONFIGS["gqa"]
  hf_model = _hf_model(config, seed=3)
  with torch.no_grad():  # HF initialises with std 0.02 and zero norms; larger weights make a sharper test.
    for name, tensor in hf_model.named_parameters():
      tensor.normal_(0.0, 0.5 if "norm" in name else 0.2)
  params = hf_convert.from_hf_state_dict(hf_model.state_dict(), config)
  _compare(params, hf_model, config)


def test_safetensors_files_load_both_ways(tmp_path):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  config = CONFIGS["mqa"]
  params = _random_params(config, seed=4)
  hf_convert.export_hf(params, config, str(tmp_path / "ours"))
  hf_model = transformers.GemmaForCausalLM.from_pretrained(str(tmp_path / "ours"), attn_implementation="eager").eval()
  _compare(params, hf_model, config)
  hf_model.save_pretrained(str(tmp_path / "theirs"))
  config_back, params_back = hf_convert.import_hf(str(tmp_path / "theirs"), dtype="float32")
  assert config_back == config
  jax.tree.map(np.testing.assert_array_equal, params_back, jax.tree.map(np.asarray, params))


def test_greedy_generation_matches_hf_generate():
  torch = pytest.importorskip("torch")
  config = CONFIGS["gqa"]
  params = _random_params(config, seed=5)
  hf_model = _hf_model(config, hf_convert.to_hf_state_dict(params, config))
  prompts = decoding.pad_prompts([[10, 20, 30], [40, 50, 60]], BOS)
  ours, _ = decoding.generate(config, params, jnp.asarray(prompts), jax.random.PRNGKey(0), max_decode_len=8,
                              stop_tokens=STOP)
  with torch.no_grad():
    theirs = hf_model.generate(torch.from_numpy(prompts.astype(np.int64)), max_new_tokens=8, do_sample=False,
                               eos_token_id=list(STOP), pad_token_id=0)
  theirs = theirs[:, prompts.shape[1]:].numpy()
  np.testing.assert_array_equal(np.asarray(ours)[:, :theirs.shape[1]], theirs)


@pytest.mark.parametrize("name", ["mqa", "mha_wide_heads"])
def test_logits_match_hf_at_positions_near_the_context_end(name):
  """Positions offset to 8183..8191 (RoPE angles at the top of the 8192 context), one row also
  left-padded with an attention mask."""
  config = get_config(
      "tiny", max_seq_len=8192, dtype="float32",
      **{k: getattr(CONFIGS[name], k) for k in ("num_heads", "num_kv_heads", "head_dim")})
  params = _random_params(config)
  hf_model = _hf_model(config, hf_convert.to_hf_state_dict(params, config))
  _, mask, positions = _batch(config)
  offset = np.where(mask.astype(bool), positions + 8191 - positions.max(axis=1, keepdims=True), 0)
  assert offset.max() == 8191 and offset[0, 0] == 8183
  ours = _compare(params, hf_model, config, positions=offset)
  # The offset matters: the same tokens at positions 0.. give different logits.
  at_start = _compare(params, hf_model, config)
  real = mask.astype(bool)
  assert np.abs(at_start[real] - ours[real]).max() > 1e-5  # well above float32 round-off
