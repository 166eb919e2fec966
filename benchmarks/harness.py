"""One benchmark method for every script in benchmarks/: paired, interleaved runs in pinned processes.

A benchmark names its *sides* (ours and each peer). Every side is built once in its own worker
process, which pins itself to the same CPU(s) and fixes its thread count before anything is
imported; then the harness asks the workers for one run at a time, in turns (A B, B A, A B, ...:
the order flips every round so neither side always goes first), so load from other processes on a
shared machine falls on both sides alike. Warm-up runs are excluded. For every round the ratio
peer time / baseline time (= baseline speed / peer speed; > 1 means the baseline side is faster)
is taken from that round's two runs, and the ratios are reported as min / median / max, for wall
time and for process CPU time. Library versions, the machine, the pinning and the load average are
recorded, and the whole result (every sample) is written as JSON under benchmarks/results/.

    from benchmarks import harness
    sides = [harness.Side("ours", "benchmarks.model_decode:ours_side", {"config": "small"}),
             harness.Side("transformers[sdpa]", "benchmarks.model_decode:hf_side", {"attn": "sdpa"})]
    result = harness.run_paired("decode_small", sides, work_per_run=512, unit="tokens")
    harness.print_summary(result)
    harness.write_result(result)            # benchmarks/results/decode_small.json

A side's factory is "module:function"; function(**kwargs) runs inside the worker and returns a
callable `run()` (one measured unit of work, synchronised with its device) or `(run, info)` with a
JSON-able dict `info` recorded as the side's set-up facts. `run()` may return a JSON-able value
(a loss, a token count) that is recorded per run, so a benchmark can check both sides computed the
same thing. Building the side (imports, weights, compilation) is timed apart as its start-up cost.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MIN_PAIRS = 7
# Libraries whose versions every result records (those that are installed).
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers", "sentencepiece", "apache_beam",
             "datatrove", "seqio", "tensorflow", "lm_eval", "trl")


@dataclasses.dataclass(frozen=True)
class Side:
  """One implementation under test: a display name and the worker-side factory that builds it."""

  name: str
  factory: str  # "package.module:function"
  kwargs: dict = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------- statistics (pure; unit-tested)


def spread(values: Sequence[float]) -> dict:
  """{'min', 'median', 'max', 'n'} of a non-empty sequence."""
  if not values:
    raise ValueError("spread() of no values")
  return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def pair_ratios(peer: Sequence[float], baseline: Sequence[float]) -> list[float]:
  """peer[i] / baseline[i] for each round i: > 1 where the baseline took less time in that round."""
  if len(peer) != len(baseline) or not peer:
    raise ValueError(f"need equally many, non-zero, samples; got {len(peer)} and {len(baseline)}")
  if min(baseline) <= 0 or min(peer) <= 0:
    raise ValueError("times must be positive")
  return [p / b for p, b in zip(peer, baseline)]


def round_orders(names: Sequence[str], rounds: int) -> list[list[str]]:
  """The order of the sides in each round: as given, then reversed, alternately (A B, B A, ...)."""
  return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]


def ratio_table(result: dict) -> list[dict]:
  """One row per (peer, clock) from a result: the per-round ratio spread against the baseline."""
  rows = []
  for peer, clocks in result["ratios"].items():
    for clock, stats in clocks.items():
      rows.append({"peer": peer, "clock": clock, **{k: stats[k] for k in ("min", "median", "max")}})
  return rows


# ---------------------------------------------------------------- environment


def thread_env(threads: int) -> dict:
  """Environment that fixes the intra-op thread count of XLA, OpenMP/MKL (torch), TF and BLAS."""
  env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                         "TF_NUM_INTRAOP_THREADS", "NUMEXPR_NUM_THREADS")}
  env["TF_NUM_INTEROP_THREADS"] = "1"
  xla = os.environ.get("XLA_FLAGS", "")
  if threads == 1:
    xla += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  env["XLA_FLAGS"] = xla.strip()
  env["PYTHONUNBUFFERED"] = "1"
  return env


def library_versions() -> dict:
  from importlib import metadata
  versions = {}
  for name in LIBRARIES:
    try:
      versions[name] = metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
      try:
        versions[name] = metadata.version(name)
      except metadata.PackageNotFoundError:
        pass
  return versions


# The instruction-set extensions that decide which kernels the libraries run (recorded per result).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def machine() -> dict:
  """The CPU (model name, family/model/stepping, the ISA extensions of ISA_FLAGS), memory, OS.

  The model name alone does not tell machines apart ("AMD EPYC" covers Zen 3 without AVX-512 and
  Zen 4 with it), so results are compared only within one `cpu_id` (benchmarks/cpu_roofline.py)."""
  info = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break  # The first processor's block is enough.
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  try:
    with open("/proc/meminfo") as f:
      mem_kib = int(f.readline().split()[1])
  except (OSError, ValueError, IndexError):
    mem_kib = 0
  flags = set(info.get("flags", "").split())
  cpu_id = (f"{info.get('vendor_id', '?')} family {info.get('cpu family', '?')} model {info.get('model', '?')} "
            f"stepping {info.get('stepping', '?')}")
  return {"cpu_model": info.get("model name", ""), "cpu_id": cpu_id,
          "cpu_isa": [flag for flag in ISA_FLAGS if flag in flags], "cpu_count": os.cpu_count(),
          "memory_gib": round(mem_kib / 2**20, 1), "platform": platform.platform(),
          "python": platform.python_version()}


def default_cpus(threads: int) -> list[int]:
  """The last `threads` CPUs this process may use (CPU 0 tends to take the machine's interrupts)."""
  usable = sorted(os.sched_getaffinity(0))
  if threads > len(usable):
    raise ValueError(f"{threads} threads asked for but only CPUs {usable} are usable")
  return usable[-threads:]


# ---------------------------------------------------------------- workers


class _Worker:
  """A child process that builds one side and runs it on request (JSON lines over its stdin/stdout)."""

  def __init__(self, side: Side, threads: int, cpus: Sequence[int], timeout_s: float):
    self.side = side
    self.timeout_s = timeout_s
    env = {**os.environ, **thread_env(threads)}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.harness", "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        cwd=repo, env=env, text=True)
    self.setup = self.call({"op": "setup", "factory": side.factory, "kwargs": side.kwargs, "threads": threads,
                            "cpus": list(cpus)})

  def call(self, message: dict) -> dict:
    self.proc.stdin.write(json.dumps(message) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      code = self.proc.wait(timeout=self.timeout_s)
      raise RuntimeError(f"benchmark side {self.side.name!r} exited (code {code}) during {message['op']}; "
                         "its error is printed above")
    reply = json.loads(line)
    if "error" in reply:
      raise RuntimeError(f"benchmark side {self.side.name!r} failed in {message['op']}: {reply['error']}")
    return reply

  def close(self) -> dict:
    try:
      return self.call({"op": "close"})
    finally:
      self.proc.stdin.close()
      self.proc.wait(timeout=60)


def peak_rss_mib() -> float:
  """This process's own peak resident memory. Not ru_maxrss: a Linux child inherits its parent's
  peak there, so every worker would report at least its parent's."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Not Linux.


def _worker_main() -> None:
  """The worker side of _Worker: pins itself, builds the side, then times one run per request."""
  try:  # Linux: die with the parent, so a killed benchmark leaves no worker burning CPU.
    import ctypes
    import signal
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass
  protocol = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)  # Whatever the side prints (Python or C) goes to stderr, not into the protocol.
  sys.stdout = sys.stderr
  run = None
  for line in sys.stdin:
    message = json.loads(line)
    try:
      if message["op"] == "setup":
        os.sched_setaffinity(0, message["cpus"])
        wall0, cpu0 = time.perf_counter(), time.process_time()
        module_name, _, function_name = message["factory"].partition(":")
        built = getattr(importlib.import_module(module_name), function_name)(**message["kwargs"])
        run, info = built if isinstance(built, tuple) else (built, {})
        if "torch" in sys.modules:  # OMP_NUM_THREADS already holds; this also covers torch's own pool.
          sys.modules["torch"].set_num_threads(message["threads"])
        reply = {"setup_wall_s": time.perf_counter() - wall0, "setup_cpu_s": time.process_time() - cpu0,
                 "info": info, "pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0)),
                 "torch_threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None}
      elif message["op"] == "run":
        wall0, cpu0 = time.perf_counter(), time.process_time()
        value = run()
        reply = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0, "value": value}
      elif message["op"] == "close":
        reply = {"max_rss_mib": peak_rss_mib()}
      else:
        reply = {"error": f"unknown op {message['op']!r}"}
    except Exception as e:  # Reported to the parent, which stops the benchmark with it.
      import traceback
      traceback.print_exc()
      reply = {"error": f"{type(e).__name__}: {e}"}
    protocol.write(json.dumps(reply) + "\n")
    protocol.flush()
    if message["op"] == "close":
      return


def spin_side(iterations: int):
  """A side that burns `iterations` steps of pure Python per run; the harness's own tests use it."""
  def run():
    total = 0
    for i in range(iterations):
      total += i * i
    return total

  return run, {"iterations": iterations}


# ---------------------------------------------------------------- the method


def run_paired(benchmark: str, sides: Sequence[Side], *, pairs: int = MIN_PAIRS, warmup: int = 1, threads: int = 1,
               cpus: Sequence[int] | None = None, work_per_run: float = 1.0, unit: str = "runs",
               baseline: str | None = None, settings: dict | None = None, timeout_s: float = 3600,
               allow_few_pairs: bool = False, log=print) -> dict:
  """Builds each side in its own pinned process, runs warm-up then `pairs` interleaved rounds; returns the result.

  `baseline` (default: the first side) is the side every ratio is taken against. `work_per_run` in
  `unit` (tokens, documents) turns times into rates. `settings` (the benchmark's own flags) is
  recorded. Fewer than MIN_PAIRS rounds is refused unless allow_few_pairs (smoke tests).
  """
  names = [side.name for side in sides]
  if len(set(names)) != len(names) or len(names) < 2:
    raise ValueError(f"need at least two sides with distinct names, got {names}")
  baseline = baseline or names[0]
  if baseline not in names:
    raise ValueError(f"baseline {baseline!r} is not one of the sides {names}")
  if pairs < MIN_PAIRS and not allow_few_pairs:
    raise ValueError(f"at least {MIN_PAIRS} pairs are needed for a min/median/max worth quoting, got {pairs}")
  if pairs < 1 or warmup < 0 or threads < 1:
    raise ValueError("pairs >= 1, warmup >= 0 and threads >= 1 are required")
  cpus = list(cpus) if cpus else default_cpus(threads)
  started = datetime.datetime.now(datetime.timezone.utc)
  loads = [os.getloadavg()]
  log(f"[{benchmark}] {len(sides)} sides {names}, {threads} thread(s) each, pinned to CPUs {cpus}, "
      f"{warmup} warm-up + {pairs} timed rounds; load average {loads[0][0]:.2f}", flush=True)

  workers, samples = {}, {name: {"wall_s": [], "cpu_s": [], "values": [], "warmup": []} for name in names}
  try:
    for side in sides:
      workers[side.name] = _Worker(side, threads, cpus, timeout_s)
      setup = workers[side.name].setup
      log(f"[{benchmark}] {side.name}: built in {setup['setup_wall_s']:.1f} s wall, {setup['setup_cpu_s']:.1f} s "
          f"CPU (pid {setup['pid']}, CPUs {setup['affinity']}, torch threads {setup['torch_threads']})", flush=True)
    clock0 = time.perf_counter()
    orders = round_orders(names, warmup + pairs)
    for r, order in enumerate(orders):
      this_round = {}
      for name in order:
        reply = this_round[name] = workers[name].call({"op": "run"})
        if r < warmup:
          samples[name]["warmup"].append(reply)
        else:
          for key in ("wall_s", "cpu_s"):
            samples[name][key].append(reply[key])
          samples[name]["values"].append(reply["value"])
      loads.append(os.getloadavg())
      done = r + 1
      eta = (time.perf_counter() - clock0) / done * (len(orders) - done)
      last = ", ".join(f"{n} {this_round[n]['wall_s']:.3g} s" for n in names)
      log(f"[{benchmark}] round {done}/{len(orders)}{' (warm-up)' if r < warmup else ''}: {last}; "
          f"load {loads[-1][0]:.2f}; ETA {eta:.0f} s", flush=True)
    closing = {name: worker.close() for name, worker in workers.items()}
  finally:
    for worker in workers.values():
      if worker.proc.poll() is None:
        worker.proc.kill()

  result = {
      "benchmark": benchmark,
      "created_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
      "command": " ".join(sys.argv),
      "method": {"pairs": pairs, "warmup": warmup, "threads": threads, "cpus": cpus, "order": "alternating A B / B A",
                 "thread_env": thread_env(threads), "baseline": baseline,
                 "ratio": "peer seconds / baseline seconds in the same round (> 1: baseline faster)"},
      "environment": {"libraries": library_versions(), "machine": machine(),
                      "load_average_1min": spread([l[0] for l in loads]),
                      "load_average_at_start": loads[0], "load_average_at_end": loads[-1]},
      "settings": settings or {},
      "work_per_run": work_per_run,
      "unit": unit,
      "sides": {},
      "ratios": {},
  }
  for name in names:
    s = samples[name]
    result["sides"][name] = {
        "factory": next(side.factory for side in sides if side.name == name),
        "kwargs": next(side.kwargs for side in sides if side.name == name),
        "setup_wall_s": workers[name].setup["setup_wall_s"], "setup_cpu_s": workers[name].setup["setup_cpu_s"],
        "setup_info": workers[name].setup["info"], "torch_threads": workers[name].setup["torch_threads"],
        "affinity": workers[name].setup["affinity"], "max_rss_mib": closing[name]["max_rss_mib"],
        "wall_s": s["wall_s"], "cpu_s": s["cpu_s"], "values": s["values"],
        "warmup_wall_s": [w["wall_s"] for w in s["warmup"]], "warmup_values": [w["value"] for w in s["warmup"]],
        "wall": spread(s["wall_s"]), "cpu": spread(s["cpu_s"]),
        f"{unit}_per_s_wall": work_per_run / statistics.median(s["wall_s"]),
        f"{unit}_per_cpu_s": work_per_run / statistics.median(s["cpu_s"]),
    }
  for name in names:
    if name != baseline:
      result["ratios"][name] = {
          clock: {**spread(pair_ratios(samples[name][key], samples[baseline][key])),
                  "per_pair": pair_ratios(samples[name][key], samples[baseline][key])}
          for clock, key in (("wall", "wall_s"), ("cpu", "cpu_s"))}
  return result


def print_summary(result: dict, log=print) -> None:
  """A table of each side's times and rate, then one ratio line per peer and clock."""
  unit = result["unit"]
  log(f"\n{result['benchmark']}: {result['method']['pairs']} rounds, {result['method']['threads']} thread(s) on CPUs "
      f"{result['method']['cpus']}, load average {result['environment']['load_average_1min']['min']:.2f}-"
      f"{result['environment']['load_average_1min']['max']:.2f}")
  log(f"{'side':<34} {'wall s (min/med/max)':<26} {'CPU s median':>12} {unit + '/s':>12} {'start-up s':>10}")
  for name, side in result["sides"].items():
    w = side["wall"]
    log(f"{name:<34} {w['min']:.4g}/{w['median']:.4g}/{w['max']:.4g}".ljust(61) +
        f"{side['cpu']['median']:>12.4g} {side[f'{unit}_per_s_wall']:>12.1f} {side['setup_wall_s']:>10.1f}")
  baseline = result["method"]["baseline"]
  for row in ratio_table(result):
    log(f"ratio {result['benchmark']} {row['clock']} {baseline}/{row['peer']}: median {row['median']:.2f} "
        f"(min {row['min']:.2f}, max {row['max']:.2f})")


def write_result(result: dict, path: str | None = None) -> str:
  """Writes the result as JSON (default benchmarks/results/<benchmark>.json); returns the path."""
  path = path or os.path.join(RESULTS_DIR, f"{result['benchmark']}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)
    f.write("\n")
  return path


def add_flags(parser) -> None:
  """The harness flags every benchmark script takes."""
  parser.add_argument("--pairs", type=int, default=MIN_PAIRS, help="timed rounds (each side once per round)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
  parser.add_argument("--threads", type=int, default=1, help="threads per side (XLA, OpenMP, torch)")
  parser.add_argument("--cpus", type=lambda s: [int(c) for c in s.split(",")], default=None,
                      help="CPUs every side is pinned to, e.g. 1 (default: the last --threads usable CPUs)")
  parser.add_argument("--result", default=None,
                      help="JSON result path (default benchmarks/results/<benchmark>.json); 'none' to skip")


def run_from_flags(benchmark: str, sides, args, *, work_per_run: float, unit: str, settings: dict,
                   allow_few_pairs: bool = False, check: Optional[Callable[[dict], None]] = None) -> dict:
  """run_paired with the add_flags values, then check(result) (it raises or exits when the sides
  did not compute the same thing, before any ratio is printed), print_summary and write_result."""
  result = run_paired(benchmark, sides, pairs=args.pairs, warmup=args.warmup, threads=args.threads, cpus=args.cpus,
                      work_per_run=work_per_run, unit=unit, settings=settings, allow_few_pairs=allow_few_pairs)
  if check is not None:
    check(result)
  print_summary(result)
  if args.result != "none":
    print(f"wrote {write_result(result, args.result)}", flush=True)
  return result


if __name__ == "__main__":
  if sys.argv[1:] == ["--worker"]:
    _worker_main()
  else:
    raise SystemExit("benchmarks/harness.py is a library (see its docstring); `--worker` is its child-process mode")
