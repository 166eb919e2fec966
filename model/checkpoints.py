"""Checkpointing with orbax: params, optimizer state and the data position, saved together.

Layout (one orbax step directory per saved step):

  MODEL_DIR/checkpoints/<step>/params/     float32 master parameters (sharded arrays)
                              /opt_state/  optimizer state
                              /data/       data position, one directory per input shard
                                           (shard_SSSSS-of-NNNNN/, see data.ShardedDataIterator)
                              /meta/       {"step", ...} JSON

Semantics:
* Atomic: orbax writes a step to `<step>.orbax-checkpoint-tmp-*` and renames it only after every
  item is written, so a job killed mid-save never leaves a step that `latest_step` would return.
  Leftover tmp directories are deleted before the next save.
* Async: array writes continue in a background thread while training goes on; the data iterator
  is saved synchronously at the save call, so it matches the saved step exactly.
* Keep-N: the newest `keep` steps are kept.
* Restore on restart: the latest step is restored. A step saved under another config (param or
  optimizer shapes, data pipeline) is an error, not a fallback. If a step cannot be read (missing
  or corrupt files, non-finite values) it is renamed to `corrupt-<step>-<n>` -- out of orbax's sight, kept for
  inspection -- and the previous step is tried, with a warning in the log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import gin
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from model.data import DataIterator, ShardedDataIterator


# ---- the data iterator as an orbax item ----

def _sharded(iterator) -> ShardedDataIterator:
  """A single-pipeline iterator (DataIterator, ScheduledDataIterator) is input shard 0 of 1."""
  return iterator if isinstance(iterator, ShardedDataIterator) else \
      ShardedDataIterator({0: iterator}, 1)


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves/restores the data position: every process writes the input shards it saves and reads
  back the ones it reads (`ShardedDataIterator`), so any process count can resume."""

  def save(self, directory: epath.Path, args: "DataIteratorSave"):
    _sharded(args.iterator).save(os.fspath(directory))

  def restore(self, directory: epath.Path, args: "DataIteratorRestore"):
    _sharded(args.iterator).restore(os.fspath(directory))
    return args.iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: DataIterator


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: DataIterator


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When and how the trainer checkpoints (a final save always happens)."""
  save_period: int = 1000
  keep: Optional[int] = 3
  async_save: bool = True


@jax.jit
def _all_finite_jit(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] or [jnp.bool_(True)]))


def _all_finite(tree) -> bool:
  """A bit-rotted checkpoint often decodes to NaN/inf; checked on device (works when sharded)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(_all_finite_jit(leaves))


def _describe_diff(saved: dict, now: dict, limit: int = 5) -> str:
  """'data.batch_size: 4 -> 8; ...' for the first few differing (nested) keys."""
  out = []
  for key in sorted(set(saved) | set(now)):
    a, b = saved.get(key), now.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += [f"{key}.{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b))
              if a.get(k) != b.get(k)]
    elif a != b:
      out.append(f"{key}: {a} -> {b}")
  return "; ".join(out[:limit]) + (f"; and {len(out) - limit} more" if len(out) > limit else "")


