"""Multi-host training over loopback: `python -m model.launch` runs `model.train` as 2 and 4 JAX
processes (gloo CPU collectives), each with its own CPU devices and input shards.

One single-process run on 4 CPU devices is the reference. A 2-process run (2 devices each) is
SIGKILLed in one process after its step-3 checkpoint: the launcher must stop the run within its
grace period. The restart as 4 processes (1 device each) resumes from that checkpoint. Losses and
final params must equal the reference's (tolerance: rtol 1e-5 on losses, rtol 1e-4 / atol 1e-6 on
params -- the cross-process all-reduce sums in another order than the single-process one).
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import seqio

from model import checkpoints, data, gin_utils
from model.partitioning import Partitioner, data_layout
from test_tasks import data_dir  # noqa: F401  (module fixture: gf_docs, gf_web; 4 train files each)

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
KILL_GRACE_S = 10  # The launcher's --grace_seconds: SIGTERM, then SIGKILL after this.
RUN = [
    "--gin_file=gin/models/tiny.gin", "--gin_file=gin/runs/pretrain.gin",
    "--gin.MIXTURE_OR_TASK_NAME='synthetic_lm'", "--gin.USE_CACHED_TASKS=False",
    "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.BATCH_SIZE=8",
    "--gin.LOG_PERIOD=1", "--gin.SAVE_PERIOD=3", "--gin.KEEP_CHECKPOINTS=5",
    "--gin.WARMUP_STEPS=2", "--gin.LEARNING_RATE=0.003",
    "--gin.create_optimizer.name='adamw'", "--gin.create_schedule.name='constant'",
    # The global batch is 4 input shards of 2 rows, whichever processes read them.
    "--gin.Partitioner.num_data_shards=4", f"--gin.TRAIN_STEPS={STEPS}",
]

# model.train with every step slowed down, so one process can be killed mid-run.
SLOW_TRAIN = """
import time
from model import gin_utils, train
_step = train.Trainer.train_step
def slow_step(self, state, batch):
  time.sleep(0.5)
  return _step(self, state, batch)
train.Trainer.train_step = slow_step
if __name__ == "__main__":
  gin_utils.run(train.main)
"""


def _env(extra_path=None, devices=None):
  path = [str(REPO)] + ([str(extra_path)] if extra_path else [])
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "JAX_PLATFORMS": "cpu"}
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _losses(model_dir):
  records = [json.loads(l) for l in (Path(model_dir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def _params(step_dir):
  model = gin_utils.build_model("tiny", dtype="float32")
  return jax.device_get(checkpoints.load_params(str(step_dir), model.abstract_params()))


def _assert_params_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)


def _launch(args, num_processes, devices, module="model.train", extra_path=None):
  return subprocess.Popen(
      [sys.executable, "-m", "model.launch", f"--num_processes={num_processes}",
       f"--cpu_devices_per_process={devices}", f"--module={module}",
       f"--grace_seconds={KILL_GRACE_S}", "--initialization_timeout=120", *args],
      cwd=REPO, env=_env(extra_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class _Output:
  """Collects a process's output lines in a thread (so waiting on it never blocks the test)."""

  def __init__(self, proc):
    self.lines = []
    self.thread = threading.Thread(target=lambda: self.lines.extend(iter(proc.stdout.readline, "")),
                                   daemon=True)
    self.thread.start()

  @property
  def text(self):
    return "".join(self.lines)


# ---- the data layout: which input shards each process reads ----

def test_data_layout_gives_each_shard_to_the_hosts_holding_its_rows():
  two_hosts = {0: (0, 4), 1: (4, 8)}  # A (data=4) mesh over 2 processes.
  assert data_layout(two_hosts, 8, 4, 0).local_shards == (0, 1)
  assert data_layout(two_hosts, 8, 4, 1).local_shards == (2, 3)
  assert data_layout(two_hosts, 8, None, 1).local_shards == (1,)  # Default: one per host.
  # A 'model' axis across hosts: processes 0 and 1 hold the same rows, read the same shards,
  # and only the first of them saves their position.
  pairs = {0: (0, 4), 1: (0, 4), 2: (4, 8), 3: (4, 8)}
  a, b = data_layout(pairs, 8, 2, 0), data_layout(pairs, 8, 2, 1)
  assert a.local_shards == b.local_shards == (0,) and a.saved_shards == (0,) and b.saved_shards == ()
  with pytest.raises(ValueError, match="not divisible by the number of data shards 3"):
    data_layout(two_hosts, 8, 3, 0)
  with pytest.raises(ValueError, match="Use a multiple of 2 data shards"):
    data_layout({0: (0, 6), 1: (6, 12)}, 12, 3, 0)  # Blocks of 4 rows straddle the hosts.


