"""Dedupe in the per-input layout (pipelines/dedupe_shardwise.py) against the default one.

The corpus is spread over four input files and holds every kind of group: planted near copies and
hard negatives (tests/test_dedupe.py), exact copies, copies of one id in different files (one pair
identical, one pair with different texts), documents without words, a hot key, a malformed line.
Both layouts must give the same stats.json and the same multisets of kept documents and of
rejects; the per-input one writes one kept and one rejects shard per input file, the same bytes
on every run and runner, and removes its spill files.
"""

import filecmp
import glob
import json
import os

import pytest
from hypothesis import given, strategies as st

from pipelines import common, dedupe, dedupe_shardwise, spill
from test_dedupe import BASE, MODULES, edit_words, make_doc, planted_corpus
from beam_runners import RUNNERS
from stage_dirs import copy_with_truncated_shard, copy_without_shard

NUM_FILES = 4
BROKEN_LINE = '{"id": "broken'
PER_INPUT = [f"--shard_layout={common.PER_INPUT}"]
# One id in two files with different texts: the first copy (dumps order: "CSV..." < "Heap...") is
# an exact copy of the csv original and wins its group (its URL is smaller); the second is an id
# copy, rejected, and must not enter the band buckets, where its small URL would win the heapq
# bucket and take the planted heapq near copy from its true winner.
SPLIT_ID = "0" * 15 + "y"
# Texts of their own (the words of a docstring reversed: other 5-grams), so that neither is a near
# copy of a planted original.
HOT = " ".join(reversed(BASE["statistics"].split()))
TWICE = " ".join(reversed(BASE["socket"].split()))


def one_id_two_groups(doc_id, texts, tag, larger_key_wins_larger_url):
  """An id with two copies of different texts, each an exact copy of a document with a smaller
  URL: two edges for one id, from two groups; the winner ``<tag>-p1`` (the smaller URL) is in
  the group whose exact hash is the larger or the smaller key, as asked (so neither the first nor
  the last edge in key order is always the smallest)."""
  low, high = sorted(texts, key=dedupe.exact_hash)
  small, large = f"https://0.example/{tag}-p1", f"https://0.example/{tag}-p2"
  urls = (small, large) if larger_key_wins_larger_url else (large, small)
  return [make_doc(f"{tag}-p1", small, low if urls[0] == small else high),
          make_doc(f"{tag}-p2", large, high if urls[0] == small else low),
          make_doc(doc_id, f"https://z.example/{tag}", low),
          make_doc(doc_id, f"https://z.example/{tag}", high)]


REVERSED = {m: " ".join(reversed(BASE[m].split())) for m in ("copy", "timeit", "doctest", "sched")}


def corpus() -> list[dict]:
  docs, _ = planted_corpus()
  (uuid,) = [d for d in docs if d["url"] == "https://a.example/uuid"]
  docs += [
      # Exact copies: one with a smaller URL (it wins), one with a larger.
      make_doc("f" * 16, "https://0.example/first", uuid["text"].upper().replace(".", " ; ")),
      make_doc("e" * 16, "https://z.example/last", uuid["text"] + "  "),
      # The same document twice (one id, one text), in two files.
      make_doc("1" * 16, "https://d.example/twice", TWICE),
      make_doc("1" * 16, "https://d.example/twice", TWICE),
      make_doc(SPLIT_ID, "https://0.example/y", BASE["csv"]),
      make_doc(SPLIT_ID, "https://0.example/y", BASE["heapq"] + " Copied from the docs."),
      # Without words: one exact group, no band members.
      make_doc("2" * 16, "https://w.example/b", ""),
      make_doc("3" * 16, "https://w.example/a", "!!! ... ???"),
      make_doc("4" * 16, "https://w.example/c", "   "),
      # A near copy of the hot key's text.
      make_doc("5" * 16, "https://h.example/near", edit_words(HOT, 80)),
  ]
  docs += one_id_two_groups("9" * 16, (REVERSED["copy"], REVERSED["timeit"]), "z1", True)
  docs += one_id_two_groups("9" * 15 + "a", (REVERSED["doctest"], REVERSED["sched"]), "z2", False)
  docs += [make_doc(f"{0x600 + i:016x}", f"https://h.example/{(i * 7919) % 60:04d}", HOT)
           for i in range(60)]
  return docs


