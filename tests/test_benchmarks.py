"""benchmarks/harness.py (the paired method's statistics and workers) and a smoke test of
benchmarks/pipeline_throughput.py on a tiny input (50 documents)."""

import json
import os
import statistics
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


def test_pipeline_benchmark_runs_both_sides_on_the_harness(tmp_path):
  pytest.importorskip("datatrove")
  input_dir = str(tmp_path / "extract")
  _write_stage_dir(input_dir)
  out_json = str(tmp_path / "result.json")
  committed = {f: os.path.getmtime(os.path.join(harness.RESULTS_DIR, f))
               for f in os.listdir(harness.RESULTS_DIR) if f.startswith("pipeline_")}
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.pipeline_throughput", "--num_docs=50", "--benchmarks=pii,total",
       "--smoke", "--pairs=2", "--warmup=1", f"--input={input_dir}", f"--work_dir={tmp_path / 'work'}",
       f"--output_json={out_json}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert committed == {f: os.path.getmtime(os.path.join(harness.RESULTS_DIR, f))  # --output_json: none written.
                       for f in os.listdir(harness.RESULTS_DIR) if f.startswith("pipeline_")}
  with open(out_json, encoding="utf-8") as f:
    summary = json.load(f)
  pii, total = summary["results"]["pii"], summary["results"]["total"]
  # Both sides saw the same 50 documents: two of three texts carry an email, one has no sentences.
  assert pii["counts"] == {"ours": {"docs": 50, "redacted": 34}, "datatrove": {"docs": 50, "redacted": 34}}
  counts = total["counts"]
  assert counts["ours"]["signed"] == counts["datatrove"]["signed"] == 50
  assert counts["ours"]["redacted"] == counts["datatrove"]["redacted"] == 34
  assert counts["ours"]["kept"] <= 34 and counts["datatrove"]["kept"] <= 34
  assert counts["ours[no toxicity]"] == {k: v for k, v in counts["ours"].items() if k != "toxic"}
  assert set(counts["ours[toxicity only]"]) == {"docs", "toxic"}
  for side in total["sides"].values():  # Every run of a side, warm-up included, counted the same.
    assert len(side["values"]) == 2 and all(v == side["values"][0] for v in side["warmup_values"] + side["values"])
  expected = [d / o for d, o in zip(total["sides"]["datatrove"]["cpu_s"], total["sides"]["ours"]["cpu_s"])]
  assert total["ratios"]["datatrove"]["cpu"]["per_pair"] == pytest.approx(expected)
  rows = {r["row"]: r for r in summary["rows"]}
  assert rows["toxicity"]["datatrove"] is None
  assert rows["pii"]["ours"] == pytest.approx(50 / statistics.median(pii["sides"]["ours"]["cpu_s"]))
  assert "datatrove/ours CPU per round" in result.stdout and "ratio pipeline_pii cpu ours/datatrove" in result.stdout


def test_pipeline_benchmark_refuses_sides_that_saw_different_documents():
  def result(**values):
    return {"benchmark": "b", "sides": {name: {"warmup_values": [v], "values": [v, v]} for name, v in values.items()}}

  ok = bench.check_counts(result(ours={"docs": 3, "signed": 3}, datatrove={"docs": 3, "signed": 3}), 3)
  assert ok == {"ours": {"docs": 3, "signed": 3}, "datatrove": {"docs": 3, "signed": 3}}
  with pytest.raises(SystemExit, match="signed different numbers"):
    bench.check_counts(result(ours={"docs": 3, "signed": 3}, datatrove={"docs": 3, "signed": 2}), 3)
  with pytest.raises(SystemExit, match="saw 2 documents, not 3"):
    bench.check_counts(result(ours={"docs": 2, "kept": 1}, datatrove={"docs": 3, "kept": 1}), 3)
  flaky = result(ours={"docs": 3, "kept": 1}, datatrove={"docs": 3, "kept": 1})
  flaky["sides"]["ours"]["values"][1] = {"docs": 3, "kept": 2}
  with pytest.raises(SystemExit, match="ours's runs disagree"):
    bench.check_counts(flaky, 3)


# ----------------------------------------------------------------------------- the paired harness

from benchmarks import harness  # noqa: E402


def test_ratios_are_taken_per_pair_not_from_separate_medians():
  # Load that hits both sides of a round alike cancels in the per-round ratio; medians taken
  # separately would mix rounds (here they give 3.0 / 1.5 = 2.0, the per-round ratios are all 1).
  ours = [1.0, 1.5, 3.0, 3.0, 1.0]
  peer = [1.0, 1.5, 3.0, 3.0, 1.0]
  assert harness.pair_ratios(peer, ours) == [1.0] * 5
  peer = [2.0, 2.0, 9.0, 3.0, 1.0]
  ratios = harness.pair_ratios(peer, ours)
  assert ratios == pytest.approx([2.0, 4 / 3, 3.0, 1.0, 1.0])
  assert harness.spread(ratios) == {"min": 1.0, "median": pytest.approx(4 / 3), "max": 3.0, "n": 5}
  with pytest.raises(ValueError, match="equally many"):
    harness.pair_ratios([1.0], [1.0, 2.0])
  with pytest.raises(ValueError, match="positive"):
    harness.pair_ratios([1.0], [0.0])
  with pytest.raises(ValueError, match="no values"):
    harness.spread([])


def test_rounds_alternate_which_side_goes_first():
  assert harness.round_orders(["a", "b", "c"], 4) == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"],
                                                      ["c", "b", "a"]]


def test_one_thread_environment_pins_every_library():
  env = harness.thread_env(1)
  assert "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]
  assert "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]
  assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
  assert "multi_thread_eigen" not in harness.thread_env(2)["XLA_FLAGS"]


