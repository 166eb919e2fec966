"""The seqio input pipeline: Task/Mixture -> packed decoder features -> numpy batches.

Batches are what seqio's `DecoderFeatureConverter` emits (int32 `[B, L]`):
`decoder_target_tokens`, `decoder_input_tokens`, `decoder_loss_weights`, and with packing
`decoder_segment_ids`, `decoder_positions`.

Resuming exactly: like t5x, the position in the data is the state of the `tf.data` iterator, saved
with `tf.train.Checkpoint` next to every model checkpoint (see `model.checkpoints`). The pipeline is
deterministic (seeded shuffle and mixture sampling, `deterministic=True`), so a restarted run sees
the same batches in the same order as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Mapping, Optional

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
      task_feature_lengths=dict(task_feature_lengths),
      feature_converter=seqio.DecoderFeatureConverter(pack=pack),
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
  """

  def __init__(self, dataset: tf.data.Dataset):
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    return {k: np.asarray(v, dtype=np.int32) for k, v in batch.items()}

  def save(self, prefix: str) -> None:
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    self._checkpoint.write(prefix)

  def restore(self, prefix: str) -> None:
    if not tf.io.gfile.glob(prefix + ".index"):
      raise FileNotFoundError(f"No data iterator checkpoint at {prefix}")
    self._checkpoint.read(prefix).assert_consumed()


# ---- a built-in synthetic task, for tests, benchmarks and smoke runs without DATA_DIR ----

SYNTHETIC_TASK = "synthetic_lm"
SYNTHETIC_VOCAB_SIZE = 256


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
            seqio.PassThroughVocabulary(SYNTHETIC_VOCAB_SIZE, eos_id=1), add_eos=True, dtype=tf.int32)})
  return name


register_synthetic_task()
