"""The Bradley-Terry reward model: its loss and read-out, and learning the programmatic preference of
data/chat (held-out accuracy high where the length-only baseline is near chance)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import get_config
from model.reward_model import RewardModel
from tests import chat_fixtures


def test_loss_is_bradley_terry_with_margin_and_centering():
  rm = RewardModel(get_config("tiny"), margin=0.5, center_coef=0.1)
  params = rm.init_params(jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  chosen = np.zeros((3, 10), np.int32)
  rejected = np.zeros((3, 10), np.int32)
  for i, n in enumerate((4, 7, 10)):
    chosen[i, :n] = rng.integers(4, 256, n)
    rejected[i, :12 - n] = rng.integers(4, 256, 12 - n)
  loss, metrics = rm.loss_fn(params, {"chosen": chosen, "rejected": rejected})
  rc, rr = np.asarray(rm.rewards(params, chosen)), np.asarray(rm.rewards(params, rejected))
  expected = np.mean(np.log1p(np.exp(-(rc - rr - 0.5)))) + 0.1 * np.mean((rc + rr) ** 2)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(metrics["accuracy"]) == pytest.approx(np.mean(rc > rr))


def test_reward_is_read_at_the_last_real_token():
  rm = RewardModel(get_config("tiny"))
  params = rm.init_params(jax.random.PRNGKey(2))
  row = np.array([[2, 9, 30, 41, 5]], np.int32)
  padded = np.concatenate([row, np.zeros((1, 6), np.int32)], axis=1)
  r, r_padded = float(rm.rewards(params, row)[0]), float(rm.rewards(params, padded)[0])
  assert abs(r - r_padded) < 1e-5
  assert abs(r - float(rm.rewards(params, row[:, :4])[0])) > 1e-6  # the last token matters


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  return chat_fixtures.post_training_chain(tmp_path_factory, "rm")


def test_reward_model_learns_the_preference_length_cannot_explain(chain):
  with open(os.path.join(chain["rm"], "reward_model_summary.json")) as f:
    summary = json.load(f)
  final, start = summary["eval"], summary["eval_start"]
  assert final["pairs"] >= 40
  assert 0.35 <= final["length_baseline_accuracy"] <= 0.65, final  # length says little
  assert final["accuracy"] >= 0.85, final
  assert final["accuracy"] >= final["length_baseline_accuracy"] + 0.25
  assert start["accuracy"] < final["accuracy"] - 0.2  # it learned it in this run
  evals = chat_fixtures.read_metrics(chain["rm"], "eval")
  assert {"accuracy", "length_baseline_accuracy"} <= set(evals[-1])
