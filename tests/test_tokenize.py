"""Tests for pipelines.tokenize: seqio cache layout, splits, shards, accounting, reruns."""

import json
import os
import random

import pytest
import sentencepiece as spm
import tensorflow as tf

from pipelines import common
from pipelines import tokenize
from test_tokenizer import make_docs, make_text, options, train, write_stage_dir

NUM_SHARDS = 3


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokenizer")
  train(write_stage_dir(root / "dedupe", make_docs(60)), root / "tok")
  return str(root / "tok" / "tokenizer.model")


def input_docs():
  docs = make_docs(80)
  docs.append({"id": "00000000000000aa", "source": "web", "text": ""})  # empty_after_tokenize
  docs.append({"id": "00000000000000bb", "text": "no source"})  # no_source
  docs.append({"id": "00000000000000cc", "source": "my-site.org", "text": "needs a sanitised task name"})
  long_text = "\n".join(make_text(random.Random(7), paragraphs=1, words=60) for _ in range(30))
  docs.append({"id": "00000000000000dd", "source": "docs", "text": long_text})
  return docs


def run(input_dir, tokenizer_path, output_dir, **kwargs):
  kwargs.setdefault("num_shards", NUM_SHARDS)
  kwargs.setdefault("validation_fraction", 0.2)
  return tokenize.tokenize(str(input_dir), tokenizer_path, str(output_dir), options=options(), **kwargs)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tokenizer_path):
  root = tmp_path_factory.mktemp("tokenize")
  input_dir = write_stage_dir(root / "dedupe", input_docs(), num_shards=2, extra_lines=["{broken"])
  stats = run(input_dir, tokenizer_path, root / "data")
  return root, stats


def read_records(path):
  out = []
  for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
    ex = tf.train.Example.FromString(raw)
    out.append((ex.features.feature["id"].bytes_list.value[0].decode(),
                list(ex.features.feature["targets"].int64_list.value)))
  return out


def test_cache_layout_matches_seqio(data_dir):
  root, _ = data_dir
  data = root / "data"
  assert sorted(os.listdir(data / "cache")) == ["gf_docs", "gf_my_site_org", "gf_web"]
  for task in ("gf_docs", "gf_web", "gf_my_site_org"):
    files = sorted(os.listdir(data / "cache" / task))
    assert files == sorted(
        ["COMPLETED", "info.train.json", "info.validation.json", "stats.train.json", "stats.validation.json"]
        + [f"train.tfrecord-{i:05d}-of-{NUM_SHARDS:05d}" for i in range(NUM_SHARDS)]
        + ["validation.tfrecord-00000-of-00001"]
    )
    info = json.loads((data / "cache" / task / "info.train.json").read_text())
    assert info == {
        "features": {"id": {"dtype": "string", "shape": []}, "targets": {"dtype": "int32", "shape": [None]}},
        "num_shards": NUM_SHARDS,
        "seqio_version": "0.0.20",
    }
  for name in ("_SUCCESS", "tokenizer.model", "sources.json", "stats.json", "rejects/rejects-00000-of-00001.jsonl"):
    assert (data / name).exists(), name


