"""SFT through model.train on the chat caches: masked tokens give zero gradient, the model learns to
end its answers with <end_of_turn>, and the held-out loss on model turns falls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import data as data_lib
from model import gin_utils
from tests import chat_fixtures

HELD_OUT_PROMPTS = ["What is a fruit?", "Please name a tool.", "Tell me a colour now."]  # templates not in the data


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  return chat_fixtures.post_training_chain(tmp_path_factory, "sft")


def test_masked_targets_contribute_exactly_zero_gradient(chain):
  gin_utils.register_data_dir(chain["data"])
  ds = data_lib.get_dataset("gf_chat", {"targets": 64}, "train", 4, shuffle=False, seed=0, use_cached=True)
  batch = {k: np.asarray(v) for k, v in next(iter(ds)).items()}
  weights = batch["decoder_loss_weights"]
  assert 0 < weights.sum() < (batch["decoder_target_tokens"] != 0).sum()  # some real tokens are masked
  model = gin_utils.build_model("tiny", data_dir=chain["data"], dtype="float32")
  params = model.init_params(jax.random.PRNGKey(0))
  grad = jax.jit(jax.grad(lambda p, b: model.loss_fn(p, b)[0]))
  base = grad(params, batch)
  # Change every masked target (user turns, headers, BOS-side tokens): the inputs stay as they were.
  masked = (weights == 0) & (batch["decoder_target_tokens"] != 0)
  changed = dict(batch, decoder_target_tokens=np.where(masked, (batch["decoder_target_tokens"] % 50) + 7,
                                                       batch["decoder_target_tokens"]))
  assert (changed["decoder_target_tokens"] != batch["decoder_target_tokens"]).any()
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(grad(params, changed))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A learned target does move the gradient (the comparison above can fail).
  learned = dict(batch, decoder_target_tokens=np.where(weights == 1, (batch["decoder_target_tokens"] % 50) + 7,
                                                       batch["decoder_target_tokens"]))
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(grad(params, learned))))


def test_held_out_model_turn_loss_falls(chain):
  evals = [r for r in chat_fixtures.read_metrics(chain["sft"], "eval") if "gf_chat_instructions/loss" in r]
  assert len(evals) >= 2
  first, last = evals[0]["gf_chat_instructions/loss"], evals[-1]["gf_chat_instructions/loss"]
  assert last < 0.8 * first, (first, last)


def test_sft_model_ends_answers_with_end_of_turn(chain):
  from model import infer
  from tasks import special_tokens
  import tasks
  eot = special_tokens.special_tokens(tasks.get_vocabulary(chain["data"])).end_of_turn
  model = gin_utils.build_model("tiny", data_dir=chain["data"], dtype="float32")
  # A three-turn dialogue (the tiny model's context is 128 tokens).
  results = infer.infer(model=model, prompts=HELD_OUT_PROMPTS[:2] + ["Another one, please."], model_dir=chain["sft"],
                        data_dir=chain["data"], chat=True, method="greedy", max_decode_len=12)
  assert [r["turn"] for r in results] == [1, 2, 3]
  for r in results:
    assert r["stop_id"] == eot, r
    assert r["completion"].startswith("Here is one:"), r
