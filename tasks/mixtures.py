"""Mixture rates from token counts, and mixtures declared in a small YAML file.

Rates here are *token shares*: the fraction of training tokens a task should contribute. A share
is ``min(tokens, cap) ** (1 / temperature)``, normalised (T5's ``mixing_rate_num_examples``, in
tokens): temperature 1 keeps the natural token distribution, higher temperatures flatten it
towards small sources, caps stop a huge source from dominating.

seqio samples *examples*, so ``seqio_rates`` turns token shares into example rates by dividing by
each task's mean tokens per cached example (document). The realised token shares then match the
requested ones up to the change in mean example length that chunking causes for documents longer
than the chunk length.

A YAML mixture (no Python needed)::

    name: gf_high_quality
    temperature: 2.0                 # optional, default 1.0
    tasks:
      gf_docs: {rate: 0.4}           # a fixed 40% of the tokens
      gf_web: {weight_by: tokens, cap_tokens: 1000000}   # shares the remaining 60%

Tasks with ``rate`` get that fixed share; ``weight_by: tokens`` tasks share what is left in
proportion to their (capped, tempered) train-split token counts. With only fixed rates, the
rates are normalised.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import seqio
import yaml

TASK_KEYS = {"rate", "weight_by", "cap_tokens"}
CONFIG_KEYS = {"name", "temperature", "tasks"}

# Token shares of every mixture registered by this module, by mixture name.
MIXTURE_TOKEN_SHARES: dict[str, dict[str, float]] = {}


class MixtureConfigError(ValueError):
  """A mixture specification that cannot be used (unknown task, negative rate, empty, ...)."""


def token_shares(
    tokens: Mapping[str, int],
    temperature: float = 1.0,
    caps: Optional[Mapping[str, Optional[int]]] = None,
) -> dict[str, float]:
  """Shares ∝ ``min(tokens, cap) ** (1 / temperature)``, summing to 1."""
  if not tokens:
    raise MixtureConfigError("A mixture needs at least one task.")
  if temperature <= 0:
    raise MixtureConfigError(f"temperature must be positive, got {temperature}.")
  caps = caps or {}
  weights = {}
  for name, count in tokens.items():
    if count < 0:
      raise MixtureConfigError(f"Task {name} has a negative token count {count}.")
    cap = caps.get(name)
    if cap is not None and cap < 0:
      raise MixtureConfigError(f"Task {name} has a negative cap_tokens {cap}.")
    weights[name] = float(min(count, cap) if cap is not None else count) ** (1.0 / temperature)
  total = sum(weights.values())
  if total <= 0:
    raise MixtureConfigError(f"All tasks of the mixture have zero weight: {dict(tokens)}.")
  return {name: w / total for name, w in sorted(weights.items())}


def task_token_stats(task_name: str, split: str = "train") -> tuple[int, int]:
  """(tokens, examples) of a cached task's split, from its ``stats.<split>.json``."""
  stats = seqio.TaskRegistry.get(task_name).get_cached_stats(split)
  return int(stats["targets_tokens"]), int(stats["examples"])


def seqio_rates(shares: Mapping[str, float], split: str = "train") -> dict[str, float]:
  """Example rates for seqio that realise the given token shares (see the module docstring)."""
  rates = {}
  for name, share in shares.items():
    tokens, examples = task_token_stats(name, split)
    rates[name] = share * examples / tokens if tokens else 0.0
  return rates


def register_mixture(name: str, shares: Mapping[str, float]) -> seqio.Mixture:
  """(Re-)registers a seqio Mixture whose tasks contribute the given token shares."""
  tasks = [(task, rate) for task, rate in sorted(seqio_rates(shares).items()) if rate > 0]
  if not tasks:
    raise MixtureConfigError(f"Mixture {name} has no task with a positive rate: {dict(shares)}.")
  seqio.MixtureRegistry.remove(name)
  mixture = seqio.MixtureRegistry.add(name, tasks)
  MIXTURE_TOKEN_SHARES[name] = dict(shares)
  return mixture