def test_tokens_ids_splits_and_stats_are_consistent(data_dir, tokenizer_path):
  root, _ = data_dir
  sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
  docs = {d["id"]: d for d in input_docs()}
  sources = json.loads((root / "data" / "sources.json").read_text())
  seen = {}
  for source, entry in sources["sources"].items():
    task_dir = root / "data" / "cache" / entry["task"]
    for split in ("train", "validation"):
      num_shards = NUM_SHARDS if split == "train" else 1
      split_tokens, split_docs, max_tokens, lengths = 0, 0, 0, []
      for shard in range(num_shards):
        records = read_records(str(task_dir / f"{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"))
        ids = [doc_id for doc_id, _ in records]
        assert ids == sorted(ids)
        for doc_id, tokens in records:
          assert doc_id not in seen
          seen[doc_id] = split
          assert docs[doc_id]["source"] == source
          assert tokens == sp.encode(docs[doc_id]["text"])  # No BOS/EOS in the cache.
          assert tokenize.assign_split(doc_id, 0.2) == split
          assert tokenize.assign_shard(doc_id, num_shards) == shard
          split_tokens += len(tokens)
          lengths.append(len(tokens))
          max_tokens = max(max_tokens, len(tokens))
        split_docs += len(records)
      stats = json.loads((task_dir / f"stats.{split}.json").read_text())
      assert stats == {"examples": split_docs, "targets_tokens": split_tokens, "targets_max_tokens": max_tokens}
      assert entry["splits"][split]["documents"] == split_docs
      assert entry["splits"][split]["tokens"] == split_tokens
      # Examples per chunk length, for the mixture rates: sum of ceil(n / c) over the documents.
      chunks = entry["splits"][split]["chunks"]
      # Chunk length L - 1: the Task's chunk plus the document's EOS fill L (BOS is an input).
      assert set(chunks) == {str(length - 1) for length in tokenize.STANDARD_SEQUENCE_LENGTHS}
      assert chunks == {str(c): sum(-(-n // c) for n in lengths) for c in tokenize.STANDARD_CHUNK_LENGTHS}
  assert set(seen) == set(docs) - {"00000000000000aa", "00000000000000bb"}
  assert 0.05 < sum(s == "validation" for s in seen.values()) / len(seen) < 0.4
  assert sources["special_ids"] == {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "start_of_turn": 4,
                                    "end_of_turn": 5}
  assert sources["special_ids_match_gemma"] is True
  assert {s: e["tier"] for s, e in sources["sources"].items()} == {
      "docs": "high", "web": "standard", "my-site.org": "standard"}


def test_count_chunks():
  assert tokenize.count_chunks([1, 62, 63, 124, 125], [62, 126]) == {"62": 1 + 1 + 2 + 2 + 3, "126": 5}
  assert tokenize.count_chunks([], [30]) == {"30": 0}
  assert tokenize.STANDARD_CHUNK_LENGTHS[:3] == (31, 63, 127) and tokenize.STANDARD_CHUNK_LENGTHS[-1] == 32767


def test_stats_account_for_every_record(data_dir):
  root, stats = data_dir
  assert stats["in"] == len(input_docs()) + 1
  assert stats["dropped"] == {"bad_json": 1, "empty_after_tokenize": 1, "no_source": 1}
  assert stats["in"] == stats["kept"] + stats["dropped_total"]
  assert stats["kept"] == stats["train_documents"] + stats["validation_documents"]
  rejects = [json.loads(l) for l in (root / "data" / "rejects" / "rejects-00000-of-00001.jsonl").read_text().splitlines()]
  assert sorted(r["reason"] for r in rejects) == ["bad_json", "empty_after_tokenize", "no_source"]


def test_rerun_is_byte_identical(data_dir, tokenizer_path, tmp_path):
  root, _ = data_dir
  # Same documents, another shard layout of the input.
  input_dir = write_stage_dir(tmp_path / "dedupe", list(reversed(input_docs())), num_shards=5,
                              extra_lines=["{broken"])
  run(input_dir, tokenizer_path, tmp_path / "data")
  first = root / "data"
  for dirpath, _, files in os.walk(first):
    for name in files:
      rel = os.path.relpath(os.path.join(dirpath, name), first)
      assert (tmp_path / "data" / rel).read_bytes() == (first / rel).read_bytes(), rel
  assert sum(len(f) for _, _, f in os.walk(tmp_path / "data")) == sum(len(f) for _, _, f in os.walk(first))


def test_bad_tokenizer_and_flags_are_refused(tmp_path, tokenizer_path):
  input_dir = write_stage_dir(tmp_path / "dedupe", make_docs(3))
  with pytest.raises(common.StageError, match="does not exist"):
    run(input_dir, str(tmp_path / "missing.model"), tmp_path / "data")
  with pytest.raises(common.StageError, match="validation_fraction"):
    run(input_dir, tokenizer_path, tmp_path / "data", validation_fraction=1.5)
  with pytest.raises(common.StageError, match="source=tier"):
    tokenize.parse_tiers("docs:high")
  assert not (tmp_path / "data").exists()
  assert tokenize.parse_tiers("docs=high, forum=low") == {"docs": "high", "forum": "low"}


def test_colliding_task_names_fail_the_job(tmp_path, tokenizer_path):
  docs = make_docs(6, sources=("a-b", "a.b"))
  input_dir = write_stage_dir(tmp_path / "dedupe", docs)
  with pytest.raises(Exception, match="gf_a_b"):
    run(input_dir, tokenizer_path, tmp_path / "data")
  assert not (tmp_path / "data").exists()


def test_examples_serialize_deterministically():
  """Map fields are written in a fixed order (``id`` before ``targets``), so the TFRecord bytes
  are the same in every process, not only the parsed records."""
  import tensorflow as tf

  for doc_id, tokens in [("a", []), ("0123456789abcdef", [5, 300, 2**40]), ("é-ü", list(range(700)))]:
    data = tokenize.to_example(doc_id, tokens)
    fresh = tf.train.Example(features=tf.train.Features(feature={
        "targets": tf.train.Feature(int64_list=tf.train.Int64List(value=tokens)),
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[doc_id.encode("utf-8")])),
    }))
    assert data == fresh.SerializeToString(deterministic=True)
    assert data.index(b"\n\x02id") < data.index(b"\n\x07targets")
    parsed = tf.train.Example.FromString(data).features.feature
    assert list(parsed["targets"].int64_list.value) == tokens


def _cli(input_dir, tokenizer_path, output_dir, *flags):
  return tokenize.main([f"--input={input_dir}", f"--tokenizer={tokenizer_path}",
                        f"--output_dir={output_dir}", "--batch_size=16", "--runner=DirectRunner",
                        *flags])


def test_shard_counts_follow_the_data(tmp_path, tokenizer_path):
  """With no count given, every count comes from the data: train from the input's bytes rounded up
  to --shard_multiple, validation from its share of them, rejects from their own bytes; and
  sources.json's shard_token_imbalance is what the TFRecords hold (read back, not recomputed)."""
  target, multiple, fraction = 5000, 3, 0.2
  no_source = [{"id": f"nosource{i:02d}", "text": doc["text"]}
               for i, doc in enumerate(make_docs(12, seed=3))]
  input_dir = write_stage_dir(tmp_path / "dedupe", input_docs() + no_source, num_shards=2,
                              extra_lines=["{broken"])
  stats = _cli(input_dir, tokenizer_path, tmp_path / "data", f"--target_shard_bytes={target}",
               f"--shard_multiple={multiple}", f"--validation_fraction={fraction}")
  data = tmp_path / "data"
  input_bytes = sum(os.path.getsize(os.path.join(input_dir, name)) for name in os.listdir(input_dir)
                    if name.startswith("docs-"))
  train = -(-(-(-input_bytes // target)) // multiple) * multiple
  validation = -(-(-(-input_bytes * 2 // 10)) // target)  # ceil(ceil(bytes * 0.2) / target)
  assert train % multiple == 0 and train > multiple and -(-input_bytes // target) % multiple != 0
  assert validation >= 2
  sources = json.loads((data / "sources.json").read_text())
  assert sources["num_shards"] == {"train": train, "validation": validation}

  # Every kept document exactly once, in the shard its id names.
  kept = set()
  for source, entry in sources["sources"].items():
    task_dir = data / "cache" / entry["task"]
    for split, n in (("train", train), ("validation", validation)):
      assert json.loads((task_dir / f"info.{split}.json").read_text())["num_shards"] == n
      shard_tokens = []
      for shard in range(n):
        records = read_records(str(task_dir / f"{split}.tfrecord-{shard:05d}-of-{n:05d}"))
        assert all(tokenize.assign_shard(doc_id, n) == shard for doc_id, _ in records)
        assert not kept & {doc_id for doc_id, _ in records}
        kept |= {doc_id for doc_id, _ in records}
        shard_tokens.append(sum(len(tokens) for _, tokens in records))
      counts = entry["splits"][split]
      assert counts["num_shards"] == n
      assert counts["max_shard_tokens"] == max(shard_tokens)
      assert counts["min_shard_tokens"] == min(shard_tokens)
      if sum(shard_tokens):
        assert counts["shard_token_imbalance"] == round(max(shard_tokens) * n / sum(shard_tokens), 4)
        assert counts["shard_token_imbalance"] >= 1.0
  assert sources["sources"]["web"]["splits"]["train"]["shard_token_imbalance"] > 1.0
  assert kept == {d["id"] for d in input_docs()} - {"00000000000000aa", "00000000000000bb"}
  assert len(kept) == stats["kept"]

  # Rejects: as many shards as their bytes need, each sorted by id, every reject exactly once.
  rejects_dir = data / "rejects"
  names = sorted(os.listdir(rejects_dir))
  r = len(names)
  assert names == [f"rejects-{i:05d}-of-{r:05d}.jsonl" for i in range(r)]
  reject_bytes = sum(os.path.getsize(rejects_dir / name) for name in names)
  assert r == -(-reject_bytes // target) and r >= 2
  rejects = []
  for i, name in enumerate(names):
    records = [json.loads(line) for line in (rejects_dir / name).read_text().splitlines()]
    assert [x["id"] for x in records] == sorted(x["id"] for x in records)
    assert all(common.stable_hash(x["id"]) % r == i for x in records)
    rejects += records
  assert sorted(x["id"] for x in rejects if x["reason"] == "no_source") == sorted(
      [d["id"] for d in no_source] + ["00000000000000bb"])
  assert len(rejects) == stats["dropped_total"] == len(no_source) + 3
  assert stats["in"] == stats["kept"] + stats["dropped_total"]
  # A lost rejects shard is named by the shard check every stage directory gets.
  os.remove(rejects_dir / names[1])
  with pytest.raises(common.StageError, match=f"1 shard.*missing: .*{names[1]}"):
    common.check_shards_complete(sorted(str(rejects_dir / n) for n in names if n != names[1]), "rejects")


def test_shard_count_flags_override_the_data(tmp_path, tokenizer_path):
  input_dir = write_stage_dir(tmp_path / "dedupe", input_docs(), extra_lines=["{broken"])
  _cli(input_dir, tokenizer_path, tmp_path / "data", "--target_shard_bytes=100", "--num_shards=2",
       "--num_validation_shards=3", "--num_reject_shards=2")
  sources = json.loads((tmp_path / "data" / "sources.json").read_text())
  assert sources["num_shards"] == {"train": 2, "validation": 3}
  assert sorted(os.listdir(tmp_path / "data" / "rejects")) == [
      "rejects-00000-of-00002.jsonl", "rejects-00001-of-00002.jsonl"]
  with pytest.raises(common.StageError, match="num_validation_shards"):
    _cli(input_dir, tokenizer_path, tmp_path / "bad", "--num_validation_shards=-1")
  assert not (tmp_path / "bad").exists()
