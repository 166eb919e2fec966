"""The tokenize job's per-input layout (``--shard_layout=per_input``, pipelines/tokenize_shardwise.py)
against its default one: the same cache, byte for byte, through spill files instead of a shuffle.

Input: three stage shards with several sources (one whose task name is sanitised and that has
empty shards), train and validation documents, a document that encodes to nothing, one without a
source, a malformed line, and duplicate ids spread over different input files (the shard order of
equal ids: source, then tokens, then bytes), plus ids that are prefixes of each other in one
shard. Every output file must equal the default layout's, on rerun and under the other runners;
seqio must read the cache; damaged inputs and spill files must fail the job loudly.
"""

import glob
import json
import os
import shutil

import pytest
import seqio
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

import tasks
from pipelines import common
from pipelines import spill
from pipelines import tokenize
from pipelines import tokenize_shardwise
from test_tokenizer import make_docs, train, write_stage_dir
from beam_runners import RUNNERS
from stage_dirs import copy_with_truncated_shard, copy_without_shard

NUM_SHARDS = 3
VALIDATION_FRACTION = 0.2
NUM_INPUT_FILES = 3
PER_INPUT = [f"--shard_layout={common.PER_INPUT}"]
BROKEN_LINE = '{"id": "broken'


def _same_shard_prefix_ids() -> list[str]:
  """Ids that are prefixes of each other (and one with a NUL, one non-ASCII) that all land in one
  train shard: the merge must order them as ``sorted`` orders their ``str``s."""
  for k in range(10_000):
    ids = [f"p{k}", f"p{k}\x00", f"p{k}\x00z", f"p{k}a", f"p{k}\u00e9", f"p{k}\U0001f600"]
    places = {(tokenize.assign_split(i, VALIDATION_FRACTION), tokenize.assign_shard(i, NUM_SHARDS))
              for i in ids}
    if len(places) == 1 and next(iter(places))[0] == "train":
      return ids
  raise AssertionError("no id group in one shard")


def input_files() -> list[list[dict]]:
  """The documents of each input file (their order within a file does not matter)."""
  docs = make_docs(90)
  files = [docs[i::NUM_INPUT_FILES] for i in range(NUM_INPUT_FILES)]
  files[0].append({"id": "00000000000000aa", "source": "web", "text": ""})  # empty_after_tokenize
  files[1].append({"id": "00000000000000bb", "text": "no source"})  # no_source
  files[2].append({"id": "00000000000000cc", "source": "my-site.org", "text": "a sanitised task name"})
  # One id three times in three files: two sources, two lengths; another twice, identical.
  files[0].append({"id": "dup0", "source": "web", "text": "short"})
  files[1].append({"id": "dup0", "source": "web", "text": "a longer text under the same id"})
  files[2].append({"id": "dup0", "source": "docs", "text": "the same id in another source"})
  files[1].append({"id": "dup1", "source": "web", "text": "an identical copy"})
  files[2].append({"id": "dup1", "source": "web", "text": "an identical copy"})
  files[0].append({"id": "dup2", "source": "web", "text": "dog"})  # Equal id, source and
  files[2].append({"id": "dup2", "source": "web", "text": "cat"})  # (maybe) length: bytes decide.
  for i, doc_id in enumerate(_same_shard_prefix_ids()):
    files[i % NUM_INPUT_FILES].append({"id": doc_id, "source": "web", "text": f"prefix id {i}"})
  return files


def write_input(path, files: list[list[dict]], extra_lines=(BROKEN_LINE,)) -> str:
  """A stage directory with one shard per list (sorted by id, as a stage writes), the
  ``extra_lines`` in shard 1, a ``stats.json`` that counts every line and ``_SUCCESS``."""
  os.makedirs(path)
  lines = 0
  for i, docs in enumerate(files):
    rows = [common.encode_row(doc) for doc in docs]
    with open(common.shard_path(str(path), common.DOCS_PREFIX, i, len(files)), "w") as f:
      for _, line in sorted(rows):
        f.write(line + "\n")
      for line in extra_lines if i == 1 else ():
        f.write(line + "\n")
    lines += len(rows) + (len(extra_lines) if i == 1 else 0)
  common.write_stats(str(path), common.make_stats("test", [("in", lines), ("kept", lines)]))
  open(os.path.join(path, common.SUCCESS_MARKER), "w").close()
  return str(path)


