"""A staged mixture: per-source token shares that change at step boundaries, exactly resumable.

Gemma's pre-training raises the weight of high-quality sources towards the end of training. A
``MixtureSchedule`` holds stages (``Stage(start_step, token_shares)``); within a step every one of
``examples_per_step`` example *slots* picks its source with a counter-based hash of
``(seed, step, host, slot)``, using the stage's shares turned into example probabilities (share /
mean content tokens per example at the run's sequence length, exactly as ``gf_mixture``'s rates in
``tasks.mixtures``; ``schedule_from_tasks``).

Each source is read as its own deterministic, repeated stream. Because the source of every slot
is a pure function of its coordinates, the number of examples a host has taken from each source
before step ``k`` is too (``positions``); resuming at step ``k`` means skipping that many examples
in each stream, with no need to replay the mixed stream or store sampler state.

A step here is a block of ``examples_per_step`` examples before packing. The trainer
(``model.data.ScheduledDataIterator``) packs each block into the rows of one train step, so a
schedule step is a train step and the checkpoint only needs the step.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks import mixtures

def _mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a bijective 64-bit mixer, vectorised over uint64 arrays."""
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def slot_uniforms(seed: int, steps: np.ndarray, host: int, num_slots: int) -> np.ndarray:
  """Uniforms in [0, 1) for every (step, slot), shape [len(steps), num_slots], from a hash only."""
  steps = np.asarray(steps, dtype=np.uint64)
  with np.errstate(over="ignore"):
    key = _mix64(np.uint64(seed % 2**64) ^ np.uint64(0x9E3779B97F4A7C15))
    key = _mix64(key ^ np.uint64(host % 2**64))
    x = _mix64(key ^ (steps * np.uint64(0xD1B54A32D192ED03)))[:, None]
    x = _mix64(x ^ np.arange(num_slots, dtype=np.uint64)[None, :])
  return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclasses.dataclass(frozen=True)
class Stage:
  """From ``start_step`` on, sources contribute tokens in proportion to ``token_shares``."""
  start_step: int
  token_shares: Mapping[str, float]


class MixtureSchedule:
  """Stages of token shares and the deterministic choice of a source for every example slot."""

  def __init__(
      self,
      stages: Sequence[Stage],
      examples_per_step: int,
      mean_example_tokens: Mapping[str, float],
  ):
    if not stages:
      raise ValueError("A schedule needs at least one stage.")
    if stages[0].start_step != 0:
      raise ValueError(f"The first stage must start at step 0, not {stages[0].start_step}.")
    starts = [s.start_step for s in stages]
    if any(b <= a for a, b in zip(starts, starts[1:])):
      raise ValueError(f"Stage start steps must increase strictly, got {starts}.")
    if examples_per_step < 1:
      raise ValueError(f"examples_per_step must be at least 1, got {examples_per_step}.")
    self.tasks = sorted({t for s in stages for t in s.token_shares})
    missing = [t for t in self.tasks if not mean_example_tokens.get(t, 0) > 0]
    if missing:
      raise ValueError(f"No positive mean example length for tasks {missing}.")
    self.stages = list(stages)
    self.examples_per_step = examples_per_step
    self.mean_example_tokens = {t: float(mean_example_tokens[t]) for t in self.tasks}
    self._starts = starts
    self._cumulative = []
    for stage in stages:
      bad = {t: w for t, w in stage.token_shares.items() if not w >= 0}
      if bad:
        raise ValueError(f"Stage at step {stage.start_step} has negative or invalid shares {bad}.")
      rates = np.array([stage.token_shares.get(t, 0.0) / mean_example_tokens[t] for t in self.tasks])
      if rates.sum() <= 0:
        raise ValueError(f"Stage at step {stage.start_step} gives every task a zero share.")
      cumulative = np.cumsum(rates / rates.sum())
      cumulative[-1] = 1.0
      self._cumulative.append(cumulative)

  def stage_index(self, step: int) -> int:
    return bisect.bisect_right(self._starts, step) - 1

  def choose(self, seed: int, steps: np.ndarray, host: int) -> np.ndarray:
    """Task index of every slot of the given steps, shape [len(steps), examples_per_step]."""
    steps = np.asarray(steps, dtype=np.int64)
    u = slot_uniforms(seed, steps, host, self.examples_per_step)
    out = np.empty(u.shape, dtype=np.int64)
    stage_of = np.searchsorted(self._starts, steps, side="right") - 1
    for i in np.unique(stage_of):
      rows = stage_of == i
      out[rows] = np.searchsorted(self._cumulative[i], u[rows], side="right")
    return out

  def positions(self, seed: int, step: int, host: int, block: int = 4096) -> dict[str, int]:
    """Examples taken from each task by ``host`` in steps ``[0, step)``: where to resume."""
    counts = np.zeros(len(self.tasks), dtype=np.int64)
    for begin in range(0, step, block):
      chosen = self.choose(seed, np.arange(begin, min(step, begin + block)), host)
      counts += np.bincount(chosen.ravel(), minlength=len(self.tasks))
    return dict(zip(self.tasks, counts.tolist()))

  def examples(
      self,
      streams: Mapping[str, Callable[[int], Iterator]],
      seed: int,
      host: int = 0,
      start_step: int = 0,
      num_steps: Optional[int] = None,
  ) -> Iterator[tuple[int, str, object]]:
    """Yields ``(step, task, example)`` from ``start_step`` on, slot by slot.

    ``streams[task](skip)`` must return an iterator over the task's deterministic, repeated
    example stream for this host, starting after its first ``skip`` examples.
    """
    skips = self.positions(seed, start_step, host)
    iterators = {t: streams[t](skips[t]) for t in self.tasks}
    steps = itertools.count(start_step) if num_steps is None else range(start_step, start_step + num_steps)
    for step in steps:
      for index in self.choose(seed, np.array([step]), host)[0]:
        task = self.tasks[index]
        yield step, task, next(iterators[task])


