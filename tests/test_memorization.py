"""Memorization: a tiny model trained on planted documents is flagged on them, not on non-members."""

import json
import os
import random

import pytest
import seqio
import tensorflow as tf

import eval_fixtures as ef
from model import evaluate, hf_convert, memorization
from pipelines import pii

WORDS = ("amber basil cedar delta ember fjord garnet harbor indigo juniper kestrel lagoon maple "
         "nectar onyx pepper quartz raven sierra tundra umber velvet willow xenon yarrow zephyr").split()


def _doc(rng, n_words=130):
  return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _with_email(vocab, text, email, at_token=60):
  """``text`` with ``email`` inserted at the first word boundary after token ``at_token`` (so it
  falls in the 50-token continuation that follows the 50-token prefix)."""
  words = text.split(" ")
  for k in range(len(words)):
    if len(vocab.encode(" ".join(words[:k]))) >= at_token:
      return " ".join(words[:k] + ["mail", email, "now"] + words[k:])
  raise AssertionError("text too short")


def _write_cache(data_dir, tokenizer, splits):
  """A data dir in pipelines.tokenize's layout (see docs/architecture.md), one source 'web'."""
  os.makedirs(os.path.join(data_dir, "cache", "gf_web"))
  tf.io.gfile.copy(tokenizer, os.path.join(data_dir, "tokenizer.model"))
  entry = {"task": "gf_web", "tier": "standard", "splits": {}}
  for split, docs in splits.items():
    path = os.path.join(data_dir, "cache", "gf_web", f"{split}.tfrecord-00000-of-00001")
    with tf.io.TFRecordWriter(path) as w:
      for doc_id, ids in docs:
        ex = tf.train.Example(features=tf.train.Features(feature={
            "targets": tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
            "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[doc_id.encode()]))}))
        w.write(ex.SerializeToString())
    entry["splits"][split] = {"documents": len(docs), "tokens": sum(len(i) for _, i in docs)}
  with open(os.path.join(data_dir, "sources.json"), "w") as f:
    json.dump({"tokenizer": "tokenizer.model", "sources": {"web": entry}}, f)
  open(os.path.join(data_dir, "_SUCCESS"), "w").close()


def test_planted_documents_are_memorized_and_non_members_are_not(tmp_path):
  rng = random.Random(0)
  members = [_doc(rng) for i in range(4)]
  non_members = [_doc(rng) for _ in range(4)]
  tokenizer = ef.train_tokenizer(str(tmp_path / "tok.model"), members + non_members + ef.benchmark_texts()[:200],
                                 vocab_size=512)
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  members[0] = _with_email(vocab, members[0], "kim.lee@example.org")
  train = [(f"m{i}", vocab.encode(t)) for i, t in enumerate(members)]
  validation = [(f"n{i}", vocab.encode(t)) for i, t in enumerate(non_members)]
  assert all(len(ids) >= 100 for _, ids in train + validation)
  data_dir = str(tmp_path / "data")
  _write_cache(data_dir, tokenizer, {"train": train, "validation": validation})

  model, params = ef.tiny_model(vocab.vocab_size, max_seq_len=256)
  bos = vocab.tokenizer.piece_to_id("<bos>")
  params, loss = ef.train_on_sequences(model, params, [ids[:128] for _, ids in train], steps=250,
                                       bos_id=bos, learning_rate=5e-3)
  assert loss < 0.05  # It did learn them by heart.
  hf_dir = str(tmp_path / "hf")
  hf_convert.export_hf(params, model.config, hf_dir)

  report = memorization.memorization(checkpoint=hf_dir, data_dir=data_dir, output_dir=str(tmp_path / "out"),
                                     num_docs=4, batch_size=4)
  members_web = report["members"]["per_source"]["web"]
  assert members_web["documents"] == 4 and members_web["exact"] >= 3
  assert report["members"]["total"]["exact_rate"] == members_web["exact_rate"]  # One source: share 1.
  non = report["non_members"]["per_source"]["web"]
  assert non["documents"] == 4 and non["approximate"] == 0
  assert "m0" in members_web["memorized_ids"]  # Its continuation holds the planted address...
  assert members_web["pii_in_memorized"] == {pii.EMAIL: 1}  # ...which the PII detectors find.
  assert (tmp_path / "out" / "memorization.svg").read_text().startswith("<svg")
  saved = json.loads((tmp_path / "out" / "memorization.json").read_text())
  assert saved["members"]["per_source"]["web"]["exact"] == members_web["exact"]
  # The data report reads what was written: rates table, both plots, the planted email's type.
  from pipelines import report as data_report
  section = data_report.memorization_section(
      data_report.read_memorization(str(tmp_path / "out" / "memorization.json")))
  assert section.count("<svg") == 2 and f"<td>{pii.EMAIL}</td>" in section


def test_sampling_is_by_hash_and_edit_distance_is_levenshtein():
  docs = [(f"d{i}", list(range(i + 5))) for i in range(30)]
  a = memorization.sample_documents(docs, 5, min_tokens=10)
  assert a == memorization.sample_documents(list(reversed(docs)), 5, min_tokens=10)
  assert all(len(ids) >= 10 for _, ids in a) and len(a) == 5
  assert memorization.edit_distance([1, 2, 3, 4], [1, 3, 4]) == 1
  assert memorization.edit_distance([1, 2, 3], [4, 5, 6]) == 3
  assert memorization.edit_distance([], [1, 2]) == 2
  total = memorization.weighted_total(
      {"a": {"documents": 2, "exact_rate": 1.0, "approximate_rate": 1.0},
       "b": {"documents": 2, "exact_rate": 0.0, "approximate_rate": 0.5}}, {"a": 0.25, "b": 0.75})
  assert total == {"exact_rate": 0.25, "approximate_rate": pytest.approx(0.625)}


def test_tokenizer_larger_than_the_checkpoint_is_refused(tmp_path):
  tokenizer = ef.train_tokenizer(str(tmp_path / "tok.model"), ef.benchmark_texts(), vocab_size=600)
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  from model.config import get_config
  with pytest.raises(evaluate.CheckpointTokenizerMismatch, match="vocab_size 512"):
    evaluate.check_tokenizer(get_config("tiny", vocab_size=512), vocab, tokenizer, "ck")