def argv(input_dir, tokenizer_path, output_dir, *flags):
  return [f"--input={input_dir}", f"--tokenizer={tokenizer_path}", f"--output_dir={output_dir}",
          f"--num_shards={NUM_SHARDS}", f"--validation_fraction={VALIDATION_FRACTION}",
          "--batch_size=16", *flags]


def output_files(directory) -> dict[str, bytes]:
  """Every file under ``directory``, by relative path."""
  directory = str(directory)
  return {os.path.relpath(path, directory): open(path, "rb").read()
          for path in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
          if os.path.isfile(path)}


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokenizer")
  train(write_stage_dir(root / "dedupe", make_docs(60)), root / "tok")
  return str(root / "tok" / "tokenizer.model")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_path):
  """The input, and the job's output in each layout: ``(input_dir, {layout: output_dir})``."""
  root = tmp_path_factory.mktemp("tokenize_layouts")
  input_dir = write_input(root / "dedupe", input_files())
  outputs = {}
  for layout in common.SHARD_LAYOUTS:
    outputs[layout] = str(root / layout)
    tokenize.main(argv(input_dir, tokenizer_path, outputs[layout], f"--shard_layout={layout}"))
  return input_dir, outputs


def test_per_input_cache_is_byte_identical_to_the_default_layout(runs):
  _, outputs = runs
  default, per_input = (output_files(outputs[layout]) for layout in common.SHARD_LAYOUTS)
  assert sorted(per_input) == sorted(default)
  assert [name for name in default if per_input[name] != default[name]] == []
  # What the comparison covers: every kind of file of the cache, rejects and stats included.
  tasks_written = sorted(os.listdir(os.path.join(outputs[common.PER_INPUT], tokenize.CACHE_DIR)))
  assert tasks_written == ["gf_docs", "gf_my_site_org", "gf_web"]
  for name in ("_SUCCESS", "tokenizer.model", "sources.json", "stats.json",
               "rejects/rejects-00000-of-00001.jsonl", "cache/gf_web/COMPLETED",
               "cache/gf_web/info.validation.json", "cache/gf_web/stats.train.json"):
    assert name in per_input, name
  assert not [name for name in per_input if "spill" in name]
  assert not glob.glob(outputs[common.PER_INPUT] + ".tmp-*")  # The spill files went with it.


def test_the_cache_holds_every_case_of_the_input(runs, tokenizer_path):
  """The byte comparison above is only as good as its input: check the input's cases are there."""
  _, outputs = runs
  out = outputs[common.PER_INPUT]
  stats = common.read_stats(out)
  in_docs = sum(len(docs) for docs in input_files())
  assert stats["in"] == in_docs + 1
  assert stats["dropped"] == {"bad_json": 1, "empty_after_tokenize": 1, "no_source": 1}
  assert stats["kept"] == stats["train_documents"] + stats["validation_documents"] == in_docs - 2
  assert stats["validation_documents"] > 0
  sources = json.loads(open(os.path.join(out, tokenize.SOURCES_FILE)).read())["sources"]
  site = sources["my-site.org"]["splits"]
  assert site["train"]["documents"] + site["validation"]["documents"] == 1  # So shards are empty.
  empty = [path for path in glob.glob(os.path.join(out, "cache", "*", "*.tfrecord-*"))
           if os.path.getsize(path) == 0]
  assert len(empty) >= NUM_SHARDS
  # Duplicate and prefix ids come out in ``sorted`` order of the (id, source, tokens, Example)
  # tuples, which is what the default layout writes.
  sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
  expected = {}
  for docs in input_files():
    for doc in docs:
      tokens = sp.encode(doc["text"])
      if doc.get("source") and tokens:
        key = (tokenize.task_name(doc["source"]), tokenize.assign_split(doc["id"], VALIDATION_FRACTION))
        expected.setdefault(key, []).append(
            (doc["id"], doc["source"], len(tokens), tokenize.to_example(doc["id"], tokens)))
  seen_dup0 = 0
  for (task, split), records in expected.items():
    num_shards = NUM_SHARDS if split == "train" else 1
    for shard in range(num_shards):
      mine = sorted(r for r in records if tokenize.assign_shard(r[0], num_shards) == shard)
      path = tokenize.cache_file(os.path.join(out, "cache", task), split, shard, num_shards)
      assert list(_tfrecords(path)) == [example for *_, example in mine], path
      seen_dup0 += sum(r[0] == "dup0" for r in mine)
  assert seen_dup0 == 3