def seqio_streams(
    task_names: Sequence[str],
    sequence_length: Mapping[str, int],
    split: str = "train",
    seed: int = 0,
    shard_info: Optional[seqio.ShardInfo] = None,
    shuffle: bool = True,
) -> dict[str, Callable[[int], Iterator]]:
  """Stream factories over cached seqio tasks: repeated, shuffled with a fixed seed, sharded."""

  def factory(name):
    def stream(skip: int):
      ds = seqio.get_mixture_or_task(name).get_dataset(
          sequence_length=sequence_length, split=split, use_cached=True, shuffle=shuffle, seed=seed,
          shard_info=shard_info, num_epochs=None)
      return ds.skip(skip).as_numpy_iterator()
    return stream

  return {name: factory(name) for name in task_names}


def example_tokens(task_names: Sequence[str], sequence_length: Mapping[str, int]) -> dict[str, float]:
  """Mean content tokens per example of each task's stream at this sequence length.

  From the train-split counts that ``sources.json`` records (``mixtures.mean_example_tokens``,
  exact at the recorded lengths), the same numbers ``gf_mixture``'s rates use: a stream yields
  *chunks*, so a task whose documents are longer than the sequence has far shorter examples
  than documents, and rates from tokens per document would miss its share by that factor.
  """
  return {name: mixtures.mean_example_tokens(name, sequence_length) for name in task_names}


def schedule_from_tasks(
    stages: Sequence[Stage], examples_per_step: int, sequence_length: Mapping[str, int]
) -> MixtureSchedule:
  """The schedule of ``stages`` over cached tasks read at ``sequence_length`` (what the trainer
  builds, ``model.data.build_mixture_schedule``): example probabilities from ``example_tokens``."""
  tasks = sorted({t for s in stages for t in s.token_shares})
  return MixtureSchedule(stages, examples_per_step, example_tokens(tasks, sequence_length))


