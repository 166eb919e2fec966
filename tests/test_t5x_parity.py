"""Loss-curve parity: t5x's own trainer and `model.train` on the same data, params and optimizer.

`t5x.train` runs gin/t5x/parity_gemma_small.gin and `python -m model.train` runs
gin/parity_small_cpu.gin (subprocesses), both for STEPS steps on the tiny tokenized data dir of
tests/test_t5x_run.py:

* data: gf_mixture, 128-token packed rows, batch 8, read in order (no shuffle), seqio's
  DecoderFeatureConverter with the vocabulary's BOS on both sides; the batches are rebuilt here
  with t5x's `utils.get_dataset` and our `model.data.get_dataset` and compared;
* parameters: t5x initialises and saves checkpoint_0; `t5x_convert.t5x_to_ours` turns it into
  model.train's INIT_CHECKPOINT;
* loss: token-mean cross-entropy, no z-loss (t5x: LOSS_NORMALIZING_FACTOR =
  'NUM_REAL_TARGET_TOKENS', Z_LOSS = 0);
* optimizer: gin/parity_optimizer.gin's `create_optimizer` (clip 1.0, AdamW, warmup + cosine);
  t5x applies that optax transformation inside its `OptaxWrapper` (`t5x_adapter.optax_optimizer`).

Tolerance (docs/t5x.md, "Parity with model.train"). Both trainers do the same float32 computation
on CPU except the loss: t5x's `cross_entropy_with_logits` against our logsumexp statistics, summed
over the ~1000 tokens of a batch in another order, which rounds to typically sqrt(n) float32
epsilons, 4e-6 relative: STEP1_RTOL = 1e-5 for the first step (same params, same batch). AdamW
divides each gradient by its own running scale, so a relative gradient error becomes about the same
relative update error; over STEPS = 10 steps, ten times that: CURVE_RTOL = 1e-4 at every step and
for the final parameters. Both bounds are shown to be tight: the next batch moves the first loss
by more than 100x STEP1_RTOL, and a 1% larger learning rate moves step 3's loss by more than
CURVE_RTOL (measured here on CPU: the curves agree to 3e-7 relative; the 1% larger rate moves
step 3's loss by 1e-3 relative).
"""

import jax
import numpy as np
import pytest

t5x = pytest.importorskip("t5x", reason="real t5x (docs/t5x.md) is not installed")

from t5x import utils as t5x_utils  # noqa: E402

import tasks  # noqa: E402
from model import data, gin_utils, t5x_convert  # noqa: E402
from model.checkpoints import load_params  # noqa: E402
from model.models import DecoderOnlyModel  # noqa: E402
from test_t5x_run import SMALL, _scalars, _t5x, data_dir  # noqa: E402,F401  (data_dir: fixture)
from test_train import _run_cli, _train_losses  # noqa: E402

STEPS = 10
# What both gin files set (a different batch would fail the step-1 loss check below).
TASK, LENGTHS, BATCH = "gf_mixture", {"targets": 128}, 8
STEP1_RTOL = 1e-5
CURVE_RTOL = 1e-4
# t5x also keeps checkpoint_2: the learning rate of step 1 is 0 (warmup from 0), so step 2 is the
# only update before it and checkpoint_2 - checkpoint_0 is that update, linear in the rate.
PROBE_STEP = 2


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  """t5x.train, then model.train from t5x's converted checkpoint_0; their per-step records."""
  root = tmp_path_factory.mktemp("t5x_parity")
  t5x_dir, ours_dir = root / "t5x", root / "ours"
  _t5x("train", ["t5x/parity_gemma_small.gin"],
       [f"MODEL_DIR='{t5x_dir}'", f"DATA_DIR='{data_dir}'", f"TRAIN_STEPS={STEPS}",
        # A one-entry list makes t5x save that step twice (utils.find_next_checkpoint_step).
        f"utils.SaveCheckpointConfig.checkpoint_steps=[{PROBE_STEP}, {STEPS}]"], root / "t5x.log")
  init = t5x_convert.t5x_to_ours(str(t5x_dir / "checkpoint_0"), SMALL, str(root / "init"))
  _run_cli("model.train", ["--gin_file=gin/parity_small_cpu.gin", f"--gin.DATA_DIR='{data_dir}'",
                           f"--gin.MODEL_DIR='{ours_dir}'", f"--gin.INIT_CHECKPOINT='{init}'",
                           f"--gin.TRAIN_STEPS={STEPS}"], timeout=600)
  ours_losses, records = _train_losses(ours_dir)
  return {
      "t5x_dir": t5x_dir, "ours_dir": ours_dir, "init": init,
      "t5x_loss": _scalars(t5x_dir / "train", "loss"),
      "t5x_lr": _scalars(t5x_dir / "train", "learning_rate"),
      "ours_loss": ours_losses,
      "ours_lr": {r["step"]: r["learning_rate"] for r in records if r["split"] == "train"},
  }


def _params(step_dir):
  return t5x_convert.read_t5x_params(str(step_dir), SMALL)


@pytest.fixture(scope="module")
def p0(runs):
  """The initial parameters: t5x's checkpoint_0."""
  return _params(runs["t5x_dir"] / "checkpoint_0")


