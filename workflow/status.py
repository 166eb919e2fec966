"""Where a run stands, read from its run dir alone (works while it runs and after it ended).

    python -m workflow status --run_dir=out/demo
"""

from __future__ import annotations

import json
import os
import time

from workflow import progress as progress_lib
from workflow import runner
from workflow import stages as stages_lib


def collect(run_dir: str) -> dict:
  """The run dir's stage states (in stage-table order), whether a run holds it, its last run."""
  if not os.path.isdir(os.path.join(run_dir, runner.STATE_DIR)):
    raise runner.WorkflowError(f"{run_dir} is not a workflow run dir (no {runner.STATE_DIR}/).")
  holder = runner.lock_holder(run_dir)
  stages = []
  for name in stages_lib.ORDER:
    state = runner.read_state(run_dir, name)
    if state is None:
      continue
    status = state["status"]
    if status == "running" and holder is None:
      status = "killed"  # Its run died without recording it (kill -9): no one holds the lock.
    stages.append({**state, "status": status})
  last_run = None
  runs_path = os.path.join(run_dir, runner.STATE_DIR, runner.RUNS_FILE)
  if os.path.exists(runs_path):
    with open(runs_path) as f:
      lines = [line for line in f if line.strip()]
    last_run = json.loads(lines[-1]) if lines else None
  return {"run_dir": run_dir, "running": holder, "stages": stages, "last_run": last_run}


def format_status(info: dict) -> str:
  lines = [f"run dir {info['run_dir']}: " + (
      f"RUNNING ({info['running']})" if info["running"] else "no run in progress")]
  if info["last_run"] and not info["running"]:
    run = info["last_run"]
    lines.append(f"last run: {run.get('status')}, "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(run['started']))}, "
                 f"{progress_lib.format_seconds(run.get('finished', run['started']) - run['started'])}")
  lines.append(f"  {'stage':<16} {'status':<8} {'elapsed':>9}  progress")
  for state in info["stages"]:
    elapsed = state.get("elapsed_s")
    if state["status"] == "running":
      elapsed = time.time() - state["started"]
    p = state.get("progress") or {}
    text = ""
    if p.get("done") is not None:
      total = p.get("total")
      text = f"{p['done']:,}/{total:,} {p['unit']}" if total else f"{p['done']:,} {p['unit']}"
      if state["status"] == "running" and p.get("eta_s") is not None:
        text += f", ETA {progress_lib.format_seconds(p['eta_s'])}"
    elif state["status"] == "running" and p.get("eta_s") is not None:
      text = f"ETA {progress_lib.format_seconds(p['eta_s'])} (from the last run)"
    lines.append(f"  {state['stage']:<16} {state['status']:<8} "
                 f"{progress_lib.format_seconds(elapsed):>9}  {text}")
  return "\n".join(lines)
