"""Progress of a running stage: a tqdm bar on a terminal, plain timestamped lines in a log.

A stage's progress is read from its own output as it runs: the trainer prints
``step N/TOTAL | ...`` lines (model/train.py), which give steps done and an ETA. A Beam job's
reader prints ``progress <stage> docs <n> worker <pid>`` lines (pipelines.common.count_progress):
each worker process counts the documents it has read, so the documents done are the sum of the
latest count of every worker, the total is what the upstream stage kept, and the ETA comes from
the rate so far. A job that prints neither (extract, which reads WARCs) falls back to the time the
same stage took on the last run of this run dir; its documents done are known when it finishes
(its stats.json).
"""

from __future__ import annotations

import re
import sys
import time
from typing import Callable, TextIO

STEP_LINE = re.compile(r"^step (\d+)/(\d+) \|")
# pipelines.common.progress_line; searched, not matched: worker processes share the job's output.
DOCS_LINE = re.compile(r"\bprogress (\S+) docs (\d+) worker (\S+)")
PLAIN_INTERVAL_S = 15.0  # Plain lines: at most one per this many seconds per stage.


def format_seconds(seconds: float | None) -> str:
  if seconds is None:
    return "?"
  seconds = int(round(seconds))
  minutes, secs = divmod(seconds, 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else (
      f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


class StageProgress:
  """Tracks one stage: done/total in its unit, elapsed, ETA; shows them and reports snapshots."""

  def __init__(self, stage: str, unit: str, total: int | None, expected_s: float | None,
               stream: TextIO | None = None, on_update: Callable[[dict], None] | None = None,
               use_bar: bool | None = None):
    self.stage, self.unit, self.total = stage, unit, total
    self.expected_s = expected_s
    self.stream = stream or sys.stderr
    self.on_update = on_update
    self.start = time.time()
    self.done: int | None = None
    self._worker_docs: dict[str, int] = {}  # Latest documents read by each Beam worker.
    self._docs_stage: str | None = None  # The first stage a Beam job reported (the reader's).
    self._last_plain = 0.0
    self._bar = None
    if use_bar is None:
      use_bar = hasattr(self.stream, "isatty") and self.stream.isatty()
    if use_bar:
      from tqdm import tqdm  # noqa: PLC0415
      self._bar = tqdm(total=total, desc=stage, unit=f" {unit}", file=self.stream,
                       dynamic_ncols=True, leave=True)
    self._line("started" + (f" ({self._total_text()})" if self._total_text() else ""))

  def _total_text(self) -> str:
    parts = [f"{self.total:,} {self.unit}"] if self.total is not None else []
    if self.expected_s is not None:
      parts.append(f"took {format_seconds(self.expected_s)} last run")
    return ", ".join(parts)

  def _line(self, text: str) -> None:
    message = f"[{time.strftime('%H:%M:%S')}] {self.stage}: {text}"
    if self._bar is not None:
      self._bar.write(message, file=self.stream)
    else:
      print(message, file=self.stream, flush=True)

  def elapsed(self) -> float:
    return time.time() - self.start

  def eta(self) -> float | None:
    """Seconds left: from the rate so far when steps are counted, else from the last run."""
    elapsed = self.elapsed()
    if self.done and self.total:
      return elapsed / self.done * (self.total - self.done)
    if self.expected_s is not None:
      return max(self.expected_s - elapsed, 0.0)
    return None

  def snapshot(self) -> dict:
    return {"unit": self.unit, "done": self.done, "total": self.total,
            "elapsed_s": round(self.elapsed(), 1), "eta_s": _round(self.eta()),
            "updated": time.time()}

  def feed(self, line: str) -> None:
    """Reads one line of the stage's output for progress it reports."""
    match = STEP_LINE.match(line)
    if match:
      self.update(int(match.group(1)), int(match.group(2)))
      return
    match = DOCS_LINE.search(line)
    if match:
      stage, docs, worker = match.group(1), int(match.group(2)), match.group(3)
      self._docs_stage = self._docs_stage or stage
      if stage == self._docs_stage:  # The fused filter job also reports its later stages.
        self._worker_docs[worker] = max(docs, self._worker_docs.get(worker, 0))
        self.update(sum(self._worker_docs.values()))

  def update(self, done: int, total: int | None = None) -> None:
    if total is not None:
      self.total = total
    previous, self.done = self.done or 0, done
    if self._bar is not None:
      if total is not None and self._bar.total != total:
        self._bar.total = total
      self._bar.update(done - previous)
    elif time.time() - self._last_plain >= PLAIN_INTERVAL_S or done == self.total:
      self._last_plain = time.time()
      share = f" ({100 * done / self.total:.0f}%)" if self.total else ""
      self._line(f"{done:,}/{self.total if self.total is not None else '?'} {self.unit}{share}, "
                 f"elapsed {format_seconds(self.elapsed())}, ETA {format_seconds(self.eta())}")
    if self.on_update is not None:
      self.on_update(self.snapshot())

  def tick(self) -> None:
    """Called while the stage runs without reporting: a plain heartbeat line now and then."""
    if self._bar is not None:
      self._bar.refresh()
    elif time.time() - max(self._last_plain, self.start) >= PLAIN_INTERVAL_S:
      self._last_plain = time.time()
      done = f"{self.done:,}/{self.total if self.total is not None else '?'} {self.unit}, " \
          if self.done is not None else ""
      self._line(f"running, {done}elapsed {format_seconds(self.elapsed())}, "
                 f"ETA {format_seconds(self.eta())}")
    if self.on_update is not None:
      self.on_update(self.snapshot())

  def finish(self, text: str) -> None:
    if self._bar is not None:
      if self.done is not None and self.total is not None and self.done < self.total:
        self._bar.update(self.total - self.done)
      self._bar.close()
    self._line(f"{text} in {format_seconds(self.elapsed())}")


def _round(value: float | None) -> float | None:
  return None if value is None else round(value, 1)