@pytest.fixture(scope="module")
def batches(data_dir):
  """The first PROBE_STEP + 1 training batches as t5x and as model.train read them."""
  gin_utils.register_data_dir(str(data_dir))
  converter = data.decoder_feature_converter_cls(tasks.get_vocabulary(str(data_dir)))
  cfg = t5x_utils.DatasetConfig(mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                                split="train", batch_size=BATCH, shuffle=False, seed=0,
                                use_cached=True, pack=True)
  theirs = t5x_utils.get_dataset(cfg, shard_id=0, num_shards=1, feature_converter_cls=converter)
  ours = data.DataIterator(data.get_dataset(TASK, LENGTHS, "train", BATCH, shuffle=False, seed=0,
                                            use_cached=True))
  n = PROBE_STEP + 1
  return ([{k: np.asarray(v) for k, v in b.items()} for b in theirs.take(n).as_numpy_iterator()],
          [next(ours) for _ in range(n)])


@pytest.fixture(scope="module")
def loss_of():
  """Our model's token-mean training loss (model.train's) of params on a batch."""
  loss_fn = jax.jit(DecoderOnlyModel(SMALL).loss_fn)
  return lambda params, batch: float(loss_fn(params, batch)[0])


def test_both_trainers_start_from_the_same_params_and_batches(runs, p0, batches, loss_of):
  ours_init = load_params(runs["init"], jax.eval_shape(lambda: p0))
  for a, b in zip(jax.tree.leaves(ours_init), jax.tree.leaves(p0), strict=True):
    np.testing.assert_array_equal(a, b)
  theirs, ours = batches
  for t, o in zip(theirs, ours, strict=True):
    assert sorted(t) == sorted(o) == sorted(data.FEATURE_KEYS)
    for key in t:
      np.testing.assert_array_equal(t[key], o[key], err_msg=key)
  assert ours[0]["decoder_segment_ids"].max() > 1  # Packed rows: segments matter on both sides.
  # Each trainer's first loss is this batch's loss at these params: each really used them.
  want = loss_of(p0, ours[0])
  assert runs["t5x_loss"][1] == pytest.approx(want, rel=STEP1_RTOL)
  assert runs["ours_loss"][1] == pytest.approx(want, rel=STEP1_RTOL)


def test_loss_curves_agree_within_the_tolerance(runs):
  steps = list(range(1, STEPS + 1))
  assert sorted(runs["t5x_loss"]) == sorted(runs["ours_loss"]) == steps
  # Same schedule, same step: warmup from 0, then cosine decay.
  t5x_lr = [runs["t5x_lr"][s] for s in steps]
  np.testing.assert_allclose(t5x_lr, [runs["ours_lr"][s] for s in steps], rtol=1e-6, atol=0)
  assert t5x_lr[0] == 0.0 and max(t5x_lr) > 0
  t5x_curve = np.array([runs["t5x_loss"][s] for s in steps])
  ours_curve = np.array([runs["ours_loss"][s] for s in steps])
  np.testing.assert_allclose(ours_curve[0], t5x_curve[0], rtol=STEP1_RTOL)
  np.testing.assert_allclose(ours_curve, t5x_curve, rtol=CURVE_RTOL)
  assert t5x_curve[-1] < t5x_curve[0] - 1.0  # A curve that moves, not a flat line.
  # And the parameters the curves came from: the final checkpoints agree too.
  theirs = _params(runs["t5x_dir"] / f"checkpoint_{STEPS}")
  ours = load_params(str(runs["ours_dir"] / "checkpoints" / str(STEPS)),
                                 jax.eval_shape(lambda: theirs))
  diff = np.sqrt(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2)
                     for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)))
  norm = np.sqrt(sum(np.sum(np.asarray(b) ** 2) for b in jax.tree.leaves(theirs)))
  assert diff / norm < CURVE_RTOL, diff / norm


def test_the_tolerance_fails_a_shifted_batch_and_a_larger_learning_rate(runs, p0, batches, loss_of):
  ours = batches[1]
  first = runs["t5x_loss"][1]
  # The next batch instead of the first: far outside the first-step tolerance.
  assert abs(loss_of(p0, ours[1]) - first) > 100 * STEP1_RTOL * first
  # The curve one step late: outside the curve tolerance at every step.
  t5x_curve = np.array([runs["t5x_loss"][s] for s in range(1, STEPS + 1)])
  assert np.all(np.abs(t5x_curve[1:] - t5x_curve[:-1]) > CURVE_RTOL * t5x_curve[1:])
  # A 1% larger learning rate: after step 2's update (the only one so far, step 1's rate being
  # 0) AdamW's change of the params is the rate times a direction that does not depend on it.
  assert runs["t5x_lr"][1] == 0.0
  p2 = _params(runs["t5x_dir"] / f"checkpoint_{PROBE_STEP}")
  step3 = runs["t5x_loss"][PROBE_STEP + 1]
  # This replay is faithful: the params of step 2 give both trainers' step-3 loss ...
  assert loss_of(p2, ours[PROBE_STEP]) == pytest.approx(step3, rel=CURVE_RTOL)
  assert runs["ours_loss"][PROBE_STEP + 1] == pytest.approx(step3, rel=CURVE_RTOL)
  # ... and the same update at 1.01x the rate does not.
  larger = jax.tree.map(lambda a, b: a + 1.01 * (b - a), p0, p2)
  assert abs(loss_of(larger, ours[PROBE_STEP]) - step3) > CURVE_RTOL * step3
