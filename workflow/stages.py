"""The stage table: one declarative entry per stage of the workflow, in workflow order.

Each :class:`Stage` says what it reads (input *slots*, each filled by the output of an earlier
stage of a given kind), what it writes (a directory under the run dir that only it writes), which
options its config section accepts (each one a flag of the stage's module, with its type), which
source modules make up its code version, and how its command line is built. ``workflow.runner``
runs the table locally, ``workflow.kfp_pipeline`` compiles it to Kubeflow Pipelines; neither knows
any stage by name.

A stage whose module is not in the repository yet is not in this table (see docs/workflow.md).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Mapping

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Option types of a config section. "flag" is a store_true flag (given only when true), "bool" a
# flag that takes true/false, "list" a list of strings joined by commas, "path" a file (relative
# to the repository root or absolute) whose content is part of the stage's fingerprint, "gin" a
# mapping of gin bindings (macro or configurable.param -> value).
OPTION_TYPES = ("int", "float", "str", "bool", "flag", "list", "path", "gin")

# Kinds of outputs, which input slots ask for.
WARC, DOCS, TOKENIZER, DATA, MODEL, EVAL, SAMPLE, REPORT = (
    "warc", "docs", "tokenizer", "data", "model", "eval", "sample", "report")
# Post-training kinds: their own, so that the pretraining stages (eval, benchmarks, ...) keep
# reading the pretrained model and its data whatever post-training stages a config lists.
CHAT_DATA, CHAT_MODEL, REWARD_MODEL = "chat_data", "chat_model", "reward_model"


@dataclasses.dataclass(frozen=True)
class StageContext:
  """What a command builder needs: the stage's options, its inputs' paths and the run's settings."""

  run_dir: str
  options: Mapping[str, Any]
  inputs: Mapping[str, str]  # slot -> the path of the upstream output (or the WARC glob)
  output: str  # the stage's own output directory
  run: Mapping[str, Any]  # the run config's shared sections: sources, model, beam_args, inputs
  python: str = sys.executable


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: a module run as ``python -m <module>`` with flags built from its config section."""

  name: str
  module: str
  produces: str  # the kind of its output (one of the kinds above)
  output: str  # its directory under the run dir
  slots: Mapping[str, str]  # input slot -> kind of output it reads
  options: Mapping[str, str]  # option name (= flag name) -> type (OPTION_TYPES)
  command: Callable[[StageContext], list[str]]
  kind: str  # "beam" (a Beam job: runner flags apply), "jax" (training/eval/inference), "local"
  doc: str
  resumable: bool = False  # A killed run restarts in place (the trainer resumes from MODEL_DIR).
  uses_model: bool = False  # Its command and fingerprint include the run config's `model` section.
  code_data: tuple[str, ...] = ()  # Data files/dirs (repo-relative) that are part of its code.
  progress_unit: str = "docs"  # What its progress counts: "docs" (Beam) or "steps" (training).
  reads_all: bool = False  # Reads the outputs of every earlier stage of the run (the report).


def option_flags(options: Mapping[str, Any], schema: Mapping[str, str]) -> list[str]:
  """``--name=value`` for every option given (sorted); omitted options keep the module's default."""
  flags = []
  for name in sorted(options):
    value, kind = options[name], schema[name]
    if kind == "flag":
      flags += [f"--{name}"] if value else []
    elif kind == "bool":
      flags.append(f"--{name}={'true' if value else 'false'}")
    elif kind == "list":
      flags.append(f"--{name}={','.join(str(v) for v in value)}")
    elif kind == "path":
      flags.append(f"--{name}={os.path.join(REPO_ROOT, value)}")
    elif kind in ("int", "float", "str", "layout"):
      flags.append(f"--{name}={value}")
  return flags


def gin_value(value: Any) -> str:
  """A gin literal: strings quoted (``'out/model'``), references (``@x``, ``%X``) as given."""
  if isinstance(value, str) and not value.startswith(("@", "%")):
    return repr(value)
  if isinstance(value, bool):
    return "True" if value else "False"
  if value is None:
    return "None"
  return repr(value) if isinstance(value, (dict, list, tuple)) else str(value)


def gin_flags(files: list[str], bindings: Mapping[str, Any]) -> list[str]:
  return ([f"--gin_file={os.path.join(REPO_ROOT, f)}" for f in files]
          + [f"--gin.{k}={gin_value(v)}" for k, v in sorted(bindings.items())])


