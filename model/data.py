"""The seqio input pipeline: Task/Mixture -> packed decoder features -> numpy batches.

Batches are what seqio's `DecoderFeatureConverter` emits (int32 `[B, L]`):
`decoder_target_tokens`, `decoder_input_tokens`, `decoder_loss_weights`, and with packing
`decoder_segment_ids`, `decoder_positions`.

BOS: seqio's standard decoder layout. Targets hold no BOS; the converter shifts them right and puts
its `bos_id` -- the BOS of the task's vocabulary (`vocabulary_bos_id`), not seqio's default 0 -- in
front of every segment, so an example `[t1 .. tn]` trains as inputs `[BOS, t1 .. tn-1]` at
positions `0 .. n-1`: the context `model.infer` feeds (`[BOS] + prompt` from position 0).

Resuming exactly: like t5x, the position in the data is the state of the `tf.data` iterator, saved
with `tf.train.Checkpoint` next to every model checkpoint (see `model.checkpoints`). The pipeline is
deterministic (seeded shuffle and mixture sampling, `deterministic=True`), so a restarted run sees
the same batches in the same order as an uninterrupted one.

A staged mixture (`DatasetConfig.stages`, Gemma's late high-quality reweighting) is read by
`ScheduledDataIterator` instead: train step `s` is exactly the schedule's block `s` of
`examples_per_step` examples (`tasks.schedule`), packed into this host's rows of the batch. Its
data position is only the step, so a restart rebuilds the streams at the checkpoint's step instead
of restoring or replaying a stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

FEATURE_KEYS = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                "decoder_segment_ids", "decoder_positions")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """One input pipeline, as in t5x's `utils.DatasetConfig`. `batch_size` is global (all hosts)."""
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  shuffle: bool = True
  seed: Optional[int] = 0
  use_cached: bool = False
  pack: bool = True
  # A staged mixture over the tasks of `mixture_or_task_name`: [(start_step, {key: weight}), ...],
  # a key being a task, a quality tier (tasks.TASK_TIERS) or 'all'; a float start_step in (0, 1)
  # is a fraction of the run's total steps. See `build_mixture_schedule`.
  stages: Optional[Sequence[tuple[Any, Mapping[str, float]]]] = None
  # Examples per step and host before packing; None: ~80% of the rows' tokens in every stage.
  examples_per_step: Optional[int] = None


def get_task_or_mixture(name: str) -> seqio.DatasetProviderBase:
  """The registered seqio Task or Mixture, or a ValueError that lists what is registered."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    shown = [n for n in known if n.startswith("gf_")] or known
    raise ValueError(
        f"No seqio Task or Mixture named {name!r}. Registered: {shown[:50]}. Set DATA_DIR so "
        "tasks.register_data_dir registers the gf_* tasks, or fix MIXTURE_OR_TASK_NAME.") from None


def task_names(mixture_or_task_name: str) -> list[str]:
  """The Tasks under a Mixture (sorted), or `[name]` for a Task."""
  provider = get_task_or_mixture(mixture_or_task_name)
  if isinstance(provider, seqio.Mixture):
    return sorted(t.name for t in provider.tasks)
  return [provider.name]


def vocabulary_bos_id(vocabulary: seqio.Vocabulary) -> int:
  """The BOS id of a vocabulary: by piece for SentencePiece (`tasks.special_tokens`), else its
  `bos_id` (e.g. `SyntheticVocabulary`); a clear error for a vocabulary without one."""
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    from tasks import special_tokens
    return special_tokens.special_tokens(vocabulary).bos
  try:
    bos = vocabulary.bos_id
  except NotImplementedError:
    bos = None
  if bos is None or bos < 0:
    raise ValueError(f"The vocabulary {vocabulary!r} has no BOS id; the decoder's inputs start "
                     "every segment with BOS")
  return int(bos)


def targets_bos_id(mixture_or_task_name: str) -> int:
  """BOS of the `targets` vocabulary of a Task or Mixture (all of a Mixture's tasks share it)."""
  provider = get_task_or_mixture(mixture_or_task_name)
  return vocabulary_bos_id(provider.output_features["targets"].vocabulary)


def feature_converter(mixture_or_task_name: str, pack: bool = True) -> seqio.FeatureConverter:
  """seqio's DecoderFeatureConverter with the task vocabulary's BOS as `bos_id`; for chat (SFT)
  tasks, whose examples carry a loss mask, `tasks.chat_tasks.ChatFeatureConverter`."""
  from tasks import chat_tasks
  bos_id = targets_bos_id(mixture_or_task_name)
  if chat_tasks.uses_loss_mask(get_task_or_mixture(mixture_or_task_name)):
    return chat_tasks.ChatFeatureConverter(pack=pack, bos_id=bos_id)
  return seqio.DecoderFeatureConverter(pack=pack, bos_id=bos_id)


def converter_feature_lengths(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int]
                              ) -> dict[str, int]:
  """`task_feature_lengths`, plus the loss mask's (as long as the targets) for chat tasks."""
  from tasks import chat_tasks
  if chat_tasks.uses_loss_mask(get_task_or_mixture(mixture_or_task_name)):
    return chat_tasks.task_feature_lengths(task_feature_lengths)
  return dict(task_feature_lengths)


