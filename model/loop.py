"""The step loop every trainer shares (pretraining/SFT, reward model, RLHF): the bookkeeping around
one update, kept in one place so the save/eval/stop rules cannot drift apart between them."""

from __future__ import annotations

import time
from typing import Callable, Optional


def eta_seconds(start_time: float, start_step: int, step: int, total_steps: int) -> float:
  """Seconds left at this run's mean step time so far."""
  return (time.time() - start_time) / max(step - start_step, 1) * (total_steps - step)


def run_steps(step: int, total_steps: int, train_step: Callable[[int], None], *,
              log_period: int, log: Callable[[int], None],
              save_period: int, save: Callable[[int], None],
              eval_period: int = 0, evaluate: Optional[Callable[[int], None]] = None,
              stop_after: Optional[Callable[[int], bool]] = None,
              finish: Optional[Callable[[], None]] = None,
              close: tuple[Callable[[], None], ...] = ()) -> int:
  """Applies updates from `step` until `total_steps`; returns the step reached.

  After update `s` (1-based): `log(s)` every `log_period` steps, `save(s)` every `save_period`,
  `evaluate(s)` every `eval_period` (0 = never) -- each also at `total_steps` -- then the test
  hook `stop_after(s)` may end the run early (a pre-emption). `finish()` runs after the last
  step (flushing what `log` buffered), and `close` always, also when a step raises.

  Args:
    train_step: applies update `step + 1`, given `step` (the updates applied so far).
  """
  try:
    while step < total_steps:
      train_step(step)
      step += 1
      last = step == total_steps
      if step % log_period == 0 or last:
        log(step)
      if step % save_period == 0 or last:
        save(step)
      if evaluate is not None and ((eval_period and step % eval_period == 0) or last):
        evaluate(step)
      if stop_after is not None and stop_after(step):
        break
    if finish is not None:
      finish()
  finally:
    for fn in close:
      fn()
  return step


def run_recorded_steps(step: int, total_steps: int, update: Callable[[int], dict], *,
                       describe: Callable[[dict], str], logger, checkpointer,
                       current_state: Callable[[], object], data_iterator, meta: dict,
                       log_period: int, save_period: int, eval_period: int = 0,
                       evaluate: Optional[Callable[[int], None]] = None,
                       stop_after: Optional[Callable[[int], bool]] = None) -> int:
  """`run_steps` for trainers that fetch every step's metrics (reward model, RLHF).

  `update(step)` applies the next update and returns its host-side record, which goes to
  `logger` (`model.train.MetricsLogger`) at every step; the console line every `log_period` is
  `describe(record)` plus an ETA; checkpoints hold `current_state()`'s params and optimizer
  state with `data_iterator`'s position. The logger and checkpointer are closed at the end.
  """
  start_step, start_time, last = step, time.time(), {}

  def train_step(done):
    last["record"] = update(done)
    logger.write("train", done + 1, last["record"])

  def log(at):
    print(f"step {at}/{total_steps} | {describe(last['record'])} | "
          f"ETA {eta_seconds(start_time, start_step, at, total_steps):.0f}s", flush=True)

  def save(at):
    state = current_state()
    checkpointer.save(at, state.params, state.opt_state, data_iterator, meta)

  return run_steps(step, total_steps, train_step, log_period=log_period, log=log,
                   save_period=save_period, save=save, eval_period=eval_period, evaluate=evaluate,
                   stop_after=stop_after, close=(checkpointer.close, logger.close))
