"""The trainer: schedules, gradient accumulation, gin errors, exact resume after SIGKILL, eval, infer."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import checkpoints, data, gin_utils, optimizers, train
from model.eval import evaluate
from model.infer import infer
from model.partitioning import Partitioner

REPO = Path(__file__).resolve().parents[1]
TASK = data.SYNTHETIC_TASK
LENGTHS = {"targets": 32}

# The tiny model on the built-in synthetic task: a few seconds per run on CPU.
TINY_RUN = [
    "--gin_file=gin/models/tiny.gin", "--gin_file=gin/runs/pretrain.gin",
    f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.USE_CACHED_TASKS=False",
    "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.BATCH_SIZE=4",
    "--gin.LOG_PERIOD=1", "--gin.SAVE_PERIOD=4", "--gin.KEEP_CHECKPOINTS=5",
    "--gin.WARMUP_STEPS=2", "--gin.LEARNING_RATE=0.003",
    "--gin.create_optimizer.name='adamw'", "--gin.create_schedule.name='constant'",
]

# The trainer with each step slowed down, so the test can SIGKILL it mid-run.
SLOW_TRAINER = """
import sys, time
from model import gin_utils, train
_step = train.Trainer.train_step
def slow_step(self, state, batch):
  time.sleep(0.4)
  return _step(self, state, batch)
