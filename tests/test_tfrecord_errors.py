"""A truncated TFRecord read by a seqio Task without the cache names the file and the offset.

The cached paths are tested in test_seqio_conventions.py; these are the readers that open a
Task's own TFRecord source (``seqio.TFExampleDataSource``): the training iterator over a Task
and over a Mixture, and the loss evaluation.
"""

import jax.numpy as jnp
import pytest
import seqio
import tensorflow as tf

from model import data, eval as eval_lib
from model.partitioning import Partitioner
from tasks import cache_layout

TASK, MIXTURE = "h4_tfexample_source", "h4_tfexample_mixture"
LENGTH = 8


def _write_examples(path, count):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for i in range(count):
      feature = tf.train.Feature(int64_list=tf.train.Int64List(value=[3 + (i + j) % 90 for j in range(LENGTH)]))
      writer.write(tf.train.Example(features=tf.train.Features(feature={"targets": feature})).SerializeToString())


def _int32(dataset):
  return dataset.map(lambda ex: {"targets": tf.cast(ex["targets"], tf.int32)})


@pytest.fixture()
def cut_source(tmp_path):
  """A Task (and a Mixture of it) over two TFRecord files; the second loses its last 5 bytes."""
  good, cut = tmp_path / "part-0.tfrecord", tmp_path / "part-1.tfrecord"
  _write_examples(good, 6)
  _write_examples(cut, 6)
  cut.write_bytes(cut.read_bytes()[:-5])
  vocab = data.SyntheticVocabulary()  # Has the BOS id the decoder layout needs.
  for name in (TASK, MIXTURE):
    seqio.MixtureRegistry.remove(name)
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      TASK,
      source=seqio.TFExampleDataSource(
          {"train": str(tmp_path / "part-*.tfrecord"), "validation": str(tmp_path / "part-*.tfrecord")},
          feature_description={"targets": tf.io.FixedLenFeature([LENGTH], tf.int64)}),
      preprocessors=[_int32, seqio.preprocessors.append_eos],
      output_features={"targets": seqio.Feature(vocab, add_eos=True)})
  seqio.MixtureRegistry.add(MIXTURE, [(TASK, 1.0)])
  yield str(cut)
  seqio.MixtureRegistry.remove(MIXTURE)
  seqio.TaskRegistry.remove(TASK)


class ZeroScorer:
  """Scores every row 0: the batches before the cut record are scored, then reading fails."""

  def score_batch(self, params, batch):
    del params
    return jnp.zeros(batch["decoder_target_tokens"].shape[0], jnp.float32)


def _message(cut):
  return "Cannot read TFRecord input: " + cut + r": truncated record at byte offset \d+\.$"


def test_the_raw_error_names_neither_file_nor_reader(cut_source):
  """What tf.data alone says (so the tests below check something the library does not do)."""
  with pytest.raises(tf.errors.DataLossError) as raised:
    list(tf.data.TFRecordDataset([cut_source]).as_numpy_iterator())
  assert cut_source not in str(raised.value)


@pytest.mark.parametrize("name", [TASK, MIXTURE])
def test_training_iterator_over_an_uncached_source_names_the_file(cut_source, name):
  cfg = data.DatasetConfig(name, {"targets": LENGTH + 1}, "train", 2, shuffle=False, use_cached=False)
  it = data.get_train_iterator(cfg, total_steps=10)
  with pytest.raises(cache_layout.CorruptCacheError, match=_message(cut_source)):
    for _ in range(20):  # 11 good records, then the cut one; the dataset repeats.
      next(it)


def test_loss_evaluation_over_an_uncached_source_names_the_file(cut_source):
  cfg = data.DatasetConfig(TASK, {"targets": LENGTH + 1}, "validation", 2, shuffle=False,
                           use_cached=False)
  with pytest.raises(cache_layout.CorruptCacheError, match=_message(cut_source)):
    eval_lib.evaluate(ZeroScorer(), {}, cfg, Partitioner())


def test_only_the_cut_file_is_named(cut_source, tmp_path):
  files = data._tfrecord_files(TASK, "train")
  assert files == [(str(tmp_path / "part-0.tfrecord"), False), (cut_source, False)]
  assert data.cache_files(TASK, "train") == []  # No cache: these are source files.
  problems = cache_layout.find_unreadable_files(f for f, _ in files)
  assert len(problems) == 1 and problems[0].startswith(cut_source + ": truncated record at byte offset")
  _write_examples(tmp_path / "first-5", 5)  # The cut record starts where 5 whole ones end.
  assert problems[0].endswith(f"byte offset {(tmp_path / 'first-5').stat().st_size}")