def write_input(path, docs, extra_lines=(BROKEN_LINE,)) -> str:
  """A finished stage directory of NUM_FILES shards, documents dealt round-robin (so copies of one
  id land in different files), each shard sorted by id, the extra lines in shard 0."""
  os.makedirs(path)
  shards = [docs[i::NUM_FILES] for i in range(NUM_FILES)]
  for i, shard in enumerate(shards):
    lines = [common.dumps(d) for d in sorted(shard, key=lambda d: d["id"])]
    lines += list(extra_lines) if i == 0 else []
    with open(common.shard_path(str(path), common.DOCS_PREFIX, i, NUM_FILES), "w") as f:
      f.writelines(line + "\n" for line in lines)
  n = len(docs) + len(extra_lines)
  common.write_stats(str(path), common.make_stats("test", [("in", n), ("kept", n)]))
  open(os.path.join(path, common.SUCCESS_MARKER), "w").close()
  return str(path)


@pytest.fixture(scope="module")
def doc_input(tmp_path_factory):
  docs = corpus()
  ids = {}
  for i, d in enumerate(docs):
    ids.setdefault(d["id"], set()).add(i % NUM_FILES)
  for doc_id in (SPLIT_ID, "1" * 16, "9" * 16, "9" * 15 + "a"):
    assert len(ids[doc_id]) == 2, doc_id  # Copies of one id in two files.
  return write_input(tmp_path_factory.mktemp("dedupe") / "in", docs)


@pytest.fixture(scope="module")
def reference(doc_input, tmp_path_factory):
  """The per-input run with the default flags and 3 buckets, which the other tests compare with."""
  out = str(tmp_path_factory.mktemp("reference") / "out")
  dedupe.main([f"--input={doc_input}", f"--output_dir={out}", "--num_buckets=3", *PER_INPUT])
  return out


def _shards(directory, pattern):
  return sorted(glob.glob(os.path.join(directory, pattern)))


def _lines(paths):
  return sorted(line for path in paths for line in open(path, encoding="utf-8").read().splitlines())


def _files(directory):
  return sorted(os.path.relpath(os.path.join(d, name), directory)
                for d, _, names in os.walk(directory) for name in names)


def _records(directory, pattern):
  return [json.loads(line) for line in _lines(_shards(directory, pattern))]


def _assert_same_as_default(doc_input, per_input, flags, tmp_path):
  default = str(tmp_path / "by_size")
  dedupe.main([f"--input={doc_input}", f"--output_dir={default}", *flags])
  assert common.read_stats(per_input) == common.read_stats(default)
  for prefix, pattern in ((common.DOCS_PREFIX, "docs-*.jsonl"),
                          (common.REJECTS_TAG, "rejects/rejects-*.jsonl")):
    shards = _shards(per_input, pattern)
    assert [os.path.basename(p) for p in shards] == [
        os.path.basename(common.shard_path("", prefix, i, NUM_FILES)) for i in range(NUM_FILES)]
    assert _lines(shards) == _lines(_shards(default, pattern)), pattern
    for path in shards:
      ids = [json.loads(line)["id"] for line in open(path, encoding="utf-8")]
      assert ids == sorted(ids), path
  # Nothing but the stage's output: the spill files are gone.
  assert [f for f in _files(per_input) if not f.startswith(("docs-", "rejects/"))] == [
      common.SUCCESS_MARKER, common.STATS_FILE]
  assert not glob.glob(per_input + ".tmp-*")


