r"""Academic benchmarks the way the Gemma paper runs them: one command, one table.

  python -m model.evaluate --gin_file=gin/runs/benchmarks.gin \
      --gin.CHECKPOINT="'out/model/checkpoints/300'" --gin.TOKENIZER="'out/demo/data/tokenizer.model'" \
      --gin.OUTPUT_DIR="'out/eval'"

CHECKPOINT is an orbax step directory written by ``model.train`` (the model comes from the gin
MODEL: add ``--gin_file=gin/models/small.gin`` after the run file) or a Hugging Face Gemma directory
(``config.json`` + ``*.safetensors``, e.g. one written by ``model.hf_convert.export_hf``).

Every benchmark of ``tasks.benchmarks.BENCHMARKS`` is read from local files (BENCHMARK_DATA, in
each public release's layout), turned into lm-evaluation-harness requests (same templates,
few-shot layout and tokenization as lm-eval's HF backend) and answered by the model: multiple
choice by log-likelihood, generation greedily until the stop sequences (k samples at the
benchmark's temperature for maj@k / pass@k), code in ``model.code_sandbox``. Writes
``results.json``, ``results.md`` and ``results.html`` in OUTPUT_DIR: per benchmark the setting,
our score with a bootstrap 95% confidence interval, and the paper's Gemma 2B / 7B figures
(arXiv:2403.08295, Table 6); a group (AGIEval, BBH) gets a row of its own, the mean over its
sub-tasks, when all of them ran.
"""

from __future__ import annotations

import collections
import html
import json
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from model import gin_utils

if __name__ == "__main__":
  # Run the importable `model.evaluate`, not this `__main__` copy: gin must see each configurable once.
  from model import evaluate as _evaluate_module
  gin_utils.run(_evaluate_module.main)


class CheckpointTokenizerMismatch(ValueError):
  """The tokenizer does not belong to the checkpoint (ids the model cannot embed, other specials)."""


# ---------------------------------------------------------------- model and tokenizer


def load_checkpoint(checkpoint: str, model=None):
  """(DecoderOnlyModel, params, hf_config or None) from an HF Gemma dir or an orbax step dir."""
  from model.models import DecoderOnlyModel
  if os.path.exists(os.path.join(checkpoint, "config.json")):
    from model import hf_convert
    config, params = hf_convert.import_hf(checkpoint, dtype="float32")
    with open(os.path.join(checkpoint, "config.json")) as f:
      hf_config = json.load(f)
    return DecoderOnlyModel(config), jax.tree.map(jnp.asarray, params), hf_config
  if model is None:
    raise ValueError(f"{checkpoint} has no config.json (not an HF directory): an orbax checkpoint "
                     "needs MODEL from a gin model file, e.g. --gin_file=gin/models/small.gin")
  from model import checkpoints
  step_dir = checkpoints.resolve_checkpoint_path(checkpoint, None)
  params = checkpoints.load_params(step_dir, model.abstract_params())
  return model, params, None


def check_tokenizer(config, vocab, tokenizer_path: str, checkpoint: str, hf_config=None) -> None:
  """Refuses a tokenizer whose ids the checkpoint cannot embed or whose special ids differ."""
  if vocab.vocab_size > config.vocab_size:
    raise CheckpointTokenizerMismatch(
        f"tokenizer {tokenizer_path} has {vocab.vocab_size} pieces but checkpoint {checkpoint} has "
        f"vocab_size {config.vocab_size} (field vocab_size): they do not belong together")
  from tasks.special_tokens import special_tokens
  ids = special_tokens(vocab)
  for field, name in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "pad")):
    if hf_config is not None and field in hf_config and hf_config[field] is not None:
      want = getattr(ids, name)
      if int(hf_config[field]) != want:
        raise CheckpointTokenizerMismatch(
            f"{os.path.join(checkpoint, 'config.json')} field {field} is {hf_config[field]} but "
            f"tokenizer {tokenizer_path} has {name} = {want}")


