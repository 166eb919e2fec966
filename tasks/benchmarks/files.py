"""Reading benchmark files in the field layout of their public releases, with clear errors.

Each benchmark names the fields a record must have; a missing file, a line that is not JSON or a
record without a field is a ``BenchmarkDataError`` naming the file, the line and the field, raised
before any model work starts.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence


class BenchmarkDataError(ValueError):
  """A benchmark file that is missing or not in its release's layout."""


def read_records(path: str, fields: Mapping[str, type | tuple[type, ...]],
                 records_key: str | None = None) -> list[dict[str, Any]]:
  """Records of a ``.jsonl`` file (one object a line) or a ``.json`` file (a list, or an object
  whose ``records_key`` holds the list, as BIG-Bench's ``{"examples": [...]}``)."""
  if not os.path.exists(path):
    raise BenchmarkDataError(f"benchmark file {path} does not exist")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if path.endswith(".jsonl"):
    records = []
    for number, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise BenchmarkDataError(f"{path}:{number}: not a JSON line ({e.msg})") from None
    where = [f"{path}:{i}" for i in range(1, len(records) + 1)]
  else:
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise BenchmarkDataError(f"{path}: not JSON ({e.msg})") from None
    if records_key is not None:
      if not isinstance(data, dict) or records_key not in data:
        raise BenchmarkDataError(f"{path}: expected an object with a {records_key!r} list")
      data = data[records_key]
    if not isinstance(data, list):
      raise BenchmarkDataError(f"{path}: expected a list of records")
    records = data
    where = [f"{path} record {i}" for i in range(len(records))]
  for place, record in zip(where, records):
    if not isinstance(record, dict):
      raise BenchmarkDataError(f"{place}: a record must be a JSON object, got {type(record).__name__}")
    for field, kind in fields.items():
      if field not in record:
        raise BenchmarkDataError(f"{place}: missing field {field!r} (expected fields: "
                                 f"{sorted(fields)}; is this the right file for the benchmark?)")
      if not isinstance(record[field], kind):
        raise BenchmarkDataError(f"{place}: field {field!r} is {type(record[field]).__name__}, "
                                 f"expected {_names(kind)}")
  if not records:
    raise BenchmarkDataError(f"{path}: no records")
  return records


def _names(kind) -> str:
  kinds: Sequence[type] = kind if isinstance(kind, tuple) else (kind,)
  return " or ".join(k.__name__ for k in kinds)
