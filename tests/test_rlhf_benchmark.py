"""benchmarks/rlhf_vs_trl.py: its sides compute the same things (micro config, in-process, no timing).

The reward-model sides (ours, trl.RewardTrainer) start from the same weights and pairs, so every
step's loss must agree; the RLOO sides (ours, trl.RLOOTrainer) must score one fixed probe batch
alike (policy and reference log-probs, rewards) and sample full-length completions.
"""

import numpy as np
import pytest

pytest.importorskip("trl")

from benchmarks import rlhf_vs_trl  # noqa: E402

MODEL = {"name": "tiny", "overrides": {"num_layers": 1}, "dtype": "float32"}


def test_reward_model_sides_take_the_same_steps():
  ours, ours_info = rlhf_vs_trl.ours_reward_side(MODEL, batch_size=4, seq_len=16, learning_rate=1e-2, seed=0)
  trl, trl_info = rlhf_vs_trl.trl_reward_side(MODEL, batch_size=4, seq_len=16, learning_rate=1e-2, seed=0)
  try:
    theirs = [trl_info["first_step"], trl(), trl()]
  finally:
    trl.close()
  mine = [ours_info["first_step"], ours(), ours()]
  # Step 1 is the same forward pass; steps 2 and 3 also compare gradients, clipping and AdamW.
  np.testing.assert_allclose(mine, theirs, atol=1e-4)
  assert mine[2] < mine[0] - 0.01  # Real updates, not a frozen model.
  assert ours_info["tokens"] == trl_info["tokens"]


def test_rloo_sides_score_alike_and_sample_full_length():
  kwargs = dict(prompts=2, group_size=2, prompt_len=6, completion_len=5, kl_coef=0.05, learning_rate=1e-3, seed=0)
  ours, ours_info = rlhf_vs_trl.ours_rloo_side(MODEL, **kwargs)
  trl, trl_info = rlhf_vs_trl.trl_rloo_side(MODEL, **kwargs)
  try:
    trl_second = trl()
  finally:
    trl.close()
  for key in ("policy_logp", "ref_logp", "reward"):
    np.testing.assert_allclose(ours_info["probe"][key], trl_info["probe"][key], atol=1e-4, err_msg=key)
  assert np.std(ours_info["probe"]["reward"]) > 1e-3  # Distinct rows get distinct rewards.
  steps = [ours_info["first_step"], ours(), trl_info["first_step"], trl_second]
  assert [s["completion_tokens"] for s in steps] == [2 * 2 * 5] * 4
  assert trl_info["first_step"]["tokens_seen"] == 2 * 2 * (6 + 5)  # TRL's prompts are ours.
  for first in (ours_info["first_step"], trl_info["first_step"]):  # The policy starts as the reference.
    assert first["kl_per_token"] == pytest.approx(0.0, abs=1e-5)


def _result(sides):
  return {"sides": {name: {"setup_info": info, "warmup_values": [], "values": values}
                    for name, (info, values) in sides.items()}}


def test_checks_refuse_sides_that_differ():
  same = _result({"ours": ({"first_step": 0.7}, [0.6]), "trl": ({"first_step": 0.7}, [0.6])})
  rlhf_vs_trl.check_reward_model(same, enforce=True)
  assert same["equality_check"]["max_abs_diff_all_steps"] == 0.0
  with pytest.raises(SystemExit, match="do not compute the same function"):
    rlhf_vs_trl.check_reward_model(_result({"ours": ({"first_step": 0.7}, []), "trl": ({"first_step": 0.71}, [])}),
                                   enforce=True)
  step = {"completion_tokens": 8, "tokens_seen": 20}
  probe = {"reward": [0.5, 0.1]}
  ok = _result({"ours": ({"probe": probe, "first_step": step}, [step]),
                "trl": ({"probe": probe, "first_step": step}, [step])})
  rlhf_vs_trl.check_rloo(ok, prompt_len=3, completion_len=2, rows=4, enforce=True)
  short = _result({"ours": ({"probe": probe, "first_step": step}, [step]),
                   "trl": ({"probe": probe, "first_step": step}, [dict(step, completion_tokens=7)])})
  with pytest.raises(SystemExit, match="completion tokens per step"):
    rlhf_vs_trl.check_rloo(short, prompt_len=3, completion_len=2, rows=4, enforce=True)
  off = _result({"ours": ({"probe": probe, "first_step": step}, []),
                 "trl": ({"probe": {"reward": [0.5, 0.2]}, "first_step": step}, [])})
  with pytest.raises(SystemExit, match="do not compute the same function"):
    rlhf_vs_trl.check_rloo(off, prompt_len=3, completion_len=2, rows=4, enforce=True)
