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
rates are normalised. The name must be a new mixture name (``MIXTURE_NAME_PATTERN``; not a task,
not a mixture registered elsewhere), every task a cached task listed once, every number finite.

A ``TokenShareMixture`` cannot be nested inside a plain ``seqio.Mixture``: seqio would mix it
with ``get_rate``, which knows no sequence length, so no rate it returns realises the token
shares. ``get_rate`` and ``total_rate`` therefore raise ``NestedMixtureError``; combine tasks in
one token-share mixture instead (``register_mixture`` or a YAML file).
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from typing import Any, Mapping, Optional

import seqio
import yaml

from tasks import preprocessors

TASK_KEYS = {"rate", "weight_by", "cap_tokens"}
CONFIG_KEYS = {"name", "temperature", "tasks"}
# Mixture names a YAML file may use (a subset of what seqio accepts: ASCII, no path separators).
MIXTURE_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")

# Token shares of every mixture registered by this module, by mixture name.
MIXTURE_TOKEN_SHARES: dict[str, dict[str, float]] = {}
# Train-split counts of every task registered from a data dir, by task name: its sources.json split
# entry ({"documents", "tokens", "chunks": {str(chunk_length): examples}, ...}) and the task's
# "max_chunk_tokens".
TASK_COUNTS: dict[str, dict[str, Any]] = {}


class MixtureConfigError(ValueError):
  """A mixture specification that cannot be used (unknown task, negative rate, empty, ...)."""


class NestedMixtureError(MixtureConfigError):
  """A token-share mixture used inside a plain seqio.Mixture, which cannot realise its shares."""


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
  if xs[i] == x:  # An exact point (c = 1: every token is an example).
    return float(points[i][1])
  (x0, k0), (x1, k1) = points[i - 1], points[i]
  return k0 + (k1 - k0) * (x - x0) / (x1 - x0)


def mean_example_tokens(task_name: str, sequence_length: Optional[Mapping[str, int]] = None) -> float:
  """Mean content tokens (without EOS) per train example of a task read at ``sequence_length``.

  ``tokens / examples`` with the examples at the chunk length that the task's
  ``preprocessors.split_into_chunks`` uses for ``sequence_length`` (``examples_at``); 0 for a
  task without tokens.
  """
  counts = _task_counts(task_name)
  length = preprocessors.chunk_length(sequence_length, counts.get("max_chunk_tokens"))
  examples = examples_at(counts, length, task_name)
  return int(counts["tokens"]) / examples if examples else 0.0


def seqio_rates(shares: Mapping[str, float], sequence_length: Optional[Mapping[str, int]] = None) -> dict[str, float]:
  """Example rates for seqio that realise the given token shares at this sequence length.

  ``rate = share / mean_example_tokens(task, sequence_length)``, i.e. ``share × examples / tokens``.
  """
  rates = {}
  for name, share in shares.items():
    mean = mean_example_tokens(name, sequence_length)
    rates[name] = share / mean if mean else 0.0
  return rates


class TokenShareMixture(seqio.Mixture):
  """A seqio Mixture whose example rates realise token shares at the sequence length it is read at.

  seqio's rates cannot depend on the sequence length, so ``get_dataset`` mixes through a plain
  ``seqio.Mixture`` with ``seqio_rates(token_shares, sequence_length)`` (the rates seqio logs).
  ``get_rate`` and ``total_rate``, which seqio only calls when this mixture is nested inside
  another one, raise ``NestedMixtureError``: without the sequence length no example rate is right.
  """

  def __init__(self, name: str, tasks, token_shares: Mapping[str, float], **kwargs):
    super().__init__(name, tasks, **kwargs)
    self.token_shares = dict(token_shares)

  def rates(self, sequence_length: Optional[Mapping[str, int]] = None) -> dict[str, float]:
    """Example rate of each task at this sequence length."""
    return seqio_rates(self.token_shares, sequence_length)

  def get_rate(self, task) -> float:
    raise NestedMixtureError(
        f"{self.name} is a token-share mixture (tasks.mixtures.TokenShareMixture): its example "
        "rates depend on the sequence length it is read at, and a plain seqio.Mixture that nests "
        f"it asks for rates without one, so it would miss the token shares. Put {self.name}'s "
        f"tasks {sorted(t.name for t in self.tasks)} into one token-share mixture with the others "
        "(tasks.register_mixture or a YAML mixture) instead of nesting it.")

  @property
  def total_rate(self) -> float:
    return self.get_rate(None)

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


