"""Writes one self-contained HTML page that shows what the data stages did to the corpus.

    python -m pipelines.report --work_dir=out/demo --output=out/demo/report.html \\
        [--schedule=mixture_schedule.yaml] [--train_steps=N]

The page is built only from the files the stages write under a work dir laid out as ``demo.py``
lays it out (see docs/architecture.md and docs/report.md):

* ``<work_dir>/{extract,quality,pii,toxicity,dedupe}/`` and ``<work_dir>/data/`` (tokenize):
  ``stats.json`` for the funnel and the drop reasons, and the dedupe stage's ``docs-*.jsonl``
  shards for the document lengths;
* ``<work_dir>/tokenizer/stats.json`` for the tokenizer summary;
* ``<work_dir>/data/sources.json`` for documents and tokens per source and the mixture rates;
* ``<work_dir>/memorization/memorization.json`` (``model.memorization``), when that stage ran,
  for the memorization rates per source, members against the non-member control, and the types
  of personal data in memorized continuations;
* optionally a file of mixture stages (``--schedule``), read with ``tasks.schedule``, for
  mixture weights that change over training.

Plots are inline SVG and the page loads nothing, so it can be mailed or attached to a CI run. A
stage directory that is missing (or has no ``_SUCCESS``) is shown as "stage not run"; a file that
exists but does not follow the contract raises :class:`ReportError` naming the file and key.
The same inputs give a byte-identical page: matplotlib's defaults are reset for every figure, SVG
ids are salted with a fixed string and no dates are written.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import io
import json
import logging
import os
import re
import sys
from typing import Any, Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipelines import common  # noqa: E402

# (stage name, directory under the work dir), in pipeline order.
STAGES = (
    ("extract", "extract"),
    ("quality", "quality"),
    ("pii", "pii"),
    ("toxicity", "toxicity"),
    ("dedupe", "dedupe"),
    ("tokenize", "data"),
)
LENGTH_STAGE = "dedupe"  # Lengths are measured on the documents that reach the tokenizer.
TOKENIZER_DIR = "tokenizer"
SOURCES_FILE = os.path.join("data", "sources.json")
METRICS_FILE = os.path.join("model", "metrics.jsonl")
MEMORIZATION_FILE = os.path.join("memorization", "memorization.json")  # model.memorization
MEMBERSHIPS = (("members", "members (train split)"), ("non_members", "non-members (validation, control)"))
RATES = (("exact_rate", "exact"), ("approximate_rate", "approximate"))
DEFAULT_TRAIN_STEPS = 1000
HISTOGRAM_BINS = 30

NOT_RUN = "stage not run"
NOT_FINISHED = "stage not finished (no _SUCCESS marker)"

# Fixed plotting settings on top of matplotlib's defaults, so that a user's matplotlibrc cannot
# change the page and the SVG bytes do not depend on the run.
RC_PARAMS = {
    "svg.fonttype": "none",  # Text stays text: smaller, searchable, no embedded glyph ids.
    "svg.hashsalt": "gemma-forge-report",
    "figure.dpi": 100,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


class ReportError(common.StageError):
  """A file under the work dir exists but does not follow the data contract."""


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass
class StageResult:
  """One stage's accounting; ``stats`` is None when the stage has no finished output."""

  name: str
  directory: str
  status: str  # "ok", NOT_RUN or NOT_FINISHED.
  stats: dict[str, Any] | None = None


@dataclasses.dataclass
class SourceCounts:
  """One source's row of ``sources.json``: tier, task and {split: (documents, tokens)}."""

  name: str
  task: str
  tier: str
  splits: dict[str, tuple[int, int]]

  @property
  def documents(self) -> int:
    return sum(documents for documents, _ in self.splits.values())

  @property
  def tokens(self) -> int:
    return sum(tokens for _, tokens in self.splits.values())


@dataclasses.dataclass
class ReportData:
  """Everything the page shows, read and checked before anything is drawn."""

  work_dir: str
  stages: list[StageResult]
  lengths_stage: str | None  # The stage whose kept documents were measured.
  lengths: dict[str, dict[str, list[int]]]  # source -> {"characters": [...], "words": [...]}
  sources: list[SourceCounts] | None
  tokenizer: dict[str, Any] | None
  train_steps: int
  memorization: dict[str, Any] | None = None  # memorization.json, checked; None if not run.


def _exists(path: str) -> bool:
  return FileSystems.exists(path)


def _is_nonempty_dir(path: str) -> bool:
  """Whether anything lies under ``path`` (also on object stores, which have no directories)."""
  return bool(FileSystems.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list)


