"""The workflow's DAG as a Kubeflow Pipelines v2 spec: compiles, validates, and runs through kfp's
local SubprocessRunner (no Docker, no network) on a tiny config.

kfp has its own environment (.venv-kfp, see docs/workflow.md), so kfp runs in a subprocess.
"""

import json
import os
import subprocess

import pytest
import yaml

from test_workflow_run import write_config
from workflow import config as config_lib
from workflow import kfp_pipeline
from workflow import runner

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KFP_PYTHON = os.path.join(REPO_ROOT, ".venv-kfp", "bin", "python")
SAMPLE = os.path.join(REPO_ROOT, "configs", "sample.yaml")

pytestmark = pytest.mark.skipif(not os.path.exists(KFP_PYTHON),
                                reason=".venv-kfp (kfp) is not installed: `make test` creates it")


def kfp(*args, timeout=900):
  proc = subprocess.run([KFP_PYTHON, "-m", "workflow.kfp_pipeline", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def test_sample_dag_compiles_to_a_valid_vertex_spec(tmp_path):
  out = tmp_path / "pipeline.yaml"
  kfp(f"--config={SAMPLE}", f"--output={out}")  # compile_spec also parses it as a PipelineSpec
  spec = next(d for d in yaml.safe_load_all(out.read_text()) if d)
  cfg = config_lib.load(SAMPLE)
  tasks = {t["taskInfo"]["name"]: t for t in spec["root"]["dag"]["tasks"].values()}
  assert sorted(tasks) == sorted(cfg.order)
  keys = kfp_pipeline.cache_keys(cfg)
  for stage, task in tasks.items():
    assert task["cachingOptions"] == {"enableCache": True, "cacheKey": keys[stage]}
  executors = spec["deploymentSpec"]["executors"]

  def executor(stage):
    """The task's component (inputs with their defaults) and its executor, as JSON text."""
    component = spec["components"][tasks[stage]["componentRef"]["name"]]
    return json.dumps([component, executors[component["executorLabel"]]])

  # Data stages launch Dataflow jobs from the project's image with the stage's own command.
  assert "--runner=DataflowRunner" in executor("dedupe") and "pipelines.dedupe" in executor("dedupe")
  # Training and evaluation are Vertex custom jobs on a TPU machine.
  for stage in ("pretrain", "eval"):
    job = executor(stage)
    assert "ct5lp-hightpu-4t" in job and "custom_job.launcher" in job
    assert f"model.{'train' if stage == 'pretrain' else 'eval'}" in job
    assert "DataflowRunner" not in job


def test_cache_keys_change_like_local_fingerprints(tmp_path):
  raw = yaml.safe_load(open(SAMPLE))
  before = kfp_pipeline.cache_keys(config_lib.parse(raw, "a.yaml"))
  raw["stages"]["dedupe"]["jaccard_threshold"] = 0.5
  after = kfp_pipeline.cache_keys(config_lib.parse(raw, "b.yaml"))
  changed = {s for s in before if before[s] != after[s]}
  cfg = config_lib.parse(raw, "b.yaml")
  assert changed == {"dedupe"} | cfg.downstream("dedupe")


def test_dag_runs_through_the_kfp_local_subprocess_runner(tmp_path):
  config = write_config(tmp_path, {"pii": {}, "dedupe": {}})
  cfg = config_lib.load(config)
  proc = kfp(f"--config={config}", "--run_local", f"--pipeline_root={tmp_path / 'kfp_root'}")
  assert "gemma-forge" in proc.stdout + proc.stderr
  for stage in ("pii", "dedupe"):
    state = runner.read_state(cfg.run_dir, stage)
    assert state["status"] == "done", stage
  with open(os.path.join(cfg.run_dir, "dedupe", "stats.json")) as f:
    stats = json.load(f)
  assert (stats["in"], stats["kept"]) == (26, 24)
  # The tasks ran in DAG order, each as its own `workflow run --only=<stage>`.
  assert runner.read_state(cfg.run_dir, "pii")["finished"] <= \
      runner.read_state(cfg.run_dir, "dedupe")["started"]
