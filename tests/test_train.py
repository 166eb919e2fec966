"""The trainer: schedules, gradient accumulation, gin errors, exact resume after SIGKILL, eval, infer."""

import json
import math
import os
import re
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


def _clip(grads, max_norm):
  """Clipping by global norm, computed here in numpy (independently of optax)."""
  norm = np.sqrt(sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(grads)))
  return jax.tree.map(lambda g: np.asarray(g) * min(1.0, max_norm / norm), grads)


def _two_updates(tx, params, grads):
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    out.append(updates)
  return out


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_gradient_clipping_changes_the_update(name):
  """Adam and Adafactor normalise a gradient's scale away, so one step cannot show clipping.
  Two steps can: a huge first gradient, clipped to norm 1, weighs no more than the small second
  one. The updates must be those of the unclipped optimizer fed gradients clipped by hand, and
  differ from those of the unclipped optimizer fed the raw gradients."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.ones((4, 3)), "scale": jnp.ones((3,))}
  big = {"w": 100 * rng.normal(size=(4, 3)), "scale": 100 * rng.normal(size=(3,))}
  small = {"w": 0.05 * rng.normal(size=(4, 3)), "scale": 0.05 * rng.normal(size=(3,))}
  grads = [jax.tree.map(jnp.asarray, g) for g in (big, small)]
  schedule = optimizers.create_schedule("constant", 0.1, 0)
  clipped = optimizers.create_optimizer(name, schedule, clip_grad_norm=1.0, weight_decay=0.1)
  plain = optimizers.create_optimizer(name, schedule, clip_grad_norm=None, weight_decay=0.1)
  got = _two_updates(clipped.tx, params, grads)
  want = _two_updates(plain.tx, params, [jax.tree.map(jnp.asarray, _clip(g, 1.0)) for g in grads])
  unclipped = _two_updates(plain.tx, params, grads)
  for g, w in zip(got, want):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, w)
  assert not np.allclose(got[1]["w"], unclipped[1]["w"], rtol=1e-3)
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


@pytest.mark.slow  # A kill-and-resume run of the real CLI (`make test-slow`).
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


def test_infer_greedy_from_checkpoint_equals_transformers_generate(finished_run, tmp_path):
  """Greedy completions must be what HF transformers' `generate` gives on the same checkpoint,
  exported to a GemmaForCausalLM (an independent decoder: torch, its own KV cache)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from model import hf_convert
  from model.infer import special_ids
  model = _tiny_model()
  prompts = {"5,6,7": [5, 6, 7], "9": [9], "200,17,33,4,4": [200, 17, 33, 4, 4]}
  results = infer(model=model, prompts=list(prompts), model_dir=str(finished_run),
                  method="greedy", max_decode_len=6)
  step_dir = finished_run / "checkpoints" / "12"
  params = checkpoints.load_params(str(step_dir), model.abstract_params())
  hf_convert.export_hf(jax.device_get(params), model.config, str(tmp_path / "hf"))
  hf_model = transformers.GemmaForCausalLM.from_pretrained(str(tmp_path / "hf"),
                                                           attn_implementation="eager").eval()
  bos, stops = special_ids(None)
  for result, ids in zip(results, prompts.values()):
    with torch.no_grad():
      out = hf_model.generate(torch.tensor([[bos] + ids]), max_new_tokens=6, do_sample=False,
                              eos_token_id=list(stops), pad_token_id=0)
    theirs = out[0, len(ids) + 1:].tolist()
    theirs = theirs[:next((i for i, t in enumerate(theirs) if t in stops or t == 0), len(theirs))]
    assert result["completion_ids"] == theirs, result
  assert any(len(r["completion_ids"]) == 6 for r in results)  # Not all cut short by a stop.
  with pytest.raises(ValueError, match="token ids"):
    infer(model=model, prompts=["hello"], model_dir=str(finished_run))
  with pytest.raises(ValueError, match="No checkpoints"):
    infer(model=model, prompts=["5"], model_dir=str(finished_run / "empty"))


# ---- robustness of the trainer's inputs ----

