r"""A Bradley-Terry reward model: the Gemma decoder with a scalar head, trained on preference pairs.

  python -m model.reward_model --gin_file=gin/runs/reward_model.gin \
      --gin.INIT_CHECKPOINT="'out/chat/sft/checkpoints/200'" --gin.DATA_DIR="'out/chat/data'" \
      --gin.MODEL_DIR="'out/chat/rm'"

The reward of a sequence is `w . h_last + b`, `h_last` the backbone's final-normed hidden state
at the sequence's last real token -- for a chat pair, the response's `<end_of_turn>`, which has
attended to the whole prompt and answer. The loss is Bradley-Terry's negative log-likelihood
`-log sigmoid(r_chosen - r_rejected - margin)`, plus `center_coef * mean((r_chosen + r_rejected)^2)`
when reward centering is on (keeps rewards near 0, so a policy's KL-penalised return is not
dominated by an arbitrary offset).

Training reuses the pretraining machinery: `model.train.Trainer` (jit'd sharded step on the
`Partitioner`'s mesh, optax), `model.checkpoints.Checkpointer` (orbax, exact resume: the data
position is the step, `model.preference_data.StepBatches`) and `model.train.MetricsLogger`
(TensorBoard + metrics.jsonl). Every `eval_period` steps and at the end it reports held-out pair
accuracy next to the length-only baseline (pick the longer answer), so a length bias is visible.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from model import gin_utils, loop
from model import train as _train  # noqa: F401  Its flags (launch) must exist before absl parses argv.
from model.config import GemmaConfig
from model.models import DecoderOnlyModel
from model.transformer import Transformer

if __name__ == "__main__":
  from model import reward_model as _module  # Gin must see each configurable once.
  gin_utils.run(_module.main)


def last_token_index(tokens: jax.Array) -> jax.Array:
  """int32 [B]: index of each right-padded row's last non-padding token."""
  return jnp.maximum(jnp.sum(tokens != 0, axis=1) - 1, 0).astype(jnp.int32)


