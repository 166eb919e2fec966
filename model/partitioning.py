"""Device mesh and logical-axis partitioning (t5x's `PjitPartitioner`, on `jax.sharding`).

The mesh has two axes, `('data', 'model')`. The model names every parameter dimension with a
*logical* axis ('vocab', 'embed', 'mlp', 'heads', ...); `logical_axis_rules` map logical names to
mesh axes:

* data parallel: parameters replicated, the batch split over 'data'.
* FSDP (`shard_params_over_data=True`): additionally the 'embed' dimension of every parameter (and
  so of its optimizer state) is split over 'data' -- ZeRO-3 style, XLA all-gathers it per layer.
* model (tensor) parallel (`num_partitions > 1`): 'vocab', 'mlp', 'heads', 'joined_kv' split over
  'model', Megatron style.

A dimension whose size is not divisible by its mesh axis is replicated instead (logged once), so
e.g. Gemma 2B's single key/value head stays whole under 16-way model parallelism.
On one CPU the same code runs with a 1x1 mesh.

Multi-host input (`data_layout`): the global batch is made of `num_data_shards` equal row blocks,
block `s` read from input shard `s` (seqio `ShardInfo(s, num_data_shards)`).
Each process reads the shards whose rows its devices hold. With a fixed `num_data_shards` the
global batch does not depend on how many processes there are, so a run gives the same losses as
1, 2 or 4 processes and a checkpoint resumes under another process count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")

# Logical axis -> mesh axis (None = replicated). Covers every name the Gemma model uses.
MODEL_PARALLEL_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("q_heads", "model"),
    ("kv_heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("head_dim", None),
    ("length", None),
    ("layers", None),
    ("norm", None),
)


def standard_logical_axis_rules(shard_params_over_data: bool = False
                                ) -> tuple[tuple[str, Optional[str]], ...]:
  """t5x's standard rules; with `shard_params_over_data` 'embed' goes to 'data' (FSDP)."""
  rules = dict(MODEL_PARALLEL_RULES)
  if shard_params_over_data:
    rules["embed"] = "data"
  return tuple(rules.items())


