"""Runs the whole gemma-forge workflow on the bundled sample and prints what each stage did.

    python -m demo --work_dir=out/demo

This is ``python -m workflow run --config=configs/sample.yaml`` (what `make demo` runs) with a
printed summary: every stage runs as its own ``python -m ...`` process, exactly as a user would run
it (DirectRunner for the Beam jobs), and hands the next one only files (docs/architecture.md).
The workflow skips the stages that are up to date, so a rerun right after does nothing, and a
killed run resumes (training from its last checkpoint); see docs/workflow.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import yaml

from workflow import config as config_lib
from workflow import runner

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
SAMPLE_CONFIG = os.path.join(REPO_ROOT, "configs", "sample.yaml")

# Stage name -> the directory holding its stats.json, in workflow order.
STAT_DIRS = {"extract": "extract", "quality": "quality", "pii": "pii", "toxicity": "toxicity",
             "dedupe": "dedupe", "decontaminate": "decontaminate", "train_tokenizer": "tokenizer",
             "tokenize": "data"}
DATA_STAGES_END = "tokenize"


def run_config(args: argparse.Namespace) -> config_lib.RunConfig:
  """The sample config with this command's overrides (each one a key of the config)."""
  with open(args.config) as f:
    raw = yaml.safe_load(f)
  raw["run_dir"] = os.path.abspath(args.work_dir)
  stages = raw["stages"]
  if args.warcs:
    raw.setdefault("inputs", {})["warcs"] = args.warcs
  if args.vocab_size is not None:
    stages["train_tokenizer"] = {**(stages.get("train_tokenizer") or {}),
                                 "vocab_size": args.vocab_size}
  if args.train_steps is not None:
    stages["pretrain"] = {**(stages.get("pretrain") or {}), "train_steps": args.train_steps}
  if args.prompt is not None:
    stages["sample"] = {**(stages.get("sample") or {}), "prompts": [args.prompt]}
  return config_lib.parse(raw, args.config)


def summarize(work_dir: str) -> dict:
  """Collects the numbers the demo promises: per-stage accounting, tokens, loss, perplexity, and
  the post-training stages' numbers (SFT loss, reward model accuracy, RL reward and KL, a chat)."""
  summary: dict = {"stages": {}}
  for stage, directory in STAT_DIRS.items():
    if not os.path.exists(os.path.join(work_dir, directory)):
      continue  # A stage the run config leaves out.
    with open(os.path.join(work_dir, directory, "stats.json")) as f:
      summary["stages"][stage] = json.load(f)
  with open(os.path.join(work_dir, "data", "sources.json")) as f:
    summary["sources"] = json.load(f)
  summary["train"] = _read_train_metrics(os.path.join(work_dir, "model"))
  with open(os.path.join(work_dir, "eval", "eval_results.json")) as f:
    summary["eval"] = json.load(f)
  with open(os.path.join(work_dir, "sample", "samples.jsonl")) as f:
    sample = json.loads(f.readline())
  summary["sample"] = {"prompt": sample["prompt"], "completion": sample["completion"]}
  summary.update(_post_training(work_dir))
  return summary


def _post_training(work_dir: str) -> dict:
  """SFT loss, reward model accuracy, RL reward/KL and the chat, for the stages the config ran."""
  out: dict = {}
  if os.path.exists(os.path.join(work_dir, "chat_data", "stats.json")):
    with open(os.path.join(work_dir, "chat_data", "stats.json")) as f:
      out["chat_data"] = json.load(f)
  if os.path.exists(os.path.join(work_dir, "sft", "metrics.jsonl")):
    out["sft"] = _read_train_metrics(os.path.join(work_dir, "sft"))
  for stage, name in (("reward_model", "reward_model_summary.json"), ("rlhf", "rlhf_summary.json")):
    path = os.path.join(work_dir, stage, name)
    if os.path.exists(path):
      with open(path) as f:
        out[stage] = json.load(f)
  path = os.path.join(work_dir, "chat_sample", "samples.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      out["chat_sample"] = [{"prompt": r["prompt"], "completion": r["completion"]}
                            for r in map(json.loads, f)]
  return out