def _read_jsonl(path: str) -> Iterable[tuple[str, Any]]:
  """Yields ``("<path>:<line>", record)`` for every line of a JSON-lines file."""
  with FileSystems.open(path) as f:
    for number, line in enumerate(f, start=1):
      where = f"{path}:{number}"
      try:
        yield where, json.loads(line.decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{where} is not a JSON record: {e}") from e


def _read_json(path: str) -> Any:
  try:
    with FileSystems.open(path) as f:
      return json.loads(f.read().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ReportError(f"{path} is not valid JSON: {e}") from e


def _require(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
  """``record[key]``, checked to be of ``kind``; a ReportError names the file and key if not."""
  if not isinstance(record, dict):
    raise ReportError(f"{where}: expected a JSON object, got {type(record).__name__}.")
  if key not in record:
    raise ReportError(f"{where}: missing key {key!r}.")
  value = record[key]
  bad_int = kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0)
  if bad_int or not isinstance(value, kind):
    expected = "a non-negative integer" if kind is int else getattr(kind, "__name__", str(kind))
    raise ReportError(f"{where}: key {key!r} must be {expected}, got {value!r}.")
  return value


def check_stats(stats: Any, path: str, stage: str) -> dict[str, Any]:
  """Checks a stage's stats.json against the contract ``in == kept + dropped_total``."""
  name = _require(stats, "stage", str, path)
  if name != stage:
    raise ReportError(f"{path}: key 'stage' is {name!r}, expected {stage!r}.")
  num_in = _require(stats, "in", int, path)
  kept = _require(stats, "kept", int, path)
  dropped = _require(stats, "dropped", dict, path)
  for reason in dropped:
    _require(dropped, reason, int, f"{path}: key 'dropped'")
  total = _require(stats, "dropped_total", int, path)
  if total != sum(dropped.values()):
    raise ReportError(
        f"{path}: key 'dropped_total' is {total} but 'dropped' sums to {sum(dropped.values())}."
    )
  if num_in != kept + total:
    raise ReportError(f"{path}: key 'in' is {num_in} but kept + dropped_total is {kept + total}.")
  return stats


def read_stage(work_dir: str, stage: str, subdir: str) -> StageResult:
  """A stage's checked stats, or its status when it has no finished output."""
  directory = FileSystems.join(work_dir, subdir)
  if not _is_nonempty_dir(directory):
    return StageResult(stage, directory, NOT_RUN)
  if not _exists(FileSystems.join(directory, common.SUCCESS_MARKER)):
    return StageResult(stage, directory, NOT_FINISHED)
  path = FileSystems.join(directory, common.STATS_FILE)
  if not _exists(path):
    raise ReportError(f"{path} is missing although the stage wrote {common.SUCCESS_MARKER}.")
  return StageResult(stage, directory, "ok", check_stats(_read_json(path), path, stage))


def read_lengths(stage: StageResult) -> dict[str, dict[str, list[int]]]:
  """Characters and words of every kept document of a stage, per source, in file order."""
  pattern = FileSystems.join(stage.directory, f"{common.DOCS_PREFIX}-*.jsonl")
  files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
  lengths: dict[str, dict[str, list[int]]] = {}
  count = 0
  for path in files:
    for where, doc in _read_jsonl(path):
      text = _require(doc, "text", str, where)
      source = _require(doc, "source", str, where)
      per_source = lengths.setdefault(source, {"characters": [], "words": []})
      per_source["characters"].append(len(text))
      per_source["words"].append(len(text.split()))
      count += 1
  if count != stage.stats["kept"]:
    raise ReportError(
        f"{stage.directory}: stats.json says kept={stage.stats['kept']} but its "
        f"{common.DOCS_PREFIX}-*.jsonl shards hold {count} documents."
    )
  return dict(sorted(lengths.items()))


def read_sources(path: str) -> list[SourceCounts] | None:
  """The per-source rows of ``sources.json`` (written by pipelines.tokenize), or None if absent."""
  if not _exists(path):
    return None
  record = _read_json(path)
  sources = _require(record, "sources", dict, path)
  rows = []
  for name, info in sorted(sources.items()):
    where = f"{path}: sources.{name}"
    splits = _require(info, "splits", dict, where)
    counts = {}
    for split, split_counts in sorted(splits.items()):
      at = f"{where}.splits.{split}"
      counts[split] = (
          _require(split_counts, "documents", int, at),
          _require(split_counts, "tokens", int, at),
      )
    tier = info.get("tier", "")
    task = info.get("task", "")
    if not isinstance(tier, str) or not isinstance(task, str):
      raise ReportError(f"{where}: 'tier' and 'task' must be strings, got {tier!r} and {task!r}.")
    rows.append(SourceCounts(name, task, tier, counts))
  return rows


def read_tokenizer_stats(work_dir: str) -> dict[str, Any] | None:
  """The tokenizer's stats.json, or None when the tokenizer stage has not finished."""
  directory = FileSystems.join(work_dir, TOKENIZER_DIR)
  path = FileSystems.join(directory, common.STATS_FILE)
  if not _exists(FileSystems.join(directory, common.SUCCESS_MARKER)):
    return None
  if not _exists(path):
    raise ReportError(f"{path} is missing although the tokenizer wrote {common.SUCCESS_MARKER}.")
  stats = _read_json(path)
  if not isinstance(stats, dict):
    raise ReportError(f"{path}: expected a JSON object, got {type(stats).__name__}.")
  return stats


def read_memorization(path: str) -> dict[str, Any] | None:
  """``model.memorization``'s report, checked (None if absent): per membership, per source the
  sampled documents, exact / approximate counts and rates and the PII types memorized."""
  if not _exists(path):
    return None
  record = _read_json(path)
  for key, _ in MEMBERSHIPS:
    where = f"{path}: {key}"
    part = _require(record, key, dict, path)
    for source, row in sorted(_require(part, "per_source", dict, where).items()):
      at = f"{where}.per_source.{source}"
      documents = _require(row, "documents", int, at)
      for count, (rate, _) in zip(("exact", "approximate"), RATES):
        n = _require(row, count, int, at)
        value = _require(row, rate, (int, float), at)
        if n > documents or abs(value - (n / documents if documents else 0.0)) > 1e-9:
          raise ReportError(f"{at}: key {rate!r} is {value} but {count}/documents is {n}/{documents}.")
      for pii_type in _require(row, "pii_in_memorized", dict, at):
        _require(row["pii_in_memorized"], pii_type, int, f"{at}.pii_in_memorized")
    total = _require(part, "total", dict, where)
    for rate, _ in RATES:
      _require(total, rate, (int, float), f"{where}.total")
  return record


def trained_steps(work_dir: str) -> int | None:
  """The last step in the trainer's ``model/metrics.jsonl``, if training has run."""
  path = FileSystems.join(work_dir, METRICS_FILE)
  if not _exists(path):
    return None
  steps = [record["step"] for _, record in _read_jsonl(path)
           if isinstance(record, dict) and isinstance(record.get("step"), int)]
  return max(steps) if steps else None


def load(work_dir: str, train_steps: int | None = None) -> ReportData:
  """Reads and checks every input of the report."""
  if not _is_nonempty_dir(work_dir):
    raise ReportError(f"Work dir {work_dir} does not exist or is empty.")
  stages = [read_stage(work_dir, stage, subdir) for stage, subdir in STAGES]
  # Measure the dedupe output, or the last document stage that finished if dedupe has not.
  finished = [s for s in stages if s.stats is not None and s.name != "tokenize"]
  preferred = [s for s in finished if s.name == LENGTH_STAGE]
  measured = (preferred or finished[-1:] or [None])[0]
  if train_steps is None:
    train_steps = trained_steps(work_dir) or DEFAULT_TRAIN_STEPS
  if train_steps < 1:
    raise ReportError(f"train_steps must be at least 1, got {train_steps}.")
  return ReportData(
      work_dir=work_dir,
      stages=stages,
      lengths_stage=measured.name if measured else None,
      lengths=read_lengths(measured) if measured else {},
      sources=read_sources(FileSystems.join(work_dir, SOURCES_FILE)),
      tokenizer=read_tokenizer_stats(work_dir),
      memorization=read_memorization(FileSystems.join(work_dir, MEMORIZATION_FILE)),
      train_steps=train_steps,
  )


# ----------------------------------------------------------------------------- mixture


# A mixture as the plot shows it: ``(start_step, {source: share of training tokens})`` segments in
# step order; a static mixture is one segment from step 0.
Segments = list[tuple[int, dict[str, float]]]


def static_mixture(sources: list[SourceCounts]) -> Segments:
  """Each source's share of the train-split tokens: the rates of ``gf_mixture``."""
  tokens = {s.name: s.splits.get("train", (0, 0))[1] for s in sources}
  total = sum(tokens.values())
  if total == 0:
    raise ReportError(f"{SOURCES_FILE}: no source has train-split tokens, so there is no mixture.")
  return [(0, {name: count / total for name, count in tokens.items()})]


def _check_tasks(tasks: Iterable[str], sources: list[SourceCounts], where: str) -> None:
  known = {s.task for s in sources}
  unknown = sorted(set(tasks) - known)
  if unknown:
    raise ReportError(f"{where}: tasks {unknown} are not in {SOURCES_FILE} (its tasks: {sorted(known)}).")


def read_schedule(path: str, sources: list[SourceCounts]):
  """Builds a ``tasks.schedule.MixtureSchedule`` from a JSON or YAML file of stages::

      stages:
        - {start_step: 0, token_shares: {gf_web: 0.8, gf_docs: 0.2}}
        - {start_step: 800, token_shares: {gf_web: 0.4, gf_docs: 0.6}}

  The project's own class checks the stages; its mean example lengths come from sources.json.
  """
  import yaml  # noqa: PLC0415

  from tasks import schedule as schedule_lib  # noqa: PLC0415  (imports seqio and TensorFlow)

  if not _exists(path):
    raise ReportError(f"Schedule file {path} does not exist.")
  with FileSystems.open(path) as f:
    try:
      config = yaml.safe_load(f.read().decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
      raise ReportError(f"{path} is not valid JSON or YAML: {e}") from e
  stages = []
  for i, stage in enumerate(_require(config, "stages", list, path)):
    where = f"{path}: key 'stages[{i}]'"
    shares = _require(stage, "token_shares", dict, where)
    _check_tasks(shares, sources, where)
    stages.append(schedule_lib.Stage(_require(stage, "start_step", int, where), shares))
  mean_tokens = {s.task: s.splits["train"][1] / s.splits["train"][0]
                 for s in sources if s.splits.get("train", (0, 0))[0]}
  try:
    return schedule_lib.MixtureSchedule(
        stages, examples_per_step=1, mean_example_tokens=mean_tokens
    )
  except ValueError as e:
    raise ReportError(f"{path}: {e}") from e


def schedule_mixture(schedule: Any, sources: list[SourceCounts]) -> Segments:
  """The normalised token shares of each stage of a ``MixtureSchedule``, by source name."""
  _check_tasks(schedule.tasks, sources, "mixture schedule")
  segments = []
  for stage in schedule.stages:
    total = sum(stage.token_shares.values())
    shares = {s.name: stage.token_shares.get(s.task, 0.0) / total for s in sources}
    segments.append((stage.start_step, shares))
  return segments


# ----------------------------------------------------------------------------- plots


def _svg(draw: Callable[[Figure], None], name: str, size: tuple[float, float]) -> str:
  """Draws a figure with fixed settings and returns it as an inline ``<svg>`` element.

  matplotlib numbers element ids per figure (``axes_1``, ...), so every id and reference is
  prefixed with the plot's name to keep ids unique on a page with several plots.
  """
  with matplotlib.rc_context():
    matplotlib.rcdefaults()
    matplotlib.rcParams.update(RC_PARAMS)
    fig = Figure(figsize=size, layout="constrained")
    draw(fig)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
  text = buf.getvalue()
  text = text[text.index("<svg"):].strip()
  return re.sub(r'(\bid="|url\(#|href="#)', lambda m: f"{m.group(1)}{name}-", text)


def _colors(n: int) -> list:
  cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def plot_funnel(stages: list[StageResult]) -> str:
  """Grouped bars of documents in and kept per stage; unrun stages are labelled on the axis."""
  def draw(fig):
    ax = fig.add_subplot()
    x = np.arange(len(stages))
    num_in = [s.stats["in"] if s.stats else 0 for s in stages]
    kept = [s.stats["kept"] if s.stats else 0 for s in stages]
    ax.bar_label(ax.bar(x - 0.2, num_in, 0.4, label="in"), fontsize=7)
    ax.bar_label(ax.bar(x + 0.2, kept, 0.4, label="kept"), fontsize=7)
    ax.set_xticks(x, [s.name if s.stats else f"{s.name}\n(not run)" for s in stages])
    ax.set_ylabel("documents")
    ax.set_title("Documents in and kept per stage")
    ax.legend()

  return _svg(draw, "funnel", (7, 3.2))


def plot_drop_reasons(stages: list[StageResult], reasons: list[str]) -> str:
  """Stacked bars: the share of each stage's input dropped, split by reason.

  Shares rather than counts, so that a small stage's drops are not flattened by a large one's;
  each bar is labelled with its count.
  """
  def draw(fig):
    ax = fig.add_subplot()
    x = np.arange(len(stages))
    num_in = np.array([max(s.stats["in"], 1) for s in stages])
    bottom = np.zeros(len(stages))
    for reason, color in zip(reasons, _colors(len(reasons))):
      counts = np.array([s.stats["dropped"].get(reason, 0) for s in stages])
      ax.bar(x, 100 * counts / num_in, 0.6, bottom=bottom, label=reason, color=color)
      bottom += 100 * counts / num_in
    for i, s in enumerate(stages):
      ax.annotate(_num(s.stats["dropped_total"]), (x[i], bottom[i]), xytext=(0, 2),
                  textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(x, [s.name for s in stages])
    ax.set_ylabel("% of stage input dropped")
    ax.set_title("Drop reasons per stage")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)

  return _svg(draw, "drops", (7.5, 3.4))


def plot_sources(sources: list[SourceCounts], splits: list[str]) -> str:
  """Documents and tokens per source, stacked by split."""
  def draw(fig):
    axes = fig.subplots(1, 2)
    names = [s.name for s in sources]
    y = np.arange(len(sources))
    for ax, index, label in ((axes[0], 0, "documents"), (axes[1], 1, "tokens")):
      left = np.zeros(len(sources))
      for split, color in zip(splits, _colors(len(splits))):
        counts = np.array([s.splits.get(split, (0, 0))[index] for s in sources])
        ax.barh(y, counts, left=left, label=split, color=color)
        left += counts
      ax.set_yticks(y, names)
      ax.invert_yaxis()
      ax.xaxis.set_major_formatter(ticker.EngFormatter())  # 40k, not 40000.
      ax.set_xlabel(label)
      ax.set_title(f"{label.capitalize()} per source")
    axes[1].legend(fontsize=7)

  return _svg(draw, "sources", (8, 1.2 + 0.35 * len(sources)))


def plot_lengths(lengths: dict[str, dict[str, list[int]]]) -> str:
  """Per-source histograms of document length in characters and words, on log-spaced bins."""
  def draw(fig):
    axes = fig.subplots(1, 2)
    colors = _colors(len(lengths))
    for ax, unit in zip(axes, ("characters", "words")):
      smallest = max(min(min(v[unit]) for v in lengths.values()), 1)
      largest = max(max(v[unit]) for v in lengths.values())
      bins = np.geomspace(smallest, max(largest, smallest + 1) * 1.05, HISTOGRAM_BINS + 1)
      for (source, values), color in zip(lengths.items(), colors):
        # A document of length 0 is counted in the first bin: a log axis has no 0.
        ax.hist(np.maximum(values[unit], 1), bins=bins, histtype="step", linewidth=1.5,
                color=color, label=f"{source} ({len(values[unit])})")
      ax.set_xscale("log")
      ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
      ax.set_xlabel(f"{unit} per document (log scale)")
      ax.set_ylabel("documents")
      ax.set_title(f"Document length in {unit}")
    axes[0].legend(fontsize=7)

  return _svg(draw, "lengths", (8, 3.2))


def plot_mixture(segments: Segments, last_step: int, title: str) -> str:
  """Per-source share of the training tokens against the step (constant within a stage)."""
  shown = [(start, shares) for start, shares in segments if start < last_step]
  starts = [start for start, _ in shown] + [last_step]

  def draw(fig):
    ax = fig.add_subplot()
    sources = list(shown[0][1])
    for source, color in zip(sources, _colors(len(sources))):
      values = [shares[source] for _, shares in shown]
      ax.step(starts, values + values[-1:], where="post", label=source, color=color, linewidth=1.8)
    for start in starts[1:-1]:
      ax.axvline(start, color="0.5", linestyle=":", linewidth=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("share of training tokens")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, last_step)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)

  return _svg(draw, "mixture", (7.5, 3.2))


def _memorization_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, dict[str, float]]]]:
  """``[(source or "total", {membership: {rate: value}})]``: every source of either split, then
  the total weighted by token share."""
  sources = sorted({s for key, _ in MEMBERSHIPS for s in report[key]["per_source"]})
  rows = [(s, {key: report[key]["per_source"].get(s, {}) for key, _ in MEMBERSHIPS}) for s in sources]
  return rows + [("total (token-weighted)", {key: report[key]["total"] for key, _ in MEMBERSHIPS})]