def test_a_torn_last_metrics_line_is_tolerated_on_resume(finished_run, tmp_path):
  import shutil
  model_dir = tmp_path / "run"
  shutil.copytree(finished_run, model_dir)
  metrics = model_dir / "metrics.jsonl"
  lines = metrics.read_text().splitlines()
  metrics.write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2])  # A kill mid-write.
  logger = train.MetricsLogger(str(model_dir), resume_step=12)
  assert [r["step"] for r in logger.records()] == list(range(1, 13))
  logger.close()
  assert metrics.read_text().splitlines() == lines  # The torn line was dropped, nothing else.
  # A bad line that is not the last one is corruption, not a torn write: an error naming it.
  metrics.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
  with pytest.raises(ValueError, match=r"metrics.jsonl line 4 is not JSON"):
    train.MetricsLogger(str(model_dir), resume_step=12)


@pytest.mark.parametrize("binding, message", [
    ("TRAIN_STEPS = '100'", "gin macro TRAIN_STEPS = '100' has type str, but must be int"),
    ("LEARNING_RATE = '3e-3'", "gin macro LEARNING_RATE = '3e-3' has type str, but must be int or float"),
    ("BATCH_SIZE = 8.0", "gin macro BATCH_SIZE = 8.0 has type float, but must be int"),
    ("USE_CACHED_TASKS = 'no'", "gin macro USE_CACHED_TASKS = 'no' has type str, but must be bool"),
])
def test_wrong_typed_gin_macros_are_named_before_anything_runs(binding, message):
  gin.clear_config()
  try:
    with pytest.raises(ValueError, match=re.escape(message) + ".*" + re.escape(repr(binding))):
      gin_utils.parse_gin(["gin/small_cpu.gin"], [binding])
  finally:
    gin.clear_config()


def test_wrong_typed_train_arguments_name_the_setting(tmp_path):
  with pytest.raises(ValueError, match=r"TRAIN_STEPS \(train.total_steps\) must be a positive int, "
                                       r"got '5' \(str\)"):
    train.train(**_train_kwargs(tmp_path, total_steps="5"))
  with pytest.raises(ValueError, match=r"BATCH_SIZE \(DatasetConfig.batch_size\) must be a positive "
                                       r"int, got 8.0"):
    train.train(**_train_kwargs(tmp_path, train_dataset_cfg=data.DatasetConfig(
        TASK, LENGTHS, "train", 8.0)))
  assert not (tmp_path / "checkpoints").exists()


def _register_task(name, documents_fn):
  import seqio
  import tensorflow as tf
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(documents_fn, splits=("train",)),
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
        output_features={"targets": seqio.Feature(
            data.SyntheticVocabulary(), dtype=tf.int32)})
  return name


def test_out_of_vocab_ids_in_a_batch_stop_training_with_a_clear_error(tmp_path):
  """Ids the embedding table does not have would silently become NaN inside the jitted step:
  the loss masks them, counts them, and the trainer stops at the first such step."""
  import seqio
  import tensorflow as tf
  model = _tiny_model()
  params = model.init_params(jax.random.PRNGKey(0))
  batch = _batch(4)
  inputs = batch["decoder_input_tokens"].copy()
  inputs[0, 1], inputs[2, 5] = 300, -4
  loss, metrics = jax.jit(model.loss_fn)(params, {**batch, "decoder_input_tokens": inputs})
  assert np.isfinite(float(loss)) and int(metrics["invalid_tokens"]) == 2
  assert int(jax.jit(model.loss_fn)(params, batch)[1]["invalid_tokens"]) == 0

  def documents(split, shuffle_files=False, seed=None):  # Declares 256 ids, holds a 300.
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"targets": tf.constant(
        [[5, 6, 7, 8, 300, 9, 10, 11]] * 16, tf.int32)})
  name = _register_task("test_out_of_vocab_data", documents)
  try:
    with pytest.raises(ValueError, match=r"Step 1: the batch held \d+ token ids outside \[0, 256\)"):
      train.train(**_train_kwargs(tmp_path, total_steps=1, train_dataset_cfg=data.DatasetConfig(
          name, LENGTHS, "train", 4, shuffle=False)))
  finally:
    seqio.TaskRegistry.remove(name)
