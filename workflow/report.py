"""The run report: one self-contained HTML page of everything a workflow run did.

    python -m workflow.report --run_dir=out/demo --output=out/demo/report/report.html

It is the data report of ``pipelines.report`` (funnel, drop reasons, tokens per source, lengths,
mixture schedule, tokenizer, memorization rates and memorized PII where that stage ran; its
sections are reused, not copied) with the rest of the run around it: the stages with their
timings, status and links to their stats and logs, the training and post-training curves read
from the TensorBoard event files the trainer writes, the evaluation table and the model's sample. Plots are inline SVG and
nothing is fetched, so the page can be attached to a CI run or mailed. A stage that has not run is
said so; it never fails the page.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Any, Sequence

from pipelines import report as data_report
from workflow import runner
from workflow import stages as stages_lib

# Training-stage outputs hold TensorBoard summaries under <dir>/{train,eval}/ (model/train.py).
SUMMARY_SPLITS = ("train", "eval")
# Train tags that are bookkeeping rather than curves worth a plot.
QUIET_TAGS = {"num_tokens", "weight_sum", "tokens_per_second", "data_dropped_examples"}
MAX_CURVES = 6


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
  """``{tag: [(step, value), ...]}`` from the TensorBoard event files of one directory."""
  from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415
  from tensorboard.util import tensor_util  # noqa: PLC0415

  if not glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
    return {}
  acc = event_accumulator.EventAccumulator(
      log_dir, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0})
  acc.Reload()
  curves: dict[str, dict[int, float]] = {}
  tags = acc.Tags()
  for tag in tags.get("tensors", []):
    for event in acc.Tensors(tag):
      value = tensor_util.make_ndarray(event.tensor_proto)
      if value.size == 1:
        curves.setdefault(tag, {})[event.step] = float(value.reshape(()))
  for tag in tags.get("scalars", []):
    for event in acc.Scalars(tag):
      curves.setdefault(tag, {})[event.step] = float(event.value)
  # A resumed run rewrites the steps after its checkpoint: the last value of a step wins.
  return {tag: sorted(points.items()) for tag, points in sorted(curves.items())}


def _plot_curves(name: str, title: str, curves: dict[str, list[tuple[int, float]]]) -> str:
  tags = list(curves)[:MAX_CURVES]
  columns = min(len(tags), 3)
  rows = (len(tags) + columns - 1) // columns

  def draw(fig):
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(tags):]:
      ax.set_visible(False)
    for ax, tag, color in zip(axes.flat, tags, data_report.colors(len(tags))):
      steps, values = zip(*curves[tag])
      ax.plot(steps, values, color=color, marker="." if len(steps) < 30 else None)
      ax.set_title(tag, fontsize=8)
      ax.set_xlabel("step")
    fig.suptitle(title)

  return data_report.svg_plot(draw, name, (8, 0.6 + 2.3 * rows))


def training_section(run_dir: str, states: dict[str, dict]) -> str:
  """Loss and metric curves of every training stage (pretrain, and post-training when run)."""
  parts = []
  training = [s for s in stages_lib.ORDER
              if stages_lib.BY_NAME[s].resumable and s in states]
  if not training:
    return data_report.missing("No training stage has run.")
  for stage in training:
    out = runner.output_path(run_dir, stage)
    parts.append(f"<h3>{data_report.escape(stage)}</h3>")
    found = False
    for split in SUMMARY_SPLITS:
      curves = {t: v for t, v in read_scalars(os.path.join(out, split)).items()
                if t not in QUIET_TAGS}
      if not curves:
        continue
      found = True
      parts.append(_plot_curves(f"{stage}-{split}", f"{stage}: {split}", curves))
      rows = [(tag, len(points), points[0][0], f"{points[0][1]:.4g}", points[-1][0],
               f"{points[-1][1]:.4g}") for tag, points in curves.items()]
      parts.append(data_report.table(
          ("tag", "points", "first step", "first value", "last step", "last value"), rows))
    if not found:
      parts.append(data_report.missing(f"{stage}: no TensorBoard event files under {out}."))
  return "\n".join(parts)


def _flat(record: Any, prefix: str = "") -> list[tuple[str, Any]]:
  """Scalar leaves of a JSON record as ``(dotted.key, value)``."""
  if isinstance(record, dict):
    return [kv for k in sorted(record) for kv in _flat(record[k], f"{prefix}{k}.")]
  if isinstance(record, (int, float, str, bool)) or record is None:
    return [(prefix.rstrip("."), record)]
  return []


def _fmt(value: Any) -> str:
  return f"{value:.4f}" if isinstance(value, float) else str(value)


def eval_section(run_dir: str, states: dict[str, dict]) -> str:
  if "eval" not in states:
    return data_report.missing("eval: stage not run.")
  path = os.path.join(runner.output_path(run_dir, "eval"), "eval_results.json")
  if not os.path.exists(path):
    return data_report.missing(f"eval: {path} is missing.")
  with open(path) as f:
    results = json.load(f)
  tasks = results.get("results", {})
  metrics = sorted({k for r in tasks.values() for k in r})
  rows = [[task] + [_fmt(r.get(m, "")) for m in metrics] for task, r in sorted(tasks.items())]
  parts = [f"<p>Checkpoint step {data_report.escape(results.get('step'))}, split "
           f"<code>{data_report.escape(results.get('split'))}</code>.</p>",
           data_report.table(["task"] + metrics, rows)]
  seqio = results.get("seqio_metrics") or {}
  if seqio:
    parts.append("<h3>seqio metrics</h3>")
    parts.append(data_report.table(("task", "metric", "value"), [
        (task, k, _fmt(v)) for task, values in sorted(seqio.items())
        for k, v in sorted(values.items())]))
  return "\n".join(parts)


def json_stage_section(run_dir: str, states: dict[str, dict], stage: str) -> str:
  """The scalar results of a stage that writes JSON (benchmarks, reward model, RLHF), as a table."""
  if stage not in states:
    return data_report.missing(f"{stage}: stage not in this run.")
  out = runner.output_path(run_dir, stage)
  files = sorted(glob.glob(os.path.join(out, "*.json")))
  if not files:
    return data_report.missing(f"{stage}: no JSON results under {out}.")
  parts = []
  for path in files:
    with open(path) as f:
      record = json.load(f)
    parts.append(f"<h3>{data_report.escape(os.path.basename(path))}</h3>")
    parts.append(data_report.table(("key", "value"), [(k, _fmt(v)) for k, v in _flat(record)]))
    # Lists of results (one per benchmark, say) become one table each, a row per item.
    for key, value in sorted(record.items() if isinstance(record, dict) else []):
      if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = [c for c in dict.fromkeys(k for v in value for k in v)
                   if all(isinstance(v.get(c), (int, float, str, bool, type(None))) for v in value)]
        parts.append(f"<h4>{data_report.escape(key)}</h4>")
        parts.append(data_report.table(columns, [[_fmt(v.get(c, "")) for c in columns]
                                                 for v in value]))
  return "\n".join(parts)


def sample_section(run_dir: str, states: dict[str, dict], stage: str = "sample") -> str:
  """The prompts and completions of a sampling stage (sample; chat_sample, one row per turn)."""
  if stage not in states:
    return data_report.missing(f"{stage}: stage not run.")
  path = os.path.join(runner.output_path(run_dir, stage), "samples.jsonl")
  if not os.path.exists(path):
    return data_report.missing(f"{stage}: {path} is missing.")
  with open(path) as f:
    rows = [(r.get("prompt", ""), r.get("completion", "")) for r in map(json.loads, f)]
  return data_report.table(("prompt", "completion"), rows)


def _link(from_dir: str, path: str, text: str) -> str:
  if not os.path.exists(path):
    return ""
  href = os.path.relpath(path, from_dir)
  return f'<a href="{data_report.escape(href)}">{data_report.escape(text)}</a>'


def stages_section(run_dir: str, states: dict[str, dict], page_dir: str) -> str:
  """Each stage's status, time and why it last ran, with links to its stats and log."""
  rows, timed = [], []
  for stage, state in states.items():
    out = runner.output_path(run_dir, stage)
    elapsed = state.get("elapsed_s")
    if elapsed is not None and stage != "report":
      timed.append((stage, elapsed))
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state["started"]))
    links = " ".join(filter(None, [
        _link(page_dir, os.path.join(out, "stats.json"), "stats.json"),
        _link(page_dir, state.get("log", ""), "log")]))
    p = state.get("progress") or {}
    done = f"{p['done']:,} {p['unit']}" if p.get("done") is not None else ""
    rows.append(f"<tr><td>{data_report.escape(stage)}</td>"
                f"<td>{data_report.escape('running (this page)' if stage == 'report' else state['status'])}</td>"
                f"<td>{data_report.escape(started)}</td>"
                f'<td class="n">{"" if elapsed is None else f"{elapsed:.1f}"}</td>'
                f'<td class="n">{data_report.escape(done)}</td>'
                f"<td>{data_report.escape(state.get('reason', ''))}</td><td>{links}</td></tr>")
  head = "".join(f"<th>{h}</th>" for h in (
      "stage", "status", "started", "seconds", "done", "why it last ran", "files"))
  parts = [f"<table>\n<tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"]
  if timed:
    def draw(fig):
      ax = fig.add_subplot()
      names = [t[0] for t in timed]
      ax.barh(range(len(timed)), [t[1] for t in timed], color=data_report.colors(1)[0])
      ax.set_yticks(range(len(timed)), names)
      ax.invert_yaxis()
      ax.set_xlabel("seconds")
      ax.set_title("Time per stage (last run of each)")
    parts.append(data_report.svg_plot(draw, "timings", (7, 0.8 + 0.3 * len(timed))))
  return "\n".join(parts)


