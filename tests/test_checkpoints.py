"""Checkpointing: round trip with the data position, keep-N, atomicity, corrupt-latest fallback."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model import checkpoints, data
from model.checkpoints import CheckpointConfig, Checkpointer


def _state(scale):
  params = {"dense": {"kernel": jnp.arange(12.0).reshape(3, 4) * scale}, "bias": jnp.ones(4) * scale}
  return params, optax.adamw(1e-3).init(params)


def _iterator():
  return data.DataIterator(data.get_dataset(data.SYNTHETIC_TASK, {"targets": 16}, "train", 2,
                                            shuffle=True, seed=3))


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _assert_tree_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_round_trip_restores_params_optimizer_and_data_position(tmp_path):
  params, opt_state = _state(2.0)
  it = _iterator()
  for _ in range(3):
    next(it)
  ckpt = Checkpointer(str(tmp_path), CheckpointConfig(save_period=1, keep=3, async_save=True))
  ckpt.save(3, params, opt_state, it, meta={"note": "x"})
  expected_next = [next(it) for _ in range(2)]
  ckpt.close()

  fresh = _iterator()
  step, got_params, got_opt = Checkpointer(str(tmp_path)).restore_latest(
      _abstract(params), _abstract(opt_state), fresh)
  assert step == 3
  _assert_tree_equal(got_params, params)
  _assert_tree_equal(got_opt, opt_state)
  for want in expected_next:
    _assert_tree_equal(next(fresh), want)
  assert checkpoints.read_meta(str(tmp_path / "3")) == {"note": "x", "step": 3}
  _assert_tree_equal(checkpoints.load_params(str(tmp_path / "3"), _abstract(params)), params)


def test_keep_n_and_empty_directory(tmp_path):
  ckpt = Checkpointer(str(tmp_path), CheckpointConfig(keep=2, async_save=False))
  assert ckpt.restore_latest(*map(_abstract, _state(1.0)), _iterator()) is None
  it = _iterator()
  for step in (1, 2, 3):
    ckpt.save(step, *_state(float(step)), it)
  ckpt.close()
  assert Checkpointer(str(tmp_path)).all_steps() == [2, 3]


def test_interrupted_save_never_becomes_latest(tmp_path):
  ckpt = Checkpointer(str(tmp_path), CheckpointConfig(async_save=False))
  ckpt.save(1, *_state(1.0), _iterator())
  ckpt.close()
  # What a job killed mid-save leaves behind: orbax's temporary step directory, never renamed.
  partial = tmp_path / "2.orbax-checkpoint-tmp"
  (partial / "params").mkdir(parents=True)
  (partial / "params" / "manifest.ocdbt").write_bytes(b"\x00" * 10)
  reopened = Checkpointer(str(tmp_path))
  assert reopened.latest_step() == 1
  reopened.save(2, *_state(2.0), _iterator())  # The rerun saves step 2 for real...
  reopened.close()
  assert not partial.exists()  # ...after orbax deleted the leftover.
  assert Checkpointer(str(tmp_path)).all_steps() == [1, 2]


def _corrupt_arrays(step_dir):
  files = [p for p in (step_dir / "params").rglob("*") if p.is_file()
           and p.name not in ("_METADATA", "commit_success.txt", "_sharding")]
  assert files
  for path in files:
    path.write_bytes(b"garbage")


@pytest.mark.parametrize("corruption", ["garbage_files", "nan_values"])
def test_corrupt_latest_falls_back_to_previous(tmp_path, caplog, corruption):
  ckpt = Checkpointer(str(tmp_path), CheckpointConfig(async_save=False))
  it = _iterator()
  ckpt.save(1, *_state(1.0), it)
  if corruption == "nan_values":
    ckpt.save(2, *_state(float("nan")), it)
  else:
    ckpt.save(2, *_state(2.0), it)
  ckpt.close()
  if corruption == "garbage_files":
    _corrupt_arrays(tmp_path / "2")

  reopened = Checkpointer(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    step, params, _ = reopened.restore_latest(*map(_abstract, _state(1.0)), _iterator())
  assert step == 1
  _assert_tree_equal(params, _state(1.0)[0])
  assert "step 2" in caplog.text and "falling back" in caplog.text
  assert (tmp_path / "corrupt-2-0").exists() and not (tmp_path / "2").exists()
  # Training can go on and save step 2 again.
  reopened.save(2, *_state(3.0), _iterator())
  reopened.close()
  assert Checkpointer(str(tmp_path)).all_steps() == [1, 2]


def test_resolve_checkpoint_path_errors(tmp_path):
  with pytest.raises(ValueError, match="not an orbax step directory"):
    checkpoints.resolve_checkpoint_path(str(tmp_path / "missing"), None)
  with pytest.raises(ValueError, match="No checkpoints under"):
    checkpoints.resolve_checkpoint_path(None, str(tmp_path))
  with pytest.raises(ValueError, match="Set CHECKPOINT_PATH"):
    checkpoints.resolve_checkpoint_path(None, None)
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(async_save=False))
  ckpt.save(5, *_state(1.0), _iterator())
  ckpt.close()
  assert checkpoints.resolve_checkpoint_path(None, str(tmp_path)).endswith("checkpoints/5")
  with pytest.raises(ValueError, match="not a step"):
    checkpoints.resolve_checkpoint_path(str(tmp_path / "checkpoints"), None)
  with pytest.raises(ValueError, match="Cannot restore params"):
    checkpoints.load_params(str(tmp_path / "checkpoints" / "5"),
                            {"other": jax.ShapeDtypeStruct((2,), jnp.float32)})
