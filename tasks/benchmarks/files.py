"""Reading benchmark files in the field layout of their public releases, with clear errors.

Each benchmark names the fields a record must have; a missing file, a line that is not JSON or a
record without a field is a ``BenchmarkDataError`` naming the file, the line and the field, raised
before any model work starts. Few-shot prompt files that are not records (BIG-Bench-Hard's
``cot-prompts/<task>.txt``, AGIEval's ``few_shot_prompts.csv``) are parsed here the same way.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
from typing import Any, Mapping, Sequence


class BenchmarkDataError(ValueError):
  """A benchmark file that is missing or not in its release's layout."""


def read_records(path: str, fields: Mapping[str, type | tuple[type, ...]],
                 records_key: str | None = None) -> list[dict[str, Any]]:
  """Records of a ``.jsonl`` file (one object a line) or a ``.json`` file (a list, or an object
  whose ``records_key`` holds the list, as BIG-Bench's ``{"examples": [...]}``)."""
  text = _read_text(path)
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
    check_fields(place, record, fields)
  if not records:
    raise BenchmarkDataError(f"{path}: no records")
  return records


def check_fields(place: str, record: Any, fields: Mapping[str, type | tuple[type, ...]]) -> None:
  """A record must be an object with every field, each of its type; ``place`` names file and line."""
  if not isinstance(record, dict):
    raise BenchmarkDataError(f"{place}: a record must be a JSON object, got {type(record).__name__}")
  for field, kind in fields.items():
    if field not in record:
      raise BenchmarkDataError(f"{place}: missing field {field!r} (expected fields: "
                               f"{sorted(fields)}; is this the right file for the benchmark?)")
    if not isinstance(record[field], kind):
      raise BenchmarkDataError(f"{place}: field {field!r} is {type(record[field]).__name__}, "
                               f"expected {_names(kind)}")


def _read_text(path: str) -> str:
  if not os.path.exists(path):
    raise BenchmarkDataError(f"benchmark file {path} does not exist")
  with open(path, encoding="utf-8") as f:
    return f.read()


BBH_COT_ANSWER = "\nA: Let's think step by step.\n"


def read_bbh_cot_prompts(path: str) -> tuple[str, list[dict[str, str]]]:
  """(task description, [{"input", "target"}]) of a BIG-Bench-Hard ``cot-prompts/<task>.txt``:
  an optional header ending in a ``-----`` line, the description, then blank-line separated
  ``Q: <input>\nA: Let's think step by step.\n<chain of thought>`` exemplars (the parse of
  lm-eval's ``bbh/_generate_configs.py``); the chain of thought is the exemplar's target."""
  prompt = _read_text(path).split("\n-----\n")[-1].strip("\n")
  description, *shots = prompt.split("\n\n")
  records = []
  for number, shot in enumerate(shots, 1):
    if not shot.startswith("Q: ") or BBH_COT_ANSWER not in shot:
      raise BenchmarkDataError(f"{path}: exemplar {number} is not 'Q: <input>{BBH_COT_ANSWER!r}"
                               "<chain of thought>' (is this a cot-prompts file?)")
    question, target = shot[len("Q: "):].split(BBH_COT_ANSWER, 1)
    records.append({"input": question, "target": target})
  if not records:
    raise BenchmarkDataError(f"{path}: no exemplars after the description")
  return description, records


AGIEVAL_CONTEXT_ROWS = (1, 3, 5, 7, 9)  # The rows of few_shot_prompts.csv that hold examples.


def read_agieval_fewshot(path: str, column: str, fields: Mapping[str, type | tuple[type, ...]]
                         ) -> list[dict[str, Any]]:
  """The demonstrations of one task from AGIEval's ``few_shot_prompts.csv``: a header of task
  names, then rows alternating an example (a Python dict literal) and its explanation; the
  example rows are read, as AGIEval's ``dataset_loader.combine_prompt`` reads them."""
  rows = list(csv.reader(io.StringIO(_read_text(path))))
  if not rows or column not in rows[0]:
    raise BenchmarkDataError(f"{path}: no column {column!r} (columns: {rows[0] if rows else []}; "
                             "is this AGIEval's few_shot_prompts.csv?)")
  index = rows[0].index(column)
  records = []
  for row_number in AGIEVAL_CONTEXT_ROWS:
    cell = rows[row_number][index] if row_number < len(rows) and index < len(rows[row_number]) else ""
    if not cell.strip():
      continue
    place = f"{path} row {row_number} column {column!r}"
    try:
      record = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
      raise BenchmarkDataError(f"{place}: not a Python dict literal") from None
    check_fields(place, record, fields)
    records.append(record)
  if not records:
    raise BenchmarkDataError(f"{path}: column {column!r} has no examples")
  return records


def _names(kind) -> str:
  kinds: Sequence[type] = kind if isinstance(kind, tuple) else (kind,)
  return " or ".join(k.__name__ for k in kinds)