class RewardModel:
  """Gemma backbone + scalar head; the `model` interface `model.train.Trainer` expects."""

  loss_normalizing_factor = None  # Microbatches are weighted by their pairs (weight_sum).

  def __init__(self, config: GemmaConfig, margin: float = 0.0, center_coef: float = 0.0):
    if center_coef < 0:
      raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    self.config = config
    self.backbone = DecoderOnlyModel(config)
    self.module = Transformer(config)
    self.margin = float(margin)
    self.center_coef = float(center_coef)

  def _key(self):
    return (self.config, self.margin, self.center_coef)

  def __hash__(self):  # Equal reward models share compiled functions (a static jit argument).
    return hash(self._key())

  def __eq__(self, other):
    return isinstance(other, RewardModel) and self._key() == other._key()

  def init_params(self, rng, backbone_params=None):
    """{"backbone": decoder params (fresh, or given), "head": {"w": [D], "b": []}}."""
    k1, k2 = jax.random.split(rng)
    backbone = backbone_params if backbone_params is not None else self.backbone.init_params(k1)
    w = jax.random.normal(k2, (self.config.embed_dim,), jnp.float32) / np.sqrt(self.config.embed_dim)
    return {"backbone": backbone, "head": {"w": w, "b": jnp.zeros((), jnp.float32)}}

  def abstract_params(self):
    return jax.eval_shape(lambda: self.init_params(jax.random.PRNGKey(0)))

  def logical_axes(self):
    return {"backbone": self.backbone.logical_axes(), "head": {"w": P("embed"), "b": P()}}

  def rewards(self, params, tokens: jax.Array) -> jax.Array:
    """float32 [B] rewards of right-padded rows (each starting with BOS)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    segment_ids = (tokens != 0).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    hidden, _ = self.module.apply({"params": params["backbone"]}, tokens, positions, segment_ids,
                                  method=Transformer.hidden_states)
    last = jnp.take_along_axis(hidden, last_token_index(tokens)[:, None, None], axis=1)[:, 0]
    return last.astype(jnp.float32) @ params["head"]["w"] + params["head"]["b"]

  def loss_fn(self, params, batch: Mapping[str, jax.Array], dropout_rng=None):
    """(mean Bradley-Terry loss over the pairs, metrics)."""
    del dropout_rng
    both = jnp.concatenate([batch["chosen"], batch["rejected"]], axis=0)
    r = self.rewards(params, both)
    chosen, rejected = jnp.split(r, 2)
    diff = chosen - rejected
    bt = -jax.nn.log_sigmoid(diff - self.margin)
    loss = jnp.mean(bt)
    if self.center_coef:
      loss = loss + self.center_coef * jnp.mean(jnp.square(chosen + rejected))
    n = jnp.asarray(diff.shape[0], jnp.float32)
    metrics = {"loss": loss, "bt_loss": jnp.mean(bt), "accuracy": jnp.mean((diff > 0).astype(jnp.float32)),
               "reward_margin": jnp.mean(diff), "reward_mean": jnp.mean(r),
               "num_tokens": jnp.sum(both != 0).astype(jnp.float32), "weight_sum": n}
    return loss, metrics


def pair_accuracy(model: RewardModel, params, chosen: np.ndarray, rejected: np.ndarray,
                  batch_size: int = 64) -> dict[str, float]:
  """Held-out accuracy (ties count one half), mean reward margin, and the length-only baseline."""
  from model import preference_data
  score = jax.jit(model.rewards)
  diffs = []
  for i in range(0, len(chosen), batch_size):
    diffs.append(np.asarray(score(params, chosen[i:i + batch_size]) - score(params, rejected[i:i + batch_size])))
  diff = np.concatenate(diffs)
  return {"accuracy": float(np.mean(np.where(diff == 0, 0.5, diff > 0))),
          "reward_margin": float(np.mean(diff)),
          "length_baseline_accuracy": preference_data.length_baseline_accuracy(chosen, rejected),
          "pairs": int(len(diff))}


def load_reward_model(step_dir: str, model: RewardModel, partitioner):
  """The params of a reward model checkpoint (a clear error if it is not one for this config)."""
  from model import checkpoints
  abstract = model.abstract_params()
  shardings = partitioner.param_shardings(abstract, model.logical_axes())
  return checkpoints.load_params(step_dir, jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings))


@gin.configurable(denylist=["stop_after"])
def train_reward_model(*, model, partitioner, model_dir: str, data_dir: str, total_steps: int,
                       batch_size: int = 32, max_length: int = 128, optimizer=None,
                       checkpoint_cfg=None, init_checkpoint: Optional[str] = None,
                       margin: float = 0.0, center_coef: float = 0.0, eval_period: int = 0,
                       log_period: int = 10, seed: int = 0, num_microbatches: int = 1,
                       stop_after=None) -> dict:
  """Trains the reward model on DATA_DIR's preference pairs; returns (and writes) its summary.

  Args:
    model: a `DecoderOnlyModel` (`build_model`) whose config the backbone takes.
    init_checkpoint: a step directory of a decoder (SFT or pretrained) to start the backbone from;
      None = random init. Used only when MODEL_DIR has no checkpoint yet.
    margin, center_coef: Bradley-Terry margin and the reward-centering coefficient (0 = off).
    eval_period: held-out accuracy every this many steps (and always at the end).
    num_microbatches: gradient accumulation over this many parts of the batch of pairs (memory).
    stop_after: test hook, returns True to stop after that step (a pre-emption).
  """
  from model import checkpoints, preference_data
  from model.optimizers import create_optimizer
  from model.train import MetricsLogger, Trainer
  for name, value in (("TRAIN_STEPS", total_steps), ("BATCH_SIZE", batch_size), ("log_period", log_period),
                      ("NUM_MICROBATCHES", num_microbatches)):
    gin_utils.check_positive_int(name, value)
  if not model_dir:
    raise ValueError("MODEL_DIR must be set")
  rm = RewardModel(model.config, margin=margin, center_coef=center_coef)
  train_data = preference_data.load_preferences(data_dir, "train", max_length)
  eval_data = preference_data.load_preferences(data_dir, "validation", max_length)
  partitioner.check_batch_size(batch_size, num_microbatches)
  batches = preference_data.StepBatches({k: train_data[k] for k in ("chosen", "rejected")}, batch_size, seed)
  optimizer = optimizer if optimizer is not None else create_optimizer()
  trainer = Trainer(rm, optimizer, partitioner, num_microbatches, seed)
  checkpoint_cfg = checkpoint_cfg or checkpoints.CheckpointConfig()
  checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"), checkpoint_cfg)
  compat = {"kind": "reward_model", "config": repr(model.config), "batch_size": batch_size,
            "max_length": max_length, "seed": seed, "pairs": batches.num_examples}
  restored = checkpointer.restore_latest(trainer.abstract_train_params(), trainer.abstract_train_opt_state(),
                                         batches, compat)
  if restored is not None:
    start_step, params, opt_state = restored
    state = trainer.state_from(start_step, params, opt_state)
  else:
    start_step = 0
    backbone = None
    if init_checkpoint:
      step_dir = checkpoints.resolve_checkpoint_path(init_checkpoint, None)
      abstract = trainer.abstract_train_params()["backbone"]
      backbone = checkpoints.load_params(step_dir, abstract)
    params = rm.init_params(jax.random.PRNGKey(seed), backbone)
    state = trainer.init_state(jax.device_put(params, trainer.param_shardings))
  logger = MetricsLogger(model_dir, start_step)
  print(f"Reward model: {batches.num_examples} train pairs, {len(eval_data['chosen'])} held out; "
        f"starting at step {start_step} of {total_steps}", flush=True)
  evals = []

  def evaluate(at_step):
    result = pair_accuracy(rm, state.params, eval_data["chosen"], eval_data["rejected"])
    logger.write("eval", at_step, {k: v for k, v in result.items()})
    print(f"step {at_step} | held-out accuracy {result['accuracy']:.3f} "
          f"(length baseline {result['length_baseline_accuracy']:.3f}) over {result['pairs']} pairs", flush=True)
    evals.append({"step": at_step, **result})
    return result

  if start_step == 0:
    evaluate(0)

  def update(done):
    nonlocal state
    state, metrics = trainer.train_step(state, partitioner.shard_batch(next(batches)))
    return jax.device_get(metrics)

  step = loop.run_recorded_steps(
      start_step, total_steps, update,
      describe=lambda m: f"loss {float(m['loss']):.4f} | accuracy {float(m['accuracy']):.3f}",
      logger=logger, checkpointer=checkpointer, current_state=lambda: state, data_iterator=batches,
      meta={"compat": compat}, log_period=log_period, save_period=checkpoint_cfg.save_period,
      eval_period=eval_period, evaluate=evaluate, stop_after=stop_after)
  records = logger.records("train")
  summary = {"steps": step, "start_step": start_step,
             "first_loss": records[0]["loss"] if records else None,
             "final_loss": records[-1]["loss"] if records else None,
             "eval": evals[-1] if evals else None, "eval_start": evals[0] if evals else None}
  if step == total_steps:
    with open(os.path.join(model_dir, "reward_model_summary.json"), "w") as f:
      json.dump(summary, f, indent=1, sort_keys=True)
  return summary


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  from model import checkpoints, optimizers, partitioning  # noqa: F401  Configurables of the gin files.
  gin_utils.parse_gin_flags()
  train_reward_model()
