"""Staged mixture training: packing per step, realised token shares, exact resume, LR decay, report."""

import json

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks
from model import data, gin_utils, optimizers, train
from model.checkpoints import CheckpointConfig
from model.partitioning import Partitioner
from pipelines import report
from tasks import schedule
from test_tasks import data_dir  # noqa: F401  (module fixture: gf_docs 'high', gf_web 'standard')

LENGTH = 64
STAGES = [(0, {"all": 1.0}), (0.5, {"high": 0.8, "standard": 0.2})]


def staged_cfg(batch_size=8, stages=STAGES, **kwargs):
  return data.DatasetConfig("gf_mixture", {"targets": LENGTH}, "train", batch_size,
                            use_cached=True, stages=stages, **kwargs)


# ---- packing ----

BOS = 9  # Any id: pack_examples puts the one it is given where seqio's converter puts its bos_id.


def seqio_rows(examples, pack):
  """What seqio's DecoderFeatureConverter makes of each example on its own."""
  out = []
  for ex in examples:
    ds = tf.data.Dataset.from_tensors({"targets": tf.constant(ex, tf.int32)})
    out.append(next(seqio.DecoderFeatureConverter(pack=pack, bos_id=BOS)(ds, {"targets": 10})
                    .as_numpy_iterator()))
  return out


@pytest.mark.parametrize("pack", [True, False])
def test_pack_examples_gives_seqio_decoder_features(pack):
  examples = [[5, 6, 7, 1], [7, 8, 1], [8, 9, 10, 11, 12, 13, 1], [13, 14, 1], [14, 15, 16, 17, 1]]
  batch, placed = data.pack_examples(examples, rows=3, length=10, pack=pack, bos_id=BOS)
  if pack:  # First fit in order: rows get [0, 1, 3] (10 tokens), [2] and [4]; none is left out.
    assert placed.tolist() == [0, 0, 1, 0, 2]
  else:  # One example per row: the last two do not fit three rows.
    assert placed.tolist() == [0, 1, 2, -1, -1]
  assert sorted(batch) == sorted(seqio_rows(examples[:1], pack)[0])
  for i, (ex, ref) in enumerate(zip(examples, seqio_rows(examples, pack))):
    if placed[i] < 0:
      continue
    row = placed[i]
    if pack:
      segment = 1 + sum(1 for j in range(i) if placed[j] == row)
      cols = batch["decoder_segment_ids"][row] == segment
      assert cols.sum() == len(ex)
    else:
      cols = np.arange(10) < len(ex)
    for key, value in ref.items():
      if key != "decoder_segment_ids":
        np.testing.assert_array_equal(batch[key][row][cols], value[:len(ex)], err_msg=key)
  # Padding is all zeros, and the loss weights mark exactly the placed tokens.
  assert batch["decoder_loss_weights"].sum() == sum(len(e) for e, p in zip(examples, placed) if p >= 0)


def test_stages_from_spec_resolves_tiers_and_all():
  tokens = {"gf_a": 300, "gf_b": 100, "gf_c": 600}
  tiers = {"gf_a": "high", "gf_b": "high", "gf_c": "standard"}
  stages = schedule.stages_from_spec(
      [(0, {"all": 1}), (10, {"high": 0.8, "standard": 0.2}), (20, {"gf_b": 1, "gf_c": 3})],
      tokens, tiers)
  assert stages[0].token_shares == pytest.approx({"gf_a": 0.3, "gf_b": 0.1, "gf_c": 0.6})
  assert stages[1].token_shares == pytest.approx({"gf_a": 0.6, "gf_b": 0.2, "gf_c": 0.2})
  assert stages[2].token_shares == pytest.approx({"gf_b": 0.25, "gf_c": 0.75})
  assert [s.start_step for s in stages] == [0, 10, 20]
  for spec, message in [([(0, {"gold": 1})], "neither a task"),
                        ([(0, {"high": 1, "gf_a": 1})], "more than one key"),
                        ([(0, {"high": -1})], ">= 0"),
                        ([(0, {"high": 0})], "zero weight"),
                        ([(0, "high")], "start_step")]:
    with pytest.raises(ValueError, match=message):
      schedule.stages_from_spec(spec, tokens, tiers)
  assert optimizers.resolve_step(0.8, 300) == 240
  with pytest.raises(ValueError, match="fraction"):
    optimizers.resolve_step(1.5, 300)