def test_mesh_that_does_not_fit_the_devices_is_a_clear_error():
  with pytest.raises(ValueError, match=r"mesh_shape \(3, 1\) must be .* 1 devices"):
    Partitioner(mesh_shape=(3, 1))
  with pytest.raises(ValueError, match="num_data_shards"):
    Partitioner(num_data_shards=0)


def _rows(iterator, steps):
  """Every non-padding row (as a tuple of target tokens) of `steps` batches."""
  out = []
  for _ in range(steps):
    for row in next(iterator)["decoder_target_tokens"]:
      out.append(tuple(int(t) for t in row[row != 0]))
  return out


def _period(rows):
  """The length of one epoch of a repeated, unshuffled stream."""
  for p in range(1, len(rows) // 2 + 1):
    if rows[p:] == rows[:-p]:
      return p
  raise AssertionError("stream did not repeat within the rows read")


def test_hosts_read_disjoint_input_shards_that_cover_the_split(data_dir):  # noqa: F811
  """Two hosts x 2 input shards each over gf_docs' 4 train files: every example is read by
  exactly one shard (compared with seqio reading the whole split once, unsharded)."""
  cfg = data.DatasetConfig("gf_docs", {"targets": 64}, "train", 8, shuffle=False,
                           use_cached=True, pack=False)
  full = sorted(tuple(int(t) for t in ex["targets"]) for ex in seqio.get_mixture_or_task(
      "gf_docs").get_dataset({"targets": 64}, "train", use_cached=True, shuffle=False,
                             num_epochs=1).as_numpy_iterator())
  epochs = []
  for host in (0, 1):
    layout = data_layout({0: (0, 4), 1: (4, 8)}, 8, 4, host)
    it = data.get_sharded_train_iterator(cfg, 10, layout.local_shards, layout.num_shards)
    for shard, shard_it in it.iterators.items():
      rows = _rows(iter(data.ShardedDataIterator({shard: shard_it}, 4)), len(full) + 1)
      epochs.append(rows[:_period(rows)])
  assert len(epochs) == 4 and all(epochs)
  assert sorted(sum(epochs, [])) == full
  for i in range(4):
    for j in range(i + 1, 4):
      assert not set(epochs[i]) & set(epochs[j])
  with pytest.raises(ValueError, match="4 'train' files, which do not split evenly into 3"):
    data.get_sharded_train_iterator(dataclasses.replace(cfg, batch_size=6), 10, (0,), 3)


def test_staged_mixture_hosts_read_disjoint_streams(data_dir):  # noqa: F811
  """The staged mixture: each input shard's task streams are its own seqio shard of the cached
  files; over one epoch the 2 shards' streams are disjoint and together are the whole split."""
  cfg = data.DatasetConfig("gf_mixture", {"targets": 64}, "train", 8, use_cached=True,
                           shuffle=False, stages=[(0, {"all": 1.0}), (0.5, {"high": 1.0})])
  it = data.get_sharded_train_iterator(cfg, 8, (0, 1), 2)
  assert it.staged and [s.host for s in it.iterators.values()] == [0, 1]
  batch = next(it)
  assert batch["decoder_target_tokens"].shape == (8, 64)
  for task in ("gf_docs", "gf_web"):
    full = sorted(tuple(int(t) for t in ex["targets"]) for ex in seqio.get_mixture_or_task(
        task).get_dataset({"targets": 64}, "train", use_cached=True, shuffle=False,
                          num_epochs=1).as_numpy_iterator())
    epochs = []
    for shard_it in it.iterators.values():
      stream = shard_it._make_streams()[task](0)  # What the shard's batches are packed from.
      rows = [tuple(int(t) for t in next(stream)["targets"]) for _ in range(2 * len(full) + 2)]
      epochs.append(rows[:_period(rows)])
    assert sorted(epochs[0] + epochs[1]) == full, task
    assert not set(epochs[0]) & set(epochs[1]), task


# ---- the launcher, without JAX ----

FAKE_WORKER = """
import re, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
print("worker", args["process_id"], "of", args["num_processes"], "at", args["coordinator_address"],
      "devices", re.search(r"count=(\\d+)", __import__("os").environ["XLA_FLAGS"]).group(1),
      "extra", args.get("gin.X"), flush=True)
if args["process_id"] == "1":
  time.sleep(1)
  sys.exit(3)
time.sleep(120)
"""


def test_launcher_passes_arguments_and_stops_the_others_when_one_fails(tmp_path):
  from model import launch
  (tmp_path / "fake_worker.py").write_text(FAKE_WORKER)
  lines = []

  class Out:
    def write(self, text):
      lines.append(text)

    def flush(self):
      pass

  old = os.environ.get("PYTHONPATH")
  os.environ["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
  try:
    start = time.time()
    status = launch.launch(["--gin.X=7"], num_processes=3, cpu_devices_per_process=2,
                           module="fake_worker", grace_seconds=5, out=Out())
  finally:
    if old is None:
      del os.environ["PYTHONPATH"]
    else:
      os.environ["PYTHONPATH"] = old
  text = "".join(lines)
  assert status == 3, text
  assert time.time() - start < 60  # The sleepers (120 s) were stopped.
  for i in range(3):
    assert re.search(rf"\[p{i}\] worker {i} of 3 at 127.0.0.1:\d+ devices 2 extra 7", text), text
  assert "launch: process 1 exited with status 3; stopping the other processes" in text


# ---- real multi-process runs ----

@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """The single-process run on 4 CPU devices (mesh data=4), checkpoints at steps 3 and 6."""
  model_dir = tmp_path_factory.mktemp("single")
  proc = subprocess.run([sys.executable, "-m", "model.train", *RUN,
                         f"--gin.MODEL_DIR='{model_dir}'"], cwd=REPO, env=_env(devices=4),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return model_dir


@pytest.mark.slow  # A kill-and-resume run of the real CLI (`make test-slow`).
def test_killed_process_stops_the_run_and_another_process_count_resumes_it_exactly(
    reference_run, tmp_path):
  (tmp_path / "slow_train.py").write_text(SLOW_TRAIN)
  model_dir = tmp_path / "run"
  args = [*RUN, f"--gin.MODEL_DIR='{model_dir}'"]
  # 2 processes x 2 devices; process 1 is SIGKILLed once step 4 is logged (checkpoint 3 saved).
  launcher = _launch(args, 2, 2, module="slow_train", extra_path=tmp_path)
  out = _Output(launcher)
  deadline = time.time() + 480
  while time.time() < deadline and launcher.poll() is None:
    if (model_dir / "checkpoints" / "3").exists() and max(_losses(model_dir), default=0) >= 4:
      break  # Step 3's checkpoint is committed (renamed from its tmp directory).
    time.sleep(0.2)
  assert launcher.poll() is None, "run ended before the kill: " + out.text[-3000:]
  pid = int(re.search(r"launch: process 1/2 pid (\d+)", out.text).group(1))
  os.kill(pid, signal.SIGKILL)
  killed_at = time.time()
  launcher.wait(timeout=KILL_GRACE_S + 20)
  out.thread.join(timeout=10)
  assert time.time() - killed_at < KILL_GRACE_S + 20
  assert launcher.returncode == 128 + signal.SIGKILL, out.text[-3000:]
  assert "launch: process 1 was killed by signal 9; stopping the other processes" in out.text
  assert 3 in checkpoints.Checkpointer(str(model_dir / "checkpoints")).all_steps()
  expected = _losses(reference_run)
  before = _losses(model_dir)
  np.testing.assert_allclose([before[s] for s in (1, 2, 3, 4)],
                             [expected[s] for s in (1, 2, 3, 4)], rtol=1e-5)

  # The restart, as 4 processes x 1 device, resumes from step 3 and ends where the reference did.
  restart = _launch(args, 4, 1)
  out = _Output(restart)
  restart.wait(timeout=600)
  out.thread.join(timeout=10)
  assert restart.returncode == 0, out.text[-4000:]
  assert "[p0] Resuming from checkpoint step 3" in out.text
  resumed = _losses(model_dir)
  assert sorted(resumed) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([resumed[s] for s in range(1, STEPS + 1)],
                             [expected[s] for s in range(1, STEPS + 1)], rtol=1e-5)
  # Checkpoints of the 2- and 4-process runs restore in this single process (1 device).
  for step in (3, STEPS):
    _assert_params_close(_params(model_dir / "checkpoints" / str(step)),
                         _params(reference_run / "checkpoints" / str(step)))
  # Their data position too: every input shard's, written by the process that read it.
  saved = sorted(p.name for p in (model_dir / "checkpoints" / str(STEPS) / "data").iterdir()
                 if p.is_dir())
  assert saved == [f"shard_{s:05d}-of-00004" for s in range(4)]


def test_a_coordinator_that_never_answers_is_an_error_within_the_timeout(tmp_path):
  import socket
  with socket.socket() as s:  # A port nobody listens on.
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  start = time.time()
  proc = subprocess.run([sys.executable, "-m", "model.train", *RUN,
                         f"--gin.MODEL_DIR='{tmp_path}'", f"--coordinator_address=127.0.0.1:{port}",
                         "--num_processes=2", "--process_id=1", "--initialization_timeout=5"],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert f"Process 1 of 2 could not join the coordinator at 127.0.0.1:{port} within 5 s" in \
      proc.stderr, proc.stderr[-3000:]
  assert time.time() - start < 90
  assert not (tmp_path / "checkpoints").exists()