def test_run_refuses_too_few_pairs_and_duplicate_sides():
  side = harness.Side("a", "benchmarks.harness:spin_side", {"iterations": 10})
  with pytest.raises(ValueError, match="at least 7 pairs"):
    harness.run_paired("x", [side, harness.Side("b", side.factory, side.kwargs)], pairs=3)
  with pytest.raises(ValueError, match="distinct names"):
    harness.run_paired("x", [side, side])


def test_paired_run_records_every_sample_and_writes_json(tmp_path):
  cpu = sorted(os.sched_getaffinity(0))[-1]
  sides = [harness.Side("small", "benchmarks.harness:spin_side", {"iterations": 20_000}),
           harness.Side("large", "benchmarks.harness:spin_side", {"iterations": 40_000})]
  result = harness.run_paired("spin", sides, pairs=3, warmup=1, cpus=[cpu], work_per_run=1, unit="runs",
                              allow_few_pairs=True, log=lambda *a, **k: None)
  for name, iterations in (("small", 20_000), ("large", 40_000)):
    side = result["sides"][name]
    assert side["affinity"] == [cpu]  # Each worker pinned itself.
    assert len(side["wall_s"]) == len(side["cpu_s"]) == 3 and len(side["warmup_wall_s"]) == 1
    assert side["values"] == [sum(i * i for i in range(iterations))] * 3  # The runs really ran.
    assert side["setup_info"] == {"iterations": iterations}
  ratios = result["ratios"]["large"]
  for clock, key in (("wall", "wall_s"), ("cpu", "cpu_s")):
    expected = [p / b for p, b in zip(result["sides"]["large"][key], result["sides"]["small"][key])]
    assert ratios[clock]["per_pair"] == pytest.approx(expected)
    assert ratios[clock]["median"] == pytest.approx(sorted(expected)[1])
  assert result["environment"]["machine"]["cpu_count"] == os.cpu_count()
  assert "numpy" in result["environment"]["libraries"]
  assert result["method"]["thread_env"]["OMP_NUM_THREADS"] == "1"
  path = harness.write_result(result, str(tmp_path / "spin.json"))
  with open(path) as f:
    assert json.load(f)["ratios"]["large"]["cpu"]["per_pair"] == pytest.approx(ratios["cpu"]["per_pair"])


def test_a_failing_side_stops_the_run_with_its_error():
  sides = [harness.Side("ok", "benchmarks.harness:spin_side", {"iterations": 10}),
           harness.Side("bad", "benchmarks.harness:spin_side", {"iterations": 10, "nope": 1})]
  with pytest.raises(RuntimeError, match="'bad' failed in setup: TypeError"):
    harness.run_paired("x", sides, pairs=1, allow_few_pairs=True, log=lambda *a, **k: None)


# ----------------------------------------------------------------------------- tokenize benchmark

from benchmarks import tokenize_throughput  # noqa: E402


def test_tokenize_documents_are_whole_lines_of_real_text():
  text = "\n".join(f"line {i} " + "word " * i for i in range(30))
  pieces = tokenize_throughput.pieces([text, "short"], max_chars=120)
  assert "\n".join(pieces[:-1]) == text and pieces[-1] == "short"  # Nothing lost, nothing reordered.
  assert all(len(p) <= 120 or "\n" not in p for p in pieces)  # Only a single over-long line exceeds it.
  assert len(pieces) > 5


def test_tokenize_summary_takes_ratios_per_pair_and_subtracts_the_fixed_cost():
  result = {"sides": {"sentencepiece": {"cpu_s": [1.0, 2.0, 1.0]},
                      "tokenize job": {"cpu_s": [2.0, 2.0, 1.5]},
                      "tokenize job [1 doc]": {"cpu_s": [0.5, 0.4, 0.6]}}}
  summary = tokenize_throughput.summarize(result)
  assert summary["fixed_startup_cpu_s"] == 0.5
  assert summary["per_pair_raw_over_job"] == pytest.approx([0.5, 1.0, 2 / 3])
  assert summary["per_pair_raw_over_job_without_startup"] == pytest.approx([1 / 1.5, 2 / 1.5, 1.0])
  assert summary["cpu_ratio_raw_over_job"]["median"] == pytest.approx(2 / 3)


def test_shuffle_runner_measures_what_each_groupbykey_is_given(tmp_path, monkeypatch):
  """benchmarks/shuffle_bytes.py against the elements' own encoded size: a GroupByKey of 3000
  (key, text) pairs of varying length, and a CombinePerKey (counted at its one-per-key output)."""
  import apache_beam as beam
  from benchmarks import shuffle_bytes

  out = tmp_path / "shuffle.jsonl"
  monkeypatch.setenv(shuffle_bytes.OUT_ENV, str(out))
  pairs = [(f"k{i % 7}", "x" * (i % 97)) for i in range(3000)]
  coder = beam.coders.TupleCoder([beam.coders.StrUtf8Coder(), beam.coders.StrUtf8Coder()])
  encoded = sum(len(coder.encode(p)) for p in pairs)
  with beam.Pipeline(runner=shuffle_bytes.ShuffleMeasuringRunner()) as p:
    pcoll = p | beam.Create(pairs)
    _ = pcoll | "Group" >> beam.GroupByKey() | "Sizes" >> beam.MapTuple(lambda k, vs: len(list(vs)))
    _ = pcoll | "Lengths" >> beam.MapTuple(lambda k, v: (k, len(v))) | "Sum" >> beam.CombinePerKey(sum)
  totals = json.loads(out.read_text())
  assert totals["Group"]["elements"] == 3000
  assert totals["Group"]["bytes"] == encoded  # Every element sized, with the input's own coder.
  assert totals["Sum"]["elements"] == 7  # One per key after the combiner's lifting.