@gin.configurable
class Partitioner:
  """Builds the mesh and every sharding the trainer needs.

  Args:
    num_partitions: size of the 'model' axis; the 'data' axis takes the remaining devices.
    mesh_shape: explicit `(data, model)` shape instead of `num_partitions`.
    shard_params_over_data: FSDP, see the module docstring.
    logical_axis_rules: explicit rules, overriding the standard ones.
    init_distributed: call `jax.distributed.initialize()` first (multi-host TPU/GPU jobs; the
      coordinator and process ids come from the environment as JAX documents). Not needed when
      `python -m model.train` was started with --coordinator_address (model/launch.py).
    num_data_shards: how many row blocks (input shards) make a global batch; None = one per
      group of hosts holding distinct rows (1 on one host). See `data_layout`.
  """

  def __init__(self,
               num_partitions: int = 1,
               mesh_shape: Optional[Sequence[int]] = None,
               shard_params_over_data: bool = False,
               logical_axis_rules: Optional[Sequence[tuple[str, Optional[str]]]] = None,
               init_distributed: bool = False,
               devices: Optional[Sequence[jax.Device]] = None,
               num_data_shards: Optional[int] = None):
    if init_distributed and not jax.distributed.is_initialized():
      jax.distributed.initialize()
    if num_data_shards is not None and (isinstance(num_data_shards, bool) or not isinstance(
        num_data_shards, int) or num_data_shards < 1):
      raise ValueError(f"Partitioner.num_data_shards (DATA_SHARDS) must be a positive int or "
                       f"None, got {num_data_shards!r}")
    self.num_data_shards = num_data_shards
    devices = list(devices if devices is not None else jax.devices())
    if mesh_shape is None:
      if num_partitions < 1 or len(devices) % num_partitions:
        raise ValueError(f"num_partitions={num_partitions} does not divide the "
                         f"{len(devices)} available devices")
      mesh_shape = (len(devices) // num_partitions, num_partitions)
    mesh_shape = tuple(int(d) for d in mesh_shape)
    if len(mesh_shape) != 2 or int(np.prod(mesh_shape)) != len(devices):
      raise ValueError(f"mesh_shape {mesh_shape} must be (data, model) with data*model == "
                       f"{len(devices)} devices ({jax.process_count()} processes x "
                       f"{jax.local_device_count()} local devices)")
    device_grid = mesh_utils.create_device_mesh(mesh_shape, devices=devices)
    self.mesh = Mesh(device_grid, MESH_AXES)
    self.rules = dict(logical_axis_rules if logical_axis_rules is not None
                      else standard_logical_axis_rules(shard_params_over_data))
    self._warned: set[tuple[str, int, int]] = set()

  def activate(self) -> contextlib.ExitStack:
    """Context for tracing: this mesh plus the logical-axis rules, so the model's
    `nn.with_logical_constraint` activation annotations map onto the mesh."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh) if hasattr(jax, "set_mesh") else self.mesh)
    stack.enter_context(nn.logical_axis_rules(list(self.rules.items())))
    return stack

  @property
  def data_size(self) -> int:
    return self.mesh.shape["data"]

  @property
  def model_size(self) -> int:
    return self.mesh.shape["model"]

  def __repr__(self):
    return f"Partitioner(mesh={dict(self.mesh.shape)}, rules={self.rules})"

  # ---- data ----

  @property
  def data_shard(self) -> tuple[int, int]:
    """(shard_id, num_shards): each host reads its own slice of every global batch."""
    return jax.process_index(), jax.process_count()

  def check_batch_size(self, batch_size: int, num_microbatches: int = 1) -> None:
    """Raises before any compute if the global batch cannot be split evenly."""
    per_replica = self.data_size * num_microbatches
    if batch_size % per_replica:
      raise ValueError(
          f"Global batch size {batch_size} must be divisible by the data-parallel size "
          f"{self.data_size} x num_microbatches {num_microbatches} = {per_replica}; "
          f"mesh is {dict(self.mesh.shape)}")
    if batch_size % jax.process_count():
      raise ValueError(f"Global batch size {batch_size} is not divisible by the "
                       f"{jax.process_count()} hosts")

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def shard_batch(self, local_batch: Mapping[str, np.ndarray],
                  global_batch_size: Optional[int] = None) -> dict[str, jax.Array]:
    """This host's numpy rows -> global arrays split over 'data'.

    `global_batch_size` is needed when several hosts hold the same rows (a 'model' axis across
    hosts); the rows are then those of `data_layout(...).local_shards`.
    """
    def make(v):
      shape = None if global_batch_size is None else (global_batch_size,) + v.shape[1:]
      return jax.make_array_from_process_local_data(self.batch_sharding, v, shape)
    return {k: make(v) for k, v in local_batch.items()}

  def host_row_ranges(self, batch_size: int) -> dict[int, tuple[int, int]]:
    """{process index: (first row, end row)} of the global batch each process's devices hold."""
    rows: dict[int, set[int]] = {}
    for device, index in self.batch_sharding.devices_indices_map((batch_size,)).items():
      start, stop, _ = index[0].indices(batch_size)
      rows.setdefault(device.process_index, set()).update(range(start, stop))
    ranges = {}
    for process, held in rows.items():
      first, end = min(held), max(held) + 1
      if len(held) != end - first:
        raise ValueError(f"Process {process} holds non-contiguous batch rows {sorted(held)} on "
                         f"mesh {dict(self.mesh.shape)}; order the devices by process")
      ranges[process] = (first, end)
    return ranges

  def data_layout(self, batch_size: int) -> "DataLayout":
    """Which input shards this process reads (see the module docstring and `DataLayout`)."""
    return data_layout(self.host_row_ranges(batch_size), batch_size, self.num_data_shards,
                       jax.process_index())

  # ---- parameters ----

  def _mesh_axis(self, logical: Optional[str], dim: int) -> Optional[str]:
    if logical is None:
      return None
    if logical not in self.rules:
      raise ValueError(f"Logical axis {logical!r} has no partitioning rule; known: "
                       f"{sorted(self.rules)}")
    mesh_axis = self.rules[logical]
    if mesh_axis is None:
      return None
    size = self.mesh.shape[mesh_axis]
    if dim % size:
      key = (logical, dim, size)
      if key not in self._warned:
        self._warned.add(key)
        logging.info("Replicating logical axis %r of size %d (not divisible by mesh axis %r of "
                     "size %d)", logical, dim, mesh_axis, size)
      return None
    return mesh_axis

  def spec_for(self, logical_spec: P, shape: Sequence[int]) -> P:
    """Mesh PartitionSpec for one array; a mesh axis is used at most once per array."""
    if len(logical_spec) != len(shape):
      raise ValueError(f"Logical axes {logical_spec} do not match shape {tuple(shape)}")
    used, out = set(), []
    for logical, dim in zip(logical_spec, shape):
      axis = self._mesh_axis(logical, dim)
      if axis in used:
        axis = None
      if axis is not None:
        used.add(axis)
      out.append(axis)
    return P(*out)

  def param_shardings(self, abstract_params: Any, logical_axes: Any) -> Any:
    """NamedShardings for the params, from the model's logical axes."""
    return jax.tree.map(
        lambda spec, x: NamedSharding(self.mesh, self.spec_for(spec, x.shape)),
        logical_axes, abstract_params, is_leaf=lambda s: isinstance(s, P))

  def opt_state_shardings(self, tx: optax.GradientTransformation, abstract_params: Any,
                          param_shardings: Any) -> Any:
    """Shardings for the optimizer state: each statistic is sharded like its parameter.

    A statistic of the parameter's shape (Adam's moments) takes the parameter's sharding; one with
    a dimension reduced away (Adafactor's factored row/column statistics) takes it minus that
    dimension; anything else (step counts, unfactored placeholders) is replicated.
    """
    def for_leaf(leaf, param, sharding):
      spec = tuple(sharding.spec) + (None,) * (len(param.shape) - len(sharding.spec))
      if tuple(leaf.shape) == tuple(param.shape):
        return sharding
      for drop in reversed(range(len(param.shape))):
        if tuple(param.shape[:drop]) + tuple(param.shape[drop + 1:]) == tuple(leaf.shape):
          return NamedSharding(self.mesh, P(*(spec[:drop] + spec[drop + 1:])))
      return self.replicated

    abstract_state = jax.eval_shape(tx.init, abstract_params)
    return optax.tree_map_params(tx, for_leaf, abstract_state, abstract_params, param_shardings,
                                 transform_non_params=lambda _: self.replicated)


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """Input shards of one process: it reads `local_shards` (its rows of every global batch, in
  order) and saves the data position of `saved_shards` (each shard saved by one process)."""
  num_shards: int
  local_shards: tuple[int, ...]
  saved_shards: tuple[int, ...]
  rows_per_shard: int


def data_layout(row_ranges: Mapping[int, tuple[int, int]], batch_size: int,
                num_data_shards: Optional[int], process_index: int) -> DataLayout:
  """The `DataLayout` of `process_index`, given every process's row range of the global batch.

  Raises a ValueError (before any data is read) when `num_data_shards` does not split the batch
  into equal blocks that each lie on one group of hosts.
  """
  blocks = sorted(set(row_ranges.values()))
  if num_data_shards is None:
    num_data_shards = len(blocks)
  if batch_size % num_data_shards:
    raise ValueError(f"Global batch size {batch_size} is not divisible by the number of data "
                     f"shards {num_data_shards} (DATA_SHARDS)")
  rows = batch_size // num_data_shards
  for first, end in blocks:
    if first % rows or end % rows:
      raise ValueError(
          f"DATA_SHARDS={num_data_shards} (blocks of {rows} rows) does not fit the "
          f"{len(row_ranges)} processes: a process holds rows [{first}, {end}) of the batch of "
          f"{batch_size}. Use a multiple of {len(blocks)} data shards.")
  first, end = row_ranges[process_index]
  local = tuple(range(first // rows, end // rows))
  saver = {}
  for process in sorted(row_ranges):
    a, b = row_ranges[process]
    for shard in range(a // rows, b // rows):
      saver.setdefault(shard, process)
  saved = tuple(s for s in local if saver[s] == process_index)
  return DataLayout(num_data_shards, local, saved, rows)
