"""Bad input to the model: clear errors before anything is jitted, checked masks inside jit, and an
HF converter that refuses what Gemma 1 cannot represent instead of casting or ignoring it."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from model import decoding, hf_convert
from model.config import get_config
from model.models import DecoderOnlyModel

CONFIG = get_config("tiny", dtype="float32")
STOP = (1,)


@pytest.fixture(scope="module")
def params():
  return DecoderOnlyModel(CONFIG).init_params(jax.random.PRNGKey(0))


@pytest.mark.parametrize("prompts, max_len, message", [
    (np.array([2, 5, 6], np.int32), 4, r"\[batch, length\] array, got shape \(3,\) \(wrap a single"),
    (np.zeros((0, 3), np.int32), 4, "at least one prompt"),
    (np.array([[2, 5, 6]], np.int32), 0, "max_decode_len must be a positive int, got 0"),
    (np.array([[2, 5, 6]], np.float32), 4, "integer token ids"),
    (np.array([[2, 5, CONFIG.vocab_size + 3]], np.int32), 4,
     rf"token ids outside \[0, {CONFIG.vocab_size}\) \(vocab_size\): \[{CONFIG.vocab_size + 3}\]"),
    (np.array([[2, -1, 6]], np.int32), 4, r"outside .*: \[-1\]"),
])
def test_bad_decoding_arguments_are_clear_errors(params, prompts, max_len, message):
  with pytest.raises(ValueError, match=message):
    decoding.generate(CONFIG, params, prompts, jax.random.PRNGKey(0), max_decode_len=max_len,
                      stop_tokens=STOP)
  with pytest.raises(ValueError, match=message):
    decoding.beam_search(CONFIG, params, prompts, max_decode_len=max_len, num_beams=2,
                         stop_tokens=STOP)


def test_bad_prompt_lists_are_clear_errors():
  with pytest.raises(ValueError, match="non-empty list of prompts"):
    decoding.pad_prompts([], 2)
  with pytest.raises(ValueError, match="wrap a single prompt"):
    decoding.pad_prompts([5, 6, 7], 2)


def test_predict_batch_refuses_out_of_vocab_prompts(params):
  model = DecoderOnlyModel(CONFIG)
  with pytest.raises(ValueError, match="outside"):
    model.predict_batch(params, {"decoder_input_tokens": np.array([[2, 9999]], np.int32)},
                        bos_id=2, stop_tokens=STOP, max_decode_len=3)


def test_jitted_loss_and_scores_mask_and_count_out_of_vocab_ids(params):
  """Inside jit values cannot raise: out-of-vocab ids must neither give NaN nor pass unseen."""
  model = DecoderOnlyModel(CONFIG)
  targets = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], np.int32)
  inputs = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
  batch = {"decoder_target_tokens": targets, "decoder_input_tokens": inputs,
           "decoder_loss_weights": np.ones_like(targets)}
  bad = {**batch, "decoder_target_tokens": targets.copy()}
  bad["decoder_target_tokens"][1, 3] = CONFIG.vocab_size + 7
  loss, metrics = jax.jit(model.loss_fn)(params, bad)
  assert np.isfinite(float(loss)) and int(metrics["invalid_tokens"]) == 1
  assert float(metrics["weight_sum"]) == targets.size - 1  # The bad target left the loss.
  scores = jax.jit(model.score_batch)(params, bad)
  assert np.all(np.isfinite(np.asarray(scores)))
  # The masked row's score is that of its first three tokens.
  short = {k: v[:, :3] for k, v in batch.items()}
  np.testing.assert_allclose(float(scores[1]), float(jax.jit(model.score_batch)(params, short)[1]),
                             rtol=1e-5)


# ---- the HF converter ----

@pytest.mark.parametrize("setting", [
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
    {"sliding_window": 4096},
    {"attn_logit_softcapping": 50.0},
    {"final_logit_softcapping": 30.0},
    {"query_pre_attn_scalar": 256},
    {"use_bidirectional_attention": True},
    {"attention_dropout": 0.1},
])
def test_hf_settings_gemma_1_lacks_are_refused(setting):
  config = {**hf_convert.to_hf_config(CONFIG), **setting}
  with pytest.raises(ValueError, match="Gemma 1|unsupported"):
    hf_convert.from_hf_config(config)
  # Their default values (absent, None, False, 0) are accepted.
  hf_convert.from_hf_config({**hf_convert.to_hf_config(CONFIG), "rope_scaling": None,
                             "sliding_window": None, "use_bidirectional_attention": None})


@pytest.mark.parametrize("dtype", [np.int32, np.complex64, np.bool_])
def test_non_floating_hf_tensors_are_refused_not_cast(params, dtype):
  state_dict = hf_convert.to_hf_state_dict(params, CONFIG)
  name = "model.layers.0.mlp.up_proj.weight"
  state_dict[name] = state_dict[name].astype(dtype)
  with pytest.raises(ValueError, match=r"HF tensor layers.0.mlp.up_proj.weight has dtype .*must be "
                                       r"floating point"):
    hf_convert.from_hf_state_dict(state_dict, CONFIG)


def test_non_floating_torch_tensors_are_refused(params):
  torch = pytest.importorskip("torch")
  state_dict = {k: torch.tensor(v) for k, v in hf_convert.to_hf_state_dict(params, CONFIG).items()}
  state_dict["model.norm.weight"] = state_dict["model.norm.weight"].to(torch.int32)
  with pytest.raises(ValueError, match="HF tensor norm.weight has dtype torch.int32"):
    hf_convert.from_hf_state_dict(state_dict, CONFIG)


def test_check_params_checks_dtype(params):
  model = DecoderOnlyModel(CONFIG)
  model.check_params(params)
  as_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  with pytest.raises(ValueError, match="has dtype bfloat16, expected float32"):
    model.check_params(as_bf16)


def test_import_hf_keeps_the_checkpoints_dtype(params, tmp_path):
  hf_convert.export_hf(params, CONFIG, str(tmp_path), dtype="bfloat16")
  assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
  config, imported = hf_convert.import_hf(str(tmp_path), dtype="float32")
  assert config.param_dtype == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves(imported)} == {np.dtype(ml_dtypes.bfloat16)}
  DecoderOnlyModel(config).check_params(imported)
  # The exported values, rounded to bfloat16, come back exactly.
  want = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), params)
  jax.tree.map(np.testing.assert_array_equal, imported, want)
  config32, imported32 = hf_convert.import_hf(str(tmp_path), param_dtype="float32")
  assert config32.param_dtype == "float32"
  assert {x.dtype for x in jax.tree.leaves(imported32)} == {np.dtype(np.float32)}
  (tmp_path / "config.json").write_text(json.dumps(
      {**json.loads((tmp_path / "config.json").read_text()), "torch_dtype": "int8", "dtype": "int8"}))
  with pytest.raises(ValueError, match="dtype 'int8' is not one of"):
    hf_convert.import_hf(str(tmp_path))