def _beam(ctx: StageContext, module: str, *flags: str) -> list[str]:
  return [ctx.python, "-m", module, *flags, *option_flags(ctx.options, STAGES[module].options),
          *ctx.run.get("beam_args", [])]


def _doc_stage(module: str) -> Callable[[StageContext], list[str]]:
  def build(ctx: StageContext) -> list[str]:
    return _beam(ctx, module, f"--input={ctx.inputs['docs']}", f"--output_dir={ctx.output}")
  return build


def _crawl(ctx: StageContext) -> list[str]:
  return _beam(ctx, "pipelines.crawl", f"--output_dir={ctx.output}")


def _extract(ctx: StageContext) -> list[str]:
  return _beam(ctx, "pipelines.extract", f"--input={ctx.inputs['warc']}",
               f"--output_dir={ctx.output}")


def _train_tokenizer(ctx: StageContext) -> list[str]:
  return [ctx.python, "-m", "pipelines.train_tokenizer", f"--input={ctx.inputs['docs']}",
          f"--output_dir={ctx.output}",
          *option_flags(ctx.options, STAGES["pipelines.train_tokenizer"].options)]


def _tokenize(ctx: StageContext) -> list[str]:
  tiers = ",".join(f"{s}={t}" for s, t in sorted(ctx.run.get("sources", {}).items()))
  return _beam(ctx, "pipelines.tokenize", f"--input={ctx.inputs['docs']}",
               f"--tokenizer={os.path.join(ctx.inputs['tokenizer'], 'tokenizer.model')}",
               f"--output_dir={ctx.output}", *([f"--tiers={tiers}"] if tiers else []))


def _model_gin(ctx: StageContext) -> tuple[list[str], dict[str, Any]]:
  model = ctx.run["model"]
  return list(model["gin_files"]), dict(model.get("bindings", {}))


def _pretrain(ctx: StageContext) -> list[str]:
  files, bindings = _model_gin(ctx)
  bindings.update(ctx.options.get("bindings", {}))
  bindings.update(MODEL_DIR=ctx.output, DATA_DIR=ctx.inputs["data"],
                  TRAIN_STEPS=ctx.options["train_steps"])
  return [ctx.python, "-m", "model.train", *gin_flags(files, bindings)]


def _eval(ctx: StageContext) -> list[str]:
  files, bindings = _model_gin(ctx)
  files += ["gin/runs/eval.gin"]
  bindings.update(ctx.options.get("bindings", {}))
  bindings.update(MODEL_DIR=ctx.inputs["model"], DATA_DIR=ctx.inputs["data"],
                  EVAL_OUTPUT=os.path.join(ctx.output, "eval_results.json"))
  return [ctx.python, "-m", "model.eval", *gin_flags(files, bindings)]


def _sample(ctx: StageContext) -> list[str]:
  files, bindings = _model_gin(ctx)
  files += ["gin/runs/infer.gin"]
  bindings.update(ctx.options.get("bindings", {}))
  bindings.update(MODEL_DIR=ctx.inputs["model"], DATA_DIR=ctx.inputs["data"],
                  INFER_OUTPUT=os.path.join(ctx.output, "samples.jsonl"))
  return [ctx.python, "-m", "model.infer", *gin_flags(files, bindings),
          *[f"--prompt={p}" for p in ctx.options.get("prompts", [])]]


def latest_checkpoint(model_dir: str) -> str:
  """The newest step directory of a finished training stage (``<model_dir>/checkpoints/<step>``)."""
  root = os.path.join(model_dir, "checkpoints")
  steps = sorted(int(n) for n in os.listdir(root) if n.isdigit()) if os.path.isdir(root) else []
  if not steps:
    raise FileNotFoundError(f"{root} holds no checkpoint step directory.")
  return os.path.join(root, str(steps[-1]))


