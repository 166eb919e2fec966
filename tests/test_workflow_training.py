"""A killed training stage resumes from its checkpoint; the run report renders in headless Chromium.

A tiny config: documents written here -> train_tokenizer -> tokenize -> pretrain (the tiny model)
-> eval -> sample -> report. The workflow is killed with SIGKILL once the trainer has written a
checkpoint; the rerun resumes the trainer there and finishes the run. Chromium is Debian's
`chromium` package (the test set-up installs it; the test is skipped where it is missing).
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from test_workflow_run import REPO_ROOT, ran, run_cli, write_config
from workflow import config as config_lib
from workflow import runner

pytestmark = pytest.mark.slow

TRAIN_STEPS = 120
SAVE_PERIOD = 20
MODEL = {
    "gin_files": ["gin/models/tiny.gin", "gin/runs/pretrain.gin",
                  "gin/partitioning/data_parallel.gin"],
    "bindings": {"TASK_FEATURE_LENGTHS": {"targets": 32}, "BATCH_SIZE": 2, "LOG_PERIOD": 10,
                 "SAVE_PERIOD": SAVE_PERIOD, "KEEP_CHECKPOINTS": 50, "WARMUP_STEPS": 2,
                 "LEARNING_RATE": 0.003, "create_optimizer.name": "adamw",
                 "create_schedule.name": "constant"},
}
STAGES = {
    "train_tokenizer": {"vocab_size": 600},
    "tokenize": {"num_shards": 1},  # tiny data: one train shard
    "pretrain": {"train_steps": TRAIN_STEPS},
    "eval": {"bindings": {"EVAL_BATCHES": 2}},
    "sample": {"prompts": ["The river"], "bindings": {"infer.max_decode_len": 8}},
    "report": {},
}


def _checkpoint_steps(model_dir):
  return sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(model_dir, "checkpoints", "*"))
                if os.path.basename(p).isdigit())


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("wft")
  config = write_config(tmp_path, STAGES, model=MODEL)
  cfg = config_lib.load(config)
  model_dir = os.path.join(cfg.run_dir, "model")
  proc = subprocess.Popen([sys.executable, "-m", "workflow", "run", f"--config={config}"],
                          cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 600
  while not _checkpoint_steps(model_dir):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() < deadline, "no checkpoint after 10 minutes"
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)  # The workflow dies at once; its trainer goes with it.
  first_out = proc.communicate()[0]
  killed_at = _checkpoint_steps(model_dir)[-1]
  status = run_cli("status", f"--run_dir={cfg.run_dir}")
  dry = run_cli("run", f"--config={config}", "--dry_run")
  resumed = run_cli("run", f"--config={config}")
  assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
  return cfg, killed_at, first_out, status, dry, resumed


def test_killed_training_resumes_from_its_checkpoint(killed_and_resumed):
  cfg, killed_at, first_out, status, dry, resumed = killed_and_resumed
  assert killed_at < TRAIN_STEPS
  assert f"pretrain: started ({TRAIN_STEPS} steps)" in first_out
  assert re.search(r"pretrain\s+killed", status.stdout), status.stdout  # no run holds the lock
  assert re.search(r"pretrain\s+resume\s+last run running.*resumes from its checkpoint",
                   dry.stdout), dry.stdout
  assert re.search(r"train_tokenizer\s+skip", dry.stdout) and re.search(r"tokenize\s+skip", dry.stdout)
  assert ran(resumed) == ["pretrain", "eval", "sample", "report"]
  log = open(os.path.join(cfg.run_dir, "logs", "pretrain.log")).read()
  resumed_from = int(re.search(r"Resuming from checkpoint step (\d+)", log).group(1))
  assert killed_at <= resumed_from < TRAIN_STEPS
  with open(os.path.join(cfg.run_dir, "model", "metrics.jsonl")) as f:
    steps = [r["step"] for r in map(json.loads, f) if r["split"] == "train"]
  assert steps == list(range(1, TRAIN_STEPS + 1))  # one clean run: no step lost or repeated
  assert runner.read_state(cfg.run_dir, "pretrain")["progress"]["done"] == TRAIN_STEPS


def test_rerun_after_resume_does_nothing(killed_and_resumed):
  cfg = killed_and_resumed[0]
  again = run_cli("run", f"--config={cfg.path}")
  assert again.returncode == 0 and ran(again) == []


def test_report_has_every_section_and_renders_in_chromium(killed_and_resumed, tmp_path):
  cfg = killed_and_resumed[0]
  page_path = os.path.join(cfg.run_dir, "report", "report.html")
  page = open(page_path).read()
  for section in ("stages", "funnel", "drops", "sources", "mixture", "training", "eval", "sample"):
    assert f'<section id="{section}">' in page, section
  training = page.split('<section id="training">')[1].split("</section>")[0]
  assert training.count("<svg") == 1 and "<td>loss</td>" in training
  # Eval table: the real perplexity of eval_results.json is on the page.
  results = json.load(open(os.path.join(cfg.run_dir, "eval", "eval_results.json")))["results"]
  assert f"{results['all']['perplexity']:.4f}" in page
  assert 'href="../dedupe/' not in page  # no dedupe stage in this config ...
  assert 'href="../data/stats.json"' in page  # ... but links to the stages that ran
  assert "<script" not in page and "<link" not in page and " src=" not in page  # self-contained
  chromium = shutil.which("chromium")
  if chromium is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
  screenshot = os.path.join(cfg.run_dir, "report", "report.png")
  console = _chromium_console(chromium, page_path, screenshot)
  assert console == [], console
  assert os.path.getsize(screenshot) > 20_000
  # The same check does see console errors (a page that logs one and throws).
  bad = tmp_path / "bad.html"
  bad.write_text("<html><body><script>console.error('bad-marker'); nope();</script></body></html>")
  errors = _chromium_console(chromium, str(bad), str(tmp_path / "bad.png"))
  assert any("bad-marker" in e for e in errors) and any("Uncaught" in e for e in errors)


def _chromium_console(chromium, page_path, screenshot):
  """Console messages and load failures of headless Chromium opening a page."""
  proc = subprocess.run(
      [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
       "--window-size=1280,6000", f"--screenshot={screenshot}", f"file://{page_path}"],
      capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "net::ERR" in line]
