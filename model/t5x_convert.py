r"""Checkpoints between t5x (`python -m t5x.train` with gin/t5x/), ours (`model.train`) and HF.

The parameters are the same tree in all three of our formats: `GemmaT5xAdapter` keeps our
`Transformer`'s parameters under `params['decoder']`, so converting is re-filing, not renaming.

* t5x -> ours: `t5x_to_ours(t5x_step_dir, config, model_dir)` reads the `target` (parameters) of
  a t5x orbax step directory (`MODEL_DIR/checkpoint_<step>/`) and writes
  `model_dir/checkpoints/<step>/{params,meta}` in our layout. It has no optimizer state or data
  position, so it is for `model.eval`, `model.infer`, HF export and fine-tuning, not a resume.
* ours -> HF and back: `model.hf_convert.export_hf` / `import_hf`.
* ours -> t5x: `ours_to_t5x(params, config, t5x_model_dir, step, optimizer_def)` writes a t5x
  step directory with t5x's own checkpoint manager: the parameters plus a fresh optimizer
  state of `optimizer_def` (t5x's Adafactor with gin/t5x/gemma.gin's rules by default), which
  `t5x.train` (as its restore path), `t5x.eval` and `t5x.infer` read.

  python -m model.t5x_convert --t5x_checkpoint=/tmp/t5x_run/checkpoint_300 \
      --config=small --model_dir=/tmp/ours [--hf_dir=/tmp/hf]
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from model.config import GemmaConfig
from model.models import DecoderOnlyModel

_T5X_STEP_DIR = re.compile(r"checkpoint_(\d+)$")


def t5x_step(step_dir: str) -> int:
  """The step of a t5x checkpoint directory `.../checkpoint_<step>`."""
  match = _T5X_STEP_DIR.search(os.path.normpath(step_dir))
  if not match:
    raise ValueError(f"{step_dir} is not a t5x checkpoint directory (checkpoint_<step>)")
  return int(match.group(1))


def read_t5x_params(step_dir: str, config: GemmaConfig):
  """Our params (float32 arrays) from a t5x step directory written with gin/t5x/ (the adapter)."""
  state_dir = os.path.join(step_dir, "state")
  if not os.path.isdir(state_dir):
    raise ValueError(f"{step_dir} has no state/ item: not a t5x (orbax) checkpoint step")
  state = ocp.PyTreeCheckpointer().restore(state_dir)
  target = state.get("target", {})
  if "decoder" not in target:
    raise ValueError(f"{step_dir}: the t5x parameters have no 'decoder' module (found "
                     f"{sorted(target)}); only checkpoints of model/t5x_adapter.py's "
                     "GemmaT5xAdapter convert")
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), target["decoder"])
  DecoderOnlyModel(config).check_params(params)
  return params


def write_params(params, model_dir: str, step: int, meta: Optional[dict[str, Any]] = None) -> str:
  """Writes `model_dir/checkpoints/<step>/{params,meta}` (our layout); returns the step dir."""
  manager = ocp.CheckpointManager(
      epath.Path(model_dir) / "checkpoints",
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
      item_handlers={"params": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      meta=ocp.args.JsonSave({"step": int(step), **(meta or {})})), force=True)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(model_dir, "checkpoints", str(step))


def t5x_to_ours(step_dir: str, config: GemmaConfig, model_dir: str) -> str:
  """Converts a t5x step directory to our checkpoint layout; returns our step directory."""
  step = t5x_step(step_dir)
  params = read_t5x_params(step_dir, config)
  return write_params(params, model_dir, step, meta={"converted_from": os.path.abspath(step_dir)})


def default_t5x_optimizer():
  """t5x's Adafactor as gin/t5x/gemma.gin configures it (decay 0.8, our factor rules)."""
  from t5x import adafactor
  return adafactor.Adafactor(decay_rate=0.8, step_offset=0, logical_factor_rules={
      "vocab": "column", "embed": "row", "heads": "column", "kv_heads": "column", "kv": "column",
      "mlp": "column", "stack": "batch"})


def ours_to_t5x(params, config: GemmaConfig, t5x_model_dir: str, step: int,
                optimizer_def=None) -> str:
  """Writes `params` as t5x's `t5x_model_dir/checkpoint_<step>`; returns that directory."""
  from t5x import checkpoints as t5x_checkpoints
  from t5x import partitioning as t5x_partitioning
  from t5x import train_state as t5x_train_state
  from model.t5x_adapter import GemmaT5xAdapter

  DecoderOnlyModel(config).check_params(params)
  tokens = jnp.ones((1, 8), jnp.int32)
  axes = jax.eval_shape(lambda rng, t: GemmaT5xAdapter(config).init(rng, t, t, enable_dropout=False),
                        jax.random.PRNGKey(0), tokens)["params_axes"]
  variables = {"params": {"decoder": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)},
               "params_axes": axes}
  state = t5x_train_state.FlaxOptimTrainState.create(optimizer_def or default_t5x_optimizer(), variables)
  state = state.replace_step(jnp.asarray(step, jnp.int32))
  partitioner = t5x_partitioning.PjitPartitioner(num_partitions=1)
  os.makedirs(t5x_model_dir, exist_ok=True)  # t5x's manager falls back to the parent directory otherwise.
  manager = t5x_checkpoints.OrbaxCheckpointManagerInterface(t5x_model_dir, state, partitioner)
  manager.save(state)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(t5x_model_dir, f"checkpoint_{step}")


def main(argv):
  from absl import flags
  from model import hf_convert
  from model.config import get_config
  del argv
  f = flags.FLAGS
  config = get_config(f.config, **({"vocab_size": f.vocab_size} if f.vocab_size else {}))
  params = read_t5x_params(f.t5x_checkpoint, config)
  if f.model_dir:
    print("wrote", write_params(params, f.model_dir, t5x_step(f.t5x_checkpoint),
                                {"converted_from": os.path.abspath(f.t5x_checkpoint)}))
  if f.hf_dir:
    hf_convert.export_hf(jax.tree.map(np.asarray, params), config, f.hf_dir)
    print("wrote", f.hf_dir)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("t5x_checkpoint", None, "t5x step directory (MODEL_DIR/checkpoint_<step>).", required=True)
  flags.DEFINE_string("config", "small", "Our config name (model/config.py) the run used.")
  flags.DEFINE_integer("vocab_size", None, "The run's vocab size, if not the config's.")
  flags.DEFINE_string("model_dir", None, "Write our checkpoint under MODEL_DIR/checkpoints/<step>.")
  flags.DEFINE_string("hf_dir", None, "Write a transformers GemmaForCausalLM directory.")
  app.run(main)