def _checkpoint_run(run_file: str) -> Callable[[StageContext], list[str]]:
  """A gin run file that takes CHECKPOINT and OUTPUT_DIR and the model from the model section
  (its MODEL = None is set by the model files after it, as docs/evaluation.md runs them)."""
  def build(ctx: StageContext) -> list[str]:
    files, bindings = _model_gin(ctx)
    # The model section may carry a training run (small_cpu.gin includes pretrain.gin, whose
    # `train` and macros these entry points do not define): `model_gin_files` names the model
    # alone, and then the model section's bindings are not applied either.
    if "model_gin_files" in ctx.options:
      files, bindings = list(ctx.options["model_gin_files"]), {}
    bindings.update(ctx.options.get("bindings", {}))
    model_dir = ctx.inputs["model"]
    checkpoint = (f"{model_dir}/checkpoints/{ctx.run['train_steps']}" if "://" in model_dir
                  else latest_checkpoint(model_dir))  # The trainer always saves its last step.
    bindings.update(CHECKPOINT=checkpoint, OUTPUT_DIR=ctx.output,
                    DATA_DIR=ctx.inputs["data"])
    if run_file.endswith("benchmarks.gin"):
      bindings["TOKENIZER"] = os.path.join(ctx.inputs["data"], "tokenizer.model")
    module = "model.evaluate" if run_file.endswith("benchmarks.gin") else "model.memorization"
    return [ctx.python, "-m", module, *gin_flags([run_file, *files], bindings)]
  return build


CHAT_INPUT = "data/chat/*.jsonl"  # The chat data job's input (data/chat is part of its code version).


def _chat_data(ctx: StageContext) -> list[str]:
  return _beam(ctx, "pipelines.chat_data", f"--input={os.path.join(REPO_ROOT, CHAT_INPUT)}",
               f"--tokenizer={os.path.join(ctx.inputs['tokenizer'], 'tokenizer.model')}",
               f"--output_dir={ctx.output}")


def _step_dir(ctx: StageContext, slot: str) -> str:
  """The last checkpoint of the training stage feeding ``slot``: listed here, or (a remote path,
  not listable) ``checkpoints/<its train_steps>``, since every trainer saves its last step."""
  model_dir = ctx.inputs[slot]
  if "://" not in model_dir:
    return latest_checkpoint(model_dir)
  upstream = next(s for s in _TABLE if s.output == model_dir.rstrip("/").rsplit("/", 1)[-1])
  steps = ctx.run.get("stage_train_steps", {}).get(upstream.name)
  return f"{model_dir}/checkpoints/{steps}"


def _post_training(run_file: str, module: str, checkpoints: Mapping[str, str]
                   ) -> Callable[[StageContext], list[str]]:
  """A post-training run file (its model is the one it includes, as docs/post_training.md runs
  them): checkpoint macros from input slots, DATA_DIR the chat data, MODEL_DIR its output."""
  def build(ctx: StageContext) -> list[str]:
    bindings = dict(ctx.options.get("bindings", {}))
    bindings.update({macro: _step_dir(ctx, slot) for macro, slot in checkpoints.items()})
    bindings.update(DATA_DIR=ctx.inputs["data"], MODEL_DIR=ctx.output,
                    TRAIN_STEPS=ctx.options["train_steps"])
    return [ctx.python, "-m", module, *gin_flags([run_file], bindings)]
  return build


def _chat_sample(ctx: StageContext) -> list[str]:
  bindings = dict(ctx.options.get("bindings", {}))
  bindings.update(DATA_DIR=ctx.inputs["data"], MODEL_DIR=ctx.inputs["model"],
                  INFER_OUTPUT=os.path.join(ctx.output, "samples.jsonl"))
  return [ctx.python, "-m", "model.infer", *gin_flags(["gin/runs/sft.gin", "gin/runs/infer.gin"],
                                                      bindings), "--chat",
          *[f"--prompt={p}" for p in ctx.options.get("prompts", [])]]


def _report(ctx: StageContext) -> list[str]:
  return [ctx.python, "-m", "workflow.report", f"--run_dir={ctx.run_dir}",
          f"--output={os.path.join(ctx.output, 'report.html')}"]


_SHARDS = {"num_shards": "int", "num_reject_shards": "int"}
# Stages with ``--shard_layout`` (pipelines.common.SHARD_LAYOUTS; a test checks the two agree):
# ``per_input`` keeps a local run's memory flat in the input size (docs/scale.md, Memory).
SHARD_LAYOUTS = ("by_size", "per_input")
_LAYOUT = {"shard_layout": "layout", "target_shard_bytes": "int"}

