"""Tests for tasks.schedule: per-stage token shares and exact resume at any step."""

import collections
import itertools

import numpy as np
import pytest
import seqio

from model import data
from tasks import schedule
from test_tasks import data_dir  # noqa: F401  (module fixture: a registered data dir)

LENGTHS = {"gf_a": 10, "gf_b": 40}  # Tokens per example of two synthetic sources.
STAGES = [
    schedule.Stage(0, {"gf_a": 0.8, "gf_b": 0.2}),
    schedule.Stage(60, {"gf_a": 0.2, "gf_b": 0.8}),  # Late stage: more of the "high-quality" b.
]


def synthetic_streams():
  """Deterministic repeated streams; an example is (task, index in the stream, length)."""
  def factory(task):
    return lambda skip: ((task, i, LENGTHS[task]) for i in itertools.count(skip))
  return {t: factory(t) for t in LENGTHS}


def make_schedule(examples_per_step=64):
  return schedule.MixtureSchedule(STAGES, examples_per_step, LENGTHS)


def test_realised_token_shares_per_stage():
  sched = make_schedule()
  tokens = collections.defaultdict(collections.Counter)
  for step, task, (_, _, length) in sched.examples(synthetic_streams(), seed=3, num_steps=120):
    tokens[sched.stage_index(step)][task] += length
  for index, stage in enumerate(STAGES):
    total = sum(tokens[index].values())
    for task, share in stage.token_shares.items():
      assert tokens[index][task] / total == pytest.approx(share, abs=0.03), (index, task)


@pytest.mark.parametrize("k", [0, 1, 37, 60, 61, 99])
def test_resume_at_any_step_gives_the_same_examples(k):
  sched = make_schedule(examples_per_step=16)
  full = list(sched.examples(synthetic_streams(), seed=11, host=2, num_steps=100))
  resumed = list(sched.examples(synthetic_streams(), seed=11, host=2, start_step=k, num_steps=100 - k))
  assert resumed == full[k * 16:]
  # Stream positions are a pure function of the step.
  expected = {t: sum(1 for s, task, _ in full if s < k and task == t) for t in LENGTHS}
  assert sched.positions(11, k, 2) == expected


def test_choice_depends_on_seed_step_and_host_only():
  sched = make_schedule()
  a = sched.choose(5, np.arange(10, 20), host=0)
  assert np.array_equal(a, sched.choose(5, np.arange(10, 20), host=0))
  assert np.array_equal(a[3:], sched.choose(5, np.arange(13, 20), host=0))
  assert not np.array_equal(a, sched.choose(5, np.arange(10, 20), host=1))
  assert not np.array_equal(a, sched.choose(6, np.arange(10, 20), host=0))


@pytest.mark.parametrize("stages, message", [
    ([], "at least one stage"),
    ([schedule.Stage(5, {"gf_a": 1})], "start at step 0"),
    ([schedule.Stage(0, {"gf_a": 1}), schedule.Stage(0, {"gf_b": 1})], "increase strictly"),
    ([schedule.Stage(0, {"gf_a": -1, "gf_b": 1})], "negative"),
    ([schedule.Stage(0, {"gf_a": 0})], "zero share"),
    ([schedule.Stage(0, {"gf_c": 1})], "mean example length"),
])
def test_invalid_schedules(stages, message):
  with pytest.raises(ValueError, match=message):
    schedule.MixtureSchedule(stages, 8, LENGTHS)


def test_seqio_scheduled_dataset_resumes_exactly(data_dir):  # noqa: F811
  length = {"targets": 64}
  sched = schedule.schedule_from_tasks(
      [schedule.Stage(0, {"gf_web": 0.9, "gf_docs": 0.1}), schedule.Stage(3, {"gf_web": 0.1, "gf_docs": 0.9})],
      examples_per_step=8, sequence_length=length)

  def take(start, steps):
    ds = schedule.scheduled_dataset(sched, length, seed=4, start_step=start,
                                    shard_info=seqio.ShardInfo(0, 2))
    return [ex["targets"].tolist() for ex in ds.take(8 * steps).as_numpy_iterator()]

  full = take(0, 6)
  assert take(4, 2) == full[32:]
  assert all(2 not in t for t in full)  # No BOS in the examples (the converter supplies it);
  assert any(t[-1] == 1 for t in full) and any(t[-1] != 1 for t in full)  # EOS ends documents only.
  packed = data.feature_converter("gf_mixture", pack=True)(
      schedule.scheduled_dataset(sched, length, seed=4), length)
  first = next(packed.as_numpy_iterator())
  assert first["decoder_target_tokens"].shape == (64,) and first["decoder_input_tokens"][0] == 2
