r"""Multi-host training: JAX process start-up, and a launcher for N processes on one machine.

Every process of a multi-host run is `python -m model.train` with the same gin files plus
three flags (t5x's multi-process flags):

  --coordinator_address=HOST:PORT   process 0 serves the coordination service there
  --num_processes=N --process_id=I  this process's place in the job

`initialize_distributed()` (called by `model.train.main`) then runs `jax.distributed.initialize`
with CPU collectives over gloo, so on CPU every process sees the devices of all of them
(`jax.devices()`), the mesh spans the processes, and each process feeds the rows of the batch its
own devices hold from its own input shards (`model.partitioning.data_layout`). On TPU pods the
same flags are not needed: JAX finds the coordinator itself (`Partitioner.init_distributed`).

The launcher starts N such processes on this machine over loopback, each with its own CPU
devices, and is the one command for a multi-host run here:

  python -m model.launch --num_processes=4 --cpu_devices_per_process=1 \
      --gin_file=gin/small_cpu.gin --gin.DATA_DIR="'out/demo/data'" \
      --gin.MODEL_DIR="'out/model_4proc'" --gin.TRAIN_STEPS=100

Every argument it does not know is passed on to each process. Output lines are prefixed with
`[p<i>]`. If one process fails or is killed, the launcher stops the others (SIGTERM, then
SIGKILL after --grace_seconds) and exits with that process's status within about
--grace_seconds; rerunning the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

# ---- in each training process ----


def define_distributed_flags() -> None:
  """--coordinator_address, --num_processes, --process_id, --initialization_timeout (once)."""
  from absl import flags
  if "coordinator_address" in flags.FLAGS:
    return
  flags.DEFINE_string("coordinator_address", None,
                      "HOST:PORT of process 0's coordination service (multi-process runs).")
  flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
  flags.DEFINE_integer("initialization_timeout", 60,
                       "Seconds to wait for every process to reach the coordinator.")
  flags.DEFINE_integer("heartbeat_timeout", 30,
                       "Seconds without a heartbeat after which a process counts as dead and "
                       "the survivors stop with an error.")


def initialize_distributed(coordinator_address: Optional[str], num_processes: Optional[int],
                           process_id: Optional[int], initialization_timeout: int = 60,
                           heartbeat_timeout: int = 30) -> None:
  """`jax.distributed.initialize` for a multi-process run; a no-op without a coordinator.

  Must run before anything touches a JAX backend. Every argument is checked first, and a
  coordinator that never answers is an error after `initialization_timeout` seconds (naming the
  address), never a hang.
  """
  if coordinator_address is None:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise ValueError("--num_processes/--process_id need --coordinator_address=HOST:PORT")
    return
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"--coordinator_address must be HOST:PORT, got {coordinator_address!r}")
  if not isinstance(num_processes, int) or num_processes < 1:
    raise ValueError(f"--num_processes must be a positive int, got {num_processes!r}")
  if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id must be in [0, {num_processes}), got {process_id!r}")
  for name, value in (("initialization_timeout", initialization_timeout),
                      ("heartbeat_timeout", heartbeat_timeout)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"--{name} must be a positive number of seconds, got {value!r}")
  import jax
  if jax.distributed.is_initialized():
    return
  if process_id != 0:
    # JAX aborts the process (a C++ CHECK, no Python exception) when the coordinator does not
    # answer, so its reachability is checked here first, to fail with a message that says why.
    wait_for_coordinator(host, int(port), initialization_timeout, process_id, num_processes)
  else:
    logging.warning("Process 0 of %d: serving the coordinator at %s; waiting up to %d s for the "
                    "other processes (JAX then stops with DEADLINE_EXCEEDED)", num_processes,
                    coordinator_address, initialization_timeout)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=initialization_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout)
  except Exception as e:  # JAX raises several types (XlaRuntimeError, RuntimeError, ...).
    raise RuntimeError(
        f"Process {process_id} of {num_processes} could not join the coordinator at "
        f"{coordinator_address} within {initialization_timeout} s ({type(e).__name__}: "
        f"{str(e)[:300]}). Is process 0 running, and the address reachable?") from e


def wait_for_coordinator(host: str, port: int, timeout: float, process_id: int,
                         num_processes: int) -> None:
  """Returns once HOST:PORT accepts a TCP connection; a RuntimeError after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise RuntimeError(
            f"Process {process_id} of {num_processes} could not join the coordinator at "
            f"{host}:{port} within {timeout} s ({type(e).__name__}: {e}). Is process 0 "
            "running, and the address reachable?") from None
      time.sleep(0.5)


def initialize_from_flags() -> None:
  from absl import flags
  f = flags.FLAGS
  initialize_distributed(f.coordinator_address, f.num_processes, f.process_id,
                         f.initialization_timeout, f.heartbeat_timeout)