_TABLE = (
    Stage("crawl", "pipelines.crawl", WARC, "crawl", {}, {
        "seeds": "path", "max_depth": "int", "max_pages": "int", "allowed_hosts": "list",
        "same_host_only": "flag", "allow_private_addresses": "flag", "user_agent": "str",
        "num_shards": "int", "target_warc_bytes": "int", "num_fetch_log_shards": "int",
        "warc_prefix": "str", "min_delay": "float", "total_timeout": "float", **_LAYOUT},
          _crawl, "beam",
          "Polite crawl of the seed URLs to WARC (runs only when the config has a crawl stage)."),
    Stage("extract", "pipelines.extract", DOCS, "extract", {"warc": WARC}, {
        **_SHARDS, **_LAYOUT, "languages": "list", "min_lang_score": "float", "extract_timeout_s": "float",
        "source": "str"}, _extract, "beam", "WARC/WET -> clean text, language id."),
    Stage("quality", "pipelines.quality", DOCS, "quality", {"docs": DOCS}, {
        **_SHARDS, **_LAYOUT, "url_blocklist": "path", "min_words": "int", "max_words": "int",
        "min_mean_word_length": "float", "max_mean_word_length": "float",
        "max_symbol_word_ratio": "float", "min_stop_words": "int",
        "min_alpha_words_frac": "float"}, _doc_stage("pipelines.quality"), "beam",
          "Gopher quality and repetition rules, C4 line rules, URL blocklist."),
    Stage("pii", "pipelines.pii", DOCS, "pii", {"docs": DOCS}, {
        **_SHARDS, **_LAYOUT, "max_hits": "int", "min_words_per_hit": "float", "density_min_hits": "int"},
          _doc_stage("pipelines.pii"), "beam", "PII detection and typed redaction."),
    Stage("toxicity", "pipelines.toxicity", DOCS, "toxicity", {"docs": DOCS}, {
        **_SHARDS, **_LAYOUT, "threshold": "float"}, _doc_stage("pipelines.toxicity"), "beam",
          "Toxicity scoring (word lists + hashed n-gram classifier).",
          code_data=("pipelines/toxicity_words",)),
    Stage("dedupe", "pipelines.dedupe", DOCS, "dedupe", {"docs": DOCS}, {
        **_SHARDS, **_LAYOUT, "num_buckets": "int", "target_bucket_bytes": "int", "exact": "bool", "near": "bool", "jaccard_threshold": "float",
        "ngram_size": "int", "num_bands": "int", "rows_per_band": "int", "seed": "int",
        "verify": "bool"}, _doc_stage("pipelines.dedupe"), "beam",
          "Exact and MinHash-LSH near-duplicate removal."),
    Stage("decontaminate", "pipelines.decontaminate", DOCS, "decontaminate", {"docs": DOCS}, {
        **_SHARDS, **_LAYOUT, "benchmarks": "list", "ngram": "int", "min_example_words": "int"},
          _doc_stage("pipelines.decontaminate"), "beam",
          "Drops documents that share an n-gram with an evaluation set (data/benchmarks).",
          code_data=("data/benchmarks",)),
    Stage("train_tokenizer", "pipelines.train_tokenizer", TOKENIZER, "tokenizer", {"docs": DOCS}, {
        "vocab_size": "int", "sample_docs": "int", "character_coverage": "float",
        "max_sentence_length": "int", "max_whitespace_run": "int", "num_threads": "int"},
          _train_tokenizer, "local", "SentencePiece with Gemma's settings."),
    Stage("tokenize", "pipelines.tokenize", DATA, "data", {"docs": DOCS, "tokenizer": TOKENIZER}, {
        **_SHARDS, **_LAYOUT, "validation_fraction": "float", "num_validation_shards": "int",
        "default_tier": "str", "batch_size": "int"}, _tokenize, "beam",
          "Token shards in the seqio cache layout, sources.json with tiers."),
    Stage("pretrain", "model.train", MODEL, "model", {"data": DATA}, {
        "train_steps": "int", "bindings": "gin"}, _pretrain, "jax",
          "Pretraining (t5x-style trainer); resumes from its checkpoints when killed.",
          resumable=True, uses_model=True, progress_unit="steps"),
    Stage("eval", "model.eval", EVAL, "eval", {"model": MODEL, "data": DATA}, {
        "bindings": "gin"}, _eval, "jax", "Validation loss and perplexity per task.",
          uses_model=True, code_data=("gin/runs/eval.gin",)),
    Stage("sample", "model.infer", SAMPLE, "sample", {"model": MODEL, "data": DATA}, {
        "prompts": "list", "bindings": "gin"}, _sample, "jax",
          "Samples continuations of prompts from the pretrained model.",
          uses_model=True, code_data=("gin/runs/infer.gin",)),
    Stage("chat_data", "pipelines.chat_data", CHAT_DATA, "chat_data", {"tokenizer": TOKENIZER}, {
        **_SHARDS, **_LAYOUT, "max_length": "int", "validation_fraction": "float",
        "num_validation_shards": "int", "toxicity_threshold": "float", "num_buckets": "int"},
          _chat_data, "beam",
          "data/chat's SFT conversations and preference pairs -> chat and pair caches (one job).",
          code_data=("data/chat",)),
    Stage("sft", "model.train", CHAT_MODEL, "sft", {"model": MODEL, "data": CHAT_DATA}, {
        "train_steps": "int", "bindings": "gin"},
          _post_training("gin/runs/sft.gin", "model.train", {"INIT_CHECKPOINT": "model"}), "jax",
          "Supervised fine-tuning from the pretrained checkpoint, loss on model turns only.",
          resumable=True, uses_model=True, code_data=("gin/runs/sft.gin",), progress_unit="steps"),
    Stage("reward_model", "model.reward_model", REWARD_MODEL, "reward_model",
          {"model": CHAT_MODEL, "data": CHAT_DATA}, {"train_steps": "int", "bindings": "gin"},
          _post_training("gin/runs/reward_model.gin", "model.reward_model",
                         {"INIT_CHECKPOINT": "model"}), "jax",
          "Bradley-Terry reward model from the SFT checkpoint; held-out accuracy vs length.",
          resumable=True, uses_model=True, code_data=("gin/runs/reward_model.gin",),
          progress_unit="steps"),
    Stage("rlhf", "model.rlhf", CHAT_MODEL, "rlhf",
          {"policy": CHAT_MODEL, "reward": REWARD_MODEL, "data": CHAT_DATA}, {
              "train_steps": "int", "bindings": "gin"},
          _post_training("gin/runs/rlhf.gin", "model.rlhf",
                         {"POLICY_CHECKPOINT": "policy", "REWARD_CHECKPOINT": "reward"}), "jax",
          "RLHF (RLOO, or PPO-clip) of the SFT policy against the reward model, KL to SFT.",
          resumable=True, uses_model=True, code_data=("gin/runs/rlhf.gin",), progress_unit="steps"),
    Stage("chat_sample", "model.infer", SAMPLE, "chat_sample",
          {"model": CHAT_MODEL, "data": CHAT_DATA}, {"prompts": "list", "bindings": "gin"},
          _chat_sample, "jax", "A multi-turn chat with the last post-trained model (--chat).",
          uses_model=True, code_data=("gin/runs/sft.gin", "gin/runs/infer.gin")),
    Stage("benchmarks", "model.evaluate", EVAL, "benchmarks", {"model": MODEL, "data": DATA}, {
        "bindings": "gin", "model_gin_files": "list"}, _checkpoint_run("gin/runs/benchmarks.gin"), "jax",
          "Academic benchmarks as the paper runs them (data/benchmarks, lm-eval semantics).",
          uses_model=True, code_data=("gin/runs/benchmarks.gin", "data/benchmarks")),
    Stage("memorization", "model.memorization", EVAL, "memorization",
          {"model": MODEL, "data": DATA}, {"bindings": "gin", "model_gin_files": "list"},
          _checkpoint_run("gin/runs/memorization.gin"), "jax",
          "Exact and approximate memorization of training documents, PII in what is memorized.",
          uses_model=True, code_data=("gin/runs/memorization.gin",)),
    Stage("report", "workflow.report", REPORT, "report", {}, {}, _report, "local",
          "The run's HTML report (reads every stage's output).", reads_all=True),
)

# Keyed by module for the builders above, by name for everyone else.
# (A module run by several stages, model.train or model.infer, is keyed to its first stage.)
STAGES: dict[str, Stage] = {}
for _stage in _TABLE:
  STAGES.setdefault(_stage.module, _stage)
BY_NAME: dict[str, Stage] = {s.name: s for s in _TABLE}
ORDER: tuple[str, ...] = tuple(s.name for s in _TABLE)
