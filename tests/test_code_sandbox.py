"""Contained code execution: hostile programs are stopped and counted as failures, the harness goes on."""

import os
import socket
import threading

import pytest

from model import code_sandbox
from model.code_sandbox import SandboxConfig, run_program

FAST = SandboxConfig(timeout_s=5.0, cpu_s=3, memory_mb=512, max_procs=32)


def test_a_correct_program_passes_and_a_wrong_one_fails():
  assert run_program("def add(a, b):\n  return a + b\nassert add(2, 3) == 5\n", FAST).passed
  result = run_program("def add(a, b):\n  return a - b\nassert add(2, 3) == 5\n", FAST)
  assert result.status == code_sandbox.FAILED and "AssertionError" in result.stderr


def test_infinite_loop_is_stopped():
  result = run_program("while True:\n  pass\n", SandboxConfig(timeout_s=2.0, cpu_s=30))
  assert result.status == code_sandbox.TIMEOUT and result.seconds < 10
  result = run_program("while True:\n  pass\n", SandboxConfig(timeout_s=30.0, cpu_s=1))
  assert result.status == code_sandbox.CPU_LIMIT and result.seconds < 10


def test_memory_hog_is_stopped():
  result = run_program("x = bytearray(4 * 2**30)\n", FAST)
  assert result.status == code_sandbox.MEMORY


def test_fork_bomb_is_stopped():
  result = run_program("import os\nwhile True:\n  os.fork()\n", FAST)
  assert not result.passed and result.status in (code_sandbox.FORBIDDEN, code_sandbox.FAILED)
  # ctypes (a way around the hook to the C fork) is refused too.
  result = run_program("import ctypes\nctypes.CDLL(None).fork()\n", FAST)
  assert result.status == code_sandbox.FORBIDDEN
  # Without the audit hook, RLIMIT_NPROC + the wall-clock group kill still stop it.
  bomb = "import os, time\nfor _ in range(10000):\n  os.fork()\ntime.sleep(60)\n"
  result = run_program(bomb, SandboxConfig(timeout_s=3.0, cpu_s=3, max_procs=16, audit_hook=False))
  assert result.status in (code_sandbox.FAILED, code_sandbox.TIMEOUT) and result.seconds < 15


def test_write_outside_its_directory_is_refused(tmp_path):
  target = tmp_path / "escaped.txt"
  os.chmod(tmp_path, 0o777)  # Even a directory anyone may write to is refused.
  result = run_program(f"open({str(target)!r}, 'w').write('x')\n", FAST)
  assert result.status == code_sandbox.FORBIDDEN and not target.exists()
  result = run_program(f"import os\nos.remove({str(tmp_path)!r} + '/../x')\n", FAST)
  assert result.status == code_sandbox.FORBIDDEN
  # Inside its own (throwaway) directory it may write.
  assert run_program("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())\n",
                     FAST).passed


def test_network_call_is_refused():
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  port = server.getsockname()[1]
  connected = []
  thread = threading.Thread(target=lambda: connected.append(server.accept()), daemon=True)
  thread.start()
  try:
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
    result = run_program(program, FAST)
    assert result.status == code_sandbox.FORBIDDEN
    thread.join(timeout=0.5)
    assert not connected
  finally:
    server.close()


def test_harness_keeps_going_and_counts_each_failure():
  programs = ["while True: pass", "import os\nwhile True: os.fork()", "x = ' ' * (8 * 2**30)",
              "open('/tmp/gf-sandbox-escape', 'w')", "import urllib.request\nurllib.request.urlopen('http://example.com')",
              "assert sum([1, 2]) == 3"]
  results = [run_program(p, SandboxConfig(timeout_s=2.0, cpu_s=2, memory_mb=512)) for p in programs]
  assert [r.passed for r in results] == [False] * 5 + [True]
  assert not os.path.exists("/tmp/gf-sandbox-escape")


@pytest.mark.skipif(os.geteuid() != 0 or not code_sandbox.network_namespace_available(),
                    reason="needs root and unshare")
def test_programs_run_as_nobody_in_their_own_network_namespace():
  result = run_program("import os\nprint(os.getuid())\nprint(open('/proc/net/dev').read())\n", FAST)
  assert result.passed, result.stderr
  uid, *net = result.stdout.splitlines()
  assert uid == "65534"
  interfaces = [line.split(":")[0].strip() for line in net[2:] if line.strip()]
  assert interfaces == ["lo"]
