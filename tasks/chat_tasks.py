"""seqio Tasks over a `pipelines.chat_data` directory, and the feature converter that keeps loss masks.

``register_chat_data_dir(data_dir)`` (``tasks.register_data_dir`` calls it for a chat data
directory) registers, from ``<data_dir>/sources.json``:

* ``gf_chat_<S>`` (kind ``sft``): features ``targets`` (the rendered conversation without BOS,
  which the feature converter's ``bos_id`` puts first in the inputs) and ``loss_mask`` (1 on
  model-turn tokens and their ``<end_of_turn>``), offset by one for packing (`prepare_sft_example`). The Mixture ``gf_chat`` draws from all of
  them in proportion to their examples.
* ``gf_pref_<S>`` (kind ``preference``): features ``prompt`` (prompt + generation prompt),
  ``chosen`` and ``rejected`` (prompt + response up to and including its ``<end_of_turn>``), all
  without BOS; the reward model and RLHF read them (`model.reward_model`, `model.rlhf`).

SFT batches come from `ChatFeatureConverter`: seqio's `LMFeatureConverter` with ``loss_mask``
packed next to ``targets`` (same segments and positions), whose ``decoder_loss_weights`` are the
mask instead of "every non-padding token". seqio refuses pass-through features when packing, so
the mask is a task feature packed like ``targets``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import seqio
import tensorflow as tf

LOSS_MASK = "loss_mask"
SFT_KIND = "sft"
PREFERENCE_KIND = "preference"
SFT_MIXTURE = "gf_chat"
SFT_FEATURES = ("targets", LOSS_MASK)
PREFERENCE_FEATURES = ("prompt", "chosen", "rejected")
DATA_FORMAT = "chat"  # sources.json "format" of a chat data directory


class ChatFeatureConverter(seqio.LMFeatureConverter):
  """LMFeatureConverter whose loss weights are each example's `loss_mask` (packed alongside)."""

  TASK_FEATURES = {
      "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      LOSS_MASK: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    # The packed mask holds 1 (no loss) / 2 (loss) and 0 on padding; see `prepare_sft_example`.
    d["decoder_loss_weights"] = tf.maximum(tf.cast(features[LOSS_MASK], tf.int32) - 1, 0)
    return d


def task_feature_lengths(lengths: Mapping[str, int]) -> dict[str, int]:
  """`lengths` with the loss mask as long as the targets (what `ChatFeatureConverter` expects)."""
  out = dict(lengths)
  out.setdefault(LOSS_MASK, out["targets"])
  return out


def uses_loss_mask(provider: seqio.DatasetProviderBase) -> bool:
  """True for a Task/Mixture whose examples carry a loss mask (read with ChatFeatureConverter)."""
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  with_mask = {LOSS_MASK in t.output_features for t in tasks}
  if len(with_mask) > 1:
    raise ValueError(f"{provider.name} mixes tasks with and without a {LOSS_MASK}; train them separately")
  return with_mask == {True}


def prepare_sft_example(dataset: tf.data.Dataset, output_features) -> tf.data.Dataset:
  """The 0/1 `loss_mask` stored as 1/2 for packing.

  seqio's packing drops 0s as padding from every feature, so a 0 inside the mask would shift the
  rest of it; `ChatFeatureConverter` subtracts the 1 again after packing. (BOS is not in the
  targets: the converter's `bos_id` puts it first in the inputs, as for pretraining.)
  """
  del output_features

  def _offset(ex):
    ex = dict(ex)
    ex[LOSS_MASK] = ex[LOSS_MASK] + 1
    return ex

  return dataset.map(_offset, num_parallel_calls=tf.data.AUTOTUNE)


def _cache_only(task: str):
  def dataset_fn(split, shuffle_files, seed=None):
    raise ValueError(f"Task {task} can only be read from its cache: call get_dataset(..., use_cached=True).")
  return dataset_fn


def register_chat_data_dir(data_dir: str, sources: Mapping[str, Any], vocabulary) -> list[str]:
  """Registers the gf_chat_* / gf_pref_* Tasks of a chat data directory and the gf_chat Mixture."""
  cache_dir = os.path.join(data_dir, sources.get("cache_dir", "cache"))
  mask_vocab = seqio.PassThroughVocabulary(size=3)
  names, sft_rates = [], {}
  for _, entry in sorted(sources["sources"].items()):
    name, kind = entry["task"], entry["kind"]
    splits = [s for s, counts in sorted(entry["splits"].items()) if counts["documents"] > 0]
    if kind == SFT_KIND:
      features = {"targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
                  LOSS_MASK: seqio.Feature(mask_vocab, add_eos=False, dtype=tf.int32)}
      preprocessors = [seqio.CacheDatasetPlaceholder(required=True), prepare_sft_example]
    elif kind == PREFERENCE_KIND:
      features = {k: seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32) for k in PREFERENCE_FEATURES}
      preprocessors = [seqio.CacheDatasetPlaceholder(required=True)]
    else:
      raise ValueError(f"{data_dir}: task {name} has unknown kind {kind!r}")
    seqio.TaskRegistry.remove(name)
    task = seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(_cache_only(name), splits=splits),
                                  output_features=features, preprocessors=preprocessors)
    if task.cache_dir != os.path.join(cache_dir, name):
      raise ValueError(f"Task {name} has no complete cache under {cache_dir}; rerun pipelines.chat_data.")
    if kind == SFT_KIND and entry["splits"].get("train", {}).get("documents"):
      sft_rates[name] = float(entry["splits"]["train"]["documents"])
    names.append(name)
  seqio.MixtureRegistry.remove(SFT_MIXTURE)
  if sft_rates:
    seqio.MixtureRegistry.add(SFT_MIXTURE, sorted(sft_rates.items()))
  return sorted(names)


def preference_task_names(data_dir_sources: Mapping[str, Any]) -> list[str]:
  return sorted(e["task"] for e in data_dir_sources["sources"].values() if e["kind"] == PREFERENCE_KIND)