@gin.configurable
def decoder_feature_converter_cls(vocabulary: seqio.Vocabulary):
  """For t5x's `DecoderOnlyModel.feature_converter_cls` (gin): DecoderFeatureConverter with
  `bos_id` = the vocabulary's BOS, so t5x trains on the same layout as `model.train`."""
  return functools.partial(seqio.DecoderFeatureConverter, bos_id=vocabulary_bos_id(vocabulary))


def cache_files(mixture_or_task_names: str | Sequence[str], split: str) -> list[str]:
  """The cache TFRecords that reading `split` of Tasks or Mixtures opens (none if uncached)."""
  return sorted(f for f, cached in _tfrecord_files(mixture_or_task_names, split) if cached)


def _tfrecord_files(mixture_or_task_names: str | Sequence[str], split: str) -> list[tuple[str, bool]]:
  """``(path, is_cache)`` of every TFRecord that reading `split` may open: the cache shards of
  cached Tasks, and the files of TFRecord data sources (``seqio.TFExampleDataSource``, ...) that
  a Task reads when used without its cache."""
  if isinstance(mixture_or_task_names, str):
    mixture_or_task_names = [mixture_or_task_names]
  names = sorted({t for name in mixture_or_task_names for t in task_names(name)})
  files = []
  for name in names:
    task = seqio.get_mixture_or_task(name)
    if task.cache_dir:
      files += [(f, True) for f in tf.io.gfile.glob(os.path.join(task.cache_dir, f"{split}.tfrecord-*"))]
    source = task.source
    if getattr(source, "reader_cls", None) is tf.data.TFRecordDataset and split in source.splits:
      files += [(f, False) for f in source.list_shards(split)]
  return sorted(set(files))


@contextlib.contextmanager
def naming_corrupt_files(mixture_or_task_names: str | Sequence[str], split: str):
  """Turns tf.data's DataLossError (an offset, no file name) while reading Tasks or Mixtures,
  cached or from TFRecord sources, into a `tasks.cache_layout.CorruptCacheError` that names the
  file and the offset."""
  try:
    yield
  except tf.errors.DataLossError as e:
    from tasks import cache_layout
    files = _tfrecord_files(mixture_or_task_names, split)
    raise cache_layout.corrupt_cache_error(e, [f for f, _ in files],
                                           cache=all(cached for _, cached in files)) from e


