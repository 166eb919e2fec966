"""seqio conventions users rely on: the BOS layout, nested and staged mixtures, complete caches."""

import json
import shutil

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks
from model import data, decoding, infer
from model.config import get_config
from model.models import DecoderOnlyModel
from pipelines import tokenize
from tasks import cache_layout, eval_tasks, mixtures, schedule
from test_tasks import data_dir, docs  # noqa: F401  (module fixture: a registered data dir)


# ---- BOS: training sees the context inference feeds ----

def test_training_and_inference_feed_the_same_context(data_dir):  # noqa: F811
  path, _ = data_dir
  vocab = tasks.get_vocabulary(str(path))
  bos, stop_ids = infer.special_ids(vocab)  # What `python -m model.infer` uses.
  length = 128  # The tiny model's max_seq_len.
  doc = next(d for d in sorted(docs(), key=lambda d: d["id"]) if d["source"] == "web" and
             tokenize.assign_split(d["id"], 0.25) == "train" and len(vocab.encode(d["text"])) < length)
  ids = vocab.encode(doc["text"])

  # Train time: the Task's example for this document through the trainer's feature converter.
  task_ds = seqio.get_mixture_or_task("gf_web").get_dataset(
      {"targets": length}, split="train", use_cached=True, shuffle=False)

  def is_doc(ex):
    return ex["id"] == doc["id"].encode()

  def targets_only(ex):
    return {"targets": ex["targets"]}

  one = task_ds.filter(is_doc).map(targets_only)
  batch = next(data.feature_converter("gf_web", pack=True)(one, {"targets": length})
               .batch(1).as_numpy_iterator())
  n = len(ids) + 1  # The document and its EOS.
  np.testing.assert_array_equal(batch["decoder_target_tokens"][0, :n], ids + [vocab.eos_id])
  np.testing.assert_array_equal(batch["decoder_input_tokens"][0, :n], [bos] + ids)
  np.testing.assert_array_equal(batch["decoder_positions"][0, :n], np.arange(n))

  # Inference: the prompt rows model.infer builds, then predict_batch (which adds BOS only once).
  prompts = decoding.pad_prompts([ids], bos)
  np.testing.assert_array_equal(prompts[0], [bos] + ids)
  model = DecoderOnlyModel(get_config("tiny", vocab_size=vocab.vocab_size, dtype="float32"))
  params = model.init_params(jax.random.PRNGKey(0))
  token, score = model.predict_batch(params, {"decoder_input_tokens": prompts}, bos_id=bos,
                                     stop_tokens=stop_ids, max_decode_len=1, return_scores=True)
  # The training logits that predict the token after the document (its EOS) are the ones
  # inference samples the first new token from: same tokens, same positions.
  logits = np.asarray(model.logits(params, batch))[0, n - 1]
  log_probs = jax.nn.log_softmax(logits)
  assert int(token[0, 0]) == int(np.argmax(logits))
  np.testing.assert_allclose(float(score[0]), float(log_probs[int(token[0, 0])]), rtol=1e-4, atol=1e-5)


def test_t5x_feature_converter_cls_uses_the_vocabulary_bos(data_dir):  # noqa: F811
  vocab = tasks.get_vocabulary(str(data_dir[0]))
  # Called the way t5x.utils.get_dataset calls a model's FEATURE_CONVERTER_CLS.
  converter = data.decoder_feature_converter_cls(vocab)(pack=True, use_custom_packing_ops=False)
  example = tf.data.Dataset.from_tensors({"targets": tf.constant([5, 6, vocab.eos_id], tf.int32)})
  out = next(converter(example, {"targets": 8}).as_numpy_iterator())
  assert out["decoder_input_tokens"][:3].tolist() == [vocab.bos_id, 5, 6]


def test_synthetic_task_uses_its_vocabulary_bos():
  batch = next(data.get_dataset(data.SYNTHETIC_TASK, {"targets": 32}, "train", 2, shuffle=False,
                                seed=0, pack=False).as_numpy_iterator())
  vocab = data.SyntheticVocabulary()
  assert np.all(batch["decoder_input_tokens"][:, 0] == vocab.bos_id)
  assert not np.any(batch["decoder_target_tokens"] == vocab.bos_id)


# ---- gf_mixture inside a plain seqio.Mixture ----

def test_token_share_mixture_nested_in_a_plain_mixture_is_refused(data_dir):  # noqa: F811
  seqio.MixtureRegistry.remove("gf_nested")
  nested = seqio.MixtureRegistry.add("gf_nested", [("gf_mixture", 1.0), ("gf_web", 1.0)])
  try:
    with pytest.raises(mixtures.NestedMixtureError, match="gf_mixture is a token-share mixture"):
      nested.get_dataset({"targets": 64}, split="train", use_cached=True, shuffle=False)
    with pytest.raises(mixtures.NestedMixtureError):
      seqio.get_mixture_or_task("gf_mixture").get_rate(seqio.get_mixture_or_task("gf_web"))
  finally:
    seqio.MixtureRegistry.remove("gf_nested")


# ---- the staged-mixture recipe of docs/tokenizer_and_tasks.md ----

