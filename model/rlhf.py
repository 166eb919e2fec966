r"""RLHF: on-policy sampling, RLOO (default) or clipped PPO, a KL anchor to the frozen SFT model.

  python -m model.rlhf --gin_file=gin/runs/rlhf.gin \
      --gin.POLICY_CHECKPOINT="'out/chat/sft/checkpoints/200'" \
      --gin.REWARD_CHECKPOINT="'out/chat/rm/checkpoints/300'" \
      --gin.DATA_DIR="'out/chat/data'" --gin.MODEL_DIR="'out/chat/rl'"

Each step takes a batch of prompts (the ``prompt`` of DATA_DIR's preference pairs), samples
`group_size` responses per prompt with the KV-cache decoder (`model.decoding.generate`), and
scores them:

* reward: the reward model (`model.reward_model`) at the response's last token, minus
  `nontermination_penalty` if the response never produced a stop token in `max_decode_len`;
* KL to the frozen reference (the SFT policy), per sampled token from the log-ratio
  `l = log pi(y) - log pi_ref(y)`: ``k1 = l`` or ``k3 = exp(-l) - 1 + l`` (unbiased, >= 0),
  clamped to [-kl_clamp, kl_clamp]; summed over the response, times `kl_coef`, subtracted from the
  reward (KL-in-reward, as TRL's RLOO does);
* tokens after the terminator are masked out of every sum (the decoder pads them with 0).

RLOO: the advantage of sample i is its return minus the mean return of the other
`group_size - 1` samples of the same prompt, and the loss is ``-mean(A_i * log pi(y_i))``.
PPO (`algorithm='ppo'`): the same critic-free advantages on every token, the clipped ratio
objective ``-min(r A, clip(r, 1-eps, 1+eps) A)`` against the sampling policy, for `ppo_epochs`
updates on each sampled batch.

The update reuses `model.train.Trainer` (jit'd sharded step on the Partitioner's mesh; policy,
reference and reward model parameters are all sharded with the model's logical axes), orbax
checkpoints (`model.checkpoints`; the prompts' position is the step, and the sampling key is
`fold_in(seed, step)`, so a run killed at any point resumes exactly) and `model.train.MetricsLogger`
(reward, KL, response length, entropy, ... to TensorBoard and metrics.jsonl).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from model import decoding
from model import gin_utils, loop
from model import train as _train  # noqa: F401  Its flags (launch) must exist before absl parses argv.
from model.transformer import Transformer

if __name__ == "__main__":
  from model import rlhf as _module  # Gin must see each configurable once.
  gin_utils.run(_module.main)

ALGORITHMS = ("rloo", "ppo")
KL_ESTIMATORS = ("k1", "k3")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The knobs of the policy optimisation (hashable: a static argument of the jit'd rollout)."""
  algorithm: str = "rloo"
  group_size: int = 4
  max_decode_len: int = 32
  temperature: float = 1.0
  kl_coef: float = 0.05
  kl_estimator: str = "k3"
  kl_clamp: float = 10.0
  nontermination_penalty: float = 1.0
  ppo_clip: float = 0.2
  ppo_epochs: int = 1

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
    if self.group_size < 2:
      raise ValueError(f"group_size must be >= 2 (the leave-one-out baseline needs others), got {self.group_size}")
    if self.algorithm == "rloo" and self.ppo_epochs != 1:
      raise ValueError("ppo_epochs > 1 needs algorithm='ppo' (RLOO is on-policy, one update per sample)")
    for name in ("max_decode_len", "ppo_epochs"):
      gin_utils.check_positive_int(name, getattr(self, name))
    if self.kl_coef < 0 or self.kl_clamp <= 0 or self.temperature <= 0 or not 0 < self.ppo_clip < 1:
      raise ValueError(f"Invalid RLConfig: {self}")


def kl_estimate(log_ratio: jax.Array, estimator: str, clamp: float) -> jax.Array:
  """Per-token KL(pi || pi_ref) estimate from l = log pi - log pi_ref of tokens sampled from pi."""
  if estimator == "k1":
    kl = log_ratio
  else:
    kl = jnp.expm1(-log_ratio) + log_ratio
  return jnp.clip(kl, -clamp, clamp)


