"""Registers one cached seqio Task per source of a tokenized data directory, and their Mixture.

``register_data_dir(data_dir)`` reads ``<data_dir>/sources.json`` (written by
``pipelines.tokenize``), checks that every cache shard it names is present
(``tasks.cache_layout.check_split_complete``) and registers, for each source ``S``, the Task
``gf_<S>``:

* its data source can only be read from the cache (``CacheDatasetPlaceholder(required=True)``;
  ``<data_dir>/cache`` is put first among seqio's global cache directories);
* a post-cache preprocessor turns a document into examples ``chunk`` and ``last chunk [EOS]``
  (``split_into_chunks``: chunks fit ``sequence_length - 1``, or ``max_chunk_tokens``). BOS is not
  in the targets: the feature converter's ``bos_id`` (``model.data``) starts every segment's
  inputs, seqio's standard decoder layout;
* the output feature ``targets`` uses the data directory's SentencePiece model (EOS is added by
  ``split_into_chunks``, so ``add_eos=False``).

The Mixture ``gf_mixture`` draws from the tasks in proportion to their train-split token counts,
at whatever sequence length it is read (``tasks.mixtures.TokenShareMixture``). Each task's quality tier is in ``TASK_TIERS``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

import gin
import seqio
import tensorflow as tf

from tasks import chat_tasks
from tasks import cache_layout
from tasks import mixtures
from tasks import preprocessors

MIXTURE_NAME = "gf_mixture"
SOURCES_FILE = cache_layout.SOURCES_FILE
SUCCESS_MARKER = cache_layout.SUCCESS_MARKER

# Quality tier ("high", "standard", ...) of every registered gf_ task, by task name.
TASK_TIERS: dict[str, str] = {}
# Cache directory that register_data_dir last put in seqio's global list.
_registered_cache_dir: Optional[str] = None


class DataDirError(ValueError):
  """A data directory that pipelines.tokenize did not (completely) write."""


def read_sources(data_dir: str) -> dict[str, Any]:
  """The parsed ``sources.json`` of a finished ``pipelines.tokenize`` output directory."""
  if not tf.io.gfile.exists(os.path.join(data_dir, SUCCESS_MARKER)):
    raise DataDirError(
        f"{data_dir} has no {SUCCESS_MARKER}: it is not the output of a finished "
        "`python -m pipelines.tokenize` run."
    )
  with tf.io.gfile.GFile(os.path.join(data_dir, SOURCES_FILE)) as f:
    return json.load(f)


@functools.lru_cache(maxsize=None)
def _vocabulary(model_path: str) -> seqio.SentencePieceVocabulary:
  return seqio.SentencePieceVocabulary(model_path)


def get_vocabulary(data_dir: str) -> seqio.SentencePieceVocabulary:
  """The SentencePiece vocabulary the data directory was tokenized with (one object per path)."""
  return _vocabulary(os.path.join(data_dir, read_sources(data_dir)["tokenizer"]))


def _cache_only(task: str):
  def dataset_fn(split, shuffle_files, seed=None):
    raise ValueError(f"Task {task} can only be read from its cache: call get_dataset(..., use_cached=True).")

  return dataset_fn


def _use_cache_dir(cache_dir: str) -> None:
  """Puts ``cache_dir`` first in seqio's global cache dirs, replacing the one we added before."""
  global _registered_cache_dir
  others = [d for d in seqio.get_global_cache_dirs() if d not in (cache_dir, _registered_cache_dir)]
  seqio.set_global_cache_dirs([cache_dir] + others)
  _registered_cache_dir = cache_dir


@gin.configurable
def register_data_dir(
    data_dir: str,
    max_chunk_tokens: Optional[int] = None,
    temperature: float = 1.0,
    shuffle_buffer_size: int = seqio.SHUFFLE_BUFFER_SIZE,
) -> list[str]:
  """Registers ``gf_<source>`` for every source in ``data_dir`` and the ``gf_mixture`` Mixture.

  Safe to call again (tasks and mixture are replaced). Returns the task names, sorted.

  Args:
    data_dir: output directory of ``pipelines.tokenize``.
    max_chunk_tokens: longest chunk a document is split into (before BOS/EOS); by default the
      chunk length is ``sequence_length["targets"] - 2`` so each example fits unpacked.
    temperature: mixture temperature (1 = natural token distribution).
    shuffle_buffer_size: example shuffle buffer of each Task.
  """
  sources = read_sources(data_dir)
  if not sources["sources"]:
    raise DataDirError(f"{data_dir}/{SOURCES_FILE} lists no sources: every document was dropped.")
  cache_dir = os.path.join(data_dir, sources.get("cache_dir", cache_layout.CACHE_DIR))
  _use_cache_dir(cache_dir)
  if sources.get("format") == chat_tasks.DATA_FORMAT:  # Written by pipelines.chat_data.
    return chat_tasks.register_chat_data_dir(data_dir, sources, get_vocabulary(data_dir))
  vocabulary = get_vocabulary(data_dir)
  output_features = {"targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)}

  names = []
  for source, entry in sorted(sources["sources"].items()):
    name = entry["task"]
    splits = [s for s, counts in sorted(entry["splits"].items()) if counts["documents"] > 0]
    seqio.TaskRegistry.remove(name)
    task = seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_cache_only(name), splits=splits),
        output_features=output_features,
        preprocessors=[
            seqio.CacheDatasetPlaceholder(required=True),
            functools.partial(preprocessors.split_into_chunks, max_chunk_tokens=max_chunk_tokens),
        ],
        shuffle_buffer_size=shuffle_buffer_size,
    )
    expected = os.path.join(cache_dir, name)
    if task.cache_dir != expected:
      raise DataDirError(
          f"Task {name} (source {source}) has no complete cache at {expected} "
          f"(found: {task.cache_dir}); rerun pipelines.tokenize."
      )
    for split, counts in sorted(entry["splits"].items()):
      cache_layout.check_split_complete(expected, split, counts.get("num_shards"))
    TASK_TIERS[name] = entry["tier"]
    if "train" in entry["splits"]:
      mixtures.set_task_counts(name, entry["splits"]["train"], max_chunk_tokens)
    names.append(name)

  with_train = [name for name in names if "train" in seqio.TaskRegistry.get(name).splits]
  tokens = {name: mixtures.task_token_stats(name)[0] for name in with_train}
  mixtures.register_mixture(MIXTURE_NAME, mixtures.token_shares(tokens, temperature))
  return names
