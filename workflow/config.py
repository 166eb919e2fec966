"""Reads and checks a run config (YAML): everything wrong with it is reported before anything runs.

A run config names the run dir, the input (WARC files, or a ``crawl`` stage with seed URLs), the
sources' quality tiers, the model's gin files, and one section per stage to run (see
configs/sample.yaml and docs/workflow.md)::

    run_dir: out/demo
    inputs: {warcs: "data/sample/*.warc.gz"}
    sources: {docs: high, web: standard}
    model: {gin_files: [gin/small_cpu.gin], bindings: {}}
    beam_args: []
    stages:
      extract: {languages: [en]}
      quality: {}
      dedupe: {inputs: {docs: quality}}   # read another stage's output than the previous one's
      ...

Only the stages listed run. Each input slot of a stage is filled by the nearest earlier listed
stage that produces that kind of output, or by the stage named under its ``inputs``. Errors
(:class:`ConfigError`) name the file and the key: an unknown section, stage or option, a value
of the wrong type, an input no listed stage produces, a cycle, a missing file or WARC glob.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from typing import Any, Mapping

import yaml

from workflow import stages as stages_lib

TOP_LEVEL = ("run_dir", "inputs", "sources", "model", "beam_args", "stages", "kfp")
# External inputs: key -> the kind of output it stands for. `warcs` is a glob of WARC files;
# `docs` a finished document-stage directory, `data` a tokenized data dir (to start a run there).
INPUT_KINDS = {"warcs": stages_lib.WARC, "docs": stages_lib.DOCS, "data": stages_lib.DATA}
MODEL_KEYS = ("gin_files", "bindings")
KFP_KEYS = ("project", "region", "pipeline_root", "image", "service_account", "dataflow",
            "tpu", "data_root")
KFP_DATAFLOW_KEYS = ("machine_type", "max_num_workers", "temp_location", "setup_file")
KFP_TPU_KEYS = ("machine_type", "accelerator_type", "accelerator_count", "replica_count")
EXTERNAL = "@inputs."  # Upstream names of external inputs: "@inputs.warcs", "@inputs.docs", ...
EXTERNAL_WARCS = EXTERNAL + "warcs"


def is_external(upstream: str) -> bool:
  return upstream.startswith(EXTERNAL)


class ConfigError(ValueError):
  """The run config cannot be run as it is; the message names the file and key."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A checked run config: stages in the order they run, each with its options and inputs."""

  path: str
  run_dir: str  # absolute
  order: tuple[str, ...]  # stage names, topologically sorted
  options: Mapping[str, Mapping[str, Any]]  # stage -> its options (without `inputs`)
  wiring: Mapping[str, Mapping[str, str]]  # stage -> {slot: upstream stage or EXTERNAL + key}
  shared: Mapping[str, Any]  # inputs, sources, model, beam_args: what command builders read
  kfp: Mapping[str, Any]
  raw: Mapping[str, Any]

  def upstream(self, stage: str) -> list[str]:
    """The stages whose outputs ``stage`` reads, in run order."""
    names = set(self.wiring[stage].values())
    return [s for s in self.order if s in names]

  def downstream(self, stage: str) -> set[str]:
    """Every stage that reads ``stage``'s output, directly or not."""
    out: set[str] = set()
    for name in self.order:
      if any(u == stage or u in out for u in self.upstream(name)):
        out.add(name)
    return out

  def section_hash(self, stage: str) -> str:
    """Hash of what configures ``stage``: its options and the shared sections it reads."""
    spec = stages_lib.BY_NAME[stage]
    record: dict[str, Any] = {"options": self.options[stage]}
    if spec.uses_model:
      record["model"] = self.shared["model"]
    if spec.name == "tokenize":
      record["sources"] = self.shared.get("sources", {})
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _fail(where: str, message: str) -> None:
  raise ConfigError(f"{where}: {message}")


def _check_keys(where: str, record: Any, allowed: tuple[str, ...]) -> dict:
  if record is None:
    return {}
  if not isinstance(record, dict):
    _fail(where, f"expected a mapping, got {type(record).__name__} {record!r}.")
  unknown = sorted(set(record) - set(allowed))
  if unknown:
    _fail(where, f"unknown key(s) {unknown}; known: {list(allowed)}.")
  return record


def resolve_path(path: str) -> str:
  """A path as the config means it: absolute, or relative to the repository root."""
  return path if os.path.isabs(path) else os.path.join(stages_lib.REPO_ROOT, path)