def export_hf_tokenizer(tokenizer_path: str, out_dir: str) -> None:
  """Writes ``tokenizer.model`` + ``tokenizer_config.json`` so that transformers'
  ``AutoTokenizer`` tokenizes exactly as SentencePiece does (BOS added, no EOS) and decodes the
  user-defined pieces (turn markers, whitespace runs) as text: only pad/eos/bos/unk are special."""
  import shutil
  from sentencepiece import sentencepiece_model_pb2
  proto = sentencepiece_model_pb2.ModelProto()
  with open(tokenizer_path, "rb") as f:
    proto.ParseFromString(f.read())
  kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
  added = {str(i): {"content": p.piece, "special": p.type != kinds.USER_DEFINED, "normalized": False,
                    "lstrip": False, "rstrip": False, "single_word": False}
           for i, p in enumerate(proto.pieces) if p.type in (kinds.CONTROL, kinds.UNKNOWN, kinds.USER_DEFINED)}
  os.makedirs(out_dir, exist_ok=True)
  shutil.copyfile(tokenizer_path, os.path.join(out_dir, "tokenizer.model"))
  config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
            "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
            "mask_token": None, "added_tokens_decoder": added, "model_max_length": 1 << 30}
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)


class LanguageModel:
  """Answers lm-eval requests with our decoder: log-likelihoods and generation."""

  def __init__(self, model, params, vocab, max_length: Optional[int] = None, batch_size: int = 8,
               bucket: int = 32, progress_every_s: float = 30.0):
    self.model, self.params, self.vocab = model, params, vocab
    self.progress = _Progress(progress_every_s)
    self.max_length = int(max_length or model.config.max_seq_len)
    self.batch_size, self.bucket = batch_size, bucket
    from tasks.special_tokens import special_tokens
    self.eos = special_tokens(vocab).eos
    self._score = jax.jit(self._score_impl)
    # decoding.decoding_params(params), made at the first generation: on the CPU a second copy of
    # the weights, laid out for decoding; scoring keeps the model's layout.
    self._decoding_params = None

  def _score_impl(self, params, inputs, targets, weights):
    stats = self.model.token_statistics(params, {"decoder_input_tokens": inputs,
                                                 "decoder_target_tokens": targets})
    log_probs = stats["target_logit"] - stats["log_z"]
    return jnp.sum(log_probs * weights, -1), jnp.all((stats["correct"] > 0) | (weights == 0), -1)

  def loglikelihood(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
                    ) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), continuation is the greedy one), lm-eval's semantics:
    the last ``max_length + 1`` tokens of context + continuation are kept."""
    rows = []
    for context, continuation in pairs:
      if not continuation:
        raise ValueError("a log-likelihood request has an empty continuation")
      tokens = (list(context) + list(continuation))[-(self.max_length + 1):]
      rows.append((tokens[:-1], tokens[1:], min(len(continuation), len(tokens) - 1)))
    out: list[tuple[float, bool]] = [None] * len(rows)  # type: ignore[list-item]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    self.progress.start("log-likelihood requests", len(rows))
    for start in range(0, len(order), self.batch_size):
      self.progress.update(start)
      chunk = order[start:start + self.batch_size]
      length = _round_up(max(len(rows[i][0]) for i in chunk), self.bucket)
      inputs = np.zeros((self.batch_size, length), np.int32)
      targets = np.zeros_like(inputs)
      weights = np.zeros((self.batch_size, length), np.float32)
      for j, i in enumerate(chunk):
        inp, tgt, n = rows[i]
        inputs[j, :len(inp)], targets[j, :len(tgt)] = inp, tgt
        weights[j, len(tgt) - n:len(tgt)] = 1.0
      lls, greedy = jax.device_get(self._score(self.params, inputs, targets, weights))
      for j, i in enumerate(chunk):
        out[i] = (float(lls[j]), bool(greedy[j]))
    return out

  def generate(self, contexts: Sequence[Sequence[int]], until: Sequence[str], max_gen_toks: int,
               samples: int = 1, seed: int = 0, temperature: float = 0.8) -> list[list[str]]:
    """For each context (token ids, BOS first), ``samples`` outputs (greedy when 1), cut at the
    first stop sequence. As lm-eval, a context keeps its last ``max_length - max_gen_toks`` tokens."""
    from model import decoding
    from tasks.benchmarks.generation import cut_at_stop
    max_context = self.max_length - max_gen_toks
    if max_context <= 0:
      raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for a prompt in {self.max_length} tokens")
    sampler = decoding.Sampler("greedy" if samples == 1 else "temperature",
                               temperature=1.0 if samples == 1 else temperature)
    if self._decoding_params is None:
      self._decoding_params = decoding.decoding_params(self.params)
    outputs = [[] for _ in contexts]
    self.progress.start("generations", len(contexts) * samples)
    for sample in range(samples):
      for start in range(0, len(contexts), self.batch_size):
        self.progress.update(sample * len(contexts) + start)
        chunk = [list(c)[-max_context:] for c in contexts[start:start + self.batch_size]]
        real = len(chunk)
        chunk += [chunk[-1]] * (self.batch_size - real)
        width = min(_round_up(max(len(c) for c in chunk), 2 * self.bucket), max_context)
        prompts = np.zeros((self.batch_size, width), np.int32)
        for j, c in enumerate(chunk):
          prompts[j, width - len(c):] = c
        tokens, _ = decoding.generate(self.model.config, self._decoding_params, jnp.asarray(prompts),
                                      jax.random.PRNGKey(seed * 1000 + sample),
                                      max_decode_len=max_gen_toks, sampler=sampler,
                                      stop_tokens=(self.eos,))
        for j, row in enumerate(np.asarray(jax.device_get(tokens))[:real]):
          ids = []
          for t in row.tolist():
            if t in (self.eos, 0):
              break
            ids.append(t)
          outputs[start + j].append(cut_at_stop(self.vocab.decode(ids), until))
    return outputs


class _Progress:
  """Prints 'done/total, rate, ETA' at most every ``every_s`` seconds (long benchmarks take hours)."""

  def __init__(self, every_s: float):
    self.every_s = every_s

  def start(self, what: str, total: int) -> None:
    self.what, self.total, self.t0, self.last = what, total, time.monotonic(), time.monotonic()

  def update(self, done: int) -> None:
    now = time.monotonic()
    if done and now - self.last >= self.every_s:
      rate = done / (now - self.t0)
      print(f"  {done}/{self.total} {self.what}, {rate:.1f}/s, ETA {(self.total - done) / rate:.0f}s", flush=True)
      self.last = now


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


# ---------------------------------------------------------------- one benchmark


def bootstrap_ci(values: Sequence[float], samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean (seeded: the same numbers on every run)."""
  return bootstrap_ci_of_means([values], samples, seed, level)


