"""Smoke tests of benchmarks/pipeline_throughput.py on a tiny input (50 documents)."""

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import pipeline_throughput as bench
from pipelines import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXTS = [
    "The library reads the configuration file when the program starts.\n"
    "Each section of the file names one service and the port that it listens on.\n"
    "Write to admin.team@mailbox.org if the server at 8.8.4.4 stops answering.\n"
    "The values are checked before the service is started, so a typo is found early.\n"
    "Errors are written to the log with the line of the file that caused them.",
    "Gardeners have grown tomatoes on this hill for more than a hundred years.\n"
    "The soil is light and it drains well after the spring rain.\n"
    "Most of the plants are sold at the market in the town below the hill.\n"
    "Visitors can walk between the rows and ask the growers about their work.\n"
    "Questions about the tours go to tours@hillfarm.net and are answered within a week.",
    "short menu\nhome\nabout\ncontact",
]


def _write_stage_dir(path):
  os.makedirs(path)
  with open(common.shard_path(path, common.DOCS_PREFIX, 0, 1), "w", encoding="utf-8") as f:
    for i, text in enumerate(TEXTS):
      f.write(common.dumps({"id": f"{i:016x}", "text": text}) + "\n")
  open(os.path.join(path, common.SUCCESS_MARKER), "w").close()


def test_documents_are_deterministic_real_text():
  docs = list(bench.documents(TEXTS, 8, seed=0))
  assert len(docs) == 8
  assert docs[:3] == TEXTS  # The originals first, then shuffled copies.
  assert docs == list(bench.documents(TEXTS, 8, seed=0))
  for i, doc in enumerate(docs):
    assert sorted(doc.split("\n")) == sorted(TEXTS[i % 3].split("\n"))
  assert docs[3] != TEXTS[0]  # Five lines: the seeded shuffle moves some.


def test_read_texts_refuses_an_unfinished_directory(tmp_path):
  os.makedirs(tmp_path / "extract")
  with pytest.raises(common.StageError, match="_SUCCESS"):
    bench.read_texts(str(tmp_path / "extract"))


def test_prints_ratios_against_datatrove(tmp_path):
  pytest.importorskip("datatrove")
  input_dir = str(tmp_path / "extract")
  _write_stage_dir(input_dir)
  out_json = str(tmp_path / "result.json")
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.pipeline_throughput", "--num_docs=50",
       f"--input={input_dir}", f"--work_dir={tmp_path / 'work'}", f"--output_json={out_json}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out_json, encoding="utf-8") as f:
    summary = json.load(f)
  assert summary["num_docs"] == 50

  printed = {}
  for line in result.stdout.splitlines():
    m = re.match(r"(\S.*?)\s+([\d.]+)\s+([\d.]+|n/a)\s+([\d.]+x|n/a)$", line)
    if m:
      printed[m.group(1)] = m.groups()[1:]
  rows = {"quality", "pii", "minhash", "total (quality+pii+minhash)",
          "total (all 4 ours vs datatrove's 3)"}
  assert rows | {"toxicity"} <= set(printed), result.stdout
  assert printed["toxicity"][1:] == ("n/a", "n/a")  # datatrove has no toxicity step.
  for row in rows:
    ours, theirs, ratio = printed[row]
    assert float(ratio[:-1]) == pytest.approx(float(ours) / float(theirs), rel=0.02, abs=0.01)

  steps = summary["steps"]
  # Both sides saw the same documents: two of three texts carry an email, one has no sentences.
  assert steps["ours"]["pii"]["hits"] == steps["datatrove"]["pii"]["hits"] == 34
  assert steps["ours"]["minhash"]["hits"] == steps["datatrove"]["minhash"]["hits"] == 50
  assert steps["ours"]["quality"]["hits"] <= 34 and steps["datatrove"]["quality"]["hits"] <= 34
  # The all-steps total includes toxicity, so it can only be slower than the comparable one.
  totals = {r["row"]: r["ours"] for r in summary["rows"]}
  assert totals["total (all 4 ours vs datatrove's 3)"] < totals["total (quality+pii+minhash)"]