def test_default_flags_match_the_default_layout(doc_input, reference, tmp_path):
  _assert_same_as_default(doc_input, reference, [], tmp_path)
  stats = common.read_stats(reference)
  assert stats["dropped"]["bad_json"] == 1
  rejects = {(r["id"], r["doc"].get("url")): r for r in _records(reference, "rejects/*.jsonl")}
  kept = {(d["id"], d["url"]) for d in _records(reference, "docs-*.jsonl")}
  # The id copy with the other text is an exact duplicate of its own id, and stayed out of the
  # band buckets: the heapq near copy is linked to the heapq original, not to it.
  assert rejects[SPLIT_ID, "https://0.example/y"]["details"] == {"duplicate_of": SPLIT_ID}
  heapq_original = f"{sorted(BASE).index('heapq'):016x}"
  assert rejects[f"{100 + MODULES.index('heapq'):016x}", "https://b.example/heapq"]["details"][
      "duplicate_of"] == heapq_original
  assert (heapq_original, "https://a.example/heapq") in kept
  # The csv original lost to the first copy of the split id (its URL is smaller).
  csv_original = f"{sorted(BASE).index('csv'):016x}"
  assert rejects[csv_original, "https://a.example/csv"]["details"] == {"duplicate_of": SPLIT_ID}
  # The hot key keeps its smallest (url, id); its near copy is linked to it.
  hot = [(f"{0x600 + i:016x}", f"https://h.example/{(i * 7919) % 60:04d}") for i in range(60)]
  winner = min(hot, key=lambda m: (m[1], m[0]))
  assert winner in kept and not set(hot) - {winner} & kept
  near_hot = rejects["5" * 16, "https://h.example/near"]["details"]
  assert near_hot["duplicate_of"] == winner[0] and near_hot["jaccard"] >= 0.8
  # Wordless: one exact group (smallest URL kept), nothing near; one copy of the twice-document.
  assert ("3" * 16, "https://w.example/a") in kept
  assert {rejects["2" * 16, "https://w.example/b"]["reason"],
          rejects["4" * 16, "https://w.example/c"]["reason"]} == {"exact_duplicate"}
  assert ("1" * 16, "https://d.example/twice") in kept
  assert rejects["1" * 16, "https://d.example/twice"]["details"] == {"duplicate_of": "1" * 16}
  # An id with two exact edges goes as a duplicate of the smaller one, whichever group it is in.
  for doc_id, tag in (("9" * 16, "z1"), ("9" * 15 + "a", "z2")):
    assert rejects[doc_id, f"https://z.example/{tag}"]["details"] == {"duplicate_of": f"{tag}-p1"}
    assert (f"{tag}-p1", f"https://0.example/{tag}-p1") in kept
  assert stats["dropped"]["exact_duplicate"] >= 60 and stats["dropped"]["near_duplicate"] >= 9


@pytest.mark.parametrize("flags", [
    ["--num_buckets=1"],
    ["--target_bucket_bytes=20000"],
    ["--exact=false"],
    ["--near=false", "--num_buckets=2"],
    ["--verify=false", "--num_buckets=2"],
    ["--exact=false", "--near=false"],
], ids=lambda flags: " ".join(flags))
def test_switches_and_bucket_counts_match_the_default_layout(doc_input, tmp_path, flags):
  per_input = str(tmp_path / "per_input")
  dedupe.main([f"--input={doc_input}", f"--output_dir={per_input}", *flags, *PER_INPUT])
  by_size_flags = [f for f in flags if not f.startswith(("--num_buckets", "--target_bucket"))]
  _assert_same_as_default(doc_input, per_input, by_size_flags, tmp_path)