# ---- the launcher ----


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_command(module: str, args: Sequence[str], coordinator: str, num_processes: int,
                    process_id: int, initialization_timeout: int, heartbeat_timeout: int
                    ) -> list[str]:
  return [sys.executable, "-m", module, *args, f"--coordinator_address={coordinator}",
          f"--num_processes={num_processes}", f"--process_id={process_id}",
          f"--initialization_timeout={initialization_timeout}",
          f"--heartbeat_timeout={heartbeat_timeout}"]


def process_env(cpu_devices: int) -> dict[str, str]:
  """This machine's environment with `cpu_devices` CPU devices per process, CPU only."""
  flags_ = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": " ".join(flags_ + [f"--xla_force_host_platform_device_count={cpu_devices}"])}


def _pump(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, ""):
    out.write(prefix + line)
    out.flush()
  stream.close()


def launch(args: Sequence[str], num_processes: int, cpu_devices_per_process: int = 1,
           module: str = "model.train", port: Optional[int] = None,
           initialization_timeout: int = 60, heartbeat_timeout: int = 30,
           grace_seconds: float = 10.0, out=None) -> int:
  """Runs `python -m module ARGS` as `num_processes` processes over loopback; returns the exit
  status: 0 if all succeeded, else that of the first process that failed (128 + signal number
  for a killed one), after the others were stopped."""
  if num_processes < 1 or cpu_devices_per_process < 1:
    raise ValueError(f"--num_processes ({num_processes}) and --cpu_devices_per_process "
                     f"({cpu_devices_per_process}) must be >= 1")
  out = out or sys.stdout
  coordinator = f"127.0.0.1:{port or free_port()}"
  env = process_env(cpu_devices_per_process)
  procs, pumps = [], []
  for i in range(num_processes):
    cmd = process_command(module, args, coordinator, num_processes, i, initialization_timeout,
                          heartbeat_timeout)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    procs.append(proc)
    pump = threading.Thread(target=_pump, args=(proc.stdout, f"[p{i}] ", out), daemon=True)
    pump.start()
    pumps.append(pump)
    out.write(f"launch: process {i}/{num_processes} pid {proc.pid} ({cpu_devices_per_process} "
              f"CPU devices, coordinator {coordinator})\n")
  out.flush()

  def stop_all(sig):
    for p in procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, sig)
        except ProcessLookupError:
          pass

  previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

  def forward(signum, _frame):
    stop_all(signum)
  if threading.current_thread() is threading.main_thread():
    for s in previous:
      signal.signal(s, forward)
  status = 0
  exited: dict[int, int] = {}  # process -> poll round in which it was first seen to have exited
  try:
    round_ = 0
    while len(exited) < len(procs):
      for i, p in enumerate(procs):
        if i not in exited and p.poll() is not None:
          exited[i] = round_
      failed = [i for i in exited if procs[i].returncode != 0]
      if failed:
        # The cause is the first to fail; among processes seen in the same round, one killed
        # from outside rather than one that aborted itself (SIGABRT) or exited with an error.
        i = min(failed, key=lambda j: (exited[j], procs[j].returncode in (-signal.SIGABRT,)
                                       or procs[j].returncode > 0, j))
        code = procs[i].returncode
        status = 128 - code if code < 0 else code
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        out.write(f"launch: process {i} {how}; stopping the other processes\n")
        out.flush()
        stop_all(signal.SIGTERM)
        deadline = time.time() + grace_seconds
        while time.time() < deadline and any(p.poll() is None for p in procs):
          time.sleep(0.1)
        stop_all(signal.SIGKILL)
        break
      round_ += 1
      time.sleep(0.05)
    for p in procs:
      p.wait()
  finally:
    for pump in pumps:
      pump.join(timeout=5)
    if threading.current_thread() is threading.main_thread():
      for s, handler in previous.items():
        signal.signal(s, handler)
  out.write(f"launch: {'all processes finished' if status == 0 else 'failed'} "
            f"(status {status})\n")
  out.flush()
  return status


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      description="Run `python -m model.train` (or --module) as N JAX processes on this machine. "
                  "Arguments it does not know go to every process.", allow_abbrev=False)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--cpu_devices_per_process", type=int, default=1)
  parser.add_argument("--module", default="model.train")
  parser.add_argument("--port", type=int, default=None, help="Coordinator port (default: free).")
  parser.add_argument("--initialization_timeout", type=int, default=60)
  parser.add_argument("--heartbeat_timeout", type=int, default=30)
  parser.add_argument("--grace_seconds", type=float, default=10.0)
  known, rest = parser.parse_known_args(argv)
  return launch(rest, known.num_processes, known.cpu_devices_per_process, known.module,
                known.port, known.initialization_timeout, known.heartbeat_timeout,
                known.grace_seconds)


if __name__ == "__main__":
  sys.exit(main())
