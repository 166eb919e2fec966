"""``python -m workflow run --config=...`` and ``python -m workflow status --run_dir=...``."""

from __future__ import annotations

import argparse
import sys

from workflow import config as config_lib
from workflow import runner
from workflow import status as status_lib


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m workflow", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("run", help="Run the stages of a run config that are not up to date.")
  run.add_argument("--config", required=True, help="YAML run config, e.g. configs/sample.yaml.")
  run.add_argument("--run_dir", default=None, help="Overrides the config's run_dir.")
  run.add_argument("--from", dest="from_stage", default=None,
                   help="First stage to consider (and what follows).")
  run.add_argument("--until", default=None, help="Last stage to consider.")
  run.add_argument("--only", default=None, help="Comma-separated stages to consider alone.")
  run.add_argument("--force", action="store_true",
                   help="Rerun the selected stages even if they are up to date.")
  run.add_argument("--dry_run", action="store_true",
                   help="Print what would run and why; run and write nothing.")
  status = commands.add_parser("status", help="Where a run stands (running or finished).")
  status.add_argument("--run_dir", required=True)
  args = parser.parse_args(argv)
  try:
    if args.command == "status":
      print(status_lib.format_status(status_lib.collect(args.run_dir)))
      return 0
    cfg = config_lib.load(args.config, args.run_dir)
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    selected = config_lib.select(cfg, args.from_stage, args.until, only)
    runner.run(cfg, selected, force=args.force, dry_run=args.dry_run, stream=sys.stdout)
  except (config_lib.ConfigError, runner.WorkflowError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
