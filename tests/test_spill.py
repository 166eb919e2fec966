"""Spill files (pipelines/spill.py): what is written is what each partition reads back, in order;
a missing, unfinished or truncated file is an error, never a short partition."""

import os

import pytest
from hypothesis import given, settings, strategies as st

from pipelines import spill

rows_strategy = st.lists(
    st.tuples(st.integers(0, 6), st.binary(max_size=12), st.binary(max_size=40)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, more=rows_strategy)
def test_partitions_read_back_sorted_and_merge_across_files(tmp_path_factory, rows, more):
  directory = tmp_path_factory.mktemp("spill")
  paths = [str(directory / "a.spill"), str(directory / "b.spill")]
  spill.write(paths[0], list(rows))
  spill.write(paths[1], list(more))
  for partition in range(7):
    want = sorted((k, v) for p, k, v in rows if p == partition)
    assert list(spill.read_partition(paths[0], partition)) == want
    merged = sorted((k, v) for p, k, v in rows + more if p == partition)
    assert list(spill.merge_partition(paths, partition)) == merged
  assert spill.read_index(paths[0])["records"] == len(rows)


def test_missing_unfinished_and_truncated_files_are_errors(tmp_path):
  path = str(tmp_path / "x.spill")
  with pytest.raises(spill.SpillError, match="missing or unfinished"):
    list(spill.read_partition(path, 0))
  spill.write(path, [(0, b"k", b"v" * 100), (1, b"k2", b"w")])
  os.remove(path + spill.INDEX_SUFFIX)
  with pytest.raises(spill.SpillError, match="missing or unfinished"):
    list(spill.merge_partition([path], 0))
  spill.write(path, [(0, b"k", b"v" * 100), (1, b"k2", b"w")])
  with open(path, "r+b") as f:
    f.truncate(50)
  with pytest.raises(spill.SpillError, match="truncated"):
    list(spill.read_partition(path, 0))


def test_an_index_that_does_not_match_its_ranges_is_an_error(tmp_path):
  path = str(tmp_path / "x.spill")
  spill.write(path, [(0, b"a", b"1"), (0, b"b", b"2"), (3, b"c", b"3")])
  index = spill.read_index(path)
  index["partitions"]["0"][2] = 3  # One record more than the range holds.
  with pytest.raises(spill.SpillError, match="partition 0 gave 2 records"):
    list(spill.read_partition(path, 0, index))


def test_negative_partition_is_refused(tmp_path):
  with pytest.raises(spill.SpillError, match="non-negative"):
    spill.write(str(tmp_path / "x.spill"), [(-1, b"", b"")])


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.tuples(st.text(alphabet="\x00\x01ab\u00e9\U0001f600", max_size=5),
                                st.binary(max_size=3)), max_size=12))
def test_encoded_texts_sort_as_the_strings_whatever_follows(texts):
  encoded = sorted(spill.encode_text(t) + rest for t, rest in texts)
  decoded = [spill.decode_text(e) for e in encoded]
  assert [(t, e[end:]) for (t, end), e in zip(decoded, encoded)] == sorted(texts)