def scheduled_dataset(
    schedule: MixtureSchedule,
    sequence_length: Mapping[str, int],
    seed: int,
    start_step: int = 0,
    split: str = "train",
    shard_info: Optional[seqio.ShardInfo] = None,
) -> tf.data.Dataset:
  """The scheduled examples (``targets`` only) from ``start_step``, ready for a feature converter."""
  host = shard_info.index if shard_info else 0
  streams = seqio_streams(schedule.tasks, sequence_length, split, seed, shard_info)

  def generate():
    for _, _, ex in schedule.examples(streams, seed, host, start_step):
      yield {"targets": ex["targets"]}

  return tf.data.Dataset.from_generator(
      generate, output_signature={"targets": tf.TensorSpec([None], tf.int32)})


# ---- stages written with tiers, as gin configures them ----

ALL_TASKS = "all"


def stages_from_spec(
    spec: Sequence[tuple[int, Mapping[str, float]]],
    task_tokens: Mapping[str, int],
    tiers: Mapping[str, str],
) -> list[Stage]:
  """Stages from ``[(start_step, {key: weight}), ...]`` where a key names a task, a tier or ``all``.

  A tier's (or ``all``'s) weight is split among its tasks in proportion to their train tokens
  (``task_tokens``), so ``{'high': 0.8, 'standard': 0.2}`` needs no list of tasks and
  ``{'all': 1}`` is the natural token mixture (``gf_mixture``'s shares). A task may be reached
  by one key only. Shares are normalised to sum to 1.
  """
  known_tiers = sorted(set(tiers.get(t) for t in task_tokens) - {None})
  stages = []
  for i, entry in enumerate(spec):
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], Mapping)):
      raise ValueError(f"Stage {i} must be (start_step, {{task or tier: weight}}), got {entry!r}.")
    start, weights = entry
    shares: dict[str, float] = {}
    for key, weight in sorted(weights.items()):
      if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ValueError(f"Stage {i}: weight of {key!r} must be a number >= 0, got {weight!r}.")
      if key == ALL_TASKS:
        members = sorted(task_tokens)
      elif key in task_tokens:
        members = [key]
      elif key in known_tiers:
        members = sorted(t for t in task_tokens if tiers.get(t) == key)
      else:
        raise ValueError(f"Stage {i}: {key!r} is neither a task of the mixture "
                         f"{sorted(task_tokens)}, a tier {known_tiers} nor {ALL_TASKS!r}.")
      twice = sorted(set(members) & set(shares))
      if twice:
        raise ValueError(f"Stage {i}: tasks {twice} get a weight from more than one key.")
      total = sum(task_tokens[t] for t in members)
      for t in members:
        shares[t] = weight * task_tokens[t] / total if total else 0.0
    norm = sum(shares.values())
    if norm <= 0:
      raise ValueError(f"Stage {i} (start {start}) gives every task a zero weight.")
    stages.append(Stage(int(start), {t: s / norm for t, s in sorted(shares.items()) if s > 0}))
  return stages


def default_examples_per_step(
    schedule_stages: Sequence[Stage],
    mean_example_tokens: Mapping[str, float],
    capacity_tokens: int,
    max_example_tokens: int,
    fill: float = 0.8,
) -> int:
  """Examples per step whose expected tokens are ``fill`` of ``capacity_tokens`` in every stage.

  The expected example length of a stage weights each task's mean (capped at
  ``max_example_tokens``) by the probability that a slot picks that task.
  """
  worst = 0.0
  for stage in schedule_stages:
    rates = {t: w / mean_example_tokens[t] for t, w in stage.token_shares.items() if w > 0}
    norm = sum(rates.values())
    expected = sum(r / norm * min(mean_example_tokens[t], max_example_tokens)
                   for t, r in rates.items())
    worst = max(worst, expected)
  return max(1, int(fill * capacity_tokens / worst))


def schedule_to_json(schedule: MixtureSchedule, **extra) -> dict:
  """The schedule in the format ``pipelines.report --schedule`` reads, plus ``extra`` keys."""
  return {
      "stages": [{"start_step": s.start_step, "token_shares": dict(sorted(s.token_shares.items()))}
                 for s in schedule.stages],
      "examples_per_step": schedule.examples_per_step,
      **extra,
  }