def plot_memorization_rates(report: dict[str, Any]) -> str:
  """Grouped bars per source: exact and approximate rates, members beside the non-member control.

  Each bar's SVG group is named ``bar-<membership>-<rate>-<source index>`` and labelled with its
  percentage, so the page can be read (and checked) without the JSON.
  """
  rows = _memorization_rows(report)
  series = [(key, rate, f"{label.split(' ')[0]} {rate_label}")
            for key, label in MEMBERSHIPS for rate, rate_label in RATES]

  def draw(fig):
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    for i, ((key, rate, label), color) in enumerate(zip(series, _colors(len(series)))):
      values = [100 * row[key].get(rate, 0.0) for _, row in rows]
      bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=color,
                    hatch="//" if key == "non_members" else None, edgecolor="white")
      for j, bar in enumerate(bars):
        bar.set_gid(f"bar-{key}-{rate.split('_')[0]}-{j}")
      ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks(x, [name for name, _ in rows])
    ax.set_ylabel("% of sampled documents")
    ax.set_title(f"Memorized {report.get('suffix_len', '?')}-token continuations "
                 f"after {report.get('prefix_len', '?')}-token prefixes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)

  return _svg(draw, "memorization-rates", (8, 3.4))


def plot_memorized_pii(report: dict[str, Any]) -> str:
  """Horizontal bars: memorized continuations holding each PII type, stacked by source (members)."""
  per_source = report["members"]["per_source"]
  types = sorted({t for row in per_source.values() for t in row["pii_in_memorized"]})
  sources = sorted(per_source)

  def draw(fig):
    ax = fig.add_subplot()
    y = np.arange(len(types))
    left = np.zeros(len(types))
    for source, color in zip(sources, _colors(len(sources))):
      counts = np.array([per_source[source]["pii_in_memorized"].get(t, 0) for t in types])
      bars = ax.barh(y, counts, left=left, label=source, color=color)
      for t, bar in zip(types, bars):
        bar.set_gid(f"pii-{source}-{t}")
      left += counts
    for i, total in enumerate(left):
      ax.annotate(_num(int(total)), (total, y[i]), xytext=(3, 0), textcoords="offset points",
                  va="center", fontsize=7)
    ax.set_yticks(y, types)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("PII matches in memorized continuations")
    ax.set_title("Personal data in memorized training text (members)")
    ax.legend(fontsize=7)

  return _svg(draw, "memorization-pii", (7, 1.2 + 0.35 * len(types)))


# ----------------------------------------------------------------------------- HTML


CSS = """
body { font-family: sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.6rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.missing { color: #a33; font-style: italic; }
svg { max-width: 100%; height: auto; }
"""


def _e(value: Any) -> str:
  return html.escape(str(value))


def _num(n: int) -> str:
  return f"{n:,}"


def _pct(part: int, whole: int) -> str:
  return f"{100 * part / whole:.1f}%" if whole else "–"


def _cell(value: Any) -> str:
  """A table cell; numbers (also formatted ones such as "1,234" or "5.1%") are right-aligned."""
  text = str(value)
  numeric = bool(text) and all(c in "0123456789,.%–-" for c in text) and any(c.isdigit() for c in text)
  return f'<td class="n">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>"


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
  head = "".join(f"<th>{_e(h)}</th>" for h in headers)
  body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>\n" for row in rows)
  return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def _missing(text: str) -> str:
  return f'<p class="missing">{_e(text)}</p>'


def funnel_section(stages: list[StageResult]) -> str:
  first = next((s.stats["in"] for s in stages if s.stats), 0)
  rows = []
  for s in stages:
    if s.stats is None:
      rows.append((s.name, s.status, "", "", "", "", ""))
      continue
    st = s.stats
    rows.append((s.name, "ok", _num(st["in"]), _num(st["kept"]), _num(st["dropped_total"]),
                 _pct(st["kept"], st["in"]), _pct(st["kept"], first)))
  parts = [_table(("stage", "status", "in", "kept", "dropped", "kept of stage input",
                   "kept of first input"), rows)]
  parts += [_missing(f"{s.name}: {s.status} ({s.directory})") for s in stages if s.stats is None]
  if any(s.stats for s in stages):
    parts.append(plot_funnel(stages))
  return "\n".join(parts)


def drops_section(stages: list[StageResult]) -> str:
  ran = [s for s in stages if s.stats]
  reasons = sorted({r for s in ran for r in s.stats["dropped"]})
  if not reasons:
    return _missing("No stage has run." if not ran else "No document was dropped.")
  rows = [(s.name, reason, _num(n), _pct(n, s.stats["in"]))
          for s in ran for reason, n in sorted(s.stats["dropped"].items())]
  return "\n".join([plot_drop_reasons(ran, reasons),
                    _table(("stage", "reason", "documents", "of stage input"), rows)])


def sources_section(data: ReportData) -> str:
  if data.sources is None:
    note = _missing(f"{SOURCES_FILE}: tokenize {NOT_RUN}; documents per source after "
                    f"{data.lengths_stage or 'dedupe'} only.")
    rows = [(name, _num(len(v["characters"]))) for name, v in data.lengths.items()]
    return note + ("\n" + _table(("source", "documents"), rows) if rows else "")
  splits = sorted({k for s in data.sources for k in s.splits}, key=lambda k: (k != "train", k))
  headers = ["source", "tier", "task"]
  headers += [f"{split} {unit}" for split in splits for unit in ("documents", "tokens")]
  headers += ["tokens per document"]
  rows = []
  for s in data.sources:
    row = [s.name, s.tier, s.task]
    for split in splits:
      documents, tokens = s.splits.get(split, (0, 0))
      row += [_num(documents), _num(tokens)]
    row.append(f"{s.tokens / s.documents:.1f}" if s.documents else "–")
    rows.append(row)
  return "\n".join([plot_sources(data.sources, splits), _table(headers, rows)])


def lengths_section(data: ReportData) -> str:
  if data.lengths_stage is None:
    return _missing(f"No document stage has run: {LENGTH_STAGE} {NOT_RUN}.")
  parts = []
  if data.lengths_stage != LENGTH_STAGE:
    parts.append(_missing(f"{LENGTH_STAGE}: {NOT_RUN}; showing the documents kept by "
                          f"{data.lengths_stage} instead."))
  else:
    parts.append(f"<p>Kept documents of <code>{_e(data.lengths_stage)}</code>.</p>")
  if not data.lengths:
    return "\n".join(parts + [_missing(f"{data.lengths_stage} kept no documents.")])
  rows = []
  for source, v in data.lengths.items():
    chars, words = np.array(v["characters"]), np.array(v["words"])
    rows.append((source, _num(len(chars)), _num(int(np.median(chars))),
                 _num(int(np.percentile(chars, 90))), _num(int(chars.max())),
                 _num(int(np.median(words))), _num(int(words.max()))))
  parts.append(plot_lengths(data.lengths))
  parts.append(_table(("source", "documents", "median characters", "p90 characters",
                       "max characters", "median words", "max words"), rows))
  return "\n".join(parts)


def mixture_section(data: ReportData, schedule: Any = None) -> str:
  """``schedule`` is a ``tasks.schedule.MixtureSchedule``, or None for gf_mixture's static rates."""
  if data.sources is None:
    return _missing(f"{SOURCES_FILE}: tokenize {NOT_RUN}, so there is no mixture.")
  if schedule is not None:
    segments = schedule_mixture(schedule, data.sources)
    title = "Mixture weights over training (tasks.schedule)"
    notes = [f"<p>Token shares of the {len(segments)} stages of the mixture schedule "
             "(<code>tasks.schedule.MixtureSchedule</code>), normalised.</p>"]
  else:
    segments = static_mixture(data.sources)
    title = "Static mixture rates (train-split token counts)"
    notes = ["<p>No mixture schedule given (<code>--schedule</code>): the static rates of "
             "<code>gf_mixture</code>, each source's share of the train-split tokens in "
             f"<code>{_e(SOURCES_FILE)}</code>, drawn as a flat line over training.</p>"]
  late = [start for start, _ in segments if start >= data.train_steps]
  if late:
    notes.append(_missing(f"Stages starting at steps {late} begin after the last step "
                          f"({data.train_steps}) and are not drawn."))
  headers = ["source"] + [f"from step {_num(start)}" for start, _ in segments]
  rows = [[source] + [f"{shares[source]:.3f}" for _, shares in segments]
          for source in segments[0][1]]
  return "\n".join(notes + [plot_mixture(segments, data.train_steps, title), _table(headers, rows)])


def memorization_section(report: dict[str, Any] | None) -> str:
  """Rates per source, members against the non-member control, and PII types memorized."""
  if report is None:
    return _missing(f"{MEMORIZATION_FILE}: memorization {NOT_RUN}.")
  notes = [f"<p>{_e(report.get('num_docs', '?'))} documents per source and split; greedy "
           f"{_e(report.get('suffix_len', '?'))}-token continuations of "
           f"{_e(report.get('prefix_len', '?'))}-token prefixes; <i>exact</i>: equal to the "
           "document, <i>approximate</i>: within 10% token edit distance. Checkpoint "
           f"<code>{_e(report.get('checkpoint', '?'))}</code>.</p>"]
  headers = ["source"] + [f"{label.split(' ')[0]} {r}" for _, label in MEMBERSHIPS
                          for r in ("documents", "exact", "approximate")]
  rows = []
  for name, row in _memorization_rows(report):
    cells = [name]
    for key, _ in MEMBERSHIPS:
      r = row[key]
      cells.append(_num(r["documents"]) if "documents" in r else "–")
      cells += [f"{100 * r[rate]:.1f}%" if rate in r else "–" for rate, _ in RATES]
    rows.append(cells)
  parts = notes + [plot_memorization_rates(report), _table(headers, rows)]
  per_source = report["members"]["per_source"]
  pii_rows = [(source, pii_type, _num(n)) for source, row in sorted(per_source.items())
              for pii_type, n in sorted(row["pii_in_memorized"].items())]
  if pii_rows:
    parts += [plot_memorized_pii(report), _table(("source", "PII type", "matches"), pii_rows)]
  else:
    parts.append("<p>No personal data found in memorized continuations (<code>pipelines.pii</code>).</p>")
  return "\n".join(parts)


def tokenizer_section(stats: dict[str, Any] | None) -> str:
  if stats is None:
    return _missing(f"{TOKENIZER_DIR}: {NOT_RUN}.")
  rows = [(key, _num(value) if isinstance(value, int) and not isinstance(value, bool) else value)
          for key, value in sorted(stats.items()) if not isinstance(value, (dict, list))]
  return _table(("field", "value"), rows)


def data_sections(data: ReportData, schedule: Any = None) -> list[tuple[str, str, str]]:
  """``(id, title, HTML)`` of the data sections (``schedule`` as in :func:`mixture_section`)."""
  return [
      ("funnel", "Documents per stage", funnel_section(data.stages)),
      ("drops", "Drop reasons", drops_section(data.stages)),
      ("sources", "Documents and tokens per source", sources_section(data)),
      ("lengths", "Document lengths", lengths_section(data)),
      ("mixture", "Mixture weights over training", mixture_section(data, schedule)),
      ("tokenizer", "Tokenizer", tokenizer_section(data.tokenizer)),
      ("memorization", "Memorization of training data", memorization_section(data.memorization)),
  ]


def page(title: str, work_dir: str, sections: list[tuple[str, str, str]]) -> str:
  """A self-contained page: the heading, a table of contents and the sections."""
  toc = "".join(f'<li><a href="#{key}">{_e(name)}</a></li>' for key, name, _ in sections)
  body = "\n".join(f'<section id="{key}">\n<h2>{_e(name)}</h2>\n{content}\n</section>'
                   for key, name, content in sections)
  return (
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      f"<title>{_e(title)}: {_e(work_dir)}</title>\n<style>{CSS}</style>\n"
      "</head>\n<body>\n"
      f"<h1>{_e(title)}</h1>\n<p>Work dir: <code>{_e(work_dir)}</code></p>\n"
      f"<ul>{toc}</ul>\n{body}\n</body>\n</html>\n"
  )


def render(data: ReportData, schedule: Any = None) -> str:
  """The HTML page for already loaded data (``schedule`` as in :func:`mixture_section`)."""
  return page("gemma-forge data report", data.work_dir, data_sections(data, schedule))


# The pieces other pages build on (workflow/report.py, the run report).
svg_plot, colors, table, missing, escape = _svg, _colors, _table, _missing, _e


def build_report(
    work_dir: str, train_steps: int | None = None, schedule_file: str | None = None
) -> str:
  """Reads a work dir (and optionally a mixture schedule file) and returns the report page."""
  data = load(work_dir, train_steps)
  schedule = None
  if schedule_file:
    if data.sources is None:
      sources_path = FileSystems.join(work_dir, SOURCES_FILE)
      raise ReportError(f"--schedule needs {sources_path}, which does not exist.")
    schedule = read_schedule(schedule_file, data.sources)
  return render(data, schedule)


def write_report(work_dir: str, output: str, **kwargs: Any) -> str:
  """Writes the page to ``output`` (local or any Beam filesystem); returns the path."""
  page = build_report(work_dir, **kwargs)
  if "://" not in output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with FileSystems.create(output) as f:
    f.write(page.encode("utf-8"))
  return output


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--work_dir", required=True, help="Directory the stages wrote (as demo.py lays it out)."
  )
  parser.add_argument("--output", required=True, help="HTML file to write.")
  parser.add_argument("--schedule", default=None,
                      help="JSON or YAML file of mixture stages (see read_schedule); default: the "
                           "static gf_mixture rates.")
  parser.add_argument("--train_steps", type=int, default=None,
                      help="Steps on the mixture plot's x axis; default: the last step in "
                           f"{METRICS_FILE}, else {DEFAULT_TRAIN_STEPS}.")
  args = parser.parse_args(argv)
  path = write_report(args.work_dir, args.output, train_steps=args.train_steps,
                      schedule_file=args.schedule)
  logging.info("report: %s -> %s", args.work_dir, path)
  return path


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main(sys.argv[1:])
