"""RLHF: masks, KL estimators, the reference-config check, exact resume, and learning (RLOO raises the
held-out reward while the KL to the SFT reference stays bounded)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import gin_utils, rlhf
from model.checkpoints import CheckpointConfig
from model.optimizers import create_optimizer, create_schedule
from model.partitioning import Partitioner
from tests import chat_fixtures


def test_tokens_after_the_terminator_are_masked():
  responses = jnp.array([[7, 8, 5, 0, 0], [7, 5, 9, 5, 0], [7, 8, 9, 9, 9], [1, 0, 0, 0, 0]])
  mask, terminated = rlhf.response_mask(responses, (1, 5))
  np.testing.assert_array_equal(np.asarray(mask), [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(terminated), [True, True, False, True])


def test_kl_estimators():
  rng = np.random.default_rng(0)
  # Tokens drawn from p; KL(p || q) in closed form vs the mean of k1 and k3 over the samples.
  p, q = np.array([0.5, 0.3, 0.2]), np.array([0.3, 0.3, 0.4])
  x = rng.choice(3, size=200_000, p=p)
  log_ratio = jnp.asarray(np.log(p[x]) - np.log(q[x]))
  true_kl = float(np.sum(p * np.log(p / q)))
  for est in ("k1", "k3"):
    assert abs(float(jnp.mean(rlhf.kl_estimate(log_ratio, est, 100.0))) - true_kl) < 0.01
  assert float(jnp.min(rlhf.kl_estimate(log_ratio, "k3", 100.0))) >= 0.0
  assert float(jnp.max(jnp.abs(rlhf.kl_estimate(jnp.array([-30.0, 30.0]), "k1", 10.0)))) == 10.0


def test_right_align_keeps_order():
  x = jnp.array([[0, 0, 2, 9, 5, 0], [2, 3, 4, 5, 6, 7]])
  np.testing.assert_array_equal(np.asarray(rlhf.right_align(x)), [[2, 9, 5, 0, 0, 0], [2, 3, 4, 5, 6, 7]])


def test_bad_rl_configs_are_clear_errors():
  for kwargs in ({"algorithm": "dpo"}, {"kl_estimator": "k2"}, {"group_size": 1}, {"ppo_epochs": 2}):
    with pytest.raises(ValueError):
      rlhf.RLConfig(**kwargs)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  return chat_fixtures.post_training_chain(tmp_path_factory, "rl")


def test_rl_raises_held_out_reward_with_bounded_kl(chain):
  evals = chat_fixtures.read_metrics(chain["rl"], "eval")
  start, end = evals[0], evals[-1]
  assert start["step"] == 0 and end["step"] == chat_fixtures.RL_STEPS
  assert end["reward"] > start["reward"] + 0.5, (start, end)
  assert end["kl"] < 5.0 and start["kl"] < 1e-3, (start, end)
  train = chat_fixtures.read_metrics(chain["rl"], "train")
  assert {"reward", "kl", "kl_k1", "kl_k3", "response_length", "entropy", "terminated_fraction"} <= set(train[-1])


def _run(chain, model_dir, total_steps, stop_after=None, model=None, reference=None):
  model = model or gin_utils.build_model("tiny", data_dir=chain["data"], dtype="float32")
  sft = f"{chain['sft']}/checkpoints/{chat_fixtures.SFT_STEPS}"
  opt = create_optimizer("adamw", create_schedule("constant", peak_learning_rate=1e-3, warmup_steps=1,
                                                  total_steps=total_steps), weight_decay=0.0)
  return rlhf.train_rlhf(
      model=model, reward_model_base=gin_utils.build_model("tiny", data_dir=chain["data"], dtype="float32"),
      partitioner=Partitioner(), model_dir=str(model_dir), data_dir=chain["data"], policy_checkpoint=sft,
      reference_checkpoint=reference,
      reward_checkpoint=f"{chain['rm']}/checkpoints/{chat_fixtures.RM_STEPS}", total_steps=total_steps,
      rl=rlhf.RLConfig(algorithm="ppo", ppo_epochs=2, max_decode_len=8), prompts_per_step=4, optimizer=opt,
      checkpoint_cfg=CheckpointConfig(save_period=1, keep=2, async_save=False), max_length=32,
      stop_after=stop_after)


def test_ppo_resumes_exactly(chain, tmp_path):
  _run(chain, tmp_path / "straight", 4)
  _run(chain, tmp_path / "resumed", 4, stop_after=lambda s: s == 2)
  resumed = _run(chain, tmp_path / "resumed", 4)
  assert resumed["start_step"] == 2
  a = chat_fixtures.read_metrics(str(tmp_path / "straight"), "train")
  b = chat_fixtures.read_metrics(str(tmp_path / "resumed"), "train")
  assert [r["step"] for r in b] == [1, 2, 3, 4]
  for x, y in zip(a, b):
    assert x == y


def test_reference_with_another_config_is_a_clear_error(chain, tmp_path):
  other = gin_utils.build_model("tiny", data_dir=chain["data"], dtype="float32", config_overrides={"hidden_dim": 96})
  with pytest.raises(ValueError, match="another model config"):
    _run(chain, tmp_path / "bad", 1, model=other)


def test_ppo_gradient_accumulation_equals_the_whole_batch():
  """NUM_MICROBATCHES for the policy update: microbatches with unequal response lengths
  (rows 0, 2 long; 1, 3 short) accumulate to the whole batch's gradient of PPO's token-mean loss
  (each microbatch weighted by its tokens; RLOO's row mean by its rows)."""
  from model.config import get_config
  from model.models import DecoderOnlyModel
  from model.train import Trainer
  rl = rlhf.RLConfig(algorithm="ppo")
  objective = rlhf.PolicyObjective(DecoderOnlyModel(get_config("tiny", dtype="float32")), rl)
  params = objective.init_params(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  lengths = np.array([6, 1, 5, 2])
  mask = (np.arange(6)[None] < lengths[:, None]).astype(np.float32)
  batch = {"prompts": rng.integers(3, 200, (4, 5)).astype(np.int32),
           "responses": (rng.integers(3, 200, (4, 6)) * mask).astype(np.int32), "response_mask": mask,
           "advantages": rng.normal(size=4).astype(np.float32),
           "old_log_probs": (np.log(1 / 256) + 0.3 * rng.normal(size=(4, 6))).astype(np.float32)}
  grads = {}
  for n in (1, 2):
    trainer = Trainer(objective, create_optimizer("adamw"), Partitioner(), n)
    grads[n], _ = jax.jit(trainer._grads)(params, batch, jax.random.PRNGKey(1))
  for a, b in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[2])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=1e-7)