def response_mask(responses: jax.Array, stop_tokens: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """(float32 [B, T] 1 up to and including the first stop token, bool [B] terminated)."""
  is_stop = jnp.isin(responses, jnp.asarray(stop_tokens, jnp.int32))
  stops_before = jnp.cumsum(is_stop, axis=1) - is_stop  # Stop tokens strictly before t.
  mask = (stops_before == 0) & (responses != decoding.PAD_ID)
  return mask.astype(jnp.float32), jnp.any(is_stop, axis=1)


def right_align(tokens: jax.Array) -> jax.Array:
  """Moves every 0 of each row to its right end, keeping the order of the other tokens."""
  order = jnp.argsort(tokens == decoding.PAD_ID, axis=1, stable=True)
  return jnp.take_along_axis(tokens, order, axis=1)


def response_log_probs(module: Transformer, params, prompts: jax.Array, responses: jax.Array,
                       temperature: float = 1.0):
  """(float32 [B, T] log pi(response token | context), float32 [B, T] entropy at each step).

  `prompts` are left-padded [B, P], `responses` [B, T] (0 after the stop); the logits are those
  the sampler used (divided by the temperature).
  """
  seq = jnp.concatenate([prompts, responses], axis=1)
  inputs = seq[:, :-1]
  segment_ids = (inputs != decoding.PAD_ID).astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
  hidden, _ = module.apply({"params": params}, inputs, positions, segment_ids, method=Transformer.hidden_states)
  p = prompts.shape[1]
  logits = module.apply({"params": params}, hidden[:, p - 1:], method=Transformer.logits) / temperature
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  token_lp = jnp.take_along_axis(log_probs, responses[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  return token_lp, entropy


class PolicyObjective:
  """The policy's RLOO / PPO-clip loss over a rollout batch: the `model` that `Trainer` steps."""

  loss_normalizing_factor = None

  def __init__(self, policy, rl: RLConfig):
    self.policy = policy  # a DecoderOnlyModel
    self.config = policy.config
    self.module = Transformer(policy.config)
    self.rl = rl

  def abstract_params(self):
    return self.policy.abstract_params()

  def logical_axes(self):
    return self.policy.logical_axes()

  def init_params(self, rng):
    return self.policy.init_params(rng)

  def loss_fn(self, params, batch: Mapping[str, jax.Array], dropout_rng=None):
    del dropout_rng
    mask = batch["response_mask"]
    token_lp, entropy = response_log_probs(self.module, params, batch["prompts"], batch["responses"],
                                           self.rl.temperature)
    adv = batch["advantages"]
    tokens = jnp.maximum(jnp.sum(mask), 1.0)
    if self.rl.algorithm == "rloo":
      loss = -jnp.mean(adv * jnp.sum(token_lp * mask, axis=1))
      clip_fraction = jnp.zeros(())
    else:
      ratio = jnp.exp(token_lp - batch["old_log_probs"])
      clipped = jnp.clip(ratio, 1 - self.rl.ppo_clip, 1 + self.rl.ppo_clip)
      objective = jnp.minimum(ratio * adv[:, None], clipped * adv[:, None])
      loss = -jnp.sum(objective * mask) / tokens
      clip_fraction = jnp.sum((jnp.abs(ratio - 1) > self.rl.ppo_clip) * mask) / tokens
    # What the loss averages over (rows for RLOO, tokens for PPO): with gradient accumulation,
    # `Trainer` weights each microbatch by it, so the accumulated gradient is the whole batch's.
    weight = jnp.asarray(mask.shape[0], jnp.float32) if self.rl.algorithm == "rloo" else jnp.sum(mask)
    metrics = {"loss": loss, "policy_entropy": jnp.sum(entropy * mask) / tokens,
               "clip_fraction": clip_fraction, "num_tokens": jnp.sum(mask), "weight_sum": weight}
    return loss, metrics


@functools.partial(jax.jit, static_argnames=("policy_config", "rl", "stop_tokens", "reward_model"))
def rollout(policy_config, rl: RLConfig, stop_tokens, reward_model, params, ref_params, rm_params,
            prompts, rng):
  """Samples `rl.group_size` responses per prompt and scores them; returns the update batch + stats.

  The repeated rows are split over the mesh's 'data' axis (under `Partitioner.activate`), so the
  prompts may come in replicated: a step's rows, not its prompts, must divide over 'data'.
  """
  module = Transformer(policy_config)
  prompts = jnp.repeat(prompts, rl.group_size, axis=0)  # The samples of a prompt are adjacent.
  prompts = nn.with_logical_constraint(prompts, ("batch", None))
  sampler = decoding.Sampler(method="temperature", temperature=rl.temperature)
  # The jit'd decoder itself: `decoding.generate`'s argument checks need concrete prompts.
  responses, _ = decoding._generate(policy_config, params, prompts, rng, max_decode_len=rl.max_decode_len,
                                    sampler=sampler, stop_tokens=stop_tokens)
  mask, terminated = response_mask(responses, stop_tokens)
  responses = (responses * mask).astype(jnp.int32)
  old_lp, entropy = response_log_probs(module, params, prompts, responses, rl.temperature)
  ref_lp, _ = response_log_probs(module, ref_params, prompts, responses, rl.temperature)
  kl_tokens = kl_estimate(old_lp - ref_lp, rl.kl_estimator, rl.kl_clamp) * mask
  kl = jnp.sum(kl_tokens, axis=1)
  score = reward_model.rewards(rm_params, right_align(jnp.concatenate([prompts, responses], axis=1)))
  reward = score - rl.nontermination_penalty * (~terminated).astype(jnp.float32)
  returns = reward - rl.kl_coef * kl
  grouped = returns.reshape(-1, rl.group_size)
  baseline = (jnp.sum(grouped, axis=1, keepdims=True) - grouped) / (rl.group_size - 1)
  advantages = (grouped - baseline).reshape(-1)
  log_ratio = (old_lp - ref_lp) * mask
  batch = {"prompts": prompts, "responses": responses, "response_mask": mask,
           "advantages": jax.lax.stop_gradient(advantages), "old_log_probs": jax.lax.stop_gradient(old_lp)}
  lengths = jnp.sum(mask, axis=1)
  stats = {"reward": jnp.mean(score), "reward_with_penalty": jnp.mean(reward), "return": jnp.mean(returns),
           "kl": jnp.mean(kl), "kl_k1": jnp.mean(jnp.sum(log_ratio, axis=1)),
           "kl_k3": jnp.mean(jnp.sum(kl_estimate(old_lp - ref_lp, "k3", rl.kl_clamp) * mask, axis=1)),
           "response_length": jnp.mean(lengths), "entropy": jnp.sum(entropy * mask) / jnp.maximum(jnp.sum(mask), 1),
           "terminated_fraction": jnp.mean(terminated.astype(jnp.float32)),
           "advantage_std": jnp.std(advantages)}
  return batch, stats


def evaluate_policy(policy_config, rl: RLConfig, stop_tokens, reward_model, params, ref_params, rm_params,
                    prompts: np.ndarray, seed: int = 1234, batch_size: int = 64) -> dict[str, float]:
  """Mean reward / KL / length / termination over `prompts` (one sample each, a fixed key)."""
  one = dataclasses.replace(rl, group_size=2)  # Two samples per prompt, both counted.
  totals: dict[str, float] = {}
  n = 0
  for i in range(0, len(prompts), batch_size):
    chunk = prompts[i:i + batch_size]
    _, stats = rollout(policy_config, one, stop_tokens, reward_model, params, ref_params, rm_params,
                       jnp.asarray(chunk), jax.random.PRNGKey(seed + i))
    for k, v in jax.device_get(stats).items():
      totals[k] = totals.get(k, 0.0) + float(v) * len(chunk)
    n += len(chunk)
  return {k: v / n for k, v in totals.items()}


def check_same_config(step_dir: str, abstract_params, what: str) -> None:
  """A clear error if the checkpoint's parameters are not shaped like the policy's."""
  from model import checkpoints
  saved = checkpoints.read_meta(step_dir).get("compat", {}).get("param_shapes")
  if saved is None:
    return  # Not written by our trainer (e.g. an HF import); load_params checks the shapes.
  want = {jax.tree_util.keystr(k): list(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(abstract_params)}
  if saved != want:
    diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
    raise ValueError(f"The {what} checkpoint {step_dir} has another model config than the policy: "
                     f"{diff[0]} is {saved.get(diff[0])} there and {want.get(diff[0])} in the policy "
                     f"({len(diff)} parameters differ). The reference must be the policy's SFT checkpoint.")


@gin.configurable(denylist=["stop_after"])
def train_rlhf(*, model, reward_model_base, partitioner, model_dir: str, data_dir: str,
               policy_checkpoint: str, reward_checkpoint: str, total_steps: int,
               reference_checkpoint: Optional[str] = None, rl: Optional[RLConfig] = None,
               prompts_per_step: int = 8, optimizer=None, checkpoint_cfg=None, eval_period: int = 0,
               log_period: int = 1, seed: int = 0, max_length: int = 128, num_microbatches: int = 1,
               stop_after=None) -> dict:
  """Optimises the policy against the reward model; returns (and writes) the run summary.

  Args:
    model: the policy's `DecoderOnlyModel` (config); its params start at `policy_checkpoint`.
    reward_model_base: the `DecoderOnlyModel` whose config the reward model was trained with.
    reference_checkpoint: the frozen KL anchor; by default `policy_checkpoint` (the SFT model).
    prompts_per_step: prompts per step; each gets `rl.group_size` samples.
    max_length: the longest preference row (prompts are read from the pairs).
    num_microbatches: the policy update accumulates gradients over this many parts of the
      step's rows (memory; the rollout samples all rows at once).
  """
  from model import checkpoints, preference_data
  from model.optimizers import create_optimizer
  from model.reward_model import RewardModel, load_reward_model
  from model.train import MetricsLogger, Trainer
  from tasks import special_tokens
  import tasks
  rl = rl or RLConfig()
  for name, value in (("TRAIN_STEPS", total_steps), ("prompts_per_step", prompts_per_step), ("log_period", log_period),
                      ("NUM_MICROBATCHES", num_microbatches)):
    gin_utils.check_positive_int(name, value)
  if not model_dir:
    raise ValueError("MODEL_DIR must be set")
  reference_checkpoint = reference_checkpoint or policy_checkpoint
  policy_dir = checkpoints.resolve_checkpoint_path(policy_checkpoint, None)
  ref_dir = checkpoints.resolve_checkpoint_path(reference_checkpoint, None)
  rm_dir = checkpoints.resolve_checkpoint_path(reward_checkpoint, None)
  check_same_config(policy_dir, model.abstract_params(), "policy")
  check_same_config(ref_dir, model.abstract_params(), "reference")
  if reward_model_base.config.vocab_size != model.config.vocab_size:
    raise ValueError(f"The reward model's vocab_size {reward_model_base.config.vocab_size} is not the "
                     f"policy's {model.config.vocab_size}: they must share the tokenizer")
  gin_utils.register_data_dir(data_dir)
  stop_tokens = special_tokens.special_tokens(tasks.get_vocabulary(data_dir)).stop_ids
  train_prompts = preference_data.load_preferences(data_dir, "train", max_length)["prompt"]
  eval_prompts = preference_data.load_preferences(data_dir, "validation", max_length,
                                                  prompt_length=train_prompts.shape[1])["prompt"]
  if train_prompts.shape[1] + rl.max_decode_len > model.config.max_seq_len:
    raise ValueError(f"prompts ({train_prompts.shape[1]}) + max_decode_len ({rl.max_decode_len}) exceed the "
                     f"model's max_seq_len {model.config.max_seq_len}")
  partitioner.check_batch_size(prompts_per_step * rl.group_size, num_microbatches)
  batches = preference_data.StepBatches({"prompt": train_prompts}, prompts_per_step, seed)
  optimizer = optimizer if optimizer is not None else create_optimizer()
  objective = PolicyObjective(model, rl)
  trainer = Trainer(objective, optimizer, partitioner, num_microbatches, seed)
  abstract = trainer.abstract_train_params()
  ref_params = checkpoints.load_params(ref_dir, abstract)
  rm = RewardModel(reward_model_base.config)
  rm_params = load_reward_model(rm_dir, rm, partitioner)
  checkpoint_cfg = checkpoint_cfg or checkpoints.CheckpointConfig()
  checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"), checkpoint_cfg)
  compat = {"kind": "rlhf", "config": repr(model.config), "rl": dataclasses.asdict(rl), "seed": seed,
            "prompts_per_step": prompts_per_step, "prompts": batches.num_examples,
            "param_shapes": {jax.tree_util.keystr(k): list(v.shape)
                             for k, v in jax.tree_util.tree_leaves_with_path(trainer.abstract_params)}}
  restored = checkpointer.restore_latest(abstract, trainer.abstract_train_opt_state(), batches, compat)
  if restored is not None:
    start_step, params, opt_state = restored
    state = trainer.state_from(start_step, params, opt_state)
  else:
    start_step = 0
    state = trainer.init_state(checkpoints.load_params(policy_dir, abstract))
  logger = MetricsLogger(model_dir, start_step)
  evals = []
  print(f"RLHF ({rl.algorithm}, group {rl.group_size}, KL {rl.kl_estimator} x {rl.kl_coef}): "
        f"{batches.num_examples} prompts, {len(eval_prompts)} held out; step {start_step} of {total_steps}", flush=True)

  def evaluate(at_step):
    with partitioner.activate():
      result = evaluate_policy(model.config, rl, stop_tokens, rm, state.params, ref_params, rm_params, eval_prompts)
    logger.write("eval", at_step, result)
    print(f"step {at_step} | held-out reward {result['reward']:.3f} | KL {result['kl']:.3f} | "
          f"length {result['response_length']:.1f} | terminated {result['terminated_fraction']:.2f}", flush=True)
    evals.append({"step": at_step, **result})

  if start_step == 0:
    evaluate(0)

  def update(done):
    nonlocal state
    # Replicated (every host reads the same prompts); `rollout` splits the sampled rows over 'data'.
    prompts = jax.make_array_from_process_local_data(partitioner.replicated, next(batches)["prompt"])
    key = jax.random.fold_in(jax.random.PRNGKey(seed), done)
    with partitioner.activate():
      batch, stats = rollout(model.config, rl, stop_tokens, rm, state.params, ref_params, rm_params, prompts, key)
    for _ in range(rl.ppo_epochs):
      state, metrics = trainer.train_step(state, batch)
    return {**jax.device_get(stats), **jax.device_get(metrics)}

  def describe(r):
    return (f"reward {float(r['reward']):.3f} | KL {float(r['kl']):.3f} | "
            f"length {float(r['response_length']):.1f} | entropy {float(r['entropy']):.3f}")

  step = loop.run_recorded_steps(
      start_step, total_steps, update, describe=describe, logger=logger, checkpointer=checkpointer,
      current_state=lambda: state, data_iterator=batches, meta={"compat": compat},
      log_period=log_period, save_period=checkpoint_cfg.save_period, eval_period=eval_period,
      evaluate=evaluate, stop_after=stop_after)
  records = logger.records("train")
  summary = {"steps": step, "start_step": start_step,
             "train_first": records[0] if records else None, "train_last": records[-1] if records else None,
             "eval_start": evals[0] if evals else None, "eval": evals[-1] if evals else None}
  if step == total_steps:
    with open(os.path.join(model_dir, "rlhf_summary.json"), "w") as f:
      json.dump(summary, f, indent=1, sort_keys=True, default=float)
  return summary


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  from model import checkpoints, optimizers, partitioning  # noqa: F401  Configurables of the gin files.
  gin_utils.parse_gin_flags()
  train_rlhf()
