"""Runs the whole gemma-forge workflow on the bundled sample and prints what each stage did.

    python -m demo --work_dir=out/demo

Each stage runs as its own ``python -m ...`` process, exactly as a user would run it (DirectRunner
for the Beam jobs), so the demo also proves that every stage works on its own. The stages hand each
other only files, following docs/architecture.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
SAMPLE_WARCS = os.path.join(REPO_ROOT, "data", "sample", "*.warc.gz")

# Stage name -> the directory holding its stats.json, in workflow order.
STAT_DIRS = {"extract": "extract", "quality": "quality", "pii": "pii", "toxicity": "toxicity",
             "dedupe": "dedupe", "train_tokenizer": "tokenizer", "tokenize": "data"}


def _run(cmd: list[str], log_path: str) -> None:
  """Runs one stage as a subprocess, logging to a file; fails loudly with the log's tail."""
  print(f"$ {shlex.join(cmd)}", flush=True)
  start = time.time()
  with open(log_path, "w") as log:
    proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
  if proc.returncode != 0:
    with open(log_path) as log:
      tail = log.read()[-4000:]
    raise SystemExit(f"stage failed (exit {proc.returncode}), log {log_path}:\n{tail}")
  print(f"  done in {time.time() - start:.0f}s", flush=True)


def stage_commands(work_dir: str, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
  """The command line of every stage, in order."""
  py = sys.executable
  d = lambda name: os.path.join(work_dir, name)  # noqa: E731
  data_dir = d("data")
  model_dir = d("model")
  gin_file = os.path.join("gin", "small_cpu.gin")
  gin_common = [
      f"--gin_file={gin_file}",
      f"--gin.MODEL_DIR='{model_dir}'",
      f"--gin.DATA_DIR='{data_dir}'",
  ]
  return [
      ("extract", [py, "-m", "pipelines.extract", f"--input={args.warcs}",
                   f"--output_dir={d('extract')}", "--languages=en"]),
      ("quality", [py, "-m", "pipelines.quality", f"--input={d('extract')}",
                   f"--output_dir={d('quality')}"]),
      ("pii", [py, "-m", "pipelines.pii", f"--input={d('quality')}", f"--output_dir={d('pii')}"]),
      ("toxicity", [py, "-m", "pipelines.toxicity", f"--input={d('pii')}",
                    f"--output_dir={d('toxicity')}"]),
      ("dedupe", [py, "-m", "pipelines.dedupe", f"--input={d('toxicity')}",
                  f"--output_dir={d('dedupe')}"]),
      ("train_tokenizer", [py, "-m", "pipelines.train_tokenizer", f"--input={d('dedupe')}",
                           f"--output_dir={d('tokenizer')}", f"--vocab_size={args.vocab_size}"]),
      ("tokenize", [py, "-m", "pipelines.tokenize", f"--input={d('dedupe')}",
                    f"--tokenizer={d('tokenizer')}/tokenizer.model", f"--output_dir={data_dir}"]),
      ("train", [py, "-m", "model.train", *gin_common, f"--gin.TRAIN_STEPS={args.train_steps}"]),
      ("eval", [py, "-m", "model.eval", *gin_common, "--gin_file=gin/runs/eval.gin",
                f"--gin.EVAL_OUTPUT='{model_dir}/eval_results.json'"]),
      ("infer", [py, "-m", "model.infer", *gin_common, "--gin_file=gin/runs/infer.gin",
                 f"--gin.INFER_OUTPUT='{model_dir}/samples.jsonl'", f"--prompt={args.prompt}"]),
  ]


def summarize(work_dir: str) -> dict:
  """Collects the numbers the demo promises: per-stage accounting, tokens, loss, perplexity."""
  summary: dict = {"stages": {}}
  for stage, directory in STAT_DIRS.items():
    with open(os.path.join(work_dir, directory, "stats.json")) as f:
      summary["stages"][stage] = json.load(f)
  with open(os.path.join(work_dir, "data", "sources.json")) as f:
    summary["sources"] = json.load(f)
  summary["train"] = _read_train_metrics(os.path.join(work_dir, "model"))
  with open(os.path.join(work_dir, "model", "eval_results.json")) as f:
    summary["eval"] = json.load(f)
  with open(os.path.join(work_dir, "model", "samples.jsonl")) as f:
    sample = json.loads(f.readline())
  summary["sample"] = {"prompt": sample["prompt"], "completion": sample["completion"]}
  return summary


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


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--work_dir", default="out/demo")
  parser.add_argument("--warcs", default=SAMPLE_WARCS, help="WARC files to start from.")
  parser.add_argument("--vocab_size", type=int, default=4096)
  parser.add_argument("--train_steps", type=int, default=300)
  parser.add_argument("--prompt", default="The Python standard library")
  parser.add_argument("--resume", action="store_true",
                      help="Continue training from the work dir's last checkpoint.")
  parser.add_argument("--only_data", action="store_true",
                      help="Run the data stages only (extract .. tokenize).")
  args = parser.parse_args(argv)
  work_dir = os.path.abspath(args.work_dir)
  os.makedirs(os.path.join(work_dir, "logs"), exist_ok=True)
  if not glob.glob(args.warcs):
    raise SystemExit(f"No WARC files match {args.warcs}.")
  start = time.time()
  for name, cmd in stage_commands(work_dir, args):
    if args.only_data and name in ("train", "eval", "infer"):
      continue
    if name == "train" and not args.resume:
      # The trainer resumes from MODEL_DIR's latest checkpoint; the demo means a fresh run.
      shutil.rmtree(os.path.join(work_dir, "model"), ignore_errors=True)
    _run(cmd, os.path.join(work_dir, "logs", f"{name}.log"))
  if args.only_data:
    return {}
  summary = summarize(work_dir)
  print_summary(summary)
  print(f"\ntotal time: {time.time() - start:.0f}s; everything is under {work_dir}")
  with open(os.path.join(work_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  return summary


if __name__ == "__main__":
  main()