# ---- the iterator the trainer uses ----

def test_realised_token_fractions_per_stage_match_the_targets(data_dir):  # noqa: F811
  steps = 60
  it = data.get_train_iterator(staged_cfg(), total_steps=steps)
  sched = it.schedule
  assert [s.start_step for s in sched.stages] == [0, 30]
  # Stage 1 is gf_mixture's natural token shares; stage 2 gives the 'high' tier (gf_docs) 80%.
  assert sched.stages[0].token_shares == pytest.approx(tasks.MIXTURE_TOKEN_SHARES["gf_mixture"])
  assert sched.stages[1].token_shares == pytest.approx({"gf_docs": 0.8, "gf_web": 0.2})
  tokens = np.zeros((2, len(sched.tasks)))
  for step in range(steps):
    batch = next(it)
    source = it.last_source_ids
    # Every trained token is attributed to one source, and only trained tokens are.
    np.testing.assert_array_equal(source > 0, batch["decoder_loss_weights"] > 0)
    tokens[sched.stage_index(step)] += np.bincount(source.ravel(), minlength=3)[1:]
  assert it.dropped_examples == 0  # The default examples_per_step never overflows the rows here.
  # About 8 rows x 64 tokens x 30 steps = 15k tokens from ~300 examples per stage: the sd of a
  # realised share is about sqrt(p (1 - p) / 300) <= 0.03, so 0.08 is ~3 sd (the run is seeded,
  # so the check is deterministic; a wrong rate, e.g. from document instead of chunk lengths,
  # misses by more than 0.15 on this data).
  for index, stage in enumerate(sched.stages):
    realised = tokens[index] / tokens[index].sum()
    for task, share in stage.token_shares.items():
      assert realised[sched.tasks.index(task)] == pytest.approx(share, abs=0.08), (index, task)


def recording_streams(sched, skips):
  streams = schedule.seqio_streams(sched.tasks, {"targets": LENGTH}, "train", 0)

  def wrap(task):
    def stream(skip):
      skips.append((task, skip))
      return streams[task](skip)
    return stream
  return {t: wrap(t) for t in sched.tasks}


@pytest.mark.parametrize("k", [5, 6])  # The second stage starts at step 6 of 12.
def test_resume_at_step_k_gives_the_batches_of_an_uninterrupted_stream(data_dir, tmp_path, k):  # noqa: F811
  cfg = staged_cfg(batch_size=4)
  full_it = data.get_train_iterator(cfg, total_steps=12)
  full = [next(full_it) for _ in range(12)]
  first = data.get_train_iterator(cfg, total_steps=12)
  for _ in range(k):
    next(first)
  first.save(str(tmp_path / "iterator"))
  skips = []
  resumed = data.ScheduledDataIterator(first.schedule, LENGTH, rows=4, seed=0,
                                       streams=recording_streams(first.schedule, skips))
  resumed.restore(str(tmp_path / "iterator"))
  assert resumed.step == k
  for step in range(k, 12):
    batch = next(resumed)
    for key in full[step]:
      np.testing.assert_array_equal(batch[key], full[step][key], err_msg=f"step {step} {key}")
  # Each source stream was opened once, skipped to the position computed from the step alone.
  assert sorted(skips) == sorted(resumed.schedule.positions(0, k, 0).items())
  with pytest.raises(ValueError, match="another mixture schedule"):
    data.get_train_iterator(staged_cfg(batch_size=4, stages=[(0, {"all": 1.0})]),
                            total_steps=12).restore(str(tmp_path / "iterator"))


# ---- the trainer ----