def _check_value(where: str, value: Any, kind: str) -> Any:
  ok = {
      "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
      "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
      "str": lambda v: isinstance(v, str),
      "layout": lambda v: v in stages_lib.SHARD_LAYOUTS,
      "bool": lambda v: isinstance(v, bool),
      "flag": lambda v: isinstance(v, bool),
      "list": lambda v: isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v),
      "path": lambda v: isinstance(v, str) and v != "",
      "gin": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
  }[kind]
  if not ok(value):
    expected = f"one of {list(stages_lib.SHARD_LAYOUTS)}" if kind == "layout" else kind
    _fail(where, f"expected {expected}, got {type(value).__name__} {value!r}.")
  if kind == "path" and not os.path.isfile(resolve_path(value)):
    _fail(where, f"file {value!r} does not exist (paths are relative to {stages_lib.REPO_ROOT}).")
  return value


def _find_cycle(edges: Mapping[str, list[str]]) -> list[str] | None:
  """A cycle of the graph (stage -> stages it reads), as a path that ends where it starts."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for dep in edges[node]:
      if state.get(dep) == 1:
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in edges:
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def parse(raw: Any, path: str = "<config>", run_dir: str | None = None) -> RunConfig:
  """Checks a loaded config (a dict) and resolves its wiring; ``run_dir`` overrides the file's."""
  raw = _check_keys(path, raw, TOP_LEVEL)
  inputs = _check_keys(f"{path}: inputs", raw.get("inputs"), tuple(INPUT_KINDS))
  for key, value in inputs.items():
    if not isinstance(value, str) or not value:
      _fail(f"{path}: inputs.{key}", f"expected a path, got {value!r}.")
  sources = raw.get("sources") or {}
  if not isinstance(sources, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in sources.items()):
    _fail(f"{path}: sources", f"expected a mapping of source name -> tier, got {sources!r}.")
  model = _check_keys(f"{path}: model", raw.get("model"), MODEL_KEYS)
  beam_args = raw.get("beam_args") or []
  if not isinstance(beam_args, list) or not all(isinstance(a, str) for a in beam_args):
    _fail(f"{path}: beam_args", f"expected a list of flags, got {beam_args!r}.")
  kfp = _check_keys(f"{path}: kfp", raw.get("kfp"), KFP_KEYS)
  _check_keys(f"{path}: kfp.dataflow", kfp.get("dataflow"), KFP_DATAFLOW_KEYS)
  _check_keys(f"{path}: kfp.tpu", kfp.get("tpu"), KFP_TPU_KEYS)

  run_dir = run_dir or raw.get("run_dir")
  if not isinstance(run_dir, str) or not run_dir:
    _fail(f"{path}: run_dir", "required: the directory every stage writes under.")
  section = raw.get("stages")
  if not isinstance(section, dict) or not section:
    _fail(f"{path}: stages", f"expected a mapping of stage name -> options, got {section!r}.")
  unknown = [name for name in section if name not in stages_lib.BY_NAME]
  if unknown:
    _fail(f"{path}: stages", f"unknown stage(s) {unknown}; known: {list(stages_lib.ORDER)}.")

  listed = [name for name in stages_lib.ORDER if name in section]
  options: dict[str, dict[str, Any]] = {}
  wiring: dict[str, dict[str, str]] = {}
  for name in listed:
    spec = stages_lib.BY_NAME[name]
    where = f"{path}: stages.{name}"
    given = dict(section[name] or {})
    if not isinstance(section[name] or {}, dict):
      _fail(where, f"expected a mapping of options, got {section[name]!r}.")
    overrides = given.pop("inputs", None) or {}
    _check_keys(f"{where}.inputs", overrides, tuple(spec.slots))
    for key, value in given.items():
      if key not in spec.options:
        _fail(where, f"unknown option {key!r}; options of {name}: {sorted(spec.options)}.")
      _check_value(f"{where}.{key}", value, spec.options[key])
    options[name] = given
    wiring[name] = {}
    earlier = listed[:listed.index(name)]
    for slot, kind in spec.slots.items():
      if slot in overrides:
        upstream = overrides[slot]
        if upstream not in section:
          _fail(f"{where}.inputs.{slot}", f"{upstream!r} is not a stage of this config.")
        produced = stages_lib.BY_NAME[upstream].produces
        if produced != kind:
          _fail(f"{where}.inputs.{slot}", f"{upstream!r} produces {produced}, not {kind}.")
      else:
        producers = [s for s in earlier if stages_lib.BY_NAME[s].produces == kind]
        external = [k for k, v in INPUT_KINDS.items() if v == kind and k in inputs]
        if producers:
          upstream = producers[-1]
        elif external:
          upstream = EXTERNAL + external[0]
        else:
          hint = ", ".join(f"inputs.{k}" for k, v in INPUT_KINDS.items() if v == kind)
          _fail(where, f"input {slot!r} ({kind}): no earlier stage of this config produces it"
                + (f" (give {hint} or a stage that writes it)" if hint else "") + ".")
      wiring[name][slot] = upstream
    if spec.reads_all:
      wiring[name].update({f"from_{s}": s for s in earlier})
  if "crawl" in section and inputs.get("warcs"):
    _fail(f"{path}: inputs.warcs", "give either inputs.warcs or a crawl stage, not both.")
  if "crawl" in section and "seeds" not in options["crawl"]:
    _fail(f"{path}: stages.crawl", "option 'seeds' (a file of seed URLs) is required.")
  used = {up[len(EXTERNAL):] for s in listed for up in wiring[s].values() if is_external(up)}
  for key in sorted(set(inputs) - used):
    _fail(f"{path}: inputs.{key}", "no stage of this config reads it.")
  for key in sorted(used):
    value = resolve_path(inputs[key])
    if key == "warcs" and not glob.glob(value):
      _fail(f"{path}: inputs.warcs", f"no file matches {inputs[key]!r} (relative to "
            f"{stages_lib.REPO_ROOT}).")
    if key != "warcs" and not os.path.isfile(os.path.join(value, "_SUCCESS")):
      _fail(f"{path}: inputs.{key}", f"{inputs[key]!r} is not a finished stage directory "
            "(no _SUCCESS marker).")
  if any(stages_lib.BY_NAME[s].uses_model for s in listed):
    files = model.get("gin_files")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
      _fail(f"{path}: model.gin_files", "required by the model stages: a list of gin files.")
    for f in files:
      if not os.path.isfile(resolve_path(f)):
        _fail(f"{path}: model.gin_files", f"file {f!r} does not exist.")
    _check_value(f"{path}: model.bindings", model.get("bindings") or {}, "gin")
  for name in listed:  # Every training stage's run length is said in the config.
    if stages_lib.BY_NAME[name].resumable and "train_steps" not in options[name]:
      _fail(f"{path}: stages.{name}", "option 'train_steps' is required.")

  edges = {name: sorted(u for u in set(wiring[name].values()) if not is_external(u))
           for name in listed}
  cycle = _find_cycle(edges)
  if cycle:
    _fail(f"{path}: stages", "the inputs form a cycle: " + " reads ".join(cycle) + ".")
  order = _topological(listed, edges)
  shared = {"inputs": {k: resolve_path(v) for k, v in inputs.items()}, "sources": sources,
            "model": {"gin_files": list(model.get("gin_files") or []),
                      "bindings": dict(model.get("bindings") or {})},
            "beam_args": list(beam_args),
            # The pretrain stage's last step: its final checkpoint, on paths not listable here.
            "train_steps": options.get("pretrain", {}).get("train_steps"),
            # Each training stage's last step (its final checkpoint on remote paths).
            "stage_train_steps": {s: options[s]["train_steps"] for s in listed
                                  if "train_steps" in options[s]}}
  return RunConfig(path=path, run_dir=os.path.abspath(resolve_path(run_dir)), order=order,
                   options=options, wiring=wiring, shared=shared, kfp=kfp, raw=raw)