def _is_number(value: Any) -> bool:
  """A finite int or float (not a bool): what YAML gives for ``0.4`` or ``2``, never NaN or inf."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_mixture_name(name: Any) -> str:
  if not isinstance(name, str) or not name:
    raise MixtureConfigError("A mixture config needs a non-empty string 'name'.")
  if not MIXTURE_NAME_PATTERN.match(name):
    raise MixtureConfigError(f"Mixture name {name!r} is invalid: it must match "
                             f"{MIXTURE_NAME_PATTERN.pattern} (letters, digits, '_' and '.').")
  if name in seqio.TaskRegistry.names():
    raise MixtureConfigError(f"Mixture name {name!r} is the name of a registered task; "
                             "seqio.get_mixture_or_task would find the task, so pick another name.")
  if name in seqio.MixtureRegistry.names() and name not in MIXTURE_TOKEN_SHARES:
    raise MixtureConfigError(f"Mixture name {name!r} is a mixture registered by other code; "
                             "replacing it here would change what that code reads. Pick another name.")
  return name


def _train_tokens(name: str, task: str) -> int:
  """Train-split tokens of a mixture's task, or a MixtureConfigError saying why there are none."""
  if task in TASK_COUNTS:
    return int(TASK_COUNTS[task]["tokens"])
  try:
    return task_token_stats(task)[0]
  except Exception as e:  # seqio raises several types for a task without cached train stats.
    raise MixtureConfigError(
        f"Mixture {name}: task {task} has no cached train split ({type(e).__name__}: {e}); a "
        "token-share mixture needs cached tasks (tasks.register_data_dir).") from e


def shares_from_config(config: Any) -> tuple[str, dict[str, float]]:
  """Validates a parsed mixture config; returns (name, token shares)."""
  if not isinstance(config, dict):
    raise MixtureConfigError(f"A mixture config must be a mapping, got {type(config).__name__}.")
  unknown = set(config) - CONFIG_KEYS
  if unknown:
    raise MixtureConfigError(f"Unknown mixture config keys {sorted(unknown)}; allowed: {sorted(CONFIG_KEYS)}.")
  name = _check_mixture_name(config.get("name"))
  temperature = config.get("temperature", 1.0)
  if not _is_number(temperature) or temperature <= 0:
    raise MixtureConfigError(f"Mixture {name}: temperature must be a finite positive number, got {temperature!r}.")
  tasks = config.get("tasks")
  if not isinstance(tasks, dict) or not tasks:
    raise MixtureConfigError(f"Mixture {name} has no tasks: 'tasks' must be a non-empty mapping.")

  fixed, by_tokens, caps = {}, {}, {}
  registered = set(seqio.TaskRegistry.names())
  for task, spec in tasks.items():
    if task not in registered:
      known = sorted(t for t in registered if t.startswith("gf_"))
      hint = " (a mixture cannot be a part of another)" if task in seqio.MixtureRegistry.names() else ""
      raise MixtureConfigError(f"Mixture {name}: unknown task {task!r}{hint}; registered gf_ tasks: {known}.")
    if not isinstance(spec, dict) or set(spec) - TASK_KEYS or ("rate" in spec) == ("weight_by" in spec):
      raise MixtureConfigError(
          f"Mixture {name}: task {task} needs exactly one of 'rate: <number>' or "
          f"'weight_by: tokens' (optionally with cap_tokens), got {spec!r}."
      )
    tokens = _train_tokens(name, task)
    if "rate" in spec:
      rate = spec["rate"]
      if not _is_number(rate) or rate < 0:
        raise MixtureConfigError(f"Mixture {name}: task {task} has an invalid rate {rate!r} (must be a finite number >= 0).")
      fixed[task] = float(rate)
      continue
    if spec["weight_by"] != "tokens":
      raise MixtureConfigError(f"Mixture {name}: task {task}: weight_by must be 'tokens', got {spec['weight_by']!r}.")
    cap = spec.get("cap_tokens")
    if cap is not None and (not _is_number(cap) or cap < 0):
      raise MixtureConfigError(f"Mixture {name}: task {task} has an invalid cap_tokens {cap!r} (must be a finite number >= 0).")
    by_tokens[task] = tokens
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


class _UniqueKeyLoader(yaml.SafeLoader):
  """yaml.SafeLoader that refuses a key given twice in one mapping (SafeLoader keeps the last)."""

  def construct_mapping(self, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
      key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
      if key is not None and key in seen:
        raise MixtureConfigError(
            f"{key!r} is listed twice in the same mapping (line {key_node.start_mark.line + 1}); "
            "a task (or setting) may appear once.")
      seen.add(key)
    return super().construct_mapping(node, deep=deep)


def register_mixture_from_yaml(path: str) -> str:
  """Registers the mixture described by a YAML file (see the module docstring); returns its name."""
  import tensorflow as tf  # gfile reads local and remote paths.

  with tf.io.gfile.GFile(path) as f:
    try:
      config = yaml.load(f.read(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
      raise MixtureConfigError(f"{path} is not valid YAML: {e}") from e
    except MixtureConfigError as e:
      raise MixtureConfigError(f"{path}: {e}") from e
  name, shares = shares_from_config(config)
  register_mixture(name, shares)
  return name
