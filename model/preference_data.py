"""Preference pairs and prompts of a `pipelines.chat_data` directory, as step-indexed numpy batches.

The reward model trains on `(chosen, rejected)` token rows and RLHF samples from `prompt` rows; both
read the ``gf_pref_*`` Tasks of the data directory (`tasks.chat_tasks`) once into memory -- post-
training sets are small next to pretraining -- and prepend the vocabulary's BOS, which the cache
does not hold.

`StepBatches` makes batch `s` a pure function of (seed, s): epoch `s // batches_per_epoch` is a
seeded permutation of the examples. Its data position is therefore the step alone, which it saves
next to each checkpoint (as `model.checkpoints` saves the tf.data iterator), so a restarted run
sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import numpy as np

from model import gin_utils


def _rows(seqs, length: int, bos: int, left: bool = False) -> np.ndarray:
  out = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    row = [bos] + [int(t) for t in s]
    if len(row) > length:
      raise ValueError(f"an example has {len(row)} tokens (BOS included) but the run's length is {length}; "
                       "raise the length or rerun pipelines.chat_data with a smaller --max_length")
    if left:
      out[i, length - len(row):] = row
    else:
      out[i, :len(row)] = row
  return out


def load_preferences(data_dir: str, split: str, length: int, prompt_length: Optional[int] = None
                     ) -> dict[str, np.ndarray]:
  """{"chosen", "rejected": int32 [N, length] right-padded, "prompt": [N, prompt_length] left-padded}.

  All rows start with BOS. Raises a clear error if the directory has no preference pairs.
  """
  import seqio
  import tasks
  from tasks import chat_tasks, special_tokens
  gin_utils.register_data_dir(data_dir)
  sources = tasks.read_sources(data_dir)
  if sources.get("format") != chat_tasks.DATA_FORMAT:
    raise ValueError(f"{data_dir} is not a pipelines.chat_data directory (no 'format': 'chat' in sources.json)")
  names = chat_tasks.preference_task_names(sources)
  if not names:
    raise ValueError(f"{data_dir} has no preference pairs ({{prompt, chosen, rejected}} records)")
  bos = special_tokens.special_tokens(tasks.get_vocabulary(data_dir)).bos
  pairs = {k: [] for k in ("prompt", "chosen", "rejected")}
  for name in names:
    task = seqio.get_mixture_or_task(name)
    if split not in task.splits:
      continue
    for ex in task.get_dataset(None, split=split, use_cached=True, shuffle=False).as_numpy_iterator():
      for k in pairs:
        pairs[k].append(ex[k])
  if not pairs["chosen"]:
    raise ValueError(f"{data_dir} has no preference pairs in split {split!r}")
  prompt_length = prompt_length or max(len(p) for p in pairs["prompt"]) + 1
  return {"chosen": _rows(pairs["chosen"], length, bos), "rejected": _rows(pairs["rejected"], length, bos),
          "prompt": _rows(pairs["prompt"], prompt_length, bos, left=True)}


def lengths(rows: np.ndarray) -> np.ndarray:
  """Real tokens per row (non-zero ids)."""
  return np.sum(rows != 0, axis=1)


def length_baseline_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
  """Pair accuracy of 'the longer answer is better' (ties count one half): the length bias to beat."""
  c, r = lengths(chosen), lengths(rejected)
  return float(np.mean(np.where(c == r, 0.5, (c > r).astype(np.float64))))


class StepBatches:
  """Batch `s` of a dict of equally long arrays is a function of (seed, s); checkpointable."""

  def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int = 0):
    sizes = {len(v) for v in arrays.values()}
    if len(sizes) != 1:
      raise ValueError(f"arrays of different lengths {sorted(sizes)}")
    (self.num_examples,) = sizes
    if batch_size < 1 or batch_size > self.num_examples:
      raise ValueError(f"batch_size must be in [1, {self.num_examples}] (the examples), got {batch_size}")
    self.arrays = dict(arrays)
    self.batch_size = batch_size
    self.seed = seed
    self.per_epoch = self.num_examples // batch_size
    self.step = 0

  def batch(self, step: int) -> dict[str, np.ndarray]:
    epoch, i = divmod(step, self.per_epoch)
    order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
    rows = order[i * self.batch_size:(i + 1) * self.batch_size]
    return {k: v[rows] for k, v in self.arrays.items()}

  def __next__(self) -> dict[str, np.ndarray]:
    out = self.batch(self.step)
    self.step += 1
    return out

  def __iter__(self):
    return self

  # The interface `model.checkpoints.Checkpointer` saves a data iterator through.
  def save(self, prefix: str) -> None:
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    with open(prefix + ".json", "w") as f:
      json.dump({"step": self.step, "seed": self.seed, "batch_size": self.batch_size,
                 "num_examples": self.num_examples}, f)

  def restore(self, prefix: str) -> None:
    if not os.path.exists(prefix + ".json"):
      raise FileNotFoundError(f"No data position at {prefix}.json")
    with open(prefix + ".json") as f:
      saved = json.load(f)
    now = {"seed": self.seed, "batch_size": self.batch_size, "num_examples": self.num_examples}
    if {k: saved[k] for k in now} != now:
      raise ValueError(f"The checkpoint's data {saved} is not this run's {now}")
    self.step = int(saved["step"])