def _topological(listed: list[str], edges: Mapping[str, list[str]]) -> tuple[str, ...]:
  """Stages after their inputs; among ready stages, the stage table's order."""
  done: list[str] = []
  remaining = list(listed)
  while remaining:
    ready = next(s for s in remaining if all(d in done for d in edges[s]))
    done.append(ready)
    remaining.remove(ready)
  return tuple(done)


def load(path: str, run_dir: str | None = None) -> RunConfig:
  """Reads and checks a YAML run config file."""
  if not os.path.isfile(path):
    raise ConfigError(f"{path}: no such config file.")
  with open(path, encoding="utf-8") as f:
    try:
      raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
      raise ConfigError(f"{path}: not valid YAML: {e}") from e
  return parse(raw, path, run_dir)


def select(config: RunConfig, from_stage: str | None = None, until: str | None = None,
           only: list[str] | None = None) -> list[str]:
  """The stages a ``--from``/``--until``/``--only`` selection runs, in run order."""
  for flag, names in (("--from", [from_stage]), ("--until", [until]), ("--only", only or [])):
    for name in names:
      if name is not None and name not in config.order:
        raise ConfigError(f"{flag}={name}: not a stage of {config.path} "
                          f"(its stages: {list(config.order)}).")
  if only:
    if from_stage or until:
      raise ConfigError("--only cannot be combined with --from/--until.")
    return [s for s in config.order if s in only]
  start = config.order.index(from_stage) if from_stage else 0
  end = config.order.index(until) if until else len(config.order) - 1
  if start > end:
    raise ConfigError(f"--from={from_stage} comes after --until={until} in the run order "
                      f"{list(config.order)}.")
  return list(config.order[start:end + 1])