class Checkpointer:
  """An orbax CheckpointManager over MODEL_DIR/checkpoints with the items above."""

  def __init__(self, directory: str, config: CheckpointConfig = CheckpointConfig()):
    self.directory = epath.Path(directory)
    self.config = config
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep,
        enable_async_checkpointing=config.async_save,
        cleanup_tmp_directories=True,
        create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={
            "params": ocp.StandardCheckpointHandler(),
            "opt_state": ocp.StandardCheckpointHandler(),
            "data": DataIteratorHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        })

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, params, opt_state, data_iterator: DataIterator,
           meta: Optional[dict] = None) -> None:
    """Starts saving `step` (array writes finish in the background when async)."""
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        data=DataIteratorSave(data_iterator),
        meta=ocp.args.JsonSave({"step": int(step), **(meta or {})})), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:  # One process renames; the others wait for it.
      src = self.directory / str(step)
      n = 0
      while (self.directory / f"corrupt-{step}-{n}").exists():
        n += 1
      src.rename(self.directory / f"corrupt-{step}-{n}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"gemma_forge_quarantine_{step}")
    self.manager.reload()

  def _read_meta(self, step: int) -> dict:
    return json.loads((self.directory / str(step) / "meta" / "metadata").read_text())

  def restore_latest(self, abstract_params, abstract_opt_state, data_iterator: DataIterator,
                     compat: Optional[dict] = None) -> Optional[tuple[int, Any, Any]]:
    """(step, params, opt_state) of the newest readable step, or None if there is none.

    `abstract_*` are trees of jax.ShapeDtypeStruct carrying the target shardings, so each host
    reads only its shards. The data iterator is restored in place.

    `compat` (saved with every step, see `save(meta={"compat": ...})`) describes what must not
    change across a restart: parameter and optimizer-state shapes, the data pipeline. A step
    saved under a different `compat` raises a ValueError naming the difference -- a changed
    config is not a corrupt checkpoint, so nothing is moved aside.
    """
    expected = json.loads(json.dumps(compat)) if compat is not None else None
    for step in reversed(self.all_steps()):
      try:
        saved = self._read_meta(step).get("compat")
      except Exception:  # Unreadable metadata: the restore below reports the step as corrupt.
        saved = None
      if expected is not None and saved is not None and saved != expected:
        raise ValueError(
            f"Checkpoint step {step} in {self.directory} was saved by a different config: "
            f"{_describe_diff(saved, expected)}. Resuming would not continue that run: use a new "
            "MODEL_DIR (or INIT_CHECKPOINT to start from its params), or restore the original "
            "config.")
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            data=DataIteratorRestore(data_iterator)))
        if not (_all_finite(restored.params) and _all_finite(restored.opt_state)):
          raise ValueError("restored values are not finite")
      except Exception as e:  # Any failure to read a step means that step is unusable.
        logging.warning("Checkpoint step %d in %s is unreadable (%s: %s); moving it aside and "
                        "falling back to the previous step.", step, self.directory,
                        type(e).__name__, str(e)[:500])
        self._quarantine(step)
        continue
      logging.info("Restored checkpoint step %d from %s", step, self.directory)
      return step, restored.params, restored.opt_state
    return None


def _absolute(path: Optional[str]) -> Optional[str]:
  return os.path.abspath(path) if path and "://" not in path else path


def resolve_checkpoint_path(checkpoint_path: Optional[str], model_dir: Optional[str]) -> str:
  """A step directory: `checkpoint_path` itself, or the latest step under MODEL_DIR/checkpoints.

  Raises a clear error if there is none, before any model is built. Local paths are made absolute
  (orbax refuses relative ones), so `--gin.MODEL_DIR=out/run` works as users expect.
  """
  checkpoint_path, model_dir = _absolute(checkpoint_path), _absolute(model_dir)
  if checkpoint_path:
    path = epath.Path(checkpoint_path)
    if not (path / "params").exists():
      if path.exists() and any(p.name.isdigit() for p in path.iterdir()):
        raise ValueError(f"CHECKPOINT_PATH {checkpoint_path} is a checkpoint directory, not a "
                         "step; pass <dir>/<step> or set MODEL_DIR to use the latest step")
      raise ValueError(f"CHECKPOINT_PATH {checkpoint_path} is not an orbax step directory with "
                       "a 'params' item")
    return os.fspath(path)
  if not model_dir:
    raise ValueError("Set CHECKPOINT_PATH (a step directory) or MODEL_DIR (latest step is used)")
  ckpt_dir = epath.Path(model_dir) / "checkpoints"
  steps = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) \
      if ckpt_dir.exists() else []
  if not steps:
    raise ValueError(f"No checkpoints under {ckpt_dir}")
  return os.fspath(ckpt_dir / str(steps[-1]))


def _on_this_host(abstract_params):
  """Leaves without a target sharding go to this process's first device, so a checkpoint saved
  by another mesh or process count (say a multi-host run) restores here too."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: x if getattr(x, "sharding", None) is not None else
                      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_params)


def load_params(step_dir: str, abstract_params) -> Any:
  """Only the params item of one step (eval, inference, fine-tuning), with target shardings
  (leaves without one are placed on this process's first device)."""
  path = epath.Path(step_dir) / "params"
  try:
    return ocp.StandardCheckpointer().restore(path, _on_this_host(abstract_params))
  except Exception as e:
    raise ValueError(f"Cannot restore params from {path} for this model "
                     f"({type(e).__name__}: {str(e)[:500]})") from e


def read_meta(step_dir: str) -> dict:
  path = epath.Path(step_dir) / "meta" / "metadata"
  return json.loads(path.read_text()) if path.exists() else {}