def get_dataset(mixture_or_task_name: str,
                task_feature_lengths: Mapping[str, int],
                split: str,
                batch_size: Optional[int],
                shuffle: bool,
                seed: Optional[int],
                use_cached: bool = False,
                shard_id: int = 0,
                num_shards: int = 1,
                pack: bool = True,
                num_epochs: Optional[int] = None,
                drop_remainder: bool = True) -> tf.data.Dataset:
  """This host's share of the batches: `batch_size // num_shards` rows per batch.

  `num_epochs=None` repeats forever (training). Evaluation passes `num_epochs=1` and
  `drop_remainder=False` and pads the last batch itself (see `pad_batch`).
  """
  get_task_or_mixture(mixture_or_task_name)  # Fail early with the list of registered names.
  if batch_size is not None and batch_size % num_shards:
    raise ValueError(f"Global batch size {batch_size} is not divisible by the number of data "
                     f"shards (hosts) {num_shards}")
  shard_info = seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1 else None
  ds = seqio.get_dataset(
      mixture_or_task_name,
      task_feature_lengths=converter_feature_lengths(mixture_or_task_name, task_feature_lengths),
      feature_converter=feature_converter(mixture_or_task_name, pack),
      dataset_split=split,
      use_cached=use_cached,
      shuffle=shuffle,
      num_epochs=num_epochs,
      shard_info=shard_info,
      seed=seed,
      verbose=False)
  if batch_size is not None:
    ds = ds.batch(batch_size // num_shards, drop_remainder=drop_remainder)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def get_dataset_from_config(cfg: DatasetConfig, shard_id: int = 0, num_shards: int = 1,
                            num_epochs: Optional[int] = None,
                            drop_remainder: bool = True) -> tf.data.Dataset:
  return get_dataset(cfg.mixture_or_task_name, cfg.task_feature_lengths, cfg.split,
                     cfg.batch_size, cfg.shuffle, cfg.seed, cfg.use_cached, shard_id,
                     num_shards, cfg.pack, num_epochs, drop_remainder)


