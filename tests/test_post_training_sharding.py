"""The reward model, the RLHF policy, its frozen reference and the reward model it is scored by are
sharded on a (data x model) mesh like pretraining, and a sharded step computes what the 1-device
step does.

One subprocess with 4 simulated CPU devices (XLA_FLAGS apply only before jax initialises) loads
tiny policy and reward-model checkpoints (random params, on the chat data's vocabulary) onto a 2 x 2 mesh (FSDP over 'data', tensor parallel
over 'model') and onto one device, then runs an RLHF rollout + policy update and a reward-model
update on each. Also: the compiled-memory accounting of benchmarks/post_training_memory.py, on
the small CPU gin files (the 2B / 7B rows are in benchmarks/results/post_training_memory.json).
"""

import json
import os
import subprocess
import sys

import pytest

from tests import chat_fixtures
from tests.test_post_training_resume import random_start

SCRIPT = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, numpy as np
from model import checkpoints, gin_utils, preference_data, rlhf
from model.optimizers import create_optimizer, create_schedule
from model.partitioning import Partitioner
from model.reward_model import RewardModel, load_reward_model
from model.train import Trainer
from tasks import special_tokens
import tasks

data, sft, rm_dir = sys.argv[1:4]
policy = gin_utils.build_model("tiny", data_dir=data, dtype="float32")
rl = rlhf.RLConfig(max_decode_len=8, group_size=2)
stop = special_tokens.special_tokens(tasks.get_vocabulary(data)).stop_ids
pairs = preference_data.load_preferences(data, "train", 32)
opt = lambda: create_optimizer("adamw", create_schedule("constant", peak_learning_rate=1e-3, warmup_steps=1,
                                                        total_steps=10), weight_decay=0.0)

def layout(tree):
  # (mesh axes any leaf is split over, bytes on device 0 / bytes of the whole tree)
  leaves = jax.tree.leaves(tree)
  axes = sorted({a for x in leaves for a in jax.tree.leaves(tuple(x.sharding.spec)) if a})
  local = sum(x.addressable_shards[0].data.nbytes for x in leaves)
  return axes, local / sum(x.nbytes for x in leaves)

def run(partitioner):
  trainer = Trainer(rlhf.PolicyObjective(policy, rl), opt(), partitioner, 1, 0)
  abstract = trainer.abstract_train_params()
  state = trainer.init_state(checkpoints.load_params(sft, abstract))
  ref = checkpoints.load_params(sft, abstract)
  rm = RewardModel(policy.config)
  rm_params = load_reward_model(rm_dir, rm, partitioner)
  prompts = jax.device_put(pairs["prompt"][:4], partitioner.replicated)  # as train_rlhf passes them
  with partitioner.activate():
    batch, stats = rlhf.rollout(policy.config, rl, stop, rm, state.params, ref, rm_params, prompts,
                                jax.random.PRNGKey(7))
  state, metrics = trainer.train_step(state, batch)
  rm_trainer = Trainer(rm, opt(), partitioner, 1, 0)
  rm_state = rm_trainer.init_state(rm_params)
  rm_state, rm_metrics = rm_trainer.train_step(rm_state, partitioner.shard_batch(
      {k: pairs[k][:8] for k in ("chosen", "rejected")}))
  out = {"layout": {name: layout(tree) for name, tree in (
             ("policy", state.params), ("policy_opt_state", state.opt_state), ("reference", ref),
             ("reward_model", rm_params), ("reward_model_trained", rm_state.params))},
         "responses": np.asarray(batch["responses"]).tolist(),
         "metrics": {f"rollout/{k}": float(v) for k, v in stats.items()}}
  out["metrics"].update({f"policy/{k}": float(v) for k, v in metrics.items()})
  out["metrics"].update({f"rm/{k}": float(v) for k, v in rm_metrics.items()})
  params = [np.asarray(x) for x in jax.tree.leaves((state.params, rm_state.params))]
  return out, params

one, one_params = run(Partitioner(devices=jax.devices()[:1]))
mesh, mesh_params = run(Partitioner(mesh_shape=(2, 2), shard_params_over_data=True))
mesh["max_param_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(one_params, mesh_params))
print("REPORT" + json.dumps({"one": one, "mesh": mesh}))
"""


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  return random_start(tmp_path_factory)


def _python(code, *args):
  env = {**os.environ, "PYTHONPATH": chat_fixtures.REPO}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", code, *args], cwd=chat_fixtures.REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
  return proc.stdout


def test_policy_reference_and_reward_model_shard_on_a_2x2_mesh_and_match_one_device(chain):
  out = _python(SCRIPT, chain["data"], chain["policy"], chain["rm"])
  report = json.loads(next(l for l in out.splitlines() if l.startswith("REPORT"))[len("REPORT"):])
  one, mesh = report["one"], report["mesh"]
  for name, (axes, fraction) in mesh["layout"].items():
    assert axes == ["data", "model"], (name, axes)  # FSDP over 'data' and tensor parallel over 'model'
    assert fraction < 0.45, (name, fraction)  # each device holds well under half of it
  for name, (_, fraction) in one["layout"].items():
    assert fraction == 1.0, (name, fraction)  # a 1 x 1 mesh: all of it on the one device
  assert mesh["responses"] == one["responses"]  # the same samples from the same key
  assert set(mesh["metrics"]) == set(one["metrics"]) and len(one["metrics"]) > 15
  for k, v in one["metrics"].items():
    assert mesh["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
  assert mesh["max_param_diff"] < 1e-5, mesh["max_param_diff"]
  assert one["metrics"]["policy/grad_norm"] > 0 and one["metrics"]["rm/grad_norm"] > 0


def test_rlhf_memory_accounting_on_the_cpu_gin():
  """benchmarks/post_training_memory.py's report for gin/runs/rlhf.gin (tiny model, 2 x 2 mesh):
  the rollout's compiled arguments hold the policy, reference and reward-model params, and each
  phase's total is what the docs add up."""
  from benchmarks import post_training_memory
  r = post_training_memory.compile_report(
      "rlhf", "gin/runs/rlhf.gin", 4, 4, "build_model.config_name = 'tiny'", "MAX_LENGTH = 32",
      "MAX_DECODE_LEN = 8", "PROMPTS_PER_STEP = 4", "Partitioner.num_partitions = 2")
  assert r["mesh"] == {"data": 2, "model": 2} and r["per_replica_rows"] == 8
  params = r["param_bytes_per_device"]
  assert 4 * r["num_params"] / 4 <= params < 0.55 * 4 * r["num_params"]  # float32, ~half per device (2-way model)
  assert r["opt_state_bytes_per_device"] >= 2 * params  # AdamW's two moments
  assert r["reference_bytes_per_device"] == params and r["reward_model_bytes_per_device"] > params
  assert r["train_phase_bytes"] == (r["train_step"]["total_bytes"] + params
                                    + r["reward_model_bytes_per_device"])
  assert r["rollout"]["argument_size_in_bytes"] >= 2 * params + r["reward_model_bytes_per_device"]
  assert r["rollout_phase_bytes"] == r["rollout"]["total_bytes"] + r["opt_state_bytes_per_device"]
  assert r["peak_bytes"] == max(r["train_phase_bytes"], r["rollout_phase_bytes"])
  assert r["fits_16_gib"]