def run_train(model_dir, data_path, **kwargs):
  model = gin_utils.build_model("tiny", data_dir=str(data_path), dtype="float32")
  schedule_fn = optimizers.create_schedule("wsd", 1e-3, warmup_steps=1, total_steps=8,
                                           decay_start_step=0.5)
  return train.train(model=model, train_dataset_cfg=staged_cfg(batch_size=4),
                     partitioner=Partitioner(), model_dir=str(model_dir), total_steps=8,
                     optimizer=optimizers.create_optimizer("adamw", schedule_fn),
                     checkpoint_cfg=CheckpointConfig(save_period=3, keep=5, async_save=False),
                     log_period=1, data_dir=str(data_path), **kwargs)


def train_records(model_dir):
  with open(model_dir / "metrics.jsonl") as f:
    return {r["step"]: r for r in map(json.loads, f) if r["split"] == "train"}


@pytest.fixture(scope="module")
def staged_run(data_dir, tmp_path_factory):  # noqa: F811
  """An uninterrupted 8-step staged run (final stage and LR decay from step 4)."""
  model_dir = tmp_path_factory.mktemp("staged")
  run_train(model_dir, data_dir[0])
  return model_dir


def test_restart_continues_a_staged_run_exactly(staged_run, data_dir, tmp_path):  # noqa: F811
  run_train(tmp_path, data_dir[0], stop_after=lambda step: step == 3)  # Pre-empted after step 3.
  assert sorted(train_records(tmp_path)) == [1, 2, 3]
  summary = run_train(tmp_path, data_dir[0])
  assert summary["start_step"] == 3
  expected, resumed = train_records(staged_run), train_records(tmp_path)
  assert sorted(resumed) == list(range(1, 9))
  np.testing.assert_allclose([resumed[s]["loss"] for s in range(1, 9)],
                             [expected[s]["loss"] for s in range(1, 9)], rtol=1e-6)
  assert all(r["data_dropped_examples"] == 0 for r in resumed.values())
  # The data position in the checkpoint is the step, not a stream state.
  position = json.loads((tmp_path / "checkpoints" / "3" / "data" / "shard_00000-of-00001" /
                         "iterator.json").read_text())
  assert position["step"] == 3


def test_learning_rate_decays_only_in_the_final_stage(staged_run):
  records = train_records(staged_run)
  # Record `s` is the update made at step s - 1: warmup (step 0), stable (1-3), decay (4-7).
  rates = [records[s]["learning_rate"] for s in range(1, 9)]
  assert rates[0] == 0.0
  assert rates[1:5] == pytest.approx([1e-3] * 4)
  assert all(a > b for a, b in zip(rates[4:], rates[5:]))
  assert rates[7] == pytest.approx(1e-3 * 0.25)  # 1 - 3/4 of the way down to 0 by step 8.


def test_mixture_schedule_json_is_what_the_report_reads(staged_run, data_dir):  # noqa: F811
  path = staged_run / "mixture_schedule.json"
  written = json.loads(path.read_text())
  assert [s["start_step"] for s in written["stages"]] == [0, 4]
  assert written["stages"][1]["token_shares"] == pytest.approx({"gf_docs": 0.8, "gf_web": 0.2})
  assert written["task_tiers"] == {"gf_docs": "high", "gf_web": "standard"}
  sources = report.read_sources(str(data_dir[0] / "sources.json"))
  sched = report.read_schedule(str(path), sources)
  assert [(s.start_step, dict(s.token_shares)) for s in sched.stages] == \
      [(s["start_step"], s["token_shares"]) for s in written["stages"]]
  segments = report.schedule_mixture(sched, sources)
  assert segments[1][1] == pytest.approx({"docs": 0.8, "web": 0.2})


def test_small_cpu_staged_gin_binds_stages_and_decay():
  import gin
  gin.clear_config()
  try:
    gin_utils.parse_gin(["gin/small_cpu_staged.gin"], ["MODEL_DIR = '/tmp/unused'"])
    with gin.config_scope("train"):
      cfg = data.DatasetConfig()
    assert cfg.stages == [(0, {"all": 1.0}), (0.8, {"high": 0.8, "standard": 0.2})]
    lr = optimizers.create_schedule()
    peak = gin.query_parameter("%LEARNING_RATE")
    assert float(lr(239)) == pytest.approx(peak) and float(lr(240)) == pytest.approx(peak)
    assert float(lr(270)) < peak
  finally:
    gin.clear_config()