def test_documented_staged_recipe_realises_its_token_shares(data_dir):  # noqa: F811
  length = {"targets": 128}
  target = {"gf_web": 0.8, "gf_docs": 0.2}
  sched = schedule.schedule_from_tasks([schedule.Stage(0, target)], examples_per_step=64,
                                       sequence_length=length)
  # The trainer builds the same schedule (same example lengths) for the same stage.
  cfg = data.DatasetConfig("gf_mixture", length, "train", 8, use_cached=True,
                           stages=[(0, target)], examples_per_step=64)
  assert data.build_mixture_schedule(cfg, total_steps=10, rows=8).mean_example_tokens == \
      sched.mean_example_tokens
  eos = tasks.get_vocabulary(str(data_dir[0])).eos_id
  tokens = {"gf_web": [], "gf_docs": []}
  streams = schedule.seqio_streams(sched.tasks, length, seed=3)
  for _, task, ex in sched.examples(streams, seed=3, num_steps=40):  # 2560 examples.
    tokens[task].append(len(ex["targets"]) - int(ex["targets"][-1] == eos))
  total = sum(map(sum, tokens.values()))
  realised = sum(tokens["gf_docs"]) / total
  # Token fraction of independent draws: its standard error from the draws (delta method).
  draws = np.array([(t, 0) for t in tokens["gf_web"]] + [(0, t) for t in tokens["gf_docs"]], float)
  stderr = np.std(draws[:, 1] - 0.2 * draws.sum(1)) / draws.sum(1).mean() / np.sqrt(len(draws))
  assert stderr < 0.02 and realised == pytest.approx(0.2, abs=4 * stderr)
  # Probabilities from tokens per *document* (what the recipe used before) miss by far more.
  counts = {t: mixtures.TASK_COUNTS[t] for t in target}
  per_doc = {t: target[t] * counts[t]["documents"] / counts[t]["tokens"] for t in target}
  chunk_tokens = {t: counts[t]["tokens"] / counts[t]["chunks"][str(127)] for t in target}
  old = {t: per_doc[t] * chunk_tokens[t] for t in target}
  assert abs(old["gf_docs"] / sum(old.values()) - 0.2) > 10 * stderr
  # scheduled_dataset yields exactly those examples, ready for the feature converter.
  first = [ex["targets"].tolist() for ex in
           schedule.scheduled_dataset(sched, length, seed=3).take(64).as_numpy_iterator()]
  again = [ex["targets"].tolist() for _, _, ex in
           sched.examples(schedule.seqio_streams(sched.tasks, length, seed=3), seed=3, num_steps=1)]
  assert first == again


# ---- readers verify that the cache is complete ----

@pytest.fixture
def copy(data_dir, tmp_path):  # noqa: F811
  """A copy of the data dir to damage; the original is registered again afterwards."""
  target = tmp_path / "data"
  shutil.copytree(data_dir[0], target)
  yield target
  tasks.register_data_dir(str(data_dir[0]))


def test_missing_or_stray_shard_is_named(copy):
  task_dir = copy / "cache" / "gf_web"
  missing = task_dir / "train.tfrecord-00002-of-00004"
  missing.unlink()
  with pytest.raises(cache_layout.CacheIncompleteError, match="1 of its 4 shards are missing: .*"
                     + str(missing)):
    tasks.register_data_dir(str(copy))
  shutil.copy(task_dir / "train.tfrecord-00001-of-00004", missing)
  (task_dir / "train.tfrecord-00000-of-00005").write_bytes(b"")
  with pytest.raises(cache_layout.CacheIncompleteError, match="not one of its 4 shards: .*-00000-of-00005"):
    tasks.register_data_dir(str(copy))


def test_shard_counts_must_agree(copy):
  info_path = copy / "cache" / "gf_docs" / "info.train.json"
  info = json.loads(info_path.read_text())
  info["num_shards"] = 3
  info_path.write_text(json.dumps(info))
  with pytest.raises(cache_layout.CacheIncompleteError, match="declares 3 shards but sources.json records 4"):
    tasks.register_data_dir(str(copy))
  (copy / "cache" / "gf_docs" / "COMPLETED").unlink()
  with pytest.raises(tasks.DataDirError, match="no complete cache"):
    tasks.register_data_dir(str(copy))


def test_eval_reader_checks_validation_shards(copy):
  (copy / "cache" / "gf_docs" / "validation.tfrecord-00000-of-00001").unlink()
  with pytest.raises(cache_layout.CacheIncompleteError, match="validation.tfrecord-00000-of-00001"):
    eval_tasks.validation_documents(str(copy))


def _largest_shard(task_dir, split):
  return max(task_dir.glob(f"{split}.tfrecord-*"), key=lambda p: p.stat().st_size)


def test_truncated_tfrecord_is_named_with_its_offset(copy):
  shard = _largest_shard(copy / "cache" / "gf_web", "train")
  raw = shard.read_bytes()
  shard.write_bytes(raw[:-5])
  tasks.register_data_dir(str(copy))  # All files are present; one is cut short.
  cfg = data.DatasetConfig("gf_mixture", {"targets": 64}, "train", 4, use_cached=True)
  it = data.get_train_iterator(cfg, total_steps=10)
  with pytest.raises(cache_layout.CorruptCacheError, match=str(shard) + r": truncated record at byte offset \d+"):
    for _ in range(200):
      next(it)


def test_corrupt_validation_record_is_named(copy):
  shard = _largest_shard(copy / "cache" / "gf_web", "validation")
  raw = bytearray(shard.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  shard.write_bytes(bytes(raw))
  with pytest.raises(cache_layout.CorruptCacheError, match=str(shard) + r": corrupted record at byte offset \d+"):
    eval_tasks.validation_documents(str(copy))
  assert cache_layout.find_unreadable_files([str(_largest_shard(copy / "cache" / "gf_docs", "train"))]) == []
