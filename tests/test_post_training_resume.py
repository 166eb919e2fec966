"""Exact resume after SIGKILL: RLHF and the reward model run as the workflow runs them
(`python -m model.rlhf` / `python -m model.reward_model`, tiny model, async checkpoints), are
killed with SIGKILL once a checkpoint exists, and restarted with the same command; every step's
metrics and the final parameters equal those of one uninterrupted run, bit for bit.

They start from random (not trained) policy / reward-model checkpoints on the chat data: resuming
does not depend on what the weights are, and this skips the SFT and reward-model stages."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import jax
import pytest

from model import checkpoints, gin_utils
from model.reward_model import RewardModel
from model.t5x_convert import write_params
from tests import chat_fixtures

pytestmark = pytest.mark.slow  # Kill-and-resume runs of the real CLIs (`make test-slow`).

STEPS = 12


def random_start(tmp_path_factory) -> dict:
  """{data, policy, rm}: the chat data, and step directories of random tiny policy and reward
  model params (the configs the tiny CLI runs build)."""
  data = chat_fixtures.post_training_chain(tmp_path_factory, "data")["data"]
  root = tmp_path_factory.mktemp("random_start")
  model = gin_utils.build_model("tiny", data_dir=data, dtype="float32")
  return {"data": data,
          "policy": write_params(model.init_params(jax.random.PRNGKey(0)), str(root / "policy"), 1),
          "rm": write_params(RewardModel(model.config).init_params(jax.random.PRNGKey(1)), str(root / "rm"), 1)}


def _argv(kind, chain, model_dir):
  common = [f"--gin.DATA_DIR='{chain['data']}'", f"--gin.MODEL_DIR='{model_dir}'", *chat_fixtures.TINY,
            f"--gin.TRAIN_STEPS={STEPS}", "--gin.MAX_LENGTH=32", "--gin.SAVE_PERIOD=2", "--gin.LOG_PERIOD=1",
            "--gin.EVAL_PERIOD=0", "--gin.LEARNING_RATE=0.001"]
  if kind == "rlhf":
    return ["-m", "model.rlhf", "--gin_file=gin/runs/rlhf.gin", f"--gin.POLICY_CHECKPOINT='{chain['policy']}'",
            f"--gin.REWARD_CHECKPOINT='{chain['rm']}'", "--gin.MAX_DECODE_LEN=8", "--gin.PROMPTS_PER_STEP=4",
            *common]
  return ["-m", "model.reward_model", "--gin_file=gin/runs/reward_model.gin", "--gin.INIT_CHECKPOINT=None",
          "--gin.BATCH_SIZE=8", *common]


def _start(kind, chain, model_dir):
  """The run as a child process; its output goes to a file (a full pipe would stall it)."""
  os.makedirs(model_dir, exist_ok=True)
  log = open(os.path.join(model_dir, f"log-{time.time_ns()}.txt"), "w+")
  proc = subprocess.Popen([sys.executable, *_argv(kind, chain, model_dir)], cwd=chat_fixtures.REPO,
                          stdout=log, stderr=subprocess.STDOUT, text=True)
  proc.log = log
  return proc


def _finish(proc, timeout=600):
  proc.wait(timeout=timeout)
  proc.log.seek(0)
  out = proc.log.read()
  assert proc.returncode == 0, out[-4000:]
  return out


def _saved_steps(model_dir):
  """Finalised checkpoint steps (orbax renames a step's tmp directory to `<step>` when done)."""
  path = os.path.join(model_dir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _final_params(kind, chain, model_dir):
  base = gin_utils.build_model("tiny", data_dir=chain["data"], dtype="float32")
  abstract = RewardModel(base.config).abstract_params() if kind == "reward_model" else base.abstract_params()
  return checkpoints.load_params(f"{model_dir}/checkpoints/{STEPS}", abstract)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  return random_start(tmp_path_factory)


@pytest.mark.parametrize("kind", ["rlhf", "reward_model"])
def test_sigkill_then_restart_equals_an_uninterrupted_run(chain, tmp_path, kind):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  reference = _start(kind, chain, straight)  # Runs while the other one is killed and restarted.
  victim = _start(kind, chain, killed)
  deadline = time.time() + 600
  while not _saved_steps(killed) and victim.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  victim.send_signal(signal.SIGKILL)
  victim.wait(timeout=60)
  assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  at_kill = _saved_steps(killed)
  assert at_kill and at_kill[-1] < STEPS, at_kill
  out = _finish(_start(kind, chain, killed))
  _finish(reference)
  resumed_from = max(at_kill)
  assert f"step {resumed_from} of {STEPS}" in out, out[-3000:]  # it resumed, not restarted

  want, got = (chat_fixtures.read_metrics(d, "train") for d in (straight, killed))
  assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # redone steps replace the killed run's
  assert got == want
  for a, b in zip(jax.tree.leaves(_final_params(kind, chain, straight)),
                  jax.tree.leaves(_final_params(kind, chain, killed))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