def test_bucket_count_follows_the_input_size(doc_input):
  files = common.stage_input_files(doc_input)
  size = sum(os.path.getsize(p) for p in files)
  parse = lambda *flags: common.parse_stage_args("", ["--input=x", "--output_dir=y", *flags],
                                                 dedupe.add_args, per_input=True)[0]
  from_data = dedupe_shardwise.num_buckets(files, parse("--target_bucket_bytes=20000"))
  assert from_data == -(-size // 20000) > 1
  assert dedupe_shardwise.num_buckets(files, parse()) == 1
  assert dedupe_shardwise.num_buckets(files, parse("--num_buckets=7")) == 7
  with pytest.raises(common.StageError, match="--num_buckets"):
    dedupe_shardwise.num_buckets(files, parse("--num_buckets=-1"))


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_output_is_byte_identical_across_runs_and_runners(doc_input, reference, tmp_path, runner):
  out = str(tmp_path / "out")
  dedupe.main([f"--input={doc_input}", f"--output_dir={out}", "--num_buckets=3", *PER_INPUT,
               *RUNNERS[runner]])
  assert _files(out) == _files(reference)
  different = [f for f in _files(reference)
               if not filecmp.cmp(os.path.join(reference, f), os.path.join(out, f), shallow=False)]
  assert not different


def test_a_malformed_line_is_a_counted_reject_in_its_files_shard(reference):
  first = [json.loads(line) for line in open(_shards(reference, "rejects/*.jsonl")[0])]
  assert [r["doc"]["raw"] for r in first if r["reason"] == "bad_json"] == [BROKEN_LINE]
  stats = common.read_stats(reference)
  assert stats["in"] == len(corpus()) + 1 == stats["kept"] + stats["dropped_total"]


def test_a_missing_input_shard_is_a_clear_error(doc_input, tmp_path):
  broken = copy_without_shard(doc_input, tmp_path / "in", 1, NUM_FILES)
  with pytest.raises(common.StageError, match=r"1 shard\(s\) missing: .*docs-00001-of-00004"):
    dedupe.main([f"--input={broken}", f"--output_dir={tmp_path / 'out'}", *PER_INPUT])
  assert not os.path.exists(tmp_path / "out")


def test_a_truncated_input_shard_is_a_clear_error(doc_input, tmp_path):
  broken = copy_with_truncated_shard(doc_input, tmp_path / "in", 2, NUM_FILES)
  with pytest.raises(Exception, match="truncated"):
    dedupe.main([f"--input={broken}", f"--output_dir={tmp_path / 'out'}", *PER_INPUT])
  assert not os.path.exists(tmp_path / "out")
  assert not glob.glob(str(tmp_path / "out.tmp-*"))


def test_a_truncated_spill_file_fails_the_job(doc_input, tmp_path, monkeypatch):
  """A spill file cut short after its index was written (a lost write) is a SpillError in the
  step that reads it, never a short group."""
  real_write = spill.write
  truncated = []

  def write_then_truncate(path, rows):
    index = real_write(path, rows)
    if os.path.basename(path).startswith("exact-") and index["bytes"]:
      with open(path, "r+b") as f:
        f.truncate(index["bytes"] - 1)
      truncated.append(path)
    return index

  monkeypatch.setattr(spill, "write", write_then_truncate)
  with pytest.raises(spill.SpillError, match=r"exact-00000\.spill: .*truncated or replaced"):
    dedupe.main([f"--input={doc_input}", f"--output_dir={tmp_path / 'out'}", *PER_INPUT])
  assert truncated
  assert not os.path.exists(tmp_path / "out")


def test_flags_that_fix_a_shard_count_are_refused(doc_input, tmp_path):
  for flag in ("--num_shards=2", "--num_reject_shards=2"):
    with pytest.raises(common.StageError, match=flag.split("=")[0]):
      dedupe.main([f"--input={doc_input}", f"--output_dir={tmp_path / 'out'}", flag, *PER_INPUT])
  assert not os.path.exists(tmp_path / "out")


@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF,
                                               blacklist_categories=("Cs",)), max_size=6),
                min_size=2, max_size=2),
       st.lists(st.text(max_size=4), min_size=2, max_size=2))
def test_member_encoding_keeps_tuple_order(urls, ids):
  """Values are compared as bytes by the merge: (url, id) order must survive the encoding (NULs
  and prefixes included), and decoding gives the strings back."""
  # pylint: disable=protected-access
  a, b = (dedupe_shardwise._member(u, i, b"\x07") for u, i in zip(urls, ids))
  assert (a < b) == ((urls[0], ids[0]) < (urls[1], ids[1]))
  assert dedupe_shardwise._read_member(a) == (urls[0], ids[0], b"\x07")