def pad_batch(batch: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads a short final eval batch with all-zero rows; zero loss weights keep them out of metrics."""
  out = {}
  for key, value in batch.items():
    pad = batch_size - value.shape[0]
    out[key] = np.pad(value, [(0, pad)] + [(0, 0)] * (value.ndim - 1)) if pad > 0 else value
  return out


class DataIterator:
  """A checkpointable iterator of numpy batches over a `tf.data.Dataset`.

  `save`/`restore` write and read the tf.data iterator state (including shuffle and prefetch
  buffers) with `tf.train.Checkpoint`, so restoring continues at exactly the next batch.
  With `source` = (Task or Mixture name, split), a truncated or corrupt cache file is reported by
  name (`naming_corrupt_files`).
  """

  def __init__(self, dataset: tf.data.Dataset, source: Optional[tuple[str, str]] = None):
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
    self._source = source

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._source is None:
      batch = next(self._iterator)
    else:
      with naming_corrupt_files(*self._source):
        batch = next(self._iterator)
    return {k: np.asarray(v, dtype=np.int32) for k, v in batch.items()}

  def save(self, prefix: str) -> None:
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    self._checkpoint.write(prefix)

  def restore(self, prefix: str) -> None:
    if not tf.io.gfile.glob(prefix + ".index"):
      raise FileNotFoundError(f"No data iterator checkpoint at {prefix}")
    self._checkpoint.read(prefix).assert_consumed()


# ---- a staged mixture, resumable from the step alone ----

def pack_examples(examples: Sequence[np.ndarray], rows: int, length: int, pack: bool = True, *,
                  bos_id: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Packs token examples into `rows` x `length` decoder features, as seqio's converter does.

  Examples go, in order, into the first row with room (first fit); with `pack=False` each takes a
  row of its own. An example longer than `length` is trimmed (seqio trims too; the gf_* tasks
  chunk documents so none is). Features are `DecoderFeatureConverter(bos_id=bos_id)`'s: inputs
  are the targets shifted right within each segment with `bos_id` first, loss weights mark
  non-padding targets, and with packing `decoder_segment_ids` (1, 2, ... per row) and
  `decoder_positions`.

  Returns the batch and, for every example, its row (-1: it did not fit in this step's rows).
  """
  targets = np.zeros((rows, length), np.int32)
  inputs = np.zeros((rows, length), np.int32)
  segments = np.zeros((rows, length), np.int32)
  positions = np.zeros((rows, length), np.int32)
  used = np.zeros(rows, np.int64)
  count = np.zeros(rows, np.int32)
  placed = np.full(len(examples), -1, np.int64)
  for i, ex in enumerate(examples):
    ex = np.asarray(ex, np.int32)[:length]
    n = len(ex)
    if n == 0:
      continue
    free = np.nonzero((used + n <= length) & ((count == 0) | pack))[0]
    if not len(free):
      continue
    r, start = free[0], used[free[0]]
    targets[r, start:start + n] = ex
    inputs[r, start] = bos_id
    inputs[r, start + 1:start + n] = ex[:-1]
    count[r] += 1
    segments[r, start:start + n] = count[r]
    positions[r, start:start + n] = np.arange(n)
    used[r] += n
    placed[i] = r
  batch = {"decoder_target_tokens": targets, "decoder_input_tokens": inputs,
           "decoder_loss_weights": (targets != 0).astype(np.int32)}
  if pack:
    batch.update(decoder_segment_ids=segments, decoder_positions=positions)
  return batch, placed


def build_mixture_schedule(cfg: DatasetConfig, total_steps: int, rows: int):
  """The `tasks.schedule.MixtureSchedule` of `cfg.stages`, or None for a plain mixture.

  Stage keys are resolved over the tasks of `cfg.mixture_or_task_name` with their train-token
  counts and `tasks.TASK_TIERS`; a fractional start is resolved against `total_steps` exactly as
  `create_schedule(decay_start_step=...)` resolves it, so both can share one macro. Token
  shares become example probabilities with each task's mean example (chunk) length at the run's
  sequence length: `tasks.schedule.schedule_from_tasks`, the path docs/tokenizer_and_tasks.md shows.
  """
  if cfg.stages is None:
    return None
  import tasks
  from model.optimizers import resolve_step
  from tasks import mixtures, schedule as schedule_lib
  if cfg.seed is None:
    raise ValueError("A staged mixture needs an int DatasetConfig.seed (DATA_SEED), not None")
  names = task_names(cfg.mixture_or_task_name)
  tokens = {}
  for name in names:
    try:
      tokens[name] = mixtures.task_token_stats(name, cfg.split)[0]
    except Exception as e:  # seqio raises several types for a task without a cache.
      raise ValueError(f"A staged mixture reads cached tasks (pipelines.tokenize output), but "
                       f"{name} has no cached {cfg.split!r} stats: {e}") from e
  spec = [(resolve_step(start, total_steps, f"stage {i} start_step"), weights)
          for i, (start, weights) in enumerate(_stage_entries(cfg.stages))]
  stages = schedule_lib.stages_from_spec(spec, tokens, tasks.TASK_TIERS)
  length = int(cfg.task_feature_lengths["targets"])
  examples_per_step = cfg.examples_per_step
  if examples_per_step is None:
    # `rows` examples always fit (each is at most `length` tokens); packing fits more.
    mean_tokens = schedule_lib.example_tokens(
        sorted({t for stage in stages for t in stage.token_shares}), {"targets": length})
    examples_per_step = rows if not cfg.pack else max(rows, schedule_lib.default_examples_per_step(
        stages, mean_tokens, rows * length, length))
  return schedule_lib.schedule_from_tasks(stages, examples_per_step, {"targets": length})


def _stage_entries(stages) -> list:
  if not isinstance(stages, (list, tuple)) or not stages:
    raise ValueError(f"STAGES must be a non-empty list of (start_step, {{task or tier: weight}}), "
                     f"got {stages!r}")
  for i, entry in enumerate(stages):
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
      raise ValueError(f"Stage {i} must be (start_step, {{task or tier: weight}}), got {entry!r}")
  return list(stages)


class ScheduledDataIterator:
  """Batches of a staged mixture: step `s` packs the schedule's block `s` into this host's rows.

  The iterator's whole state is `step`. `save` writes it (and the schedule) as JSON; `restore`
  reads it back, checks the schedule, and the next batch rebuilds each source stream skipped to
  `schedule.positions(seed, step, host)`. Examples of a block that do not fit the rows are
  dropped and counted (`last_dropped`, `dropped_examples`): choose `examples_per_step` so that
  this is rare (the default targets 80% of the rows' tokens).

  `last_source_ids` ([rows, length], 0 = padding, else 1 + index in `schedule.tasks`) says which
  task every token of the last batch came from (tests, and the per-source token fractions).
  """

  def __init__(self, schedule, sequence_length: int, rows: int, seed: int, split: str = "train",
               shard_id: int = 0, num_shards: int = 1, pack: bool = True, shuffle: bool = True,
               streams: Optional[Mapping[str, Callable[[int], Iterator]]] = None,
               bos_id: Optional[int] = None):
    self.schedule = schedule
    # The converter's BOS (the tasks' vocabulary's), in front of every packed segment's inputs.
    self.bos_id = targets_bos_id(schedule.tasks[0]) if bos_id is None else int(bos_id)
    self.length = sequence_length
    self.rows = rows
    self.seed = seed
    self.split = split
    self.host = shard_id
    self.num_shards = num_shards
    self.pack = pack
    self.shuffle = shuffle
    self._streams = streams
    self.step = 0
    self.dropped_examples = 0
    self.last_dropped = 0
    self.last_source_ids: Optional[np.ndarray] = None
    self._blocks: Optional[Iterator] = None

  def _make_streams(self):
    if self._streams is not None:
      return self._streams
    from tasks import schedule as schedule_lib
    import seqio
    shard_info = seqio.ShardInfo(self.host, self.num_shards) if self.num_shards > 1 else None
    return schedule_lib.seqio_streams(self.schedule.tasks, {"targets": self.length}, self.split,
                                      self.seed, shard_info, self.shuffle)

  def _generate(self, start_step: int):
    examples = self.schedule.examples(self._make_streams(), self.seed, self.host, start_step)
    for _, block in itertools.groupby(examples, key=lambda e: e[0]):
      block = list(block)
      batch, placed = pack_examples([ex["targets"] if isinstance(ex, Mapping) else ex
                                     for _, _, ex in block], self.rows, self.length, self.pack,
                                    bos_id=self.bos_id)
      sources = np.zeros((self.rows, self.length), np.int32)
      if self.pack:
        for (_, task, _), row, seg in zip(block, placed, _segment_numbers(placed)):
          if row >= 0:
            sources[row][batch["decoder_segment_ids"][row] == seg] = \
                self.schedule.tasks.index(task) + 1
      else:
        for (_, task, _), row in zip(block, placed):
          if row >= 0:
            sources[row][batch["decoder_target_tokens"][row] != 0] = \
                self.schedule.tasks.index(task) + 1
      yield batch, sources, int(np.sum(placed < 0))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._blocks is None:
      self._blocks = self._generate(self.step)
    with naming_corrupt_files(self.schedule.tasks, self.split):
      batch, self.last_source_ids, self.last_dropped = next(self._blocks)
    self.dropped_examples += self.last_dropped
    self.step += 1
    return batch

  def _fingerprint(self) -> dict:
    from tasks import schedule as schedule_lib
    return schedule_lib.schedule_to_json(self.schedule, seed=self.seed, host=self.host,
                                         rows=self.rows, length=self.length, pack=self.pack)

  def save(self, prefix: str) -> None:
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    with open(prefix + ".json", "w") as f:
      json.dump({"step": self.step, "schedule": self._fingerprint()}, f, indent=1, sort_keys=True)

  def restore(self, prefix: str) -> None:
    path = prefix + ".json"
    if not os.path.exists(path):
      raise FileNotFoundError(f"No scheduled data position at {path}")
    with open(path) as f:
      saved = json.load(f)
    if saved["schedule"] != json.loads(json.dumps(self._fingerprint())):
      raise ValueError(f"{path} was saved for another mixture schedule")
    self.step = int(saved["step"])
    self._blocks = None


def _segment_numbers(placed: np.ndarray) -> list[int]:
  """The segment id (1, 2, ...) every placed example got in its row, in placement order."""
  seen: dict[int, int] = {}
  out = []
  for row in placed.tolist():
    if row >= 0:
      seen[row] = seen.get(row, 0) + 1
    out.append(seen.get(row, 0) if row >= 0 else 0)
  return out


def get_train_iterator(cfg: DatasetConfig, total_steps: int, shard_id: int = 0,
                       num_shards: int = 1):
  """The training batches: a `ScheduledDataIterator` if `cfg.stages` is set, else a
  checkpointable `DataIterator` over `get_dataset` (repeated)."""
  if cfg.batch_size % num_shards:
    raise ValueError(f"Global batch size {cfg.batch_size} is not divisible by the number of data "
                     f"shards (hosts) {num_shards}")
  rows = cfg.batch_size // num_shards
  schedule = build_mixture_schedule(cfg, total_steps, rows)
  if schedule is None:
    return DataIterator(get_dataset_from_config(cfg, shard_id, num_shards, num_epochs=None),
                        source=(cfg.mixture_or_task_name, cfg.split))
  return ScheduledDataIterator(schedule, int(cfg.task_feature_lengths["targets"]), rows,
                               int(cfg.seed), cfg.split, shard_id, num_shards, cfg.pack,
                               cfg.shuffle, bos_id=targets_bos_id(cfg.mixture_or_task_name))


# ---- multi-host input: a global batch from `num_shards` input shards ----

class ShardedDataIterator:
  """This host's rows of every global batch: the batches of its input shards, concatenated.

  Shard `s` of `num_shards` is its own pipeline (`get_train_iterator(..., s, num_shards)`) giving
  `batch_size // num_shards` rows, so the global batch is the same whichever processes read
  which shards (`model.partitioning.data_layout`). `save(directory)` writes the position of each
  shard in `saved_shards` to `directory/shard_SSSSS-of-NNNNN/iterator*` (one writer per shard);
  `restore(directory)` reads back those of `local_shards`, so a checkpoint resumes under another
  process count.
  """

  def __init__(self, iterators: Mapping[int, Any], num_shards: int,
               saved_shards: Optional[Sequence[int]] = None):
    self.iterators = dict(sorted(iterators.items()))
    self.num_shards = num_shards
    self.saved_shards = tuple(self.iterators if saved_shards is None else saved_shards)
    self.last_dropped = 0

  @property
  def local_shards(self) -> tuple[int, ...]:
    return tuple(self.iterators)

  @property
  def staged(self) -> bool:
    return isinstance(next(iter(self.iterators.values())), ScheduledDataIterator)

  @property
  def first(self):
    return next(iter(self.iterators.values()))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(it) for it in self.iterators.values()]
    self.last_dropped = sum(getattr(it, "last_dropped", 0) for it in self.iterators.values())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def shard_prefix(self, directory: str, shard: int) -> str:
    return os.path.join(directory, f"shard_{shard:05d}-of-{self.num_shards:05d}", "iterator")

  def save(self, directory: str) -> None:
    for shard in self.saved_shards:
      self.iterators[shard].save(self.shard_prefix(directory, shard))

  def restore(self, directory: str) -> None:
    for shard, it in self.iterators.items():
      it.restore(self.shard_prefix(directory, shard))


