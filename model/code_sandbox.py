"""Contained execution of model-written programs (HumanEval / MBPP pass@k).

A program runs in its own Python subprocess with, layered so that one failing still leaves the rest:

* a wall-clock timeout; the whole process group is killed when it expires;
* rlimits (``prlimit``): CPU seconds, address space (memory), processes (RLIMIT_NPROC, after
  dropping root to ``nobody`` with ``setpriv``, since the kernel does not apply it to root), file
  size, no core dumps;
* no network: a fresh network namespace (``unshare -n``) when the machine allows one, and in every
  case a Python audit hook that refuses socket creation;
* a throwaway working directory (deleted afterwards); the audit hook refuses writes, deletes and
  renames outside it, and process creation (fork, exec, spawn, subprocess);
* ``python -I`` (isolated: no user site, no PYTHON* environment) with an empty environment.

``run_program`` never raises for what the program does: every outcome is a ``SandboxResult`` whose
``status`` says why it failed, so a harness can count failures and keep going.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

PASSED = "passed"
FAILED = "failed"            # The program ran and raised / exited non-zero (a wrong answer).
TIMEOUT = "timeout"          # Wall clock ran out.
CPU_LIMIT = "cpu_limit"      # RLIMIT_CPU (SIGXCPU / SIGKILL).
MEMORY = "memory"            # MemoryError under RLIMIT_AS.
FORBIDDEN = "forbidden"      # The guard refused a network / process / file-system action.
STATUSES = (PASSED, FAILED, TIMEOUT, CPU_LIMIT, MEMORY, FORBIDDEN)

_NOBODY = 65534
_FORBIDDEN_MARK = "gemma-forge sandbox forbids"

# Runs before the program, inside the child. An audit hook cannot be removed by the program.
_GUARD = r'''
import os as _os, sys as _sys
_ROOT = _os.path.realpath(_os.getcwd())
_MARK = %(mark)r
def _inside(path):
  try:
    path = _os.fsdecode(path)
  except TypeError:
    return True  # A file descriptor: opened earlier, already checked.
  full = _os.path.realpath(path if _os.path.isabs(path) else _os.path.join(_ROOT, path))
  return full == _ROOT or full.startswith(_ROOT + _os.sep)
def _deny(what):
  raise PermissionError(_MARK + " " + what)
_WRITE_FLAGS = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_APPEND | _os.O_TRUNC
def _hook(event, args):
  if event == "open":
    path, mode, flags = args
    writing = (mode is not None and any(c in str(mode) for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
    if writing and path is not None and not _inside(path):
      _deny("writing %%r" %% (path,))
  elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                 "os.symlink", "os.link", "shutil.rmtree", "os.utime"):
    if args and isinstance(args[0], (str, bytes, _os.PathLike)) and not _inside(args[0]):
      _deny("%%s on %%r" %% (event, args[0]))
  elif event in ("os.rename", "shutil.move", "shutil.copyfile"):
    if any(isinstance(a, (str, bytes, _os.PathLike)) and not _inside(a) for a in args[:2]):
      _deny("%%s %%r" %% (event, args[:2]))
  elif event.startswith(("socket.", "os.fork", "os.exec", "os.posix_spawn", "os.spawn",
                         "os.system", "subprocess.", "os.forkpty", "pty.", "ctypes.", "os.kill",
                         "os.killpg")) and event not in ("socket.getdefaulttimeout",):
    _deny(event)
_sys.addaudithook(_hook)
del _hook
'''


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits for one program run."""
  timeout_s: float = 10.0
  cpu_s: int = 10
  memory_mb: int = 1024
  max_procs: int = 64
  max_file_mb: int = 16
  use_network_namespace: bool = True
  audit_hook: bool = True  # Off only to test the other layers on their own.


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  status: str
  returncode: Optional[int]
  seconds: float
  stdout: str
  stderr: str

  @property
  def passed(self) -> bool:
    return self.status == PASSED


@functools.lru_cache(maxsize=None)
def _works(*command: str) -> bool:
  try:
    return subprocess.run(list(command), capture_output=True, timeout=10).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


def _launcher(config: SandboxConfig) -> list[str]:
  """The command prefix: a network namespace when possible, then (as root) drop to nobody.

  Root enters the namespace first (``unshare -n``) and then becomes ``nobody`` (``setpriv``);
  anyone else asks for a user namespace too (``unshare -rn``).
  """
  unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
  prlimit = shutil.which("prlimit")
  if not prlimit:
    raise RuntimeError("code execution needs prlimit (util-linux) to set its resource limits")
  prefix = []
  root = os.geteuid() == 0
  if config.use_network_namespace and unshare:
    flag = "-n" if root else "-rn"
    if _works(unshare, flag, "true"):
      prefix = [unshare, flag, "--"]
  if root:
    if not setpriv:
      raise RuntimeError("running as root needs setpriv (util-linux) to drop to nobody for code execution")
    prefix += [setpriv, f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups", "--"]
  return [prlimit, *_rlimits(config), "--"] + prefix


def network_namespace_available(config: SandboxConfig = None) -> bool:
  """Whether programs get their own (empty) network namespace here."""
  return bool(shutil.which("unshare")) and any(
      "unshare" in part for part in _launcher(config or SandboxConfig()))


def _rlimits(config: SandboxConfig) -> list[str]:
  """``prlimit`` options for the limits (set by a tool, not a ``preexec_fn``: forking a
  multithreaded process such as JAX's and running Python in the child can deadlock)."""
  memory = config.memory_mb * 2**20
  return [f"--as={memory}", f"--cpu={config.cpu_s}:{config.cpu_s + 1}",
          f"--fsize={config.max_file_mb * 2**20}", "--core=0",
          f"--nproc={config.max_procs}"]  # Counted against nobody (inherited through exec).


def _status(returncode: int, stderr: str) -> str:
  if returncode == 0:
    return PASSED
  if _FORBIDDEN_MARK in stderr:
    return FORBIDDEN
  if "MemoryError" in stderr:
    return MEMORY
  if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
    return CPU_LIMIT
  return FAILED


def run_program(program: str, config: SandboxConfig = SandboxConfig()) -> SandboxResult:
  """Runs ``program`` (Python source) under the limits above; never raises for its behaviour."""
  workdir = tempfile.mkdtemp(prefix="gf-sandbox-")
  drop_to = _NOBODY if os.geteuid() == 0 else None
  try:
    path = os.path.join(workdir, "program.py")
    with open(path, "w", encoding="utf-8") as f:
      if config.audit_hook:
        f.write(_GUARD % {"mark": _FORBIDDEN_MARK})
        f.write("\n")
      f.write(program)
    if drop_to is not None:
      os.chown(workdir, drop_to, drop_to)
      os.chown(path, drop_to, drop_to)
    command = _launcher(config) + [sys.executable, "-I", "program.py"]
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=workdir, env={"PATH": "/usr/bin:/bin"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
      out, err = proc.communicate(timeout=config.timeout_s)
      status = _status(proc.returncode, err.decode("utf-8", "replace"))
    except subprocess.TimeoutExpired:
      _kill_group(proc.pid)
      out, err = proc.communicate()
      status = TIMEOUT
    _kill_group(proc.pid)  # Anything the program left running.
    return SandboxResult(status, proc.returncode, time.monotonic() - start,
                         out.decode("utf-8", "replace")[-4000:],
                         err.decode("utf-8", "replace")[-4000:])
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pid: int) -> None:
  try:
    os.killpg(pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