def bootstrap_ci_of_means(groups: Sequence[Sequence[float]], samples: int = 1000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float]:
  """Interval of the mean of per-group means (a group score over its sub-tasks), each group's
  examples resampled on their own (stratified percentile bootstrap, seeded)."""
  groups = [np.asarray(v, np.float64) for v in groups]
  if not groups or any(len(v) == 0 for v in groups):
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  means = np.mean([v[rng.integers(0, len(v), size=(samples, len(v)))].mean(axis=1) for v in groups],
                  axis=0)
  tail = (1 - level) / 2 * 100
  return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def evaluate_task(lm: LanguageModel, task_name: str, info: Mapping[str, Any], sandbox_config=None,
                  seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Scores one registered ``gf_bench_*`` task; returns metrics, per-example scores and outputs."""
  import seqio
  from tasks.benchmarks import generation, multiple_choice as mc
  from tasks.benchmarks.registry import CODE, MULTIPLE_CHOICE
  bench = info["benchmark"]
  task = seqio.get_mixture_or_task(task_name)
  rows = list(task.source.get_dataset(split="test", shuffle=False).as_numpy_iterator())
  targets = [task.postprocess_fn(None, example=r, is_target=True) for r in rows]
  start = time.monotonic()
  result: dict[str, Any] = {"num_requests": len(rows)}
  if bench.format == MULTIPLE_CHOICE:
    scored = lm.loglikelihood([(r["inputs"].tolist(), r["targets"].tolist()) for r in rows])
    lls = [s for s, _ in scored]
    per = mc.per_example_scores(targets, lls)
    metrics = task.score_metric_fns[0](targets, lls)
    result["log_likelihoods"] = lls
    result["is_greedy"] = [g for _, g in scored]
  else:
    outputs = lm.generate([r["inputs"].tolist() for r in rows], bench.until, bench.max_gen_toks,
                          samples=bench.samples, seed=seed, temperature=bench.temperature)
    result["outputs"] = outputs
    if bench.format == CODE:
      per, result["sandbox"] = _run_code(bench, info["records"], outputs, sandbox_config)
      metrics = {bench.metric: float(np.mean(per[bench.metric]))}
    else:
      per = generation.per_example_scores(targets, outputs)
      metrics = task.predict_metric_fns[0](targets, outputs)
      result["extracted"] = {name: [generation.majority([generation.EXTRACTORS[name](o) for o in outs])
                                    for outs in outputs] for name in bench.extractors}
  seconds = time.monotonic() - start
  values = per[bench.metric]
  low, high = bootstrap_ci(values, seed=seed)
  log(f"{bench.name}: {len(values)} examples, {len(rows)} requests in {seconds:.1f}s "
      f"({len(rows) / max(seconds, 1e-9):.1f}/s), {bench.metric} {np.mean(values):.4f}")
  result.update(metrics=metrics, per_example=per, score=float(np.mean(values)), ci95=[low, high],
                num_examples=len(values), seconds=seconds)
  return result


def _run_code(bench, records, outputs, sandbox_config):
  from model import code_sandbox
  from tasks.benchmarks import code as code_lib
  statuses = collections.Counter()
  correct = []
  for doc, completions in zip(records, outputs):
    results = [code_sandbox.run_program(bench.program(doc, c), sandbox_config or code_sandbox.SandboxConfig())
               for c in completions]
    statuses.update(r.status for r in results)
    correct.append(sum(r.passed for r in results))
  k = int(bench.metric.split("@")[1])
  per = code_lib.pass_at_k([len(o) for o in outputs], correct, k).tolist()
  return {bench.metric: per}, dict(sorted(statuses.items()))


# ---------------------------------------------------------------- the table


def setting_text(bench, num_shots: int, chat: bool, multiturn: bool = False) -> str:
  parts = [f"{num_shots}-shot", bench.metric]
  if bench.partial_scoring:
    parts.append("partial scoring")
  if bench.samples > 1:
    parts.append(f"k={bench.samples}, temperature {bench.temperature:g}")
  parts.append("chat template" if chat else "plain template")
  if chat and num_shots:  # 0-shot, both layouts are the same prompt.
    parts.append("exemplars as turns" if multiturn else "exemplars in one turn")
  return ", ".join(parts)


def group_rows(rows: Sequence[Mapping[str, Any]], per_example: Mapping[str, Sequence[float]],
               seed: int = 0) -> list[dict[str, Any]]:
  """A row per group (AGIEval, BBH) all of whose sub-tasks ran: the unweighted mean of their
  scores, as the paper and lm-eval report them, with a stratified bootstrap interval."""
  from tasks.benchmarks import registry
  by_name = {r["benchmark"]: r for r in rows}
  out = []
  for group in registry.GROUPS.values():
    if not all(name in by_name for name in group.subtasks):
      continue
    subtasks = [by_name[name] for name in group.subtasks]
    low, high = bootstrap_ci_of_means([per_example[name] for name in group.subtasks], seed=seed)
    fewest, most = min(r["num_shots"] for r in subtasks), max(r["num_shots"] for r in subtasks)
    shots = f"{fewest}-shot" if fewest == most else f"{fewest}-{most}-shot"
    score = float(np.mean([r["score"] for r in subtasks]))
    out.append({"benchmark": group.name, "task": None, "format": "group",
                "setting": f"{shots}, {group.metric}, mean of {len(subtasks)} sub-tasks",
                "metric": group.metric, "num_shots": most, "score": score, "ci95": [low, high],
                "num_examples": sum(r["num_examples"] for r in subtasks),
                "metrics": {group.metric: score},
                "subtasks": list(group.subtasks), "paper_2b": group.paper[0],
                "paper_7b": group.paper[1], "paper_setting": group.paper_setting,
                "seconds": sum(r["seconds"] for r in subtasks)})
  return out


def write_tables(rows: Sequence[Mapping[str, Any]], output_dir: str, header: Mapping[str, Any]) -> None:
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump({**header, "benchmarks": list(rows)}, f, indent=2, sort_keys=True)
  columns = ["benchmark", "setting", "ours (95% CI)", "n", "paper 2B", "paper 7B", "paper setting"]

  def cells(r):
    fmt = lambda v: "–" if v is None else f"{v:.1f}"
    return [r["benchmark"], r["setting"],
            f"{100 * r['score']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]",
            str(r["num_examples"]), fmt(r["paper_2b"]), fmt(r["paper_7b"]), r["paper_setting"]]

  note = ("Paper figures: Gemma Team, arXiv:2403.08295, Table 6 (released weights, full test sets). "
          f"Ours: checkpoint {header['checkpoint']}, data {header['data_root']}.")
  md = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  md += ["| " + " | ".join(cells(r)) + " |" for r in rows]
  with open(os.path.join(output_dir, "results.md"), "w") as f:
    f.write("\n".join(md) + "\n\n" + note + "\n")
  body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(r)) + "</tr>\n" for r in rows)
  with open(os.path.join(output_dir, "results.html"), "w") as f:
    f.write("<!doctype html><meta charset=utf-8><title>gemma-forge benchmarks</title>\n<table border=1>"
            "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>\n" + body +
            f"</table>\n<p>{html.escape(note)}</p>\n")


def chat_prompt(messages: Sequence[Mapping[str, str]]) -> str:
  """A benchmark prompt's messages (a leading system message folded into the first user turn) in
  Gemma's dialogue format, ending with the model turn's header (tasks.chat_template, as gemma-it's
  template renders it; BOS is added at tokenization)."""
  from tasks import chat_template as chat_lib
  return chat_lib.render(chat_lib.normalize(list(messages)), add_generation_prompt=True, bos="")


@gin.configurable
def run_benchmarks(*, checkpoint: str, tokenizer: str, output_dir: str, model=None,
                   benchmarks: Optional[Sequence[str]] = None, data_root: Optional[str] = None,
                   files: Optional[Mapping[str, str]] = None, num_shots: Optional[Mapping[str, int]] = None,
                   limit: Optional[int] = None, seed: int = 0, sampler: str = "seeded",
                   chat: bool = False, batch_size: int = 8, max_length: Optional[int] = None,
                   sandbox_timeout_s: float = 10.0, samples: Optional[Mapping[str, int]] = None,
                   temperature: Optional[Mapping[str, float]] = None,
                   fewshot_as_multiturn: Optional[bool] = None) -> list[dict[str, Any]]:
  """Evaluates ``checkpoint`` on ``benchmarks`` (names or groups; by default every benchmark but
  the maj@k variants); writes the tables; returns rows (sub-tasks, then the groups).

  ``chat``: prompts in Gemma's dialogue format; ``fewshot_as_multiturn`` as lm-eval's (None: True
  with ``chat``): each exemplar a user and a model turn, else all in one user turn.
  """
  import seqio
  from model import code_sandbox
  from tasks.benchmarks import registry
  data_root = data_root or registry.DEFAULT_DATA_ROOT
  if not os.path.exists(tokenizer):
    raise FileNotFoundError(f"tokenizer {tokenizer} does not exist")
  vocab = seqio.SentencePieceVocabulary(tokenizer)
  multiturn = registry.resolve_multiturn(chat, fewshot_as_multiturn)
  tasks_info = registry.register_benchmark_tasks(
      vocab, data_root, benchmarks, num_shots, seed, sampler, files, limit, chat,
      chat_prompt if chat else None, samples, temperature, multiturn)
  lm_model, params, hf_config = load_checkpoint(checkpoint, model)
  check_tokenizer(lm_model.config, vocab, tokenizer, checkpoint, hf_config)
  lm = LanguageModel(lm_model, params, vocab, max_length, batch_size)
  sandbox = code_sandbox.SandboxConfig(timeout_s=sandbox_timeout_s)
  rows, per_example = [], {}
  for number, (task_name, info) in enumerate(tasks_info.items(), 1):
    bench = info["benchmark"]
    print(f"[{number}/{len(tasks_info)}] {bench.name}: {len(info['records'])} examples", flush=True)
    result = evaluate_task(lm, task_name, info, sandbox, seed)
    per_example[bench.name] = result["per_example"][bench.metric]
    rows.append({"benchmark": bench.name, "task": task_name, "format": bench.format,
                 "setting": setting_text(bench, info["num_shots"], chat, multiturn), "metric": bench.metric,
                 "num_shots": info["num_shots"], "score": result["score"], "ci95": result["ci95"],
                 "num_examples": result["num_examples"], "metrics": result["metrics"],
                 "paper_2b": bench.paper[0], "paper_7b": bench.paper[1],
                 "paper_setting": bench.paper_setting, "seconds": result["seconds"],
                 **({"sandbox": result["sandbox"]} if "sandbox" in result else {})})
  rows += group_rows(rows, per_example, seed)
  header = {"checkpoint": checkpoint, "tokenizer": tokenizer, "data_root": data_root, "seed": seed,
            "chat": chat, "fewshot_as_multiturn": multiturn, "limit": limit}
  write_tables(rows, output_dir, header)
  print(f"wrote {output_dir}/results.json, results.md, results.html", flush=True)
  return rows


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  gin_utils.parse_gin_flags()
  run_benchmarks()
