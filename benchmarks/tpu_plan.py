"""Step time of the paper's 2B and 7B pretraining runs on TPU v5e, as a function of the MFU reached.

    python -m benchmarks.tpu_plan [--mfu 0.3 0.4 0.5]

The MFU that this code reaches on a v5e pod has not been measured (no TPU was lent to the sessions
that built it), so this is arithmetic, not a measurement: model FLOPs per step over the pod's
peak. It reads the batch, sequence length and step count from the v5e gin files themselves and
the model shape from model/config.py, counts model FLOPs the way MFU is defined (PaLM, appendix
B: 6 x matmul parameters + 12 x layers x heads x head_dim x length per token; rematerialisation
is not counted), and states the chips per run from the paper (section 3: 2B on 2 pods, 7B on 16
pods, 256 chips each). `--mfu` values are assumptions; replace them with the MFU that
benchmarks/train_throughput.py measures on a v5e. Writes benchmarks/results/tpu_plan.json.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import re

from benchmarks import cpu_roofline, harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V5E_PEAK_BF16_FLOPS = 197e12  # Per chip: Google Cloud's TPU v5e specification.
CHIPS_PER_POD = 256
# (gin file, model config, pods in the paper's run).
RUNS = {"gemma_2b": ("gin/gemma_2b_pretrain_v5e.gin", "gemma_2b", 2),
        "gemma_7b": ("gin/gemma_7b_pretrain_v5e.gin", "gemma_7b", 16)}


def gin_constant(path: str, name: str):
  """The value of a top-level `NAME = literal` binding of a gin file."""
  with open(os.path.join(REPO, path)) as f:
    match = re.search(rf"^{name}\s*=\s*(.+)$", f.read(), re.MULTILINE)
  if not match:
    raise SystemExit(f"{path} binds no {name}")
  return ast.literal_eval(match.group(1).strip())


def model_flops_per_token(config: dict, length: int) -> float:
  """Training FLOPs per token (forward and backward), as MFU counts them."""
  return 6 * cpu_roofline.matmul_params(config) + 3 * cpu_roofline.attention_flops(config, 1, length) / length


def plan(name: str, mfus: list[float]) -> dict:
  import dataclasses

  from model.config import get_config

  gin_file, config_name, pods = RUNS[name]
  config = dataclasses.asdict(get_config(config_name))
  batch, length = gin_constant(gin_file, "BATCH_SIZE"), gin_constant(gin_file, "TASK_FEATURE_LENGTHS")["targets"]
  steps = gin_constant(gin_file, "TRAIN_STEPS")
  chips = pods * CHIPS_PER_POD
  step_flops = model_flops_per_token(config, length) * batch * length
  ideal_s = step_flops / (chips * V5E_PEAK_BF16_FLOPS)
  return {
      "gin": gin_file, "chips": chips, "batch": batch, "length": length, "train_steps": steps,
      "train_tokens": steps * batch * length, "matmul_params": cpu_roofline.matmul_params(config),
      "model_flops_per_step": step_flops, "step_s_at_full_mfu": ideal_s,
      "at_assumed_mfu": [{"mfu": m, "step_s": ideal_s / m, "train_days": ideal_s / m * steps / 86400} for m in mfus],
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mfu", type=float, nargs="+", default=[0.3, 0.4, 0.5],
                      help="assumed model FLOPs utilisations (not measured)")
  parser.add_argument("--result", default=os.path.join(harness.RESULTS_DIR, "tpu_plan.json"))
  args = parser.parse_args(argv)
  if not all(0 < m <= 1 for m in args.mfu):
    raise SystemExit(f"--mfu values must be in (0, 1], got {args.mfu}")
  result = {"benchmark": "tpu_plan", "measured": False, "peak_flops_per_chip": V5E_PEAK_BF16_FLOPS,
            "runs": {name: plan(name, args.mfu) for name in RUNS},
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  print("| model | chips | tokens per step | model PFLOP per step | step s at 100% MFU | "
        + " | ".join(f"step s / days at {m:.0%} MFU" for m in args.mfu) + " |")
  print("| --- " * (5 + len(args.mfu)) + "|")
  for name, run in result["runs"].items():
    cells = [f"{a['step_s']:.2f} / {a['train_days']:.0f}" for a in run["at_assumed_mfu"]]
    print(f"| {name} | {run['chips']} | {run['batch'] * run['length']:,} | {run['model_flops_per_step'] / 1e15:.1f} "
          f"| {run['step_s_at_full_mfu']:.3f} | " + " | ".join(cells) + " |")
  if args.result != "none":
    print(f"wrote {harness.write_result(result, args.result)}")
  return result


if __name__ == "__main__":
  main()