def read_states(run_dir: str) -> dict[str, dict]:
  return {s: st for s in stages_lib.ORDER if (st := runner.read_state(run_dir, s))}


def build(run_dir: str, page_dir: str) -> str:
  states = read_states(run_dir)
  data = data_report.load(run_dir)
  schedule_path = os.path.join(runner.output_path(run_dir, "pretrain"), "mixture_schedule.json")
  schedule = None
  if data.sources is not None and os.path.exists(schedule_path):
    schedule = data_report.read_schedule(schedule_path, data.sources)
  sections = [("stages", "Stages and timings", stages_section(run_dir, states, page_dir))]
  sections += data_report.data_sections(data, schedule)  # Memorization plots included.
  sections += [
      ("training", "Training and post-training curves", training_section(run_dir, states)),
      ("eval", "Evaluation", eval_section(run_dir, states)),
      ("benchmarks", "Benchmark evaluation", json_stage_section(run_dir, states, "benchmarks")),
      ("sample", "Sample", sample_section(run_dir, states)),
      ("reward_model", "Reward model (held-out accuracy vs the length baseline)",
       json_stage_section(run_dir, states, "reward_model")),
      ("rlhf", "RLHF (reward, KL)", json_stage_section(run_dir, states, "rlhf")),
      ("chat_sample", "Chat sample (post-trained model)",
       sample_section(run_dir, states, "chat_sample")),
  ]
  return data_report.page("gemma-forge run report", run_dir, sections)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--run_dir", required=True)
  parser.add_argument("--output", required=True)
  args = parser.parse_args(argv)
  page_dir = os.path.dirname(os.path.abspath(args.output))
  html = build(os.path.abspath(args.run_dir), page_dir)
  os.makedirs(page_dir, exist_ok=True)
  with open(args.output + ".tmp", "w", encoding="utf-8") as f:
    f.write(html)
  os.replace(args.output + ".tmp", args.output)
  print(f"wrote {args.output}", flush=True)
  return args.output


if __name__ == "__main__":
  main(sys.argv[1:])