def _tfrecords(path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return (bytes(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator())


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_per_input_output_is_byte_identical_across_runs_and_runners(runs, tokenizer_path, tmp_path,
                                                                    runner):
  input_dir, outputs = runs
  out = tmp_path / "data"
  tokenize.main(argv(input_dir, tokenizer_path, out, *PER_INPUT, *RUNNERS[runner]))
  reference = output_files(outputs[common.BY_SIZE])
  mine = output_files(out)
  assert sorted(mine) == sorted(reference)
  assert [name for name in reference if mine[name] != reference[name]] == []
  shutil.rmtree(tmp_path, ignore_errors=True)


def test_seqio_reads_the_per_input_cache(runs, tokenizer_path):
  _, outputs = runs
  sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
  names = tasks.register_data_dir(outputs[common.PER_INPUT])
  assert names == ["gf_docs", "gf_my_site_org", "gf_web"]
  expected = {}
  for docs in input_files():
    for doc in docs:
      if doc.get("source") == "web" and doc["text"]:
        split = tokenize.assign_split(doc["id"], VALIDATION_FRACTION)
        expected.setdefault(split, []).append(sp.encode(doc["text"]))
  for split in tokenize.SPLITS:
    # Long enough for every document to be one chunk, ended by EOS.
    ds = seqio.get_mixture_or_task("gf_web").get_dataset(
        {"targets": 1024}, split=split, use_cached=True, shuffle=False)
    got = sorted(ex["targets"].tolist()[:-1] for ex in ds.as_numpy_iterator())  # Less the EOS.
    assert got == sorted(expected[split]), split


def test_a_missing_input_shard_is_a_clear_error(runs, tokenizer_path, tmp_path):
  input_dir, _ = runs
  broken = copy_without_shard(input_dir, tmp_path / "in", 1, NUM_INPUT_FILES)
  with pytest.raises(common.StageError, match=r"1 shard\(s\) missing: .*docs-00001-of-00003"):
    tokenize.main(argv(broken, tokenizer_path, tmp_path / "out", *PER_INPUT))
  assert not os.path.exists(tmp_path / "out")


def test_a_truncated_input_shard_is_a_clear_error(runs, tokenizer_path, tmp_path):
  input_dir, _ = runs
  broken = copy_with_truncated_shard(input_dir, tmp_path / "in", 2, NUM_INPUT_FILES, lines_lost=3)
  with pytest.raises(Exception, match="truncated"):
    tokenize.main(argv(broken, tokenizer_path, tmp_path / "out", *PER_INPUT))
  assert not os.path.exists(tmp_path / "out")
  assert not glob.glob(str(tmp_path / "out") + ".tmp-*")


def _spill_inputs(runs, tokenizer_path, spill_dir) -> tuple[dict[str, int], list[tuple[int, str]]]:
  """Step 1 run by hand on every input file: the shard counts and its (partition, path) outputs."""
  input_dir, _ = runs
  shards = {"train": NUM_SHARDS, "validation": 1}
  model_proto = open(tokenizer_path, "rb").read()
  encode = tokenize.EncodeDocs(model_proto, VALIDATION_FRACTION, shards, num_threads=1)
  files = common.stage_input_files(input_dir)
  os.makedirs(spill_dir)
  dofn = tokenize_shardwise.SpillInputFile(encode, shards, str(spill_dir), len(files), 16)
  dofn.setup()
  held = [out for i, path in enumerate(files) for out in dofn.process((i, path))
          if not hasattr(out, "tag")]
  return shards, held


def test_a_truncated_or_missing_spill_file_is_a_spill_error(runs, tokenizer_path, tmp_path):
  shards, held = _spill_inputs(runs, tokenizer_path, tmp_path / "spill")
  partition = tokenize_shardwise.partition_of("train", 0, shards)
  paths = sorted(path for p, path in held if p == partition)
  assert len(paths) == NUM_INPUT_FILES  # Every input file has documents for train shard 0.
  cache_dir = str(tmp_path / "cache")
  merge = tokenize_shardwise.MergePartition(cache_dir, str(tmp_path / "rejects"), shards)
  with open(paths[1], "r+b") as f:
    f.truncate(os.path.getsize(paths[1]) - 5)
  with pytest.raises(spill.SpillError, match="truncated"):
    list(merge.process((partition, paths)))
  assert not glob.glob(os.path.join(cache_dir, "*", "train.tfrecord-*"))  # No short shard.
  os.remove(paths[2])
  os.remove(paths[2] + spill.INDEX_SUFFIX)
  with pytest.raises(spill.SpillError, match="missing"):
    list(merge.process((partition, [paths[0], paths[2]])))


def test_merged_partition_writes_what_the_default_writer_writes(runs, tokenizer_path, tmp_path):
  """Step 2 run by hand on one partition gives WriteShard's counts for each task's shard."""
  _, outputs = runs
  shards, held = _spill_inputs(runs, tokenizer_path, tmp_path / "spill")
  partition = tokenize_shardwise.partition_of("train", 1, shards)
  cache_dir = str(tmp_path / "cache")
  merge = tokenize_shardwise.MergePartition(cache_dir, str(tmp_path / "rejects"), shards)
  written = list(merge.process((partition, [path for p, path in held if p == partition] + [None])))
  assert sorted(task for task, _ in written) == [task for task, _ in written]
  assert {task for task, _ in written} >= {"gf_docs", "gf_web"}
  sources = json.loads(open(os.path.join(outputs[common.BY_SIZE], tokenize.SOURCES_FILE)).read())
  for task, counts in written:
    assert counts["split"] == "train" and counts["shard"] == 1
    path = tokenize.cache_file(os.path.join(cache_dir, task), "train", 1, NUM_SHARDS)
    reference = tokenize.cache_file(os.path.join(outputs[common.BY_SIZE], "cache", task), "train",
                                    1, NUM_SHARDS)
    assert open(path, "rb").read() == open(reference, "rb").read()
    [source] = counts["sources"]
    assert counts["tokens"] <= sources["sources"][source]["splits"]["train"]["max_shard_tokens"]


def test_write_shard_refuses_records_out_of_order(tmp_path):
  records = [("b", "web", 1, b"x"), ("a", "web", 1, b"y")]
  with pytest.raises(common.StageError, match="out of the shard's order"):
    tokenize.write_shard(str(tmp_path), "gf_web", "train", 0, 1, records)
  counts = tokenize.write_shard(str(tmp_path), "gf_web", "train", 0, 1, sorted(records))
  assert counts == {"sources": ["web"], "split": "train", "shard": 0, "documents": 2, "tokens": 2,
                    "max_tokens": 1, "chunks": tokenize.count_chunks([1, 1])}


_texts = st.text(alphabet=st.sampled_from(["\x00", "\x01", "\x02", "a", "b", "\u00e9", "\U0001f600"]),
                 max_size=4)
_records = st.tuples(_texts, _texts, st.integers(0, 2**40), st.binary(max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.lists(_records, max_size=12), st.sampled_from(["gf_a", "gf_ab", "gf_b"]))
def test_spill_encoding_sorts_as_the_shard_tuples(records, task):
  """The one ordering rule: sorting the spill (key, value) bytes gives ``sorted``'s tuple order,
  for duplicate ids, prefixes, NUL and the escape byte; decoding gives the tuples back."""
  encoded = [(tokenize_shardwise.encode_key(task, doc_id),
              tokenize_shardwise.encode_value(source, num_tokens, example))
             for doc_id, source, num_tokens, example in records]
  decoded = [(tokenize_shardwise.decode_key(key)[1], *tokenize_shardwise.decode_value(value))
             for key, value in sorted(encoded)]
  assert decoded == sorted(records)
  assert {tokenize_shardwise.decode_key(key)[0] for key, _ in encoded} <= {task}


def test_spill_keys_sort_tasks_apart():
  keys = sorted([tokenize_shardwise.encode_key("gf_ab", "a"), tokenize_shardwise.encode_key("gf_a", "z"),
                 tokenize_shardwise.encode_key("gf_a", "\x00")])
  assert [tokenize_shardwise.decode_key(k) for k in keys] == [("gf_a", "\x00"), ("gf_a", "z"),
                                                               ("gf_ab", "a")]


def test_an_input_without_rejects_still_gets_its_empty_rejects_shard(tokenizer_path, tmp_path):
  input_dir = write_input(tmp_path / "in", [make_docs(8, seed=1), make_docs(8, seed=2)],
                          extra_lines=())
  out = tmp_path / "out"
  stats = tokenize.main(argv(input_dir, tokenizer_path, out, *PER_INPUT))
  assert stats["in"] == stats["kept"] == 16 and stats["dropped"] == {}
  assert (out / "rejects" / "rejects-00000-of-00001.jsonl").read_bytes() == b""


def test_colliding_task_names_fail_the_per_input_job(tokenizer_path, tmp_path):
  input_dir = write_input(tmp_path / "in", [make_docs(6, sources=("a-b", "a.b"))], extra_lines=())
  with pytest.raises(Exception, match="gf_a_b"):
    tokenize.main(argv(input_dir, tokenizer_path, tmp_path / "out", *PER_INPUT))
  assert not os.path.exists(tmp_path / "out")


def test_shard_counts_from_the_data_are_the_same_in_both_layouts(tokenizer_path, tmp_path):
  """A small --target_shard_bytes and no counts: train, validation and rejects shards all come
  from the data, several of each, and both layouts write the same files, byte for byte (the
  per-input rejects writer streams its merge into every rejects shard at once)."""
  files = [make_docs(20, seed=seed) for seed in (4, 5)]
  for i, docs in enumerate(files):
    docs += [{"id": f"nosource{i}-{j}", "text": doc["text"]}
             for j, doc in enumerate(make_docs(6, seed=10 + i))]
  input_dir = write_input(tmp_path / "in", files)
  outputs = {}
  for layout in common.SHARD_LAYOUTS:
    tokenize.main(argv(input_dir, tokenizer_path, tmp_path / layout, "--num_shards=0",
                       "--target_shard_bytes=3000", "--shard_multiple=2", f"--shard_layout={layout}"))
    outputs[layout] = output_files(tmp_path / layout)
  default, per_input = outputs[common.BY_SIZE], outputs[common.PER_INPUT]
  assert sorted(per_input) == sorted(default)
  assert [name for name in default if per_input[name] != default[name]] == []
  counts = json.loads(default[tokenize.SOURCES_FILE])["num_shards"]
  assert counts["train"] % 2 == 0 and counts["validation"] >= 2
  rejects = sorted(name for name in default if name.startswith("rejects/"))
  assert len(rejects) >= 2 and rejects[-1].endswith(f"-of-{len(rejects):05d}.jsonl")
  lines = [json.loads(line) for name in rejects for line in default[name].decode().splitlines()]
  no_source = [f"nosource{i}-{j}" for i in range(2) for j in range(6)]
  assert sorted(r["id"] for r in lines) == sorted(["", *no_source])  # "": the broken line.


def test_the_rejects_writers_refuse_what_would_give_other_bytes(tmp_path):
  """Rows out of (id, line) order, or a rejects partition without the bytes its count comes from,
  fail the job instead of writing shards the default layout would not."""
  with pytest.raises(common.StageError, match=r"out of \(id, line\) order"):
    common.write_merged_rows(str(tmp_path / "r"), common.REJECTS_TAG, 2, [("b", b"{}"), ("a", b"{}")])
  shards = {"train": 1, "validation": 1}
  merge = tokenize_shardwise.MergePartition(str(tmp_path / "c"), str(tmp_path / "r"), shards)
  with pytest.raises(common.StageError, match="rejects' bytes"):
    list(merge.process((tokenize_shardwise.rejects_partition(shards), [None])))