def print_post_training(summary: dict) -> None:
  if "chat_data" in summary:
    c = summary["chat_data"]
    print(f"\nchat data: {c['in']} in, {c.get('kept_sft', 0)} SFT conversations + "
          f"{c.get('kept_preference', 0)} preference pairs kept, {c['dropped_total']} dropped")
  if "sft" in summary:
    t = summary["sft"]
    print(f"SFT loss (model turns): step {t['first_step']} {t['first_loss']:.3f} -> "
          f"step {t['last_step']} {t['last_loss']:.3f}")
  if "reward_model" in summary:
    rm, first = summary["reward_model"]["eval"], summary["reward_model"]["eval_start"]
    print(f"reward model held-out accuracy: step {first['step']} {first['accuracy']:.3f} -> step "
          f"{rm['step']} {rm['accuracy']:.3f} over {rm['pairs']} pairs (length baseline "
          f"{rm['length_baseline_accuracy']:.3f})")
  if "rlhf" in summary:
    a, b = summary["rlhf"]["train_first"], summary["rlhf"]["train_last"]
    print(f"RLHF reward (train batch): step {a['step']} {a['reward']:.3f} -> step {b['step']} "
          f"{b['reward']:.3f}; KL {a['kl']:.4f} -> {b['kl']:.4f}")
    e0, e1 = summary["rlhf"].get("eval_start"), summary["rlhf"].get("eval")
    if e0 and e1:
      print(f"RLHF held-out reward: step {e0['step']} {e0['reward']:.3f} -> step {e1['step']} "
            f"{e1['reward']:.3f}; KL {e0['kl']:.4f} -> {e1['kl']:.4f}")
  for turn in summary.get("chat_sample", []):
    print(f"chat: USER {turn['prompt']!r} -> MODEL {turn['completion']!r}")


def _read_train_metrics(model_dir: str) -> dict:
  losses = []
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record and record.get("split", "train") == "train":
        losses.append((record["step"], record["loss"]))
  losses.sort()
  return {"first_step": losses[0][0], "first_loss": losses[0][1],
          "last_step": losses[-1][0], "last_loss": losses[-1][1]}


def print_summary(summary: dict) -> None:
  print("\n=== gemma-forge demo summary ===")
  print(f"{'stage':<16} {'in':>6} {'kept':>6} {'dropped':>8}  reasons")
  for stage, stats in summary["stages"].items():
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(stats["dropped"].items()))
    print(f"{stage:<16} {stats['in']:>6} {stats['kept']:>6} {stats['dropped_total']:>8}  {reasons}")
  tokens = summary["stages"]["tokenize"]
  print(f"\ntokens written: {tokens['train_tokens']} train, {tokens['validation_tokens']} validation")
  print("\ntokens written per source:")
  for source, info in sorted(summary["sources"]["sources"].items()):
    print(f"  {source:<10} tier={info['tier']:<9} " + ", ".join(
        f"{split}: {c['documents']} docs / {c['tokens']} tokens"
        for split, c in sorted(info["splits"].items())))
  t = summary["train"]
  print(f"\ntraining loss: step {t['first_step']} {t['first_loss']:.3f} -> "
        f"step {t['last_step']} {t['last_loss']:.3f}")
  for task, result in sorted(summary["eval"]["results"].items()):
    print(f"eval {task:<12} loss={result['loss']:.3f} perplexity={result['perplexity']:.1f}")
  sample = summary["sample"]
  print(f"\nsample: {sample['prompt']!r} -> {sample['completion']!r}")
  print_post_training(summary)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=SAMPLE_CONFIG, help="Run config (YAML).")
  parser.add_argument("--work_dir", default="out/demo", help="The run dir (overrides the config's).")
  parser.add_argument("--warcs", default=None, help="WARC files to start from (a glob).")
  parser.add_argument("--vocab_size", type=int, default=None)
  parser.add_argument("--train_steps", type=int, default=None)
  parser.add_argument("--prompt", default=None)
  parser.add_argument("--only_data", action="store_true",
                      help="Run the data stages only (extract .. tokenize).")
  args = parser.parse_args(argv)
  try:
    cfg = run_config(args)
    selected = config_lib.select(cfg, until=DATA_STAGES_END if args.only_data else None)
    start = time.time()
    runner.run(cfg, selected, stream=sys.stdout)
  except (config_lib.ConfigError, runner.WorkflowError) as e:
    raise SystemExit(f"error: {e}") from None
  if args.only_data:
    return {}
  summary = summarize(cfg.run_dir)
  print_summary(summary)
  print(f"\ntotal time: {time.time() - start:.0f}s; everything is under {cfg.run_dir}; "
        f"report: {os.path.join(cfg.run_dir, 'report', 'report.html')}")
  with open(os.path.join(cfg.run_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  return summary


if __name__ == "__main__":
  main()
