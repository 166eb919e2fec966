"""Peak memory of the chat_data job at 1x, 10x and 100x data/chat, in both shard layouts.

    .venv/bin/python -m benchmarks.chat_data_memory [--scales=1,10,100] [--layouts=by_size,per_input]

The input at scale N is N copies of data/chat's instructions.jsonl and preferences.jsonl, one file
per copy (``<name>.<copy:05d>.jsonl``; the sources stay ``instructions`` and ``preferences``). Every
record gets the id ``<name>-<copy>-<line>``; in copies after the first its first user turn ends with
" (copy N)" (a different conversation), except every 10th line, which keeps copy 0's text and so is
an exact duplicate, in another file, of a record with a smaller id: the global dedupe has work at
every scale above 1. Each run is a fresh child process (`benchmarks.stage_memory.measure`: the
child's own peak RSS). The two layouts' outputs are compared file by file at every scale.

Writes benchmarks/results/chat_data_memory.json.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import sys
import tempfile

from benchmarks import harness
from benchmarks.stage_memory import measure

CHAT_FILES = ("instructions.jsonl", "preferences.jsonl")
DUPLICATE_EVERY = 10
RESULT = "benchmarks/results/chat_data_memory.json"


def _vary(record: dict, copy: int) -> dict:
  """The record with " (copy N)" after its first user turn."""
  record = json.loads(json.dumps(record))
  tag = f" (copy {copy})"
  if isinstance(record.get("prompt"), str):
    record["prompt"] += tag
  else:
    turns = record["prompt"] if "prompt" in record else record["messages"]
    next(t for t in turns if t["role"] == "user")["content"] += tag
  return record


def repeat_chat(out_dir: str, scale: int, chat_dir: str = "data/chat") -> str:
  """Writes the scale-N input (module docstring) under out_dir; returns its glob."""
  os.makedirs(out_dir)
  for name in CHAT_FILES:
    with open(os.path.join(chat_dir, name)) as f:
      records = [json.loads(line) for line in f]
    stem = name.split(".")[0]
    for copy in range(scale):
      with open(os.path.join(out_dir, f"{stem}.{copy:05d}.jsonl"), "w") as f:
        for i, record in enumerate(records):
          varied = record if copy == 0 or i % DUPLICATE_EVERY == 0 else _vary(record, copy)
          f.write(json.dumps({"id": f"{stem}-{copy:05d}-{i:05d}", **varied}) + "\n")
  return os.path.join(out_dir, "*.jsonl")


def _files(directory: str) -> dict[str, bytes]:
  return {os.path.relpath(p, directory): open(p, "rb").read()
          for p in glob.glob(directory + "/**/*", recursive=True) if os.path.isfile(p)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--scales", default="1,10,100")
  parser.add_argument("--layouts", default="by_size,per_input")
  args = parser.parse_args(argv)
  from tests import chat_fixtures  # The tests' chat tokenizer: data/chat's text, turn pieces.
  work = tempfile.mkdtemp(prefix="chat_data_memory_")
  tokenizer = chat_fixtures.train_chat_tokenizer(work)
  rows = []
  for scale in [int(s) for s in args.scales.split(",") if s]:
    inp = os.path.join(work, f"in-{scale}x")
    pattern = repeat_chat(inp, scale)
    input_bytes = sum(os.path.getsize(p) for p in glob.glob(pattern))
    outputs = {}
    for layout in args.layouts.split(","):
      out = os.path.join(work, f"out-{layout}-{scale}x")
      argv_ = ["pipelines.chat_data", f"--input={pattern}", f"--tokenizer={tokenizer}",
               f"--output_dir={out}", f"--shard_layout={layout}"]
      row = {"stage": "chat_data", "shard_layout": layout, "scale": scale, "input_files": len(glob.glob(pattern)),
             "input_bytes": input_bytes, **measure(argv_)}
      row["stats"] = json.load(open(os.path.join(out, "stats.json")))
      row["input_records"] = row["stats"]["in"]
      print(json.dumps(row), flush=True)
      rows.append(row)
      outputs[layout] = _files(out)
    if len(outputs) == 2:
      a, b = outputs.values()
      for row in rows[-2:]:
        row["outputs_identical_across_layouts"] = a == b
      if a != b:
        raise SystemExit(f"the layouts' outputs differ at scale {scale}")
    for d in (inp, *(os.path.join(work, f"out-{l}-{scale}x") for l in outputs)):
      shutil.rmtree(d, ignore_errors=True)
  shutil.rmtree(work, ignore_errors=True)
  result = {"benchmark": "chat_data_memory", "command": " ".join(["python -m benchmarks.chat_data_memory", *(argv or sys.argv[1:])]),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": harness.machine(), "rows": rows}
  with open(RESULT, "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)
    f.write("\n")
  return result


if __name__ == "__main__":
  main()
