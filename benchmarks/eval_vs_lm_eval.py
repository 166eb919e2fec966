r"""Examples/s of our benchmark evaluation against lm-evaluation-harness's HF backend, CPU, paired.

  .venv/bin/python -m benchmarks.eval_vs_lm_eval [--formats multiple_choice generation]
      [--examples=48] [--max_gen_toks=16] [--batch_size=8] [--pairs=7] [--warmup=1] [--threads=1]

One model for both sides: the tiny Gemma of the conformance test (tests/eval_fixtures.py), trained
a few steps on the bundled benchmark samples so that greedy outputs are not ties between random
logits, exported to HF format (`model.hf_convert.export_hf` + `model.evaluate.export_hf_tokenizer`).
One task file per format: the bundled ARC-Easy sample (multiple choice, 4 choices, 0-shot) and
TriviaQA sample (generation until "\n", ".", ",", 0-shot), records repeated to `--examples` and
numbered, so that no two requests are the same (lm-eval's HF backend scores requests whose context +
continuation agree but for the last token in one forward pass, `logits_cache`; repeats would be free).

One run evaluates the whole file, from records to metrics:

  ours      tasks.benchmarks.registry.register_benchmark_tasks (prompts, tokenization, the seqio
            task) + model.evaluate.evaluate_task (jit-compiled scoring / KV-cache greedy decoding).
  lm_eval   lm_eval.evaluator.evaluate on the task loaded once (prompts, tokenization, HFLM
            log-likelihoods / generate, filters, metrics), torch float32, same batch size.

Each format is its own paired benchmark (`eval_<format>`, result under benchmarks/results/). Both
sides must compute the same results, checked on every run and recorded in the result:
identical choices and log-likelihoods within 1e-4 (multiple choice), identical greedy outputs
(generation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from benchmarks import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LENGTH = 512
ATOL = 1e-4
# format: (our benchmark, its bundled file, the lm-eval config in eval_fixtures: lm-eval's template for it)
FORMATS = {"multiple_choice": ("arc_easy", "arc_easy/test.jsonl", "LM_EVAL_ARC_EASY"),
           "generation": ("triviaqa", "triviaqa/validation.jsonl", "LM_EVAL_TRIVIAQA")}


def _fixtures():
  sys.path.insert(0, os.path.join(REPO, "tests"))
  import eval_fixtures  # The tokenizer and tiny-model helpers the conformance test uses.
  return eval_fixtures


def prepare(workdir: str, examples: int, max_gen_toks: int, train_steps: int) -> None:
  """Tokenizer, trained tiny model exported to HF, task files and lm-eval YAMLs under workdir."""
  import yaml
  ef = _fixtures()
  ef.export_trained_tiny(workdir, train_steps, MAX_LENGTH)
  for fmt, (bench, relative, template) in FORMATS.items():
    with open(os.path.join(ef.BENCH_DIR, relative)) as f:
      records = [json.loads(line) for line in f if line.strip()]
    path = os.path.join(workdir, f"{bench}.jsonl")
    with open(path, "w") as f:
      for i in range(examples):
        record = dict(records[i % len(records)])
        record["question"] = f"({i + 1}) {record['question']}"
        f.write(json.dumps(record) + "\n")
    config = ef.lm_eval_config(getattr(ef, template), max_gen_toks, task=f"bench_{bench}", dataset_path="json",
                               dataset_kwargs={"data_files": {"test": path}}, test_split="test", num_fewshot=0)
    with open(os.path.join(workdir, f"bench_{bench}.yaml"), "w") as f:
      yaml.safe_dump(config, f)


def ours_side(workdir: str, fmt: str, batch_size: int, max_gen_toks: int):
  """Worker factory: run() registers the task from its file and evaluates it with our decoder."""
  import dataclasses
  import seqio
  from model import evaluate
  from tasks.benchmarks import registry
  bench = FORMATS[fmt][0]
  registry.BENCHMARKS[bench] = dataclasses.replace(registry.BENCHMARKS[bench], max_gen_toks=max_gen_toks)
  vocab = seqio.SentencePieceVocabulary(os.path.join(workdir, "tokenizer.model"))
  model, params, _ = evaluate.load_checkpoint(os.path.join(workdir, "hf"))
  lm = evaluate.LanguageModel(model, params, vocab, MAX_LENGTH, batch_size=batch_size)
  files = {bench: os.path.join(workdir, f"{bench}.jsonl")}

  def run():
    info = registry.register_benchmark_tasks(vocab, registry.DEFAULT_DATA_ROOT, [bench], {bench: 0}, files=files)
    (task, entry), = info.items()
    result = evaluate.evaluate_task(lm, task, entry, log=lambda _: None)
    if fmt == "generation":
      return {"outputs": [o[0] for o in result["outputs"]]}
    lls = [[] for _ in entry["records"]]
    for request, ll in zip(entry["requests"], result["log_likelihoods"]):
      lls[request.example].append(ll)
    return {"log_likelihoods": lls, **{m: result["per_example"][m] for m in ("acc", "acc_norm")}}

  return run, {"benchmark": bench, "batch_size": batch_size}


def lm_eval_side(workdir: str, fmt: str, batch_size: int, max_gen_toks: int):
  """Worker factory: run() is lm_eval.evaluator.evaluate of the task (loaded once) with HFLM on CPU."""
  del max_gen_toks  # In the task's YAML.
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  from lm_eval import evaluator
  from lm_eval.models.huggingface import HFLM
  from lm_eval.tasks import TaskManager
  task = f"bench_{FORMATS[fmt][0]}"
  hf_dir = os.path.join(workdir, "hf")
  lm = HFLM(pretrained=hf_dir, tokenizer=hf_dir, device="cpu", dtype="float32", batch_size=batch_size,
            max_length=MAX_LENGTH)
  loaded = TaskManager(include_path=workdir, include_defaults=False).load([task])

  def run():
    out = evaluator.evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=True, verbosity="ERROR")
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    if fmt == "generation":
      return {"outputs": [s["resps"][0][0] for s in samples]}
    return {"log_likelihoods": [[float(r[0]) for r in s["filtered_resps"]] for s in samples],
            **{m: [s[m] for s in samples] for m in ("acc", "acc_norm")}}

  import lm_eval
  return run, {"task": task, "batch_size": batch_size, "lm_eval": lm_eval.__version__}


def check_agreement(result: dict, fmt: str) -> dict:
  """Both sides computed the same thing on every run; returns what is recorded in the result."""
  ours, theirs = (result["sides"][name]["warmup_values"] + result["sides"][name]["values"] for name in ("ours", "lm_eval"))
  agreement = {"runs_compared": len(ours)}
  if fmt == "generation":
    same = [a["outputs"] == b["outputs"] for a, b in zip(ours, theirs)]
    agreement.update(identical_outputs=all(same), examples=len(ours[0]["outputs"]),
                     nonempty_outputs=sum(bool(o) for o in ours[0]["outputs"]))
  else:
    import numpy as np
    diffs = [max(abs(x - y) for xs, ys in zip(a["log_likelihoods"], b["log_likelihoods"]) for x, y in zip(xs, ys))
             for a, b in zip(ours, theirs)]
    choices = lambda v: [int(np.argmax(lls)) for lls in v["log_likelihoods"]]
    scores = lambda v: (v["acc"], v["acc_norm"])
    same = [choices(a) == choices(b) and scores(a) == scores(b) and d <= ATOL for a, b, d in zip(ours, theirs, diffs)]
    agreement.update(identical_choices=all(choices(a) == choices(b) for a, b in zip(ours, theirs)),
                     identical_acc_and_acc_norm=all(scores(a) == scores(b) for a, b in zip(ours, theirs)),
                     max_abs_log_likelihood_diff=max(diffs), tolerance=ATOL, examples=len(ours[0]["acc"]))
  if not all(same):
    raise SystemExit(f"eval_{fmt}: ours and lm-eval computed different results ({agreement}); timing them "
                     "would be meaningless")
  for name in ("ours", "lm_eval"):  # Every run of a side gave the same (checked above); keep one.
    side = result["sides"][name]
    side["values"], side["warmup_values"] = side["values"][-1:], []
  return agreement


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
  parser.add_argument("--examples", type=int, default=48, help="examples in each task file (one run)")
  parser.add_argument("--max_gen_toks", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--train_steps", type=int, default=60, help="as the conformance test (at 30, 2 of 48 "
                      "greedy TriviaQA outputs flip on a near-tie between JAX and torch float32 logits)")
  harness.add_flags(parser)
  args = parser.parse_args(argv)
  from benchmarks import _common  # Here, not at the top: it imports JAX, which the lm-eval worker must not.
  _common.positive(args, "examples", "max_gen_toks", "batch_size", "train_steps")
  if args.result not in (None, "none") and len(args.formats) > 1:
    raise SystemExit("--result names one file: give it with a single --formats")
  with tempfile.TemporaryDirectory(prefix="eval-bench-") as workdir:
    # In a child process: the workers inherit this process's peak RSS (Linux ru_maxrss), and
    # training the model would set it; this process stays small.
    import multiprocessing
    from benchmarks import eval_vs_lm_eval
    child = multiprocessing.get_context("spawn").Process(
        target=eval_vs_lm_eval.prepare, args=(workdir, args.examples, args.max_gen_toks, args.train_steps))
    child.start()
    child.join()
    if child.exitcode:
      raise SystemExit(f"preparing the model and task files failed (exit code {child.exitcode}); see above")
    return {fmt: _run_format(fmt, workdir, args) for fmt in args.formats}


def _run_format(fmt: str, workdir: str, args) -> dict:
  """One paired benchmark, eval_<fmt>: run, check agreement, print, write."""
  kwargs = {"workdir": workdir, "fmt": fmt, "batch_size": args.batch_size, "max_gen_toks": args.max_gen_toks}
  sides = [harness.Side("ours", "benchmarks.eval_vs_lm_eval:ours_side", kwargs),
           harness.Side("lm_eval", "benchmarks.eval_vs_lm_eval:lm_eval_side", kwargs)]

  def check(result):
    result["agreement"] = check_agreement(result, fmt)
    print(f"eval_{fmt} agreement: {json.dumps(result['agreement'], sort_keys=True)}", flush=True)

  return harness.run_from_flags(f"eval_{fmt}", sides, args, work_per_run=args.examples, unit="examples",
                                settings={**vars(args), "format": fmt, "benchmark": FORMATS[fmt][0]},
                                check=check)


if __name__ == "__main__":
  main()
