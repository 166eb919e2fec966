"""Decontamination: pretraining documents overlapping an evaluation set are dropped and counted."""

import json

from pipelines import decontaminate
from stage_dirs import read_out, write_stage_dir

import eval_fixtures as ef


def _records(name, split):
  with open(f"{ef.BENCH_DIR}/{name}/{split}") as f:
    return [json.loads(line) for line in f if line.strip()]


def _docs():
  gsm = _records("gsm8k", "test.jsonl")[0]["question"]
  boolq = _records("boolq", "validation.jsonl")[1]["passage"]
  filler = "The weather in the valley was mild all week and the farmers were pleased with the rain."
  return [
      {"id": "a" * 16, "text": f"{filler}\nHomework help: {gsm.upper()} Answer below.", "source": "web"},
      {"id": "b" * 16, "text": f"Bird facts. {boolq} More soon.", "source": "web"},
      {"id": "c" * 16, "text": filler, "source": "web"},
      # One short shared phrase is not contamination: the answer "Paris" is everywhere.
      {"id": "d" * 16, "text": "Paris is the capital city of France and a large city.", "source": "web"},
  ]


def test_overlapping_documents_are_dropped_by_benchmark(tmp_path):
  stage = write_stage_dir(tmp_path / "in", _docs(), extra_lines=["not json"])
  out = tmp_path / "out"
  stats = decontaminate.main([f"--input={stage}", f"--output_dir={out}", "--num_shards=1"])
  kept, rejects = read_out(out)
  assert sorted(d["id"] for d in kept) == ["c" * 16, "d" * 16]
  reasons = {r["doc"].get("id") if isinstance(r["doc"], dict) else None: r["reason"] for r in rejects}
  assert reasons["a" * 16] == "contaminated.gsm8k" and reasons["b" * 16] == "contaminated.boolq"
  assert stats["in"] == 5 and stats["kept"] == 2 and stats["in"] == stats["kept"] + stats["dropped_total"]
  assert stats["dropped"]["contaminated.gsm8k"] == 1 and stats["dropped"]["contaminated.boolq"] == 1


def test_overlap_report_counts_examples_and_documents(tmp_path):
  stage = write_stage_dir(tmp_path / "in", _docs())
  report = decontaminate.main([f"--input={stage}", f"--output_dir={tmp_path / 'rep'}", "--report",
                               "--benchmarks=gsm8k,boolq,mmlu"])
  saved = json.loads((tmp_path / "rep" / "overlap.json").read_text())
  assert saved == report and report["documents"] == 4
  assert report["benchmarks"]["gsm8k"] == {"examples": 3, "contaminated_examples": 1,
                                           "contaminated_share": 1 / 3, "documents_overlapping": 1}
  assert report["benchmarks"]["boolq"]["contaminated_examples"] == 1
  assert report["benchmarks"]["mmlu"]["contaminated_examples"] == 0