def shares_from_config(config: Any) -> tuple[str, dict[str, float]]:
  """Validates a parsed mixture config; returns (name, token shares)."""
  if not isinstance(config, dict):
    raise MixtureConfigError(f"A mixture config must be a mapping, got {type(config).__name__}.")
  unknown = set(config) - CONFIG_KEYS
  if unknown:
    raise MixtureConfigError(f"Unknown mixture config keys {sorted(unknown)}; allowed: {sorted(CONFIG_KEYS)}.")
  name = config.get("name")
  if not isinstance(name, str) or not name:
    raise MixtureConfigError("A mixture config needs a non-empty string 'name'.")
  temperature = config.get("temperature", 1.0)
  if not isinstance(temperature, (int, float)) or temperature <= 0:
    raise MixtureConfigError(f"Mixture {name}: temperature must be a positive number, got {temperature!r}.")
  tasks = config.get("tasks")
  if not isinstance(tasks, dict) or not tasks:
    raise MixtureConfigError(f"Mixture {name} has no tasks: 'tasks' must be a non-empty mapping.")

  fixed, by_tokens, caps = {}, {}, {}
  registered = set(seqio.TaskRegistry.names())
  for task, spec in tasks.items():
    if task not in registered:
      known = sorted(t for t in registered if t.startswith("gf_"))
      raise MixtureConfigError(f"Mixture {name}: unknown task {task!r}; registered gf_ tasks: {known}.")
    if not isinstance(spec, dict) or set(spec) - TASK_KEYS or ("rate" in spec) == ("weight_by" in spec):
      raise MixtureConfigError(
          f"Mixture {name}: task {task} needs exactly one of 'rate: <number>' or "
          f"'weight_by: tokens' (optionally with cap_tokens), got {spec!r}."
      )
    if "rate" in spec:
      rate = spec["rate"]
      if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate < 0:
        raise MixtureConfigError(f"Mixture {name}: task {task} has an invalid rate {rate!r} (must be >= 0).")
      fixed[task] = float(rate)
      continue
    if spec["weight_by"] != "tokens":
      raise MixtureConfigError(f"Mixture {name}: task {task}: weight_by must be 'tokens', got {spec['weight_by']!r}.")
    cap = spec.get("cap_tokens")
    if cap is not None and (not isinstance(cap, (int, float)) or cap < 0):
      raise MixtureConfigError(f"Mixture {name}: task {task} has an invalid cap_tokens {cap!r}.")
    by_tokens[task] = task_token_stats(task)[0]
    caps[task] = cap

  fixed_total = sum(fixed.values())
  if not by_tokens:
    if fixed_total <= 0:
      raise MixtureConfigError(f"Mixture {name}: all rates are zero.")
    return name, {t: r / fixed_total for t, r in sorted(fixed.items())}
  if fixed_total >= 1:
    raise MixtureConfigError(
        f"Mixture {name}: fixed rates sum to {fixed_total} >= 1, leaving nothing for the "
        f"weight_by: tokens tasks {sorted(by_tokens)}."
    )
  rest = token_shares(by_tokens, temperature, caps)
  shares = dict(fixed)
  shares.update({t: s * (1 - fixed_total) for t, s in rest.items()})
  return name, dict(sorted(shares.items()))


def register_mixture_from_yaml(path: str) -> str:
  """Registers the mixture described by a YAML file (see the module docstring); returns its name."""
  import tensorflow as tf  # gfile reads local and remote paths.

  with tf.io.gfile.GFile(path) as f:
    try:
      config = yaml.safe_load(f.read())
    except yaml.YAMLError as e:
      raise MixtureConfigError(f"{path} is not valid YAML: {e}") from e
  name, shares = shares_from_config(config)
  register_mixture(name, shares)
  return name
