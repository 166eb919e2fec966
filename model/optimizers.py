"""Optimizers and learning-rate schedules (optax), all gin-configurable.

t5x trains with Adafactor and a warmup + inverse-square-root schedule; AdamW with cosine or
warmup-stable-decay (WSD) schedules are here for modern recipes. Gradients are clipped by global
norm before the update. Parameters are float32 masters (the model's `param_dtype`); the forward
and backward passes run in the model's compute `dtype` (bfloat16 on accelerators).
Gradient accumulation is the trainer's microbatch loop (`train.num_microbatches`), which is exact
for token-weighted losses.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import gin
import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "rsqrt", "cosine", "wsd")


@gin.configurable
def create_schedule(name: str = "rsqrt",
                    peak_learning_rate: float = 1e-2,
                    warmup_steps: int = 1000,
                    total_steps: Optional[int] = None,
                    decay_fraction: float = 0.1,
                    final_learning_rate_fraction: float = 0.0,
                    decay_start_step: Optional[float] = None) -> optax.Schedule:
  """A learning-rate schedule; every one starts with `warmup_steps` of linear warmup from 0.

  * constant: `peak` after warmup.
  * rsqrt: `peak * sqrt(warmup / step)` after warmup (t5x's rsqrt_decay, made continuous).
  * cosine: cosine decay from `peak` to `final_fraction * peak` at `total_steps`.
  * wsd: warmup, stable at `peak`, then linear decay to `final_fraction * peak` over the last
    `decay_fraction` of `total_steps`, or from `decay_start_step` on if that is set: an int step,
    or a float in (0, 1) read as a fraction of `total_steps`. A staged mixture sets it to the
    final stage's start (gin/small_cpu_staged.gin), so the rate decays while the high-quality
    stage trains, as in Gemma's recipe.
  """
  if name not in SCHEDULES:
    raise ValueError(f"Unknown schedule {name!r}; choose one of {SCHEDULES}")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
  if name in ("cosine", "wsd") and (total_steps is None or total_steps <= warmup_steps):
    raise ValueError(f"Schedule {name!r} needs total_steps > warmup_steps ({warmup_steps}), "
                     f"got {total_steps}")
  peak = float(peak_learning_rate)
  final = peak * final_learning_rate_fraction
  warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))

  if name == "constant":
    after = optax.constant_schedule(peak)
  elif name == "rsqrt":
    def after(count):
      return peak * jnp.sqrt(max(warmup_steps, 1) / jnp.maximum(count + warmup_steps, 1))
  elif name == "cosine":
    after = optax.cosine_decay_schedule(peak, total_steps - warmup_steps,
                                        alpha=final_learning_rate_fraction)
  else:  # wsd
    if decay_start_step is not None:
      start = resolve_step(decay_start_step, total_steps, "decay_start_step")
      if not warmup_steps <= start < total_steps:
        raise ValueError(f"decay_start_step {decay_start_step} (step {start}) must lie in "
                         f"[warmup_steps={warmup_steps}, total_steps={total_steps})")
      decay_steps = total_steps - start
    else:
      if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")
      decay_steps = max(int(round(total_steps * decay_fraction)), 1)
    stable_steps = max(total_steps - warmup_steps - decay_steps, 0)
    after = optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, final, decay_steps)],
        [stable_steps])
  if warmup_steps == 0:
    return after
  return optax.join_schedules([warmup, after], [warmup_steps])


def resolve_step(step: float, total_steps: int, name: str = "step") -> int:
  """An int step as is; a float in (0, 1) as that fraction of `total_steps`, rounded."""
  if isinstance(step, bool) or not isinstance(step, (int, float)):
    raise ValueError(f"{name} must be an int step or a float fraction in (0, 1), got {step!r}")
  if isinstance(step, float):
    if not 0.0 < step < 1.0:
      raise ValueError(f"{name} {step} is a float, so it must be a fraction in (0, 1)")
    return int(round(step * total_steps))
  if step < 0:
    raise ValueError(f"{name} must be >= 0, got {step}")
  return step


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optax transformation plus the schedule it uses (so the trainer can log the rate)."""
  tx: optax.GradientTransformation
  learning_rate_fn: Callable[[jax.Array], jax.Array]


def _decay_mask(params):
  """Weight decay on matrices only: no decay for norms' scales (1-D parameters)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


@gin.configurable
def create_optimizer(name: str = "adafactor",
                     schedule: Optional[optax.Schedule] = None,
                     clip_grad_norm: Optional[float] = 1.0,
                     weight_decay: float = 0.0,
                     b1: float = 0.9,
                     b2: float = 0.95,
                     eps: float = 1e-8,
                     adafactor_decay_rate: float = 0.8,
                     adafactor_multiply_by_parameter_scale: bool = True) -> Optimizer:
  """Adafactor (t5x's default: factored second moments, no momentum) or AdamW."""
  schedule = schedule if schedule is not None else create_schedule()
  if name == "adafactor":
    core = optax.adafactor(
        learning_rate=schedule,
        decay_rate=adafactor_decay_rate,
        multiply_by_parameter_scale=adafactor_multiply_by_parameter_scale,
        clipping_threshold=1.0,
        weight_decay_rate=weight_decay or None,
        weight_decay_mask=_decay_mask if weight_decay else None)
  elif name == "adamw":
    core = optax.adamw(learning_rate=schedule, b1=b1, b2=b2, eps=eps,
                       weight_decay=weight_decay, mask=_decay_mask)
  else:
    raise ValueError(f"Unknown optimizer {name!r}; choose 'adafactor' or 'adamw'")
  parts = [optax.clip_by_global_norm(clip_grad_norm)] if clip_grad_norm else []
  return Optimizer(tx=optax.chain(*parts, core), learning_rate_fn=schedule)
