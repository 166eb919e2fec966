"""Mixture rates from token counts, and mixtures declared in a small YAML file.

Rates here are *token shares*: the fraction of training tokens a task should contribute. A share
is ``min(tokens, cap) ** (1 / temperature)``, normalised (T5's ``mixing_rate_num_examples``, in
tokens): temperature 1 keeps the natural token distribution, higher temperatures flatten it
towards small sources, caps stop a huge source from dominating.

seqio samples *examples*, and a Task cuts each cached document of ``n`` tokens into
``ceil(n / c)`` examples at chunk length ``c`` (``sequence_length - 2``, or ``max_chunk_tokens``):
a source of long documents yields many examples per document. A task's example rate is therefore
``share × examples(c) / tokens``, i.e. the token share divided by the mean content tokens per
example *at the run's chunk length*. ``TokenShareMixture`` picks these rates in ``get_dataset`` from
the ``sequence_length`` it is called with, so the realised token shares (content tokens, without
the BOS/EOS each example adds) match the requested ones at any sequence length.

``examples(c)`` comes from the task's train-split counts in ``sources.json`` (``set_task_counts``,
called by ``tasks.register_data_dir``), never from reading the cache:

* no chunking (no sequence length, no ``max_chunk_tokens``): the number of documents (exact);
* ``c`` one of the recorded chunk lengths (``pipelines.tokenize.STANDARD_CHUNK_LENGTHS``,
  ``L - 2`` for ``L`` = 32, 64, ..., 32768): the recorded ``sum(ceil(n / c))`` (exact);
* any other ``c``: linear interpolation in ``1 / c`` between the neighbouring exact points, which
  include ``(1/c → 0: documents)`` and ``(c = 1: tokens)``. The count lies between the exact
  counts of the neighbouring chunk lengths, and the interpolation is exact for the documents that
  are shorter than both (one example each) or whose chunk counts are linear in ``1 / c``;
* a ``sources.json`` written before chunk counts were recorded: the number of documents (the old
  rule, exact only when no document is chunked), with a logged warning.

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

import bisect
import logging
from typing import Any, Mapping, Optional

import seqio
import yaml

from tasks import preprocessors

TASK_KEYS = {"rate", "weight_by", "cap_tokens"}
CONFIG_KEYS = {"name", "temperature", "tasks"}

# Token shares of every mixture registered by this module, by mixture name.
MIXTURE_TOKEN_SHARES: dict[str, dict[str, float]] = {}
# Train-split counts of every task registered from a data dir, by task name: its sources.json split
# entry ({"documents", "tokens", "chunks": {str(chunk_length): examples}, ...}) and the task's
# "max_chunk_tokens".
TASK_COUNTS: dict[str, dict[str, Any]] = {}


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


def set_task_counts(task_name: str, counts: Mapping[str, Any], max_chunk_tokens: Optional[int] = None) -> None:
  """Records a task's train-split entry of ``sources.json`` and its chunk cap, for mixture rates."""
  TASK_COUNTS[task_name] = dict(counts, max_chunk_tokens=max_chunk_tokens)


def _task_counts(task_name: str) -> dict[str, Any]:
  """The recorded counts of a task, else documents and tokens from its cached seqio stats."""
  if task_name in TASK_COUNTS:
    return TASK_COUNTS[task_name]
  tokens, documents = task_token_stats(task_name)
  return {"documents": documents, "tokens": tokens}


def examples_at(counts: Mapping[str, Any], chunk_length: Optional[int], task_name: str = "task") -> float:
  """How many examples a split yields when its documents are cut into ``chunk_length`` tokens.

  ``counts`` is a split entry of ``sources.json``. Exact without chunking or at a recorded chunk
  length, otherwise interpolated (see the module docstring).
  """
  documents, tokens = int(counts["documents"]), int(counts["tokens"])
  if chunk_length is None:
    return float(documents)
  if "chunks" not in counts:
    logging.warning(
        "%s: sources.json has no chunk counts (written by an older pipelines.tokenize); its mixture "
        "rate assumes one example per document, which misses its token share if some documents are "
        "longer than %d tokens. Rerun pipelines.tokenize for exact rates.", task_name, chunk_length)
    return float(documents)
  chunks = {int(c): int(k) for c, k in counts["chunks"].items()}
  if chunk_length in chunks:
    return float(chunks[chunk_length])
  # Exact points (1 / c, examples), including c = infinity (documents) and c = 1 (tokens).
  points = sorted({0.0: documents, 1.0: tokens, **{1.0 / c: k for c, k in chunks.items()}}.items())
  xs = [x for x, _ in points]
  x = 1.0 / chunk_length
  i = bisect.bisect_left(xs, x)
  (x0, k0), (x1, k1) = points[i - 1], points[i]
  return k0 + (k1 - k0) * (x - x0) / (x1 - x0)


def seqio_rates(shares: Mapping[str, float], sequence_length: Optional[Mapping[str, int]] = None) -> dict[str, float]:
  """Example rates for seqio that realise the given token shares at this sequence length.

  ``rate = share × examples / tokens`` with the task's train-split examples at the chunk length
  that its ``preprocessors.split_into_chunks`` uses for ``sequence_length``.
  """
  rates = {}
  for name, share in shares.items():
    counts = _task_counts(name)
    length = preprocessors.chunk_length(sequence_length, counts.get("max_chunk_tokens"))
    tokens = int(counts["tokens"])
    rates[name] = share * examples_at(counts, length, name) / tokens if tokens else 0.0
  return rates


class TokenShareMixture(seqio.Mixture):
  """A seqio Mixture whose example rates realise token shares at the sequence length it is read at.

  seqio's rates cannot depend on the sequence length, so ``get_dataset`` mixes through a plain
  ``seqio.Mixture`` with ``seqio_rates(token_shares, sequence_length)``. Outside ``get_dataset``
  (``get_rate``, ``total_rate``) the rates are those without chunking.
  """

  def __init__(self, name: str, tasks, token_shares: Mapping[str, float], **kwargs):
    super().__init__(name, tasks, **kwargs)
    self.token_shares = dict(token_shares)

  def rates(self, sequence_length: Optional[Mapping[str, int]] = None) -> dict[str, float]:
    """Example rate of each task at this sequence length."""
    return seqio_rates(self.token_shares, sequence_length)

  def get_dataset(self, sequence_length: Optional[Mapping[str, int]] = None, *args, **kwargs):
    """``seqio.Mixture.get_dataset`` (same arguments) with the rates for ``sequence_length``."""
    rates = self.rates(sequence_length)
    mixture = seqio.Mixture(self.name, [(task, rates[task.name]) for task in self.tasks])
    return mixture.get_dataset(sequence_length, *args, **kwargs)


def register_mixture(name: str, shares: Mapping[str, float]) -> seqio.Mixture:
  """(Re-)registers a ``TokenShareMixture`` whose tasks contribute the given token shares."""
  tasks = [(task, rate) for task, rate in sorted(seqio_rates(shares).items()) if rate > 0]
  if not tasks:
    raise MixtureConfigError(f"Mixture {name} has no task with a positive rate: {dict(shares)}.")
  seqio.MixtureRegistry.remove(name)
  positive = {task: shares[task] for task, _ in tasks}
  mixture = seqio.MixtureRegistry.add(name, tasks, mixture_cls=TokenShareMixture,
                                      token_shares=positive)
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