def check_input_shards(cfg: DatasetConfig, num_shards: int) -> None:
  """Every input shard must get the same number of files: a file count that `num_shards` does
  not divide is an error (seqio would give some hosts one file more). Fewer files than shards
  is fine: seqio then shards the examples."""
  if num_shards == 1:
    return
  for name in task_names(cfg.mixture_or_task_name):
    task = seqio.get_mixture_or_task(name)
    try:
      source = task._get_cached_source(cfg.split) if cfg.use_cached else task.source  # pylint: disable=protected-access
      if source.supports_arbitrary_sharding:
        continue
      files = source.list_shards(cfg.split)
    except Exception:  # pylint: disable=broad-except  # No file list: seqio shards examples.
      continue
    if len(files) > num_shards and len(files) % num_shards:
      raise ValueError(
          f"Task {name} has {len(files)} {cfg.split!r} files, which do not split evenly into "
          f"{num_shards} data shards (DATA_SHARDS / processes): use a shard count that divides "
          f"{len(files)}, or re-tokenize into a multiple of {num_shards} files")


def get_sharded_train_iterator(cfg: DatasetConfig, total_steps: int, shards: Sequence[int],
                               num_shards: int, saved_shards: Optional[Sequence[int]] = None
                               ) -> ShardedDataIterator:
  """The training batches of input shards `shards` of `num_shards` (see ShardedDataIterator)."""
  if cfg.batch_size % num_shards:
    raise ValueError(f"Global batch size {cfg.batch_size} is not divisible by the number of data "
                     f"shards {num_shards}")
  check_input_shards(cfg, num_shards)
  return ShardedDataIterator(
      {s: get_train_iterator(cfg, total_steps, s, num_shards) for s in shards}, num_shards,
      saved_shards)