train.Trainer.train_step = slow_step
gin_utils.run(train.main)
"""


def _env():
  return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}


def _run_cli(module, args, timeout=300):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _train_losses(model_dir):
  with open(Path(model_dir) / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in records if r["split"] == "train"}, records


def _tiny_model():
  return gin_utils.build_model("tiny", dtype="float32")


def _batch(batch_size=8, seed=0):
  it = data.DataIterator(data.get_dataset(TASK, LENGTHS, "train", batch_size, True, seed))
  return next(it)


# ---- schedules ----

def test_schedules_warmup_rsqrt_cosine_wsd():
  rsqrt = optimizers.create_schedule("rsqrt", 1.0, warmup_steps=100)
  assert float(rsqrt(0)) == 0.0
  assert float(rsqrt(50)) == pytest.approx(0.5)
  assert float(rsqrt(100)) == pytest.approx(1.0)
  assert float(rsqrt(400)) == pytest.approx(0.5)  # sqrt(100 / 400)

  cosine = optimizers.create_schedule("cosine", 2.0, warmup_steps=10, total_steps=110,
                                      final_learning_rate_fraction=0.1)
  assert float(cosine(10)) == pytest.approx(2.0)
  assert float(cosine(60)) == pytest.approx(0.2 + 1.8 * 0.5, rel=1e-4)
  assert float(cosine(110)) == pytest.approx(0.2, rel=1e-4)

  wsd = optimizers.create_schedule("wsd", 1.0, warmup_steps=10, total_steps=100,
                                   decay_fraction=0.2)
  assert float(wsd(5)) == pytest.approx(0.5)
  assert [float(wsd(s)) for s in (10, 50, 80)] == pytest.approx([1.0, 1.0, 1.0])
  assert float(wsd(90)) == pytest.approx(0.5)  # Halfway through the last 20 steps.
  assert float(wsd(100)) == pytest.approx(0.0, abs=1e-7)

  with pytest.raises(ValueError, match="total_steps"):
    optimizers.create_schedule("cosine", 1.0, warmup_steps=10, total_steps=5)
  with pytest.raises(ValueError, match="Unknown schedule"):
    optimizers.create_schedule("linear")


def test_adafactor_and_adamw_clip_then_update():
  params = {"w": jnp.ones((4, 3)), "scale": jnp.ones((3,))}
  grads = {"w": jnp.full((4, 3), 100.0), "scale": jnp.zeros((3,))}
  for name in ("adafactor", "adamw"):
    opt = optimizers.create_optimizer(name, optimizers.create_schedule("constant", 0.1, 0),
                                      clip_grad_norm=1.0, weight_decay=0.1)
    updates, _ = opt.tx.update(grads, opt.tx.init(params), params)
    assert np.all(np.asarray(updates["w"]) < 0), name  # Moves against the gradient.
  with pytest.raises(ValueError, match="Unknown optimizer"):
    optimizers.create_optimizer("sgd")


# ---- gradient accumulation ----

def test_gradient_accumulation_equals_big_batch():
  model = _tiny_model()
  opt = optimizers.create_optimizer("adamw", optimizers.create_schedule("constant", 1e-2, 0))
  batch = Partitioner().shard_batch(_batch(8))
  params = model.init_params(jax.random.PRNGKey(0))
  rng = jax.random.PRNGKey(1)
  (g1, m1), (g4, m4) = [
      jax.device_get(jax.jit(train.Trainer(model, opt, Partitioner(), n)._grads)(params, batch, rng))
      for n in (1, 4)]
  assert m1["weight_sum"] == m4["weight_sum"] == float(batch["decoder_loss_weights"].sum())
  for key in ("loss", "accuracy"):
    assert m4[key] == pytest.approx(float(m1[key]), rel=1e-5), key
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g1))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale), g1, g4)
  # Microbatches really differ: the first one alone gives another gradient.
  first = jax.tree.map(lambda x: x[0::4], batch)
  (_, _), g_first = jax.value_and_grad(model.loss_fn, has_aux=True)(params, first)
  assert not np.allclose(g_first["final_norm"]["scale"], g1["final_norm"]["scale"])


# ---- errors before compute ----

def test_unknown_gin_binding_and_misspelt_macro_are_clear_errors():
  gin.clear_config()
  try:
    with pytest.raises(ValueError, match="train.no_such_arg"):
      gin_utils.parse_gin(["gin/small_cpu.gin"], ["train.no_such_arg = 1"])
    gin.clear_config()
    with pytest.raises(ValueError, match="macro TRAIN_STEP is not defined"):
      gin_utils.parse_gin(["gin/small_cpu.gin"], ["TRAIN_STEP = 3"])
    gin.clear_config()
    with pytest.raises(ValueError, match="Cannot read gin file"):
      gin_utils.parse_gin(["gin/no_such_file.gin"], [])
  finally:
    gin.clear_config()


def test_gin_shorthand_flags_are_rewritten():
  assert gin_utils.rewrite_gin_args(["prog", "--gin.TRAIN_STEPS=3", "--gin.MODEL_DIR=/tmp/x",
                                     "--gin.A='q'", "--other=1"]) == [
      "prog", "--gin_bindings=TRAIN_STEPS = 3", "--gin_bindings=MODEL_DIR = '/tmp/x'",
      "--gin_bindings=A = 'q'", "--other=1"]


def _train_kwargs(tmp_path, **overrides):
  kwargs = dict(model=_tiny_model(), partitioner=Partitioner(), model_dir=str(tmp_path),
                total_steps=2,
                train_dataset_cfg=data.DatasetConfig(TASK, LENGTHS, "train", 8))
  kwargs.update(overrides)
  return kwargs


def test_missing_task_bad_batch_and_bad_checkpoint_fail_before_compute(tmp_path):
  with pytest.raises(ValueError, match="No seqio Task or Mixture named 'gf_nope'"):
    train.train(**_train_kwargs(tmp_path, train_dataset_cfg=data.DatasetConfig(
        "gf_nope", LENGTHS, "train", 8)))
  with pytest.raises(ValueError, match="not divisible|must be divisible"):
    train.train(**_train_kwargs(tmp_path, num_microbatches=3))
  with pytest.raises(ValueError, match="not an orbax step directory"):
    train.train(**_train_kwargs(tmp_path, init_checkpoint=str(tmp_path / "nope")))
  with pytest.raises(ValueError, match="vocab_size"):
    train.train(**_train_kwargs(tmp_path, model=gin_utils.build_model("tiny", vocab_size=100)))
  assert not (tmp_path / "checkpoints").exists()  # Nothing was started.


# ---- exact resume after SIGKILL (real CLI) ----

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """An uninterrupted 12-step run of the CLI (checkpoints at 4, 8, 12)."""
  model_dir = tmp_path_factory.mktemp("uninterrupted")
  proc = _run_cli("model.train", [*TINY_RUN, f"--gin.MODEL_DIR='{model_dir}'",
                                  "--gin.TRAIN_STEPS=12"])
  assert "Training summary" in proc.stdout
  return model_dir


def test_sigkill_and_restart_gives_the_same_losses(finished_run, tmp_path):
  args = [*TINY_RUN, f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=12"]
  child = subprocess.Popen([sys.executable, "-c", SLOW_TRAINER, *args], cwd=REPO, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and child.poll() is None:
    metrics = tmp_path / "metrics.jsonl"
    if metrics.exists() and max(_train_losses(tmp_path)[0], default=0) >= 10:
      break
    time.sleep(0.1)
  assert child.poll() is None, "trainer ended before it could be killed: " + child.stdout.read()[-2000:]
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert child.returncode == -signal.SIGKILL
  assert 8 in checkpoints.Checkpointer(str(tmp_path / "checkpoints")).all_steps()

  proc = _run_cli("model.train", args)
  assert "Resuming from checkpoint step" in proc.stdout
  expected, _ = _train_losses(finished_run)
  resumed, _ = _train_losses(tmp_path)
  assert sorted(resumed) == list(range(1, 13))
  np.testing.assert_allclose([resumed[s] for s in range(1, 13)],
                             [expected[s] for s in range(1, 13)], rtol=1e-6)
  model = _tiny_model()
  a = checkpoints.load_params(str(finished_run / "checkpoints" / "12"), model.abstract_params())
  b = checkpoints.load_params(str(tmp_path / "checkpoints" / "12"), model.abstract_params())
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a, b)


def test_restart_with_a_changed_config_is_an_error_not_a_fallback(finished_run, tmp_path):
  import shutil
  model_dir = tmp_path / "run"
  shutil.copytree(finished_run, model_dir)
  kwargs = _train_kwargs(model_dir, total_steps=20, train_dataset_cfg=data.DatasetConfig(
      TASK, LENGTHS, "train", 8))  # The run used batch size 4.
  with pytest.raises(ValueError, match=r"data.batch_size: 4 -> 8"):
    train.train(**kwargs)
  assert checkpoints.Checkpointer(str(model_dir / "checkpoints")).all_steps() == [4, 8, 12]


# ---- eval and infer ----

def test_eval_is_token_weighted_and_perplexity_is_exp_loss():
  model = _tiny_model()
  params = model.init_params(jax.random.PRNGKey(1))
  cfg = data.DatasetConfig(TASK, LENGTHS, "validation", 4, shuffle=False)
  results = evaluate(model, params, cfg, Partitioner(), max_batches=3)
  # The same three batches, scored with the training loss: token-weighted mean cross-entropy.
  ds = data.get_dataset(TASK, LENGTHS, "validation", 4, False, 0, num_epochs=1)
  nll, tokens = 0.0, 0.0
  loss_fn = jax.jit(model.loss_fn)
  for batch in list(ds.as_numpy_iterator())[:3]:
    loss, metrics = loss_fn(params, batch)
    nll += float(loss) * float(metrics["weight_sum"])
    tokens += float(metrics["weight_sum"])
  row = results[TASK]
  assert row["num_tokens"] == tokens
  assert row["loss"] == pytest.approx(nll / tokens, rel=1e-5)
  assert row["perplexity"] == pytest.approx(math.exp(row["loss"]), rel=1e-9)
  assert results["all"]["loss"] == pytest.approx(row["loss"])


def test_eval_cli_writes_json(finished_run):
  out = finished_run / "eval.json"
  proc = _run_cli("model.eval", [*TINY_RUN, "--gin_file=gin/runs/eval.gin",
                                 f"--gin.MODEL_DIR='{finished_run}'", "--gin.EVAL_BATCHES=2",
                                 f"--gin.EVAL_OUTPUT='{out}'"])
  assert TASK in proc.stdout and "perplexity" in proc.stdout
  report = json.loads(out.read_text())
  assert report["step"] == 12
  row = report["results"][TASK]
  assert row["perplexity"] == pytest.approx(math.exp(row["loss"]))
  assert row["loss"] < math.log(data.SYNTHETIC_VOCAB_SIZE)  # It learned something.


def test_infer_greedy_from_checkpoint(finished_run):
  model = _tiny_model()
  first = infer(model=model, prompts=["5,6,7", "9"], model_dir=str(finished_run),
                method="greedy", max_decode_len=6)
  again = infer(model=model, prompts=["5,6,7", "9"], model_dir=str(finished_run),
                method="greedy", max_decode_len=6)
  assert first == again
  assert all(len(r["completion_ids"]) <= 6 for r in first)
  with pytest.raises(ValueError, match="token ids"):
    infer(model=model, prompts=["hello"], model_dir=str(finished_run))
  with pytest.raises(ValueError, match="No checkpoints"):
    infer(model=model, prompts=["5"], model_dir=str(finished_run / "empty"))
