"""seqio eval tasks built from a data directory's own validation documents (no downloads).

``register_eval_tasks(data_dir)`` registers ``gf_eval_next_line``, a multiple-choice task in the
style of T5's rank-classification tasks (COPA, HellaSwag): given a line of a validation document,
which of ``num_choices`` lines follows it? The true next line competes with lines of *other*
validation documents, picked with the closest length to the answer so that a model cannot win by
preferring short (high-likelihood) lines. Examples, distractors and the answer's position are
chosen by hashes of document ids, so the task is the same on every run and host.

The model scores every (context, choice) pair with the log-likelihood of the choice given the
context (t5x's ``score`` mode, via ``seqio.PrefixLMFeatureConverter``); the metric
``rank_classification_accuracy`` counts an example as right when the true choice scores highest.

Pipeline: ``rank_classification`` (one example per choice, with ``idx = [example, choice]`` and
``is_correct``) -> ``seqio.preprocessors.tokenize`` -> ``truncate_inputs_left`` (keep the end of
the context, which the choice must continue). Targets get no EOS: the true line is followed by more
text, not by the end of a document. BOS is not in the inputs: as in training, the feature
converter's ``bos_id`` (the vocabulary's BOS, ``model.eval``) starts the decoder's inputs, so the
model scores ``choice`` after ``[BOS] context`` at positions from 0, the context it trained on.
"""

from __future__ import annotations

import collections
import hashlib
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks import cache_layout
from tasks import registry

NEXT_LINE_TASK = "gf_eval_next_line"


def _hash(text: str) -> int:
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def validation_documents(data_dir: str) -> list[tuple[str, str]]:
  """(id, text) of every validation document of ``data_dir``, decoded from its token cache.

  Every shard must be present (``cache_layout.check_split_complete``); a truncated or corrupt
  file raises ``CorruptCacheError`` naming it.
  """
  sources = registry.read_sources(data_dir)
  vocab = registry.get_vocabulary(data_dir)
  cache_dir = os.path.join(data_dir, sources.get("cache_dir", cache_layout.CACHE_DIR))
  features = {"targets": tf.io.VarLenFeature(tf.int64), "id": tf.io.FixedLenFeature([], tf.string)}
  docs = []
  for _, entry in sorted(sources["sources"].items()):
    split = entry["splits"].get("validation")
    if split is None:
      continue
    files = cache_layout.check_split_complete(os.path.join(cache_dir, entry["task"]), "validation",
                                              split.get("num_shards"))
    try:
      for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        ex = tf.io.parse_single_example(record, features)
        ids = tf.sparse.to_dense(ex["targets"]).numpy().tolist()
        docs.append((ex["id"].numpy().decode(), vocab.decode(ids)))
    except tf.errors.DataLossError as e:
      raise cache_layout.corrupt_cache_error(e, files) from e
  return sorted(docs)


def next_line_examples(documents: Sequence[tuple[str, str]], num_choices: int = 4,
                       max_examples: int = 100, min_chars: int = 20,
                       max_chars: int = 300) -> list[dict[str, Any]]:
  """Multiple-choice examples ``{"context", "choices", "label", "index"}`` from documents.

  A candidate is a pair of adjacent lines of one document, both ``min_chars``..``max_chars``
  long. ``max_examples`` candidates are taken in hash order; each answer gets the
  ``num_choices - 1`` lines of other documents nearest to it in length as distractors.
  """
  if num_choices < 2:
    raise ValueError(f"num_choices must be >= 2, got {num_choices}")
  lines = []  # (doc id, line number, text) of every usable line.
  for doc_id, text in documents:
    for i, line in enumerate(text.split("\n")):
      line = line.strip()
      if min_chars <= len(line) <= max_chars:
        lines.append((doc_id, i, line))
  by_position = {(d, i): t for d, i, t in lines}
  pairs = [(d, i) for d, i, _ in lines if (d, i + 1) in by_position]
  pairs.sort(key=lambda p: (_hash(f"next_line/{p[0]}/{p[1]}"), p))
  examples = []
  for doc_id, i in pairs:
    if len(examples) == max_examples:
      break
    answer = by_position[(doc_id, i + 1)]
    others = sorted({t for d, _, t in lines if d != doc_id and t != answer},
                    key=lambda t: (abs(len(t) - len(answer)), _hash(f"{doc_id}/{i}/{t}"), t))
    if len(others) < num_choices - 1:
      continue
    label = _hash(f"label/{doc_id}/{i}") % num_choices
    choices = others[:num_choices - 1]
    choices.insert(label, answer)
    examples.append({"context": by_position[(doc_id, i)], "choices": choices, "label": label,
                     "index": len(examples)})
  return examples


