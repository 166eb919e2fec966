"""Plans and runs the stages of a run config in a run dir: skips what is done, reruns what changed.

Everything the workflow keeps lies under ``<run_dir>/.workflow/`` (besides the stages' own
outputs and ``<run_dir>/logs/<stage>.log``):

* ``lock``: held (``flock``) by the run in progress; a second run of the same run dir is refused
  before anything runs, and the lock goes with the process, so a killed run leaves none behind;
* ``stages/<stage>.json``: the stage's state: ``running``/``done``/``failed``/``killed``, its
  fingerprint and what it is made of, its output manifest (sha256 of every file), timings,
  command, log and last progress snapshot;
* ``runs.jsonl``: one line per ``run`` invocation (what ran, what was skipped, how it ended).

A stage is skipped when its state is ``done``, its fingerprint (workflow.fingerprint) is the one
it would have now, and its output still matches its manifest. Otherwise it runs, and so does every
stage after it that reads its output. A resumable stage (training) that was killed or failed
with the same fingerprint is restarted in place, so the trainer resumes from its checkpoint;
any other stage starts from an empty output directory.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import glob
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, TextIO

from workflow import config as config_lib
from workflow import fingerprint as fp
from workflow import progress as progress_lib
from workflow import stages as stages_lib

STATE_DIR = ".workflow"
LOCK_FILE = "lock"
RUNS_FILE = "runs.jsonl"
LOG_DIR = "logs"
STATE_SAVE_INTERVAL_S = 5.0


class WorkflowError(RuntimeError):
  """The run cannot go on: locked run dir, missing input, a stage that failed."""


class RunDirLocked(WorkflowError):
  pass


def state_path(run_dir: str, stage: str) -> str:
  return os.path.join(run_dir, STATE_DIR, "stages", f"{stage}.json")


def output_path(run_dir: str, stage: str) -> str:
  return os.path.join(run_dir, stages_lib.BY_NAME[stage].output)


def read_state(run_dir: str, stage: str) -> dict | None:
  path = state_path(run_dir, stage)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_state(run_dir: str, stage: str, state: dict) -> None:
  path = state_path(run_dir, stage)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(state, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- lock


class RunLock:
  """An exclusive ``flock`` on ``<run_dir>/.workflow/lock``, with who holds it written inside."""

  def __init__(self, run_dir: str):
    self.path = os.path.join(run_dir, STATE_DIR, LOCK_FILE)
    self._file: TextIO | None = None

  def acquire(self, config_path: str) -> "RunLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    f = open(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      f.seek(0)
      holder = f.read().strip() or "unknown process"
      f.close()
      raise RunDirLocked(
          f"run dir {os.path.dirname(os.path.dirname(self.path))} is in use by another run in "
          f"progress ({holder}); wait for it to finish or use another run_dir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, config {config_path}, "
            f"started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def lock_holder(run_dir: str) -> str | None:
  """Who holds the run dir's lock (a run in progress), or None."""
  path = os.path.join(run_dir, STATE_DIR, LOCK_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
      return f.read().strip() or "unknown process"
    fcntl.flock(f, fcntl.LOCK_UN)
  return None


# ----------------------------------------------------------------------------- planning


@dataclasses.dataclass
class Decision:
  stage: str
  action: str  # "run", "resume", "skip", "not selected"
  reason: str


def _output_problem(run_dir: str, stage: str, state: dict) -> str | None:
  """Why a finished stage's output no longer matches its manifest, or None if it does."""
  out = output_path(run_dir, stage)
  if not os.path.exists(out):
    return f"its output {out} is missing"
  recorded = state.get("manifest", {})
  # Sizes first: cheap, and they catch most changes without hashing.
  current = {}
  for root, _, names in os.walk(out):
    for name in names:
      full = os.path.join(root, name)
      current[os.path.relpath(full, out)] = os.path.getsize(full)
  if os.path.isfile(out):
    current = {os.path.basename(out): os.path.getsize(out)}
  missing = sorted(set(recorded) - set(current))
  if missing:
    return f"output file {missing[0]} is missing" + (
        f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
  extra = sorted(set(current) - set(recorded))
  if extra:
    return f"output has a file the stage did not write: {extra[0]}"
  for name, (size, _) in recorded.items():
    if current[name] != size:
      return f"output file {name} changed size"
  if fp.digest(fp.manifest(out)) != state.get("manifest_hash"):
    return "output file contents changed"
  return None


def input_hashes(cfg: config_lib.RunConfig, stage: str, hashes: dict[str, str]) -> dict:
  """The content hash of each of a stage's inputs: upstream manifests, external files."""
  out = {}
  for slot, upstream in sorted(cfg.wiring[stage].items()):
    if config_lib.is_external(upstream):
      out[slot] = external_hash(cfg, upstream)
    else:
      out[slot] = hashes.get(upstream)
  spec = stages_lib.BY_NAME[stage]
  for name, kind in sorted(spec.options.items()):
    if kind == "path" and name in cfg.options[stage]:
      out[f"option:{name}"] = fp.sha256_file(config_lib.resolve_path(cfg.options[stage][name]))
  return out


def external_hash(cfg: config_lib.RunConfig, upstream: str) -> str:
  """Content hash of an external input: the WARC files a glob matches, or a directory's files."""
  key = upstream[len(config_lib.EXTERNAL):]
  path = cfg.shared["inputs"][key]
  if key == "warcs":
    return fp.files_hash(glob.glob(path))
  return fp.digest(fp.manifest(path))


def input_path(cfg: config_lib.RunConfig, upstream: str) -> str:
  if config_lib.is_external(upstream):
    return cfg.shared["inputs"][upstream[len(config_lib.EXTERNAL):]]
  return output_path(cfg.run_dir, upstream)


def fingerprint_parts(cfg: config_lib.RunConfig, stage: str, hashes: dict[str, str]) -> dict:
  spec = stages_lib.BY_NAME[stage]
  return {"inputs": input_hashes(cfg, stage, hashes), "config": cfg.section_hash(stage),
          "code": fp.code_version(spec, cfg.shared["model"])}


def _changed(old: dict, new: dict) -> str:
  """What differs between two fingerprints' parts, in words."""
  reasons = []
  old_inputs, new_inputs = old.get("inputs", {}), new["inputs"]
  for slot in sorted(set(old_inputs) | set(new_inputs)):
    if old_inputs.get(slot) != new_inputs.get(slot):
      reasons.append(f"input {slot} changed")
  if old.get("config") != new["config"]:
    reasons.append("its config changed")
  if old.get("code") != new["code"]:
    reasons.append("its code changed")
  return ", ".join(reasons) or "fingerprint changed"


def plan(cfg: config_lib.RunConfig, selected: list[str], force: bool = False) -> list[Decision]:
  """What each stage of the config would do now, and why (nothing is run or written)."""
  decisions = []
  hashes: dict[str, str] = {}  # Manifest hashes of outputs that are done and stay.
  rerun: set[str] = set()
  for stage in cfg.order:
    state = read_state(cfg.run_dir, stage)
    done = state is not None and state.get("status") == "done"
    problem = _output_problem(cfg.run_dir, stage, state) if done else None
    if stage not in selected:
      if done and problem is None:
        hashes[stage] = state["manifest_hash"]
      decisions.append(Decision(stage, "not selected", "outside --from/--until/--only"))
      continue
    missing = [u for u in cfg.upstream(stage) if u not in selected and u not in hashes]
    if missing:
      raise WorkflowError(
          f"stage {stage} reads the output of {missing[0]}, which has no finished, intact "
          f"output in {cfg.run_dir} and is not selected; run it first (widen --from/--only).")
    upstream_rerun = [u for u in cfg.upstream(stage) if u in rerun]
    if upstream_rerun:
      action, reason = "run", f"upstream {upstream_rerun[0]} runs"
    elif force:
      action, reason = "run", "--force"
    elif state is None:
      action, reason = "run", "never ran in this run dir"
    else:
      parts = fingerprint_parts(cfg, stage, hashes)
      same = fp.digest(parts) == state.get("fingerprint")
      if not same:
        action, reason = "run", _changed(state.get("parts", {}), parts)
      elif not done:
        resumable = stages_lib.BY_NAME[stage].resumable
        action = "resume" if resumable else "run"
        reason = f"last run {state.get('status')}" + (
            f" at {state['progress'].get('done')}/{state['progress'].get('total')} "
            f"{state['progress'].get('unit')}" if state.get("progress", {}).get("done") else "") + (
            "; resumes from its checkpoint" if resumable else "")
      elif problem:
        action, reason = "run", problem
      else:
        action, reason = "skip", "up to date (same fingerprint, output intact)"
    if action == "skip":
      hashes[stage] = state["manifest_hash"]
    else:
      rerun.add(stage)
    decisions.append(Decision(stage, action, reason))
  return decisions


# ----------------------------------------------------------------------------- running


def _expected_docs(cfg: config_lib.RunConfig, stage: str) -> int | None:
  """Documents a Beam stage will read: what its upstream document stage kept."""
  upstream = cfg.wiring[stage].get("docs")
  if not upstream:
    return None
  path = os.path.join(input_path(cfg, upstream), "stats.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("kept")


def _stage_counts(out: str) -> str:
  path = os.path.join(out, "stats.json")
  if not os.path.isfile(path):
    return ""
  with open(path) as f:
    stats = json.load(f)
  if {"in", "kept", "dropped_total"} <= set(stats):
    return f": {stats['in']:,} in, {stats['kept']:,} kept, {stats['dropped_total']:,} dropped"
  return ""


class _Interrupted(Exception):
  pass


def _raise_interrupted(signum, frame):  # noqa: ARG001
  raise _Interrupted(signal.Signals(signum).name)


def run_stage(cfg: config_lib.RunConfig, stage: str, decision: Decision,
              hashes: dict[str, str], stream: TextIO) -> dict:
  """Runs one stage as a subprocess, logging to logs/<stage>.log; returns its final state."""
  spec = stages_lib.BY_NAME[stage]
  out = output_path(cfg.run_dir, stage)
  parts = fingerprint_parts(cfg, stage, hashes)
  fingerprint = fp.digest(parts)
  previous = read_state(cfg.run_dir, stage) or {}
  resume = decision.action == "resume"
  if not resume:
    shutil.rmtree(out, ignore_errors=True)
    if os.path.isfile(out):
      os.remove(out)
  for leftover in glob.glob(glob.escape(out) + ".tmp-*"):  # A killed Beam job's temp output.
    shutil.rmtree(leftover, ignore_errors=True)
  if spec.kind == "jax":  # The model entry points write files into it (Beam jobs move theirs in).
    os.makedirs(out, exist_ok=True)
  inputs = {slot: input_path(cfg, up) for slot, up in cfg.wiring[stage].items()}
  ctx = stages_lib.StageContext(run_dir=cfg.run_dir, options=cfg.options[stage], inputs=inputs,
                                output=out, run=cfg.shared)
  command = spec.command(ctx)
  log_path = os.path.join(cfg.run_dir, LOG_DIR, f"{stage}.log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  state = {"stage": stage, "status": "running", "fingerprint": fingerprint, "parts": parts,
           "command": command, "log": log_path, "started": time.time(), "pid": os.getpid(),
           "reason": decision.reason, "resumed": resume,
           "previous_elapsed_s": previous.get("elapsed_s")}
  write_state(cfg.run_dir, stage, state)
  last_save = [0.0]

  def save_progress(snapshot: dict) -> None:
    if time.time() - last_save[0] >= STATE_SAVE_INTERVAL_S:
      last_save[0] = time.time()
      write_state(cfg.run_dir, stage, {**state, "progress": snapshot})

  total = _expected_docs(cfg, stage) if spec.progress_unit == "docs" else (
      cfg.options[stage].get("train_steps"))
  print(f"[{stage}] {decision.action}: {decision.reason}\n[{stage}] $ {shlex.join(command)}",
        file=stream, flush=True)
  progress = progress_lib.StageProgress(
      stage, spec.progress_unit, total, previous.get("elapsed_s") if previous.get(
          "status") == "done" else None, stream=stream, on_update=save_progress)
  returncode = _run_command(command, log_path, progress, append=resume)
  state["finished"] = time.time()
  state["elapsed_s"] = round(state["finished"] - state["started"], 2)
  state["progress"] = progress.snapshot()
  if returncode != 0:
    state["status"] = "killed" if returncode < 0 or returncode in (130, 137, 143) else "failed"
    state["returncode"] = returncode
    write_state(cfg.run_dir, stage, state)
    progress.finish(f"{state['status']} (exit {returncode})")
    with open(log_path, errors="replace") as f:
      tail = f.read()[-3000:]
    raise WorkflowError(f"stage {stage} {state['status']} (exit {returncode}); "
                        f"log {log_path}:\n{tail}")
  if not os.path.exists(out):
    state["status"] = "failed"
    write_state(cfg.run_dir, stage, state)
    raise WorkflowError(f"stage {stage} exited 0 but wrote no {out}; log {log_path}.")
  manifest = fp.manifest(out)
  state.update(status="done", manifest=manifest, manifest_hash=fp.digest(manifest))
  stats_path = os.path.join(out, "stats.json")
  if spec.progress_unit == "docs" and os.path.isfile(stats_path):
    with open(stats_path) as f:
      num_in = json.load(f).get("in")
    if isinstance(num_in, int):
      progress.update(num_in, num_in if progress.total is None else progress.total)
      state["progress"] = progress.snapshot()
  write_state(cfg.run_dir, stage, state)
  progress.finish("done" + _stage_counts(out))
  return state


def _die_with_parent() -> None:
  """In the child: be killed when the workflow process dies, even by SIGKILL (Linux)."""
  import ctypes  # noqa: PLC0415
  pr_set_pdeathsig = 1
  ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _run_command(command: list[str], log_path: str, progress, append: bool = False) -> int:
  """Runs ``command`` from the repo root, copying its output to the log and to ``progress``.

  The log starts afresh, except for a resumed stage, whose log goes on after the killed run's.
  """
  with open(log_path, "a" if append else "w", encoding="utf-8", errors="replace") as log:
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    proc = subprocess.Popen(command, cwd=stages_lib.REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True, preexec_fn=_die_with_parent)
    lines: queue.Queue = queue.Queue()

    def pump():
      for line in proc.stdout:
        lines.put(line)
      lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
      while True:
        try:
          line = lines.get(timeout=1.0)
        except queue.Empty:
          line = ""
        if line is None:
          break
        if line:
          log.write(line)
          log.flush()
          progress.feed(line)
        progress.tick()  # Throttled: a heartbeat line now and then, the state file every 5s.
      return proc.wait()
    except (KeyboardInterrupt, _Interrupted):
      os.killpg(proc.pid, signal.SIGTERM)
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
      return -signal.SIGTERM
    finally:
      for s, handler in old.items():
        signal.signal(s, handler)


def run(cfg: config_lib.RunConfig, selected: list[str], force: bool = False,
        dry_run: bool = False, stream: TextIO | None = None) -> list[Decision]:
  """Plans the run and, unless ``dry_run``, runs it under the run dir's lock."""
  stream = stream or sys.stderr
  if dry_run:
    decisions = plan(cfg, selected, force)
    holder = lock_holder(cfg.run_dir)
    print(format_plan(decisions, cfg), file=stream)
    if holder:
      print(f"note: a run is in progress in {cfg.run_dir} ({holder}).", file=stream)
    return decisions
  lock = RunLock(cfg.run_dir).acquire(cfg.path)
  with lock:
    decisions = plan(cfg, selected, force)
    print(format_plan(decisions, cfg), file=stream, flush=True)
    record = {"started": time.time(), "config": os.path.abspath(cfg.path), "pid": os.getpid(),
              "plan": [dataclasses.asdict(d) for d in decisions]}
    hashes: dict[str, str] = {}
    for d in decisions:
      if d.action in ("skip", "not selected"):
        state = read_state(cfg.run_dir, d.stage)
        if state and state.get("status") == "done":
          hashes[d.stage] = state["manifest_hash"]
    status = "failed"
    try:
      for d in decisions:
        if d.action in ("run", "resume"):
          state = run_stage(cfg, d.stage, d, hashes, stream)
          hashes[d.stage] = state["manifest_hash"]
      status = "done"
    except (KeyboardInterrupt, _Interrupted):
      status = "killed"
      raise
    finally:
      record.update(finished=time.time(), status=status)
      with open(os.path.join(cfg.run_dir, STATE_DIR, RUNS_FILE), "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    ran = [d.stage for d in decisions if d.action in ("run", "resume")]
    print(f"workflow {status}: ran {len(ran)} stage(s) {ran}, skipped "
          f"{sum(d.action == 'skip' for d in decisions)}, in "
          f"{progress_lib.format_seconds(record['finished'] - record['started'])}; "
          f"run dir {cfg.run_dir}", file=stream, flush=True)
  return decisions


def format_plan(decisions: list[Decision], cfg: config_lib.RunConfig) -> str:
  width = max(len(d.stage) for d in decisions)
  lines = [f"plan for {cfg.run_dir} ({cfg.path}):"]
  for d in decisions:
    lines.append(f"  {d.stage:<{width}}  {d.action:<12}  {d.reason}")
  return "\n".join(lines)
