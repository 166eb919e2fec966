"""Spill files: one worker's records, partitioned and sorted, in one file, read back a partition at
a time.

Why: a global step (dedupe's buckets, tokenize's shards) needs every record of a key together.
Beam's local runner holds a GroupByKey's whole input in memory, so the per-input layout
(pipelines/shardwise.py) does the shuffle through files instead, as datatrove's MinHash steps do:
each input file's DoFn call writes *one* spill file holding its records sorted by
``(partition, key, value)``, with an index of each partition's byte range; then one DoFn call per
partition reads that range from every spill file and merges them (:func:`merge_partition`, a
streaming k-way merge), so a worker holds one input file's records, or one partition's, never all.
One file per writer, not one per (writer, partition): an object store would otherwise hold
writers x partitions small files.

Format (``<path>``): records ``uint32 key length, uint32 value length, key, value`` (big-endian),
partition by partition in increasing order. ``<path>.index.json``, written after the data (so a
spill file without one is unfinished): ``{"bytes", "records", "partitions": {p: [offset, length,
records]}}``. A reader checks the data file's size and each range's record count against it, so a
missing, truncated or replaced spill file is a :class:`SpillError`, not a silently short partition.
"""

from __future__ import annotations

import heapq
import json
import struct
from typing import Iterable, Iterator, Sequence

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

_HEADER = struct.Struct(">II")
INDEX_SUFFIX = ".index.json"


class SpillError(RuntimeError):
  """A spill file is missing, unfinished or does not match its index."""


Row = tuple[int, bytes, bytes]  # (partition, key, value)


def write(path: str, rows: list[Row]) -> dict:
  """Writes ``rows`` sorted by (partition, key, value) and their index; returns the index.

  ``rows`` is sorted in place: the caller holds one input file's rows, the one copy in memory.
  """
  rows.sort()
  partitions: dict[str, list[int]] = {}
  offset = 0
  with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    for partition, key, value in rows:
      if not isinstance(partition, int) or partition < 0:
        raise SpillError(f"{path}: partition must be a non-negative int, got {partition!r}")
      record = _HEADER.pack(len(key), len(value)) + key + value
      f.write(record)
      entry = partitions.setdefault(str(partition), [offset, 0, 0])
      entry[1] += len(record)
      entry[2] += 1
      offset += len(record)
  index = {"bytes": offset, "records": len(rows), "partitions": partitions}
  with FileSystems.create(path + INDEX_SUFFIX, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(json.dumps(index, sort_keys=True).encode("utf-8"))
  return index


def read_index(path: str) -> dict:
  index_path = path + INDEX_SUFFIX
  if not FileSystems.exists(index_path):
    raise SpillError(f"{path}: no {INDEX_SUFFIX} (the spill file is missing or unfinished).")
  with FileSystems.open(index_path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    try:
      index = json.loads(f.read().decode("utf-8"))
      size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    except (ValueError, IndexError, OSError, BeamIOError) as e:
      raise SpillError(f"{path}: unreadable spill file or index: {type(e).__name__}: {e}") from None
  if size != index.get("bytes"):
    raise SpillError(f"{path}: {size} bytes, its index says {index.get('bytes')} (truncated or "
                     "replaced).")
  return index


def read_partition(path: str, partition: int, index: dict | None = None) -> Iterator[tuple[bytes, bytes]]:
  """The ``(key, value)`` records of one partition of a spill file, in sorted order, streamed."""
  index = read_index(path) if index is None else index
  entry = index["partitions"].get(str(partition))
  if entry is None:
    return
  offset, length, expected = entry
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.seek(offset)
    remaining, count = length, 0
    while remaining > 0:
      header = f.read(_HEADER.size)
      if len(header) < _HEADER.size:
        break
      key_len, value_len = _HEADER.unpack(header)
      key, value = f.read(key_len), f.read(value_len)
      if len(key) < key_len or len(value) < value_len:
        break
      remaining -= _HEADER.size + key_len + value_len
      count += 1
      yield key, value
  if remaining != 0 or count != expected:
    raise SpillError(f"{path}: partition {partition} gave {count} records in {length - remaining} "
                     f"bytes, its index says {expected} in {length}.")


def merge_partition(paths: Sequence[str], partition: int) -> Iterator[tuple[bytes, bytes]]:
  """One partition of every spill file in ``paths``, merged in (key, value) order, streamed: the
  whole partition is never held, only one buffered reader per file."""
  indexes = [read_index(path) for path in paths]  # Every file checked before anything is read.
  return heapq.merge(*(read_partition(path, partition, index) for path, index in zip(paths, indexes)))


def encode_text(text: str) -> bytes:
  """A string as bytes that sort as the strings do, whatever follows them: its UTF-8 (byte order is
  code point order) with NUL escaped as ``00 01`` and ended by ``00 00``, so that
  ``encode_text(a) + x < encode_text(b) + y`` whenever ``a < b``. The merge compares keys and
  values as bytes, so a tuple encoded field by field this way sorts as the tuple does."""
  return text.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\x01") + b"\x00\x00"


def decode_text(data: bytes, start: int = 0) -> tuple[str, int]:
  """The string :func:`encode_text` wrote at ``start``, and the offset after it."""
  parts, pos = [], start
  while True:
    nul = data.index(b"\x00", pos)
    parts.append(data[pos:nul])
    if data[nul + 1:nul + 2] == b"\x00":
      return b"\x00".join(parts).decode("utf-8", "surrogatepass"), nul + 2
    pos = nul + 2  # An escaped NUL.


def delete(paths: Iterable[str]) -> None:
  """Removes spill files and their indexes (those that exist)."""
  existing = [p for path in paths for p in (path, path + INDEX_SUFFIX) if FileSystems.exists(p)]
  if existing:
    FileSystems.delete(existing)