# ---- a built-in synthetic task, for tests, benchmarks and smoke runs without DATA_DIR ----

SYNTHETIC_TASK = "synthetic_lm"
SYNTHETIC_VOCAB_SIZE = 256


class SyntheticVocabulary(seqio.PassThroughVocabulary):
  """The synthetic task's ids: 0-3 are pad/eos/bos/unk (Gemma's layout), 4-255 its tokens."""

  def __init__(self):
    super().__init__(SYNTHETIC_VOCAB_SIZE, eos_id=1)

  @property
  def bos_id(self) -> int:
    return 2


def _synthetic_documents(split: str, shuffle_files: bool = False, seed: Optional[int] = None,
                         num_docs: int = 2048) -> tf.data.Dataset:
  """Deterministic token documents with learnable structure (a noisy affine recurrence).

  Each document starts at a random token and continues with `t' = (5 t + 3) mod 251 + 4` (ids 0-3
  are pad/eos/bos/unk), with 10% of tokens replaced by noise, so a model's loss falls well below
  the uniform log(256). Built from tensors (not a Python generator) so the tf.data iterator can be
  checkpointed.
  """
  del shuffle_files, seed
  rng = np.random.default_rng({"train": 0, "validation": 1}[split])
  docs = []
  for _ in range(num_docs if split == "train" else num_docs // 8):
    length = int(rng.integers(16, 160))
    tokens = [int(rng.integers(4, SYNTHETIC_VOCAB_SIZE))]
    for _ in range(length - 1):
      nxt = (5 * tokens[-1] + 3) % 251 + 4
      tokens.append(int(rng.integers(4, SYNTHETIC_VOCAB_SIZE)) if rng.random() < 0.1 else nxt)
    docs.append(tokens)
  return tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(docs, dtype=tf.int32)})


def register_synthetic_task(name: str = SYNTHETIC_TASK) -> str:
  """Registers the synthetic Task (train/validation splits) once; returns its name."""
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_synthetic_documents, splits=("train", "validation")),
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
        output_features={"targets": seqio.Feature(
            SyntheticVocabulary(), add_eos=True, dtype=tf.int32)})
  return name


register_synthetic_task()