# ---- rank classification: preprocessor, postprocessor, metric (t5's, for seqio) ----

def rank_classification(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """One example per choice: ``inputs`` = context + newline, ``targets`` = the choice,
  ``idx`` = [example index, choice index], ``is_correct``."""
  def expand(ex):
    n = tf.shape(ex["choices"])[0]
    choice = tf.range(n, dtype=tf.int32)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.fill([n], ex["context"] + "\n"),
        "targets": ex["choices"],
        "idx": tf.stack([tf.fill([n], ex["index"]), choice], axis=1),
        "is_correct": tf.equal(choice, ex["label"]),
    })
  return dataset.flat_map(expand)


def truncate_inputs_left(dataset: tf.data.Dataset,
                         sequence_length: Optional[Mapping[str, int]]) -> tf.data.Dataset:
  """The *last* ``sequence_length['inputs']`` context tokens (seqio's trim would cut the end)."""

  def apply(ex):
    ex = dict(ex)
    if sequence_length is not None and sequence_length.get("inputs"):
      ex["inputs"] = ex["inputs"][-sequence_length["inputs"]:]
    return ex

  return dataset.map(apply)


def rank_classification_postprocessor(output, example=None, is_target=False):
  """Targets become ``((example index, choice index), is_correct)``; scores pass through."""
  if is_target:
    return (tuple(int(i) for i in example["idx"]), bool(example["is_correct"]))
  return output


def rank_classification_accuracy(targets, scores) -> dict[str, float]:
  """Share of examples whose correct choice has the highest score (ties: the first choice).

  ``targets`` are ``rank_classification_postprocessor`` outputs, ``scores`` the log-likelihood
  of each choice, in the same order.
  """
  if len(targets) != len(scores):
    raise ValueError(f"{len(targets)} targets but {len(scores)} scores")
  choices = collections.defaultdict(dict)
  for ((example, choice), correct), score in zip(targets, scores):
    choices[example][choice] = (float(score), bool(correct))
  if not choices:
    raise ValueError("rank_classification_accuracy got no examples")
  right = 0
  for example, by_choice in sorted(choices.items()):
    ordered = [by_choice[c] for c in sorted(by_choice)]
    if sum(correct for _, correct in ordered) != 1:
      raise ValueError(f"Example {example} has {sum(c for _, c in ordered)} correct choices, not 1")
    best = int(np.argmax([score for score, _ in ordered]))
    right += ordered[best][1]
  num_choices = np.mean([len(c) for c in choices.values()])
  return {"accuracy": right / len(choices), "num_examples": float(len(choices)),
          "chance_accuracy": float(1.0 / num_choices)}


def register_eval_tasks(data_dir: str, num_choices: int = 4, max_examples: int = 100) -> list[str]:
  """Registers the eval tasks of ``data_dir`` (replacing earlier ones); returns their names.

  A data directory whose validation split cannot make a single example (fewer than two
  documents with adjacent usable lines) registers nothing and says so.
  """
  examples = next_line_examples(validation_documents(data_dir), num_choices, max_examples)
  seqio.TaskRegistry.remove(NEXT_LINE_TASK)
  if not examples:
    print(f"{NEXT_LINE_TASK}: the validation documents of {data_dir} give no example "
          "(needs >= 2 documents with adjacent lines of 20-300 characters); not registered.",
          flush=True)
    return []
  columns = {"context": [e["context"] for e in examples],
             "choices": [e["choices"] for e in examples],
             "label": np.array([e["label"] for e in examples], np.int32),
             "index": np.array([e["index"] for e in examples], np.int32)}

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(columns)

  vocab = registry.get_vocabulary(data_dir)
  seqio.TaskRegistry.add(
      NEXT_LINE_TASK,
      source=seqio.FunctionDataSource(dataset_fn, splits=("validation",)),
      preprocessors=[rank_classification, seqio.preprocessors.tokenize, truncate_inputs_left],
      output_features={"inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
                       "targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)},
      postprocess_fn=rank_classification_postprocessor,
      metric_fns=[rank_classification_accuracy])
  return [NEXT_LINE_TASK]
