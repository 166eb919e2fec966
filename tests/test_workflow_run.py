"""The workflow runs real stages on a tiny config: skips what is done, reruns what changed and what
follows, shows progress, and `status` reads the run dir.

The input is a documents directory written here (tests/stage_dirs.py), not the sample, so the
chain is pii -> dedupe -> report: three subprocesses per full run.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from stage_dirs import write_stage_dir
from workflow import config as config_lib
from workflow import runner

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORDS = ("river stone garden window paper lamp market bridge winter orange teacher music "
         "village engine forest candle harbor letter mountain silver kitchen planet").split()


def tiny_docs(n: int = 24, seed: int = 0) -> list[dict]:
  """English-like documents of distinct sentences, plus two exact copies (dedupe drops them)."""
  rng = random.Random(seed)
  docs = []
  for i in range(n):
    sentences = [f"The {rng.choice(WORDS)} and the {rng.choice(WORDS)} were near a "
                 f"{rng.choice(WORDS)} in {rng.choice(WORDS)} number {rng.randrange(10**6)}."
                 for _ in range(12)]
    docs.append({"id": f"{i:016x}", "url": f"https://example.test/{i}", "source": "tiny",
                 "text": "\n".join(" ".join(sentences[j:j + 3]) for j in range(0, 12, 3)),
                 "lang": "en", "lang_score": 0.99, "scores": {}})
  for i in (0, 1):
    docs.append({**docs[i], "id": f"{100 + i:016x}", "url": f"https://example.test/copy{i}"})
  return docs


def write_config(tmp_path, stages: dict, **sections) -> str:
  docs = tmp_path / "input_docs"
  if not docs.exists():
    write_stage_dir(docs, tiny_docs())
  raw = {"run_dir": str(tmp_path / "run"), "inputs": {"docs": str(docs)},
         "sources": {"tiny": "high"}, "stages": stages, **sections}
  path = tmp_path / "run.yaml"
  path.write_text(yaml.safe_dump(raw, sort_keys=False))
  return str(path)


def run_cli(*args, timeout=900) -> subprocess.CompletedProcess:
  proc = subprocess.run([sys.executable, "-m", "workflow", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout)
  return proc


def ran(proc) -> list[str]:
  line = next(l for l in proc.stdout.splitlines() if l.startswith("workflow "))
  return json.loads(line.split("stage(s) ")[1].split(", skipped")[0].replace("'", '"'))


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("wf")
  config = write_config(tmp_path, {"pii": {}, "dedupe": {}, "report": {}})
  first = run_cli("run", f"--config={config}")
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  return tmp_path, config, first


def test_first_run_runs_every_stage_with_progress(data_run):
  tmp_path, _, first = data_run
  assert ran(first) == ["pii", "dedupe", "report"]
  out = first.stdout
  assert "pii: started (26 docs)" in out  # the total comes from the input's stats.json
  assert "pii: done: 26 in, 26 kept, 0 dropped in " in out
  assert "dedupe: done: 26 in, 24 kept, 2 dropped in " in out
  state = runner.read_state(str(tmp_path / "run"), "dedupe")
  assert state["status"] == "done" and state["progress"]["done"] == 26
  assert state["manifest"]["stats.json"][0] > 0
  assert os.path.exists(tmp_path / "run" / "logs" / "dedupe.log")


def test_immediate_rerun_does_nothing_in_seconds(data_run):
  _, config, _ = data_run
  start = time.time()
  again = run_cli("run", f"--config={config}")
  assert again.returncode == 0, again.stderr
  assert ran(again) == []
  assert time.time() - start < 20  # planning only: hashing, no stage process
  assert again.stdout.count("up to date (same fingerprint, output intact)") == 3


def test_deleting_a_stage_output_reruns_it_and_what_follows(data_run):
  tmp_path, config, _ = data_run
  shutil.rmtree(tmp_path / "run" / "dedupe")
  dry = run_cli("run", f"--config={config}", "--dry_run")
  assert dry.returncode == 0
  assert "its output" in dry.stdout and "is missing" in dry.stdout
  assert "upstream dedupe runs" in dry.stdout
  assert not (tmp_path / "run" / "dedupe").exists()  # a dry run runs and writes nothing
  again = run_cli("run", f"--config={config}")
  assert ran(again) == ["dedupe", "report"], again.stdout


def test_a_changed_output_file_is_noticed(data_run):
  tmp_path, config, _ = data_run
  shard = sorted((tmp_path / "run" / "pii").glob("docs-*.jsonl"))[0]
  original = shard.read_text()
  shard.write_text(original.replace("river", "rivet"))  # same size, other content
  dry = run_cli("run", f"--config={config}", "--dry_run")
  assert re.search(r"pii\s+run\s+output file contents changed", dry.stdout), dry.stdout
  assert re.search(r"dedupe\s+run\s+upstream pii runs", dry.stdout)
  shard.write_text(original)
  dry = run_cli("run", f"--config={config}", "--dry_run")
  assert re.search(r"pii\s+skip\s+up to date", dry.stdout), dry.stdout


def test_changed_option_reruns_that_stage_and_downstream_only(data_run):
  tmp_path, config, _ = data_run
  raw = yaml.safe_load(open(config))
  raw["stages"]["dedupe"] = {"jaccard_threshold": 0.9}
  changed = tmp_path / "changed.yaml"
  changed.write_text(yaml.safe_dump(raw))
  again = run_cli("run", f"--config={changed}")
  assert ran(again) == ["dedupe", "report"]
  assert re.search(r"dedupe\s+run\s+its config changed", again.stdout), again.stdout
  # --only and --force: exactly the stage asked for.
  forced = run_cli("run", f"--config={changed}", "--only=pii", "--force")
  assert ran(forced) == ["pii"]


def test_status_reads_the_run_dir(data_run):
  tmp_path, _, _ = data_run
  proc = run_cli("status", f"--run_dir={tmp_path / 'run'}")
  assert proc.returncode == 0
  lines = proc.stdout.splitlines()
  assert "no run in progress" in lines[0]
  assert any(l.split()[:2] == ["dedupe", "done"] for l in [x.strip() for x in lines])
  assert run_cli("status", f"--run_dir={tmp_path}").returncode == 2  # not a run dir


def test_external_input_content_is_part_of_the_fingerprint(tmp_path):
  config = write_config(tmp_path, {"pii": {}})
  cfg = config_lib.load(config)
  before = runner.fingerprint_parts(cfg, "pii", {})
  shard = next((tmp_path / "input_docs").glob("docs-*.jsonl"))
  os.utime(shard, (1, 1))
  assert runner.fingerprint_parts(cfg, "pii", {}) == before  # mtimes do not count
  shard.write_text(shard.read_text().replace("garden", "gardem"))
  assert runner.fingerprint_parts(cfg, "pii", {})["inputs"] != before["inputs"]
